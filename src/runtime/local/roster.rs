//! Rosters (RFC 6121 §2) ([`Rosters`]): the cache of each known user's roster ([`Roster`],
//! loaded from the store when first needed and kept while the user is known), roster get
//! with versioning (§2.2, §2.6), roster set (§2.3–§2.5, as [`roster_set::plan`] plans
//! it) and roster pushes (§2.1.6).
//!
//! Every change to a roster is made durable before anything is acted on (DESIGN.md:
//! "durable before acknowledged or forwarded"): the cache takes the new state at once, so
//! later stanzas see it, and the change's actions (routing, roster pushes, replies) run in
//! the store's answer ([`Rosters::store_change`]); until then later stanzas from and to
//! the user wait ([`super::users::Users::hold`]).

use std::collections::BTreeMap;
use std::time::Instant;

use tracing::warn;

use super::link::{reply_to_client, send_to, Link};
use crate::condition::StanzaCondition;
use crate::metrics::Latency;
use crate::presence::roster_set::{self, Held, HeldContact, Plan};
use crate::presence::{
    self, write_removed_item, Action, RosterItem, RosterLimits, SubState, Subscription,
};
use crate::runtime::shard::Shard;
use crate::stanza::presence as presence_stanza;
use crate::store::{Change, Op, Outcome, StoreError, StoredItem};
use crate::xml::tree::Node;
use crate::xml::writer::write_raw_attr;
use crate::xml::{escape_attr_into, Element};

/// A user's roster in the cache.
#[derive(Default)]
pub(super) enum RosterState {
    #[default]
    Unloaded,
    Loading,
    Loaded(Roster),
    /// The store has no such user.
    NoSuchUser,
}

/// A user's roster as cached: version and rows by contact (including rows that only keep
/// a pending inbound request, `in_roster == false`).
pub(super) struct Roster {
    ver: u64,
    pub(super) items: BTreeMap<String, StoredItem>,
}

impl Roster {
    pub(super) fn state(&self, contact: &str) -> SubState {
        self.items
            .get(contact)
            .map(StoredItem::sub_state)
            .unwrap_or_default()
    }

    /// Caches `row` for `user` and returns the change that stores it: the row is deleted
    /// once it holds nothing (not a roster item, state "None", nothing pending).
    pub(super) fn put(&mut self, user: &str, row: StoredItem) -> Change {
        if !row.in_roster && row.sub_state().is_none() {
            self.items.remove(&row.contact);
            Change::RemoveItem {
                user: user.to_owned(),
                contact: row.contact,
            }
        } else {
            self.items.insert(row.contact.clone(), row.clone());
            Change::UpsertItem {
                user: user.to_owned(),
                item: row,
            }
        }
    }

    pub(super) fn in_roster(&self) -> usize {
        self.items.values().filter(|i| i.in_roster).count()
    }

    /// What a roster set for `contact` needs to know ([`roster_set::plan`]).
    fn held(&self, contact: &str) -> Held {
        Held {
            contact: self.items.get(contact).map(|i| HeldContact {
                in_roster: i.in_roster,
                state: i.sub_state(),
            }),
            items: self.in_roster(),
        }
    }

    /// Contacts whose subscription satisfies `f`.
    pub(super) fn contacts(&self, f: impl Fn(Subscription) -> bool) -> Vec<String> {
        self.items
            .values()
            .filter(|i| f(i.sub_state().subscription))
            .map(|i| i.contact.clone())
            .collect()
    }
}

/// A roster push (RFC 6121 §2.1.6) of `item` (or its removal) to `to`.
fn roster_push(to: &str, id: u64, ver: u64, item: Option<&RosterItem>, contact: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(b"<iq type='set' id='push");
    out.extend_from_slice(id.to_string().as_bytes());
    out.extend_from_slice(b"' to='");
    escape_attr_into(to, &mut out);
    out.extend_from_slice(b"'><query xmlns='jabber:iq:roster' ver='");
    out.extend_from_slice(ver.to_string().as_bytes());
    out.extend_from_slice(b"'>");
    match item {
        Some(i) => i.write_xml(&mut out),
        None => write_removed_item(contact, &mut out),
    }
    out.extend_from_slice(b"</query></iq>");
    out
}

pub(super) fn roster_item(s: &StoredItem) -> RosterItem {
    RosterItem {
        jid: s.contact.clone(),
        name: s.name.clone(),
        groups: s.groups.clone(),
        state: s.sub_state(),
    }
}

/// `s` with its subscription state replaced by `state`.
pub(super) fn with_state(
    mut s: StoredItem,
    state: SubState,
    pending_in: Option<String>,
) -> StoredItem {
    let st = state.normalized();
    s.subscription = st.subscription.as_str().to_owned();
    s.pending_out = st.pending_out;
    s.pre_approved = st.pre_approved;
    s.pending_in = if st.pending_in {
        pending_in.or(s.pending_in)
    } else {
        None
    };
    s
}

pub(super) fn new_row(contact: &str) -> StoredItem {
    StoredItem {
        contact: contact.to_owned(),
        name: None,
        groups: Vec::new(),
        subscription: "none".to_owned(),
        pending_out: false,
        pending_in: None,
        pre_approved: false,
        in_roster: false,
    }
}

fn iq_result(conn: &Link, el: &Element) {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"<iq type='result'");
    write_raw_attr("to", el.from(), &mut out);
    write_raw_attr("id", el.id(), &mut out);
    out.extend_from_slice(b"/>");
    send_to(conn, &[&out]);
}

/// The roster behaviour; the cached rosters are in [`super::users::User::roster`].
pub(super) struct Rosters;

impl Rosters {
    /// Starts loading `bare`'s roster unless it is cached or loading; what waits for it
    /// goes on in the store's answer.
    pub(super) fn ensure(&self, shard: &Shard, bare: &str) {
        {
            let mut users = shard.local.users.borrow_mut();
            let user = users.entry(bare.to_owned()).or_default();
            if !matches!(user.roster, RosterState::Unloaded) {
                return;
            }
            user.roster = RosterState::Loading;
        }
        // The block list first: its answer comes before the roster's, which the stanzas
        // that need either wait for.
        shard.local.blocking.load(shard, bare);
        let user = bare.to_owned();
        shard.local.store.submit(
            shard,
            Op::Roster { user: user.clone() },
            Box::new(move |shard, result| {
                let state = match result {
                    Ok(Outcome::Roster((ver, items))) => RosterState::Loaded(Roster {
                        ver,
                        items: items.into_iter().map(|i| (i.contact.clone(), i)).collect(),
                    }),
                    Err(StoreError::NoSuchUser(_)) => RosterState::NoSuchUser,
                    Ok(_) | Err(_) => {
                        warn!(%user, "loading the roster failed; retrying on the next stanza");
                        RosterState::Unloaded
                    }
                };
                let retry = matches!(state, RosterState::Unloaded);
                if !retry {
                    let exists = matches!(state, RosterState::Loaded(_));
                    let ttl = shard.shared().config.c2s.unknown_user_cache;
                    shard.local.users.account_known(&user, exists, ttl);
                }
                {
                    let mut users = shard.local.users.borrow_mut();
                    let Some(u) = users.get_mut(&user) else {
                        return;
                    };
                    u.roster = state;
                    if retry {
                        // Drop what waited rather than loop; senders get no answer.
                        let dropped = u.drop_deferred();
                        warn!(user = %user, dropped, "stanzas dropped");
                    }
                }
                shard.local.users.resume(shard, &user);
            }),
        );
    }

    /// Runs `f` on `bare`'s roster if it is loaded.
    pub(super) fn with_roster<R>(
        &self,
        shard: &Shard,
        bare: &str,
        f: impl FnOnce(&mut Roster) -> R,
    ) -> Option<R> {
        let mut users = shard.local.users.borrow_mut();
        match users.get_mut(bare).map(|u| &mut u.roster) {
            Some(RosterState::Loaded(r)) => Some(f(r)),
            _ => None,
        }
    }

    /// RFC 6121 §2.2, with versioning (§2.6): an empty result when the client's `ver` is
    /// current.
    pub(super) fn get(&self, shard: &Shard, conn: &Link, bare: &str, el: &Element, query: &Node) {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(b"<iq type='result'");
        write_raw_attr("to", el.from(), &mut out);
        write_raw_attr("id", el.id(), &mut out);
        let ok = self.with_roster(shard, bare, |r| {
            let ver = r.ver.to_string();
            if query.attr("ver") == Some(ver.as_str()) {
                out.extend_from_slice(b"/>");
                return;
            }
            out.push(b'>');
            let items: Vec<RosterItem> = r
                .items
                .values()
                .filter(|i| i.in_roster)
                .map(roster_item)
                .collect();
            presence::write_query(&items, Some(&ver), &mut out);
            out.extend_from_slice(b"</iq>");
        });
        if ok.is_none() {
            return reply_to_client(conn, el, StanzaCondition::InternalServerError, "no roster");
        }
        if let Some(u) = shard.local.users.borrow_mut().get_mut(bare) {
            if let Some(s) = u.sessions.iter_mut().find(|s| s.conn.id == conn.id) {
                s.interested = true;
            }
        }
        send_to(conn, &[&out]);
    }

    /// RFC 6121 §2.3–§2.5: add, update or remove an item, as [`roster_set::plan`] plans
    /// it. The cache takes the change at once (later stanzas see it); the answer, the
    /// pushes and the subscription stanzas follow once the store made it durable.
    pub(super) fn set(&self, shard: &Shard, conn: &Link, bare: &str, el: Element, query: &Node) {
        let max = shard.shared().config.c2s.max_roster_items;
        let (plan, row) = {
            let mut users = shard.local.users.borrow_mut();
            let roster = match users.get_mut(bare).map(|u| &mut u.roster) {
                Some(RosterState::Loaded(r)) => Some(r),
                _ => None,
            };
            let plan = roster_set::plan(query, &RosterLimits::default(), max, |jid| {
                roster.as_deref().map(|r| r.held(jid))
            });
            let row = match (&plan, roster) {
                (Plan::Store { item, .. }, Some(r)) => {
                    // The contact's record keeps what else it holds (a pending request).
                    let mut row = r
                        .items
                        .get(&item.jid)
                        .cloned()
                        .unwrap_or_else(|| new_row(&item.jid));
                    row.name = item.name.clone();
                    row.groups = item.groups.clone();
                    row.in_roster = true;
                    r.items.insert(item.jid.clone(), row.clone());
                    Some(row)
                }
                (Plan::Remove { jid, .. }, Some(r)) => {
                    if r.items.remove(jid).is_some_and(|o| o.pending_in.is_some()) {
                        super::flood_limits::changed(shard, jid, true, false);
                    }
                    None
                }
                _ => None,
            };
            (plan, row)
        };
        let user = bare.to_owned();
        let conn = conn.clone();
        // Nothing was stored and the cache is read again: the client may retry
        // (`resource-constraint` while the disk is full).
        let failed = |conn: &Link, el: &Element, e: StoreError| {
            reply_to_client(
                conn,
                el,
                e.stanza_condition(),
                "the roster could not be stored",
            )
        };
        match plan {
            Plan::Refuse(e) => reply_to_client(&conn, &el, e.condition(), &e.to_string()),
            Plan::Store { item, .. } => {
                let Some(row) = row else { return }; // a plan to store comes with a roster
                let change = Change::UpsertItem {
                    user: bare.to_owned(),
                    item: row,
                };
                self.store_change(shard, bare, change, move |shard, ver| match ver {
                    Ok(ver) => {
                        iq_result(&conn, &el);
                        shard
                            .local
                            .roster
                            .push(shard, &user, ver, Some(&item), &item.jid);
                    }
                    Err(e) => failed(&conn, &el, e),
                });
            }
            Plan::Remove { jid, transition } => {
                let change = Change::RemoveItem {
                    user: bare.to_owned(),
                    contact: jid.clone(),
                };
                self.store_change(shard, bare, change, move |shard, ver| {
                    let ver = match ver {
                        Ok(ver) => ver,
                        Err(e) => return failed(&conn, &el, e),
                    };
                    for a in transition.actions.iter() {
                        match a {
                            Action::SendUnavailable => {
                                shard.local.presence.send_unavailable(shard, &user, &jid)
                            }
                            Action::AutoReply(t) => {
                                shard.route(presence_stanza(&user, &jid, Some(t.as_str())))
                            }
                            Action::RosterPush => {
                                iq_result(&conn, &el);
                                shard.local.roster.push(shard, &user, ver, None, &jid);
                            }
                            _ => {}
                        }
                    }
                });
            }
        }
    }

    /// Makes `change` to `bare`'s roster durable, then runs `then` with the new roster
    /// version, or why storing failed (nothing of `change` is stored then, and the
    /// cached roster was dropped, to be read again from the store: see
    /// [`Rosters::applied`]). Until `then` has run, later stanzas from and to `bare` wait
    /// ([`super::users::Users::admit`]).
    pub(super) fn store_change(
        &self,
        shard: &Shard,
        bare: &str,
        change: Change,
        then: impl FnOnce(&Shard, Result<u64, StoreError>) + 'static,
    ) {
        shard.local.users.hold(bare);
        let user = bare.to_owned();
        let t0 = Instant::now();
        shard.local.store.submit(
            shard,
            Op::Apply(vec![change]),
            Box::new(move |shard, result| {
                crate::runtime::metrics(|m| m.observe(Latency::StoreCommit, t0.elapsed()));
                let ver = shard.local.roster.applied(shard, &user, result);
                then(shard, ver);
                shard.local.users.release(shard, &user);
            }),
        );
    }

    /// The version after an `Apply`, recorded in the cache; the error on failure.
    ///
    /// The cache took the change before it was stored ([`Rosters::set`]), so on failure
    /// it no longer matches the store: it is dropped (and read again by the next stanza
    /// that needs it), so that nothing half-applied stays. Stanzas from and to the user
    /// wait meanwhile ([`Rosters::store_change`] holds the user), so none saw the
    /// unstored state.
    fn applied(
        &self,
        shard: &Shard,
        bare: &str,
        result: Result<Outcome, StoreError>,
    ) -> Result<u64, StoreError> {
        match result {
            Ok(Outcome::Applied(v)) => {
                let ver = v.last().copied().unwrap_or(0);
                self.with_roster(shard, bare, |r| r.ver = r.ver.max(ver));
                Ok(ver)
            }
            other => {
                let e = match other {
                    Err(e) => e,
                    Ok(o) => StoreError::Corrupt(format!("unexpected answer {o:?}")),
                };
                warn!(user = bare, error = %e, "storing a roster change failed; nothing of it is kept");
                if let Some(u) = shard.local.users.borrow_mut().get_mut(bare) {
                    u.roster = RosterState::Unloaded;
                }
                Err(e)
            }
        }
    }

    /// A roster push to every interested resource of `bare` (RFC 6121 §2.1.6).
    pub(super) fn push(
        &self,
        shard: &Shard,
        bare: &str,
        ver: u64,
        item: Option<&RosterItem>,
        contact: &str,
    ) {
        let targets: Vec<(Link, String)> = shard
            .local
            .users
            .borrow()
            .get(bare)
            .map(|u| {
                u.sessions
                    .iter()
                    .filter(|s| s.interested)
                    .map(|s| (s.conn.clone(), s.full.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for (conn, full) in targets {
            let id = shard.local.store.next_tag();
            send_to(&conn, &[&roster_push(&full, id, ver, item, contact)]);
        }
    }
}
