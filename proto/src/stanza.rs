//! The routing view of a stanza (RFC 6120 §8): its kind, addresses, type and id, read
//! from an [`Element`] without copying.

use crate::xml::Element;

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
/// bounced with another error (RFC 6120 §8.3.1).
pub fn is_error(el: &Element) -> bool {
    el.type_() == Some("error")
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
pub fn write_error_reply(
    el: &Element,
    condition: crate::condition::StanzaCondition,
    text: Option<&str>,
    by: Option<&str>,
    out: &mut Vec<u8>,
) {
    use crate::xml::writer::write_raw_attr;
    use crate::xml::{escape_attr_into, escape_text_into, ns};
    let name = el.name();
    out.push(b'<');
    out.extend_from_slice(name.as_bytes());
    write_raw_attr("from", el.to(), out);
    write_raw_attr("to", el.from(), out);
    write_raw_attr("id", el.id(), out);
    out.extend_from_slice(b" type='error'><error type='");
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
    out.extend_from_slice(b"</error></");
    out.extend_from_slice(name.as_bytes());
    out.push(b'>');
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
