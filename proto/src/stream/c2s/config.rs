//! What every C2S connection of a server shares ([`C2sConfig`], [`C2sTimeouts`]), the
//! SASL mechanisms it offers ([`Mechanism`]) and how passwords are checked
//! ([`PasswordCheck`]).

use std::fmt;
use std::time::Duration;

use crate::scram::ScramHash;
use crate::xml::Limits;

#[cfg(doc)]
use crate::stream::CloseReason;

/// Per-step deadlines and keepalive intervals of a C2S stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct C2sTimeouts {
    /// Each negotiation step (header, TLS, SASL, the runtime's credentials and bind
    /// answers, bind) must complete within this (default 30 s); else `connection-timeout`.
    pub negotiation: Duration,
    /// The client's first stream header must arrive within this of the connection's
    /// creation (default 10 s, as `s2s.stream_header_timeout` for S2S streams); else the
    /// stream is closed with `connection-timeout` ("no stream header in time",
    /// [`CloseReason::SentError`]) and without a closing handshake. `None`: only
    /// `negotiation` applies, as for the headers after TLS and SASL.
    pub stream_header: Option<Duration>,
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
            stream_header: Some(Duration::from_secs(10)),
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
    /// XEP-0198 stream management offered after SASL, with resumption; `None` (the
    /// default of [`C2sConfig::new`]) does not offer it.
    pub stream_management: Option<super::C2sSmConfig>,
    /// XEP-0077 in-band registration of new accounts before authentication (default
    /// false: refused as any stanza before authentication is).
    pub registration: bool,
    /// The SASL mechanisms that may be offered at all (default: all three), e.g. only
    /// `SCRAM-SHA-1` and `PLAIN` while users imported from Prosody 0.12 have SCRAM-SHA-1
    /// credentials only (a client picks the strongest mechanism offered).
    pub mechanisms: Vec<Mechanism>,
    /// Where passwords are checked (default [`PasswordCheck::Stored`]); decides the
    /// mechanisms offered ([`C2sConfig::offers`]).
    pub password_check: PasswordCheck,
}

/// Where the runtime checks a client's password, which decides the SASL mechanisms a
/// server can offer (RFC 6120 §6.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PasswordCheck {
    /// Against stored SCRAM credentials ([`crate::scram::ScramCredentials`]): `SCRAM-SHA-256`,
    /// `SCRAM-SHA-1`, and `PLAIN` over TLS. The default.
    #[default]
    Stored,
    /// By the runtime against an external directory (e.g. an LDAP bind as the user): only
    /// `PLAIN` over TLS, since a SCRAM proof cannot be checked without stored SCRAM keys
    /// and a directory bind needs the password itself. The runtime gets
    /// [`super::Event::PasswordCheckNeeded`] and answers with
    /// [`super::C2sConnection::handle_password_verdict`].
    External,
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
            stream_management: None,
            registration: false,
            mechanisms: vec![
                Mechanism::ScramSha256,
                Mechanism::ScramSha1,
                Mechanism::Plain,
            ],
            password_check: PasswordCheck::Stored,
        }
    }

    /// Whether `mechanism` is offered and accepted on a stream with (`tls`) or without
    /// TLS: only those in [`C2sConfig::mechanisms`]; `PLAIN` only over TLS; SCRAM only with
    /// [`PasswordCheck::Stored`].
    pub fn offers(&self, mechanism: Mechanism, tls: bool) -> bool {
        if !self.mechanisms.contains(&mechanism) {
            return false;
        }
        match mechanism {
            Mechanism::Plain => tls,
            Mechanism::ScramSha256 | Mechanism::ScramSha1 => {
                self.password_check == PasswordCheck::Stored
            }
        }
    }

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
            .field("password_check", &self.password_check)
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn external_password_check_offers_plain_over_tls_only() {
        let mut cfg = C2sConfig::new(vec!["a.test".into()], [0; 32]);
        assert!(cfg.offers(Mechanism::ScramSha256, false));
        assert!(cfg.offers(Mechanism::Plain, true));
        assert!(!cfg.offers(Mechanism::Plain, false));
        cfg.password_check = PasswordCheck::External;
        for tls in [false, true] {
            assert!(!cfg.offers(Mechanism::ScramSha256, tls));
            assert!(!cfg.offers(Mechanism::ScramSha1, tls));
            assert_eq!(cfg.offers(Mechanism::Plain, tls), tls);
        }
    }
}
