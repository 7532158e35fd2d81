//! Interoperability with a REAL Prosody (Debian's package, installed by
//! `.ci/setup-prosody`): fedrouter serves `cupdomain.test`, Prosody serves `gmail.test`,
//! both find each other through SRV records served on loopback by fedrouter's own DNS
//! server (port 53, which Prosody's libunbound asks), and real clients log in on both
//! sides (`tests/common/xmpp.rs`: STARTTLS, SCRAM, roster, presence; and slixmpp from
//! PyPI on both servers in `slixmpp.rs`).
//!
//! For every federation profile, in both directions (fedrouter's user initiates; Prosody's
//! user initiates): `cupuser1@cupdomain.test` and `jdoe1@gmail.test` subscribe to each
//! other, exchange presence and a message each way, then the initiator unsubscribes
//! (`flow.rs`). Each step's roster pushes are checked on both servers, and the stored
//! states are read back at the end: fedrouter's SQLite store, Prosody's roster file.
//!
//! Failures with the real peer (`failures.rs`): Prosody stopped mid-session (bounces with
//! `remote-server-not-found`, federation resumes when it is back), and Prosody refusing
//! our certificate (dialback fallback where both sides allow it; otherwise a logged,
//! counted refusal and bounces).
//!
//! PEP (`pep.rs`, XEP-0163): a fedrouter user's mood and avatar metadata events reach a
//! Prosody contact whose caps ask for them, over S2S, and not one whose caps do not.
//!
//! A stalled peer (`stall.rs`): Prosody stopped with SIGSTOP while a local user floods it;
//! other local users are not held up, and every flood message ends delivered or bounced.
//!
//! A cluster (`cluster.rs`, issue 17): Prosody federates with `cupdomain.test` served by
//! three fedrouter nodes on NATS and PostgreSQL; the flow in both directions with the
//! users on other nodes than the streams to Prosody.
//!
//! XEP-0288 and XEP-0198 (`bidi_sm.rs`, issue 18): the flow in every profile both ways with
//! Prosody's `mod_s2s_bidi` loaded, over bidirectional streams (connections counted in
//! `/proc/net/tcp`), stream management where Prosody does it (after SASL EXTERNAL), both
//! directions acknowledged; what Prosody needs and does is in `README.md` here.
//!
//! Without Prosody the tests FAIL with a message naming `.ci/setup-prosody`.
//!
//! Each test owns a loopback slot (`lab.rs`): `127.0.232.(10k+1..=10k+3)`.

mod bidi_sm;
#[path = "../common/c2s_client.rs"]
mod c2s_client;
mod cluster;
mod failures;
mod flow;
mod lab;
#[path = "../common/nats.rs"]
mod nats;
mod pep;
#[path = "../common/postgres.rs"]
mod pg;
mod prosody;
#[path = "../common/server.rs"]
mod server;
mod slixmpp;
#[path = "../common/slixmpp.rs"]
mod slixmpp_runner;
mod stall;
#[path = "../common/xmpp.rs"]
mod xmpp;

use std::time::Duration;

use flow::{subscription_flow, Side};
use lab::{Lab, LabOptions, Profile, CUPUSER, JDOE, OURS, THEIRS};

/// fedrouter's and Prosody's stored states after the flow (servers stopped): the
/// initiator's side "from", the other's "to", no pending request.
fn assert_stored_after_flow(lab: &mut Lab, fedrouter_initiated: bool) {
    let cup = format!("{CUPUSER}@{OURS}");
    let jdoe = format!("{JDOE}@{THEIRS}");
    let (ours, theirs) = if fedrouter_initiated {
        ("from", "to")
    } else {
        ("to", "from")
    };
    assert!(lab.fedrouter.stop(), "fedrouter did not stop on SIGTERM");
    assert!(lab.prosody.stop(), "prosody did not stop on SIGTERM");
    let row = lab
        .fedrouter_row(&jdoe)
        .unwrap_or_else(|| panic!("fedrouter: no stored row of {cup} for {jdoe}"));
    assert!(row.in_roster, "fedrouter row: {row:?}");
    assert_eq!(row.subscription, ours, "fedrouter row: {row:?}");
    assert!(!row.pending_out, "fedrouter row: {row:?}");
    assert_eq!(row.pending_in, None, "fedrouter row: {row:?}");

    let roster = lab.prosody.stored_roster(JDOE);
    assert_eq!(
        roster.get(&cup),
        Some(&(theirs.to_owned(), None)),
        "prosody's stored roster of {jdoe}: {roster:?}"
    );
    assert_eq!(
        roster.len(),
        1,
        "prosody's stored roster of {jdoe}: {roster:?}"
    );
}

/// Asserts both S2S streams (ours to Prosody, Prosody's to us) were set up as `profile`
/// says: fedrouter's log names the authentication method of each direction, Prosody's log
/// says whether each of its streams was encrypted.
fn assert_profile_used(lab: &Lab, profile: Profile) {
    let method = match profile {
        Profile::Google | Profile::Webex => "method=Dialback",
        Profile::Strict => "method=SaslExternal",
    };
    for dir in ["dir=\"out\"", "dir=\"in\""] {
        let lines = lab
            .fedrouter
            .log_lines(&[dir, "authenticated local=cupdomain.test remote=gmail.test"]);
        assert!(
            !lines.is_empty(),
            "fedrouter: no {dir} stream authenticated with gmail.test"
        );
        assert!(
            lines.iter().all(|l| l.contains(method)),
            "fedrouter: {dir} streams not all authenticated with {method}: {lines:#?}"
        );
    }
    let log = lab.prosody.log();
    for kind in ["s2sin", "s2sout"] {
        let encrypted = log
            .lines()
            .any(|l| l.contains(kind) && l.contains("Stream encrypted"));
        let want = profile != Profile::Google;
        assert_eq!(
            encrypted, want,
            "prosody: {kind} stream encrypted = {encrypted}, the {profile:?} profile wants {want}"
        );
    }
    if profile == Profile::Strict {
        assert!(
            log.contains("Accepting SASL EXTERNAL identity from cupdomain.test"),
            "prosody did not accept our SASL EXTERNAL"
        );
    }
    assert_stream_management(lab, profile);
}

/// XEP-0198 on the S2S streams with Prosody (mod_smacks, `smacks_enabled_s2s` true by
/// default in 0.12): Prosody advertises `<sm/>` only to an authenticated peer and
/// sends `<enable/>` only when the features arrive on an authenticated stream, i.e. after
/// the SASL EXTERNAL restart; on dialback streams the features come before
/// authentication, so neither side enables it there. So: enabled both ways in the strict
/// profile (with acknowledgements counted), off in the dialback profiles.
fn assert_stream_management(lab: &Lab, profile: Profile) {
    let (code, body) = server::http_get(lab.fedrouter.admin, "/status", Duration::from_secs(30))
        .expect("GET /status");
    assert_eq!(code, 200, "{body}");
    let domains: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
    let streams: Vec<&serde_json::Value> = domains
        .as_array()
        .expect("an array")
        .iter()
        .filter(|d| d["domain"] == THEIRS)
        .flat_map(|d| d["streams"].as_array().into_iter().flatten())
        .filter(|s| s["state"] == "authenticated")
        .collect();
    assert!(
        !streams.is_empty(),
        "no authenticated stream with {THEIRS}: {body}"
    );
    let want = if profile == Profile::Strict {
        "enabled"
    } else {
        "off"
    };
    for s in &streams {
        assert_eq!(s["sm"], want, "{profile:?}: stream management on {s}");
    }
    if profile == Profile::Strict {
        // Our <r/> goes out after s2s.sm_ack_every stanzas or s2s.sm_ack_after (5 s):
        // wait for Prosody's answer, bounded.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let acked = loop {
            let acked = lab
                .fedrouter
                .metric("fedrouter_sm_acknowledged_total", &[])
                .unwrap_or(0.0);
            if acked > 0.0 || std::time::Instant::now() >= deadline {
                break acked;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(acked > 0.0, "Prosody acknowledged none of our stanzas");
    }
}

/// The flow with `profile` in slot `k`, initiated by fedrouter's user or Prosody's.
fn profile_flow(k: u8, profile: Profile, fedrouter_initiates: bool) -> Lab {
    let mut lab = Lab::start(k, profile, LabOptions::default());
    let mut cup = lab.login_cupuser();
    let mut jdoe = lab.login_jdoe();
    {
        let mut c = Side {
            client: &mut cup,
            bare: format!("{CUPUSER}@{OURS}"),
            server: "fedrouter",
        };
        let mut j = Side {
            client: &mut jdoe,
            bare: format!("{JDOE}@{THEIRS}"),
            server: "prosody",
        };
        if fedrouter_initiates {
            subscription_flow(&mut c, &mut j);
        } else {
            subscription_flow(&mut j, &mut c);
        }
    }
    cup.close();
    jdoe.close();
    assert_profile_used(&lab, profile);
    assert_stored_after_flow(&mut lab, fedrouter_initiates);
    lab
}

#[test]
fn google_style_fedrouter_initiates() {
    profile_flow(0, Profile::Google, true);
}

#[test]
fn google_style_prosody_initiates() {
    profile_flow(1, Profile::Google, false);
}

#[test]
fn webex_style_fedrouter_initiates() {
    profile_flow(2, Profile::Webex, true);
}

#[test]
fn webex_style_prosody_initiates() {
    profile_flow(3, Profile::Webex, false);
}

#[test]
fn strict_tls_sasl_external_fedrouter_initiates() {
    profile_flow(4, Profile::Strict, true);
}

#[test]
fn strict_tls_sasl_external_prosody_initiates() {
    profile_flow(5, Profile::Strict, false);
}

#[test]
fn prosody_stopped_mid_session() {
    failures::prosody_stopped_mid_session(6);
}

#[test]
fn prosody_rejects_our_certificate_dialback_fallback() {
    failures::certificate_rejected_dialback_fallback(7);
}

#[test]
fn prosody_rejects_our_certificate_and_dialback() {
    failures::certificate_rejected_peer_forbids_dialback(8);
}

#[test]
fn prosody_rejects_our_certificate_policy_forbids_dialback() {
    failures::certificate_rejected_policy_forbids_dialback(9);
}

#[test]
fn prosody_with_a_cluster_of_three_nodes() {
    cluster::prosody_with_a_cluster_of_three();
}

#[test]
fn slixmpp_clients_on_both_servers() {
    slixmpp::slixmpp_on_both_servers(10);
}

#[test]
fn pep_events_over_s2s_filtered_by_caps() {
    pep::pep_over_s2s(13);
}

#[test]
fn prosody_stalled_flood_bounced_local_users_unaffected() {
    stall::stalled_prosody(11, "10m", false);
}

#[test]
fn prosody_stalled_past_write_stall_timeout() {
    stall::stalled_prosody(12, "3s", true);
}

// XEP-0288 and XEP-0198 with Prosody's mod_s2s_bidi and mod_smacks (bidi_sm.rs), each in
// its own net 127.30.n.0/24.

#[test]
fn bidi_google_style_fedrouter_initiates() {
    bidi_sm::bidi_flow(0, Profile::Google, true);
}

#[test]
fn bidi_google_style_prosody_initiates() {
    bidi_sm::bidi_flow(1, Profile::Google, false);
}

#[test]
fn bidi_webex_style_fedrouter_initiates() {
    bidi_sm::bidi_flow(2, Profile::Webex, true);
}

#[test]
fn bidi_webex_style_prosody_initiates() {
    bidi_sm::bidi_flow(3, Profile::Webex, false);
}

#[test]
fn bidi_strict_tls_sasl_external_fedrouter_initiates() {
    bidi_sm::bidi_flow(4, Profile::Strict, true);
}

#[test]
fn bidi_strict_tls_sasl_external_prosody_initiates() {
    bidi_sm::bidi_flow(5, Profile::Strict, false);
}

#[test]
fn smacks_s2s_off_in_prosody_strict_profile() {
    bidi_sm::strict_without_prosody_s2s_sm(6);
}
