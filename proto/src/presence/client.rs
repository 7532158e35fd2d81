//! What the user's server does with presence a client sends on its own stream (RFC 6121
//! §3, §4.2–§4.6), as a pure function of the stanza's `type` and whether it has a `to`.
//!
//! ```text
//!   <presence type=T [to=J]/> from a bound session ──► classify(T, has_to)
//!        ├─ Ignore               type='probe': only servers probe (§4.3)
//!        ├─ Subscription(type)   to a contact: §3, presence::outbound
//!        ├─ Broadcast            no `to`: initial (§4.2), update (§4.4), unavailable (§4.5)
//!        ├─ Directed{..}         to an entity: directed presence (§4.6)
//!        └─ Route                anything else, as it is
//! ```
//!
//! The runtime stamps the stanza first (RFC 6120 §8.1.2.1) and handles a user's stanzas
//! in order; which of them must wait for the user's roster to be loaded is
//! [`needs_roster`].

use super::SubType;

/// Where presence from a client goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientPresence {
    /// `type='probe'`: the server probes, not clients (§4.3); dropped.
    Ignore,
    /// A subscription stanza to a contact (§3.1.1, §3.2.1, §3.3.1, §3.4.1): the outbound
    /// state machine ([`super::outbound`]).
    Subscription(SubType),
    /// Available or unavailable presence without `to`: broadcast to the subscribers and
    /// the user's other resources (initial presence §4.2, an update §4.4, unavailable
    /// §4.5).
    Broadcast,
    /// Available or unavailable presence to an entity (directed presence, §4.6): routed,
    /// and its recipient remembered (available) or forgotten (unavailable), to be sent
    /// unavailable presence when the session goes away.
    Directed {
        /// `type='unavailable'`.
        unavailable: bool,
    },
    /// Anything else (`type='error'`, a subscription type without `to`, an unknown
    /// type): routed as it is.
    Route,
}

/// Where presence of type `type_` from a client goes; `has_to` when it names a recipient.
pub fn classify(type_: Option<&str>, has_to: bool) -> ClientPresence {
    let sub = type_.and_then(SubType::from_type);
    match (type_, has_to, sub) {
        (Some("probe"), _, _) => ClientPresence::Ignore,
        (_, true, Some(t)) => ClientPresence::Subscription(t),
        (None | Some("unavailable"), false, _) => ClientPresence::Broadcast,
        (None | Some("unavailable"), true, _) => ClientPresence::Directed {
            unavailable: type_ == Some("unavailable"),
        },
        _ => ClientPresence::Route,
    }
}

/// Whether presence of type `type_` from a client (`has_to` when it names a recipient)
/// waits for the user's roster: a subscription stanza changes it (§3), and presence
/// without `to` reads it (the broadcast goes to the subscribers, initial presence probes
/// the contacts, §4.2); so does any other presence without `to`, which is handled in
/// order with those.
pub fn needs_roster(type_: Option<&str>, has_to: bool) -> bool {
    !has_to || type_.and_then(SubType::from_type).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_table() {
        use ClientPresence::*;
        let rows: &[(Option<&str>, bool, ClientPresence, bool)] = &[
            // type, has `to`, where it goes, needs the roster
            (None, false, Broadcast, true),
            (Some("unavailable"), false, Broadcast, true),
            (None, true, Directed { unavailable: false }, false),
            (
                Some("unavailable"),
                true,
                Directed { unavailable: true },
                false,
            ),
            (Some("probe"), false, Ignore, true),
            (Some("probe"), true, Ignore, false),
            (
                Some("subscribe"),
                true,
                Subscription(SubType::Subscribe),
                true,
            ),
            (
                Some("subscribed"),
                true,
                Subscription(SubType::Subscribed),
                true,
            ),
            (
                Some("unsubscribe"),
                true,
                Subscription(SubType::Unsubscribe),
                true,
            ),
            (
                Some("unsubscribed"),
                true,
                Subscription(SubType::Unsubscribed),
                true,
            ),
            (Some("subscribe"), false, Route, true),
            (Some("error"), true, Route, false),
            (Some("error"), false, Route, true),
            (Some("bogus"), true, Route, false),
            (Some(""), false, Route, true),
        ];
        for &(t, has_to, goes, needs) in rows {
            assert_eq!(classify(t, has_to), goes, "{t:?} to={has_to}");
            assert_eq!(needs_roster(t, has_to), needs, "{t:?} to={has_to}");
        }
    }
}
