//! RFC 6121 subscription state machine and roster semantics.
//!
//! Pure: no I/O, no clock, no allocation on the state-machine path. The owner shard of a
//! local bare JID keeps one [`SubState`] per contact (the roster item's `subscription`,
//! `ask` and `approved` attributes plus the server-only "pending in" flag) and runs every
//! subscription stanza through [`outbound`] (the user sent it) or [`inbound`] (a contact
//! sent it to the user). Each returns a [`Transition`]: the new state, whether the stored
//! record changed, and the [`Action`]s RFC 6121 §3 requires, in the order to perform them.
//!
//! ```text
//!   user's client ──subscribe──► outbound(state_u, Subscribe) ──RouteToContact──►
//!                                                                               │ S2S
//!   contact's client ◄──DeliverToUser── inbound(state_c, Subscribe) ◄───────────┘
//!   contact's client ──subscribed──► outbound(state_c, Subscribed)
//!        ──RouteToContact, RosterPush, SendCurrentPresence──►
//!   user's client ◄──DeliverToUser, RosterPush── inbound(state_u, Subscribed)
//! ```
//!
//! In both functions "user" is the local account whose state is passed in and "contact" is
//! the other party (RFC 6121 §1.3 uses the words the same way per side).
//!
//! The caller makes the new state durable *before* performing any action when
//! [`Transition::stored_changed`] is set (DESIGN.md: subscription requests and roster
//! changes are durable before they are acknowledged or forwarded).
//!
//! The transitions are exactly the tables of RFC 6121 Appendix A.2 (outbound) and A.3
//! (inbound), extended with subscription pre-approval (§3.4). Roster items (§2.1) are
//! serialised by [`RosterItem::write_xml`]; a client's roster set (§2.3) is validated by
//! [`parse_roster_set`] and a removal (§2.5) is planned by [`remove`]; [`roster_set::plan`]
//! turns a whole roster set into what to store, answer, push and send (§2.3–§2.5).
//!
//! Where a stanza for a local user goes (§8.5: by resource, availability and priority) is
//! decided by [`delivery::decide`], which also reads a presence's priority (§4.7.2.3).
//! Where presence a client sends goes (a subscription stanza, a broadcast, directed
//! presence) is [`client::classify`].

use std::fmt;

use crate::condition::StanzaCondition;
use crate::jid::BareJid;
use crate::xml::tree::Node;
use crate::xml::{escape_attr_into, escape_text_into};

pub mod client;
pub mod delivery;
pub mod roster_set;

/// `jabber:iq:roster`, the roster namespace (RFC 6121 §2.1).
pub const ROSTER_NS: &str = "jabber:iq:roster";

/// `urn:xmpp:features:pre-approval`, the stream feature `<sub/>` a server supporting
/// subscription pre-approval advertises to clients (RFC 6121 §3.4). fedrouter supports it.
pub const PRE_APPROVAL_FEATURE_NS: &str = "urn:xmpp:features:pre-approval";

// ---------------------------------------------------------------------------------------
// Subscription states
// ---------------------------------------------------------------------------------------

/// The value of a roster item's `subscription` attribute (RFC 6121 §2.1.2.5): who receives
/// whose presence. The fifth value, `remove`, is not a state: it is a roster operation
/// ([`RosterSet::Remove`], [`write_removed_item`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Subscription {
    /// Neither is subscribed to the other's presence.
    #[default]
    None,
    /// The user is subscribed to the contact's presence (one-way).
    To,
    /// The contact is subscribed to the user's presence (one-way).
    From,
    /// Both are subscribed to each other's presence.
    Both,
}

impl Subscription {
    /// The attribute value: `"none"`, `"to"`, `"from"` or `"both"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::To => "to",
            Subscription::From => "from",
            Subscription::Both => "both",
        }
    }

    /// Parses an attribute value; `None` for anything else (including `"remove"`).
    pub fn from_attr(value: &str) -> Option<Self> {
        Some(match value {
            "none" => Subscription::None,
            "to" => Subscription::To,
            "from" => Subscription::From,
            "both" => Subscription::Both,
            _ => return None,
        })
    }

    /// Whether the user receives the contact's presence (`to` or `both`).
    pub fn has_to(self) -> bool {
        matches!(self, Subscription::To | Subscription::Both)
    }

    /// Whether the contact receives the user's presence (`from` or `both`).
    pub fn has_from(self) -> bool {
        matches!(self, Subscription::From | Subscription::Both)
    }

    /// The value with the given directions.
    pub fn from_flags(to: bool, from: bool) -> Self {
        match (to, from) {
            (false, false) => Subscription::None,
            (true, false) => Subscription::To,
            (false, true) => Subscription::From,
            (true, true) => Subscription::Both,
        }
    }
}

impl fmt::Display for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The user's subscription state with one contact, as the user's server keeps it
/// (RFC 6121 Appendix A.1), plus the pre-approval flag of §3.4.
///
/// The nine defined states are the associated constants ([`SubState::ALL`]); [`name`]
/// gives their Appendix A.1 names. Combinations outside them (for instance `From` with
/// `pending_in`) are meaningless and are folded by [`normalized`], which [`outbound`] and
/// [`inbound`] apply to their input.
///
/// [`name`]: SubState::name
/// [`normalized`]: SubState::normalized
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubState {
    /// The roster item's `subscription` attribute.
    pub subscription: Subscription,
    /// The user asked the contact for a subscription that is not yet answered: the roster
    /// item carries `ask='subscribe'` (§2.1.2.2). Only without `to`.
    pub pending_out: bool,
    /// The contact asked the user for a subscription that is not yet answered. Kept by the
    /// server, never shown as a roster attribute; the request is (re)delivered to the
    /// user's available resources until answered (§3.1.3). Only without `from`.
    pub pending_in: bool,
    /// The user approved a subscription request the contact has not sent yet (§3.4): the
    /// roster item carries `approved='true'` (§2.1.2.1). Only without `from` and without
    /// `pending_in`.
    pub pre_approved: bool,
}

impl SubState {
    const fn new(subscription: Subscription, pending_out: bool, pending_in: bool) -> Self {
        Self {
            subscription,
            pending_out,
            pending_in,
            pre_approved: false,
        }
    }

    /// "None": no subscription either way, nothing pending. Also the state of a contact
    /// that is not in the roster at all.
    pub const NONE: SubState = SubState::new(Subscription::None, false, false);
    /// "None + Pending Out": `subscription='none' ask='subscribe'`.
    pub const NONE_PENDING_OUT: SubState = SubState::new(Subscription::None, true, false);
    /// "None + Pending In": the contact's request awaits the user's answer.
    pub const NONE_PENDING_IN: SubState = SubState::new(Subscription::None, false, true);
    /// "None + Pending Out/In": both requests await an answer.
    pub const NONE_PENDING_OUT_IN: SubState = SubState::new(Subscription::None, true, true);
    /// "To": the user receives the contact's presence.
    pub const TO: SubState = SubState::new(Subscription::To, false, false);
    /// "To + Pending In": and the contact's request awaits the user's answer.
    pub const TO_PENDING_IN: SubState = SubState::new(Subscription::To, false, true);
    /// "From": the contact receives the user's presence.
    pub const FROM: SubState = SubState::new(Subscription::From, false, false);
    /// "From + Pending Out": and the user's request awaits the contact's answer.
    pub const FROM_PENDING_OUT: SubState = SubState::new(Subscription::From, true, false);
    /// "Both": mutual subscription.
    pub const BOTH: SubState = SubState::new(Subscription::Both, false, false);

    /// The nine defined states of Appendix A.1, in its order.
    pub const ALL: [SubState; 9] = [
        SubState::NONE,
        SubState::NONE_PENDING_OUT,
        SubState::NONE_PENDING_IN,
        SubState::NONE_PENDING_OUT_IN,
        SubState::TO,
        SubState::TO_PENDING_IN,
        SubState::FROM,
        SubState::FROM_PENDING_OUT,
        SubState::BOTH,
    ];

    /// This state with the §3.4 pre-approval set (meaningful only for "None",
    /// "None + Pending Out" and "To"; [`normalized`](SubState::normalized) drops it
    /// elsewhere).
    pub const fn pre_approved(self) -> Self {
        Self {
            pre_approved: true,
            ..self
        }
    }

    /// Folds flags that cannot hold in a defined state: `pending_out` with `to`,
    /// `pending_in` with `from`, and `pre_approved` with `from` or `pending_in`.
    pub fn normalized(self) -> Self {
        let to = self.subscription.has_to();
        let from = self.subscription.has_from();
        let pending_in = self.pending_in && !from;
        Self {
            subscription: self.subscription,
            pending_out: self.pending_out && !to,
            pending_in,
            pre_approved: self.pre_approved && !from && !pending_in,
        }
    }

    /// The Appendix A.1 name of the (normalised) state, e.g. `"None + Pending Out/In"`.
    /// The pre-approval flag is not part of the name ([`Display`](fmt::Display) shows it).
    pub fn name(&self) -> &'static str {
        let s = self.normalized();
        match (s.subscription, s.pending_out, s.pending_in) {
            (Subscription::None, false, false) => "None",
            (Subscription::None, true, false) => "None + Pending Out",
            (Subscription::None, false, true) => "None + Pending In",
            (Subscription::None, true, true) => "None + Pending Out/In",
            (Subscription::To, _, false) => "To",
            (Subscription::To, _, true) => "To + Pending In",
            (Subscription::From, false, _) => "From",
            (Subscription::From, true, _) => "From + Pending Out",
            (Subscription::Both, _, _) => "Both",
        }
    }

    /// Parses an Appendix A.1 name (exactly as [`name`](SubState::name) writes it); the
    /// result is not pre-approved.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The roster item's `ask` attribute: `Some("subscribe")` while the user's request is
    /// pending (§2.1.2.2), else `None`.
    pub fn ask(&self) -> Option<&'static str> {
        self.normalized().pending_out.then_some("subscribe")
    }

    /// Whether the roster item carries `approved='true'` (§2.1.2.1).
    pub fn approved(&self) -> bool {
        self.normalized().pre_approved
    }

    /// The attributes a roster item shows: `subscription`, whether `ask='subscribe'`,
    /// whether `approved='true'`. A change here is what a roster push announces (§2.1.6).
    pub fn visible(&self) -> (Subscription, bool, bool) {
        let s = self.normalized();
        (s.subscription, s.pending_out, s.pre_approved)
    }

    /// Whether nothing is left to keep for this contact apart from a roster item the user
    /// may have created: "None", nothing pending, not pre-approved. A stored record for a
    /// contact the user never added can then be deleted.
    pub fn is_none(&self) -> bool {
        self.normalized() == SubState::NONE
    }
}

impl fmt::Display for SubState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        if self.approved() {
            f.write_str(" (pre-approved)")?;
        }
        Ok(())
    }
}

/// The `type` of a presence subscription stanza (RFC 6121 §3, RFC 6120 §8.2.3 extended by
/// RFC 6121 §4.7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubType {
    /// `subscribe`: request a subscription to the recipient's presence (§3.1).
    Subscribe,
    /// `subscribed`: approve the recipient's request, or pre-approve one (§3.1.5, §3.4).
    Subscribed,
    /// `unsubscribe`: end the sender's subscription to the recipient (§3.3).
    Unsubscribe,
    /// `unsubscribed`: deny a request or cancel the recipient's subscription (§3.2).
    Unsubscribed,
}

impl SubType {
    /// All four, in this order.
    pub const ALL: [SubType; 4] = [
        SubType::Subscribe,
        SubType::Subscribed,
        SubType::Unsubscribe,
        SubType::Unsubscribed,
    ];

    /// Parses a presence `type` attribute; `None` for other types (available, probe,
    /// unavailable, error).
    pub fn from_type(value: &str) -> Option<Self> {
        Some(match value {
            "subscribe" => SubType::Subscribe,
            "subscribed" => SubType::Subscribed,
            "unsubscribe" => SubType::Unsubscribe,
            "unsubscribed" => SubType::Unsubscribed,
            _ => return None,
        })
    }

    /// The `type` attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            SubType::Subscribe => "subscribe",
            SubType::Subscribed => "subscribed",
            SubType::Unsubscribe => "unsubscribe",
            SubType::Unsubscribed => "unsubscribed",
        }
    }
}

impl fmt::Display for SubType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------------------
// Actions and transitions
// ---------------------------------------------------------------------------------------

/// One thing the server must do after a subscription stanza, besides storing the new
/// state. "User" is the local account whose state changed, "contact" the other party.
/// Presence the server sends on the user's behalf is stamped with the user's bare JID
/// (RFC 6121 §3: subscription stanzas carry bare JIDs) and addressed to the contact's bare
/// JID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Route the user's stanza to the contact, `from` stamped with the user's bare JID and
    /// `to` reduced to the contact's bare JID (§3.1.2, §3.1.5, §3.2.2, §3.3.2). On failure
    /// (no such domain, timeout) the user gets the stanza error back (§3.1.2).
    RouteToContact,
    /// Deliver the contact's stanza to the user's resources: a `subscribe` to all
    /// *available* resources, kept as `pending_in` and delivered again on the user's next
    /// initial presence until answered (§3.1.3); `subscribed`, `unsubscribe`,
    /// `unsubscribed` to the *interested* resources, those that requested the roster
    /// (§3.1.6, §3.3.3, §3.2.3).
    DeliverToUser,
    /// Send `<presence type='…'/>` from the user's bare JID to the contact's bare JID,
    /// generated by the server on the user's behalf: `subscribed` when the contact asks for
    /// a subscription it already has or that the user pre-approved (§3.1.3, §3.4);
    /// `unsubscribe` / `unsubscribed` when the user removes the contact (§2.5.2).
    AutoReply(SubType),
    /// Send the user's current presence from each of the user's available resources to the
    /// contact, who was just granted a subscription (§3.1.5). Also after the auto-reply to a
    /// redundant request (§3.1.3), which the RFC does not require but Prosody does, so the
    /// requester's fresh "To" is not left without presence until the next broadcast.
    SendCurrentPresence,
    /// Send `<presence type='unavailable'/>` from each of the user's available resources to
    /// the contact, whose subscription to the user just ended (§3.2.2: before the
    /// `unsubscribed` is routed; §3.3.3: after the `unsubscribe` is processed).
    SendUnavailable,
    /// Push the user's changed roster item (or its removal) to the user's interested
    /// resources (§2.1.6), in a roster push with the new `subscription`, `ask`, `approved`.
    RosterPush,
    /// Nothing: the stanza is dropped without routing, delivery, roster push or error
    /// (Appendix A rows "no / no state change"; §3.1.6 and §3.2.3 "MUST ignore"). Always
    /// alone.
    Ignore,
}

/// The actions of a [`Transition`], in the order to perform them. A fixed-capacity inline
/// list (at most [`Actions::CAPACITY`]); dereferences to `[Action]`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Actions {
    buf: [Action; Actions::CAPACITY],
    len: u8,
}

impl Actions {
    /// The largest number of actions any transition yields.
    pub const CAPACITY: usize = 4;

    const fn empty() -> Self {
        Self {
            buf: [Action::Ignore; Actions::CAPACITY],
            len: 0,
        }
    }

    fn push(&mut self, a: Action) {
        self.buf[usize::from(self.len)] = a;
        self.len += 1;
    }

    /// The actions as a slice.
    pub fn as_slice(&self) -> &[Action] {
        &self.buf[..usize::from(self.len)]
    }
}

impl std::ops::Deref for Actions {
    type Target = [Action];
    fn deref(&self) -> &[Action] {
        self.as_slice()
    }
}

impl fmt::Debug for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl<'a> IntoIterator for &'a Actions {
    type Item = &'a Action;
    type IntoIter = std::slice::Iter<'a, Action>;
    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

/// The result of processing one subscription stanza: the user's new state for the
/// contact, whether the stored record changed, and what to do, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transition {
    /// The new state (normalised). Equal to the old one on "no state change".
    pub state: SubState,
    /// The stored record changed and must be made durable before the actions run. It can
    /// change without a roster push (e.g. "None" → "None + Pending In").
    pub stored_changed: bool,
    /// What to do, in order; `[Ignore]` when nothing.
    pub actions: Actions,
}

impl Transition {
    fn new(old: SubState, state: SubState) -> Self {
        Self {
            state,
            stored_changed: state != old,
            actions: Actions::empty(),
        }
    }

    fn then(mut self, a: Action) -> Self {
        self.actions.push(a);
        self
    }

    fn then_if(self, cond: bool, a: Action) -> Self {
        if cond {
            self.then(a)
        } else {
            self
        }
    }

    fn ignore(old: SubState) -> Self {
        Self::new(old, old).then(Action::Ignore)
    }

    /// Whether `a` is among the actions.
    pub fn has(&self, a: Action) -> bool {
        self.actions.contains(&a)
    }

    /// The stanza is routed to the contact (Appendix A.2 "ROUTE?").
    pub fn route(&self) -> bool {
        self.has(Action::RouteToContact)
    }

    /// The stanza is delivered to the user (Appendix A.3 "DELIVER?").
    pub fn deliver(&self) -> bool {
        self.has(Action::DeliverToUser)
    }

    /// A roster push follows.
    pub fn roster_push(&self) -> bool {
        self.has(Action::RosterPush)
    }

    /// The `subscribed` auto-reply, if any (§3.1.3, §3.4). Only inbound transitions
    /// auto-reply; [`remove`] generates `unsubscribe`/`unsubscribed`, found with
    /// [`has`](Transition::has).
    pub fn auto_reply(&self) -> Option<SubType> {
        self.actions.iter().find_map(|a| match a {
            Action::AutoReply(t) => Some(*t),
            _ => None,
        })
    }

    /// The stanza is dropped and nothing happens.
    pub fn ignored(&self) -> bool {
        self.has(Action::Ignore)
    }
}

/// The user's server processes a subscription stanza of type `t` that its user sent to a
/// contact with whom the user is in `state` (RFC 6121 Appendix A.2; §3.1.2, §3.1.5, §3.2.2,
/// §3.3.2; pre-approval §3.4).
///
/// - `subscribe` (A.2.1): always routed; "None" → "None + Pending Out", "From" →
///   "From + Pending Out", "None + Pending In" → "None + Pending Out/In"; roster push when
///   `ask` appears.
/// - `unsubscribe` (A.2.2): always routed; `to` and `ask` are cleared; roster push when
///   they change.
/// - `subscribed` (A.2.3): with a pending request, approve it (`from` set), route, push,
///   then send the user's current presence (§3.1.5). In "None", "None + Pending Out" and
///   "To", not routed: the user pre-approves the contact (§3.4), roster push with
///   `approved='true'`. With `from` already: ignored.
/// - `unsubscribed` (A.2.4): with `from`, send unavailable from the user's resources, then
///   route, then push (§3.2.2); with only a pending request, deny it (route, state
///   change, no visible change so no push); with only a pre-approval, cancel it (push, no
///   route); otherwise ignored.
pub fn outbound(state: SubState, t: SubType) -> Transition {
    use Action::*;
    let old = state.normalized();
    let to = old.subscription.has_to();
    let from = old.subscription.has_from();
    match t {
        SubType::Subscribe => {
            let new = SubState {
                pending_out: !to,
                ..old
            };
            Transition::new(old, new)
                .then(RouteToContact)
                .then_if(new.visible() != old.visible(), RosterPush)
        }
        SubType::Unsubscribe => {
            let new = SubState {
                subscription: Subscription::from_flags(false, from),
                pending_out: false,
                ..old
            };
            Transition::new(old, new)
                .then(RouteToContact)
                .then_if(new.visible() != old.visible(), RosterPush)
        }
        SubType::Subscribed => {
            if from {
                Transition::ignore(old)
            } else if old.pending_in {
                let new = SubState {
                    subscription: Subscription::from_flags(to, true),
                    pending_in: false,
                    pre_approved: false,
                    ..old
                };
                Transition::new(old, new)
                    .then(RouteToContact)
                    .then(RosterPush)
                    .then(SendCurrentPresence)
            } else if old.pre_approved {
                Transition::ignore(old)
            } else {
                Transition::new(old, old.pre_approved()).then(RosterPush)
            }
        }
        SubType::Unsubscribed => {
            if from {
                let new = SubState {
                    subscription: Subscription::from_flags(to, false),
                    ..old
                };
                Transition::new(old, new)
                    .then(SendUnavailable)
                    .then(RouteToContact)
                    .then(RosterPush)
            } else if old.pending_in {
                let new = SubState {
                    pending_in: false,
                    ..old
                };
                Transition::new(old, new)
                    .then(RouteToContact)
                    .then_if(new.visible() != old.visible(), RosterPush)
            } else if old.pre_approved {
                let new = SubState {
                    pre_approved: false,
                    ..old
                };
                Transition::new(old, new).then(RosterPush)
            } else {
                Transition::ignore(old)
            }
        }
    }
}

/// The user's server processes a subscription stanza of type `t` that a contact sent to
/// the user, with whom the user is in `state` (RFC 6121 Appendix A.3; §3.1.3, §3.1.6,
/// §3.2.3, §3.3.3; pre-approval §3.4). `state` is [`SubState::NONE`] for a sender not in
/// the roster.
///
/// - `subscribe` (A.3.1): if the contact already has `from`, auto-reply `subscribed`
///   (§3.1.3) and send current presence; if the user pre-approved, approve it now: `from`
///   set, auto-reply `subscribed`, roster push, send current presence (§3.4), not
///   delivered; if already pending, ignored; otherwise `pending_in` is set and the request
///   delivered (held until the user is available, §3.1.3). No roster item is created.
/// - `unsubscribe` (A.3.2): if the contact had `from` or a pending request, both end;
///   delivered, roster push when `subscription` changed, then unavailable from the user's
///   resources when `from` ended (§3.3.3); otherwise ignored.
/// - `subscribed` (A.3.3): only with `ask` pending: `to` set, delivered, roster push
///   (§3.1.6); otherwise ignored.
/// - `unsubscribed` (A.3.4): with `to` or `ask`: both cleared, delivered, roster push
///   (§3.2.3); otherwise ignored.
pub fn inbound(state: SubState, t: SubType) -> Transition {
    use Action::*;
    let old = state.normalized();
    let to = old.subscription.has_to();
    let from = old.subscription.has_from();
    match t {
        SubType::Subscribe => {
            if from {
                Transition::new(old, old)
                    .then(AutoReply(SubType::Subscribed))
                    .then(SendCurrentPresence)
            } else if old.pending_in {
                Transition::ignore(old)
            } else if old.pre_approved {
                let new = SubState {
                    subscription: Subscription::from_flags(to, true),
                    pre_approved: false,
                    ..old
                };
                Transition::new(old, new)
                    .then(AutoReply(SubType::Subscribed))
                    .then(RosterPush)
                    .then(SendCurrentPresence)
            } else {
                let new = SubState {
                    pending_in: true,
                    ..old
                };
                Transition::new(old, new).then(DeliverToUser)
            }
        }
        SubType::Unsubscribe => {
            if from || old.pending_in {
                let new = SubState {
                    subscription: Subscription::from_flags(to, false),
                    pending_in: false,
                    ..old
                };
                Transition::new(old, new)
                    .then(DeliverToUser)
                    .then_if(new.visible() != old.visible(), RosterPush)
                    .then_if(from, SendUnavailable)
            } else {
                Transition::ignore(old)
            }
        }
        SubType::Subscribed => {
            if old.pending_out {
                let new = SubState {
                    subscription: Subscription::from_flags(true, from),
                    pending_out: false,
                    ..old
                };
                Transition::new(old, new)
                    .then(DeliverToUser)
                    .then(RosterPush)
            } else {
                Transition::ignore(old)
            }
        }
        SubType::Unsubscribed => {
            if to || old.pending_out {
                let new = SubState {
                    subscription: Subscription::from_flags(false, from),
                    pending_out: false,
                    ..old
                };
                Transition::new(old, new)
                    .then(DeliverToUser)
                    .then(RosterPush)
            } else {
                Transition::ignore(old)
            }
        }
    }
}

/// The user removes the contact from the roster (RFC 6121 §2.5.2, roster set with
/// `subscription='remove'`). The new state is [`SubState::NONE`] and the record is
/// deleted; the actions, in order: unavailable from the user's resources if the contact
/// had `from` (as §3.2.2); `unsubscribe` to the contact if the user had `to` or a pending
/// request; `unsubscribed` if the contact had `from` or a pending request (so the
/// contact's server drops pending requests too, Appendix A.3.2 / A.3.4); then the roster
/// push of the removal.
pub fn remove(state: SubState) -> Transition {
    use Action::*;
    let old = state.normalized();
    let to = old.subscription.has_to();
    let from = old.subscription.has_from();
    Transition::new(old, SubState::NONE)
        .then_if(from, SendUnavailable)
        .then_if(to || old.pending_out, AutoReply(SubType::Unsubscribe))
        .then_if(from || old.pending_in, AutoReply(SubType::Unsubscribed))
        .then(RosterPush)
}

// ---------------------------------------------------------------------------------------
// Roster items (§2)
// ---------------------------------------------------------------------------------------

/// One roster item (RFC 6121 §2.1.2): a contact's bare JID, the user's name and groups for
/// it, and the subscription state.
///
/// A contact that asked for a subscription the user has not answered and did not add
/// ("None + Pending In" without an item) is not a roster item (Appendix A.1): the caller
/// keeps that [`SubState`] apart until the user approves it, then creates the item.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct RosterItem {
    /// The contact's bare JID, normalised (RFC 7622), as [`BareJid::as_str`] writes it.
    pub jid: String,
    /// The user's name for the contact (`name` attribute, §2.1.2.4).
    pub name: Option<String>,
    /// The groups the user put the contact in (`<group/>` children, §2.1.2.6), in order,
    /// non-empty and distinct.
    pub groups: Vec<String>,
    /// The subscription state.
    pub state: SubState,
}

impl RosterItem {
    /// An item for `jid` with no name, no groups and state "None".
    pub fn new(jid: impl Into<String>) -> Self {
        Self {
            jid: jid.into(),
            ..Self::default()
        }
    }

    /// Appends `<item jid='…' name='…' subscription='…' ask='subscribe'
    /// approved='true'><group>…</group></item>` to `out`, as in a roster result or push
    /// (§2.1.4, §2.1.6). `name` only when set, `ask` only when pending out, `approved` only
    /// when pre-approved (a server SHOULD NOT send `approved='false'`, §2.1.2.1). Values
    /// are escaped; an item without groups is an empty element.
    pub fn write_xml(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"<item jid='");
        escape_attr_into(&self.jid, out);
        out.push(b'\'');
        if let Some(name) = &self.name {
            out.extend_from_slice(b" name='");
            escape_attr_into(name, out);
            out.push(b'\'');
        }
        out.extend_from_slice(b" subscription='");
        out.extend_from_slice(self.state.normalized().subscription.as_str().as_bytes());
        out.push(b'\'');
        if let Some(ask) = self.state.ask() {
            out.extend_from_slice(b" ask='");
            out.extend_from_slice(ask.as_bytes());
            out.push(b'\'');
        }
        if self.state.approved() {
            out.extend_from_slice(b" approved='true'");
        }
        if self.groups.is_empty() {
            out.extend_from_slice(b"/>");
            return;
        }
        out.push(b'>');
        for g in &self.groups {
            out.extend_from_slice(b"<group>");
            escape_text_into(g, out);
            out.extend_from_slice(b"</group>");
        }
        out.extend_from_slice(b"</item>");
    }

    /// [`write_xml`](RosterItem::write_xml) into a new string.
    pub fn to_xml(&self) -> String {
        let mut out = Vec::with_capacity(64 + self.jid.len());
        self.write_xml(&mut out);
        String::from_utf8(out).expect("escaping keeps UTF-8")
    }

    /// Parses an `<item/>` as a server sends it in a roster result or push (§2.1.4,
    /// §2.1.6): `subscription` values other than none/to/from/both are read as "none"
    /// (a client ignores them, §2.1.2.5), `ask` other than `subscribe` is ignored, and
    /// `approved` is `true` or `1` (XML Schema boolean). `pending_in` is never visible.
    ///
    /// Errors: [`RosterError::MissingJid`], [`RosterError::MalformedJid`].
    pub fn from_node(item: &Node) -> Result<Self, RosterError> {
        let jid = parse_item_jid(item)?;
        let subscription = item
            .attr("subscription")
            .and_then(Subscription::from_attr)
            .unwrap_or_default();
        let state = SubState {
            subscription,
            pending_out: item.attr("ask") == Some("subscribe"),
            pending_in: false,
            pre_approved: matches!(item.attr("approved"), Some("true" | "1")),
        }
        .normalized();
        Ok(Self {
            jid,
            name: item
                .attr("name")
                .filter(|n| !n.is_empty())
                .map(str::to_owned),
            groups: item
                .children
                .iter()
                .filter(|c| c.name == "group" && c.ns == ROSTER_NS)
                .map(|c| c.text.clone())
                .collect(),
            state,
        })
    }
}

/// Appends the `<item jid='…' subscription='remove'/>` of a roster push announcing a
/// removal (§2.5.2).
pub fn write_removed_item(jid: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<item jid='");
    escape_attr_into(jid, out);
    out.extend_from_slice(b"' subscription='remove'/>");
}

/// Appends `<query xmlns='jabber:iq:roster' ver='…'>items</query>`, the payload of a
/// roster result or push (§2.1.4, §2.1.6; `ver` per §2.6 when given).
pub fn write_query<'a>(
    items: impl IntoIterator<Item = &'a RosterItem>,
    ver: Option<&str>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"<query xmlns='jabber:iq:roster'");
    if let Some(v) = ver {
        out.extend_from_slice(b" ver='");
        escape_attr_into(v, out);
        out.push(b'\'');
    }
    let mut items = items.into_iter().peekable();
    if items.peek().is_none() {
        out.extend_from_slice(b"/>");
        return;
    }
    out.push(b'>');
    for item in items {
        item.write_xml(out);
    }
    out.extend_from_slice(b"</query>");
}

/// Server-configured limits on a roster set (RFC 6121 §2.3.3 leaves them to the server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RosterLimits {
    /// Longest `name` attribute, in bytes of UTF-8.
    pub max_name_bytes: usize,
    /// Longest `<group/>` character data, in bytes of UTF-8.
    pub max_group_bytes: usize,
    /// Most `<group/>` elements on one item (a fedrouter limit, reported like the others).
    pub max_groups: usize,
}

impl Default for RosterLimits {
    /// 1023 bytes for names and group names (as Prosody and ejabberd roughly allow), 64
    /// groups per item.
    fn default() -> Self {
        Self {
            max_name_bytes: 1023,
            max_group_bytes: 1023,
            max_groups: 64,
        }
    }
}

/// Why a roster set (or a received roster item) is refused. Each maps to the stanza
/// error condition RFC 6121 §2.3.3 prescribes ([`RosterError::condition`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RosterError {
    /// The payload is not `<query xmlns='jabber:iq:roster'/>`: `bad-request`.
    #[error("not a jabber:iq:roster query")]
    NotRosterQuery,
    /// A roster set must hold exactly one `<item/>` (§2.1.5, §2.3.3): `bad-request`.
    #[error("a roster set holds {0} items, not exactly one")]
    ItemCount(usize),
    /// The `<item/>` has no `jid` attribute (§2.1.2.3): `bad-request`.
    #[error("roster item without jid")]
    MissingJid,
    /// The `jid` is not a valid bare JID (RFC 7622; a roster is kept per bare JID):
    /// `bad-request` (the item is invalid; Prosody answers the same).
    #[error("roster item jid is not a valid bare JID")]
    MalformedJid,
    /// Two `<group/>` elements with the same text (§2.3.3): `bad-request`.
    #[error("duplicate group {0:?}")]
    DuplicateGroup(String),
    /// A `<group/>` with no character data (§2.3.3): `not-acceptable`.
    #[error("empty group")]
    EmptyGroup,
    /// A `<group/>` longer than [`RosterLimits::max_group_bytes`] (§2.3.3):
    /// `not-acceptable`.
    #[error("group of {0} bytes exceeds the limit")]
    GroupTooLong(usize),
    /// More groups than [`RosterLimits::max_groups`]: `not-acceptable`.
    #[error("{0} groups exceed the limit")]
    TooManyGroups(usize),
    /// A `name` longer than [`RosterLimits::max_name_bytes`] (§2.3.3): `not-acceptable`.
    #[error("name of {0} bytes exceeds the limit")]
    NameTooLong(usize),
}

impl RosterError {
    /// The stanza error condition to answer the roster set with (RFC 6121 §2.3.3; RFC 6120
    /// §8.3.3).
    pub fn condition(&self) -> StanzaCondition {
        match self {
            RosterError::NotRosterQuery
            | RosterError::ItemCount(_)
            | RosterError::MissingJid
            | RosterError::DuplicateGroup(_)
            | RosterError::MalformedJid => StanzaCondition::BadRequest,
            RosterError::EmptyGroup
            | RosterError::GroupTooLong(_)
            | RosterError::TooManyGroups(_)
            | RosterError::NameTooLong(_) => StanzaCondition::NotAcceptable,
        }
    }
}

/// A validated roster set from a client (RFC 6121 §2.1.5, §2.3, §2.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RosterSet {
    /// Add the item or replace its name and groups (§2.3, §2.4). The subscription state is
    /// the server's: see [`RosterSet::into_item`].
    Update {
        /// The contact's bare JID, normalised.
        jid: String,
        /// The new name; `None` when absent or empty.
        name: Option<String>,
        /// The new groups (replacing the old ones), validated.
        groups: Vec<String>,
    },
    /// `subscription='remove'`: delete the item (§2.5); plan the stanzas with [`remove`].
    Remove {
        /// The contact's bare JID, normalised.
        jid: String,
    },
}

impl RosterSet {
    /// The contact's bare JID.
    pub fn jid(&self) -> &str {
        match self {
            RosterSet::Update { jid, .. } | RosterSet::Remove { jid } => jid,
        }
    }

    /// For an update, the item to store: the client's name and groups with the state the
    /// server holds for the contact (`SubState::NONE` for a new contact; a roster set never
    /// changes subscription state, §2.1.2.2, §2.1.2.5). `None` for a removal.
    pub fn into_item(self, state: SubState) -> Option<RosterItem> {
        match self {
            RosterSet::Update { jid, name, groups } => Some(RosterItem {
                jid,
                name,
                groups,
                state: state.normalized(),
            }),
            RosterSet::Remove { .. } => None,
        }
    }
}

/// Validates the `<query xmlns='jabber:iq:roster'/>` of a client's roster set (RFC 6121
/// §2.1.5, §2.3.2, §2.3.3) against `limits`.
///
/// Exactly one `<item/>`; its `jid` a valid bare JID; `subscription='remove'` makes it a
/// [`RosterSet::Remove`] (name and groups then do not matter); every other `subscription`
/// value is ignored (§2.1.2.5), as are `ask` and `approved`, which clients must not send
/// (§2.1.2.1, §2.1.2.2: subscriptions change only through presence). An empty `name` is no
/// name. Groups: non-empty, within the limits, distinct.
///
/// Errors: the [`RosterError`] of the first violation; [`RosterError::condition`] gives
/// the stanza error.
pub fn parse_roster_set(query: &Node, limits: &RosterLimits) -> Result<RosterSet, RosterError> {
    if query.name != "query" || query.ns != ROSTER_NS {
        return Err(RosterError::NotRosterQuery);
    }
    let mut items = query
        .children
        .iter()
        .filter(|c| c.name == "item" && c.ns == ROSTER_NS);
    let (Some(item), None) = (items.next(), items.next()) else {
        let n = query
            .children
            .iter()
            .filter(|c| c.name == "item" && c.ns == ROSTER_NS)
            .count();
        return Err(RosterError::ItemCount(n));
    };
    let jid = parse_item_jid(item)?;
    if item.attr("subscription") == Some("remove") {
        return Ok(RosterSet::Remove { jid });
    }
    let name = match item.attr("name") {
        Some(n) if n.len() > limits.max_name_bytes => {
            return Err(RosterError::NameTooLong(n.len()))
        }
        Some("") | None => None,
        Some(n) => Some(n.to_owned()),
    };
    let mut groups: Vec<String> = Vec::new();
    for g in item
        .children
        .iter()
        .filter(|c| c.name == "group" && c.ns == ROSTER_NS)
    {
        let text = g.text.as_str();
        if text.is_empty() {
            return Err(RosterError::EmptyGroup);
        }
        if text.len() > limits.max_group_bytes {
            return Err(RosterError::GroupTooLong(text.len()));
        }
        if groups.iter().any(|have| have == text) {
            return Err(RosterError::DuplicateGroup(text.to_owned()));
        }
        if groups.len() == limits.max_groups {
            return Err(RosterError::TooManyGroups(groups.len() + 1));
        }
        groups.push(text.to_owned());
    }
    Ok(RosterSet::Update { jid, name, groups })
}

/// One entry of a roster result or push as received ([`parse_roster_items`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RosterEntry {
    /// An item with its state as shown.
    Item(RosterItem),
    /// `subscription='remove'` in a roster push (§2.5.2): the item is gone.
    Removed(String),
}

/// Parses the items of a roster result or push as a server sends them (§2.1.4, §2.1.6),
/// for clients of ours (tests, loadgen). Children other than `<item/>` are skipped.
///
/// Errors: [`RosterError::NotRosterQuery`], and those of [`RosterItem::from_node`].
pub fn parse_roster_items(query: &Node) -> Result<Vec<RosterEntry>, RosterError> {
    if query.name != "query" || query.ns != ROSTER_NS {
        return Err(RosterError::NotRosterQuery);
    }
    query
        .children
        .iter()
        .filter(|c| c.name == "item" && c.ns == ROSTER_NS)
        .map(|item| {
            if item.attr("subscription") == Some("remove") {
                parse_item_jid(item).map(RosterEntry::Removed)
            } else {
                RosterItem::from_node(item).map(RosterEntry::Item)
            }
        })
        .collect()
}

/// The normalised bare JID of an `<item/>`'s `jid` attribute.
fn parse_item_jid(item: &Node) -> Result<String, RosterError> {
    let raw = item.attr("jid").ok_or(RosterError::MissingJid)?;
    BareJid::new(raw)
        .map(|j| j.as_str().to_owned())
        .map_err(|_| RosterError::MalformedJid)
}

#[cfg(test)]
mod tests;
