//! Offline messages (XEP-0160, "Best Practices for Handling Offline Messages"): which
//! messages the server keeps for a user with no available resource, and how it hands them
//! over later, stamped with when they arrived (XEP-0203 "Delayed Delivery").
//!
//! ```text
//!  message for user, no resource takes it ──► storable(type)?  (RFC 6121 §8.5.2.2.1,
//!        │ yes (normal, chat)                  XEP-0160 §3)
//!        ▼
//!  worth_storing(el)? (not only XEP-0085 chat states) ── no ──► dropped
//!        │ yes
//!        ▼
//!  runtime stores (stanza bytes, received_at) ──► user's next available presence
//!        ──► with_delay(stanza, domain, received_at) ──► the client
//! ```
//!
//! Pure: the runtime reads the clock (the receipt time) and does the storing; here are
//! the rules and the bytes.

use std::time::SystemTime;

use crate::presence::delivery::MessageType;
use crate::stanza::StanzaKind;
use crate::xml::{escape_attr_into, Element, Needle};

/// `urn:xmpp:delay` (XEP-0203 §2).
pub const NS_DELAY: &str = "urn:xmpp:delay";

/// `msgoffline`: the service discovery feature of a server that stores offline messages
/// (XEP-0160 §4, XEP-0030 §3.1).
pub const FEATURE_MSGOFFLINE: &str = "msgoffline";

/// Whether a stanza for a local user that none of its resources takes is stored offline
/// (XEP-0160 §3, RFC 6121 §8.5.2.2.1): messages of type `normal` (also an absent or
/// unknown `type`, RFC 6121 §5.2.2) and `chat`. Not `groupchat` (refused with
/// `service-unavailable`), `headline` (ignored) or `error` (never answered, RFC 6120
/// §8.3.1); never presence or IQs.
pub fn storable(kind: StanzaKind, type_: Option<&str>) -> bool {
    kind == StanzaKind::Message
        && matches!(
            MessageType::from_attr(type_),
            MessageType::Normal | MessageType::Chat
        )
}

/// `http://jabber.org/protocol/chatstates` (XEP-0085 §5).
pub const NS_CHAT_STATES: &str = "http://jabber.org/protocol/chatstates";

/// Whether a storable message (see [`storable`]) carries something worth keeping: a child
/// element other than a XEP-0085 chat state notification. XEP-0160 §3: a `chat` message
/// "with the exception of messages that contain only Chat State Notifications" is stored;
/// a typing notification delivered hours later means nothing. A message with no child
/// at all has nothing to deliver either. Such messages are dropped without an answer
/// (like a `headline`), not refused. A message that does not parse as a tree (cannot
/// happen for a framed stanza) is kept.
///
/// Cost: a message whose bytes never mention the chat states namespace (almost all of
/// them) is answered by one scan for a child start tag, without building a tree; only
/// the others are parsed (namespaces may be declared by prefix or inherited).
pub fn worth_storing(el: &Element) -> bool {
    if el.is_empty() {
        return false;
    }
    let inner = el.inner();
    static CHAT_STATES: Needle = Needle::new(NS_CHAT_STATES);
    if !CHAT_STATES.is_in(el.bytes()) {
        // Without the namespace's name no child can be a chat state: worth storing when
        // there is any child element.
        return has_child_element(inner);
    }
    match crate::xml::tree::Node::parse(el) {
        Ok(node) => node.children.iter().any(|c| c.ns != NS_CHAT_STATES),
        Err(_) => true,
    }
}

/// Whether `inner` (an element's content, well-formed: the framer checked it) holds a
/// child element. Character data holds no raw `<` (it is escaped), so a child's start
/// tag is a `<` that opens neither an end tag (`</`) nor a CDATA section (`<![CDATA[`,
/// skipped to its `]]>`: its text may hold `<`); comments and processing instructions
/// are not framed (RFC 6120 §11.1). At the top level of the content the first `<` is
/// either a child's start tag or a CDATA section.
fn has_child_element(inner: &[u8]) -> bool {
    let mut at = 0;
    // Bounded: every turn moves `at` forward.
    while let Some(i) = memchr::memchr(b'<', &inner[at..]) {
        let i = at + i;
        match inner.get(i + 1) {
            Some(b'!') => match memchr::memmem::find(&inner[i..], b"]]>") {
                Some(end) => at = i + end + 3,
                None => return false,
            },
            Some(b'/') => at = i + 2,
            _ => return true,
        }
    }
    false
}

/// The XEP-0203 timestamp of `at`: XEP-0082 `DateTime` in UTC with milliseconds,
/// `CCYY-MM-DDThh:mm:ss.sssZ` (e.g. `2026-12-06T16:04:05.123Z`).
pub fn stamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// Appends `<delay xmlns='urn:xmpp:delay' from='FROM' stamp='STAMP'/>` (XEP-0203 §2: `from`
/// is the entity that delayed delivery, here the user's server domain; `stamp` is
/// [`stamp`] of the time it received the stanza).
pub fn write_delay(from: &str, at: SystemTime, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<delay xmlns='");
    out.extend_from_slice(NS_DELAY.as_bytes());
    out.extend_from_slice(b"' from='");
    escape_attr_into(from, out);
    out.extend_from_slice(b"' stamp='");
    out.extend_from_slice(stamp(at).as_bytes());
    out.extend_from_slice(b"'/>");
}

/// `el` (a stored message) with a XEP-0203 `<delay/>` ([`write_delay`]) as its last child:
/// inserted before the end tag, or, for an empty-element tag (`<message .../>`), the tag
/// opened and closed around it. Everything else is kept byte for byte.
pub fn with_delay(el: &Element, from: &str, at: SystemTime) -> Vec<u8> {
    let bytes = el.bytes();
    let mut out = Vec::with_capacity(bytes.len() + 96 + from.len() + el.qname().len());
    if el.is_empty() {
        // `<message ... />`: drop the `/>` (and any space before it is harmless).
        let end = bytes.len().saturating_sub(2);
        out.extend_from_slice(&bytes[..end]);
        out.push(b'>');
        write_delay(from, at, &mut out);
        out.extend_from_slice(b"</");
        out.extend_from_slice(el.qname().as_bytes());
        out.push(b'>');
    } else {
        let inner_end = el.inner_end as usize;
        out.extend_from_slice(&bytes[..inner_end]);
        write_delay(from, at, &mut out);
        out.extend_from_slice(&bytes[inner_end..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::parse_stanza;
    use crate::xml::tree::Node;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn only_normal_and_chat_messages_are_stored() {
        use StanzaKind::*;
        for (kind, t, want) in [
            (Message, None, true),
            (Message, Some("normal"), true),
            (Message, Some("chat"), true),
            (Message, Some("bogus"), true), // unknown = normal (RFC 6121 §5.2.2)
            (Message, Some("headline"), false),
            (Message, Some("groupchat"), false),
            (Message, Some("error"), false),
            (Presence, None, false),
            (Iq, Some("get"), false),
        ] {
            assert_eq!(storable(kind, t), want, "{kind:?} {t:?}");
        }
    }

    #[test]
    fn chat_state_only_messages_are_not_worth_storing() {
        let w = |x: &str| worth_storing(&parse_stanza(x.as_bytes()).unwrap());
        let cs = "xmlns='http://jabber.org/protocol/chatstates'";
        assert!(w("<message type='chat'><body>hi</body></message>"));
        assert!(w(&format!(
            "<message type='chat'><active {cs}/><body>hi</body></message>"
        )));
        assert!(w(
            "<message><x xmlns='jabber:x:oob'><url>u</url></x></message>"
        ));
        assert!(!w(&format!(
            "<message type='chat'><composing {cs}/></message>"
        )));
        assert!(!w(&format!(
            "<message type='chat'><paused {cs}/><active {cs}/></message>"
        )));
        assert!(!w("<message type='chat'/>"));
        assert!(!w("<message type='chat'>  </message>"));
        // The fast path (no chat states namespace in the bytes) and the tree agree.
        assert!(!w("<message type='chat'>text only &lt;b&gt;</message>"));
        assert!(!w("<message type='chat'><![CDATA[<b>x</b>]]></message>"));
        assert!(w(
            "<message type='chat'><![CDATA[x]]><body>x</body></message>"
        ));
        assert!(w("<message><b:x xmlns:b='urn:b'/></message>"));
        // The namespace mentioned only in text: parsed, and the body counts.
        assert!(w(
            "<message><body>http://jabber.org/protocol/chatstates</body></message>"
        ));
    }

    #[test]
    fn child_scan_agrees_with_the_tree() {
        for x in [
            "<message/>",
            "<message>t</message>",
            "<message><body/></message>",
            "<message>a<![CDATA[<x/>]]>b</message>",
            "<message><![CDATA[]]><x/></message>",
            "<message>&lt;x/&gt;</message>",
            "<message><a><b/></a>tail</message>",
        ] {
            let el = parse_stanza(x.as_bytes()).unwrap();
            let tree = !Node::parse(&el).unwrap().children.is_empty();
            assert_eq!(has_child_element(el.inner()), tree, "{x}");
        }
    }

    #[test]
    fn stamp_is_xep0082_utc_with_millis() {
        let at = UNIX_EPOCH + Duration::from_millis(1_796_400_000_123);
        assert_eq!(stamp(at), "2026-12-04T16:00:00.123Z");
    }

    #[test]
    fn delay_goes_last_and_the_rest_is_kept() {
        let at = UNIX_EPOCH + Duration::from_secs(1_796_400_000);
        let el = parse_stanza(
            b"<message from='a@x/r' to='b@x' type='chat' id='1'><body>hi &amp; bye</body></message>",
        )
        .unwrap();
        let out = with_delay(&el, "x", at);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "<message from='a@x/r' to='b@x' type='chat' id='1'><body>hi &amp; bye</body>\
             <delay xmlns='urn:xmpp:delay' from='x' stamp='2026-12-04T16:00:00.000Z'/></message>"
        );
        let node = Node::parse(&parse_stanza(&out).unwrap()).unwrap();
        let delay = node.children.iter().find(|c| c.name == "delay").unwrap();
        assert_eq!(delay.ns, NS_DELAY);
        assert_eq!(delay.attr("stamp"), Some("2026-12-04T16:00:00.000Z"));
    }

    #[test]
    fn empty_message_is_opened_for_the_delay() {
        let at = UNIX_EPOCH;
        let el = parse_stanza(b"<message to='b@x' from='a@y'/>").unwrap();
        let out = with_delay(&el, "x<", at);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "<message to='b@x' from='a@y'><delay xmlns='urn:xmpp:delay' from='x&lt;' \
             stamp='1970-01-01T00:00:00.000Z'/></message>"
        );
        assert!(parse_stanza(&out).is_ok());
    }
}
