//! The small services clients ask for on every login, end to end: real `fedrouter serve`
//! processes, real client sockets on loopback (`common/xmpp.rs`: STARTTLS, SASL, bind),
//! users created with `fedrouter user add`.
//!
//! - XEP-0280 message carbons between two resources of alice chatting with bob:
//!   `<received/>` and `<sent/>` copies, `<private/>` messages not copied.
//! - XEP-0077 password change: the new password logs in, the old one fails; another
//!   user's name and new accounts are refused.
//! - XEP-0191 blocking: block, the blocked contact's message does not arrive (shown by a
//!   marker from another contact that must arrive after it), outbound stanzas refused,
//!   pushes to the resource that retrieved the list, the list survives a restart on the
//!   same data folder, unblock.
//! - XEP-0352 client state indication: an inactive session gets no presence update until
//!   it is active again (then only the latest), messages arrive at once.
//! - XEP-0092 software version and the XEP-0030 features the server advertises.
//!
//! Each test owns the loopback range `127.0.N.0/24`, N = 189..=194 (other suites use
//! other ranges), server on `.2` (5222 C2S, 5269 S2S, 9269 admin). Every wait is bounded.

#[path = "common/c2s_client.rs"]
mod c2s_client;
#[path = "common/server.rs"]
mod server;
#[path = "common/xmpp.rs"]
mod xmpp;

use std::net::{Ipv4Addr, SocketAddr};

use server::{add_user, config, ip, Fedrouter};
use xmpp::{attr, child_text, condition, is_stanza, node, Client, Mech, Target};

const PASSWORD: &str = "s3cret horse";
const DOMAIN: &str = "a.test";
const NS_CARBONS: &str = "urn:xmpp:carbons:2";
const NS_FORWARD: &str = "urn:xmpp:forward:0";
const NS_BLOCKING: &str = "urn:xmpp:blocking";

/// `server::config` with a C2S listener on `addr:5222` and `shards` shards.
fn c2s_config(net: u8, addr: Ipv4Addr, shards: usize) -> String {
    let text = config(net, addr, &[DOMAIN], shards, "");
    assert!(text.contains("c2s = []"), "server::config changed: {text}");
    text.replace("c2s = []", &format!("c2s = [\"{addr}:5222\"]"))
}

/// A server on `127.0.net.2` (two shards) with users `localparts`@a.test, and the client
/// target.
fn start(net: u8, localparts: &[&str]) -> (Fedrouter, Target) {
    start_with(net, localparts, 2)
}

/// [`start`] with `shards` shards.
fn start_with(net: u8, localparts: &[&str], shards: usize) -> (Fedrouter, Target) {
    let addr = ip(net, 2);
    let fr = Fedrouter::start(DOMAIN, &c2s_config(net, addr, shards));
    for l in localparts {
        add_user(&fr.config_path(), &format!("{l}@{DOMAIN}"), PASSWORD);
    }
    let t = Target::new(
        SocketAddr::new(addr.into(), 5222),
        DOMAIN,
        &fr.dir().join("data"),
    );
    (fr, t)
}

fn login(t: &Target, user: &str, resource: &str) -> Client {
    Client::login(t, user, PASSWORD, Some(resource))
}

/// Sends a chat message `to` with `id` and `body`; `extra` is appended inside.
fn chat(c: &mut Client, to: &str, id: &str, body: &str, extra: &str) {
    c.send(&format!(
        "<message type='chat' to='{to}' id='{id}'><body>{body}</body>{extra}</message>"
    ));
}

/// Waits for the message with `id` (not an error) and returns it.
fn expect_id(c: &mut Client, id: &str) -> String {
    c.expect(&format!("message {id}"), |x| {
        is_stanza(x, "message")
            && attr(x, "id").as_deref() == Some(id)
            && attr(x, "type").as_deref() != Some("error")
    })
}

/// Waits for a carbon copy (`wrapper` = `received` or `sent`) of the message with `id`;
/// returns the copy.
fn expect_carbon(c: &mut Client, wrapper: &str, id: &str) -> String {
    c.expect(&format!("<{wrapper}/> carbon of {id}"), |x| {
        carbon_of(x, wrapper).is_some_and(|m| attr(&m, "id").as_deref() == Some(id))
    })
}

/// The forwarded message inside a carbon copy `x` with `wrapper`, as XML.
fn carbon_of(x: &str, wrapper: &str) -> Option<String> {
    if !is_stanza(x, "message") {
        return None;
    }
    let n = node(x);
    let fwd = n
        .child(wrapper, NS_CARBONS)?
        .child("forwarded", NS_FORWARD)?;
    let m = fwd.child("message", "jabber:client")?;
    Some(xmpp::to_xml(m))
}

fn enable_carbons(c: &mut Client) {
    let r = c.iq("set", &format!("<enable xmlns='{NS_CARBONS}'/>"));
    assert_eq!(attr(&r, "type").as_deref(), Some("result"), "enable: {r}");
}

#[test]
fn carbons_copy_to_the_other_resource() {
    let (_fr, t) = start(190, &["alice", "bob"]);
    let mut phone = login(&t, "alice", "phone");
    let mut laptop = login(&t, "alice", "laptop");
    let mut bob = login(&t, "bob", "desk");
    for c in [&mut phone, &mut laptop, &mut bob] {
        c.send("<presence/>");
    }
    enable_carbons(&mut phone);
    enable_carbons(&mut laptop);
    let a_phone = format!("alice@{DOMAIN}/phone");
    let a_laptop = format!("alice@{DOMAIN}/laptop");
    let b_full = format!("bob@{DOMAIN}/desk");

    // §6.2: bob writes to the phone; the laptop gets a <received/> copy.
    chat(&mut bob, &a_phone, "r1", "to your phone", "");
    expect_id(&mut phone, "r1");
    let copy = expect_carbon(&mut laptop, "received", "r1");
    assert_eq!(
        attr(&copy, "from").as_deref(),
        Some("alice@a.test"),
        "{copy}"
    );
    assert_eq!(
        attr(&copy, "to").as_deref(),
        Some(a_laptop.as_str()),
        "{copy}"
    );
    let inner = carbon_of(&copy, "received").unwrap();
    assert_eq!(
        attr(&inner, "from").as_deref(),
        Some(b_full.as_str()),
        "{inner}"
    );
    assert_eq!(child_text(&inner, "body").as_deref(), Some("to your phone"));

    // §6.3: the phone answers; bob gets it, the laptop a <sent/> copy.
    chat(&mut phone, &b_full, "s1", "from my phone", "");
    expect_id(&mut bob, "s1");
    let copy = expect_carbon(&mut laptop, "sent", "s1");
    let inner = carbon_of(&copy, "sent").unwrap();
    assert_eq!(
        attr(&inner, "from").as_deref(),
        Some(a_phone.as_str()),
        "{inner}"
    );
    assert_eq!(
        attr(&inner, "to").as_deref(),
        Some(b_full.as_str()),
        "{inner}"
    );
    // The sender gets no copy of its own message.
    phone.assert_none("a copy of its own message", |x| {
        carbon_of(x, "sent").is_some()
    });

    // §7: a <private/> message is not copied. The marker after it takes the same path,
    // so a copy of the private one would have come first.
    let private = format!("<private xmlns='{NS_CARBONS}'/>");
    chat(&mut bob, &a_phone, "p1", "just for the phone", &private);
    chat(&mut bob, &a_phone, "p2", "marker", "");
    expect_id(&mut phone, "p1");
    expect_id(&mut phone, "p2");
    expect_carbon(&mut laptop, "received", "p2");
    let leaked = laptop.take_buffered(|x| {
        carbon_of(x, "received").is_some_and(|m| attr(&m, "id").as_deref() == Some("p1"))
    });
    assert!(leaked.is_empty(), "private message copied: {leaked:?}");

    // §5: after <disable/>, no more copies for the laptop.
    let r = laptop.iq("set", &format!("<disable xmlns='{NS_CARBONS}'/>"));
    assert_eq!(attr(&r, "type").as_deref(), Some("result"), "{r}");
    chat(&mut bob, &a_phone, "d1", "after disable", "");
    expect_id(&mut phone, "d1");
    laptop.assert_none("a copy after disable", |x| {
        carbon_of(x, "received").is_some()
    });
}

#[test]
fn password_change_then_login_with_the_new_password() {
    let (_fr, t) = start(191, &["alice", "bob"]);
    let mut a = login(&t, "alice", "phone");
    const NEW: &str = "n3w & l0nger p4ss";

    // §3.1 for a registered user: "registered".
    let r = a.iq("get", "<query xmlns='jabber:iq:register'/>");
    assert!(r.contains("<registered"), "{r}");
    // Another user's password: refused.
    let r = a.iq(
        "set",
        "<query xmlns='jabber:iq:register'><username>bob</username><password>x</password></query>",
    );
    assert_eq!(condition(&r).as_deref(), Some("not-authorized"), "{r}");
    // Cancelling the registration: not offered.
    let r = a.iq("set", "<query xmlns='jabber:iq:register'><remove/></query>");
    assert_eq!(condition(&r).as_deref(), Some("not-allowed"), "{r}");

    // §3.3, addressed to the server as the XEP shows it.
    let id = a.next_id();
    a.send(&format!(
        "<iq type='set' to='{DOMAIN}' id='{id}'><query xmlns='jabber:iq:register'>\
         <username>alice</username><password>n3w &amp; l0nger p4ss</password></query></iq>"
    ));
    let r = a.expect_iq_answer(&id);
    assert_eq!(attr(&r, "type").as_deref(), Some("result"), "{r}");

    // The old password fails, the new one works (both SCRAM hashes and PLAIN).
    let (_c, f) = Client::login_failure(&t, Mech::ScramSha256, "alice", PASSWORD);
    assert!(f.contains("not-authorized"), "{f}");
    let mut b = Client::login(&t, "alice", NEW, Some("laptop"));
    b.sync();
    let mut c = Client::login_with(&t, Mech::ScramSha1, "alice", NEW, Some("tablet"));
    c.sync();
    // Bob's password is untouched.
    let mut bob = login(&t, "bob", "desk");
    bob.sync();

    // The registration query addressed to the server, as some clients send it.
    let id = a.next_id();
    a.send(&format!(
        "<iq type='get' to='{DOMAIN}' id='{id}'><query xmlns='jabber:iq:register'/></iq>"
    ));
    let r = a.expect_iq_answer(&id);
    assert!(r.contains("<registered"), "{r}");
}

/// Blocks or unblocks `jid` from `c`; asserts the result.
fn block(c: &mut Client, element: &str, jid: &str) {
    let items = if jid.is_empty() {
        String::new()
    } else {
        format!("<item jid='{jid}'/>")
    };
    let r = c.iq(
        "set",
        &format!("<{element} xmlns='{NS_BLOCKING}'>{items}</{element}>"),
    );
    assert_eq!(
        attr(&r, "type").as_deref(),
        Some("result"),
        "{element} {jid}: {r}"
    );
}

/// The block list as `c` retrieves it.
fn blocklist(c: &mut Client) -> Vec<String> {
    let r = c.iq("get", &format!("<blocklist xmlns='{NS_BLOCKING}'/>"));
    assert_eq!(attr(&r, "type").as_deref(), Some("result"), "{r}");
    let n = node(&r);
    let list = n.child("blocklist", NS_BLOCKING).expect("a <blocklist/>");
    list.children
        .iter()
        .filter_map(|i| i.attr("jid").map(str::to_owned))
        .collect()
}

/// Bob writes to alice (`id`), carol then writes a marker (`marker`): the marker arrives,
/// bob's message must not have (it would have come first: both users are on one server,
/// and alice's shard handles what arrives for her in order); bob gets
/// `service-unavailable` (XEP-0191 §3.3).
fn assert_blocked_inbound(alice: &mut Client, bob: &mut Client, carol: &mut Client, id: &str) {
    let a = format!("alice@{DOMAIN}");
    chat(bob, &a, id, "can you hear me", "");
    let e = bob.expect_error("message", id);
    assert_eq!(condition(&e).as_deref(), Some("service-unavailable"), "{e}");
    let marker = format!("{id}-marker");
    chat(carol, &a, &marker, "marker", "");
    expect_id(alice, &marker);
    let leaked = alice.take_buffered(|x| attr(x, "id").as_deref() == Some(id));
    assert!(leaked.is_empty(), "blocked message delivered: {leaked:?}");
}

#[test]
fn blocking_is_enforced_pushed_and_stored() {
    let (mut fr, t) = start(192, &["alice", "bob", "carol"]);
    let b = format!("bob@{DOMAIN}");
    let mut alice = login(&t, "alice", "phone");
    let mut laptop = login(&t, "alice", "laptop");
    let mut bob = login(&t, "bob", "desk");
    let mut carol = login(&t, "carol", "desk");
    for c in [&mut alice, &mut laptop, &mut bob, &mut carol] {
        c.send("<presence/>");
    }
    assert_eq!(blocklist(&mut alice), Vec::<String>::new());
    // The laptop retrieved the list: it gets the pushes (§3.3).
    assert_eq!(blocklist(&mut laptop), Vec::<String>::new());

    // Before: bob's messages arrive.
    chat(&mut bob, &format!("alice@{DOMAIN}"), "m0", "hello", "");
    expect_id(&mut alice, "m0");

    block(&mut alice, "block", &b);
    let push = laptop.expect("a block push", |x| {
        is_stanza(x, "iq") && attr(x, "type").as_deref() == Some("set") && x.contains("<block")
    });
    assert!(push.contains(&format!("jid='{b}'")), "{push}");
    assert_eq!(blocklist(&mut laptop), vec![b.clone()]);

    // Inbound: bob's message is not delivered (nor to the laptop).
    assert_blocked_inbound(&mut alice, &mut bob, &mut carol, "m1");
    // Outbound: alice's message to bob is refused with <blocked/>.
    chat(&mut alice, &format!("{b}/desk"), "o1", "hi bob", "");
    let e = alice.expect_error("message", "o1");
    assert_eq!(condition(&e).as_deref(), Some("not-acceptable"), "{e}");
    assert!(e.contains("urn:xmpp:blocking:errors"), "{e}");
    bob.assert_none("alice's message to a JID she blocked", |x| {
        attr(x, "id").as_deref() == Some("o1")
    });

    // The list is durable: a restart on the same data folder keeps it.
    for c in [&mut alice, &mut laptop, &mut bob, &mut carol] {
        c.close();
    }
    assert!(fr.stop(), "fedrouter did not exit on SIGTERM");
    fr.restart();
    let mut alice = login(&t, "alice", "phone");
    let mut bob = login(&t, "bob", "desk");
    let mut carol = login(&t, "carol", "desk");
    for c in [&mut alice, &mut bob, &mut carol] {
        c.send("<presence/>");
    }
    assert_eq!(blocklist(&mut alice), vec![b.clone()]);
    assert_blocked_inbound(&mut alice, &mut bob, &mut carol, "m2");

    // Unblock (all): bob's messages arrive again.
    block(&mut alice, "unblock", "");
    assert_eq!(blocklist(&mut alice), Vec::<String>::new());
    chat(&mut bob, &format!("alice@{DOMAIN}"), "m3", "back again", "");
    expect_id(&mut alice, "m3");
}

/// XEP-0191 §3.3, §3.4 on presence: a blocked subscriber gets unavailable presence, then
/// no presence either way until unblocked, when it gets the current one. One shard: each
/// client's ping round trip (`sync`) then shows that what its earlier stanzas caused was
/// delivered, so an absence is shown by the other client's `sync` after it.
#[test]
fn blocking_hides_presence_both_ways() {
    let (_fr, t) = start_with(189, &["alice", "bob"], 1);
    let a = format!("alice@{DOMAIN}");
    let b = format!("bob@{DOMAIN}");
    let mut alice = login(&t, "alice", "phone");
    let mut bob = login(&t, "bob", "desk");
    let a_full = alice.jid.clone().unwrap();
    let b_full = bob.jid.clone().unwrap();
    alice.send("<presence/>");
    bob.send("<presence/>");
    // Mutual subscription.
    alice.send(&format!("<presence type='subscribe' to='{b}'/>"));
    bob.expect_presence(&a, Some("subscribe"));
    bob.send(&format!("<presence type='subscribed' to='{a}'/>"));
    alice.expect_presence(&b_full, None);
    bob.send(&format!("<presence type='subscribe' to='{a}'/>"));
    alice.expect_presence(&b, Some("subscribe"));
    alice.send(&format!("<presence type='subscribed' to='{b}'/>"));
    bob.expect_presence(&a_full, None);
    let status = |s: &'static str| {
        move |x: &str| is_stanza(x, "presence") && child_text(x, "status").as_deref() == Some(s)
    };

    block(&mut alice, "block", &b);
    bob.expect_presence(&a_full, Some("unavailable"));
    alice.send("<presence><status>hidden from bob</status></presence>");
    alice.sync();
    bob.assert_none(
        "presence from the user who blocked him",
        status("hidden from bob"),
    );
    bob.send("<presence><status>unseen by alice</status></presence>");
    bob.sync();
    alice.assert_none("presence from a blocked contact", status("unseen by alice"));

    block(&mut alice, "unblock", &b);
    bob.expect(
        "alice's current presence on unblock",
        status("hidden from bob"),
    );
    bob.send("<presence><status>seen again</status></presence>");
    alice.expect("bob's presence after unblock", status("seen again"));
}

#[test]
fn inactive_clients_get_presence_later_and_messages_at_once() {
    let (_fr, t) = start(193, &["alice", "bob"]);
    let a = format!("alice@{DOMAIN}");
    let b = format!("bob@{DOMAIN}");

    // The feature is offered once authenticated (XEP-0352 §2).
    let mut probe = Client::connect(t.addr, DOMAIN);
    probe.open();
    probe.starttls(&t.cert);
    probe.auth(Mech::ScramSha256, "alice", PASSWORD).unwrap();
    let features = probe.open();
    assert!(features.contains("urn:xmpp:csi:0"), "{features}");
    probe.close();

    let mut alice = login(&t, "alice", "phone");
    let mut bob = login(&t, "bob", "desk");
    let b_full = bob.jid.clone().unwrap();
    alice.send("<presence/>");
    bob.send("<presence/>");
    // Alice subscribes to bob's presence; bob approves.
    alice.send(&format!("<presence type='subscribe' to='{b}'/>"));
    bob.expect_presence(&a, Some("subscribe"));
    bob.send(&format!("<presence type='subscribed' to='{a}'/>"));
    alice.expect_presence(&b_full, None);

    alice.send("<inactive xmlns='urn:xmpp:csi:0'/>");
    alice.sync();
    let status = |s: &'static str| {
        move |x: &str| is_stanza(x, "presence") && child_text(x, "status").as_deref() == Some(s)
    };
    bob.send("<presence><status>away 1</status></presence>");
    bob.send("<presence><status>away 2</status></presence>");
    // A message after them takes the same path: it arrives, they do not.
    chat(&mut bob, &a, "c1", "still there?", "");
    expect_id(&mut alice, "c1");
    let early = alice.take_buffered(|x| is_stanza(x, "presence"));
    assert!(
        early.is_empty(),
        "presence reached an inactive client: {early:?}"
    );

    // Active again: the latest presence, not the one it replaced.
    alice.send("<active xmlns='urn:xmpp:csi:0'/>");
    alice.expect("bob's latest presence", status("away 2"));
    alice.assert_none("bob's replaced presence", status("away 1"));
    // And updates flow at once again.
    bob.send("<presence><status>back</status></presence>");
    alice.expect("bob's presence once active", status("back"));
}

#[test]
fn version_and_advertised_features() {
    let (_fr, t) = start(194, &["alice"]);
    let mut alice = login(&t, "alice", "phone");
    let id = alice.next_id();
    alice.send(&format!(
        "<iq type='get' to='{DOMAIN}' id='{id}'><query xmlns='jabber:iq:version'/></iq>"
    ));
    let r = alice.expect_iq_answer(&id);
    let q = node(&r);
    let q = q
        .child("query", "jabber:iq:version")
        .expect("a version query");
    let text = |name: &str| {
        q.children
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.text.clone())
    };
    assert_eq!(text("name").as_deref(), Some("fedrouter"), "{r}");
    assert_eq!(
        text("version").as_deref(),
        Some(env!("CARGO_PKG_VERSION")),
        "{r}"
    );
    assert_eq!(text("os"), None, "no os unless configured: {r}");

    let id = alice.next_id();
    alice.send(&format!(
        "<iq type='get' to='{DOMAIN}' id='{id}'>\
         <query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
    ));
    let r = alice.expect_iq_answer(&id);
    let n = node(&r);
    let features: Vec<String> = n
        .child("query", "http://jabber.org/protocol/disco#info")
        .expect("a disco#info query")
        .children
        .iter()
        .filter(|c| c.name == "feature")
        .filter_map(|c| c.attr("var").map(str::to_owned))
        .collect();
    let mut want = vec![
        "http://jabber.org/protocol/disco#info",
        "http://jabber.org/protocol/disco#items",
        "urn:xmpp:ping",
        "jabber:iq:version",
        NS_CARBONS,
        NS_BLOCKING,
        "jabber:iq:register",
        "msgoffline",
    ];
    let mut got: Vec<&str> = features.iter().map(String::as_str).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "{r}");

    let id = alice.next_id();
    alice.send(&format!(
        "<iq type='get' to='{DOMAIN}' id='{id}'>\
         <query xmlns='http://jabber.org/protocol/disco#items'/></iq>"
    ));
    let r = alice.expect_iq_answer(&id);
    assert_eq!(attr(&r, "type").as_deref(), Some("result"), "{r}");
}

/// The C2S machine alone (sans-IO, `common/c2s_client.rs`): CSI nonzas become events once
/// bound, and are a stream error before.
#[test]
fn csi_nonzas_in_the_c2s_machine() {
    use fedrouter::csi::ClientState;
    use fedrouter::stream::c2s::Event;

    let mut h = c2s_client::Harness::new(|_| {});
    h.add_user("juliet", "r0m30myr0m30");
    h.bound("juliet", "r0m30myr0m30", "balcony");
    h.send("<inactive xmlns='urn:xmpp:csi:0'/><active xmlns='urn:xmpp:csi:0'/>");
    let states: Vec<&ClientState> = h
        .events
        .iter()
        .filter_map(|e| match e {
            Event::ClientState(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(states, [&ClientState::Inactive, &ClientState::Active]);
    assert!(h.take_xml().is_empty(), "nothing answered");
    assert!(h.closed().is_none());

    // Before a resource is bound it is not a stanza: the stream ends.
    let mut h = c2s_client::Harness::new(|_| {});
    h.add_user("juliet", "r0m30myr0m30");
    h.login("juliet", "r0m30myr0m30");
    h.send("<inactive xmlns='urn:xmpp:csi:0'/>");
    assert!(h.closed().is_some() || h.take_xml().iter().any(|x| x.contains("stream:error")));
    assert!(!h.events.iter().any(|e| matches!(e, Event::ClientState(_))));
}

/// XEP-0077 §3.1 in-band registration over a real socket, with `c2s.allow_registration`:
/// the feature after STARTTLS, the account created durably (it logs in at once, and is in
/// the store), a taken username answered `conflict`; without the setting, the same
/// request ends the stream (the default).
#[test]
fn in_band_registration_when_allowed() {
    const NET: u8 = 176;
    let addr = ip(NET, 2);
    let toml = format!(
        "{}\n[c2s]\nallow_registration = true\n",
        c2s_config(NET, addr, 2)
    );
    let fr = Fedrouter::start(DOMAIN, &toml);
    let t = Target::new(
        SocketAddr::new(addr.into(), 5222),
        DOMAIN,
        &fr.dir().join("data"),
    );
    let register = "<iq type='set' id='reg1'><query xmlns='jabber:iq:register'>\
        <username>romeo</username><password>wherefore art thou</password></query></iq>";
    let mut c = Client::connect(t.addr, DOMAIN);
    c.open();
    let features = c.starttls(&t.cert);
    assert!(
        features.contains("<register xmlns='http://jabber.org/features/iq-register'/>"),
        "{features}"
    );
    c.send(register);
    let r = c.expect("registration result", |x| x.contains("id='reg1'"));
    assert!(r.contains("type='result'"), "{r}");
    c.close();
    // The account is durable and usable.
    let mut romeo = Client::login(&t, "romeo", "wherefore art thou", Some("balcony"));
    romeo.sync();
    let mut again = Client::connect(t.addr, DOMAIN);
    again.open();
    again.starttls(&t.cert);
    again.send(register);
    let r = again.expect("conflict", |x| x.contains("id='reg1'"));
    assert!(
        r.contains("type='error'") && r.contains("<conflict "),
        "{r}"
    );
    drop(fr);

    // Off (the default): the request before authentication ends the stream.
    let (_fr, t) = start(177, &[]);
    let mut c = Client::connect(t.addr, DOMAIN);
    c.open();
    let features = c.starttls(&t.cert);
    assert!(!features.contains("iq-register"), "{features}");
    c.send(register);
    let e = c.expect("stream error", |x| x.contains("stream:error"));
    assert!(e.contains("not-authorized"), "{e}");
}
