//! PEP (XEP-0163) on every local account ([`Pep`]): the account's nodes, loaded from the
//! store when first needed and kept while the user is known; publish, retract and items
//! requests; notifications; and the contacts' entity capabilities (XEP-0115) that say
//! who wants which notifications.
//!
//! - The owner's `<pubsub/>` requests ([`Pep::owner_iq`]): a publish or retract changes
//!   the node in memory, is made durable (the user's later stanzas wait, as for a roster
//!   change), then answered and notified (XEP-0060 §7.1.2, §7.2.2). A publish creates the
//!   node (auto-create); its publish options set the node's `access_model` and
//!   `max_items` (capped by `c2s.pep_max_items_limit`; `c2s.pep_max_items` by default):
//!   with no node configuration request implemented, that is the only way to set them.
//! - Others' requests ([`Pep::other_iq`]): items retrieval per the access model
//!   (`presence`: a `from`/`both` subscription; `open`: anyone); anything else
//!   `forbidden`.
//! - Presence from a contact's resource to the user ([`Pep::contact_presence`]): with a
//!   `from`/`both` subscription and XEP-0115 caps, the resource is remembered with its
//!   `node#ver`. A `node#ver` not yet known is asked for with `disco#info`, from the
//!   account's bare JID (XEP-0163 §4.3.4); the answer is verified (XEP-0115 §5.4) and its
//!   `+notify` nodes cached per shard for every user ([`Pep::caps_answer`]). Then the
//!   last item of each node the resource wants is sent to it (§4.3.4, last published item
//!   on presence). A resource whose caps do not verify gets nothing.
//! - Notifications go to the owner's available resources (all of them: they are the
//!   owner's) and to the remembered contact resources whose caps ask for the node
//!   (filtered notifications, §4.3.3). Local recipients get the stanza routed to their
//!   full JID; remote ones share one serialisation ([`SharedStanza`]) fanned out like
//!   presence, one queued reference per recipient.
//!
//! Bounds: [`MAX_NODES`] nodes per account and `c2s.pep_max_items_limit` items per node;
//! [`CAPS_CACHE`] capabilities sets per shard, [`CAPS_QUERIES`] queries in flight (the
//! oldest forgotten beyond), each waited for [`CAPS_QUERY_TIMEOUT`] before the next
//! resource with that `ver` is asked; contact resources per user as many as the roster's
//! contacts have sessions.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngCore;
use tracing::{debug, warn};

use super::link::{send_to, Link};
use crate::condition::StanzaCondition;
use crate::jid::domain_of;
use crate::pep::{
    self, caps_query, empty_result, items_result, max_items_for, may_retrieve, notification,
    notify_nodes, parse_caps, parse_disco_info, parse_request, pep_error, publish_result,
    retract_notification, verify, AccessModel, Caps, PepError, PepNode, PepRequest,
};
use crate::router::fanout::SharedStanza;
use crate::router::{bare_key, domain_key};
use crate::runtime::shard::Shard;
use crate::store::{Op, Outcome, PepPublish, StoreError};
use crate::xml::tree::Node;
use crate::xml::Element;

/// Capabilities sets (`node#ver`) whose `+notify` nodes a shard caches; beyond, the
/// cache starts over.
pub(super) const CAPS_CACHE: usize = 4096;
/// `disco#info` queries for capabilities a shard has in flight; beyond, the oldest is
/// forgotten (its answer is then ignored).
pub(super) const CAPS_QUERIES: usize = 1024;
/// How long a capabilities query is waited for before the next resource with the same
/// caps is asked instead (a client that never answers does not block its `ver`).
pub(super) const CAPS_QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Most nodes one account may have; a publish that would create one more is refused
/// with `resource-constraint`.
pub(super) const MAX_NODES: usize = 1000;
/// The `id` prefix of the capabilities queries, by which their answers are recognised.
const QUERY_PREFIX: &str = "pepcaps-";

/// An account's nodes by name.
type Nodes = BTreeMap<String, PepNode>;

/// One account's PEP state on its shard.
#[derive(Default)]
struct PepUser {
    /// The nodes, once loaded.
    nodes: Option<Nodes>,
    /// Contact resources (full JIDs) available to the user with caps: their `node#ver`.
    contacts: HashMap<String, String>,
}

/// A capabilities query in flight.
struct CapsQuery {
    caps: Caps,
    /// `(user, contact full JID)` to send last items to once the answer is in.
    waiting: Vec<(String, String)>,
    /// When it was sent: past [`CAPS_QUERY_TIMEOUT`], the next resource with the same
    /// caps is asked instead.
    sent: Instant,
}

/// The PEP behaviour and state of a shard.
pub(super) struct Pep {
    users: RefCell<HashMap<String, PepUser>>,
    /// `node#ver` → the nodes it asks notifications for (empty: did not verify).
    caps: RefCell<HashMap<String, Rc<[String]>>>,
    /// Queries in flight by number (the `id` is [`QUERY_PREFIX`] + shard + number).
    queries: RefCell<BTreeMap<u64, CapsQuery>>,
    /// `node#ver` → the number of its query in flight.
    querying: RefCell<HashMap<String, u64>>,
    next_query: Cell<u64>,
}

impl Pep {
    pub(super) fn new() -> Pep {
        Pep {
            users: RefCell::new(HashMap::new()),
            caps: RefCell::new(HashMap::new()),
            queries: RefCell::new(BTreeMap::new()),
            querying: RefCell::new(HashMap::new()),
            next_query: Cell::new(1),
        }
    }

    /// The user is forgotten ([`super::users::Users::maybe_forget`]): so is its PEP state.
    pub(super) fn forget(&self, bare: &str) {
        self.users.borrow_mut().remove(bare);
    }

    /// Runs `f` on `user`'s nodes, now if loaded, else once the store has answered.
    fn with_nodes(&self, shard: &Shard, user: &str, f: impl FnOnce(&Shard, &mut Nodes) + 'static) {
        let taken = self
            .users
            .borrow_mut()
            .get_mut(user)
            .and_then(|u| u.nodes.take());
        if let Some(mut nodes) = taken {
            f(shard, &mut nodes);
            self.users
                .borrow_mut()
                .entry(user.to_owned())
                .or_default()
                .nodes = Some(nodes);
            return;
        }
        let user = user.to_owned();
        // A known user's later stanzas wait for the load (RFC 6120 §10.1 in-order
        // processing); a user known now stays known while it is held.
        let held = shard.local.users.borrow().contains_key(&user);
        if held {
            shard.local.users.hold(&user);
        }
        shard.local.store.submit(
            shard,
            Op::PepNodes { user: user.clone() },
            Box::new(move |shard, result| {
                Self::loaded(shard, &user, result, f);
                if held {
                    shard.local.users.release(shard, &user);
                }
            }),
        );
    }

    /// The store's answer to a load of `user`'s nodes: installed unless loaded meanwhile,
    /// then `f` runs on them.
    fn loaded(
        shard: &Shard,
        user: &str,
        result: Result<Outcome, StoreError>,
        f: impl FnOnce(&Shard, &mut Nodes),
    ) {
        let pep = &shard.local.pep;
        let stored = match result {
            Ok(Outcome::PepNodes(n)) => n,
            Err(StoreError::NoSuchUser(_)) => return,
            other => {
                warn!(%user, ?other, "loading PEP nodes failed");
                return;
            }
        };
        let loaded = {
            let mut users = pep.users.borrow_mut();
            let u = users.entry(user.to_owned()).or_default();
            if u.nodes.is_none() {
                let nodes = stored
                    .into_iter()
                    .map(|s| {
                        let access = AccessModel::parse(&s.access_model).unwrap_or_default();
                        let mut n = PepNode::new(access, s.max_items as usize);
                        n.items = s.items.into_iter().collect();
                        (s.node, n)
                    })
                    .collect();
                u.nodes = Some(nodes);
            }
            u.nodes.take()
        };
        if let Some(mut nodes) = loaded {
            f(shard, &mut nodes);
            pep.users
                .borrow_mut()
                .entry(user.to_owned())
                .or_default()
                .nodes = Some(nodes);
        }
        // An offline user's nodes are not kept.
        if !shard.local.users.borrow().contains_key(user) {
            pep.forget(user);
        }
    }

    /// A `<pubsub/>` request (`payload`) from one of the account's own sessions.
    pub(super) fn owner_iq(
        &self,
        shard: &Shard,
        conn: &Link,
        bare: &str,
        el: Element,
        payload: &Node,
    ) {
        let c2s = &shard.shared().config.c2s;
        let request =
            match parse_request(payload, el.type_() == Some("set"), c2s.pep_max_item_bytes) {
                Ok(r) => r,
                Err(e) => {
                    send_to(conn, &[pep_error(&el, e).bytes()]);
                    return;
                }
            };
        let (default_max, cap) = (c2s.pep_max_items, c2s.pep_max_items_limit);
        let conn = conn.clone();
        let user = bare.to_owned();
        match request {
            PepRequest::Items {
                node,
                max_items,
                ids,
            } => {
                self.with_nodes(shard, bare, move |_, nodes| {
                    let reply = match nodes.get(&node) {
                        None => pep_error(&el, PepError::new(StanzaCondition::ItemNotFound, None)),
                        Some(n) => items_result(&el, &node, &n.select(&ids, max_items)),
                    };
                    send_to(&conn, &[reply.bytes()]);
                });
            }
            PepRequest::Publish {
                node,
                id,
                payload,
                options,
            } => {
                let id =
                    id.unwrap_or_else(|| format!("{:016x}", shard.rng.borrow_mut().next_u64()));
                self.with_nodes(shard, bare, move |shard, nodes| {
                    if nodes.len() >= MAX_NODES && !nodes.contains_key(&node) {
                        let err = PepError::new(StanzaCondition::ResourceConstraint, None);
                        send_to(&conn, &[pep_error(&el, err).bytes()]);
                        return;
                    }
                    let n = nodes.entry(node.clone()).or_insert_with(|| {
                        PepNode::new(
                            options.access_model.unwrap_or_default(),
                            max_items_for(options.max_items, default_max, cap),
                        )
                    });
                    if let Some(a) = options.access_model {
                        n.access = a;
                    }
                    if options.max_items.is_some() {
                        n.set_max_items(max_items_for(options.max_items, default_max, cap));
                    }
                    n.publish(&id, payload.clone());
                    let op = Op::PepPublish(PepPublish {
                        user: user.clone(),
                        node: node.clone(),
                        access_model: n.access.as_str().to_owned(),
                        max_items: n.max_items as u32,
                        item_id: id.clone(),
                        payload: payload.clone(),
                    });
                    shard.local.users.hold(&user);
                    shard.local.store.submit(
                        shard,
                        op,
                        Box::new(move |shard, result| {
                            let pep = &shard.local.pep;
                            match result {
                                Ok(_) => {
                                    send_to(&conn, &[publish_result(&el, &node, &id).bytes()]);
                                    let event = notification(&user, &node, &id, &payload);
                                    pep.notify(shard, &user, &node, event);
                                }
                                Err(e) => {
                                    warn!(%user, %node, error = %e, "PEP publish not stored");
                                    pep.reload(&user);
                                    let err = PepError::new(e.stanza_condition(), None);
                                    send_to(&conn, &[pep_error(&el, err).bytes()]);
                                }
                            }
                            shard.local.users.release(shard, &user);
                        }),
                    );
                });
            }
            PepRequest::Retract { node, id, notify } => {
                self.with_nodes(shard, bare, move |shard, nodes| {
                    if !nodes.get_mut(&node).is_some_and(|n| n.retract(&id)) {
                        let err = PepError::new(StanzaCondition::ItemNotFound, None);
                        send_to(&conn, &[pep_error(&el, err).bytes()]);
                        return;
                    }
                    let op = Op::PepRetract {
                        user: user.clone(),
                        node: node.clone(),
                        item_id: id.clone(),
                    };
                    shard.local.users.hold(&user);
                    shard.local.store.submit(
                        shard,
                        op,
                        Box::new(move |shard, result| {
                            let pep = &shard.local.pep;
                            match result {
                                Ok(_) => {
                                    send_to(&conn, &[empty_result(&el).bytes()]);
                                    if notify {
                                        let event = retract_notification(&user, &node, &id);
                                        pep.notify(shard, &user, &node, event);
                                    }
                                }
                                Err(e) => {
                                    warn!(%user, %node, error = %e, "PEP retract not stored");
                                    pep.reload(&user);
                                    let err = PepError::new(e.stanza_condition(), None);
                                    send_to(&conn, &[pep_error(&el, err).bytes()]);
                                }
                            }
                            shard.local.users.release(shard, &user);
                        }),
                    );
                });
            }
        }
    }

    /// Drops the cached nodes of `user` (a change the store refused): the next request
    /// reads them again.
    fn reload(&self, user: &str) {
        if let Some(u) = self.users.borrow_mut().get_mut(user) {
            u.nodes = None;
        }
    }

    /// An `iq` request to the account `bare` from someone else (a contact, a remote
    /// user): handled here (`true`) when it is a `<pubsub/>` request. Items retrieval per
    /// the node's access model (XEP-0060 §6.5); any other request `forbidden` (only the
    /// owner publishes). The roster is loaded (see `Deferred::needs_roster`); an account
    /// that does not exist is left to [`crate::service::answer_account`] (`false`).
    pub(super) fn other_iq(&self, shard: &Shard, bare: &str, el: &Element) -> bool {
        static PUBSUB: crate::xml::Needle = crate::xml::Needle::new(pep::NS_PUBSUB);
        if !matches!(el.type_(), Some("get" | "set")) || !PUBSUB.is_in(el.inner()) {
            return false;
        }
        let (crate::service::Iq::Get(payload) | crate::service::Iq::Set(payload)) =
            crate::service::read_iq(el)
        else {
            return false;
        };
        if !pep::is_pubsub(&payload.name, &payload.ns) {
            return false;
        }
        let requester = el
            .from()
            .map(|f| bare_key(f).into_owned())
            .unwrap_or_default();
        let Some(subscribed) = shard
            .local
            .roster
            .with_roster(shard, bare, |r| r.state(&requester).subscription.has_from())
        else {
            return false; // no such account (or not loaded): answer_account's
        };
        let max = shard.shared().config.c2s.pep_max_item_bytes;
        let reply = |e: Element| shard.route(e);
        match parse_request(&payload, el.type_() == Some("set"), max) {
            Err(e) => reply(pep_error(el, e)),
            Ok(PepRequest::Items {
                node,
                max_items,
                ids,
            }) => {
                let el = el.clone();
                self.with_nodes(shard, bare, move |shard, nodes| {
                    let answer = match nodes.get(&node) {
                        None => pep_error(&el, PepError::new(StanzaCondition::ItemNotFound, None)),
                        Some(n) => match may_retrieve(n.access, false, subscribed) {
                            Ok(()) => items_result(&el, &node, &n.select(&ids, max_items)),
                            Err(e) => pep_error(&el, e),
                        },
                    };
                    shard.route(answer);
                });
            }
            Ok(_) => reply(pep_error(
                el,
                PepError::new(StanzaCondition::Forbidden, None),
            )),
        }
        true
    }

    /// Presence `el` from a contact's resource reached the user `bare` (broadcast or
    /// directed, local or remote): remembered with its caps, or forgotten when
    /// unavailable; a new capabilities set is asked for or looked up, and the last items
    /// the resource wants are sent to it (XEP-0163 §4.3.4).
    pub(super) fn contact_presence(&self, shard: &Shard, bare: &str, el: &Element) {
        let Some(from) = el.from() else { return };
        if !from.contains('/') {
            return;
        }
        match el.type_() {
            None => {}
            Some("unavailable") => {
                if let Some(u) = self.users.borrow_mut().get_mut(bare) {
                    u.contacts.remove(from);
                }
                return;
            }
            Some(_) => return,
        }
        let contact = bare_key(from);
        if contact == bare {
            return; // the owner's resources get every notification
        }
        let Some(caps) = parse_caps(el) else {
            if let Some(u) = self.users.borrow_mut().get_mut(bare) {
                u.contacts.remove(from);
            }
            return;
        };
        let subscribed = shard
            .local
            .roster
            .with_roster(shard, bare, |r| r.state(&contact).subscription.has_from())
            .unwrap_or(false);
        if !subscribed {
            return;
        }
        let key = caps.node_ver();
        let previous = self
            .users
            .borrow_mut()
            .entry(bare.to_owned())
            .or_default()
            .contacts
            .insert(from.to_owned(), key.clone());
        if previous.as_deref() == Some(key.as_str()) {
            return; // a presence update with the same caps: nothing new to send
        }
        let known = self.caps.borrow().get(&key).cloned();
        match known {
            Some(nodes) => self.send_last(shard, bare, from, nodes),
            None => self.ask_caps(shard, bare, from, caps, key),
        }
    }

    /// Sends (or joins) the `disco#info` query for `key` (XEP-0115 §6.2), from the
    /// account's bare JID to the contact's resource.
    fn ask_caps(&self, shard: &Shard, bare: &str, full: &str, caps: Caps, key: String) {
        let mut waiting = vec![(bare.to_owned(), full.to_owned())];
        let in_flight = self.querying.borrow().get(&key).copied();
        if let Some(n) = in_flight {
            let mut queries = self.queries.borrow_mut();
            if let Some(q) = queries.get_mut(&n) {
                if q.sent.elapsed() < CAPS_QUERY_TIMEOUT {
                    if q.waiting.len() < CAPS_QUERIES {
                        q.waiting.append(&mut waiting);
                    }
                    return;
                }
                // Unanswered for too long: this resource is asked; all wait for it.
                if let Some(old) = queries.remove(&n) {
                    waiting.extend(old.waiting.into_iter().take(CAPS_QUERIES));
                }
            }
        }
        let n = self.next_query.get();
        self.next_query.set(n + 1);
        {
            let mut queries = self.queries.borrow_mut();
            if queries.len() >= CAPS_QUERIES {
                if let Some((_, old)) = queries.pop_first() {
                    self.querying.borrow_mut().remove(&old.caps.node_ver());
                }
            }
            queries.insert(
                n,
                CapsQuery {
                    caps,
                    waiting,
                    sent: Instant::now(),
                },
            );
        }
        self.querying.borrow_mut().insert(key.clone(), n);
        let id = format!("{QUERY_PREFIX}{}-{n}", shard.id);
        shard.route(caps_query(bare, full, &id, &key));
    }

    /// An `iq` result or error to a local account: the answer to a capabilities query
    /// of this shard (handled, `true`) or not (`false`). A result that verifies
    /// (XEP-0115 §5.4) is cached with its `+notify` nodes and the resources that waited
    /// get their last items; one that does not verify is cached as wanting nothing; an
    /// error is not cached (the next resource with that `ver` is asked).
    pub(super) fn caps_answer(&self, shard: &Shard, el: &Element) -> bool {
        let Some(n) = el
            .id()
            .and_then(|id| id.strip_prefix(QUERY_PREFIX))
            .and_then(|rest| rest.strip_prefix(&format!("{}-", shard.id)))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            return false;
        };
        let Some(q) = self.queries.borrow_mut().remove(&n) else {
            return true; // forgotten (too many in flight): ignored
        };
        let key = q.caps.node_ver();
        self.querying.borrow_mut().remove(&key);
        let nodes: Rc<[String]> = match (el.type_(), parse_disco_info(el)) {
            (Some("result"), Some(info)) if verify(&q.caps, &info) => {
                notify_nodes(&info.features).into()
            }
            (Some("result"), Some(_)) => {
                warn!(%key, from = el.from(), "capabilities do not match their hash; no notifications");
                Rc::from(Vec::new())
            }
            _ => {
                debug!(%key, from = el.from(), "capabilities query failed; asked again on the next presence");
                for (user, full) in &q.waiting {
                    if let Some(u) = self.users.borrow_mut().get_mut(user) {
                        u.contacts.remove(full);
                    }
                }
                return true;
            }
        };
        {
            let mut cache = self.caps.borrow_mut();
            if cache.len() >= CAPS_CACHE {
                cache.clear();
            }
            cache.insert(key, Rc::clone(&nodes));
        }
        for (user, full) in q.waiting {
            self.send_last(shard, &user, &full, Rc::clone(&nodes));
        }
        true
    }

    /// The last item of each of `nodes` that `user` has, to `full` (XEP-0163 §4.3.4).
    fn send_last(&self, shard: &Shard, user: &str, full: &str, nodes: Rc<[String]>) {
        if nodes.is_empty() {
            return;
        }
        let (user, full) = (user.to_owned(), full.to_owned());
        self.with_nodes(shard, &user.clone(), move |shard, all| {
            for name in nodes.iter() {
                if let Some((id, payload)) = all.get(name).and_then(PepNode::last) {
                    let event = notification(&user, name, id, payload);
                    shard.local.pep.deliver(shard, event, vec![full.clone()]);
                }
            }
        });
    }

    /// Sends a notification about `node` of `user` to its recipients: the user's
    /// available resources and the contact resources whose caps ask for `node` and
    /// whose subscription is still `from`/`both`.
    fn notify(&self, shard: &Shard, user: &str, node: &str, event: Element) {
        let mut to: Vec<String> = shard
            .local
            .users
            .borrow()
            .get(user)
            .map(|u| {
                u.sessions
                    .iter()
                    .filter(|s| s.available)
                    .map(|s| s.full.clone())
                    .collect()
            })
            .unwrap_or_default();
        let contacts: Vec<String> = {
            let users = self.users.borrow();
            let caps = self.caps.borrow();
            users
                .get(user)
                .map(|u| {
                    u.contacts
                        .iter()
                        .filter(|(_, key)| {
                            caps.get(*key).is_some_and(|n| n.iter().any(|n| n == node))
                        })
                        .map(|(full, _)| full.clone())
                        .collect()
                })
                .unwrap_or_default()
        };
        for full in contacts {
            let contact = bare_key(&full).into_owned();
            let subscribed = shard
                .local
                .roster
                .with_roster(shard, user, |r| r.state(&contact).subscription.has_from())
                .unwrap_or(false);
            if subscribed {
                to.push(full);
            }
        }
        self.deliver(shard, event, to);
    }

    /// Sends `event` (no `to`) to each full JID of `to`: routed to local ones, fanned out
    /// to remote ones with one shared serialisation.
    fn deliver(&self, shard: &Shard, event: Element, to: Vec<String>) {
        let Ok(stanza) = SharedStanza::new(event) else {
            return;
        };
        let s2s = Arc::clone(&shard.shared().s2s);
        let (local, remote): (Vec<String>, Vec<String>) = to
            .into_iter()
            .partition(|j| s2s.hosts(&domain_key(domain_of(j))));
        for j in local {
            if let Ok(e) = stanza.to_element(&j) {
                shard.route(e);
            }
        }
        if !remote.is_empty() {
            shard
                .local
                .fan_out(shard, stanza, remote.iter().map(String::as_str));
        }
    }
}
