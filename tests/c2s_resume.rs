//! XEP-0198 stream management on C2S, end to end: real `fedrouter serve` processes, real
//! client sockets on loopback (`common/xmpp.rs`: STARTTLS with the server's generated
//! certificate, SASL SCRAM, bind), users created with `fedrouter user add`.
//!
//! - A session whose connection drops (no `</stream:stream>`) and is not resumed within
//!   `c2s.resume_timeout`: while detached it stays available to its contacts (a new
//!   session of a contact probing it gets its presence) and keeps taking messages; at the
//!   timeout its contacts get `unavailable`, and what it was sent while detached, with
//!   what its client had received but not acknowledged, is stored offline (XEP-0160) and
//!   delivered, in order, with a XEP-0203 delay stamp, at the next login (XEP-0198 §5).
//! - A `<resume/>` naming another account's detached session gets
//!   `<failed><item-not-found/></failed>` (the stream may still bind) and does not take the
//!   session: its owner resumes it afterwards and gets what was sent meanwhile.
//! - A clean `</stream:stream>` ends the session at once: nothing is kept for resumption
//!   and what the client had not acknowledged is stored offline at once.
//! - With `c2s.stream_management = false` the post-SASL features have no `<sm/>`.
//!
//! Loopback ranges `127.0.172.0/24` to `127.0.174.0/24` (other suites use other ranges):
//! the servers on `.2` (and `.3`), 5222 C2S, 5269 S2S, 9269 admin; nothing needs DNS (the
//! configured nameserver on `.1` is never asked). Every wait is bounded.

#[path = "common/c2s_client.rs"]
mod c2s_client;
#[path = "common/server.rs"]
mod server;
#[path = "common/xmpp.rs"]
mod xmpp;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use fedrouter::router::{bare_key, shard_of};
use server::{add_user, config, ip, Fedrouter};
use xmpp::{attr, child_text, is, is_stanza, jid_matches, node, Client, Mech, Target, NS_BIND};

const PASSWORD: &str = "s3cret horse";
const NS_SM: &str = "urn:xmpp:sm:3";
const DELAY_NS: &str = "urn:xmpp:delay";

/// Bound of the waits for a metric to reach a value.
const METRIC_WAIT: Duration = Duration::from_secs(20);

/// `server::config` with a C2S listener on `addr:5222` and `[c2s]` holding `c2s`.
fn c2s_config(net: u8, addr: Ipv4Addr, shards: usize, c2s: &str) -> String {
    let text = config(net, addr, &["a.test"], shards, &format!("[c2s]\n{c2s}\n"));
    assert!(text.contains("c2s = []"), "server::config changed: {text}");
    text.replace("c2s = []", &format!("c2s = [\"{addr}:5222\"]"))
}

fn target(fr: &Fedrouter, addr: Ipv4Addr) -> Target {
    Target::new(
        SocketAddr::new(addr.into(), 5222),
        "a.test",
        &fr.dir().join("data"),
    )
}

/// Two distinct localparts whose bare JIDs at a.test are owned by the same shard of 2.
fn pair_on_one_shard() -> (&'static str, &'static str) {
    let shard = |n: &str| shard_of(&bare_key(&format!("{n}@a.test")), 2);
    let names = [
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
    ];
    for a in names {
        for b in names {
            if a != b && shard(a) == shard(b) {
                return (a, b);
            }
        }
    }
    panic!("no two names on one shard among {names:?}");
}

/// Connects, STARTTLS and SCRAM-SHA-256 as `user`; returns the client and the post-SASL
/// `<stream:features/>` (nothing bound yet).
fn authenticated(t: &Target, user: &str) -> (Client, String) {
    let mut c = Client::connect(t.addr, &t.domain);
    c.name = user.to_owned();
    c.open();
    c.starttls(&t.cert);
    if let Err(f) = c.auth(Mech::ScramSha256, user, PASSWORD) {
        c.fail(&format!("login as {user} failed: {f}"));
    }
    let features = c.open();
    (c, features)
}

/// Whether `features` offer XEP-0198 (`<sm xmlns='urn:xmpp:sm:3'/>`, §2).
fn offers_sm(features: &str) -> bool {
    node(features)
        .children
        .iter()
        .any(|c| c.name == "sm" && c.ns == NS_SM)
}

/// Logs `user` in with `resource`, enables stream management with resumption (XEP-0198
/// §3, §5) and returns the client and the resumption id of `<enabled/>`.
fn sm_login(t: &Target, user: &str, resource: &str) -> (Client, String) {
    let (mut c, features) = authenticated(t, user);
    assert!(offers_sm(&features), "{user}: no <sm/> feature: {features}");
    c.bind(Some(resource));
    c.send(&format!("<enable xmlns='{NS_SM}' resume='true'/>"));
    let enabled = c.expect("<enabled/> or <failed/>", |x| {
        is(x, "enabled", NS_SM) || is(x, "failed", NS_SM)
    });
    assert!(is(&enabled, "enabled", NS_SM), "{user}: {enabled}");
    let n = node(&enabled);
    assert!(
        matches!(n.attr("resume"), Some("true" | "1")),
        "{user}: resumption not granted: {enabled}"
    );
    let id = n
        .attr("id")
        .unwrap_or_else(|| panic!("{user}: <enabled/> without id: {enabled}"))
        .to_owned();
    (c, id)
}

/// A new stream of `user` sends `<resume previd=… h=…/>` after SASL (XEP-0198 §5);
/// returns the client and the answer (`<resumed/>` or `<failed/>`).
fn try_resume(t: &Target, user: &str, previd: &str, h: u32) -> (Client, String) {
    let (mut c, features) = authenticated(t, user);
    assert!(offers_sm(&features), "{user}: no <sm/> feature: {features}");
    c.send(&format!(
        "<resume xmlns='{NS_SM}' previd='{previd}' h='{h}'/>"
    ));
    let answer = c.expect("<resumed/> or <failed/>", |x| {
        is(x, "resumed", NS_SM) || is(x, "failed", NS_SM)
    });
    (c, answer)
}

/// Waits until counter `name` reaches `want`; returns its value.
fn wait_metric(fr: &Fedrouter, name: &str, want: f64) -> f64 {
    let deadline = Instant::now() + METRIC_WAIT;
    let mut last = None;
    // Bounded: METRIC_WAIT / 20 ms turns at most.
    while Instant::now() < deadline {
        last = fr.metric(name, &[]);
        if last.is_some_and(|v| v >= want) {
            return last.unwrap_or_default();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{name} did not reach {want} within {METRIC_WAIT:?} (last {last:?})");
}

fn message(c: &mut Client, to: &str, id: &str, body: &str) {
    c.send(&format!(
        "<message type='chat' to='{to}' id='{id}'><body>{body}</body></message>"
    ));
}

fn is_message(x: &str, id: &str) -> bool {
    is_stanza(x, "message") && attr(x, "id").as_deref() == Some(id)
}

/// Waits for message `id` from `from` with `body`; returns it.
fn expect_body(c: &mut Client, from: &str, id: &str, body: &str) -> String {
    let m = c.expect(&format!("message {id}"), |x| is_message(x, id));
    assert!(
        attr(&m, "from").is_some_and(|f| jid_matches(&f, from)),
        "{id} not from {from}: {m}"
    );
    assert_eq!(child_text(&m, "body").as_deref(), Some(body), "{m}");
    m
}

/// Whether `m` carries a XEP-0203 delay from the server's domain with a stamp.
fn delayed_by_server(m: &str) -> bool {
    node(m)
        .children
        .iter()
        .any(|c| c.name == "delay" && c.ns == DELAY_NS && c.attr("from") == Some("a.test"))
        && node(m)
            .children
            .iter()
            .any(|c| c.name == "delay" && c.attr("stamp").is_some_and(|s| s.ends_with('Z')))
}

/// Alice is subscribed to bob's presence (RFC 6121 §3.1) and both sent initial presence;
/// alice has bob's available presence.
fn alice_subscribes_to_bob(alice: &mut Client, bob: &mut Client) {
    let b_full = bob.jid.clone().expect("bob bound");
    alice.roster_get();
    bob.roster_get();
    alice.send("<presence/>");
    alice.send("<presence type='subscribe' to='bob@a.test'/>");
    bob.send("<presence/>");
    bob.expect_presence("alice@a.test", Some("subscribe"));
    bob.send("<presence type='subscribed' to='alice@a.test'/>");
    alice.expect_presence(&b_full, None);
}

#[test]
fn unresumed_session_ends_at_timeout_and_its_messages_go_offline() {
    const NET: u8 = 172;
    let addr = ip(NET, 2);
    // Long enough for the checks made while detached; a test bound, not an assertion.
    let fr = Fedrouter::start(
        "a.test",
        &c2s_config(NET, addr, 2, "resume_timeout = \"3s\""),
    );
    for u in ["alice@a.test", "bob@a.test"] {
        add_user(&fr.config_path(), u, PASSWORD);
    }
    let t = target(&fr, addr);
    let mut alice = Client::login(&t, "alice", PASSWORD, Some("phone"));
    let (mut bob, _previd) = sm_login(&t, "bob", "laptop");
    let b_full = bob.jid.clone().expect("bob bound");
    alice_subscribes_to_bob(&mut alice, &mut bob);

    // Received by bob's client, never acknowledged.
    message(&mut alice, &b_full, "m1", "seen, not acked");
    expect_body(&mut bob, "alice@a.test", "m1", "seen, not acked");

    // The connection drops: no closing tag.
    drop(bob);
    wait_metric(&fr, "fedrouter_c2s_sessions_detached_total", 1.0);
    message(&mut alice, &b_full, "m2", "while away 1");
    message(&mut alice, "bob@a.test", "m3", "while away 2");
    // Still available: no unavailable presence yet, and a probe from a new session of
    // alice is answered with bob's presence.
    alice.assert_none("bob unavailable while detached", |x| {
        is_stanza(x, "presence")
            && attr(x, "type").as_deref() == Some("unavailable")
            && attr(x, "from").is_some_and(|f| jid_matches(&f, &b_full))
    });
    let mut tablet = Client::login(&t, "alice", PASSWORD, Some("tablet"));
    tablet.send("<presence/>");
    tablet.expect_presence(&b_full, None);
    assert_eq!(
        fr.metric("fedrouter_offline_stored_total", &[]),
        Some(0.0),
        "stored offline while the session was detached"
    );

    // The timeout: unavailable to the contacts, the three stored offline.
    alice.expect_presence(&b_full, Some("unavailable"));
    tablet.expect_presence(&b_full, Some("unavailable"));
    wait_metric(&fr, "fedrouter_offline_stored_total", 3.0);

    let mut bob = Client::login(&t, "bob", PASSWORD, Some("laptop"));
    bob.send("<presence/>");
    for (id, body) in [
        ("m1", "seen, not acked"),
        ("m2", "while away 1"),
        ("m3", "while away 2"),
    ] {
        // The next stored message, whichever it is: they must come in this order.
        let m = bob.expect("a stored message", |x| {
            ["m1", "m2", "m3"].iter().any(|id| is_message(x, id))
        });
        assert_eq!(attr(&m, "id").as_deref(), Some(id), "out of order: {m}");
        assert!(
            attr(&m, "from").is_some_and(|f| jid_matches(&f, "alice@a.test")),
            "{m}"
        );
        assert_eq!(child_text(&m, "body").as_deref(), Some(body), "{m}");
        assert!(delayed_by_server(&m), "no delay from a.test: {m}");
    }
    bob.assert_none("a stored message twice", |x| {
        ["m1", "m2", "m3"].iter().any(|id| is_message(x, id))
    });
    assert_eq!(
        fr.metric("fedrouter_c2s_sessions_resumed_total", &[]),
        Some(0.0)
    );
    bob.close();
    alice.close();
    tablet.close();
}

#[test]
fn stolen_previd_is_refused_and_the_owner_resumes() {
    const NET: u8 = 173;
    let addr = ip(NET, 2);
    let fr = Fedrouter::start("a.test", &c2s_config(NET, addr, 2, ""));
    // The thief's stream ends up on the victim's shard: only the account check stops it.
    let (victim, thief) = pair_on_one_shard();
    for u in [victim, thief] {
        add_user(&fr.config_path(), &format!("{u}@a.test"), PASSWORD);
    }
    let t = target(&fr, addr);
    let (v, previd) = sm_login(&t, victim, "phone");
    let v_full = v.jid.clone().expect("bound");
    drop(v);
    wait_metric(&fr, "fedrouter_c2s_sessions_detached_total", 1.0);

    let mut sender = Client::login(&t, thief, PASSWORD, Some("desk"));
    message(&mut sender, &v_full, "held-1", "for the victim only");
    sender.sync();

    let (mut stolen, answer) = try_resume(&t, thief, &previd, 0);
    assert!(is(&answer, "failed", NS_SM), "{answer}");
    assert!(
        node(&answer)
            .children
            .iter()
            .any(|c| c.name == "item-not-found"),
        "{answer}"
    );
    assert_eq!(
        fr.metric("fedrouter_c2s_sessions_resumed_total", &[]),
        Some(0.0),
        "a resumption was counted for the thief"
    );
    // The stream goes on: the thief binds a session of its own.
    let jid = stolen.bind(Some("stolen"));
    assert!(jid.starts_with(&format!("{thief}@a.test/")), "{jid}");
    stolen.assert_none("the victim's message", |x| is_message(x, "held-1"));
    sender.assert_none("the victim's message", |x| is_message(x, "held-1"));

    // The owner resumes: its session, with what was sent meanwhile.
    let (mut back, answer) = try_resume(&t, victim, &previd, 0);
    assert!(is(&answer, "resumed", NS_SM), "{answer}");
    assert_eq!(
        node(&answer).attr("previd"),
        Some(previd.as_str()),
        "{answer}"
    );
    expect_body(
        &mut back,
        &format!("{thief}@a.test"),
        "held-1",
        "for the victim only",
    );
    wait_metric(&fr, "fedrouter_c2s_sessions_resumed_total", 1.0);
    // The resumed session is the bound one: no bind needed, it answers pings.
    back.jid = Some(v_full);
    back.sync();
    back.close();
    stolen.close();
    sender.close();
}

#[test]
fn clean_close_is_not_kept_for_resumption() {
    const NET: u8 = 174;
    let addr = ip(NET, 2);
    let fr = Fedrouter::start("a.test", &c2s_config(NET, addr, 2, ""));
    for u in ["alice@a.test", "bob@a.test"] {
        add_user(&fr.config_path(), u, PASSWORD);
    }
    let t = target(&fr, addr);
    let mut alice = Client::login(&t, "alice", PASSWORD, Some("phone"));
    let (mut bob, previd) = sm_login(&t, "bob", "laptop");
    let b_full = bob.jid.clone().expect("bob bound");
    alice_subscribes_to_bob(&mut alice, &mut bob);
    message(&mut alice, &b_full, "c1", "not acked, then closed");
    expect_body(&mut bob, "alice@a.test", "c1", "not acked, then closed");

    bob.close();
    bob.expect_closed();
    drop(bob);
    // Gone at once (the resumption timeout is the default 5 min).
    alice.expect_presence(&b_full, Some("unavailable"));
    wait_metric(&fr, "fedrouter_offline_stored_total", 1.0);
    assert_eq!(
        fr.metric("fedrouter_c2s_sessions_detached_total", &[]),
        Some(0.0)
    );
    let (_c, answer) = try_resume(&t, "bob", &previd, 0);
    assert!(is(&answer, "failed", NS_SM), "{answer}");

    let mut bob = Client::login(&t, "bob", PASSWORD, Some("laptop"));
    bob.send("<presence/>");
    let m = expect_body(&mut bob, "alice@a.test", "c1", "not acked, then closed");
    assert!(delayed_by_server(&m), "no delay from a.test: {m}");
    bob.assert_none("the stored message twice", |x| is_message(x, "c1"));
    bob.close();
    alice.close();
}

#[test]
fn no_sm_feature_when_disabled() {
    const NET: u8 = 174;
    let addr = ip(NET, 3);
    let fr = Fedrouter::start(
        "a.test",
        &c2s_config(NET, addr, 1, "stream_management = false"),
    );
    add_user(&fr.config_path(), "alice@a.test", PASSWORD);
    let t = target(&fr, addr);
    let (mut c, features) = authenticated(&t, "alice");
    assert!(features.contains(NS_BIND), "{features}");
    assert!(!offers_sm(&features), "<sm/> offered: {features}");
    c.bind(Some("phone"));
    c.sync();
    c.close();
}
