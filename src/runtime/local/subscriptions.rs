//! Presence subscriptions of local users (RFC 6121 §3, Appendix A) ([`Subscriptions`]):
//! a subscription stanza from a user to a contact (outbound, §3.1.1–§3.1.2, §3.2.1,
//! §3.3.1, §3.4.1) or from a contact to a user (inbound, §3.1.3–§3.1.6, §3.2.2–§3.2.3,
//! §3.3.2–§3.3.3), each run through the state machine of [`crate::presence`]
//! ([`presence::outbound`], [`presence::inbound`]); the transition's actions are carried
//! out once its new state is durable. Unanswered requests are sent again at start
//! (Appendix A.3.1).

use super::flood_limits;
use super::link::{reply_to_client, Link};
use super::roster::{new_row, roster_item, with_state};
use crate::condition::StanzaCondition;
use crate::jid::BareJid;
use crate::presence::delivery;
use crate::presence::{self, Action, SubType, Transition};
use crate::router::bare_key;
use crate::runtime::shard::Shard;
use crate::stanza::presence as presence_stanza;
use crate::store::{Change, StoredItem};
use crate::xml::writer::write_readdressed;
use crate::xml::Element;

use super::roster::RosterState;

/// The subscription behaviour; the states are the rows of the cached rosters.
pub(super) struct Subscriptions;

impl Subscriptions {
    /// A subscription stanza from the user to `to` (stamped, roster loaded).
    pub(super) fn outbound(&self, shard: &Shard, conn: &Link, bare: &str, t: SubType, el: Element) {
        let Some(contact) = el
            .to()
            .and_then(|to| BareJid::new(bare_key(to).as_ref()).ok())
            .map(|j| j.as_str().to_owned())
        else {
            return reply_to_client(conn, &el, StanzaCondition::JidMalformed, "not a valid JID");
        };
        let max = shard.shared().config.c2s.max_roster_items;
        let planned = shard.local.roster.with_roster(shard, bare, |r| {
            let old = r.items.get(&contact).cloned();
            let tr = presence::outbound(r.state(&contact), t);
            if !tr.stored_changed {
                return Ok((tr, None));
            }
            let mut row = old.clone().unwrap_or_else(|| new_row(&contact));
            if matches!(t, SubType::Subscribe | SubType::Subscribed) && !row.in_roster {
                if r.in_roster() >= max {
                    return Err(());
                }
                row.in_roster = true;
            }
            let row = with_state(row, tr.state, None);
            flood_limits::changed(
                shard,
                &contact,
                old.as_ref().is_some_and(|o| o.pending_in.is_some()),
                row.pending_in.is_some(),
            );
            Ok((tr, Some((r.put(bare, row.clone()), row))))
        });
        let (tr, change) = match planned {
            Some(Ok(p)) => p,
            Some(Err(())) => {
                return reply_to_client(
                    conn,
                    &el,
                    StanzaCondition::NotAllowed,
                    &format!("the roster is limited to {max} items"),
                )
            }
            None => return, // no roster: a user the store does not know
        };
        self.perform(
            shard,
            bare,
            contact,
            t,
            (tr, change),
            el,
            Some(conn.clone()),
        );
    }

    /// A subscription stanza from a contact to local user `bare` (roster loaded).
    pub(super) fn inbound(&self, shard: &Shard, bare: &str, t: SubType, el: Element) {
        let Some(contact) = el
            .from()
            .and_then(|f| BareJid::new(bare_key(f).as_ref()).ok())
            .map(|j| j.as_str().to_owned())
        else {
            return;
        };
        let exists = shard
            .local
            .users
            .borrow()
            .get(bare)
            .is_some_and(|u| matches!(u.roster, RosterState::Loaded(_)));
        if !exists {
            // No such user (§8.5.1, §3.1.3: a request is refused).
            if let Some(answer) = delivery::to_unknown_user(t) {
                shard.route(presence_stanza(bare, &contact, Some(answer.as_str())));
            }
            return;
        }
        if t == SubType::Subscribe {
            if let Err(refusal) = flood_limits::rate(shard, &contact) {
                return flood_limits::refuse(shard, &el, &contact, bare, refusal);
            }
        }
        let max = shard.shared().config.c2s.max_roster_items;
        let planned = shard
            .local
            .roster
            .with_roster(shard, bare, |r| {
                let old = r.items.get(&contact).cloned();
                let tr = presence::inbound(r.state(&contact), t);
                if !tr.stored_changed {
                    return Ok((tr, None));
                }
                if old.is_none() && r.items.len() >= max.saturating_mul(2) {
                    return Err(None);
                }
                let was_pending = old.as_ref().is_some_and(|o| o.pending_in.is_some());
                let row = with_state(
                    old.unwrap_or_else(|| new_row(&contact)),
                    tr.state,
                    Some(el.as_str().to_owned()),
                );
                let pending = row.pending_in.is_some();
                if pending && !was_pending {
                    flood_limits::reserve(shard, r, &contact).map_err(Some)?;
                } else {
                    flood_limits::changed(shard, &contact, was_pending, pending);
                }
                Ok((tr, Some((r.put(bare, row.clone()), row))))
            })
            .expect("checked above");
        let (tr, change) = match planned {
            Ok(p) => p,
            Err(Some(refusal)) => {
                return flood_limits::refuse(shard, &el, &contact, bare, refusal);
            }
            Err(None) => {
                return shard.bounce(
                    &el,
                    StanzaCondition::ResourceConstraint,
                    "too many pending requests",
                )
            }
        };
        if tr.ignored() {
            return;
        }
        self.perform(shard, bare, contact, t, (tr, change), el, None);
    }

    /// Carries out a subscription transition for local user `bare` and `contact`: at once
    /// when nothing is stored, else once `change` is durable. `el` is the subscription
    /// stanza (`t`), from the user (routed on to the contact) or to the user (delivered);
    /// `(tr, change)` the transition and the row change that stores its new state;
    /// `session` the user's session that sent `el` (outbound), told when storing fails.
    #[allow(clippy::too_many_arguments)]
    fn perform(
        &self,
        shard: &Shard,
        bare: &str,
        contact: String,
        t: SubType,
        (tr, change): (Transition, Option<(Change, StoredItem)>),
        el: Element,
        session: Option<Link>,
    ) {
        let user = bare.to_owned();
        let el_copy = el.clone();
        let act = move |shard: &Shard, ver: Option<u64>, row: Option<StoredItem>| {
            for a in tr.actions.iter() {
                match a {
                    Action::RouteToContact => {
                        let mut out = Vec::with_capacity(el.bytes().len() + 16);
                        write_readdressed(&el, Some(&contact), Some(&user), &mut out);
                        shard.route_generated(&out);
                    }
                    Action::DeliverToUser => {
                        // A request goes to available resources (§3.1.3), the rest to
                        // interested ones (§3.1.6, §3.2.3, §3.3.3).
                        let to_available = t == SubType::Subscribe;
                        shard
                            .local
                            .delivery
                            .to_sessions(shard, &user, el.bytes(), |s| {
                                if to_available {
                                    s.available
                                } else {
                                    s.interested
                                }
                            });
                    }
                    Action::RosterPush => {
                        // Rows kept only for a pending request are not roster items.
                        if let (Some(ver), Some(row)) = (ver, row.as_ref().filter(|r| r.in_roster))
                        {
                            shard.local.roster.push(
                                shard,
                                &user,
                                ver,
                                Some(&roster_item(row)),
                                &contact,
                            );
                        }
                    }
                    Action::AutoReply(t) => {
                        shard.route(presence_stanza(&user, &contact, Some(t.as_str())))
                    }
                    Action::SendCurrentPresence => {
                        shard
                            .local
                            .presence
                            .send_current_presence(shard, &user, &contact);
                    }
                    Action::SendUnavailable => shard
                        .local
                        .presence
                        .send_unavailable(shard, &user, &contact),
                    Action::Ignore => {}
                }
            }
        };
        match change {
            None => act(shard, None, None),
            Some((change, row)) => {
                // Refused when it cannot be stored: nothing of it is acted on, and its
                // sender (the user's session, or the contact) gets an error.
                let refused = el_copy;
                shard
                    .local
                    .roster
                    .store_change(shard, bare, change, move |shard, ver| match ver {
                        Ok(ver) => act(shard, Some(ver), Some(row)),
                        Err(e) => {
                            let (c, text) = (
                                e.stanza_condition(),
                                "the subscription state could not be stored",
                            );
                            match &session {
                                Some(conn) => reply_to_client(conn, &refused, c, text),
                                None => shard.bounce(&refused, c, text),
                            }
                        }
                    });
            }
        }
    }

    /// Sends stored, unanswered subscription requests again (at start): the contact's
    /// server ignores a duplicate (RFC 6121 Appendix A.3.1), and a request that was
    /// acknowledged to its sender just before a crash is not lost.
    pub(super) fn resend(&self, shard: &Shard, pairs: Vec<(String, String)>) {
        for (user, contact) in pairs {
            shard.route(presence_stanza(&user, &contact, Some("subscribe")));
        }
    }
}
