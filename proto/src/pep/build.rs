//! The stanzas PEP sends: `iq` results and errors to pubsub requests, `headline`
//! notifications (XEP-0060 §7.1.2.1, §7.2.2.1) and the XEP-0115 `disco#info` query the
//! server sends on an account's behalf (XEP-0163 §4.3.4).
//!
//! Answers are addressed from the request's `to` to its `from` (raw, escaped values);
//! item payloads are serialised XML, written as they are.

use super::request::{PepError, PubsubError};
use super::{NS_PUBSUB, NS_PUBSUB_ERRORS, NS_PUBSUB_EVENT};
use crate::service::NS_DISCO_INFO;
use crate::xml::{escape_attr_into, ns, Element, ElementBuilder};

fn result_to(el: &Element, capacity: usize) -> ElementBuilder {
    ElementBuilder::with_capacity("iq", capacity)
        .attr("type", "result")
        .raw_attr_opt("from", el.to())
        .raw_attr_opt("to", el.from())
        .raw_attr_opt("id", el.id())
}

/// `<iq type='result'/>` to the request `el`: a retract (XEP-0060 §7.2.2).
pub fn empty_result(el: &Element) -> Element {
    result_to(el, 96).finish()
}

/// The result of a publish (XEP-0060 §7.1.2): `<pubsub><publish node><item id/>`.
pub fn publish_result(el: &Element, node: &str, id: &str) -> Element {
    result_to(el, 160 + node.len() + id.len())
        .child_with(|out| {
            out.extend_from_slice(b"<pubsub xmlns='");
            out.extend_from_slice(NS_PUBSUB.as_bytes());
            out.extend_from_slice(b"'><publish node='");
            escape_attr_into(node, out);
            out.extend_from_slice(b"'><item id='");
            escape_attr_into(id, out);
            out.extend_from_slice(b"'/></publish></pubsub>");
        })
        .finish()
}

fn write_items(node: &str, items: &[(&str, &str)], out: &mut Vec<u8>) {
    out.extend_from_slice(b"<items node='");
    escape_attr_into(node, out);
    out.extend_from_slice(b"'>");
    for (id, payload) in items {
        out.extend_from_slice(b"<item id='");
        escape_attr_into(id, out);
        out.extend_from_slice(b"'>");
        out.extend_from_slice(payload.as_bytes());
        out.extend_from_slice(b"</item>");
    }
    out.extend_from_slice(b"</items>");
}

/// The result of an items retrieval (XEP-0060 §6.5.2): `<pubsub><items node><item
/// id>payload</item>…`.
pub fn items_result(el: &Element, node: &str, items: &[(&str, &str)]) -> Element {
    let size: usize = items.iter().map(|(i, p)| i.len() + p.len() + 24).sum();
    result_to(el, 160 + node.len() + size)
        .child_with(|out| {
            out.extend_from_slice(b"<pubsub xmlns='");
            out.extend_from_slice(NS_PUBSUB.as_bytes());
            out.extend_from_slice(b"'>");
            write_items(node, items, out);
            out.extend_from_slice(b"</pubsub>");
        })
        .finish()
}

/// The error reply to `el` (RFC 6120 §8.3) with the XEP-0060 §14.2 application
/// condition of `e`: `<error type><condition/><unsupported xmlns='…#errors'
/// feature='…'/></error>`.
pub fn pep_error(el: &Element, e: PepError) -> Element {
    ElementBuilder::with_capacity(el.name(), 320)
        .raw_attr_opt("from", el.to())
        .raw_attr_opt("to", el.from())
        .raw_attr_opt("id", el.id())
        .attr("type", "error")
        .child_with(|out| {
            out.extend_from_slice(b"<error type='");
            out.extend_from_slice(e.condition.default_type().as_bytes());
            out.extend_from_slice(b"'><");
            out.extend_from_slice(e.condition.as_str().as_bytes());
            out.extend_from_slice(b" xmlns='");
            out.extend_from_slice(ns::STANZA_ERRORS.as_bytes());
            out.extend_from_slice(b"'/>");
            if let Some(p) = e.pubsub {
                out.push(b'<');
                out.extend_from_slice(p.name().as_bytes());
                out.extend_from_slice(b" xmlns='");
                out.extend_from_slice(NS_PUBSUB_ERRORS.as_bytes());
                out.push(b'\'');
                if let PubsubError::Unsupported(f) = p {
                    out.extend_from_slice(b" feature='");
                    out.extend_from_slice(f.as_bytes());
                    out.push(b'\'');
                }
                out.extend_from_slice(b"/>");
            }
            out.extend_from_slice(b"</error>");
        })
        .finish()
}

/// A notification (XEP-0060 §7.1.2.1, XEP-0163 §4.3) from the account `from` (bare JID,
/// unescaped), without `to` (each recipient's is added when sent): `<message from
/// type='headline'><event xmlns='…#event'><items node><item id>payload</item></items>
/// </event></message>`.
pub fn notification(from: &str, node: &str, id: &str, payload: &str) -> Element {
    ElementBuilder::with_capacity(
        "message",
        160 + from.len() + node.len() + id.len() + payload.len(),
    )
    .attr("from", from)
    .attr("type", "headline")
    .child_with(|out| {
        out.extend_from_slice(b"<event xmlns='");
        out.extend_from_slice(NS_PUBSUB_EVENT.as_bytes());
        out.extend_from_slice(b"'>");
        write_items(node, &[(id, payload)], out);
        out.extend_from_slice(b"</event>");
    })
    .finish()
}

/// A retraction notification (XEP-0060 §7.2.2.1), without `to`: `<message from
/// type='headline'><event><items node><retract id/></items></event></message>`.
pub fn retract_notification(from: &str, node: &str, id: &str) -> Element {
    ElementBuilder::with_capacity("message", 160 + from.len() + node.len() + id.len())
        .attr("from", from)
        .attr("type", "headline")
        .child_with(|out| {
            out.extend_from_slice(b"<event xmlns='");
            out.extend_from_slice(NS_PUBSUB_EVENT.as_bytes());
            out.extend_from_slice(b"'><items node='");
            escape_attr_into(node, out);
            out.extend_from_slice(b"'><retract id='");
            escape_attr_into(id, out);
            out.extend_from_slice(b"'/></items></event>");
        })
        .finish()
}

/// The XEP-0115 §6.2 query for a capabilities set the server does not know yet, sent on
/// the account's behalf (XEP-0163 §4.3.4): `<iq type='get' from='account' to='contact's
/// full JID' id><query xmlns='…disco#info' node='node#ver'/></iq>` (unescaped values).
pub fn caps_query(from: &str, to: &str, id: &str, node_ver: &str) -> Element {
    ElementBuilder::with_capacity(
        "iq",
        160 + from.len() + to.len() + id.len() + node_ver.len(),
    )
    .attr("type", "get")
    .attr("from", from)
    .attr("to", to)
    .attr("id", id)
    .child_with(|out| {
        out.extend_from_slice(b"<query xmlns='");
        out.extend_from_slice(NS_DISCO_INFO.as_bytes());
        out.extend_from_slice(b"' node='");
        escape_attr_into(node_ver, out);
        out.extend_from_slice(b"'/>");
    })
    .finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::condition::StanzaCondition;
    use crate::xml::parse_stanza;

    fn framed(e: &Element) {
        assert_eq!(&parse_stanza(e.bytes()).unwrap(), e);
    }

    #[test]
    fn notification_shape() {
        let n = notification(
            "alice@a.test",
            "http://jabber.org/protocol/mood",
            "current",
            "<mood xmlns='http://jabber.org/protocol/mood'><happy/></mood>",
        );
        framed(&n);
        assert_eq!(
            n.as_str(),
            "<message from='alice@a.test' type='headline'>\
             <event xmlns='http://jabber.org/protocol/pubsub#event'>\
             <items node='http://jabber.org/protocol/mood'><item id='current'>\
             <mood xmlns='http://jabber.org/protocol/mood'><happy/></mood></item></items>\
             </event></message>"
        );
        assert!(!n.has_to_attribute());
        let r = retract_notification("alice@a.test", "n&", "i'");
        framed(&r);
        assert!(r
            .as_str()
            .contains("<items node='n&amp;'><retract id='i&apos;'/>"));
    }

    #[test]
    fn answers_shape() {
        let req = parse_stanza(b"<iq type='get' from='bob@a.test/r' to='alice@a.test' id='q1'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='n'/></pubsub></iq>").unwrap();
        let r = items_result(&req, "n", &[("a", "<x xmlns='y'/>")]);
        framed(&r);
        assert_eq!(
            r.as_str(),
            "<iq type='result' from='alice@a.test' to='bob@a.test/r' id='q1'>\
             <pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='n'>\
             <item id='a'><x xmlns='y'/></item></items></pubsub></iq>"
        );
        let e = pep_error(&req, PepError::unsupported("create-nodes"));
        framed(&e);
        assert_eq!(
            crate::stanza::error_condition(&e),
            Some(StanzaCondition::FeatureNotImplemented)
        );
        assert!(e.as_str().contains(
            "<unsupported xmlns='http://jabber.org/protocol/pubsub#errors' feature='create-nodes'/>"
        ));
        framed(&publish_result(&req, "n", "i"));
        framed(&empty_result(&req));
        let q = caps_query("alice@a.test", "bob@b.test/phone", "c1", "https://x#ver=");
        framed(&q);
        assert!(q.as_str().contains("node='https://x#ver='"));
    }
}
