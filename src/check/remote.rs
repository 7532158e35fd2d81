//! `check DOMAIN`: the steps for a remote domain (stream, TLS, certificate, SASL EXTERNAL, dialback with the stand-in).

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Instant, SystemTime};

use rustls::pki_types::{CertificateDer, UnixTime};

use crate::condition::StreamCondition;
use crate::dialback::{DialbackErrorCondition, DialbackResult};
use crate::srv::Target;
use crate::stream::{
    AuthMethod, CloseReason, Event, PeerPolicy, S2sConfig, S2sConnection, TlsPolicy, TlsRole,
};
use crate::tls::{self, CertError, CertifiedDomain};
use crate::xml::ns;

use super::*;

impl Checker<'_> {
    // ----- a remote domain -----

    pub(super) fn remote(&mut self, local: &str, domain: &str) {
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
    pub(super) fn standin_config(&self) -> S2sConfig {
        self.s2s_config(self.config.domains.clone(), self.config.federation.clone())
    }

    pub(super) fn remote_session(
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

    /// The `tls` step: a handshake with `domain` as SNI, any certificate accepted (it is
    /// judged in the `certificate` step), presenting `present` when the server asks for a
    /// client certificate. Returns what the handshake showed, or why it failed (already
    /// reported).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn tls_step(
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
    pub(super) fn remote_certificate_step(
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
}
