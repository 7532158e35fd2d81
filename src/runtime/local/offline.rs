//! Offline messages (XEP-0160) on the user's shard ([`Offline`]): a `normal` or `chat`
//! message that none of a local user's resources takes (RFC 6121 §8.5.2.2.1,
//! [`crate::presence::delivery::Delivery::Offline`]) is stored, durably, and handed to
//! the user's session when it next sends available presence with a non-negative priority
//! (XEP-0160 §5), each with a XEP-0203 `<delay/>` giving when the server received it.
//!
//! # Storing
//!
//! A message that holds only XEP-0085 chat state notifications is not stored (XEP-0160
//! §3) and dropped without an answer (`offline_refused{cause="chat_states_only"}`). Any
//! other goes to the store as a [`Change::AppendOffline`] (group-committed with the
//! other durable changes). A message carries no acknowledgement, but it is not forgotten
//! before it is committed: the append's answer is what counts it (`offline_stored`). A
//! refused append is answered to the sender in the user's place: `service-unavailable`
//! when storage is off (`c2s.max_offline_messages = 0`), the user already has
//! `c2s.max_offline_messages` stored, or has no account; `internal-server-error` when the
//! database failed (`offline_refused{cause}`). Appends for one user are queued in the
//! order the messages arrived, and the store applies requests in order, so stored ids
//! follow arrival order.
//!
//! # Delivering
//!
//! On the presence that makes a session take bare-JID messages (initial presence, or an
//! update from a negative priority), the user's stanzas are held (later stanzas to and
//! from the user wait, RFC 6120 §10.1) while the stored messages are read; they are then
//! written to that session's stream in stored order, each with its delay stamp, and
//! deleted from the store up to the last one handed over, *when handed to the session's
//! writer* (not when the client has read them). A crash between the hand-over and the
//! delete's commit delivers those messages again at the next login (duplicates), never
//! loses them. A message the session's socket then never accepts is handled like any
//! message for a stalled session ([`super::sessions::Sessions::write_stalled`]: handed
//! back, and so stored again when no resource takes it). Messages that do not fit in the
//! session's send queue (`c2s.send_queue_bytes`) stay stored for a later presence.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{debug, warn};

use crate::condition::StanzaCondition;
use crate::jid::domain_of;
use crate::offline::{with_delay, worth_storing};
use crate::runtime::shard::Shard;
use crate::store::{Change, Op, Outcome, StoreError};
use crate::xml::{parse_stanza, Element};

use super::link::{send_to, Link};

/// The offline message behaviour; the messages themselves are in the store.
pub(super) struct Offline;

/// Counts one offline message event (`offline_stored`, `offline_delivered`, or
/// `offline_refused` with a `cause`), through a handle (one per message refused at
/// volume: messages to unknown users).
fn count(family: &'static str, cause: Option<&'static str>, n: u64) {
    use crate::runtime::count_static;
    match cause {
        Some(c) => count_static(family, "cause", c, n),
        None => count_static(family, "", "", n),
    }
}

/// Milliseconds since the Unix epoch of `t` (0 before it).
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Offline {
    /// What [`Offline::store`] does first, on a borrow: `true` when `el` (for `bare`) is
    /// not to be stored, in which case it was dropped (only chat states) or refused with
    /// `service-unavailable` (storage off; no such account: `absent`, or what the store
    /// just said for `bare`).
    pub(super) fn refuses(&self, shard: &Shard, bare: &str, el: &Element, absent: bool) -> bool {
        if !worth_storing(el) {
            // Only chat state notifications (XEP-0160 §3, XEP-0085): dropped, like a
            // headline, and counted.
            count("offline_refused", Some("chat_states_only"), 1);
            return true;
        }
        let max = shard.shared().config.c2s.max_offline_messages;
        // The store just said (or the shard remembers, `c2s.unknown_user_cache`) that
        // there is no such account: the append would fail the same way.
        let absent = || {
            absent
                || shard
                    .local
                    .users
                    .borrow()
                    .get(bare)
                    .is_some_and(|u| matches!(u.roster, super::roster::RosterState::NoSuchUser))
        };
        let cause = if max == 0 {
            "disabled"
        } else if absent() {
            "no_such_user"
        } else {
            return false;
        };
        count("offline_refused", Some(cause), 1);
        let reply = shard
            .local
            .delivery
            .refusal(el, StanzaCondition::ServiceUnavailable);
        shard.route(reply);
        true
    }

    /// Stores `el`, a message for `bare` that no resource takes
    /// ([`crate::presence::delivery::Delivery::Offline`]) and that [`Offline::refuses`]
    /// let through; the sender gets `service-unavailable` (full, no such account) or
    /// `internal-server-error` (the store failed) if the store refuses it.
    pub(super) fn store(&self, shard: &Shard, bare: &str, el: Element) {
        let max = shard.shared().config.c2s.max_offline_messages;
        let change = Change::AppendOffline {
            user: bare.to_owned(),
            stanza: el.as_str().to_owned(),
            received_ms: unix_ms(SystemTime::now()),
            max,
        };
        shard.local.store.submit(
            shard,
            Op::Apply(vec![change]),
            Box::new(move |shard, result| {
                let (condition, cause) = match result {
                    Ok(_) => {
                        count("offline_stored", None, 1);
                        return;
                    }
                    Err(StoreError::OfflineFull(user)) => {
                        debug!(%user, "offline message store full: refused");
                        (StanzaCondition::ServiceUnavailable, "full")
                    }
                    Err(StoreError::NoSuchUser(_)) => {
                        (StanzaCondition::ServiceUnavailable, "no_such_user")
                    }
                    Err(e) => {
                        warn!(error = %e, "storing an offline message failed");
                        (e.stanza_condition(), "store_error")
                    }
                };
                count("offline_refused", Some(cause), 1);
                shard.route(shard.local.delivery.refusal(&el, condition));
            }),
        );
    }

    /// Hands `bare`'s stored messages to session `conn` (which just became available with
    /// a non-negative priority), each with its XEP-0203 delay, then deletes them; later
    /// stanzas to and from the user wait until they are written (see the module docs).
    pub(super) fn deliver(&self, shard: &Shard, conn: &Link, bare: &str) {
        shard.local.users.hold(bare);
        let conn = conn.clone();
        let user = bare.to_owned();
        shard.local.store.submit(
            shard,
            Op::Offline { user: user.clone() },
            Box::new(move |shard, result| {
                match result {
                    Ok(Outcome::Offline(messages)) if !messages.is_empty() => {
                        shard.local.offline.hand_over(shard, &conn, &user, messages);
                    }
                    Ok(_) | Err(StoreError::NoSuchUser(_)) => {}
                    Err(e) => warn!(%user, error = %e, "reading offline messages failed"),
                }
                shard.local.users.release(shard, &user);
            }),
        );
    }

    /// Writes `messages` to `conn` in order, with their delay stamps, while the session
    /// is open and its send queue has room; deletes those handed over.
    fn hand_over(
        &self,
        shard: &Shard,
        conn: &Link,
        user: &str,
        messages: Vec<crate::store::OfflineMessage>,
    ) {
        let cap = shard.shared().config.c2s.send_queue_bytes;
        let domain = domain_of(user).to_owned();
        let total = messages.len();
        let mut up_to = None;
        let mut handed = 0u64;
        for m in messages {
            if conn.backlog() >= cap {
                break;
            }
            let at = UNIX_EPOCH + Duration::from_millis(m.received_ms);
            let bytes = match parse_stanza(m.stanza.as_bytes()) {
                Ok(stored) => with_delay(&stored, &domain, at),
                Err(e) => {
                    // Stored from a framed stanza: cannot happen short of a damaged
                    // database. Handed over as stored (without the delay) rather than
                    // lost, and logged.
                    warn!(
                        %user, id = m.id, error = %e,
                        "stored offline message does not frame: delivered as stored"
                    );
                    m.stanza.into_bytes()
                }
            };
            let sent = match parse_stanza(&bytes) {
                Ok(el) => conn.send_tracked(&el),
                Err(_) => send_to(conn, &[&bytes]),
            };
            if !sent {
                break;
            }
            up_to = Some(m.id);
            handed += 1;
        }
        if handed > 0 {
            count("offline_delivered", None, handed);
        }
        debug!(%user, handed, total, "offline messages handed to the session");
        let Some(up_to) = up_to else { return };
        let change = Change::DeleteOffline {
            user: user.to_owned(),
            up_to,
        };
        shard.local.store.submit(
            shard,
            Op::Apply(vec![change]),
            Box::new(|_, result| {
                if let Err(e) = result {
                    // They stay stored: delivered again at the next presence (duplicates).
                    warn!(error = %e, "deleting delivered offline messages failed");
                }
            }),
        );
    }
}
