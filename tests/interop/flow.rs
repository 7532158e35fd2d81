//! The RFC 6121 life cycle between a user of one server and a user of the other, driven by
//! real clients on both sides: subscribe, approve, subscribe back, approve (both), presence
//! both ways, a message each way, then unsubscribe. Each step's roster pushes are checked
//! on the server that sends them, so the states are checked on both servers as they change.
#![allow(dead_code)]

use fedrouter::xml::escape_text;

use crate::xmpp::{attr, child_text, is_stanza, jid_matches, Client};

/// One logged-in user.
pub struct Side<'a> {
    /// The session.
    pub client: &'a mut Client,
    /// Its bare JID.
    pub bare: String,
    /// Which server (for messages): `"fedrouter"` or `"prosody"`.
    pub server: &'static str,
}

impl Side<'_> {
    fn full(&self) -> String {
        self.client.jid.clone().expect("bound")
    }
}

/// Asserts a roster `<item/>`: jid, subscription, ask.
pub fn assert_item(item: &str, jid: &str, subscription: &str, ask: Option<&str>, what: &str) {
    assert_eq!(
        attr(item, "jid").map(|j| j.to_ascii_lowercase()).as_deref(),
        Some(jid),
        "{what}: {item}"
    );
    assert_eq!(
        attr(item, "subscription").as_deref(),
        Some(subscription),
        "{what}: subscription of {item}"
    );
    assert_eq!(attr(item, "ask").as_deref(), ask, "{what}: ask of {item}");
}

/// Waits for `s`'s roster push about `contact` and checks it.
fn expect_push(s: &mut Side<'_>, contact: &str, subscription: &str, ask: Option<&str>) {
    let item = s.client.expect_roster_push(contact);
    assert_item(
        &item,
        contact,
        subscription,
        ask,
        &format!("{} push on {}", s.bare, s.server),
    );
}

/// `s`'s roster as fetched: exactly one item, for `contact`, with `subscription`.
fn expect_roster(s: &mut Side<'_>, contact: &str, subscription: &str, ask: Option<&str>) {
    let items = s.client.roster_get();
    assert_eq!(
        items.len(),
        1,
        "{}'s roster on {}: {items:?}",
        s.bare,
        s.server
    );
    assert_item(
        &items[0],
        contact,
        subscription,
        ask,
        &format!("{}'s roster on {}", s.bare, s.server),
    );
}

fn sub(s: &mut Side<'_>, type_: &str, to: &str) {
    s.client
        .send(&format!("<presence type='{type_}' to='{to}'/>"));
}

/// A chat message from `from` to `to` (a JID), checked on arrival: body, sender's full
/// JID, not an error.
pub fn message_flows(from: &mut Side<'_>, to: &mut Side<'_>, to_jid: &str, id: &str, body: &str) {
    from.client.send(&format!(
        "<message type='chat' to='{to_jid}' id='{id}'><body>{}</body></message>",
        escape_text(body)
    ));
    let want_from = from.full();
    let m = to
        .client
        .expect(&format!("message {id} from {want_from}"), |x| {
            is_stanza(x, "message") && attr(x, "id").as_deref() == Some(id)
        });
    assert_ne!(attr(&m, "type").as_deref(), Some("error"), "{m}");
    assert!(
        attr(&m, "from").is_some_and(|f| jid_matches(&f, &want_from)),
        "message {id} not from {want_from}: {m}"
    );
    assert_eq!(child_text(&m, "body").as_deref(), Some(body), "{m}");
}

/// An available presence with `status` from `from` reaches `to`.
pub fn presence_flows(from: &mut Side<'_>, to: &mut Side<'_>, status: &str) {
    from.client
        .send(&format!("<presence><status>{status}</status></presence>"));
    let want_from = from.full();
    let p = to
        .client
        .expect(&format!("presence '{status}' from {want_from}"), |x| {
            is_stanza(x, "presence") && child_text(x, "status").as_deref() == Some(status)
        });
    assert_eq!(attr(&p, "type"), None, "{p}");
    assert!(
        attr(&p, "from").is_some_and(|f| jid_matches(&f, &want_from)),
        "presence '{status}' not from {want_from}: {p}"
    );
}

/// The whole flow, `a` initiating. Both users are logged in, with no roster yet. Ends
/// with `a` "from" / `b` "to" (a unsubscribed from b's presence).
pub fn subscription_flow(a: &mut Side<'_>, b: &mut Side<'_>) {
    let (ab, bb) = (a.bare.clone(), b.bare.clone());

    // Both are interested resources (roster get) and available (initial presence).
    assert_eq!(a.client.roster_get(), Vec::<String>::new(), "{ab}'s roster");
    assert_eq!(b.client.roster_get(), Vec::<String>::new(), "{bb}'s roster");
    a.client.send("<presence/>");
    b.client.send("<presence/>");
    a.client.sync();
    b.client.sync();

    // a → b: subscribe; "None + Pending Out" on a's server; b is asked, from a's bare JID.
    sub(a, "subscribe", &bb);
    expect_push(a, &bb, "none", Some("subscribe"));
    let req = b.client.expect_presence(&ab, Some("subscribe"));
    assert_eq!(attr(&req, "from").as_deref(), Some(ab.as_str()), "{req}");

    // b approves: "From" on b's server, "To" on a's; a is told and gets b's presence.
    sub(b, "subscribed", &ab);
    expect_push(b, &ab, "from", None);
    expect_push(a, &bb, "to", None);
    let ok = a.client.expect_presence(&bb, Some("subscribed"));
    assert_eq!(attr(&ok, "from").as_deref(), Some(bb.as_str()), "{ok}");
    let b_full = b.full();
    a.client.expect_presence(&b_full, None);

    // b subscribes back: "From + Pending Out", then "Both" on both servers.
    sub(b, "subscribe", &ab);
    expect_push(b, &ab, "from", Some("subscribe"));
    a.client.expect_presence(&bb, Some("subscribe"));
    sub(a, "subscribed", &bb);
    expect_push(a, &bb, "both", None);
    expect_push(b, &ab, "both", None);
    b.client.expect_presence(&ab, Some("subscribed"));
    let a_full = a.full();
    b.client.expect_presence(&a_full, None);

    // The rosters as fetched agree with the pushes.
    expect_roster(a, &bb, "both", None);
    expect_roster(b, &ab, "both", None);

    // Presence both ways, a message each way (to the full JID, then to the bare JID).
    presence_flows(b, a, "on the phone");
    presence_flows(a, b, "at my desk");
    let b_full = b.full();
    message_flows(a, b, &b_full, "m-ab", "hello from the other side & <more>");
    message_flows(b, a, &ab, "m-ba", "hello back, \u{e9}t\u{e9}");

    // a unsubscribes from b's presence: a "From", b "To"; b is told.
    sub(a, "unsubscribe", &bb);
    expect_push(a, &bb, "from", None);
    expect_push(b, &ab, "to", None);
    b.client.expect_presence(&ab, Some("unsubscribe"));

    // b's presence no longer reaches a; a's still reaches b. A message after the presence
    // travels the same streams, in order: once it is in, the presence would have been.
    b.client
        .send("<presence><status>after unsubscribe</status></presence>");
    message_flows(b, a, &ab, "barrier-1", "barrier");
    let leaked = a.client.take_buffered(|x| {
        is_stanza(x, "presence") && child_text(x, "status").as_deref() == Some("after unsubscribe")
    });
    assert!(
        leaked.is_empty(),
        "{ab} still gets {bb}'s presence: {leaked:?}"
    );
    presence_flows(a, b, "still visible");

    expect_roster(a, &bb, "from", None);
    expect_roster(b, &ab, "to", None);
}
