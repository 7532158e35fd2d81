//! XEP-0280 Message Carbons (`urn:xmpp:carbons:2`): which messages a user's other
//! resources get a copy of, and the copies themselves.
//!
//! Pure: the runtime keeps, per session, whether carbons are enabled ([`read_toggle`],
//! §4 and §5), and for each message delivered to or sent by one of a user's resources
//! asks [`eligible`] (§6.1) and builds the copies with [`copy`] (§6: `<received/>` for
//! inbound messages, `<sent/>` for outbound ones), each wrapping the original in a
//! XEP-0297 `<forwarded/>`. The copies go to the user's other resources that enabled
//! carbons and did not get the message itself.

use crate::stream::c2s::remove_top_xmlns;
use crate::xml::tree::Node;
use crate::xml::{ns, Element, ElementBuilder};

/// `urn:xmpp:carbons:2` (XEP-0280 §9.1).
pub const NS_CARBONS: &str = "urn:xmpp:carbons:2";
/// `urn:xmpp:forward:0` (XEP-0297), the wrapper of a copied message.
pub const NS_FORWARD: &str = "urn:xmpp:forward:0";
/// `urn:xmpp:hints` (XEP-0334): `<no-copy/>` keeps a message out of carbons.
pub const NS_HINTS: &str = "urn:xmpp:hints";

/// Chat states (XEP-0085), receipts (XEP-0184) and chat markers (XEP-0333): payloads of
/// one-to-one chat that make a `normal` message without a body eligible (XEP-0280 §6.1).
const IM_PAYLOADS: &[&str] = &[
    "http://jabber.org/protocol/chatstates",
    "urn:xmpp:receipts",
    "urn:xmpp:chat-markers:0",
];

/// What a client's carbons request asks for (XEP-0280 §4 enable, §5 disable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toggle {
    /// `<enable xmlns='urn:xmpp:carbons:2'/>`: this session gets copies from now on.
    Enable,
    /// `<disable xmlns='urn:xmpp:carbons:2'/>`: no more copies for this session.
    Disable,
}

/// Reads the payload of an `iq type='set'` as a carbons request; `None` when it is not
/// `<enable/>` or `<disable/>` in [`NS_CARBONS`].
pub fn read_toggle(payload: &Node) -> Option<Toggle> {
    if payload.ns != NS_CARBONS {
        return None;
    }
    match payload.name.as_str() {
        "enable" => Some(Toggle::Enable),
        "disable" => Some(Toggle::Disable),
        _ => None,
    }
}

/// Whether the `<message/>` `el` is eligible for carbons (XEP-0280 §6.1): not marked
/// `<private xmlns='urn:xmpp:carbons:2'/>` (§7) or `<no-copy xmlns='urn:xmpp:hints'/>`
/// (XEP-0334), not itself a carbon copy (`<received/>`/`<sent/>`), and either of type
/// `chat`, or of type `normal` (or no type) with a `<body/>` or a chat state, receipt or
/// chat marker. `groupchat`, `headline` and `error` messages are not copied (an error
/// cannot be told to answer an eligible message). A message that does not parse is not
/// eligible.
pub fn eligible(el: &Element) -> bool {
    if el.name() != "message" {
        return false;
    }
    let chat = match el.type_() {
        Some("chat") => true,
        None | Some("normal") => false,
        Some(_) => return false,
    };
    let Ok(node) = Node::parse(el) else {
        return false;
    };
    let mut im = chat;
    for c in &node.children {
        match (c.name.as_str(), c.ns.as_str()) {
            ("private", NS_CARBONS) | ("no-copy", NS_HINTS) => return false,
            ("received" | "sent", NS_CARBONS) => return false,
            ("body", _) => im = true,
            (_, n) if IM_PAYLOADS.contains(&n) => im = true,
            _ => {}
        }
    }
    im
}

/// Which way the copied message went (XEP-0280 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A message the user received on another resource (§6.2): `<received/>`.
    Received,
    /// A message the user sent from another resource (§6.3): `<sent/>`.
    Sent,
}

impl Direction {
    fn element(self) -> &'static str {
        match self {
            Direction::Received => "received",
            Direction::Sent => "sent",
        }
    }
}

/// The carbon copy of `original` for the user's resource `to` (a full JID), from the
/// user's bare JID `bare` (XEP-0280 §6.2, §6.3): `<message from='bare' to='to'
/// type='(original's)'><received|sent xmlns='urn:xmpp:carbons:2'><forwarded
/// xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' …original…/></forwarded>
/// </received|sent></message>`. The original's bytes are copied as they are, its own
/// default namespace declaration (if any) replaced by `jabber:client`. `bare` and `to`
/// are unescaped text.
pub fn copy(original: &Element, direction: Direction, bare: &str, to: &str) -> Element {
    let b = original.bytes();
    let mut inner = b.to_vec();
    remove_top_xmlns(&mut inner, 0, ns::CLIENT);
    remove_top_xmlns(&mut inner, 0, ns::SERVER);
    let name_end = original.qname_end();
    let wrapper = direction.element();
    let capacity = inner.len() + bare.len() + to.len() + 220;
    ElementBuilder::with_capacity("message", capacity)
        .attr("from", bare)
        .attr("to", to)
        .raw_attr_opt("type", original.type_())
        .child_with(|out| {
            out.push(b'<');
            out.extend_from_slice(wrapper.as_bytes());
            out.extend_from_slice(b" xmlns='");
            out.extend_from_slice(NS_CARBONS.as_bytes());
            out.extend_from_slice(b"'><forwarded xmlns='");
            out.extend_from_slice(NS_FORWARD.as_bytes());
            out.extend_from_slice(b"'>");
            out.extend_from_slice(&inner[..name_end]);
            out.extend_from_slice(b" xmlns='jabber:client'");
            out.extend_from_slice(&inner[name_end..]);
            out.extend_from_slice(b"</forwarded></");
            out.extend_from_slice(wrapper.as_bytes());
            out.push(b'>');
        })
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::parse_stanza;

    fn el(s: &str) -> Element {
        parse_stanza(s.as_bytes()).unwrap()
    }

    #[test]
    fn eligibility_table() {
        // XEP-0280 §6.1 and §7, XEP-0334 no-copy: (message, eligible).
        let table: &[(&str, bool)] = &[
            ("<message type='chat' to='b@x'><body>hi</body></message>", true),
            ("<message type='chat' to='b@x'/>", true),
            ("<message type='normal' to='b@x'><body>hi</body></message>", true),
            ("<message to='b@x'><body>hi</body></message>", true),
            ("<message to='b@x'><subject>s</subject></message>", false),
            ("<message to='b@x'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>", true),
            ("<message to='b@x'><received xmlns='urn:xmpp:receipts' id='1'/></message>", true),
            ("<message to='b@x'><displayed xmlns='urn:xmpp:chat-markers:0' id='1'/></message>", true),
            ("<message type='groupchat' to='r@muc'><body>hi</body></message>", false),
            ("<message type='headline' to='b@x'><body>news</body></message>", false),
            ("<message type='error' to='b@x'><body>hi</body><error type='cancel'/></message>", false),
            ("<message type='chat' to='b@x'><body>hi</body><private xmlns='urn:xmpp:carbons:2'/></message>", false),
            ("<message type='chat' to='b@x'><body>hi</body><no-copy xmlns='urn:xmpp:hints'/></message>", false),
            ("<message type='chat' to='b@x'><body>hi</body><private xmlns='urn:example'/></message>", true),
            ("<message to='a@x/r'><received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'/></received></message>", false),
            ("<message to='a@x/r'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'/></sent></message>", false),
            ("<presence to='b@x'><body>no</body></presence>", false),
        ];
        for (xml, want) in table {
            assert_eq!(eligible(&el(xml)), *want, "{xml}");
        }
    }

    #[test]
    fn toggle_table() {
        let read = |xml: &str| {
            let iq = Node::parse(&el(&format!("<iq type='set' id='1'>{xml}</iq>"))).unwrap();
            read_toggle(&iq.children[0])
        };
        assert_eq!(
            read("<enable xmlns='urn:xmpp:carbons:2'/>"),
            Some(Toggle::Enable)
        );
        assert_eq!(
            read("<disable xmlns='urn:xmpp:carbons:2'/>"),
            Some(Toggle::Disable)
        );
        assert_eq!(read("<enable xmlns='urn:xmpp:carbons:1'/>"), None);
        assert_eq!(read("<private xmlns='urn:xmpp:carbons:2'/>"), None);
    }

    #[test]
    fn copies_wrap_the_original_in_forwarded() {
        let m = el(
            "<message xmlns='jabber:server' from='b@y/r' to='a@x' type='chat' id='m&amp;1'>\
            <body>hi &lt;3</body></message>",
        );
        let c = copy(&m, Direction::Received, "a@x", "a@x/phone");
        assert_eq!(
            c.as_str(),
            "<message from='a@x' to='a@x/phone' type='chat'>\
             <received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>\
             <message xmlns='jabber:client' from='b@y/r' to='a@x' type='chat' id='m&amp;1'>\
             <body>hi &lt;3</body></message></forwarded></received></message>"
        );
        assert_eq!(parse_stanza(c.bytes()).unwrap(), c);
        let s = el("<message to='b@y' from='a@x/laptop'><body>yo</body></message>");
        let c = copy(&s, Direction::Sent, "a@x", "a@x/phone");
        assert_eq!(
            c.as_str(),
            "<message from='a@x' to='a@x/phone'>\
             <sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>\
             <message xmlns='jabber:client' to='b@y' from='a@x/laptop'><body>yo</body>\
             </message></forwarded></sent></message>"
        );
        // The copy is not itself eligible: no copies of copies.
        assert!(!eligible(&c));
        let tree = Node::parse(&c).unwrap();
        let fwd = tree.children[0].child("forwarded", NS_FORWARD).unwrap();
        let inner = fwd.child("message", "jabber:client").unwrap();
        assert_eq!(inner.attr("from"), Some("a@x/laptop"));
    }
}
