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
//!
//! [`Local`] is what the shard sees; each part is one type in one file, and gets the
//! shard as an explicit context argument (`fn f(&self, shard: &Shard, …)`), reaching the
//! other parts through `shard.local`:
//!
//! | file | type | holds |
//! |---|---|---|
//! | `store_link.rs` | [`StoreLink`] | store requests, their backlog and answers |
//! | `users.rs` | [`Users`] | per user: sessions, roster, stanzas waiting (in order) |
//! | `sessions.rs` | [`Sessions`] | C2S connections: TLS, SASL, bind, end, write stall |
//! | `client_stanzas.rs` | [`ClientStanzas`] | what a bound session sends: stamped, dispatched |
//! | `roster.rs` | [`Rosters`] | the roster cache, get/set/push (RFC 6121 §2) |
//! | `subscriptions.rs` | [`Subscriptions`] | subscription stanzas both ways (§3) |
//! | `presence.rs` | [`Presence`] | broadcast, fan-out, probes (§4) |
//! | `delivery.rs` | [`Delivery`] | stanzas to users, per the §8.5 rules |
//! | `pep.rs` | [`Pep`] | PEP nodes, notifications, contacts' caps (XEP-0163) |
//! | `carbons.rs` | [`Carbons`] | message carbons (XEP-0280) |
//! | `blocking.rs` | [`Blocking`] | block lists (XEP-0191): requests, enforcement |
//! | `client_state.rs` | [`ClientStates`] | client state indication (XEP-0352) |
//! | `account.rs` | [`Account`] | the user's own registration: password change (XEP-0077) |
//! | `resumption.rs` | [`Resumption`] | stream management (XEP-0198): detached sessions, resumption, unacknowledged stanzas |
//! | `offline.rs` | [`Offline`] | offline messages stored and delivered (XEP-0160) |
//! | `flood_limits.rs` | functions | subscription request limits per remote domain and per user |
//! | `flood_guard.rs` | functions | client address limits: unauthenticated connections, SASL failures |
//!
//! Of the shard they use: `route`, `route_generated`, `bounce`, `send_to`,
//! `send_remote`, `spawn_conn`, `shared`, `next_conn_id`, `congest`, `decongest` and
//! the fields `rng`, `id`, `n`.

mod account;
mod blocking;
mod carbons;
mod client_stanzas;
mod client_state;
mod delivery;
mod directory_link;
mod flood_guard;
mod flood_limits;
mod link;
mod offline;
mod pep;
mod presence;
mod relay;
mod resumption;
mod roster;
mod sessions;
mod store_link;
mod subscriptions;
mod users;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Notify;
use tokio_uring::net::TcpStream;

use super::conn::{Conn, ConnId, Handoff};
use super::shard::Shard;
use crate::router::fanout::SharedStanza;
use crate::service::Answer;
use crate::stream::c2s::C2sConnection;
use crate::xml::Element;
use account::Account;
use blocking::Blocking;
use carbons::Carbons;
use client_stanzas::ClientStanzas;
use client_state::ClientStates;
use delivery::Delivery;
use directory_link::DirectoryLink;
use offline::Offline;
use pep::Pep;
use presence::Presence;
use relay::Relays;
use resumption::Resumption;
use roster::Rosters;
use sessions::Sessions;
use store_link::StoreLink;
use subscriptions::Subscriptions;
use users::Users;

/// The shard's local-user state.
pub(super) struct Local {
    /// C2S connections on this shard (negotiating here, or bound users this shard owns).
    pub conns: RefCell<HashMap<ConnId, Rc<Conn<C2sConnection>>>>,
    /// Fired by the storage thread, and by the directory thread, when a reply is waiting.
    pub store_wake: Arc<Notify>,
    store: StoreLink,
    directory: DirectoryLink,
    users: Users,
    sessions: Sessions,
    client: ClientStanzas,
    roster: Rosters,
    subscriptions: Subscriptions,
    presence: Presence,
    delivery: Delivery,
    pep: Pep,
    carbons: Carbons,
    blocking: Blocking,
    client_state: ClientStates,
    account: Account,
    resumption: Resumption,
    offline: Offline,
    relays: Relays,
}

/// What the server says about itself (XEP-0092): this binary's name and version, no
/// operating system.
pub(super) static SOFTWARE: std::sync::LazyLock<crate::service::Software> =
    std::sync::LazyLock::new(|| crate::service::Software {
        name: "fedrouter".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        os: None,
    });

impl Local {
    pub(super) fn new() -> Local {
        let store_wake = Arc::new(Notify::new());
        Local {
            conns: RefCell::new(HashMap::new()),
            store: StoreLink::new(Arc::clone(&store_wake)),
            directory: DirectoryLink::new(Arc::clone(&store_wake)),
            store_wake,
            users: Users::new(),
            sessions: Sessions,
            client: ClientStanzas,
            roster: Rosters,
            subscriptions: Subscriptions,
            presence: Presence,
            delivery: Delivery::new(),
            pep: Pep::new(),
            carbons: Carbons,
            blocking: Blocking,
            client_state: ClientStates,
            account: Account,
            resumption: Resumption::default(),
            offline: Offline,
            relays: Relays::default(),
        }
    }

    /// Runs the continuations of the store's answers (main loop, on [`Local::store_wake`]):
    /// [`StoreLink::replies`].
    pub(super) fn store_replies(&self, shard: &Shard) {
        self.store.replies(shard);
        self.directory.replies(shard);
    }

    /// A client connected to this shard's C2S listener: [`Sessions::accept`].
    pub(super) fn accept_c2s(&self, shard: &Shard, stream: TcpStream, peer: std::net::SocketAddr) {
        self.sessions.accept(shard, stream, peer);
    }

    /// Takes over a client connection whose user this shard owns: [`Sessions::adopt`].
    pub(super) fn adopt_c2s(&self, shard: &Shard, h: Handoff<C2sConnection>) {
        self.sessions.adopt(shard, h);
    }

    /// Sends `stanza` to each recipient, one message per destination shard:
    /// [`Presence::fan_out`].
    pub(super) fn fan_out<'a>(
        &self,
        shard: &Shard,
        stanza: SharedStanza,
        recipients: impl IntoIterator<Item = &'a str>,
    ) {
        self.presence.fan_out(shard, stanza, recipients);
    }

    /// This shard's share of a fan-out: [`Presence::fanned_out`].
    pub(super) fn fanned_out(&self, shard: &Shard, stanza: &SharedStanza, to: Vec<Box<str>>) {
        self.presence.fanned_out(shard, stanza, to);
    }

    /// A stanza for a local user this shard owns, from anywhere:
    /// [`Delivery::deliver_to_user`].
    pub(super) fn deliver_to_user(&self, shard: &Shard, el: Element) {
        self.delivery.deliver_to_user(shard, el);
    }

    /// A stanza to a local address on this shard, the server itself or a user:
    /// [`Delivery::deliver_local_stanza`].
    pub(super) fn deliver_local_stanza(&self, shard: &Shard, el: Element) -> Option<Answer> {
        self.delivery.deliver_local_stanza(shard, el)
    }

    /// Sends stored, unanswered subscription requests again (at start; RFC 6121
    /// Appendix A.3.1): [`Subscriptions::resend`].
    pub(super) fn resend_subscriptions(&self, shard: &Shard, pairs: Vec<(String, String)>) {
        self.subscriptions.resend(shard, pairs);
    }

    /// Closes every client stream (shutdown), unavailable presence going out as each
    /// ends: [`Sessions::close_clients`].
    pub(super) fn close_clients(&self, shard: &Shard, now: Instant) {
        self.sessions.close_clients(shard, now);
    }

    /// This node was cut off from the cluster for longer than the failure timeout: every
    /// client session reconnects (see-other-host to this node) and reloads its state
    /// from the store ([`Sessions::fence`]).
    pub(super) fn cluster_fence(&self, shard: &Shard) {
        self.sessions.fence(shard);
    }

    /// A client session's message from another node ([`Relays::received`]).
    pub(super) fn cluster_session(&self, shard: &Shard, f: crate::cluster::wire::Forwarded) {
        self.relays.received(shard, f);
    }

    /// How many of this shard's client connections relay to another node (their
    /// sessions' home).
    pub(super) fn relayed_count(&self) -> usize {
        self.relays.count()
    }

    /// How many local users this shard holds state for (sessions, rosters loaded).
    pub(super) fn user_count(&self) -> usize {
        self.users.borrow().len()
    }

    /// The cluster's live set changed (`view`): sessions of users owned elsewhere now
    /// move there ([`Sessions::cluster_view_changed`]).
    pub(super) fn cluster_view_changed(&self, shard: &Shard, view: &crate::cluster::View) {
        self.sessions.cluster_view_changed(shard, view);
    }

    /// A client's socket accepted no byte for `c2s.write_stall_timeout`: the session
    /// ends, what it never received is delivered again (RFC 6121 §8.5):
    /// [`Sessions::write_stalled`].
    pub(super) fn c2s_write_stalled(&self, shard: &Shard, conn: &Rc<Conn<C2sConnection>>) {
        self.sessions.write_stalled(shard, conn);
    }
}
