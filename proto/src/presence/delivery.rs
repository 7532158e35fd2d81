//! Where a stanza addressed to a local user goes: RFC 6121 §8.5 ("Server Rules for
//! Processing XML Stanzas", local user), as a pure function of the stanza's kind, type and
//! `to` resourcepart and of the user's sessions described as plain data.
//!
//! ```text
//!   stanza for user@domain[/resource] ──► decide(kind, type, resource, sessions)
//!        ├─ Deliver([i, j])        to those sessions (§8.5.2.1, §8.5.3.1)
//!        ├─ Reply(condition)       a stanza error to the sender (§8.5.2.2, §8.5.3.2)
//!        ├─ Offline                stored for later (§8.5.2.2.1, XEP-0160)
//!        ├─ Ignore                 dropped, as the RFC says to (headline, presence …)
//!        ├─ UndeliverableError     an error stanza no session takes (RFC 6120 §8.3.1)
//!        ├─ Subscription(type)     §3 / Appendix A.3: presence::inbound
//!        └─ Probe                  §4.3.2: answered from the user's presence
//! ```
//!
//! The runtime owns the sessions and their sockets; it describes each one as a
//! [`SessionView`] and executes the [`Delivery`]. A session whose client stopped reading
//! (its stream holds `c2s.send_queue_bytes` its socket has not accepted) is not
//! [`writable`](SessionView::writable): for delivery it counts as if it were not there,
//! so one client that stops reading costs only its own buffer (DESIGN.md "Ownership").
//!
//! Where RFC 6121 lets the server choose between "store offline or return
//! `service-unavailable`" (§8.5.2.2.1), the answer is [`Delivery::Offline`]: a `normal` or
//! `chat` message is stored for later delivery (XEP-0160, [`crate::offline`]) when the
//! runtime's offline storage is on and the user has room, else refused with
//! `service-unavailable`. Two
//! choices follow RFC 3921 §11.1 and Prosody rather than the stricter RFC 6121 text, and
//! are kept as they were when this logic lived in the runtime (`tests/delivery_tables.rs`
//! pins them): a `normal` or `headline` message to a full JID whose resource is not
//! connected is handled as if sent to the bare JID (§8.5.3.2.1 allows ignoring it or
//! `service-unavailable`), and a message of type `error` is delivered like a `normal` one
//! when a resource can take it (§8.5.2.1.1 and §8.5.3.2.1 say to ignore it silently).

use super::SubType;
use crate::condition::StanzaCondition;
use crate::stanza::StanzaKind;
use crate::xml::tree::Node;
use crate::xml::{ns, Element};

/// One bound resource of the user, as delivery needs to see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionView<'a> {
    /// The resourcepart the session bound (RFC 6120 §7).
    pub resource: &'a str,
    /// It sent initial presence and no unavailable presence since (RFC 6121 §4.2, §4.5):
    /// an "available resource". Otherwise it is only a "connected resource" (bound, but
    /// no initial presence yet, or unavailable since).
    pub available: bool,
    /// The `<priority/>` of its last available presence (§4.7.2.3, [`priority`]).
    pub priority: i8,
    /// Its stream can take more bytes: fewer than `c2s.send_queue_bytes` wait for its
    /// socket. A session that is not writable is treated as unavailable *and* not
    /// connected: no stanza is delivered to it, and a full JID naming it is handled as
    /// naming no connected resource (§8.5.3.2).
    pub writable: bool,
}

impl SessionView<'_> {
    /// Available, writable, and with a non-negative priority: a resource a message to the
    /// bare JID can go to (§8.5.2.1.1).
    fn takes_bare_messages(&self) -> bool {
        self.available && self.writable && self.priority >= 0
    }
}

/// The `type` of a message (RFC 6121 §5.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// `normal`, the default; also an absent or unknown `type` (§5.2.2: "SHOULD be
    /// treated as normal").
    Normal,
    /// `chat`: a one-to-one conversation.
    Chat,
    /// `groupchat`: a multi-user chat room message.
    Groupchat,
    /// `headline`: an alert or notification, no reply expected.
    Headline,
    /// `error`: an error about a message the recipient sent (RFC 6120 §8.3).
    Error,
}

impl MessageType {
    /// The type of a message whose `type` attribute is `value`.
    pub fn from_attr(value: Option<&str>) -> Self {
        match value {
            Some("chat") => MessageType::Chat,
            Some("groupchat") => MessageType::Groupchat,
            Some("headline") => MessageType::Headline,
            Some("error") => MessageType::Error,
            _ => MessageType::Normal,
        }
    }
}

/// What to do with a stanza for a local user ([`decide`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Deliver it to these sessions (indices into the slice given to [`decide`], in its
    /// order; never empty).
    Deliver(Vec<usize>),
    /// Answer the sender with this stanza error (RFC 6120 §8.3), in place of the user:
    /// always `service-unavailable` (§8.5.2.2, §8.5.3.2; §8.5.2.1.3 for IQs to the bare
    /// JID, which the server answers on the user's behalf).
    Reply(StanzaCondition),
    /// A `normal` or `chat` message no resource takes (§8.5.2.2.1; §8.5.2.1.1 for only
    /// negative priorities; §8.5.3.2.1 for a full JID that names no connected resource):
    /// store it offline for later delivery (XEP-0160 §3, [`crate::offline::storable`]).
    /// The runtime answers `service-unavailable` instead when offline storage is off,
    /// the user has no room left, or has no account.
    Offline,
    /// Drop it without an answer: the RFC says to ignore it (presence for no available
    /// resource, a headline nobody can take, an IQ result nobody waits for).
    Ignore,
    /// An error stanza that no session can take. It is never answered (RFC 6120 §8.3.1:
    /// no error about an error), but it is not dropped without a trace either: the
    /// runtime counts it (a sender whose client stopped reading loses its bounces here).
    UndeliverableError,
    /// A presence subscription stanza (`subscribe`, `subscribed`, `unsubscribe`,
    /// `unsubscribed`): processed as RFC 6121 §3 and Appendix A.3 say
    /// ([`super::inbound`]), whatever resource `to` names (§8.5.2.1.2, §8.5.3.1,
    /// §8.5.3.2.2); for an account that does not exist, see [`to_unknown_user`].
    Subscription(SubType),
    /// A presence probe: answered by the server from the user's presence (§4.3.2),
    /// whatever resource `to` names (§8.5.3.2.2).
    Probe,
}

/// Decides where a stanza for a local user goes (RFC 6121 §8.5).
///
/// - `kind` and `type_`: the stanza's element and `type` attribute (raw).
/// - `resource`: `None` when `to` is the bare JID `localpart@domainpart` (§8.5.2),
///   `Some(r)` for the full JID `localpart@domainpart/r` (§8.5.3). Compared with each
///   session's bound resource byte for byte.
/// - `sessions`: the user's bound resources; empty for a user with no session, or with no
///   account (§8.5.1: the answers are then those for "no available or connected
///   resources", which §8.5.1 allows; subscription stanzas are the exception, see
///   [`to_unknown_user`]).
///
/// The rules, by kind:
///
/// - **presence** of a subscription type: [`Delivery::Subscription`]; `probe`:
///   [`Delivery::Probe`]. Any other type (none, `unavailable`, `error`): to the resource
///   named if it is connected (§8.5.3.1; not only when available), else ignored
///   (§8.5.3.2.2); to the bare JID, to every available resource, whatever its priority
///   (§8.5.2.1.2), none: ignored (§8.5.2.2.2).
/// - **message** to a full JID: to the resource if connected, whatever the type and its
///   priority (§8.5.3.1); otherwise `groupchat` gets `service-unavailable`
///   (§8.5.3.2.1) and every other type is handled as if sent to the bare JID (see the
///   module docs). To the bare JID (§8.5.2.1.1, §8.5.2.2.1): `groupchat` gets
///   `service-unavailable`; `headline` goes to every available resource with a
///   non-negative priority; `normal`, `chat` and `error` to the "most available" ones, the
///   available resources that share the highest non-negative priority. With no such
///   resource (none available, or only negative priorities): `normal` and `chat` are
///   [`Delivery::Offline`] (§8.5.2.2.1, XEP-0160), `headline` is ignored and `error` is
///   [`Delivery::UndeliverableError`].
/// - **iq** to a full JID: to the resource if connected (§8.5.3.1), else
///   `service-unavailable` (§8.5.3.2.3). To the bare JID the server answers for the user
///   and never delivers it (§8.5.2.1.3, §8.5.2.2.3): `service-unavailable` for `get` and
///   `set`; a `result` is ignored (RFC 6120 §8.2.3: no answer to a response); an `error`
///   is [`Delivery::UndeliverableError`].
pub fn decide(
    kind: StanzaKind,
    type_: Option<&str>,
    resource: Option<&str>,
    sessions: &[SessionView<'_>],
) -> Delivery {
    // §8.5.3.1: the full JID names a connected resource (that can take the stanza).
    let to_resource = |r: &str| select(sessions, |s| s.writable && s.resource == r);
    match kind {
        StanzaKind::Presence => {
            if let Some(t) = type_.and_then(SubType::from_type) {
                return Delivery::Subscription(t);
            }
            if type_ == Some("probe") {
                return Delivery::Probe;
            }
            let targets = match resource {
                Some(r) => to_resource(r),
                None => select(sessions, |s| s.writable && s.available),
            };
            deliver_or(targets, Delivery::Ignore)
        }
        StanzaKind::Message => {
            let mtype = MessageType::from_attr(type_);
            if let Some(r) = resource {
                let targets = to_resource(r);
                if !targets.is_empty() {
                    return Delivery::Deliver(targets);
                }
                // §8.5.3.2.1: no resource matches; all but groupchat fall through to the
                // bare JID rules below, which refuse groupchat anyway.
            }
            if mtype == MessageType::Groupchat {
                return unavailable(kind, type_);
            }
            let best = sessions
                .iter()
                .filter(|s| s.takes_bare_messages())
                .map(|s| s.priority)
                .max();
            match best {
                None if crate::offline::storable(kind, type_) => Delivery::Offline,
                None => unavailable(kind, type_),
                Some(_) if mtype == MessageType::Headline => {
                    Delivery::Deliver(select(sessions, SessionView::takes_bare_messages))
                }
                Some(p) => Delivery::Deliver(select(sessions, |s| {
                    s.takes_bare_messages() && s.priority == p
                })),
            }
        }
        StanzaKind::Iq => {
            if let Some(r) = resource {
                let targets = to_resource(r);
                if !targets.is_empty() {
                    return Delivery::Deliver(targets);
                }
            }
            unavailable(kind, type_)
        }
    }
}

/// A message or IQ the user's resources cannot take (§8.5.2.2, §8.5.3.2): the answer
/// the server gives in the user's place.
fn unavailable(kind: StanzaKind, type_: Option<&str>) -> Delivery {
    if type_ == Some("error") {
        return Delivery::UndeliverableError;
    }
    match kind {
        StanzaKind::Message if type_ == Some("headline") => Delivery::Ignore,
        StanzaKind::Message => Delivery::Reply(StanzaCondition::ServiceUnavailable),
        StanzaKind::Iq if matches!(type_, Some("get" | "set")) => {
            Delivery::Reply(StanzaCondition::ServiceUnavailable)
        }
        _ => Delivery::Ignore,
    }
}

fn select<'a>(sessions: &[SessionView<'a>], f: impl Fn(&SessionView<'a>) -> bool) -> Vec<usize> {
    sessions
        .iter()
        .enumerate()
        .filter(|(_, s)| f(s))
        .map(|(i, _)| i)
        .collect()
}

fn deliver_or(targets: Vec<usize>, otherwise: Delivery) -> Delivery {
    if targets.is_empty() {
        otherwise
    } else {
        Delivery::Deliver(targets)
    }
}

/// A subscription stanza of type `t` for an account that does not exist (RFC 6121 §8.5.1,
/// §3.1.3): a `subscribe` is refused with `unsubscribed` from the user's bare JID (the
/// answer returned); `subscribed`, `unsubscribe` and `unsubscribed` are ignored (`None`).
pub fn to_unknown_user(t: SubType) -> Option<SubType> {
    (t == SubType::Subscribe).then_some(SubType::Unsubscribed)
}

/// After a client stopped reading and its stream was closed (`c2s.write_stall_timeout`),
/// whether a stanza that session never received is handled again as a new arrival for
/// the user, whose remaining sessions are `sessions`.
///
/// A message to the bare JID is not, when the user still has an available resource with
/// a non-negative priority: that resource already got its copy (§8.5.2.1.1), and a second
/// copy would be a duplicate. Everything else is (an IQ or a message to the closed full
/// JID then follows §8.5.3.2; a message to the bare JID with no other resource gets its
/// `service-unavailable`).
pub fn redeliver_after_stall(
    kind: StanzaKind,
    resource: Option<&str>,
    sessions: &[SessionView<'_>],
) -> bool {
    let others = sessions.iter().any(|s| s.available && s.priority >= 0);
    !(kind == StanzaKind::Message && resource.is_none() && others)
}

/// The `<priority/>` of an available presence (RFC 6121 §4.7.2.3): an integer from -128
/// to +127; 0 when the element is absent or its content is not an integer. A value out of
/// range (but within `i32`) is clamped to it.
///
/// Only a direct child of the presence in the stanza's own namespace counts (written
/// without a prefix or namespace, or in `jabber:client` / `jabber:server`); a `priority`
/// inside an extension element, or in another namespace, is not the presence's priority.
pub fn priority(presence: &Element) -> i8 {
    if presence.is_empty() {
        return 0;
    }
    let Ok(node) = Node::parse(presence) else {
        return 0;
    };
    node.children
        .iter()
        .find(|c| {
            c.name == "priority"
                && (c.ns.is_empty() || c.ns == node.ns || c.ns == ns::CLIENT || c.ns == ns::SERVER)
        })
        .and_then(|c| c.text.trim().parse::<i32>().ok())
        .and_then(|p| i8::try_from(p.clamp(i32::from(i8::MIN), i32::from(i8::MAX))).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::parse_stanza;

    fn s(resource: &str, available: bool, priority: i8) -> SessionView<'_> {
        SessionView {
            resource,
            available,
            priority,
            writable: true,
        }
    }

    #[test]
    fn deliver_is_never_empty() {
        let kinds = [StanzaKind::Message, StanzaKind::Presence, StanzaKind::Iq];
        let types = [
            None,
            Some("chat"),
            Some("headline"),
            Some("groupchat"),
            Some("error"),
            Some("get"),
            Some("result"),
            Some("unavailable"),
        ];
        let sets: [&[SessionView]; 4] = [
            &[],
            &[s("a", false, 0)],
            &[s("a", true, -1)],
            &[s("a", true, 1), s("b", true, 1)],
        ];
        for k in kinds {
            for t in types {
                for r in [None, Some("a"), Some("x")] {
                    for set in sets {
                        if let Delivery::Deliver(ix) = decide(k, t, r, set) {
                            assert!(!ix.is_empty(), "{k:?} {t:?} {r:?} {set:?}");
                            assert!(ix.iter().all(|&i| i < set.len()));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn priority_reads_the_child_element() {
        let p = |x: &str| priority(&parse_stanza(x.as_bytes()).unwrap());
        assert_eq!(p("<presence/>"), 0);
        assert_eq!(p("<presence><priority>5</priority></presence>"), 5);
        assert_eq!(p("<presence><priority>&#45;3</priority></presence>"), -3);
        assert_eq!(p("<presence><priority>1000</priority></presence>"), 127);
        assert_eq!(
            p("<presence><x xmlns='urn:x'><priority>9</priority></x></presence>"),
            0
        );
    }
}
