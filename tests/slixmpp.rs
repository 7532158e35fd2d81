//! Interop: slixmpp (a client library from PyPI that no one here wrote) drives
//! `fedrouter serve`'s C2S side through the RFC 6121 life cycle, then the store is checked.
//!
//! `tests/slixmpp/roster_flow.py` logs alice and bob in (STARTTLS verified against the
//! server's generated certificate, SASL SCRAM, resource binding), makes them subscribe to
//! each other (roster set, `subscribe`, slixmpp's automatic `subscribed`), waits for
//! presence both ways, exchanges a chat message each way, and has alice remove bob from
//! her roster; it prints one JSON line of what both clients saw. This test runs it against
//! a fresh server, checks that JSON, then stops the server and reads the rosters back from
//! `<data_dir>/fedrouter.db`.
//!
//! The Python interpreter is `$FEDROUTER_SLIXMPP_PYTHON`, else
//! `target/slixmpp-venv/bin/python` (made by `.ci/setup-slixmpp`). Without either the test
//! FAILS: an interop test that skips itself proves nothing.
//!
//! The small services get a script each (`tests/slixmpp/services.py` is what they
//! share), run against a fresh server of their own: `carbons.py` (XEP-0280 with slixmpp's
//! xep_0280: `<received/>` and `<sent/>` copies to a second resource, `<private/>` not
//! copied), `password_change.py` (XEP-0077 with xep_0077: the old password fails, the new
//! one logs in, checked again here with a new login) and `blocking.py` (XEP-0191 with
//! xep_0191: pushes, a blocked contact's message does not arrive before a marker, the
//! refusal of outbound messages, unblock).
//!
//! `tests/slixmpp/offline.py` checks offline messages (XEP-0160) as slixmpp sees them:
//! alice sends bob, who is offline, a `chat`, a `normal` and a `headline` message; once
//! the server has stored two (its `offline_stored` counter), bob logs in and sends
//! initial presence, and slixmpp's XEP-0203 plugin must read a delay stamp
//! (`msg['delay']['stamp']`) from the server's domain on both stored messages, in order,
//! and the headline must not come.
//!
//! `tests/slixmpp/sm_resume.py` checks XEP-0198 resumption as slixmpp's xep_0198 plugin
//! does it: bob's connection is aborted (no `</stream:stream>`), alice sends him three
//! messages while the server holds his session detached, bob reconnects and resumes
//! (`<resumed/>`, no new session) and gets the three, in order, exactly once (a marker
//! sent after shows nothing more came); the server counts the resumption on `/metrics`.
//!
//! Loopback range: `127.0.230.0/24` (server on `127.0.230.1`: C2S 5222, S2S 5269, admin
//! 9269; nothing listens on the DNS address, nothing here needs DNS); the services'
//! servers on `127.0.195.1`, `127.0.196.1` and `127.0.197.1`; the offline test's on
//! `127.0.165.1`; the resumption test's on `127.0.171.1`.

#[path = "common/server.rs"]
mod server;
#[path = "common/slixmpp.rs"]
mod slixmpp_runner;

use std::path::Path;
use std::time::Duration;

use fedrouter::store::sqlite::SqliteStore;
use fedrouter::store::{Store, StoredItem, DB_FILE};
use serde_json::Value;
use server::{add_user, Fedrouter};
use slixmpp_runner::{python, run_script};

const HOST: &str = "127.0.230.1";
const C2S_PORT: u16 = 5222;
const ALICE: &str = "alice@a.test";
const BOB: &str = "bob@a.test";
const ALICE_PASSWORD: &str = "correct horse alice";
const BOB_PASSWORD: &str = "battery staple bob";

/// The bodies `roster_flow.py` sends (`MESSAGE_A`, `MESSAGE_B` there).
const MESSAGE_A: &str = "hello bob, from alice \u{e9}\u{65e5} <&>";
const MESSAGE_B: &str = "hello alice, bob here";

/// The script's own bound on the whole flow (`--timeout`), seconds.
const FLOW_TIMEOUT_S: u64 = 30;

/// Our bound on the script's process: its flow, its clean disconnect (at most 12 s more,
/// see the script) and Python's start-up.
const SCRIPT_LIMIT: Duration = Duration::from_secs(FLOW_TIMEOUT_S + 30);

fn toml() -> String {
    toml_on(HOST)
}

/// The configuration of a one-domain server listening on `host`.
fn toml_on(host: &str) -> String {
    format!(
        r#"domains = ["a.test"]
shards = 2

[listen]
c2s = ["{host}:{C2S_PORT}"]
s2s = ["{host}:5269"]
s2s_tls = []
admin = "{host}:9269"

[dns]
nameservers = ["{host}:5300"]
timeout = "2s"
"#
    )
}

/// `v[a][b]...` or a panic naming the path and the JSON.
fn at<'v>(v: &'v Value, path: &[&str], all: &str) -> &'v Value {
    path.iter().fold(v, |v, k| match v.get(k) {
        Some(x) => x,
        None => panic!("no {path:?} in the script's result: {all}"),
    })
}

/// The last roster version a client saw (`ver` of its last roster result or push).
fn last_ver(v: &Value, client: &str, all: &str) -> u64 {
    let log = at(v, &["roster_log", client], all)
        .as_array()
        .unwrap_or_else(|| panic!("roster_log.{client} is not a list: {all}"));
    let ver = log
        .last()
        .and_then(|e| e.get(2))
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{client}: no roster version in the last roster stanza: {all}"));
    ver.parse()
        .unwrap_or_else(|e| panic!("{client}: roster ver {ver:?} is not a number ({e}): {all}"))
}

#[test]
fn slixmpp_roster_subscription_presence_messages() {
    let python = python();
    let mut srv = Fedrouter::start("a.test", &toml());
    let config = srv.config_path();
    add_user(&config, ALICE, ALICE_PASSWORD);
    add_user(&config, BOB, BOB_PASSWORD);
    let ca = srv.dir().join("data/certs/a.test.crt");
    assert!(ca.exists(), "no generated certificate at {}", ca.display());

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slixmpp/roster_flow.py");
    let args: Vec<String> = vec![
        script.display().to_string(),
        HOST.into(),
        C2S_PORT.to_string(),
        ca.display().to_string(),
        ALICE.into(),
        ALICE_PASSWORD.into(),
        BOB.into(),
        BOB_PASSWORD.into(),
        "--timeout".into(),
        FLOW_TIMEOUT_S.to_string(),
        "--debug".into(),
    ];
    let run = run_script(&python, &args, SCRIPT_LIMIT);
    let line = run.stdout.lines().last().unwrap_or("").to_owned();
    let context = || {
        format!(
            "exit: {}\nstdout:\n{}\nslixmpp debug log (stderr):\n{}",
            run.status, run.stdout, run.stderr
        )
    };
    let result: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("the script's last line is not JSON ({e})\n{}", context()));
    assert!(
        run.status.success() && result["ok"] == true,
        "the slixmpp flow failed: {}\n{}",
        result["error"],
        context()
    );
    if std::env::var_os("FEDROUTER_TEST_LOGS").is_some() {
        eprintln!("{}", context());
    }

    // Subscription states as pushed to each client (RFC 6121 §3.1, Appendix A).
    let r = &result;
    let st = |step: &str, client: &str, contact: &str| {
        at(r, &["rosters", step, client, contact], &line).clone()
    };
    assert_eq!(
        st("a_added_b", "A", BOB),
        serde_json::json!(["none", null]),
        "{line}"
    );
    assert_eq!(
        st("a_subscribed_to_b", "A", BOB),
        serde_json::json!(["to", null]),
        "{line}"
    );
    assert_eq!(
        st("a_subscribed_to_b", "B", ALICE),
        serde_json::json!(["from", null]),
        "{line}"
    );
    assert_eq!(
        st("mutual_subscription", "A", BOB),
        serde_json::json!(["both", null]),
        "{line}"
    );
    assert_eq!(
        st("mutual_subscription", "B", ALICE),
        serde_json::json!(["both", null]),
        "{line}"
    );
    assert_eq!(
        st("a_removed_b", "B", ALICE),
        serde_json::json!(["none", null]),
        "{line}"
    );
    assert_eq!(
        at(r, &["rosters", "a_removed_b", "A"], &line),
        &serde_json::json!({}),
        "{line}"
    );
    // The pending-out state was pushed while alice waited for bob's answer.
    let a_log = at(r, &["roster_log", "A"], &line).to_string();
    assert!(
        a_log.contains(r#"{"bob@a.test":["none","subscribe"]}"#),
        "alice never saw ask='subscribe' on bob: {line}"
    );

    // The messages, exactly as sent (escaping and non-ASCII survive).
    assert!(
        at(r, &["messages", "B"], &line)
            .as_array()
            .is_some_and(|m| m.contains(&serde_json::json!([ALICE, MESSAGE_A]))),
        "bob did not get alice's message: {line}"
    );
    assert!(
        at(r, &["messages", "A"], &line)
            .as_array()
            .is_some_and(|m| m.contains(&serde_json::json!([BOB, MESSAGE_B]))),
        "alice did not get bob's reply: {line}"
    );

    // The store after a clean stop: what the clients were told is what is durable.
    assert!(srv.stop(), "fedrouter did not exit on SIGTERM");
    let mut store =
        SqliteStore::open(srv.dir().join("data").join(DB_FILE)).expect("open the store");
    let (alice_ver, alice_items) = store.roster(ALICE).expect("alice's roster");
    let (bob_ver, bob_items) = store.roster(BOB).expect("bob's roster");
    assert!(
        alice_items
            .iter()
            .all(|i| i.contact != BOB || (!i.in_roster && i.sub_state() == Default::default())),
        "bob is still on alice's stored roster: {alice_items:?}"
    );
    assert_eq!(
        bob_items,
        vec![StoredItem {
            contact: ALICE.into(),
            name: None,
            groups: vec![],
            subscription: "none".into(),
            pending_out: false,
            pending_in: None,
            pre_approved: false,
            in_roster: true,
        }],
        "bob's stored roster"
    );
    assert_eq!(
        alice_ver,
        last_ver(r, "A", &line),
        "alice's stored roster version vs her last push"
    );
    assert_eq!(
        bob_ver,
        last_ver(r, "B", &line),
        "bob's stored roster version vs his last push"
    );

    // RFC 6120 §10.1: stanzas one client sent the other arrive in the order sent.
    assert_eq!(
        at(r, &["order_violations"], &line),
        &serde_json::json!([]),
        "stanzas delivered out of order (RFC 6120 §10.1 in-order processing)\n{}",
        context()
    );
}

/// Runs `tests/slixmpp/<script>` against `srv` (on `host`) with `args` after HOST PORT
/// CA_CERT; returns its JSON line, failing with the script's output unless it passed.
fn run_service_script(srv: &Fedrouter, host: &str, script: &str, args: &[&str]) -> Value {
    let python = python();
    let ca = srv.dir().join("data/certs/a.test.crt");
    assert!(ca.exists(), "no generated certificate at {}", ca.display());
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/slixmpp")
        .join(script);
    let mut all: Vec<String> = vec![
        path.display().to_string(),
        host.into(),
        C2S_PORT.to_string(),
        ca.display().to_string(),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    all.extend([
        "--timeout".into(),
        FLOW_TIMEOUT_S.to_string(),
        "--debug".into(),
    ]);
    let run = run_script(&python, &all, SCRIPT_LIMIT);
    let line = run.stdout.lines().last().unwrap_or("").to_owned();
    let context = || {
        format!(
            "exit: {}\nstdout:\n{}\nslixmpp debug log (stderr):\n{}",
            run.status, run.stdout, run.stderr
        )
    };
    let result: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("{script}: the last line is not JSON ({e})\n{}", context()));
    assert!(
        run.status.success() && result["ok"] == true,
        "{script} failed: {}\n{}",
        result["error"],
        context()
    );
    result
}

/// The steps a script reports, in order.
fn steps(v: &Value) -> Vec<String> {
    v["steps"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn slixmpp_carbons_to_a_second_resource() {
    const H: &str = "127.0.195.1";
    let srv = Fedrouter::start("a.test", &toml_on(H));
    add_user(&srv.config_path(), ALICE, ALICE_PASSWORD);
    add_user(&srv.config_path(), BOB, ALICE_PASSWORD);
    let r = run_service_script(&srv, H, "carbons.py", &[ALICE, BOB, ALICE_PASSWORD]);
    assert_eq!(
        steps(&r),
        [
            "login",
            "enabled",
            "received_carbon",
            "sent_carbon",
            "private_not_copied"
        ],
        "{r}"
    );
    assert_eq!(
        r["carbons"],
        serde_json::json!({"received": ["to the phone", "marker"], "sent": ["from the phone"]}),
        "{r}"
    );
}

#[test]
fn slixmpp_password_change() {
    const H: &str = "127.0.196.1";
    const NEW: &str = "a new & longer password";
    let srv = Fedrouter::start("a.test", &toml_on(H));
    add_user(&srv.config_path(), ALICE, ALICE_PASSWORD);
    let r = run_service_script(&srv, H, "password_change.py", &[ALICE, ALICE_PASSWORD, NEW]);
    assert_eq!(
        steps(&r),
        ["login", "changed", "old_refused", "new_accepted"],
        "{r}"
    );
    // The store holds credentials for the new password only.
    let mut store =
        SqliteStore::open(srv.dir().join("data").join(DB_FILE)).expect("open the store");
    let creds = store
        .credentials(ALICE, fedrouter::store::ScramHash::Sha256)
        .expect("read credentials")
        .expect("alice has SCRAM-SHA-256 credentials");
    let again = fedrouter::store::ScramCredentials::derive(
        NEW,
        creds.mechanism,
        &creds.salt,
        creds.iterations,
    )
    .expect("derive");
    assert_eq!(
        again, creds,
        "the stored credentials are not the new password's"
    );
}

#[test]
fn slixmpp_blocking() {
    const H: &str = "127.0.197.1";
    const CAROL: &str = "carol@a.test";
    let srv = Fedrouter::start("a.test", &toml_on(H));
    for u in [ALICE, BOB, CAROL] {
        add_user(&srv.config_path(), u, ALICE_PASSWORD);
    }
    let r = run_service_script(&srv, H, "blocking.py", &[ALICE, BOB, CAROL, ALICE_PASSWORD]);
    assert_eq!(
        steps(&r),
        [
            "login",
            "blocked",
            "inbound_blocked",
            "outbound_refused",
            "unblocked"
        ],
        "{r}"
    );
    assert_eq!(r["blocklist"], serde_json::json!([BOB]), "{r}");
    assert_eq!(
        r["errors"],
        serde_json::json!({
            "bob": [["blocked-1", "service-unavailable"]],
            "alice": [["to-blocked-1", "not-acceptable"]],
        }),
        "{r}"
    );
}

/// Runs `tests/slixmpp/offline.py` with `args` (after the script path); returns its JSON
/// result, failing with its output when it did not succeed.
fn offline_phase(python: &Path, args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slixmpp/offline.py");
    let mut all = vec![script.display().to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    all.extend([
        "--timeout".into(),
        FLOW_TIMEOUT_S.to_string(),
        "--debug".into(),
    ]);
    let run = run_script(python, &all, SCRIPT_LIMIT);
    let line = run.stdout.lines().last().unwrap_or("").to_owned();
    let context = || {
        format!(
            "exit: {}\nstdout:\n{}\nslixmpp debug log (stderr):\n{}",
            run.status, run.stdout, run.stderr
        )
    };
    let result: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("the script's last line is not JSON ({e})\n{}", context()));
    assert!(
        run.status.success() && result["ok"] == true,
        "offline.py {} failed: {}\n{}",
        args[0],
        result["error"],
        context()
    );
    result
}

#[test]
fn slixmpp_offline_messages_with_delay_stamp() {
    const OFFLINE_HOST: &str = "127.0.165.1";
    let python = python();
    let srv = Fedrouter::start("a.test", &toml_on(OFFLINE_HOST));
    let config = srv.config_path();
    add_user(&config, ALICE, ALICE_PASSWORD);
    add_user(&config, BOB, BOB_PASSWORD);
    let ca = srv.dir().join("data/certs/a.test.crt");
    let ca = ca.display().to_string();
    let port = C2S_PORT.to_string();
    let before = std::time::SystemTime::now();

    offline_phase(
        &python,
        &[
            "send",
            OFFLINE_HOST,
            &port,
            &ca,
            ALICE,
            ALICE_PASSWORD,
            "--to",
            BOB,
        ],
    );
    // Both storable messages are committed (the counter counts commits).
    let deadline = std::time::Instant::now() + Duration::from_secs(FLOW_TIMEOUT_S);
    // Bounded: FLOW_TIMEOUT_S / 20 ms turns at most.
    while srv.metric("fedrouter_offline_stored_total", &[]) != Some(2.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not store alice's two messages: {:?}",
            srv.metric("fedrouter_offline_stored_total", &[])
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let r = offline_phase(
        &python,
        &[
            "receive",
            OFFLINE_HOST,
            &port,
            &ca,
            BOB,
            BOB_PASSWORD,
            "--expect",
            "2",
        ],
    );
    let msgs = r["messages"].as_array().cloned().unwrap_or_default();
    let ids: Vec<&str> = msgs.iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(
        ids,
        ["off-chat", "off-normal"],
        "stored messages in order, no headline: {r}"
    );
    for (m, (t, body)) in msgs.iter().zip([
        ("chat", "stored chat \u{e9}\u{65e5} <&>"),
        ("normal", "stored normal"),
    ]) {
        assert_eq!(m["from"], ALICE, "{r}");
        assert_eq!(m["type"], t, "{r}");
        assert_eq!(m["body"], body, "{r}");
        assert_eq!(m["delay_from"], "a.test", "XEP-0203 from: {r}");
        let stamp = m["delay_stamp"]
            .as_str()
            .unwrap_or_else(|| panic!("slixmpp saw no delay stamp: {r}"));
        // slixmpp's isoformat() of an aware UTC datetime: 2026-12-06T16:04:05.123000+00:00
        assert!(stamp.ends_with("+00:00"), "stamp not UTC: {stamp}: {r}");
        let at = humantime::parse_rfc3339_weak(&stamp.replace("+00:00", "Z"))
            .unwrap_or_else(|e| panic!("stamp {stamp}: {e}: {r}"));
        let ms = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_millis()
        };
        assert!(
            ms(at) >= ms(before),
            "stamp {stamp} before the test started: {r}"
        );
    }
}

#[test]
fn slixmpp_stream_resumption_after_abrupt_drop() {
    const H: &str = "127.0.171.1";
    let srv = Fedrouter::start("a.test", &toml_on(H));
    add_user(&srv.config_path(), ALICE, ALICE_PASSWORD);
    add_user(&srv.config_path(), BOB, ALICE_PASSWORD);
    let admin = format!("{H}:9269");
    let r = run_service_script(
        &srv,
        H,
        "sm_resume.py",
        &[&admin, ALICE, BOB, ALICE_PASSWORD],
    );
    assert_eq!(
        steps(&r),
        [
            "sm_enabled",
            "dropped",
            "sent_while_away",
            "resumed",
            "received_in_order_once"
        ],
        "{r}"
    );
    assert_eq!(
        r["received"],
        serde_json::json!(["sm-1", "sm-2", "sm-3", "sm-marker"]),
        "{r}"
    );
    let detached = srv.metric("fedrouter_c2s_sessions_detached_total", &[]);
    assert_eq!(detached, Some(1.0), "sessions detached: {detached:?}");
    let resumed = srv.metric("fedrouter_c2s_sessions_resumed_total", &[]);
    assert!(
        resumed.is_some_and(|n| n >= 1.0),
        "the server did not count the resumption: {resumed:?}"
    );
}
