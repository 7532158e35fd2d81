//! S2S streams on a shard (RFC 6120, XEP-0220, XEP-0178): accepting inbound streams and
//! adopting those handed over by other shards, acting on the S2S machine's events
//! (STARTTLS, authentication, dialback requests and answers, stanzas, close), the
//! bookkeeping when a stream ends, and the dialback verdicts relayed back to inbound
//! streams. What a remote domain's outbound stream carries is `remote.rs`'s.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio_uring::net::TcpStream;
use tracing::{debug, info, info_span, warn};

use super::conn::{Conn, ConnId, ConnState, Handoff, Tls};
use super::io::{After, Driven};
use super::msg::{ShardMsg, VerifyRequest};
use super::shard::Shard;
use crate::condition::StanzaCondition;
use crate::dialback::DialbackResult;
use crate::metrics::Latency;
use crate::router::queue::{BounceCause, Failure};
use crate::router::{domain_key, shard_of};
use crate::stream::s2s::{AuthMethod, CloseReason, Direction, Event, S2sConnection, TlsRole};

/// How long a write must have waited for the socket before `fedrouter status` and the
/// `write_stalled_streams` gauge show the stream as stalled.
pub(super) const STALL_SHOWN: Duration = Duration::from_secs(1);

impl Driven for S2sConnection {
    const PROTO: &'static str = "s2s";
    fn on_events(shard: &Shard, conn: &Rc<Conn<Self>>, may_hand_off: bool) -> After {
        shard.s2s.on_events(shard, conn, may_hand_off)
    }
    fn ended(shard: &Shard, conn: &Rc<Conn<Self>>, reason: &CloseReason) {
        shard.s2s.connection_ended(shard, conn, reason)
    }
    fn write_stall_timeout(shard: &Shard) -> Duration {
        shard.shared().config.s2s.write_stall_timeout
    }
    fn write_stalled(shard: &Shard, conn: &Rc<Conn<Self>>) {
        shard.s2s.write_stalled(shard, conn)
    }
    fn written(shard: &Shard, conn: &Rc<Conn<Self>>) {
        // An outbound stream, or an inbound one that is bidirectional (XEP-0288) and may
        // serve as the domain's outbound stream (`drain_queue` checks it does).
        if conn.direction == Direction::Outbound || conn.st.borrow().proto.is_bidi() {
            // The shard's interned key: no allocation per write.
            let d = shard
                .remotes
                .key(&domain_key(conn.st.borrow().proto.remote_domain()));
            shard.remotes.drain_queue(shard, conn, &d);
        }
    }
    fn conns(shard: &Shard) -> &RefCell<HashMap<ConnId, Rc<Conn<Self>>>> {
        &shard.s2s.conns
    }
    fn adopt_msg(h: Handoff<Self>) -> ShardMsg {
        ShardMsg::Adopt(Box::new(h))
    }
}

/// The S2S streams of a shard.
#[derive(Default)]
pub(super) struct S2sStreams {
    /// Every S2S stream on this shard, inbound and outbound.
    pub(super) conns: RefCell<HashMap<ConnId, Rc<Conn>>>,
    /// Inbound streams not authenticated yet (bounded by
    /// `s2s.max_unauthenticated_per_shard`).
    unauthenticated: Cell<usize>,
}

impl S2sStreams {
    /// Counts a new inbound connection as unauthenticated, unless the shard holds
    /// `s2s.max_unauthenticated_per_shard` already (then it is refused).
    pub(super) fn admit_unauthenticated(&self, shard: &Shard) -> bool {
        if self.unauthenticated.get() >= shard.shared().config.s2s.max_unauthenticated_per_shard {
            return false;
        }
        self.unauthenticated.set(self.unauthenticated.get() + 1);
        true
    }

    /// An unauthenticated inbound connection authenticated, moved or ended.
    pub(super) fn release_unauthenticated(&self) {
        self.unauthenticated
            .set(self.unauthenticated.get().saturating_sub(1));
    }

    /// Takes over a connection another shard accepted.
    pub(super) fn adopt(&self, shard: &Shard, mut h: Handoff) {
        h.state.moved = true;
        let std_stream = std::net::TcpStream::from(h.fd);
        let stream = TcpStream::from_std(std_stream);
        let span = info_span!(
            parent: &shard.span,
            "s2s",
            dir = "in",
            peer_domain = tracing::field::Empty,
            id = tracing::field::Empty,
            adopted = true
        );
        let conn = Rc::new(Conn::new(shard.next_conn_id(), stream, h.state, span));
        {
            let st = conn.st.borrow();
            if st.opened {
                conn.record_once("id", st.proto.stream_id());
                if !st.proto.remote_domain().is_empty() {
                    conn.record_once("peer_domain", st.proto.remote_domain());
                }
            }
        }
        debug!(parent: &conn.span, "adopted from another shard");
        self.conns.borrow_mut().insert(conn.id, Rc::clone(&conn));
        super::io::spawn_conn(shard, conn);
    }

    /// Acts on the connection's events. `may_hand_off`: the caller is the read loop and
    /// can move the connection to another shard.
    pub(super) fn on_events(&self, shard: &Shard, conn: &Rc<Conn>, may_hand_off: bool) -> After {
        loop {
            let ev = {
                let mut st = conn.st.borrow_mut();
                st.collect_events();
                match st.events.pop_front() {
                    Some(e) => e,
                    None => return After::Continue,
                }
            };
            // Hand-off: an inbound stream goes to the shard of the domain it names.
            if may_hand_off && conn.direction == Direction::Inbound {
                let claimed = match &ev {
                    Event::Opened {
                        remote: Some(r), ..
                    } => Some(r.as_str()),
                    Event::VerifyNeeded { remote, .. } | Event::Authenticated { remote, .. } => {
                        Some(remote.as_str())
                    }
                    _ => None,
                };
                if let Some(r) = claimed {
                    let dst = shard_of(&domain_key(r), shard.n);
                    let stays = {
                        let st = conn.st.borrow();
                        st.handing_off || st.moved || st.pinned
                    };
                    if dst != shard.id && !stays {
                        if let Event::Opened {
                            remote, stream_id, ..
                        } = &ev
                        {
                            if let Some(r) = remote {
                                conn.record_once("peer_domain", r);
                            }
                            conn.record_once("id", stream_id);
                        }
                        debug!(parent: &conn.span, remote = r, to_shard = dst, "handing off");
                        let mut st = conn.st.borrow_mut();
                        if let Event::Opened { .. } = ev {
                            st.opened = true;
                        }
                        st.events.push_front(ev);
                        st.handing_off = true;
                        return After::HandOff(dst);
                    }
                }
            }
            self.on_event(shard, conn, ev);
        }
    }

    fn on_event(&self, shard: &Shard, conn: &Rc<Conn>, ev: Event) {
        match ev {
            Event::Opened {
                local,
                remote,
                stream_id,
            } => {
                // The span keeps the first id (see `Conn::record_once`); each restart's
                // id is on this line.
                conn.record_once("id", &stream_id);
                if let Some(r) = &remote {
                    conn.record_once("peer_domain", r);
                }
                debug!(parent: &conn.span, %local, %stream_id, "stream opened");
                conn.st.borrow_mut().opened = true;
            }
            Event::StartTls(role) => {
                let tls = match role {
                    TlsRole::Server => {
                        rustls::ServerConnection::new(Arc::clone(&shard.shared().tls_server))
                            .map(Tls::Server)
                    }
                    TlsRole::Client { sni } => {
                        let local = conn.st.borrow().proto.local_domain().to_owned();
                        match (
                            shard.shared().client_tls(&local, &sni, false),
                            crate::tls::server_name(&sni),
                        ) {
                            (Some(cfg), Ok(name)) => {
                                rustls::ClientConnection::new(cfg, name).map(Tls::Client)
                            }
                            (None, _) => Err(rustls::Error::General(
                                "no trust anchors to verify the server's certificate (tls.trust)"
                                    .into(),
                            )),
                            (_, Err(e)) => Err(rustls::Error::General(e.to_string())),
                        }
                    }
                };
                let mut st = conn.st.borrow_mut();
                match tls {
                    Ok(t) => st.start_tls(t),
                    Err(e) => {
                        st.proto.handle_tls_failed(&e.to_string());
                        st.collect_events();
                    }
                }
            }
            Event::Authenticated {
                local,
                remote,
                method,
                direction,
            } => {
                conn.st.borrow_mut().pinned = true;
                info!(parent: &conn.span, %local, %remote, ?method, "authenticated");
                super::metrics(|mm| {
                    mm.count(
                        "auth",
                        &[
                            ("proto", "s2s"),
                            ("method", method.as_str()),
                            ("result", "ok"),
                        ],
                        1,
                    );
                    // The stream's own set-up (not a domain joining it later: XEP-0220 §2.4).
                    let st = conn.st.borrow();
                    if direction == Direction::Outbound
                        && st.proto.remote_domain().eq_ignore_ascii_case(&remote)
                    {
                        mm.observe(Latency::Negotiation, st.started.elapsed());
                    }
                });
                {
                    let mut st = conn.st.borrow_mut();
                    if st.counted_unauth {
                        st.counted_unauth = false;
                        self.unauthenticated
                            .set(self.unauthenticated.get().saturating_sub(1));
                    }
                }
                if direction == Direction::Outbound {
                    {
                        // XEP-0198 enabled with the first pair: from here on, what the
                        // socket takes is held until the peer acknowledges it.
                        let mut st = conn.st.borrow_mut();
                        if st.proto.acknowledges_stanzas() {
                            st.hold_until_acked = true;
                        }
                    }
                    shard.remotes.outbound_ready(shard, conn, &local, &remote);
                }
            }
            Event::BidiAuthenticated {
                local,
                remote,
                method,
                direction,
            } => {
                info!(parent: &conn.span, %local, %remote, ?method, ?direction, "bidirectional stream (XEP-0288): authenticated against the stream's direction");
                if direction == Direction::Outbound {
                    // Our inbound stream from `remote` may carry our stanzas to it. The
                    // stream is on the owner shard of the domain it authenticated (the
                    // hand-off after `Opened`); a piggybacked domain owned by another
                    // shard keeps its own outbound stream there.
                    let d = domain_key(&remote).into_owned();
                    if shard_of(&d, shard.n) == shard.id {
                        shard.remotes.bidi_inbound_ready(shard, conn, &local, &d);
                    }
                }
            }
            Event::Acknowledged { count } => {
                let released = conn.st.borrow_mut().acknowledged(count as usize);
                if released < count as usize {
                    debug!(parent: &conn.span, count, released, "peer acknowledged more than held");
                }
                super::metrics(|m| m.count("sm_acknowledged", &[], released as u64));
                // Room under s2s.queue_per_domain: move what waits into the stream, for
                // each domain it serves (XEP-0220 §2.4).
                let served = conn.st.borrow().proto.served_remotes();
                for d in served {
                    shard.remotes.drain_queue(shard, conn, &domain_key(&d));
                }
            }
            Event::StreamManagementEnabled => {
                // XEP-0198 enabled by the peer on an inbound stream: what we send on it
                // (XEP-0288 bidi) is held until acknowledged, as on an outbound stream,
                // and sent again on the next stream if this one is lost.
                let mut st = conn.st.borrow_mut();
                let counted = st.proto.unacknowledged();
                st.start_holding(counted);
            }
            Event::StreamManagementRefused => {
                info!(parent: &conn.span, "peer refused stream management (XEP-0198): stanzas count as delivered once the socket takes them");
                conn.st.borrow_mut().stop_holding();
            }
            Event::SaslExternalNotOffered {
                local,
                remote,
                dialback_fallback,
            } => {
                // XEP-0178 §3: no EXTERNAL after TLS. The peer refused our certificate or
                // does not implement EXTERNAL; often even its features cannot tell (Prosody
                // offers no mechanism when it refuses a certificate), so both are said and
                // `check` tells them apart where it can. Counted.
                if dialback_fallback {
                    warn!(parent: &conn.span, %local, %remote, "peer did not offer SASL EXTERNAL after TLS: it does not accept our certificate for {local}, or it does not implement SASL EXTERNAL (XEP-0178); `fedrouter check {remote}` tells which where it can; falling back to dialback");
                } else {
                    warn!(parent: &conn.span, %local, %remote, "peer did not offer SASL EXTERNAL after TLS: it does not accept our certificate for {local}, or it does not implement SASL EXTERNAL (XEP-0178); `fedrouter check {remote}` tells which where it can; policy forbids dialback");
                }
                super::metrics(|m| {
                    m.count(
                        "auth",
                        &[
                            ("proto", "s2s"),
                            ("method", AuthMethod::SaslExternal.as_str()),
                            ("result", "not-offered"),
                        ],
                        1,
                    )
                });
            }
            Event::AuthFailed {
                local,
                remote,
                result,
            } => {
                debug!(parent: &conn.span, %local, %remote, ?result, "authentication failed");
                super::metrics(|m| {
                    m.count(
                        "auth",
                        &[("proto", "s2s"), ("method", "dialback"), ("result", "fail")],
                        1,
                    )
                });
                shard.remotes.outbound_auth_failed(
                    shard,
                    conn,
                    &domain_key(&remote),
                    &local,
                    result,
                );
            }
            Event::VerifyNeeded {
                local,
                remote,
                stream_id,
                key,
            } => {
                // The verdict comes back addressed to this connection on this shard.
                conn.st.borrow_mut().pinned = true;
                let d = domain_key(&remote).into_owned();
                let dst = shard_of(&d, shard.n);
                let req = VerifyRequest {
                    local,
                    remote: d,
                    stream_id,
                    key,
                    reply_shard: shard.id,
                    conn: conn.id,
                    bidi: conn.st.borrow().proto.is_bidi(),
                };
                if dst == shard.id {
                    shard.remotes.verify_with_authoritative(shard, req);
                } else {
                    shard.send_to(dst, ShardMsg::Verify(req));
                }
            }
            Event::VerifyAnswered {
                local,
                remote,
                stream_id,
                result,
            } => {
                shard.remotes.verify_answered(
                    shard,
                    &domain_key(&remote),
                    &local,
                    &stream_id,
                    result,
                );
            }
            Event::Stanza { element, .. } => {
                super::count_stanza(super::StanzaDir::S2sIn, element.name());
                shard.route(element)
            }
            Event::Closed(reason) => {
                if let CloseReason::ReceivedError(condition, text) = &reason {
                    // RFC 6120 §4.9: the peer's reason for ending the stream (a refused
                    // certificate, a policy, a restart) is an operator's first question.
                    let dir = direction_label(conn.direction);
                    let remote = conn.st.borrow().proto.remote_domain().to_owned();
                    warn!(
                        parent: &conn.span,
                        direction = dir,
                        %remote,
                        %condition,
                        text = text.as_deref().unwrap_or(""),
                        "the peer closed the stream with a stream error"
                    );
                    super::metrics(|m| {
                        m.count(
                            "stream_errors",
                            &[("dir", dir), ("condition", condition.as_str())],
                            1,
                        )
                    });
                }
                debug!(parent: &conn.span, ?reason, "stream closed");
                let was = std::mem::replace(&mut conn.st.borrow_mut().closed, true);
                if !was {
                    self.connection_ended(shard, conn, &reason);
                }
                conn.st.borrow_mut().close_tls();
                conn.wake.notify_one();
            }
        }
    }

    /// An S2S stream's socket accepted no byte for `s2s.write_stall_timeout` (the writer
    /// closed it): the stanzas that never reached the socket and, on the domain's current
    /// outbound stream, everything queued for the domain are bounced with
    /// `remote-server-timeout` (RFC 6120 §8.3.3.16), and the domain backs off. Stanzas the
    /// socket had accepted still reach the peer if it resumes reading before the kernel
    /// gives up (no XEP-0198 acknowledgements here to tell).
    pub(super) fn write_stalled(&self, shard: &Shard, conn: &Rc<Conn>) {
        let timeout = shard.shared().config.s2s.write_stall_timeout;
        let (remote, pending, unsent) = {
            let mut st = conn.st.borrow_mut();
            let pending = st.backlog();
            (
                domain_key(st.proto.remote_domain()).into_owned(),
                pending,
                st.take_unsent(),
            )
        };
        super::metrics(|m| m.count("stalled_streams_closed", &[("proto", "s2s")], 1));
        warn!(
            parent: &conn.span,
            remote = %remote,
            dir = direction_label(conn.direction),
            unsent = unsent.len(),
            pending_bytes = pending,
            timeout = %humantime::format_duration(timeout),
            "remote server stopped reading: stream closed by s2s.write_stall_timeout; what waited for it is bounced (remote-server-timeout)"
        );
        let f = Failure {
            condition: StanzaCondition::RemoteServerTimeout,
            text: format!(
                "the remote server accepted no data for {}",
                humantime::format_duration(timeout)
            ),
        };
        for q in unsent {
            shard
                .remotes
                .bounce_queued(shard, q, f.condition, &f.text, BounceCause::WriteStall);
        }
        // Every domain the stream served (XEP-0220 §2.4 multiplexing) fails with it.
        let served = conn.st.borrow().proto.served_remotes();
        let mut domains = vec![remote];
        domains.extend(served.iter().map(|d| domain_key(d).into_owned()));
        domains.dedup();
        for d in domains {
            if shard.remotes.is_current(&d, conn.id) {
                shard
                    .remotes
                    .remote_failed(shard, &d, f.clone(), BounceCause::WriteStall);
            }
        }
        self.connection_ended(shard, conn, &CloseReason::Local);
    }

    /// Bookkeeping when a connection ends (once).
    pub(super) fn connection_ended(&self, shard: &Shard, conn: &Conn, reason: &CloseReason) {
        let (counted, remote, authenticated, bidi) = {
            let mut st = conn.st.borrow_mut();
            let counted = std::mem::replace(&mut st.counted_unauth, false);
            let remote = st.proto.remote_domain().to_owned();
            let auth = st.proto.authenticated().next().is_some();
            let bidi = st.proto.bidi_authenticated().next().is_some();
            (counted, remote, auth, bidi)
        };
        if counted {
            self.unauthenticated
                .set(self.unauthenticated.get().saturating_sub(1));
        }
        let verify_only = conn.st.borrow().proto.is_verify_only();
        match conn.direction {
            Direction::Outbound if verify_only => {
                shard
                    .remotes
                    .verifier_closed(shard, conn, &domain_key(&remote))
            }
            Direction::Outbound => {
                shard.remotes.forget_target(conn.id);
                // Each domain the stream served (its own, and those it multiplexed:
                // XEP-0220 §2.4) sees the end, with its own stanzas and its own state.
                let served: Vec<(String, bool)> = {
                    let st = conn.st.borrow();
                    st.proto
                        .served_remotes()
                        .into_iter()
                        .map(|d| {
                            let auth = st
                                .proto
                                .authenticated()
                                .any(|(_, r, _)| r.eq_ignore_ascii_case(&d));
                            (domain_key(&d).into_owned(), auth)
                        })
                        .collect()
                };
                let own = domain_key(&remote).into_owned();
                for (d, auth) in served {
                    let auth = if d == own { authenticated } else { auth };
                    shard.remotes.outbound_closed(shard, conn, &d, reason, auth);
                }
            }
            Direction::Inbound => {
                if bidi {
                    // It may have served as the domain's outbound stream (XEP-0288):
                    // what it did not write goes out first on the next one.
                    shard
                        .remotes
                        .outbound_closed(shard, conn, &domain_key(&remote), reason, true);
                }
                self.inbound_ended(shard, conn, reason)
            }
        }
    }

    /// An inbound stream ended. One that named a remote domain but authenticated nothing
    /// and carried no dialback request, and that the peer broke off (it closed it, sent a
    /// stream error, failed TLS) or that we refused with a stream error, is how a remote
    /// server's verification connection fails (XEP-0220 §2.1.2: the Receiving Server
    /// connects to our authoritative side to check our key, and sends `db:verify`). The
    /// domain's owner is told ([`Shard::peer_verification_failed`]), so that a dialback
    /// of ours waiting on that check fails at once instead of after
    /// `s2s.negotiation_timeout`. Our own closes (idle, after an `invalid` verdict) are
    /// not such failures.
    pub(super) fn inbound_ended(&self, shard: &Shard, conn: &Conn, reason: &CloseReason) {
        let (d, opened) = {
            let st = conn.st.borrow();
            let silent = st.proto.authenticated().next().is_none()
                && st.proto.dialback_requests_received() == 0;
            if !silent || st.proto.remote_domain().is_empty() {
                return;
            }
            (
                domain_key(st.proto.remote_domain()).into_owned(),
                st.started,
            )
        };
        let what = match reason {
            CloseReason::Local | CloseReason::CloseTimeout => return,
            CloseReason::PeerClosed => {
                "it closed its stream to us (its verification connection) before asking about our key".to_owned()
            }
            CloseReason::ReceivedError(c, text) => format!(
                "it closed its stream to us (its verification connection) with a <{c}/> stream error{}",
                text.as_deref().map(|t| format!(" ({t})")).unwrap_or_default()
            ),
            CloseReason::SentError(c, text) => format!(
                "we refused its stream to us (its verification connection) with <{c}/> ({text})"
            ),
            CloseReason::TlsFailed(e) => format!(
                "TLS failed on its stream to us (its verification connection): {e}"
            ),
        };
        let failure = Failure {
            condition: reason.bounce_condition(),
            text: what,
        };
        let dst = shard_of(&d, shard.n);
        if dst == shard.id {
            shard
                .remotes
                .peer_verification_failed(shard, &d, opened, failure);
        } else {
            shard.send_to(
                dst,
                ShardMsg::PeerStreamFailed {
                    remote: d,
                    opened,
                    condition: failure.condition,
                    what: failure.text,
                },
            );
        }
    }

    /// Answers dialback verification `conn` (on shard `reply_shard`) with `result`.
    pub(super) fn send_verdict(
        &self,
        shard: &Shard,
        reply_shard: usize,
        conn: ConnId,
        local: String,
        remote: String,
        result: DialbackResult,
    ) {
        if reply_shard == shard.id {
            self.apply_verdict(shard, conn, &local, &remote, result);
        } else {
            shard.send_to(
                reply_shard,
                ShardMsg::Verdict {
                    conn,
                    local,
                    remote,
                    result,
                },
            );
        }
    }

    /// The authoritative server's verdict on the dialback key of inbound stream `conn`
    /// (XEP-0220 §2.1.4): the stream answers the Receiving Server's `db:result`.
    pub(super) fn apply_verdict(
        &self,
        shard: &Shard,
        conn: ConnId,
        local: &str,
        remote: &str,
        result: DialbackResult,
    ) {
        let Some(c) = self.conns.borrow().get(&conn).cloned() else {
            return;
        };
        if result == DialbackResult::Invalid {
            // Logged whether or not the stream closes for it (XEP-0220 §2.2.1: a stream
            // with other authenticated pairs gets `<forbidden/>` and stays).
            warn!(
                parent: &c.span,
                local,
                remote,
                "the authoritative server judged the peer's dialback key invalid: stanzas from this domain are refused on this stream"
            );
        }
        {
            let mut st = c.st.borrow_mut();
            st.proto
                .handle_dialback_verdict(local, remote, result, Instant::now());
            st.collect_events();
        }
        self.on_events(shard, &c, false);
        c.st.borrow_mut().pump();
        c.wake.notify_one();
    }

    /// Gauges: streams by direction and state; streams whose socket has accepted no byte
    /// for [`STALL_SHOWN`].
    pub(super) fn gauges(&self, m: &mut crate::metrics::Metrics) {
        let mut stalled = 0;
        for c in self.conns.borrow().values() {
            let st = c.st.borrow();
            let state = if st.proto.authenticated().next().is_some() {
                "authenticated"
            } else {
                "negotiating"
            };
            m.add_gauge(
                "streams",
                &[
                    ("proto", "s2s"),
                    ("dir", direction_label(c.direction)),
                    ("state", state),
                ],
                1,
            );
            if st
                .write_waiting_since
                .is_some_and(|t| t.elapsed() >= STALL_SHOWN)
            {
                stalled += 1;
            }
        }
        m.add_gauge("write_stalled_streams", &[("proto", "s2s")], stalled);
    }

    /// `fedrouter status`: each stream as a JSON object (direction, state, TLS,
    /// authenticated pairs and methods, age, write stall), by remote domain.
    pub(super) fn status(&self) -> BTreeMap<String, Vec<serde_json::Value>> {
        use serde_json::json;
        let mut by_domain: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
        for c in self.conns.borrow().values() {
            let st = c.st.borrow();
            let remote = domain_key(st.proto.remote_domain()).into_owned();
            let pairs: Vec<serde_json::Value> = st
                .proto
                .authenticated()
                .map(|(l, r, m)| json!({"local": l, "remote": r, "method": format!("{m:?}").to_ascii_lowercase()}))
                .collect();
            let bidi_pairs: Vec<serde_json::Value> = st
                .proto
                .bidi_authenticated()
                .map(|(l, r, m)| json!({"local": l, "remote": r, "method": format!("{m:?}").to_ascii_lowercase()}))
                .collect();
            let serves: Vec<&str> = if bidi_pairs.is_empty() {
                vec![direction_label(c.direction)]
            } else {
                vec!["in", "out"]
            };
            let state = if st.closed {
                "closing"
            } else if pairs.is_empty() {
                "negotiating"
            } else {
                "authenticated"
            };
            let mut stream = json!({
                "direction": direction_label(c.direction),
                "state": state,
                "tls": st.tls.is_some(),
                "authenticated": pairs,
                "age_s": st.started.elapsed().as_secs_f64(),
                // XEP-0198: "enabled" (the peer acknowledges, or we count for it),
                // "requested" (our <enable/> not answered yet), or "off".
                "sm": if st.proto.stream_management_enabled() || st.proto.handled_count().is_some() && c.direction == Direction::Inbound {
                    "enabled"
                } else if st.proto.acknowledges_stanzas() {
                    "requested"
                } else {
                    "off"
                },
                "unacked": st.proto.unacknowledged(),
                // XEP-0288: negotiated, and the pairs carried against the stream's
                // direction; `serves` says which directions the stream carries for us.
                "bidi": st.proto.is_bidi(),
                "bidi_authenticated": bidi_pairs,
                "serves": serves,
            });
            if c.direction == Direction::Outbound {
                // XEP-0220 §2.4: the remote domains the stream serves (its own first).
                let domains = st.proto.served_remotes();
                stream["multiplexed"] = json!(domains.len() > 1);
                stream["domains"] = json!(domains);
            }
            if st.proto.is_verify_only() {
                // XEP-0220 §2.1.3: carries our `db:verify`s only, closed once answered.
                stream["verify_only"] = json!(true);
            }
            if let Some(t) = st
                .write_waiting_since
                .filter(|t| t.elapsed() >= STALL_SHOWN)
            {
                // The peer has accepted no byte for this long (s2s.write_stall_timeout
                // closes the stream).
                stream["write_stalled_ms"] = json!(t.elapsed().as_millis() as u64);
                stream["pending_bytes"] = json!(st.backlog());
            }
            by_domain.entry(remote).or_default().push(stream);
        }
        by_domain
    }

    /// Every S2S stream, for the shutdown.
    pub(super) fn all(&self) -> Vec<Rc<Conn>> {
        self.conns.borrow().values().cloned().collect()
    }
}

pub(super) async fn inbound(shard: Rc<Shard>, stream: TcpStream, direct_tls: bool) {
    let now = Instant::now();
    let header_timeout = shard.shared().config.s2s.stream_header_timeout;
    let mut tls = None;
    let mut chain = None;
    if direct_tls {
        let mut server =
            match rustls::ServerConnection::new(Arc::clone(&shard.shared().tls_server_direct)) {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "TLS server setup failed");
                    shard.s2s.release_unauthenticated();
                    return;
                }
            };
        let hs = tokio::time::timeout(
            header_timeout,
            super::io::tls_handshake(&stream, &mut server),
        )
        .await;
        match hs {
            Ok(Ok(())) => {
                chain = Some((
                    server
                        .peer_certificates()
                        .map(|c| c.to_vec())
                        .unwrap_or_default(),
                    rustls::pki_types::UnixTime::now(),
                ));
                tls = Some(Tls::Server(server));
            }
            _ => {
                debug!("direct TLS handshake failed or timed out");
                let _ = stream.shutdown(std::net::Shutdown::Both);
                shard.s2s.release_unauthenticated();
                return;
            }
        }
    }
    let nonce = shard.rng.borrow_mut().random::<u64>();
    let proto = S2sConnection::inbound(Arc::clone(&shard.shared().s2s), nonce, chain, now);
    let mut st = ConnState::new(proto, tls);
    st.counted_unauth = true;
    if direct_tls {
        // Plaintext that arrived with the end of the handshake.
        st.input(&[], now);
    }
    let conn = Rc::new(Conn::new(
        shard.next_conn_id(),
        stream,
        st,
        tracing::Span::current(),
    ));
    shard
        .s2s
        .conns
        .borrow_mut()
        .insert(conn.id, Rc::clone(&conn));
    super::io::spawn_conn(&shard, conn);
}

/// The `dir` label of a stream's metrics and logs: `"out"` or `"in"`.
fn direction_label(d: Direction) -> &'static str {
    match d {
        Direction::Outbound => "out",
        Direction::Inbound => "in",
    }
}
