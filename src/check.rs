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
//! The stream is driven by the library's own sans-IO [`S2sConnection`] over a blocking
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
//!   the step and is our domain's server for that moment: an inbound [`S2sConnection`],
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
use std::io::{self, Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, SignatureScheme};
use serde::Serialize;

use crate::condition::StreamCondition;
use crate::config::{Config, Materialized};
use crate::dialback::{DialbackErrorCondition, DialbackResult};
use crate::dns::{DnsConfig, DnsError, S2sResolver, StaticTarget};
use crate::jid::DomainPart;
use crate::srv::{Resolution, Target};
use crate::stream::{
    AuthMethod, AuthPolicy, CloseReason, Event, FederationPolicy, PeerPolicy, S2sConfig,
    S2sConnection, Timeouts, TlsPolicy, TlsRole,
};
use crate::tls::{self, CertError, CertifiedDomain, ClientAuth, DomainCertResolver};
use crate::xml::tree::Node;
use crate::xml::{ns, Frame, Framer, Limits, Namespace, StreamHeader};

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
            for d in &config.domains {
                c.own(d);
            }
        }
    }
    Ok(c.report)
}

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
                verify: s.verify_timeout,
                keepalive: Duration::from_secs(3600),
                idle: None,
                close: Duration::from_secs(1),
            },
        }
    }

    fn certificate_of(&self, domain: &str) -> Option<&CertifiedDomain> {
        self.m.certificates.iter().find(|c| c.domain() == domain)
    }

    // ----- DNS -----

    /// The `srv` step; the targets to try (the fallback target when there is no SRV, with
    /// `true`).
    fn srv_step(
        &mut self,
        resolver: &S2sResolver,
        domain: &str,
        side: Side,
    ) -> Option<(Vec<Target>, bool)> {
        let t0 = Instant::now();
        let res = self
            .rt
            .block_on(resolver.resolve_srv(domain, &mut rand::rng()));
        let took = t0.elapsed();
        let publish = format!(
            "publish an _xmpp-server._tcp SRV record for {domain}, e.g. \
             `_xmpp-server._tcp.{domain}. 3600 IN SRV 0 5 5269 xmpp.{domain}.` \
             (and A/AAAA records for that host)"
        );
        match res {
            Ok(Resolution::Targets(ts)) => {
                let list = ts
                    .iter()
                    .enumerate()
                    .map(|(i, t)| format!("{}. {}:{} ({})", i + 1, t.host, t.port, target_kind(t)))
                    .collect::<Vec<_>>()
                    .join(", ");
                let detail = match self.config.dns.static_targets.get(domain) {
                    Some(st) if side == Side::Remote => {
                        format!("[dns.static] sends {domain} to {st} (DNS not consulted)")
                    }
                    _ => {
                        let mut d = format!("targets in order: {list}");
                        if side == Side::Own
                            && !self.config.listen.s2s_tls.is_empty()
                            && !ts.iter().any(|t| t.direct_tls)
                        {
                            d.push_str(
                                " (no _xmpps-server._tcp record: peers will not use the \
                                 direct TLS listener, XEP-0368)",
                            );
                        }
                        d
                    }
                };
                self.push(Step::new(domain, steps::SRV, Verdict::Pass, detail).took(took));
                Some((ts, false))
            }
            Ok(Resolution::Fallback) => {
                let fix = match side {
                    Side::Own => publish,
                    Side::Remote => format!(
                        "works if {domain}'s own A/AAAA records lead to its server; \
                         otherwise its administrators must {publish}"
                    ),
                };
                self.push(
                    Step::new(
                        domain,
                        steps::SRV,
                        Verdict::Warn,
                        format!(
                            "no _xmpp-server._tcp or _xmpps-server._tcp SRV record: servers \
                             fall back to {domain}'s own A/AAAA records, port 5269 \
                             (RFC 6120 §3.2.2)"
                        ),
                    )
                    .fix(fix)
                    .took(took),
                );
                Some((
                    vec![Target {
                        host: domain.to_owned(),
                        port: 5269,
                        direct_tls: false,
                    }],
                    true,
                ))
            }
            Ok(Resolution::NoService) => {
                let fix = match side {
                    Side::Own => format!(
                        "remove the '.' SRV record and {publish}, if {domain} is to federate"
                    ),
                    Side::Remote => format!(
                        "{domain} declares that it does not federate; only its \
                         administrators can change that"
                    ),
                };
                self.push(
                    Step::new(
                        domain,
                        steps::SRV,
                        Verdict::Fail,
                        format!(
                            "{domain} publishes the SRV target '.': it offers no XMPP \
                             server-to-server service (RFC 2782, RFC 6120 §3.2.1)"
                        ),
                    )
                    .fix(fix)
                    .took(took),
                );
                None
            }
            Err(e) => {
                let fix = dns_fix(&e, self.config);
                self.push(
                    Step::new(domain, steps::SRV, Verdict::Fail, e.to_string())
                        .fix(fix)
                        .took(took),
                );
                None
            }
        }
    }

    /// The `address` step for one target; its addresses.
    fn address_step(
        &mut self,
        resolver: &S2sResolver,
        domain: &str,
        t: &Target,
        fallback: bool,
        side: Side,
    ) -> Vec<IpAddr> {
        let t0 = Instant::now();
        let res = self.rt.block_on(resolver.resolve_host(&t.host));
        let took = t0.elapsed();
        match res {
            Ok(addrs) => {
                let list: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
                self.push(
                    Step::new(domain, steps::ADDRESS, Verdict::Pass, list.join(", "))
                        .at(&t.host)
                        .took(took),
                );
                addrs
            }
            Err(e) => {
                let fix = match (&e, fallback, side) {
                    (DnsError::NoRecords { .. }, true, Side::Own) => format!(
                        "{domain} has neither SRV nor A/AAAA records, so no server can find \
                         it: publish an _xmpp-server._tcp SRV record, \
                         `_xmpp-server._tcp.{domain}. 3600 IN SRV 0 5 5269 <this server's \
                         host>.`"
                    ),
                    (DnsError::NoRecords { .. }, true, Side::Remote) => format!(
                        "{domain} has neither SRV nor A/AAAA records, so no server can find \
                         it: its administrators must publish an _xmpp-server._tcp SRV \
                         record (`_xmpp-server._tcp.{domain}. SRV 0 5 5269 <host>.`); check \
                         the spelling of the domain"
                    ),
                    (DnsError::NoRecords { .. }, false, Side::Own) => format!(
                        "publish an A (and/or AAAA) record for {}, the target of {}.{domain}",
                        t.host,
                        service_of(t)
                    ),
                    (DnsError::NoRecords { .. }, false, Side::Remote) => format!(
                        "{domain}'s SRV record names {}, which has no A/AAAA record: its \
                         administrators must publish one or fix the SRV target",
                        t.host
                    ),
                    _ => dns_fix(&e, self.config),
                };
                self.push(
                    Step::new(domain, steps::ADDRESS, Verdict::Fail, e.to_string())
                        .at(&t.host)
                        .fix(fix)
                        .took(took),
                );
                Vec::new()
            }
        }
    }

    /// The `tcp` step for one address; the connected socket.
    fn tcp_step(
        &mut self,
        domain: &str,
        t: &Target,
        addr: SocketAddr,
        side: Side,
    ) -> Option<TcpStream> {
        let timeout = self.config.s2s.connect_timeout;
        let t0 = Instant::now();
        let res = TcpStream::connect_timeout(&addr, timeout);
        let took = t0.elapsed();
        let port = addr.port();
        match res {
            Ok(sock) => {
                self.push(
                    Step::new(
                        domain,
                        steps::TCP,
                        Verdict::Pass,
                        format!("connected ({}:{port}, {})", t.host, target_kind(t)),
                    )
                    .at(addr)
                    .took(took),
                );
                Some(sock)
            }
            Err(e) => {
                let (what, why) = match e.kind() {
                    io::ErrorKind::ConnectionRefused => (
                        format!("connection refused: nothing listens on port {port}"),
                        "nothing accepts connections there",
                    ),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => (
                        format!("no answer within {}", humantime::format_duration(timeout)),
                        "a firewall may drop the packets",
                    ),
                    _ => (e.to_string(), "the address is unreachable from here"),
                };
                let fix = match side {
                    Side::Own => format!(
                        "{why}: start `fedrouter serve`, make sure listen.{} includes \
                         {addr} (or 0.0.0.0:{port}) and that the firewall lets TCP port {port} \
                         in; or correct the port in the {} SRV record of {domain}",
                        if t.direct_tls { "s2s_tls" } else { "s2s" },
                        service_of(t)
                    ),
                    Side::Remote if self.config.dns.static_targets.contains_key(domain) => {
                        format!(
                            "{why}: this configuration's [dns.static] entry sends {domain} to \
                             {}:{port}; correct or remove it",
                            t.host
                        )
                    }
                    Side::Remote => format!(
                        "{why}: {domain}'s {} record sends servers to {}:{port}; its \
                         administrators must open or start the server on port {port}, or \
                         correct the port in the SRV record",
                        service_of(t),
                        t.host
                    ),
                };
                self.push(
                    Step::new(domain, steps::TCP, Verdict::Fail, what)
                        .at(addr)
                        .fix(fix)
                        .took(took),
                );
                None
            }
        }
    }

    // ----- a remote domain -----

    fn remote(&mut self, local: &str, domain: &str) {
        let policy = self.config.federation.for_domain(domain);
        if !policy.allow {
            self.push(
                Step::new(
                    domain,
                    steps::POLICY,
                    Verdict::Fail,
                    format!("federation with {domain} is not allowed by this configuration"),
                )
                .fix(format!(
                    "remove `allow = false` for {domain} in [federation] (or from \
                     [federation.default])"
                )),
            );
            return;
        }
        let Some(resolver) = self.resolver(domain, true) else {
            return;
        };
        let Some((targets, fallback)) = self.srv_step(&resolver, domain, Side::Remote) else {
            return;
        };
        let mut first: Option<(Target, SocketAddr, TcpStream)> = None;
        for t in targets.iter().take(MAX_TARGETS) {
            let addrs = self.address_step(&resolver, domain, t, fallback, Side::Remote);
            for ip in addrs.into_iter().take(MAX_ADDRS) {
                let addr = SocketAddr::new(ip, t.port);
                if let Some(sock) = self.tcp_step(domain, t, addr, Side::Remote) {
                    if first.is_none() {
                        first = Some((t.clone(), addr, sock));
                    }
                }
            }
        }
        let Some((target, addr, sock)) = first else {
            return;
        };
        let standin = (self.opts.answer_dialback && policy.allows_dialback())
            .then(|| StandIn::start(self.config, self.m, Arc::new(self.standin_config()), domain));
        let r = RemoteCtx {
            local,
            domain,
            addr,
            auth_step: if policy.allows_dialback() {
                steps::DIALBACK
            } else {
                steps::SASL_EXTERNAL
            },
            standin: standin.as_ref(),
        };
        self.remote_session(&r, &target, sock, policy);
        if let Some(s) = standin {
            s.stop();
        }
    }

    /// The configuration of the dialback stand-in: our domains, policy and secret.
    fn standin_config(&self) -> S2sConfig {
        self.s2s_config(self.config.domains.clone(), self.config.federation.clone())
    }

    fn remote_session(
        &mut self,
        r: &RemoteCtx,
        target: &Target,
        sock: TcpStream,
        policy: PeerPolicy,
    ) {
        let RemoteCtx {
            local,
            domain,
            addr,
            standin,
            ..
        } = *r;
        let config = self.config;
        let s = &config.s2s;
        let started = Instant::now();
        let hard = started + s.negotiation_timeout * 2 + s.verify_timeout;
        let mut wire = match Wire::new(sock) {
            Ok(w) => w,
            Err(e) => {
                self.push(Step::new(domain, steps::STREAM, Verdict::Fail, e.to_string()).at(addr));
                return;
            }
        };
        // Like the router: our certificate is offered, for SASL EXTERNAL.
        let ours = self.certificate_of(local).cloned();
        let mut asked_for_ours = None;
        if target.direct_tls {
            let Ok(hs) = self.tls_step(
                &mut wire,
                domain,
                addr,
                true,
                ours.as_ref(),
                hard,
                Side::Remote,
            ) else {
                return;
            };
            self.remote_certificate_step(domain, addr, &hs.chain, policy);
            asked_for_ours = hs.asked_for_ours;
        }
        let cfg =
            Arc::new(self.s2s_config(self.config.domains.clone(), self.config.federation.clone()));
        let conn = S2sConnection::outbound(cfg, local, domain, target.direct_tls, Instant::now());
        let mut c = Session::new(wire, conn);
        let mut phase = Phase::Stream;
        let mut stream_reported = false;
        let mut auth_t0 = Instant::now();
        // Keys of the peer's own that the stand-in was given (its verification connection's
        // db:result), sent back to the peer as its authoritative server in db:verify
        // (XEP-0220 §2.1.3): (our domain, the stand-in's stream id, where the verdict goes).
        let mut verifying: Vec<(String, String, mpsc::Sender<DialbackResult>)> = Vec::new();
        while phase != Phase::Done {
            let now = Instant::now();
            if now >= hard {
                let what = format!(
                    "no progress within {}",
                    humantime::format_duration(hard - started)
                );
                self.remote_phase_failed(r, phase, &what, None);
                break;
            }
            if let Err(e) = c.turn() {
                let what = format!("connection error: {e}");
                self.remote_phase_failed(r, phase, &what, None);
                break;
            }
            if let Some(st) = standin {
                for req in st.requests.try_iter() {
                    // Queued by the core until the stream is ready, like the runtime's.
                    let _ =
                        c.conn
                            .send_db_verify(&req.local, &req.stream_id, &req.key, Instant::now());
                    verifying.push((req.local, req.stream_id, req.reply));
                }
            }
            if !stream_reported {
                if let Some(features) = c.first_features() {
                    stream_reported = true;
                    let header = c.docs[0].header.clone();
                    self.push(
                        Step::new(
                            domain,
                            steps::STREAM,
                            Verdict::Pass,
                            stream_detail(header.as_ref(), &features),
                        )
                        .at(addr)
                        .took(started.elapsed()),
                    );
                    phase = Phase::Auth;
                    auth_t0 = Instant::now();
                    if !target.direct_tls {
                        let offered = features.child("starttls", ns::TLS).is_some();
                        match (offered, policy.tls) {
                            (_, TlsPolicy::Disabled) => {
                                self.push(
                                    Step::new(
                                        domain,
                                        steps::TLS,
                                        Verdict::Skip,
                                        format!(
                                            "the federation policy for {domain} disables TLS{}",
                                            if offered { " (it offers STARTTLS)" } else { "" }
                                        ),
                                    )
                                    .at(addr),
                                );
                                self.push(
                                    Step::new(domain, steps::CERTIFICATE, Verdict::Skip, "no TLS")
                                        .at(addr),
                                );
                            }
                            (true, _) => phase = Phase::StartTls,
                            (false, TlsPolicy::Required) => {
                                self.push(
                                    Step::new(
                                        domain,
                                        steps::TLS,
                                        Verdict::Fail,
                                        format!(
                                            "{domain} does not offer STARTTLS, and the \
                                             federation policy requires TLS"
                                        ),
                                    )
                                    .at(addr)
                                    .fix(format!(
                                        "ask {domain}'s administrators to enable STARTTLS \
                                         (RFC 7590), or set [federation.domains.\"{domain}\"] \
                                         tls = \"optional\" to federate without encryption"
                                    )),
                                );
                                phase = Phase::Done;
                            }
                            (false, _) => {
                                self.push(
                                    Step::new(
                                        domain,
                                        steps::TLS,
                                        Verdict::Warn,
                                        format!(
                                            "{domain} does not offer STARTTLS: the stream is \
                                             not encrypted"
                                        ),
                                    )
                                    .at(addr)
                                    .fix(format!(
                                        "{domain}'s administrators should enable STARTTLS \
                                         (RFC 7590)"
                                    )),
                                );
                                self.push(
                                    Step::new(domain, steps::CERTIFICATE, Verdict::Skip, "no TLS")
                                        .at(addr),
                                );
                            }
                        }
                    }
                }
            }
            while let Some(ev) = c.conn.poll_event() {
                if let Event::VerifyAnswered {
                    local: asker,
                    stream_id,
                    result,
                    ..
                } = &ev
                {
                    verifying.retain(|(l, id, reply)| {
                        let hit = l == asker && id == stream_id;
                        if hit {
                            let _ = reply.send(*result);
                        }
                        !hit
                    });
                    continue;
                }
                if phase == Phase::Done {
                    continue;
                }
                match ev {
                    Event::StartTls(TlsRole::Client { .. }) => {
                        // Our last plaintext first (RFC 6120 §5.4.3.3); an error shows in
                        // the handshake.
                        let _ = c.flush();
                        match self.tls_step(
                            &mut c.wire,
                            domain,
                            addr,
                            false,
                            ours.as_ref(),
                            hard,
                            Side::Remote,
                        ) {
                            Ok(hs) => {
                                self.remote_certificate_step(domain, addr, &hs.chain, policy);
                                asked_for_ours = hs.asked_for_ours;
                                c.restart_observer();
                                c.conn.handle_tls_established(
                                    hs.chain,
                                    Instant::now(),
                                    UnixTime::now(),
                                );
                                phase = Phase::Auth;
                                auth_t0 = Instant::now();
                            }
                            Err(reason) => {
                                c.conn.handle_tls_failed(&reason);
                                phase = Phase::Done;
                            }
                        }
                    }
                    Event::SaslExternalNotOffered {
                        dialback_fallback, ..
                    } => {
                        let took = auth_t0.elapsed();
                        self.sasl_not_offered(r, &c.docs, asked_for_ours, dialback_fallback, took);
                        if !dialback_fallback {
                            // The core closes the stream (policy-violation): said already.
                            phase = Phase::Done;
                        }
                    }
                    Event::Authenticated { method, .. } => {
                        let offered = c
                            .docs
                            .last()
                            .and_then(|d| d.features.as_ref())
                            .map(features_summary)
                            .unwrap_or_else(|| "none".into());
                        let (name, detail) = match method {
                            AuthMethod::Dialback => (
                                steps::DIALBACK,
                                format!(
                                    "{domain} verified {local}'s key with {local}'s \
                                     authoritative server and answered type='valid' \
                                     (features: {offered}); {}",
                                    self.verify_note(r)
                                ),
                            ),
                            AuthMethod::SaslExternal => (
                                steps::SASL_EXTERNAL,
                                format!(
                                    "{domain} accepted {local}'s certificate (SASL EXTERNAL, \
                                     XEP-0178; features: {offered}); no dialback was needed"
                                ),
                            ),
                        };
                        self.push(
                            Step::new(domain, name, Verdict::Pass, detail)
                                .at(addr)
                                .took(auth_t0.elapsed()),
                        );
                        phase = Phase::Done;
                    }
                    // The stream ended while our db:result waited (XEP-0220 §2.1.1): the
                    // core says remote-server-timeout; the Closed event that follows says
                    // what happened.
                    Event::AuthFailed {
                        result: DialbackResult::Error(DialbackErrorCondition::RemoteServerTimeout),
                        ..
                    } if r.auth_step == steps::DIALBACK
                        && c.result_answers == 0
                        && c.conn.is_closed() => {}
                    Event::AuthFailed { result, .. } => {
                        let took = auth_t0.elapsed();
                        self.auth_failed(r, result, c.result_answers > 0, took);
                        phase = Phase::Done;
                    }
                    // Our own deadline for the answer to our db:result.
                    Event::Closed(CloseReason::SentError(
                        StreamCondition::ConnectionTimeout,
                        _,
                    )) if phase == Phase::Auth
                        && r.auth_step == steps::DIALBACK
                        && c.negotiated()
                        && c.result_answers == 0 =>
                    {
                        let result =
                            DialbackResult::Error(DialbackErrorCondition::RemoteServerTimeout);
                        self.auth_failed(r, result, false, auth_t0.elapsed());
                        phase = Phase::Done;
                    }
                    Event::Closed(reason) => {
                        let opening = phase == Phase::Stream;
                        let (what, fix) =
                            close_explained(&reason, domain, local, Side::Remote, opening);
                        // The peer's own reason comes first; else what the stand-in saw.
                        let fix = match &reason {
                            CloseReason::ReceivedError(c, _)
                                if *c != StreamCondition::RemoteConnectionFailed =>
                            {
                                fix
                            }
                            _ if phase == Phase::Auth && r.auth_step == steps::DIALBACK => {
                                self.standin_fix(r).or(fix)
                            }
                            _ => fix,
                        };
                        self.remote_phase_failed(r, phase, &what, fix);
                        phase = Phase::Done;
                    }
                    _ => {}
                }
            }
            if phase != Phase::Done && c.eof {
                let what = format!("{domain} closed the TCP connection without a stream error");
                self.remote_phase_failed(r, phase, &what, None);
                phase = Phase::Done;
            }
        }
        c.finish();
    }

    /// A failed step of a remote session: the step of `phase`, what happened, and the
    /// fix. During dialback, what the stand-in saw is added, and explains the failure
    /// when no `fix` is given and it can.
    fn remote_phase_failed(
        &mut self,
        r: &RemoteCtx,
        phase: Phase,
        what: &str,
        fix: Option<String>,
    ) {
        let RemoteCtx {
            local,
            domain,
            addr,
            auth_step,
            ..
        } = *r;
        let name = match phase {
            Phase::Stream => steps::STREAM,
            Phase::StartTls => steps::TLS,
            Phase::Auth => auth_step,
            Phase::Done => return,
        };
        let dialback = phase == Phase::Auth && auth_step == steps::DIALBACK;
        let fix = if dialback {
            fix.or_else(|| self.standin_fix(r))
        } else {
            fix
        };
        let fix = fix.unwrap_or_else(|| match phase {
            Phase::Stream => format!(
                "the server at {addr} does not speak XMPP server-to-server for {domain} \
                 (wrong port, or a direct TLS port under _xmpp-server._tcp?); its logs say more"
            ),
            Phase::StartTls => {
                format!("the STARTTLS negotiation with {domain} failed; {domain}'s logs say more")
            }
            _ => format!(
                "{domain} did not complete authentication of {local}: check that {local}'s \
                 SRV/A records point to this server, that TCP port 5269 is reachable from \
                 {domain}, and {domain}'s logs"
            ),
        });
        let detail = if dialback {
            format!("{what}; {}", self.verify_note(r))
        } else {
            what.to_owned()
        };
        self.push(
            Step::new(domain, name, Verdict::Fail, detail)
                .at(addr)
                .fix(fix),
        );
    }

    /// The authentication step failed with `result`; `answered`: the peer answered our
    /// `db:result` (else our own deadline gave up on it, XEP-0220 §2.5).
    fn auth_failed(
        &mut self,
        r: &RemoteCtx,
        result: DialbackResult,
        answered: bool,
        took: Duration,
    ) {
        let RemoteCtx {
            local,
            domain,
            addr,
            auth_step: name,
            standin,
        } = *r;
        let where_ = self.where_dns_points(local);
        let note = self.verify_note(r);
        let explained = self.standin_fix(r);
        let elsewhere = format!(
            "another server answers for {local}'s dialback: check that {local}'s SRV/A \
             records point to this server ({where_}) and that instances share \
             `s2s.dialback_secret`"
        );
        let unreachable = format!(
            "{domain} could not reach {local}'s authoritative server: check that {local}'s \
             SRV/A records point to this server ({where_}) and that its S2S port is reachable \
             from {domain}{}",
            if standin.is_none() {
                "; with no server running there, start `fedrouter serve`"
            } else {
                ""
            }
        );
        let (detail, fix) = match result {
            DialbackResult::Invalid if name == steps::SASL_EXTERNAL => (
                format!("{domain} refused SASL EXTERNAL for {local}, and policy forbids dialback"),
                format!(
                    "{domain} must trust {local}'s certificate (a CA-issued one), or allow \
                     dialback with [federation.domains.\"{domain}\"] auth = \"any\""
                ),
            ),
            DialbackResult::Valid => return,
            _ if !answered => (
                format!(
                    "{domain} did not answer our db:result within {} \
                     (s2s.negotiation_timeout); {note}",
                    humantime::format_duration(self.config.s2s.negotiation_timeout)
                ),
                explained.unwrap_or(unreachable),
            ),
            DialbackResult::Invalid => (
                format!(
                    "{domain} answered type='invalid': {local}'s authoritative server, as \
                     {domain} found it, did not confirm our key; {note}"
                ),
                explained.unwrap_or(elsewhere),
            ),
            DialbackResult::Error(cond) => {
                let fix = match cond {
                    DialbackErrorCondition::RemoteServerNotFound
                    | DialbackErrorCondition::RemoteConnectionFailed
                    | DialbackErrorCondition::RemoteServerTimeout => {
                        explained.unwrap_or(unreachable)
                    }
                    DialbackErrorCondition::ItemNotFound => format!(
                        "the server at {addr} does not host {domain}: {domain}'s SRV record \
                         points at the wrong server"
                    ),
                    DialbackErrorCondition::PolicyViolation
                    | DialbackErrorCondition::NotAuthorized
                    | DialbackErrorCondition::Forbidden
                    | DialbackErrorCondition::NotAcceptable => format!(
                        "{domain} refuses {local} by its policy (maybe it requires TLS or \
                         certificates): ask its administrators"
                    ),
                    _ => explained.unwrap_or_else(|| format!("{domain}'s logs say why")),
                };
                (
                    format!("{domain} answered type='error' ({cond}); {note}"),
                    fix,
                )
            }
        };
        self.push(
            Step::new(domain, name, Verdict::Fail, detail)
                .at(addr)
                .fix(fix)
                .took(took),
        );
    }

    /// The `sasl-external` step when the peer's features after TLS offer no EXTERNAL
    /// (XEP-0178 §3, RFC 6120 §6.4.1), telling the reasons apart where the peer's
    /// features and TLS handshake allow:
    ///
    /// - other SASL mechanisms listed after TLS: it implements SASL but did not accept our
    ///   certificate;
    /// - no mechanism, and no client certificate requested in the TLS handshake: it cannot
    ///   do SASL EXTERNAL at all (it never saw our certificate);
    /// - no mechanism after asking for and getting our certificate: either (Prosody, for
    ///   one, offers no mechanism when it refuses a certificate).
    fn sasl_not_offered(
        &mut self,
        r: &RemoteCtx,
        docs: &[Doc],
        asked: Option<bool>,
        fallback: bool,
        took: Duration,
    ) {
        let RemoteCtx {
            local,
            domain,
            addr,
            ..
        } = *r;
        let mechanisms = |d: &Doc| -> Option<Vec<String>> {
            let m = d.features.as_ref()?.child("mechanisms", ns::SASL)?;
            Some(
                m.children
                    .iter()
                    .filter(|c| c.name == "mechanism")
                    .map(|c| c.text.trim().to_owned())
                    .collect(),
            )
        };
        let after = docs.last().and_then(mechanisms);
        let anywhere = docs.iter().any(|d| mechanisms(d).is_some());
        let cert = self
            .certificate_of(local)
            .and_then(|c| c.chain().first())
            .map(|ee| CertFacts::of(ee, local));
        let self_signed = cert.as_ref().is_some_and(|c| c.self_signed);
        let mut cert_fix = format!(
            "{domain} must accept {local}'s certificate: one from a CA it trusts (a public \
             CA) whose subjectAltName lists {local}, served with its intermediates"
        );
        if self_signed {
            let _ = write!(
                cert_fix,
                "; {local}'s is self-signed, which servers that verify certificates refuse: \
                 configure [[tls.certificate]] for {local} with one from a public CA"
            );
        } else if cert.as_ref().is_some_and(|c| !c.covers) {
            let _ = write!(cert_fix, "; {local}'s does not name {local}");
        }
        let saw = match asked {
            Some(true) => {
                format!("it asked for a client certificate in the TLS handshake and got {local}'s")
            }
            Some(false) => "it did not ask for a client certificate in the TLS handshake".into(),
            None => format!("this check has no certificate for {local} to present"),
        };
        let (verdict, mut detail, fix) = match (after, asked) {
            (Some(list), _) => (
                Verdict::Warn,
                format!(
                    "{domain} offers SASL after TLS ({}) but not EXTERNAL, and {saw}: {}",
                    if list.is_empty() {
                        "an empty list".to_owned()
                    } else {
                        list.join(" ")
                    },
                    if asked == Some(false) {
                        format!("it never saw {local}'s certificate, so it cannot offer EXTERNAL")
                    } else {
                        format!("it did not accept {local}'s certificate (XEP-0178 §3)")
                    }
                ),
                Some(if asked == Some(false) {
                    format!(
                        "{domain}'s administrators must have its server ask for client \
                         certificates on server-to-server connections"
                    )
                } else {
                    cert_fix
                }),
            ),
            (None, Some(false)) => (
                Verdict::Skip,
                format!(
                    "{domain} offers no SASL mechanism {} and {saw}: it does not implement \
                     SASL EXTERNAL (XEP-0178) for server-to-server streams; {local}'s \
                     certificate was never looked at",
                    if anywhere {
                        "after TLS"
                    } else {
                        "on any stream"
                    }
                ),
                None,
            ),
            (None, _) => (
                Verdict::Warn,
                format!(
                    "{domain} offers no SASL mechanism {}, and {saw}: either it does not \
                     implement SASL EXTERNAL (XEP-0178), or it did not accept {local}'s \
                     certificate (servers such as Prosody then offer no mechanism at all){}",
                    if anywhere {
                        "after TLS"
                    } else {
                        "on any stream"
                    },
                    if self_signed {
                        format!("; {local}'s certificate is self-signed, so a refusal is likely")
                    } else {
                        String::new()
                    }
                ),
                Some(format!(
                    "nothing to do if {domain} does not implement SASL EXTERNAL; if it does, \
                     {cert_fix}"
                )),
            ),
        };
        let allow = format!("[federation.domains.\"{domain}\"] auth = \"any\"");
        let (verdict, fix) = if fallback {
            detail.push_str("; falling back to dialback");
            (verdict, fix)
        } else {
            let _ = write!(
                detail,
                "; the federation policy for {domain} forbids dialback, so {local} cannot \
                 authenticate to it"
            );
            let fix = match fix {
                Some(f) => format!("{f}; or allow dialback: {allow}"),
                None => {
                    format!("{domain} can authenticate {local} only by dialback; allow it: {allow}")
                }
            };
            (Verdict::Fail, Some(fix))
        };
        let mut step = Step::new(domain, steps::SASL_EXTERNAL, verdict, detail)
            .at(addr)
            .took(took);
        step.fix = fix;
        self.push(step);
    }

    /// Where peers are sent for our domain, for a fix: `xmpp.a.test:5269 → 192.0.2.1`.
    fn where_dns_points(&mut self, local: &str) -> String {
        let Ok(resolver) = S2sResolver::new(&dns_config(self.config, false)) else {
            return "DNS unavailable".into();
        };
        let res = self
            .rt
            .block_on(resolver.resolve_srv(local, &mut rand::rng()));
        let targets = match res {
            Ok(Resolution::Targets(t)) => t,
            Ok(Resolution::Fallback) => vec![Target {
                host: local.to_owned(),
                port: 5269,
                direct_tls: false,
            }],
            Ok(Resolution::NoService) => return format!("{local} publishes SRV '.'"),
            Err(e) => return e.to_string(),
        };
        let mut parts = Vec::new();
        for t in targets.iter().take(4) {
            let addrs = match self.rt.block_on(resolver.resolve_host(&t.host)) {
                Ok(a) => a
                    .iter()
                    .map(IpAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                Err(e) => e.to_string(),
            };
            parts.push(format!("{}:{} → {addrs}", t.host, t.port));
        }
        format!("DNS sends peers to {}", parts.join("; "))
    }

    /// Who answered (or would answer) the peer's verification of our key, and what the
    /// stand-in saw.
    fn verify_note(&self, r: &RemoteCtx) -> String {
        let RemoteCtx {
            local,
            domain,
            standin,
            ..
        } = *r;
        let Some(s) = standin else {
            return format!(
                "dialback verifications are answered by whatever server {local}'s DNS names"
            );
        };
        let mut parts = Vec::new();
        if !s.listening.is_empty() {
            let addrs = join(&s.listening);
            let visits = s.visits();
            if visits.is_empty() {
                parts.push(format!(
                    "no verification request reached this check: {domain}'s verification \
                     connection never arrived at {addrs}, where this check stood in for \
                     {local}'s server (no server running there)"
                ));
            } else {
                let list = visits
                    .iter()
                    .map(Visit::story)
                    .collect::<Vec<_>>()
                    .join("; ");
                parts.push(format!(
                    "this check stood in for {local}'s server on {addrs} (no server running \
                     there): {list}"
                ));
            }
        }
        if !s.busy.is_empty() {
            parts.push(format!(
                "{} in use (fedrouter serve running?): that server answers verifications",
                join(&s.busy)
            ));
        }
        for e in &s.errors {
            parts.push(e.clone());
        }
        if parts.is_empty() {
            parts.push("this configuration has no S2S listen address".into());
        }
        parts.join("; ")
    }

    /// The fix, when what the stand-in saw explains a failed dialback (XEP-0220 §2.1.2 to
    /// §2.1.4): the peer's verification connection came but was refused, could not
    /// authenticate itself, or asked about a key we did not send. `None` when nothing came
    /// (then DNS or reachability is the question) or all went well there.
    fn standin_fix(&self, r: &RemoteCtx) -> Option<String> {
        let RemoteCtx {
            local,
            domain,
            standin,
            ..
        } = *r;
        let visits = standin?.visits();
        let seen = || visits.iter().flat_map(|v| &v.seen);
        let about_ours = seen()
            .filter_map(|s| match s {
                Seen::Asked(a) if a.about.eq_ignore_ascii_case(local) => Some(a),
                _ => None,
            })
            .next_back();
        if let Some(a) = about_ours {
            return match a.answer.as_str() {
                "valid" => None,
                "invalid" => Some(format!(
                    "{domain} asked about a key or stream id that this check's stream to it \
                     did not send (XEP-0220 §2.1.3): {domain}'s logs say more"
                )),
                _ => Some(format!(
                    "{domain}'s db:verify named a domain this configuration does not host: \
                     {domain}'s logs say more"
                )),
            };
        }
        let refused_own = seen().find_map(|s| match s {
            Seen::Verdict {
                claimed,
                result,
                checked,
            } if *result != DialbackResult::Valid => Some((claimed, *result, *checked)),
            _ => None,
        });
        if let Some((claimed, result, checked)) = refused_own {
            return Some(match (result, checked) {
                (_, false) => format!(
                    "{domain}'s verification connection claimed to be {claimed}, which this \
                     check cannot verify (it verifies only {domain}, over its own stream): \
                     start `fedrouter serve` and check again, so that the server verifies it"
                ),
                (DialbackResult::Invalid, true) => format!(
                    "{domain} authenticates its verification connection with its own dialback \
                     key before it asks about ours (XEP-0220 §2.1.2, as Prosody does), and \
                     {claimed}'s authoritative server answered type='invalid' for that key, \
                     so {domain} never asked about {local}'s: {domain}'s dialback is broken \
                     on its side (do its instances share one dialback secret?); its \
                     administrators must fix it"
                ),
                (r, true) => format!(
                    "{domain} authenticates its verification connection with its own dialback \
                     key before it asks about ours (XEP-0220 §2.1.2), and that key could not \
                     be verified ({}), so {domain} never asked about {local}'s: {domain}'s \
                     logs say more",
                    result_text(r)
                ),
            });
        }
        for v in &visits {
            let refused = v.seen.iter().find_map(|s| match s {
                Seen::Closed(CloseReason::SentError(c, t)) => Some((*c, t)),
                _ => None,
            });
            let Some((cond, text)) = refused else {
                continue;
            };
            let domains = self.config.domains.join(", ");
            let why = match (cond, v.header()) {
                (StreamCondition::HostUnknown, Some((Some(to), _))) => format!(
                    "its stream header names {to}, which this configuration does not host \
                     ({domains})"
                ),
                (StreamCondition::HostUnknown, header) => format!(
                    "its stream header names no domain (no 'to'{}), so it matches none of \
                     this configuration's domains ({domains})",
                    if header.is_some_and(|(_, version)| version.is_none()) {
                        ", as pre-RFC 3920 servers send it"
                    } else {
                        ""
                    }
                ),
                (StreamCondition::PolicyViolation, _) => format!(
                    "this configuration's [federation] policy refuses it ({text}): check \
                     allow, tls and auth for {domain}"
                ),
                _ => text.clone(),
            };
            return Some(format!(
                "this check refused {domain}'s verification connection with <{cond}/>, as \
                 `fedrouter serve` would: {why}"
            ));
        }
        (!visits.is_empty()).then(|| {
            format!(
                "{domain}'s verification connection reached this check but never asked about \
                 {local}'s key: {domain}'s logs say why"
            )
        })
    }

    /// The `tls` step: a handshake with `domain` as SNI, any certificate accepted (it is
    /// judged in the `certificate` step), presenting `present` when the server asks for a
    /// client certificate. Returns what the handshake showed, or why it failed (already
    /// reported).
    #[allow(clippy::too_many_arguments)]
    fn tls_step(
        &mut self,
        wire: &mut Wire,
        domain: &str,
        addr: SocketAddr,
        direct: bool,
        present: Option<&CertifiedDomain>,
        hard: Instant,
        side: Side,
    ) -> Result<Handshake, String> {
        let alpn: &[&[u8]] = if direct {
            &[tls::ALPN_XMPP_SERVER]
        } else {
            &[]
        };
        let t0 = Instant::now();
        let deadline = hard.min(t0 + self.config.s2s.negotiation_timeout);
        let asked = Arc::new(AtomicBool::new(false));
        let conn = tls::client_config(None, false, present, alpn)
            .map_err(|e| e.to_string())
            .and_then(|cfg| {
                let mut cfg = (*cfg).clone();
                cfg.client_auth_cert_resolver = Arc::new(NoteCertRequest {
                    inner: Arc::clone(&cfg.client_auth_cert_resolver),
                    asked: Arc::clone(&asked),
                });
                let name = tls::server_name(domain).map_err(|e| e.to_string())?;
                rustls::ClientConnection::new(Arc::new(cfg), name).map_err(|e| e.to_string())
            });
        let res = conn.and_then(|c| wire.start_tls(rustls::Connection::Client(c), deadline));
        let took = t0.elapsed();
        match res {
            Ok(()) => {
                let info = wire.tls_summary();
                self.push(
                    Step::new(
                        domain,
                        steps::TLS,
                        Verdict::Pass,
                        format!(
                            "{} handshake done: {info}",
                            if direct { "direct TLS" } else { "STARTTLS" }
                        ),
                    )
                    .at(addr)
                    .took(took),
                );
                Ok(Handshake {
                    chain: wire.peer_chain(),
                    asked_for_ours: present.map(|_| asked.load(Ordering::SeqCst)),
                })
            }
            Err(e) => {
                let fix = match (direct, side) {
                    (true, _) => format!(
                        "{addr} is published as an _xmpps-server._tcp (direct TLS, XEP-0368) \
                         target: it must start TLS at once; if it expects STARTTLS, the SRV \
                         record belongs under _xmpp-server._tcp"
                    ),
                    (false, Side::Remote) => format!(
                        "{domain}'s TLS set-up is broken or incompatible (TLS 1.2+ required, \
                         RFC 7590); its administrators must fix it, or set \
                         [federation.domains.\"{domain}\"] tls = \"disabled\" to federate \
                         without TLS"
                    ),
                    (false, Side::Own) => format!(
                        "check the certificate and key configured for {domain} \
                         ([[tls.certificate]]) and `fedrouter serve`'s log"
                    ),
                };
                self.push(
                    Step::new(
                        domain,
                        steps::TLS,
                        Verdict::Fail,
                        format!("handshake failed: {e}"),
                    )
                    .at(addr)
                    .fix(fix)
                    .took(took),
                );
                Err(e)
            }
        }
    }

    /// The `certificate` step for a remote domain's chain.
    fn remote_certificate_step(
        &mut self,
        domain: &str,
        addr: SocketAddr,
        chain: &[CertificateDer<'static>],
        policy: PeerPolicy,
    ) {
        let Some(ee) = chain.first() else {
            self.push(
                Step::new(
                    domain,
                    steps::CERTIFICATE,
                    Verdict::Fail,
                    "no certificate presented",
                )
                .at(addr),
            );
            return;
        };
        let facts = CertFacts::of(ee, domain);
        let now = SystemTime::now();
        let enforce = policy.verify_certificates;
        let bad = if enforce {
            Verdict::Fail
        } else {
            Verdict::Warn
        };
        let refused = if enforce {
            format!(
                " — fedrouter serve refuses this connection (the federation policy for \
                 {domain} verifies certificates)"
            )
        } else {
            " (tolerated: the federation policy for this domain does not verify \
             certificates)"
                .to_owned()
        };
        let or_lenient = if enforce {
            format!(
                "; or set [federation.domains.\"{domain}\"] verify_certificates = false to \
                 rely on dialback"
            )
        } else {
            String::new()
        };
        let wrong_name_fix = format!(
            "the certificate served at {addr} is for {}, not {domain}: {domain}'s SRV target \
             must present a certificate whose subjectAltName lists {domain} (a hosting \
             provider needs one for {domain}){or_lenient}",
            facts.names_text()
        );
        let step = match &self.roots {
            Some(roots) => match tls::verify_peer_certificate(
                chain,
                domain,
                roots,
                UnixTime::since_unix_epoch(since_epoch(now)),
            ) {
                Ok(()) => match facts.expires_within(now, self.opts.expiry_warning) {
                    Some(days) => Step::new(
                        domain,
                        steps::CERTIFICATE,
                        Verdict::Warn,
                        format!("valid for {domain}, but {}", facts.expiry_text(now)),
                    )
                    .fix(format!(
                        "{domain}'s administrators must renew it within {days} days"
                    )),
                    None => Step::new(
                        domain,
                        steps::CERTIFICATE,
                        Verdict::Pass,
                        format!(
                            "valid for {domain}, issued by a CA in tls.trust; names {}; {}",
                            facts.names_text(),
                            facts.expiry_text(now)
                        ),
                    ),
                },
                Err(e) => {
                    let fix = match &e {
                        CertError::WrongName { .. } => wrong_name_fix,
                        CertError::UnknownIssuer => format!(
                            "if you trust the CA that issued {domain}'s certificate, add it \
                             to tls.trust; otherwise {domain} needs a certificate from a \
                             public CA, sent with its intermediates{or_lenient}"
                        ),
                        CertError::Expired { .. } => format!(
                            "{domain}'s certificate has expired: its administrators must \
                             renew it"
                        ),
                        CertError::NotValidYet { .. } => {
                            "check this machine's clock; otherwise the certificate is not \
                             valid yet"
                                .to_owned()
                        }
                        CertError::WrongUsage => format!(
                            "{domain} needs a certificate for servers (extended key usage \
                             serverAuth)"
                        ),
                        _ => format!("{domain}'s administrators must fix its certificate"),
                    };
                    Step::new(
                        domain,
                        steps::CERTIFICATE,
                        bad,
                        format!(
                            "{e}; names {}; {}{refused}",
                            facts.names_text(),
                            facts.expiry_text(now)
                        ),
                    )
                    .fix(fix)
                }
            },
            None if !facts.covers => Step::new(
                domain,
                steps::CERTIFICATE,
                bad,
                format!(
                    "not valid for {domain}: names {}{refused}",
                    facts.names_text()
                ),
            )
            .fix(wrong_name_fix),
            None if enforce => Step::new(
                domain,
                steps::CERTIFICATE,
                Verdict::Fail,
                format!(
                    "names {domain}, but cannot be verified: no trust anchors (tls.trust is \
                     empty){refused}"
                ),
            )
            .fix(format!(
                "list CA files in tls.trust (e.g. \"/etc/ssl/certs/ca-certificates.crt\"), or \
                 set [federation.domains.\"{domain}\"] verify_certificates = false"
            )),
            None => Step::new(
                domain,
                steps::CERTIFICATE,
                Verdict::Pass,
                format!(
                    "names {domain} ({}); {}; not verified against a CA (the federation \
                     policy does not verify certificates)",
                    facts.names_text(),
                    facts.expiry_text(now)
                ),
            ),
        };
        self.push(step.at(addr));
    }

    // ----- our own domain -----

    fn own(&mut self, domain: &str) {
        self.own_certificate_step(domain);
        let Some(resolver) = self.resolver(domain, false) else {
            return;
        };
        let Some((targets, fallback)) = self.srv_step(&resolver, domain, Side::Own) else {
            return;
        };
        for t in targets.iter().take(MAX_TARGETS) {
            let addrs = self.address_step(&resolver, domain, t, fallback, Side::Own);
            for ip in addrs.into_iter().take(MAX_ADDRS) {
                let addr = SocketAddr::new(ip, t.port);
                if let Some(sock) = self.tcp_step(domain, t, addr, Side::Own) {
                    self.own_session(domain, t, addr, sock);
                }
            }
        }
    }

    /// The configured (or generated) certificate of our domain.
    fn own_certificate_step(&mut self, domain: &str) {
        let Some(cert) = self.certificate_of(domain).cloned() else {
            self.push(
                Step::new(domain, steps::CERTIFICATE, Verdict::Fail, "no certificate")
                    .fix(format!("add a [[tls.certificate]] entry for {domain}")),
            );
            return;
        };
        let source = match self
            .config
            .tls
            .certificates
            .iter()
            .find(|e| e.domain == domain)
        {
            Some(e) => e.cert.display().to_string(),
            None => format!(
                "{} (generated)",
                self.config
                    .data_dir
                    .join(crate::config::CERTS_DIR)
                    .join(format!("{domain}.crt"))
                    .display()
            ),
        };
        let Some(ee) = cert.chain().first() else {
            return;
        };
        let facts = CertFacts::of(ee, domain);
        let now = SystemTime::now();
        let renew =
            format!("renew the certificate for {domain} ({source}) and restart `fedrouter serve`");
        let step = if !facts.covers {
            Step::new(
                domain,
                steps::CERTIFICATE,
                Verdict::Fail,
                format!("{source} is for {}, not {domain}", facts.names_text()),
            )
            .fix(format!(
                "configure a certificate whose subjectAltName lists {domain}"
            ))
        } else if let Some(days) = facts.expires_within(now, self.opts.expiry_warning) {
            Step::new(
                domain,
                steps::CERTIFICATE,
                Verdict::Fail,
                format!(
                    "{source} {}: {days} days or less left (warning at {} days)",
                    facts.expiry_text(now),
                    self.opts.expiry_warning.as_secs() / 86_400
                ),
            )
            .fix(renew)
        } else if facts.self_signed {
            Step::new(
                domain,
                steps::CERTIFICATE,
                Verdict::Warn,
                format!(
                    "{source} is self-signed and {}: peers that verify certificates refuse \
                     it and can only use dialback",
                    facts.expiry_text(now)
                ),
            )
            .fix(format!(
                "configure [[tls.certificate]] for {domain} with a certificate from a public \
                 CA (e.g. Let's Encrypt)"
            ))
        } else {
            Step::new(
                domain,
                steps::CERTIFICATE,
                Verdict::Pass,
                format!(
                    "{source} covers {domain} (names {}); {}",
                    facts.names_text(),
                    facts.expiry_text(now)
                ),
            )
        };
        self.push(step);
    }

    /// Which of our listeners `addr` is, for the detail of the `stream` step.
    fn listener_note(&self, addr: SocketAddr, direct: bool) -> String {
        let l = &self.config.listen;
        let matches = |list: &[SocketAddr]| {
            list.iter().any(|a| {
                a.port() == addr.port() && (a.ip() == addr.ip() || a.ip().is_unspecified())
            })
        };
        let (own, other, own_key, other_key) = if direct {
            (&l.s2s_tls, &l.s2s, "listen.s2s_tls", "listen.s2s")
        } else {
            (&l.s2s, &l.s2s_tls, "listen.s2s", "listen.s2s_tls")
        };
        if matches(own) {
            format!("{addr} is this configuration's {own_key}")
        } else if matches(other) {
            format!(
                "{addr} is this configuration's {other_key}, but the SRV record is for the \
                 other kind"
            )
        } else {
            format!(
                "{addr} is not one of this configuration's listen addresses (a NAT or proxy in \
                 front of this server?)"
            )
        }
    }

    fn own_session(&mut self, domain: &str, target: &Target, addr: SocketAddr, sock: TcpStream) {
        let started = Instant::now();
        let hard = started + self.config.s2s.negotiation_timeout * 2;
        let mut wire = match Wire::new(sock) {
            Ok(w) => w,
            Err(e) => {
                self.push(Step::new(domain, steps::STREAM, Verdict::Fail, e.to_string()).at(addr));
                return;
            }
        };
        if target.direct_tls {
            let Ok(hs) = self.tls_step(&mut wire, domain, addr, true, None, hard, Side::Own) else {
                return;
            };
            self.served_certificate_step(domain, addr, &hs.chain);
        }
        // The placeholder domain authenticates by dialback only (it has no certificate),
        // over TLS when offered.
        let probe_policy = FederationPolicy {
            default: PeerPolicy {
                tls: TlsPolicy::Optional,
                auth: AuthPolicy::Dialback,
                verify_certificates: false,
                allow: true,
            },
            domains: Default::default(),
        };
        let mut cfg = self.s2s_config(vec![PROBE_DOMAIN.to_owned()], probe_policy);
        cfg.certificate_domains.clear();
        let now = Instant::now();
        let mut conn =
            S2sConnection::outbound(Arc::new(cfg), PROBE_DOMAIN, domain, target.direct_tls, now);
        let id = hex::encode(rand::random::<[u8; 12]>());
        let key = self.m.dialback_secret.key(PROBE_DOMAIN, domain, &id);
        let _ = conn.send_db_verify(PROBE_DOMAIN, &id, &key, now);
        let mut c = Session::new(wire, conn);
        let mut phase = Phase::Stream;
        let mut stream_reported = false;
        let mut auth_t0 = Instant::now();
        let note = self.listener_note(addr, target.direct_tls);
        while phase != Phase::Done {
            if Instant::now() >= hard {
                let what = format!(
                    "no progress within {}",
                    humantime::format_duration(hard - started)
                );
                self.own_phase_failed(domain, addr, phase, &what, None, &note);
                break;
            }
            if let Err(e) = c.turn() {
                let what = format!("connection error: {e}");
                self.own_phase_failed(domain, addr, phase, &what, None, &note);
                break;
            }
            if !stream_reported {
                if let Some(features) = c.first_features() {
                    stream_reported = true;
                    let header = c.docs[0].header.clone();
                    self.push(
                        Step::new(
                            domain,
                            steps::STREAM,
                            Verdict::Pass,
                            format!(
                                "the listener answers: {}; {note}",
                                stream_detail(header.as_ref(), &features)
                            ),
                        )
                        .at(addr)
                        .took(started.elapsed()),
                    );
                    phase = Phase::Auth;
                    auth_t0 = Instant::now();
                    if !target.direct_tls {
                        if features.child("starttls", ns::TLS).is_some() {
                            phase = Phase::StartTls;
                        } else {
                            self.push(
                                Step::new(
                                    domain,
                                    steps::TLS,
                                    Verdict::Warn,
                                    format!(
                                        "the listener does not offer STARTTLS to streams for \
                                         {domain}: federation with it is not encrypted"
                                    ),
                                )
                                .at(addr)
                                .fix(
                                    "set [federation.default] tls = \"optional\" (or \
                                     \"required\") and give the domain a certificate",
                                ),
                            );
                        }
                    }
                }
            }
            while let Some(ev) = c.conn.poll_event() {
                if phase == Phase::Done {
                    continue;
                }
                match ev {
                    Event::StartTls(TlsRole::Client { .. }) => {
                        let _ = c.flush();
                        match self.tls_step(&mut c.wire, domain, addr, false, None, hard, Side::Own)
                        {
                            Ok(hs) => {
                                self.served_certificate_step(domain, addr, &hs.chain);
                                c.restart_observer();
                                c.conn.handle_tls_established(
                                    hs.chain,
                                    Instant::now(),
                                    UnixTime::now(),
                                );
                                phase = Phase::Auth;
                                auth_t0 = Instant::now();
                            }
                            Err(reason) => {
                                c.conn.handle_tls_failed(&reason);
                                phase = Phase::Done;
                            }
                        }
                    }
                    Event::VerifyAnswered { result, .. } => {
                        self.authoritative_step(domain, addr, result, auth_t0.elapsed());
                        phase = Phase::Done;
                    }
                    Event::Closed(CloseReason::ReceivedError(
                        StreamCondition::PolicyViolation,
                        _,
                    )) if phase == Phase::Stream && c.docs[0].header.is_some() => {
                        // An allow-list deployment refuses the placeholder domain.
                        self.push(
                            Step::new(
                                domain,
                                steps::STREAM,
                                Verdict::Warn,
                                format!(
                                    "the listener answers, but its federation policy refuses \
                                     streams from {PROBE_DOMAIN} (policy-violation), so TLS \
                                     and dialback were not checked; {note}"
                                ),
                            )
                            .at(addr)
                            .took(started.elapsed()),
                        );
                        phase = Phase::Done;
                    }
                    Event::Closed(reason) => {
                        let opening = phase == Phase::Stream;
                        let (what, fix) =
                            close_explained(&reason, domain, domain, Side::Own, opening);
                        self.own_phase_failed(domain, addr, phase, &what, fix, &note);
                        phase = Phase::Done;
                    }
                    // The placeholder's own dialback cannot succeed; not our business.
                    _ => {}
                }
            }
            if phase != Phase::Done && c.eof {
                let what = "the listener closed the TCP connection without a stream error";
                self.own_phase_failed(domain, addr, phase, what, None, &note);
                phase = Phase::Done;
            }
        }
        c.finish();
    }

    fn own_phase_failed(
        &mut self,
        domain: &str,
        addr: SocketAddr,
        phase: Phase,
        what: &str,
        fix: Option<String>,
        note: &str,
    ) {
        let name = match phase {
            Phase::Stream => steps::STREAM,
            Phase::StartTls => steps::TLS,
            Phase::Auth => steps::AUTHORITATIVE,
            Phase::Done => return,
        };
        let fix = fix.unwrap_or_else(|| match phase {
            Phase::Stream => format!(
                "{note}; the server there does not answer an XMPP server-to-server stream \
                 for {domain}: is it fedrouter (and the right port: _xmpp-server._tcp for \
                 STARTTLS, listen.s2s; _xmpps-server._tcp for direct TLS, listen.s2s_tls)?"
            ),
            Phase::StartTls => format!("see `fedrouter serve`'s log around the STARTTLS of {addr}"),
            _ => format!(
                "the server at {addr} did not answer a dialback verification for {domain}; \
                 see its log"
            ),
        });
        self.push(
            Step::new(domain, name, Verdict::Fail, format!("{what} ({note})"))
                .at(addr)
                .fix(fix),
        );
    }

    fn authoritative_step(
        &mut self,
        domain: &str,
        addr: SocketAddr,
        result: DialbackResult,
        took: Duration,
    ) {
        let step = match result {
            DialbackResult::Valid => Step::new(
                domain,
                steps::AUTHORITATIVE,
                Verdict::Pass,
                format!(
                    "the server at {addr} confirms dialback keys made with this \
                     configuration's secret (db:verify type='valid'): it is {domain}'s \
                     authoritative server"
                ),
            ),
            DialbackResult::Invalid => Step::new(
                domain,
                steps::AUTHORITATIVE,
                Verdict::Fail,
                format!(
                    "the server at {addr} answers db:verify for {domain} with type='invalid': \
                     it does not share this configuration's dialback secret, so peers' \
                     verifications of our keys fail"
                ),
            )
            .fix(format!(
                "another server answers for {domain}'s dialback: check that {domain}'s SRV/A \
                 records point to this server and that instances share `s2s.dialback_secret` \
                 (the same configuration, or the same data_dir/dialback.secret)"
            )),
            DialbackResult::Error(DialbackErrorCondition::ItemNotFound) => Step::new(
                domain,
                steps::AUTHORITATIVE,
                Verdict::Fail,
                format!("the server at {addr} does not host {domain} (item-not-found)"),
            )
            .fix(format!(
                "add {domain} to `domains` of the server at {addr}, or point {domain}'s SRV \
                 record at this server"
            )),
            DialbackResult::Error(c) => Step::new(
                domain,
                steps::AUTHORITATIVE,
                Verdict::Fail,
                format!("the server at {addr} answered db:verify with an error ({c})"),
            )
            .fix("see the log of the server there"),
        };
        self.push(step.at(addr).took(took));
    }

    /// Our listener's served certificate: it covers the domain and is the configured one.
    fn served_certificate_step(
        &mut self,
        domain: &str,
        addr: SocketAddr,
        chain: &[CertificateDer<'static>],
    ) {
        let Some(ee) = chain.first() else {
            self.push(
                Step::new(
                    domain,
                    steps::CERTIFICATE,
                    Verdict::Fail,
                    "no certificate served",
                )
                .at(addr),
            );
            return;
        };
        let facts = CertFacts::of(ee, domain);
        let now = SystemTime::now();
        let configured = self
            .certificate_of(domain)
            .and_then(|c| c.chain().first().cloned());
        let step = if !facts.covers {
            Step::new(
                domain,
                steps::CERTIFICATE,
                Verdict::Fail,
                format!(
                    "the listener serves a certificate for {}, not {domain}",
                    facts.names_text()
                ),
            )
            .fix(format!(
                "{}; if it is this server, restart `fedrouter serve` after changing \
                 [[tls.certificate]]",
                self.listener_note(addr, false)
            ))
        } else if configured.as_ref() == Some(ee) {
            Step::new(
                domain,
                steps::CERTIFICATE,
                Verdict::Pass,
                "the listener serves the configured certificate",
            )
        } else if let Some(days) = facts.expires_within(now, self.opts.expiry_warning) {
            Step::new(
                domain,
                steps::CERTIFICATE,
                Verdict::Fail,
                format!(
                    "the listener serves another certificate than the configured one, and it \
                     {} ({days} days or less)",
                    facts.expiry_text(now)
                ),
            )
            .fix("restart `fedrouter serve` to load the renewed certificate")
        } else {
            Step::new(
                domain,
                steps::CERTIFICATE,
                Verdict::Warn,
                format!(
                    "the listener serves a certificate for {domain} other than the configured \
                     one ({})",
                    facts.expiry_text(now)
                ),
            )
            .fix("restart `fedrouter serve` to load the configured certificate")
        };
        self.push(step.at(addr));
    }
}

fn join(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn dns_fix(e: &DnsError, config: &Config) -> String {
    let servers = if config.dns.nameservers.is_empty() {
        "the name servers of /etc/resolv.conf".to_owned()
    } else {
        format!("[dns] nameservers ({})", join(&config.dns.nameservers))
    };
    match e {
        DnsError::Timeout { .. } => format!(
            "no answer from {servers} within the timeout: check that they are reachable \
             (UDP and TCP port 53) and answer"
        ),
        _ => format!("{servers} answered with an error: check them, and the domain's zone"),
    }
}

/// Explains why a stream closed: what, and the fix when the condition says it.
/// `opening`: before the peer's features, i.e. a stream error then refuses our stream
/// (RFC 6120 §4.9.1.2).
fn close_explained(
    reason: &CloseReason,
    domain: &str,
    local: &str,
    side: Side,
    opening: bool,
) -> (String, Option<String>) {
    use StreamCondition as C;
    match reason {
        CloseReason::ReceivedError(cond, text) => {
            let what = format!(
                "the peer {} with <{cond}/>{}",
                if opening {
                    "refused our stream"
                } else {
                    "closed the stream"
                },
                text.as_deref()
                    .map(|t| format!(": {t}"))
                    .unwrap_or_default()
            );
            let fix = match (cond, side) {
                (C::HostUnknown, Side::Remote) => Some(format!(
                    "the server there does not host {domain}: {domain}'s SRV record points at \
                     the wrong server, or its configuration lacks the domain"
                )),
                (C::HostUnknown, Side::Own) => Some(format!(
                    "the server there does not host {domain}: add it to `domains`, or point \
                     the SRV record at the server that does"
                )),
                (C::PolicyViolation, _) => Some(format!(
                    "the server's policy refuses this stream (TLS required, or {local} not \
                     allowed): see its log or ask its administrators"
                )),
                (C::RemoteConnectionFailed, _) => Some(format!(
                    "it could not connect back to {local}'s authoritative server: check \
                     {local}'s SRV/A records and that its S2S port is reachable"
                )),
                (C::SeeOtherHost, _) => Some(
                    "the server redirects elsewhere (see-other-host): update the SRV record"
                        .to_owned(),
                ),
                // RFC 6120 §4.9.3.12: it will not authenticate us. Prosody with
                // s2s_secure_auth, for one, says so when it does not trust our certificate
                // and accepts no dialback without one.
                (C::NotAuthorized, Side::Remote)
                    if text
                        .as_deref()
                        .is_some_and(|t| t.to_ascii_lowercase().contains("certificate")) =>
                {
                    Some(format!(
                        "{domain} requires a certificate it trusts from {local} and accepts no \
                         dialback without one: configure [[tls.certificate]] for {local} with \
                         a certificate from a public CA whose subjectAltName lists {local}, \
                         served with its intermediates"
                    ))
                }
                // The peer said why; DNS or reachability advice would be a guess.
                (_, Side::Remote) => Some(format!(
                    "{domain} ended the stream with <{cond}/> for the reason it gives: its \
                     administrators (or its logs) can say more"
                )),
                _ => None,
            };
            (what, fix)
        }
        CloseReason::SentError(cond, text) => {
            let fix = match cond {
                C::ConnectionTimeout => Some(format!(
                    "the peer did not answer in time (s2s.negotiation_timeout): is the port \
                     right for {domain} (STARTTLS on _xmpp-server, direct TLS on \
                     _xmpps-server)? Its logs may say more"
                )),
                C::PolicyViolation => Some(format!(
                    "this configuration's [federation] policy for {domain} and what it offers \
                     disagree: adjust tls/auth for it"
                )),
                _ => None,
            };
            (
                format!("fedrouter closed the stream with <{cond}/>: {text}"),
                fix,
            )
        }
        CloseReason::PeerClosed => ("the peer closed the stream without an error".into(), None),
        CloseReason::TlsFailed(r) => (format!("TLS failed: {r}"), None),
        CloseReason::CloseTimeout => ("the stream close timed out".into(), None),
        CloseReason::Local => ("the stream was closed".into(), None),
    }
}

/// `from='b.test' id='…' version='1.0'; features: starttls, dialback`.
fn stream_detail(header: Option<&StreamHeader>, features: &Node) -> String {
    let mut d = String::from("header");
    if let Some(h) = header {
        if let Some(f) = &h.from {
            let _ = write!(d, " from='{f}'");
        }
        if let Some(id) = &h.id {
            let _ = write!(d, " id='{id}'");
        }
        match &h.version {
            Some(v) => {
                let _ = write!(d, " version='{v}'");
            }
            None => d.push_str(" (no version: pre-RFC 3920 server)"),
        }
        if h.declares_dialback() {
            d.push_str(" xmlns:db");
        }
    }
    let _ = write!(d, "; features: {}", features_summary(features));
    d
}

/// The stream features, briefly: `starttls (required), sasl EXTERNAL, dialback`.
fn features_summary(features: &Node) -> String {
    let list: Vec<String> = features
        .children
        .iter()
        .map(|c| match (c.name.as_str(), c.ns.as_str()) {
            ("starttls", ns::TLS) => {
                if c.children.iter().any(|r| r.name == "required") {
                    "starttls (required)".to_owned()
                } else {
                    "starttls".to_owned()
                }
            }
            ("mechanisms", ns::SASL) => {
                let mechs: Vec<&str> = c
                    .children
                    .iter()
                    .filter(|m| m.name == "mechanism")
                    .map(|m| m.text.trim())
                    .collect();
                format!("sasl {}", mechs.join(" "))
            }
            ("dialback", ns::DIALBACK_FEATURE) => "dialback".to_owned(),
            (name, _) => name.to_owned(),
        })
        .collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

// ---------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------

/// What a check needs to know about an end-entity certificate.
struct CertFacts {
    names: Vec<String>,
    covers: bool,
    self_signed: bool,
    /// notAfter, seconds since the epoch.
    not_after: Option<u64>,
}

impl CertFacts {
    fn of(ee: &CertificateDer<'_>, domain: &str) -> CertFacts {
        let parsed = webpki::EndEntityCert::try_from(ee).ok();
        let names = parsed
            .as_ref()
            .map(|c| c.valid_dns_names().map(str::to_owned).collect())
            .unwrap_or_default();
        let covers = match (&parsed, tls::server_name(domain)) {
            (Some(c), Ok(name)) => c.verify_is_valid_for_subject_name(&name).is_ok(),
            _ => false,
        };
        let self_signed = parsed.as_ref().is_some_and(|c| c.issuer() == c.subject());
        CertFacts {
            names,
            covers,
            self_signed,
            not_after: not_after(ee),
        }
    }

    fn names_text(&self) -> String {
        if self.names.is_empty() {
            "no DNS name".into()
        } else {
            self.names.join(", ")
        }
    }

    /// Days left (rounded down) when the certificate expires within `window` of `now`
    /// (or has expired: 0).
    fn expires_within(&self, now: SystemTime, window: Duration) -> Option<u64> {
        let end = self.not_after?;
        let now = since_epoch(now).as_secs();
        (end < now.saturating_add(window.as_secs())).then(|| end.saturating_sub(now) / 86_400)
    }

    fn expiry_text(&self, now: SystemTime) -> String {
        let Some(end) = self.not_after else {
            return "expiry unknown".into();
        };
        let now = since_epoch(now).as_secs();
        if end <= now {
            format!("expired on {}", rfc3339(end))
        } else {
            format!(
                "expires on {} (in {} days)",
                rfc3339(end),
                (end - now) / 86_400
            )
        }
    }
}

fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// The notAfter of an X.509 certificate (RFC 5280 §4.1.2.5), in seconds since the epoch;
/// `None` when the DER does not parse as a certificate.
fn not_after(der: &[u8]) -> Option<u64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    u64::try_from(cert.validity().not_after.timestamp()).ok()
}

/// Seconds since the epoch as an RFC 3339 UTC date and time (`2026-12-06T12:00:00Z`).
fn rfc3339(secs: u64) -> String {
    // humantime formats up to 9999-12-31T23:59:59Z, which is also where X.509's
    // GeneralizedTime ends (RFC 5280 §4.1.2.5.2), so the clamp never shows.
    const LAST: u64 = 253_402_300_799;
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs.min(LAST))).to_string()
}

// ---------------------------------------------------------------------------------------
// Blocking transport
// ---------------------------------------------------------------------------------------

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

fn flush_tls(tls: &mut rustls::Connection, sock: &mut TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        tls.write_tls(sock)?;
    }
    Ok(())
}

/// Decrypted bytes already there: `Some(0)` at the end of the stream, `None` for none yet.
fn plaintext(tls: &mut rustls::Connection, buf: &mut [u8]) -> io::Result<Option<usize>> {
    match tls.reader().read(buf) {
        Ok(n) => Ok(Some(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(Some(0)),
        Err(e) => Err(e),
    }
}

/// What a TLS handshake of ours showed.
struct Handshake {
    /// The server's certificate chain.
    chain: Vec<CertificateDer<'static>>,
    /// With a certificate of ours to present: whether the server asked for one (a
    /// CertificateRequest, RFC 8446 §4.3.2, RFC 5246 §7.4.4), i.e. whether it saw ours;
    /// a server that does not ask cannot offer SASL EXTERNAL (XEP-0178 §3).
    asked_for_ours: Option<bool>,
}

/// Presents what `inner` presents, noting whether the server asked for a client
/// certificate at all (rustls asks the resolver only then).
#[derive(Debug)]
struct NoteCertRequest {
    inner: Arc<dyn ResolvesClientCert>,
    asked: Arc<AtomicBool>,
}

impl ResolvesClientCert for NoteCertRequest {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.asked.store(true, Ordering::SeqCst);
        self.inner.resolve(root_hint_subjects, sigschemes)
    }

    fn has_certs(&self) -> bool {
        self.inner.has_certs()
    }
}

/// A blocking socket, plain or TLS; a read waits at most [`READ_SLICE`].
struct Wire {
    sock: TcpStream,
    tls: Option<rustls::Connection>,
}

impl Wire {
    fn new(sock: TcpStream) -> io::Result<Wire> {
        sock.set_nonblocking(false)?;
        sock.set_read_timeout(Some(READ_SLICE))?;
        sock.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let _ = sock.set_nodelay(true);
        Ok(Wire { sock, tls: None })
    }

    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.tls {
            None => self.sock.write_all(data),
            Some(tls) => {
                tls.writer().write_all(data)?;
                flush_tls(tls, &mut self.sock)
            }
        }
    }

    /// Some plaintext: `Some(0)` when the peer closed, `None` when nothing came in one
    /// read slice.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let Some(tls) = &mut self.tls else {
            return match self.sock.read(buf) {
                Ok(n) => Ok(Some(n)),
                Err(e) if would_block(&e) => Ok(None),
                Err(e) => Err(e),
            };
        };
        if let Some(n) = plaintext(tls, buf)? {
            return Ok(Some(n));
        }
        match tls.read_tls(&mut self.sock) {
            Ok(0) => return Ok(Some(0)),
            Ok(_) => {}
            Err(e) if would_block(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
        if let Err(e) = tls.process_new_packets() {
            let _ = flush_tls(tls, &mut self.sock);
            return Err(io::Error::other(e));
        }
        flush_tls(tls, &mut self.sock)?;
        plaintext(tls, buf)
    }

    /// Runs a TLS handshake on the socket (either role), until `deadline`.
    fn start_tls(&mut self, conn: rustls::Connection, deadline: Instant) -> Result<(), String> {
        let tls = self.tls.insert(conn);
        loop {
            flush_tls(tls, &mut self.sock).map_err(|e| e.to_string())?;
            if !tls.is_handshaking() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err("the handshake did not complete in time".into());
            }
            match tls.read_tls(&mut self.sock) {
                Ok(0) => return Err("the peer closed the connection during the handshake".into()),
                Ok(_) => {
                    if let Err(e) = tls.process_new_packets() {
                        let _ = flush_tls(tls, &mut self.sock);
                        return Err(e.to_string());
                    }
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    fn peer_chain(&self) -> Vec<CertificateDer<'static>> {
        self.tls
            .as_ref()
            .and_then(|t| t.peer_certificates())
            .map(<[_]>::to_vec)
            .unwrap_or_default()
    }

    /// `TLSv1_3, TLS13_AES_256_GCM_SHA384, ALPN xmpp-server`.
    fn tls_summary(&self) -> String {
        let Some(t) = &self.tls else {
            return "no TLS".into();
        };
        let mut s = match t.protocol_version() {
            Some(v) => format!("{v:?}"),
            None => "unknown version".into(),
        };
        if let Some(cs) = t.negotiated_cipher_suite() {
            let _ = write!(s, ", {:?}", cs.suite());
        }
        if let Some(alpn) = t.alpn_protocol() {
            let _ = write!(s, ", ALPN {}", String::from_utf8_lossy(alpn));
        }
        s
    }

    fn shutdown(&mut self) {
        if let Some(t) = &mut self.tls {
            t.send_close_notify();
            let _ = flush_tls(t, &mut self.sock);
        }
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

/// One stream document as the peer sent it (a new one after each restart).
#[derive(Debug, Default)]
struct Doc {
    header: Option<StreamHeader>,
    features: Option<Node>,
}

/// An [`S2sConnection`] of either direction over a [`Wire`], with a second framer that
/// keeps the peer's headers and features for the report: the one pump of this module,
/// for the streams `check` opens and for the stand-in's inbound ones.
struct Session {
    wire: Wire,
    conn: S2sConnection,
    observer: Framer,
    docs: Vec<Doc>,
    eof: bool,
    buf: Vec<u8>,
    /// `db:result` answers (with a `type`, XEP-0220 §2.1.4) the peer sent: tells its
    /// `remote-server-timeout` answer from our own deadline, which the core reports alike.
    result_answers: usize,
    /// Sees every byte before it is sent (the stand-in records its `db:verify` answers
    /// there, before the peer can act on them).
    before_send: Option<BeforeSend>,
}

/// See [`Session::before_send`].
type BeforeSend = Box<dyn FnMut(&[u8]) + Send>;

impl Session {
    fn new(wire: Wire, conn: S2sConnection) -> Session {
        Session {
            wire,
            conn,
            observer: Framer::new(Limits::default()),
            docs: vec![Doc::default()],
            eof: false,
            buf: vec![0; 16 * 1024],
            result_answers: 0,
            before_send: None,
        }
    }

    /// The features of the first stream document; none (empty) for a pre-1.0 peer, whose
    /// header has no version and which sends no features (RFC 6120 §4.7.5).
    fn first_features(&self) -> Option<Node> {
        let doc = &self.docs[0];
        doc.features.clone().or_else(|| {
            doc.header
                .as_ref()
                .is_some_and(|h| h.version.is_none())
                .then(Node::default)
        })
    }

    /// Whether the current stream document's features arrived (or the peer is pre-1.0,
    /// RFC 6120 §4.7.5): negotiation is over and authentication under way.
    fn negotiated(&self) -> bool {
        self.docs.last().is_some_and(|d| {
            d.features.is_some() || d.header.as_ref().is_some_and(|h| h.version.is_none())
        })
    }

    /// After TLS: the peer starts a new document.
    fn restart_observer(&mut self) {
        self.observer = Framer::new(Limits::default());
        self.docs.push(Doc::default());
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut out = Vec::new();
        self.conn.poll_transmit(&mut out);
        if out.is_empty() {
            return Ok(());
        }
        if let Some(see) = &mut self.before_send {
            see(&out);
        }
        self.wire.send(&out)
    }

    /// Sends what is due, reads for at most one read slice, feeds both framers, and
    /// drives the connection's deadlines. What that makes the connection send goes out at
    /// the next turn (or [`Session::finish`]), after the caller has seen its events.
    fn turn(&mut self) -> io::Result<()> {
        self.flush()?;
        if !self.eof {
            match self.wire.recv(&mut self.buf)? {
                Some(0) => self.eof = true,
                Some(n) => {
                    let now = Instant::now();
                    self.conn.handle_input(&self.buf[..n], now);
                    self.observer.feed(&self.buf[..n]);
                    let doc = self.docs.last_mut().expect("one document at least");
                    // Bounded by the bytes fed.
                    while let Ok(Some(frame)) = self.observer.next_frame() {
                        match frame {
                            Frame::Header(h) => doc.header = Some(h),
                            Frame::Element(el)
                                if el.name() == "features"
                                    && *el.namespace() == Namespace::Streams =>
                            {
                                doc.features = Some(Node::parse(&el).unwrap_or_default());
                            }
                            Frame::Element(el)
                                if el.is("result", &Namespace::Dialback)
                                    && el.type_().is_some() =>
                            {
                                self.result_answers += 1;
                            }
                            _ => {}
                        }
                    }
                }
                None => {}
            }
        }
        self.conn.handle_timeout(Instant::now());
        Ok(())
    }

    /// Closes our stream (RFC 6120 §4.4) and the socket, without waiting.
    fn finish(mut self) {
        if !self.conn.is_closed() {
            self.conn.close(None, Instant::now());
        }
        let _ = self.flush();
        self.wire.shutdown();
    }
}

// ---------------------------------------------------------------------------------------
// The dialback stand-in
// ---------------------------------------------------------------------------------------

/// One `db:verify` the stand-in answered (XEP-0220 §2.1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answered {
    /// The Receiving Server that asked (`from` of the request).
    asked_by: String,
    /// Our domain it asked about (`to` of the request).
    about: String,
    /// `valid`, `invalid` or `error`.
    answer: String,
}

/// What the stand-in saw on one connection, in order.
#[derive(Debug, Clone)]
struct Visit {
    /// Where it came from.
    peer: SocketAddr,
    /// On a direct TLS listener (XEP-0368).
    direct: bool,
    seen: Vec<Seen>,
}

/// One thing the stand-in saw or did on a connection.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    /// The peer's first stream header (RFC 6120 §4.7).
    Header {
        to: Option<String>,
        from: Option<String>,
        version: Option<String>,
    },
    /// STARTTLS completed (RFC 6120 §5.4.3.3).
    Tls,
    /// The peer's own `db:result` (XEP-0220 §2.1.2): it authenticates its verification
    /// connection as `claimed` before it asks anything (Prosody does).
    Claim { claimed: String },
    /// Our answer to that `db:result` (§2.1.4); `checked`: found by asking the claimed
    /// domain's authoritative server over the checker's stream (§2.1.3).
    Verdict {
        claimed: String,
        result: DialbackResult,
        checked: bool,
    },
    /// A `db:verify` we answered as our domain's authoritative server (§2.1.3).
    Asked(Answered),
    /// The stream ended (RFC 6120 §4.4, §4.9).
    Closed(CloseReason),
    /// The connection ended without a stream close, or failed.
    Dropped(String),
}

impl Visit {
    /// `a connection from 192.0.2.7:40112: stream header to='a.test' from='b.test'
    /// version='1.0', b.test authenticated it with its own db:result ...`.
    fn story(&self) -> String {
        let mut parts = Vec::new();
        for s in &self.seen {
            parts.push(match s {
                Seen::Header { to, from, version } => header_text(to, from, version),
                Seen::Tls => "STARTTLS".to_owned(),
                Seen::Claim { claimed } => format!(
                    "{claimed} first authenticated that connection with its own db:result \
                     (dialback on the verification connection, XEP-0220 §2.1.2)"
                ),
                Seen::Verdict {
                    claimed,
                    result,
                    checked: true,
                } => format!(
                    "this check verified that key with {claimed}'s authoritative server over \
                     its own stream to it (db:verify, XEP-0220 §2.1.3) and answered {}",
                    result_text(*result)
                ),
                Seen::Verdict {
                    claimed, result, ..
                } => format!(
                    "this check answered {} ({claimed} is not the domain checked, so its key \
                     could not be verified)",
                    result_text(*result)
                ),
                Seen::Asked(a) => format!("{} asked about {}: {}", a.asked_by, a.about, a.answer),
                Seen::Closed(r) => match r {
                    CloseReason::SentError(c, t) => {
                        format!("this check closed it with <{c}/> ({t})")
                    }
                    CloseReason::ReceivedError(c, t) => format!(
                        "the peer closed it with <{c}/>{}",
                        t.as_deref().map(|t| format!(": {t}")).unwrap_or_default()
                    ),
                    CloseReason::PeerClosed => "the peer closed it".to_owned(),
                    CloseReason::TlsFailed(r) => format!("TLS failed: {r}"),
                    CloseReason::Local => "this check closed it".to_owned(),
                    CloseReason::CloseTimeout => {
                        "this check closed it (the peer did not close its side)".to_owned()
                    }
                },
                Seen::Dropped(why) => why.clone(),
            });
        }
        format!(
            "a connection from {}{}: {}",
            self.peer,
            if self.direct { " (direct TLS)" } else { "" },
            if parts.is_empty() {
                "nothing received".to_owned()
            } else {
                parts.join(", ")
            }
        )
    }

    fn header(&self) -> Option<(&Option<String>, &Option<String>)> {
        self.seen.iter().find_map(|s| match s {
            Seen::Header { to, version, .. } => Some((to, version)),
            _ => None,
        })
    }
}

/// `stream header to='a.test' from='b.test' version='1.0'`, or what it lacks.
fn header_text(to: &Option<String>, from: &Option<String>, version: &Option<String>) -> String {
    let mut t = String::from("stream header");
    let mut missing = Vec::new();
    for (name, value) in [("to", to), ("from", from), ("version", version)] {
        match value {
            Some(v) => {
                let _ = write!(t, " {name}='{v}'");
            }
            None => missing.push(name),
        }
    }
    if !missing.is_empty() {
        let _ = write!(t, " (no {}", missing.join(", no "));
        if version.is_none() {
            t.push_str(": a pre-RFC 3920 server");
        }
        t.push(')');
    }
    t
}

fn result_text(r: DialbackResult) -> String {
    match r {
        DialbackResult::Error(c) => format!("type='error' ({c})"),
        r => format!("type='{}'", r.type_str()),
    }
}

/// A `db:result` the peer sent on its verification connection (XEP-0220 §2.1.2), for the
/// checker to verify with the peer's authoritative server over its own stream to the
/// peer (§2.1.3); the verdict comes back on `reply`.
struct VerifyRequest {
    local: String,
    stream_id: String,
    key: String,
    reply: mpsc::Sender<DialbackResult>,
}

/// What the stand-in's connections saw, shared with the checker.
#[derive(Default)]
struct Journal(Mutex<Vec<Visit>>);

impl Journal {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Visit>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new connection; its index.
    fn open(&self, peer: SocketAddr, direct: bool) -> usize {
        let mut v = self.lock();
        v.push(Visit {
            peer,
            direct,
            seen: Vec::new(),
        });
        v.len() - 1
    }

    fn note(&self, visit: usize, seen: Seen) {
        if let Some(v) = self.lock().get_mut(visit) {
            v.seen.push(seen);
        }
    }
}

/// Listens on this configuration's free S2S addresses while a remote check runs and is
/// our domains' server for that moment (XEP-0220 §1.3 roles), with STARTTLS (or direct
/// TLS) and our certificates, driven by the same core as `fedrouter serve`:
///
/// - as the Authoritative Server it answers `db:verify` with our dialback secret (the core
///   does, §2.1.3);
/// - as the Receiving Server it verifies the peer's own `db:result` on that connection
///   (§2.1.2; Prosody authenticates its verification connection this way before it sends
///   `db:verify`) as the runtime does, by the XEP-0220 route: the key goes back to the
///   peer's authoritative server in a `db:verify`, over the stream the checker has open to
///   that domain ([`VerifyRequest`]). A claim for any other domain is answered
///   `remote-connection-failed` (the check opens no further streams).
///
/// Everything it sees is kept in a [`Journal`] for the report.
struct StandIn {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    journal: Arc<Journal>,
    requests: mpsc::Receiver<VerifyRequest>,
    listening: Vec<SocketAddr>,
    busy: Vec<SocketAddr>,
    errors: Vec<String>,
}

/// What one stand-in connection shares.
struct StandInShared {
    cfg: Arc<S2sConfig>,
    starttls: Arc<rustls::ServerConfig>,
    /// The domain being checked: the only one whose claims can be verified.
    checked: String,
    stop: Arc<AtomicBool>,
    journal: Arc<Journal>,
    requests: mpsc::Sender<VerifyRequest>,
    negotiation: Duration,
}

impl StandIn {
    fn start(config: &Config, m: &Materialized, cfg: Arc<S2sConfig>, checked: &str) -> StandIn {
        let (tx, rx) = mpsc::channel();
        let mut me = StandIn {
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
            journal: Arc::new(Journal::default()),
            requests: rx,
            listening: Vec::new(),
            busy: Vec::new(),
            errors: Vec::new(),
        };
        let mut listeners = Vec::new();
        let sets = [(&config.listen.s2s, false), (&config.listen.s2s_tls, true)];
        for (addrs, direct) in sets {
            for &addr in addrs {
                if addr.port() == 0 || me.listening.contains(&addr) || me.busy.contains(&addr) {
                    continue;
                }
                // Without SO_REUSEPORT: a running server's listener makes this fail.
                match TcpListener::bind(addr).and_then(|l| l.set_nonblocking(true).map(|()| l)) {
                    Ok(l) => {
                        me.listening.push(addr);
                        listeners.push((l, direct));
                    }
                    Err(e) if e.kind() == io::ErrorKind::AddrInUse => me.busy.push(addr),
                    Err(e) => me.errors.push(format!("cannot listen on {addr}: {e}")),
                }
            }
        }
        if listeners.is_empty() {
            return me;
        }
        let mut resolver = DomainCertResolver::new();
        for c in &m.certificates {
            if let Err(e) = resolver.add(c) {
                me.errors.push(e.to_string());
            }
        }
        resolver.set_default(&config.domains[0]);
        let resolver = Arc::new(resolver);
        let direct = tls::server_config(
            Arc::clone(&resolver),
            ClientAuth::Request,
            &[tls::ALPN_XMPP_SERVER],
        );
        let shared = Arc::new(StandInShared {
            cfg,
            starttls: tls::server_config(resolver, ClientAuth::Request, &[]),
            checked: checked.to_owned(),
            stop: Arc::clone(&me.stop),
            journal: Arc::clone(&me.journal),
            requests: tx,
            negotiation: config.s2s.negotiation_timeout,
        });
        let spawned = std::thread::Builder::new()
            .name("check-standin".into())
            .spawn(move || {
                let mut conns: Vec<JoinHandle<()>> = Vec::new();
                // Bounded: ends when `stop` is set, or after 10 minutes as a backstop.
                let end = Instant::now() + Duration::from_secs(600);
                while !shared.stop.load(Ordering::SeqCst) && Instant::now() < end {
                    let mut idle = true;
                    for (l, is_direct) in &listeners {
                        let Ok((sock, peer)) = l.accept() else {
                            continue;
                        };
                        idle = false;
                        conns.retain(|t| !t.is_finished());
                        if conns.len() >= MAX_STANDIN_CONNS {
                            continue;
                        }
                        let tls_cfg = is_direct.then(|| Arc::clone(&direct));
                        let shared = Arc::clone(&shared);
                        if let Ok(t) = std::thread::Builder::new()
                            .name("check-standin-conn".into())
                            .spawn(move || serve_verify(sock, peer, tls_cfg, &shared))
                        {
                            conns.push(t);
                        }
                    }
                    if idle {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                for t in conns {
                    let _ = t.join();
                }
            });
        match spawned {
            Ok(t) => me.thread = Some(t),
            Err(e) => me.errors.push(format!("cannot start a thread: {e}")),
        }
        me
    }

    fn visits(&self) -> Vec<Visit> {
        self.journal.lock().clone()
    }

    fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.halt();
    }
}

/// One inbound connection to the stand-in, driven by an inbound [`S2sConnection`] over a
/// [`Session`]; the peer's `db:result`s go to the checker ([`VerifyRequest`]) and their
/// verdicts back to the core, as the runtime's `VerifyNeeded` handling does.
fn serve_verify(
    sock: TcpStream,
    peer: SocketAddr,
    direct: Option<Arc<rustls::ServerConfig>>,
    sh: &StandInShared,
) {
    let visit = sh.journal.open(peer, direct.is_some());
    let Ok(mut wire) = Wire::new(sock) else {
        return;
    };
    let end = Instant::now() + sh.negotiation * 2;
    // A handshake does not look at `stop`: keep it short.
    let handshake_end = (Instant::now() + Duration::from_secs(10)).min(end);
    let mut chain = None;
    if let Some(tls_cfg) = direct {
        let res = rustls::ServerConnection::new(tls_cfg)
            .map_err(|e| e.to_string())
            .and_then(|c| wire.start_tls(rustls::Connection::Server(c), handshake_end));
        if let Err(e) = res {
            sh.journal
                .note(visit, Seen::Dropped(format!("TLS failed: {e}")));
            return;
        }
        chain = Some((wire.peer_chain(), UnixTime::now()));
    }
    let conn = S2sConnection::inbound(Arc::clone(&sh.cfg), rand::random(), chain, Instant::now());
    let mut s = Session::new(wire, conn);
    let journal = Arc::clone(&sh.journal);
    s.before_send = Some(Box::new(move |out: &[u8]| {
        for a in verify_answers(out) {
            journal.note(visit, Seen::Asked(a));
        }
    }));
    let mut header_noted = false;
    // (local, claimed domain, verdict to come)
    let mut waiting: Vec<(String, String, mpsc::Receiver<DialbackResult>)> = Vec::new();
    while !sh.stop.load(Ordering::SeqCst) && Instant::now() < end && !s.conn.is_closed() {
        if let Err(e) = s.turn() {
            sh.journal
                .note(visit, Seen::Dropped(format!("connection error: {e}")));
            break;
        }
        if !header_noted {
            if let Some(h) = &s.docs[0].header {
                header_noted = true;
                let (to, from, version) = (h.to.clone(), h.from.clone(), h.version.clone());
                sh.journal.note(visit, Seen::Header { to, from, version });
            }
        }
        while let Some(ev) = s.conn.poll_event() {
            match ev {
                Event::StartTls(TlsRole::Server) => {
                    // `<proceed/>` goes out in plaintext first (RFC 6120 §5.4.2.3).
                    let ok = s
                        .flush()
                        .map_err(|e| e.to_string())
                        .and_then(|()| {
                            rustls::ServerConnection::new(Arc::clone(&sh.starttls))
                                .map_err(|e| e.to_string())
                        })
                        .and_then(|c| {
                            let deadline = (Instant::now() + Duration::from_secs(10)).min(end);
                            s.wire.start_tls(rustls::Connection::Server(c), deadline)
                        });
                    match ok {
                        Ok(()) => {
                            sh.journal.note(visit, Seen::Tls);
                            s.restart_observer();
                            let chain = s.wire.peer_chain();
                            s.conn
                                .handle_tls_established(chain, Instant::now(), UnixTime::now());
                        }
                        Err(e) => s.conn.handle_tls_failed(&e),
                    }
                }
                Event::VerifyNeeded {
                    local,
                    remote,
                    stream_id,
                    key,
                } => {
                    sh.journal.note(
                        visit,
                        Seen::Claim {
                            claimed: remote.clone(),
                        },
                    );
                    let (reply, verdict) = mpsc::channel();
                    let asked = remote.eq_ignore_ascii_case(&sh.checked)
                        && sh
                            .requests
                            .send(VerifyRequest {
                                local: local.clone(),
                                stream_id,
                                key,
                                reply,
                            })
                            .is_ok();
                    if asked {
                        waiting.push((local, remote, verdict));
                    } else {
                        let result =
                            DialbackResult::Error(DialbackErrorCondition::RemoteConnectionFailed);
                        s.conn
                            .handle_dialback_verdict(&local, &remote, result, Instant::now());
                        sh.journal.note(
                            visit,
                            Seen::Verdict {
                                claimed: remote,
                                result,
                                checked: false,
                            },
                        );
                    }
                }
                Event::Closed(reason) => sh.journal.note(visit, Seen::Closed(reason)),
                _ => {}
            }
        }
        waiting.retain(|(local, remote, verdict)| {
            let result = match verdict.try_recv() {
                Ok(r) => r,
                Err(mpsc::TryRecvError::Empty) => return true,
                // The checker is done with its stream: nobody can verify the key.
                Err(mpsc::TryRecvError::Disconnected) => {
                    DialbackResult::Error(DialbackErrorCondition::RemoteConnectionFailed)
                }
            };
            s.conn
                .handle_dialback_verdict(local, remote, result, Instant::now());
            sh.journal.note(
                visit,
                Seen::Verdict {
                    claimed: remote.clone(),
                    result,
                    checked: true,
                },
            );
            false
        });
        if s.eof {
            if !s.conn.is_closed() {
                sh.journal.note(
                    visit,
                    Seen::Dropped("the peer closed the TCP connection".to_owned()),
                );
            }
            break;
        }
    }
    s.finish();
}

/// The `<db:verify from='…' to='…' id='…' type='…'/>` answers in bytes we send (the
/// writer's fixed form, XEP-0220 §2.1.3).
fn verify_answers(out: &[u8]) -> Vec<Answered> {
    let text = String::from_utf8_lossy(out);
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(i) = text[at..].find("<db:verify ") {
        let start = at + i;
        let Some(end) = text[start..].find('>') else {
            break;
        };
        let tag = &text[start..=start + end];
        at = start + end + 1;
        let attr = |name: &str| -> Option<String> {
            let pat = format!(" {name}='");
            let i = tag.find(&pat)? + pat.len();
            let j = tag[i..].find('\'')?;
            Some(tag[i..i + j].to_owned())
        };
        if let (Some(from), Some(to), Some(ty)) = (attr("from"), attr("to"), attr("type")) {
            found.push(Answered {
                asked_by: to,
                about: from,
                answer: ty,
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_after_of_generated_certificates() {
        let ca = tls::TestCa::new("ca").unwrap();
        let leaf = ca.issue("a.test").unwrap();
        // LeafOptions::default: valid until 2100-01-01.
        let t = not_after(&leaf.chain()[0]).unwrap();
        assert_eq!(rfc3339(t), "2100-01-01T00:00:00Z");
        let expired = ca.issue_expired("a.test").unwrap();
        assert_eq!(
            rfc3339(not_after(&expired.chain()[0]).unwrap()),
            "2001-01-01T00:00:00Z"
        );
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(not_after(&[0x30, 0x00]), None);
        assert_eq!(not_after(b"garbage"), None);
    }

    #[test]
    fn dates_format() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_825_600), "2000-02-29T12:00:00Z");
        assert_eq!(rfc3339(2_524_607_999), "2049-12-31T23:59:59Z");
    }

    #[test]
    fn facts_and_expiry_window() {
        let ca = tls::TestCa::new("ca").unwrap();
        let leaf = ca.issue("a.test").unwrap();
        let f = CertFacts::of(&leaf.chain()[0], "a.test");
        assert!(f.covers && !f.self_signed);
        assert_eq!(f.names, ["a.test"]);
        assert!(!CertFacts::of(&leaf.chain()[0], "b.test").covers);
        let ss = tls::self_signed("a.test").unwrap();
        assert!(CertFacts::of(&ss.chain()[0], "a.test").self_signed);
        let end = UNIX_EPOCH + Duration::from_secs(f.not_after.unwrap());
        let month = Duration::from_secs(30 * 86_400);
        assert_eq!(f.expires_within(end - month * 2, month), None);
        assert_eq!(
            f.expires_within(end - Duration::from_secs(10 * 86_400 + 5), month),
            Some(10)
        );
        assert_eq!(f.expires_within(end + month, month), Some(0));
        assert!(f
            .expiry_text(end + month)
            .starts_with("expired on 2100-01-01"));
    }

    #[test]
    fn verify_answers_are_recorded() {
        let seen = verify_answers(
            b"<db:result from='a' to='b' type='valid'/><db:verify from='a.test' to='b.test' \
              id='x' type='valid'/><db:verify from='a.test' to='c.test' id='y' type='invalid'/>",
        );
        assert_eq!(seen.len(), 2);
        assert_eq!(
            (
                seen[0].asked_by.as_str(),
                seen[0].about.as_str(),
                seen[0].answer.as_str()
            ),
            ("b.test", "a.test", "valid")
        );
        assert_eq!(seen[1].answer, "invalid");
    }

    #[test]
    fn report_json_and_text() {
        let mut r = Report::default();
        r.steps.push(
            Step::new("b.test", steps::SRV, Verdict::Pass, "targets")
                .took(Duration::from_micros(1234)),
        );
        assert!(r.ok());
        r.steps.push(
            Step::new("b.test", steps::TCP, Verdict::Fail, "refused")
                .at("127.0.0.1:5999")
                .fix("open port 5999"),
        );
        assert!(!r.ok());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["steps"][0]["verdict"], "pass");
        assert_eq!(v["steps"][0]["millis"], 1.2);
        assert_eq!(v["steps"][1]["fix"], "open port 5999");
        assert_eq!(v["steps"][1]["target"], "127.0.0.1:5999");
        let text = r.text();
        assert!(text.contains("FAIL  tcp"), "{text}");
        assert!(text.contains("fix: open port 5999"), "{text}");
        assert!(
            text.contains("1 passed, 0 warned, 1 failed, 0 skipped"),
            "{text}"
        );
        assert_eq!(r.failures().count(), 1);
        assert_eq!(r.find("b.test", steps::TCP).count(), 1);
    }
}
