//! What every S2S connection of a server shares: domains, policy, secrets, limits and
//! deadlines ([`S2sConfig`], [`Timeouts`]), and the certificate check the runtime supplies
//! ([`PeerCertVerifier`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, UnixTime};

use super::super::policy::FederationPolicy;
use crate::dialback::DialbackSecret;
use crate::stream::cert::CertError;
use crate::xml::Limits;

#[cfg(doc)]
use super::{CloseReason, S2sConnection};

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
    /// The peer's first stream header must arrive within this of the connection's
    /// creation (default 10 s, as `s2s.stream_header_timeout`): on an inbound stream the
    /// initiating server's header, on an outbound stream the receiving server's answer.
    /// Else the stream is closed with `connection-timeout` ("no stream header in time",
    /// [`CloseReason::SentError`]) and without a closing handshake. `None`: only
    /// `negotiation` applies. A restarted stream's header (after TLS or SASL) is a
    /// negotiation step.
    pub stream_header: Option<Duration>,
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
            stream_header: Some(Duration::from_secs(10)),
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
    /// XEP-0198 stream management: offered on inbound streams and enabled on outbound
    /// streams whose peer offers it, with this ack cadence; `None` neither offers nor
    /// enables it.
    pub stream_management: Option<crate::stream::sm::AckPolicy>,
}

impl S2sConfig {
    /// Whether we host `domain` (ASCII case-insensitive).
    pub fn hosts(&self, domain: &str) -> bool {
        self.local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }

    pub(super) fn has_certificate(&self, domain: &str) -> bool {
        self.certificate_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }
}
