//! Local users on their owner shard: C2S sessions (RFC 6120 §4–§7), rosters (RFC 6121
//! §2), presence subscriptions (§3), presence (§4) and message delivery (§8).
//!
//! A client connects to any shard (SO_REUSEPORT spreads the accepts). Its stream is
//! negotiated there up to SASL success; then, like an inbound S2S stream, the connection
//! is handed to `shard_of(bare JID)` ([`super::shard`]), where the resource is bound and
//! every later stanza for or from that user is handled: all of a user's sessions, its
//! cached roster and its subscription states live on one thread, without locks.
//!
//! The roster is read from the store when first needed (a session binds, or a
//! subscription stanza or probe arrives for the user) and kept while the process runs.
//! Every change to it is made durable before anything is acted on (DESIGN.md: "durable
//! before acknowledged or forwarded"): the cache takes the new state at once, so later
//! stanzas see it, and the stanza's actions (routing, roster pushes, replies) run in the
//! store's answer, which the storage thread sends through the shard's reply channel and
//! [`Local::store_wake`]. The store is never waited for on the event loop.
//!
//! Presence broadcasts are serialised once without `to` ([`SharedStanza`]) and fanned out
//! with [`crate::router::fanout::plan`]: one message per destination shard, and one
//! queued reference per remote recipient.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use rand::Rng;
use tokio::sync::Notify;
use tokio_uring::net::TcpStream;
use tracing::{debug, info, info_span, warn};

use super::conn::{Conn, ConnId, ConnState, Handoff, Tls};
use super::count_stanza;
use super::io::{After, Driven};
use super::msg::ShardMsg;
use super::shard::Shard;
use crate::condition::{StanzaCondition, StreamCondition};
use crate::jid::{domain_of, BareJid, Jid};
use crate::metrics::Latency;
use crate::presence::delivery::{self, Delivery, SessionView};
use crate::presence::roster_set::{self, Held, HeldContact, Plan};
use crate::presence::{
    self, write_removed_item, Action, RosterItem, RosterLimits, SubState, SubType, Subscription,
    Transition, ROSTER_NS,
};
use crate::router::fanout::{plan, write_to_attr, SharedStanza};
use crate::router::queue::Queued;
use crate::router::{bare_key, domain_key, shard_of};
use crate::service::{answer_server, Answer, NS_PING};
use crate::stanza::{is_error, write_error_reply, StanzaKind};
use crate::store::{Change, Op, Outcome, Reply, StoreError, StoredItem};
use crate::stream::c2s::{BindError, C2sConnection, Event, Mechanism};
use crate::stream::s2s::CloseReason;
use crate::xml::tree::Node;
use crate::xml::writer::{write_raw_attr, write_readdressed};
use crate::xml::{escape_attr_into, parse_stanza, Element};

/// Store requests a shard holds back (the store's own queue being full) before it stops
/// reading sockets and its inbox.
const STORE_BACKLOG: usize = 4096;

/// What to do with the store's answer (runs on the shard, in order of the requests).
type StoreThen = Box<dyn FnOnce(&Shard, Result<Outcome, StoreError>)>;

/// The shard's local-user state.
pub(super) struct Local {
    /// C2S connections on this shard (negotiating here, or bound users this shard owns).
    pub conns: RefCell<HashMap<ConnId, Rc<Conn<C2sConnection>>>>,
    users: RefCell<HashMap<String, User>>,
    replies_tx: Sender<Reply>,
    replies: Receiver<Reply>,
    /// Fired by the storage thread when a reply is waiting.
    pub store_wake: Arc<Notify>,
    waiting: RefCell<HashMap<u64, StoreThen>>,
    /// Requests the store's queue had no room for, retried in order.
    backlog: RefCell<VecDeque<(u64, Op)>>,
    /// The backlog reached [`STORE_BACKLOG`]: counted in the shard's congestion, so its
    /// readers and inbox pause until the store catches up (memory stays bounded).
    backlog_congested: Cell<bool>,
    next_tag: Cell<u64>,
}

impl Local {
    pub(super) fn new() -> Local {
        let (replies_tx, replies) = crossbeam_channel::unbounded();
        Local {
            conns: RefCell::new(HashMap::new()),
            users: RefCell::new(HashMap::new()),
            replies_tx,
            replies,
            store_wake: Arc::new(Notify::new()),
            waiting: RefCell::new(HashMap::new()),
            backlog: RefCell::new(VecDeque::new()),
            backlog_congested: Cell::new(false),
            next_tag: Cell::new(1),
        }
    }
}

/// One local user with a session, or whose roster was needed.
#[derive(Default)]
struct User {
    sessions: Vec<Session>,
    roster: RosterState,
    /// Stanzas from or to the user waiting, in order, for the roster to load or for
    /// `busy` to drop to zero.
    deferred: VecDeque<Deferred>,
    /// Changes to the user's roster being made durable: until their actions ran, later
    /// stanzas from and to the user wait (RFC 6120 §10.1: in-order processing).
    busy: u32,
}

#[derive(Default)]
enum RosterState {
    #[default]
    Unloaded,
    Loading,
    Loaded(Roster),
    /// The store has no such user.
    NoSuchUser,
}

/// A user's roster as cached: version and rows by contact (including rows that only keep
/// a pending inbound request, `in_roster == false`).
struct Roster {
    ver: u64,
    items: BTreeMap<String, StoredItem>,
}

impl Roster {
    fn state(&self, contact: &str) -> SubState {
        self.items
            .get(contact)
            .map(StoredItem::sub_state)
            .unwrap_or_default()
    }

    /// Caches `row` for `user` and returns the change that stores it: the row is deleted
    /// once it holds nothing (not a roster item, state "None", nothing pending).
    fn put(&mut self, user: &str, row: StoredItem) -> Change {
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

    fn in_roster(&self) -> usize {
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
    fn contacts(&self, f: impl Fn(Subscription) -> bool) -> Vec<String> {
        self.items
            .values()
            .filter(|i| f(i.sub_state().subscription))
            .map(|i| i.contact.clone())
            .collect()
    }
}

/// A bound resource.
struct Session {
    conn: Rc<Conn<C2sConnection>>,
    full: String,
    resource: String,
    /// Sent initial presence and not unavailable since (RFC 6121 §4.2).
    available: bool,
    /// Of the last available presence (RFC 6121 §4.7.2.3).
    priority: i8,
    /// The last broadcast presence, without `to`.
    presence: Option<SharedStanza>,
    /// Requested the roster (RFC 6121 §2.2): gets roster pushes.
    interested: bool,
    /// Entities sent directed presence (RFC 6121 §4.6), told when the session goes away.
    directed: BTreeSet<String>,
}

impl Session {
    /// The session as the RFC 6121 §8.5 rules see it ([`delivery::decide`]): `cap` is
    /// `c2s.send_queue_bytes`, the backlog past which it takes nothing more.
    fn view(&self, cap: usize) -> SessionView<'_> {
        SessionView {
            resource: &self.resource,
            available: self.available,
            priority: self.priority,
            writable: self.conn.backlog() < cap,
        }
    }
}

/// A stanza waiting for its user's roster or earlier stanzas.
enum Deferred {
    /// From one of the user's sessions (stamped).
    FromClient(ConnId, Element),
    /// To the user from elsewhere.
    Inbound(Element),
    /// A presence broadcast to the user (bare JID).
    Broadcast(SharedStanza, Box<str>),
}

impl Deferred {
    /// Whether handling it reads `bare`'s roster: roster queries, subscription stanzas,
    /// presence broadcasts and probes.
    fn needs_roster(&self, bare: &str) -> bool {
        match self {
            Deferred::FromClient(_, el) => match StanzaKind::of(el) {
                Some(StanzaKind::Presence) => match el.to() {
                    None => true,
                    Some(_) => el.type_().and_then(SubType::from_type).is_some(),
                },
                Some(StanzaKind::Iq) => {
                    el.to().is_none_or(|t| bare_key(t) == bare)
                        && memchr::memmem::find(el.inner(), ROSTER_NS.as_bytes()).is_some()
                }
                _ => false,
            },
            Deferred::Inbound(el) => {
                StanzaKind::of(el) == Some(StanzaKind::Presence)
                    && el
                        .type_()
                        .is_some_and(|t| t == "probe" || SubType::from_type(t).is_some())
            }
            Deferred::Broadcast(..) => false,
        }
    }
}

/// Sends bytes to one session's client; whether the stream took them.
fn send_to(conn: &Conn<C2sConnection>, parts: &[&[u8]]) -> bool {
    let mut st = conn.st.borrow_mut();
    if st.closed {
        return false;
    }
    if st.proto.send_stanza_parts(parts, Instant::now()).is_ok() {
        let head = parts.first().copied().unwrap_or_default();
        let kind = if head.starts_with(b"<message") {
            "message"
        } else if head.starts_with(b"<presence") {
            "presence"
        } else if head.starts_with(b"<iq") {
            "iq"
        } else {
            "other"
        };
        count_stanza("c2s_out", kind);
        st.pump();
        st.mark(super::read_at());
        drop(st);
        conn.wake.notify_one();
        return true;
    }
    false
}

/// `<presence from='FROM' to='TO' type='TYPE'/>`.
fn presence(from: &str, to: &str, type_: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + from.len() + to.len());
    out.extend_from_slice(b"<presence from='");
    escape_attr_into(from, &mut out);
    out.extend_from_slice(b"' to='");
    escape_attr_into(to, &mut out);
    out.push(b'\'');
    if let Some(t) = type_ {
        out.extend_from_slice(b" type='");
        out.extend_from_slice(t.as_bytes());
        out.push(b'\'');
    }
    out.extend_from_slice(b"/>");
    out
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

fn roster_item(s: &StoredItem) -> RosterItem {
    RosterItem {
        jid: s.contact.clone(),
        name: s.name.clone(),
        groups: s.groups.clone(),
        state: s.sub_state(),
    }
}

/// `s` with its subscription state replaced by `state`.
fn with_state(mut s: StoredItem, state: SubState, pending_in: Option<String>) -> StoredItem {
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

fn new_row(contact: &str) -> StoredItem {
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

/// The payload element of an `iq`, parsed.
fn iq_payload(el: &Element) -> Option<Node> {
    let node = Node::parse(el).ok()?;
    node.children.into_iter().next()
}

impl Shard {
    // ----- the store -----

    /// Submits `op` to the storage thread; `then` runs on this shard with the answer.
    fn store(&self, op: Op, then: StoreThen) {
        let tag = self.local.next_tag.get();
        self.local.next_tag.set(tag + 1);
        self.local.waiting.borrow_mut().insert(tag, then);
        if !self.local.backlog.borrow().is_empty() {
            self.local.backlog.borrow_mut().push_back((tag, op));
            self.check_store_backlog();
            return;
        }
        if let Err(op) = self.shared().store.submit(
            op,
            self.local.replies_tx.clone(),
            Arc::clone(&self.local.store_wake),
            tag,
        ) {
            if !self.shared().store.is_running() {
                self.store_answer(tag, Err(StoreError::Closed));
                return;
            }
            self.local.backlog.borrow_mut().push_back((tag, op));
            self.check_store_backlog();
        }
    }

    /// Pauses the shard's readers while the store backlog is at [`STORE_BACKLOG`], and
    /// resumes them once it is down to half.
    fn check_store_backlog(&self) {
        let len = self.local.backlog.borrow().len();
        let flagged = self.local.backlog_congested.get();
        if !flagged && len >= STORE_BACKLOG {
            self.local.backlog_congested.set(true);
            warn!(len, "store backlog full: pausing reads on this shard");
            self.congest();
        } else if flagged && len <= STORE_BACKLOG / 2 {
            self.local.backlog_congested.set(false);
            self.decongest();
        }
    }

    /// Runs the continuations of the store's answers (main loop, on [`Local::store_wake`]).
    pub(super) fn store_replies(&self) {
        // Bounded by what is queued now.
        for _ in 0..self.local.replies.len() {
            let Ok(reply) = self.local.replies.try_recv() else {
                break;
            };
            self.store_answer(reply.tag, reply.result);
        }
        // Room again: retry the backlog in order.
        loop {
            let Some((tag, op)) = self.local.backlog.borrow_mut().pop_front() else {
                break;
            };
            if let Err(op) = self.shared().store.submit(
                op,
                self.local.replies_tx.clone(),
                Arc::clone(&self.local.store_wake),
                tag,
            ) {
                self.local.backlog.borrow_mut().push_front((tag, op));
                break;
            }
        }
        self.check_store_backlog();
    }

    fn store_answer(&self, tag: u64, result: Result<Outcome, StoreError>) {
        let then = self.local.waiting.borrow_mut().remove(&tag);
        if let Some(then) = then {
            then(self, result);
        }
    }

    // ----- connections -----

    /// A client connected to this shard's C2S listener.
    pub(super) fn accept_c2s(&self, stream: TcpStream, peer: std::net::SocketAddr) {
        let nonce = self.rng.borrow_mut().random::<u64>();
        let proto =
            C2sConnection::new(Arc::clone(&self.shared().c2s), nonce, false, Instant::now());
        let mut st = ConnState::new(proto, None);
        st.collect_events();
        let span = info_span!("c2s", %peer, jid = tracing::field::Empty);
        let conn = Rc::new(Conn::new(self.next_conn_id(), stream, st, span));
        self.local
            .conns
            .borrow_mut()
            .insert(conn.id, Rc::clone(&conn));
        self.spawn_conn(conn);
    }

    /// Takes over a client connection whose user this shard owns.
    pub(super) fn adopt_c2s(&self, mut h: Handoff<C2sConnection>) {
        h.state.moved = true;
        let stream = TcpStream::from_std(std::net::TcpStream::from(h.fd));
        let jid = h
            .state
            .proto
            .authenticated_jid()
            .map(|j| j.as_str().to_owned())
            .unwrap_or_default();
        let span = info_span!("c2s", %jid, adopted = true);
        let conn = Rc::new(Conn::new(self.next_conn_id(), stream, h.state, span));
        self.local
            .conns
            .borrow_mut()
            .insert(conn.id, Rc::clone(&conn));
        self.spawn_conn(conn);
    }

    fn c2s_on_events(&self, conn: &Rc<Conn<C2sConnection>>, may_hand_off: bool) -> After {
        loop {
            let ev = {
                let mut st = conn.st.borrow_mut();
                st.collect_events();
                match st.events.pop_front() {
                    Some(e) => e,
                    None => return After::Continue,
                }
            };
            if let Event::Authenticated { jid, .. } = &ev {
                let jid = jid.clone();
                let dst = shard_of(&bare_key(&jid), self.n);
                let moved = conn.st.borrow().moved;
                if dst != self.id && !moved {
                    let mut st = conn.st.borrow_mut();
                    st.events.push_front(ev);
                    if !may_hand_off {
                        // Only the read loop can move the socket (PLAIN succeeds in the
                        // store's answer): it does with the client's next bytes, the
                        // restarted stream's header; nothing is processed before.
                        return After::Continue;
                    }
                    debug!(parent: &conn.span, %jid, to_shard = dst, "handing the session to its user's shard");
                    st.handing_off = true;
                    return After::HandOff(dst);
                }
            }
            self.c2s_event(conn, ev);
        }
    }

    fn c2s_event(&self, conn: &Rc<Conn<C2sConnection>>, ev: Event) {
        match ev {
            Event::Opened { .. } => {}
            Event::StartTls(_) => {
                let tls = rustls::ServerConnection::new(Arc::clone(&self.shared().tls_c2s));
                let mut st = conn.st.borrow_mut();
                match tls {
                    Ok(t) => st.start_tls(Tls::Server(t)),
                    Err(e) => {
                        st.proto.handle_tls_failed(&e.to_string());
                        st.collect_events();
                    }
                }
            }
            Event::CredentialsNeeded { jid, mechanism } => {
                self.look_up_credentials(conn.id, jid, mechanism, true);
            }
            Event::AuthFailed {
                username, failures, ..
            } => {
                super::metrics(|m| {
                    m.count(
                        "auth",
                        &[("proto", "c2s"), ("method", "sasl"), ("result", "fail")],
                        1,
                    )
                });
                info!(parent: &conn.span, user = username.as_deref().unwrap_or(""), failures, "authentication failed");
            }
            Event::Authenticated { jid, mechanism } => {
                conn.record_once("jid", jid.as_str());
                super::metrics(|m| {
                    m.count(
                        "auth",
                        &[
                            ("proto", "c2s"),
                            ("method", mechanism.name()),
                            ("result", "ok"),
                        ],
                        1,
                    )
                });
                info!(parent: &conn.span, mechanism = mechanism.name(), "authenticated");
            }
            Event::BindRequested { jid, requested } => self.bind(conn, &jid, requested),
            Event::Bound { jid } => self.bound(conn, &jid),
            Event::Stanza { kind, element } => self.client_sent(conn, kind, element),
            Event::Closed(reason) => {
                debug!(parent: &conn.span, ?reason, "client stream closed");
                let was = std::mem::replace(&mut conn.st.borrow_mut().closed, true);
                if !was {
                    self.c2s_ended(conn, &reason);
                }
                conn.st.borrow_mut().close_tls();
                conn.wake.notify_one();
            }
        }
    }

    fn look_up_credentials(&self, id: ConnId, jid: String, mechanism: Mechanism, first: bool) {
        use crate::store::scram::ScramHash;
        let hash = match (mechanism.hash(), first) {
            (Some(h), _) => h,
            (None, true) => ScramHash::Sha256,
            (None, false) => ScramHash::Sha1,
        };
        let op = Op::Credentials {
            jid: jid.clone(),
            hash,
        };
        self.store(
            op,
            Box::new(move |shard, result| {
                let creds = match result {
                    Ok(Outcome::Credentials(c)) => c,
                    Ok(_) => None,
                    Err(e) => {
                        warn!(error = %e, "reading credentials failed");
                        None
                    }
                };
                // PLAIN checks against any stored hash: SHA-256 first, then SHA-1.
                if creds.is_none() && mechanism.hash().is_none() && first {
                    return shard.look_up_credentials(id, jid, mechanism, false);
                }
                let Some(conn) = shard.local.conns.borrow().get(&id).cloned() else {
                    return;
                };
                {
                    let mut st = conn.st.borrow_mut();
                    let _ = st.proto.handle_credentials(creds, Instant::now());
                    st.collect_events();
                    st.pump();
                }
                shard.c2s_on_events(&conn, false);
                conn.st.borrow_mut().pump();
                conn.wake.notify_one();
            }),
        );
    }

    /// RFC 6120 §7.6 on the user's shard: a generated resource when none is asked for, a
    /// conflicting one replaces the older session (§7.7.2.2, the server's choice): that
    /// stream is closed with `conflict`.
    fn bind(&self, conn: &Rc<Conn<C2sConnection>>, jid: &str, requested: Option<String>) {
        let now = Instant::now();
        let resource = requested
            .unwrap_or_else(|| format!("fr{:016x}", self.rng.borrow_mut().random::<u64>()));
        let full = format!("{jid}/{resource}");
        let mut old = None;
        let result = {
            let mut users = self.local.users.borrow_mut();
            let user = users.entry(jid.to_owned()).or_default();
            if let Some(i) = user.sessions.iter().position(|s| s.resource == resource) {
                old = Some(Rc::clone(&user.sessions[i].conn));
                Ok(())
            } else if user.sessions.len() >= self.shared().config.c2s.max_resources {
                Err(BindError::ResourceConstraint)
            } else {
                Ok(())
            }
        };
        if let Some(old) = old {
            info!(parent: &conn.span, %full, "resource conflict: replacing the older session");
            // Its unavailable presence goes out now; the stream closes with `conflict`.
            self.session_gone(&old);
            let mut st = old.st.borrow_mut();
            st.proto.close(
                Some((StreamCondition::Conflict, "replaced by a new session")),
                now,
            );
            st.collect_events();
            st.pump();
            drop(st);
            old.wake.notify_one();
        }
        {
            let mut st = conn.st.borrow_mut();
            let answer = result.as_ref().map(|_| full.as_str()).map_err(|e| *e);
            if let Err(e) = st.proto.handle_bind(answer, now) {
                warn!(parent: &conn.span, error = %e, "bind answer refused");
            }
            st.collect_events();
        }
        if shard_of(&bare_key(jid), self.n) != self.id {
            warn!(parent: &conn.span, "session bound away from its user's shard");
        }
    }

    fn bound(&self, conn: &Rc<Conn<C2sConnection>>, full: &str) {
        let bare = bare_key(full).into_owned();
        let resource = full[bare.len() + 1..].to_owned();
        {
            let mut users = self.local.users.borrow_mut();
            let user = users.entry(bare.clone()).or_default();
            user.sessions.push(Session {
                conn: Rc::clone(conn),
                full: full.to_owned(),
                resource,
                available: false,
                priority: 0,
                presence: None,
                interested: false,
                directed: BTreeSet::new(),
            });
        }
        debug!(parent: &conn.span, %full, "bound");
        self.ensure_roster(&bare);
    }

    fn c2s_ended(&self, conn: &Rc<Conn<C2sConnection>>, _reason: &CloseReason) {
        self.session_gone(conn);
    }

    /// A session ends (closed, dropped, or replaced): unavailable presence to whoever had
    /// its presence (RFC 6121 §4.5.2, also when the stream ends abruptly), then it is
    /// forgotten.
    fn session_gone(&self, conn: &Rc<Conn<C2sConnection>>) {
        let Some(full) = conn
            .st
            .borrow()
            .proto
            .bound_jid()
            .map(|j| j.as_str().to_owned())
        else {
            return;
        };
        let bare = bare_key(&full).into_owned();
        let session = {
            let mut users = self.local.users.borrow_mut();
            let Some(user) = users.get_mut(&bare) else {
                return;
            };
            let Some(i) = user.sessions.iter().position(|s| s.conn.id == conn.id) else {
                return;
            };
            user.sessions.remove(i)
        };
        if session.available {
            let mut out = Vec::with_capacity(64);
            out.extend_from_slice(b"<presence type='unavailable'");
            write_raw_attr("from", Some(&full), &mut out);
            out.extend_from_slice(b"/>");
            if let Ok(s) = SharedStanza::parse(&out) {
                self.broadcast(&bare, s, session.directed, None);
            }
        }
        self.maybe_forget(&bare);
    }

    // ----- stanzas from a client -----

    fn client_sent(&self, conn: &Rc<Conn<C2sConnection>>, kind: StanzaKind, el: Element) {
        count_stanza("c2s_in", kind.as_str());
        let mut out = Vec::with_capacity(el.bytes().len() + 64);
        if conn.st.borrow().proto.stamp(&el, &mut out).is_err() {
            return;
        }
        let stamped = match parse_stanza(&out) {
            Ok(s) => s,
            Err(e) => {
                warn!(parent: &conn.span, error = %e, "stamped stanza does not frame");
                return;
            }
        };
        // A `to` that is not a JID: `jid-malformed` (RFC 6120 §8.3.3.8), nothing routed.
        if let Some(to) = stamped.to() {
            if Jid::new(to).is_err() {
                return self.reply_to_client(
                    conn,
                    &stamped,
                    StanzaCondition::JidMalformed,
                    "the 'to' address is not a valid JID",
                );
            }
        }
        self.client_stanza(conn.id, kind, stamped);
    }

    /// Sends an error for `el` to the session that sent it.
    fn reply_to_client(
        &self,
        conn: &Conn<C2sConnection>,
        el: &Element,
        c: StanzaCondition,
        text: &str,
    ) {
        if is_error(el) {
            return;
        }
        let mut out = Vec::with_capacity(256);
        write_error_reply(el, c, Some(text), None, &mut out);
        send_to(conn, &[&out]);
    }

    fn session_conn(&self, bare: &str, id: ConnId) -> Option<Rc<Conn<C2sConnection>>> {
        self.local
            .users
            .borrow()
            .get(bare)
            .and_then(|u| u.sessions.iter().find(|s| s.conn.id == id))
            .map(|s| Rc::clone(&s.conn))
    }

    /// A stamped stanza from session `id` (on the user's shard): handled now, or queued
    /// behind the user's earlier stanzas.
    fn client_stanza(&self, id: ConnId, kind: StanzaKind, el: Element) {
        let Some(from) = el.from() else { return };
        let bare = bare_key(from).into_owned();
        if let Some(Deferred::FromClient(id, el)) = self.admit(&bare, Deferred::FromClient(id, el))
        {
            self.client_stanza_now(id, kind, el);
        }
    }

    fn client_stanza_now(&self, id: ConnId, kind: StanzaKind, el: Element) {
        let Some(from) = el.from() else { return };
        let bare = bare_key(from).into_owned();
        let Some(conn) = self.session_conn(&bare, id) else {
            return;
        };
        let to_self = el.to().is_none_or(|t| bare_key(t) == bare);
        match kind {
            StanzaKind::Iq if to_self => self.account_iq(&conn, &bare, el),
            StanzaKind::Presence => {
                let sub = el.type_().and_then(SubType::from_type);
                match (el.type_(), el.to()) {
                    (Some("probe"), _) => {} // the server probes, not clients (§4.3)
                    (_, Some(_)) if sub.is_some() => {
                        self.outbound_subscription(&conn, &bare, sub.expect("checked"), el);
                    }
                    (None | Some("unavailable"), None) => {
                        self.presence_broadcast(&conn, &bare, el);
                    }
                    (None | Some("unavailable"), Some(to)) => {
                        // Directed presence (§4.6): remembered, to be told of unavailability.
                        let to = to.to_owned();
                        let unavailable = el.type_() == Some("unavailable");
                        if let Some(u) = self.local.users.borrow_mut().get_mut(&bare) {
                            if let Some(s) = u.sessions.iter_mut().find(|s| s.conn.id == id) {
                                if unavailable {
                                    s.directed.remove(&to);
                                } else {
                                    s.directed.insert(to);
                                }
                            }
                        }
                        self.route(el);
                    }
                    _ => self.route(el),
                }
            }
            _ => {
                // A message to no one is for the account's bare JID (RFC 6120 §10.3.1).
                if el.to().is_none() {
                    let mut out = Vec::with_capacity(el.bytes().len() + 32 + bare.len());
                    write_readdressed(&el, Some(&bare), None, &mut out);
                    return self.route_generated(&out);
                }
                self.route(el)
            }
        }
    }

    /// An `iq` a client addressed to its own account (no `to`, or its bare JID): the
    /// server answers on the account's behalf (RFC 6120 §10.3.3).
    fn account_iq(&self, conn: &Rc<Conn<C2sConnection>>, bare: &str, el: Element) {
        if !matches!(el.type_(), Some("get" | "set")) {
            return; // results of roster pushes, errors
        }
        let payload = iq_payload(&el);
        match payload.as_ref().map(|p| (p.name.as_str(), p.ns.as_str())) {
            Some(("query", ROSTER_NS)) => {
                let query = payload.expect("matched");
                if el.type_() == Some("get") {
                    self.roster_get(conn, bare, &el, &query);
                } else {
                    self.roster_set(conn, bare, el, &query);
                }
            }
            Some(("ping", NS_PING)) if el.type_() == Some("get") => {
                let mut out = Vec::with_capacity(96);
                out.extend_from_slice(b"<iq type='result'");
                write_raw_attr("to", el.from(), &mut out);
                write_raw_attr("id", el.id(), &mut out);
                out.extend_from_slice(b"/>");
                send_to(conn, &[&out]);
            }
            _ => self.reply_to_client(
                conn,
                &el,
                StanzaCondition::ServiceUnavailable,
                "not served for accounts",
            ),
        }
    }

    // ----- rosters (RFC 6121 §2) -----

    /// Whether `d` (from or to `bare`) may be handled now: `Some(d)` back, or `None` when
    /// it was queued behind earlier stanzas, a roster change being stored, or the roster
    /// it needs (whose load starts).
    fn admit(&self, bare: &str, d: Deferred) -> Option<Deferred> {
        let needs = d.needs_roster(bare);
        let start_load = {
            let mut users = self.local.users.borrow_mut();
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
            self.ensure_roster(bare);
        }
        None
    }

    /// Handles what waited for `bare`, in order, until something blocks again.
    fn resume(&self, bare: &str) {
        // Bounded: each turn takes one queued stanza.
        for _ in 0..1_000_000 {
            let (next, load) = {
                let mut users = self.local.users.borrow_mut();
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
                return self.ensure_roster(bare);
            }
            match next {
                Some(Deferred::FromClient(id, el)) => {
                    let kind = StanzaKind::of(&el).unwrap_or(StanzaKind::Iq);
                    self.client_stanza_now(id, kind, el);
                }
                Some(Deferred::Inbound(el)) => self.deliver_to_user_inner(el),
                Some(Deferred::Broadcast(stanza, to)) => self.deliver_broadcast(&stanza, &to),
                None => break,
            }
        }
        self.maybe_forget(bare);
    }

    /// A roster change of `bare` is being stored: later stanzas wait.
    fn hold(&self, bare: &str) {
        if let Some(u) = self.local.users.borrow_mut().get_mut(bare) {
            u.busy += 1;
        }
    }

    /// A roster change of `bare` is stored and acted on: what waited goes on.
    fn release(&self, bare: &str) {
        if let Some(u) = self.local.users.borrow_mut().get_mut(bare) {
            u.busy = u.busy.saturating_sub(1);
        }
        self.resume(bare);
    }

    fn ensure_roster(&self, bare: &str) {
        {
            let mut users = self.local.users.borrow_mut();
            let user = users.entry(bare.to_owned()).or_default();
            if !matches!(user.roster, RosterState::Unloaded) {
                return;
            }
            user.roster = RosterState::Loading;
        }
        let user = bare.to_owned();
        self.store(
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
                {
                    let mut users = shard.local.users.borrow_mut();
                    let Some(u) = users.get_mut(&user) else {
                        return;
                    };
                    u.roster = state;
                    if retry {
                        // Drop what waited rather than loop; senders get no answer.
                        warn!(user = %user, dropped = u.deferred.len(), "stanzas dropped");
                        u.deferred.clear();
                    }
                }
                shard.resume(&user);
            }),
        );
    }

    /// Drops the cached state of a user with no session and nothing waiting: offline
    /// users cost no memory, and stanzas for unknown users leave nothing behind. (Changes
    /// in flight are not lost: the store applies requests in order, so a later load sees
    /// them.)
    fn maybe_forget(&self, bare: &str) {
        let mut users = self.local.users.borrow_mut();
        let idle = users.get(bare).is_some_and(|u| {
            u.sessions.is_empty()
                && u.deferred.is_empty()
                && u.busy == 0
                && !matches!(u.roster, RosterState::Loading)
        });
        if idle {
            users.remove(bare);
        }
    }

    fn with_roster<R>(&self, bare: &str, f: impl FnOnce(&mut Roster) -> R) -> Option<R> {
        let mut users = self.local.users.borrow_mut();
        match users.get_mut(bare).map(|u| &mut u.roster) {
            Some(RosterState::Loaded(r)) => Some(f(r)),
            _ => None,
        }
    }

    /// RFC 6121 §2.2, with versioning (§2.6): an empty result when the client's `ver` is
    /// current.
    fn roster_get(&self, conn: &Rc<Conn<C2sConnection>>, bare: &str, el: &Element, query: &Node) {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(b"<iq type='result'");
        write_raw_attr("to", el.from(), &mut out);
        write_raw_attr("id", el.id(), &mut out);
        let ok = self.with_roster(bare, |r| {
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
            return self.reply_to_client(
                conn,
                el,
                StanzaCondition::InternalServerError,
                "no roster",
            );
        }
        if let Some(u) = self.local.users.borrow_mut().get_mut(bare) {
            if let Some(s) = u.sessions.iter_mut().find(|s| s.conn.id == conn.id) {
                s.interested = true;
            }
        }
        send_to(conn, &[&out]);
    }

    /// RFC 6121 §2.3–§2.5: add, update or remove an item, as [`roster_set::plan`] plans
    /// it. The cache takes the change at once (later stanzas see it); the answer, the
    /// pushes and the subscription stanzas follow once the store made it durable.
    fn roster_set(&self, conn: &Rc<Conn<C2sConnection>>, bare: &str, el: Element, query: &Node) {
        let max = self.shared().config.c2s.max_roster_items;
        let (plan, row) = {
            let mut users = self.local.users.borrow_mut();
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
                    r.items.remove(jid);
                    None
                }
                _ => None,
            };
            (plan, row)
        };
        let user = bare.to_owned();
        let conn = Rc::clone(conn);
        let failed = |shard: &Shard, conn: &Conn<C2sConnection>, el: &Element| {
            shard.reply_to_client(
                conn,
                el,
                StanzaCondition::InternalServerError,
                "the roster could not be stored",
            )
        };
        match plan {
            Plan::Refuse(e) => self.reply_to_client(&conn, &el, e.condition(), &e.to_string()),
            Plan::Store { item, .. } => {
                let Some(row) = row else { return }; // a plan to store comes with a roster
                let change = Change::UpsertItem {
                    user: bare.to_owned(),
                    item: row,
                };
                self.store_change(bare, change, move |shard, ver| match ver {
                    Some(ver) => {
                        shard.iq_result(&conn, &el);
                        shard.push_roster(&user, ver, Some(&item), &item.jid);
                    }
                    None => failed(shard, &conn, &el),
                });
            }
            Plan::Remove { jid, transition } => {
                let change = Change::RemoveItem {
                    user: bare.to_owned(),
                    contact: jid.clone(),
                };
                self.store_change(bare, change, move |shard, ver| {
                    let Some(ver) = ver else {
                        return failed(shard, &conn, &el);
                    };
                    for a in transition.actions.iter() {
                        match a {
                            Action::SendUnavailable => shard.send_unavailable(&user, &jid),
                            Action::AutoReply(t) => {
                                shard.route_generated(&presence(&user, &jid, Some(t.as_str())))
                            }
                            Action::RosterPush => {
                                shard.iq_result(&conn, &el);
                                shard.push_roster(&user, ver, None, &jid);
                            }
                            _ => {}
                        }
                    }
                });
            }
        }
    }

    /// Makes `change` to `bare`'s roster durable, then runs `then` with the new roster
    /// version (`None` if storing failed). Until `then` has run, later stanzas from and
    /// to `bare` wait ([`Shard::admit`]).
    fn store_change(
        &self,
        bare: &str,
        change: Change,
        then: impl FnOnce(&Shard, Option<u64>) + 'static,
    ) {
        self.hold(bare);
        let user = bare.to_owned();
        let t0 = Instant::now();
        self.store(
            Op::Apply(vec![change]),
            Box::new(move |shard, result| {
                super::metrics(|m| m.observe(Latency::StoreCommit, t0.elapsed()));
                let ver = shard.applied(&user, result);
                then(shard, ver);
                shard.release(&user);
            }),
        );
    }

    /// The version after an `Apply`, recorded in the cache; `None` on failure (the cache
    /// is dropped, to be read again).
    fn applied(&self, bare: &str, result: Result<Outcome, StoreError>) -> Option<u64> {
        match result {
            Ok(Outcome::Applied(v)) => {
                let ver = v.last().copied().unwrap_or(0);
                self.with_roster(bare, |r| r.ver = r.ver.max(ver));
                Some(ver)
            }
            other => {
                warn!(user = bare, result = ?other.err(), "storing a roster change failed");
                if let Some(u) = self.local.users.borrow_mut().get_mut(bare) {
                    u.roster = RosterState::Unloaded;
                }
                None
            }
        }
    }

    fn iq_result(&self, conn: &Conn<C2sConnection>, el: &Element) {
        let mut out = Vec::with_capacity(96);
        out.extend_from_slice(b"<iq type='result'");
        write_raw_attr("to", el.from(), &mut out);
        write_raw_attr("id", el.id(), &mut out);
        out.extend_from_slice(b"/>");
        send_to(conn, &[&out]);
    }

    /// A roster push to every interested resource of `bare` (RFC 6121 §2.1.6).
    fn push_roster(&self, bare: &str, ver: u64, item: Option<&RosterItem>, contact: &str) {
        let targets: Vec<(Rc<Conn<C2sConnection>>, String)> = self
            .local
            .users
            .borrow()
            .get(bare)
            .map(|u| {
                u.sessions
                    .iter()
                    .filter(|s| s.interested)
                    .map(|s| (Rc::clone(&s.conn), s.full.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for (conn, full) in targets {
            let id = self.local.next_tag.get();
            self.local.next_tag.set(id + 1);
            send_to(&conn, &[&roster_push(&full, id, ver, item, contact)]);
        }
    }

    // ----- subscriptions (RFC 6121 §3, Appendix A) -----

    /// A subscription stanza from the user to `to` (stamped, roster loaded).
    fn outbound_subscription(
        &self,
        conn: &Rc<Conn<C2sConnection>>,
        bare: &str,
        t: SubType,
        el: Element,
    ) {
        let Some(contact) = el
            .to()
            .and_then(|to| BareJid::new(bare_key(to).as_ref()).ok())
            .map(|j| j.as_str().to_owned())
        else {
            return self.reply_to_client(
                conn,
                &el,
                StanzaCondition::JidMalformed,
                "not a valid JID",
            );
        };
        let max = self.shared().config.c2s.max_roster_items;
        let planned = self.with_roster(bare, |r| {
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
            Ok((tr, Some((r.put(bare, row.clone()), row))))
        });
        let (tr, change) = match planned {
            Some(Ok(p)) => p,
            Some(Err(())) => {
                return self.reply_to_client(
                    conn,
                    &el,
                    StanzaCondition::PolicyViolation,
                    &format!("the roster is limited to {max} items"),
                )
            }
            None => return, // no roster: a user the store does not know
        };
        self.perform(bare, contact, t, tr, change, el);
    }

    /// A subscription stanza from a contact to local user `bare` (roster loaded).
    fn inbound_subscription(&self, bare: &str, t: SubType, el: Element) {
        let Some(contact) = el
            .from()
            .and_then(|f| BareJid::new(bare_key(f).as_ref()).ok())
            .map(|j| j.as_str().to_owned())
        else {
            return;
        };
        let exists = self
            .local
            .users
            .borrow()
            .get(bare)
            .is_some_and(|u| matches!(u.roster, RosterState::Loaded(_)));
        if !exists {
            // No such user (§8.5.1, §3.1.3: a request is refused).
            if let Some(answer) = delivery::to_unknown_user(t) {
                self.route_generated(&presence(bare, &contact, Some(answer.as_str())));
            }
            return;
        }
        let max = self.shared().config.c2s.max_roster_items;
        let planned = self
            .with_roster(bare, |r| {
                let old = r.items.get(&contact).cloned();
                let tr = presence::inbound(r.state(&contact), t);
                if !tr.stored_changed {
                    return Ok((tr, None));
                }
                if old.is_none() && r.items.len() >= max.saturating_mul(2) {
                    return Err(());
                }
                let row = with_state(
                    old.unwrap_or_else(|| new_row(&contact)),
                    tr.state,
                    Some(el.as_str().to_owned()),
                );
                Ok((tr, Some((r.put(bare, row.clone()), row))))
            })
            .expect("checked above");
        let (tr, change) = match planned {
            Ok(p) => p,
            Err(()) => {
                return self.bounce(
                    &el,
                    StanzaCondition::ResourceConstraint,
                    "too many pending requests",
                )
            }
        };
        if tr.ignored() {
            return;
        }
        self.perform(bare, contact, t, tr, change, el);
    }

    /// Carries out a subscription transition for local user `bare` and `contact`: at once
    /// when nothing is stored, else once `change` is durable. `el` is the subscription
    /// stanza (`t`), from the user (routed on to the contact) or to the user (delivered).
    fn perform(
        &self,
        bare: &str,
        contact: String,
        t: SubType,
        tr: Transition,
        change: Option<(Change, StoredItem)>,
        el: Element,
    ) {
        let user = bare.to_owned();
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
                        shard.deliver_to_sessions(&user, el.bytes(), |s| {
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
                            shard.push_roster(&user, ver, Some(&roster_item(row)), &contact);
                        }
                    }
                    Action::AutoReply(t) => {
                        shard.route_generated(&presence(&user, &contact, Some(t.as_str())))
                    }
                    Action::SendCurrentPresence => {
                        shard.send_current_presence(&user, &contact);
                    }
                    Action::SendUnavailable => shard.send_unavailable(&user, &contact),
                    Action::Ignore => {}
                }
            }
        };
        match change {
            None => act(self, None, None),
            Some((change, row)) => {
                self.store_change(bare, change, move |shard, ver| {
                    if let Some(ver) = ver {
                        act(shard, Some(ver), Some(row));
                    }
                });
            }
        }
    }

    // ----- presence (RFC 6121 §4) -----

    /// Available or unavailable presence without `to` from a session: initial presence
    /// (§4.2: broadcast, probes, pending requests), an update (§4.4) or unavailable
    /// (§4.5).
    fn presence_broadcast(&self, conn: &Rc<Conn<C2sConnection>>, bare: &str, el: Element) {
        let unavailable = el.type_() == Some("unavailable");
        let Ok(shared) = SharedStanza::new(el.clone()) else {
            return;
        };
        let mut initial = false;
        let mut directed = BTreeSet::new();
        let mut pending: Vec<String> = Vec::new();
        let mut probes: Vec<String> = Vec::new();
        let mut others: Vec<SharedStanza> = Vec::new();
        {
            let mut users = self.local.users.borrow_mut();
            let Some(user) = users.get_mut(bare) else {
                return;
            };
            for s in user.sessions.iter() {
                if s.conn.id != conn.id && s.available {
                    if let Some(p) = &s.presence {
                        others.push(p.clone());
                    }
                }
            }
            let Some(s) = user.sessions.iter_mut().find(|s| s.conn.id == conn.id) else {
                return;
            };
            if unavailable {
                if !s.available {
                    return;
                }
                s.available = false;
                s.presence = None;
                directed = std::mem::take(&mut s.directed);
            } else {
                initial = !s.available;
                s.available = true;
                s.priority = delivery::priority(&el);
                s.presence = Some(shared.clone());
            }
            if initial {
                if let RosterState::Loaded(r) = &user.roster {
                    probes = r.contacts(Subscription::has_to);
                    pending = r
                        .items
                        .values()
                        .filter_map(|i| i.pending_in.clone())
                        .collect();
                }
            }
        }
        self.broadcast(bare, shared, directed, Some(conn.id));
        if initial {
            for contact in probes {
                self.route_generated(&presence(bare, &contact, Some("probe")));
            }
            // The other resources' presence, and requests still waiting for an answer
            // (§3.1.3), to the new resource.
            let mut to_attr = Vec::new();
            let full = conn
                .st
                .borrow()
                .proto
                .bound_jid()
                .map(|j| j.as_str().to_owned())
                .unwrap_or_default();
            write_to_attr(&full, &mut to_attr);
            for p in &others {
                send_to(conn, &p.parts(&to_attr));
            }
            for stanza in pending {
                send_to(conn, &[stanza.as_bytes()]);
            }
        }
    }

    /// Fans `stanza` (presence from one of `bare`'s resources, no `to`) out to the
    /// contacts with a `from` or `both` subscription, to `extra` (directed presence
    /// recipients) and to the user's other available resources (not `except`).
    fn broadcast(
        &self,
        bare: &str,
        stanza: SharedStanza,
        extra: BTreeSet<String>,
        except: Option<ConnId>,
    ) {
        let (mut recipients, own) = {
            let users = self.local.users.borrow();
            let Some(user) = users.get(bare) else { return };
            let contacts = match &user.roster {
                RosterState::Loaded(r) => r.contacts(Subscription::has_from),
                _ => Vec::new(),
            };
            let own: Vec<(Rc<Conn<C2sConnection>>, String)> = user
                .sessions
                .iter()
                .filter(|s| s.available && Some(s.conn.id) != except)
                .map(|s| (Rc::clone(&s.conn), s.full.clone()))
                .collect();
            (contacts, own)
        };
        for (conn, full) in own {
            let mut attr = Vec::with_capacity(8 + full.len());
            write_to_attr(&full, &mut attr);
            send_to(&conn, &stanza.parts(&attr));
        }
        recipients.extend(extra);
        self.fan_out(stanza, recipients.iter().map(String::as_str));
    }

    /// Sends `stanza` to each recipient: grouped per destination shard (one message per
    /// shard) and, on each, per remote domain.
    pub(super) fn fan_out<'a>(
        &self,
        stanza: SharedStanza,
        recipients: impl IntoIterator<Item = &'a str>,
    ) {
        let s2s = Arc::clone(&self.shared().s2s);
        for (shard, to) in plan(recipients, self.n, |d| s2s.hosts(d)) {
            if shard == self.id {
                self.fanned_out(&stanza, to);
            } else {
                self.send_to(
                    shard,
                    ShardMsg::Fanout {
                        stanza: stanza.clone(),
                        to,
                        read_at: super::read_at(),
                    },
                );
            }
        }
    }

    /// This shard's share of a fan-out.
    pub(super) fn fanned_out(&self, stanza: &SharedStanza, to: Vec<Box<str>>) {
        for jid in to {
            let domain = domain_key(domain_of(&jid));
            if self.shared().s2s.hosts(&domain) {
                let bare = bare_key(&jid).into_owned();
                if let Some(Deferred::Broadcast(stanza, jid)) =
                    self.admit(&bare, Deferred::Broadcast(stanza.clone(), jid))
                {
                    self.deliver_broadcast(&stanza, &jid);
                }
            } else {
                let domain = domain.into_owned();
                self.send_remote(
                    &domain,
                    Queued::Shared(stanza.clone(), jid, super::read_at()),
                );
            }
        }
    }

    /// Presence to a local user: to its available resources (RFC 6121 §4.2.3, §4.4.3).
    fn deliver_broadcast(&self, stanza: &SharedStanza, jid: &str) {
        let mut attr = Vec::with_capacity(8 + jid.len());
        write_to_attr(jid, &mut attr);
        let targets = self.writable_sessions(bare_key(jid).as_ref(), |s| s.available);
        for c in targets {
            send_to(&c, &stanza.parts(&attr));
        }
    }

    /// Each available resource's last presence to `contact` (RFC 6121 §3.1.5, §4.3.2).
    fn send_current_presence(&self, bare: &str, contact: &str) -> bool {
        let presences: Vec<SharedStanza> = self
            .local
            .users
            .borrow()
            .get(bare)
            .map(|u| {
                u.sessions
                    .iter()
                    .filter(|s| s.available)
                    .filter_map(|s| s.presence.clone())
                    .collect()
            })
            .unwrap_or_default();
        let any = !presences.is_empty();
        for p in presences {
            self.fan_out(p, [contact]);
        }
        any
    }

    /// Unavailable presence from each available resource to `contact` (§3.2.2, §3.3.3).
    fn send_unavailable(&self, bare: &str, contact: &str) {
        let fulls: Vec<String> = self
            .local
            .users
            .borrow()
            .get(bare)
            .map(|u| {
                u.sessions
                    .iter()
                    .filter(|s| s.available)
                    .map(|s| s.full.clone())
                    .collect()
            })
            .unwrap_or_default();
        for full in fulls {
            self.route_generated(&presence(&full, contact, Some("unavailable")));
        }
    }

    /// Sends `bytes` to the sessions of `bare` that `filter` selects and that can take
    /// them: a session whose stream holds `c2s.send_queue_bytes` not yet accepted by its
    /// socket is skipped (a client that stops reading costs only its own buffer).
    fn deliver_to_sessions(
        &self,
        bare: &str,
        bytes: &[u8],
        filter: impl Fn(&Session) -> bool,
    ) -> usize {
        let targets = self.writable_sessions(bare, filter);
        for c in &targets {
            send_to(c, &[bytes]);
        }
        targets.len()
    }

    /// The sessions of `bare` that `filter` selects and whose stream has room.
    fn writable_sessions(
        &self,
        bare: &str,
        filter: impl Fn(&Session) -> bool,
    ) -> Vec<Rc<Conn<C2sConnection>>> {
        let cap = self.shared().config.c2s.send_queue_bytes;
        self.local
            .users
            .borrow()
            .get(bare)
            .map(|u| {
                u.sessions
                    .iter()
                    .filter(|s| filter(s) && s.conn.backlog() < cap)
                    .map(|s| Rc::clone(&s.conn))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A client's socket accepted no byte for `c2s.write_stall_timeout` (the writer closed
    /// the stream): the session ends as if the client had left (unavailable presence to
    /// its contacts), then the messages and IQs it never received are handled as for an
    /// unavailable resource (RFC 6121 §8.5): delivered to the user's other resources, or
    /// answered with `service-unavailable`. A message to the bare JID that the user's
    /// other available resources already received is not delivered twice.
    pub(super) fn c2s_write_stalled(&self, conn: &Rc<Conn<C2sConnection>>) {
        let timeout = self.shared().config.c2s.write_stall_timeout;
        let cap = self.shared().config.c2s.send_queue_bytes;
        let (jid, pending, unsent) = {
            let mut st = conn.st.borrow_mut();
            let pending = st.backlog();
            let jid = st.proto.bound_jid().map(|j| j.as_str().to_owned());
            (jid, pending, st.take_unsent())
        };
        super::metrics(|m| m.count("stalled_streams_closed", &[("proto", "c2s")], 1));
        warn!(
            parent: &conn.span,
            jid = jid.as_deref().unwrap_or("-"),
            unsent = unsent.len(),
            pending_bytes = pending,
            timeout = %humantime::format_duration(timeout),
            "client stopped reading: stream closed by c2s.write_stall_timeout; what waited for it is handled as for an unavailable resource"
        );
        self.c2s_ended(conn, &CloseReason::Local);
        for q in unsent {
            let Queued::Whole(el, _) = q else { continue };
            let Some(to) = el.to() else { continue };
            let bare = bare_key(to);
            let resource = to.find('/').map(|i| &to[i + 1..]);
            let again = StanzaKind::of(&el).is_none_or(|kind| {
                let users = self.local.users.borrow();
                let sessions = users
                    .get(bare.as_ref())
                    .map_or(&[][..], |u| &u.sessions[..]);
                let views: Vec<SessionView> = sessions.iter().map(|s| s.view(cap)).collect();
                delivery::redeliver_after_stall(kind, resource, &views)
            });
            if again {
                self.deliver_to_user(el);
            }
        }
    }

    // ----- delivery to local users (RFC 6121 §8) -----

    /// A stanza for a local user this shard owns, from anywhere (another local user, a
    /// remote server, the server itself).
    pub(super) fn deliver_to_user(&self, el: Element) {
        let Some(to) = el.to() else { return };
        let bare = bare_key(to).into_owned();
        if let Some(Deferred::Inbound(el)) = self.admit(&bare, Deferred::Inbound(el)) {
            self.deliver_to_user_inner(el);
            self.maybe_forget(&bare);
        }
    }

    /// Carries out what the RFC 6121 §8.5 rules ([`delivery::decide`]) say to do with a
    /// stanza for a local user, given the user's sessions now.
    fn deliver_to_user_inner(&self, el: Element) {
        let Some(kind) = StanzaKind::of(&el) else {
            return;
        };
        let Some(to) = el.to() else { return };
        let bare = bare_key(to).into_owned();
        let resource = to.find('/').map(|i| &to[i + 1..]);
        let cap = self.shared().config.c2s.send_queue_bytes;
        let (decision, targets) = {
            let users = self.local.users.borrow();
            let sessions = users.get(&bare).map_or(&[][..], |u| &u.sessions[..]);
            let views: Vec<SessionView> = sessions.iter().map(|s| s.view(cap)).collect();
            let decision = delivery::decide(kind, el.type_(), resource, &views);
            let targets: Vec<Rc<Conn<C2sConnection>>> = match &decision {
                Delivery::Deliver(ix) => ix.iter().map(|&i| Rc::clone(&sessions[i].conn)).collect(),
                _ => Vec::new(),
            };
            (decision, targets)
        };
        match decision {
            Delivery::Deliver(_) => {
                for c in &targets {
                    // A message or IQ is tracked until its socket accepts it, so that a
                    // session closed by `c2s.write_stall_timeout` hands back what it never
                    // sent ([`Shard::c2s_write_stalled`]).
                    if send_to(c, &[el.bytes()]) && kind != StanzaKind::Presence {
                        c.st.borrow_mut().track(Queued::Whole(el.clone(), None));
                    }
                }
            }
            Delivery::Reply(condition) => {
                let mut out = Vec::with_capacity(el.bytes().len().min(256) + 160);
                write_error_reply(&el, condition, None, None, &mut out);
                self.route_generated(&out);
            }
            Delivery::UndeliverableError => {
                // Never answered (RFC 6120 §8.3.1), but not dropped without a trace: a
                // sender whose client stops reading loses its bounces here.
                super::metrics(|m| {
                    m.count(
                        "undeliverable_errors",
                        &[("cause", "recipient_unavailable")],
                        1,
                    )
                });
            }
            Delivery::Subscription(t) => self.inbound_subscription(&bare, t, el),
            Delivery::Probe => self.answer_probe(&bare, &el),
            Delivery::Ignore => {}
        }
    }

    /// A probe for `bare` (RFC 6121 §4.3.2): the last presence of each available resource
    /// to a subscriber (or unavailable from the bare JID when none is available); nothing
    /// to anyone else.
    fn answer_probe(&self, bare: &str, el: &Element) {
        let Some(contact) = el
            .from()
            .and_then(|f| BareJid::new(bare_key(f).as_ref()).ok())
            .map(|j| j.as_str().to_owned())
        else {
            return;
        };
        let subscribed = self
            .with_roster(bare, |r| r.state(&contact).subscription.has_from())
            .unwrap_or(false);
        if !subscribed {
            debug!(user = bare, %contact, "probe from a non-subscriber ignored");
            return;
        }
        if !self.send_current_presence(bare, &contact) {
            self.route_generated(&presence(bare, &contact, Some("unavailable")));
        }
    }

    /// A stanza to a local address on this shard: the server itself, or a user.
    pub(super) fn deliver_local_stanza(&self, el: Element) -> Option<Answer> {
        let kind = StanzaKind::of(&el)?;
        let to = el.to().unwrap_or_default();
        if !to.contains('@') && !to.contains('/') {
            return Some(answer_server(&el, kind));
        }
        self.deliver_to_user(el);
        None
    }

    /// Sends stored, unanswered subscription requests again (at start): the contact's
    /// server ignores a duplicate (RFC 6121 Appendix A.3.1), and a request that was
    /// acknowledged to its sender just before a crash is not lost.
    pub(super) fn resend_subscriptions(&self, pairs: Vec<(String, String)>) {
        for (user, contact) in pairs {
            self.route_generated(&presence(&user, &contact, Some("subscribe")));
        }
    }

    /// Closes every client stream (shutdown): unavailable presence goes out as each ends.
    pub(super) fn close_clients(&self, now: Instant) {
        let conns: Vec<Rc<Conn<C2sConnection>>> =
            self.local.conns.borrow().values().cloned().collect();
        for c in conns {
            let mut st = c.st.borrow_mut();
            st.proto.close(
                Some((
                    StreamCondition::SystemShutdown,
                    "the server is shutting down",
                )),
                now,
            );
            st.collect_events();
            st.pump();
            drop(st);
            c.wake.notify_one();
        }
    }
}

impl Driven for C2sConnection {
    const PROTO: &'static str = "c2s";
    fn on_events(shard: &Shard, conn: &Rc<Conn<Self>>, may_hand_off: bool) -> After {
        shard.c2s_on_events(conn, may_hand_off)
    }
    fn ended(shard: &Shard, conn: &Rc<Conn<Self>>, reason: &CloseReason) {
        shard.c2s_ended(conn, reason)
    }
    fn write_stall_timeout(shard: &Shard) -> std::time::Duration {
        shard.shared().config.c2s.write_stall_timeout
    }
    fn write_stalled(shard: &Shard, conn: &Rc<Conn<Self>>) {
        shard.c2s_write_stalled(conn)
    }
    fn conns(shard: &Shard) -> &RefCell<HashMap<ConnId, Rc<Conn<Self>>>> {
        &shard.local.conns
    }
    fn adopt_msg(h: Handoff<Self>) -> ShardMsg {
        ShardMsg::AdoptC2s(Box::new(h))
    }
}
