//! `check DOMAIN`: what a failed remote step means: the failure of a phase, a refused dialback, a missing SASL EXTERNAL, and the fixes (where DNS points, what the stand-in saw).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use crate::condition::StreamCondition;
use crate::dialback::{DialbackErrorCondition, DialbackResult};
use crate::dns::S2sResolver;
use crate::srv::{Resolution, Target};
use crate::stream::CloseReason;
use crate::xml::ns;

use super::*;

impl Checker<'_> {
    /// A failed step of a remote session: the step of `phase`, what happened, and the
    /// fix. During dialback, what the stand-in saw is added, and explains the failure
    /// when no `fix` is given and it can.
    pub(super) fn remote_phase_failed(
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
    pub(super) fn auth_failed(
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
    pub(super) fn sasl_not_offered(
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
    pub(super) fn where_dns_points(&mut self, local: &str) -> String {
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
    pub(super) fn verify_note(&self, r: &RemoteCtx) -> String {
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
    pub(super) fn standin_fix(&self, r: &RemoteCtx) -> Option<String> {
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
}
