//! `fedrouter serve` end to end over real sockets on loopback: two (or more) server
//! processes federating through our own DNS zone ([`ZoneServer`]), driven through the
//! admin endpoint's XEP-0199 ping (`/ping?to=DOMAIN`), which exercises the whole router:
//! SRV look-up, TCP connect, STARTTLS or direct TLS, dialback or SASL EXTERNAL, the
//! remote's answer coming back over the remote's own outbound stream.
//!
//! Each test owns the loopback range `127.0.N.0/24` (N = the test's number) and uses
//! fixed ports in it (`.1:5300` DNS, `.2`/`.3` servers on 5269/5270/9269), so tests run in
//! parallel without colliding. Every wait is bounded.

#[path = "common/server.rs"]
mod server;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fedrouter::dns::zone::{ZoneRecord, ZoneServer};
use fedrouter::tls::TestCa;
use server::Fedrouter;

/// The DNS port of every test's zone server.
const DNS_PORT: u16 = 5300;

fn ip(net: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, net, host)
}

fn srv(service: &str, domain: &str, target: &str, port: u16) -> ZoneRecord {
    ZoneRecord::Srv {
        name: format!("{service}._tcp.{domain}"),
        ttl: 300,
        priority: 0,
        weight: 5,
        port,
        target: target.to_owned(),
    }
}

fn a(name: &str, addr: Ipv4Addr) -> ZoneRecord {
    ZoneRecord::A {
        name: name.to_owned(),
        ttl: 300,
        addr,
    }
}

/// `_xmpp-server._tcp.DOMAIN` → `xmpp.DOMAIN:5269` and its A record.
fn xmpp_server(domain: &str, addr: Ipv4Addr) -> Vec<ZoneRecord> {
    let host = format!("xmpp.{domain}");
    vec![srv("_xmpp-server", domain, &host, 5269), a(&host, addr)]
}

fn zone(net: u8, records: Vec<ZoneRecord>) -> ZoneServer {
    ZoneServer::start(SocketAddr::new(ip(net, 1).into(), DNS_PORT), records)
        .expect("start the zone server")
}

/// A configuration for one instance at `addr` hosting `domains`, resolving through the
/// zone server of `net`; `extra` is appended (tables: `[s2s]`, `[federation.default]`,
/// `[tls]` ...). STARTTLS S2S on 5269, direct TLS on 5270, admin on 9269, no C2S.
fn config(net: u8, addr: Ipv4Addr, domains: &[&str], shards: usize, extra: &str) -> String {
    let domains: Vec<String> = domains.iter().map(|d| format!("{d:?}")).collect();
    format!(
        r#"domains = [{domains}]
shards = {shards}

[listen]
s2s = ["{addr}:5269"]
s2s_tls = ["{addr}:5270"]
c2s = []
admin = "{addr}:9269"

[dns]
nameservers = ["{dns}"]
timeout = "2s"

{extra}
"#,
        domains = domains.join(", "),
        dns = SocketAddr::new(ip(net, 1).into(), DNS_PORT),
    )
}

const GOOGLE_STYLE: &str = r#"
[federation.default]
tls = "disabled"
auth = "dialback"
verify_certificates = false
"#;

fn assert_pong(v: &serde_json::Value, what: &str) {
    assert_eq!(v["result"], "pong", "{what}: {v}");
}

fn rtt_ms(v: &serde_json::Value) -> f64 {
    v["rtt_ms"].as_f64().unwrap_or(f64::NAN)
}

/// Test 1: plain TCP + Server Dialback both ways through SRV; the second ping reuses the
/// established streams (no new DNS query).
#[test]
fn dialback_both_ways() {
    const NET: u8 = 1;
    let mut records = xmpp_server("a.test", ip(NET, 2));
    records.extend(xmpp_server("b.test", ip(NET, 3)));
    let dns = zone(NET, records);
    let a = Fedrouter::start("a.test", &config(NET, ip(NET, 2), &["a.test"], 2, GOOGLE_STYLE));
    let b = Fedrouter::start("b.test", &config(NET, ip(NET, 3), &["b.test"], 2, GOOGLE_STYLE));

    let ab = a.ping("b.test");
    assert_pong(&ab, "a → b");
    let ba = b.ping("a.test");
    assert_pong(&ba, "b → a");

    for (srv, local, remote) in [(&a, "a.test", "b.test"), (&b, "b.test", "a.test")] {
        let lines = srv.log_lines(&[
            "authenticated",
            &format!("local={local}"),
            &format!("remote={remote}"),
            "method=Dialback",
        ]);
        assert!(
            !lines.is_empty(),
            "{local}: no dialback authentication with {remote} logged:\n{}",
            srv.log()
        );
    }

    let srv_a = dns.queries_for("_xmpp-server._tcp.a.test");
    let srv_b = dns.queries_for("_xmpp-server._tcp.b.test");
    assert!(srv_a >= 1 && srv_b >= 1, "SRV queries: a {srv_a}, b {srv_b}");
    let total = dns.queries();

    let ab2 = a.ping("b.test");
    assert_pong(&ab2, "a → b again");
    let ba2 = b.ping("a.test");
    assert_pong(&ba2, "b → a again");
    assert_eq!(
        dns.queries(),
        total,
        "the second pings looked something up again (SRV a {} → {}, b {} → {})",
        srv_a,
        dns.queries_for("_xmpp-server._tcp.a.test"),
        srv_b,
        dns.queries_for("_xmpp-server._tcp.b.test"),
    );
    eprintln!(
        "dialback_both_ways: rtt first a→b {:.1} ms, b→a {:.1} ms; reused a→b {:.1} ms, b→a {:.1} ms",
        rtt_ms(&ab),
        rtt_ms(&ba),
        rtt_ms(&ab2),
        rtt_ms(&ba2)
    );
}
