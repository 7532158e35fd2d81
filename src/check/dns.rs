//! `check`: the DNS steps (SRV, A/AAAA, TCP reachability) shared by remote and own domains.

use std::io::{self};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Instant;

use crate::dns::{DnsError, S2sResolver};
use crate::srv::{Resolution, Target};

use super::*;

impl Checker<'_> {
    // ----- DNS -----

    /// The `srv` step; the targets to try (the fallback target when there is no SRV, with
    /// `true`).
    pub(super) fn srv_step(
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
    pub(super) fn address_step(
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
    pub(super) fn tcp_step(
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
}
