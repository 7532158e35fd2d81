//! XEP-0352 Client State Indication (`urn:xmpp:csi:0`): a client tells the server it is
//! `<inactive/>` (in the background) or `<active/>` again, and the server holds back what
//! is not urgent meanwhile.
//!
//! Pure: the C2S machine turns the two nonzas into
//! [`Event::ClientState`](crate::stream::c2s::Event::ClientState) ([`read_nonza`]); the
//! runtime asks [`holds`] for each stanza to an inactive session and keeps the held
//! presence in a [`Held`] buffer: only the latest presence per sender full JID, bounded,
//! flushed in order when the client becomes active (§5: "the server MAY suppress or
//! delay" non-urgent traffic). Messages and `iq`s are never held, nor presence the user
//! has to act on (subscription requests and their answers, errors).

use crate::stanza::StanzaKind;
use crate::xml::Element;

/// `urn:xmpp:csi:0` (XEP-0352 §7).
pub const NS_CSI: &str = "urn:xmpp:csi:0";

/// Presence updates one inactive session holds, from as many distinct senders, before
/// they are all sent anyway ([`Held::hold`]).
pub const MAX_HELD: usize = 512;

/// The state a client reports (XEP-0352 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// `<active xmlns='urn:xmpp:csi:0'/>`: a user is looking; send everything.
    Active,
    /// `<inactive xmlns='urn:xmpp:csi:0'/>`: in the background; hold what can wait.
    Inactive,
}

/// Reads a top-level element of a bound C2S stream as a CSI nonza; `None` when it is not
/// `<active/>` or `<inactive/>` in [`NS_CSI`].
pub fn read_nonza(el: &Element) -> Option<ClientState> {
    if el.namespace().as_bytes() != NS_CSI.as_bytes() {
        return None;
    }
    match el.name() {
        "active" => Some(ClientState::Active),
        "inactive" => Some(ClientState::Inactive),
        _ => None,
    }
}

/// Whether a stanza of `kind` and `type_` to an inactive session is held: presence
/// updates only (no type: available, or `unavailable`). Messages, `iq`s, subscription
/// presence (`subscribe`, `subscribed`, `unsubscribe`, `unsubscribed`), probes and errors
/// go at once.
pub fn holds(kind: StanzaKind, type_: Option<&str>) -> bool {
    kind == StanzaKind::Presence && matches!(type_, None | Some("unavailable"))
}

/// The presence updates held for one inactive session: the latest per sender (full JID,
/// as the raw `from`), in the order of their latest arrival, at most [`MAX_HELD`].
#[derive(Debug, Clone)]
pub struct Held<T> {
    entries: Vec<(String, T)>,
    max: usize,
}

impl<T> Default for Held<T> {
    fn default() -> Self {
        Held::with_limit(MAX_HELD)
    }
}

impl<T> Held<T> {
    /// An empty buffer of at most `max` senders (at least 1).
    pub fn with_limit(max: usize) -> Held<T> {
        Held {
            entries: Vec::new(),
            max: max.max(1),
        }
    }

    /// Holds `update` from `from`, replacing the one held from the same sender. When a
    /// new sender would exceed the limit, everything held and `update` are handed back
    /// in order, to be sent now (nothing is dropped).
    pub fn hold(&mut self, from: &str, update: T) -> Option<Vec<T>> {
        if let Some(i) = self.entries.iter().position(|(f, _)| f == from) {
            self.entries.remove(i);
        } else if self.entries.len() == self.max {
            let mut all = self.take();
            all.push(update);
            return Some(all);
        }
        self.entries.push((from.to_owned(), update));
        None
    }

    /// Everything held, in order, leaving the buffer empty (the client became active, or
    /// the session ends).
    pub fn take(&mut self) -> Vec<T> {
        std::mem::take(&mut self.entries)
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }

    /// How many senders have an update held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_held_table() {
        use StanzaKind::*;
        let table: &[(StanzaKind, Option<&str>, bool)] = &[
            (Presence, None, true),
            (Presence, Some("unavailable"), true),
            (Presence, Some("subscribe"), false),
            (Presence, Some("subscribed"), false),
            (Presence, Some("unsubscribe"), false),
            (Presence, Some("unsubscribed"), false),
            (Presence, Some("probe"), false),
            (Presence, Some("error"), false),
            (Message, None, false),
            (Message, Some("chat"), false),
            (Message, Some("headline"), false),
            (Iq, Some("get"), false),
            (Iq, Some("set"), false),
        ];
        for (kind, type_, want) in table {
            assert_eq!(holds(*kind, *type_), *want, "{kind:?} {type_:?}");
        }
    }

    #[test]
    fn latest_per_sender_in_order_bounded() {
        let mut h = Held::with_limit(3);
        assert_eq!(h.hold("b@x/1", "b1 away"), None);
        assert_eq!(h.hold("c@x/1", "c1 on"), None);
        assert_eq!(h.hold("b@x/1", "b1 back"), None);
        assert_eq!(h.hold("b@x/2", "b2 on"), None);
        assert_eq!(h.len(), 3);
        // A fourth sender: all of it goes now, nothing is lost.
        assert_eq!(
            h.hold("d@x/1", "d1 on"),
            Some(vec!["c1 on", "b1 back", "b2 on", "d1 on"])
        );
        assert!(h.is_empty());
        h.hold("e@x/1", "e1");
        assert_eq!(h.take(), vec!["e1"]);
        assert_eq!(h.take(), Vec::<&str>::new());
    }

    #[test]
    fn nonzas() {
        let f = |xml: &str| {
            let mut framer = crate::xml::Framer::default();
            framer.feed(
                b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
            );
            framer.feed(xml.as_bytes());
            let _ = framer.next_frame().unwrap();
            match framer.next_frame().unwrap() {
                Some(crate::xml::Frame::Element(e)) => read_nonza(&e),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            f("<inactive xmlns='urn:xmpp:csi:0'/>"),
            Some(ClientState::Inactive)
        );
        assert_eq!(
            f("<active xmlns='urn:xmpp:csi:0'/>"),
            Some(ClientState::Active)
        );
        assert_eq!(f("<active xmlns='urn:xmpp:csi:1'/>"), None);
        assert_eq!(f("<presence/>"), None);
    }
}
