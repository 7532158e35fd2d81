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
//! Domains that resolve while the target's first stream is still being dialled wait for
//! it ([`Remotes::wait_for_dial`]) rather than dialling too, so that a burst (a hundred
//! domains of one host asked for at once) opens one connection; a plain-only domain joins
//! the stream while it negotiates (its `db:result` waits for it), others once it is
//! authenticated (its TLS and certificate known).
//!
//! When the shared stream ends, each domain it served sees its own end
//! ([`Remotes::outbound_closed`] per domain, with the stanzas the stream never wrote for
//! that domain) and reconnects on demand, on its own or by joining another stream. A
//! domain the peer refuses on the shared stream backs off and has its stanzas bounced
//! ([`Remotes::multiplexed_refused`]); the stream and its other domains stay up.

use std::rc::Rc;
use std::time::Instant;

use tracing::{debug, info, info_span, Instrument};

use super::super::conn::{Conn, ConnId};
use super::super::connect::Purpose;
use super::super::shard::Shard;
use super::{remote_entry, Remotes, TargetKey};
use crate::srv::Target;
use crate::stream::s2s::Direction;

/// `t` as a registry key: host (lowercase) and port.
fn target_key(t: &Target) -> TargetKey {
    (t.host.to_ascii_lowercase().into_boxed_str(), t.port)
}

impl Remotes {
    /// Remembers `conn`, this shard's new outbound stream to `target`, as the stream
    /// further domains hosted there may join.
    pub(in crate::runtime) fn register_target(&self, target: &Target, conn: &Rc<Conn>) {
        self.targets
            .borrow_mut()
            .insert(target_key(target), Rc::clone(conn));
    }

    /// `d`'s first target is being dialled by this shard for another domain: `d` waits for
    /// that stream (to join it: [`Remotes::end_dial`]) instead of dialling too. Returns
    /// whether it waits.
    pub(in crate::runtime) fn wait_for_dial(
        &self,
        d: &str,
        local: &str,
        targets: &[Target],
    ) -> bool {
        let Some(t) = targets.first() else {
            return false;
        };
        match self.dialing.borrow_mut().get_mut(&target_key(t)) {
            Some(waiters) => {
                waiters.push((d.to_owned(), local.to_owned()));
                true
            }
            None => false,
        }
    }

    /// This shard starts dialling `targets` for a domain's stream: other domains whose
    /// first target it is wait for it ([`Remotes::wait_for_dial`]). Returns the key to
    /// give [`Remotes::end_dial`] when the attempt is over.
    pub(in crate::runtime) fn begin_dial(&self, targets: &[Target]) -> Option<TargetKey> {
        let key = target_key(targets.first()?);
        self.dialing.borrow_mut().entry(key.clone()).or_default();
        Some(key)
    }

    /// The attempt to dial `key` is over (the stream is registered, or it failed): each
    /// domain that waited for it connects again, and joins the stream where it may, or
    /// dials itself.
    pub(in crate::runtime) fn end_dial(&self, shard: &Shard, key: &TargetKey) {
        let waiters = self.dialing.borrow_mut().remove(key).unwrap_or_default();
        for (d, local) in waiters {
            let span = info_span!(parent: &shard.span, "s2s", dir = "out", peer = %d, id = tracing::field::Empty);
            tokio_uring::spawn(
                super::super::connect::connect(shard.rc(), d, local, Purpose::Stream)
                    .instrument(span),
            );
        }
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
                let c = map.get(&target_key(t))?;
                let st = c.st.borrow();
                // Authenticated, or still negotiating where the core allows it (a
                // plain-only domain: its `db:result` waits for the stream).
                let usable = c.direction == Direction::Outbound
                    && !st.closed
                    && st.proto.may_multiplex(d).is_ok();
                usable.then(|| Rc::clone(c))
            })
        };
        let Some(conn) = conn else { return false };
        let now = Instant::now();
        let locals = {
            let mut remotes = self.map.borrow_mut();
            let (_, r) = remote_entry(&mut remotes, d);
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
            let (_, r) = remote_entry(&mut remotes, d);
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
