//! The log of `fedrouter serve` as an operator reads it: plain text in a file (no colour
//! escapes), one JSON object per line with `--log-format json` or `log.format = "json"`,
//! one stream `id=` per line however often the stream restarted, and `RUST_LOG=debug`
//! showing fedrouter's debug lines without the DNS and TLS libraries' ones.
//!
//! Each server test owns the loopback range `127.0.N.0/24` (N = 247 to 250; see
//! `tests/runtime.rs` for the others). Every wait is bounded and waits on log lines or
//! answers, never on time alone.

#[path = "common/peer.rs"]
mod peer;
#[path = "common/server.rs"]
mod server;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use fedrouter::logging::directives;
use peer::{header, Peer};
use server::{assert_pong, config, ip, xmpp_server, zone, Fedrouter, Launch, GOOGLE_STYLE};

/// Longest wait for a log line or an answer.
const WAIT: Duration = Duration::from_secs(10);

/// STARTTLS required, then dialback (the generated self-signed certificates are not
/// checked).
const STARTTLS_DIALBACK: &str = r#"
[federation.default]
tls = "required"
auth = "dialback"
verify_certificates = false
"#;

/// The WARN a peer's stream error gets logged with.
const PEER_ERROR: &str = "the peer closed the stream with a stream error";

fn launch(args: &[&str], env: &[(&str, Option<&str>)]) -> Launch {
    Launch {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned)))
            .collect(),
    }
}

/// A scripted peer claiming b.test opens a stream to a.test at `addr` and ends it with a
/// stream error: the server logs [`PEER_ERROR`] at WARN inside the stream's span.
fn provoke_warning(addr: SocketAddr) {
    let mut p = Peer::connect(addr);
    p.send(header(Some("b.test"), "a.test").as_bytes())
        .expect("send header");
    assert!(
        p.read_until_contains("<stream:stream", WAIT),
        "no stream header from the server: {}",
        p.text()
    );
    p.send(
        b"<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
          </stream:error></stream:stream>",
    )
    .expect("send stream error");
    p.wait_closed(WAIT);
}

fn s2s(net: u8, host: u8) -> SocketAddr {
    SocketAddr::new(ip(net, host).into(), 5269)
}

// ---------------------------------------------------------------------------------------
// The filter and the configuration key (no server)
// ---------------------------------------------------------------------------------------

#[test]
fn a_bare_level_is_for_our_crates_only() {
    for (spec, want) in [
        ("debug", "fedrouter=debug,loadgen=debug,warn"),
        ("info", "fedrouter=info,loadgen=info,warn"),
        ("warn", "fedrouter=warn,loadgen=warn,warn"),
        ("error", "fedrouter=error,loadgen=error,error"),
        ("off", "fedrouter=off,loadgen=off,off"),
        (
            "debug,hickory_proto=debug",
            "hickory_proto=debug,fedrouter=debug,loadgen=debug,warn",
        ),
        // A target the spec names keeps its own level.
        ("fedrouter=trace,info", "fedrouter=trace,loadgen=info,warn"),
        (
            "fedrouter::dns=trace,debug",
            "fedrouter::dns=trace,fedrouter=debug,loadgen=debug,warn",
        ),
        // No bare level: as written.
        ("fedrouter=debug", "fedrouter=debug"),
        ("rustls=trace,fedrouter=info", "rustls=trace,fedrouter=info"),
    ] {
        assert_eq!(directives(spec), want, "{spec}");
    }
}

/// `serve` refuses a configuration with a bad `log.format` (exit 78, the key named) and a
/// bad `--log-format` (clap's usage error, the values listed), before starting anything.
#[test]
fn bad_formats_are_refused_by_serve() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[log]\nformat = \"xml\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fedrouter"))
        .args(["serve", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("log.format: \"xml\" is not a log format (expected \"text\" or \"json\")"),
        "{stderr}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_fedrouter"))
        .args(["serve", "--log-format", "xml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("text") && stderr.contains("json"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------

/// stderr to a file, NO_COLOR unset and a colour terminal type: no escape sequence, and
/// `grep ' WARN '` / `grep ' INFO '` find the lines.
#[test]
fn a_log_file_has_no_colour() {
    const NET: u8 = 247;
    let a = Fedrouter::start_launch(
        "a.test",
        &config(NET, ip(NET, 2), &["a.test"], 1, GOOGLE_STYLE),
        &[],
        launch(&[], &[("NO_COLOR", None), ("TERM", Some("xterm-256color"))]),
    );
    provoke_warning(s2s(NET, 2));
    let warn = a
        .wait_log(&[" WARN ", PEER_ERROR], WAIT)
        .unwrap_or_else(|| panic!("no WARN line for the peer's stream error:\n{}", a.log()));
    assert!(warn.contains("condition=policy-violation"), "{warn}");
    assert!(
        !a.log_lines(&[" INFO ", "open-file limit"]).is_empty(),
        "no INFO line:\n{}",
        a.log()
    );
    let log = a.log();
    assert!(
        !log.contains("\x1b["),
        "escape sequences in a log file:\n{log:?}"
    );
}

/// `--log-format json`, `log.format = "json"`, and the flag winning over the file: one
/// JSON object per line with `level`, `target` and `message`; the stream's span fields
/// in `span`.
#[test]
fn json_lines_from_the_flag_or_the_file() {
    const NET: u8 = 248;
    let flag = Fedrouter::start_launch(
        "flag",
        &config(NET, ip(NET, 2), &["a.test"], 1, GOOGLE_STYLE),
        &[],
        launch(&["--log-format", "json"], &[]),
    );
    let file = Fedrouter::start(
        "file",
        &config(
            NET,
            ip(NET, 3),
            &["a.test"],
            1,
            &format!("{GOOGLE_STYLE}\n[log]\nformat = \"json\"\n"),
        ),
    );
    let overridden = Fedrouter::start_launch(
        "overridden",
        &config(
            NET,
            ip(NET, 4),
            &["a.test"],
            1,
            &format!("{GOOGLE_STYLE}\n[log]\nformat = \"json\"\n"),
        ),
        &[],
        launch(&["--log-format", "text"], &[]),
    );

    provoke_warning(s2s(NET, 2));
    provoke_warning(s2s(NET, 3));
    for srv in [&flag, &file] {
        srv.wait_log(&["\"level\":\"WARN\"", PEER_ERROR], WAIT)
            .unwrap_or_else(|| panic!("{}: no JSON WARN line:\n{}", srv.name, srv.log()));
        let records: Vec<serde_json::Value> = srv
            .log()
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{}: not a JSON line ({e}): {l}", srv.name))
            })
            .collect();
        for r in &records {
            for key in ["timestamp", "level", "target", "message"] {
                assert!(r[key].is_string(), "{}: no {key}: {r}", srv.name);
            }
        }
        let warn = records.iter().find(|r| r["message"] == PEER_ERROR).unwrap();
        assert_eq!(warn["level"], "WARN", "{warn}");
        assert_eq!(warn["target"], "fedrouter::runtime::s2s", "{warn}");
        assert_eq!(warn["condition"], "policy-violation", "{warn}");
        assert_eq!(warn["span"]["name"], "s2s", "{warn}");
        assert_eq!(warn["span"]["peer_domain"], "b.test", "{warn}");
        assert!(warn["span"]["id"].is_string(), "{warn}");
        assert!(
            records.iter().any(|r| r["level"] == "INFO"
                && r["message"].as_str().unwrap().contains("open-file limit")),
            "{}: no INFO record",
            srv.name
        );
    }

    let log = overridden.log();
    let first = log.lines().next().expect("a log line");
    assert!(
        serde_json::from_str::<serde_json::Value>(first).is_err() && first.contains(" INFO "),
        "--log-format text did not win over log.format = \"json\": {first}"
    );
}

/// The fields of the stream span (`s2s{...}`) of a text line, if it has one.
fn stream_span(line: &str) -> Option<&str> {
    let start = line.find("s2s{")? + "s2s{".len();
    let end = start + line[start..].find("}:")?;
    Some(&line[start..end])
}

/// The values of the `id=` fields among a span's `key=value` fields, in order.
fn ids(fields: &str) -> Vec<&str> {
    fields
        .split(' ')
        .filter_map(|f| f.strip_prefix("id="))
        .map(|v| v.trim_matches('"'))
        .collect()
}

/// A stream that went through STARTTLS and a restart, then dialback: every line of its
/// span carries exactly one `id=` (the first stream id), while its `stream opened` lines
/// show each restart's id.
#[test]
fn one_stream_id_per_line_after_starttls_and_dialback() {
    const NET: u8 = 249;
    let mut records = xmpp_server("a.test", ip(NET, 2));
    records.extend(xmpp_server("b.test", ip(NET, 3)));
    let _dns = zone(NET, records);
    let a = Fedrouter::start(
        "a.test",
        &config(NET, ip(NET, 2), &["a.test"], 2, STARTTLS_DIALBACK),
    );
    let b = Fedrouter::start(
        "b.test",
        &config(NET, ip(NET, 3), &["b.test"], 2, STARTTLS_DIALBACK),
    );
    assert_pong(&a.ping("b.test"), "a → b");
    assert_pong(&b.ping("a.test"), "b → a");

    for srv in [&a, &b] {
        let log = srv.log();
        let mut restarts: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut stream_lines = 0;
        for line in log.lines() {
            let Some(span) = stream_span(line) else {
                continue;
            };
            let ids = ids(span);
            assert!(ids.len() <= 1, "{}: more than one id=: {line}", srv.name);
            let Some(id) = ids.first() else { continue };
            stream_lines += 1;
            if line.contains("stream opened") {
                let new = line
                    .split(' ')
                    .find_map(|f| f.strip_prefix("stream_id="))
                    .unwrap_or_else(|| panic!("no stream_id: {line}"));
                restarts
                    .entry((*id).to_owned())
                    .or_default()
                    .insert(new.to_owned());
            }
        }
        assert!(stream_lines > 0, "{}: no stream lines:\n{log}", srv.name);
        assert!(
            restarts.values().any(|ids| ids.len() >= 2),
            "{}: no stream restarted after STARTTLS: {restarts:?}\n{log}",
            srv.name
        );
        let authenticated = srv.log_lines(&["authenticated", "method=Dialback"]);
        assert!(
            !authenticated.is_empty(),
            "{}: no dialback authentication:\n{log}",
            srv.name
        );
        for line in authenticated {
            let n = stream_span(&line).map(|s| ids(s).len());
            assert_eq!(n, Some(1), "{}: {line}", srv.name);
        }
    }
}

/// `RUST_LOG=debug`: fedrouter's debug records and none below WARN from any library
/// (hickory, rustls, ...), while `RUST_LOG=debug,hickory_proto=debug,rustls=debug` still
/// shows those libraries. The pongs came after the DNS look-ups and TLS handshakes, so
/// their records would be in the log by then.
#[test]
fn rust_log_debug_is_fedrouters_own() {
    const NET: u8 = 250;
    let mut records = xmpp_server("a.test", ip(NET, 2));
    records.extend(xmpp_server("b.test", ip(NET, 3)));
    let _dns = zone(NET, records);
    let a = Fedrouter::start_launch(
        "a.test",
        &config(NET, ip(NET, 2), &["a.test"], 2, STARTTLS_DIALBACK),
        &[],
        launch(&["--log-format", "json"], &[("RUST_LOG", Some("debug"))]),
    );
    let b = Fedrouter::start_launch(
        "b.test",
        &config(NET, ip(NET, 3), &["b.test"], 2, STARTTLS_DIALBACK),
        &[],
        launch(
            &["--log-format", "json"],
            &[(
                "RUST_LOG",
                Some("debug,hickory_proto=debug,hickory_resolver=debug,rustls=debug"),
            )],
        ),
    );
    assert_pong(&a.ping("b.test"), "a → b");
    assert_pong(&b.ping("a.test"), "b → a");

    let parse = |srv: &Fedrouter| -> Vec<(String, String)> {
        srv.log()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {l}", srv.name));
                (
                    v["level"].as_str().unwrap_or_default().to_owned(),
                    v["target"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let ours = |target: &str| target == "fedrouter" || target.starts_with("fedrouter::");
    let verbose = |level: &str| matches!(level, "INFO" | "DEBUG" | "TRACE");

    let a_records = parse(&a);
    assert!(
        a_records.iter().any(|(l, t)| l == "DEBUG" && ours(t)),
        "a: no fedrouter DEBUG record"
    );
    let foreign: Vec<_> = a_records
        .iter()
        .filter(|(l, t)| verbose(l) && !ours(t))
        .collect();
    assert!(
        foreign.is_empty(),
        "a: library records below WARN with RUST_LOG=debug: {foreign:?}"
    );

    let b_records = parse(&b);
    for library in ["hickory", "rustls"] {
        assert!(
            b_records
                .iter()
                .any(|(l, t)| l == "DEBUG" && t.starts_with(library)),
            "b: no {library} DEBUG record although RUST_LOG names it"
        );
    }
}
