//! Presence of local users (RFC 6121 §4) ([`Presence`]): presence without `to` from a
//! session (initial presence §4.2 with its probes and the stored offline messages of
//! XEP-0160, updates §4.4, unavailable §4.5), its
//! broadcast to the subscribers (`from`/`both`), to directed-presence recipients (§4.6)
//! and to the user's other resources, presence to a local user's available resources
//! (§4.2.3, §4.4.3), probes answered (§4.3.2), and the presence a subscription change
//! sends (§3.1.5, §3.2.2, §3.3.3).
//!
//! Presence broadcasts are serialised once without `to` ([`SharedStanza`]) and fanned out
//! with [`crate::router::fanout::plan`]: one message per destination shard, and one
//! queued reference per remote recipient.

use std::collections::BTreeSet;
use std::sync::Arc;

use tracing::debug;

use super::link::{send_to, Link};
use super::roster::RosterState;
use super::sessions::Session;
use super::users::Deferred;
use crate::cluster::wire::Kind;
use crate::jid::{domain_of, BareJid};
use crate::presence::delivery;
use crate::presence::Subscription;
use crate::router::fanout::{plan, write_to_attr, SharedStanza};
use crate::router::queue::Queued;
use crate::router::{bare_key, domain_key};
use crate::runtime::conn::ConnId;
use crate::runtime::msg::ShardMsg;
use crate::runtime::shard::Shard;
use crate::stanza::presence as presence_stanza;
use crate::xml::Element;

/// The presence behaviour; each session's presence is in [`Session`].
pub(super) struct Presence;

impl Presence {
    /// Available or unavailable presence without `to` from a session: initial presence
    /// (§4.2: broadcast, probes, pending requests), an update (§4.4) or unavailable
    /// (§4.5).
    pub(super) fn own_presence(&self, shard: &Shard, conn: &Link, bare: &str, el: Element) {
        let unavailable = el.type_() == Some("unavailable");
        let Ok(shared) = SharedStanza::new(el.clone()) else {
            return;
        };
        let mut initial = false;
        // The session starts taking bare-JID messages: stored offline messages go to it
        // (XEP-0160 §5).
        let mut offline = false;
        let mut directed = BTreeSet::new();
        let mut full = String::new();
        let mut pending: Vec<String> = Vec::new();
        let mut probes: Vec<String> = Vec::new();
        let mut others: Vec<SharedStanza> = Vec::new();
        {
            let mut users = shard.local.users.borrow_mut();
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
            full.clone_from(&s.full);
            if unavailable {
                if !s.available {
                    return;
                }
                s.available = false;
                s.presence = None;
                directed = std::mem::take(&mut s.directed);
            } else {
                initial = !s.available;
                let took = s.available && s.priority >= 0;
                s.available = true;
                s.priority = delivery::priority(&el);
                // Available with a non-negative priority now, and not before (XEP-0160 §5,
                // RFC 6121 §8.5.2.1.1).
                offline = !took && s.priority >= 0;
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
        self.broadcast(shard, bare, shared, directed, Some(conn.id));
        if initial {
            for contact in probes {
                shard.route(presence_stanza(bare, &contact, Some("probe")));
            }
            // The other resources' presence, and requests still waiting for an answer
            // (§3.1.3), to the new resource.
            let mut to_attr = Vec::new();
            write_to_attr(&full, &mut to_attr);
            for p in &others {
                send_to(conn, &p.parts(&to_attr));
            }
            for stanza in pending {
                send_to(conn, &[stanza.as_bytes()]);
            }
        }
        // After the presence broadcast (RFC 6121 §4.2) and what the new resource is told.
        if offline {
            shard.local.offline.deliver(shard, conn, bare);
        }
    }

    /// Fans `stanza` (presence from one of `bare`'s resources, no `to`) out to the
    /// contacts with a `from` or `both` subscription, to `extra` (directed presence
    /// recipients) and to the user's other available resources (not `except`).
    pub(super) fn broadcast(
        &self,
        shard: &Shard,
        bare: &str,
        stanza: SharedStanza,
        extra: BTreeSet<String>,
        except: Option<ConnId>,
    ) {
        let (mut recipients, own) = {
            let users = shard.local.users.borrow();
            let Some(user) = users.get(bare) else { return };
            let contacts = match &user.roster {
                RosterState::Loaded(r) => r.contacts(Subscription::has_from),
                _ => Vec::new(),
            };
            let own: Vec<(Link, String)> = user
                .sessions
                .iter()
                .filter(|s| s.available && Some(s.conn.id) != except)
                .map(|s| (s.conn.clone(), s.full.clone()))
                .collect();
            (contacts, own)
        };
        for (conn, full) in own {
            let mut attr = Vec::with_capacity(8 + full.len());
            write_to_attr(&full, &mut attr);
            // Held for a session that reported itself inactive (XEP-0352).
            shard.local.client_state.send_presence(
                shard,
                bare,
                &conn,
                stanza.from(),
                stanza.element().type_(),
                &stanza.parts(&attr),
            );
        }
        recipients.extend(extra);
        // Not to entities the user blocked (XEP-0191 §3.3).
        let blocking = &shard.local.blocking;
        recipients.retain(|r| !blocking.is_blocked(shard, bare, r));
        shard
            .local
            .fan_out(shard, stanza, recipients.iter().map(String::as_str));
    }

    /// Sends `stanza` to each recipient: grouped per destination shard (one message per
    /// shard) and, on each, per remote domain.
    pub(super) fn fan_out<'a>(
        &self,
        shard: &Shard,
        stanza: SharedStanza,
        recipients: impl IntoIterator<Item = &'a str>,
    ) {
        let s2s = Arc::clone(&shard.shared().s2s);
        // In a cluster, recipients another node owns get their copy through it.
        let mut here: Vec<&str> = Vec::new();
        for jid in recipients {
            if shard.cluster.is_none() {
                here.push(jid);
                continue;
            }
            let domain = domain_key(domain_of(jid));
            let (kind, key) = if s2s.hosts(&domain) {
                (Kind::Local, bare_key(jid).into_owned())
            } else {
                (Kind::Remote, domain.into_owned())
            };
            match shard.owner_elsewhere(&key) {
                None => here.push(jid),
                Some(node) => {
                    let mut to_attr = Vec::new();
                    write_to_attr(jid, &mut to_attr);
                    let bytes = stanza.parts(&to_attr).concat();
                    shard.forward_bytes(&node, kind, &key, 1, &bytes, || {
                        stanza
                            .to_element(jid)
                            .unwrap_or_else(|_| stanza.element().clone())
                    });
                }
            }
        }
        for (dst, to) in plan(here, shard.n, |d| s2s.hosts(d)) {
            if dst == shard.id {
                self.fanned_out(shard, &stanza, to);
            } else {
                shard.send_to(
                    dst,
                    ShardMsg::Fanout {
                        stanza: stanza.clone(),
                        to,
                        read_at: crate::runtime::read_at(),
                    },
                );
            }
        }
    }

    /// This shard's share of a fan-out.
    pub(super) fn fanned_out(&self, shard: &Shard, stanza: &SharedStanza, to: Vec<Box<str>>) {
        for jid in to {
            let domain = domain_key(domain_of(&jid));
            if shard.shared().s2s.hosts(&domain) {
                let bare = bare_key(&jid).into_owned();
                if let Some(Deferred::Broadcast(stanza, jid)) =
                    shard
                        .local
                        .users
                        .admit(shard, &bare, Deferred::Broadcast(stanza.clone(), jid))
                {
                    self.deliver_broadcast(shard, &stanza, &jid);
                }
            } else {
                shard.send_remote(Queued::Shared(
                    stanza.clone(),
                    jid,
                    crate::runtime::read_at(),
                ));
            }
        }
    }

    /// Presence to a local user: to its available resources (RFC 6121 §4.2.3, §4.4.3).
    pub(super) fn deliver_broadcast(&self, shard: &Shard, stanza: &SharedStanza, jid: &str) {
        let bare = bare_key(jid);
        // Not from an entity the user blocked (XEP-0191 §3.3).
        if let Some(from) = stanza.from() {
            if shard.local.blocking.is_blocked(shard, &bare, from) {
                return;
            }
        }
        // PEP (XEP-0163 §4.3.4): the contact's resource and its caps.
        shard
            .local
            .pep
            .contact_presence(shard, &bare, stanza.element());
        let mut attr = Vec::with_capacity(8 + jid.len());
        write_to_attr(jid, &mut attr);
        let targets =
            shard
                .local
                .delivery
                .writable_sessions(shard, bare.as_ref(), |s: &Session| s.available);
        for c in targets {
            // Held for a session that reported itself inactive (XEP-0352).
            shard.local.client_state.send_presence(
                shard,
                &bare,
                &c,
                stanza.from(),
                stanza.element().type_(),
                &stanza.parts(&attr),
            );
        }
    }

    /// Each available resource's last presence to `contact` (RFC 6121 §3.1.5, §4.3.2).
    pub(super) fn send_current_presence(&self, shard: &Shard, bare: &str, contact: &str) -> bool {
        let presences: Vec<SharedStanza> = shard
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
            shard.local.fan_out(shard, p, [contact]);
        }
        any
    }

    /// Unavailable presence from each available resource to `contact` (§3.2.2, §3.3.3).
    pub(super) fn send_unavailable(&self, shard: &Shard, bare: &str, contact: &str) {
        let fulls: Vec<String> = shard
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
            shard.route(presence_stanza(&full, contact, Some("unavailable")));
        }
    }

    /// A probe for `bare` (RFC 6121 §4.3.2): the last presence of each available resource
    /// to a subscriber (or unavailable from the bare JID when none is available); nothing
    /// to anyone else.
    pub(super) fn answer_probe(&self, shard: &Shard, bare: &str, el: &Element) {
        let Some(contact) = el
            .from()
            .and_then(|f| BareJid::new(bare_key(f).as_ref()).ok())
            .map(|j| j.as_str().to_owned())
        else {
            return;
        };
        let subscribed = shard
            .local
            .roster
            .with_roster(shard, bare, |r| r.state(&contact).subscription.has_from())
            .unwrap_or(false);
        if !subscribed {
            debug!(user = bare, %contact, "probe from a non-subscriber ignored");
            return;
        }
        if !self.send_current_presence(shard, bare, &contact) {
            shard.route(presence_stanza(bare, &contact, Some("unavailable")));
        }
    }
}
