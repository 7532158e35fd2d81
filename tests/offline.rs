//! Offline messages (XEP-0160) end to end: real `fedrouter serve` processes, real client
//! sockets on loopback (`common/xmpp.rs`: STARTTLS with the server's generated
//! certificate, SASL, bind), users created with `fedrouter user add`.
//!
//! - The server's disco#info lists `msgoffline` (XEP-0160 §4).
//! - Bob is offline; alice sends him `chat`, `normal` (no type), `headline` and
//!   `groupchat` messages, a `chat` holding only a chat state (XEP-0085) and a `chat` to a
//!   resource he does not have. The `groupchat` is refused (`service-unavailable`), the
//!   headline and the chat state dropped; past
//!   `c2s.max_offline_messages` the next one is refused (`service-unavailable`). Bob logs
//!   in, sends initial presence, and gets the stored ones in the order sent, each with a
//!   XEP-0203 `<delay from='a.test' stamp=…/>`, and not the headline; they are not
//!   delivered twice and are gone from the store; the metrics count what was stored,
//!   delivered and refused.
//! - A session with only a negative priority gets nothing (stored instead); its update to
//!   a non-negative priority delivers what was stored (XEP-0160 §5).
//! - A stored message survives `kill -9` of the server (it is in the database at the
//!   moment of the crash) and is delivered after the restart.
//! - A message from a remote server (S2S, dialback-authenticated scripted peer `c.test`)
//!   to an offline user is stored and delivered the same way.
//! - Messages to an address without an account ask the store once, then are refused from
//!   the shard's memory of that answer (`c2s.unknown_user_cache`).
//!
//! Each test owns a loopback range `127.0.N.0/24` (N = 162, 163, 164, 20; other suites use
//! other ranges), server on `.2` (5222 C2S, 5269 S2S, 9269 admin), DNS zone on `.1`, the
//! remote peer on `.5`. Every wait is bounded.

#[path = "common/c2s_client.rs"]
mod c2s_client;
#[path = "common/peer.rs"]
mod peer;
#[path = "common/server.rs"]
mod server;
#[path = "common/xmpp.rs"]
mod xmpp;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fedrouter::dialback::DialbackSecret;
use fedrouter::router::{bare_key, shard_of};
use fedrouter::store::sqlite::SqliteStore;
use fedrouter::store::{Store, DB_FILE};
use fedrouter::xml::tree::Node;
use peer::{db_result, header, FakeServer, Peer};
use server::{add_user, config, ip, xmpp_server, zone, Fedrouter, GOOGLE_STYLE};
use xmpp::{attr, child_text, condition, is_stanza, jid_matches, node, Client, Target};

const PASSWORD: &str = "s3cret horse";
const DELAY_NS: &str = "urn:xmpp:delay";

/// Bound of the waits for a metric to reach a value.
const METRIC_WAIT: Duration = Duration::from_secs(20);

fn c2s_config(net: u8, addr: Ipv4Addr, shards: usize, extra: &str) -> String {
    let text = config(net, addr, &["a.test"], shards, extra);
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

/// Two localparts whose bare JIDs at a.test are owned by different shards (of 2), so
/// storing and delivering cross shards.
fn pair_on_two_shards() -> (&'static str, &'static str) {
    let shard = |n: &str| shard_of(&bare_key(&format!("{n}@a.test")), 2);
    let names = ["alice", "bob", "carol", "dave", "erin", "frank"];
    for a in names {
        for b in names {
            if shard(a) != shard(b) {
                return (a, b);
            }
        }
    }
    panic!("no two names on different shards among {names:?}");
}

fn send_message(c: &mut Client, to: &str, type_: Option<&str>, id: &str, body: &str) {
    let t = type_.map(|t| format!(" type='{t}'")).unwrap_or_default();
    c.send(&format!(
        "<message to='{to}'{t} id='{id}'><body>{body}</body></message>"
    ));
}

/// The `<delay/>` child of a message (XEP-0203 §2), if any.
fn delay(xml: &str) -> Option<Node> {
    node(xml)
        .children
        .into_iter()
        .find(|c| c.name == "delay" && c.ns == DELAY_NS)
}

/// The stamp of a delay, checked to be XEP-0082 UTC, as a time.
fn stamp(d: &Node, m: &str) -> SystemTime {
    let s = d
        .attr("stamp")
        .unwrap_or_else(|| panic!("delay without stamp: {m}"));
    assert!(s.ends_with('Z'), "stamp {s:?} is not UTC: {m}");
    humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("stamp {s:?}: {e}: {m}"))
}

/// `t` truncated to whole milliseconds (the stamp's precision).
fn millis(t: SystemTime) -> SystemTime {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    UNIX_EPOCH + Duration::from_millis(ms as u64)
}

/// Waits until counter `name` (with `labels`) reaches `want`; returns its value.
fn wait_metric(fr: &Fedrouter, name: &str, labels: &[(&str, &str)], want: f64) -> f64 {
    let deadline = Instant::now() + METRIC_WAIT;
    let mut last = None;
    // Bounded: METRIC_WAIT / 20 ms turns at most.
    while Instant::now() < deadline {
        last = fr.metric(name, labels);
        if last.is_some_and(|v| v >= want) {
            return last.unwrap_or_default();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{name}{labels:?} did not reach {want} within {METRIC_WAIT:?} (last {last:?})");
}

/// Waits for the message with `id` and checks it came from `from`, has `body` and a
/// XEP-0203 delay from the server's domain; returns its stamp.
fn expect_delayed(c: &mut Client, from: &str, id: &str, body: &str) -> SystemTime {
    let m = c.expect(&format!("stored message {id}"), |x| {
        is_stanza(x, "message") && attr(x, "id").as_deref() == Some(id)
    });
    assert!(
        attr(&m, "from").is_some_and(|f| jid_matches(&f, from)),
        "{id} not from {from}: {m}"
    );
    assert_eq!(child_text(&m, "body").as_deref(), Some(body), "{m}");
    let d = delay(&m).unwrap_or_else(|| panic!("no urn:xmpp:delay on {id}: {m}"));
    assert_eq!(d.attr("from"), Some("a.test"), "delay from: {m}");
    stamp(&d, &m)
}

#[test]
fn stored_in_order_delivered_with_delay_and_bounded() {
    const NET: u8 = 162;
    let addr = ip(NET, 2);
    let (an, bn) = pair_on_two_shards();
    let (a, b) = (format!("{an}@a.test"), format!("{bn}@a.test"));
    let mut fr = Fedrouter::start(
        "a.test",
        &c2s_config(NET, addr, 2, "[c2s]\nmax_offline_messages = 3\n"),
    );
    for j in [&a, &b] {
        add_user(&fr.config_path(), j, PASSWORD);
    }
    let t = target(&fr, addr);
    let start = millis(SystemTime::now());

    // Bob has never logged in. A groupchat is refused at once, a headline dropped.
    let mut alice = Client::login(&t, an, PASSWORD, Some("phone"));
    alice.send("<presence/>");
    // The server advertises offline storage (XEP-0160 §4).
    alice.send(
        "<iq type='get' to='a.test' id='info'>\
         <query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    );
    let info = alice.expect_iq_answer("info");
    assert!(
        info.contains("<feature var='msgoffline'/>")
            || info.contains("<feature var=\"msgoffline\"/>"),
        "no msgoffline feature: {info}"
    );
    send_message(&mut alice, &b, Some("chat"), "m1", "first");
    send_message(&mut alice, &b, Some("groupchat"), "g1", "room");
    let e = alice.expect_error("message", "g1");
    assert_eq!(condition(&e).as_deref(), Some("service-unavailable"), "{e}");
    send_message(&mut alice, &b, Some("headline"), "h1", "news");
    // Only a chat state (XEP-0085): not stored (XEP-0160 §3), not answered.
    alice.send(&format!(
        "<message to='{b}' type='chat' id='cs1'>\
         <composing xmlns='http://jabber.org/protocol/chatstates'/></message>"
    ));
    send_message(&mut alice, &b, None, "m2", "second &amp; normal");
    // To a resource bob does not have: as if to the bare JID (RFC 6121 §8.5.3.2.1).
    send_message(
        &mut alice,
        &format!("{b}/gone"),
        Some("chat"),
        "m3",
        "third",
    );
    // The fourth is past c2s.max_offline_messages.
    send_message(&mut alice, &b, Some("chat"), "m4", "too many");
    let e = alice.expect_error("message", "m4");
    assert_eq!(condition(&e).as_deref(), Some("service-unavailable"), "{e}");
    assert!(attr(&e, "from").is_some_and(|f| jid_matches(&f, &b)), "{e}");
    alice.assert_none("an error for a stored message", |x| {
        is_stanza(x, "message") && attr(x, "type").as_deref() == Some("error")
    });
    assert_eq!(
        wait_metric(&fr, "fedrouter_offline_stored_total", &[], 3.0),
        3.0,
        "stored before m4 was refused"
    );

    // Bob logs in: nothing before his initial presence, then the three in order.
    let mut bob = Client::login(&t, bn, PASSWORD, Some("laptop"));
    bob.assert_none("a message before initial presence", |x| {
        is_stanza(x, "message")
    });
    bob.send("<presence/>");
    let s1 = expect_delayed(&mut bob, &a, "m1", "first");
    let s2 = expect_delayed(&mut bob, &a, "m2", "second & normal");
    let s3 = expect_delayed(&mut bob, &a, "m3", "third");
    let delivered_at = SystemTime::now();
    assert!(
        start <= s1 && s1 <= s2 && s2 <= s3 && s3 <= delivered_at,
        "stamps not in order of receipt: {start:?} {s1:?} {s2:?} {s3:?} {delivered_at:?}"
    );
    // The order held on the wire too: no other stored message came first.
    let log = bob.transcript();
    let pos = |id: &str| {
        log.find(&format!("id='{id}'"))
            .or_else(|| log.find(&format!("id=\"{id}\"")))
            .unwrap_or_else(|| panic!("{id} not in bob's transcript"))
    };
    assert!(pos("m1") < pos("m2") && pos("m2") < pos("m3"), "{log}");
    bob.assert_none(
        "the headline, chat state, groupchat or refused message",
        |x| {
            is_stanza(x, "message")
                && matches!(attr(x, "id").as_deref(), Some("h1" | "g1" | "m4" | "cs1"))
        },
    );

    // Live delivery again, without a delay.
    send_message(&mut alice, &b, Some("chat"), "m5", "live");
    let m = bob.expect("the live message", |x| {
        is_stanza(x, "message") && attr(x, "id").as_deref() == Some("m5")
    });
    assert!(delay(&m).is_none(), "a live message has a delay: {m}");

    // Delivered once: a new session of bob gets nothing stored.
    bob.close();
    bob.expect_closed();
    let mut bob = Client::login(&t, bn, PASSWORD, Some("desk"));
    bob.send("<presence/>");
    bob.assert_none("a stored message delivered twice", |x| {
        is_stanza(x, "message")
    });

    // A negative priority takes no bare-JID message (RFC 6121 §8.5.2.1.1): stored; the
    // update to a non-negative priority delivers it (XEP-0160 §5).
    bob.send("<presence><priority>-1</priority></presence>");
    bob.sync();
    send_message(&mut alice, &b, Some("chat"), "m6", "while negative");
    wait_metric(&fr, "fedrouter_offline_stored_total", &[], 4.0);
    bob.assert_none("a message to a negative priority", |x| {
        is_stanza(x, "message")
    });
    bob.send("<presence><priority>1</priority></presence>");
    expect_delayed(&mut bob, &a, "m6", "while negative");

    assert_eq!(
        fr.metric("fedrouter_offline_delivered_total", &[]),
        Some(4.0)
    );
    assert_eq!(
        fr.metric("fedrouter_offline_refused_total", &[("cause", "full")]),
        Some(1.0)
    );
    assert_eq!(
        fr.metric(
            "fedrouter_offline_refused_total",
            &[("cause", "chat_states_only")]
        ),
        Some(1.0)
    );
    alice.close();
    bob.close();

    // Deleted once handed over: nothing left in the store.
    assert!(fr.stop(), "the server did not stop on SIGTERM");
    let left = SqliteStore::open(fr.dir().join("data").join(DB_FILE))
        .and_then(|mut s| s.offline(&b))
        .unwrap_or_else(|e| panic!("read bob's offline messages: {e}"));
    assert_eq!(left, vec![], "delivered messages stay stored");
}

#[test]
fn stored_message_survives_kill9() {
    const NET: u8 = 163;
    let addr = ip(NET, 2);
    let mut fr = Fedrouter::start("a.test", &c2s_config(NET, addr, 2, ""));
    add_user(&fr.config_path(), "alice@a.test", PASSWORD);
    add_user(&fr.config_path(), "bob@a.test", PASSWORD);
    let t = target(&fr, addr);

    let mut alice = Client::login(&t, "alice", PASSWORD, Some("phone"));
    send_message(
        &mut alice,
        "bob@a.test",
        Some("chat"),
        "k1",
        "before the crash",
    );
    // Counted once committed.
    wait_metric(&fr, "fedrouter_offline_stored_total", &[], 1.0);
    fr.kill();
    alice.expect_closed();

    // In the database at the moment of the crash.
    let data = fr.dir().join("data");
    let stored = SqliteStore::open(data.join(DB_FILE))
        .and_then(|mut s| s.offline("bob@a.test"))
        .unwrap_or_else(|e| panic!("read bob's offline messages: {e}"));
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(stored[0].stanza.contains("before the crash"), "{stored:?}");

    fr.restart();
    let mut bob = Client::login(&t, "bob", PASSWORD, Some("laptop"));
    bob.send("<presence/>");
    expect_delayed(&mut bob, "alice@a.test", "k1", "before the crash");
    bob.close();
    assert!(fr.stop(), "the server did not stop on SIGTERM");
    let left = SqliteStore::open(data.join(DB_FILE))
        .and_then(|mut s| s.offline("bob@a.test"))
        .unwrap_or_else(|e| panic!("read bob's offline messages: {e}"));
    assert_eq!(left, vec![], "delivered messages stay stored");
}

#[test]
fn message_over_s2s_is_stored_the_same_way() {
    const NET: u8 = 164;
    const ANSWER: Duration = Duration::from_secs(30);
    let c_secret = DialbackSecret::new(b"c.test's dialback secret, 32 b!!");
    // c.test's authoritative server, answering a.test's dialback verification.
    let _c = FakeServer::start(
        SocketAddr::new(ip(NET, 5).into(), 5269),
        "c.test",
        c_secret.clone(),
    );
    let mut records = xmpp_server("a.test", ip(NET, 2));
    records.extend(xmpp_server("c.test", ip(NET, 5)));
    let _dns = zone(NET, records);
    let addr = ip(NET, 2);
    let fr = Fedrouter::start("a.test", &c2s_config(NET, addr, 2, GOOGLE_STYLE));
    add_user(&fr.config_path(), "bob@a.test", PASSWORD);

    let mut p = Peer::connect(SocketAddr::new(addr.into(), 5269));
    p.send(header(Some("c.test"), "a.test").as_bytes())
        .expect("send header");
    assert!(
        p.read_until_contains("</stream:features>", ANSWER),
        "no stream features: {:?}",
        p.text()
    );
    let id = p.stream_id().expect("stream id");
    p.send(db_result("c.test", "a.test", &c_secret.key("a.test", "c.test", &id)).as_bytes())
        .expect("send db:result");
    assert!(
        p.read_until(ANSWER, |t| t.contains("<db:result")),
        "no dialback answer: {:?}",
        p.text()
    );
    assert_eq!(
        p.db_result_type("a.test", "c.test").as_deref(),
        Some("valid"),
        "{:?}",
        p.text()
    );
    p.send(
        b"<message from='x@c.test/r' to='bob@a.test' type='chat' id='s1'>\
          <body>over federation</body></message>",
    )
    .expect("send message");
    wait_metric(&fr, "fedrouter_offline_stored_total", &[], 1.0);

    let mut bob = Client::login(&target(&fr, addr), "bob", PASSWORD, Some("laptop"));
    bob.send("<presence/>");
    expect_delayed(&mut bob, "x@c.test/r", "s1", "over federation");
    bob.close();
}

/// Messages to an address without an account: the first asks the store (roster load,
/// `NoSuchUser`), the next ones are refused from the shard's memory of that answer
/// (`c2s.unknown_user_cache`) without a store round trip each; every one gets
/// `service-unavailable` (RFC 6121 §8.5.1) and none is stored.
#[test]
fn messages_to_an_unknown_user_ask_the_store_once() {
    const NET: u8 = 20;
    const REPEATS: usize = 5;
    let addr = ip(NET, 2);
    // An hour, so that the test does not depend on how fast the machine is.
    let fr = Fedrouter::start(
        "a.test",
        &c2s_config(NET, addr, 2, "[c2s]\nunknown_user_cache = \"1h\"\n"),
    );
    add_user(&fr.config_path(), "alice@a.test", PASSWORD);
    let mut alice = Client::login(&target(&fr, addr), "alice", PASSWORD, Some("phone"));
    alice.send("<presence/>");
    let refused = |alice: &mut Client, id: &str| {
        let e = alice.expect("the error reply", |x| {
            is_stanza(x, "message") && attr(x, "id").as_deref() == Some(id)
        });
        assert_eq!(attr(&e, "type").as_deref(), Some("error"), "{e}");
        assert!(e.contains("service-unavailable"), "{e}");
    };
    send_message(&mut alice, "ghost@a.test", Some("chat"), "g0", "anyone?");
    refused(&mut alice, "g0");
    // Counters are exported from the start (at zero).
    let m = |name: &str, labels: &[(&str, &str)]| fr.metric(name, labels).unwrap_or(0.0);
    assert_eq!(m("fedrouter_unknown_user_cache_hits_total", &[]), 0.0);
    for i in 1..=REPEATS {
        send_message(
            &mut alice,
            "ghost@a.test",
            Some("chat"),
            &format!("g{i}"),
            "x",
        );
    }
    for i in 1..=REPEATS {
        refused(&mut alice, &format!("g{i}"));
    }
    assert_eq!(
        m("fedrouter_unknown_user_cache_hits_total", &[]),
        REPEATS as f64,
        "later messages asked the store again"
    );
    assert_eq!(
        m(
            "fedrouter_offline_refused_total",
            &[("cause", "no_such_user")]
        ),
        REPEATS as f64 + 1.0
    );
    assert_eq!(m("fedrouter_offline_stored_total", &[]), 0.0);
    alice.close();
}
