//! The routing view of a stanza (RFC 6120 §8): its kind, addresses, type and id, read
//! from an [`Element`] without copying; and the stanzas the server generates about
//! others' stanzas (error replies, §8.3) or for its users (presence, RFC 6121), built
//! directly as [`Element`]s with [`ElementBuilder`].

use crate::xml::{Element, ElementBuilder, StanzaArena};

/// The three stanza kinds of RFC 6120 §8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StanzaKind {
    /// `<message/>` (RFC 6121 §5).
    Message,
    /// `<presence/>` (RFC 6121 §4).
    Presence,
    /// `<iq/>` (RFC 6120 §8.2.3).
    Iq,
}

impl StanzaKind {
    /// The kind of `el` when it is a stanza in `jabber:server` or `jabber:client`;
    /// `None` for nonzas (features, dialback, SASL, TLS, stream management ...).
    pub fn of(el: &Element) -> Option<StanzaKind> {
        if !el.namespace().is_stanza_ns() {
            return None;
        }
        match el.name() {
            "message" => Some(StanzaKind::Message),
            "presence" => Some(StanzaKind::Presence),
            "iq" => Some(StanzaKind::Iq),
            _ => None,
        }
    }

    /// The element name.
    pub fn as_str(self) -> &'static str {
        match self {
            StanzaKind::Message => "message",
            StanzaKind::Presence => "presence",
            StanzaKind::Iq => "iq",
        }
    }
}

/// Whether a stanza is an error (`type='error'`): error stanzas are never answered or
/// bounced with another error (RFC 6120 §8.3.1). The attribute value is compared once
/// unescaped, so `type='&#101;rror'` is an error too (found by the `routing` fuzz target).
pub fn is_error(el: &Element) -> bool {
    match el.type_() {
        Some("error") => true,
        Some(raw) if raw.contains('&') => crate::xml::unescape(raw).is_ok_and(|t| t == "error"),
        _ => false,
    }
}

/// Appends the error reply to `el` (RFC 6120 §8.3): the same kind and `id`, `to` and
/// `from` swapped, `type='error'`, and an `<error/>` child with `condition` (in
/// `urn:ietf:params:xml:ns:xmpp-stanzas`), the condition's default error type
/// (§8.3.2) and an optional human-readable `text`. The original payload is not echoed
/// (§8.3.1 makes that optional).
///
/// `by`, when given, is written as the error's `by` attribute (§8.3.2: the entity that
/// generated the error, for example our own domain for `remote-server-not-found`).
/// Callers must not answer error stanzas ([`is_error`]); nothing checks that here.
///
/// Shape: `<kind from='(el's to)' to='(el's from)' id='(el's id)' type='error'><error
/// type='...' by='...'><condition xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text
/// xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>...</text></error></kind>`, absent
/// attributes and `text` left out. [`error_reply`] builds the same bytes as an
/// [`Element`].
pub fn write_error_reply(
    el: &Element,
    condition: crate::condition::StanzaCondition,
    text: Option<&str>,
    by: Option<&str>,
    out: &mut Vec<u8>,
) {
    use crate::xml::writer::write_raw_attr;
    let name = el.name();
    out.push(b'<');
    out.extend_from_slice(name.as_bytes());
    write_raw_attr("from", el.to(), out);
    write_raw_attr("to", el.from(), out);
    write_raw_attr("id", el.id(), out);
    out.extend_from_slice(b" type='error'>");
    write_error_child(condition, text, by, out);
    out.extend_from_slice(b"</");
    out.extend_from_slice(name.as_bytes());
    out.push(b'>');
}

/// The error reply to `el` as an [`Element`] ready to route (RFC 6120 §8.3): the same
/// bytes as [`write_error_reply`] writes (see there for the shape, `condition`, `text`
/// and `by`), built with [`ElementBuilder`] so that they are not framed again. The reply's
/// `to`, `from` and `id` are `el`'s raw (escaped) `from`, `to` and `id`, re-quoted with
/// `'` (a value from a `"`-quoted attribute may hold a literal `'`); its namespace is
/// [`Namespace::Server`](crate::xml::Namespace::Server), as for any stanza framed by
/// [`parse_stanza`](crate::xml::parse_stanza).
///
/// Callers must not answer error stanzas ([`is_error`]); nothing checks that here.
pub fn error_reply(
    el: &Element,
    condition: crate::condition::StanzaCondition,
    text: Option<&str>,
    by: Option<&str>,
) -> Element {
    let name = el.name();
    let attrs = [el.to(), el.from(), el.id(), text, by]
        .iter()
        .map(|v| v.map_or(0, str::len))
        .sum::<usize>();
    // Start and end tags, `type='error'`, the `<error>` and condition wrappers, and some
    // room for escaping.
    let capacity = 2 * name.len() + attrs + 224;
    error_reply_with(
        el,
        condition,
        text,
        by,
        ElementBuilder::with_capacity(name, capacity),
    )
    .finish()
}

/// [`error_reply`] built in `arena` ([`StanzaArena`]): the same bytes, without an
/// allocation per reply once the arena is warm (for replies made per received stanza,
/// such as refusals to an address without an account).
pub fn error_reply_in(
    el: &Element,
    condition: crate::condition::StanzaCondition,
    text: Option<&str>,
    by: Option<&str>,
    arena: &mut StanzaArena,
) -> Element {
    let builder = arena.builder(el.name());
    error_reply_with(el, condition, text, by, builder).finish_in(arena)
}

/// The attributes and the `<error/>` child of [`error_reply`], on `builder` (started with
/// `el`'s name).
fn error_reply_with(
    el: &Element,
    condition: crate::condition::StanzaCondition,
    text: Option<&str>,
    by: Option<&str>,
    builder: ElementBuilder,
) -> ElementBuilder {
    builder
        .raw_attr_opt("from", el.to())
        .raw_attr_opt("to", el.from())
        .raw_attr_opt("id", el.id())
        .attr("type", "error")
        .child_with(|out| write_error_child(condition, text, by, out))
}

/// Appends the `<error/>` child of an error reply (RFC 6120 §8.3.2).
fn write_error_child(
    condition: crate::condition::StanzaCondition,
    text: Option<&str>,
    by: Option<&str>,
    out: &mut Vec<u8>,
) {
    use crate::xml::{escape_attr_into, escape_text_into, ns};
    out.extend_from_slice(b"<error type='");
    out.extend_from_slice(condition.default_type().as_bytes());
    out.push(b'\'');
    if let Some(by) = by {
        out.extend_from_slice(b" by='");
        escape_attr_into(by, out);
        out.push(b'\'');
    }
    out.extend_from_slice(b"><");
    out.extend_from_slice(condition.as_str().as_bytes());
    out.extend_from_slice(b" xmlns='");
    out.extend_from_slice(ns::STANZA_ERRORS.as_bytes());
    out.extend_from_slice(b"'/>");
    if let Some(text) = text {
        out.extend_from_slice(b"<text xmlns='");
        out.extend_from_slice(ns::STANZA_ERRORS.as_bytes());
        out.extend_from_slice(b"'>");
        escape_text_into(text, out);
        out.extend_from_slice(b"</text>");
    }
    out.extend_from_slice(b"</error>");
}

/// A presence stanza the server generates (RFC 6121): `<presence from='from' to='to'
/// type='type_'/>`, `type` left out when `type_` is `None` (available presence). Used
/// for subscription answers and requests (`subscribe`, `subscribed`, `unsubscribed`,
/// §3), probes (`probe`, §4.3) and `unavailable` (§4.5). `from`, `to` and `type_` are
/// unescaped text, escaped here; the element's spans are over the escaped values, as for
/// a received stanza.
pub fn presence(from: &str, to: &str, type_: Option<&str>) -> Element {
    let capacity = 48 + from.len() + to.len() + type_.map_or(0, str::len);
    ElementBuilder::with_capacity("presence", capacity)
        .attr("from", from)
        .attr("to", to)
        .attr_opt("type", type_)
        .finish()
}

/// The stanza error condition carried by an error stanza, if it names a known one
/// (RFC 6120 §8.3.3). Reads the bytes without building a tree.
pub fn error_condition(el: &Element) -> Option<crate::condition::StanzaCondition> {
    use crate::condition::StanzaCondition;
    let inner = std::str::from_utf8(el.inner()).ok()?;
    let err = inner.find("<error")?;
    let rest = &inner[err..];
    let mut at = 0;
    while let Some(i) = rest[at..].find('<') {
        let start = at + i + 1;
        let end = rest[start..]
            .find([' ', '/', '>'])
            .map_or(rest.len(), |e| start + e);
        let name = &rest[start..end];
        if let Some(c) = StanzaCondition::from_name(name) {
            return Some(c);
        }
        at = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::condition::StanzaCondition;
    use crate::xml::parse_stanza;

    #[test]
    fn is_error_reads_the_unescaped_type() {
        for (stanza, error) in [
            (&b"<message type='error'/>"[..], true),
            (b"<message type='&#101;rror'/>", true),
            (b"<iq type='&#x65;&#x72;ror' id='1'/>", true),
            (b"<message type='chat'/>", false),
            (b"<message type='&amp;error'/>", false),
            (b"<message/>", false),
        ] {
            let el = parse_stanza(stanza).unwrap();
            assert_eq!(is_error(&el), error, "{}", el.as_str());
        }
    }

    #[test]
    fn error_reply_swaps_addresses_and_names_the_condition() {
        let el = parse_stanza(
            b"<message from='juliet@capulet.example/balcony' to='romeo@montague.example' \
              id='m&amp;1' type='chat'><body>hi</body></message>",
        )
        .unwrap();
        let mut out = Vec::new();
        write_error_reply(
            &el,
            StanzaCondition::RemoteServerNotFound,
            Some("no <SRV>"),
            Some("capulet.example"),
            &mut out,
        );
        let reply = parse_stanza(&out).unwrap();
        assert_eq!(reply.name(), "message");
        assert_eq!(reply.to(), Some("juliet@capulet.example/balcony"));
        assert_eq!(reply.from(), Some("romeo@montague.example"));
        assert_eq!(reply.id(), Some("m&amp;1"));
        assert!(is_error(&reply));
        assert_eq!(
            error_condition(&reply),
            Some(StanzaCondition::RemoteServerNotFound)
        );
        assert!(reply
            .as_str()
            .contains("<error type='cancel' by='capulet.example'>"));
        assert!(reply.as_str().contains("no &lt;SRV&gt;"));
    }

    #[test]
    fn error_reply_of_raw_escaped_addresses_round_trips() {
        // `from` escaped in single quotes, `to` holding a literal `'` in double quotes.
        let el = parse_stanza(
            b"<message from='a&apos;b@x' to=\"c'd@y/&#x72;\" id='i&lt;1' type='chat'>\
              <body>hi</body></message>",
        )
        .unwrap();
        let reply = error_reply(&el, StanzaCondition::ItemNotFound, Some("gone"), Some("y"));
        let mut old = Vec::new();
        write_error_reply(
            &el,
            StanzaCondition::ItemNotFound,
            Some("gone"),
            Some("y"),
            &mut old,
        );
        assert_eq!(reply.as_str(), String::from_utf8(old).unwrap());
        assert_eq!(parse_stanza(reply.bytes()).unwrap(), reply);
        assert_eq!(reply.to(), Some("a&apos;b@x"));
        assert_eq!(reply.from(), Some("c&apos;d@y/r"));
        assert_eq!(reply.id(), Some("i&lt;1"));
        assert_eq!(reply.type_(), Some("error"));
        assert_eq!(error_condition(&reply), Some(StanzaCondition::ItemNotFound));
        // Swapped back, the addresses are the original ones (re-quoted with `'`).
        let back = error_reply(&reply, StanzaCondition::ItemNotFound, None, None);
        assert_eq!(parse_stanza(back.bytes()).unwrap(), back);
        assert_eq!(
            (back.from(), back.to(), back.id()),
            (Some("a&apos;b@x"), Some("c&apos;d@y/r"), Some("i&lt;1"))
        );
        assert_eq!(crate::xml::unescape(back.to().unwrap()).unwrap(), "c'd@y/r");
        // Built in an arena: the same element, again and again (the arena reuses its
        // buffers).
        let mut arena = StanzaArena::new(256);
        for _ in 0..10 {
            let r = error_reply_in(
                &el,
                StanzaCondition::ItemNotFound,
                Some("gone"),
                Some("y"),
                &mut arena,
            );
            assert_eq!(r, reply);
        }
    }

    #[test]
    fn presence_is_an_empty_element() {
        let p = presence("u@a.test", "v'1@b.test", Some("subscribed"));
        assert_eq!(
            p.as_str(),
            "<presence from='u@a.test' to='v&apos;1@b.test' type='subscribed'/>"
        );
        assert_eq!(parse_stanza(p.bytes()).unwrap(), p);
        assert_eq!(StanzaKind::of(&p), Some(StanzaKind::Presence));
        let p = presence("u@a.test/r", "v@b.test", None);
        assert_eq!(p.as_str(), "<presence from='u@a.test/r' to='v@b.test'/>");
        assert_eq!(p.type_(), None);
        assert_eq!(parse_stanza(p.bytes()).unwrap(), p);
    }

    #[test]
    fn parse_stanza_reuses_its_stream_and_recovers_from_errors() {
        for i in 0..1000 {
            let text = format!("<message to='u{i}@a.test' id='{i}'/>");
            let el = parse_stanza(text.as_bytes()).unwrap();
            assert_eq!(el.id(), Some(i.to_string().as_str()));
            assert_eq!(el.as_str(), text);
        }
        assert!(parse_stanza(b"<message><unclosed></message>").is_err());
        assert!(parse_stanza(b"<a/><b/>").is_err());
        assert!(parse_stanza(b"<message to='x@a.test'").is_err());
        let el = parse_stanza(b"<iq type='get' id='after'/>").unwrap();
        assert_eq!(el.id(), Some("after"));
    }

    #[test]
    fn error_condition_of_a_timeout_bounce() {
        let el = parse_stanza(
            b"<iq type='error' id='1'><ping xmlns='urn:xmpp:ping'/><error type='wait'>\
              <remote-server-timeout xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
        )
        .unwrap();
        assert_eq!(
            error_condition(&el),
            Some(StanzaCondition::RemoteServerTimeout)
        );
        let plain = parse_stanza(b"<iq type='result' id='1'/>").unwrap();
        assert_eq!(error_condition(&plain), None);
    }
}
