//! C2S sessions that stay on the node the client connected to ([`Relays`]), in a
//! cluster with `cluster.c2s_sessions = "stay"` (DESIGN.md "Cluster"): the client's node
//! (the access node) keeps the stream (TLS, SASL, stream management, the socket); the
//! node that owns the bare JID (the home node) keeps the session's state and decides
//! everything RFC 6121 decides, exactly as for a client of its own. They exchange
//! session messages over NATS ([`crate::cluster::wire::SessionMsg`]), keyed by the bare
//! JID, so both ends handle them on `shard_of(bare JID)`:
//!
//! | access → home | home → access |
//! |---|---|
//! | `Bind` (the requested resource) | `Bound` (the full JID, or the refusal) |
//! | `Stanza` (stamped with the full JID) | `Deliver`, `DeliverTracked` (stanza bytes) |
//! | `Csi` (XEP-0352) | `Close` (a stream condition) |
//! | `End` (the stream ended) | |
//!
//! NATS keeps each publisher's order on a subject, so a session's `End` always reaches
//! the home node before anything its access node routes afterwards.
//!
//! Failures: the home node dies or ownership moves (a view change) → the access node
//! closes the client's stream with `<reset/>` (RFC 6120 §4.9.3.16); the client logs in
//! again and binds at the new home. The access node dies → the home node ends its
//! sessions (unavailable presence to their contacts, RFC 6121 §4.5.2). A message that
//! cannot be published comes back (`hops` 0): what was for the client is delivered as
//! to an unavailable resource (RFC 6121 §8.5) after its session ended; what the client
//! sent is routed without its home's processing, or counted lost.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, info_span, warn};

use super::link::{send_session, At, Link, Relay};
use super::sessions::send_to;
use crate::cluster::wire::{self, SessionMsg, SessionOp};
use crate::cluster::View;
use crate::condition::StreamCondition;
use crate::csi::ClientState;
use crate::router::bare_key;
use crate::router::queue::Queued;
use crate::runtime::conn::{Conn, ConnId};
use crate::runtime::shard::Shard;
use crate::stanza::StanzaKind;
use crate::stream::c2s::{BindError, C2sConnection};
use crate::xml::{parse_stanza, Element};

/// Why a client is asked to reconnect when its session's home moves.
const MOVED: &str = "this account's sessions moved to another cluster node: log in again";

/// The access side's record of a relayed connection.
struct Home {
    /// The home node.
    node: Arc<str>,
    /// The session's bare JID.
    bare: Box<str>,
}

/// The relayed sessions of this shard, on both sides.
#[derive(Default)]
pub(super) struct Relays {
    /// Access side: this shard's client connections whose session is on another node.
    homes: RefCell<HashMap<ConnId, Home>>,
}

fn count(what: &'static str) {
    crate::runtime::count_static("cluster_session_messages", "dir", what, 1);
}

fn bind_error_name(e: BindError) -> &'static str {
    match e {
        BindError::Conflict => "conflict",
        BindError::NotAllowed => "not-allowed",
        BindError::ResourceConstraint => "resource-constraint",
        _ => "internal-server-error",
    }
}

fn bind_error(name: &[u8]) -> BindError {
    match name {
        b"conflict" => BindError::Conflict,
        b"not-allowed" => BindError::NotAllowed,
        b"resource-constraint" => BindError::ResourceConstraint,
        _ => BindError::Internal,
    }
}

impl Relays {
    /// Whether connection `id` of this shard is relayed to a home node.
    pub(super) fn is_relayed(&self, id: ConnId) -> bool {
        self.homes.borrow().contains_key(&id)
    }

    /// How many of this shard's client connections are relayed (access side).
    pub(super) fn count(&self) -> usize {
        self.homes.borrow().len()
    }

    fn me(shard: &Shard) -> Option<Arc<str>> {
        shard.cluster.as_ref().map(|c| Arc::clone(&c.node))
    }

    fn to_home(&self, shard: &Shard, id: ConnId, op: SessionOp, data: &[u8]) -> bool {
        let (Some(c), Some(me)) = (shard.cluster.as_ref(), Self::me(shard)) else {
            return false;
        };
        let homes = self.homes.borrow();
        let Some(h) = homes.get(&id) else {
            return false;
        };
        send_session(c, &h.node, &h.bare, op, id, &me, data)
    }

    // ---- access side -------------------------------------------------------------

    /// `conn` (authenticated as `bare`, whose home is `home`) asks to bind: the request
    /// goes to the home node, whose `Bound` answers it ([`Relays::at_access`]).
    pub(super) fn bind(
        &self,
        shard: &Shard,
        conn: &Rc<Conn<C2sConnection>>,
        bare: &str,
        requested: Option<String>,
        home: Arc<str>,
    ) {
        debug!(parent: &conn.span, %home, "binding at the home node of the account");
        self.homes.borrow_mut().insert(
            conn.id,
            Home {
                node: home,
                bare: bare.into(),
            },
        );
        let r = requested.unwrap_or_default();
        if !self.to_home(shard, conn.id, SessionOp::Bind, r.as_bytes()) {
            self.homes.borrow_mut().remove(&conn.id);
            answer_bind(conn, Err(BindError::ResourceConstraint));
        }
    }

    /// A stanza `el` from relayed connection `id`, stamped: to the home node. Whether
    /// `id` is relayed (else the caller handles it here).
    pub(super) fn client_stanza(&self, shard: &Shard, id: ConnId, el: &Element) -> bool {
        if !self.is_relayed(id) {
            return false;
        }
        if !self.to_home(shard, id, SessionOp::Stanza, el.bytes()) {
            crate::runtime::metrics(|m| {
                m.count("cluster_session_lost", &[("cause", "way_full")], 1)
            });
            warn!("a client's stanza could not be relayed to its home node (the way is full); dropped");
        }
        true
    }

    /// A relayed client reported `state` (XEP-0352). Whether `id` is relayed.
    pub(super) fn client_state(&self, shard: &Shard, id: ConnId, state: ClientState) -> bool {
        if !self.is_relayed(id) {
            return false;
        }
        let b: &[u8] = if state == ClientState::Inactive {
            b"0"
        } else {
            b"1"
        };
        self.to_home(shard, id, SessionOp::Csi, b);
        true
    }

    /// A relayed client's stream ended: the home node ends the session; what the client
    /// never acknowledged goes back to the router (to the home, as for an unavailable
    /// resource). Whether `conn` was relayed.
    pub(super) fn ended(&self, shard: &Shard, conn: &Rc<Conn<C2sConnection>>) -> bool {
        if !self.is_relayed(conn.id) {
            return false;
        }
        self.to_home(shard, conn.id, SessionOp::End, b"");
        self.homes.borrow_mut().remove(&conn.id);
        shard.local.resumption.redeliver_unacked(shard, conn);
        true
    }

    /// A message from a home node about one of this shard's connections.
    fn at_access(&self, shard: &Shard, bare: &str, m: SessionMsg) {
        let conn = shard.local.conns.borrow().get(&m.conn).cloned();
        let conn = conn.filter(|c| self.is_relayed(c.id));
        match (m.op, conn) {
            (SessionOp::Bound, Some(conn)) => {
                let full;
                let answer = match m.data.split_first() {
                    Some((b'+', jid)) => {
                        full = String::from_utf8_lossy(jid).into_owned();
                        Ok(full.as_str())
                    }
                    Some((_, name)) => Err(bind_error(name)),
                    None => Err(BindError::Internal),
                };
                if answer.is_err() {
                    self.homes.borrow_mut().remove(&conn.id);
                }
                answer_bind(&conn, answer);
                shard.local.sessions.after_answer(shard, &conn);
            }
            (SessionOp::Deliver | SessionOp::DeliverTracked, Some(conn)) => {
                if send_to(&conn, &[&m.data]) && m.op == SessionOp::DeliverTracked {
                    if let Ok(el) = parse_stanza(&m.data) {
                        conn.st.borrow_mut().track(Queued::Whole(el, None));
                    }
                }
            }
            (SessionOp::Close, Some(conn)) => {
                let c = std::str::from_utf8(&m.data)
                    .ok()
                    .and_then(StreamCondition::from_name)
                    .unwrap_or(StreamCondition::Reset);
                info!(parent: &conn.span, condition = c.as_str(), "the home node closes the session");
                // The home forgot the session: no `End` goes back.
                self.homes.borrow_mut().remove(&conn.id);
                close(&conn, c, MOVED);
            }
            (SessionOp::Deliver | SessionOp::DeliverTracked, None) => {
                // The session ended here before this reached it: the home learns it (again:
                // its `End` goes first), and the stanza goes back to the router, as to an
                // unavailable resource (RFC 6121 §8.5).
                if let (Some(c), Some(me), Some(home)) = (
                    shard.cluster.as_ref(),
                    Self::me(shard),
                    shard.owner_elsewhere(bare),
                ) {
                    send_session(c, &home, bare, SessionOp::End, m.conn, &me, b"");
                }
                if m.op == SessionOp::DeliverTracked {
                    if let Ok(el) = parse_stanza(&m.data) {
                        shard.route(el);
                    }
                }
            }
            (_, None) => {
                debug!(conn = m.conn, op = ?m.op, "session message for a connection that is gone")
            }
            (op, Some(_)) => debug!(?op, "unexpected session message at the access node"),
        }
    }

    /// A message this node published to a home node came back unpublished (the home is
    /// gone or the way to it full).
    fn returned_to_access(&self, shard: &Shard, m: SessionMsg) {
        count("returned");
        match m.op {
            SessionOp::Bind => {
                let conn = shard.local.conns.borrow().get(&m.conn).cloned();
                if let Some(conn) = conn {
                    self.homes.borrow_mut().remove(&conn.id);
                    answer_bind(&conn, Err(BindError::ResourceConstraint));
                    shard.local.sessions.after_answer(shard, &conn);
                }
            }
            SessionOp::Stanza => {
                // Routed without its home's processing (its session there is gone).
                if let Ok(el) = parse_stanza(&m.data) {
                    if el.to().is_some() {
                        shard.route(el);
                    } else {
                        crate::runtime::metrics(|m| {
                            m.count("cluster_session_lost", &[("cause", "home_gone")], 1)
                        });
                    }
                }
            }
            _ => {}
        }
    }

    // ---- home side ---------------------------------------------------------------

    fn relayed_session(
        &self,
        shard: &Shard,
        bare: &str,
        access: &str,
        conn: ConnId,
    ) -> Option<Link> {
        shard.local.users.borrow().get(bare).and_then(|u| {
            u.sessions
                .iter()
                .find(|s| {
                    s.conn
                        .relay()
                        .is_some_and(|r| r.conn == conn && *r.node == *access)
                })
                .map(|s| s.conn.clone())
        })
    }

    /// A message from an access node about a session whose bare JID this node owns.
    fn at_home(&self, shard: &Shard, bare: &str, m: SessionMsg) {
        let Some(cluster) = shard.cluster.as_ref() else {
            return;
        };
        let access: Arc<str> = m.access.as_str().into();
        if shard.owner_elsewhere(bare).is_some() {
            // Not (or no longer) this node's: the client logs in again where it belongs.
            if m.op != SessionOp::End {
                let c = StreamCondition::Reset.as_str().as_bytes();
                send_session(cluster, &access, bare, SessionOp::Close, m.conn, &access, c);
            }
            return;
        }
        let session = self.relayed_session(shard, bare, &access, m.conn);
        match (m.op, session) {
            (SessionOp::Bind, None) => {
                let requested =
                    (!m.data.is_empty()).then(|| String::from_utf8_lossy(&m.data).into_owned());
                let id = shard.next_conn_id();
                let span = info_span!("c2s", jid = %bare, node = %access, relayed = true);
                let relay = Rc::new(Relay {
                    node: Arc::clone(&access),
                    conn: m.conn,
                    bare: bare.into(),
                    cluster: Arc::clone(cluster),
                    span,
                    gone: std::cell::Cell::new(false),
                });
                let link = Link {
                    id,
                    at: At::Relayed(Rc::clone(&relay)),
                };
                let answer = match shard.local.sessions.resolve_bind(shard, bare, requested) {
                    Ok(full) => {
                        let mut a = Vec::with_capacity(full.len() + 1);
                        a.push(b'+');
                        a.extend_from_slice(full.as_bytes());
                        shard.local.sessions.add_session(shard, &full, link);
                        debug!(parent: &relay.span, %full, "bound for a client on another node");
                        a
                    }
                    Err(e) => [b"-", bind_error_name(e).as_bytes()].concat(),
                };
                relay.send(SessionOp::Bound, &answer);
            }
            (SessionOp::Stanza, Some(link)) => match parse_stanza(&m.data) {
                Ok(el) => {
                    let kind = StanzaKind::of(&el).unwrap_or(StanzaKind::Iq);
                    shard.local.client.client_stanza(shard, link.id, kind, el);
                }
                Err(e) => warn!(error = %e, "a relayed client stanza does not frame; dropped"),
            },
            (SessionOp::Csi, Some(link)) => {
                let state = if &m.data[..] == b"0" {
                    ClientState::Inactive
                } else {
                    ClientState::Active
                };
                shard.local.client_state.set(shard, bare, link.id, state);
            }
            (SessionOp::End, Some(link)) => {
                if let Some(r) = link.relay() {
                    r.gone.set(true);
                }
                shard.local.sessions.session_gone_id(shard, bare, link.id);
            }
            (SessionOp::End, None) => {}
            (op, None) => {
                // The access node holds a session this node does not know (it restarted,
                // or ended it): the client logs in again.
                debug!(?op, %access, "session message for an unknown relayed session");
                let c = StreamCondition::Reset.as_str().as_bytes();
                send_session(cluster, &access, bare, SessionOp::Close, m.conn, &access, c);
            }
            (op, Some(_)) => debug!(?op, "unexpected session message at the home node"),
        }
    }

    /// A message this node published to an access node came back unpublished: the
    /// session ends (its client cannot be reached), and a stanza for it is handled as
    /// for an unavailable resource (RFC 6121 §8.5).
    fn returned_to_home(&self, shard: &Shard, bare: &str, m: SessionMsg) {
        count("returned");
        if let Some(link) = self.relayed_session(shard, bare, &m.access, m.conn) {
            if let Some(r) = link.relay() {
                r.gone.set(true);
            }
            shard.local.sessions.session_gone_id(shard, bare, link.id);
        }
        if m.op == SessionOp::DeliverTracked {
            if let Ok(el) = parse_stanza(&m.data) {
                shard.route(el);
            }
        }
    }

    /// A session message from the cluster (`f` of kind [`wire::Kind::Session`]).
    pub(super) fn received(&self, shard: &Shard, f: wire::Forwarded) {
        let m = match wire::session_msg(&f.stanza) {
            Ok(m) => m,
            Err(e) => return warn!(error = %e, "undecodable session message; dropped"),
        };
        let returned = f.hops == 0;
        let to_home = matches!(
            m.op,
            SessionOp::Bind | SessionOp::Stanza | SessionOp::Csi | SessionOp::End
        );
        if !returned {
            count("in");
        }
        match (to_home, returned) {
            (true, false) => self.at_home(shard, &f.key, m),
            (false, false) => self.at_access(shard, &f.key, m),
            (true, true) => self.returned_to_access(shard, m),
            (false, true) => self.returned_to_home(shard, &f.key, m),
        }
    }

    /// The live set changed: relayed connections whose home moved close with `<reset/>`
    /// (their clients log in again and bind at the new home); sessions relayed from
    /// nodes that are gone end; sessions of users another node owns now end, their
    /// clients asked to log in again.
    pub(super) fn view_changed(&self, shard: &Shard, view: &View) {
        // Access side.
        let moved: Vec<ConnId> = self
            .homes
            .borrow()
            .iter()
            .filter(|(_, h)| shard.owner_elsewhere(&h.bare).as_deref() != Some(&*h.node))
            .map(|(id, _)| *id)
            .collect();
        for id in moved {
            let conn = shard.local.conns.borrow().get(&id).cloned();
            if let Some(conn) = conn {
                info!(parent: &conn.span, "the account's home node changed: the client logs in again");
                close(&conn, StreamCondition::Reset, MOVED);
            }
        }
        // Home side.
        let mut gone: Vec<(String, Link, bool)> = Vec::new();
        for (bare, u) in shard.local.users.borrow().iter() {
            let owned_elsewhere = shard.owner_elsewhere(bare).is_some();
            for s in &u.sessions {
                let access_gone = s
                    .conn
                    .relay()
                    .is_some_and(|r| !view.members.iter().any(|m| **m == *r.node));
                if owned_elsewhere || access_gone {
                    gone.push((bare.clone(), s.conn.clone(), !access_gone));
                }
            }
        }
        for (bare, link, tell) in gone {
            if tell {
                link.close(StreamCondition::Reset, MOVED);
            } else if let Some(r) = link.relay() {
                r.gone.set(true);
            }
            shard.local.sessions.session_gone_id(shard, &bare, link.id);
        }
    }

    /// This node was cut off longer than the failure timeout: every session it holds,
    /// relayed or not, starts over (the clients log in again and reload from the store).
    pub(super) fn fence(&self, shard: &Shard) {
        let ids: Vec<ConnId> = self.homes.borrow().keys().copied().collect();
        for id in ids {
            let conn = shard.local.conns.borrow().get(&id).cloned();
            if let Some(conn) = conn {
                close(&conn, StreamCondition::Reset, MOVED);
            }
        }
        let all: Vec<(String, Link)> = shard
            .local
            .users
            .borrow()
            .iter()
            .flat_map(|(b, u)| u.sessions.iter().map(move |s| (b.clone(), s.conn.clone())))
            .collect();
        for (bare, link) in all {
            link.close(StreamCondition::Reset, MOVED);
            shard.local.sessions.session_gone_id(shard, &bare, link.id);
        }
    }
}

/// Answers a bind request on `conn` (RFC 6120 §7.6).
fn answer_bind(conn: &Conn<C2sConnection>, answer: Result<&str, BindError>) {
    let mut st = conn.st.borrow_mut();
    if let Err(e) = st.proto.handle_bind(answer, Instant::now()) {
        warn!(parent: &conn.span, error = %e, "bind answer refused");
    }
    st.collect_events();
    st.pump();
    drop(st);
    conn.wake.notify_one();
}

/// Closes `conn`'s stream with `condition`.
fn close(conn: &Rc<Conn<C2sConnection>>, condition: StreamCondition, text: &str) {
    Link::here(conn).close(condition, text);
}

/// The bare JID of a bound or authenticated connection.
pub(super) fn bare_of(conn: &Conn<C2sConnection>) -> Option<String> {
    conn.st
        .borrow()
        .proto
        .authenticated_jid()
        .map(|j| bare_key(j.as_str()).into_owned())
}
