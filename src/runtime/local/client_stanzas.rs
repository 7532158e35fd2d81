//! Stanzas a bound session sends ([`ClientStanzas`]): stamped with the session's full
//! JID (RFC 6120 §8.1.2.1), a malformed `to` refused (§8.3.3.8), then, in the user's
//! order, dispatched: an `iq` to the account is answered on its behalf (§10.3.3: the
//! roster, RFC 6121 §2; ping; XEP-0030 disco; XEP-0280 carbons; XEP-0191 blocking;
//! XEP-0077 password change, also when addressed to the server), a stanza to an entity
//! the user blocked is refused (XEP-0191 §3.3), a subscription stanza goes to the
//! subscription logic (RFC 6121 §3), presence without `to` to the presence logic
//! (§4.2–§4.5), directed presence is remembered (§4.6), and the rest is routed (a
//! message without `to` to the account's bare JID, RFC 6120 §10.3.1), messages copied
//! to the user's other resources that enabled carbons (XEP-0280 §6.3).

use std::rc::Rc;

use tracing::warn;

use super::link::{reply_to_client, send_to, Link};
use super::users::Deferred;
use crate::blocking::{self, NS_BLOCKING};
use crate::carbons::{read_toggle, NS_CARBONS};
use crate::condition::StanzaCondition;
use crate::jid::domain_of;
use crate::jid::Jid;
use crate::presence::client::{self, ClientPresence};
use crate::presence::ROSTER_NS;
use crate::register::{self, NS_REGISTER};
use crate::router::bare_key;
use crate::runtime::conn::{Conn, ConnId};
use crate::runtime::count_stanza;
use crate::runtime::shard::Shard;
use crate::service::{answer_account, read_iq, Iq, NS_PING};
use crate::stanza::{error_reply, StanzaKind};
use crate::stream::c2s::C2sConnection;
use crate::xml::writer::{write_raw_attr, write_readdressed};
use crate::xml::{parse_stanza, Element};

/// A request about the user's own account, read by the protocol core.
enum OwnRequest {
    /// XEP-0191.
    Blocking(blocking::Request),
    /// XEP-0077.
    Register(register::Request),
}

/// The handling of what clients send; the sessions are in [`super::users::User`].
pub(super) struct ClientStanzas;

impl ClientStanzas {
    /// A stanza from a client's stream: stamped, checked, handled in the user's order.
    /// A client of a user another node owns: the stamped stanza goes to that node
    /// ([`super::relay`]).
    pub(super) fn client_sent(
        &self,
        shard: &Shard,
        conn: &Rc<Conn<C2sConnection>>,
        kind: StanzaKind,
        el: Element,
    ) {
        count_stanza(crate::runtime::StanzaDir::C2sIn, kind.as_str());
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
                return reply_to_client(
                    &Link::here(conn),
                    &stamped,
                    StanzaCondition::JidMalformed,
                    "the 'to' address is not a valid JID",
                );
            }
        }
        if shard.local.relays.client_stanza(shard, conn.id, &stamped) {
            return;
        }
        self.client_stanza(shard, conn.id, kind, stamped);
    }

    fn session_conn(&self, shard: &Shard, bare: &str, id: ConnId) -> Option<Link> {
        shard
            .local
            .users
            .borrow()
            .get(bare)
            .and_then(|u| u.sessions.iter().find(|s| s.conn.id == id))
            .map(|s| s.conn.clone())
    }

    /// A stamped stanza from session `id` (on the user's shard): handled now, or queued
    /// behind the user's earlier stanzas.
    pub(super) fn client_stanza(&self, shard: &Shard, id: ConnId, kind: StanzaKind, el: Element) {
        let Some(from) = el.from() else { return };
        let bare = bare_key(from).into_owned();
        if let Some(Deferred::FromClient(id, el)) =
            shard
                .local
                .users
                .admit(shard, &bare, Deferred::FromClient(id, el))
        {
            self.client_stanza_now(shard, id, kind, el);
        }
    }

    /// A stamped stanza from session `id`, its turn come: dispatched to the account
    /// (RFC 6120 §10.3), to subscriptions (RFC 6121 §3), to presence (§4) or routed.
    pub(super) fn client_stanza_now(
        &self,
        shard: &Shard,
        id: ConnId,
        kind: StanzaKind,
        el: Element,
    ) {
        let Some(from) = el.from() else { return };
        let bare = bare_key(from).into_owned();
        let Some(conn) = self.session_conn(shard, &bare, id) else {
            return;
        };
        // The account itself: no `to`, or its bare JID (an iq to one of its full JIDs
        // is for that resource, RFC 6120 §10.3.3 vs. §10.5.4).
        let to_self = el
            .to()
            .is_none_or(|t| !t.contains('/') && bare_key(t) == bare);
        // Requests about the user's own account sent to its server (XEP-0077 §3.3
        // addresses the password change so; carbons and blocking requests have no `to`
        // but some clients name the server).
        let to_server = kind == StanzaKind::Iq
            && el.to() == Some(domain_of(&bare))
            && [NS_REGISTER, NS_CARBONS, NS_BLOCKING]
                .iter()
                .any(|ns| memchr::memmem::find(el.inner(), ns.as_bytes()).is_some());
        // To an entity the user blocked: refused (XEP-0191 §3.3).
        if !to_self
            && shard
                .local
                .blocking
                .blocks_outbound(shard, &conn, &bare, &el)
        {
            return;
        }
        match kind {
            StanzaKind::Iq if to_self || to_server => self.account_iq(shard, &conn, &bare, el),
            StanzaKind::Presence => match client::classify(el.type_(), el.to().is_some()) {
                ClientPresence::Ignore => {} // the server probes, not clients (§4.3)
                ClientPresence::Subscription(t) => {
                    shard
                        .local
                        .subscriptions
                        .outbound(shard, &conn, &bare, t, el);
                }
                ClientPresence::Broadcast => {
                    shard.local.presence.own_presence(shard, &conn, &bare, el);
                }
                ClientPresence::Directed { unavailable } => {
                    // Directed presence (§4.6): remembered, to be told of unavailability.
                    let to = el.to().unwrap_or_default().to_owned();
                    if let Some(u) = shard.local.users.borrow_mut().get_mut(&bare) {
                        if let Some(s) = u.sessions.iter_mut().find(|s| s.conn.id == id) {
                            if unavailable {
                                s.directed.remove(&to);
                            } else {
                                s.directed.insert(to);
                            }
                        }
                    }
                    shard.route(el);
                }
                ClientPresence::Route => shard.route(el),
            },
            _ => {
                // A message to no one is for the account's bare JID (RFC 6120 §10.3.1).
                if el.to().is_none() {
                    let mut out = Vec::with_capacity(el.bytes().len() + 32 + bare.len());
                    write_readdressed(&el, Some(&bare), None, &mut out);
                    return shard.route_generated(&out);
                }
                if kind == StanzaKind::Message {
                    // Copies to the user's other resources (XEP-0280 §6.3).
                    shard.local.carbons.sent(shard, &bare, &el, id);
                }
                shard.route(el)
            }
        }
    }

    /// An `iq` a client addressed to its own account (no `to`, or its bare JID): the
    /// server answers on the account's behalf (RFC 6120 §10.3.3): the roster and pings
    /// here, the rest ([`answer_account`]: XEP-0030 disco, `bad-request` for an `iq`
    /// without exactly one payload, `service-unavailable`) from the protocol core.
    fn account_iq(&self, shard: &Shard, conn: &Link, bare: &str, el: Element) {
        match read_iq(&el) {
            Iq::Response => {} // results of roster pushes, errors
            Iq::Get(query) | Iq::Set(query)
                if (query.name.as_str(), query.ns.as_str()) == ("query", ROSTER_NS) =>
            {
                if el.type_() == Some("get") {
                    shard.local.roster.get(shard, conn, bare, &el, &query);
                } else {
                    shard.local.roster.set(shard, conn, bare, el, &query);
                }
            }
            // PEP (XEP-0163): the account's own nodes.
            Iq::Get(p) | Iq::Set(p) if crate::pep::is_pubsub(&p.name, &p.ns) => {
                shard.local.pep.owner_iq(shard, conn, bare, el, &p);
            }
            Iq::Set(ref p) if p.ns == NS_CARBONS => match read_toggle(p) {
                Some(toggle) => shard.local.carbons.toggle(shard, conn, bare, &el, toggle),
                None => {
                    if let Some(reply) = answer_account(&el, true) {
                        send_to(conn, &[reply.bytes()]);
                    }
                }
            },
            Iq::Get(ref p) | Iq::Set(ref p) if p.ns == NS_BLOCKING || p.ns == NS_REGISTER => {
                let is_get = el.type_() == Some("get");
                let localpart = bare.split('@').next().unwrap_or_default();
                let answer = if p.ns == NS_BLOCKING {
                    blocking::read_request(is_get, p).map(|r| r.map(OwnRequest::Blocking))
                } else {
                    register::read_request(is_get, p, localpart)
                        .map(|r| r.map(OwnRequest::Register))
                };
                match answer {
                    Some(Ok(OwnRequest::Blocking(r))) => {
                        shard.local.blocking.request(shard, conn, bare, el, r)
                    }
                    Some(Ok(OwnRequest::Register(r))) => {
                        shard.local.account.request(shard, conn, bare, el, r)
                    }
                    Some(Err(c)) => {
                        send_to(conn, &[error_reply(&el, c, None, None).bytes()]);
                    }
                    None => {
                        if let Some(reply) = answer_account(&el, true) {
                            send_to(conn, &[reply.bytes()]);
                        }
                    }
                };
            }
            Iq::Get(p) if (p.name.as_str(), p.ns.as_str()) == ("ping", NS_PING) => {
                let mut out = Vec::with_capacity(96);
                out.extend_from_slice(b"<iq type='result'");
                write_raw_attr("to", el.from(), &mut out);
                write_raw_attr("id", el.id(), &mut out);
                out.extend_from_slice(b"/>");
                send_to(conn, &[&out]);
            }
            _ => {
                if let Some(reply) = answer_account(&el, true) {
                    send_to(conn, &[reply.bytes()]);
                }
            }
        }
    }
}
