//! `check` without a domain: the steps for our own domains (certificate, DNS as others see it, listeners, authoritative dialback).

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::{CertificateDer, UnixTime};

use crate::condition::StreamCondition;
use crate::dialback::{DialbackErrorCondition, DialbackResult};
use crate::srv::Target;
use crate::stream::{
    AuthPolicy, CloseReason, Event, FederationPolicy, PeerPolicy, S2sConnection, TlsPolicy, TlsRole,
};
use crate::xml::ns;

use super::*;

impl Checker<'_> {
    // ----- our own domain -----

    pub(super) fn own(&mut self, domain: &str) {
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
    pub(super) fn own_certificate_step(&mut self, domain: &str) {
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
    pub(super) fn listener_note(&self, addr: SocketAddr, direct: bool) -> String {
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

    pub(super) fn own_session(
        &mut self,
        domain: &str,
        target: &Target,
        addr: SocketAddr,
        sock: TcpStream,
    ) {
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
                bidi: false,
                multiplex: true,
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

    pub(super) fn own_phase_failed(
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

    pub(super) fn authoritative_step(
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
    pub(super) fn served_certificate_step(
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
