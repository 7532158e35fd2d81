//! What a client's roster set does (RFC 6121 §2.3 add, §2.4 update, §2.5 delete), as a
//! plan the runtime executes: what is stored, what the client is answered, what is pushed
//! to the user's interested resources (§2.1.6) and which subscription stanzas go to the
//! contact.
//!
//! ```text
//!   <iq type='set'><query xmlns='jabber:iq:roster'><item …/></query></iq>
//!     └─► plan(query, limits, max_items, held) ─┬─ Store { item, added }
//!                                               ├─ Remove { jid, transition }
//!                                               └─ Refuse(error)
//! ```
//!
//! The plan is made against what the server holds for the user ([`Held`]); the runtime
//! makes the change durable first, and only then answers, pushes and sends (DESIGN.md:
//! "durable before acknowledged or forwarded"). If storing fails, the client gets
//! `internal-server-error` and nothing else happens.

use super::{parse_roster_set, remove, RosterError, RosterItem, RosterLimits, RosterSet};
use super::{SubState, Transition};
use crate::condition::StanzaCondition;
use crate::xml::tree::Node;

/// What the server holds for one contact of the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeldContact {
    /// The contact is a roster item (the user added it, or a subscription made it one).
    /// A record can exist without an item: a contact's request the user has not answered
    /// ("None + Pending In" without an item, Appendix A.1).
    pub in_roster: bool,
    /// The subscription state with the contact.
    pub state: SubState,
}

impl HeldContact {
    /// Whether a removal has something to remove: an item, or a subscription state other
    /// than "None" (a pending request, a pre-approval).
    fn removable(&self) -> bool {
        self.in_roster || !self.state.is_none()
    }
}

/// What the server holds for the user, as far as a roster set needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Held {
    /// The record for the set's contact, if any.
    pub contact: Option<HeldContact>,
    /// How many roster items the user has.
    pub items: usize,
}

/// Why a roster set is refused; [`SetError::condition`] is the stanza error to answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SetError {
    /// The `<query/>` is not a valid roster set (§2.3.3; [`RosterError::condition`]).
    #[error(transparent)]
    Invalid(#[from] RosterError),
    /// Adding the item would exceed the server's limit on roster items
    /// (`c2s.max_roster_items`): `not-allowed` (RFC 6120 §8.3.3.9: the server does not
    /// allow the action; RFC 6121 leaves the limit to the server, issue 21).
    #[error("the roster is limited to {0} items")]
    Full(usize),
    /// A removal names no item (§2.5.3): `item-not-found`. Also any set for a user of
    /// whom the server holds no roster (an account the store does not know).
    #[error("no such roster item")]
    NotFound,
}

impl SetError {
    /// The stanza error condition the roster set is answered with.
    pub fn condition(&self) -> StanzaCondition {
        match self {
            SetError::Invalid(e) => e.condition(),
            SetError::Full(_) => StanzaCondition::NotAllowed,
            SetError::NotFound => StanzaCondition::ItemNotFound,
        }
    }
}

/// What a roster set does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Add the item (§2.3.2) or update its name and groups (§2.4.2): store `item` (the
    /// contact's record keeps whatever else the server holds for it, and becomes a roster
    /// item); once durable, answer the client with an IQ result, then push `item` to the
    /// user's interested resources (§2.1.6). The subscription state is the one held: a
    /// roster set never changes it (§2.1.2.5; `subscription`, `ask` and `approved` in
    /// the set are ignored, §2.1.2.1, §2.1.2.2).
    Store {
        /// The item as stored and pushed.
        item: RosterItem,
        /// It was not a roster item before (§2.3); `false` for an update (§2.4).
        added: bool,
    },
    /// Delete the contact (§2.5.2): remove its record; once durable, perform
    /// `transition.actions` in order: [`super::Action::SendUnavailable`] (unavailable
    /// presence from each available resource to the contact),
    /// [`super::Action::AutoReply`] (`unsubscribe`, `unsubscribed` to the contact, as
    /// [`remove`] plans them from the held state), and last [`super::Action::RosterPush`]:
    /// answer the client with an IQ result, then push the removal
    /// (`subscription='remove'`) to the interested resources.
    Remove {
        /// The contact's bare JID.
        jid: String,
        /// The subscription transition (to "None") and its actions.
        transition: Transition,
    },
    /// Refuse it: answer the client with [`SetError::condition`]; nothing is stored,
    /// pushed or sent.
    Refuse(SetError),
}

/// Plans the client's roster set `query` (the `<query xmlns='jabber:iq:roster'/>` of an
/// IQ set the user's own resource sent to its account, RFC 6121 §2.1.5).
///
/// `query` is validated by [`parse_roster_set`] against `limits`; `held` is then asked
/// for what the server holds for the user, given the contact's normalised bare JID
/// (`None`: no roster for this user, every set is [`SetError::NotFound`]). `max_items`
/// bounds the roster: a set that adds an item to a roster already that long is refused
/// ([`SetError::Full`]); updating an existing item is not.
///
/// A removal of a contact the server holds nothing for (no item, state "None") is
/// [`SetError::NotFound`] (§2.5.3). A removal of a record that is not a roster item but
/// holds a pending request from the contact removes it too, and denies the request
/// (`unsubscribed`, as [`remove`] plans it).
pub fn plan(
    query: &Node,
    limits: &RosterLimits,
    max_items: usize,
    held: impl FnOnce(&str) -> Option<Held>,
) -> Plan {
    let set = match parse_roster_set(query, limits) {
        Ok(s) => s,
        Err(e) => return Plan::Refuse(SetError::Invalid(e)),
    };
    let Some(held) = held(set.jid()) else {
        return Plan::Refuse(SetError::NotFound);
    };
    match set {
        RosterSet::Update { jid, name, groups } => {
            let added = held.contact.is_none_or(|c| !c.in_roster);
            if added && held.items >= max_items {
                return Plan::Refuse(SetError::Full(max_items));
            }
            let state = held.contact.map(|c| c.state).unwrap_or_default();
            Plan::Store {
                item: RosterItem {
                    jid,
                    name,
                    groups,
                    state,
                },
                added,
            }
        }
        RosterSet::Remove { jid } => match held.contact {
            Some(c) if c.removable() => Plan::Remove {
                jid,
                transition: remove(c.state),
            },
            _ => Plan::Refuse(SetError::NotFound),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::Action;
    use crate::xml::parse_stanza;

    fn query(item: &str) -> Node {
        let el = parse_stanza(
            format!("<iq type='set' id='r'><query xmlns='jabber:iq:roster'>{item}</query></iq>")
                .as_bytes(),
        )
        .unwrap();
        Node::parse(&el).unwrap().children.remove(0)
    }

    #[test]
    fn held_is_asked_with_the_normalised_jid() {
        let mut asked = String::new();
        let p = plan(
            &query("<item jid='Juliet@Example.COM'/>"),
            &RosterLimits::default(),
            10,
            |jid| {
                asked = jid.to_owned();
                Some(Held::default())
            },
        );
        assert_eq!(asked, "juliet@example.com");
        assert!(matches!(p, Plan::Store { added: true, .. }));
    }

    #[test]
    fn invalid_set_is_refused_before_the_roster_is_read() {
        let p = plan(&query(""), &RosterLimits::default(), 10, |_| {
            panic!("not asked")
        });
        assert_eq!(
            p,
            Plan::Refuse(SetError::Invalid(RosterError::ItemCount(0)))
        );
    }

    #[test]
    fn removal_ends_with_the_push() {
        let p = plan(
            &query("<item jid='a@b' subscription='remove'/>"),
            &RosterLimits::default(),
            10,
            |_| {
                Some(Held {
                    contact: Some(HeldContact {
                        in_roster: true,
                        state: SubState::BOTH,
                    }),
                    items: 1,
                })
            },
        );
        let Plan::Remove { transition, .. } = p else {
            panic!("{p:?}")
        };
        assert_eq!(transition.actions.last(), Some(&Action::RosterPush));
    }
}
