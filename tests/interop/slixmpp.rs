//! The RFC 6121 life cycle with slixmpp (PyPI, installed by `.ci/setup-slixmpp`) on BOTH
//! servers: client A is `cupuser1@cupdomain.test` on fedrouter, client B `jdoe1@gmail.test`
//! on Prosody, and `tests/slixmpp/roster_flow.py` drives them through roster add,
//! subscription both ways, presence, a message each way and removal, all over S2S.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::lab::{Lab, LabOptions, Profile, CUPUSER, JDOE, OURS, PASSWORD, THEIRS};
use crate::slixmpp_runner::{python, run_script};

/// Bound of the script's whole flow, seconds (the script enforces it; we kill it 30 s
/// later).
const FLOW_TIMEOUT_S: u64 = 60;

/// Runs the script; returns (exit success, its last stdout line as JSON, everything it
/// printed).
fn run_flow(lab: &Lab) -> (bool, Value, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slixmpp/roster_flow.py");
    let prosody = lab.prosody.c2s();
    let args: Vec<String> = vec![
        script.display().to_string(),
        lab.slot.fedrouter.to_string(),
        "5222".into(),
        lab.dir.path().join("our-ca.pem").display().to_string(),
        format!("{CUPUSER}@{OURS}"),
        PASSWORD.into(),
        format!("{JDOE}@{THEIRS}"),
        PASSWORD.into(),
        "--timeout".into(),
        FLOW_TIMEOUT_S.to_string(),
        "--host-b".into(),
        prosody.ip().to_string(),
        "--port-b".into(),
        prosody.port().to_string(),
        "--ca-cert-b".into(),
        lab.ca_pem().display().to_string(),
        "--debug".into(),
    ];
    let run = run_script(&python(), &args, Duration::from_secs(FLOW_TIMEOUT_S + 30));
    let all = format!(
        "exit {}\nstdout:\n{}\nslixmpp debug log:\n{}",
        run.status, run.stdout, run.stderr
    );
    let line = run.stdout.lines().last().unwrap_or("");
    let v: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("the script's last line is not JSON ({e})\n{all}"));
    (run.status.success(), v, all)
}

/// slixmpp on fedrouter and on Prosody, Google-style federation between them.
pub fn slixmpp_on_both_servers(k: u8) {
    let mut lab = Lab::start(k, Profile::Google, LabOptions::default());
    let (ok, r, all) = run_flow(&lab);
    assert!(
        ok && r["ok"] == true,
        "the slixmpp flow failed: {}\n{all}",
        r["error"]
    );
    let (cup, jdoe) = (format!("{CUPUSER}@{OURS}"), format!("{JDOE}@{THEIRS}"));
    let st = |step: &str, client: &str, contact: &str| r["rosters"][step][client][contact].clone();
    // RFC 6121 states as pushed to each client by its own server.
    assert_eq!(
        st("a_subscribed_to_b", "A", &jdoe),
        json!(["to", null]),
        "{r}"
    );
    assert_eq!(
        st("a_subscribed_to_b", "B", &cup),
        json!(["from", null]),
        "{r}"
    );
    assert_eq!(
        st("mutual_subscription", "A", &jdoe),
        json!(["both", null]),
        "{r}"
    );
    assert_eq!(
        st("mutual_subscription", "B", &cup),
        json!(["both", null]),
        "{r}"
    );
    assert_eq!(st("a_removed_b", "B", &cup), json!(["none", null]), "{r}");
    assert_eq!(r["rosters"]["a_removed_b"]["A"], json!({}), "{r}");
    // A message each way crossed the federation.
    let from_is = |client: &str, from: &str| {
        r["messages"][client]
            .as_array()
            .is_some_and(|m| m.iter().any(|x| x[0] == from))
    };
    assert!(
        from_is("B", &cup),
        "jdoe1 got no message from cupuser1: {r}"
    );
    assert!(
        from_is("A", &jdoe),
        "cupuser1 got no message from jdoe1: {r}"
    );
    // What the servers stored: cupuser1 removed jdoe1 (no row in the roster), Prosody
    // keeps cupuser1 on jdoe1's roster with subscription none.
    assert!(lab.fedrouter.stop(), "fedrouter did not stop on SIGTERM");
    assert!(lab.prosody.stop(), "prosody did not stop on SIGTERM");
    assert!(
        lab.fedrouter_row(&jdoe).is_none_or(|row| !row.in_roster),
        "fedrouter still has jdoe1 on cupuser1's roster"
    );
    let roster = lab.prosody.stored_roster(JDOE);
    assert_eq!(
        roster.get(&cup).map(|(s, _)| s.as_str()),
        Some("none"),
        "prosody's stored roster of jdoe1: {roster:?}"
    );
}
