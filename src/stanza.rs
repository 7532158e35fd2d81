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
