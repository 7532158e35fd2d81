//! Server Dialback verification for the remote domains a shard owns (XEP-0220 §2.1.3):
//! the `db:verify`s this shard sends to a remote domain's authoritative server on behalf
//! of inbound streams (on any shard) that a peer of that domain asked to authenticate,
//! which stream carries them (the domain's outbound stream, a verify-only stream, or a
//! new one), the answers routed back to the asking stream's shard, and what happens when
//! a peer's inbound stream breaks off before it asked.

use std::time::Instant;

use super::{remote_entry, Remotes};
use crate::condition::StanzaCondition;
use crate::dialback::{DialbackErrorCondition, DialbackResult};
use crate::router::queue::Failure;
use crate::runtime::conn::{Conn, ConnId};
use crate::runtime::msg::VerifyRequest;
use crate::runtime::shard::Shard;
use crate::stream::s2s::Direction;

/// Writes the `db:verify`s of `verifies` not sent yet whose `verify_only` is
/// `verify_only` on `conn` (XEP-0220 §2.1.3), and wakes its writer.
/// `d` is the authoritative domain (the stream's own, or one it multiplexes: XEP-0220
/// §2.4).
pub(super) fn write_verifies(
    conn: &Conn,
    d: &str,
    verifies: &mut [VerifyReq],
    verify_only: bool,
    now: Instant,
) {
    let mut st = conn.st.borrow_mut();
    for v in verifies
        .iter_mut()
        .filter(|v| !v.sent && v.verify_only == verify_only)
    {
        if st
            .proto
            .send_db_verify_for(&v.local, d, &v.stream_id, &v.key, now)
            .is_ok()
        {
            v.sent = true;
        }
    }
    st.pump();
    drop(st);
    conn.wake.notify_one();
}

/// A `db:verify` waiting for its answer from the authoritative server.
pub(super) struct VerifyReq {
    pub(super) local: String,
    pub(super) stream_id: String,
    pub(super) key: String,
    pub(super) reply_shard: usize,
    pub(super) conn: ConnId,
    pub(super) sent: bool,
    /// Goes on the domain's verify-only stream ([`Remote::verifier`]), not on `conn`.
    pub(super) verify_only: bool,
}

impl Remotes {
    /// On shard(remote): asks `remote`'s authoritative server about `key` (XEP-0220
    /// §2.1.3) over our outbound stream to it when one is open or being dialled; else,
    /// when the stream asking is bidirectional (XEP-0288: it will carry our stanzas), the
    /// domain's stream is an inbound one, or another node owns the domain, over a
    /// verify-only stream (`remote/verify_only.rs`); else over a new outbound stream.
    pub(in crate::runtime) fn verify_with_authoritative(&self, shard: &Shard, req: VerifyRequest) {
        let VerifyRequest {
            local,
            remote,
            stream_id,
            key,
            reply_shard,
            conn,
            bidi,
        } = req;
        let elsewhere = shard
            .owner_elsewhere(&crate::router::domain_key(&remote))
            .is_some();
        let (backoff, verify_only) = {
            let mut remotes = self.map.borrow_mut();
            let (_, r) = remote_entry(&mut remotes, &remote);
            let now = Instant::now();
            // A stream of our own, open or being dialled, carries it; else, when that
            // stream would be an inbound bidirectional one (or the domain is another
            // node's), a verify-only stream does: no stream that authenticates us.
            let own = r.connecting
                || r.conn
                    .as_ref()
                    .is_some_and(|c| c.direction == Direction::Outbound && !c.st.borrow().closed);
            let inbound = r
                .conn
                .as_ref()
                .is_some_and(|c| c.direction == Direction::Inbound);
            let verify_only = !own && (bidi || elsewhere || inbound);
            if r.conn.is_none() && r.backoff_until.is_some_and(|u| now < u) {
                (r.last_failure.clone(), false)
            } else {
                r.verifies.push(VerifyReq {
                    local: local.clone(),
                    stream_id,
                    key,
                    reply_shard,
                    conn,
                    sent: false,
                    verify_only,
                });
                (None, verify_only)
            }
        };
        if let Some(f) = backoff {
            let cond = DialbackErrorCondition::from_stanza_condition(f.condition);
            return shard.s2s.send_verdict(
                shard,
                reply_shard,
                conn,
                local,
                remote,
                DialbackResult::Error(cond),
            );
        }
        if verify_only {
            return self.ensure_verifier(shard, &remote, &local);
        }
        // `db:verify` goes on a stream of our own, never on an inbound bidirectional one
        // (XEP-0288 §2.2: not on the connection the request came on either).
        let has_conn = {
            let mut remotes = self.map.borrow_mut();
            match remotes.get_mut(remote.as_str()) {
                Some(r) => {
                    Self::detach_inbound(r);
                    r.conn.is_some()
                }
                None => false,
            }
        };
        if has_conn {
            self.send_pending_verifies(&remote);
        } else {
            self.ensure_outbound(shard, &remote, &local);
        }
    }

    /// Sends the `db:verify` requests waiting for `d`'s outbound stream (XEP-0220
    /// §2.1.3).
    pub(in crate::runtime) fn send_pending_verifies(&self, d: &str) {
        let now = Instant::now();
        let mut remotes = self.map.borrow_mut();
        let Some(r) = remotes.get_mut(d) else { return };
        let Some(conn) = r.conn.clone() else { return };
        write_verifies(&conn, d, &mut r.verifies, false, now);
    }

    /// `d`'s authoritative server answered our `db:verify` for `local` and `stream_id`:
    /// the verdict goes back to the inbound streams that asked (XEP-0220 §2.1.4).
    pub(in crate::runtime) fn verify_answered(
        &self,
        shard: &Shard,
        d: &str,
        local: &str,
        stream_id: &str,
        result: DialbackResult,
    ) {
        let reqs: Vec<VerifyReq> = {
            let mut remotes = self.map.borrow_mut();
            let Some(r) = remotes.get_mut(d) else { return };
            let (done, keep) = r
                .verifies
                .drain(..)
                .partition(|v| v.sent && v.local == local && v.stream_id == stream_id);
            r.verifies = keep;
            done
        };
        for v in reqs {
            shard
                .s2s
                .send_verdict(shard, v.reply_shard, v.conn, v.local, d.to_owned(), result);
        }
        self.close_if_only_verifying(shard, d);
        self.close_verifier_if_idle(shard, d);
    }

    /// In a cluster, a node that does not own `d` opens an outbound stream to `d` only to
    /// verify the dialback keys of `d`'s inbound streams to it (XEP-0220 §2.1.3; only
    /// `d`'s owner sends `d` stanzas). Once no verification waits on it, it is closed
    /// (`</stream:stream>`) instead of holding a socket until `s2s.idle_timeout`: with
    /// thousands of peers, those sockets would count against the open-files limit.
    fn close_if_only_verifying(&self, shard: &Shard, d: &str) {
        if shard
            .owner_elsewhere(&crate::router::domain_key(d))
            .is_none()
        {
            return;
        }
        let conn = {
            let remotes = self.map.borrow();
            let Some(r) = remotes.get(d) else { return };
            if r.verifies.iter().any(|v| !v.verify_only) || !r.queue.is_empty() {
                return;
            }
            let Some(conn) = r.conn.clone() else { return };
            conn
        };
        // Only a stream of our own: `d`'s inbound bidirectional stream (XEP-0288) can be
        // `d`'s stream here too, and closing it would make the peer reconnect, verify
        // again and be closed again (measured: repeated closes with 20,000 peers).
        if conn.direction != Direction::Outbound {
            return;
        }
        let mut st = conn.st.borrow_mut();
        if st.closed || st.held() > 0 {
            return;
        }
        st.proto.close(None, Instant::now());
        st.collect_events();
        st.pump();
        drop(st);
        conn.wake.notify_one();
        crate::runtime::metrics(|m| m.count("cluster_verify_streams_closed", &[], 1));
    }

    /// On shard(`d`): an inbound stream from `d` opened at `opened` broke off before it
    /// carried a dialback request ([`super::s2s::S2sStreams::inbound_ended`]). If our outbound stream to
    /// `d` was opened before it and still waits for answers to our `db:result`s, that
    /// stream was `d`'s verification connection (or its attempt at one), and our key
    /// cannot be verified on it: the waiting dialbacks fail now
    /// ([`S2sConnection::fail_dialback`], XEP-0220 §2.1.1), their stanzas are bounced
    /// with `failure`'s condition and a WARN says what `d` did.
    pub(in crate::runtime) fn peer_verification_failed(
        &self,
        shard: &Shard,
        d: &str,
        opened: Instant,
        failure: Failure,
    ) {
        let Some(conn) = self.map.borrow().get(d).and_then(|r| r.conn.clone()) else {
            return;
        };
        let locals: Vec<String> = {
            let st = conn.st.borrow();
            if st.closed || st.started > opened {
                return;
            }
            st.proto
                .pending_dialback_pairs()
                .filter(|(_, r)| r.eq_ignore_ascii_case(d))
                .map(|(l, _)| l.to_owned())
                .collect()
        };
        if locals.is_empty() {
            return;
        }
        let result = DialbackResult::Error(
            if failure.condition == StanzaCondition::RemoteServerTimeout {
                DialbackErrorCondition::RemoteServerTimeout
            } else {
                DialbackErrorCondition::RemoteServerNotFound
            },
        );
        if let Some(r) = self.map.borrow_mut().get_mut(d) {
            r.auth_failure_note = Some(failure);
        }
        {
            let mut st = conn.st.borrow_mut();
            for l in &locals {
                st.proto.fail_dialback_for(l, d, result);
            }
        }
        shard.s2s.on_events(shard, &conn, false);
        if let Some(r) = self.map.borrow_mut().get_mut(d) {
            r.auth_failure_note = None;
        }
        conn.st.borrow_mut().pump();
        conn.wake.notify_one();
    }
}
