//! XEP-0288 bidirectional S2S over real sockets: two `fedrouter serve` processes on
//! loopback federating through our own DNS zone, driven through the admin endpoint's
//! XEP-0199 ping and read back through `/status` (what `fedrouter status` prints).
//!
//! With bidi on (the default), the stream a.test opens to b.test also carries b.test's
//! stanzas to a.test: b.test never dials a.test, and each side's `/status` shows one
//! stream for the other, serving both directions. With `bidi = false` for the peer, each
//! direction has its own stream, as without XEP-0288.
//!
//! With dialback, the receiving side verifies the initiator's key on a verify-only stream
//! of its own (XEP-0220 §2.1.3: `db:verify` and no `db:result`), closed once answered: one
//! long-lived stream remains, and nothing reconnects.
//!
//! Loopback ranges: `127.0.10.0/24`, `127.0.11.0/24` and `127.0.18.0/24` (fixed ports as
//! in `tests/runtime.rs`: `.1:5300` DNS, `.2`/`.3` servers on 5269/5270/9269). Every wait
//! is bounded.

#[path = "common/server.rs"]
mod server;

use std::time::{Duration, Instant};

use fedrouter_testkit::TestCa;
use server::{assert_pong, config, http_get, ip, xmpp_server, zone, Fedrouter, GOOGLE_STYLE};

/// `ca.pem`, `DOMAIN.crt`, `DOMAIN.key` for an instance's `[tls]` section.
fn tls_files(ca: &TestCa, domain: &str) -> Vec<(String, String)> {
    let leaf = ca.issue(domain).expect("issue a certificate");
    vec![
        ("ca.pem".to_owned(), ca.ca_cert_pem()),
        (format!("{domain}.crt"), leaf.chain_pem()),
        (format!("{domain}.key"), leaf.key_pem()),
    ]
}

/// `[tls]` for `domain` and the strict policy (STARTTLS, SASL EXTERNAL), with `extra`
/// appended (per-domain tables).
fn strict_tls(domain: &str, extra: &str) -> String {
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
{extra}
"#
    )
}

fn start(name: &str, toml: &str, files: &[(String, String)]) -> Fedrouter {
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    Fedrouter::start_with(name, toml, &files)
}

/// The stream objects `/status` lists for `domain`.
fn streams_for(srv: &Fedrouter, domain: &str) -> Vec<serde_json::Value> {
    let (code, body) = http_get(srv.admin, "/status", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{}: GET /status: {e}", srv.name));
    assert_eq!(code, 200, "{}: /status: {body}", srv.name);
    let v: serde_json::Value = serde_json::from_str(&body).expect("/status is JSON");
    v.as_array()
        .expect("/status is an array of domains")
        .iter()
        .filter(|d| d["domain"] == domain)
        .flat_map(|d| d["streams"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// Test 10: SASL EXTERNAL both ways over the one stream a.test opened.
#[test]
fn one_connection_carries_both_directions() {
    const NET: u8 = 10;
    let mut records = xmpp_server("a.test", ip(NET, 2));
    records.extend(xmpp_server("b.test", ip(NET, 3)));
    let dns = zone(NET, records);
    let ca = TestCa::new("fedrouter bidi test CA").expect("test CA");
    let a = start(
        "a.test",
        &config(NET, ip(NET, 2), &["a.test"], 2, &strict_tls("a.test", "")),
        &tls_files(&ca, "a.test"),
    );
    let b = start(
        "b.test",
        &config(NET, ip(NET, 3), &["b.test"], 2, &strict_tls("b.test", "")),
        &tls_files(&ca, "b.test"),
    );

    // a → b opens the stream; b's answer to a's ping comes back on it.
    assert_pong(&a.ping("b.test"), "a → b");
    // b → a: b has an inbound bidirectional stream from a and uses it.
    assert_pong(&b.ping("a.test"), "b → a");
    assert_pong(&a.ping("b.test"), "a → b again");

    assert!(
        b.log_lines(&["inbound bidirectional stream (XEP-0288) also carries our stanzas"])
            .len()
            == 1,
        "b did not use a's stream for its own stanzas:\n{}",
        b.log()
    );
    assert_eq!(
        dns.queries_for("_xmpp-server._tcp.a.test"),
        0,
        "b looked a.test up: it meant to dial it"
    );

    let a_streams = streams_for(&a, "b.test");
    let b_streams = streams_for(&b, "a.test");
    assert_eq!(a_streams.len(), 1, "a's streams for b: {a_streams:#?}");
    assert_eq!(b_streams.len(), 1, "b's streams for a: {b_streams:#?}");
    let (sa, sb) = (&a_streams[0], &b_streams[0]);
    assert_eq!(sa["direction"], "out", "{sa}");
    assert_eq!(sb["direction"], "in", "{sb}");
    for (s, local, remote) in [(sa, "a.test", "b.test"), (sb, "b.test", "a.test")] {
        assert_eq!(s["bidi"], true, "{s}");
        assert_eq!(s["serves"], serde_json::json!(["in", "out"]), "{s}");
        assert_eq!(s["tls"], true, "{s}");
        assert_eq!(
            s["bidi_authenticated"],
            serde_json::json!([{"local": local, "remote": remote, "method": "saslexternal"}]),
            "{s}"
        );
    }
}

/// Test 11: `bidi = false` for the peer on the receiving side: each direction opens its
/// own stream again.
#[test]
fn per_domain_switch_turns_it_off() {
    const NET: u8 = 11;
    let mut records = xmpp_server("a.test", ip(NET, 2));
    records.extend(xmpp_server("b.test", ip(NET, 3)));
    let dns = zone(NET, records);
    let ca = TestCa::new("fedrouter bidi test CA").expect("test CA");
    let a = start(
        "a.test",
        &config(NET, ip(NET, 2), &["a.test"], 2, &strict_tls("a.test", "")),
        &tls_files(&ca, "a.test"),
    );
    let off_for_a = r#"
[federation.domains."a.test"]
tls = "required"
auth = "sasl-external"
verify_certificates = true
bidi = false
"#;
    let b = start(
        "b.test",
        &config(
            NET,
            ip(NET, 3),
            &["b.test"],
            2,
            &strict_tls("b.test", off_for_a),
        ),
        &tls_files(&ca, "b.test"),
    );

    assert_pong(&a.ping("b.test"), "a → b");
    assert_pong(&b.ping("a.test"), "b → a");
    assert!(
        dns.queries_for("_xmpp-server._tcp.a.test") >= 1,
        "b did not dial a.test"
    );
    for (srv, remote) in [(&a, "b.test"), (&b, "a.test")] {
        let streams = streams_for(srv, remote);
        assert_eq!(streams.len(), 2, "{}: {streams:#?}", srv.name);
        for s in &streams {
            assert_eq!(s["bidi"], false, "{s}");
            assert_eq!(s["serves"], serde_json::json!([s["direction"]]), "{s}");
        }
    }
}

/// Polls `/status` until `srv` lists exactly one stream for `domain` (bounded: 30 s, at
/// most 1,500 turns); returns it, or panics with what it lists.
fn wait_one_stream(srv: &Fedrouter, domain: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut streams = Vec::new();
    for _ in 0..1_500 {
        streams = streams_for(srv, domain);
        if streams.len() == 1 || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        streams.len(),
        1,
        "{}: streams for {domain}: {streams:#?}\n{}",
        srv.name,
        srv.log()
    );
    streams.remove(0)
}

/// TCP connections a server opened to remote servers (the connect histogram's count).
fn connections_opened(srv: &Fedrouter) -> f64 {
    srv.metric("fedrouter_s2s_connect_seconds_count", &[])
        .unwrap_or_default()
}

/// Test 12: plain dialback both ways over the one stream a.test opened. b.test verifies
/// a.test's key on a verify-only stream (no `db:result` of its own, so a.test has nothing
/// to verify back) and closes it once answered: each side then lists one stream for the
/// other, serving both directions, and no further connection is opened.
#[test]
fn dialback_verification_leaves_one_stream() {
    const NET: u8 = 18;
    let mut records = xmpp_server("a.test", ip(NET, 2));
    records.extend(xmpp_server("b.test", ip(NET, 3)));
    let _dns = zone(NET, records);
    let a = start(
        "a.test",
        &config(NET, ip(NET, 2), &["a.test"], 2, GOOGLE_STYLE),
        &[],
    );
    let b = start(
        "b.test",
        &config(NET, ip(NET, 3), &["b.test"], 2, GOOGLE_STYLE),
        &[],
    );

    assert_pong(&a.ping("b.test"), "a → b");
    assert_pong(&b.ping("a.test"), "b → a");

    let sa = wait_one_stream(&a, "b.test");
    let sb = wait_one_stream(&b, "a.test");
    assert_eq!(sa["direction"], "out", "{sa}");
    assert_eq!(sb["direction"], "in", "{sb}");
    for (s, local, remote) in [(&sa, "a.test", "b.test"), (&sb, "b.test", "a.test")] {
        assert_eq!(s["bidi"], true, "{s}");
        assert_eq!(s["serves"], serde_json::json!(["in", "out"]), "{s}");
        assert_eq!(
            s["bidi_authenticated"],
            serde_json::json!([{"local": local, "remote": remote, "method": "dialback"}]),
            "{s}"
        );
        assert!(s.get("verify_only").is_none(), "{s}");
    }

    // a dialled b once; b dialled a once, for the verification only.
    let opened = (connections_opened(&a), connections_opened(&b));
    assert_eq!(opened, (1.0, 1.0), "connections opened by (a, b)");
    assert_eq!(
        b.metric("fedrouter_s2s_verify_only_streams_total", &[]),
        Some(1.0),
        "b's verify-only streams"
    );
    assert_eq!(
        a.metric("fedrouter_s2s_verify_only_streams_total", &[])
            .unwrap_or_default(),
        0.0,
        "a verified nothing"
    );

    // Markers: a round trip each way after the verification stream closed. Nothing was
    // opened meanwhile (a reconnect loop would have), and still one stream each.
    assert_pong(&a.ping("b.test"), "a → b marker");
    assert_pong(&b.ping("a.test"), "b → a marker");
    assert_eq!(
        (connections_opened(&a), connections_opened(&b)),
        opened,
        "connections opened after the markers"
    );
    assert_eq!(streams_for(&a, "b.test").len(), 1);
    assert_eq!(streams_for(&b, "a.test").len(), 1);
}
