//! `fedrouter check`: the federation troubleshooting procedure in one command (DESIGN.md:
//! "Operators troubleshoot with SRV look-ups and 'can I reach 5269' checks").
//!
//! [`run`] returns a [`Report`]: an ordered list of [`Step`]s, each with a [`Verdict`], what
//! was seen, the fix to try when something is wrong, and how long it took. The binary prints
//! it as text or JSON (`--json`) and exits non-zero when a step failed ([`Report::ok`]).
//!
//! # A remote domain
//!
//! What `fedrouter serve` does to reach it, one step at a time (step names in
//! [`steps`]):
//!
//! 1. `srv`: `_xmpps-server._tcp` and `_xmpp-server._tcp` SRV (RFC 6120 §3.2.1, XEP-0368),
//!    the ordered target list (RFC 2782), or the fallback to the domain's A/AAAA on 5269
//!    (§3.2.2; a warning), or `.` (no service; a failure). A `[dns.static]` entry is used as
//!    the router would and said so.
//! 2. `address`: A/AAAA of every target.
//! 3. `tcp`: a connection to every address (at most 16 targets × 8 addresses, like the
//!    router), timed, within `s2s.connect_timeout`.
//! 4. On the first address that accepted: `stream` (the peer's stream header and
//!    features), `tls` (STARTTLS, or the direct TLS handshake before the stream for an
//!    `_xmpps-server` target) per the federation policy for the domain, `certificate` (the
//!    chain checked against `tls.trust` for the domain, its names and expiry; a failure when
//!    the policy verifies certificates, else a warning), then authentication as our domain
//!    (`--from`, default the first of `domains`): a real `dialback` round trip (XEP-0220:
//!    our `db:result`, the peer connects back to our domain's authoritative server to verify
//!    it, and answers), or `sasl-external` when the peer accepts our certificate (XEP-0178),
//!    exactly as the router would present it.
//!
//! The stream is driven by the library's own sans-IO [`S2sConnection`](crate::stream::S2sConnection) over a blocking
//! socket, every wait bounded by the configuration's timeouts.
//!
//! ## Who answers the peer's dialback verification
//!
//! The peer verifies our key with whatever server our domain's DNS names (XEP-0220 §2.1.3).
//! `check` does not go through the running server's admin endpoint (a `/ping` only says
//! "pong" or a condition, not which step failed); it runs the round trip itself, with the
//! configuration's dialback secret, and:
//!
//! - when this configuration's S2S listen addresses (`listen.s2s`, `listen.s2s_tls`) are
//!   free, i.e. the server is not running here, `check` listens on them for the duration of
//!   the step and is our domain's server for that moment: an inbound [`S2sConnection`](crate::stream::S2sConnection),
//!   as in `fedrouter serve`, with STARTTLS and the configured certificates, whose events
//!   it acts on as the runtime does. As the Authoritative Server it answers `db:verify`
//!   (§2.1.3). As the Receiving Server it verifies the peer's own `db:result` on that
//!   connection: Prosody, for one, authenticates its verification connection with dialback
//!   before it sends `db:verify` (§2.1.2), and waits for the answer. The key is verified by
//!   the normal route rather than accepted: a `db:verify` to the peer's authoritative
//!   server, over the stream `check` already has open to the peer's domain, so the verdict
//!   is the one `fedrouter serve` would reach (a claim for another domain is answered
//!   `remote-connection-failed`: `check` opens no further streams). Everything it sees is
//!   recorded and reported;
//! - when they are in use (`fedrouter serve` runs), the running server answers, with the
//!   same secret when it runs with the same configuration.
//!
//! A failed `dialback` step says what happened there: the peer's verification connection
//! never arrived (then someone else answers for our domain, or cannot reach it: its
//! SRV/A records point elsewhere, a firewall, or instances do not share
//! `s2s.dialback_secret`; the fix names where our domain's DNS points), or it arrived and
//! was refused (with the stream error and why), or the peer's own key on it was not
//! confirmed, or the peer did not answer our `db:result` in time.
//!
//! When the peer offers no SASL EXTERNAL after TLS, the `sasl-external` step tells apart,
//! where it can, a peer that did not accept our certificate (it lists other SASL
//! mechanisms) from one that does not implement EXTERNAL (no mechanism anywhere, and no
//! client certificate requested in the TLS handshake); see [`steps::SASL_EXTERNAL`].
//!
//! # Our own domains
//!
//! With no domain (every domain of `domains`) or one of ours:
//!
//! 1. `certificate`: the configured (or generated) certificate covers the domain, whether
//!    it is self-signed (a warning: verifying peers fall back to dialback), and that it does
//!    not expire within [`CheckOptions::expiry_warning`] (default 30 days; a failure).
//! 2. `srv` and `address` as above, through DNS only (`[dns.static]` is what *we* use for
//!    others, not what others see), with a warning for the A/AAAA fallback.
//! 3. For every target address: `tcp`, `stream` (the listener answers a stream to the
//!    domain, from the placeholder domain [`PROBE_DOMAIN`]), `tls` (the handshake with the
//!    domain as SNI; the certificate served covers the domain and is the configured one),
//!    and `authoritative`: a `db:verify` carrying a key made with this configuration's
//!    dialback secret, which the server there confirms only if it shares the secret; this
//!    finds the "our domain is already hosted elsewhere" case from our side.
//!
//! The listener sees a stream from [`PROBE_DOMAIN`] whose own dialback cannot succeed (the
//! name is reserved, RFC 2606); that failure is expected and not reported.
//!
//! # I/O
//!
//! Unlike the protocol core, this module does I/O and reads the clock (like the runtime):
//! DNS through [`S2sResolver`] on a current-thread tokio runtime, blocking std sockets with
//! short read timeouts, rustls for TLS. The caller materialises the configuration first
//! ([`Config::materialize`], as `fedrouter serve` does: a missing self-signed certificate
//! or dialback secret is generated into `data_dir`).

use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use serde::Serialize;

use crate::config::{Config, Materialized};
use crate::dns::{DnsConfig, S2sResolver, StaticTarget};
use crate::jid::DomainPart;
use crate::srv::Target;
use crate::stream::{FederationPolicy, S2sConfig, Timeouts};
use crate::tls::{self, CertifiedDomain};

/// The originating domain of the stream `check` opens to our own listeners: reserved
/// (`.invalid`, RFC 2606 §2), so no server can verify it, and it is never one of ours.
pub const PROBE_DOMAIN: &str = "check.fedrouter.invalid";

/// Default of [`CheckOptions::expiry_warning`]: 30 days.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// How long one blocking read waits before deadlines are looked at again.
const READ_SLICE: Duration = Duration::from_millis(50);

/// How long one blocking write may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most targets and addresses per target tried (as the router does).
const MAX_TARGETS: usize = 16;
const MAX_ADDRS: usize = 8;

/// Most connections the dialback stand-in serves at once.
const MAX_STANDIN_CONNS: usize = 32;

/// The names of the steps ([`Step::name`]).
pub mod steps {
    /// The federation policy forbids the remote domain.
    pub const POLICY: &str = "policy";
    /// SRV look-up (RFC 6120 §3.2.1, RFC 2782, XEP-0368).
    pub const SRV: &str = "srv";
    /// A/AAAA look-up of one target host.
    pub const ADDRESS: &str = "address";
    /// TCP connection to one address.
    pub const TCP: &str = "tcp";
    /// The peer's stream header and features (RFC 6120 §4.3).
    pub const STREAM: &str = "stream";
    /// STARTTLS (RFC 6120 §5) or the direct TLS handshake (XEP-0368).
    pub const TLS: &str = "tls";
    /// A certificate's names, issuer and expiry (RFC 6120 §13.7.2, RFC 6125).
    pub const CERTIFICATE: &str = "certificate";
    /// A Server Dialback round trip (XEP-0220).
    pub const DIALBACK: &str = "dialback";
    /// SASL EXTERNAL with our certificate (XEP-0178). Also reported, before `dialback`,
    /// when the peer offers no EXTERNAL after TLS (XEP-0178 §3): a warning when it lists
    /// other SASL mechanisms (it did not accept our certificate) or none after asking for
    /// our certificate (either reason), a skip when it offers none and never asked for a
    /// client certificate (it does not implement EXTERNAL), a failure when the policy
    /// forbids the dialback fallback.
    pub const SASL_EXTERNAL: &str = "sasl-external";
    /// Our listener confirms keys made with this configuration's dialback secret
    /// (XEP-0220 §2.1.3 `db:verify`, XEP-0185).
    pub const AUTHORITATIVE: &str = "authoritative";
    /// The PostgreSQL store answers (`store.backend = "postgres"`).
    pub const STORE: &str = "store";
    /// A NATS server of the cluster answers (`[cluster]`).
    pub const NATS: &str = "nats";
}

/// The outcome of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// As it should be.
    Pass,
    /// Works, but not as it should (e.g. no SRV record, only the A/AAAA fallback).
    Warn,
    /// Broken: federation fails here. [`Report::ok`] is false.
    Fail,
    /// Not applicable (e.g. TLS when the policy disables it).
    Skip,
}

impl Verdict {
    /// `PASS`, `WARN`, `FAIL`, `SKIP`.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
        }
    }
}

/// One step of the procedure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// The domain checked (ours or the remote one), normalised (RFC 7622 §3.2).
    pub domain: String,
    /// Which step ([`steps`]).
    pub name: String,
    /// What it was done against: a host, `ip:port`, or none for the whole domain.
    pub target: Option<String>,
    /// The outcome.
    pub verdict: Verdict,
    /// What was seen, for a person.
    pub detail: String,
    /// What to try, when the verdict is [`Verdict::Fail`] or [`Verdict::Warn`].
    pub fix: Option<String>,
    /// How long the step took, in milliseconds, when timed.
    pub millis: Option<f64>,
}

impl Step {
    fn new(domain: &str, name: &str, verdict: Verdict, detail: impl Into<String>) -> Step {
        Step {
            domain: domain.to_owned(),
            name: name.to_owned(),
            target: None,
            verdict,
            detail: detail.into(),
            fix: None,
            millis: None,
        }
    }

    fn at(mut self, target: impl fmt::Display) -> Step {
        self.target = Some(target.to_string());
        self
    }

    fn fix(mut self, fix: impl Into<String>) -> Step {
        self.fix = Some(fix.into());
        self
    }

    fn took(mut self, d: Duration) -> Step {
        self.millis = Some((d.as_secs_f64() * 10_000.0).round() / 10.0);
        self
    }
}

/// The outcome of [`run`]: the steps in the order they ran.
///
/// Serialised (for `--json`) as `{"ok": bool, "steps": [Step...]}` with each step's
/// fields as named here and `verdict` one of `pass`, `warn`, `fail`, `skip`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// The steps, in order.
    pub steps: Vec<Step>,
}

impl Report {
    /// True when no step failed (warnings and skips are fine): the exit status is zero.
    pub fn ok(&self) -> bool {
        self.steps.iter().all(|s| s.verdict != Verdict::Fail)
    }

    /// The steps that failed.
    pub fn failures(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(|s| s.verdict == Verdict::Fail)
    }

    /// The steps of `domain` named `name`, in order.
    pub fn find<'a>(&'a self, domain: &'a str, name: &'a str) -> impl Iterator<Item = &'a Step> {
        self.steps
            .iter()
            .filter(move |s| s.domain == domain && s.name == name)
    }

    /// The report as text: per domain, one line per step (`PASS srv ...`), the fix
    /// indented below, and a summary line.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let mut current: Option<&str> = None;
        for s in &self.steps {
            if current != Some(s.domain.as_str()) {
                if current.is_some() {
                    out.push('\n');
                }
                let _ = writeln!(out, "{}", s.domain);
                current = Some(&s.domain);
            }
            let target = s
                .target
                .as_deref()
                .map(|t| format!("{t}: "))
                .unwrap_or_default();
            let time = s.millis.map(|m| format!(" ({m} ms)")).unwrap_or_default();
            let _ = writeln!(
                out,
                "  {}  {:<13} {target}{}{time}",
                s.verdict.label(),
                s.name,
                s.detail
            );
            if let Some(fix) = &s.fix {
                let _ = writeln!(out, "        fix: {fix}");
            }
        }
        let count = |v: Verdict| self.steps.iter().filter(|s| s.verdict == v).count();
        let _ = writeln!(
            out,
            "\n{} passed, {} warned, {} failed, {} skipped",
            count(Verdict::Pass),
            count(Verdict::Warn),
            count(Verdict::Fail),
            count(Verdict::Skip)
        );
        out
    }
}

impl Serialize for Report {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json<'a> {
            ok: bool,
            steps: &'a [Step],
        }
        Json {
            ok: self.ok(),
            steps: &self.steps,
        }
        .serialize(serializer)
    }
}

/// How [`run`] checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOptions {
    /// The local domain a remote check authenticates as; `None`: the first of
    /// [`Config::domains`].
    pub from: Option<String>,
    /// Whether to answer the remote's dialback verification on this configuration's free
    /// S2S listen addresses (see the module documentation). Default `true`.
    pub answer_dialback: bool,
    /// Certificates that expire sooner than this are flagged. Default [`EXPIRY_WARNING`].
    pub expiry_warning: Duration,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            from: None,
            answer_dialback: true,
            expiry_warning: EXPIRY_WARNING,
        }
    }
}

/// Why [`run`] could not check at all (everything else is a failed [`Step`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// The domain to check is not a valid domain (RFC 7622 §3.2).
    #[error("{domain:?} is not a valid domain: {reason}")]
    BadDomain {
        /// As given.
        domain: String,
        /// Why.
        reason: String,
    },
    /// `from` names a domain this configuration does not host.
    #[error("{domain} is not one of this configuration's domains ({})", .domains.join(", "))]
    NotLocal {
        /// As normalised.
        domain: String,
        /// The configuration's domains.
        domains: Vec<String>,
    },
    /// The tokio runtime for DNS look-ups could not be started.
    #[error("cannot start the DNS runtime: {0}")]
    Runtime(String),
}

/// Runs the procedure: for `domain` (a remote domain, or one of ours), or for every domain
/// of `config` when `None`. `materialized` is `config`'s [`Config::materialize`] (the
/// certificates, dialback secret and trust anchors).
///
/// Bounded in time: every look-up, connection and negotiation step is bounded by the
/// configuration's `dns.timeout`, `s2s.connect_timeout`, `s2s.negotiation_timeout` and
/// `s2s.verify_timeout`.
///
/// Errors: [`CheckError::BadDomain`] for a `domain` or `from` that is not a domain,
/// [`CheckError::NotLocal`] for a `from` we do not host, [`CheckError::Runtime`].
pub fn run(
    config: &Config,
    materialized: &Materialized,
    domain: Option<&str>,
    options: &CheckOptions,
) -> Result<Report, CheckError> {
    tls::install_default_provider();
    let normal = |raw: &str| {
        DomainPart::new(raw)
            .map(|d| d.as_str().to_owned())
            .map_err(|e| CheckError::BadDomain {
                domain: raw.to_owned(),
                reason: e.to_string(),
            })
    };
    let domain = domain.map(normal).transpose()?;
    let from = match &options.from {
        Some(f) => {
            let f = normal(f)?;
            if !config.domains.contains(&f) {
                return Err(CheckError::NotLocal {
                    domain: f,
                    domains: config.domains.clone(),
                });
            }
            f
        }
        None => config.domains[0].clone(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CheckError::Runtime(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    for der in &materialized.trust {
        let _ = roots.add(der.clone());
    }
    let mut c = Checker {
        config,
        m: materialized,
        opts: options,
        rt,
        roots: (!roots.is_empty()).then(|| Arc::new(roots)),
        report: Report::default(),
    };
    match domain {
        Some(d) if !config.domains.contains(&d) => c.remote(&from, &d),
        Some(d) => c.own(&d),
        None => {
            c.services();
            for d in &config.domains {
                c.own(d);
            }
        }
    }
    Ok(c.report)
}

mod certs;
mod diagnose;
mod dns;
mod explain;
mod own;
mod remote;
mod services;
mod standin;
#[cfg(test)]
mod tests;
mod transport;

use certs::*;
use explain::*;
use standin::*;
use transport::*;

// ---------------------------------------------------------------------------------------
// The checker
// ---------------------------------------------------------------------------------------

struct Checker<'a> {
    config: &'a Config,
    m: &'a Materialized,
    opts: &'a CheckOptions,
    rt: tokio::runtime::Runtime,
    roots: Option<Arc<RootCertStore>>,
    report: Report,
}

/// Whose domain a step is about: the fixes differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Own,
    Remote,
}

/// What a negotiation waits for, to attribute a failure to its step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Stream,
    StartTls,
    Auth,
    Done,
}

/// What the steps of one remote session share.
#[derive(Clone, Copy)]
struct RemoteCtx<'a> {
    /// Our domain, authenticating.
    local: &'a str,
    /// The remote domain.
    domain: &'a str,
    /// The address connected to.
    addr: SocketAddr,
    /// `dialback`, or `sasl-external` when the policy forbids dialback.
    auth_step: &'static str,
    /// Ours for the moment, when the server is not running.
    standin: Option<&'a StandIn>,
}

fn dns_config(config: &Config, with_static: bool) -> DnsConfig {
    DnsConfig {
        nameservers: config.dns.nameservers.clone(),
        timeout: config.dns.timeout,
        static_overrides: if with_static {
            config
                .dns
                .static_targets
                .iter()
                .map(|(d, t)| {
                    (
                        d.clone(),
                        StaticTarget {
                            host: t.host.clone(),
                            port: t.port,
                        },
                    )
                })
                .collect()
        } else {
            Default::default()
        },
        cache_size: config.dns.cache_size,
        max_in_flight: config.dns.max_in_flight,
    }
}

fn target_kind(t: &Target) -> &'static str {
    if t.direct_tls {
        "direct TLS"
    } else {
        "STARTTLS"
    }
}

fn service_of(t: &Target) -> &'static str {
    if t.direct_tls {
        "_xmpps-server._tcp"
    } else {
        "_xmpp-server._tcp"
    }
}

impl Checker<'_> {
    fn push(&mut self, step: Step) {
        self.report.steps.push(step);
    }

    fn resolver(&mut self, domain: &str, with_static: bool) -> Option<S2sResolver> {
        match S2sResolver::new(&dns_config(self.config, with_static)) {
            Ok(r) => Some(r),
            Err(e) => {
                self.push(
                    Step::new(domain, steps::SRV, Verdict::Fail, e.to_string()).fix(
                        "set [dns] nameservers = [\"ip:port\"] in the configuration, or fix \
                         /etc/resolv.conf",
                    ),
                );
                None
            }
        }
    }

    fn s2s_config(&self, local_domains: Vec<String>, policy: FederationPolicy) -> S2sConfig {
        let s = &self.config.s2s;
        S2sConfig {
            local_domains,
            certificate_domains: self
                .m
                .certificates
                .iter()
                .map(|c| c.domain().to_owned())
                .collect(),
            policy,
            dialback_secret: self.m.dialback_secret.clone(),
            stream_id_key: rand::random(),
            cert_verifier: None,
            limits: s.xml_limits(),
            timeouts: Timeouts {
                negotiation: s.negotiation_timeout,
                stream_header: None,
                verify: s.verify_timeout,
                keepalive: Duration::from_secs(3600),
                idle: None,
                close: Duration::from_secs(1),
            },
            stream_management: None,
        }
    }

    fn certificate_of(&self, domain: &str) -> Option<&CertifiedDomain> {
        self.m.certificates.iter().find(|c| c.domain() == domain)
    }
}
