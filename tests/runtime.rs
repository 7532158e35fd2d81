//! `fedrouter serve` end to end over real sockets on loopback: two (or more) server
//! processes federating through our own DNS zone (`fedrouter_testkit::zone::ZoneServer`), driven through the
//! admin endpoint's XEP-0199 ping (`/ping?to=DOMAIN`), which exercises the whole router:
//! SRV look-up, TCP connect, STARTTLS or direct TLS, dialback or SASL EXTERNAL, the
//! remote's answer coming back over the remote's own outbound stream.
//!
//! Each test owns the loopback range `127.0.N.0/24` (N = 200 + the test's number: 200 to
//! 205 here, plus 231 for the `[dns]` reload; 206 to 211 in `tests/runtime_hostile.rs`;
//! other benches use low N) and uses
//! fixed ports in it (`.1:5300` DNS, `.2`/`.3` servers on 5269/5270/9269), so tests run in
//! parallel without colliding. Every wait is bounded.

#[path = "common/server.rs"]
mod server;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fedrouter_testkit::TestCa;
use server::{
    a, assert_error, assert_pong, config, ip, rtt_ms, srv, xmpp_server, zone, Fedrouter,
    GOOGLE_STYLE,
};

/// Test 0: `/health` on a running server asks every shard and finds each alive, and
/// answers at once while more `/ping`s than the admin endpoint has threads wait on a
/// peer that never answers.
#[test]
fn health_reports_every_shard_alive() {
    const NET: u8 = 200;
    const PINGS: usize = 8;
    let hole = BlackHole::start(SocketAddr::new(ip(NET, 9).into(), 5269));
    let mut records = xmpp_server("a.test", ip(NET, 2));
    records.push(srv(
        "_xmpp-server",
        "blackhole.test",
        "xmpp.blackhole.test",
        5269,
    ));
    records.push(a("xmpp.blackhole.test", ip(NET, 9)));
    let _dns = zone(NET, records);
    let extra = format!("[s2s]\nnegotiation_timeout = \"30s\"\n{GOOGLE_STYLE}");
    let mut fr = Fedrouter::start("a.test", &config(NET, ip(NET, 2), &["a.test"], 4, &extra));

    let (status, v) = fr.health().expect("/health answers JSON");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "ok", "{v}");
    let shards = v["shards"].as_array().expect("a shards array");
    assert_eq!(shards.len(), 4, "{v}");
    for (i, s) in shards.iter().enumerate() {
        assert_eq!(s["id"], i, "{v}");
        assert_eq!(s["alive"], true, "{v}");
        assert_eq!(s["state"], "running", "{v}");
        // It just answered the probe: its last turn is reported (how long ago is not a
        // test's business on a shared machine).
        assert!(s["since_last_turn_ms"].as_u64().is_some(), "{v}");
    }

    // Pings that wait (up to the 30 s negotiation timeout) hold no admin thread.
    let done = Arc::new(AtomicUsize::new(0));
    let pings: Vec<_> = (0..PINGS)
        .map(|_| {
            let (admin, done) = (fr.admin, Arc::clone(&done));
            std::thread::spawn(move || {
                let _ = server::http_get(admin, "/ping?to=blackhole.test", Duration::from_secs(60));
                done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Bounded by `deadline`: the first ping reaches the black hole.
    while hole.accepted() == 0 {
        assert!(Instant::now() < deadline, "no ping reached the black hole");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(fr.healthy(), "/health failed while pings wait");
    // The barrier: every ping still waits (none can end before the 30 s negotiation
    // timeout), so /health was answered while they held their requests.
    assert_eq!(
        done.load(Ordering::SeqCst),
        0,
        "a ping ended before /health answered"
    );
    // Killing the server ends the waiting pings' connections.
    fr.kill();
    for p in pings {
        p.join().expect("ping thread");
    }
}

/// Test 1: plain TCP + Server Dialback both ways through SRV; the second ping reuses the
/// established streams (no new DNS query).
#[test]
fn dialback_both_ways() {
    const NET: u8 = 201;
    let mut records = xmpp_server("a.test", ip(NET, 2));
    records.extend(xmpp_server("b.test", ip(NET, 3)));
    let dns = zone(NET, records);
    let mut a = Fedrouter::start(
        "a.test",
        &config(NET, ip(NET, 2), &["a.test"], 2, GOOGLE_STYLE),
    );
    let mut b = Fedrouter::start(
        "b.test",
        &config(NET, ip(NET, 3), &["b.test"], 2, GOOGLE_STYLE),
    );

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
    assert!(
        srv_a >= 1 && srv_b >= 1,
        "SRV queries: a {srv_a}, b {srv_b}"
    );
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
    // Graceful shutdown: SIGTERM closes the streams and the process exits in time.
    assert!(
        a.stop(),
        "a did not exit within {:?} of SIGTERM",
        server::STOP_GRACE
    );
    assert!(
        b.stop(),
        "b did not exit within {:?} of SIGTERM",
        server::STOP_GRACE
    );
    assert!(a.log().contains("stopped") && b.log().contains("stopped"));
}

/// Writes a TestCa's certificate and a leaf for `domain` into the files an instance's
/// `[tls]` section names: `ca.pem`, `DOMAIN.crt`, `DOMAIN.key`.
fn tls_files(ca: &TestCa, domain: &str) -> Vec<(String, String)> {
    let leaf = ca.issue(domain).expect("issue a certificate");
    vec![
        ("ca.pem".to_owned(), ca.ca_cert_pem()),
        (format!("{domain}.crt"), leaf.chain_pem()),
        (format!("{domain}.key"), leaf.key_pem()),
    ]
}

/// `[tls]` naming the files [`tls_files`] writes, and the strict federation policy.
fn strict_tls(domain: &str) -> String {
    format!(
        r#"
[tls]
trust = ["ca.pem"]

[[tls.certificate]]
domain = "{domain}"
cert = "{domain}.crt"
key = "{domain}.key"

[federation.default]
tls = "required"
auth = "sasl-external"
verify_certificates = true
"#
    )
}

fn start_tls_instance(name: &str, toml: &str, files: &[(String, String)]) -> Fedrouter {
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    Fedrouter::start_with(name, toml, &files)
}

/// Test 2: STARTTLS + SASL EXTERNAL (XEP-0178) with certificates from one CA, both ways.
#[test]
fn tls_sasl_external_both_ways() {
    const NET: u8 = 202;
    let mut records = xmpp_server("a.test", ip(NET, 2));
    records.extend(xmpp_server("b.test", ip(NET, 3)));
    let _dns = zone(NET, records);
    let ca = TestCa::new("fedrouter runtime test CA").expect("test CA");
    let a = start_tls_instance(
        "a.test",
        &config(NET, ip(NET, 2), &["a.test"], 2, &strict_tls("a.test")),
        &tls_files(&ca, "a.test"),
    );
    let b = start_tls_instance(
        "b.test",
        &config(NET, ip(NET, 3), &["b.test"], 2, &strict_tls("b.test")),
        &tls_files(&ca, "b.test"),
    );

    let ab = a.ping("b.test");
    assert_pong(&ab, "a → b");
    let ba = b.ping("a.test");
    assert_pong(&ba, "b → a");
    for (srv, local, remote) in [(&a, "a.test", "b.test"), (&b, "b.test", "a.test")] {
        let lines = srv.log_lines(&[
            "authenticated",
            &format!("local={local}"),
            &format!("remote={remote}"),
            "method=SaslExternal",
        ]);
        assert!(
            lines.len() >= 2,
            "{local}: SASL EXTERNAL with {remote} not logged both ways (outbound and inbound): {lines:#?}"
        );
        assert!(
            srv.log_lines(&["method=Dialback"]).is_empty(),
            "{local}: dialback used although policy is sasl-external"
        );
    }
    eprintln!(
        "tls_sasl_external_both_ways: rtt a→b {:.1} ms, b→a {:.1} ms",
        rtt_ms(&ab),
        rtt_ms(&ba)
    );
}

/// Test 3: b.test publishes only `_xmpps-server._tcp` (XEP-0368): a reaches it with direct
/// TLS on 5270 and authenticates with SASL EXTERNAL; b answers over STARTTLS to a.
#[test]
fn xmpps_srv_direct_tls() {
    const NET: u8 = 203;
    let mut records = xmpp_server("a.test", ip(NET, 2));
    records.push(srv("_xmpps-server", "b.test", "xmpp.b.test", 5270));
    records.push(a("xmpp.b.test", ip(NET, 3)));
    let dns = zone(NET, records);
    let ca = TestCa::new("fedrouter runtime test CA").expect("test CA");
    let a = start_tls_instance(
        "a.test",
        &config(NET, ip(NET, 2), &["a.test"], 2, &strict_tls("a.test")),
        &tls_files(&ca, "a.test"),
    );
    let b = start_tls_instance(
        "b.test",
        &config(NET, ip(NET, 3), &["b.test"], 2, &strict_tls("b.test")),
        &tls_files(&ca, "b.test"),
    );

    let ab = a.ping("b.test");
    assert_pong(&ab, "a → b over direct TLS");
    assert!(
        !a.log_lines(&["connected", "target=xmpp.b.test", "port=5270"])
            .is_empty(),
        "a did not connect to b's direct TLS port:\n{}",
        a.log()
    );
    assert!(
        !a.log_lines(&[
            "authenticated",
            "local=a.test",
            "remote=b.test",
            "method=SaslExternal"
        ])
        .is_empty(),
        "a → b not authenticated by SASL EXTERNAL"
    );
    assert!(dns.queries_for("_xmpps-server._tcp.b.test") >= 1);
    let ba = b.ping("a.test");
    assert_pong(&ba, "b → a");
    eprintln!(
        "xmpps_srv_direct_tls: rtt a→b {:.1} ms, b→a {:.1} ms",
        rtt_ms(&ab),
        rtt_ms(&ba)
    );
}

/// A TCP listener that accepts and never writes (a "black hole" peer), counting accepted
/// connections on its own thread. The sockets stay open until it is dropped.
struct BlackHole {
    accepted: Arc<AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BlackHole {
    fn start(addr: SocketAddr) -> BlackHole {
        let l = TcpListener::bind(addr).expect("bind the black hole");
        l.set_nonblocking(true).expect("nonblocking");
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (acc, st) = (Arc::clone(&accepted), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            // Bounded by the test: ends when `stop` is set (at most 10 min as a backstop).
            let end = Instant::now() + Duration::from_secs(600);
            while !st.load(Ordering::SeqCst) && Instant::now() < end {
                match l.accept() {
                    Ok((s, _)) => {
                        acc.fetch_add(1, Ordering::SeqCst);
                        held.push(s);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        BlackHole {
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Test 4: pings to unreachable domains come back as RFC 6120 §8.3.3 errors
/// (`remote-server-not-found`, `remote-server-timeout`), and a domain that just failed is
/// backed off: the next ping is bounced by the backoff itself (counted as such), with no
/// DNS query and no connection.
#[test]
fn bounces_and_backoff() {
    const NET: u8 = 204;
    let hole_addr = SocketAddr::new(ip(NET, 9).into(), 5269);
    let hole = BlackHole::start(hole_addr);
    let mut records = xmpp_server("a.test", ip(NET, 2));
    // nosrv.test: no SRV and no address at all.
    // closed.test: SRV to an address where nothing listens.
    records.push(srv("_xmpp-server", "closed.test", "xmpp.closed.test", 5269));
    records.push(a("xmpp.closed.test", ip(NET, 10)));
    // blackhole.test: SRV to a listener that accepts and never answers.
    records.push(srv(
        "_xmpp-server",
        "blackhole.test",
        "xmpp.blackhole.test",
        5269,
    ));
    records.push(a("xmpp.blackhole.test", ip(NET, 9)));
    let dns = zone(NET, records);
    let extra = format!(
        r#"
[s2s]
negotiation_timeout = "2s"
connect_timeout = "2s"
backoff_initial = "30s"
backoff_max = "60s"
{GOOGLE_STYLE}"#
    );
    let a = Fedrouter::start("a.test", &config(NET, ip(NET, 2), &["a.test"], 2, &extra));

    let v = a.ping("nosrv.test");
    assert_error(&v, "remote-server-not-found", "nosrv.test");
    let v = a.ping("closed.test");
    assert_error(&v, "remote-server-not-found", "closed.test");
    assert!(
        !a.log_lines(&["remote server unreachable", "peer=closed.test"])
            .is_empty(),
        "no unreachable line for closed.test:\n{}",
        a.log()
    );

    let started = Instant::now();
    let v = a.ping("blackhole.test");
    let took = started.elapsed();
    assert_error(&v, "remote-server-timeout", "blackhole.test");
    // The error came from the 2 s negotiation timeout, not before it (a lower bound only:
    // how much later it came depends on the machine's load).
    assert!(
        took >= Duration::from_millis(1500),
        "blackhole.test answered after {took:?}, before the 2 s negotiation timeout"
    );
    assert_eq!(hole.accepted(), 1, "connections to the black hole");
    let srv_queries = dns.queries_for("_xmpp-server._tcp.blackhole.test")
        + dns.queries_for("_xmpps-server._tcp.blackhole.test");
    let host_queries = dns.queries_for("xmpp.blackhole.test");
    let backoff_bounces = || {
        a.metric("fedrouter_bounced_by_cause_total", &[("cause", "backoff")])
            .expect("GET /metrics")
    };
    let backed_off_before = backoff_bounces();

    let v = a.ping("blackhole.test");
    assert_eq!(
        v["result"], "error",
        "blackhole.test while backing off: {v}"
    );
    assert!(
        v["condition"] == "remote-server-timeout" || v["condition"] == "remote-server-not-found",
        "{v}"
    );
    assert_eq!(
        backoff_bounces(),
        backed_off_before + 1.0,
        "the ping to the backed-off domain was not bounced by the backoff: {v}"
    );
    assert_eq!(
        hole.accepted(),
        1,
        "a backed-off domain was connected to again"
    );
    assert_eq!(
        dns.queries_for("_xmpp-server._tcp.blackhole.test")
            + dns.queries_for("_xmpps-server._tcp.blackhole.test"),
        srv_queries,
        "a backed-off domain was looked up again"
    );
    assert_eq!(dns.queries_for("xmpp.blackhole.test"), host_queries);
    assert!(a.healthy());
    eprintln!(
        "bounces_and_backoff: black hole timed out after {took:?}; backed-off bounce {:.1} ms",
        rtt_ms(&v)
    );
    drop(hole);
}

/// Test 5: one instance hosting b1..b16.test pings a.test from each domain at once. a
/// verifies each key with bN.test's authoritative server over a stream of its own, so
/// b accepts 16 inbound streams from a.test; SO_REUSEPORT spreads them over b's two
/// shards, and each one accepted on the shard that does not own a.test is handed off to
/// the owner. All 16 land on the owner only with probability 2^-16 (if the kernel's
/// 4-tuple hash spreads them evenly), so a hand-off is all but certain.
#[test]
fn two_shards_hand_off() {
    const NET: u8 = 205;
    const N: usize = 16;
    let bs: Vec<String> = (1..=N).map(|i| format!("b{i}.test")).collect();
    let mut records = xmpp_server("a.test", ip(NET, 2));
    for d in &bs {
        records.push(srv("_xmpp-server", d, "xmpp.b.test", 5269));
    }
    records.push(a("xmpp.b.test", ip(NET, 3)));
    let _dns = zone(NET, records);
    let a = Fedrouter::start(
        "a.test",
        &config(NET, ip(NET, 2), &["a.test"], 2, GOOGLE_STYLE),
    );
    let b_domains: Vec<&str> = bs.iter().map(String::as_str).collect();
    let b = Fedrouter::start("b", &config(NET, ip(NET, 3), &b_domains, 2, GOOGLE_STYLE));

    let results: Vec<(String, serde_json::Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = bs
            .iter()
            .map(|d| {
                let b = &b;
                s.spawn(move || (d.clone(), b.ping_from("a.test", d)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ping thread"))
            .collect()
    });
    for (d, v) in &results {
        assert_pong(v, &format!("{d} → a.test"));
        assert!(
            !a.log_lines(&["authenticated", "local=a.test", &format!("remote={d}")])
                .is_empty(),
            "a did not authenticate {d}"
        );
    }
    let handed = b.log_lines(&["handing off"]).len();
    let adopted = b.log_lines(&["adopted from another shard"]).len();
    assert!(
        handed >= 1,
        "no hand-off among {N} inbound streams at b:\n{}",
        b.log()
    );
    // Hand-offs decided at a later event than the stream header are not logged as
    // "handing off", so adoptions may outnumber them; never the reverse.
    assert!(adopted >= handed, "hand-offs {handed}, adoptions {adopted}");
    let max_rtt = results.iter().map(|(_, v)| rtt_ms(v)).fold(0.0, f64::max);
    eprintln!(
        "two_shards_hand_off: {N} pongs, b handed off {handed} inbound streams (a handed off {}), slowest rtt {max_rtt:.1} ms",
        a.log_lines(&["handing off"]).len()
    );
}

/// SIGHUP with a changed `[dns]`: the next S2S look-up goes to the new name server
/// (issue 23). Zone A (the one a.test starts with) sends b.test to an address where
/// nothing listens; zone B (on `127.0.231.4`) sends it to the running b.test. No look-up
/// for b.test happens before the reload, so the ping after it can only succeed through B.
/// Uses the loopback range `127.0.231.0/24`.
#[test]
fn sighup_applies_a_new_dns_section() {
    const NET: u8 = 231;
    let mut zone_a = xmpp_server("a.test", ip(NET, 2));
    zone_a.extend(xmpp_server("b.test", ip(NET, 9)));
    let _dns_a = zone(NET, zone_a);
    let mut zone_b = xmpp_server("a.test", ip(NET, 2));
    zone_b.extend(xmpp_server("b.test", ip(NET, 3)));
    let addr_a = SocketAddr::new(ip(NET, 1).into(), server::DNS_PORT).to_string();
    let addr_b = SocketAddr::new(ip(NET, 4).into(), server::DNS_PORT);
    let _dns_b = fedrouter_testkit::zone::ZoneServer::start(addr_b, zone_b).expect("zone B");

    let toml = config(NET, ip(NET, 2), &["a.test"], 2, GOOGLE_STYLE);
    let a = Fedrouter::start("a.test", &toml);
    let _b = Fedrouter::start(
        "b.test",
        &config(NET, ip(NET, 3), &["b.test"], 2, GOOGLE_STYLE),
    );

    let running = std::fs::read_to_string(a.config_path()).unwrap();
    let reloaded = running.replace(&addr_a, &addr_b.to_string());
    assert_ne!(
        reloaded, running,
        "the configuration names zone A's address"
    );
    std::fs::write(a.config_path(), reloaded).unwrap();
    a.signal(libc::SIGHUP);
    // Logged once every shard has been sent the new configuration; nothing is kept.
    a.wait_log(&["reloaded: certificates"], Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no clean reload logged:\n{}", a.log()));
    // The shards take the reload before this ping: both go through the same control
    // channel, in order.
    assert_pong(&a.ping("b.test"), "after the reload, through zone B");
}
