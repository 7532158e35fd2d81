//! PEP (XEP-0163) across federation with a real Prosody: `cupuser1@cupdomain.test`
//! (fedrouter) publishes a mood (XEP-0107) and avatar metadata (XEP-0084);
//! `jdoe1@gmail.test` (Prosody), whose caps (XEP-0115, a real `ver` hash) show
//! `+notify` for both, receives both events over S2S, as does `bob@cupdomain.test`
//! (local, same caps); `jroe1@gmail.test`, whose caps do not, receives none (a marker
//! message sent after the publishes arrives first, over the same S2S stream). The caps
//! query goes from cupuser1's bare JID to the Prosody user's full JID over S2S, and its
//! answer comes back the same way.

use base64::Engine;
use sha1::Digest;

use crate::lab::{Lab, LabOptions, Profile, CUPUSER, JDOE, OURS, PASSWORD, THEIRS};
use crate::xmpp::{attr, is_stanza, Client, Mech, Target};

const MOOD: &str = "http://jabber.org/protocol/mood";
const AVATAR_META: &str = "urn:xmpp:avatar:metadata";
const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const CAPS_NODE: &str = "https://fedrouter.test/interop-client";
const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const IDENTITY: (&str, &str, &str) = ("client", "phone", "interop pep");

/// A client's features and their XEP-0115 §5.1 `ver` (SHA-1, base64).
struct ClientCaps {
    features: Vec<String>,
    ver: String,
}

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

/// Answers the `disco#info` query for `caps` that comes from `account` (other queries,
/// such as the client's own server's, stay buffered).
fn answer_caps_query(c: &mut Client, account: &str, caps: &ClientCaps) {
    let node_ver = format!("{CAPS_NODE}#{}", caps.ver);
    let q = c.expect(&format!("the caps query from {account}"), |x| {
        is_stanza(x, "iq")
            && attr(x, "type").as_deref() == Some("get")
            && attr(x, "from").as_deref() == Some(account)
            && x.contains(DISCO_INFO)
    });
    assert!(q.contains(&node_ver), "{q}");
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

/// From nothing to `both` between `a` and `b` (both available, rosters fetched).
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

fn is_event(x: &str, node: &str) -> bool {
    is_stanza(x, "message")
        && x.contains("http://jabber.org/protocol/pubsub#event")
        && x.contains(node)
}

fn expect_event(c: &mut Client, from: &str, node: &str, needle: &str) {
    let m = c.expect(&format!("a PEP event for {node}"), |x| is_event(x, node));
    assert_eq!(attr(&m, "from").as_deref(), Some(from), "{m}");
    assert!(m.contains(needle), "{needle} not in {m}");
}

fn login_prosody(lab: &Lab, user: &str, resource: &str) -> Client {
    let t = Target {
        addr: lab.prosody.c2s(),
        domain: THEIRS.into(),
        cert: lab.ca_pem(),
    };
    let mut c = Client::login_with(&t, Mech::ScramSha1, user, PASSWORD, Some(resource));
    c.roster_get();
    c.send("<presence/>");
    c
}

/// The test, in slot `k`.
pub fn pep_over_s2s(k: u8) {
    let lab = Lab::start(k, Profile::Google, LabOptions::default());
    crate::server::add_user(
        &lab.fedrouter.config_path(),
        &format!("bob@{OURS}"),
        PASSWORD,
    );
    lab.prosody.register("jroe1", PASSWORD);
    let cup_bare = format!("{CUPUSER}@{OURS}");
    let jdoe_bare = format!("{JDOE}@{THEIRS}");
    let jroe_bare = format!("jroe1@{THEIRS}");

    let mut cup = lab.login_cupuser();
    cup.roster_get();
    cup.send("<presence/>");
    let mut bob = lab.login_local("bob", "phone");
    bob.roster_get();
    bob.send("<presence/>");
    let mut jdoe = login_prosody(&lab, JDOE, "phone");
    let mut jroe = login_prosody(&lab, "jroe1", "tablet");
    befriend(&mut cup, &cup_bare, &mut jdoe, &jdoe_bare);
    befriend(&mut cup, &cup_bare, &mut jroe, &jroe_bare);
    befriend(&mut cup, &cup_bare, &mut bob, &format!("bob@{OURS}"));

    let notify = client_caps(&[
        MOOD,
        "http://jabber.org/protocol/mood+notify",
        AVATAR_META,
        "urn:xmpp:avatar:metadata+notify",
    ]);
    let silent = client_caps(&[MOOD, AVATAR_META]);
    jdoe.send(&caps_presence(&notify));
    answer_caps_query(&mut jdoe, &cup_bare, &notify);
    jroe.send(&caps_presence(&silent));
    answer_caps_query(&mut jroe, &cup_bare, &silent);
    // A message after the answer, over the same S2S stream: once cupuser1 has it, the
    // answer has been handled.
    jroe.send(&format!(
        "<message type='chat' to='{cup_bare}' id='barrier'><body>b</body></message>"
    ));
    cup.expect("jroe1's barrier", |x| {
        is_stanza(x, "message") && attr(x, "id").as_deref() == Some("barrier")
    });
    // Same caps as jdoe's: known already, or waiting for jdoe's answer; not asked again.
    bob.send(&caps_presence(&notify));

    for (node, id, payload) in [
        (MOOD, "current", "<mood xmlns='http://jabber.org/protocol/mood'><happy/><text>federated</text></mood>"),
        (AVATAR_META, "9a1f", "<metadata xmlns='urn:xmpp:avatar:metadata'><info bytes='2048' id='9a1f' type='image/png' height='32' width='32'/></metadata>"),
    ] {
        let r = cup.iq(
            "set",
            &format!("<pubsub xmlns='{PUBSUB}'><publish node='{node}'><item id='{id}'>{payload}</item></publish></pubsub>"),
        );
        assert_eq!(attr(&r, "type").as_deref(), Some("result"), "{r}");
    }
    expect_event(&mut jdoe, &cup_bare, MOOD, "federated");
    expect_event(&mut jdoe, &cup_bare, AVATAR_META, "image/png");
    // bob is never asked: his caps were known, or joined jdoe's query in flight.
    expect_event(&mut bob, &cup_bare, MOOD, "federated");
    expect_event(&mut bob, &cup_bare, AVATAR_META, "image/png");

    // jroe (no +notify): the marker, sent after the publishes, arrives with no event before.
    cup.send(&format!(
        "<message type='chat' to='{jroe_bare}/tablet' id='marker'><body>marker</body></message>"
    ));
    jroe.expect("the marker", |x| {
        is_stanza(x, "message") && attr(x, "id").as_deref() == Some("marker")
    });
    let events = jroe.take_buffered(|x| is_event(x, MOOD) || is_event(x, AVATAR_META));
    assert!(events.is_empty(), "jroe1 has no +notify: {events:?}");

    // A Prosody user retrieves the items over S2S (presence access model: a contact).
    let id = jdoe.next_id();
    jdoe.send(&format!(
        "<iq type='get' to='{cup_bare}' id='{id}'><pubsub xmlns='{PUBSUB}'><items node='{MOOD}'/></pubsub></iq>"
    ));
    let r = jdoe.expect_iq_answer(&id);
    assert!(
        r.contains("federated") && attr(&r, "type").as_deref() == Some("result"),
        "{r}"
    );
    let asked = bob.take_buffered(|x| is_stanza(x, "iq") && x.contains(DISCO_INFO));
    assert!(asked.is_empty(), "one query per caps ver: {asked:?}");
}
