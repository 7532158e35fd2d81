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

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use rustls_pki_types::{CertificateDer, UnixTime};
use sha2::Sha256;

use super::policy::{FederationPolicy, PeerPolicy, TlsPolicy};
use crate::condition::{StanzaCondition, StreamCondition};
use crate::dialback::{DialbackErrorCondition, DialbackResult, DialbackSecret};
use crate::jid::domain_of;
use crate::stanza::StanzaKind;
use crate::stream::cert::CertError;
use crate::xml::tree::Node;
use crate::xml::writer::{write_stream_error, write_stream_header, HeaderOut, STREAM_CLOSE};
use crate::xml::{
    escape_attr_into, escape_text_into, ns, Element, Frame, Framer, Limits, Namespace, StreamHeader,
};

/// The stream error text for a pre-1.0 stream that policy cannot accept.
const LEGACY_REFUSED: &str =
    "policy requires TLS or SASL EXTERNAL, which a stream without version='1.0' cannot negotiate";

/// Whether policy `p` can accept a peer on a stream without stream features (a header
/// without `version`, RFC 6120 §4.7.5): dialback must be allowed, and TLS must not be
/// required unless the socket already is TLS (XEP-0368 direct TLS).
fn legacy_acceptable(p: &PeerPolicy, tls: bool) -> bool {
    p.allow && p.allows_dialback() && (tls || p.tls != TlsPolicy::Required)
}

/// Checks a peer's certificate chain (end entity first) against a domain at a given time.
/// Implemented by the runtime over `fedrouter::tls::verify_peer_certificate` with its trust
/// roots. The time is the one the runtime gave [`S2sConnection::handle_tls_established`]
/// (when the TLS handshake completed, as rustls itself checks validity): the core reads no
/// clock.
pub trait PeerCertVerifier: Send + Sync + fmt::Debug {
    /// `Ok` when `chain` is valid for `domain` at `at` (RFC 6120 §13.7.1.2, XEP-0178 §3).
    fn verify(
        &self,
        chain: &[CertificateDer<'static>],
        domain: &str,
        at: UnixTime,
    ) -> Result<(), CertError>;
}

/// Per-step deadlines and keepalive intervals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Each negotiation step (header, features, proceed, TLS, SASL result, dialback
    /// result) must complete within this (default 30 s); else `connection-timeout`.
    pub negotiation: Duration,
    /// How long an inbound `db:result` may wait for the authoritative server's verdict
    /// before it is answered `type='error'` with `remote-server-timeout` (default 30 s).
    pub verify: Duration,
    /// A whitespace keepalive is sent after this long without sending (default 60 s;
    /// RFC 6120 §4.6.1).
    pub keepalive: Duration,
    /// An authenticated stream without a stanza either way for this long is closed
    /// (default 10 min). `None` keeps it open.
    pub idle: Option<Duration>,
    /// How long to wait for the peer's `</stream:stream>` after ours (default 5 s).
    pub close: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            negotiation: Duration::from_secs(30),
            verify: Duration::from_secs(30),
            keepalive: Duration::from_secs(60),
            idle: Some(Duration::from_secs(600)),
            close: Duration::from_secs(5),
        }
    }
}

/// What every S2S connection of a server shares (read-only).
#[derive(Debug)]
pub struct S2sConfig {
    /// Domains we host (lowercase). A peer's header must name one of them in `to`
    /// (else `host-unknown`, RFC 6120 §4.9.3.6); the first is the `from` of our header
    /// when we answer such a header with that error (§4.9.1.2).
    pub local_domains: Vec<String>,
    /// Local domains we hold a certificate for: STARTTLS is offered and SASL EXTERNAL
    /// can be attempted for them.
    pub certificate_domains: Vec<String>,
    /// Federation policy per remote domain.
    pub policy: FederationPolicy,
    /// The dialback secret (XEP-0185).
    pub dialback_secret: DialbackSecret,
    /// Key for generating unpredictable stream ids: `HMAC-SHA256(key, nonce ‖ n)`.
    pub stream_id_key: [u8; 32],
    /// Certificate checks for SASL EXTERNAL; `None` never offers EXTERNAL.
    pub cert_verifier: Option<Arc<dyn PeerCertVerifier>>,
    /// Tokenizer limits.
    pub limits: Limits,
    /// Deadlines.
    pub timeouts: Timeouts,
}

impl S2sConfig {
    /// Whether we host `domain` (ASCII case-insensitive).
    pub fn hosts(&self, domain: &str) -> bool {
        self.local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }

    fn has_certificate(&self, domain: &str) -> bool {
        self.certificate_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }
}

/// Which end of the stream we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// We connected (initiating entity).
    Outbound,
    /// The peer connected (receiving entity).
    Inbound,
}

/// Our role in the TLS handshake the runtime must perform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsRole {
    /// We are the TLS client; `sni` is the remote domain.
    Client {
        /// The server name to send and verify.
        sni: String,
    },
    /// We are the TLS server (request, never require, a client certificate).
    Server,
}

/// How a domain pair was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// Server Dialback (XEP-0220).
    Dialback,
    /// SASL EXTERNAL with a certificate (XEP-0178).
    SaslExternal,
}

impl AuthMethod {
    /// The method's name as configured (`federation.*.auth`) and as the `method` label of
    /// `fedrouter_auth_total`: `"dialback"` or `"sasl-external"`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Dialback => "dialback",
            AuthMethod::SaslExternal => "sasl-external",
        }
    }
}

/// Why a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed its stream without an error.
    PeerClosed,
    /// We closed it ([`S2sConnection::close`] without an error, or idle timeout).
    Local,
    /// We sent a stream error (RFC 6120 §4.9) with an explanation.
    SentError(StreamCondition, String),
    /// The peer sent a stream error.
    ReceivedError(StreamCondition, Option<String>),
    /// The peer did not complete the closing handshake in time.
    CloseTimeout,
    /// The runtime reported that the TLS handshake failed.
    TlsFailed(String),
}

impl CloseReason {
    /// The RFC 6120 §8.3.3 condition with which stanzas that waited for a stream that
    /// ended this way (before it could carry them) are bounced to their senders:
    ///
    /// - `remote-server-timeout` (§8.3.3.16, type `wait`) when the stream timed out
    ///   (ours: a negotiation step or the closing handshake; the peer's
    ///   `<connection-timeout/>`) or the peer went away for a passing reason
    ///   (`<system-shutdown/>`, `<resource-constraint/>`, `<reset/>`);
    /// - `remote-server-not-found` (§8.3.3.15, type `cancel`) otherwise: the peer refused
    ///   us (a stream error such as `<not-authorized/>` or `<policy-violation/>`, or it
    ///   closed the stream before authenticating us), or the stream broke.
    pub fn bounce_condition(&self) -> StanzaCondition {
        match self {
            CloseReason::CloseTimeout
            | CloseReason::SentError(StreamCondition::ConnectionTimeout, _)
            | CloseReason::ReceivedError(
                StreamCondition::ConnectionTimeout
                | StreamCondition::SystemShutdown
                | StreamCondition::ResourceConstraint
                | StreamCondition::Reset,
                _,
            ) => StanzaCondition::RemoteServerTimeout,
            _ => StanzaCondition::RemoteServerNotFound,
        }
    }
}

/// Something the runtime must act on.
#[derive(Debug, Clone, PartialEq)]
// Not `#[non_exhaustive]`: the runtime (another crate of this workspace) matches it
// exhaustively, so a new event is a compile error there until it is handled.
pub enum Event {
    /// The peer's stream header arrived: on inbound streams this names the remote domain
    /// (`from`, when given) so the runtime can hand the connection to its owner shard.
    Opened {
        /// Local domain (inbound: header `to`, empty when a pre-1.0 header has none;
        /// outbound: ours).
        local: String,
        /// Remote domain (inbound: header `from`, if any).
        remote: Option<String>,
        /// The stream id (inbound: ours; outbound: the peer's).
        stream_id: String,
    },
    /// Wrap the socket with TLS now (RFC 6120 §5.4.3.3); then call
    /// [`S2sConnection::handle_tls_established`].
    StartTls(TlsRole),
    /// Stanzas may now flow from `local` to `remote` (outbound) or be accepted from
    /// `remote` to `local` (inbound).
    Authenticated {
        /// Our domain.
        local: String,
        /// The peer's domain.
        remote: String,
        /// How.
        method: AuthMethod,
        /// Which way stanzas flow.
        direction: Direction,
    },
    /// Outbound: authentication of a domain pair failed (dialback `invalid` or `error`,
    /// SASL failure with no fallback, no answer in time, the stream ended while our
    /// `db:result` waited, or [`S2sConnection::fail_dialback`]). Stanzas queued for it
    /// should be bounced with [`DialbackResult::bounce_condition`], or, when the stream
    /// has ended ([`S2sConnection::close_reason`]), with
    /// [`CloseReason::bounce_condition`].
    AuthFailed {
        /// Our domain.
        local: String,
        /// The peer's domain.
        remote: String,
        /// The answer; for a stream that ended or timed out while waiting,
        /// `Error(remote-server-timeout)` (XEP-0220 §2.1.1: the Initiating Server treats
        /// a closed stream as a dialback error).
        result: DialbackResult,
    },
    /// Outbound: TLS is up and our policy would authenticate with SASL EXTERNAL
    /// (XEP-0178) with our certificate for `local`, but the peer's features after TLS
    /// offer no `EXTERNAL` mechanism (RFC 6120 §6.4.1): the peer did not accept our
    /// certificate. Emitted once per stream, before the stream goes on with dialback
    /// ([`Event::Authenticated`] or [`Event::AuthFailed`] follows) or, when
    /// `dialback_fallback` is false, is closed with `policy-violation`
    /// ([`Event::Closed`] follows).
    SaslExternalNotOffered {
        /// Our domain (whose certificate the peer did not accept).
        local: String,
        /// The peer's domain.
        remote: String,
        /// Whether our policy for the peer allows dialback, so the stream falls back to
        /// it (XEP-0220); false: the stream is closed.
        dialback_fallback: bool,
    },
    /// Inbound: the peer claims `remote` with a dialback key; verify it with `remote`'s
    /// authoritative server (`db:verify` on an outbound stream) and answer with
    /// [`S2sConnection::handle_dialback_verdict`].
    VerifyNeeded {
        /// Our domain (the Receiving Server).
        local: String,
        /// The claimed domain (the Originating Server).
        remote: String,
        /// The stream id the key was generated for (ours).
        stream_id: String,
        /// The key.
        key: String,
    },
    /// Outbound: the authoritative server answered a `db:verify` we sent with
    /// [`S2sConnection::send_db_verify`].
    VerifyAnswered {
        /// Our domain (the Receiving Server that asked).
        local: String,
        /// The authoritative domain.
        remote: String,
        /// The stream id the verification was about.
        stream_id: String,
        /// The answer.
        result: DialbackResult,
    },
    /// An authorised stanza arrived (inbound; `from` and `to` checked).
    Stanza {
        /// message, presence or iq.
        kind: StanzaKind,
        /// The stanza as received.
        element: Element,
    },
    /// The stream is over; the runtime closes the socket after transmitting what is left.
    Closed(CloseReason),
}

/// Errors from calls the runtime makes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum S2sError {
    /// The domain pair is not authenticated on this stream for sending.
    #[error("{local} -> {remote} is not authenticated on this stream")]
    NotAuthenticated {
        /// Our domain.
        local: String,
        /// The peer's domain.
        remote: String,
    },
    /// The call does not fit the stream's direction or state.
    #[error("not possible in this state: {0}")]
    InvalidState(&'static str),
}

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

#[derive(Debug, Clone)]
struct Pending {
    local: String,
    remote: String,
    deadline: Instant,
}

#[derive(Debug, Clone)]
struct PendingVerify {
    local: String,
    remote: String,
    stream_id: String,
    deadline: Instant,
}

/// One S2S stream, either direction. See the module docs for the I/O contract.
#[derive(Debug)]
pub struct S2sConnection {
    cfg: Arc<S2sConfig>,
    dir: Direction,
    state: State,
    framer: Framer,
    out: Vec<u8>,
    events: VecDeque<Event>,
    /// Our domain on this stream (outbound: the originating one; inbound: header `to`).
    local: String,
    /// The peer's domain (outbound: the target; inbound: header `from`, may be empty).
    remote: String,
    policy: PeerPolicy,
    stream_id: String,
    id_nonce: u64,
    restarts: u32,
    tls: bool,
    peer_chain: Vec<CertificateDer<'static>>,
    /// When the TLS handshake completed (wall clock, from the runtime): the time the
    /// peer's chain is checked at.
    tls_at: Option<UnixTime>,
    /// The certificate check's verdict for a remote domain (checked once per chain).
    peer_cert_verdict: Option<(String, bool)>,
    sasl_done: bool,
    header_sent: bool,
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
    /// Outbound: additional local domains to authenticate once the stream is ready.
    queued_dialbacks: Vec<String>,
    /// Inbound: `db:result` and `db:verify` requests received (for the runtime: a stream
    /// that ends before asking anything was no dialback exchange).
    dialback_requests: u32,
    deadline: Option<Instant>,
    last_tx: Instant,
    last_stanza: Instant,
    /// Why we closed, while waiting for the peer's close.
    close_reason: Option<CloseReason>,
    /// Why the stream ended, once it has.
    ended: Option<CloseReason>,
}

impl S2sConnection {
    /// A new outbound stream from `local` to `remote` (both lowercase domains), for which
    /// the runtime has a connected socket (plain TCP; for XEP-0368 direct TLS, pass
    /// `direct_tls` once the TLS handshake is done). Sends our stream header at once.
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
        c.deadline = Some(now + c.cfg.timeouts.negotiation);
        c
    }

    /// A new inbound stream on an accepted socket. `id_nonce` makes this connection's
    /// stream ids distinct (the runtime passes a counter or random value); `direct_tls`
    /// when the socket is already TLS (XEP-0368 port 5270), with the client's chain and
    /// the wall-clock time of the handshake (see [`Self::handle_tls_established`]).
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
        c.deadline = Some(now + c.cfg.timeouts.negotiation);
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
            framer: Framer::new(cfg.limits),
            cfg,
            dir,
            state: State::ExpectHeader,
            out: Vec::new(),
            events: VecDeque::new(),
            local: String::new(),
            remote: String::new(),
            policy,
            stream_id: String::new(),
            id_nonce,
            restarts: 0,
            tls: false,
            peer_chain: Vec::new(),
            tls_at: None,
            peer_cert_verdict: None,
            sasl_done: false,
            header_sent: false,
            legacy: false,
            peer_dialback: false,
            pairs: Vec::new(),
            pending_results: Vec::new(),
            pending_verifies: Vec::new(),
            queued_verifies: Vec::new(),
            queued_dialbacks: Vec::new(),
            dialback_requests: 0,
            deadline: None,
            last_tx: now,
            last_stanza: now,
            close_reason: None,
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
        &self.stream_id
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

    /// Outbound: our domains whose `db:result` waits for the peer's answer (XEP-0220
    /// §2.1.1), in the order they were sent.
    pub fn pending_dialbacks(&self) -> impl Iterator<Item = &str> {
        self.pending_results
            .iter()
            .filter(|_| self.dir == Direction::Outbound)
            .map(|p| p.local.as_str())
    }

    /// Whether the stream waits for any dialback answer: a `db:result` or `db:verify`
    /// sent and unanswered, or queued until the stream is ready.
    pub fn awaits_dialback_answers(&self) -> bool {
        !(self.pending_results.is_empty()
            && self.pending_verifies.is_empty()
            && self.queued_verifies.is_empty()
            && self.queued_dialbacks.is_empty())
    }

    /// Inbound: how many dialback requests (`db:result` or `db:verify`, XEP-0220 §2.2)
    /// the peer sent on this stream.
    pub fn dialback_requests_received(&self) -> u32 {
        self.dialback_requests
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

    /// Appends the bytes to send to `into` and forgets them. Returns how many.
    pub fn poll_transmit(&mut self, into: &mut Vec<u8>) -> usize {
        let n = self.out.len();
        into.extend_from_slice(&self.out);
        self.out.clear();
        n
    }

    /// Gives idle buffers back (the framer's receive buffer when nothing is buffered,
    /// the transmit buffer when empty): the runtime calls this when a stream goes quiet,
    /// so idle streams cost little memory.
    pub fn release_idle_memory(&mut self) {
        self.framer.release_idle_buffer();
        if self.out.is_empty() && self.out.capacity() > 0 {
            self.out = Vec::new();
        }
    }

    /// Bytes waiting to be sent (for back-pressure decisions).
    pub fn pending_transmit(&self) -> usize {
        self.out.len()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next instant at which [`S2sConnection::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let mut t = self.deadline;
        let mut earliest = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        for p in &self.pending_results {
            earliest(p.deadline);
        }
        for p in &self.pending_verifies {
            earliest(p.deadline);
        }
        if self.state == State::Open {
            earliest(self.last_tx + self.cfg.timeouts.keepalive);
            if let (Some(idle), false) = (self.cfg.timeouts.idle, self.pairs.is_empty()) {
                earliest(self.last_stanza + idle);
            }
        }
        t
    }

    // ----- inputs -----

    /// Feeds bytes received from the peer (plaintext: after TLS, the decrypted bytes).
    pub fn handle_input(&mut self, data: &[u8], now: Instant) {
        if matches!(self.state, State::Closed) {
            return;
        }
        self.framer.feed(data);
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
        self.restart(now);
        self.process(now);
    }

    /// The runtime's TLS handshake failed; the stream is over (the socket is unusable).
    pub fn handle_tls_failed(&mut self, reason: &str) {
        self.finish(CloseReason::TlsFailed(reason.to_owned()));
    }

    /// Inbound: the authoritative server's verdict on a key from [`Event::VerifyNeeded`]
    /// (XEP-0220 §2.1.3). Sends `<db:result type=.../>` and, when valid, authenticates
    /// the pair. Ignored when no such verification is pending.
    pub fn handle_dialback_verdict(
        &mut self,
        local: &str,
        remote: &str,
        result: DialbackResult,
        now: Instant,
    ) {
        let Some(i) = self
            .pending_results
            .iter()
            .position(|p| p.local == local && p.remote == remote)
        else {
            return;
        };
        self.pending_results.swap_remove(i);
        self.write_db_answer("result", local, remote, None, result);
        match result {
            DialbackResult::Valid => self.authenticate(local, remote, AuthMethod::Dialback, now),
            // XEP-0220 §2.2.1: the Initiating Server is spoofing the Sender Domain; the
            // Receiving Server closes the stream.
            DialbackResult::Invalid => self.close(None, now),
            DialbackResult::Error(_) => {}
        }
    }

    /// Drives the deadlines: negotiation steps, pending dialback, keepalives, idle close,
    /// closing handshake.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        if self.deadline.is_some_and(|d| now >= d) {
            self.deadline = None;
            if self.state == State::ExpectClose {
                self.finish(CloseReason::CloseTimeout);
            } else {
                self.fail(
                    StreamCondition::ConnectionTimeout,
                    "negotiation step timed out",
                );
            }
            return;
        }
        // Inbound db:result nobody answered: remote-server-timeout (XEP-0220 §2.5).
        let mut i = 0;
        while i < self.pending_results.len() {
            if now >= self.pending_results[i].deadline {
                let p = self.pending_results.swap_remove(i);
                match self.dir {
                    Direction::Inbound => {
                        let r = DialbackResult::Error(DialbackErrorCondition::RemoteServerTimeout);
                        self.write_db_answer("result", &p.local, &p.remote, None, r);
                    }
                    Direction::Outbound => {
                        self.events.push_back(Event::AuthFailed {
                            local: p.local,
                            remote: p.remote,
                            result: DialbackResult::Error(
                                DialbackErrorCondition::RemoteServerTimeout,
                            ),
                        });
                        if self.pairs.is_empty() && self.pending_results.is_empty() {
                            // Nothing authenticated and nothing left to wait for.
                            return self.fail(
                                StreamCondition::ConnectionTimeout,
                                "dialback result timed out",
                            );
                        }
                    }
                }
            } else {
                i += 1;
            }
        }
        let mut i = 0;
        while i < self.pending_verifies.len() {
            if now >= self.pending_verifies[i].deadline {
                let p = self.pending_verifies.swap_remove(i);
                self.events.push_back(Event::VerifyAnswered {
                    local: p.local,
                    remote: p.remote,
                    stream_id: p.stream_id,
                    result: DialbackResult::Error(DialbackErrorCondition::RemoteServerTimeout),
                });
            } else {
                i += 1;
            }
        }
        if self.state == State::Open {
            if let Some(idle) = self.cfg.timeouts.idle {
                if !self.pairs.is_empty() && now >= self.last_stanza + idle {
                    self.close(None, now);
                    return;
                }
            }
            if now >= self.last_tx + self.cfg.timeouts.keepalive {
                self.out.push(b' ');
                self.last_tx = now;
            }
        }
    }

    // ----- commands -----

    /// Outbound: sends a stanza (its bytes, already addressed) from `local` to `remote`.
    ///
    /// Errors: [`S2sError::NotAuthenticated`] when the pair is not authenticated on this
    /// stream; nothing is sent.
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
        if self.dir != Direction::Outbound || self.state != State::Open {
            return Err(S2sError::InvalidState(
                "stanzas are sent on open outbound streams",
            ));
        }
        if !self.is_authenticated(local, remote) {
            return Err(S2sError::NotAuthenticated {
                local: local.to_owned(),
                remote: remote.to_owned(),
            });
        }
        for p in parts {
            self.out.extend_from_slice(p);
        }
        self.last_tx = now;
        self.last_stanza = now;
        Ok(())
    }

    /// Outbound: authenticates a further local domain to the same remote domain over
    /// this stream (XEP-0220 §2.4 multiplexing, "piggybacking"): sends `db:result` for
    /// (`local`, remote) once the stream is ready. The outcome is an
    /// [`Event::Authenticated`] or [`Event::AuthFailed`].
    pub fn request_dialback(&mut self, local: &str, now: Instant) -> Result<(), S2sError> {
        if self.dir != Direction::Outbound {
            return Err(S2sError::InvalidState(
                "dialback is requested on outbound streams",
            ));
        }
        if self.is_authenticated(local, &self.remote.clone()) {
            return Ok(());
        }
        if self.state == State::Open {
            self.send_db_result(local, now);
        } else {
            self.queued_dialbacks.push(local.to_owned());
        }
        Ok(())
    }

    /// Outbound: asks the peer, as authoritative server for its domain, whether `key`
    /// is valid for the inbound stream `stream_id` (XEP-0220 §2.1.3 `db:verify`). Sent
    /// once the stream is ready (authentication of this stream is not needed); the answer
    /// is an [`Event::VerifyAnswered`].
    pub fn send_db_verify(
        &mut self,
        local: &str,
        stream_id: &str,
        key: &str,
        now: Instant,
    ) -> Result<(), S2sError> {
        if self.dir != Direction::Outbound {
            return Err(S2sError::InvalidState(
                "db:verify is sent on outbound streams",
            ));
        }
        let remote = self.remote.clone();
        if self.state == State::Open {
            self.write_db_verify(local, &remote, stream_id, key, now);
        } else {
            self.queued_verifies.push((
                local.to_owned(),
                remote,
                stream_id.to_owned(),
                key.to_owned(),
            ));
        }
        Ok(())
    }

    /// Outbound: stops waiting for the peer's answer to our `db:result` for (`local`,
    /// remote) and reports [`Event::AuthFailed`] with `result`. For the runtime, when it
    /// learns elsewhere that the peer's side of the dialback failed (its verification
    /// connection to our authoritative side broke off, XEP-0220 §2.1.2): §2.1.1 lets the
    /// Initiating Server consider a dialback failed without waiting for its timeout. An
    /// answer arriving later no longer matches a request and is ignored (§3.1). Returns
    /// whether such a `db:result` was pending.
    pub fn fail_dialback(&mut self, local: &str, result: DialbackResult) -> bool {
        if self.dir != Direction::Outbound {
            return false;
        }
        let Some(i) = self.pending_results.iter().position(|p| p.local == local) else {
            return false;
        };
        let p = self.pending_results.remove(i);
        self.events.push_back(Event::AuthFailed {
            local: p.local,
            remote: p.remote,
            result,
        });
        true
    }

    /// Closes the stream: an optional stream error (RFC 6120 §4.9), then
    /// `</stream:stream>`; then waits for the peer's close (RFC 6120 §4.4).
    pub fn close(&mut self, error: Option<(StreamCondition, &str)>, now: Instant) {
        if matches!(self.state, State::Closed | State::ExpectClose) {
            return;
        }
        if !self.header_sent {
            self.send_header();
        }
        let reason = match error {
            Some((c, text)) => {
                write_stream_error(c, Some(text), &mut self.out);
                CloseReason::SentError(c, text.to_owned())
            }
            None => CloseReason::Local,
        };
        self.out.extend_from_slice(STREAM_CLOSE);
        self.close_reason = Some(reason);
        self.state = State::ExpectClose;
        self.deadline = Some(now + self.cfg.timeouts.close);
    }

    // ----- internals -----

    fn next_stream_id(&mut self) -> String {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.cfg.stream_id_key).expect("any key length");
        mac.update(&self.id_nonce.to_be_bytes());
        mac.update(&self.restarts.to_be_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    fn send_header(&mut self) {
        let (from, to, id) = match self.dir {
            Direction::Outbound => (Some(self.local.as_str()), Some(self.remote.as_str()), None),
            Direction::Inbound => (
                (!self.local.is_empty()).then_some(self.local.as_str()),
                (!self.remote.is_empty()).then_some(self.remote.as_str()),
                Some(self.stream_id.as_str()),
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
            &mut self.out,
        );
        self.header_sent = true;
    }

    /// Stream restart after TLS or SASL: a fresh framer document and, outbound, a new
    /// header from us.
    fn restart(&mut self, now: Instant) {
        self.framer.reset();
        self.restarts += 1;
        self.header_sent = false;
        self.state = State::ExpectHeader;
        self.deadline = Some(now + self.cfg.timeouts.negotiation);
        if self.dir == Direction::Outbound {
            self.send_header();
        }
    }

    fn finish(&mut self, reason: CloseReason) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.deadline = None;
        // Outbound dialback still waiting: its stanzas will not go out on this stream.
        for p in std::mem::take(&mut self.pending_results) {
            if self.dir == Direction::Outbound {
                self.events.push_back(Event::AuthFailed {
                    local: p.local,
                    remote: p.remote,
                    result: DialbackResult::Error(DialbackErrorCondition::RemoteServerTimeout),
                });
            }
        }
        for p in std::mem::take(&mut self.pending_verifies) {
            self.events.push_back(Event::VerifyAnswered {
                local: p.local,
                remote: p.remote,
                stream_id: p.stream_id,
                result: DialbackResult::Error(DialbackErrorCondition::RemoteConnectionFailed),
            });
        }
        self.ended = Some(reason.clone());
        self.events.push_back(Event::Closed(reason));
    }

    /// Sends a stream error and closes (RFC 6120 §4.9.1: the stream error is fatal).
    fn fail(&mut self, condition: StreamCondition, text: &str) {
        if matches!(self.state, State::Closed) {
            return;
        }
        if self.state != State::ExpectClose {
            if !self.header_sent {
                // §4.9.1.2: an error before our header still needs our header first.
                if self.local.is_empty() {
                    self.local = self.cfg.local_domains.first().cloned().unwrap_or_default();
                }
                self.send_header();
            }
            write_stream_error(condition, Some(text), &mut self.out);
            self.out.extend_from_slice(STREAM_CLOSE);
        }
        self.finish(CloseReason::SentError(condition, text.to_owned()));
    }

    fn process(&mut self, now: Instant) {
        while !matches!(self.state, State::Closed | State::ExpectTls) {
            let frame = match self.framer.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => {
                    let text = e.to_string();
                    self.fail(e.condition(), &text);
                    return;
                }
            };
            match frame {
                Frame::Header(h) => self.on_header(h, now),
                Frame::Element(el) => self.on_element(el, now),
                Frame::Close => {
                    if self.state != State::ExpectClose {
                        self.out.extend_from_slice(STREAM_CLOSE);
                    }
                    let reason = self.close_reason.take().unwrap_or(CloseReason::PeerClosed);
                    self.finish(reason);
                }
            }
        }
    }

    fn on_header(&mut self, h: StreamHeader, now: Instant) {
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
            Some(v) if v.split('.').next() == Some("1") => {}
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

    fn on_header_outbound(&mut self, h: StreamHeader, now: Instant) {
        self.stream_id = h.id.unwrap_or_default();
        self.events.push_back(Event::Opened {
            local: self.local.clone(),
            remote: Some(self.remote.clone()),
            stream_id: self.stream_id.clone(),
        });
        if self.legacy {
            // A response header without `version`: the peer predates XMPP 1.0 and sends no
            // features (RFC 6120 §4.7.5), so nothing is waited for: dialback (announced by
            // its xmlns:db, XEP-0220 §2.4.1) starts at once (§2.1.1), unless policy needs
            // TLS or SASL, which such a stream cannot negotiate.
            if self.policy.tls == TlsPolicy::Required && !self.tls {
                return self.fail(
                    StreamCondition::PolicyViolation,
                    "TLS is required but the peer does not support it",
                );
            }
            if !self.policy.allows_dialback() {
                return self.fail(
                    StreamCondition::PolicyViolation,
                    "the peer supports only dialback, which policy forbids",
                );
            }
            self.peer_dialback = true;
            return self.enter_open(now);
        }
        self.state = State::ExpectFeatures;
        self.deadline = Some(now + self.cfg.timeouts.negotiation);
    }

    /// The initiating server's header (RFC 6120 §4.7). `to` must name a domain we host
    /// (else `host-unknown`, §4.9.3.6), with one exception: a header without `version`
    /// comes from a server that predates XMPP 1.0 (§4.7.5), and the original dialback
    /// protocol (RFC 3920 §4.4 made `to` a SHOULD) let it omit `to` and `from`. Such a
    /// stream is accepted, as Prosody and ejabberd do, with no local domain: each
    /// `db:result` / `db:verify` names its pair and its `to` is checked there (XEP-0220
    /// §2.2), as is every stanza's (§8.1.1.2). Our answering header then has no `from`
    /// (§4.7.1: it would echo the `to` we did not get) and no `version`, and no features
    /// follow (§4.7.5).
    fn on_header_inbound(&mut self, h: StreamHeader, now: Instant) {
        self.stream_id = self.next_stream_id();
        let to = h.to.map(|to| {
            let to = to.to_ascii_lowercase();
            to.strip_suffix('.').unwrap_or(&to).to_owned()
        });
        if let Some(from) = h.from {
            let from = from.to_ascii_lowercase();
            self.remote = from.strip_suffix('.').unwrap_or(&from).to_owned();
        }
        match to {
            None if self.legacy => {}
            Some(to) if self.cfg.hosts(&to) => self.local = to,
            _ => {
                self.local = self.cfg.local_domains.first().cloned().unwrap_or_default();
                return self.fail(
                    StreamCondition::HostUnknown,
                    "this server does not host the domain",
                );
            }
        }
        if !self.remote.is_empty() {
            self.policy = self.cfg.policy.for_domain(&self.remote);
            if !self.policy.allow {
                return self.fail(
                    StreamCondition::PolicyViolation,
                    "federation with this domain is not allowed",
                );
            }
        }
        if self.legacy {
            // No stream features without version='1.0' (RFC 6120 §4.7.5, §4.3.2), hence
            // no STARTTLS and no SASL: only dialback can authenticate this stream. Refuse
            // it now when policy cannot accept that for the peer it names or, when it
            // names none, for any peer at all.
            let ok = if self.remote.is_empty() {
                let p = &self.cfg.policy;
                std::iter::once(&p.default)
                    .chain(p.domains.values())
                    .any(|p| legacy_acceptable(p, self.tls))
            } else {
                legacy_acceptable(&self.policy, self.tls)
            };
            if !ok {
                return self.fail(StreamCondition::PolicyViolation, LEGACY_REFUSED);
            }
        }
        self.send_header();
        self.events.push_back(Event::Opened {
            local: self.local.clone(),
            remote: (!self.remote.is_empty()).then(|| self.remote.clone()),
            stream_id: self.stream_id.clone(),
        });
        if !self.legacy {
            self.send_features();
        }
        self.state = State::Open;
        // A stream that never authenticates must not stay open forever.
        self.deadline = self
            .pairs
            .is_empty()
            .then(|| now + self.cfg.timeouts.negotiation);
        self.last_tx = now;
    }

    /// Inbound features per policy (RFC 6120 §4.3.2; never on a pre-1.0 stream, §4.7.5):
    /// STARTTLS before TLS; after TLS, SASL EXTERNAL when the peer's certificate is valid
    /// for its claimed domain; dialback when allowed and TLS is not still required.
    fn send_features(&mut self) {
        let offer_tls = !self.tls
            && self.policy.tls != TlsPolicy::Disabled
            && self.cfg.has_certificate(&self.local);
        let tls_pending = !self.tls && self.policy.tls == TlsPolicy::Required;
        self.out.extend_from_slice(b"<stream:features>");
        if offer_tls {
            self.out
                .extend_from_slice(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>");
            if tls_pending {
                self.out.extend_from_slice(b"<required/>");
            }
            self.out.extend_from_slice(b"</starttls>");
        }
        if !tls_pending && !self.sasl_done {
            if self.tls && self.policy.allows_external() && self.peer_cert_valid() {
                self.out.extend_from_slice(
                    b"<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms>",
                );
            }
            if self.policy.allows_dialback() {
                self.out.extend_from_slice(
                    b"<dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>",
                );
            }
        }
        self.out.extend_from_slice(b"</stream:features>");
    }

    /// Whether the peer's certificate is valid for the domain its header claims
    /// (XEP-0178 §3; checked only once the header names the domain).
    fn peer_cert_valid(&mut self) -> bool {
        if let Some((domain, ok)) = &self.peer_cert_verdict {
            if *domain == self.remote {
                return *ok;
            }
        }
        let ok = self.check_peer_cert();
        self.peer_cert_verdict = Some((self.remote.clone(), ok));
        ok
    }

    fn check_peer_cert(&self) -> bool {
        if !self.policy.verify_certificates || self.remote.is_empty() || self.peer_chain.is_empty()
        {
            return false;
        }
        match &self.cfg.cert_verifier {
            Some(v) => self
                .tls_at
                .is_some_and(|at| v.verify(&self.peer_chain, &self.remote, at).is_ok()),
            None => false,
        }
    }

    fn on_element(&mut self, el: Element, now: Instant) {
        match (self.state, el.namespace()) {
            (State::ExpectHeader, _) => self.fail(
                StreamCondition::BadFormat,
                "element before the stream header",
            ),
            (_, Namespace::Streams) if el.name() == "error" => self.on_stream_error(&el),
            (State::ExpectFeatures, Namespace::Streams) if el.name() == "features" => {
                self.on_features(&el, now)
            }
            (State::ExpectProceed, Namespace::Tls) => match el.name() {
                "proceed" => {
                    self.framer.discard_buffered();
                    self.state = State::ExpectTls;
                    self.deadline = Some(now + self.cfg.timeouts.negotiation);
                    self.events.push_back(Event::StartTls(TlsRole::Client {
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

    fn on_stream_error(&mut self, el: &Element) {
        let node = Node::parse(el).unwrap_or_default();
        let condition = node
            .children
            .iter()
            .filter(|c| c.ns == ns::STREAM_ERRORS && c.name != "text")
            .find_map(|c| StreamCondition::from_name(&c.name))
            .unwrap_or(StreamCondition::UndefinedCondition);
        let text = node
            .child("text", ns::STREAM_ERRORS)
            .map(|t| t.text.clone());
        if self.state != State::ExpectClose {
            self.out.extend_from_slice(STREAM_CLOSE);
        }
        self.finish(CloseReason::ReceivedError(condition, text));
    }

    /// Outbound: the peer's features (RFC 6120 §4.3.2). STARTTLS when offered and
    /// allowed; else SASL EXTERNAL when possible; else dialback, after an
    /// [`Event::SaslExternalNotOffered`] when policy wanted EXTERNAL over TLS.
    fn on_features(&mut self, el: &Element, now: Instant) {
        let node = Node::parse(el).unwrap_or_default();
        let starttls = node.child("starttls", ns::TLS).is_some();
        let external = node.child("mechanisms", ns::SASL).is_some_and(|m| {
            m.children
                .iter()
                .any(|c| c.name == "mechanism" && c.text.trim() == "EXTERNAL")
        });
        let dialback = node.child("dialback", ns::DIALBACK_FEATURE).is_some();
        if !self.tls {
            if starttls && self.policy.tls != TlsPolicy::Disabled {
                self.out
                    .extend_from_slice(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
                self.state = State::ExpectProceed;
                self.deadline = Some(now + self.cfg.timeouts.negotiation);
                return;
            }
            if self.policy.tls == TlsPolicy::Required {
                return self.fail(
                    StreamCondition::PolicyViolation,
                    "TLS is required but the peer does not offer it",
                );
            }
        }
        self.peer_dialback = dialback;
        if self.sasl_done {
            // Features after the SASL restart: nothing more to negotiate, and stanzas
            // may now be sent for the pair SASL authenticated.
            self.state = State::Open;
            self.deadline = None;
            if self.dir == Direction::Outbound {
                let (local, remote) = (self.local.clone(), self.remote.clone());
                self.authenticate(&local, &remote, AuthMethod::SaslExternal, now);
            }
            return self.flush_queued(now);
        }
        let want_external = self.tls
            && self.dir == Direction::Outbound
            && self.policy.allows_external()
            && self.cfg.has_certificate(&self.local);
        if want_external && !external {
            // XEP-0178 §3: a receiving server that accepted our certificate offers
            // EXTERNAL after TLS; without it the certificate was refused.
            self.events.push_back(Event::SaslExternalNotOffered {
                local: self.local.clone(),
                remote: self.remote.clone(),
                dialback_fallback: self.policy.allows_dialback(),
            });
        }
        if want_external && external {
            // XEP-0178 §3: authzid is our domain.
            let b64 = base64::engine::general_purpose::STANDARD.encode(self.local.as_bytes());
            self.out.extend_from_slice(
                b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>",
            );
            self.out.extend_from_slice(b64.as_bytes());
            self.out.extend_from_slice(b"</auth>");
            self.state = State::ExpectSaslResult;
            self.deadline = Some(now + self.cfg.timeouts.negotiation);
            return;
        }
        self.enter_open(now);
    }

    /// Outbound: negotiation is over without SASL; authenticate by dialback if we can.
    fn enter_open(&mut self, now: Instant) {
        let can_dialback = self.policy.allows_dialback() && self.peer_dialback;
        // A peer that offers no dialback feature but declared xmlns:db may still do it;
        // XEP-0220 §2.1 lets us try. Without either we cannot authenticate.
        if !can_dialback {
            if !self.policy.allows_dialback() {
                return self.fail(
                    StreamCondition::PolicyViolation,
                    "no authentication method allowed by policy is available",
                );
            }
            self.peer_dialback = true;
        }
        self.state = State::Open;
        self.deadline = None;
        let local = self.local.clone();
        self.send_db_result(&local, now);
        self.flush_queued(now);
    }

    fn flush_queued(&mut self, now: Instant) {
        for local in std::mem::take(&mut self.queued_dialbacks) {
            if !self.is_authenticated(&local, &self.remote.clone()) {
                if self.sasl_done && !self.peer_dialback {
                    continue;
                }
                self.send_db_result(&local, now);
            }
        }
        for (local, remote, id, key) in std::mem::take(&mut self.queued_verifies) {
            self.write_db_verify(&local, &remote, &id, &key, now);
        }
    }

    fn send_db_result(&mut self, local: &str, now: Instant) {
        if self.pending_results.iter().any(|p| p.local == local) {
            return;
        }
        let remote = self.remote.clone();
        let key = self
            .cfg
            .dialback_secret
            .key(&remote, local, &self.stream_id);
        self.out.extend_from_slice(b"<db:result from='");
        escape_attr_into(local, &mut self.out);
        self.out.extend_from_slice(b"' to='");
        escape_attr_into(&remote, &mut self.out);
        self.out.extend_from_slice(b"'>");
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"</db:result>");
        self.last_tx = now;
        self.pending_results.push(Pending {
            local: local.to_owned(),
            remote,
            deadline: now + self.cfg.timeouts.negotiation,
        });
    }

    fn write_db_verify(&mut self, local: &str, remote: &str, id: &str, key: &str, now: Instant) {
        self.out.extend_from_slice(b"<db:verify from='");
        escape_attr_into(local, &mut self.out);
        self.out.extend_from_slice(b"' to='");
        escape_attr_into(remote, &mut self.out);
        self.out.extend_from_slice(b"' id='");
        escape_attr_into(id, &mut self.out);
        self.out.extend_from_slice(b"'>");
        escape_text_into(key, &mut self.out);
        self.out.extend_from_slice(b"</db:verify>");
        self.last_tx = now;
        self.pending_verifies.push(PendingVerify {
            local: local.to_owned(),
            remote: remote.to_owned(),
            stream_id: id.to_owned(),
            deadline: now + self.cfg.timeouts.verify,
        });
    }

    /// `<db:result/>` or `<db:verify/>` answer with `type` (XEP-0220 §2.1.3, §2.5).
    fn write_db_answer(
        &mut self,
        name: &str,
        from: &str,
        to: &str,
        id: Option<&str>,
        result: DialbackResult,
    ) {
        self.out.extend_from_slice(b"<db:");
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b" from='");
        escape_attr_into(from, &mut self.out);
        self.out.extend_from_slice(b"' to='");
        escape_attr_into(to, &mut self.out);
        if let Some(id) = id {
            self.out.extend_from_slice(b"' id='");
            escape_attr_into(id, &mut self.out);
        }
        self.out.extend_from_slice(b"' type='");
        self.out.extend_from_slice(result.type_str().as_bytes());
        match result {
            DialbackResult::Error(c) => {
                self.out.extend_from_slice(b"'><error type='");
                self.out.extend_from_slice(c.error_type().as_bytes());
                self.out.extend_from_slice(b"'><");
                self.out.extend_from_slice(c.as_str().as_bytes());
                self.out.extend_from_slice(
                    b" xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:",
                );
                self.out.extend_from_slice(name.as_bytes());
                self.out.push(b'>');
            }
            _ => self.out.extend_from_slice(b"'/>"),
        }
    }

    fn on_dialback(&mut self, el: &Element, now: Instant) {
        let node = match Node::parse(el) {
            Ok(n) => n,
            Err(_) => return self.fail(StreamCondition::BadFormat, "malformed dialback element"),
        };
        let from = node.attr("from").map(|s| s.to_ascii_lowercase());
        let to = node.attr("to").map(|s| s.to_ascii_lowercase());
        let (Some(from), Some(to)) = (from, to) else {
            return self.fail(
                StreamCondition::ImproperAddressing,
                "dialback element without from or to",
            );
        };
        let condition = node
            .child("error", "")
            .or_else(|| node.children.iter().find(|c| c.name == "error"))
            .and_then(|e| {
                e.children
                    .iter()
                    .find(|c| c.ns == ns::STANZA_ERRORS && c.name != "text")
            })
            .map(|c| c.name.as_str());
        let answer = DialbackResult::from_type(node.attr("type"), condition);
        if self.dir == Direction::Inbound && answer.is_none() {
            self.dialback_requests = self.dialback_requests.saturating_add(1);
        }
        match (self.dir, el.name(), answer) {
            // Inbound request: the Originating Server's key (XEP-0220 §2.1.2).
            (Direction::Inbound, "result", None) => {
                self.on_db_result_request(from, to, node.text, now)
            }
            // Inbound request: we are the Authoritative Server (§2.1.3).
            (Direction::Inbound, "verify", None) => {
                let id = node.attr("id").unwrap_or_default().to_owned();
                let result = if !self.cfg.hosts(&to) {
                    DialbackResult::Error(DialbackErrorCondition::ItemNotFound)
                } else if self
                    .cfg
                    .dialback_secret
                    .verify(&from, &to, &id, node.text.trim())
                {
                    DialbackResult::Valid
                } else {
                    DialbackResult::Invalid
                };
                self.write_db_answer("verify", &to, &from, Some(&id), result);
            }
            // Outbound answer to our db:result (§2.1.4).
            (Direction::Outbound, "result", Some(result)) => {
                let Some(i) = self
                    .pending_results
                    .iter()
                    .position(|p| p.local == to && p.remote == from)
                else {
                    return; // Not ours to care about; XEP-0220 says ignore.
                };
                self.pending_results.swap_remove(i);
                if result == DialbackResult::Valid {
                    self.authenticate(&to, &from, AuthMethod::Dialback, now);
                } else {
                    self.events.push_back(Event::AuthFailed {
                        local: to,
                        remote: from,
                        result,
                    });
                }
            }
            // Outbound answer to our db:verify.
            (Direction::Outbound, "verify", Some(result)) => {
                let id = node.attr("id").unwrap_or_default();
                let Some(i) = self
                    .pending_verifies
                    .iter()
                    .position(|p| p.local == to && p.remote == from && p.stream_id == id)
                else {
                    return;
                };
                let p = self.pending_verifies.swap_remove(i);
                self.events.push_back(Event::VerifyAnswered {
                    local: p.local,
                    remote: p.remote,
                    stream_id: p.stream_id,
                    result,
                });
            }
            _ => self.fail(
                StreamCondition::UnsupportedStanzaType,
                "unexpected dialback element",
            ),
        }
    }

    /// Inbound `db:result` carrying a key: checks addressing and policy, then asks the
    /// runtime to verify it (XEP-0220 §2.1.2, errors per §2.5).
    ///
    /// On a pre-1.0 stream (no features, so no STARTTLS or SASL ever) the policy checked
    /// is the claimed domain's, and one that needs TLS or SASL EXTERNAL for it refuses
    /// the stream with `policy-violation` (RFC 6120 §4.9.3.14), as at the header.
    fn on_db_result_request(&mut self, from: String, to: String, key: String, now: Instant) {
        let policy = self.cfg.policy.for_domain(&from);
        if self.legacy {
            // A denied domain gets the dialback error below, as on any stream.
            if policy.allow && !legacy_acceptable(&policy, self.tls) {
                return self.fail(StreamCondition::PolicyViolation, LEGACY_REFUSED);
            }
        } else if !self.tls && self.policy.tls == TlsPolicy::Required {
            return self.fail(
                StreamCondition::PolicyViolation,
                "TLS is required before authentication",
            );
        }
        if !self.cfg.hosts(&to) {
            let r = DialbackResult::Error(DialbackErrorCondition::ItemNotFound);
            return self.write_db_answer("result", &to, &from, None, r);
        }
        if !policy.allow
            || !policy.allows_dialback()
            || (policy.tls == TlsPolicy::Required && !self.tls)
        {
            let r = DialbackResult::Error(DialbackErrorCondition::from_stanza_condition(
                crate::condition::StanzaCondition::PolicyViolation,
            ));
            return self.write_db_answer("result", &to, &from, None, r);
        }
        if self.is_authenticated(&to, &from)
            || self
                .pending_results
                .iter()
                .any(|p| p.local == to && p.remote == from)
        {
            return; // Already done or under way: nothing new to verify.
        }
        if self.remote.is_empty() {
            self.remote = from.clone();
        }
        self.pending_results.push(Pending {
            local: to.clone(),
            remote: from.clone(),
            deadline: now + self.cfg.timeouts.verify,
        });
        if self.pairs.is_empty() {
            // Leave the authoritative server its time before the stream times out.
            let until = now + self.cfg.timeouts.verify + self.cfg.timeouts.negotiation;
            self.deadline = Some(self.deadline.map_or(until, |d| d.max(until)));
        }
        self.events.push_back(Event::VerifyNeeded {
            local: to,
            remote: from,
            stream_id: self.stream_id.clone(),
            key: key.trim().to_owned(),
        });
    }

    fn authenticate(&mut self, local: &str, remote: &str, method: AuthMethod, now: Instant) {
        if !self.is_authenticated(local, remote) {
            self.pairs
                .push((local.to_owned(), remote.to_owned(), method));
        }
        if self.state == State::Open {
            self.deadline = None;
        }
        self.last_stanza = now;
        self.events.push_back(Event::Authenticated {
            local: local.to_owned(),
            remote: remote.to_owned(),
            method,
            direction: self.dir,
        });
    }

    /// Inbound `<starttls/>` (RFC 6120 §5.4.2); refused when we did not offer it (never
    /// on a pre-1.0 stream, which has no features).
    fn on_starttls(&mut self, now: Instant) {
        let offered = !self.legacy
            && !self.tls
            && self.policy.tls != TlsPolicy::Disabled
            && self.cfg.has_certificate(&self.local);
        if !offered {
            self.out
                .extend_from_slice(b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
            self.out.extend_from_slice(STREAM_CLOSE);
            return self.finish(CloseReason::SentError(
                StreamCondition::PolicyViolation,
                "STARTTLS not offered".into(),
            ));
        }
        self.out
            .extend_from_slice(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        self.framer.discard_buffered();
        self.state = State::ExpectTls;
        self.deadline = Some(now + self.cfg.timeouts.negotiation);
        self.events.push_back(Event::StartTls(TlsRole::Server));
    }

    /// Inbound SASL `<auth mechanism='EXTERNAL'>` (RFC 6120 §6.4, XEP-0178 §3).
    fn on_sasl_auth(&mut self, el: &Element, now: Instant) {
        let node = Node::parse(el).unwrap_or_default();
        let failure = |c: &mut Self, cond: &str, text: &str| {
            c.out
                .extend_from_slice(b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><");
            c.out.extend_from_slice(cond.as_bytes());
            c.out.extend_from_slice(b"/><text>");
            escape_text_into(text, &mut c.out);
            c.out.extend_from_slice(b"</text></failure>");
        };
        if node.attr("mechanism") != Some("EXTERNAL") {
            return failure(self, "invalid-mechanism", "only EXTERNAL is offered");
        }
        if self.legacy || !(self.tls && self.policy.allows_external() && self.peer_cert_valid()) {
            return failure(
                self,
                "not-authorized",
                "the certificate is not valid for the claimed domain",
            );
        }
        let payload = node.text.trim();
        let authzid = if payload.is_empty() || payload == "=" {
            self.remote.clone()
        } else {
            match base64::engine::general_purpose::STANDARD.decode(payload) {
                Ok(b) => String::from_utf8_lossy(&b).to_ascii_lowercase(),
                Err(_) => return failure(self, "incorrect-encoding", "authzid is not base64"),
            }
        };
        if authzid != self.remote {
            return failure(
                self,
                "invalid-authzid",
                "authzid differs from the stream's from domain",
            );
        }
        self.out
            .extend_from_slice(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
        self.sasl_done = true;
        let (local, remote) = (self.local.clone(), self.remote.clone());
        self.authenticate(&local, &remote, AuthMethod::SaslExternal, now);
        // RFC 6120 §6.4.6: the stream restarts after <success/>.
        self.restart(now);
    }

    /// Outbound SASL outcome (RFC 6120 §6.4.5, §6.4.6). On failure, fall back to
    /// dialback on the same stream where policy allows (as Prosody does).
    fn on_sasl_result(&mut self, el: &Element, now: Instant) {
        match el.name() {
            "success" => {
                self.sasl_done = true;
                // The pair is authenticated now, but stanzas can flow only once the
                // restarted stream is open again (RFC 6120 §6.4.6): the event waits for
                // the post-SASL features (see `on_features`).
                if !self.is_authenticated(&self.local, &self.remote) {
                    self.pairs.push((
                        self.local.clone(),
                        self.remote.clone(),
                        AuthMethod::SaslExternal,
                    ));
                }
                self.restart(now);
            }
            _ => {
                if self.policy.allows_dialback() && self.peer_dialback {
                    self.enter_open(now);
                } else {
                    self.events.push_back(Event::AuthFailed {
                        local: self.local.clone(),
                        remote: self.remote.clone(),
                        result: DialbackResult::Invalid,
                    });
                    self.fail(
                        StreamCondition::NotAuthorized,
                        "SASL EXTERNAL failed and dialback is not allowed",
                    );
                }
            }
        }
    }

    /// Authorisation of a received stanza (RFC 6120 §8.1.1.2, §13.8; XEP-0220 §2.1.4):
    /// `to` must name a domain we host and `from` a domain this stream authenticated for
    /// that pair.
    fn on_stanza(&mut self, kind: StanzaKind, el: Element, now: Instant) {
        if self.dir == Direction::Outbound {
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
        if self.pairs.is_empty() {
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
        let ok = self.pairs.iter().any(|(l, r, m)| {
            r.eq_ignore_ascii_case(from_d)
                && (*m == AuthMethod::SaslExternal || l.eq_ignore_ascii_case(to_d))
        });
        if !ok {
            return self.fail(
                StreamCondition::InvalidFrom,
                "from names a domain this stream has not authenticated",
            );
        }
        self.last_stanza = now;
        self.events.push_back(Event::Stanza { kind, element: el });
    }
}
