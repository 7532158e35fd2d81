//! What the server itself answers: stanzas addressed to a local domain (the server's own
//! entity, RFC 6120 §10.5.1 / §10.3), `iq` requests to a local account's bare JID, which
//! the server answers on the account's behalf (RFC 6121 §8.5.1, RFC 6120 §10.3.3), and
//! stanzas for local users with no session to deliver to (RFC 6121 §8.5.2.2; messages
//! are stored offline, XEP-0160, by the runtime).
//!
//! Pure: the runtime hands in a received stanza and routes whatever [`Element`] comes
//! back (built directly with [`ElementBuilder`], not framed again). The server's own
//! entity answers XEP-0199 pings, XEP-0092 software version ([`crate::version`]) and
//! XEP-0030 `disco#info` and `disco#items`, listing in [`SERVER_FEATURES`] exactly what
//! the server implements (carbons, blocking and password change are the runtime's, for
//! the user's own sessions: [`crate::carbons`], [`crate::blocking`],
//! [`crate::register`]); an account
//! answers XEP-0030 `disco#info` ([`ACCOUNT_IDENTITIES`], [`ACCOUNT_FEATURES`])
//! and `disco#items` (no items). An `iq` request holds exactly one payload element (RFC
//! 6120 §8.2.3, [`read_iq`]): one with none or several is a `bad-request`. `iq` results
//! and errors addressed to the server are answers to requests it sent (pings from
//! `fedrouter ping`, built with [`ping`]), which the runtime matches by `id`.

use crate::condition::StanzaCondition;
use crate::register::NS_REGISTER;
use crate::stanza::{error_reply, is_error, StanzaKind};
pub use crate::version::Software;
use crate::version::NS_VERSION;
use crate::xml::tree::Node;
use crate::xml::{escape_attr_into, Element, ElementBuilder, StanzaArena};

/// `urn:xmpp:ping` (XEP-0199).
pub const NS_PING: &str = "urn:xmpp:ping";
/// `http://jabber.org/protocol/disco#info` (XEP-0030).
pub const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
/// `http://jabber.org/protocol/disco#items` (XEP-0030).
pub const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";

/// Features the server advertises in `disco#info` (XEP-0030 §3.1): disco, XEP-0199
/// ping, XEP-0092 version, XEP-0280 carbons, XEP-0191 blocking and XEP-0077 (password
/// change only: registering new accounts is refused with `not-allowed`).
///
/// `msgoffline`: messages to a user with no available resource are stored and delivered
/// later (XEP-0160 §4; [`crate::offline`]).
pub const SERVER_FEATURES: &[&str] = &[
    NS_DISCO_INFO,
    NS_DISCO_ITEMS,
    NS_PING,
    crate::version::NS_VERSION,
    crate::carbons::NS_CARBONS,
    crate::blocking::NS_BLOCKING,
    crate::register::NS_REGISTER,
    crate::offline::FEATURE_MSGOFFLINE,
];

/// Features a local account advertises in `disco#info` (XEP-0030 §3.1), answered by the
/// server on its behalf: only what the server implements for accounts (no carbons or
/// MAM), with PEP's [`crate::pep::PEP_FEATURES`] (XEP-0163 §6.1).
pub const ACCOUNT_FEATURES: &[&str] = &[
    NS_DISCO_INFO,
    NS_DISCO_ITEMS,
    // PEP (XEP-0163 §6.1): crate::pep::PEP_FEATURES.
    "http://jabber.org/protocol/pubsub#access-open",
    "http://jabber.org/protocol/pubsub#access-presence",
    "http://jabber.org/protocol/pubsub#auto-create",
    "http://jabber.org/protocol/pubsub#auto-subscribe",
    "http://jabber.org/protocol/pubsub#filtered-notifications",
    "http://jabber.org/protocol/pubsub#last-published",
    "http://jabber.org/protocol/pubsub#publish",
    "http://jabber.org/protocol/pubsub#publish-options",
    "http://jabber.org/protocol/pubsub#retract-items",
    "http://jabber.org/protocol/pubsub#retrieve-items",
];

/// The identities of a local account in `disco#info` (XEP-0030 §3.1): a registered
/// account, and a PEP service (XEP-0163 §6.1).
pub const ACCOUNT_IDENTITIES: &[(&str, &str)] = &[("account", "registered"), ("pubsub", "pep")];

/// An `iq` as RFC 6120 §8.2.3 reads it ([`read_iq`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Iq {
    /// `type='get'` with its one payload element.
    Get(Node),
    /// `type='set'` with its one payload element.
    Set(Node),
    /// `type='result'` or `type='error'`: an answer to a request.
    Response,
    /// A request (`get` or `set`) without exactly one payload element, or no valid
    /// `type`: to be answered with `bad-request`.
    BadRequest,
}

/// The payload of an `iq` request: its one child element (RFC 6120 §8.2.3: "An IQ
/// stanza of type "get" or "set" MUST contain exactly one child element"); `None`
/// when it has none or several.
pub fn request_payload(iq: &Node) -> Option<&Node> {
    match iq.children.as_slice() {
        [one] => Some(one),
        _ => None,
    }
}

/// Reads an `iq` (RFC 6120 §8.2.3): a request with its one payload
/// ([`request_payload`]), a response, or a bad request.
pub fn read_iq(el: &Element) -> Iq {
    match el.type_() {
        Some("result" | "error") => Iq::Response,
        Some(t @ ("get" | "set")) => {
            let Ok(mut node) = Node::parse(el) else {
                return Iq::BadRequest;
            };
            if request_payload(&node).is_none() {
                return Iq::BadRequest;
            }
            let payload = node.children.swap_remove(0);
            if t == "get" {
                Iq::Get(payload)
            } else {
                Iq::Set(payload)
            }
        }
        _ => Iq::BadRequest,
    }
}

/// Whether `el` is an `iq type='get'` whose whole content is a XEP-0199 ping written
/// the plain way: `<ping xmlns='urn:xmpp:ping'/>` (either quote, optional whitespace
/// before `/>` and around the element, or `></ping>` instead of `/>`). Any other
/// spelling (a prefix, more attributes, character references) is `false` and goes
/// through [`read_iq`], which resolves namespaces; so this only decides faster, never
/// differently. Allocates nothing.
fn is_plain_ping(el: &Element) -> bool {
    fn ws(b: &[u8]) -> &[u8] {
        let b = match b.iter().position(|c| !c.is_ascii_whitespace()) {
            Some(i) => &b[i..],
            None => &[],
        };
        match b.iter().rposition(|c| !c.is_ascii_whitespace()) {
            Some(i) => &b[..=i],
            None => b,
        }
    }
    if el.type_() != Some("get") || el.is_empty() {
        return false;
    }
    let inner = ws(el.inner());
    let Some(rest) = inner.strip_prefix(b"<ping xmlns=") else {
        return false;
    };
    let rest = match rest {
        [q @ (b'\'' | b'"'), tail @ ..] => match tail.strip_prefix(NS_PING.as_bytes()) {
            Some([c, tail @ ..]) if c == q => tail,
            _ => return false,
        },
        _ => return false,
    };
    matches!(ws(rest), b"/>") || rest == b"></ping>"
}

/// What to do with a stanza addressed to the server or to an unavailable local user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Route this stanza (addressed to the original sender; in the `jabber:server`
    /// default namespace, [`Namespace::Server`](crate::xml::Namespace::Server), as if
    /// framed by [`parse_stanza`](crate::xml::parse_stanza)).
    Reply(Element),
    /// An `iq` of type `result` or `error` for the server: the answer to a request of
    /// ours with this `id` (raw attribute value).
    Response {
        /// The `id` attribute as received.
        id: String,
        /// `None` for `result`, else the error condition (if recognised).
        error: Option<Option<StanzaCondition>>,
    },
    /// Nothing to send (RFC 6121 §8.5.2.2 says to ignore it, or it is an error stanza).
    Ignore,
}

/// `<iq type='result' from='(el's to)' to='(el's from)' id='(el's id)'`, the start of
/// the result to the `iq` `el` (RFC 6120 §8.2.3), with room for `capacity` bytes.
fn result_to(el: &Element, capacity: usize) -> ElementBuilder {
    result_in(el, ElementBuilder::with_capacity("iq", capacity))
}

/// [`result_to`] continuing `iq`, a builder of `<iq`.
fn result_in(el: &Element, iq: ElementBuilder) -> ElementBuilder {
    iq.attr("type", "result")
        .raw_attr_opt("from", el.to())
        .raw_attr_opt("to", el.from())
        .raw_attr_opt("id", el.id())
}

/// The length of the empty result [`result_to`] writes for `el` (`<iq type='result' …/>`)
/// when its `to`, `from` and `id` need no new escaping (the usual case): as the capacity,
/// it makes the reply's bytes exactly one allocation (a shorter buffer would cost
/// another when it becomes the element's `Bytes`). A value that must be re-escaped only
/// makes the buffer grow.
fn empty_result_len(el: &Element) -> usize {
    let attr = |name: &str, v: Option<&str>| v.map_or(0, |v| name.len() + v.len() + 4);
    "<iq type='result'".len()
        + attr("from", el.to())
        + attr("to", el.from())
        + attr("id", el.id())
        + "/>".len()
}

/// The answer to a XEP-0030 `disco#info` query `query` (§3.1): the `identities`
/// (category, type) and `features`. A query for a `node` gets `item-not-found` (§3.2:
/// no nodes here).
fn disco_info(
    el: &Element,
    query: &Node,
    identities: &[(&str, &str)],
    features: &[&str],
) -> Answer {
    if query.attr("node").is_some() {
        return reply_error(el, StanzaCondition::ItemNotFound);
    }
    let capacity = 200 + features.iter().map(|f| f.len() + 18).sum::<usize>();
    Answer::Reply(
        result_to(el, capacity)
            .child_with(|out| {
                out.extend_from_slice(b"<query xmlns='");
                out.extend_from_slice(NS_DISCO_INFO.as_bytes());
                out.extend_from_slice(b"'>");
                for (category, type_) in identities {
                    out.extend_from_slice(b"<identity category='");
                    out.extend_from_slice(category.as_bytes());
                    out.extend_from_slice(b"' type='");
                    out.extend_from_slice(type_.as_bytes());
                    out.extend_from_slice(b"'/>");
                }
                for f in features {
                    out.extend_from_slice(b"<feature var='");
                    out.extend_from_slice(f.as_bytes());
                    out.extend_from_slice(b"'/>");
                }
                out.extend_from_slice(b"</query>");
            })
            .finish(),
    )
}

/// The answer to a XEP-0030 `disco#items` query `query` (§4.1): no items, an empty
/// `<query/>`. A query for a `node` gets `item-not-found` (§4.2: no nodes here).
fn disco_items(el: &Element, query: &Node) -> Answer {
    if query.attr("node").is_some() {
        return reply_error(el, StanzaCondition::ItemNotFound);
    }
    Answer::Reply(
        result_to(el, 160)
            .child_raw("<query xmlns='http://jabber.org/protocol/disco#items'/>")
            .finish(),
    )
}

/// Answers a stanza addressed to one of our domains (bare domain JID, no resource).
///
/// - `iq get` with XEP-0199 `<ping/>`: an empty result (XEP-0199 §4.2, §4.3).
/// - `iq get` with XEP-0030 `disco#info`: identity `server/im` and [`SERVER_FEATURES`];
///   with `disco#items`: no items; with XEP-0092 `jabber:iq:version`: `software`
///   ([`crate::version::result`]).
/// - `iq get`/`set` with XEP-0077 `jabber:iq:register`: `not-allowed` (no registration
///   of new accounts; a user's own password change is the runtime's, before this).
/// - `iq get`/`set` without exactly one payload, or without a valid `type`:
///   `bad-request` (RFC 6120 §8.2.3, [`read_iq`]).
/// - other `iq get`/`set`: `service-unavailable` (RFC 6120 §8.4).
/// - `iq result`/`error`: [`Answer::Response`].
/// - `message` (not `error`): `service-unavailable`; `presence`: ignored.
pub fn answer_server(el: &Element, kind: StanzaKind, software: &Software) -> Answer {
    if kind == StanzaKind::Iq && is_plain_ping(el) {
        // The common case without building the tree (issue 20: no allocation but the
        // reply's own); the answer is the one the general path gives.
        return Answer::Reply(result_to(el, empty_result_len(el)).finish());
    }
    match kind {
        StanzaKind::Iq => match read_iq(el) {
            Iq::Get(p) => match (p.name.as_str(), p.ns.as_str()) {
                ("ping", NS_PING) => Answer::Reply(result_to(el, empty_result_len(el)).finish()),
                ("query", NS_DISCO_INFO) => {
                    disco_info(el, &p, &[("server", "im")], SERVER_FEATURES)
                }
                ("query", NS_DISCO_ITEMS) => disco_items(el, &p),
                ("query", NS_VERSION) => Answer::Reply(crate::version::result(el, software)),
                ("query", NS_REGISTER) => reply_error(el, StanzaCondition::NotAllowed),
                _ => reply_error(el, StanzaCondition::ServiceUnavailable),
            },
            Iq::Set(p) if (p.name.as_str(), p.ns.as_str()) == ("query", NS_REGISTER) => {
                reply_error(el, StanzaCondition::NotAllowed)
            }
            Iq::Set(_) => reply_error(el, StanzaCondition::ServiceUnavailable),
            Iq::Response if el.type_() == Some("error") => Answer::Response {
                id: el.id().unwrap_or_default().to_owned(),
                error: Some(crate::stanza::error_condition(el)),
            },
            Iq::Response => Answer::Response {
                id: el.id().unwrap_or_default().to_owned(),
                error: None,
            },
            Iq::BadRequest => reply_error(el, StanzaCondition::BadRequest),
        },
        StanzaKind::Message if !is_error(el) => {
            reply_error(el, StanzaCondition::ServiceUnavailable)
        }
        _ => Answer::Ignore,
    }
}

/// The answer to `el` when it is a XEP-0199 ping (§4.2, server to server; §4.3, client to
/// server) to the server written the plain way (`<ping xmlns='urn:xmpp:ping'/>` as the
/// whole content of an `iq type='get'`): the empty `iq type='result'` that
/// [`answer_server`] gives, built in `arena` (no allocation once it is warm). `None` for
/// anything else, which [`answer_server`] answers.
pub fn answer_plain_ping(el: &Element, arena: &mut StanzaArena) -> Option<Element> {
    if !is_plain_ping(el) || StanzaKind::of(el) != Some(StanzaKind::Iq) {
        return None;
    }
    Some(result_in(el, arena.builder("iq")).finish_in(arena))
}

/// Answers an `iq` addressed to a local account's bare JID, which the server handles on
/// the account's behalf (RFC 6121 §8.5.1, RFC 6120 §10.3.3), whoever sent it (the
/// account's own client, a contact, anyone). `exists`: whether the account exists.
///
/// - `iq result`/`error`: `None`, not answered (the delivery rules apply).
/// - `iq get`/`set` without exactly one payload, or without a valid `type`:
///   `bad-request` (RFC 6120 §8.2.3, [`read_iq`]).
/// - any request to an account that does not exist: `service-unavailable` (§8.5.1).
/// - `iq get` with XEP-0030 `disco#info`: [`ACCOUNT_IDENTITIES`] and
///   [`ACCOUNT_FEATURES`] (XEP-0030 §3.1); with `disco#items`: no items.
/// - other requests: `service-unavailable` (RFC 6120 §8.3.3.19; the roster and pings
///   from the account's own client, and PEP's `<pubsub/>` requests, are the runtime's,
///   before this).
pub fn answer_account(el: &Element, exists: bool) -> Option<Element> {
    let answer = match read_iq(el) {
        Iq::Response => return None,
        Iq::BadRequest => reply_error(el, StanzaCondition::BadRequest),
        _ if !exists => reply_error(el, StanzaCondition::ServiceUnavailable),
        Iq::Get(p) => match (p.name.as_str(), p.ns.as_str()) {
            ("query", NS_DISCO_INFO) => disco_info(el, &p, ACCOUNT_IDENTITIES, ACCOUNT_FEATURES),
            ("query", NS_DISCO_ITEMS) => disco_items(el, &p),
            _ => reply_error(el, StanzaCondition::ServiceUnavailable),
        },
        Iq::Set(_) => reply_error(el, StanzaCondition::ServiceUnavailable),
    };
    match answer {
        Answer::Reply(r) => Some(r),
        _ => None,
    }
}

/// Answers a stanza for a local user who has no session to deliver it to, when it is not
/// stored offline (RFC 6121 §8.5.2.2 option (b): offline storage off, full, or no such
/// user; §8.5.2.2.3 for iq): `message` of type `normal`, `chat` or `groupchat` and `iq
/// get`/`set` get `service-unavailable`; `headline` messages, `presence` and error
/// stanzas are ignored. (The runtime follows [`crate::presence::delivery::decide`] and
/// [`crate::offline`].)
pub fn answer_unavailable_user(el: &Element, kind: StanzaKind) -> Answer {
    if is_error(el) {
        return Answer::Ignore;
    }
    match kind {
        StanzaKind::Message if el.type_() == Some("headline") => Answer::Ignore,
        StanzaKind::Message => reply_error(el, StanzaCondition::ServiceUnavailable),
        StanzaKind::Iq if matches!(el.type_(), Some("get" | "set")) => {
            reply_error(el, StanzaCondition::ServiceUnavailable)
        }
        _ => Answer::Ignore,
    }
}

/// The error reply to `el` with condition `c` (RFC 6120 §8.3), no text, no `by`.
fn reply_error(el: &Element, c: StanzaCondition) -> Answer {
    Answer::Reply(error_reply(el, c, None, None))
}

/// Writes an XEP-0199 ping request (XEP-0199 §4.2) from the server `from` to `to` with
/// `id`: `<iq type='get' from='from' to='to' id='id'><ping xmlns='urn:xmpp:ping'/></iq>`
/// (values escaped here). [`ping`] builds the same bytes as an [`Element`].
pub fn write_ping(from: &str, to: &str, id: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<iq type='get' from='");
    escape_attr_into(from, out);
    out.extend_from_slice(b"' to='");
    escape_attr_into(to, out);
    out.extend_from_slice(b"' id='");
    escape_attr_into(id, out);
    out.extend_from_slice(b"'><ping xmlns='urn:xmpp:ping'/></iq>");
}

/// An XEP-0199 ping request (XEP-0199 §4.2) from the server `from` to `to` with `id`, as
/// an [`Element`] ready to route: the bytes of [`write_ping`], `<iq type='get'
/// from='from' to='to' id='id'><ping xmlns='urn:xmpp:ping'/></iq>`. The values are
/// unescaped text, escaped here; the element's spans are over the escaped values. The
/// answer comes back as [`Answer::Response`] with this `id` (escaped form).
pub fn ping(from: &str, to: &str, id: &str) -> Element {
    let capacity = 96 + from.len() + to.len() + id.len();
    ElementBuilder::with_capacity("iq", capacity)
        .attr("type", "get")
        .attr("from", from)
        .attr("to", to)
        .attr("id", id)
        .child_raw("<ping xmlns='urn:xmpp:ping'/>")
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::parse_stanza;

    fn el(s: &str) -> Element {
        parse_stanza(s.as_bytes()).unwrap()
    }

    fn sw() -> Software {
        Software {
            name: "fedrouter".into(),
            version: "9.8.7".into(),
            os: None,
        }
    }

    /// `answer_server` with [`sw`].
    fn answer_server(el: &Element, kind: StanzaKind) -> Answer {
        super::answer_server(el, kind, &sw())
    }

    /// The reply, checked to be what the framer makes of its bytes.
    fn reply(a: Answer) -> Element {
        match a {
            Answer::Reply(r) => {
                assert_eq!(parse_stanza(r.bytes()).unwrap(), r);
                r
            }
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn ping_is_answered_with_a_result() {
        let e = el(
            "<iq type='get' from='b.test' to='a.test' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>",
        );
        let r = reply(answer_server(&e, StanzaKind::Iq));
        assert_eq!(r.type_(), Some("result"));
        assert_eq!(
            (r.from(), r.to(), r.id()),
            (Some("a.test"), Some("b.test"), Some("p1"))
        );
        assert!(r.is_empty());
    }

    #[test]
    fn plain_pings_are_recognised_without_the_tree_and_answered_alike() {
        let cases = [
            ("<ping xmlns='urn:xmpp:ping'/>", true),
            ("<ping xmlns=\"urn:xmpp:ping\" />", true),
            ("\n <ping xmlns='urn:xmpp:ping'></ping> ", true),
            ("<ping xmlns='urn:xmpp:pingx'/>", false),
            (
                "<ping xmlns='urn:xmpp:ping'/><ping xmlns='urn:xmpp:ping'/>",
                false,
            ),
            ("<ping xmlns='urn:xmpp:ping' a='b'/>", false),
            ("<p:ping xmlns:p='urn:xmpp:ping'/>", false),
            ("<ping xmlns='urn:xmpp&#58;ping'/>", false),
        ];
        for (payload, plain) in cases {
            let e = el(&format!(
                "<iq type='get' from='b.test' to='a.test' id='p9'>{payload}</iq>"
            ));
            assert_eq!(is_plain_ping(&e), plain, "{payload}");
            // Either way, the answer is the general path's.
            let general = match read_iq(&e) {
                Iq::Get(p) if (p.name.as_str(), p.ns.as_str()) == ("ping", NS_PING) => {
                    Some(result_to(&e, empty_result_len(&e)).finish())
                }
                _ => None,
            };
            match answer_server(&e, StanzaKind::Iq) {
                Answer::Reply(r) if general.is_some() => assert_eq!(Some(r), general, "{payload}"),
                Answer::Reply(r) => assert!(!r.as_str().contains("type='result'"), "{payload}"),
                other => panic!("{payload}: {other:?}"),
            }
        }
        let e = el(
            "<iq type='get' from='b.test' to='a.test' id='p9'><ping xmlns='urn:xmpp:ping'/></iq>",
        );
        assert_eq!(
            result_to(&e, 0).finish().as_str().len(),
            empty_result_len(&e),
            "the exact size of a ping's result"
        );
        let set = el(
            "<iq type='set' from='b.test' to='a.test' id='s'><ping xmlns='urn:xmpp:ping'/></iq>",
        );
        assert!(!is_plain_ping(&set));
    }

    #[test]
    fn the_child_is_read_as_xml_not_as_text() {
        // A prefixed child, whitespace before it, and `xmlns=` inside an attribute
        // value: namespaces are resolved, not searched for.
        let e = el("<iq type='get' from='b.test' to='a.test' id='p2'>\n  \
            <p:ping xmlns:p='urn:xmpp:ping' note='xmlns=&apos;x&apos;'/></iq>");
        let r = reply(answer_server(&e, StanzaKind::Iq));
        assert_eq!(r.type_(), Some("result"));
        // The ping name in another namespace is not a ping.
        let e =
            el("<iq type='get' from='b.test' to='a.test' id='p3'><ping xmlns='urn:example'/></iq>");
        let r = reply(answer_server(&e, StanzaKind::Iq));
        assert!(r.as_str().contains("<service-unavailable"));
        // No child at all.
        let e = el("<iq type='get' from='b.test' to='a.test' id='p4'/>");
        assert_eq!(read_iq(&e), Iq::BadRequest);
    }

    #[test]
    fn disco_info_lists_identity_and_features() {
        let e = el("<iq type='get' from='u@b.test/r' to='a.test' id='d'><query xmlns=\"http://jabber.org/protocol/disco#info\"/></iq>");
        let r = reply(answer_server(&e, StanzaKind::Iq));
        assert!(r
            .as_str()
            .contains("<identity category='server' type='im'/>"));
        assert!(r.as_str().contains("urn:xmpp:ping"));
    }

    #[test]
    fn unknown_iq_and_messages_are_service_unavailable() {
        let e = el(
            "<iq type='get' from='b.test' to='a.test' id='v'><query xmlns='jabber:iq:last'/></iq>",
        );
        let r = reply(answer_server(&e, StanzaKind::Iq));
        assert!(r.as_str().contains("<service-unavailable"));
        let m = el("<message from='u@b.test' to='a.test'><body>x</body></message>");
        assert!(matches!(
            answer_server(&m, StanzaKind::Message),
            Answer::Reply(_)
        ));
        let p = el("<presence from='u@b.test' to='a.test'/>");
        assert_eq!(answer_server(&p, StanzaKind::Presence), Answer::Ignore);
    }

    #[test]
    fn responses_are_matched_by_id() {
        let ok = el("<iq type='result' from='b.test' to='a.test' id='p9'/>");
        assert_eq!(
            answer_server(&ok, StanzaKind::Iq),
            Answer::Response {
                id: "p9".into(),
                error: None
            }
        );
        let err = el("<iq type='error' from='b.test' to='a.test' id='p9'><error type='cancel'><remote-server-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>");
        assert_eq!(
            answer_server(&err, StanzaKind::Iq),
            Answer::Response {
                id: "p9".into(),
                error: Some(Some(StanzaCondition::RemoteServerNotFound))
            }
        );
    }

    #[test]
    fn unavailable_user_rules() {
        let chat = el(
            "<message type='chat' from='u@b.test/r' to='v@a.test' id='1'><body>x</body></message>",
        );
        let r = reply(answer_unavailable_user(&chat, StanzaKind::Message));
        assert_eq!(r.to(), Some("u@b.test/r"));
        let headline = el("<message type='headline' from='u@b.test' to='v@a.test'/>");
        assert_eq!(
            answer_unavailable_user(&headline, StanzaKind::Message),
            Answer::Ignore
        );
        let err = el("<message type='error' from='u@b.test' to='v@a.test'/>");
        assert_eq!(
            answer_unavailable_user(&err, StanzaKind::Message),
            Answer::Ignore
        );
        let pres = el("<presence from='u@b.test' to='v@a.test'/>");
        assert_eq!(
            answer_unavailable_user(&pres, StanzaKind::Presence),
            Answer::Ignore
        );
        let iq = el("<iq type='set' from='u@b.test/r' to='v@a.test' id='s'><x xmlns='y'/></iq>");
        assert!(matches!(
            answer_unavailable_user(&iq, StanzaKind::Iq),
            Answer::Reply(_)
        ));
    }

    #[test]
    fn server_answers_keep_their_bytes() {
        let e = el(
            "<iq type='get' from=\"u'1@b.test/r\" to='a.test' id='p&amp;5'>\
            <ping xmlns='urn:xmpp:ping'/></iq>",
        );
        let r = reply(answer_server(&e, StanzaKind::Iq));
        assert_eq!(
            r.as_str(),
            "<iq type='result' from='a.test' to='u&apos;1@b.test/r' id='p&amp;5'/>"
        );
        let e = el("<iq type='get' from='b.test' to='a.test' id='d1'>\
            <query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
        let r = reply(answer_server(&e, StanzaKind::Iq));
        assert_eq!(
            r.as_str(),
            "<iq type='result' from='a.test' to='b.test' id='d1'>\
             <query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity category='server' type='im'/>\
             <feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/disco#items'/>\
             <feature var='urn:xmpp:ping'/>\
             <feature var='jabber:iq:version'/>\
             <feature var='urn:xmpp:carbons:2'/>\
             <feature var='urn:xmpp:blocking'/>\
             <feature var='jabber:iq:register'/>\
             <feature var='msgoffline'/></query></iq>"
        );
        let e = el("<iq type='set' from='b.test' to='a.test' id='s1'><x xmlns='y'/></iq>");
        let r = reply(answer_server(&e, StanzaKind::Iq));
        let mut old = Vec::new();
        crate::stanza::write_error_reply(
            &e,
            StanzaCondition::ServiceUnavailable,
            None,
            None,
            &mut old,
        );
        assert_eq!(r.bytes().as_ref(), old.as_slice());
    }

    /// What an answer is, in short: `result`, the error condition, or `none`.
    fn outcome(r: Option<Element>) -> String {
        match r {
            None => "none".into(),
            Some(r) => {
                assert_eq!(parse_stanza(r.bytes()).unwrap(), r);
                match r.type_() {
                    Some("result") => "result".into(),
                    Some("error") => {
                        assert!(!r.as_str().contains("<text"), "no text: {}", r.as_str());
                        crate::stanza::error_condition(&r)
                            .map_or("unknown".into(), |c| c.as_str().to_owned())
                    }
                    t => panic!("reply of type {t:?}"),
                }
            }
        }
    }

    #[test]
    fn an_iq_request_has_exactly_one_payload() {
        // RFC 6120 §8.2.3, [`read_iq`]: (stanza, what it is).
        let table: &[(&str, &str)] = &[
            ("<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>", "get ping"),
            ("<iq type='set' id='1'><query xmlns='jabber:iq:roster'><item jid='a@b'/></query></iq>", "set query"),
            ("<iq type='get' id='1'>\n  <p:ping xmlns:p='urn:xmpp:ping'/>\n</iq>", "get ping"),
            ("<iq type='get' id='1'/>", "bad"),
            ("<iq type='set' id='1'></iq>", "bad"),
            ("<iq type='get' id='1'>  </iq>", "bad"),
            ("<iq type='get' id='1'>text</iq>", "bad"),
            ("<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/><x xmlns='y'/></iq>", "bad"),
            ("<iq type='set' id='1'><a xmlns='y'/><a xmlns='y'/></iq>", "bad"),
            ("<iq id='1'><ping xmlns='urn:xmpp:ping'/></iq>", "bad"),
            ("<iq type='GET' id='1'><ping xmlns='urn:xmpp:ping'/></iq>", "bad"),
            ("<iq type='result' id='1'/>", "response"),
            ("<iq type='result' id='1'><query xmlns='y'/></iq>", "response"),
            ("<iq type='error' id='1'><ping xmlns='urn:xmpp:ping'/><error type='cancel'/></iq>", "response"),
        ];
        for (xml, want) in table {
            let got = match read_iq(&el(xml)) {
                Iq::Get(p) => format!("get {}", p.name),
                Iq::Set(p) => format!("set {}", p.name),
                Iq::Response => "response".into(),
                Iq::BadRequest => "bad".into(),
            };
            assert_eq!(&got, want, "{xml}");
        }
        let two = Node::parse(&el("<iq type='get'><a xmlns='y'/><b xmlns='y'/></iq>")).unwrap();
        assert_eq!(request_payload(&two), None);
    }

    #[test]
    fn server_answers_table() {
        // (payload of an iq from b.test to a.test, type, outcome).
        let table: &[(&str, &str, &str)] = &[
            ("<ping xmlns='urn:xmpp:ping'/>", "get", "result"),
            (
                "<query xmlns='http://jabber.org/protocol/disco#info'/>",
                "get",
                "result",
            ),
            (
                "<query xmlns='http://jabber.org/protocol/disco#items'/>",
                "get",
                "result",
            ),
            (
                "<query xmlns='http://jabber.org/protocol/disco#items' node='x'/>",
                "get",
                "item-not-found",
            ),
            (
                "<query xmlns='http://jabber.org/protocol/disco#info' node='x'/>",
                "get",
                "item-not-found",
            ),
            ("", "get", "bad-request"),
            ("", "set", "bad-request"),
            (
                "<ping xmlns='urn:xmpp:ping'/><ping xmlns='urn:xmpp:ping'/>",
                "get",
                "bad-request",
            ),
            (
                "<query xmlns='http://jabber.org/protocol/disco#items'/>",
                "set",
                "service-unavailable",
            ),
            ("<query xmlns='jabber:iq:version'/>", "get", "result"),
            ("<query xmlns='jabber:iq:last'/>", "get", "service-unavailable"),
            (
                "<query xmlns='jabber:iq:register'/>",
                "get",
                "not-allowed",
            ),
            (
                "<query xmlns='jabber:iq:register'><username>u</username><password>p</password></query>",
                "set",
                "not-allowed",
            ),
            (
                "<enable xmlns='urn:xmpp:carbons:2'/>",
                "set",
                "service-unavailable",
            ),
            ("<ping xmlns='urn:xmpp:ping'/>", "nonsense", "bad-request"),
        ];
        for (payload, type_, want) in table {
            let e = el(&format!(
                "<iq type='{type_}' from='u@b.test/r' to='a.test' id='t'>{payload}</iq>"
            ));
            let got = match answer_server(&e, StanzaKind::Iq) {
                Answer::Reply(r) => outcome(Some(r)),
                other => panic!("{payload}: {other:?}"),
            };
            assert_eq!(&got, want, "{type_} {payload}");
        }
        let e = el("<iq type='get' from='u@b.test/r' to='a.test' id='i'>\
            <query xmlns='http://jabber.org/protocol/disco#items'/></iq>");
        let r = reply(answer_server(&e, StanzaKind::Iq));
        assert_eq!(
            r.as_str(),
            "<iq type='result' from='a.test' to='u@b.test/r' id='i'>\
             <query xmlns='http://jabber.org/protocol/disco#items'/></iq>"
        );
    }

    #[test]
    fn account_answers_table() {
        // (payload of an iq to v@a.test, type, the account exists, outcome).
        let table: &[(&str, &str, bool, &str)] = &[
            (
                "<query xmlns='http://jabber.org/protocol/disco#info'/>",
                "get",
                true,
                "result",
            ),
            (
                "<query xmlns='http://jabber.org/protocol/disco#items'/>",
                "get",
                true,
                "result",
            ),
            (
                "<query xmlns='http://jabber.org/protocol/disco#info' node='n'/>",
                "get",
                true,
                "item-not-found",
            ),
            (
                "<query xmlns='http://jabber.org/protocol/disco#info'/>",
                "get",
                false,
                "service-unavailable",
            ),
            (
                "<query xmlns='http://jabber.org/protocol/disco#items'/>",
                "get",
                false,
                "service-unavailable",
            ),
            (
                "<enable xmlns='urn:xmpp:carbons:2'/>",
                "set",
                true,
                "service-unavailable",
            ),
            (
                "<query xmlns='urn:xmpp:mam:2'/>",
                "set",
                true,
                "service-unavailable",
            ),
            (
                "<pubsub xmlns='http://jabber.org/protocol/pubsub'/>",
                "get",
                true,
                "service-unavailable",
            ),
            (
                "<query xmlns='http://jabber.org/protocol/disco#info'/>",
                "set",
                true,
                "service-unavailable",
            ),
            ("", "get", true, "bad-request"),
            ("", "set", true, "bad-request"),
            ("", "get", false, "bad-request"),
            ("<a xmlns='y'/><b xmlns='y'/>", "get", true, "bad-request"),
            (
                "<query xmlns='http://jabber.org/protocol/disco#info'/>",
                "",
                true,
                "bad-request",
            ),
            ("", "result", true, "none"),
            ("<query xmlns='y'/>", "result", false, "none"),
            ("<error type='cancel'/>", "error", true, "none"),
        ];
        for (payload, type_, exists, want) in table {
            let type_attr = if type_.is_empty() {
                String::new()
            } else {
                format!(" type='{type_}'")
            };
            let e = el(&format!(
                "<iq{type_attr} from='u@b.test/r' to='v@a.test' id='t'>{payload}</iq>"
            ));
            let got = outcome(answer_account(&e, *exists));
            assert_eq!(&got, want, "{type_} {payload} exists={exists}");
        }
        // From the account's own client (stamped, no `to`): the answer has no `from`.
        let e = el("<iq type='get' from='v@a.test/r' id='d'>\
            <query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
        let r = answer_account(&e, true).unwrap();
        assert_eq!(
            r.as_str(),
            "<iq type='result' to='v@a.test/r' id='d'>\
             <query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity category='account' type='registered'/>\
             <identity category='pubsub' type='pep'/>\
             <feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/disco#items'/>\
             <feature var='http://jabber.org/protocol/pubsub#access-open'/>\
             <feature var='http://jabber.org/protocol/pubsub#access-presence'/>\
             <feature var='http://jabber.org/protocol/pubsub#auto-create'/>\
             <feature var='http://jabber.org/protocol/pubsub#auto-subscribe'/>\
             <feature var='http://jabber.org/protocol/pubsub#filtered-notifications'/>\
             <feature var='http://jabber.org/protocol/pubsub#last-published'/>\
             <feature var='http://jabber.org/protocol/pubsub#publish'/>\
             <feature var='http://jabber.org/protocol/pubsub#publish-options'/>\
             <feature var='http://jabber.org/protocol/pubsub#retract-items'/>\
             <feature var='http://jabber.org/protocol/pubsub#retrieve-items'/></query></iq>"
        );
        for ns in ["urn:xmpp:carbons:2", "urn:xmpp:mam:2", "urn:xmpp:ping"] {
            assert!(!r.as_str().contains(ns), "{ns} is not served for accounts");
        }
    }

    #[test]
    fn account_features_are_pep_features() {
        assert_eq!(&ACCOUNT_FEATURES[2..], crate::pep::PEP_FEATURES);
    }

    #[test]
    fn ping_builds_the_bytes_of_write_ping() {
        let mut out = Vec::new();
        write_ping("a.test", "b&c.test", "x'1", &mut out);
        let p = ping("a.test", "b&c.test", "x'1");
        assert_eq!(p.bytes().as_ref(), out.as_slice());
        assert_eq!(parse_stanza(&out).unwrap(), p);
        assert_eq!(p.id(), Some("x&apos;1"));
    }

    #[test]
    fn ping_request_is_well_formed() {
        let mut out = Vec::new();
        write_ping("a.test", "b&c.test", "x'1", &mut out);
        let e = parse_stanza(&out).unwrap();
        let Iq::Get(child) = read_iq(&e) else {
            panic!("not a get: {e:?}")
        };
        assert_eq!((child.name.as_str(), child.ns.as_str()), ("ping", NS_PING));
        assert_eq!(e.to(), Some("b&amp;c.test"));
    }
}
