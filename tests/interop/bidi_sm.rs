//! XEP-0288 (bidirectional S2S) and XEP-0198 (stream management on S2S) with a real
//! Prosody 0.12 (issue 18). What Prosody needs, and does, is in `tests/interop/README.md`
//! ("XEP-0288 and XEP-0198 with Prosody 0.12"); in short:
//!
//! - bidi: `modules_enabled` gains `"s2s_bidi"` ([`crate::prosody::S2sPolicy::bidi`]).
//!   Prosody offers and requests it only on an encrypted stream unless
//!   `s2s_require_encryption` is false, with dialback and with SASL EXTERNAL.
//! - stream management: `mod_smacks` with `smacks_enabled_s2s` (default true). Prosody
//!   offers `<sm/>` and sends `<enable/>` only on an authenticated stream, so only after the
//!   SASL EXTERNAL restart: never on dialback streams.
//!
//! Each test runs the subscription flow (`flow.rs`) with bidi on at both ends, then checks
//! how many TCP connections carried it (the kernel's table of established connections to
//! the two S2S ports, fedrouter's `/status`, and Prosody's log): one, except with
//! dialback when fedrouter opens the stream ([`expected_connections`] says why), and
//! stream management where Prosody does it.
//!
//! Addresses: test `n` owns `127.30.n.1 ..= 127.30.n.3` ([`Slot::in_net`]).
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use procfs::net::TcpState;

use crate::flow::{message_flows, subscription_flow, Side};
use crate::lab::{Lab, LabOptions, Profile, Slot, CUPUSER, JDOE, OURS, THEIRS};
use crate::server;

/// The second octet of every address these tests use (`127.30.0.0/16`).
pub const NET: u8 = 30;

/// Longest wait for the connections between the servers to settle (verify-only streams
/// closed once answered) or for an acknowledgement to arrive.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Established TCP connections to the S2S ports (5269) of `a` and of `b`: the server
/// ends of S2S connections in `/proc/net/tcp`, one entry per connection. (Both servers
/// dial from 127.0.0.1, not from their listening address, so the client end does not
/// tell whose connection it is; the listening end does.)
pub fn s2s_connections(a: Ipv4Addr, b: Ipv4Addr) -> usize {
    procfs::net::tcp()
        .expect("read /proc/net/tcp")
        .iter()
        .filter(|e| {
            e.state == TcpState::Established
                && e.local_address.port() == 5269
                && [IpAddr::V4(a), IpAddr::V4(b)].contains(&e.local_address.ip())
        })
        .count()
}

/// Waits (bounded by [`SETTLE_TIMEOUT`]) until exactly `want` S2S connections join the
/// two servers; panics with the last count and fedrouter's `/status` otherwise.
pub fn wait_connections(lab: &Lab, want: usize) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    // Bounded: SETTLE_TIMEOUT / 50 ms turns.
    loop {
        let n = s2s_connections(lab.slot.fedrouter, lab.slot.prosody);
        if n == want {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "{n} S2S connections between fedrouter ({}) and Prosody ({}) after {SETTLE_TIMEOUT:?}, want {want}; /status: {}",
                lab.slot.fedrouter,
                lab.slot.prosody,
                status_text(lab)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn status_text(lab: &Lab) -> String {
    server::http_get(lab.fedrouter.admin, "/status", Duration::from_secs(30))
        .map(|(_, b)| b)
        .unwrap_or_else(|e| format!("(GET /status: {e})"))
}

/// fedrouter's streams with Prosody's domain (`/status`), without the verify-only ones
/// and those closing.
pub fn streams_with_prosody(lab: &Lab) -> Vec<serde_json::Value> {
    let body = status_text(lab);
    let domains: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"));
    domains
        .as_array()
        .expect("/status: an array")
        .iter()
        .filter(|d| d["domain"] == THEIRS)
        .flat_map(|d| d["streams"].as_array().cloned().unwrap_or_default())
        .filter(|s| s["verify_only"] != true && s["state"] != "closing")
        .collect()
}

/// How many S2S connections the servers keep once the flow settled, with bidi at both
/// ends: one, except when fedrouter opens the stream and authenticates with dialback.
/// Then Prosody, to verify our key (XEP-0220 §2.1.2: the receiving server asks our
/// authoritative server), dials us: `mod_dialback` routes its `db:verify` as any stanza
/// (`route/remote`), which opens an ordinary outbound stream that requests bidi and
/// authenticates itself with dialback, and Prosody keeps it as its route to us
/// (`mod_s2s`'s `mark_connected` makes our inbound stream its route only when it has none
/// already). Each server then sends on its own stream: two connections, both bidi.
/// When Prosody opens the stream, our verification runs on a verify-only stream
/// (XEP-0220 §2.1.3) that is closed once answered; SASL EXTERNAL needs none.
pub fn expected_connections(profile: Profile, fedrouter_initiates: bool) -> usize {
    if fedrouter_initiates && profile != Profile::Strict {
        2
    } else {
        1
    }
}

/// fedrouter's streams with Prosody (`/status`): `want` of them, each authenticated,
/// bidirectional and serving both directions; with one, it is in the direction of
/// whoever opened it; with two, one each way.
fn assert_bidi_streams(
    lab: &Lab,
    fedrouter_initiates: bool,
    want: usize,
) -> Vec<serde_json::Value> {
    let streams = streams_with_prosody(lab);
    assert_eq!(
        streams.len(),
        want,
        "fedrouter: streams with {THEIRS}: {streams:#?}"
    );
    for s in &streams {
        assert_eq!(s["state"], "authenticated", "{s}");
        assert_eq!(s["bidi"], true, "{s}");
        assert_eq!(s["serves"], serde_json::json!(["in", "out"]), "{s}");
        let reverse = s["bidi_authenticated"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            reverse
                .iter()
                .any(|p| p["local"] == OURS && p["remote"] == THEIRS),
            "fedrouter: {OURS}/{THEIRS} not authenticated against the stream's direction: {s}"
        );
    }
    let mut dirs: Vec<&str> = streams
        .iter()
        .map(|s| s["direction"].as_str().unwrap_or("?"))
        .collect();
    dirs.sort_unstable();
    let want_dirs = match (want, fedrouter_initiates) {
        (1, true) => vec!["out"],
        (1, false) => vec!["in"],
        _ => vec!["in", "out"],
    };
    assert_eq!(
        dirs, want_dirs,
        "fedrouter: streams with {THEIRS}: {streams:#?}"
    );
    streams
}

/// Prosody's log shows it negotiated bidi, and on which streams it sends to us.
fn assert_prosody_bidi(lab: &Lab, fedrouter_initiates: bool, connections: usize) {
    let log = lab.prosody.log();
    let outgoing_complete = log.lines().any(|l| {
        l.contains(&format!(
            "Outgoing s2s connection {THEIRS}->{OURS} complete"
        ))
    });
    let incoming_complete = log.lines().any(|l| {
        l.contains(&format!(
            "Incoming s2s connection {OURS}->{THEIRS} complete"
        ))
    });
    if fedrouter_initiates {
        // mod_s2s_bidi on the s2sin session.
        assert!(
            log.contains("Requested bidirectional stream"),
            "prosody: no s2sin bidi request logged"
        );
        assert!(incoming_complete, "prosody: our stream never completed");
        if connections == 1 {
            // mod_s2s's mark_connected: our inbound stream is its route to us.
            assert!(
                log.contains(&format!(
                    "Setting up to handle route from {THEIRS} to {OURS}"
                )),
                "prosody: does not route to {OURS} over our inbound stream"
            );
            assert!(
                !outgoing_complete,
                "prosody: opened and authenticated an outbound stream of its own to {OURS}"
            );
        } else {
            // Its dialback verification connection became its own bidi route to us.
            assert!(
                log.contains("Requesting bidirectional stream") && outgoing_complete,
                "prosody: no outbound bidi stream of its own"
            );
        }
    } else {
        assert!(
            log.contains("Requesting bidirectional stream"),
            "prosody: no s2sout bidi request logged"
        );
        assert!(outgoing_complete, "prosody: its stream never completed");
        assert!(
            !incoming_complete,
            "prosody: accepted and authenticated an inbound stream from {OURS}"
        );
    }
}

/// Stanzas Prosody sent on S2S streams and saw acknowledged by our `<a/>`: the sum of
/// `mod_smacks`'s `#queue = N (acked: M)` debug lines (its `handle_a`), waited for
/// (bounded) until above zero.
pub fn prosody_acknowledged(lab: &Lab) -> u64 {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    // Bounded: SETTLE_TIMEOUT / 50 ms turns.
    loop {
        let acked: u64 = lab
            .prosody
            .log()
            .lines()
            .filter_map(|l| l.split_once("(acked: ").map(|(_, r)| r))
            .filter_map(|r| r.trim_end_matches(')').trim().parse::<u64>().ok())
            .sum();
        if acked > 0 || Instant::now() >= deadline {
            return acked;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (bounded) until fedrouter's `fedrouter_sm_acknowledged_total` is above zero.
fn wait_acknowledged(lab: &Lab) -> f64 {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    // Bounded: SETTLE_TIMEOUT / 50 ms turns.
    loop {
        let acked = lab
            .fedrouter
            .metric("fedrouter_sm_acknowledged_total", &[])
            .unwrap_or(0.0);
        if acked > 0.0 || Instant::now() >= deadline {
            return acked;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The subscription flow over one bidirectional stream in `profile`, initiated by
/// fedrouter's user (fedrouter opens the stream) or Prosody's (Prosody opens it), in test
/// net `n`. Checks one TCP connection, fedrouter's and Prosody's view of it, stream
/// management where Prosody does it (strict: enabled, our stanzas acknowledged), then a
/// message each way after the stream settled.
pub fn bidi_flow(n: u8, profile: Profile, fedrouter_initiates: bool) -> Lab {
    let lab = Lab::start_in(
        Slot::in_net(NET, n),
        profile,
        LabOptions {
            prosody_bidi: true,
            ..LabOptions::default()
        },
    );
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

        let want = expected_connections(profile, fedrouter_initiates);
        wait_connections(&lab, want);
        let streams = assert_bidi_streams(&lab, fedrouter_initiates, want);
        assert_prosody_bidi(&lab, fedrouter_initiates, want);

        // Once settled, stanzas still flow both ways over the same connections.
        let (j_full, c_bare) = (j.client.jid.clone().expect("bound"), c.bare.clone());
        message_flows(&mut c, &mut j, &j_full, "after-1", "over the bidi stream");
        message_flows(&mut j, &mut c, &c_bare, "after-2", "and back");
        assert_eq!(
            s2s_connections(lab.slot.fedrouter, lab.slot.prosody),
            want,
            "the connections changed after they settled; /status: {}",
            status_text(&lab)
        );

        // XEP-0198: Prosody does it only after SASL EXTERNAL.
        let want_sm = if profile == Profile::Strict {
            "enabled"
        } else {
            "off"
        };
        for s in &streams {
            assert_eq!(s["sm"], want_sm, "{profile:?}: stream management on {s}");
        }
        if profile == Profile::Strict {
            // Prosody's stanzas, acknowledged by fedrouter's <a/>.
            assert!(
                prosody_acknowledged(&lab) > 0,
                "fedrouter acknowledged none of Prosody's stanzas"
            );
            // Ours, acknowledged by Prosody: on our outbound stream, or (Prosody opened
            // it) against the stream's direction, where we ask with <r/> too.
            let acked = wait_acknowledged(&lab);
            assert!(acked > 0.0, "Prosody acknowledged none of our stanzas");
            // And in the end every one of them (our <r/> goes out after
            // s2s.sm_ack_every stanzas or s2s.sm_ack_after).
            let deadline = Instant::now() + SETTLE_TIMEOUT;
            // Bounded: SETTLE_TIMEOUT / 50 ms turns.
            let unacked = loop {
                let streams = streams_with_prosody(&lab);
                let unacked: u64 = streams.iter().filter_map(|s| s["unacked"].as_u64()).sum();
                if unacked == 0 || Instant::now() >= deadline {
                    break streams;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            assert!(
                unacked.iter().all(|s| s["unacked"] == 0),
                "stanzas Prosody never acknowledged: {unacked:#?}"
            );
        }
    }
    cup.close();
    jdoe.close();
    lab
}

/// The switch in the other position: Prosody's `smacks_enabled_s2s = false` in the strict
/// profile (the one where it would enable XEP-0198), bidi off. The flow passes, and no
/// stream with Prosody has stream management: Prosody neither offers `<sm/>` nor sends
/// `<enable/>`, so fedrouter sends no `<enable/>`, and nothing is acknowledged.
pub fn strict_without_prosody_s2s_sm(n: u8) -> Lab {
    let lab = Lab::start_in(
        Slot::in_net(NET, n),
        Profile::Strict,
        LabOptions {
            prosody_stream_management: Some(false),
            ..LabOptions::default()
        },
    );
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
        subscription_flow(&mut c, &mut j);
    }
    let streams = streams_with_prosody(&lab);
    assert!(!streams.is_empty(), "no stream with {THEIRS}");
    for s in &streams {
        assert_eq!(s["sm"], "off", "stream management on {s}");
        assert_eq!(s["bidi"], false, "bidi on {s}");
    }
    assert_eq!(
        lab.fedrouter
            .metric("fedrouter_sm_acknowledged_total", &[])
            .expect("/metrics"),
        0.0
    );
    assert!(
        !lab.prosody.log().contains("<enable xmlns='urn:xmpp:sm:3'"),
        "prosody sent or received <enable/>"
    );
    cup.close();
    jdoe.close();
    lab
}
