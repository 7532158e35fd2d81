//! The metrics endpoint (`GET /metrics`, `GET /metrics/hgrm`) of a running fedrouter,
//! parsed with a Prometheus text-format parser (the `prometheus-parse` crate), against the
//! stanzas the test itself routed. Uses loopback network 127.0.212.x.

#[path = "common/server.rs"]
mod server;

use std::collections::HashMap;
use std::time::Duration;

use prometheus_parse::{Sample, Scrape, Value};
use server::{assert_pong, config, http_get, ip, xmpp_server, zone, Fedrouter, GOOGLE_STYLE};

fn scrape(fr: &Fedrouter) -> Scrape {
    let (status, body) =
        http_get(fr.admin, "/metrics", Duration::from_secs(5)).expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text format")
}

/// The value of the sample `name` whose labels include `labels`, summed over the others.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            _ => 0.0,
        })
        .sum()
}

/// The histogram samples of `name`: `le` → cumulative count.
fn buckets(s: &Scrape, name: &str) -> Vec<(f64, f64)> {
    let sample: &Sample = s
        .samples
        .iter()
        .find(|x| x.metric == name)
        .unwrap_or_else(|| panic!("no histogram {name}"));
    match &sample.value {
        Value::Histogram(b) => b.iter().map(|c| (c.less_than, c.count)).collect(),
        other => panic!("{name} is not a histogram: {other:?}"),
    }
}

/// N pings from a.test to b.test: on b every ping is read from a socket and its pong
/// written to one (N routing-latency samples); on a the pings are generated and the pongs
/// consumed (no read → write pair, no sample). Counters, histogram counts and buckets
/// agree with that exactly.
/// Google-style federation without XEP-0288: each direction has its own stream (and its
/// own dialback), as these tests count them; one bidirectional stream is
/// `tests/s2s_bidi.rs`'s.
const TWO_STREAMS: &str = concat!(
    "\n[federation.default]\n",
    "tls = \"disabled\"\n",
    "auth = \"dialback\"\n",
    "verify_certificates = false\n",
    "bidi = false\n"
);

#[test]
fn metrics_agree_with_routed_stanzas() {
    const NET: u8 = 212;
    const N: usize = 20;
    let mut records = xmpp_server("a.test", ip(NET, 2));
    records.extend(xmpp_server("b.test", ip(NET, 3)));
    let _dns = zone(NET, records);
    let a = Fedrouter::start(
        "a.test",
        &config(NET, ip(NET, 2), &["a.test"], 2, TWO_STREAMS),
    );
    let b = Fedrouter::start(
        "b.test",
        &config(NET, ip(NET, 3), &["b.test"], 2, TWO_STREAMS),
    );
    for i in 0..N {
        assert_pong(&a.ping("b.test"), &format!("ping {i}"));
    }

    let sb = scrape(&b);
    let n = N as f64;
    assert_eq!(
        value(
            &sb,
            "fedrouter_stanzas_total",
            &[("dir", "s2s_in"), ("kind", "iq")]
        ),
        n
    );
    assert_eq!(
        value(
            &sb,
            "fedrouter_stanzas_total",
            &[("dir", "s2s_out"), ("kind", "iq")]
        ),
        n
    );
    let routing = buckets(&sb, "fedrouter_routing_latency_seconds");
    let inf = routing.last().expect("buckets");
    assert!(inf.0.is_infinite(), "last bucket is +Inf: {routing:?}");
    assert_eq!(
        inf.1, n,
        "one routing sample per ping answered: {routing:?}"
    );
    assert!(
        routing
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "buckets cumulative: {routing:?}"
    );
    assert!(routing[0].1 <= n);
    // Quantile gauges: present and ordered.
    let q: HashMap<String, f64> = sb
        .samples
        .iter()
        .filter(|x| x.metric == "fedrouter_routing_latency_quantile_seconds")
        .map(|x| {
            let v = match x.value {
                Value::Gauge(v) | Value::Untyped(v) => v,
                _ => f64::NAN,
            };
            (x.labels.get("quantile").unwrap_or("").to_owned(), v)
        })
        .collect();
    assert!(
        q["0.5"] > 0.0 && q["0.5"] <= q["0.99"] && q["0.99"] <= q["1"],
        "{q:?}"
    );
    // b authenticated a's stream with dialback (inbound) and its own (outbound, for the
    // pongs): both counted; b's outbound stream set-up was measured once.
    assert!(
        value(
            &sb,
            "fedrouter_auth_total",
            &[("proto", "s2s"), ("method", "dialback"), ("result", "ok")]
        ) >= 2.0
    );
    assert_eq!(
        value(&sb, "fedrouter_s2s_negotiation_seconds_count", &[]),
        1.0
    );
    assert!(value(&sb, "fedrouter_dns_lookup_seconds_count", &[]) >= 1.0);
    assert!(
        value(
            &sb,
            "fedrouter_streams",
            &[("proto", "s2s"), ("state", "authenticated")]
        ) >= 2.0
    );
    assert!(
        value(
            &sb,
            "fedrouter_bytes_total",
            &[("proto", "s2s"), ("dir", "in")]
        ) > 0.0
    );

    let sa = scrape(&a);
    assert_eq!(
        value(
            &sa,
            "fedrouter_stanzas_total",
            &[("dir", "s2s_out"), ("kind", "iq")]
        ),
        n
    );
    assert_eq!(
        value(
            &sa,
            "fedrouter_stanzas_total",
            &[("dir", "s2s_in"), ("kind", "iq")]
        ),
        n
    );
    let routing_a = buckets(&sa, "fedrouter_routing_latency_seconds");
    assert_eq!(
        routing_a.last().expect("buckets").1,
        0.0,
        "a generates pings and consumes pongs: nothing read is written on"
    );

    // The same histogram as HdrHistogram percentile text.
    let (status, hgrm) = http_get(
        b.admin,
        "/metrics/hgrm?name=routing_latency",
        Duration::from_secs(5),
    )
    .expect("GET hgrm");
    assert_eq!(status, 200, "{hgrm}");
    assert!(
        hgrm.contains("Value") && hgrm.contains("Percentile"),
        "{hgrm}"
    );
    assert!(
        hgrm.contains(&format!("Total count    = {N:>12}")),
        "{hgrm}"
    );
    let (status, _) =
        http_get(b.admin, "/metrics/hgrm?name=nope", Duration::from_secs(5)).expect("GET");
    assert_eq!(status, 400);
}

/// `fedrouter status` against a running server: the remote domain it talks to, with the
/// outbound and inbound streams authenticated by dialback, and a domain that failed, with
/// its error and backoff.
#[test]
fn status_shows_streams_and_failures() {
    const NET: u8 = 213;
    let mut records = xmpp_server("a.test", ip(NET, 2));
    records.extend(xmpp_server("b.test", ip(NET, 3)));
    let _dns = zone(NET, records);
    let a = Fedrouter::start(
        "a.test",
        &config(NET, ip(NET, 2), &["a.test"], 2, TWO_STREAMS),
    );
    let _b = Fedrouter::start(
        "b.test",
        &config(NET, ip(NET, 3), &["b.test"], 2, TWO_STREAMS),
    );
    assert_pong(&a.ping("b.test"), "a → b");
    let err = a.ping("nowhere.test");
    assert_eq!(err["result"], "error", "{err}");

    let run = |json: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_fedrouter"));
        cmd.args(["status", "--admin", &a.admin.to_string()]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().expect("run fedrouter status");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).expect("UTF-8")
    };
    let v: serde_json::Value = serde_json::from_str(&run(true)).expect("JSON");
    let domains: Vec<&serde_json::Value> = v.as_array().expect("array").iter().collect();
    let b = domains
        .iter()
        .find(|d| d["domain"] == "b.test")
        .unwrap_or_else(|| panic!("no b.test: {v}"));
    let streams = b["streams"].as_array().expect("streams");
    for dir in ["out", "in"] {
        let s = streams
            .iter()
            .find(|s| s["direction"] == dir)
            .unwrap_or_else(|| panic!("no {dir} stream for b.test: {b}"));
        assert_eq!(s["state"], "authenticated", "{s}");
        assert_eq!(s["authenticated"][0]["method"], "dialback", "{s}");
    }
    let c = domains
        .iter()
        .find(|d| d["domain"] == "nowhere.test")
        .unwrap_or_else(|| panic!("no nowhere.test: {v}"));
    assert!(
        c["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("remote-server-not-found")),
        "{c}"
    );
    assert!(c["backoff_s"].as_f64().is_some_and(|b| b > 0.0), "{c}");
    assert_eq!(c["failures"], 1, "{c}");

    let table = run(false);
    let line = table
        .lines()
        .find(|l| l.starts_with("nowhere.test"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        line.contains("remote-server-not-found") && line.contains("retry in"),
        "{line}"
    );
    assert!(
        table.lines().any(|l| l.starts_with("b.test")
            && l.contains(" out ")
            && l.contains("dialback:a.test")),
        "{table}"
    );
}

/// The certificate a TLS server at `addr` presents (no verification: we only look).
fn presented_certificate(addr: std::net::SocketAddr, sni: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    fedrouter::tls::install_default_provider();
    let cfg = fedrouter::tls::client_config(None, false, None, &[b"xmpp-server"]).expect("config");
    let name = fedrouter::tls::server_name(sni).expect("name");
    let mut tls = rustls::ClientConnection::new(cfg, name).expect("client");
    let mut sock =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Bounded: a handshake is a few round trips.
    for _ in 0..50 {
        if !tls.is_handshaking() {
            break;
        }
        while tls.wants_write() {
            let mut out = Vec::new();
            tls.write_tls(&mut out).unwrap();
            sock.write_all(&out).unwrap();
        }
        if tls.is_handshaking() && tls.wants_read() {
            let mut buf = [0u8; 16384];
            let n = sock.read(&mut buf).expect("read");
            assert!(n > 0, "closed during the handshake");
            tls.read_tls(&mut &buf[..n]).unwrap();
            tls.process_new_packets().expect("TLS");
        }
    }
    tls.peer_certificates().expect("a certificate")[0].to_vec()
}

/// SIGHUP: new certificates are presented to new connections; the open S2S streams stay
/// (the same streams carry the next ping, none is set up again).
#[test]
fn sighup_reloads_certificates_without_dropping_streams() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    const NET: u8 = 214;
    let mut records = xmpp_server("a.test", ip(NET, 2));
    records.extend(xmpp_server("b.test", ip(NET, 3)));
    let _dns = zone(NET, records);
    let ca = fedrouter_testkit::TestCa::new("reload test CA").expect("CA");
    let first = ca.issue("a.test").expect("leaf");
    let tls = r#"
[[tls.certificate]]
domain = "a.test"
cert = "a.crt"
key = "a.key"
"#;
    let a = Fedrouter::start_with(
        "a.test",
        &config(
            NET,
            ip(NET, 2),
            &["a.test"],
            2,
            &format!("{GOOGLE_STYLE}{tls}"),
        ),
        &[("a.crt", &first.chain_pem()), ("a.key", &first.key_pem())],
    );
    let _b = Fedrouter::start(
        "b.test",
        &config(NET, ip(NET, 3), &["b.test"], 2, GOOGLE_STYLE),
    );
    assert_pong(&a.ping("b.test"), "before");
    let streams_before = a.log_lines(&["authenticated"]).len();
    let der = |pem: &str| {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .expect("PEM")
            .to_vec()
    };
    let direct = std::net::SocketAddr::new(ip(NET, 2).into(), 5270);
    assert_eq!(
        presented_certificate(direct, "a.test"),
        der(&first.chain_pem())
    );

    let second = ca.issue("a.test").expect("leaf");
    std::fs::write(a.dir().join("a.crt"), second.chain_pem()).unwrap();
    std::fs::write(a.dir().join("a.key"), second.key_pem()).unwrap();
    a.signal(libc::SIGHUP);
    a.wait_log(&["reloaded: certificates"], Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no reload logged:\n{}", a.log()));

    assert_eq!(
        presented_certificate(direct, "a.test"),
        der(&second.chain_pem()),
        "new connections get the new certificate"
    );
    assert_pong(&a.ping("b.test"), "after");
    assert_eq!(
        a.log_lines(&["authenticated"]).len(),
        streams_before,
        "no stream was set up again: the open ones were kept\n{}",
        a.log()
    );
}
