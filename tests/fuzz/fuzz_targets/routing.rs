//! Fuzz target for the routing view of a stanza (`fedrouter_proto::stanza`,
//! `fedrouter_proto::xml::Element`'s `to`/`from`/`type`/`id`, RFC 6120 §8) and the
//! stanzas built from it (error replies §8.3, readdressing, generated presence).
//!
//! Input: `[flags, stanza bytes...]`. The stanza bytes are framed with `parse_stanza`
//! (as if received on a `jabber:server` stream). `flags` picks the error condition of
//! the reply (`flags % 19`) and whether the reply gets a `text` and a `by`. Two short
//! strings for readdressing and generated presence come from the element's own
//! attributes and text, so the fuzzer controls them through the stanza.
//!
//! Invariants (the target panics when one fails), for every element the framer accepts:
//!
//! - the full parser (`xml::tree::Node`, quick-xml) parses it too, and the routing view
//!   agrees with it: the unescaped `to`, `from`, `type` and `id`, the name, the inner
//!   text of a childless element;
//! - `StanzaKind::of` is `message`/`presence`/`iq` in a stanza namespace, else `None`;
//!   `is_error` is `type == "error"`;
//! - the error reply (`error_reply` and `write_error_reply`, the same bytes) frames
//!   again, has the same name, `to` and `from` swapped, the same `id`, `type='error'`,
//!   and `error_condition` reads back the condition;
//! - `error_condition` of the element names the condition the full parser finds in its
//!   `<error/>` child (when there is one);
//! - `write_readdressed` gives an element that frames again, with the new `to`/`from`
//!   (or the old ones when not replaced) and the same inner bytes;
//! - a generated `presence(from, to, type)` frames again and reads back its values.

#![no_main]

use fedrouter_proto::condition::StanzaCondition;
use fedrouter_proto::stanza::{
    error_condition, error_reply, is_error, presence, write_error_reply, StanzaKind,
};
use fedrouter_proto::xml::tree::Node;
use fedrouter_proto::xml::writer::write_readdressed;
use fedrouter_proto::xml::{ns, parse_stanza, unescape, Element};
use libfuzzer_sys::fuzz_target;

fn un(raw: Option<&str>) -> Option<String> {
    raw.map(|r| {
        unescape(r)
            .unwrap_or_else(|e| panic!("framed attribute {r:?} does not unescape: {e}"))
            .into_owned()
    })
}

fn check_view(el: &Element, node: &Node) {
    assert_eq!(el.name(), node.name, "name");
    assert_eq!(un(el.to()).as_deref(), node.attr("to"), "to");
    assert_eq!(un(el.from()).as_deref(), node.attr("from"), "from");
    assert_eq!(un(el.type_()).as_deref(), node.attr("type"), "type");
    assert_eq!(un(el.id()).as_deref(), node.attr("id"), "id");
    assert_eq!(
        el.has_to_attribute(),
        node.attr("to").is_some(),
        "has_to_attribute"
    );
    if node.children.is_empty() && !el.text().contains("<![CDATA[") {
        assert_eq!(
            unescape(el.text()).ok().as_deref(),
            Some(node.text.as_str()),
            "text"
        );
    }
    let kind = match el.name() {
        "message" => Some(StanzaKind::Message),
        "presence" => Some(StanzaKind::Presence),
        "iq" => Some(StanzaKind::Iq),
        _ => None,
    }
    .filter(|_| el.namespace().is_stanza_ns());
    assert_eq!(StanzaKind::of(el), kind, "kind");
    assert_eq!(is_error(el), node.attr("type") == Some("error"));
}

/// The condition the full parser finds: the first child of the first `<error/>` child
/// that is in the stanza-errors namespace and not `<text/>`.
fn condition_in_tree(node: &Node) -> Option<StanzaCondition> {
    let error = node.children.iter().find(|c| c.name == "error")?;
    let c = error
        .children
        .iter()
        .find(|c| c.ns == ns::STANZA_ERRORS && c.name != "text")?;
    StanzaCondition::from_name(&c.name)
}

fn check_reply(el: &Element, condition: StanzaCondition, text: Option<&str>, by: Option<&str>) {
    let reply = error_reply(el, condition, text, by);
    let mut written = Vec::new();
    write_error_reply(el, condition, text, by, &mut written);
    assert_eq!(
        &reply.bytes()[..],
        &written[..],
        "error_reply and write_error_reply differ"
    );
    let framed = parse_stanza(&written)
        .unwrap_or_else(|e| panic!("error reply does not frame: {e}: {}", reply.as_str()));
    assert_eq!(&framed.bytes()[..], &reply.bytes()[..]);
    for r in [&reply, &framed] {
        assert_eq!(r.name(), el.name());
        assert_eq!(un(r.to()), un(el.from()), "reply to");
        assert_eq!(un(r.from()), un(el.to()), "reply from");
        assert_eq!(un(r.id()), un(el.id()), "reply id");
        assert_eq!(r.type_(), Some("error"));
        assert_eq!(error_condition(r), Some(condition), "reply condition");
    }
    let node = Node::parse(&framed).expect("reply parses");
    assert_eq!(condition_in_tree(&node), Some(condition));
    let err = node.child("error", "").expect("an <error/> child");
    assert_eq!(err.attr("type"), Some(condition.default_type()));
    assert_eq!(err.attr("by"), by);
    let t = err
        .child("text", ns::STANZA_ERRORS)
        .map(|t| t.text.as_str());
    assert_eq!(t, text);
}

fn check_readdressed(el: &Element, to: Option<&str>, from: Option<&str>) {
    let mut out = Vec::new();
    write_readdressed(el, to, from, &mut out);
    let r = parse_stanza(&out).unwrap_or_else(|e| {
        panic!(
            "readdressed element does not frame: {e}: {}",
            String::from_utf8_lossy(&out)
        )
    });
    assert_eq!(r.name(), el.name());
    assert_eq!(
        un(r.to()),
        to.map(str::to_owned).or_else(|| un(el.to())),
        "new to"
    );
    assert_eq!(
        un(r.from()),
        from.map(str::to_owned).or_else(|| un(el.from())),
        "new from"
    );
    assert_eq!(un(r.id()), un(el.id()));
    assert_eq!(r.inner(), el.inner(), "inner bytes");
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let Ok(el) = parse_stanza(body) else {
        return;
    };
    let node = Node::parse(&el)
        .unwrap_or_else(|e| panic!("framed element does not parse: {e}: {}", el.as_str()));
    check_view(&el, &node);
    if let Some(c) = condition_in_tree(&node) {
        assert_eq!(error_condition(&el), Some(c), "error_condition");
    }

    // Strings the fuzzer controls through the stanza: its `id` and its text.
    let id = un(el.id());
    let text_owned = node.text.clone();
    let a = id.as_deref().unwrap_or("a@b.example/r");
    let b = if node.text.is_empty() {
        "c.example"
    } else {
        text_owned.as_str()
    };
    let condition = StanzaCondition::ALL[usize::from(flags) % StanzaCondition::ALL.len()];
    let text = (flags & 0x20 != 0).then_some(b);
    let by = (flags & 0x40 != 0).then_some(a);
    check_reply(&el, condition, text, by);
    let to = (flags & 0x80 != 0).then_some(a);
    let from = (flags & 0x10 != 0).then_some(b);
    check_readdressed(&el, to, from);

    let type_ = (flags & 0x08 != 0).then_some(b);
    let p = presence(a, b, type_);
    let framed = parse_stanza(&p.bytes()[..]).expect("generated presence frames");
    assert_eq!(&framed.bytes()[..], &p.bytes()[..]);
    for x in [&p, &framed] {
        assert_eq!(un(x.from()).as_deref(), Some(a));
        assert_eq!(un(x.to()).as_deref(), Some(b));
        assert_eq!(un(x.type_()).as_deref(), type_);
        assert_eq!(StanzaKind::of(x), Some(StanzaKind::Presence));
    }
});
