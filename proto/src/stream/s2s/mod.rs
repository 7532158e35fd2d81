//! The server-to-server stream state machine (RFC 6120 §4–§6, XEP-0220, XEP-0178) for
//! both ends: the initiating entity (outbound) and the receiving entity (inbound).
//!
//! Sans-IO, shaped like quinn-proto's `Connection`: the runtime feeds received bytes
//! ([`S2sConnection::handle_input`]), the current time ([`S2sConnection::handle_timeout`])
//! and the answers to what the connection asked for (TLS established, dialback verdicts);
//! it drains bytes to send ([`S2sConnection::poll_transmit`]), [`Event`]s
//! ([`S2sConnection::poll_event`]) and the next deadline
//! ([`S2sConnection::poll_timeout`]). It never reads a clock, touches a socket or runs TLS.
//!
//! TLS is a step the connection asks for: [`Event::StartTls`] means "everything
//! transmitted so far is plaintext; wrap the socket with rustls now", after which the
//! runtime calls [`S2sConnection::handle_tls_established`] and feeds decrypted bytes.
//!
//! Dialback roles (XEP-0220 §1.3): on an **outbound** stream we are the Originating
//! Server (we send `db:result` with our key) and, for verifications, the Receiving
//! Server asking the Authoritative Server (`db:verify`). On an **inbound** stream we are
//! the Receiving Server (a `db:result` becomes [`Event::VerifyNeeded`], answered with
//! [`S2sConnection::handle_dialback_verdict`]) and the Authoritative Server (we answer
//! `db:verify` ourselves with the XEP-0185 key check).
//!
//! Servers that predate XMPP 1.0 send headers without `version` (RFC 6120 §4.7.5): no
//! stream features flow either way, so neither STARTTLS nor SASL, only dialback
//! (XEP-0220 §2.4.1), which starts right after the headers. Their initial headers may
//! also lack `to` and `from`; the domains then come from each `db:result` / `db:verify`
//! ([`S2sConnection::is_legacy`]).
//!
//! The peer's first stream header must arrive within [`Timeouts::stream_header`] (both
//! directions); each later step within [`Timeouts::negotiation`].
//!
//! # Files
//!
//! The stream plumbing (framer, transmit buffer, events, deadlines, close sequence) is
//! shared with the C2S machine (`stream/plumbing.rs`). Here: `mod.rs` the connection's
//! state, its public calls and what every stream does (headers, elements, stanzas,
//! close); `negotiate.rs` the headers' answers, stream features, STARTTLS and SASL
//! EXTERNAL; `dialback.rs` `db:result` and `db:verify` both ways; `legacy.rs` what differs
//! for pre-1.0 peers; `sm.rs` XEP-0198; `bidi.rs` XEP-0288 bidirectional streams;
//! `verify_only.rs` streams that carry only `db:verify` (XEP-0220 §2.1.3); `multiplex.rs`
//! further remote domains at the same target on one outbound stream (XEP-0220 §2.4); `config.rs`
//! and `event.rs` the public types.

mod bidi;
mod config;
mod dialback;
mod event;
mod legacy;
mod multiplex;
mod negotiate;
mod sm;
mod verify_only;

use std::sync::Arc;
use std::time::Instant;

use rustls_pki_types::{CertificateDer, UnixTime};

pub use self::config::{PeerCertVerifier, S2sConfig, Timeouts};
use self::dialback::{Pending, PendingVerify};
pub use self::event::{AuthMethod, Direction, Event, S2sError};
pub use super::common::{CloseReason, TlsRole};
use super::plumbing::{Expired, Plumbing, NO_HEADER_IN_TIME, STEP_TIMED_OUT};
use super::policy::PeerPolicy;
use crate::condition::StreamCondition;
use crate::jid::domain_of;
use crate::stanza::StanzaKind;
use crate::xml::writer::{write_stream_header, HeaderOut};
use crate::xml::{ns, Element, Frame, Namespace, StreamHeader};

/// What a state waits for (named after it, as in rustls's handshake states).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The peer's stream header.
    ExpectHeader,
    /// Outbound: `<stream:features/>`.
    ExpectFeatures,
    /// Outbound: `<proceed/>` after our `<starttls/>`.
    ExpectProceed,
    /// The runtime's TLS handshake.
    ExpectTls,
    /// Outbound: `<success/>` or `<failure/>` after our SASL `<auth/>`.
    ExpectSaslResult,
    /// Negotiation done (dialback may still be under way): stanzas, dialback, close.
    Open,
    /// We sent `</stream:stream>`; waiting for the peer's.
    ExpectClose,
    /// Over.
    Closed,
}

/// One S2S stream, either direction. See the module docs for the I/O contract.
#[derive(Debug)]
pub struct S2sConnection {
    cfg: Arc<S2sConfig>,
    dir: Direction,
    state: State,
    /// Framer, transmit buffer, events, stream id, deadlines, close sequence.
    io: Plumbing<Event>,
    /// Our domain on this stream (outbound: the originating one; inbound: header `to`).
    local: String,
    /// The peer's domain (outbound: the target; inbound: header `from`, may be empty).
    remote: String,
    policy: PeerPolicy,
    tls: bool,
    peer_chain: Vec<CertificateDer<'static>>,
    /// When the TLS handshake completed (wall clock, from the runtime): the time the
    /// peer's chain is checked at.
    tls_at: Option<UnixTime>,
    /// The certificate check's verdict for a remote domain (checked once per chain).
    peer_cert_verdict: Option<(String, bool)>,
    sasl_done: bool,
    legacy: bool,
    /// Outbound: the peer offered dialback (feature, or a pre-1.0 stream).
    peer_dialback: bool,
    /// Authenticated (local, remote) pairs and how.
    pairs: Vec<(String, String, AuthMethod)>,
    /// Outbound: our `db:result`s awaiting an answer. Inbound: `db:result`s awaiting the
    /// runtime's verdict.
    pending_results: Vec<Pending>,
    /// Outbound: our `db:verify`s awaiting an answer.
    pending_verifies: Vec<PendingVerify>,
    /// Outbound: `db:verify`s requested before the stream was ready.
    queued_verifies: Vec<(String, String, String, String)>,
    /// Outbound: further (local, remote) pairs to authenticate once the stream is ready
    /// (another local domain, or another remote domain at the same target: XEP-0220 §2.4).
    queued_dialbacks: Vec<(String, String)>,
    /// Inbound: `db:result` and `db:verify` requests received (for the runtime: a stream
    /// that ends before asking anything was no dialback exchange).
    dialback_requests: u32,
    /// XEP-0198 stream management (`sm.rs`).
    sm: sm::SmState,
    /// XEP-0288 bidirectional stream (`bidi.rs`).
    bidi: bidi::BidiState,
    /// Outbound: carries only `db:verify`s, authenticates nothing (`verify_only.rs`).
    verify_only: bool,
    last_stanza: Instant,
    /// Why the stream ended, once it has.
    ended: Option<CloseReason>,
}

impl S2sConnection {
    /// A new outbound stream from `local` to `remote` (both lowercase domains), for which
    /// the runtime has a connected socket (plain TCP; for XEP-0368 direct TLS, pass
    /// `direct_tls` once the TLS handshake is done). Sends our stream header at once; the
    /// peer's answer must arrive within [`Timeouts::stream_header`].
    ///
    /// A remote domain that policy denies gets no header: the connection is closed at once
    /// with [`CloseReason::SentError`] (`policy-violation`) and nothing to transmit.
    pub fn outbound(
        cfg: Arc<S2sConfig>,
        local: &str,
        remote: &str,
        direct_tls: bool,
        now: Instant,
    ) -> Self {
        let policy = cfg.policy.for_domain(remote);
        let mut c = Self::new(cfg, Direction::Outbound, policy, 0, now);
        c.local = local.to_owned();
        c.remote = remote.to_owned();
        c.tls = direct_tls;
        if !policy.allow {
            let text = "federation with this domain is not allowed".to_owned();
            c.finish(CloseReason::SentError(
                StreamCondition::PolicyViolation,
                text,
            ));
            return c;
        }
        c.send_header();
        c.state = State::ExpectHeader;
        c.io.deadline = Some(now + c.cfg.timeouts.negotiation);
        c.io.expect_first_header(now, c.cfg.timeouts.stream_header);
        c
    }

    /// A new inbound stream on an accepted socket. `id_nonce` makes this connection's
    /// stream ids distinct (the runtime passes a counter or random value); `direct_tls`
    /// when the socket is already TLS (XEP-0368 port 5270), with the client's chain and
    /// the wall-clock time of the handshake (see [`Self::handle_tls_established`]). The
    /// peer's stream header must arrive within [`Timeouts::stream_header`] of `now`.
    pub fn inbound(
        cfg: Arc<S2sConfig>,
        id_nonce: u64,
        direct_tls: Option<(Vec<CertificateDer<'static>>, UnixTime)>,
        now: Instant,
    ) -> Self {
        let policy = cfg.policy.default;
        let mut c = Self::new(cfg, Direction::Inbound, policy, id_nonce, now);
        if let Some((chain, at)) = direct_tls {
            c.tls = true;
            c.tls_at = Some(at);
            c.peer_chain = chain;
        }
        c.io.deadline = Some(now + c.cfg.timeouts.negotiation);
        c.io.expect_first_header(now, c.cfg.timeouts.stream_header);
        c
    }

    fn new(
        cfg: Arc<S2sConfig>,
        dir: Direction,
        policy: PeerPolicy,
        id_nonce: u64,
        now: Instant,
    ) -> Self {
        S2sConnection {
            io: Plumbing::new(cfg.limits, id_nonce, now),
            cfg,
            dir,
            state: State::ExpectHeader,
            local: String::new(),
            remote: String::new(),
            policy,
            tls: false,
            peer_chain: Vec::new(),
            tls_at: None,
            peer_cert_verdict: None,
            sasl_done: false,
            legacy: false,
            peer_dialback: false,
            pairs: Vec::new(),
            pending_results: Vec::new(),
            pending_verifies: Vec::new(),
            queued_verifies: Vec::new(),
            queued_dialbacks: Vec::new(),
            dialback_requests: 0,
            sm: sm::SmState::default(),
            bidi: bidi::BidiState::default(),
            verify_only: false,
            last_stanza: now,
            ended: None,
        }
    }

    // ----- accessors -----

    /// Which end we are.
    pub fn direction(&self) -> Direction {
        self.dir
    }

    /// Our domain on this stream (inbound: empty until the header arrives).
    pub fn local_domain(&self) -> &str {
        &self.local
    }

    /// The peer's domain (inbound: empty until the header names it).
    pub fn remote_domain(&self) -> &str {
        &self.remote
    }

    /// The current stream id (inbound: ours; outbound: the peer's).
    pub fn stream_id(&self) -> &str {
        &self.io.stream_id
    }

    /// Whether the stream runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Whether the stream has ended.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Why the stream ended (the reason of [`Event::Closed`]), once it has.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.ended.as_ref()
    }

    /// Whether the peer's stream header had no `version` (a server that predates XMPP 1.0,
    /// RFC 6120 §4.7.5): no stream features either way, so no STARTTLS and no SASL, only
    /// dialback (XEP-0220 §2.4.1).
    pub fn is_legacy(&self) -> bool {
        self.legacy
    }

    /// Authenticated (local, remote) pairs and how.
    pub fn authenticated(&self) -> impl Iterator<Item = (&str, &str, AuthMethod)> {
        self.pairs
            .iter()
            .map(|(l, r, m)| (l.as_str(), r.as_str(), *m))
    }

    /// Whether stanzas from `local` to `remote` may be sent (outbound) or accepted
    /// (inbound) on this stream.
    pub fn is_authenticated(&self, local: &str, remote: &str) -> bool {
        self.pairs
            .iter()
            .any(|(l, r, _)| l.eq_ignore_ascii_case(local) && r.eq_ignore_ascii_case(remote))
    }

    // ----- outputs -----

    /// Appends the bytes to send to `into` and forgets them. Returns how many. When
    /// `into` is empty, its memory and the stream's transmit buffer are swapped instead
    /// of copied (the runtime's write buffer takes the bytes as they are).
    pub fn poll_transmit(&mut self, into: &mut Vec<u8>) -> usize {
        self.io.poll_transmit(into)
    }

    /// Hands the bytes to send to `take` in place, then forgets them (`take` is not
    /// called when there are none). Returns how many. For a runtime that encrypts them
    /// (TLS, RFC 6120 §5) straight from the stream's transmit buffer instead of copying
    /// them out first with [`Self::poll_transmit`].
    pub fn poll_transmit_with(&mut self, take: impl FnOnce(&[u8])) -> usize {
        self.io.poll_transmit_with(take)
    }

    /// Gives idle buffers back (the framer's receive buffer when nothing is buffered,
    /// the transmit buffer when empty): the runtime calls this when a stream goes quiet,
    /// so idle streams cost little memory.
    pub fn release_idle_memory(&mut self) {
        self.io.release_idle_memory();
    }

    /// Bytes waiting to be sent (for back-pressure decisions).
    pub fn pending_transmit(&self) -> usize {
        self.io.pending_transmit()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.io.poll_event()
    }

    /// The next instant at which [`S2sConnection::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let mut t = self.io.next_deadline();
        let mut earliest = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        for p in &self.pending_results {
            earliest(p.deadline);
        }
        for p in &self.pending_verifies {
            earliest(p.deadline);
        }
        if self.state == State::Open {
            earliest(self.io.keepalive_at(self.cfg.timeouts.keepalive));
            if let Some(t) = self.sm_deadline() {
                earliest(t);
            }
            if let (Some(idle), false) = (self.cfg.timeouts.idle, self.pairs.is_empty()) {
                earliest(self.last_stanza + idle);
            }
        }
        t
    }

    // ----- inputs -----

    /// Feeds bytes received from the peer (plaintext: after TLS, the decrypted bytes).
    pub fn handle_input(&mut self, data: &[u8], now: Instant) {
        self.handle_input_with(data.len(), |buf| buf.extend_from_slice(data), now);
    }

    /// [`Self::handle_input`] for bytes that `fill` appends straight into the stream's
    /// receive buffer (the runtime moves TLS plaintext there from rustls without a buffer
    /// of its own): `len` is how many it is about to append, see
    /// [`Framer::feed_with`](crate::xml::Framer::feed_with). `fill` is not called when
    /// the stream takes no more input (closed): the caller drops those bytes.
    pub fn handle_input_with(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut bytes::BytesMut),
        now: Instant,
    ) {
        if matches!(self.state, State::Closed) {
            return;
        }
        self.io.feed_with(len, fill);
        self.process(now);
    }

    /// The runtime's TLS handshake completed. `peer_chain`: the certificate chain the peer
    /// presented (inbound: its client certificate, possibly none; outbound: the server's,
    /// already verified by the TLS client per policy); `at`: the wall-clock time of the
    /// handshake, at which the chain is checked against the peer's domain once the stream
    /// header names it ([`PeerCertVerifier`]). The stream restarts (RFC 6120 §5.4.3.3).
    pub fn handle_tls_established(
        &mut self,
        peer_chain: Vec<CertificateDer<'static>>,
        now: Instant,
        at: UnixTime,
    ) {
        if self.state != State::ExpectTls {
            return;
        }
        self.tls = true;
        self.tls_at = Some(at);
        self.peer_chain = peer_chain;
        self.peer_cert_verdict = None;
        // RFC 6120 §5.4.3.3: knowledge obtained before TLS is discarded.
        self.pairs.clear();
        self.pending_results.clear();
        self.sm = sm::SmState::default();
        self.reset_bidi();
        self.restart(now);
        self.process(now);
    }

    /// The runtime's TLS handshake failed; the stream is over (the socket is unusable).
    pub fn handle_tls_failed(&mut self, reason: &str) {
        self.finish(CloseReason::TlsFailed(reason.to_owned()));
    }

    /// Drives the deadlines: the peer's first header, negotiation steps, pending dialback,
    /// keepalives, idle close, closing handshake.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        match self.io.expired(now) {
            Some(Expired::Header) => return self.header_timed_out(now),
            Some(Expired::Step) if self.state == State::ExpectClose => {
                return self.finish(CloseReason::CloseTimeout)
            }
            Some(Expired::Step) => {
                return self.fail(StreamCondition::ConnectionTimeout, STEP_TIMED_OUT)
            }
            None => {}
        }
        if !self.dialback_timeouts(now) {
            return;
        }
        if self.state == State::Open {
            if let Some(idle) = self.cfg.timeouts.idle {
                if !self.pairs.is_empty() && now >= self.last_stanza + idle {
                    self.close(None, now);
                    return;
                }
            }
            self.sm_timeout(now);
            self.io.keepalive(now, self.cfg.timeouts.keepalive);
        }
    }

    // ----- commands -----

    /// Sends a stanza (its bytes, already addressed) from `local` to `remote`: on an
    /// outbound stream, or on an inbound stream made bidirectional (XEP-0288) for a pair
    /// authorised the other way ([`Event::BidiAuthenticated`]).
    ///
    /// Errors: [`S2sError::NotAuthenticated`] when the pair is not authenticated on this
    /// stream for sending; [`S2sError::InvalidState`] when the stream is not open, or is
    /// inbound without bidi; nothing is sent.
    pub fn send_stanza(
        &mut self,
        local: &str,
        remote: &str,
        stanza: &[u8],
        now: Instant,
    ) -> Result<(), S2sError> {
        self.send_stanza_parts(local, remote, &[stanza], now)
    }

    /// [`S2sConnection::send_stanza`] for a stanza given in pieces that are sent one after
    /// the other: a shared presence broadcast and its recipient's `to` attribute
    /// (`fedrouter::router::fanout::SharedStanza::parts`), copied once, here.
    ///
    /// Errors: as [`S2sConnection::send_stanza`].
    pub fn send_stanza_parts(
        &mut self,
        local: &str,
        remote: &str,
        parts: &[&[u8]],
        now: Instant,
    ) -> Result<(), S2sError> {
        if self.state != State::Open || (self.dir == Direction::Inbound && !self.bidi.enabled) {
            return Err(S2sError::InvalidState(
                "stanzas are sent on open outbound or bidirectional streams",
            ));
        }
        if !self.may_send(local, remote) {
            return Err(S2sError::NotAuthenticated {
                local: local.to_owned(),
                remote: remote.to_owned(),
            });
        }
        for p in parts {
            self.io.out.extend_from_slice(p);
        }
        self.io.last_tx = now;
        self.last_stanza = now;
        self.sm_stanza_sent(now);
        Ok(())
    }

    /// Closes the stream: an optional stream error (RFC 6120 §4.9), then
    /// `</stream:stream>`; then waits for the peer's close (RFC 6120 §4.4).
    pub fn close(&mut self, error: Option<(StreamCondition, &str)>, now: Instant) {
        if matches!(self.state, State::Closed | State::ExpectClose) {
            return;
        }
        if !self.io.header_sent {
            self.send_header();
        }
        self.io.begin_close(error, now, self.cfg.timeouts.close);
        self.state = State::ExpectClose;
    }

    // ----- internals -----

    fn send_header(&mut self) {
        let (from, to, id) = match self.dir {
            Direction::Outbound => (Some(self.local.as_str()), Some(self.remote.as_str()), None),
            Direction::Inbound => (
                (!self.local.is_empty()).then_some(self.local.as_str()),
                (!self.remote.is_empty()).then_some(self.remote.as_str()),
                Some(self.io.stream_id.as_str()),
            ),
        };
        write_stream_header(
            &HeaderOut {
                content_ns: ns::SERVER,
                from,
                to,
                id,
                version: !self.legacy,
                dialback: true,
            },
            &mut self.io.out,
        );
        self.io.header_sent = true;
    }

    /// Stream restart after TLS or SASL: a fresh framer document and, outbound, a new
    /// header from us.
    fn restart(&mut self, now: Instant) {
        self.io.restart(now, self.cfg.timeouts.negotiation);
        self.state = State::ExpectHeader;
        if self.dir == Direction::Outbound {
            self.send_header();
        }
    }

    /// The peer's first header did not come in time ([`Timeouts::stream_header`]): the
    /// stream error (after our header, RFC 6120 §4.9.1.2) and our close, as
    /// [`S2sConnection::close`] writes them, and the stream is over at once: a peer that
    /// sent nothing gets no closing handshake (§4.9.1.1).
    fn header_timed_out(&mut self, now: Instant) {
        self.close(
            Some((StreamCondition::ConnectionTimeout, NO_HEADER_IN_TIME)),
            now,
        );
        let reason = self.io.take_close_reason().unwrap_or(CloseReason::Local);
        self.finish(reason);
    }

    fn finish(&mut self, reason: CloseReason) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.io.end();
        self.fail_pending_dialbacks();
        self.ended = Some(reason.clone());
        self.io.push_event(Event::Closed(reason));
    }

    /// Sends a stream error and closes (RFC 6120 §4.9.1: the stream error is fatal).
    fn fail(&mut self, condition: StreamCondition, text: &str) {
        self.fail_with(condition, text, b"");
    }

    /// [`Self::fail`] with an application-specific condition element (RFC 6120 §4.9.4).
    fn fail_with(&mut self, condition: StreamCondition, text: &str, app: &[u8]) {
        if matches!(self.state, State::Closed) {
            return;
        }
        if self.state != State::ExpectClose {
            if !self.io.header_sent {
                // §4.9.1.2: an error before our header still needs our header first.
                if self.local.is_empty() {
                    self.local = self.cfg.local_domains.first().cloned().unwrap_or_default();
                }
                self.send_header();
            }
            self.io.write_error_and_close_with(condition, text, app);
        }
        self.finish(CloseReason::SentError(condition, text.to_owned()));
    }

    fn process(&mut self, now: Instant) {
        while !matches!(self.state, State::Closed | State::ExpectTls) {
            let frame = match self.io.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err((condition, text)) => return self.fail(condition, &text),
            };
            match frame {
                Frame::Header(h) => self.on_header(h, now),
                Frame::Element(el) => self.on_element(el, now),
                Frame::Close => {
                    let reason = self.io.peer_closed(self.state == State::ExpectClose);
                    self.finish(reason);
                }
            }
        }
    }

    fn on_header(&mut self, h: StreamHeader, now: Instant) {
        self.io.header_arrived();
        if self.state != State::ExpectHeader {
            return self.fail(StreamCondition::BadFormat, "unexpected stream header");
        }
        if h.content_ns != Namespace::Server {
            return self.fail(
                StreamCondition::InvalidNamespace,
                "S2S streams use jabber:server",
            );
        }
        match h.version.as_deref() {
            None => self.legacy = true,
            Some(v) if super::plumbing::is_version_1(v) => {}
            Some(_) => {
                return self.fail(
                    StreamCondition::UnsupportedVersion,
                    "only XMPP 1.0 is supported",
                )
            }
        }
        match self.dir {
            Direction::Outbound => self.on_header_outbound(h, now),
            Direction::Inbound => self.on_header_inbound(h, now),
        }
    }

    fn on_element(&mut self, el: Element, now: Instant) {
        match (self.state, el.namespace()) {
            (State::ExpectHeader, _) => self.fail(
                StreamCondition::BadFormat,
                "element before the stream header",
            ),
            (_, Namespace::Streams) if el.name() == "error" => {
                let reason = self.io.peer_error(&el, self.state == State::ExpectClose);
                self.finish(reason);
            }
            (State::ExpectFeatures, Namespace::Streams) if el.name() == "features" => {
                self.on_features(&el, now)
            }
            (State::ExpectProceed, Namespace::Tls) => match el.name() {
                "proceed" => {
                    self.io.start_tls(now, self.cfg.timeouts.negotiation);
                    self.state = State::ExpectTls;
                    self.io.push_event(Event::StartTls(TlsRole::Client {
                        sni: self.remote.clone(),
                    }));
                }
                _ => self.fail(
                    StreamCondition::PolicyViolation,
                    "the peer refused STARTTLS",
                ),
            },
            (State::ExpectSaslResult, Namespace::Sasl) => self.on_sasl_result(&el, now),
            (State::Open, Namespace::Dialback) => self.on_dialback(&el, now),
            (State::Open, Namespace::Tls)
                if self.dir == Direction::Inbound && el.name() == "starttls" =>
            {
                self.on_starttls(now)
            }
            (State::Open, Namespace::Sasl)
                if self.dir == Direction::Inbound && el.name() == "auth" =>
            {
                self.on_sasl_auth(&el, now)
            }
            (State::Open, Namespace::Other(_)) if self.bidi_request_expected(&el) => {
                self.on_bidi_request(now)
            }
            (State::Open | State::ExpectClose, Namespace::StreamManagement) => self.on_sm(&el),
            (State::Open | State::ExpectClose, Namespace::Server) => match StanzaKind::of(&el) {
                Some(kind) => self.on_stanza(kind, el, now),
                None => self.fail(
                    StreamCondition::UnsupportedStanzaType,
                    "unknown top-level element",
                ),
            },
            (State::ExpectClose, _) => {}
            _ => self.fail(
                StreamCondition::UnsupportedStanzaType,
                "unexpected element in this state",
            ),
        }
    }

    fn authenticate(&mut self, local: &str, remote: &str, method: AuthMethod, now: Instant) {
        if !self.is_authenticated(local, remote) {
            self.pairs
                .push((local.to_owned(), remote.to_owned(), method));
        }
        if self.state == State::Open {
            self.io.deadline = None;
        }
        self.last_stanza = now;
        self.io.push_event(Event::Authenticated {
            local: local.to_owned(),
            remote: remote.to_owned(),
            method,
            direction: self.dir,
        });
        self.maybe_enable_sm();
        self.grant_reverse(now);
    }

    /// Authorisation of a received stanza (RFC 6120 §8.1.1.2, §13.8; XEP-0220 §2.1.4):
    /// `to` must name a domain we host and `from` a domain this stream authenticated for
    /// that pair (on a bidirectional outbound stream, XEP-0288 §2.2: the inverse of a
    /// pair we authenticated).
    fn on_stanza(&mut self, kind: StanzaKind, el: Element, now: Instant) {
        if self.dir == Direction::Outbound && !self.bidi.enabled {
            // No XEP-0288 bidi negotiated: the peer may not send on our stream.
            return self.fail(
                StreamCondition::NotAuthorized,
                "stanzas are not accepted on this outbound stream",
            );
        }
        let (Some(to), Some(from)) = (el.to(), el.from()) else {
            return self.fail(
                StreamCondition::ImproperAddressing,
                "stanza without to or from",
            );
        };
        let (to_d, from_d) = (domain_of(to), domain_of(from));
        let authorised = match self.dir {
            Direction::Inbound => &self.pairs,
            Direction::Outbound => &self.bidi.reverse,
        };
        if authorised.is_empty() {
            return self.fail(
                StreamCondition::NotAuthorized,
                "stanza before authentication",
            );
        }
        if !self.cfg.hosts(to_d) {
            return self.fail(
                StreamCondition::HostUnknown,
                "stanza to a domain this server does not host",
            );
        }
        let ok = match self.dir {
            Direction::Inbound => self.pairs.iter().any(|(l, r, m)| {
                r.eq_ignore_ascii_case(from_d)
                    && (*m == AuthMethod::SaslExternal || l.eq_ignore_ascii_case(to_d))
            }),
            Direction::Outbound => self.bidi_accepts(to_d, from_d),
        };
        if !ok {
            return self.fail(
                StreamCondition::InvalidFrom,
                "from names a domain this stream has not authenticated",
            );
        }
        self.last_stanza = now;
        self.io.push_event(Event::Stanza { kind, element: el });
        self.sm_stanza_handled();
    }
}
