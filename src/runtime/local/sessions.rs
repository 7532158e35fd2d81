//! Client connections ([`Sessions`]): C2S streams accepted on this shard or handed to
//! it, their events (STARTTLS, SASL with the credentials read from the store or the
//! password checked by the directory, resource binding — RFC 6120 §5–§7), the end of a session
//! (§4.5.2: unavailable presence to whoever had its presence) and a client that stops
//! reading (its undelivered stanzas handled as for an unavailable resource, §8.5). What a
//! bound session sends is [`super::client_stanzas`]'s.
//!
//! A client connects to any shard; once authenticated, its connection moves to
//! `shard_of(bare JID)`, where the resource is bound ([`Session`]) and every later stanza
//! for or from that user is handled.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use rand::Rng;
use tokio_uring::net::TcpStream;
use tracing::{debug, info, info_span, warn};

use crate::condition::StreamCondition;
use crate::csi::Held;
use crate::presence::delivery::{self, SessionView};
use crate::router::fanout::SharedStanza;
use crate::router::queue::Queued;
use crate::router::{bare_key, shard_of};
use crate::runtime::conn::{Conn, ConnId, ConnState, Handoff, Tls};
use crate::runtime::count_stanza;
use crate::runtime::io::{After, Driven};
use crate::runtime::msg::ShardMsg;
use crate::runtime::shard::Shard;
use crate::stanza::StanzaKind;
use crate::store::{Op, Outcome};
use crate::stream::c2s::{BindError, C2sConnection, Event, Mechanism};
use crate::stream::s2s::CloseReason;
use crate::xml::writer::write_raw_attr;

use super::link::Link;

/// A bound resource.
pub(super) struct Session {
    /// Where its client is: a connection of this shard, or another node's.
    pub(super) conn: Link,
    pub(super) full: String,
    pub(super) resource: String,
    /// Sent initial presence and not unavailable since (RFC 6121 §4.2).
    pub(super) available: bool,
    /// Of the last available presence (RFC 6121 §4.7.2.3).
    pub(super) priority: i8,
    /// The last broadcast presence, without `to`.
    pub(super) presence: Option<SharedStanza>,
    /// Requested the roster (RFC 6121 §2.2): gets roster pushes.
    pub(super) interested: bool,
    /// Entities sent directed presence (RFC 6121 §4.6), told when the session goes away.
    pub(super) directed: BTreeSet<String>,
    /// Enabled message carbons (XEP-0280 §4): gets copies of the user's messages.
    pub(super) carbons: bool,
    /// Retrieved the block list (XEP-0191 §3.2): gets block list pushes.
    pub(super) blocklist_requested: bool,
    /// Reported `<inactive/>` (XEP-0352): presence updates are held in `held`.
    pub(super) inactive: bool,
    /// Presence updates held while inactive, the latest per sender, as sent bytes.
    pub(super) held: Held<Vec<u8>>,
    /// Bytes put into `held` since it was last emptied (replaced ones included).
    pub(super) held_bytes: usize,
}

impl Session {
    /// The session as the RFC 6121 §8.5 rules see it ([`delivery::decide`]): `cap` is
    /// `c2s.send_queue_bytes`, the backlog past which it takes nothing more.
    pub(super) fn view(&self, cap: usize) -> SessionView<'_> {
        SessionView {
            resource: &self.resource,
            available: self.available,
            priority: self.priority,
            writable: self.conn.backlog() < cap,
        }
    }
}

/// Sends bytes to a client connection of this shard; whether the stream took them.
pub(super) fn send_to(conn: &Conn<C2sConnection>, parts: &[&[u8]]) -> bool {
    let mut st = conn.st.borrow_mut();
    if st.detached {
        // XEP-0198: kept by the core for the client's resumption, not written.
        if st
            .proto
            .send_stanza_parts(parts, crate::runtime::now())
            .is_err()
        {
            return false;
        }
        let mut discard = Vec::new();
        st.proto.poll_transmit(&mut discard);
        let unacked = st.proto.unacknowledged();
        drop(st);
        super::resumption::Resumption::took(conn, unacked);
        return true;
    }
    if st.closed {
        return false;
    }
    if st
        .proto
        .send_stanza_parts(parts, crate::runtime::now())
        .is_ok()
    {
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
        count_stanza(crate::runtime::StanzaDir::C2sOut, kind);
        st.pump();
        st.mark(crate::runtime::read_at());
        drop(st);
        conn.wake.notify_one();
        return true;
    }
    false
}

/// The C2S connections' behaviour; the connections are [`super::Local::conns`], the
/// bound sessions are in [`super::users::Users`].
pub(super) struct Sessions;

impl Sessions {
    /// A client connected to this shard's C2S listener.
    pub(super) fn accept(&self, shard: &Shard, stream: TcpStream, peer: std::net::SocketAddr) {
        let nonce = shard.rng.borrow_mut().random::<u64>();
        let proto = C2sConnection::new(
            Arc::clone(&shard.shared().c2s),
            nonce,
            false,
            Instant::now(),
        );
        let mut st = ConnState::new(proto, None);
        super::flood_guard::admit(shard, peer, &mut st);
        st.collect_events();
        let span = info_span!("c2s", %peer, jid = tracing::field::Empty);
        let conn = Rc::new(Conn::new(shard.next_conn_id(), stream, st, span));
        shard
            .local
            .conns
            .borrow_mut()
            .insert(conn.id, Rc::clone(&conn));
        shard.spawn_conn(conn);
    }

    /// Takes over a client connection whose user this shard owns.
    pub(super) fn adopt(&self, shard: &Shard, mut h: Handoff<C2sConnection>) {
        h.state.moved = true;
        let stream = TcpStream::from_std(std::net::TcpStream::from(h.fd));
        let jid = h
            .state
            .proto
            .authenticated_jid()
            .map(|j| j.as_str().to_owned())
            .unwrap_or_default();
        let span = info_span!("c2s", %jid, adopted = true);
        let conn = Rc::new(Conn::new(shard.next_conn_id(), stream, h.state, span));
        shard
            .local
            .conns
            .borrow_mut()
            .insert(conn.id, Rc::clone(&conn));
        shard.spawn_conn(conn);
    }

    fn on_events(
        &self,
        shard: &Shard,
        conn: &Rc<Conn<C2sConnection>>,
        may_hand_off: bool,
    ) -> After {
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
                // In a cluster with `c2s_sessions = "redirect"`, the user's sessions live
                // on the node that owns its bare JID: the client is sent there (RFC 6120
                // §4.9.3.19) when it restarts the stream (`Event::Opened`), not handed to
                // a shard here. With "stay", it moves to `shard_of(bare JID)` here, as
                // alone, and its session's state is on the owner ([`super::relay`]).
                if redirects(shard) && shard.owner_elsewhere(&bare_key(&jid)).is_some() {
                    self.event(shard, conn, ev);
                    continue;
                }
                let dst = shard_of(&bare_key(&jid), shard.n);
                let moved = conn.st.borrow().moved;
                if dst != shard.id && !moved {
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
            self.event(shard, conn, ev);
        }
    }

    fn event(&self, shard: &Shard, conn: &Rc<Conn<C2sConnection>>, ev: Event) {
        match ev {
            Event::Opened { .. } => {
                // The stream restarted after SASL by a user another cluster node owns.
                let bare = conn
                    .st
                    .borrow()
                    .proto
                    .authenticated_jid()
                    .map(|j| bare_key(j.as_str()).into_owned());
                if let Some(node) = bare
                    .filter(|_| redirects(shard))
                    .and_then(|b| shard.owner_elsewhere(&b))
                {
                    self.redirect(shard, conn, &node);
                }
            }
            Event::StartTls(_) => {
                let tls = rustls::ServerConnection::new(Arc::clone(&shard.shared().tls_c2s));
                let mut st = conn.st.borrow_mut();
                match tls {
                    Ok(t) => st.start_tls(Tls::Server(t)),
                    Err(e) => {
                        st.proto.handle_tls_failed(&e.to_string());
                        st.collect_events();
                    }
                }
            }
            Event::RegistrationRequested { jid, password } => {
                shard
                    .local
                    .account
                    .register(shard, conn.id, jid, password.expose());
            }
            Event::CredentialsNeeded { jid, mechanism } => {
                self.look_up_credentials(shard, conn.id, jid, mechanism, true);
            }
            Event::PasswordCheckNeeded {
                jid,
                username,
                password,
            } => shard
                .local
                .directory
                .submit(shard, conn.id, jid, username, password),
            Event::AuthFailed {
                username, failures, ..
            } => {
                crate::runtime::metrics(|m| {
                    m.count(
                        "auth",
                        &[("proto", "c2s"), ("method", "sasl"), ("result", "fail")],
                        1,
                    )
                });
                info!(parent: &conn.span, user = username.as_deref().unwrap_or(""), failures, "authentication failed");
                super::flood_guard::auth_failed(shard, conn);
            }
            Event::Authenticated { jid, mechanism } => {
                super::flood_guard::release(conn);
                conn.record_once("jid", jid.as_str());
                crate::runtime::metrics(|m| {
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
            Event::BindRequested { jid, requested } => {
                match shard.owner_elsewhere(&jid).filter(|_| !redirects(shard)) {
                    Some(home) => shard.local.relays.bind(shard, conn, &jid, requested, home),
                    None => self.bind(shard, conn, &jid, requested),
                }
            }
            Event::Bound { jid } if shard.local.relays.is_relayed(conn.id) => {
                debug!(parent: &conn.span, %jid, "bound at the account's home node");
            }
            Event::Bound { jid } => self.bound(shard, conn, &jid),
            Event::Stanza { kind, element } => {
                shard.local.client.client_sent(shard, conn, kind, element)
            }
            Event::ClientState(state) => {
                if !shard.local.relays.client_state(shard, conn.id, state) {
                    if let Some(bare) = super::relay::bare_of(conn) {
                        shard.local.client_state.set(shard, &bare, conn.id, state);
                    }
                }
            }
            Event::StreamManagementEnabled { resumption_id } => {
                crate::runtime::metrics(|m| m.count("c2s_sm_enabled", &[], 1));
                debug!(parent: &conn.span, resumable = resumption_id.is_some(), "stream management enabled");
            }
            Event::ResumeRequested { previd, .. } => {
                shard.local.resumption.resume(shard, conn, &previd)
            }
            Event::Resumed { jid } => {
                conn.record_once("jid", jid.as_str());
            }
            Event::Closed(reason) => {
                super::flood_guard::release(conn);
                debug!(parent: &conn.span, ?reason, "client stream closed");
                let was = std::mem::replace(&mut conn.st.borrow_mut().closed, true);
                if !was {
                    self.ended(shard, conn, &reason);
                }
                conn.st.borrow_mut().close_tls();
                conn.wake.notify_one();
            }
        }
    }

    fn look_up_credentials(
        &self,
        shard: &Shard,
        id: ConnId,
        jid: String,
        mechanism: Mechanism,
        first: bool,
    ) {
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
        shard.local.store.submit(
            shard,
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
                let sessions = &shard.local.sessions;
                // PLAIN checks against any stored hash: SHA-256 first, then SHA-1.
                if creds.is_none() && mechanism.hash().is_none() && first {
                    return sessions.look_up_credentials(shard, id, jid, mechanism, false);
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
                sessions.after_answer(shard, &conn);
            }),
        );
    }

    /// After the runtime answered a connection (credentials, a password verdict): its
    /// events, its bytes, a wake for its writer. The hand-off to the user's shard happens
    /// with the client's next bytes (see [`Sessions::on_events`]).
    pub(super) fn after_answer(&self, shard: &Shard, conn: &Rc<Conn<C2sConnection>>) {
        self.on_events(shard, conn, false);
        conn.st.borrow_mut().pump();
        conn.wake.notify_one();
    }

    /// RFC 6120 §7.6 on the user's shard: a generated resource when none is asked for, a
    /// conflicting one replaces the older session (§7.7.2.2, the server's choice): that
    /// stream is closed with `conflict`.
    fn bind(
        &self,
        shard: &Shard,
        conn: &Rc<Conn<C2sConnection>>,
        jid: &str,
        requested: Option<String>,
    ) {
        let result = self.resolve_bind(shard, jid, requested);
        {
            let mut st = conn.st.borrow_mut();
            let answer = result.as_deref().map_err(|e| *e);
            if let Err(e) = st.proto.handle_bind(answer, Instant::now()) {
                warn!(parent: &conn.span, error = %e, "bind answer refused");
            }
            st.collect_events();
        }
        if shard_of(&bare_key(jid), shard.n) != shard.id {
            warn!(parent: &conn.span, "session bound away from its user's shard");
        }
    }

    /// The full JID a bind request of account `jid` gets (RFC 6120 §7.6), for a client
    /// here or on another node: a generated resource when none is asked for; a
    /// conflicting one replaces the older session (§7.7.2.2, the server's choice), whose
    /// stream is closed with `conflict`. Errors: `resource-constraint` past
    /// `c2s.max_resources`.
    pub(super) fn resolve_bind(
        &self,
        shard: &Shard,
        jid: &str,
        requested: Option<String>,
    ) -> Result<String, BindError> {
        let resource = requested
            .unwrap_or_else(|| format!("fr{:016x}", shard.rng.borrow_mut().random::<u64>()));
        let full = format!("{jid}/{resource}");
        let mut old = None;
        let result = {
            let mut users = shard.local.users.borrow_mut();
            let user = users.entry(jid.to_owned()).or_default();
            if let Some(i) = user.sessions.iter().position(|s| s.resource == resource) {
                old = Some(user.sessions[i].conn.clone());
                Ok(())
            } else if user.sessions.len() >= shard.shared().config.c2s.max_resources {
                Err(BindError::ResourceConstraint)
            } else {
                Ok(())
            }
        };
        if let Some(old) = old {
            info!(parent: old.span(), %full, "resource conflict: replacing the older session");
            // Its unavailable presence goes out now; the stream closes with `conflict`.
            self.session_gone_id(shard, jid, old.id);
            old.close(StreamCondition::Conflict, "replaced by a new session");
        }
        result.map(|()| full)
    }

    fn bound(&self, shard: &Shard, conn: &Rc<Conn<C2sConnection>>, full: &str) {
        debug!(parent: &conn.span, %full, "bound");
        self.add_session(shard, full, Link::here(conn));
    }

    /// Adds the bound session `full` whose client is at `link`; its roster loads.
    pub(super) fn add_session(&self, shard: &Shard, full: &str, link: Link) {
        let bare = bare_key(full).into_owned();
        let resource = full[bare.len() + 1..].to_owned();
        {
            let mut users = shard.local.users.borrow_mut();
            let user = users.entry(bare.clone()).or_default();
            user.sessions.push(Session {
                conn: link,
                full: full.to_owned(),
                resource,
                available: false,
                priority: 0,
                presence: None,
                interested: false,
                directed: BTreeSet::new(),
                carbons: false,
                blocklist_requested: false,
                inactive: false,
                held: Held::default(),
                held_bytes: 0,
            });
        }
        shard.local.roster.ensure(shard, &bare);
    }

    fn ended(&self, shard: &Shard, conn: &Rc<Conn<C2sConnection>>, _reason: &CloseReason) {
        if shard.local.relays.ended(shard, conn) {
            return;
        }
        if shard.local.resumption.detach(shard, conn) {
            return;
        }
        self.session_gone(shard, conn);
        shard.local.resumption.redeliver_unacked(shard, conn);
    }

    /// A session ends (closed, dropped, or replaced): unavailable presence to whoever had
    /// its presence (RFC 6121 §4.5.2, also when the stream ends abruptly), then it is
    /// forgotten.
    pub(super) fn session_gone(&self, shard: &Shard, conn: &Rc<Conn<C2sConnection>>) {
        let Some(full) = conn
            .st
            .borrow()
            .proto
            .bound_jid()
            .map(|j| j.as_str().to_owned())
        else {
            return;
        };
        self.session_gone_id(shard, &bare_key(&full), conn.id);
    }

    /// Session `id` of `bare` (here or relayed) ends: [`Sessions::session_gone`].
    pub(super) fn session_gone_id(&self, shard: &Shard, bare: &str, id: ConnId) {
        let session = {
            let mut users = shard.local.users.borrow_mut();
            let Some(user) = users.get_mut(bare) else {
                return;
            };
            let Some(i) = user.sessions.iter().position(|s| s.conn.id == id) else {
                return;
            };
            user.sessions.remove(i)
        };
        if session.available {
            let mut out = Vec::with_capacity(64);
            out.extend_from_slice(b"<presence type='unavailable'");
            write_raw_attr("from", Some(&session.full), &mut out);
            out.extend_from_slice(b"/>");
            if let Ok(s) = SharedStanza::parse(&out) {
                shard
                    .local
                    .presence
                    .broadcast(shard, bare, s, session.directed, None);
            }
        }
        if shard.local.users.maybe_forget(bare) {
            shard.local.pep.forget(bare);
        }
    }

    /// A client's socket accepted no byte for `c2s.write_stall_timeout` (the writer closed
    /// the stream): the session ends as if the client had left (unavailable presence to
    /// its contacts), then the messages and IQs it never received are handled as for an
    /// unavailable resource (RFC 6121 §8.5): delivered to the user's other resources, or
    /// answered with `service-unavailable`. A message to the bare JID that the user's
    /// other available resources already received is not delivered twice.
    pub(super) fn write_stalled(&self, shard: &Shard, conn: &Rc<Conn<C2sConnection>>) {
        let timeout = shard.shared().config.c2s.write_stall_timeout;
        let cap = shard.shared().config.c2s.send_queue_bytes;
        let (jid, pending, unsent) = {
            let mut st = conn.st.borrow_mut();
            let pending = st.backlog();
            let jid = st.proto.bound_jid().map(|j| j.as_str().to_owned());
            (jid, pending, st.take_unsent())
        };
        crate::runtime::metrics(|m| m.count("stalled_streams_closed", &[("proto", "c2s")], 1));
        warn!(
            parent: &conn.span,
            jid = jid.as_deref().unwrap_or("-"),
            unsent = unsent.len(),
            pending_bytes = pending,
            timeout = %humantime::format_duration(timeout),
            "client stopped reading: stream closed by c2s.write_stall_timeout; what waited for it is handled as for an unavailable resource"
        );
        let relayed = shard.local.relays.is_relayed(conn.id);
        self.ended(shard, conn, &CloseReason::Local);
        for q in unsent {
            if relayed {
                // To its home node, which knows the user's other resources.
                if let Queued::Whole(el, _) = q {
                    shard.route(el);
                }
                continue;
            }
            let Queued::Whole(el, _) = q else { continue };
            let Some(to) = el.to() else { continue };
            let bare = bare_key(to);
            let resource = to.find('/').map(|i| &to[i + 1..]);
            let again = StanzaKind::of(&el).is_none_or(|kind| {
                let users = shard.local.users.borrow();
                let sessions = users
                    .get(bare.as_ref())
                    .map_or(&[][..], |u| &u.sessions[..]);
                let views: Vec<SessionView> = sessions.iter().map(|s| s.view(cap)).collect();
                delivery::redeliver_after_stall(kind, resource, &views)
            });
            if again {
                shard.local.deliver_to_user(shard, el);
            }
        }
    }

    /// Closes every client stream (shutdown): unavailable presence goes out as each ends.
    /// Closes `conn` with `<see-other-host/>` naming cluster node `node`'s client
    /// address (RFC 6120 §4.9.3.19).
    pub(super) fn redirect(&self, shard: &Shard, conn: &Rc<Conn<C2sConnection>>, node: &str) {
        let Some(addr) = shard
            .cluster
            .as_ref()
            .and_then(|c| c.view().c2s.get(node).cloned())
        else {
            return;
        };
        info!(parent: &conn.span, %node, %addr, "the user's bare JID is owned by another cluster node: see-other-host");
        crate::runtime::metrics(|m| m.count("c2s_redirects", &[], 1));
        let mut st = conn.st.borrow_mut();
        st.proto.redirect(&addr, Instant::now());
        st.collect_events();
        st.pump();
        drop(st);
        conn.wake.notify_one();
    }

    /// The cluster's live set changed: sessions of users another node owns now are sent
    /// there (their state is in the shared store; the new owner loads it).
    pub(super) fn cluster_view_changed(&self, shard: &Shard, view: &crate::cluster::View) {
        if redirects(shard) {
            self.redirect_authenticated(shard, false);
        } else {
            shard.local.relays.view_changed(shard, view);
        }
    }

    /// Sends every authenticated client back to its owner (this node, or the node that
    /// owns it now): its session starts over from the store.
    pub(super) fn fence(&self, shard: &Shard) {
        if redirects(shard) {
            self.redirect_authenticated(shard, true);
        } else {
            shard.local.relays.fence(shard);
        }
    }

    /// Redirects each authenticated client whose bare JID another node owns to that node;
    /// with `all`, the others too, to this node.
    fn redirect_authenticated(&self, shard: &Shard, all: bool) {
        let Some(me) = shard.cluster.as_ref().map(|c| Arc::clone(&c.node)) else {
            return;
        };
        let conns: Vec<Rc<Conn<C2sConnection>>> =
            shard.local.conns.borrow().values().cloned().collect();
        for c in conns {
            let Some(bare) =
                c.st.borrow()
                    .proto
                    .authenticated_jid()
                    .map(|j| bare_key(j.as_str()).into_owned())
            else {
                continue;
            };
            match shard.owner_elsewhere(&bare) {
                Some(node) => self.redirect(shard, &c, &node),
                None if all => self.redirect(shard, &c, &me),
                None => {}
            }
        }
    }

    pub(super) fn close_clients(&self, shard: &Shard, now: Instant) {
        shard.local.resumption.expire_all(shard);
        let conns: Vec<Rc<Conn<C2sConnection>>> =
            shard.local.conns.borrow().values().cloned().collect();
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

/// Whether clients of users another node owns are sent there (`cluster.c2s_sessions =
/// "redirect"`) rather than relayed.
fn redirects(shard: &Shard) -> bool {
    shard
        .shared()
        .config
        .cluster
        .as_ref()
        .is_some_and(|c| c.c2s_sessions == crate::config::C2sSessions::Redirect)
}

impl Driven for C2sConnection {
    const PROTO: &'static str = "c2s";
    fn on_events(shard: &Shard, conn: &Rc<Conn<Self>>, may_hand_off: bool) -> After {
        shard.local.sessions.on_events(shard, conn, may_hand_off)
    }
    fn ended(shard: &Shard, conn: &Rc<Conn<Self>>, reason: &CloseReason) {
        shard.local.sessions.ended(shard, conn, reason)
    }
    fn write_stall_timeout(shard: &Shard) -> std::time::Duration {
        shard.shared().config.c2s.write_stall_timeout
    }
    fn write_stalled(shard: &Shard, conn: &Rc<Conn<Self>>) {
        shard.local.c2s_write_stalled(shard, conn)
    }
    fn conns(shard: &Shard) -> &RefCell<HashMap<ConnId, Rc<Conn<Self>>>> {
        &shard.local.conns
    }
    fn adopt_msg(h: Handoff<Self>) -> ShardMsg {
        ShardMsg::AdoptC2s(Box::new(h))
    }
}
