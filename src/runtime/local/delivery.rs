//! Delivery to local users (RFC 6121 §8) ([`Delivery`]): a stanza for a user this shard
//! owns, from anywhere (another local user, a remote server, the server itself), waits
//! its turn behind the user's earlier stanzas, then goes where the §8.5 rules
//! ([`fedrouter_proto::presence::delivery::decide`]) say given the user's sessions now:
//! to some of them, an error to the sender, offline storage (XEP-0160,
//! [`super::offline`]), the subscription (§3) or probe (§4.3) logic, or nowhere. A
//! session whose client stopped reading (`c2s.send_queue_bytes` waiting for its socket)
//! is skipped: a client that stops reading costs only its own buffer.

use std::cell::RefCell;

use super::link::{send_to, Link};
use super::roster::RosterState;
use super::sessions::Session;
use super::users::Admitted;
use crate::condition::StanzaCondition;
use crate::presence::delivery::{self, SessionView};
use crate::router::bare_key;
use crate::runtime::shard::Shard;
use crate::service::{answer_account, answer_plain_ping, answer_server, Answer};
use crate::stanza::{error_reply_in, StanzaKind};
use crate::xml::{Element, StanzaArena};

/// Bytes per chunk of [`Delivery`]'s [`StanzaArena`]: as a read buffer's (the framer's
/// 16 KiB), a few hundred ping answers.
const ARENA_CHUNK: usize = 16 * 1024;

/// The delivery behaviour; the sessions delivered to are in [`super::users::User`].
pub(super) struct Delivery {
    /// Where the answers to pings to the server and the refusals of
    /// [`Delivery::refusal`] are written (no allocation each).
    arena: RefCell<StanzaArena>,
}

impl Delivery {
    /// Nothing allocated yet.
    pub(super) fn new() -> Delivery {
        Delivery {
            arena: RefCell::new(StanzaArena::new(ARENA_CHUNK)),
        }
    }

    /// The `condition` error reply to `el` (RFC 6120 §8.3), built in this shard's arena:
    /// no allocation per reply for the refusals made per received stanza.
    pub(super) fn refusal(&self, el: &Element, condition: StanzaCondition) -> Element {
        error_reply_in(el, condition, None, None, &mut self.arena.borrow_mut())
    }

    /// A stanza to a local address on this shard: the server itself, or a user.
    pub(super) fn deliver_local_stanza(&self, shard: &Shard, el: Element) -> Option<Answer> {
        let kind = StanzaKind::of(&el)?;
        let to = el.to().unwrap_or_default();
        // The server's own entity; and answers to its requests sent from a node's
        // resource of the domain (`cupdomain.test/n2`, the admin ping in a cluster).
        let response = kind == StanzaKind::Iq && matches!(el.type_(), Some("result" | "error"));
        let has = |b: u8| memchr::memchr(b, to.as_bytes()).is_some();
        if !has(b'@') && (!has(b'/') || response) {
            if let Some(pong) = answer_plain_ping(&el, &mut self.arena.borrow_mut()) {
                return Some(Answer::Reply(pong));
            }
            return Some(answer_server(&el, kind, &super::SOFTWARE));
        }
        self.deliver_to_user(shard, el);
        None
    }

    /// A stanza for a local user this shard owns, from anywhere (another local user, a
    /// remote server, the server itself).
    pub(super) fn deliver_to_user(&self, shard: &Shard, el: Element) {
        match shard.local.users.admit_inbound(shard, el) {
            Admitted::Now(el, bare) => {
                self.deliver_now(shard, el, false);
                if shard.local.users.maybe_forget(&bare) {
                    shard.local.pep.forget(&bare);
                }
            }
            Admitted::Absent(el) => self.deliver_now(shard, el, true),
            Admitted::Queued => {}
        }
    }

    /// Carries out what the RFC 6121 §8.5 rules ([`delivery::decide`]) say to do with a
    /// stanza for a local user, given the user's sessions now. `absent`: the account is
    /// known not to exist ([`Admitted::Absent`]), which the users' map does not record.
    pub(super) fn deliver_now(&self, shard: &Shard, el: Element, absent: bool) {
        let Some(kind) = StanzaKind::of(&el) else {
            return;
        };
        let Some(to) = el.to() else { return };
        let bare = bare_key(to);
        let resource = memchr::memchr(b'/', to.as_bytes()).map(|i| &to[i + 1..]);
        // From an entity the user blocked (XEP-0191 §3.3): dropped or answered.
        if !absent && shard.local.blocking.blocks_inbound(shard, &bare, &el) {
            return;
        }
        // PEP (XEP-0163): a contact's resource and its caps; answers to the caps queries
        // and pubsub requests to the account.
        if kind == StanzaKind::Presence {
            shard.local.pep.contact_presence(shard, &bare, &el);
        }
        if kind == StanzaKind::Iq
            && resource.is_none()
            && (shard.local.pep.caps_answer(shard, &el)
                || shard.local.pep.other_iq(shard, &bare, &el))
        {
            return;
        }
        if kind == StanzaKind::Iq && resource.is_none() {
            // An iq request to the bare JID: the server answers on the account's behalf
            // (RFC 6121 §8.5.1). Whether the account exists is known for the requests
            // that depend on it (XEP-0030 disco loads the roster, `Users::admit`).
            let exists = shard
                .local
                .users
                .borrow()
                .get(&*bare)
                .is_some_and(|u| matches!(u.roster, RosterState::Loaded(_)));
            if let Some(reply) = answer_account(&el, exists) {
                return shard.route(reply);
            }
        }
        let cap = shard.shared().config.c2s.send_queue_bytes;
        let (decision, targets) = {
            let users = shard.local.users.borrow();
            let user = if absent { None } else { users.get(&*bare) };
            let sessions = user.map_or(&[][..], |u| &u.sessions[..]);
            let views: Vec<SessionView> = sessions.iter().map(|s| s.view(cap)).collect();
            let decision = delivery::decide(kind, el.type_(), resource, &views);
            let targets: Vec<Link> = match &decision {
                delivery::Delivery::Deliver(ix) => {
                    ix.iter().map(|&i| sessions[i].conn.clone()).collect()
                }
                _ => Vec::new(),
            };
            (decision, targets)
        };
        match decision {
            delivery::Delivery::Deliver(_) if kind == StanzaKind::Presence => {
                // Held for a session that reported itself inactive (XEP-0352).
                for c in &targets {
                    shard.local.client_state.send_presence(
                        shard,
                        &bare,
                        c,
                        el.from(),
                        el.type_(),
                        &[el.bytes()],
                    );
                }
            }
            delivery::Delivery::Deliver(_) => {
                for c in &targets {
                    // A message or IQ is tracked until its socket accepts it, so that a
                    // session closed by `c2s.write_stall_timeout` hands back what it never
                    // sent ([`super::sessions::Sessions::write_stalled`]).
                    c.send_tracked(&el);
                }
                if kind == StanzaKind::Message {
                    // Copies to the user's other resources (XEP-0280 §6.2).
                    let ids: Vec<_> = targets.iter().map(|c| c.id).collect();
                    shard.local.carbons.received(shard, &bare, &el, &ids);
                }
            }
            delivery::Delivery::Offline => {
                if !shard.local.offline.refuses(shard, &bare, &el, absent) {
                    let bare = bare.into_owned();
                    shard.local.offline.store(shard, &bare, el);
                }
            }
            delivery::Delivery::Reply(condition) => {
                shard.route(self.refusal(&el, condition));
            }
            delivery::Delivery::UndeliverableError => {
                // Never answered (RFC 6120 §8.3.1), but not dropped without a trace: a
                // sender whose client stops reading loses its bounces here.
                crate::runtime::metrics(|m| {
                    m.count(
                        "undeliverable_errors",
                        &[("cause", "recipient_unavailable")],
                        1,
                    )
                });
            }
            delivery::Delivery::Subscription(t) => {
                let bare = bare.into_owned();
                shard.local.subscriptions.inbound(shard, &bare, t, el)
            }
            delivery::Delivery::Probe => shard.local.presence.answer_probe(shard, &bare, &el),
            delivery::Delivery::Ignore => {}
        }
    }

    /// Sends `bytes` to the sessions of `bare` that `filter` selects and that can take
    /// them: a session whose stream holds `c2s.send_queue_bytes` not yet accepted by its
    /// socket is skipped (a client that stops reading costs only its own buffer).
    pub(super) fn to_sessions(
        &self,
        shard: &Shard,
        bare: &str,
        bytes: &[u8],
        filter: impl Fn(&Session) -> bool,
    ) -> usize {
        let targets = self.writable_sessions(shard, bare, filter);
        for c in &targets {
            send_to(c, &[bytes]);
        }
        targets.len()
    }

    /// The sessions of `bare` that `filter` selects and whose stream has room.
    pub(super) fn writable_sessions(
        &self,
        shard: &Shard,
        bare: &str,
        filter: impl Fn(&Session) -> bool,
    ) -> Vec<Link> {
        let cap = shard.shared().config.c2s.send_queue_bytes;
        shard
            .local
            .users
            .borrow()
            .get(bare)
            .map(|u| {
                u.sessions
                    .iter()
                    .filter(|s| filter(s) && s.conn.backlog() < cap)
                    .map(|s| s.conn.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}
