//! A remote domain's verify-only stream (XEP-0220 §2.1.3): the connection on which we,
//! as Receiving Server, send `db:verify`s to the domain's Authoritative Server when the
//! domain's own stream cannot carry them: it is an inbound bidirectional stream (XEP-0288
//! §2.2 forbids verifying on it, and a stream of our own would authenticate us as well
//! and stay open, so bidi would save no socket), or another cluster node owns the domain.
//!
//! It sends no `db:result` of ours, so the peer has nothing to verify back (no chain of
//! connections between two servers that both verify). One per domain, in its own slot
//! beside `Remote::conn`; closed (`</stream:stream>`) once no verification waits on it.
//! When it ends by itself with requests not yet written, they are sent again on a new
//! one, once; a second such end in a row answers them with an error. Requests it had
//! written get the error answer from the stream itself
//! ([`crate::stream::s2s::Event::VerifyAnswered`]), as on any outbound stream.

use std::rc::Rc;
use std::time::Instant;

use tracing::{debug, info, info_span, Instrument};

use super::super::conn::Conn;
use super::super::connect::Purpose;
use super::super::shard::Shard;
use super::Remotes;
use crate::dialback::{DialbackErrorCondition, DialbackResult};
use crate::router::queue::Failure;

impl Remotes {
    /// Makes sure `d` has a verify-only stream for the verify-only requests waiting, and
    /// writes them to it when it is open; starts a connection if none runs.
    pub(in crate::runtime) fn ensure_verifier(&self, shard: &Shard, d: &str, local: &str) {
        let start = {
            let mut remotes = self.map.borrow_mut();
            let Some(r) = remotes.get_mut(d) else { return };
            if r.verifier.is_some() || r.verifier_connecting {
                false
            } else {
                r.verifier_connecting = true;
                true
            }
        };
        if !start {
            return self.send_verifier_verifies(d);
        }
        if shard.shutting_down.get() {
            return self.verifier_failed(shard, d, Failure::shutdown());
        }
        let span = info_span!(parent: &shard.span, "s2s", dir = "out", peer = %d, purpose = "verify-only", id = tracing::field::Empty);
        tokio_uring::spawn(
            super::super::connect::connect(
                shard.rc(),
                d.to_owned(),
                local.to_owned(),
                Purpose::VerifyOnly,
            )
            .instrument(span),
        );
    }

    /// The verify-only stream to `d` is connected: it takes the slot, and the requests
    /// waiting for it are queued on it (written once its negotiation is done).
    pub(in crate::runtime) fn verifier_connected(&self, d: &str, conn: &Rc<Conn>) {
        {
            let mut remotes = self.map.borrow_mut();
            let (_, r) = super::remote_entry(&mut remotes, d);
            r.verifier_connecting = false;
            r.verifier_closing = false;
            r.verifier = Some(Rc::clone(conn));
        }
        super::super::metrics(|m| m.count("s2s_verify_only_streams", &[], 1));
        self.send_verifier_verifies(d);
    }

    /// Queues the verify-only requests not yet sent on `d`'s verify-only stream.
    fn send_verifier_verifies(&self, d: &str) {
        let now = Instant::now();
        let mut remotes = self.map.borrow_mut();
        let Some(r) = remotes.get_mut(d) else { return };
        if r.verifier_closing {
            return; // Sent again on the next one (`verifier_closed`).
        }
        let Some(conn) = r.verifier.clone() else {
            return;
        };
        if conn.st.borrow().closed {
            return;
        }
        super::write_verifies(&conn, d, &mut r.verifies, true, now);
    }

    /// Closes `d`'s verify-only stream once no verification waits on it.
    pub(in crate::runtime) fn close_verifier_if_idle(&self, shard: &Shard, d: &str) {
        let conn = {
            let mut remotes = self.map.borrow_mut();
            let Some(r) = remotes.get_mut(d) else { return };
            if r.verifier_closing || r.verifies.iter().any(|v| v.verify_only) {
                return;
            }
            let Some(conn) = r.verifier.clone() else {
                return;
            };
            r.verifier_closing = true;
            r.verifier_failures = 0;
            conn
        };
        let mut st = conn.st.borrow_mut();
        if st.closed {
            return;
        }
        debug!(parent: &conn.span, remote = %d, "verify-only stream: every verification answered; closing it");
        st.proto.close(None, Instant::now());
        st.collect_events();
        st.pump();
        drop(st);
        conn.wake.notify_one();
        if shard
            .owner_elsewhere(&crate::router::domain_key(d))
            .is_some()
        {
            super::super::metrics(|m| m.count("cluster_verify_streams_closed", &[], 1));
        }
    }

    /// `d`'s verify-only stream `conn` ended. Requests not yet written to it go on a new
    /// one: at once when we closed it or it is the first end in a row with requests
    /// waiting; else they are answered with an error (`remote-connection-failed`).
    pub(in crate::runtime) fn verifier_closed(&self, shard: &Shard, conn: &Conn, d: &str) {
        let retry = {
            let mut remotes = self.map.borrow_mut();
            let Some(r) = remotes.get_mut(d) else { return };
            if r.verifier.as_ref().is_none_or(|c| c.id != conn.id) {
                return;
            }
            r.verifier = None;
            let ours = std::mem::replace(&mut r.verifier_closing, false);
            let mut waiting = None;
            for v in r.verifies.iter_mut().filter(|v| v.verify_only) {
                v.sent = false;
                waiting.get_or_insert_with(|| v.local.clone());
            }
            let Some(local) = waiting else { return };
            if !ours {
                r.verifier_failures = r.verifier_failures.saturating_add(1);
            }
            (r.verifier_failures <= 1).then_some(local)
        };
        match retry {
            Some(local) => {
                info!(parent: &shard.span, remote = %d, "verify-only stream ended with verifications waiting: sending them on a new one");
                self.ensure_verifier(shard, d, &local);
            }
            None => self.verifier_failed(
                shard,
                d,
                Failure {
                    condition: crate::condition::StanzaCondition::RemoteServerNotFound,
                    text: "the verification stream to the remote server ended twice".into(),
                },
            ),
        }
    }

    /// A verify-only stream to `d` could not be opened (or kept): the verify-only
    /// requests waiting are answered with `f`'s error (XEP-0220 §2.5).
    pub(in crate::runtime) fn verifier_failed(&self, shard: &Shard, d: &str, f: Failure) {
        let failed = {
            let mut remotes = self.map.borrow_mut();
            let Some(r) = remotes.get_mut(d) else { return };
            r.verifier_connecting = false;
            r.verifier_failures = 0;
            let (failed, keep) = std::mem::take(&mut r.verifies)
                .into_iter()
                .partition(|v| v.verify_only);
            r.verifies = keep;
            failed
        };
        let cond = DialbackErrorCondition::from_stanza_condition(f.condition);
        let failed: Vec<super::VerifyReq> = failed;
        for v in failed {
            shard.s2s.send_verdict(
                shard,
                v.reply_shard,
                v.conn,
                v.local,
                d.to_owned(),
                DialbackResult::Error(cond),
            );
        }
    }
}
