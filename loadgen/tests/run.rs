//! End-to-end runs of the `loadgen` binary against an embedded fedrouter on loopback: real
//! sockets, a real DNS server (the peers' zone), real S2S dialback and SASL EXTERNAL, real
//! C2S logins with SCRAM. Each test uses its own loopback addresses (127.0.233.x for the SUT
//! and DNS, its own /16 for the peers) so they run in parallel.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

/// Upper bound of one run (the binary also stops by itself).
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

fn loadgen(out: &Path, args: &[&str]) -> Output {
    loadgen_log(out, args, "warn")
}

/// Runs loadgen with `RUST_LOG=log` (the embedded fedrouter's log goes to stderr).
fn loadgen_log(out: &Path, args: &[&str], log: &str) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loadgen"));
    cmd.args(args)
        .arg("--out")
        .arg(out)
        .arg("--no-progress")
        .env("RUST_LOG", log);
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn loadgen");
    let pid = child.id();
    let start = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(RUN_TIMEOUT) {
        Ok(out) => out.expect("loadgen output"),
        Err(_) => {
            // SAFETY: kill(2) on the pid of the child we spawned.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("loadgen did not stop within {:?}", start.elapsed());
        }
    }
}

/// The sum of the samples of `name` whose labels include every one of `labels`, from the
/// Prometheus text at `GET /metrics` of the admin endpoint `admin`; `None` when it does not
/// answer 200 (shards busy) within a few seconds.
fn metric(admin: std::net::SocketAddr, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    use std::io::{Read as _, Write as _};
    let limit = Duration::from_secs(10);
    let mut s = std::net::TcpStream::connect_timeout(&admin, limit).ok()?;
    s.set_read_timeout(Some(limit)).ok()?;
    s.set_write_timeout(Some(limit)).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    if head.split_whitespace().nth(1) != Some("200") {
        return None;
    }
    Some(
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(series, _)| {
                let (n, rest) = series.split_once('{').unwrap_or((series, ""));
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|(_, v)| v.parse::<f64>().ok())
            .sum(),
    )
}

fn summary(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("summary.json")).expect("summary.json");
    serde_json::from_str(&text).expect("summary.json is JSON")
}

fn text(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn mixed_scenario_scaled_down_has_zero_loss() {
    let out = tempfile::tempdir().expect("tempdir");
    let o = loadgen(
        out.path(),
        &[
            "--peers",
            "200",
            "--users-per-peer",
            "5",
            "--local-users",
            "20",
            "--scenario",
            "mixed",
            "--rate",
            "300",
            "--warmup",
            "1s",
            "--duration",
            "8s",
            "--sut-ip",
            "127.0.233.1",
            "--dns",
            "127.0.233.53:0",
            "--peer-net",
            "127.79",
            "--sut-pid",
            "self",
        ],
    );
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("p99.9"),
        "the percentile table is printed: {all}"
    );
    assert!(stdout.contains("accounting: OK"), "{all}");
    let s = summary(out.path());
    assert_eq!(s["accounting"]["ok"], true, "{s}");
    assert_eq!(s["accounting"]["lost"], 0, "{s}");
    // Every kind of operation of the blend happened and was measured.
    for step in [
        "message",
        "presence",
        "subscribe",
        "subscription_complete",
        "stream_setup",
    ] {
        let count = s["steps"][step]["count"].as_u64().unwrap_or(0);
        assert!(count > 0, "no {step} samples: {s}");
    }
    // Subscribe operations that ran as presence (fresh pairs used up) are reported in
    // summary.json and, when there are any, under the table.
    let as_presence = s["params"]["subscribe_as_presence"]
        .as_u64()
        .expect("subscribe_as_presence in summary.json");
    assert_eq!(
        as_presence > 0,
        stdout.contains("subscribe operations ran as presence"),
        "{all}"
    );
    // Presence fans out: more presence deliveries than operations of that kind.
    let sent = s["accounting"]["sent"].as_u64().expect("sent");
    let received = s["accounting"]["received"].as_u64().expect("received");
    assert_eq!(
        sent,
        received + s["accounting"]["bounced"].as_u64().expect("bounced")
    );
    assert!(received > 1000, "{s}");
    // --sut-pid self (the embedded fedrouter runs in loadgen): CPU over the measured
    // window, and per 1,000 stanzas received in it.
    let cpu = &s["params"]["sut_cpu"][0];
    assert!(cpu["cpu_s"].as_f64().expect("cpu_s") > 0.0, "{s}");
    assert!(cpu["stanzas"].as_u64().expect("stanzas") > 0, "{s}");
    assert!(
        cpu["cpu_ms_per_1000_stanzas"]
            .as_f64()
            .expect("cpu_ms_per_1000_stanzas")
            > 0.0,
        "{s}"
    );
    assert_eq!(
        s["params"]["sut_cpu_errors"].as_array().map(Vec::len),
        Some(0),
        "{s}"
    );
    assert!(stdout.contains("ms per 1,000 stanzas"), "{all}");
    // The histogram outputs exist and read back.
    let hgrm = std::fs::read_to_string(out.path().join("loadgen-message.hgrm")).expect("hgrm");
    assert!(hgrm.contains("#[Max"), "{hgrm}");
    let hlog = std::fs::read(out.path().join("intervals.hlog")).expect("hlog");
    let intervals = IntervalLogIterator::new(&hlog)
        .filter(|e| matches!(e, Ok(LogEntry::Interval(_))))
        .count();
    assert!(
        intervals >= 5,
        "one interval per second and step: {intervals}"
    );
    let svg = std::fs::read_to_string(out.path().join("latency.svg")).expect("svg");
    assert!(svg.contains("<svg"), "svg");
}

#[test]
fn churn_over_google_apps_multiplexed_streams_loses_nothing() {
    let out = tempfile::tempdir().expect("tempdir");
    let o = loadgen(
        out.path(),
        &[
            "--peers",
            "120",
            "--users-per-peer",
            "2",
            "--local-users",
            "10",
            "--domains-per-server",
            "40",
            "--scenario",
            "churn",
            "--rate",
            "20",
            "--warmup",
            "0s",
            "--duration",
            "5s",
            "--sut-ip",
            "127.0.233.2",
            "--dns",
            "127.0.233.54:0",
            "--peer-net",
            "127.80",
        ],
    );
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    let s = summary(out.path());
    assert_eq!(s["accounting"]["lost"], 0, "{s}");
    // 3 servers at start, then one set-up per churn.
    let setups = s["steps"]["stream_setup"]["count"].as_u64().unwrap_or(0);
    assert!(setups > 10, "streams were reopened: {s}");
    assert!(
        s["steps"]["message"]["count"].as_u64().unwrap_or(0) > 100,
        "{s}"
    );
}

/// Churn that resets streams (TCP RST: whatever the kernel had not delivered is gone, in
/// both directions) loses nothing when the peers and fedrouter use XEP-0198 on S2S: each
/// side sends again, on the next stream, what the other had not acknowledged.
#[test]
fn churn_with_resets_loses_nothing_with_stream_management() {
    let out = tempfile::tempdir().expect("tempdir");
    let o = loadgen(
        out.path(),
        &[
            "--peers",
            "20",
            "--users-per-peer",
            "5",
            "--local-users",
            "10",
            "--scenario",
            "mixed",
            "--mix",
            "message=60,presence=20,churn=20",
            "--peer-sm",
            "--churn-reset",
            "--rate",
            "200",
            "--warmup",
            "0s",
            "--duration",
            "5s",
            "--sut-ip",
            "127.0.233.4",
            "--dns",
            "127.0.233.56:0",
            "--peer-net",
            "127.84",
        ],
    );
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    let s = summary(out.path());
    assert_eq!(s["params"]["peer_sm"], true, "{s}");
    assert_eq!(s["params"]["churn_reset"], true, "{s}");
    assert_eq!(s["accounting"]["lost"], 0, "{s}");
    assert_eq!(s["accounting"]["ok"], true, "{s}");
    // 20 streams at start, then one more per reset.
    let setups = s["steps"]["stream_setup"]["count"].as_u64().unwrap_or(0);
    assert!(setups > 40, "streams were reset and reopened: {s}");
    assert!(
        s["steps"]["message"]["count"].as_u64().unwrap_or(0) > 300,
        "{s}"
    );
}

#[test]
fn sasl_external_peers_with_loadgen_ca() {
    let out = tempfile::tempdir().expect("tempdir");
    let o = loadgen_log(
        out.path(),
        &[
            "--peers",
            "20",
            "--users-per-peer",
            "2",
            "--local-users",
            "5",
            "--peer-auth",
            "external",
            "--scenario",
            "message",
            "--rate",
            "50",
            "--warmup",
            "0s",
            "--duration",
            "3s",
            "--sut-ip",
            "127.0.233.3",
            "--dns",
            "127.0.233.55:0",
            "--peer-net",
            "127.81",
        ],
        "warn,fedrouter::runtime=info",
    );
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    // Both directions authenticated with SASL EXTERNAL, none with dialback: the SUT logs
    // each authenticated stream with its method.
    let stderr = String::from_utf8_lossy(&o.stderr);
    let external = stderr
        .lines()
        .filter(|l| l.contains("authenticated") && l.contains("method=SaslExternal"))
        .count();
    assert!(
        external >= 40,
        "20 domains, both directions: {external}\n{all}"
    );
    assert!(!stderr.contains("method=Dialback"), "{all}");
    assert!(
        out.path().join("peers-ca.pem").exists(),
        "the CA file for the SUT to trust"
    );
    let s = summary(out.path());
    assert_eq!(s["accounting"]["lost"], 0, "{s}");
    assert!(
        s["steps"]["message"]["count"].as_u64().unwrap_or(0) > 50,
        "{s}"
    );
}

/// `--peer-bidi`: the peers ask for XEP-0288 on the streams they open and fedrouter
/// answers on them, so it opens no connection to the peers at all (SASL EXTERNAL needs no
/// dialback verification connection): half the sockets, nothing lost. Loopback:
/// 127.0.10.x peers, 127.0.11.x SUT and DNS.
#[test]
fn bidi_peers_need_no_connection_from_the_sut() {
    let out = tempfile::tempdir().expect("tempdir");
    let o = loadgen(
        out.path(),
        &[
            "--peers",
            "20",
            "--users-per-peer",
            "2",
            "--local-users",
            "5",
            "--peer-auth",
            "external",
            "--peer-bidi",
            "--scenario",
            "mixed",
            "--mix",
            "message=60,presence=20,subscribe=20",
            "--rate",
            "100",
            "--warmup",
            "0s",
            "--duration",
            "3s",
            "--sut-ip",
            "127.0.11.4",
            "--dns",
            "127.0.11.53:0",
            "--peer-net",
            "127.0.10",
        ],
    );
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    let s = summary(out.path());
    assert_eq!(s["params"]["peer_bidi"], true, "{s}");
    assert_eq!(s["accounting"]["lost"], 0, "{s}");
    assert!(
        s["steps"]["message"]["count"].as_u64().unwrap_or(0) > 50,
        "{s}"
    );
    let sockets = &s["params"]["peer_sockets"];
    assert_eq!(sockets["opened"], 20, "one stream per peer domain: {s}");
    assert_eq!(sockets["bidi"], 20, "every peer stream bidirectional: {s}");
    assert_eq!(sockets["accepted"], 0, "the SUT opened no stream: {s}");
}

/// Google-Apps-style peers (20 domains behind each SRV target): the embedded fedrouter
/// multiplexes the domains of a target on one outbound stream per shard (XEP-0220 §2.4),
/// and the peers' inbound side answers the further `db:result`s and takes the stanzas of
/// every domain. With `--sut-no-multiplex`, one connection per domain. 127.23.x.x SUT
/// and DNS, 127.24.x.x peers.
#[test]
fn google_apps_targets_take_one_connection_per_sut_shard() {
    for (multiplex, net) in [(true, "1"), (false, "2")] {
        let out = tempfile::tempdir().expect("tempdir");
        let sut_ip = format!("127.23.{net}.2");
        let dns = format!("127.23.{net}.53:0");
        let peer_net = format!("127.24.{net}");
        let mut args = vec![
            "--peers",
            "60",
            "--domains-per-server",
            "20",
            "--users-per-peer",
            "2",
            "--local-users",
            "5",
            "--shards",
            "2",
            "--scenario",
            "mixed",
            "--mix",
            "message=60,presence=20,subscribe=20",
            "--rate",
            "100",
            "--warmup",
            "0s",
            "--duration",
            "3s",
            "--sut-ip",
            &sut_ip,
            "--dns",
            &dns,
            "--peer-net",
            &peer_net,
        ];
        if !multiplex {
            args.push("--sut-no-multiplex");
        }
        let o = loadgen(out.path(), &args);
        let all = text(&o);
        assert!(o.status.success(), "{all}");
        let s = summary(out.path());
        assert_eq!(s["accounting"]["lost"], 0, "{s}");
        assert_eq!(s["params"]["sut_multiplex"], multiplex, "{s}");
        let sockets = &s["params"]["peer_sockets"];
        let max = sockets["accepted_max_per_server"].as_u64().unwrap_or(0);
        if multiplex {
            assert!(
                max <= 2,
                "at most one connection per SUT shard and target: {s}"
            );
            assert!(sockets["accepted"].as_u64().unwrap_or(0) <= 6, "{s}");
        } else {
            assert_eq!(max, 20, "one connection per domain: {s}");
        }
    }
}

#[test]
fn bad_arguments_exit_2_with_a_message() {
    let out = tempfile::tempdir().expect("tempdir");
    let o = loadgen(out.path(), &["--scenario", "nonsense"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--scenario nonsense"));
    let o = loadgen(
        out.path(),
        &["--sut-s2s", "10.1.2.3:5269", "--sut-c2s", "127.0.0.1:5222"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("loopback"));
    // A --sut-pid that is no process: refused before anything starts, naming the pid.
    let o = loadgen(out.path(), &["--sut-pid", "4294967295"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--sut-pid 4294967295"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_sut_that_stops_mid_run_is_reported_as_loss() {
    /// Messages the SUT handles before it is stopped: traffic is flowing.
    const MESSAGES_BEFORE_STOP: f64 = 20.0;
    use loadgen::sut::{Embedded, EmbeddedOptions, Profile};
    fedrouter::tls::install_default_provider();
    let dns: std::net::SocketAddr = "127.0.233.56:5399".parse().expect("addr");
    let sut = Embedded::start(&EmbeddedOptions {
        domain: "cupdomain.test".into(),
        ip: "127.0.233.4".parse().expect("ip"),
        shards: 1,
        nameserver: dns,
        local_users: 5,
        password: "loadgen".into(),
        profile: Profile::Google,
        peer_ca_pem: None,
        multiplex: true,
    })
    .expect("embedded fedrouter");
    let ca = tempfile::NamedTempFile::new().expect("ca file");
    let cert = sut.data_dir.join("certs/cupdomain.test.crt");
    std::fs::copy(&cert, ca.path()).expect("copy the SUT's certificate");
    let out = tempfile::tempdir().expect("tempdir");
    let (s2s, c2s) = (sut.s2s.to_string(), sut.c2s.to_string());
    let out_path = out.path().to_path_buf();
    let ca_path = ca.path().display().to_string();
    let run = std::thread::spawn(move || {
        loadgen(
            &out_path,
            &[
                "--peers",
                "20",
                "--users-per-peer",
                "2",
                "--local-users",
                "5",
                "--scenario",
                "message",
                "--rate",
                "100",
                "--warmup",
                "0s",
                "--duration",
                "6s",
                "--drain",
                "2s",
                "--sut-s2s",
                &s2s,
                "--sut-c2s",
                &c2s,
                "--sut-ca",
                &ca_path,
                "--dns",
                "127.0.233.56:5399",
                "--peer-net",
                "127.83",
            ],
        )
    });
    // Wait until loadgen measures (its peers' streams are up: the SUT has inbound S2S) and
    // its messages flow through the SUT (counted by the SUT's metrics), then stop the SUT
    // mid-run. Bounded: 60 s of 50 ms turns, a hang catcher. What stays timing-dependent:
    // the SUT must stop before the run's 6 s are over; it stops as soon as traffic flows.
    let admin = sut.admin.expect("the embedded SUT has an admin endpoint");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut messages = 0.0;
    while Instant::now() < deadline {
        if out.path().join("intervals.hlog").exists() {
            messages =
                metric(admin, "fedrouter_stanzas_total", &[("kind", "message")]).unwrap_or(0.0);
            if messages >= MESSAGES_BEFORE_STOP {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        messages >= MESSAGES_BEFORE_STOP,
        "loadgen's messages did not flow through the SUT within 60 s ({messages} counted)"
    );
    sut.stop();
    let o = run.join().expect("loadgen thread");
    let all = text(&o);
    assert_eq!(o.status.code(), Some(1), "loss gives exit status 1: {all}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("!!! LOSS"),
        "{all}"
    );
    let s = summary(out.path());
    assert_eq!(s["accounting"]["ok"], false, "{s}");
    assert!(s["accounting"]["lost"].as_u64().unwrap_or(0) > 0, "{s}");
}
