//! The client-to-server stream state machine (RFC 6120 §4–§7): the receiving entity's side
//! of a C2S stream, from the client's stream header to a bound resource.
//!
//! Sans-IO, shaped like [`super::s2s::S2sConnection`] (and quinn-proto's `Connection`): the
//! runtime feeds received bytes ([`C2sConnection::handle_input`]), the current time
//! ([`C2sConnection::handle_timeout`]) and the answers to what the connection asked for
//! (TLS established, stored credentials, the bound JID); it drains bytes to send
//! ([`C2sConnection::poll_transmit`]), [`Event`]s ([`C2sConnection::poll_event`]) and the
//! next deadline ([`C2sConnection::poll_timeout`]). It never reads a clock, touches a
//! socket, runs TLS or reads the store.
//!
//! # Negotiation
//!
//! ```text
//! ExpectHeader ─► features ─► <starttls/> ─► ExpectTls ─(handle_tls_established)─► ExpectHeader
//!      │                                                                              │
//!      ▼   (after TLS, or without it when `tls_required` is off)                      │
//! ExpectAuth ─<auth/>─► AwaitCredentials ─(handle_credentials)─► ExpectResponse ─<response/>─┐
//!  ▲   │                (Event::CredentialsNeeded)               (SCRAM only)                │
//!  │   └─<auth PLAIN/>─► AwaitVerdict ─(handle_password_verdict)────────────────────────────►┤
//!  │     (PasswordCheck::External; Event::PasswordCheckNeeded)                               │
//!  └──── <failure/> (counted, delayed; temporary-auth-failure neither) ◄─────────────────────┤
//!                                                                                            ▼
//! ExpectHeader ◄─ <success/> (stream restart, RFC 6120 §6.4.6) ◄─────────────────────────────┘
//!      │
//!      ▼
//! ExpectBind ─<iq><bind/></iq>─► AwaitBind ─(handle_bind)─► Open (stanzas flow)
//!                (Event::BindRequested)
//! ```
//!
//! - **STARTTLS** (RFC 6120 §5): offered when [`C2sConfig::certificate_domains`] holds the
//!   stream's domain, with `<required/>` when [`C2sConfig::tls_required`]. While TLS is
//!   required and not yet negotiated, the features hold `<starttls/>` only: no SASL
//!   mechanism at all (§5.3.1, §5.4.1). [`Event::StartTls`] asks the runtime to wrap the
//!   socket (we are always the TLS server); [`C2sConnection::handle_tls_established`]
//!   restarts the stream (§5.4.3.3). When TLS is required but no certificate is configured
//!   for the domain, the stream is closed at once with `internal-server-error` (§4.9.3.8,
//!   a misconfiguration): the client could never authenticate.
//! - **SASL** (RFC 6120 §6): `SCRAM-SHA-256` (RFC 7677), `SCRAM-SHA-1` (RFC 5802), and
//!   `PLAIN` (RFC 4616) only over TLS. The `-PLUS` variants are not offered (no channel
//!   binding). `PLAIN` is never offered without TLS, and an `<auth mechanism='PLAIN'>`
//!   received without TLS (or any `<auth>` while TLS is required and not negotiated) is
//!   answered `<failure><encryption-required/></failure>` (§6.5.4: "the mechanism requested
//!   ... cannot be used unless the confidentiality and integrity of the underlying stream
//!   are protected"; `mechanism-too-weak`, §6.5.9, is about a per-entity policy instead).
//!   Credentials come from the store through the runtime: [`Event::CredentialsNeeded`],
//!   answered with [`C2sConnection::handle_credentials`]. An unknown user (`None`) is not
//!   revealed: the exchange carries on with made-up credentials derived from
//!   [`C2sConfig::stream_id_key`] and the JID (the same salt for the same unknown user on
//!   every attempt, RFC 5802 §9) and fails at the proof like a wrong password. `PLAIN` is
//!   checked against the stored SCRAM credentials
//!   ([`ScramCredentials::verify_password`]).
//! - **External password check** ([`PasswordCheck::External`], e.g. LDAP): only `PLAIN`
//!   over TLS is offered (a directory bind needs the password; SCRAM never sends it), and
//!   any SCRAM `<auth/>` is `invalid-mechanism` (§6.5.7). The password goes to the runtime
//!   in [`Event::PasswordCheckNeeded`] (the machine keeps no copy); its
//!   [`C2sConnection::handle_password_verdict`] gives `<success/>`, `not-authorized`
//!   (counted and delayed as below) or `temporary-auth-failure` (§6.5.12: not counted,
//!   not delayed).
//! - **Failures** (RFC 6120 §6.4.5): every `<failure/>` but `<aborted/>` counts. The
//!   [`C2sConfig::max_auth_failures`]-th closes the stream with `policy-violation` (§6.4.5
//!   says "at least 2 and no more than 5" retries; the default 3 is one attempt and two
//!   retries). Before that, the n-th failure holds further input from the client for
//!   `auth_failure_delay × 2^(n-1)`: the next `<auth/>` is read, and answered, only after
//!   that deadline (the bytes wait in the framer, bounded below). [`Event::AuthFailed`]
//!   reports each failure so the runtime can also throttle across connections (per
//!   address or per account).
//! - **Resource binding** (RFC 6120 §7): after the post-SASL restart the features are
//!   `<bind/>` and the legacy `<session><optional/></session>` (RFC 3921 §3, kept for old
//!   clients), with roster versioning, pre-approval and client state indication (XEP-0352
//!   `<csi/>`: once bound, `<active/>`/`<inactive/>` become [`Event::ClientState`]). A bind request becomes [`Event::BindRequested`] with the requested resource
//!   enforced as a resourcepart (RFC 7622 §3.4; invalid → `bad-request`, §7.7.2.1); the
//!   runtime answers with [`C2sConnection::handle_bind`]. The runtime owns session
//!   uniqueness (§7.7.2.2): on a conflicting resource it may refuse the new request
//!   ([`BindError::Conflict`]), or terminate the old session (calling
//!   [`C2sConnection::close`] on it with [`StreamCondition::Conflict`]) and accept the new
//!   one; when the client asked for no resource the runtime generates one (§7.6).
//!
//! # Stanzas
//!
//! Before authentication, and after it until a resource is bound, a stanza closes the
//! stream with `not-authorized` (§4.9.3.12). Once bound, every `message`, `presence` and
//! `iq` from the client is an [`Event::Stanza`], as received. The machine checks only the
//! `from` (§8.1.2.1, §4.9.3.9): absent, the full JID or the bare JID of the session, else
//! `invalid-from`. It answers by itself only the legacy session `iq` and a second bind
//! (`not-allowed`). XEP-0199 pings and XEP-0030 queries addressed to the server are the
//! runtime's ([`crate::service`]).
//!
//! Routing is the runtime's: [`C2sConnection::stamp`] writes a received stanza with `from`
//! stamped to the session's full JID (its bare JID on subscription-related presence, RFC
//! 6121 §3.1.2) and without an explicit `xmlns='jabber:client'`, so that the bytes can go
//! onto a `jabber:server` stream as they are.
//!
//! Stanzas for the client go through [`C2sConnection::send_stanza`]. A stanza written with
//! the `jabber:server` stream default namespace carries no `xmlns` attribute and is
//! correct as it is inside this `jabber:client` stream (the content namespace is inherited
//! from the stream header, RFC 6120 §4.8.3); an explicit `xmlns='jabber:server'` on its
//! top element is removed, so the stanza inherits `jabber:client`.
//!
//! # Timeouts
//!
//! The client's first stream header must arrive within [`C2sTimeouts::stream_header`]
//! (else `connection-timeout`, "no stream header in time"). Each negotiation step (header,
//! TLS, SASL, the runtime's answers, bind) must complete within
//! [`C2sTimeouts::negotiation`] (else `connection-timeout`); the auth-failure delay
//! extends it. Once bound, a whitespace keepalive (RFC 6120 §4.6.1) is sent after
//! [`C2sTimeouts::keepalive`] without sending, and [`C2sTimeouts::idle`], if set, closes a
//! stream the client has sent nothing on for that long. Closing waits
//! [`C2sTimeouts::close`] for the client's `</stream:stream>` (§4.4).
//!
//! # Memory
//!
//! While the machine waits for the runtime (credentials, bind) or for an auth-failure
//! delay, it reads no frame; bytes fed meanwhile stay in the framer. More than
//! `max_element_size + max_header_size` of them closes the stream with
//! `policy-violation`, so a client cannot make it buffer without bound.
//!
//! # Files
//!
//! The stream plumbing (framer, transmit buffer, events, deadlines, close sequence) is
//! shared with the S2S machine (`stream/plumbing.rs`). Here: `mod.rs` the connection's
//! state, its public calls, headers, features and STARTTLS; `sasl.rs` authentication;
//! `session.rs` binding and the bound session's stanzas; `config.rs` and `event.rs` the
//! public types.

mod config;
mod event;
mod register;
mod sasl;
mod session;
mod sm;

use std::sync::Arc;
use std::time::Instant;

use rustls_pki_types::CertificateDer;

pub use self::config::{C2sConfig, C2sTimeouts, Mechanism, PasswordCheck};
pub use self::event::{BindError, C2sError, Event, Password, PasswordVerdict};
pub use self::register::{RegistrationError, FEATURE_REGISTER};
use self::sasl::Sasl;
pub(crate) use self::session::remove_top_xmlns;
pub use self::sm::{C2sSmConfig, ResumableState};
use super::common::{CloseReason, TlsRole};
use super::plumbing::{
    header_domain, is_version_1, write_starttls_feature, Expired, Plumbing, NO_HEADER_IN_TIME,
    STEP_TIMED_OUT,
};
use crate::condition::StreamCondition;
use crate::jid::{BareJid, FullJid, Jid};
use crate::stanza::StanzaKind;
use crate::xml::writer::{write_stream_header, HeaderOut};
use crate::xml::{ns, Element, Frame, Namespace, StreamHeader};

#[cfg(doc)]
use crate::scram::ScramCredentials;

/// `urn:ietf:params:xml:ns:xmpp-bind`, resource binding (RFC 6120 §7).
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";

/// `urn:ietf:params:xml:ns:xmpp-session`, the legacy session establishment (RFC 3921 §3;
/// offered as `<optional/>` per draft-cridland-xmpp-session-01).
pub const NS_SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";

/// What a state waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The client's stream header.
    ExpectHeader,
    /// The runtime's TLS handshake.
    ExpectTls,
    /// `<starttls/>` or `<auth/>`.
    ExpectAuth,
    /// A `<response/>` with the initial message, after our empty `<challenge/>`.
    ExpectInitialResponse,
    /// The runtime's credentials.
    AwaitCredentials,
    /// The runtime's verdict on a `PLAIN` password ([`PasswordCheck::External`]).
    AwaitVerdict,
    /// A `<response/>` with SCRAM client-final.
    ExpectResponse,
    /// The bind request.
    ExpectBind,
    /// The runtime's answer to the bind request.
    AwaitBind,
    /// The runtime's answer to `<resume/>` (XEP-0198 §5).
    AwaitResume,
    /// The runtime's answer to an in-band registration (XEP-0077 §3.1).
    AwaitRegistration,
    /// Bound: stanzas flow.
    Open,
    /// We sent `</stream:stream>`; waiting for the client's.
    ExpectClose,
    /// Over.
    Closed,
}

/// One C2S stream, receiving end. See the module docs for the I/O contract.
#[derive(Debug)]
pub struct C2sConnection {
    cfg: Arc<C2sConfig>,
    state: State,
    /// Framer, transmit buffer, events, stream id, deadlines, close sequence.
    io: Plumbing<Event>,
    /// The local domain the client addressed (empty until the first header).
    domain: String,
    /// The client's header `from`, echoed as our `to` (RFC 6120 §4.7.2).
    client_from: Option<String>,
    scram_exchanges: u32,
    tls: bool,
    sasl: Option<Sasl>,
    failures: u32,
    hold_until: Option<Instant>,
    jid: Option<BareJid>,
    mechanism: Option<Mechanism>,
    full: Option<FullJid>,
    bind_request: Option<Element>,
    /// XEP-0198, once enabled (`sm.rs`).
    sm: Option<sm::C2sSm>,
    /// The client's `<resume/>` (previd, h) awaiting the runtime's answer.
    resume_request: Option<(String, u32)>,
    /// The registration `iq` awaiting the runtime's answer (XEP-0077).
    registration_request: Option<Element>,
    /// An account was registered on this stream.
    registered: bool,
    last_rx: Instant,
}

impl C2sConnection {
    /// A new stream on an accepted socket. `id_nonce` makes this connection's stream ids
    /// and SCRAM nonces distinct (the runtime passes a random value); `direct_tls` when
    /// the socket is already TLS (XEP-0368 `_xmpps-client`, port 5223). The client's
    /// stream header must arrive within [`C2sTimeouts::stream_header`] of `now`.
    pub fn new(cfg: Arc<C2sConfig>, id_nonce: u64, direct_tls: bool, now: Instant) -> Self {
        let mut io = Plumbing::new(cfg.limits, id_nonce, now);
        io.deadline = Some(now + cfg.timeouts.negotiation);
        io.expect_first_header(now, cfg.timeouts.stream_header);
        C2sConnection {
            io,
            cfg,
            state: State::ExpectHeader,
            domain: String::new(),
            client_from: None,
            scram_exchanges: 0,
            tls: direct_tls,
            sasl: None,
            failures: 0,
            hold_until: None,
            jid: None,
            mechanism: None,
            full: None,
            bind_request: None,
            sm: None,
            resume_request: None,
            registration_request: None,
            registered: false,
            last_rx: now,
        }
    }

    // ----- accessors -----

    /// The local domain the client addressed (empty until its header arrives).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The current stream id (ours).
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

    /// Whether this side sent its `</stream:stream>` and waits for the client's (RFC
    /// 6120 §4.4): nothing more is written, so a pending bind can no longer be answered.
    pub fn is_closing(&self) -> bool {
        self.state == State::ExpectClose
    }

    /// The authenticated bare JID, once SASL succeeded.
    pub fn authenticated_jid(&self) -> Option<&BareJid> {
        self.jid.as_ref()
    }

    /// The mechanism the client authenticated with.
    pub fn mechanism(&self) -> Option<Mechanism> {
        self.mechanism
    }

    /// The session's full JID, once a resource is bound.
    pub fn bound_jid(&self) -> Option<&FullJid> {
        self.full.as_ref()
    }

    /// SASL failures so far.
    pub fn auth_failures(&self) -> u32 {
        self.failures
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

    /// Bytes waiting to be sent (for back-pressure decisions).
    pub fn pending_transmit(&self) -> usize {
        self.io.pending_transmit()
    }

    /// Gives idle buffers back (see [`super::s2s::S2sConnection::release_idle_memory`]).
    pub fn release_idle_memory(&mut self) {
        self.io.release_idle_memory();
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.io.poll_event()
    }

    /// The next instant at which [`C2sConnection::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let mut t = self.io.next_deadline();
        let mut earliest = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        if let Some(h) = self.hold_until {
            earliest(h);
        }
        if self.state == State::Open {
            earliest(self.io.keepalive_at(self.cfg.timeouts.keepalive));
            if let Some(idle) = self.cfg.timeouts.idle {
                earliest(self.last_rx + idle);
            }
            if let Some(t) = self.sm_deadline() {
                earliest(t);
            }
        }
        t
    }

    // ----- inputs -----

    /// Feeds bytes received from the client (after TLS, the decrypted bytes). Ignored
    /// while the TLS handshake is pending: those bytes are TLS records for rustls.
    pub fn handle_input(&mut self, data: &[u8], now: Instant) {
        self.handle_input_with(data.len(), |buf| buf.extend_from_slice(data), now);
    }

    /// [`Self::handle_input`] for bytes that `fill` appends straight into the stream's
    /// receive buffer (the runtime moves TLS plaintext there from rustls without a buffer
    /// of its own): `len` is how many it is about to append, see
    /// [`Framer::feed_with`](crate::xml::Framer::feed_with). `fill` is not called when
    /// the stream takes no input (closed, or the TLS handshake pending): the caller
    /// drops those bytes.
    pub fn handle_input_with(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut bytes::BytesMut),
        now: Instant,
    ) {
        if matches!(self.state, State::Closed | State::ExpectTls) {
            return;
        }
        self.last_rx = now;
        self.io.feed_with(len, fill);
        if self.is_paused(now) {
            let limits = self.cfg.limits;
            if self.io.framer.buffered() > limits.max_element_size + limits.max_header_size {
                return self.fail(
                    StreamCondition::PolicyViolation,
                    "too much data sent while the server was busy",
                );
            }
        }
        self.process(now);
    }

    /// The runtime's TLS handshake completed; `peer_chain` is the client's certificate
    /// chain, if any (unused: C2S clients authenticate with SASL). The stream restarts
    /// (RFC 6120 §5.4.3.3). Ignored unless TLS was requested with [`Event::StartTls`].
    pub fn handle_tls_established(
        &mut self,
        peer_chain: Vec<CertificateDer<'static>>,
        now: Instant,
    ) {
        let _ = peer_chain;
        if self.state != State::ExpectTls {
            return;
        }
        self.tls = true;
        self.restart(now);
        self.process(now);
    }

    /// The runtime's TLS handshake failed; the stream is over (the socket is unusable).
    pub fn handle_tls_failed(&mut self, reason: &str) {
        self.finish(CloseReason::TlsFailed(reason.to_owned()));
    }

    /// Drives the deadlines: the client's first header, negotiation steps, the
    /// auth-failure hold, keepalives, idle close, closing handshake.
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
        if self.hold_until.is_some_and(|h| now >= h) {
            self.hold_until = None;
            self.process(now);
        }
        if self.state == State::Open {
            if let Some(idle) = self.cfg.timeouts.idle {
                if now >= self.last_rx + idle {
                    return self.close(
                        Some((
                            StreamCondition::ConnectionTimeout,
                            "no data from the client",
                        )),
                        now,
                    );
                }
            }
            self.sm_timeout(now);
            self.io.keepalive(now, self.cfg.timeouts.keepalive);
        }
    }

    // ----- commands -----

    /// Closes the stream: an optional stream error (RFC 6120 §4.9), then
    /// `</stream:stream>`; then waits for the client's close (RFC 6120 §4.4). The runtime
    /// uses this with [`StreamCondition::Conflict`] to replace a session (§7.7.2.2), or
    /// `system-shutdown`.
    pub fn close(&mut self, error: Option<(StreamCondition, &str)>, now: Instant) {
        if matches!(self.state, State::Closed | State::ExpectClose) {
            return;
        }
        if !self.io.header_sent {
            self.send_header();
        }
        self.io.begin_close(error, now, self.cfg.timeouts.close);
        self.state = State::ExpectClose;
        self.hold_until = None;
    }

    /// Closes the stream with the `<see-other-host/>` stream error naming `host`
    /// (`host:port`): another server of the same service is to serve this client (RFC
    /// 6120 §4.9.3.19; a cluster node that does not own the client's bare JID, sent once
    /// the client has authenticated so that only it learns the address). Then waits for
    /// the client's close, as [`Self::close`].
    pub fn redirect(&mut self, host: &str, now: Instant) {
        if matches!(self.state, State::Closed | State::ExpectClose) {
            return;
        }
        if !self.io.header_sent {
            self.send_header();
        }
        self.io.begin_redirect(host, now, self.cfg.timeouts.close);
        self.state = State::ExpectClose;
        self.hold_until = None;
    }

    // ----- internals -----

    fn is_paused(&self, now: Instant) -> bool {
        matches!(
            self.state,
            State::AwaitCredentials
                | State::AwaitVerdict
                | State::AwaitBind
                | State::AwaitResume
                | State::AwaitRegistration
        ) || self.hold_until.is_some_and(|h| now < h)
    }

    fn send_header(&mut self) {
        if self.domain.is_empty() {
            self.domain = self.cfg.local_domains.first().cloned().unwrap_or_default();
        }
        write_stream_header(
            &HeaderOut {
                content_ns: ns::CLIENT,
                from: (!self.domain.is_empty()).then_some(self.domain.as_str()),
                to: self.client_from.as_deref(),
                id: (!self.io.stream_id.is_empty()).then_some(self.io.stream_id.as_str()),
                version: true,
                dialback: false,
            },
            &mut self.io.out,
        );
        self.io.header_sent = true;
    }

    /// Stream restart after TLS or SASL success: a fresh framer document.
    fn restart(&mut self, now: Instant) {
        self.io.restart(now, self.cfg.timeouts.negotiation);
        self.sasl = None;
        self.state = State::ExpectHeader;
    }

    /// The client's first header did not come in time ([`C2sTimeouts::stream_header`]):
    /// our header, the stream error and our close, as [`C2sConnection::close`] writes
    /// them, and the stream is over at once: a client that sent nothing gets no closing
    /// handshake (RFC 6120 §4.9.1.1).
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
        self.hold_until = None;
        self.sasl = None;
        self.io.push_event(Event::Closed(reason));
    }

    /// Sends a stream error and closes (RFC 6120 §4.9.1: the stream error is fatal).
    fn fail(&mut self, condition: StreamCondition, text: &str) {
        self.fail_with(condition, text, b"");
    }

    /// [`Self::fail`] with an application-specific condition element (RFC 6120 §4.9.4).
    fn fail_with(&mut self, condition: StreamCondition, text: &str, app: &[u8]) {
        if self.state == State::Closed {
            return;
        }
        if self.state != State::ExpectClose {
            if !self.io.header_sent {
                // §4.9.1.2: an error before our header still needs our header first.
                self.send_header();
            }
            self.io.write_error_and_close_with(condition, text, app);
        }
        self.finish(CloseReason::SentError(condition, text.to_owned()));
    }

    fn process(&mut self, now: Instant) {
        if self.hold_until.is_some_and(|h| now >= h) {
            self.hold_until = None;
        }
        loop {
            if matches!(self.state, State::Closed | State::ExpectTls) || self.is_paused(now) {
                return;
            }
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

    /// The client's stream header (RFC 6120 §4.7), initial or after a restart.
    fn on_header(&mut self, h: StreamHeader, now: Instant) {
        self.io.header_arrived();
        if self.state != State::ExpectHeader {
            return self.fail(StreamCondition::BadFormat, "unexpected stream header");
        }
        self.io.stream_id = self
            .io
            .next_stream_id(&self.cfg.stream_id_key, b"fedrouter c2s stream id");
        self.client_from = h
            .from
            .as_deref()
            .filter(|f| Jid::new(f).is_ok())
            .map(str::to_owned);
        let to = h.to.as_deref().map(header_domain);
        let to = match to {
            Some(t) => t,
            None if self.cfg.local_domains.len() == 1 => self.cfg.local_domains[0].clone(),
            None => String::new(),
        };
        if self.domain.is_empty() {
            if !self.cfg.hosts(&to) {
                return self.fail(
                    StreamCondition::HostUnknown,
                    "this server does not host the domain",
                );
            }
            self.domain = to;
        } else if !self.domain.eq_ignore_ascii_case(&to) {
            // The certificate and any authentication were for the first domain.
            return self.fail(
                StreamCondition::HostUnknown,
                "the restarted stream names another domain",
            );
        }
        if h.content_ns != Namespace::Client {
            return self.fail(
                StreamCondition::InvalidNamespace,
                "C2S streams use jabber:client",
            );
        }
        if !h.version.as_deref().is_some_and(is_version_1) {
            return self.fail(
                StreamCondition::UnsupportedVersion,
                "only XMPP 1.0 is supported",
            );
        }
        if self.jid.is_none()
            && !self.tls
            && self.cfg.tls_required
            && !self.cfg.has_certificate(&self.domain)
        {
            return self.fail(
                StreamCondition::InternalServerError,
                "TLS is required but no certificate is configured for this domain",
            );
        }
        self.send_header();
        self.io.push_event(Event::Opened {
            domain: self.domain.clone(),
            stream_id: self.io.stream_id.clone(),
        });
        self.send_features();
        self.io.deadline = Some(now + self.cfg.timeouts.negotiation);
    }

    /// Stream features (RFC 6120 §4.3.2) for where the negotiation is.
    fn send_features(&mut self) {
        self.io.out.extend_from_slice(b"<stream:features>");
        if self.jid.is_some() {
            self.io.out.extend_from_slice(b"<bind xmlns='");
            self.io.out.extend_from_slice(NS_BIND.as_bytes());
            self.io.out.extend_from_slice(b"'/><session xmlns='");
            self.io.out.extend_from_slice(NS_SESSION.as_bytes());
            self.io.out.extend_from_slice(b"'><optional/></session>");
            // Roster versioning (RFC 6121 §2.6.1), subscription pre-approval (§3.4) and
            // client state indication (XEP-0352 §2), all served by the runtime
            // (`runtime/local/`).
            self.io.out.extend_from_slice(
                b"<ver xmlns='urn:xmpp:features:rosterver'/>\
                  <sub xmlns='urn:xmpp:features:pre-approval'/>\
                  <csi xmlns='urn:xmpp:csi:0'/>",
            );
            self.write_sm_feature();
            self.state = State::ExpectBind;
        } else {
            if !self.tls && self.cfg.has_certificate(&self.domain) {
                write_starttls_feature(self.cfg.tls_required, &mut self.io.out);
            }
            let tls = self.tls;
            let offered: Vec<Mechanism> = [
                Mechanism::ScramSha256,
                Mechanism::ScramSha1,
                Mechanism::Plain,
            ]
            .into_iter()
            .filter(|m| self.cfg.offers(*m, tls))
            .collect();
            // No empty <mechanisms/> (RFC 6120 §6.4.1: at least one <mechanism/>): with
            // only PLAIN allowed and no TLS yet, STARTTLS is the one way on.
            if (self.tls || !self.cfg.tls_required) && !offered.is_empty() {
                self.io
                    .out
                    .extend_from_slice(b"<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>");
                for m in offered {
                    self.io.out.extend_from_slice(b"<mechanism>");
                    self.io.out.extend_from_slice(m.name().as_bytes());
                    self.io.out.extend_from_slice(b"</mechanism>");
                }
                self.io.out.extend_from_slice(b"</mechanisms>");
            }
            self.write_register_feature();
            self.state = State::ExpectAuth;
        }
        self.io.out.extend_from_slice(b"</stream:features>");
    }

    fn on_element(&mut self, el: Element, now: Instant) {
        if el.is("error", &Namespace::Streams) {
            let reason = self.io.peer_error(&el, self.state == State::ExpectClose);
            return self.finish(reason);
        }
        if el.namespace() == &Namespace::StreamManagement
            && (matches!(self.state, State::ExpectBind | State::Open)
                || self.state == State::ExpectClose && self.sm.is_some())
        {
            return self.on_sm(&el, now);
        }
        match self.state {
            State::ExpectHeader => self.fail(
                StreamCondition::BadFormat,
                "element before the stream header",
            ),
            State::ExpectAuth | State::ExpectInitialResponse | State::ExpectResponse => {
                self.on_negotiation(el, now)
            }
            State::ExpectBind => self.on_before_bind(el, now),
            State::Open => self.on_stanza(el, now),
            // Stanzas the client sent before it saw our close are still its stanzas.
            State::ExpectClose if self.full.is_some() && StanzaKind::of(&el).is_some() => {
                self.on_stanza(el, now)
            }
            // Not reached: `process` reads no frame in the other states.
            _ => {}
        }
    }

    /// `<starttls/>` (RFC 6120 §5.4.2).
    fn on_starttls(&mut self, now: Instant) {
        if self.tls || !self.cfg.has_certificate(&self.domain) {
            // §5.4.2.2: <failure/> and the stream is closed.
            let reason = self.io.refuse_starttls();
            return self.finish(reason);
        }
        self.io.proceed_tls(now, self.cfg.timeouts.negotiation);
        self.state = State::ExpectTls;
        self.io.push_event(Event::StartTls(TlsRole::Server));
    }
}
