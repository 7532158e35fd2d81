//! XEP-0191 Blocking Command (`urn:xmpp:blocking`): the requests a client sends about its
//! block list, which JIDs an item blocks, and what happens to stanzas from and to them.
//!
//! Pure: the runtime keeps each user's block list (normalised JIDs, stored durably),
//! reads requests with [`read_request`] (§3.2 get, §3.3 block, §3.4–§3.5 unblock), answers
//! with [`blocklist_result`] and pushes [`push`] to the user's resources, and for each
//! stanza from or to a user asks [`is_blocked`] (JID matching as XEP-0016 §2.1, which
//! XEP-0191 §6 refers to), then [`inbound`] for what to do with a stanza from a blocked
//! entity, or answers a stanza to one with [`blocked_error`].

use crate::condition::StanzaCondition;
use crate::jid::Jid;
use crate::stanza::{is_error, StanzaKind};
use crate::xml::tree::Node;
use crate::xml::{escape_attr_into, Element, ElementBuilder};

/// `urn:xmpp:blocking` (XEP-0191 §9.1).
pub const NS_BLOCKING: &str = "urn:xmpp:blocking";
/// `urn:xmpp:blocking:errors`, the application error of a refused outbound stanza.
pub const NS_BLOCKING_ERRORS: &str = "urn:xmpp:blocking:errors";

/// Items one block or unblock request may carry; more is a `policy-violation`.
pub const MAX_ITEMS: usize = 1000;

/// A client's request about its block list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `iq get` `<blocklist/>` (§3.2): the list.
    Get,
    /// `iq set` `<block>` with these normalised JIDs (§3.3), at least one.
    Block(Vec<String>),
    /// `iq set` `<unblock>` with these normalised JIDs (§3.4); empty: unblock all (§3.5).
    Unblock(Vec<String>),
}

/// Reads the payload of an `iq` of type `get` (`is_get`) or `set` as a blocking request:
/// `None` when it is not one (another namespace or element); `Err` with the condition
/// to answer with when it is malformed: a `<block/>` without items, or an item without a
/// `jid`, is a `bad-request`; a `jid` that is not a JID (RFC 7622) is `jid-malformed`;
/// a `<blocklist/>` set or a `<block/>`/`<unblock/>` get is a `bad-request`; more than
/// [`MAX_ITEMS`] items is a `policy-violation`.
pub fn read_request(is_get: bool, payload: &Node) -> Option<Result<Request, StanzaCondition>> {
    if payload.ns != NS_BLOCKING {
        return None;
    }
    let block = match (payload.name.as_str(), is_get) {
        ("blocklist", true) => return Some(Ok(Request::Get)),
        ("block", false) => true,
        ("unblock", false) => false,
        ("blocklist" | "block" | "unblock", _) => return Some(Err(StanzaCondition::BadRequest)),
        _ => return None,
    };
    let mut jids: Vec<String> = Vec::new();
    for item in &payload.children {
        if item.name != "item" || item.ns != NS_BLOCKING {
            continue;
        }
        if jids.len() == MAX_ITEMS {
            return Some(Err(StanzaCondition::PolicyViolation));
        }
        let Some(raw) = item.attr("jid") else {
            return Some(Err(StanzaCondition::BadRequest));
        };
        match Jid::new(raw) {
            Ok(j) => {
                let j = j.as_str().to_owned();
                if !jids.contains(&j) {
                    jids.push(j);
                }
            }
            Err(_) => return Some(Err(StanzaCondition::JidMalformed)),
        }
    }
    Some(Ok(if block {
        if jids.is_empty() {
            return Some(Err(StanzaCondition::BadRequest));
        }
        Request::Block(jids)
    } else {
        Request::Unblock(jids)
    }))
}

/// Whether the block list item `item` (a normalised JID) matches `jid` (a normalised
/// JID), as XEP-0016 §2.1 orders it: `user@domain/resource` matches only that full JID;
/// `user@domain` any resource of it; `domain/resource` only that JID; `domain` the
/// domain itself and every JID at it.
pub fn matches(item: &str, jid: &str) -> bool {
    let (item_rest, item_res) = split_resource(item);
    let (jid_rest, _) = split_resource(jid);
    match item_res {
        Some(_) => item == jid,
        None if item_rest.contains('@') => item_rest == jid_rest,
        None => {
            let domain = jid_rest.rsplit('@').next().unwrap_or(jid_rest);
            domain == item_rest
        }
    }
}

/// `(before the first '/', after it)`.
fn split_resource(j: &str) -> (&str, Option<&str>) {
    match j.find('/') {
        Some(i) => (&j[..i], Some(&j[i + 1..])),
        None => (j, None),
    }
}

/// Whether any item of `list` (normalised JIDs) matches the raw JID `jid` (normalised
/// here, RFC 7622; a JID that does not parse is matched as it is).
pub fn is_blocked<'a>(list: impl IntoIterator<Item = &'a str>, jid: &str) -> bool {
    let mut list = list.into_iter().peekable();
    if list.peek().is_none() {
        return false;
    }
    let norm = Jid::new(jid);
    let jid = norm.as_ref().map_or(jid, |j| j.as_str());
    list.any(|item| matches(item, jid))
}

/// What to do with a stanza from a blocked entity to the user (XEP-0191 §3.3, "the
/// user's server MUST NOT deliver any XML stanzas from the contact to the user").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// Dropped without an answer: presence of every type, `iq` results and errors,
    /// and error stanzas.
    Drop,
    /// Answered with `service-unavailable` (as if the user had no resource): messages
    /// (SHOULD) and `iq` get/set (MUST).
    ServiceUnavailable,
}

/// [`Inbound`] for a stanza of `kind` and `type_` from a blocked entity.
pub fn inbound(kind: StanzaKind, type_: Option<&str>) -> Inbound {
    match (kind, type_) {
        (_, Some("error")) | (StanzaKind::Presence, _) => Inbound::Drop,
        (StanzaKind::Iq, Some("get" | "set")) => Inbound::ServiceUnavailable,
        (StanzaKind::Iq, _) => Inbound::Drop,
        (StanzaKind::Message, _) => Inbound::ServiceUnavailable,
    }
}

/// The error answering a stanza the user sent to a blocked JID (XEP-0191 §3.3): `<(kind)
/// to='(el's from)' id='(el's id)' type='error'><error type='cancel'><not-acceptable
/// xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><blocked
/// xmlns='urn:xmpp:blocking:errors'/></error></(kind)>`, no `from` (the server answers
/// on the client's own stream). `None` for an error stanza (never answered).
pub fn blocked_error(el: &Element) -> Option<Element> {
    if is_error(el) {
        return None;
    }
    let capacity = 2 * el.name().len() + el.from().map_or(0, str::len) + 200;
    Some(
        ElementBuilder::with_capacity(el.name(), capacity)
            .raw_attr_opt("to", el.from())
            .raw_attr_opt("id", el.id())
            .attr("type", "error")
            .child_raw(
                "<error type='cancel'>\
                 <not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
                 <blocked xmlns='urn:xmpp:blocking:errors'/></error>",
            )
            .finish(),
    )
}

/// Appends `<item jid='…'/>` for each JID.
fn write_items<'a>(jids: impl IntoIterator<Item = &'a str>, out: &mut Vec<u8>) {
    for j in jids {
        out.extend_from_slice(b"<item jid='");
        escape_attr_into(j, out);
        out.extend_from_slice(b"'/>");
    }
}

/// The result of a `<blocklist/>` get `el` (§3.2): `<iq type='result' to='(el's from)'
/// id='(el's id)'><blocklist xmlns='urn:xmpp:blocking'><item jid='…'/>…</blocklist></iq>`.
pub fn blocklist_result<'a>(el: &Element, list: impl IntoIterator<Item = &'a str>) -> Element {
    ElementBuilder::with_capacity("iq", 256)
        .attr("type", "result")
        .raw_attr_opt("to", el.from())
        .raw_attr_opt("id", el.id())
        .child_with(|out| {
            out.extend_from_slice(b"<blocklist xmlns='urn:xmpp:blocking'>");
            write_items(list, out);
            out.extend_from_slice(b"</blocklist>");
        })
        .finish()
}

/// The push of a block list change to one of the user's resources `to` (a full JID)
/// with push id `id` (§3.3, §3.4, §3.5): `<iq type='set' to='to' id='id'><block|unblock
/// xmlns='urn:xmpp:blocking'><item jid='…'/>…</block|unblock></iq>` (an `<unblock/>`
/// without items: everything was unblocked).
pub fn push(to: &str, id: &str, request: &Request) -> Element {
    let (name, jids): (&str, &[String]) = match request {
        Request::Block(j) => ("block", j),
        Request::Unblock(j) => ("unblock", j),
        Request::Get => ("blocklist", &[]),
    };
    ElementBuilder::with_capacity("iq", 160 + jids.iter().map(|j| j.len() + 14).sum::<usize>())
        .attr("type", "set")
        .attr("to", to)
        .attr("id", id)
        .child_with(|out| {
            out.push(b'<');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b" xmlns='urn:xmpp:blocking'>");
            write_items(jids.iter().map(String::as_str), out);
            out.extend_from_slice(b"</");
            out.extend_from_slice(name.as_bytes());
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
    fn jid_matching_table() {
        // XEP-0016 §2.1 as XEP-0191 §6 uses it: (item, jid, blocked).
        let table: &[(&str, &str, bool)] = &[
            ("bob@b.test/phone", "bob@b.test/phone", true),
            ("bob@b.test/phone", "bob@b.test/laptop", false),
            ("bob@b.test/phone", "bob@b.test", false),
            ("bob@b.test", "bob@b.test", true),
            ("bob@b.test", "bob@b.test/phone", true),
            ("bob@b.test", "eve@b.test/phone", false),
            ("bob@b.test", "b.test", false),
            ("b.test/bot", "b.test/bot", true),
            ("b.test/bot", "b.test", false),
            ("b.test/bot", "bob@b.test/bot", false),
            ("b.test", "b.test", true),
            ("b.test", "b.test/bot", true),
            ("b.test", "bob@b.test", true),
            ("b.test", "bob@b.test/phone", true),
            ("b.test", "bob@c.test", false),
            ("b.test", "bob@sub.b.test", false),
            ("b.test", "b.test@c.test", false),
        ];
        for (item, jid, want) in table {
            assert_eq!(matches(item, jid), *want, "item {item}, jid {jid}");
        }
        // Raw JIDs are normalised before matching.
        assert!(is_blocked(["bob@b.test"], "BOB@B.TEST/Phone"));
        assert!(!is_blocked(std::iter::empty::<&str>(), "bob@b.test"));
    }

    #[test]
    fn inbound_table() {
        use Inbound::*;
        use StanzaKind::*;
        // XEP-0191 §3.3: (kind, type, what happens).
        let table: &[(StanzaKind, Option<&str>, Inbound)] = &[
            (Message, Some("chat"), ServiceUnavailable),
            (Message, None, ServiceUnavailable),
            (Message, Some("headline"), ServiceUnavailable),
            (Message, Some("error"), Drop),
            (Presence, None, Drop),
            (Presence, Some("subscribe"), Drop),
            (Presence, Some("probe"), Drop),
            (Presence, Some("unavailable"), Drop),
            (Iq, Some("get"), ServiceUnavailable),
            (Iq, Some("set"), ServiceUnavailable),
            (Iq, Some("result"), Drop),
            (Iq, Some("error"), Drop),
        ];
        for (kind, type_, want) in table {
            assert_eq!(inbound(*kind, *type_), *want, "{kind:?} {type_:?}");
        }
    }

    #[test]
    fn request_table() {
        let read = |type_: &str, xml: &str| {
            let iq = el(&format!("<iq type='{type_}' id='1'>{xml}</iq>"));
            let node = Node::parse(&iq).unwrap();
            read_request(type_ == "get", &node.children[0])
        };
        use StanzaCondition::*;
        let b = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            read("get", "<blocklist xmlns='urn:xmpp:blocking'/>"),
            Some(Ok(Request::Get))
        );
        assert_eq!(
            read("set", "<block xmlns='urn:xmpp:blocking'><item jid='Bob@B.test'/><item jid='b.test'/><item jid='bob@b.test'/></block>"),
            Some(Ok(Request::Block(b(&["bob@b.test", "b.test"]))))
        );
        assert_eq!(
            read("set", "<block xmlns='urn:xmpp:blocking'/>"),
            Some(Err(BadRequest))
        );
        assert_eq!(
            read("set", "<block xmlns='urn:xmpp:blocking'><item/></block>"),
            Some(Err(BadRequest))
        );
        assert_eq!(
            read(
                "set",
                "<block xmlns='urn:xmpp:blocking'><item jid='a@@b'/></block>"
            ),
            Some(Err(JidMalformed))
        );
        assert_eq!(
            read("set", "<unblock xmlns='urn:xmpp:blocking'/>"),
            Some(Ok(Request::Unblock(vec![])))
        );
        assert_eq!(
            read(
                "set",
                "<unblock xmlns='urn:xmpp:blocking'><item jid='bob@b.test'/></unblock>"
            ),
            Some(Ok(Request::Unblock(b(&["bob@b.test"]))))
        );
        assert_eq!(
            read("set", "<blocklist xmlns='urn:xmpp:blocking'/>"),
            Some(Err(BadRequest))
        );
        assert_eq!(
            read(
                "get",
                "<block xmlns='urn:xmpp:blocking'><item jid='b.test'/></block>"
            ),
            Some(Err(BadRequest))
        );
        assert_eq!(read("get", "<blocklist xmlns='urn:example'/>"), None);
        let many: String = (0..=MAX_ITEMS)
            .map(|i| format!("<item jid='u{i}@b.test'/>"))
            .collect();
        assert_eq!(
            read(
                "set",
                &format!("<block xmlns='urn:xmpp:blocking'>{many}</block>")
            ),
            Some(Err(PolicyViolation))
        );
    }

    #[test]
    fn answers_and_pushes() {
        let get =
            el("<iq type='get' from='a@x/r' id='g'><blocklist xmlns='urn:xmpp:blocking'/></iq>");
        let r = blocklist_result(&get, ["bob@b.test", "c'.test"]);
        assert_eq!(
            r.as_str(),
            "<iq type='result' to='a@x/r' id='g'><blocklist xmlns='urn:xmpp:blocking'>\
             <item jid='bob@b.test'/><item jid='c&apos;.test'/></blocklist></iq>"
        );
        assert_eq!(parse_stanza(r.bytes()).unwrap(), r);
        let p = push("a@x/r2", "p1", &Request::Unblock(vec![]));
        assert_eq!(
            p.as_str(),
            "<iq type='set' to='a@x/r2' id='p1'><unblock xmlns='urn:xmpp:blocking'></unblock></iq>"
        );
        let m = el(
            "<message from='a@x/r' to='bob@b.test' id='m1' type='chat'><body>x</body></message>",
        );
        let e = blocked_error(&m).unwrap();
        assert_eq!(
            e.as_str(),
            "<message to='a@x/r' id='m1' type='error'><error type='cancel'>\
             <not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <blocked xmlns='urn:xmpp:blocking:errors'/></error></message>"
        );
        assert_eq!(
            crate::stanza::error_condition(&e),
            Some(StanzaCondition::NotAcceptable)
        );
        assert_eq!(blocked_error(&e), None);
    }
}
