//! XEP-0198 on client streams, in the runtime ([`Resumption`]): sessions whose stream
//! dropped kept detached for resumption (§5), their resumption by a new stream of the
//! same account, their end at the resumption timeout, and the stanzas a client never
//! acknowledged delivered elsewhere when its session ends (§5: "treat unacknowledged
//! stanzas as undelivered": RFC 6121 §8.5 for a resource that went away, which sends
//! messages to the user's other resources or offline, and answers requests with
//! `service-unavailable`).
//!
//! A detached session stays in the user's sessions, available to its contacts (no
//! unavailable presence until the timeout), and keeps taking stanzas: the protocol core
//! counts and keeps them (its transmit buffer is discarded, there is no socket), up to
//! [`MAX_DETACHED_UNACKED`]; past that, or at the timeout, the session ends.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use tracing::{debug, info};

use crate::presence::delivery::{self, SessionView};
use crate::router::bare_key;
use crate::runtime::conn::{Conn, ConnId};
use crate::runtime::shard::Shard;
use crate::stanza::StanzaKind;
use crate::stream::c2s::C2sConnection;

/// Most stanzas a detached session keeps for its client; past this it ends at once and
/// what it kept goes elsewhere.
pub(super) const MAX_DETACHED_UNACKED: usize = 1000;

/// Detached sessions of this shard, by resumption id.
#[derive(Default)]
pub(super) struct Resumption {
    detached: RefCell<HashMap<String, Rc<Conn<C2sConnection>>>>,
}

impl Resumption {
    /// A bound session's stream ended. When it dropped (no `</stream:stream>`, no stream
    /// error) and the client enabled resumption, the session is kept detached for its
    /// resumption timeout and `true` is returned; else `false` (the caller ends it).
    pub(super) fn detach(&self, shard: &Shard, conn: &Rc<Conn<C2sConnection>>) -> bool {
        let (id, timeout) = {
            let st = conn.st.borrow();
            if st.proto.is_closed() || st.proto.bound_jid().is_none() || shard.shutting_down.get() {
                return false;
            }
            match st.proto.resumption_id() {
                Some(id) => (id.to_owned(), st.proto.resumption_timeout()),
                None => return false,
            }
        };
        {
            let mut st = conn.st.borrow_mut();
            // What the dead socket's TLS session still held for it goes with it; the
            // core resends what the client did not acknowledge after resumption.
            st.seal();
            st.detached = true;
            st.unsent.clear();
            st.wire.clear();
        }
        self.detached
            .borrow_mut()
            .insert(id.clone(), Rc::clone(conn));
        crate::runtime::metrics(|m| m.count("c2s_sessions_detached", &[], 1));
        info!(
            parent: &conn.span,
            timeout = %humantime::format_duration(timeout),
            "client connection lost: session kept for resumption (XEP-0198)"
        );
        let me = shard.rc();
        let conn_id = conn.id;
        tokio_uring::spawn(async move {
            tokio::time::sleep(timeout).await;
            me.local.resumption.expire(&me, &id, conn_id);
        });
        true
    }

    /// A detached session took a stanza (`unacked` held now): past
    /// [`MAX_DETACHED_UNACKED`] it ends, soon after (not from inside the delivery that
    /// called this).
    pub(super) fn took(conn: &Conn<C2sConnection>, unacked: usize) {
        if unacked <= MAX_DETACHED_UNACKED {
            return;
        }
        let Some(id) = conn.st.borrow().proto.resumption_id().map(str::to_owned) else {
            return;
        };
        let conn_id = conn.id;
        let Some(me) = crate::runtime::shard::CURRENT.with(|c| c.borrow().clone()) else {
            return;
        };
        tokio_uring::spawn(async move { me.local.resumption.expire(&me, &id, conn_id) });
    }

    /// The resumption timeout of detached session `id` (or its bound): the session ends
    /// (unavailable presence to its contacts) and what its client never acknowledged is
    /// delivered elsewhere. Nothing when it was resumed meanwhile.
    pub(super) fn expire(&self, shard: &Shard, id: &str, conn_id: ConnId) {
        let conn = {
            let mut d = self.detached.borrow_mut();
            match d.get(id) {
                Some(c) if c.id == conn_id => d.remove(id),
                _ => return,
            }
        };
        let Some(conn) = conn else { return };
        info!(parent: &conn.span, unacknowledged = conn.st.borrow().proto.unacknowledged(), "session not resumed in time: ended");
        shard.local.sessions.session_gone(shard, &conn);
        self.redeliver_unacked(shard, &conn);
    }

    /// Ends every detached session now (shutdown).
    pub(super) fn expire_all(&self, shard: &Shard) {
        let all: Vec<(String, ConnId)> = self
            .detached
            .borrow()
            .iter()
            .map(|(id, c)| (id.clone(), c.id))
            .collect();
        for (id, conn_id) in all {
            self.expire(shard, &id, conn_id);
        }
    }

    /// `<resume previd='…'/>` on `conn`, an authenticated stream of this shard: the
    /// detached session with that id, when it belongs to the same account, moves onto
    /// `conn` (its sessions entry now points at it) and the core resumes it; else the
    /// client gets `item-not-found` and may bind.
    pub(super) fn resume(&self, shard: &Shard, conn: &Rc<Conn<C2sConnection>>, previd: &str) {
        let account = conn
            .st
            .borrow()
            .proto
            .authenticated_jid()
            .map(|j| j.as_str().to_owned());
        let old = {
            let mut d = self.detached.borrow_mut();
            let same_account = d.get(previd).is_some_and(|old| {
                old.st
                    .borrow()
                    .proto
                    .bound_jid()
                    .is_some_and(|f| Some(bare_key(f.as_str()).as_ref()) == account.as_deref())
            });
            if same_account {
                d.remove(previd)
            } else {
                None
            }
        };
        let state = old
            .as_ref()
            .and_then(|o| o.st.borrow_mut().proto.take_resumable_state());
        if let (Some(old), Some(state)) = (&old, &state) {
            let bare = bare_key(state.jid()).into_owned();
            let mut users = shard.local.users.borrow_mut();
            if let Some(s) = users
                .get_mut(&bare)
                .and_then(|u| u.sessions.iter_mut().find(|s| s.conn.id == old.id))
            {
                s.conn = super::link::Link::here(conn);
            }
            crate::runtime::metrics(|m| m.count("c2s_sessions_resumed", &[], 1));
            info!(parent: &conn.span, jid = state.jid(), resent = state.unacknowledged(), "session resumed (XEP-0198)");
        } else {
            debug!(parent: &conn.span, previd, "no detached session to resume");
        }
        {
            let mut st = conn.st.borrow_mut();
            let _ = st.proto.handle_resume(state, Instant::now());
            st.collect_events();
            st.pump();
        }
        conn.wake.notify_one();
    }

    /// Delivers elsewhere what `conn`'s client never acknowledged (its session is gone):
    /// messages to the user's other resources or as to an unavailable user, requests
    /// answered `service-unavailable` (RFC 6121 §8.5.3.2); presence, results, errors and
    /// carbon copies are not sent again. A message to the bare JID that another available
    /// resource already received is not delivered twice.
    pub(super) fn redeliver_unacked(&self, shard: &Shard, conn: &Rc<Conn<C2sConnection>>) {
        let unacked = conn.st.borrow_mut().proto.take_unacknowledged();
        if unacked.is_empty() {
            return;
        }
        let cap = shard.shared().config.c2s.send_queue_bytes;
        let mut again = 0u64;
        for bytes in unacked {
            let Ok(el) = crate::xml::parse_stanza(&bytes) else {
                continue;
            };
            let Some(kind) = StanzaKind::of(&el) else {
                continue;
            };
            let request = matches!(el.type_(), Some("get" | "set"));
            static CARBONS: crate::xml::Needle = crate::xml::Needle::new("urn:xmpp:carbons:2");
            let carbon = CARBONS.is_in(el.inner());
            if kind == StanzaKind::Presence || (kind == StanzaKind::Iq && !request) || carbon {
                continue;
            }
            let Some(to) = el.to() else { continue };
            let bare = bare_key(to);
            let resource = to.find('/').map(|i| &to[i + 1..]);
            let deliver = {
                let users = shard.local.users.borrow();
                let sessions = users
                    .get(bare.as_ref())
                    .map_or(&[][..], |u| &u.sessions[..]);
                let views: Vec<SessionView> = sessions.iter().map(|s| s.view(cap)).collect();
                delivery::redeliver_after_stall(kind, resource, &views)
            };
            if deliver {
                again += 1;
                shard.local.deliver_to_user(shard, el);
            }
        }
        crate::runtime::metrics(|m| m.count("c2s_unacked_redelivered", &[], again));
        debug!(parent: &conn.span, again, "unacknowledged stanzas delivered elsewhere");
    }
}
