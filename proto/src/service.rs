//! What the server itself answers: stanzas addressed to a local domain (the server's own
//! entity, RFC 6120 §10.5.1 / §10.3) and to local users with no session to deliver to
//! (RFC 6121 §8.5.2.2, no offline storage).
//!
//! Pure: the runtime hands in a received stanza and routes whatever [`Element`] comes
//! back (built directly with [`ElementBuilder`], not framed again). The server's own
//! entity answers XEP-0199 pings and XEP-0030 `disco#info`; `iq` results and errors
//! addressed to it are answers to requests it sent (pings from `fedrouter ping`, built
//! with [`ping`]), which the runtime matches by `id`.

use crate::condition::StanzaCondition;
use crate::stanza::{error_reply, is_error, StanzaKind};
use crate::xml::tree::Node;
use crate::xml::{escape_attr_into, Element, ElementBuilder};

/// `urn:xmpp:ping` (XEP-0199).
pub const NS_PING: &str = "urn:xmpp:ping";
/// `http://jabber.org/protocol/disco#info` (XEP-0030).
pub const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";

/// Features the server advertises in `disco#info` (XEP-0030 §3.1).
pub const SERVER_FEATURES: &[&str] = &[NS_DISCO_INFO, NS_PING];

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

/// The first child element of `el`, read with the project's tree ([`Node::parse`]): its
/// local name and resolved namespace, however the child is prefixed or quoted. The
/// server's own `iq`s are rare, so building the small tree is no hot-path cost.
fn first_child(el: &Element) -> Option<Node> {
    Node::parse(el).ok()?.children.into_iter().next()
}

/// `<iq type='result' from='(el's to)' to='(el's from)' id='(el's id)'`, the start of
/// the result to the `iq` `el` (RFC 6120 §8.2.3), with room for `capacity` bytes.
fn result_to(el: &Element, capacity: usize) -> ElementBuilder {
    ElementBuilder::with_capacity("iq", capacity)
        .attr("type", "result")
        .raw_attr_opt("from", el.to())
        .raw_attr_opt("to", el.from())
        .raw_attr_opt("id", el.id())
}

/// Answers a stanza addressed to one of our domains (bare domain JID, no resource).
///
/// - `iq get` with XEP-0199 `<ping/>`: an empty result (XEP-0199 §4.2, §4.3).
/// - `iq get` with XEP-0030 `disco#info`: identity `server/im` and [`SERVER_FEATURES`].
/// - other `iq get`/`set`: `service-unavailable` (RFC 6120 §8.4).
/// - `iq result`/`error`: [`Answer::Response`].
/// - `message` (not `error`): `service-unavailable`; `presence`: ignored.
pub fn answer_server(el: &Element, kind: StanzaKind) -> Answer {
    match kind {
        StanzaKind::Iq => match el.type_() {
            Some("get") => match first_child(el)
                .as_ref()
                .map(|c| (c.name.as_str(), c.ns.as_str()))
            {
                Some(("ping", NS_PING)) => Answer::Reply(result_to(el, 96).finish()),
                Some(("query", NS_DISCO_INFO)) => Answer::Reply(
                    result_to(el, 320)
                        .child_with(|out| {
                            out.extend_from_slice(b"<query xmlns='");
                            out.extend_from_slice(NS_DISCO_INFO.as_bytes());
                            out.extend_from_slice(b"'><identity category='server' type='im'/>");
                            for f in SERVER_FEATURES {
                                out.extend_from_slice(b"<feature var='");
                                out.extend_from_slice(f.as_bytes());
                                out.extend_from_slice(b"'/>");
                            }
                            out.extend_from_slice(b"</query>");
                        })
                        .finish(),
                ),
                _ => reply_error(el, StanzaCondition::ServiceUnavailable),
            },
            Some("set") => reply_error(el, StanzaCondition::ServiceUnavailable),
            Some("result") => Answer::Response {
                id: el.id().unwrap_or_default().to_owned(),
                error: None,
            },
            Some("error") => Answer::Response {
                id: el.id().unwrap_or_default().to_owned(),
                error: Some(crate::stanza::error_condition(el)),
            },
            // RFC 6120 §8.2.3: an iq without a valid type is a bad request.
            _ => reply_error(el, StanzaCondition::BadRequest),
        },
        StanzaKind::Message if !is_error(el) => {
            reply_error(el, StanzaCondition::ServiceUnavailable)
        }
        _ => Answer::Ignore,
    }
}

/// Answers a stanza for a local user who has no session to deliver it to (RFC 6121
/// §8.5.2.2 with no offline storage; §8.5.2.2.3 for iq): `message` of type `normal`,
/// `chat` or `groupchat` and `iq get`/`set` get `service-unavailable`; `headline`
/// messages, `presence` and error stanzas are ignored.
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
        assert!(first_child(&e).is_none());
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
        let e = el("<iq type='get' from='b.test' to='a.test' id='v'><query xmlns='jabber:iq:version'/></iq>");
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
             <feature var='urn:xmpp:ping'/></query></iq>"
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
        let child = first_child(&e).unwrap();
        assert_eq!((child.name.as_str(), child.ns.as_str()), ("ping", NS_PING));
        assert_eq!(e.to(), Some("b&amp;c.test"));
    }
}
