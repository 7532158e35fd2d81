//! The local users this shard owns ([`Users`]): per user its bound sessions, its cached
//! roster, and the stanzas from and to it that wait, in order (RFC 6120 §10.1: in-order
//! processing), for the roster to load or for a roster change to be made durable.
//!
//! A user is known while it has a session, something waits for it, or its roster is
//! loading or being changed; once none of these holds it is forgotten
//! ([`Users::maybe_forget`]): offline users cost no memory. The stanzas that read the
//! roster (RFC 6121 §2 roster queries, §3 subscription stanzas, §4.3 probes, a client's
//! presence without `to`, §4.2–§4.5) make it load ([`Users::admit`]).
//!
//! A bare JID the store just said has no account is remembered for
//! `c2s.unknown_user_cache` ([`AbsentUsers`]): stanzas from other entities to it are then
//! answered without a store round trip each (a stream of messages to an unknown user, or
//! a peer probing addresses, would otherwise serialise on the store).

use std::cell::{Ref, RefCell, RefMut};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::roster::RosterState;
use super::sessions::Session;
use crate::blocking::NS_BLOCKING;
use crate::presence::{client, SubType, ROSTER_NS};
use crate::router::bare_key;
use crate::router::fanout::SharedStanza;
use crate::runtime::conn::ConnId;
use crate::runtime::shard::Shard;
use crate::stanza::StanzaKind;
use crate::xml::{Element, Needle};

/// The users with state on this shard, by bare JID.
pub(super) struct Users {
    map: RefCell<HashMap<String, User>>,
    absent: RefCell<AbsentUsers>,
}

/// Bare JIDs the store recently answered `NoSuchUser` for, each until an expiry
/// (`c2s.unknown_user_cache`, default 2 s): a bounded negative cache. An account created
/// meanwhile (XEP-0077 registration, the admin command, another cluster node) is seen at
/// most that late, and
/// only by stanzas from others to a user with no session on this shard; a login, a
/// roster query or anything the user sends still loads from the store. Pure: time is
/// passed in.
#[derive(Debug, Default)]
pub(crate) struct AbsentUsers {
    until: HashMap<String, Instant>,
}

impl AbsentUsers {
    /// At most this many bare JIDs are remembered per shard (a flood of made-up
    /// addresses costs at most this much memory: beyond it, expired entries go, and if
    /// none has expired the cache starts over).
    pub(crate) const MAX: usize = 4096;

    /// Remembers that `bare` has no account, from `now` for `ttl` (zero: not at all).
    pub(crate) fn insert(&mut self, bare: &str, now: Instant, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        if self.until.len() >= Self::MAX && !self.until.contains_key(bare) {
            self.until.retain(|_, t| *t > now);
            if self.until.len() >= Self::MAX {
                self.until.clear();
            }
        }
        self.until.insert(bare.to_owned(), now + ttl);
    }

    /// Forgets `bare` (its roster loaded: the account exists).
    pub(crate) fn remove(&mut self, bare: &str) {
        self.until.remove(bare);
    }

    /// Whether `bare` is known to have no account at `now` (an expired entry is dropped).
    pub(crate) fn contains(&mut self, bare: &str, now: Instant) -> bool {
        match self.until.get(bare) {
            Some(t) if *t > now => true,
            Some(_) => {
                self.until.remove(bare);
                false
            }
            None => false,
        }
    }

    /// How many bare JIDs are remembered (expired ones included until next touched).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.until.len()
    }
}

/// One local user with a session, or whose roster was needed.
#[derive(Default)]
pub(super) struct User {
    pub(super) sessions: Vec<Session>,
    pub(super) roster: RosterState,
    /// The block list (XEP-0191), normalised JIDs: loaded with the roster (just before
    /// it, [`super::roster::Rosters::ensure`]), changed by [`super::blocking`].
    pub(super) blocked: Vec<String>,
    /// Stanzas from or to the user waiting, in order, for the roster to load or for
    /// `busy` to drop to zero.
    deferred: VecDeque<Deferred>,
    /// Changes to the user's roster being made durable: until their actions ran, later
    /// stanzas from and to the user wait (RFC 6120 §10.1: in-order processing).
    busy: u32,
}

impl User {
    /// Drops what waited (the roster could not be loaded); how many there were.
    pub(super) fn drop_deferred(&mut self) -> usize {
        let n = self.deferred.len();
        self.deferred.clear();
        n
    }
}

/// Whether a presence stanza carries XEP-0115 caps (PEP needs the roster for it).
fn has_caps(el: &Element) -> bool {
    static CAPS: Needle = Needle::new(crate::pep::NS_CAPS);
    CAPS.is_in(el.inner())
}

/// [`Deferred::needs_roster`] of a stanza to the user from elsewhere.
fn inbound_needs_roster(el: &Element) -> bool {
    match StanzaKind::of(el) {
        // Available presence with XEP-0115 caps: PEP checks the subscription.
        Some(StanzaKind::Presence) => match el.type_() {
            Some(t) => t == "probe" || SubType::from_type(t).is_some(),
            None => has_caps(el),
        },
        // A request is checked against the block list (XEP-0191 §3.3), and a XEP-0030
        // query to the bare JID is answered for the account only if it exists (RFC 6121
        // §8.5.1, `service::answer_account`); a PEP request (XEP-0163) is answered per
        // the subscription (access model `presence`).
        Some(StanzaKind::Iq) => matches!(el.type_(), Some("get" | "set")),
        // Messages need the block list (XEP-0191 §3.3), loaded with the roster.
        Some(StanzaKind::Message) => el.type_() != Some("error"),
        None => false,
    }
}

/// What [`Users::admit_inbound`] decided for a stanza to a local user.
pub(super) enum Admitted {
    /// To be handled now; the recipient's bare JID ([`bare_key`]).
    Now(Element, String),
    /// To be handled now, for an address known to have no account: no entry was made for
    /// it (nothing to forget afterwards).
    Absent(Element),
    /// Queued behind the user's earlier stanzas or roster load (or dropped: no `to`).
    Queued,
}

/// A stanza waiting for its user's roster or earlier stanzas.
pub(super) enum Deferred {
    /// From one of the user's sessions (stamped).
    FromClient(ConnId, Element),
    /// To the user from elsewhere.
    Inbound(Element),
    /// A presence broadcast to the user (bare JID).
    Broadcast(SharedStanza, Box<str>),
}

impl Deferred {
    /// Whether handling it reads `bare`'s roster or block list: roster queries,
    /// subscription stanzas, presence broadcasts and probes, XEP-0030 queries to the bare
    /// JID (which need to know whether the account exists), block list requests, and
    /// what the user sends to others or receives (checked against the block list,
    /// XEP-0191 §3.3).
    fn needs_roster(&self, bare: &str) -> bool {
        match self {
            // What the user sends to others is checked against the block list
            // (XEP-0191 §3.3), which loads with the roster.
            Deferred::FromClient(_, el) => match StanzaKind::of(el) {
                Some(StanzaKind::Presence) => {
                    client::needs_roster(el.type_(), el.to().is_some()) || el.to().is_some()
                }
                Some(StanzaKind::Iq) => {
                    let to_self = el
                        .to()
                        .is_none_or(|t| !t.contains('/') && bare_key(t) == bare);
                    static ROSTER: Needle = Needle::new(ROSTER_NS);
                    static BLOCKING: Needle = Needle::new(NS_BLOCKING);
                    !to_self || ROSTER.is_in(el.inner()) || BLOCKING.is_in(el.inner())
                }
                Some(StanzaKind::Message) => true,
                None => false,
            },
            Deferred::Inbound(el) => inbound_needs_roster(el),
            Deferred::Broadcast(s, _) => s.element().type_().is_none() && has_caps(s.element()),
        }
    }
}

impl Users {
    pub(super) fn new() -> Users {
        Users {
            map: RefCell::new(HashMap::new()),
            absent: RefCell::new(AbsentUsers::default()),
        }
    }

    /// The users, to read.
    pub(super) fn borrow(&self) -> Ref<'_, HashMap<String, User>> {
        self.map.borrow()
    }

    /// The users, to change.
    pub(super) fn borrow_mut(&self) -> RefMut<'_, HashMap<String, User>> {
        self.map.borrow_mut()
    }

    /// [`Users::admit`] for a stanza to a local user from elsewhere
    /// ([`Deferred::Inbound`]), keyed by its `to`: without a copy of the bare JID or an
    /// entry for a user known to have no account (`c2s.unknown_user_cache`), which a
    /// flood of stanzas to made-up addresses would otherwise cost per stanza.
    pub(super) fn admit_inbound(&self, shard: &Shard, el: Element) -> Admitted {
        let owned = {
            let Some(to) = el.to() else {
                return Admitted::Queued;
            };
            let bare = bare_key(to);
            // The cache fills only with addresses the store said have no account; while
            // it is empty, asking it hashes nothing.
            let known_absent = inbound_needs_roster(&el)
                && self
                    .absent
                    .borrow_mut()
                    .contains(&bare, crate::runtime::now())
                && !self.map.borrow().contains_key(&*bare);
            (!known_absent).then(|| bare.into_owned())
        };
        let Some(bare) = owned else {
            // Known to have no account: handled as after a load that said so, without
            // asking the store again, and without an entry to make and forget.
            crate::runtime::count_static("unknown_user_cache_hits", "", "", 1);
            return Admitted::Absent(el);
        };
        match self.admit(shard, &bare, Deferred::Inbound(el)) {
            Some(Deferred::Inbound(el)) => Admitted::Now(el, bare),
            _ => Admitted::Queued,
        }
    }

    /// Whether `d` (from or to `bare`) may be handled now: `Some(d)` back, or `None` when
    /// it was queued behind earlier stanzas, a roster change being stored, or the roster
    /// it needs (whose load starts).
    pub(super) fn admit(&self, shard: &Shard, bare: &str, d: Deferred) -> Option<Deferred> {
        let needs = d.needs_roster(bare);
        let start_load = {
            let mut users = self.map.borrow_mut();
            // (A stanza to an address the unknown-user cache holds never gets here:
            // `admit_inbound` handles it without an entry.)
            if !needs && !users.contains_key(bare) {
                return Some(d);
            }
            let user = users.entry(bare.to_owned()).or_default();
            let ready = matches!(
                user.roster,
                RosterState::Loaded(_) | RosterState::NoSuchUser
            );
            if user.busy == 0 && user.deferred.is_empty() && (ready || !needs) {
                return Some(d);
            }
            user.deferred.push_back(d);
            needs && matches!(user.roster, RosterState::Unloaded)
        };
        if start_load {
            shard.local.roster.ensure(shard, bare);
        }
        None
    }

    /// Handles what waited for `bare`, in order, until something blocks again.
    pub(super) fn resume(&self, shard: &Shard, bare: &str) {
        // Bounded: each turn takes one queued stanza.
        for _ in 0..1_000_000 {
            let (next, load) = {
                let mut users = self.map.borrow_mut();
                let Some(user) = users.get_mut(bare) else {
                    return;
                };
                if user.busy > 0 {
                    return;
                }
                let Some(front) = user.deferred.front() else {
                    break;
                };
                if front.needs_roster(bare) {
                    match user.roster {
                        RosterState::Loading => return,
                        RosterState::Unloaded => (None, true),
                        RosterState::Loaded(_) | RosterState::NoSuchUser => {
                            (user.deferred.pop_front(), false)
                        }
                    }
                } else {
                    (user.deferred.pop_front(), false)
                }
            };
            if load {
                return shard.local.roster.ensure(shard, bare);
            }
            match next {
                Some(Deferred::FromClient(id, el)) => {
                    let kind = StanzaKind::of(&el).unwrap_or(StanzaKind::Iq);
                    shard.local.client.client_stanza_now(shard, id, kind, el);
                }
                Some(Deferred::Inbound(el)) => shard.local.delivery.deliver_now(shard, el, false),
                Some(Deferred::Broadcast(stanza, to)) => {
                    shard.local.presence.deliver_broadcast(shard, &stanza, &to)
                }
                None => break,
            }
        }
        if self.maybe_forget(bare) {
            shard.local.pep.forget(bare);
        }
    }

    /// A roster change of `bare` is being stored: later stanzas wait.
    pub(super) fn hold(&self, bare: &str) {
        if let Some(u) = self.map.borrow_mut().get_mut(bare) {
            u.busy += 1;
        }
    }

    /// A roster change of `bare` is stored and acted on: what waited goes on.
    pub(super) fn release(&self, shard: &Shard, bare: &str) {
        if let Some(u) = self.map.borrow_mut().get_mut(bare) {
            u.busy = u.busy.saturating_sub(1);
        }
        self.resume(shard, bare);
    }

    /// Records the store's answer on whether `bare` has an account (see [`AbsentUsers`]).
    /// `ttl` is `c2s.unknown_user_cache`.
    pub(super) fn account_known(&self, bare: &str, exists: bool, ttl: Duration) {
        let mut absent = self.absent.borrow_mut();
        if exists {
            absent.remove(bare);
        } else {
            absent.insert(bare, Instant::now(), ttl);
        }
    }

    /// Drops the cached state of a user with no session and nothing waiting: offline
    /// users cost no memory, and stanzas for unknown users leave nothing behind. (Changes
    /// in flight are not lost: the store applies requests in order, so a later load sees
    /// them.)
    /// Whether it was forgotten (its PEP state then goes too, [`super::pep::Pep::forget`]).
    pub(super) fn maybe_forget(&self, bare: &str) -> bool {
        let mut users = self.map.borrow_mut();
        let idle = users.get(bare).is_some_and(|u| {
            u.sessions.is_empty()
                && u.deferred.is_empty()
                && u.busy == 0
                && !matches!(u.roster, RosterState::Loading)
        });
        if idle {
            users.remove(bare);
        }
        idle
    }
}

#[cfg(test)]
mod tests {
    use super::AbsentUsers;
    use std::time::{Duration, Instant};

    const TTL: Duration = Duration::from_secs(2);

    #[test]
    fn absent_users_expire_and_are_forgotten_when_they_exist() {
        let t0 = Instant::now();
        let mut a = AbsentUsers::default();
        a.insert("ghost@a.test", t0, TTL);
        assert!(a.contains("ghost@a.test", t0));
        assert!(a.contains("ghost@a.test", t0 + TTL - Duration::from_millis(1)));
        assert!(!a.contains("other@a.test", t0));
        assert!(
            !a.contains("ghost@a.test", t0 + TTL),
            "an answer outlives its ttl"
        );
        assert_eq!(a.len(), 0, "an expired entry is dropped when looked up");
        a.insert("ghost@a.test", t0, TTL);
        a.remove("ghost@a.test");
        assert!(
            !a.contains("ghost@a.test", t0),
            "a loaded roster still reads absent"
        );
        a.insert("ghost@a.test", t0, Duration::ZERO);
        assert!(!a.contains("ghost@a.test", t0), "a ttl of zero caches");
    }

    #[test]
    fn absent_users_are_bounded() {
        let t0 = Instant::now();
        let mut a = AbsentUsers::default();
        for i in 0..AbsentUsers::MAX {
            a.insert(&format!("u{i}@a.test"), t0, TTL);
        }
        assert_eq!(a.len(), AbsentUsers::MAX);
        // Full, nothing expired: starts over rather than grow.
        a.insert("new@a.test", t0, TTL);
        assert_eq!(a.len(), 1);
        assert!(a.contains("new@a.test", t0));
        // Full with everything expired: the expired entries go, the new one stays.
        for i in 0..AbsentUsers::MAX - 1 {
            a.insert(&format!("v{i}@a.test"), t0, TTL);
        }
        assert_eq!(a.len(), AbsentUsers::MAX);
        let later = t0 + TTL;
        a.insert("late@a.test", later, TTL);
        assert_eq!(a.len(), 1);
        assert!(a.contains("late@a.test", later));
    }
}
