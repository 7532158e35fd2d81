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
//!      ▲                  (Event::CredentialsNeeded)               (SCRAM only)             │
//!      └──── <failure/> (counted, delayed) ◄────────────────────────────────────────────────┤
//!                                                                                           ▼
//! ExpectHeader ◄─ <success/> (stream restart, RFC 6120 §6.4.6) ◄────────────────────────────┘
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
//!   clients). A bind request becomes [`Event::BindRequested`] with the requested resource
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
//! Each negotiation step (header, TLS, SASL, the runtime's answers, bind) must complete
//! within [`C2sTimeouts::negotiation`] (else `connection-timeout`); the auth-failure
//! delay extends it. Once bound, a whitespace keepalive (RFC 6120 §4.6.1) is sent after
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

use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rustls_pki_types::CertificateDer;
use sha2::Sha256;

use super::s2s::{CloseReason, TlsRole};
use crate::condition::{StanzaCondition, StreamCondition};
use crate::jid::{BareJid, FullJid, Jid, NodePart, ResourcePart};
use crate::scram::{
    parse_client_first, parse_plain, ScramCredentials, ScramError, ScramHash, ScramServer,
    DEFAULT_ITERATIONS, SALT_LEN,
};
use crate::stanza::{write_error_reply, StanzaKind};
use crate::xml::tree::Node;
use crate::xml::writer::{
    write_raw_attr, write_readdressed, write_stream_error, write_stream_header, HeaderOut,
    STREAM_CLOSE,
};
use crate::xml::{
    escape_text_into, ns, unescape, Element, Frame, Framer, Limits, Namespace, StreamHeader,
};

/// `urn:ietf:params:xml:ns:xmpp-bind`, resource binding (RFC 6120 §7).
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";

/// `urn:ietf:params:xml:ns:xmpp-session`, the legacy session establishment (RFC 3921 §3;
/// offered as `<optional/>` per draft-cridland-xmpp-session-01).
pub const NS_SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";

/// Per-step deadlines and keepalive intervals of a C2S stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct C2sTimeouts {
    /// Each negotiation step (header, TLS, SASL, the runtime's credentials and bind
    /// answers, bind) must complete within this (default 30 s); else `connection-timeout`.
    pub negotiation: Duration,
    /// Once bound, a whitespace keepalive is sent after this long without sending
    /// (default 60 s; RFC 6120 §4.6.1).
    pub keepalive: Duration,
    /// Once bound, a stream on which the client sent nothing (not even whitespace) for
    /// this long is closed with `connection-timeout`. `None` (the default) keeps it open:
    /// clients may stay silent for hours, and a dead socket shows when a keepalive fails.
    pub idle: Option<Duration>,
    /// How long to wait for the client's `</stream:stream>` after ours (default 5 s).
    pub close: Duration,
}

impl Default for C2sTimeouts {
    fn default() -> Self {
        C2sTimeouts {
            negotiation: Duration::from_secs(30),
            keepalive: Duration::from_secs(60),
            idle: None,
            close: Duration::from_secs(5),
        }
    }
}

/// What every C2S connection of a server shares (read-only).
#[derive(Clone)]
pub struct C2sConfig {
    /// Domains we host (lowercase). The client's header must name one of them in `to`
    /// (else `host-unknown`, RFC 6120 §4.9.3.6); a header without `to` is accepted only
    /// when there is exactly one.
    pub local_domains: Vec<String>,
    /// Require TLS before SASL (default true): STARTTLS is offered with `<required/>` and
    /// no mechanism is offered or accepted before it (RFC 6120 §5.3.1).
    pub tls_required: bool,
    /// Local domains we hold a certificate for: STARTTLS is offered only for them.
    pub certificate_domains: Vec<String>,
    /// Secret key (random per process) for stream ids, SCRAM server nonces and the
    /// made-up credentials of unknown users, all `HMAC-SHA256(key, label ‖ ...)`.
    pub stream_id_key: [u8; 32],
    /// Tokenizer limits.
    pub limits: Limits,
    /// Deadlines.
    pub timeouts: C2sTimeouts,
    /// SASL failures after which the stream is closed with `policy-violation` (default 3;
    /// RFC 6120 §6.4.5). 0 behaves as 1.
    pub max_auth_failures: u32,
    /// Hold after the first SASL failure, doubled after each further one (default 1 s).
    /// Zero disables the hold.
    pub auth_failure_delay: Duration,
}

impl C2sConfig {
    /// A configuration with the defaults: TLS required, certificates for every local
    /// domain, default limits and timeouts, 3 failures, 1 s delay.
    pub fn new(local_domains: Vec<String>, stream_id_key: [u8; 32]) -> C2sConfig {
        C2sConfig {
            certificate_domains: local_domains.clone(),
            local_domains,
            tls_required: true,
            stream_id_key,
            limits: Limits::default(),
            timeouts: C2sTimeouts::default(),
            max_auth_failures: 3,
            auth_failure_delay: Duration::from_secs(1),
        }
    }

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

impl fmt::Debug for C2sConfig {
    /// Leaves the key out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("C2sConfig")
            .field("local_domains", &self.local_domains)
            .field("tls_required", &self.tls_required)
            .field("certificate_domains", &self.certificate_domains)
            .field("limits", &self.limits)
            .field("timeouts", &self.timeouts)
            .field("max_auth_failures", &self.max_auth_failures)
            .field("auth_failure_delay", &self.auth_failure_delay)
            .finish_non_exhaustive()
    }
}

/// A SASL mechanism we offer (RFC 6120 §6.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// `SCRAM-SHA-256` (RFC 7677).
    ScramSha256,
    /// `SCRAM-SHA-1` (RFC 5802).
    ScramSha1,
    /// `PLAIN` (RFC 4616), over TLS only.
    Plain,
}

impl Mechanism {
    /// The registered mechanism name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::Plain => "PLAIN",
        }
    }

    /// The mechanism named exactly `name` (registered upper case), if we support it.
    /// `-PLUS` variants are not supported.
    pub fn from_name(name: &str) -> Option<Mechanism> {
        match name {
            "SCRAM-SHA-256" => Some(Mechanism::ScramSha256),
            "SCRAM-SHA-1" => Some(Mechanism::ScramSha1),
            "PLAIN" => Some(Mechanism::Plain),
            _ => None,
        }
    }

    /// The SCRAM hash whose stored credentials the mechanism needs; `None` for `PLAIN`,
    /// which can check a password against any of them.
    pub fn hash(self) -> Option<ScramHash> {
        match self {
            Mechanism::ScramSha256 => Some(ScramHash::Sha256),
            Mechanism::ScramSha1 => Some(ScramHash::Sha1),
            Mechanism::Plain => None,
        }
    }
}

/// Why the runtime refuses a bind request (RFC 6120 §7.6.2, §7.7.2). Each maps to the
/// stanza error the client gets ([`BindError::condition`]).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    /// The resource is in use and the runtime keeps the existing session (§7.7.2.2):
    /// `<conflict/>`, type `cancel`.
    #[error("resource conflict")]
    Conflict,
    /// The account may not bind more resources (§7.6.2.2): `<not-allowed/>`, `cancel`.
    #[error("no more resources allowed")]
    NotAllowed,
    /// The server cannot bind more resources now (§7.6.2.1): `<resource-constraint/>`,
    /// `wait`.
    #[error("resource constraint")]
    ResourceConstraint,
    /// Something failed on the server: `<internal-server-error/>`, `cancel`.
    #[error("internal server error")]
    Internal,
}

impl BindError {
    /// The stanza error condition sent to the client.
    pub fn condition(self) -> StanzaCondition {
        match self {
            BindError::Conflict => StanzaCondition::Conflict,
            BindError::NotAllowed => StanzaCondition::NotAllowed,
            BindError::ResourceConstraint => StanzaCondition::ResourceConstraint,
            BindError::Internal => StanzaCondition::InternalServerError,
        }
    }
}

/// Something the runtime must act on.
#[derive(Debug, Clone, PartialEq)]
// Not `#[non_exhaustive]`: the runtime (another crate of this workspace) matches it
// exhaustively, so a new event is a compile error there until it is handled.
pub enum Event {
    /// The client's stream header was accepted (once per header: initial, after TLS,
    /// after SASL).
    Opened {
        /// The local domain the client addressed.
        domain: String,
        /// Our stream id for this header.
        stream_id: String,
    },
    /// Wrap the socket with TLS now, as the TLS server (always [`TlsRole::Server`]; RFC
    /// 6120 §5.4.3.3); then call [`C2sConnection::handle_tls_established`].
    StartTls(TlsRole),
    /// Look up the stored credentials of `jid` and answer with
    /// [`C2sConnection::handle_credentials`] (`None` when the user does not exist or has
    /// none for the hash). For SCRAM pass the credentials of `mechanism.hash()`; for
    /// `PLAIN` any of the user's credentials will do (SHA-256 first).
    CredentialsNeeded {
        /// The normalised bare JID `localpart@domain` (the store's key).
        jid: String,
        /// The mechanism the client chose.
        mechanism: Mechanism,
    },
    /// A SASL attempt failed (RFC 6120 §6.4.5); the runtime may delay or refuse further
    /// attempts from the same address or for the same account.
    AuthFailed {
        /// The username the client gave, when it got that far (normalised when valid).
        username: Option<String>,
        /// Failures so far on this stream.
        failures: u32,
        /// Until when further input is held; `None` when the stream is being closed.
        retry_after: Option<Instant>,
    },
    /// SASL succeeded; the stream restarts. Stanzas flow only after binding.
    Authenticated {
        /// The authenticated bare JID.
        jid: String,
        /// How.
        mechanism: Mechanism,
    },
    /// The client asks to bind a resource (RFC 6120 §7.5); answer with
    /// [`C2sConnection::handle_bind`].
    BindRequested {
        /// The authenticated bare JID.
        jid: String,
        /// The requested resourcepart, enforced (RFC 7622 §3.4); `None`: generate one.
        requested: Option<String>,
    },
    /// A resource is bound: stanzas now flow both ways.
    Bound {
        /// The session's full JID.
        jid: String,
    },
    /// A stanza from the bound client (`from` checked, not stamped: see
    /// [`C2sConnection::stamp`]).
    Stanza {
        /// message, presence or iq.
        kind: StanzaKind,
        /// The stanza as received (`jabber:client`).
        element: Element,
    },
    /// The stream is over; the runtime closes the socket after transmitting what is left.
    Closed(CloseReason),
}

/// Errors from calls the runtime makes.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum C2sError {
    /// The call does not fit the stream's state (e.g. credentials nobody asked for).
    #[error("not possible in this state: {0}")]
    InvalidState(&'static str),
    /// No resource is bound yet.
    #[error("no resource is bound on this stream")]
    NotBound,
    /// [`C2sConnection::handle_bind`] got something that is not a full JID of the
    /// authenticated user; the client was answered `internal-server-error`.
    #[error("not a full JID of the authenticated user: {0}")]
    InvalidJid(String),
}

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
    /// A `<response/>` with SCRAM client-final.
    ExpectResponse,
    /// The bind request.
    ExpectBind,
    /// The runtime's answer to the bind request.
    AwaitBind,
    /// Bound: stanzas flow.
    Open,
    /// We sent `</stream:stream>`; waiting for the client's.
    ExpectClose,
    /// Over.
    Closed,
}

/// One SASL exchange in progress.
#[derive(Debug)]
struct Sasl {
    mechanism: Mechanism,
    /// Set once the client's first message was read.
    jid: Option<BareJid>,
    username: Option<String>,
    /// The client's first message (SCRAM client-first or the PLAIN message), until the
    /// credentials arrive.
    first: Vec<u8>,
    scram: Option<ScramServer>,
    /// The credentials are made up (unknown user): never succeed.
    dummy: bool,
}

/// One C2S stream, receiving end. See the module docs for the I/O contract.
#[derive(Debug)]
pub struct C2sConnection {
    cfg: Arc<C2sConfig>,
    state: State,
    framer: Framer,
    out: Vec<u8>,
    events: VecDeque<Event>,
    /// The local domain the client addressed (empty until the first header).
    domain: String,
    /// The client's header `from`, echoed as our `to` (RFC 6120 §4.7.2).
    client_from: Option<String>,
    stream_id: String,
    id_nonce: u64,
    restarts: u32,
    scram_exchanges: u32,
    tls: bool,
    header_sent: bool,
    sasl: Option<Sasl>,
    failures: u32,
    hold_until: Option<Instant>,
    jid: Option<BareJid>,
    mechanism: Option<Mechanism>,
    full: Option<FullJid>,
    bind_request: Option<Element>,
    deadline: Option<Instant>,
    last_tx: Instant,
    last_rx: Instant,
    close_reason: Option<CloseReason>,
}

impl C2sConnection {
    /// A new stream on an accepted socket. `id_nonce` makes this connection's stream ids
    /// and SCRAM nonces distinct (the runtime passes a random value); `direct_tls` when
    /// the socket is already TLS (XEP-0368 `_xmpps-client`, port 5223).
    pub fn new(cfg: Arc<C2sConfig>, id_nonce: u64, direct_tls: bool, now: Instant) -> Self {
        C2sConnection {
            framer: Framer::new(cfg.limits),
            deadline: Some(now + cfg.timeouts.negotiation),
            cfg,
            state: State::ExpectHeader,
            out: Vec::new(),
            events: VecDeque::new(),
            domain: String::new(),
            client_from: None,
            stream_id: String::new(),
            id_nonce,
            restarts: 0,
            scram_exchanges: 0,
            tls: direct_tls,
            header_sent: false,
            sasl: None,
            failures: 0,
            hold_until: None,
            jid: None,
            mechanism: None,
            full: None,
            bind_request: None,
            last_tx: now,
            last_rx: now,
            close_reason: None,
        }
    }

    // ----- accessors -----

    /// The local domain the client addressed (empty until its header arrives).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The current stream id (ours).
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

    /// Appends the bytes to send to `into` and forgets them. Returns how many.
    pub fn poll_transmit(&mut self, into: &mut Vec<u8>) -> usize {
        let n = self.out.len();
        into.extend_from_slice(&self.out);
        self.out.clear();
        n
    }

    /// Bytes waiting to be sent (for back-pressure decisions).
    pub fn pending_transmit(&self) -> usize {
        self.out.len()
    }

    /// Gives idle buffers back (see [`super::s2s::S2sConnection::release_idle_memory`]).
    pub fn release_idle_memory(&mut self) {
        self.framer.release_idle_buffer();
        if self.out.is_empty() && self.out.capacity() > 0 {
            self.out = Vec::new();
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next instant at which [`C2sConnection::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let mut t = self.deadline;
        let mut earliest = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        if let Some(h) = self.hold_until {
            earliest(h);
        }
        if self.state == State::Open {
            earliest(self.last_tx + self.cfg.timeouts.keepalive);
            if let Some(idle) = self.cfg.timeouts.idle {
                earliest(self.last_rx + idle);
            }
        }
        t
    }

    // ----- inputs -----

    /// Feeds bytes received from the client (after TLS, the decrypted bytes). Ignored
    /// while the TLS handshake is pending: those bytes are TLS records for rustls.
    pub fn handle_input(&mut self, data: &[u8], now: Instant) {
        if matches!(self.state, State::Closed | State::ExpectTls) {
            return;
        }
        self.last_rx = now;
        self.framer.feed(data);
        if self.is_paused(now) {
            let limits = self.cfg.limits;
            if self.framer.buffered() > limits.max_element_size + limits.max_header_size {
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

    /// The answer to [`Event::CredentialsNeeded`]: the user's stored credentials, or
    /// `None` for an unknown user (or one without credentials for the hash). Credentials
    /// for another hash than a SCRAM mechanism needs count as `None`.
    ///
    /// SCRAM: sends the server-first challenge, with a server nonce of
    /// `base64(HMAC-SHA256(stream_id_key, label ‖ id_nonce ‖ n)[..18])` — pure, unique
    /// per connection and exchange, and unpredictable without the per-process key. PLAIN:
    /// checks the password (one PBKDF2 run, also for made-up credentials, so an unknown
    /// user takes as long as a wrong password) and answers `<success/>` or
    /// `<failure><not-authorized/></failure>`.
    ///
    /// Errors: [`C2sError::InvalidState`] when no credentials were asked for.
    pub fn handle_credentials(
        &mut self,
        creds: Option<ScramCredentials>,
        now: Instant,
    ) -> Result<(), C2sError> {
        if self.state != State::AwaitCredentials {
            return Err(C2sError::InvalidState("no credentials were asked for"));
        }
        let Some(mut sasl) = self.sasl.take() else {
            return Err(C2sError::InvalidState("no SASL exchange"));
        };
        let Some(jid) = sasl.jid.clone() else {
            return Err(C2sError::InvalidState("no SASL username"));
        };
        let hash = sasl.mechanism.hash();
        let creds = creds.filter(|c| hash.is_none_or(|h| c.mechanism == h));
        let (creds, dummy) = match creds {
            Some(c) => (c, false),
            None => (
                self.dummy_credentials(&jid, hash.unwrap_or(ScramHash::Sha256)),
                true,
            ),
        };
        let username = sasl.username.clone();
        match sasl.mechanism {
            Mechanism::Plain => {
                let ok = match parse_plain(&sasl.first) {
                    Ok(p) => creds.verify_password(p.password),
                    Err(_) => false,
                };
                sasl.first.fill(0);
                if ok && !dummy {
                    self.sasl = Some(sasl);
                    self.sasl_success(None, now);
                } else {
                    self.sasl_failure("not-authorized", username, now);
                }
            }
            Mechanism::ScramSha256 | Mechanism::ScramSha1 => {
                let nonce = self.next_scram_nonce();
                let mut server = match ScramServer::new(creds, nonce.as_bytes()) {
                    Ok(s) => s,
                    // Stored credentials that do not fit their hash: a store problem.
                    Err(_) => {
                        self.sasl_failure("temporary-auth-failure", username, now);
                        self.process(now);
                        return Ok(());
                    }
                };
                match server.client_first(&sasl.first) {
                    Ok(server_first) => {
                        self.write_sasl("challenge", Some(&server_first));
                        sasl.first = Vec::new();
                        sasl.scram = Some(server);
                        sasl.dummy = dummy;
                        self.sasl = Some(sasl);
                        self.state = State::ExpectResponse;
                        self.deadline = Some(now + self.cfg.timeouts.negotiation);
                    }
                    Err(_) => self.sasl_failure("malformed-request", username, now),
                }
            }
        }
        self.process(now);
        Ok(())
    }

    /// The answer to [`Event::BindRequested`] (RFC 6120 §7.6): `Ok(full JID)` of the
    /// authenticated user (normalised or not) binds it and answers the client's `iq` with
    /// it (§7.6.1); `Err` answers the `iq` with the [`BindError::condition`] stanza error,
    /// and the client may try again.
    ///
    /// Errors: [`C2sError::InvalidState`] when no bind request is pending;
    /// [`C2sError::InvalidJid`] when `Ok` holds something else than a full JID whose bare
    /// JID is the authenticated one (the client then gets `internal-server-error`).
    pub fn handle_bind(
        &mut self,
        result: Result<&str, BindError>,
        now: Instant,
    ) -> Result<(), C2sError> {
        if self.state != State::AwaitBind {
            return Err(C2sError::InvalidState("no bind request is pending"));
        }
        let Some(request) = self.bind_request.take() else {
            return Err(C2sError::InvalidState("no bind request is pending"));
        };
        let mut outcome = Ok(());
        let full = match result {
            Ok(jid) => match FullJid::new(jid) {
                Ok(f) if Some(&f.to_bare()) == self.jid.as_ref() => Ok(f),
                _ => {
                    outcome = Err(C2sError::InvalidJid(jid.to_owned()));
                    Err(BindError::Internal)
                }
            },
            Err(e) => Err(e),
        };
        match full {
            Ok(full) => {
                write_iq_result_start(&request, &mut self.out);
                self.out.extend_from_slice(b"><bind xmlns='");
                self.out.extend_from_slice(NS_BIND.as_bytes());
                self.out.extend_from_slice(b"'><jid>");
                escape_text_into(full.as_str(), &mut self.out);
                self.out.extend_from_slice(b"</jid></bind></iq>");
                self.events.push_back(Event::Bound {
                    jid: full.as_str().to_owned(),
                });
                self.full = Some(full);
                self.state = State::Open;
                self.deadline = None;
                self.last_tx = now;
            }
            Err(e) => {
                write_error_reply(&request, e.condition(), None, None, &mut self.out);
                self.state = State::ExpectBind;
                self.deadline = Some(now + self.cfg.timeouts.negotiation);
            }
        }
        self.process(now);
        outcome
    }

    /// Drives the deadlines: negotiation steps, the auth-failure hold, keepalives, idle
    /// close, closing handshake.
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
            if now >= self.last_tx + self.cfg.timeouts.keepalive {
                self.out.push(b' ');
                self.last_tx = now;
            }
        }
    }

    // ----- commands -----

    /// Sends a stanza (its bytes, already addressed) to the client. An explicit
    /// `xmlns='jabber:server'` on its top element is removed (see the module docs); any
    /// other bytes are sent as they are.
    ///
    /// Errors: [`C2sError::NotBound`] before a resource is bound or once closing.
    pub fn send_stanza(&mut self, stanza: &[u8], now: Instant) -> Result<(), C2sError> {
        self.send_stanza_parts(&[stanza], now)
    }

    /// [`C2sConnection::send_stanza`] for a stanza given in pieces sent one after the
    /// other (a shared presence broadcast and the recipient's `to`,
    /// `fedrouter::router::fanout::SharedStanza::parts`).
    ///
    /// Errors: [`C2sError::NotBound`] before a resource is bound or once closing.
    pub fn send_stanza_parts(&mut self, parts: &[&[u8]], now: Instant) -> Result<(), C2sError> {
        if self.state != State::Open {
            return Err(C2sError::NotBound);
        }
        let start = self.out.len();
        for p in parts {
            self.out.extend_from_slice(p);
        }
        remove_top_xmlns(&mut self.out, start, ns::SERVER);
        self.last_tx = now;
        Ok(())
    }

    /// Appends `el` (a stanza from [`Event::Stanza`]) to `out` for routing: `from`
    /// stamped with the session's full JID, or its bare JID on subscription-related
    /// presence (`subscribe`, `subscribed`, `unsubscribe`, `unsubscribed`; RFC 6121
    /// §3.1.2), as RFC 6120 §8.1.2.1 requires; an explicit `xmlns='jabber:client'` on the
    /// top element removed, so the bytes fit a `jabber:server` stream. Everything else is
    /// copied byte for byte ([`write_readdressed`]). Payload elements using prefixes
    /// declared on the client's stream header are not rewritten (clients do not do that).
    ///
    /// Errors: [`C2sError::NotBound`] before a resource is bound (nothing is written).
    pub fn stamp(&self, el: &Element, out: &mut Vec<u8>) -> Result<(), C2sError> {
        let full = self.full.as_ref().ok_or(C2sError::NotBound)?;
        let subscription = el.name() == "presence"
            && matches!(
                el.type_(),
                Some("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed")
            );
        let from = if subscription {
            &full.as_str()[..full.as_str().len() - full.resource().len() - 1]
        } else {
            full.as_str()
        };
        let start = out.len();
        write_readdressed(el, None, Some(from), out);
        remove_top_xmlns(out, start, ns::CLIENT);
        Ok(())
    }

    /// Closes the stream: an optional stream error (RFC 6120 §4.9), then
    /// `</stream:stream>`; then waits for the client's close (RFC 6120 §4.4). The runtime
    /// uses this with [`StreamCondition::Conflict`] to replace a session (§7.7.2.2), or
    /// `system-shutdown`.
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
        self.hold_until = None;
        self.deadline = Some(now + self.cfg.timeouts.close);
    }

    // ----- internals -----

    fn is_paused(&self, now: Instant) -> bool {
        matches!(self.state, State::AwaitCredentials | State::AwaitBind)
            || self.hold_until.is_some_and(|h| now < h)
    }

    fn hmac(&self, label: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.cfg.stream_id_key).expect("any key length");
        mac.update(label);
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }

    fn next_stream_id(&self) -> String {
        let h = self.hmac(
            b"fedrouter c2s stream id",
            &[&self.id_nonce.to_be_bytes(), &self.restarts.to_be_bytes()],
        );
        hex::encode(&h[..16])
    }

    fn next_scram_nonce(&mut self) -> String {
        self.scram_exchanges += 1;
        let h = self.hmac(
            b"fedrouter c2s scram nonce",
            &[
                &self.id_nonce.to_be_bytes(),
                &self.scram_exchanges.to_be_bytes(),
            ],
        );
        ScramServer::fresh_nonce(&h[..18])
    }

    /// Made-up credentials for an unknown user (RFC 5802 §9): stable per JID and hash
    /// within the process (so the salt does not give the user's absence away), with keys
    /// no password derives to in practice.
    fn dummy_credentials(&self, jid: &BareJid, hash: ScramHash) -> ScramCredentials {
        let tag = [hash as u8];
        let part = |label: &[u8]| self.hmac(label, &[&tag, jid.as_str().as_bytes()]);
        let len = hash.output_len();
        ScramCredentials {
            mechanism: hash,
            salt: part(b"fedrouter c2s dummy salt")[..SALT_LEN].to_vec(),
            iterations: DEFAULT_ITERATIONS,
            stored_key: part(b"fedrouter c2s dummy stored key")[..len].to_vec(),
            server_key: part(b"fedrouter c2s dummy server key")[..len].to_vec(),
        }
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
                id: (!self.stream_id.is_empty()).then_some(self.stream_id.as_str()),
                version: true,
                dialback: false,
            },
            &mut self.out,
        );
        self.header_sent = true;
    }

    /// Stream restart after TLS or SASL success: a fresh framer document.
    fn restart(&mut self, now: Instant) {
        self.framer.reset();
        self.restarts += 1;
        self.header_sent = false;
        self.sasl = None;
        self.state = State::ExpectHeader;
        self.deadline = Some(now + self.cfg.timeouts.negotiation);
    }

    fn finish(&mut self, reason: CloseReason) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.deadline = None;
        self.hold_until = None;
        self.sasl = None;
        self.events.push_back(Event::Closed(reason));
    }

    /// Sends a stream error and closes (RFC 6120 §4.9.1: the stream error is fatal).
    fn fail(&mut self, condition: StreamCondition, text: &str) {
        if self.state == State::Closed {
            return;
        }
        if self.state != State::ExpectClose {
            if !self.header_sent {
                // §4.9.1.2: an error before our header still needs our header first.
                self.send_header();
            }
            write_stream_error(condition, Some(text), &mut self.out);
            self.out.extend_from_slice(STREAM_CLOSE);
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
            let frame = match self.framer.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => {
                    let text = e.to_string();
                    return self.fail(e.condition(), &text);
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

    /// The client's stream header (RFC 6120 §4.7), initial or after a restart.
    fn on_header(&mut self, h: StreamHeader, now: Instant) {
        if self.state != State::ExpectHeader {
            return self.fail(StreamCondition::BadFormat, "unexpected stream header");
        }
        self.stream_id = self.next_stream_id();
        self.client_from = h
            .from
            .as_deref()
            .filter(|f| Jid::new(f).is_ok())
            .map(str::to_owned);
        let to = h.to.as_deref().map(|t| {
            let t = t.to_ascii_lowercase();
            t.strip_suffix('.').map(str::to_owned).unwrap_or(t)
        });
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
        if h.version.as_deref().and_then(|v| v.split('.').next()) != Some("1") {
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
        self.events.push_back(Event::Opened {
            domain: self.domain.clone(),
            stream_id: self.stream_id.clone(),
        });
        self.send_features();
        self.deadline = Some(now + self.cfg.timeouts.negotiation);
    }

    /// Stream features (RFC 6120 §4.3.2) for where the negotiation is.
    fn send_features(&mut self) {
        self.out.extend_from_slice(b"<stream:features>");
        if self.jid.is_some() {
            self.out.extend_from_slice(b"<bind xmlns='");
            self.out.extend_from_slice(NS_BIND.as_bytes());
            self.out.extend_from_slice(b"'/><session xmlns='");
            self.out.extend_from_slice(NS_SESSION.as_bytes());
            self.out.extend_from_slice(b"'><optional/></session>");
            // Roster versioning (RFC 6121 §2.6.1) and subscription pre-approval (§3.4),
            // both served by the runtime (`runtime/local.rs`).
            self.out.extend_from_slice(
                b"<ver xmlns='urn:xmpp:features:rosterver'/>\
                  <sub xmlns='urn:xmpp:features:pre-approval'/>",
            );
            self.state = State::ExpectBind;
        } else {
            if !self.tls && self.cfg.has_certificate(&self.domain) {
                self.out
                    .extend_from_slice(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>");
                if self.cfg.tls_required {
                    self.out.extend_from_slice(b"<required/>");
                }
                self.out.extend_from_slice(b"</starttls>");
            }
            if self.tls || !self.cfg.tls_required {
                self.out
                    .extend_from_slice(b"<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>");
                let plain = self.tls.then_some(Mechanism::Plain);
                for m in [Mechanism::ScramSha256, Mechanism::ScramSha1]
                    .into_iter()
                    .chain(plain)
                {
                    self.out.extend_from_slice(b"<mechanism>");
                    self.out.extend_from_slice(m.name().as_bytes());
                    self.out.extend_from_slice(b"</mechanism>");
                }
                self.out.extend_from_slice(b"</mechanisms>");
            }
            self.state = State::ExpectAuth;
        }
        self.out.extend_from_slice(b"</stream:features>");
    }

    fn on_element(&mut self, el: Element, now: Instant) {
        if el.is("error", &Namespace::Streams) {
            return self.on_stream_error(&el);
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

    /// STARTTLS and SASL elements before authentication.
    fn on_negotiation(&mut self, el: Element, now: Instant) {
        match (el.namespace(), el.name()) {
            (Namespace::Tls, "starttls") if self.state == State::ExpectAuth => {
                self.on_starttls(now)
            }
            (Namespace::Sasl, "auth") => {
                if self.state == State::ExpectAuth {
                    self.on_auth(&el, now)
                } else {
                    // A second <auth/> while an exchange is in progress is a protocol
                    // error (the client must <abort/> first, RFC 6120 §6.4.4): it ends
                    // the exchange as a counted failure.
                    let username = self.sasl.take().and_then(|s| s.username);
                    self.sasl_failure("malformed-request", username, now)
                }
            }
            (Namespace::Sasl, "response") => self.on_response(&el, now),
            (Namespace::Sasl, "abort") => {
                self.sasl = None;
                // §6.4.4: answered <aborted/>, which is not counted as a failure.
                self.sasl_failure("aborted", None, now)
            }
            (Namespace::Client | Namespace::Server, "message" | "presence" | "iq") => self.fail(
                StreamCondition::NotAuthorized,
                "stanza before authentication",
            ),
            _ => self.fail(
                StreamCondition::UnsupportedStanzaType,
                "unexpected element during negotiation",
            ),
        }
    }

    /// `<starttls/>` (RFC 6120 §5.4.2).
    fn on_starttls(&mut self, now: Instant) {
        if self.tls || !self.cfg.has_certificate(&self.domain) {
            // §5.4.2.2: <failure/> and the stream is closed.
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

    /// `<auth mechanism='...'>` (RFC 6120 §6.4.2).
    fn on_auth(&mut self, el: &Element, now: Instant) {
        let node = Node::parse(el).unwrap_or_default();
        let Some(mechanism) = node.attr("mechanism").and_then(Mechanism::from_name) else {
            return self.sasl_failure("invalid-mechanism", None, now);
        };
        if !self.tls && (self.cfg.tls_required || mechanism == Mechanism::Plain) {
            return self.sasl_failure("encryption-required", None, now);
        }
        let text = node.text.trim();
        if text.is_empty() {
            // No initial response: an empty challenge asks for it (§6.4.2, §6.4.3).
            self.write_sasl("challenge", None);
            self.sasl = Some(Sasl {
                mechanism,
                jid: None,
                username: None,
                first: Vec::new(),
                scram: None,
                dummy: false,
            });
            self.state = State::ExpectInitialResponse;
            self.deadline = Some(now + self.cfg.timeouts.negotiation);
            return;
        }
        match decode_sasl(text) {
            Some(data) => self.start_exchange(mechanism, data, now),
            None => self.sasl_failure("incorrect-encoding", None, now),
        }
    }

    /// `<response/>` (RFC 6120 §6.4.3).
    fn on_response(&mut self, el: &Element, now: Instant) {
        let node = Node::parse(el).unwrap_or_default();
        let data = decode_sasl(node.text.trim());
        let sasl = self.sasl.take();
        let username = sasl.as_ref().and_then(|s| s.username.clone());
        let (Some(mut sasl), Some(data)) = (sasl, data) else {
            let condition = if self.state == State::ExpectAuth {
                "malformed-request"
            } else {
                "incorrect-encoding"
            };
            return self.sasl_failure(condition, username, now);
        };
        match self.state {
            State::ExpectInitialResponse => self.start_exchange(sasl.mechanism, data, now),
            State::ExpectResponse => {
                let result = match sasl.scram.as_mut() {
                    Some(s) => s.client_final(&data),
                    None => Err(ScramError::OutOfOrder),
                };
                match result {
                    Ok(server_final) if !sasl.dummy => {
                        self.sasl = Some(sasl);
                        self.sasl_success(Some(&server_final), now);
                    }
                    Ok(_)
                    | Err(
                        ScramError::InvalidProof
                        | ScramError::NonceMismatch
                        | ScramError::ChannelBindingsDontMatch,
                    ) => self.sasl_failure("not-authorized", username, now),
                    Err(_) => self.sasl_failure("malformed-request", username, now),
                }
            }
            _ => self.sasl_failure("malformed-request", username, now),
        }
    }

    /// Reads the client's first message, checks the username and authzid, and asks the
    /// runtime for the credentials.
    fn start_exchange(&mut self, mechanism: Mechanism, data: Vec<u8>, now: Instant) {
        let parsed = match mechanism {
            Mechanism::Plain => parse_plain(&data)
                .map(|p| (p.authcid.to_owned(), p.authzid.map(str::to_owned)))
                .ok(),
            Mechanism::ScramSha256 | Mechanism::ScramSha1 => parse_client_first(&data)
                .map(|f| (f.username, f.authzid))
                .ok(),
        };
        let Some((username, authzid)) = parsed else {
            return self.sasl_failure("malformed-request", None, now);
        };
        // RFC 6120 §6.3.8: the simple user name is the localpart.
        let jid = NodePart::new(&username)
            .ok()
            .and_then(|n| BareJid::new(&format!("{}@{}", n, self.domain)).ok());
        let Some(jid) = jid else {
            return self.sasl_failure("not-authorized", Some(username), now);
        };
        let username = jid.node().unwrap_or_default().to_owned();
        if let Some(a) = authzid {
            // §6.4.6, §6.5.6: we authorise no one but the authenticated user.
            if BareJid::new(&a).ok().as_ref() != Some(&jid) {
                return self.sasl_failure("invalid-authzid", Some(username), now);
            }
        }
        self.events.push_back(Event::CredentialsNeeded {
            jid: jid.as_str().to_owned(),
            mechanism,
        });
        self.sasl = Some(Sasl {
            mechanism,
            jid: Some(jid),
            username: Some(username),
            first: data,
            scram: None,
            dummy: false,
        });
        self.state = State::AwaitCredentials;
        self.deadline = Some(now + self.cfg.timeouts.negotiation);
    }

    /// `<challenge/>`, `<success/>`: the element with optional base64 data.
    fn write_sasl(&mut self, name: &str, data: Option<&[u8]>) {
        self.out.push(b'<');
        self.out.extend_from_slice(name.as_bytes());
        self.out
            .extend_from_slice(b" xmlns='urn:ietf:params:xml:ns:xmpp-sasl'");
        match data {
            Some(d) => {
                self.out.push(b'>');
                self.out.extend_from_slice(B64.encode(d).as_bytes());
                self.out.extend_from_slice(b"</");
                self.out.extend_from_slice(name.as_bytes());
                self.out.push(b'>');
            }
            None => self.out.extend_from_slice(b"/>"),
        }
    }

    /// `<success/>` (RFC 6120 §6.4.6) and the stream restart.
    fn sasl_success(&mut self, additional: Option<&[u8]>, now: Instant) {
        let Some(Sasl {
            mechanism,
            jid: Some(jid),
            ..
        }) = self.sasl.take()
        else {
            return self.fail(StreamCondition::InternalServerError, "SASL state lost");
        };
        self.write_sasl("success", additional);
        self.events.push_back(Event::Authenticated {
            jid: jid.as_str().to_owned(),
            mechanism,
        });
        self.jid = Some(jid);
        self.mechanism = Some(mechanism);
        self.restart(now);
    }

    /// `<failure><condition/></failure>` (RFC 6120 §6.4.5, §6.5), counted and held (see
    /// the module docs), except `aborted`.
    fn sasl_failure(&mut self, condition: &str, username: Option<String>, now: Instant) {
        self.sasl = None;
        self.out
            .extend_from_slice(b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><");
        self.out.extend_from_slice(condition.as_bytes());
        self.out.extend_from_slice(b"/></failure>");
        self.state = State::ExpectAuth;
        self.deadline = Some(now + self.cfg.timeouts.negotiation);
        if condition == "aborted" {
            return;
        }
        self.failures += 1;
        if self.failures >= self.cfg.max_auth_failures.max(1) {
            self.events.push_back(Event::AuthFailed {
                username,
                failures: self.failures,
                retry_after: None,
            });
            return self.fail(
                StreamCondition::PolicyViolation,
                "too many authentication failures",
            );
        }
        let factor = 1u32 << (self.failures - 1).min(16);
        let delay = self.cfg.auth_failure_delay.saturating_mul(factor);
        let retry_after = now + delay;
        if !delay.is_zero() {
            self.hold_until = Some(retry_after);
            self.deadline = Some(retry_after + self.cfg.timeouts.negotiation);
        }
        self.events.push_back(Event::AuthFailed {
            username,
            failures: self.failures,
            retry_after: Some(retry_after),
        });
    }

    /// After SASL, before a resource is bound: only the bind request (RFC 6120 §7.5).
    fn on_before_bind(&mut self, el: Element, now: Instant) {
        let Some(kind) = StanzaKind::of(&el) else {
            return self.fail(
                StreamCondition::UnsupportedStanzaType,
                "unexpected element before resource binding",
            );
        };
        if kind == StanzaKind::Iq && contains(el.inner(), NS_BIND.as_bytes()) {
            let node = Node::parse(&el).unwrap_or_default();
            if let Some(bind) = node.child("bind", NS_BIND) {
                if el.type_() != Some("set") {
                    return write_error_reply(
                        &el,
                        StanzaCondition::BadRequest,
                        Some("bind is an iq of type set"),
                        None,
                        &mut self.out,
                    );
                }
                let raw = bind
                    .children
                    .iter()
                    .find(|c| c.name == "resource")
                    .map(|r| r.text.as_str())
                    .filter(|r| !r.trim().is_empty());
                let requested = match raw.map(ResourcePart::new) {
                    None => None,
                    Some(Ok(r)) => Some(r.as_str().to_owned()),
                    // §7.7.2.1: a resourcepart that cannot be processed.
                    Some(Err(e)) => {
                        return write_error_reply(
                            &el,
                            StanzaCondition::BadRequest,
                            Some(&e.to_string()),
                            None,
                            &mut self.out,
                        );
                    }
                };
                self.events.push_back(Event::BindRequested {
                    jid: self
                        .jid
                        .as_ref()
                        .map(|j| j.as_str().to_owned())
                        .unwrap_or_default(),
                    requested,
                });
                self.bind_request = Some(el);
                self.state = State::AwaitBind;
                self.deadline = Some(now + self.cfg.timeouts.negotiation);
                return;
            }
        }
        self.fail(
            StreamCondition::NotAuthorized,
            "stanza before resource binding",
        )
    }

    /// A stanza on the bound stream (RFC 6120 §8.1.2.1).
    fn on_stanza(&mut self, el: Element, now: Instant) {
        let Some(kind) = StanzaKind::of(&el) else {
            return self.fail(
                StreamCondition::UnsupportedStanzaType,
                "unknown top-level element",
            );
        };
        if el.namespace() != &Namespace::Client {
            return self.fail(
                StreamCondition::InvalidNamespace,
                "stanzas on a C2S stream are in jabber:client",
            );
        }
        if let Some(from) = el.from() {
            if !self.is_own_jid(from) {
                return self.fail(
                    StreamCondition::InvalidFrom,
                    "from is not the JID bound to this stream",
                );
            }
        }
        if kind == StanzaKind::Iq && el.type_() == Some("set") {
            let inner = el.inner();
            if contains(inner, NS_SESSION.as_bytes()) || contains(inner, NS_BIND.as_bytes()) {
                let node = Node::parse(&el).unwrap_or_default();
                if node.child("session", NS_SESSION).is_some() {
                    // RFC 3921 §3: the session is established (a no-op today).
                    write_iq_result_start(&el, &mut self.out);
                    self.out.extend_from_slice(b"/>");
                    self.last_tx = now;
                    return;
                }
                if node.child("bind", NS_BIND).is_some() {
                    // One resource per stream (RFC 6120 §7.1).
                    write_error_reply(
                        &el,
                        StanzaCondition::NotAllowed,
                        Some("a resource is already bound"),
                        None,
                        &mut self.out,
                    );
                    self.last_tx = now;
                    return;
                }
            }
        }
        self.events.push_back(Event::Stanza { kind, element: el });
    }

    /// Whether a raw `from` names the session's full or bare JID.
    fn is_own_jid(&self, raw: &str) -> bool {
        let (Some(full), Some(bare)) = (&self.full, &self.jid) else {
            return false;
        };
        if raw == full.as_str() || raw == bare.as_str() {
            return true;
        }
        let Ok(value) = unescape(raw) else {
            return false;
        };
        match Jid::new(&value) {
            Ok(Jid::Full(f)) => &f == full,
            Ok(Jid::Bare(b)) => &b == bare,
            Err(_) => false,
        }
    }
}

/// SASL data (RFC 6120 §6.4.2): base64, or `=` for an empty response.
fn decode_sasl(text: &str) -> Option<Vec<u8>> {
    if text == "=" {
        return Some(Vec::new());
    }
    B64.decode(text).ok()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// `<iq type='result' id='..' from='..'` answering `req` (no `to`: the client's own
/// stream; `from` is the request's `to`, if any). The caller closes the tag.
fn write_iq_result_start(req: &Element, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<iq type='result'");
    write_raw_attr("id", req.id(), out);
    write_raw_attr("from", req.to(), out);
}

/// Removes the top element's default namespace declaration from `buf[start..]` when it is
/// exactly `value` (`xmlns='jabber:server'` or `xmlns="jabber:server"`).
fn remove_top_xmlns(buf: &mut Vec<u8>, start: usize, value: &str) {
    if let Some(r) = find_top_xmlns(&buf[start..], value.as_bytes()) {
        buf.drain(start + r.start..start + r.end);
    }
}

/// The range of ` xmlns='value'` (with its leading whitespace) in the start tag of the
/// element `b` begins with, if the tag declares exactly that default namespace. Assumes a
/// well-formed start tag; gives `None` on anything else.
fn find_top_xmlns(b: &[u8], value: &[u8]) -> Option<Range<usize>> {
    let is_ws = |c: u8| matches!(c, b' ' | b'\t' | b'\r' | b'\n');
    if b.first() != Some(&b'<') {
        return None;
    }
    let mut i = 1;
    while i < b.len() && !is_ws(b[i]) && b[i] != b'/' && b[i] != b'>' {
        i += 1;
    }
    loop {
        let attr_start = i;
        while i < b.len() && is_ws(b[i]) {
            i += 1;
        }
        if i >= b.len() || b[i] == b'/' || b[i] == b'>' {
            return None;
        }
        let name_start = i;
        while i < b.len() && !is_ws(b[i]) && b[i] != b'=' {
            i += 1;
        }
        let name = &b[name_start..i];
        while i < b.len() && is_ws(b[i]) {
            i += 1;
        }
        if b.get(i) != Some(&b'=') {
            return None;
        }
        i += 1;
        while i < b.len() && is_ws(b[i]) {
            i += 1;
        }
        let quote = *b.get(i)?;
        if quote != b'\'' && quote != b'"' {
            return None;
        }
        let value_start = i + 1;
        let len = memchr::memchr(quote, &b[value_start..])?;
        i = value_start + len + 1;
        if name == b"xmlns" {
            return (&b[value_start..value_start + len] == value).then_some(attr_start..i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_xmlns_is_found_only_on_the_top_element() {
        let b = b"<message to='a@b' xmlns='jabber:server' id=\"x\"><body xmlns='jabber:server'/></message>";
        let r = find_top_xmlns(b, b"jabber:server").unwrap();
        assert_eq!(&b[r], b" xmlns='jabber:server'");
        assert_eq!(find_top_xmlns(b, b"jabber:client"), None);
        assert_eq!(find_top_xmlns(b"<presence/>", b"jabber:server"), None);
        assert_eq!(
            find_top_xmlns(
                b"<presence type='a'><x xmlns='jabber:server'/></presence>",
                b"jabber:server"
            ),
            None
        );
        let mut v = b"xx<iq\n xmlns = \"jabber:server\" id='1'/>".to_vec();
        remove_top_xmlns(&mut v, 2, "jabber:server");
        assert_eq!(v, b"xx<iq id='1'/>");
    }

    #[test]
    fn mechanism_names_round_trip() {
        for m in [
            Mechanism::ScramSha256,
            Mechanism::ScramSha1,
            Mechanism::Plain,
        ] {
            assert_eq!(Mechanism::from_name(m.name()), Some(m));
        }
        assert_eq!(Mechanism::from_name("SCRAM-SHA-1-PLUS"), None);
        assert_eq!(Mechanism::Plain.hash(), None);
    }
}
