//! Outbound multiplexing by target (XEP-0220 §2.4, "piggybacking") in the runtime: a
//! remote domain whose SRV target (host and port) already carries an authenticated
//! outbound stream of this shard joins that stream with its own `db:result` instead of
//! dialling again.
//!
//! # Ownership: multiplexing within a shard
//!
//! A remote domain D is owned by `shard_of(D)` (DESIGN.md "Ownership"), and a stream
//! lives on one shard. Domains share a stream only when one shard owns them all: the
//! registry of streams by target ([`Remotes::targets`]) is per shard, so nothing is shared
//! between shards and no domain's queue, stream or dialback state moves. With N shards,
//! a target hosting k of our remote domains costs at most min(k, N) outbound sockets
//! instead of k (about N per Google-Apps-style target once k ≫ N: 100 domains behind one
//! target and 2 shards, 2 sockets). Order per (from, to) pair and the bounded queue
//! (`s2s.queue_per_domain`) hold as before: each domain keeps its own queue, written only
//! to the stream its `Remote::conn` names. In a cluster, a remote domain's owner node
//! (rendezvous hash) opens its streams, so multiplexing happens within a node.
//!
//! When the shared stream ends, each domain it served sees its own end
//! ([`Remotes::outbound_closed`] per domain, with the stanzas the stream never wrote for
//! that domain) and reconnects on demand, on its own or by joining another stream. A
//! domain the peer refuses on the shared stream backs off and has its stanzas bounced
//! ([`Remotes::multiplexed_refused`]); the stream and its other domains stay up.

use std::rc::Rc;
use std::time::Instant;

use tracing::{debug, info};

use super::super::conn::{Conn, ConnId};
use super::{remote_entry, Remotes};
use crate::srv::Target;
use crate::stream::s2s::Direction;

impl Remotes {
    /// Remembers `conn`, this shard's new outbound stream to `target`, as the stream
    /// further domains hosted there may join.
    pub(in crate::runtime) fn register_target(&self, target: &Target, conn: &Rc<Conn>) {
        self.targets.borrow_mut().insert(
            (target.host.to_ascii_lowercase().into(), target.port),
            Rc::clone(conn),
        );
    }

    /// Forgets `conn` as a target's stream (it ended).
    pub(in crate::runtime) fn forget_target(&self, conn: ConnId) {
        self.targets.borrow_mut().retain(|_, c| c.id != conn);
    }

    /// XEP-0220 §2.4: when one of `targets` (`d`'s SRV answer, in preference order)
    /// carries an authenticated outbound stream of this shard that `d` may join (policy,
    /// certificate: [`crate::stream::s2s::S2sConnection::may_multiplex`]), asks for
    /// (`local`, `d`) and every other local domain waiting for `d` on it, and makes it
    /// `d`'s stream. Returns whether `d` joined one (else the caller dials).
    pub(in crate::runtime) fn join_target(&self, d: &str, local: &str, targets: &[Target]) -> bool {
        let conn = {
            let map = self.targets.borrow();
            targets.iter().find_map(|t| {
                let c = map.get(&(t.host.to_ascii_lowercase().into_boxed_str(), t.port))?;
                let st = c.st.borrow();
                let usable = c.direction == Direction::Outbound
                    && !st.closed
                    && st.proto.authenticated().next().is_some()
                    && st.proto.may_multiplex(d).is_ok();
                usable.then(|| Rc::clone(c))
            })
        };
        let Some(conn) = conn else { return false };
        let now = Instant::now();
        let locals = {
            let mut remotes = self.map.borrow_mut();
            let r = remote_entry(&mut remotes, d);
            let mut locals = vec![local.to_owned()];
            locals.extend(r.locals.iter().filter(|l| *l != local).cloned());
            locals
        };
        {
            let mut st = conn.st.borrow_mut();
            for l in &locals {
                if let Err(e) = st.proto.request_dialback_for(l, d, now) {
                    debug!(parent: &conn.span, remote = %d, local = %l, "not multiplexed: {e}");
                    return false;
                }
            }
            st.pump();
        }
        {
            let mut remotes = self.map.borrow_mut();
            let r = remote_entry(&mut remotes, d);
            r.connecting = false;
            r.conn = Some(Rc::clone(&conn));
            for l in locals {
                if !r.locals.contains(&l) {
                    r.locals.push(l);
                }
            }
        }
        let served = conn.st.borrow().proto.served_remotes().len();
        info!(parent: &conn.span, remote = %d, %local, domains = served, "multiplexed on the stream to the same target (XEP-0220 §2.4)");
        super::super::metrics(|m| m.count("s2s_multiplexed_domains", &[], 1));
        self.send_pending_verifies(d);
        conn.wake.notify_one();
        true
    }

    /// Whether `d`, refused on `conn` (an `Event::AuthFailed`), is a further domain of a
    /// shared stream with no pair left on it: it is then detached and backs off, while
    /// the stream keeps serving its other domains.
    pub(super) fn multiplexed_refused(&self, conn: &Conn, d: &str) -> bool {
        let st = conn.st.borrow();
        let own = crate::router::domain_key(st.proto.remote_domain());
        own != d
            && !st
                .proto
                .authenticated()
                .any(|(_, r, _)| r.eq_ignore_ascii_case(d))
            && !st
                .proto
                .pending_dialback_pairs()
                .any(|(_, r)| r.eq_ignore_ascii_case(d))
    }
}
