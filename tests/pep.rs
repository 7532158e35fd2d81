//! PEP (XEP-0163) end to end: a real `fedrouter serve` process, real client sockets on
//! loopback (`common/xmpp.rs`: STARTTLS, SASL, bind), users created with `fedrouter user
//! add`, mutual (`both`) subscriptions made with the RFC 6121 flow.
//!
//! - alice publishes a mood (XEP-0107) and avatar metadata (XEP-0084); bob, whose caps
//!   (XEP-0115, a real `ver` hash) show `+notify` for both, receives both notifications;
//!   carol, whose caps do not, receives none (shown by a marker message from alice that
//!   had to arrive after them).
//! - The server asks each new caps `ver` once, from alice's bare JID, with `node#ver`; a
//!   `ver` that does not match its answer's hash (XEP-0115 §5.4) gets no events.
//! - Items retrieval by the owner and by a contact; a non-contact gets `not-authorized`
//!   (`presence-subscription-required`) under the `presence` model and the item under
//!   `open`; unimplemented requests get `feature-not-implemented`.
//! - A retraction with `notify` reaches bob; the item limit (`c2s.pep_max_items`, 1)
//!   keeps only the newest item.
//! - bob logging in again gets the last items on presence; after a server restart the
//!   items are still there (and the caps asked again).
//!
//! The test owns the loopback range `127.0.175.0/24`.

#[path = "common/c2s_client.rs"]
mod c2s_client;
#[path = "common/server.rs"]
mod server;
#[path = "common/xmpp.rs"]
mod xmpp;

use std::net::{Ipv4Addr, SocketAddr};

use base64::Engine;
use server::{add_user, config, ip, Fedrouter};
use sha1::Digest;
use xmpp::{attr, condition, is_stanza, Client, Target};

const PASSWORD: &str = "s3cret horse";
const MOOD: &str = "http://jabber.org/protocol/mood";
const AVATAR_META: &str = "urn:xmpp:avatar:metadata";
const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const CAPS_NODE: &str = "https://fedrouter.test/client";
const PUBSUB: &str = "http://jabber.org/protocol/pubsub";

fn c2s_config(net: u8, addr: Ipv4Addr, shards: usize) -> String {
    let text = config(net, addr, &["a.test"], shards, "");
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

/// A client's disco#info features, and their XEP-0115 §5.1 `ver` (SHA-1, base64),
/// computed here independently of the server's code.
struct ClientCaps {
    features: Vec<String>,
    ver: String,
}

const IDENTITY: (&str, &str, &str) = ("client", "pc", "pep test");

fn client_caps(extra: &[&str]) -> ClientCaps {
    let mut features: Vec<String> = [DISCO_INFO, "http://jabber.org/protocol/caps"]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    features.sort();
    let mut s = format!("{}/{}//{}<", IDENTITY.0, IDENTITY.1, IDENTITY.2);
    for f in &features {
        s.push_str(f);
        s.push('<');
    }
    let ver = base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(s.as_bytes()));
    ClientCaps { features, ver }
}

fn caps_presence(caps: &ClientCaps) -> String {
    format!(
        "<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='{CAPS_NODE}' ver='{}'/></presence>",
        caps.ver
    )
}

/// Waits for the server's `disco#info` query for `caps` (from `account`, XEP-0163 §4.3.4)
/// and answers it.
fn answer_caps_query(c: &mut Client, account: &str, caps: &ClientCaps) {
    let node_ver = format!("{CAPS_NODE}#{}", caps.ver);
    let q = c.expect("the server's caps query", |x| {
        is_stanza(x, "iq") && attr(x, "type").as_deref() == Some("get") && x.contains(DISCO_INFO)
    });
    assert_eq!(attr(&q, "from").as_deref(), Some(account), "{q}");
    assert!(
        q.contains(&format!("node='{node_ver}'")) || q.contains(&format!("node=\"{node_ver}\"")),
        "{q}"
    );
    let id = attr(&q, "id").expect("query id");
    let mut answer = format!(
        "<iq type='result' to='{account}' id='{id}'><query xmlns='{DISCO_INFO}' node='{node_ver}'>\
         <identity category='{}' type='{}' name='{}'/>",
        IDENTITY.0, IDENTITY.1, IDENTITY.2
    );
    for f in &caps.features {
        answer.push_str(&format!("<feature var='{f}'/>"));
    }
    answer.push_str("</query></iq>");
    c.send(&answer);
}

/// From nothing to `both` between `a` and `b` (both sent initial presence and fetched
/// their rosters).
fn befriend(a: &mut Client, a_bare: &str, b: &mut Client, b_bare: &str) {
    a.send(&format!("<presence type='subscribe' to='{b_bare}'/>"));
    b.expect_presence(a_bare, Some("subscribe"));
    b.send(&format!("<presence type='subscribed' to='{a_bare}'/>"));
    b.send(&format!("<presence type='subscribe' to='{a_bare}'/>"));
    a.expect_presence(b_bare, Some("subscribe"));
    a.send(&format!("<presence type='subscribed' to='{b_bare}'/>"));
    for (c, contact) in [(a, b_bare), (b, a_bare)] {
        // Bounded: a few pushes per contact in this flow.
        let mut both = false;
        for _ in 0..6 {
            let item = c.expect_roster_push(contact);
            if attr(&item, "subscription").as_deref() == Some("both") {
                both = true;
                break;
            }
        }
        assert!(both, "{}: no 'both' push for {contact}", c.name);
    }
}

/// A message from `from` to `to`'s account, awaited: what `from`'s shard sent to `to`'s
/// before it (a caps answer) has been handled there (one inbox, in order).
fn barrier(from: &mut Client, to: &mut Client, id: &str) {
    let to_bare = to.jid.clone().expect("bound");
    let to_bare = to_bare.split('/').next().unwrap_or_default().to_owned();
    from.send(&format!(
        "<message type='chat' to='{to_bare}' id='{id}'><body>barrier</body></message>"
    ));
    to.expect("the barrier", |x| {
        is_stanza(x, "message") && attr(x, "id").as_deref() == Some(id)
    });
}

fn login(t: &Target, user: &str, resource: &str) -> Client {
    let mut c = Client::login(t, user, PASSWORD, Some(resource));
    c.roster_get();
    c
}

fn publish(c: &mut Client, node: &str, id: &str, payload: &str, options: &str) -> String {
    c.iq(
        "set",
        &format!("<pubsub xmlns='{PUBSUB}'><publish node='{node}'><item id='{id}'>{payload}</item></publish>{options}</pubsub>"),
    )
}

fn is_event(x: &str, node: &str) -> bool {
    is_stanza(x, "message")
        && x.contains("http://jabber.org/protocol/pubsub#event")
        && (x.contains(&format!("node='{node}'")) || x.contains(&format!("node=\"{node}\"")))
}

fn expect_event(c: &mut Client, from: &str, node: &str, needle: &str) -> String {
    let m = c.expect(&format!("a PEP event for {node}"), |x| is_event(x, node));
    assert_eq!(attr(&m, "from").as_deref(), Some(from), "{m}");
    assert_eq!(attr(&m, "type").as_deref(), Some("headline"), "{m}");
    assert!(m.contains(needle), "{needle} not in {m}");
    m
}

fn items_get(c: &mut Client, to: &str, node: &str) -> String {
    let id = c.next_id();
    c.send(&format!(
        "<iq type='get' to='{to}' id='{id}'><pubsub xmlns='{PUBSUB}'><items node='{node}'/></pubsub></iq>"
    ));
    c.expect_iq_answer(&id)
}

const MOOD_ITEM: &str =
    "<mood xmlns='http://jabber.org/protocol/mood'><happy/><text>release day</text></mood>";
const META_ITEM: &str = "<metadata xmlns='urn:xmpp:avatar:metadata'><info bytes='12345' height='64' id='111f4b3c50d7b0df729d299bc6f8e9ef9066971f' type='image/png' width='64'/></metadata>";

#[test]
fn pep_publish_notify_retrieve_and_persist() {
    const NET: u8 = 175;
    let addr = ip(NET, 2);
    let mut fr = Fedrouter::start("a.test", &c2s_config(NET, addr, 2));
    for u in ["alice", "bob", "carol", "dave"] {
        add_user(&fr.config_path(), &format!("{u}@a.test"), PASSWORD);
    }
    let t = target(&fr, addr);
    let bob_caps = client_caps(&[
        MOOD,
        "http://jabber.org/protocol/mood+notify",
        AVATAR_META,
        "urn:xmpp:avatar:metadata+notify",
    ]);
    let carol_caps = client_caps(&[MOOD, AVATAR_META]);

    let mut alice = login(&t, "alice", "desk");
    let mut bob = login(&t, "bob", "phone");
    let mut carol = login(&t, "carol", "tablet");
    for c in [&mut alice, &mut bob, &mut carol] {
        c.send("<presence/>");
    }
    befriend(&mut alice, "alice@a.test", &mut bob, "bob@a.test");
    befriend(&mut alice, "alice@a.test", &mut carol, "carol@a.test");

    // Caps: each new ver is asked for once, from alice's bare JID.
    bob.send(&caps_presence(&bob_caps));
    answer_caps_query(&mut bob, "alice@a.test", &bob_caps);
    carol.send(&caps_presence(&carol_caps));
    answer_caps_query(&mut carol, "alice@a.test", &carol_caps);
    barrier(&mut carol, &mut alice, "b1");

    // The account advertises PEP.
    let info = alice.iq("get", &format!("<query xmlns='{DISCO_INFO}'/>"));
    assert!(
        info.contains("category='pubsub'") || info.contains("category=\"pubsub\""),
        "{info}"
    );
    assert!(info.contains("pubsub#publish"), "{info}");

    // alice publishes; bob (+notify) gets both events.
    let r = publish(&mut alice, MOOD, "current", MOOD_ITEM, "");
    assert_eq!(attr(&r, "type").as_deref(), Some("result"), "{r}");
    let r = publish(
        &mut alice,
        AVATAR_META,
        "111f4b3c50d7b0df729d299bc6f8e9ef9066971f",
        META_ITEM,
        "",
    );
    assert_eq!(attr(&r, "type").as_deref(), Some("result"), "{r}");
    expect_event(&mut bob, "alice@a.test", MOOD, "release day");
    expect_event(&mut bob, "alice@a.test", AVATAR_META, "image/png");
    // The owner's own resource gets them too.
    expect_event(&mut alice, "alice@a.test", MOOD, "release day");

    // carol (no +notify): a marker sent after the publishes arrives, no event before it.
    alice.send(
        "<message type='chat' to='carol@a.test/tablet' id='marker'><body>marker</body></message>",
    );
    carol.expect("the marker", |x| {
        is_stanza(x, "message") && attr(x, "id").as_deref() == Some("marker")
    });
    let events = carol.take_buffered(|x| is_event(x, MOOD) || is_event(x, AVATAR_META));
    assert!(events.is_empty(), "carol has no +notify: {events:?}");

    // carol's client claims +notify under a `ver` that does not hash to what it answers
    // (XEP-0115 §5.4): still no events.
    let forged = ClientCaps {
        ver: "bm90IGEgcmVhbCBoYXNoIGF0IGFsbCE=".into(),
        ..client_caps(&["http://jabber.org/protocol/mood+notify"])
    };
    carol.send(&caps_presence(&forged));
    answer_caps_query(&mut carol, "alice@a.test", &forged);
    barrier(&mut carol, &mut alice, "b2");
    let r = publish(&mut alice, MOOD, "current", MOOD_ITEM, "");
    assert_eq!(attr(&r, "type").as_deref(), Some("result"), "{r}");
    expect_event(&mut bob, "alice@a.test", MOOD, "release day");
    alice.send(
        "<message type='chat' to='carol@a.test/tablet' id='marker2'><body>marker</body></message>",
    );
    carol.expect("the second marker", |x| {
        is_stanza(x, "message") && attr(x, "id").as_deref() == Some("marker2")
    });
    let events = carol.take_buffered(|x| is_event(x, MOOD));
    assert!(events.is_empty(), "carol's caps do not verify: {events:?}");

    // Retrieval: the owner, a contact; a non-contact under `presence`, then `open`.
    let r = alice.iq(
        "get",
        &format!("<pubsub xmlns='{PUBSUB}'><items node='{MOOD}'/></pubsub>"),
    );
    assert!(r.contains("release day"), "{r}");
    let r = items_get(&mut bob, "alice@a.test", AVATAR_META);
    assert!(
        r.contains("image/png") && attr(&r, "type").as_deref() == Some("result"),
        "{r}"
    );
    let mut dave = login(&t, "dave", "pc");
    let r = items_get(&mut dave, "alice@a.test", MOOD);
    assert_eq!(condition(&r).as_deref(), Some("not-authorized"), "{r}");
    assert!(r.contains("presence-subscription-required"), "{r}");
    let open =
        "<publish-options><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
         <field var='pubsub#access_model'><value>open</value></field></x></publish-options>";
    let r = publish(
        &mut alice,
        "urn:xmpp:omemo:2:devices",
        "current",
        "<devices xmlns='urn:xmpp:omemo:2'><device id='12345'/></devices>",
        open,
    );
    assert_eq!(attr(&r, "type").as_deref(), Some("result"), "{r}");
    let r = items_get(&mut dave, "alice@a.test", "urn:xmpp:omemo:2:devices");
    assert!(
        r.contains("device id='12345'") || r.contains("device id=\"12345\""),
        "{r}"
    );
    let r = items_get(&mut dave, "alice@a.test", "urn:xmpp:nothing");
    assert_eq!(condition(&r).as_deref(), Some("item-not-found"), "{r}");

    // What is not implemented says so; the `whitelist` model too; a contact cannot publish.
    let r = alice.iq(
        "set",
        &format!("<pubsub xmlns='{PUBSUB}'><create node='x'/></pubsub>"),
    );
    assert_eq!(
        condition(&r).as_deref(),
        Some("feature-not-implemented"),
        "{r}"
    );
    assert!(r.contains("create-nodes"), "{r}");
    let wl = open.replace(">open<", ">whitelist<");
    let r = publish(&mut alice, "n", "1", "<x xmlns='y'/>", &wl);
    assert_eq!(
        condition(&r).as_deref(),
        Some("feature-not-implemented"),
        "{r}"
    );
    let id = bob.next_id();
    bob.send(&format!("<iq type='set' to='alice@a.test' id='{id}'><pubsub xmlns='{PUBSUB}'><publish node='{MOOD}'><item>{MOOD_ITEM}</item></publish></pubsub></iq>"));
    let r = bob.expect_iq_answer(&id);
    assert_eq!(condition(&r).as_deref(), Some("forbidden"), "{r}");

    // A retraction with notify (XEP-0060 §7.2.2.1) reaches bob; the item is gone.
    let r = publish(
        &mut alice,
        MOOD,
        "old",
        "<mood xmlns='http://jabber.org/protocol/mood'><sad/></mood>",
        "",
    );
    assert_eq!(attr(&r, "type").as_deref(), Some("result"), "{r}");
    expect_event(&mut bob, "alice@a.test", MOOD, "<sad/>");
    let r = alice.iq(
        "set",
        &format!("<pubsub xmlns='{PUBSUB}'><retract node='{MOOD}' notify='true'><item id='old'/></retract></pubsub>"),
    );
    assert_eq!(attr(&r, "type").as_deref(), Some("result"), "{r}");
    let m = bob.expect("the retraction", |x| {
        is_event(x, MOOD) && x.contains("<retract")
    });
    assert!(m.contains("id='old'") || m.contains("id=\"old\""), "{m}");
    let r = alice.iq(
        "set",
        &format!(
            "<pubsub xmlns='{PUBSUB}'><retract node='{MOOD}'><item id='old'/></retract></pubsub>"
        ),
    );
    assert_eq!(condition(&r).as_deref(), Some("item-not-found"), "{r}");
    // The mood node kept one item (c2s.pep_max_items = 1): publish "current" again.
    let r = publish(&mut alice, MOOD, "current", MOOD_ITEM, "");
    assert_eq!(attr(&r, "type").as_deref(), Some("result"), "{r}");
    expect_event(&mut bob, "alice@a.test", MOOD, "release day");

    // bob again, later: the last items on presence (caps known, no query).
    bob.close();
    bob.expect_closed();
    let mut bob = login(&t, "bob", "laptop");
    bob.send(&caps_presence(&bob_caps));
    expect_event(&mut bob, "alice@a.test", MOOD, "release day");
    expect_event(&mut bob, "alice@a.test", AVATAR_META, "image/png");

    // A restart: the items are durable; the caps are asked again.
    for c in [&mut alice, &mut bob, &mut carol, &mut dave] {
        c.close();
    }
    assert!(fr.stop(), "fedrouter stopped cleanly");
    fr.restart();
    let mut alice = login(&t, "alice", "desk");
    alice.send("<presence/>");
    let r = alice.iq(
        "get",
        &format!("<pubsub xmlns='{PUBSUB}'><items node='{AVATAR_META}'/></pubsub>"),
    );
    assert!(r.contains("image/png"), "{r}");
    let mut bob = login(&t, "bob", "phone");
    bob.send(&caps_presence(&bob_caps));
    answer_caps_query(&mut bob, "alice@a.test", &bob_caps);
    expect_event(&mut bob, "alice@a.test", MOOD, "release day");
    expect_event(&mut bob, "alice@a.test", AVATAR_META, "image/png");
    // Item limit (c2s.pep_max_items = 1): a second mood replaces the first.
    let r = publish(
        &mut alice,
        MOOD,
        "next",
        "<mood xmlns='http://jabber.org/protocol/mood'><calm/></mood>",
        "",
    );
    assert_eq!(attr(&r, "type").as_deref(), Some("result"), "{r}");
    expect_event(&mut bob, "alice@a.test", MOOD, "<calm/>");
    let r = alice.iq(
        "get",
        &format!("<pubsub xmlns='{PUBSUB}'><items node='{MOOD}'/></pubsub>"),
    );
    assert!(r.contains("<calm/>") && !r.contains("release day"), "{r}");
}
