//! Local users end to end: real `fedrouter serve` processes, real client sockets on
//! loopback (`common/xmpp.rs`: STARTTLS with the server's generated certificate, SASL,
//! bind), users created with `fedrouter user add`.
//!
//! - RFC 6121 subscriptions between two users of one server, on different shards and on
//!   the same shard, and between two servers over S2S (plain TCP + dialback): subscribe,
//!   approve, mutual, presence both ways, messages to full and bare JIDs, unsubscribe,
//!   roster pushes with the right `subscription`/`ask` and increasing `ver` at each step,
//!   and the states stored in SQLite once the servers are stopped.
//! - Durability: a subscription request acknowledged (roster push with `ask`) survives a
//!   SIGKILL of the server.
//! - Bad input: wrong passwords (delayed retries, then `policy-violation`), SASL before
//!   TLS, invalid roster items, roster limits, malformed addresses, offline recipients,
//!   resource conflicts.
//!
//! Each test owns the loopback range `127.0.N.0/24`, N = 220..=229 (other suites use other
//! ranges), with fixed ports (`.1:5300` DNS, servers on `.2`/`.3`: 5222 C2S, 5269 S2S,
//! 9269 admin). Every wait is bounded.

#[path = "common/c2s_client.rs"]
mod c2s_client;
#[path = "common/server.rs"]
mod server;
#[path = "common/xmpp.rs"]
mod xmpp;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use fedrouter::router::{bare_key, shard_of};
use fedrouter::store::sqlite::SqliteStore;
use fedrouter::store::{Store, StoredItem, DB_FILE};
use server::{add_user, config, ip, xmpp_server, zone, Fedrouter, GOOGLE_STYLE};
use xmpp::{attr, child_text, condition, is_stanza, jid_matches, node, Client, Mech, Target};

const PASSWORD: &str = "s3cret horse";

// ---------------------------------------------------------------------------------------
// Set-up helpers
// ---------------------------------------------------------------------------------------

/// `server::config` with a C2S listener on `addr:5222`; `extra` may hold `[c2s]`.
fn c2s_config(net: u8, addr: Ipv4Addr, domains: &[&str], shards: usize, extra: &str) -> String {
    let text = config(net, addr, domains, shards, extra);
    assert!(text.contains("c2s = []"), "server::config changed: {text}");
    text.replace("c2s = []", &format!("c2s = [\"{addr}:5222\"]"))
}

fn c2s_addr(addr: Ipv4Addr) -> SocketAddr {
    SocketAddr::new(addr.into(), 5222)
}

fn add_users(fr: &Fedrouter, jids: &[&str]) {
    for j in jids {
        add_user(&fr.config_path(), j, PASSWORD);
    }
}

fn target(fr: &Fedrouter, addr: Ipv4Addr, domain: &str) -> Target {
    Target::new(c2s_addr(addr), domain, &fr.dir().join("data"))
}

/// Two distinct localparts whose bare JIDs at `domain` are owned by the same shard
/// (`same`) or by different ones, among `shards`.
fn pick_pair(domain: &str, shards: usize, same: bool) -> (&'static str, &'static str) {
    const NAMES: [&str; 12] = [
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
        "oscar", "peggy",
    ];
    let shard = |n: &str| shard_of(&bare_key(&format!("{n}@{domain}")), shards);
    for a in NAMES {
        for b in NAMES {
            if a != b && (shard(a) == shard(b)) == same {
                return (a, b);
            }
        }
    }
    panic!("no pair of names with same shard = {same} among {NAMES:?}");
}

/// The stored roster row of `user` for `contact`, read from the database of a stopped
/// server.
fn stored_item(data_dir: &Path, user: &str, contact: &str) -> Option<StoredItem> {
    let mut store = SqliteStore::open(data_dir.join(DB_FILE))
        .unwrap_or_else(|e| panic!("open {}: {e}", data_dir.display()));
    let (_ver, items) = store
        .roster(user)
        .unwrap_or_else(|e| panic!("roster of {user}: {e}"));
    items.into_iter().find(|i| i.contact == contact)
}

/// Asserts a stored row: in the roster, `subscription`, `ask`, no pending inbound request.
fn assert_stored(row: Option<StoredItem>, what: &str, subscription: &str, pending_out: bool) {
    let row = row.unwrap_or_else(|| panic!("{what}: no stored row"));
    assert!(row.in_roster, "{what}: not in the roster: {row:?}");
    assert_eq!(row.subscription, subscription, "{what}: {row:?}");
    assert_eq!(row.pending_out, pending_out, "{what}: {row:?}");
    assert_eq!(row.pending_in, None, "{what}: {row:?}");
}

/// Asserts a roster `<item/>`: jid, subscription, ask.
fn assert_item(item: &str, jid: &str, subscription: &str, ask: Option<&str>) {
    assert_eq!(
        attr(item, "jid").map(|j| j.to_ascii_lowercase()).as_deref(),
        Some(jid),
        "{item}"
    );
    assert_eq!(
        attr(item, "subscription").as_deref(),
        Some(subscription),
        "subscription of {item}"
    );
    assert_eq!(attr(item, "ask").as_deref(), ask, "ask of {item}");
}

/// Waits for the roster push about `contact` and checks it (as [`assert_item`]) and that
/// its `ver` is higher than the client's previous one (RFC 6121 §2.6).
fn expect_push(c: &mut Client, contact: &str, subscription: &str, ask: Option<&str>) {
    let before: Option<u64> = c.roster_ver.as_deref().and_then(|v| v.parse().ok());
    let item = c.expect_roster_push(contact);
    assert_item(&item, contact, subscription, ask);
    let after: u64 = c
        .roster_ver
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{}: push without a decimal ver: {item}", c.name));
    if let Some(b) = before {
        assert!(
            after > b,
            "{}: push ver {after} not above {b}: {item}",
            c.name
        );
    }
}

/// A subscription stanza from the user to `to`.
fn sub(c: &mut Client, type_: &str, to: &str) {
    c.send(&format!("<presence type='{type_}' to='{to}'/>"));
}

/// Sends a chat message `to` with `id` and `body`.
fn message(c: &mut Client, to: &str, id: &str, body: &str) {
    c.send(&format!(
        "<message type='chat' to='{to}' id='{id}'><body>{body}</body></message>"
    ));
}

fn expect_body(c: &mut Client, from: &str, id: &str, body: &str) -> String {
    let m = c.expect(&format!("message {id} from {from}"), |x| {
        is_stanza(x, "message") && attr(x, "id").as_deref() == Some(id)
    });
    assert!(
        attr(&m, "from").is_some_and(|f| jid_matches(&f, from)),
        "message {id} not from {from}: {m}"
    );
    assert_eq!(child_text(&m, "body").as_deref(), Some(body), "{m}");
    assert_ne!(attr(&m, "type").as_deref(), Some("error"), "{m}");
    m
}

// ---------------------------------------------------------------------------------------
// The subscription flow (RFC 6121 §3) between two logged-in users
// ---------------------------------------------------------------------------------------

/// Two sessions with their bare JIDs.
struct Pair {
    alice: Client,
    a: String,
    bob: Client,
    b: String,
}

/// From nothing to `both` and back to alice `from` / bob `to` (and, with `to_none`, to
/// `none` on both sides). Alice sent initial presence; bob has not.
fn subscription_flow(p: &mut Pair, to_none: bool) {
    let (a, b) = (p.a.clone(), p.b.clone());
    let alice = &mut p.alice;
    let bob = &mut p.bob;
    let a_full = alice.jid.clone().expect("alice bound");
    let b_full = bob.jid.clone().expect("bob bound");

    // Both want roster pushes (RFC 6121 §2.1.6: interested resources).
    assert_eq!(alice.roster_get(), Vec::<String>::new(), "alice's roster");
    assert_eq!(bob.roster_get(), Vec::<String>::new(), "bob's roster");
    alice.send("<presence/>");
    alice.sync();

    // §3.1.2: the request is stored as "None + Pending Out" and pushed with ask.
    sub(alice, "subscribe", &b);
    expect_push(alice, &b, "none", Some("subscribe"));

    // §3.1.3: not shown to bob before his initial presence...
    bob.assert_none("subscription request before initial presence", |x| {
        is_stanza(x, "presence") && attr(x, "type").as_deref() == Some("subscribe")
    });
    // ... then delivered, from alice's bare JID.
    bob.send("<presence/>");
    let req = bob.expect_presence(&a, Some("subscribe"));
    assert_eq!(attr(&req, "from").as_deref(), Some(a.as_str()), "{req}");
    // An unanswered request is not a roster item (Appendix A.1).
    assert_eq!(bob.roster_get(), Vec::<String>::new(), "bob's roster");

    // §3.1.5: bob approves; both get pushes; alice is told and gets bob's presence.
    sub(bob, "subscribed", &a);
    expect_push(bob, &a, "from", None);
    expect_push(alice, &b, "to", None);
    let ok = alice.expect_presence(&b, Some("subscribed"));
    assert_eq!(attr(&ok, "from").as_deref(), Some(b.as_str()), "{ok}");
    alice.expect_presence(&b_full, None);

    // Bob subscribes back: "From + Pending Out", then "Both".
    sub(bob, "subscribe", &a);
    expect_push(bob, &a, "from", Some("subscribe"));
    alice.expect_presence(&b, Some("subscribe"));
    sub(alice, "subscribed", &b);
    expect_push(alice, &b, "both", None);
    expect_push(bob, &a, "both", None);
    bob.expect_presence(&a, Some("subscribed"));
    bob.expect_presence(&a_full, None);

    // The rosters as fetched agree with the pushes.
    let items = alice.roster_get();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_item(&items[0], &b, "both", None);
    let items = bob.roster_get();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_item(&items[0], &a, "both", None);

    // §4.4: presence updates reach the subscriber, both ways.
    bob.send("<presence><status>on the phone</status></presence>");
    let pr = alice.expect("bob's presence update", |x| {
        is_stanza(x, "presence") && child_text(x, "status").as_deref() == Some("on the phone")
    });
    assert!(
        attr(&pr, "from").is_some_and(|f| jid_matches(&f, &b_full)),
        "{pr}"
    );
    alice.send("<presence><show>away</show><status>lunch</status></presence>");
    let pr = bob.expect("alice's presence update", |x| {
        is_stanza(x, "presence") && child_text(x, "status").as_deref() == Some("lunch")
    });
    assert!(
        attr(&pr, "from").is_some_and(|f| jid_matches(&f, &a_full)),
        "{pr}"
    );
    assert_eq!(child_text(&pr, "show").as_deref(), Some("away"), "{pr}");

    // §8.5: messages to the full JID and to the bare JID (the available resource).
    message(alice, &b_full, "m-full", "to your resource");
    let m = expect_body(bob, &a_full, "m-full", "to your resource");
    assert_eq!(
        attr(&m, "from").as_deref(),
        Some(a_full.as_str()),
        "stamped from: {m}"
    );
    message(alice, &b, "m-bare", "to your bare JID");
    expect_body(bob, &a_full, "m-bare", "to your bare JID");
    message(bob, &a, "m-back", "and back");
    expect_body(alice, &b_full, "m-back", "and back");

    // §3.3: alice unsubscribes from bob's presence: alice "From", bob "To"; bob is told
    // and alice gets bob's unavailable presence (§3.3.3).
    sub(alice, "unsubscribe", &b);
    expect_push(alice, &b, "from", None);
    expect_push(bob, &a, "to", None);
    bob.expect_presence(&a, Some("unsubscribe"));
    alice.expect_presence(&b_full, Some("unavailable"));

    // Bob's presence no longer reaches alice; alice's still reaches bob. A message sent
    // after the presence is a barrier: it travels the same path, in order.
    bob.send("<presence><status>after unsubscribe</status></presence>");
    message(bob, &a, "barrier-1", "barrier");
    expect_body(alice, &b_full, "barrier-1", "barrier");
    let leaked = alice.take_buffered(|x| {
        is_stanza(x, "presence") && child_text(x, "status").as_deref() == Some("after unsubscribe")
    });
    assert!(
        leaked.is_empty(),
        "alice still gets bob's presence: {leaked:?}"
    );
    alice.send("<presence><status>still visible</status></presence>");
    bob.expect("alice's presence after the unsubscribe", |x| {
        is_stanza(x, "presence") && child_text(x, "status").as_deref() == Some("still visible")
    });

    if to_none {
        // §3.2: alice cancels bob's subscription: "None" on both sides; bob is told and
        // gets alice's unavailable presence.
        sub(alice, "unsubscribed", &b);
        bob.expect_presence(&a_full, Some("unavailable"));
        expect_push(alice, &b, "none", None);
        expect_push(bob, &a, "none", None);
        bob.expect_presence(&a, Some("unsubscribed"));

        alice.send("<presence><status>gone dark</status></presence>");
        message(alice, &b, "barrier-2", "barrier");
        expect_body(bob, &a_full, "barrier-2", "barrier");
        let leaked = bob.take_buffered(|x| {
            is_stanza(x, "presence") && child_text(x, "status").as_deref() == Some("gone dark")
        });
        assert!(
            leaked.is_empty(),
            "bob still gets alice's presence: {leaked:?}"
        );

        let items = alice.roster_get();
        assert_eq!(items.len(), 1, "{items:?}");
        assert_item(&items[0], &b, "none", None);
        let items = bob.roster_get();
        assert_eq!(items.len(), 1, "{items:?}");
        assert_item(&items[0], &a, "none", None);
    }
}

/// Two users of one server with 2 shards: on different shards or on the same one.
fn one_server_flow(net: u8, same_shard: bool) {
    const SHARDS: usize = 2;
    let (an, bn) = pick_pair("a.test", SHARDS, same_shard);
    let (a, b) = (format!("{an}@a.test"), format!("{bn}@a.test"));
    let addr = ip(net, 2);
    let mut fr = Fedrouter::start("a.test", &c2s_config(net, addr, &["a.test"], SHARDS, ""));
    add_users(&fr, &[&a, &b]);
    let t = target(&fr, addr, "a.test");
    let mut p = Pair {
        alice: Client::login(&t, an, PASSWORD, Some("phone")),
        a: a.clone(),
        bob: Client::login(&t, bn, PASSWORD, Some("laptop")),
        b: b.clone(),
    };
    assert_eq!(p.alice.jid.as_deref(), Some(format!("{a}/phone").as_str()));
    subscription_flow(&mut p, true);
    p.alice.close();
    p.bob.close();

    assert!(fr.stop(), "the server did not stop on SIGTERM");
    let data = fr.dir().join("data");
    assert_stored(
        stored_item(&data, &a, &b),
        "alice's row for bob",
        "none",
        false,
    );
    assert_stored(
        stored_item(&data, &b, &a),
        "bob's row for alice",
        "none",
        false,
    );
}

#[test]
fn subscription_flow_across_shards() {
    one_server_flow(220, false);
}

#[test]
fn subscription_flow_same_shard() {
    one_server_flow(221, true);
}

/// alice@a.test on server A, bob@b.test on server B, federating over plain TCP +
/// dialback, found through SRV records.
#[test]
fn subscription_flow_over_s2s() {
    const NET: u8 = 222;
    let (addr_a, addr_b) = (ip(NET, 2), ip(NET, 3));
    let mut records = xmpp_server("a.test", addr_a);
    records.extend(xmpp_server("b.test", addr_b));
    let _dns = zone(NET, records);
    let mut sa = Fedrouter::start(
        "a.test",
        &c2s_config(NET, addr_a, &["a.test"], 2, GOOGLE_STYLE),
    );
    let mut sb = Fedrouter::start(
        "b.test",
        &c2s_config(NET, addr_b, &["b.test"], 2, GOOGLE_STYLE),
    );
    add_users(&sa, &["alice@a.test"]);
    add_users(&sb, &["bob@b.test"]);
    let mut p = Pair {
        alice: Client::login(
            &target(&sa, addr_a, "a.test"),
            "alice",
            PASSWORD,
            Some("phone"),
        ),
        a: "alice@a.test".into(),
        bob: Client::login(
            &target(&sb, addr_b, "b.test"),
            "bob",
            PASSWORD,
            Some("laptop"),
        ),
        b: "bob@b.test".into(),
    };
    subscription_flow(&mut p, false);
    p.alice.close();
    p.bob.close();

    assert!(sa.stop(), "a.test did not stop on SIGTERM");
    assert!(sb.stop(), "b.test did not stop on SIGTERM");
    assert_stored(
        stored_item(&sa.dir().join("data"), "alice@a.test", "bob@b.test"),
        "alice's row for bob",
        "from",
        false,
    );
    assert_stored(
        stored_item(&sb.dir().join("data"), "bob@b.test", "alice@a.test"),
        "bob's row for alice",
        "to",
        false,
    );
}

// ---------------------------------------------------------------------------------------
// Durability
// ---------------------------------------------------------------------------------------

/// A subscription request acknowledged to its sender (roster push with `ask`) survives a
/// SIGKILL: after the restart the contact receives it at its initial presence, and the
/// sender's roster still shows `ask='subscribe'` (DESIGN.md: durable before acknowledged
/// or forwarded).
#[test]
fn pending_subscribe_survives_kill9() {
    const NET: u8 = 223;
    let addr = ip(NET, 2);
    let mut fr = Fedrouter::start("a.test", &c2s_config(NET, addr, &["a.test"], 2, ""));
    add_users(&fr, &["alice@a.test", "bob@a.test"]);
    let t = target(&fr, addr, "a.test");

    let mut alice = Client::login(&t, "alice", PASSWORD, Some("phone"));
    alice.roster_get();
    // Bob is offline.
    sub(&mut alice, "subscribe", "bob@a.test");
    expect_push(&mut alice, "bob@a.test", "none", Some("subscribe"));
    fr.kill();
    alice.expect_closed();

    // On disk at the moment of the crash: alice's "None + Pending Out". Bob's stored
    // request ("None + Pending In") is written on bob's shard after alice's
    // acknowledgement and may not be there yet; alice's stored, unanswered request is the
    // durable outbox the server sends again when it starts (`Store::pending_out`).
    let data = fr.dir().join("data");
    assert_stored(
        stored_item(&data, "alice@a.test", "bob@a.test"),
        "alice's row for bob at the crash",
        "none",
        true,
    );

    fr.restart();
    let mut bob = Client::login(&t, "bob", PASSWORD, Some("laptop"));
    assert_eq!(bob.roster_get(), Vec::<String>::new(), "bob's roster");
    bob.send("<presence/>");
    let req = bob.expect_presence("alice@a.test", Some("subscribe"));
    assert_eq!(attr(&req, "from").as_deref(), Some("alice@a.test"), "{req}");
    // Now stored on bob's side too, as a request that is not a roster item.
    let row = stored_item(&data, "bob@a.test", "alice@a.test")
        .unwrap_or_else(|| panic!("bob's stored request from alice is missing"));
    assert!(
        !row.in_roster && row.subscription == "none" && !row.pending_out,
        "bob's row for alice: {row:?}"
    );
    assert!(
        row.pending_in
            .as_deref()
            .is_some_and(|p| p.contains("subscribe")),
        "bob's row for alice has no pending request: {row:?}"
    );

    let mut alice = Client::login(&t, "alice", PASSWORD, Some("phone"));
    let items = alice.roster_get();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_item(&items[0], "bob@a.test", "none", Some("subscribe"));

    // The restored states still work: bob approves, alice gets "to".
    sub(&mut bob, "subscribed", "alice@a.test");
    expect_push(&mut alice, "bob@a.test", "to", None);
    alice.close();
    bob.close();
    assert!(fr.stop(), "the server did not stop on SIGTERM");
    assert_stored(
        stored_item(&fr.dir().join("data"), "alice@a.test", "bob@a.test"),
        "alice's row for bob",
        "to",
        false,
    );
}

// ---------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------

/// Wrong passwords: `not-authorized` (unknown users alike), each retry answered only after
/// `auth_failure_delay × 2^(n-1)` (RFC 6120 §6.4.5 leaves the throttle to the server),
/// the third failure closes the stream with `policy-violation`; SASL before STARTTLS is
/// `encryption-required` when TLS is required; the right password still works.
#[test]
fn wrong_passwords_are_delayed_then_closed() {
    const NET: u8 = 224;
    const DELAY: Duration = Duration::from_millis(300);
    let addr = ip(NET, 2);
    let extra = "[c2s]\nauth_failure_delay = \"300ms\"\nmax_auth_failures = 3\n";
    let fr = Fedrouter::start("a.test", &c2s_config(NET, addr, &["a.test"], 2, extra));
    add_users(&fr, &["alice@a.test"]);
    let t = target(&fr, addr, "a.test");

    // TLS required: no mechanism before STARTTLS, and <auth/> is refused.
    let mut c = Client::connect(t.addr, "a.test");
    let features = c.open();
    assert!(features.contains("<required/>"), "{features}");
    assert!(!features.contains("<mechanism>"), "{features}");
    let f = c.auth(Mech::ScramSha256, "alice", PASSWORD).unwrap_err();
    assert_eq!(condition(&f).as_deref(), Some("encryption-required"), "{f}");
    drop(c);

    // An unknown user fails like a wrong password.
    let (_c, f) = Client::login_failure(&t, Mech::ScramSha256, "nobody", PASSWORD);
    assert_eq!(condition(&f).as_deref(), Some("not-authorized"), "{f}");

    let mut c = Client::connect(t.addr, "a.test");
    c.name = "alice (expecting failures)".into();
    c.open();
    c.starttls(&t.cert);
    // Before the first wrong attempt: the server's first failure, which starts the first
    // hold, comes after this instant.
    let t0 = Instant::now();
    let f1 = c.auth(Mech::ScramSha256, "alice", "wrong").unwrap_err();
    assert_eq!(condition(&f1).as_deref(), Some("not-authorized"), "{f1}");
    let f2 = c.auth(Mech::Plain, "alice", "wrong again").unwrap_err();
    let t1 = Instant::now();
    assert_eq!(condition(&f2).as_deref(), Some("not-authorized"), "{f2}");
    let f3 = c.auth(Mech::ScramSha1, "alice", "still wrong").unwrap_err();
    let t2 = Instant::now();
    assert_eq!(condition(&f3).as_deref(), Some("not-authorized"), "{f3}");
    assert_eq!(c.expect_stream_error(), "policy-violation");
    c.expect_closed();

    // The second attempt was answered DELAY after the first failure at the earliest, the
    // third 2 × DELAY after the second failure: so at least DELAY, and 3 × DELAY, after
    // t0 (lower bounds that no load can break: every failure is sent after t0). Without
    // the doubling the third would come about 2 × DELAY after t0.
    let (d1, d2) = (t1 - t0, t2 - t0);
    assert!(
        d1 >= DELAY,
        "second failure {d1:?} after the first attempt, delay {DELAY:?}"
    );
    assert!(
        d2 >= 3 * DELAY,
        "third failure {d2:?} after the first attempt, delays {DELAY:?} then 2 × {DELAY:?}"
    );

    // Failures do not lock the account: the right password works, with each mechanism.
    for mech in [Mech::ScramSha256, Mech::ScramSha1, Mech::Plain] {
        let mut ok = Client::login_with(&t, mech, "alice", PASSWORD, None);
        ok.sync();
    }
}

/// `tls_required = false`: SCRAM is offered without TLS, PLAIN is not, and an
/// `<auth mechanism='PLAIN'>` without TLS is `encryption-required` (RFC 6120 §6.5.4);
/// SCRAM then works on the same stream.
#[test]
fn plain_refused_without_tls() {
    const NET: u8 = 225;
    let addr = ip(NET, 2);
    let extra = "[c2s]\ntls_required = false\nauth_failure_delay = \"100ms\"\n";
    let fr = Fedrouter::start("a.test", &c2s_config(NET, addr, &["a.test"], 2, extra));
    add_users(&fr, &["alice@a.test"]);

    let mut c = Client::connect(c2s_addr(addr), "a.test");
    c.name = "alice (no TLS)".into();
    let features = c.open();
    assert!(
        features.contains("<mechanism>SCRAM-SHA-256</mechanism>"),
        "{features}"
    );
    assert!(
        !features.contains("PLAIN"),
        "PLAIN offered without TLS: {features}"
    );
    assert!(!features.contains("<required/>"), "{features}");
    let f = c.auth(Mech::Plain, "alice", PASSWORD).unwrap_err();
    assert_eq!(condition(&f).as_deref(), Some("encryption-required"), "{f}");

    c.auth(Mech::ScramSha256, "alice", PASSWORD)
        .unwrap_or_else(|f| c.fail(&format!("SCRAM without TLS refused: {f}")));
    let features = c.open();
    assert!(features.contains(xmpp::NS_BIND), "{features}");
    let jid = c.bind(None);
    assert!(
        jid.starts_with("alice@a.test/") && jid.len() > "alice@a.test/".len(),
        "{jid}"
    );
    c.sync();
}

/// Roster and stanza errors: an invalid item JID (`bad-request`), the roster limit
/// (`not-allowed`, for roster sets and for subscription requests), a subscription
/// request to a malformed JID (`jid-malformed`), messages to an offline user with offline
/// storage turned off (`c2s.max_offline_messages = 0`) or to an unknown user
/// (`service-unavailable`); removal frees a slot. Also a server-generated resource and
/// the legacy session.
#[test]
fn roster_and_stanza_errors() {
    const NET: u8 = 226;
    let addr = ip(NET, 2);
    let extra = "[c2s]\nmax_roster_items = 2\nmax_offline_messages = 0\n";
    let fr = Fedrouter::start("a.test", &c2s_config(NET, addr, &["a.test"], 2, extra));
    add_users(&fr, &["alice@a.test", "bob@a.test"]);
    let t = target(&fr, addr, "a.test");

    let mut alice = Client::login(&t, "alice", PASSWORD, None);
    let jid = alice.jid.clone().expect("bound");
    assert!(
        jid.starts_with("alice@a.test/") && jid.len() > "alice@a.test/".len(),
        "{jid}"
    );
    alice.session();
    assert_eq!(alice.roster_get(), Vec::<String>::new());

    // RFC 6121 §2.3.3: an item whose jid is not a JID.
    let e = alice.roster_set("<item jid='@@bad'/>");
    assert_eq!(attr(&e, "type").as_deref(), Some("error"), "{e}");
    assert_eq!(condition(&e).as_deref(), Some("bad-request"), "{e}");

    // Two items fit, the third does not.
    for contact in ["carol@a.test", "dave@a.test"] {
        let r = alice.roster_set(&format!(
            "<item jid='{contact}' name='C'><group>Friends</group></item>"
        ));
        assert_eq!(attr(&r, "type").as_deref(), Some("result"), "{r}");
        expect_push(&mut alice, contact, "none", None);
    }
    let e = alice.roster_set("<item jid='erin@a.test'/>");
    assert_eq!(attr(&e, "type").as_deref(), Some("error"), "{e}");
    assert_eq!(condition(&e).as_deref(), Some("not-allowed"), "{e}");
    // A subscription request would add an item: refused too.
    alice.send("<presence type='subscribe' to='frank@a.test' id='s-full'/>");
    let e = alice.expect_error("presence", "s-full");
    assert_eq!(condition(&e).as_deref(), Some("not-allowed"), "{e}");
    let items = alice.roster_get();
    assert_eq!(items.len(), 2, "{items:?}");

    // RFC 6120 §8.3.3.8: a malformed address.
    alice.send("<presence type='subscribe' to='@@bad' id='s-bad'/>");
    let e = alice.expect_error("presence", "s-bad");
    assert_eq!(condition(&e).as_deref(), Some("jid-malformed"), "{e}");

    // RFC 6121 §8.5.2.2: no available resource, offline storage off (XEP-0160 storage is
    // tests/offline.rs's).
    for (to, id) in [
        ("bob@a.test", "m-off"),
        ("bob@a.test/laptop", "m-off-full"),
        ("nobody@a.test", "m-nobody"),
    ] {
        message(&mut alice, to, id, "anyone there?");
        let e = alice.expect_error("message", id);
        assert_eq!(condition(&e).as_deref(), Some("service-unavailable"), "{e}");
        assert!(attr(&e, "from").is_some_and(|f| jid_matches(&f, to)), "{e}");
    }

    // Removing an item (§2.5) frees a slot.
    let r = alice.roster_set("<item jid='carol@a.test' subscription='remove'/>");
    assert_eq!(attr(&r, "type").as_deref(), Some("result"), "{r}");
    let item = alice.expect_roster_push("carol@a.test");
    assert_eq!(
        attr(&item, "subscription").as_deref(),
        Some("remove"),
        "{item}"
    );
    let r = alice.roster_set("<item jid='erin@a.test'/>");
    assert_eq!(attr(&r, "type").as_deref(), Some("result"), "{r}");
    expect_push(&mut alice, "erin@a.test", "none", None);
    let mut jids: Vec<String> = alice
        .roster_get()
        .iter()
        .filter_map(|i| attr(i, "jid"))
        .collect();
    jids.sort();
    assert_eq!(jids, ["dave@a.test", "erin@a.test"]);
}

const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";

/// The identity (`category/type`) and features of a `disco#info` result.
fn disco_info(r: &str) -> (Vec<String>, Vec<String>) {
    assert_eq!(attr(r, "type").as_deref(), Some("result"), "{r}");
    let n = node(r);
    let q = n
        .child("query", DISCO_INFO)
        .unwrap_or_else(|| panic!("{r}"));
    let of = |name: &str, a: &str, b: &str| -> Vec<String> {
        q.children
            .iter()
            .filter(|c| c.name == name)
            .map(|c| {
                let v = |k: &str| c.attr(k).unwrap_or_default().to_owned();
                if b.is_empty() {
                    v(a)
                } else {
                    format!("{}/{}", v(a), v(b))
                }
            })
            .collect()
    };
    (of("identity", "category", "type"), of("feature", "var", ""))
}

/// Whether `r` is a result holding an empty `disco#items` query.
fn assert_no_items(r: &str) {
    assert_eq!(attr(r, "type").as_deref(), Some("result"), "{r}");
    let n = node(r);
    assert_eq!(n.children.len(), 1, "{r}");
    let q = n
        .child("query", DISCO_ITEMS)
        .unwrap_or_else(|| panic!("{r}"));
    assert!(q.children.is_empty(), "{r}");
}

/// What the server answers itself (issue 23): XEP-0030 `disco#info` to an account's bare
/// JID, from the account and from a contact, gets the account's identity
/// (`account/registered`, RFC 6121 §8.5.1) and only implemented features; `disco#items`
/// to the domain and to the account is an empty result; an `iq` request without exactly
/// one payload is a `bad-request` (RFC 6120 §8.2.3); an unsupported request to the
/// account is a plain `service-unavailable`, without a text.
#[test]
fn server_and_account_answer_iqs() {
    const NET: u8 = 229;
    let addr = ip(NET, 2);
    let fr = Fedrouter::start("a.test", &c2s_config(NET, addr, &["a.test"], 2, ""));
    add_users(&fr, &["alice@a.test", "bob@a.test"]);
    let t = target(&fr, addr, "a.test");
    let mut alice = Client::login(&t, "alice", PASSWORD, Some("phone"));
    let mut bob = Client::login(&t, "bob", PASSWORD, Some("desk"));
    let disco = |to: &str, id: &str, ns: &str| {
        let to = if to.is_empty() {
            String::new()
        } else {
            format!(" to='{to}'")
        };
        format!("<iq type='get'{to} id='{id}'><query xmlns='{ns}'/></iq>")
    };

    // disco#info to the account, from itself (bare JID, or no `to`) and from a contact.
    for (from_bob, to, id) in [
        (false, "alice@a.test", "own-info"),
        (false, "", "own-info-no-to"),
        (true, "alice@a.test", "contact-info"),
    ] {
        let c = if from_bob { &mut bob } else { &mut alice };
        c.send(&disco(to, id, DISCO_INFO));
        let r = c.expect_iq_answer(id);
        let (identities, features) = disco_info(&r);
        assert_eq!(identities, ["account/registered", "pubsub/pep"], "{r}");
        assert!(features.iter().any(|f| f == DISCO_INFO), "{r}");
        // PEP (XEP-0163 §6.1): what is implemented, nothing else of pubsub.
        assert!(
            features
                .iter()
                .any(|f| f == "http://jabber.org/protocol/pubsub#publish"),
            "{r}"
        );
        assert!(
            !features
                .iter()
                .any(|f| f == "http://jabber.org/protocol/pubsub#create-nodes"),
            "{r}"
        );
        for absent in ["urn:xmpp:carbons:2", "urn:xmpp:mam:2"] {
            assert!(!features.iter().any(|f| f.starts_with(absent)), "{r}");
        }
    }
    // To another resource of the account (a full JID): for that resource, not answered
    // by the server (RFC 6120 §10.5.4).
    let mut desk = Client::login(&t, "alice", PASSWORD, Some("desk"));
    alice.send(&disco("alice@a.test/desk", "caps", DISCO_INFO));
    let q = desk.expect("the disco#info query from alice/phone", |x| {
        is_stanza(x, "iq") && attr(x, "id").as_deref() == Some("caps")
    });
    assert_eq!(attr(&q, "type").as_deref(), Some("get"), "{q}");
    assert!(
        attr(&q, "from").is_some_and(|f| jid_matches(&f, "alice@a.test/phone")),
        "{q}"
    );
    desk.send("<iq type='result' to='alice@a.test/phone' id='caps'/>");
    let r = alice.expect_iq_answer("caps");
    assert!(
        attr(&r, "from").is_some_and(|f| jid_matches(&f, "alice@a.test/desk")),
        "{r}"
    );

    // No such account: service-unavailable (RFC 6121 §8.5.1).
    bob.send(&disco("nobody@a.test", "nobody-info", DISCO_INFO));
    let e = bob.expect_iq_answer("nobody-info");
    assert_eq!(condition(&e).as_deref(), Some("service-unavailable"), "{e}");

    // disco#items: the domain and the account have no items.
    alice.send(&disco("a.test", "dom-items", DISCO_ITEMS));
    assert_no_items(&alice.expect_iq_answer("dom-items"));
    bob.send(&disco("alice@a.test", "acct-items", DISCO_ITEMS));
    assert_no_items(&bob.expect_iq_answer("acct-items"));
    alice.send(&disco("a.test", "dom-info", DISCO_INFO));
    let r = alice.expect_iq_answer("dom-info");
    let (identities, features) = disco_info(&r);
    assert_eq!(identities, ["server/im"], "{r}");
    assert!(features.iter().any(|f| f == DISCO_ITEMS), "{r}");

    // RFC 6120 §8.2.3: exactly one payload, to the domain and to the account.
    for (to, id, inner) in [
        (" to='a.test'", "dom-empty", ""),
        ("", "acct-empty", ""),
        (
            " to='alice@a.test'",
            "acct-two",
            "<ping xmlns='urn:xmpp:ping'/><ping xmlns='urn:xmpp:ping'/>",
        ),
    ] {
        alice.send(&format!("<iq type='get'{to} id='{id}'>{inner}</iq>"));
        let e = alice.expect_iq_answer(id);
        assert_eq!(condition(&e).as_deref(), Some("bad-request"), "{e}");
    }
    bob.send("<iq type='set' to='alice@a.test' id='contact-empty'/>");
    let e = bob.expect_iq_answer("contact-empty");
    assert_eq!(condition(&e).as_deref(), Some("bad-request"), "{e}");

    // An unsupported request to the account: a plain service-unavailable, no text that
    // clients would show ("not served for accounts").
    alice.send("<iq type='set' id='mam'><query xmlns='urn:xmpp:mam:2'/></iq>");
    let e = alice.expect_iq_answer("mam");
    assert_eq!(condition(&e).as_deref(), Some("service-unavailable"), "{e}");
    assert!(!e.contains("<text"), "{e}");
}

/// RFC 6120 §7.7.2.2: a second session binding the same full JID replaces the first,
/// whose stream ends with `<conflict/>`; stanzas for that full JID then reach the new
/// session.
#[test]
fn resource_conflict_replaces_older_session() {
    const NET: u8 = 227;
    let addr = ip(NET, 2);
    let fr = Fedrouter::start("a.test", &c2s_config(NET, addr, &["a.test"], 2, ""));
    add_users(&fr, &["alice@a.test", "bob@a.test"]);
    let t = target(&fr, addr, "a.test");

    let mut first = Client::login(&t, "alice", PASSWORD, Some("desk"));
    first.send("<presence/>");
    first.sync();
    let mut second = Client::login_with(&t, Mech::ScramSha1, "alice", PASSWORD, Some("desk"));
    assert_eq!(second.jid.as_deref(), Some("alice@a.test/desk"));
    assert_eq!(first.expect_stream_error(), "conflict");
    first.expect_closed();

    second.send("<presence/>");
    second.sync();
    let mut bob = Client::login_with(&t, Mech::Plain, "bob", PASSWORD, Some("x"));
    message(&mut bob, "alice@a.test/desk", "m1", "which desk?");
    expect_body(&mut second, "bob@a.test/x", "m1", "which desk?");
}

// ---------------------------------------------------------------------------------------
// Presence (RFC 6121 §4)
// ---------------------------------------------------------------------------------------

/// A new session's initial presence probes its contacts and receives their current
/// presence (§4.3); pending requests wait for initial presence (§3.1.3); a session that
/// vanishes without closing its stream is announced `unavailable` to its subscribers and
/// to the entities it sent directed presence to (§4.5.2, §4.6.3), and to the user's other
/// resources.
#[test]
fn probes_directed_presence_and_abrupt_end() {
    const NET: u8 = 228;
    let addr = ip(NET, 2);
    let fr = Fedrouter::start("a.test", &c2s_config(NET, addr, &["a.test"], 2, ""));
    add_users(&fr, &["alice@a.test", "bob@a.test", "carol@a.test"]);
    let t = target(&fr, addr, "a.test");

    let mut alice = Client::login(&t, "alice", PASSWORD, Some("phone"));
    let mut bob = Client::login(&t, "bob", PASSWORD, Some("laptop"));
    let b_full = bob.jid.clone().expect("bob bound");
    alice.roster_get();
    bob.roster_get();
    alice.send("<presence/>");

    // alice → bob while bob is not available: the request waits for bob's initial
    // presence.
    sub(&mut alice, "subscribe", "bob@a.test");
    expect_push(&mut alice, "bob@a.test", "none", Some("subscribe"));
    bob.assert_none("a request before initial presence", |x| {
        is_stanza(x, "presence") && attr(x, "type").as_deref() == Some("subscribe")
    });
    bob.send("<presence><show>dnd</show><status>in a meeting</status></presence>");
    bob.expect_presence("alice@a.test", Some("subscribe"));
    sub(&mut bob, "subscribed", "alice@a.test");
    expect_push(&mut bob, "alice@a.test", "from", None);
    expect_push(&mut alice, "bob@a.test", "to", None);
    // §3.1.5: the approval is followed by bob's current presence.
    let p = alice.expect_presence(&b_full, None);
    assert_eq!(
        child_text(&p, "status").as_deref(),
        Some("in a meeting"),
        "{p}"
    );

    // A second session of alice probes bob (alice is subscribed to him): bob's current
    // presence arrives without bob sending anything.
    let mut tablet = Client::login(&t, "alice", PASSWORD, Some("tablet"));
    tablet.roster_get();
    tablet.send("<presence/>");
    let p = tablet.expect_presence(&b_full, None);
    assert_eq!(child_text(&p, "show").as_deref(), Some("dnd"), "{p}");
    // The phone learns of the tablet (the user's own resources, §4.2.2).
    let tablet_full = tablet.jid.clone().expect("tablet bound");
    alice.expect_presence(&tablet_full, None);

    // Directed presence from bob to carol, who has no subscription.
    let mut carol = Client::login(&t, "carol", PASSWORD, None);
    carol.send("<presence/>");
    carol.sync();
    bob.send("<presence to='carol@a.test'><status>hi carol</status></presence>");
    let p = carol.expect_presence(&b_full, None);
    assert_eq!(child_text(&p, "status").as_deref(), Some("hi carol"), "{p}");

    // Bob's connection drops without a closing stream: everyone who had his presence is
    // told he is gone.
    drop(bob);
    alice.expect_presence(&b_full, Some("unavailable"));
    tablet.expect_presence(&b_full, Some("unavailable"));
    carol.expect_presence(&b_full, Some("unavailable"));

    // Bob, back and available again, is probed by nobody he does not share presence
    // with: carol (no subscription) gets nothing from bob's initial presence.
    let mut bob = Client::login(&t, "bob", PASSWORD, Some("laptop"));
    bob.send("<presence/>");
    alice.expect_presence(&b_full, None);
    carol.sync();
    carol.assert_none("bob's presence without a subscription", |x| {
        is_stanza(x, "presence") && attr(x, "from").is_some_and(|f| jid_matches(&f, "bob@a.test"))
    });
    bob.close();
}
