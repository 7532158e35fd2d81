//! Interop with a second client library, in another language than slixmpp:
//! `@xmpp/client` (xmpp.js, npm), driven by scripts in `tests/xmppjs/` against a real
//! `fedrouter serve` (a fresh data folder each): offline messages (XEP-0160,
//! `offline.mjs`), and the scenarios tests/slixmpp.rs runs with slixmpp: message carbons
//! (XEP-0280, `carbons.mjs`), password change (XEP-0077, `password_change.mjs`),
//! blocking (XEP-0191, `blocking.mjs`), plus stream management with resumption
//! (XEP-0198, `sm_resume.mjs`). The scenario scripts share `common.mjs` and print one
//! JSON line whose `steps` the tests compare.
//!
//! The server's certificate for `a.test` is issued by a test CA (`fedrouter-testkit`),
//! which Node trusts through `NODE_EXTRA_CA_CERTS`: xmpp.js verifies it on STARTTLS for
//! the JID's domain, then authenticates with SASL SCRAM-SHA-1. Alice (never sending
//! presence) sends bob, who is offline, a `chat`, a `normal` and a `headline` message;
//! once the server has stored two (its `offline_stored` counter), bob logs in with
//! xmpp.js, sends initial presence, and must get the two stored ones in order, each with
//! a XEP-0203 `<delay/>` from `a.test` whose stamp JavaScript's `Date` parses, and not
//! the headline (the script's closing ping is the marker it would have come before).
//!
//! Node is `$FEDROUTER_NODE`, else `node` on the PATH; `@xmpp/client` must be in
//! `tests/xmppjs/node_modules` (made by `.ci/setup-xmppjs`). Without either the test
//! FAILS, naming the setup script: an interop test that skips itself proves nothing.
//!
//! Loopback: one address per test, the server on it (C2S 5222, S2S 5269, admin 9269;
//! nothing here needs DNS): offline `127.0.252.1`, carbons `127.0.167.1`, password change
//! `127.0.168.1`, blocking `127.0.169.1`, resumption `127.0.170.1`.

#[path = "common/slixmpp.rs"]
mod script_runner;
#[path = "common/server.rs"]
mod server;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fedrouter_testkit::ca::TestCa;
use serde_json::Value;
use server::{add_user, Fedrouter};

const HOST: &str = "127.0.252.1";
const ADMIN_PORT: u16 = 9269;
const C2S_PORT: u16 = 5222;
const ALICE: &str = "alice@a.test";
const BOB: &str = "bob@a.test";
const ALICE_PASSWORD: &str = "correct horse alice";
const BOB_PASSWORD: &str = "battery staple bob";

/// The script's own bound on one phase (`--timeout`), seconds.
const PHASE_TIMEOUT_S: u64 = 30;

/// Our bound on the script's process: its phase plus Node's start-up.
const SCRIPT_LIMIT: Duration = Duration::from_secs(PHASE_TIMEOUT_S + 20);

/// What to do when Node or xmpp.js is missing.
const SETUP_HINT: &str = "run `.ci/setup-xmppjs` (it installs Node.js and npm with apt-get if \
     missing, and the pinned @xmpp/client into tests/xmppjs/node_modules), or set \
     FEDROUTER_NODE to a Node.js >= 20.10";

fn xmppjs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/xmppjs")
}

/// The Node binary; panics (the test fails) when there is none or xmpp.js is not
/// installed next to the script.
fn node() -> PathBuf {
    let node =
        std::env::var_os("FEDROUTER_NODE").map_or_else(|| PathBuf::from("node"), PathBuf::from);
    let out = Command::new(&node)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} ({e}): {SETUP_HINT}", node.display()));
    assert!(
        out.status.success(),
        "{} --version failed: {SETUP_HINT}",
        node.display()
    );
    let pkg = xmppjs_dir().join("node_modules/@xmpp/client/package.json");
    let text = std::fs::read_to_string(&pkg)
        .unwrap_or_else(|e| panic!("no @xmpp/client at {} ({e}): {SETUP_HINT}", pkg.display()));
    let version: Value = serde_json::from_str(&text).expect("package.json is JSON");
    eprintln!(
        "node {} with @xmpp/client {}",
        String::from_utf8_lossy(&out.stdout).trim(),
        version["version"]
    );
    node
}

/// Runs `node offline.mjs args...` (see [`run_script`]).
fn phase(node: &Path, ca: &Path, args: &[&str]) -> Value {
    run_script(node, ca, "offline.mjs", args)
}

/// Runs `node tests/xmppjs/SCRIPT args... --timeout S` with `NODE_EXTRA_CA_CERTS=ca`,
/// killing it (and failing) after [`SCRIPT_LIMIT`]; returns its JSON result (its last
/// stdout line), failing with its stdout and stderr when it did not succeed.
fn run_script(node: &Path, ca: &Path, script: &str, args: &[&str]) -> Value {
    let mut cmd = Command::new(node);
    cmd.arg(xmppjs_dir().join(script))
        .args(args)
        .args(["--timeout", &PHASE_TIMEOUT_S.to_string()])
        .current_dir(xmppjs_dir())
        .env("NODE_EXTRA_CA_CERTS", ca);
    let what = format!("node {script} {} ({SETUP_HINT})", args.join(" "));
    let run = script_runner::run_bounded(&mut cmd, SCRIPT_LIMIT, &what);
    let (status, out, err) = (run.status, run.stdout, run.stderr);
    let line = out.lines().last().unwrap_or("");
    let context = format!("exit: {status}\nstdout:\n{out}\nstderr:\n{err}");
    let result: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("the script's last line is not JSON ({e})\n{context}"));
    assert!(
        status.success() && result["ok"] == true,
        "{script} {} failed: {}\n{context}",
        args.join(" "),
        result["error"]
    );
    result
}

/// The configuration of a server on `host` (C2S 5222, S2S 5269, admin 9269) for
/// `a.test`, its certificate in `a.test.crt` / `a.test.key`.
fn toml_on(host: &str) -> String {
    format!(
        r#"domains = ["a.test"]
shards = 2

[listen]
c2s = ["{host}:{C2S_PORT}"]
s2s = ["{host}:5269"]
s2s_tls = []
admin = "{host}:{ADMIN_PORT}"

[dns]
nameservers = ["{host}:5300"]
timeout = "2s"

[[tls.certificate]]
domain = "a.test"
cert = "a.test.crt"
key = "a.test.key"
"#
    )
}

fn unix_ms(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis()
}

#[test]
fn xmppjs_offline_messages_with_delay_stamp() {
    let node = node();
    let (srv, ca_file) = start_server(HOST, &[], "");
    add_user(&srv.config_path(), ALICE, ALICE_PASSWORD);
    add_user(&srv.config_path(), BOB, BOB_PASSWORD);
    let port = C2S_PORT.to_string();
    let before = SystemTime::now();

    let sent = phase(
        &node,
        &ca_file,
        &["send", HOST, &port, ALICE, ALICE_PASSWORD, "--to", BOB],
    );
    assert!(
        sent["jid"]
            .as_str()
            .is_some_and(|j| j.starts_with("alice@a.test/")),
        "{sent}"
    );
    // Both storable messages are committed (the counter counts commits).
    let deadline = Instant::now() + Duration::from_secs(PHASE_TIMEOUT_S);
    // Bounded: PHASE_TIMEOUT_S / 20 ms turns at most.
    while srv.metric("fedrouter_offline_stored_total", &[]) != Some(2.0) {
        assert!(
            Instant::now() < deadline,
            "the server did not store alice's two messages: {:?}",
            srv.metric("fedrouter_offline_stored_total", &[])
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let r = phase(
        &node,
        &ca_file,
        &["receive", HOST, &port, BOB, BOB_PASSWORD, "--expect", "2"],
    );
    let msgs = r["messages"].as_array().cloned().unwrap_or_default();
    let ids: Vec<&str> = msgs.iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(
        ids,
        ["js-chat", "js-normal"],
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
        let raw = m["delay_stamp"]
            .as_str()
            .unwrap_or_else(|| panic!("no XEP-0203 delay stamp: {r}"));
        let parsed = m["delay_parsed"]
            .as_str()
            .unwrap_or_else(|| panic!("JavaScript's Date did not parse stamp {raw}: {r}"));
        let at =
            humantime::parse_rfc3339(parsed).unwrap_or_else(|e| panic!("stamp {parsed}: {e}: {r}"));
        assert!(
            unix_ms(at) >= unix_ms(before),
            "stamp {raw} before the test started: {r}"
        );
    }
}

/// Starts a server for `a.test` on `host` (fresh data folder), its certificate issued by
/// a fresh test CA, with `users` added (each with `password`); returns it and the CA's
/// file for `NODE_EXTRA_CA_CERTS`.
fn start_server(host: &str, users: &[&str], password: &str) -> (Fedrouter, PathBuf) {
    let ca = TestCa::new("fedrouter xmppjs test CA").expect("test CA");
    let leaf = ca.issue("a.test").expect("leaf for a.test");
    let (chain, key, ca_pem) = (leaf.chain_pem(), leaf.key_pem(), ca.ca_cert_pem());
    let srv = Fedrouter::start_with(
        "a.test",
        &toml_on(host),
        &[
            ("a.test.crt", &chain),
            ("a.test.key", &key),
            ("ca.pem", &ca_pem),
        ],
    );
    for u in users {
        add_user(&srv.config_path(), u, password);
    }
    let ca_file = srv.dir().join("ca.pem");
    (srv, ca_file)
}

/// The `steps` a scenario script reported, in order.
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

/// XEP-0280 (as `slixmpp_carbons_to_a_second_resource`): the laptop, which enabled
/// carbons, gets `<received/>` and `<sent/>` copies of the phone's chats, and none of a
/// `<private/>` one.
#[test]
fn xmppjs_carbons_to_a_second_resource() {
    const H: &str = "127.0.167.1";
    let node = node();
    let (_srv, ca) = start_server(H, &[ALICE, BOB], ALICE_PASSWORD);
    let port = C2S_PORT.to_string();
    let r = run_script(
        &node,
        &ca,
        "carbons.mjs",
        &[H, &port, ALICE, BOB, ALICE_PASSWORD],
    );
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
    // XEP-0280 §11: a copy comes from the user's bare JID; the forwarded message is the
    // original (bob to the phone, the phone to bob).
    for c in r["copies"].as_array().expect("copies") {
        assert_eq!(c["outer_from"], ALICE, "{r}");
        let (from, to) = if c["direction"] == "received" {
            (BOB, format!("{ALICE}/phone"))
        } else {
            (ALICE, format!("{BOB}/desk"))
        };
        assert_eq!(c["inner_from"], from, "{r}");
        assert_eq!(c["inner_to"], to.as_str(), "{r}");
    }
}

/// XEP-0077 §3.3 (as `slixmpp_password_change`): after the change the old password fails
/// SASL with `not-authorized` and the new one logs in.
#[test]
fn xmppjs_password_change() {
    const H: &str = "127.0.168.1";
    const NEW: &str = "a new & longer password <js>";
    let node = node();
    let (_srv, ca) = start_server(H, &[ALICE], ALICE_PASSWORD);
    let port = C2S_PORT.to_string();
    let r = run_script(
        &node,
        &ca,
        "password_change.mjs",
        &[H, &port, ALICE, ALICE_PASSWORD, NEW],
    );
    assert_eq!(
        steps(&r),
        ["login", "changed", "old_refused", "new_accepted"],
        "{r}"
    );
    assert_eq!(r["old_condition"], "not-authorized", "{r}");
}

/// XEP-0191 (as `slixmpp_blocking`): block list, pushes, inbound dropped with an error,
/// outbound refused with `not-acceptable`, unblock.
#[test]
fn xmppjs_blocking() {
    const H: &str = "127.0.169.1";
    const CAROL: &str = "carol@a.test";
    let node = node();
    let (_srv, ca) = start_server(H, &[ALICE, BOB, CAROL], ALICE_PASSWORD);
    let port = C2S_PORT.to_string();
    let r = run_script(
        &node,
        &ca,
        "blocking.mjs",
        &[H, &port, ALICE, BOB, CAROL, ALICE_PASSWORD],
    );
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

/// XEP-0198 §5 with xmpp.js's own stream management: bob's connection is dropped, alice
/// writes him three chats, bob's client reconnects and resumes (the server counts a
/// resumption, not a new session), and he gets the three in order, exactly once, after
/// the one he had before the drop.
#[test]
fn xmppjs_stream_resumption_delivers_what_was_sent_while_away() {
    const H: &str = "127.0.170.1";
    let node = node();
    let (srv, ca) = start_server(H, &[ALICE, BOB], ALICE_PASSWORD);
    let port = C2S_PORT.to_string();
    let admin = format!("{H}:{ADMIN_PORT}");
    let r = run_script(
        &node,
        &ca,
        "sm_resume.mjs",
        &[H, &port, ALICE, BOB, ALICE_PASSWORD, &admin],
    );
    assert_eq!(
        steps(&r),
        [
            "login",
            "before",
            "dropped",
            "sent_while_away",
            "resumed",
            "delivered"
        ],
        "{r}"
    );
    assert_eq!(
        r["enabled"]["resume"], "true",
        "<enabled resume='true'/>: {r}"
    );
    assert_eq!(r["enabled"]["has_id"], true, "<enabled id=…/>: {r}");
    assert_eq!(
        r["resumed"]["previd"], r["previd"],
        "<resumed previd/>: {r}"
    );
    assert_eq!(
        r["bob_got"],
        serde_json::json!(["before the drop", "away 1", "away 2", "away 3"]),
        "in order, each once: {r}"
    );
    assert!(
        srv.metric("fedrouter_c2s_sessions_resumed_total", &[])
            .is_some_and(|n| n >= 1.0),
        "the server counted no resumption: {:?}\n{r}",
        srv.metric("fedrouter_c2s_sessions_resumed_total", &[])
    );
}
