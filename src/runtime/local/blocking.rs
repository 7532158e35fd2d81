//! The blocking command (XEP-0191) ([`Blocking`]): each user's block list is loaded from
//! the store with the roster, changed by the user's sessions (§3.2 get, §3.3 block, §3.4
//! unblock, §3.5 unblock all) durably before the change is answered and pushed to the
//! sessions that retrieved the list, and enforced: stanzas from a blocked entity are
//! dropped or answered `service-unavailable` ([`crate::blocking::inbound`]), stanzas the
//! user sends to one are refused with `not-acceptable` and `<blocked/>`, and presence
//! broadcasts leave blocked contacts out (a blocked subscriber gets unavailable presence
//! when blocked, the current presence when unblocked).
//!
//! The cached list changes as soon as a request is read, so that later stanzas see it
//! (as the roster does, [`super`]); should the store fail, the list is read back from
//! the store and the request answered `internal-server-error`.

use tracing::warn;

use super::link::{send_to, Link};
use super::roster::RosterState;
use crate::blocking::{self, blocked_error, blocklist_result, push, Inbound, Request};
use crate::condition::StanzaCondition;
use crate::presence::Subscription;
use crate::runtime::shard::Shard;
use crate::stanza::{error_reply, is_error, StanzaKind};
use crate::store::{BlocklistChange, Op, Outcome};
use crate::xml::writer::write_raw_attr;
use crate::xml::Element;

/// The blocking behaviour; the lists are in [`super::users::User`].
pub(super) struct Blocking;

impl Blocking {
    /// Reads `bare`'s block list from the store into the user's state (requested just
    /// before the roster, whose answer the stanzas that need the list wait for).
    pub(super) fn load(&self, shard: &Shard, bare: &str) {
        let user = bare.to_owned();
        shard.local.store.submit(
            shard,
            Op::Blocklist { user: user.clone() },
            Box::new(move |shard, result| {
                let list = match result {
                    Ok(Outcome::Jids(j)) => j,
                    Ok(_) | Err(crate::store::StoreError::NoSuchUser(_)) => Vec::new(),
                    Err(e) => {
                        warn!(%user, error = %e, "loading the block list failed");
                        Vec::new()
                    }
                };
                if let Some(u) = shard.local.users.borrow_mut().get_mut(&user) {
                    u.blocked = list;
                }
            }),
        );
    }

    /// Whether `jid` (raw) is blocked by `bare`.
    pub(super) fn is_blocked(&self, shard: &Shard, bare: &str, jid: &str) -> bool {
        shard
            .local
            .users
            .borrow()
            .get(bare)
            .is_some_and(|u| blocking::is_blocked(u.blocked.iter().map(String::as_str), jid))
    }

    /// A stanza for `bare` from elsewhere: `true` when its sender is blocked, in which
    /// case it has been dropped or answered (`service-unavailable`, §3.3).
    pub(super) fn blocks_inbound(&self, shard: &Shard, bare: &str, el: &Element) -> bool {
        let Some(from) = el.from() else { return false };
        if !self.is_blocked(shard, bare, from) {
            return false;
        }
        let Some(kind) = StanzaKind::of(el) else {
            return true;
        };
        if blocking::inbound(kind, el.type_()) == Inbound::ServiceUnavailable {
            shard.route(error_reply(
                el,
                StanzaCondition::ServiceUnavailable,
                None,
                None,
            ));
        }
        true
    }

    /// A stanza session `conn` of `bare` sends: `true` when it is addressed to a blocked
    /// JID, in which case it was refused with `not-acceptable` + `<blocked/>` (§3.3).
    pub(super) fn blocks_outbound(
        &self,
        shard: &Shard,
        conn: &Link,
        bare: &str,
        el: &Element,
    ) -> bool {
        let Some(to) = el.to() else { return false };
        if !self.is_blocked(shard, bare, to) {
            return false;
        }
        if let Some(e) = blocked_error(el) {
            send_to(conn, &[e.bytes()]);
        }
        true
    }

    /// A blocking request `req` (read from `el`) from session `conn` of `bare`.
    pub(super) fn request(
        &self,
        shard: &Shard,
        conn: &Link,
        bare: &str,
        el: Element,
        req: Request,
    ) {
        let change = match req {
            Request::Get => {
                let mut users = shard.local.users.borrow_mut();
                let Some(u) = users.get_mut(bare) else { return };
                if let Some(s) = u.sessions.iter_mut().find(|s| s.conn.id == conn.id) {
                    s.blocklist_requested = true;
                }
                let r = blocklist_result(&el, u.blocked.iter().map(String::as_str));
                drop(users);
                send_to(conn, &[r.bytes()]);
                return;
            }
            Request::Block(ref jids) => BlocklistChange::Block(jids.clone()),
            Request::Unblock(ref jids) => BlocklistChange::Unblock(jids.clone()),
        };
        let before = {
            let mut users = shard.local.users.borrow_mut();
            let Some(u) = users.get_mut(bare) else { return };
            let before = u.blocked.clone();
            match &change {
                BlocklistChange::Block(jids) => {
                    for j in jids {
                        if !u.blocked.contains(j) {
                            u.blocked.push(j.clone());
                        }
                    }
                    u.blocked.sort();
                }
                BlocklistChange::Unblock(jids) if jids.is_empty() => u.blocked.clear(),
                BlocklistChange::Unblock(jids) => u.blocked.retain(|j| !jids.contains(j)),
            }
            before
        };
        let user = bare.to_owned();
        let conn = conn.clone();
        shard.local.store.submit(
            shard,
            Op::ChangeBlocklist {
                user: user.clone(),
                change,
            },
            Box::new(move |shard, result| {
                let blocking = &shard.local.blocking;
                if let Err(e) = result {
                    warn!(%user, error = %e, "storing a block list change failed");
                    blocking.load(shard, &user);
                    if !is_error(&el) {
                        let r = error_reply(&el, e.stanza_condition(), None, None);
                        send_to(&conn, &[r.bytes()]);
                    }
                    return;
                }
                let mut out = Vec::with_capacity(96);
                out.extend_from_slice(b"<iq type='result'");
                write_raw_attr("to", el.from(), &mut out);
                write_raw_attr("id", el.id(), &mut out);
                out.extend_from_slice(b"/>");
                send_to(&conn, &[&out]);
                blocking.pushed(shard, &user, &req);
                blocking.presence_after(shard, &user, &before);
            }),
        );
    }

    /// Pushes the change `req` to the sessions of `bare` that retrieved the list (§3.3).
    fn pushed(&self, shard: &Shard, bare: &str, req: &Request) {
        let targets: Vec<(Link, String)> = shard
            .local
            .users
            .borrow()
            .get(bare)
            .map(|u| {
                u.sessions
                    .iter()
                    .filter(|s| s.blocklist_requested)
                    .map(|s| (s.conn.clone(), s.full.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for (conn, full) in targets {
            let id = format!("block{}", shard.local.store.next_tag());
            let p = push(&full, &id, req);
            send_to(&conn, &[p.bytes()]);
        }
    }

    /// After a change from `before`: subscribers newly blocked get unavailable presence,
    /// those unblocked the user's current presence (XEP-0191 §3.3, §3.4).
    fn presence_after(&self, shard: &Shard, bare: &str, before: &[String]) {
        let (newly_blocked, unblocked) = {
            let users = shard.local.users.borrow();
            let Some(u) = users.get(bare) else { return };
            let RosterState::Loaded(r) = &u.roster else {
                return;
            };
            let now = u.blocked.iter().map(String::as_str);
            let was = |c: &str| blocking::is_blocked(before.iter().map(String::as_str), c);
            let mut newly = Vec::new();
            let mut freed = Vec::new();
            for c in r.contacts(Subscription::has_from) {
                match (was(&c), blocking::is_blocked(now.clone(), &c)) {
                    (false, true) => newly.push(c),
                    (true, false) => freed.push(c),
                    _ => {}
                }
            }
            (newly, freed)
        };
        for c in newly_blocked {
            shard.local.presence.send_unavailable(shard, bare, &c);
        }
        for c in unblocked {
            shard.local.presence.send_current_presence(shard, bare, &c);
        }
    }
}
