//! One shard: a thread pinned to a core, running its own tokio-uring runtime, owning a
//! subset of remote domains and local bare JIDs (DESIGN.md "Ownership").
//!
//! Everything here is single-threaded: state lives in `RefCell`s that are never
//! borrowed across an `.await`. Other shards are reached only through the inbox mesh
//! ([`crate::router::inbox`]); the admin thread through a small control channel.
//!
//! The shard is the run loop and the routing decision; its parts each hold one thing and
//! get the shard as their context:
//!
//! - [`Outbox`] (`outbox.rs`): messages for other shards, and back-pressure;
//! - [`S2sStreams`] (`s2s.rs`): S2S streams and their events;
//! - [`Remotes`] (`remote.rs`): the remote domains owned here, their queues and
//!   backoff (opening a stream is `connect.rs`);
//! - [`Local`] (`local/`): local users, their sessions, rosters and presence;
//! - `io.rs`: the accept, read and write loops every stream runs.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::sync::Notify;
use tokio_uring::net::TcpListener;
use tracing::{debug, info, warn};

use super::conn::{Conn, ConnId};
use super::drain::DrainBarrier;
use super::idle::IdleSpin;
use super::io::{accept_loop, ListenerKind};
use super::local::Local;
use super::msg::{Dst, ShardMsg};
use super::outbox::Outbox;
use super::remote::Remotes;
use super::s2s::S2sStreams;
use super::{Control, PingOutcome, Shared};
use crate::cluster::nats::Inbound;
use crate::cluster::{wire, Cluster, Owner, MAX_HOPS};
use crate::condition::StanzaCondition;
use crate::dns::{DnsConfig, S2sResolver};
use crate::jid::domain_of;
use crate::metrics::Latency;
use crate::router::inbox::ShardInbox;
use crate::router::queue::{Failure, Queued};
use crate::router::{bare_key, domain_key, shard_of};
use crate::service::{ping, Answer};
use crate::stanza::{error_reply, is_error, StanzaKind};
use crate::stream::c2s::C2sConnection;
use crate::xml::{parse_stanza, Element};

/// How long a shard waits, after its streams are shut, for them to end; and, in phase 2
/// of the shutdown drain, for the other shards beyond `shutdown.drain_timeout`.
const SETTLE: Duration = Duration::from_millis(500);

/// A ping the server sent for the admin endpoint.
struct PendingPing {
    sent: Instant,
    reply: crossbeam_channel::Sender<PingOutcome>,
}

/// One shard's state.
pub(crate) struct Shard {
    pub id: usize,
    pub n: usize,
    /// The configuration and what is built from it; replaced on reload (SIGHUP), while
    /// streams keep what they started with.
    shared: RefCell<Arc<Shared>>,
    /// Messages for other shards produced this turn, moved into the inbox mesh by the
    /// main loop at the end of the turn; and the shard-wide pause.
    pub(super) outbox: Outbox<ShardMsg>,
    control: crossbeam_channel::Receiver<Control>,
    control_wake: Arc<Notify>,
    /// The S2S resolver (`[dns]`); replaced on a reload that changes `[dns]`, while
    /// look-ups in flight keep the one they started with (see [`Shard::resolver`]).
    resolver: RefCell<Rc<S2sResolver>>,
    /// The two-phase shutdown drain shared by every shard (`drain.rs`): counts the
    /// cross-shard messages sent and handled here.
    drain: Arc<DrainBarrier>,
    /// S2S streams (`s2s.rs`).
    pub(super) s2s: S2sStreams,
    /// Remote domains owned here (`remote.rs`).
    pub(super) remotes: Remotes,
    pings: RefCell<HashMap<String, PendingPing>>,
    next_id: Cell<u64>,
    pub(super) rng: RefCell<SmallRng>,
    /// Local users, their sessions and rosters (`local/`).
    pub(super) local: Local,
    pub(super) shutting_down: Cell<bool>,
    listeners: RefCell<Vec<Rc<TcpListener>>>,
    /// Signalled whenever a connection ends (shutdown waits on it).
    pub(super) conn_ended: Notify,
    /// The shard's span (`shard{id=N}`): the parent of every stream span this shard
    /// creates, whichever stream's task creates it.
    pub(super) span: tracing::Span,
    /// The cluster (`[cluster]`), if this node is in one: who owns what across nodes.
    pub(super) cluster: Option<Arc<Cluster>>,
}

impl Shard {
    pub(crate) fn new(
        id: usize,
        shared: Arc<Shared>,
        control: crossbeam_channel::Receiver<Control>,
        control_wake: Arc<Notify>,
        resolver: S2sResolver,
        drain: Arc<DrainBarrier>,
        span: tracing::Span,
    ) -> Self {
        Shard {
            id,
            n: shared.shards,
            cluster: shared.cluster.clone(),
            outbox: Outbox::new(shared.config.inbox.batch.max(16)),
            shared: RefCell::new(shared),
            control,
            control_wake,
            resolver: RefCell::new(Rc::new(resolver)),
            drain,
            s2s: S2sStreams::default(),
            remotes: Remotes::default(),
            pings: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
            rng: RefCell::new(SmallRng::from_os_rng()),
            local: Local::new(),
            shutting_down: Cell::new(false),
            listeners: RefCell::new(Vec::new()),
            conn_ended: Notify::new(),
            span,
        }
    }

    /// The current configuration. Never held across an `.await` (a reload replaces it):
    /// async code clones the `Arc`.
    pub(super) fn shared(&self) -> std::cell::Ref<'_, Arc<Shared>> {
        self.shared.borrow()
    }

    /// The S2S resolver for a new look-up (RFC 6120 §3.2). Held across `.await`s by the
    /// connecting task, so a reload does not change resolvers under a look-up.
    pub(super) fn resolver(&self) -> Rc<S2sResolver> {
        Rc::clone(&self.resolver.borrow())
    }

    /// Switches to a reloaded configuration (certificates, federation policy): new
    /// streams use it, open ones keep theirs. With `dns` (the `[dns]` section changed),
    /// look-ups from now on use a new resolver built from it (a fresh cache); when it
    /// cannot be built (checked by [`super::Server::reload`] beforehand) the old one stays
    /// and a WARN says so.
    fn reload(&self, shared: Arc<Shared>, dns: Option<DnsConfig>) {
        *self.shared.borrow_mut() = shared;
        if let Some(dns) = dns {
            match S2sResolver::new(&dns) {
                Ok(r) => *self.resolver.borrow_mut() = Rc::new(r),
                Err(e) => {
                    warn!(shard = self.id, error = %e, "DNS resolver not rebuilt; keeping the running one")
                }
            }
        }
        info!(shard = self.id, "configuration reloaded");
    }

    /// A connection id unique in the process: the shard in the top 16 bits.
    pub(super) fn next_conn_id(&self) -> ConnId {
        let n = self.next_id.get();
        self.next_id.set(n + 1);
        ((self.id as u64) << 48) | n
    }

    /// The `Rc` of this shard (stored in a thread-local by the runtime).
    pub(super) fn rc(&self) -> Rc<Shard> {
        CURRENT.with(|c| c.borrow().clone().expect("shard context"))
    }

    /// Sends `msg` to shard `dst` (batched until the end of the turn).
    pub(super) fn send_to(&self, dst: usize, msg: ShardMsg) {
        self.drain.sent(self.id, 1);
        self.outbox.push(dst, msg);
    }

    /// Counts one more reason to pause reads and inbox drains (the store's backlog).
    pub(super) fn congest(&self) {
        self.outbox.pause();
    }

    /// One reason to pause is gone.
    pub(super) fn decongest(&self) {
        self.outbox.resume();
    }

    /// Starts the read loop and the writer of a new stream on this shard.
    pub(super) fn spawn_conn<P: super::io::Driven>(&self, conn: Rc<Conn<P>>) {
        super::io::spawn_conn(self, conn);
    }

    /// Sends a stanza to the remote domain of its `to`, owned by this shard
    /// ([`Remotes::send_remote`]).
    pub(super) fn send_remote(&self, q: Queued) {
        self.remotes.send_remote(self, q);
    }

    /// Runs the shard until shutdown: listeners, inbox, control.
    pub(crate) async fn run(
        self: Rc<Self>,
        mut inbox: ShardInbox<ShardMsg>,
        listeners: Vec<(ListenerKind, std::net::TcpListener)>,
        health: &super::health::Health,
    ) {
        for (kind, l) in listeners {
            let l = Rc::new(TcpListener::from_std(l));
            self.listeners.borrow_mut().push(Rc::clone(&l));
            tokio_uring::spawn(accept_loop(Rc::clone(&self), kind, l));
        }
        let mut batch: Vec<ShardMsg> = Vec::new();
        let mut busy = false;
        let mut idle = IdleSpin::new();
        // Bounded: one iteration per wake-up; ends on shutdown.
        loop {
            if busy {
                // After a turn with cross-shard traffic, poll the inbox (yielding to the
                // sockets) for as long as the measured idle gaps say pays, then sleep: a
                // wake-up from another thread costs 5-10 us at p50 on this VM, which alone
                // breaks the p99 < 20 us hand-off target at 1M stanzas/s, while spinning
                // at low rates is most of a shard's CPU (idle.rs, benches/inbox.rs).
                let now = Instant::now();
                let until = now + idle.went_idle(now);
                while Instant::now() < until
                    && !inbox.has_waiting()
                    && !self.outbox.flush_scheduled()
                {
                    tokio::task::yield_now().await;
                }
            }
            let blocked = self.outbox.is_blocked();
            tokio::select! {
                _ = inbox.wait(), if self.outbox.can_take_work() => {}
                _ = self.local.store_wake.notified() => {}
                _ = self.control_wake.notified() => {}
                _ = self.outbox.flush_wanted() => {}
                _ = inbox.wait_space(), if blocked => {}
            }
            // The heartbeat `/health` reports (liveness itself is judged by answering
            // `Control::Health`: an idle shard sleeps in the `select!` above).
            health.turn(self.id);
            self.count_held();
            // Control messages (admin, shutdown).
            while let Ok(c) = self.control.try_recv() {
                match c {
                    Control::Ping { from, to, reply } => self.start_ping(&from, &to, reply),
                    Control::Shutdown => self.begin_shutdown(),
                    Control::Resend(pairs) => self.local.resend_subscriptions(&self, pairs),
                    Control::Metrics(reply) => {
                        let _ = reply.try_send(self.metrics_snapshot());
                    }
                    Control::Status(reply) => {
                        let _ = reply.try_send(self.status());
                    }
                    Control::Health(reply) => {
                        let _ = reply.try_send(self.id);
                    }
                    Control::Reload(shared, dns) => self.reload(shared, dns),
                    Control::Cluster(items) => self.handle_cluster(items),
                }
            }
            if self.shutting_down.get() {
                break;
            }
            // The store's answers (roster loads, durable changes, credentials).
            self.local.store_replies(&self);
            // Inbox: a bounded number of batches per turn, so sockets get their turn.
            busy = false;
            // One batch at a time, and only while no send queue of this shard is full:
            // then the inbox fills, the senders' pushes fail and their readers pause in
            // turn (back-pressure along the whole path, never an unbounded queue).
            for i in 0..(64 * 1024) {
                if !self.outbox.can_take_work() {
                    break;
                }
                batch.clear();
                let got = inbox.drain(&mut batch, 1);
                if got == 0 {
                    self.drain.handled(self.id, 0, false);
                    break;
                }
                // One clock read per batch (`super::now`).
                let now = Instant::now();
                if !busy {
                    idle.arrived(now);
                }
                busy = true;
                let before = super::set_now(Some(now));
                for msg in batch.drain(..) {
                    self.handle_msg(msg);
                }
                super::set_now(before);
                self.drain.handled(self.id, got as u64, false);
                if i % 64 == 63 {
                    self.outbox.flush(&mut inbox);
                    tokio::task::yield_now().await;
                }
            }
            self.outbox.flush(&mut inbox);
        }
        self.finish_shutdown(&mut inbox, &mut batch).await;
    }

    fn handle_msg(&self, msg: ShardMsg) {
        match msg {
            ShardMsg::Route { el, dst, read_at } => {
                if let Some(t) = read_at {
                    let waited = super::now().saturating_duration_since(t);
                    super::metrics(|m| m.observe(Latency::Handoff, waited));
                }
                let before = super::set_read_at(read_at);
                match dst {
                    Dst::Local => self.deliver_local(el),
                    Dst::Remote => self.send_remote_routed(el),
                }
                super::set_read_at(before);
            }
            ShardMsg::Adopt(h) => self.s2s.adopt(self, *h),
            ShardMsg::AdoptC2s(h) => self.local.adopt_c2s(self, *h),
            ShardMsg::Fanout {
                stanza,
                to,
                read_at,
            } => {
                let before = super::set_read_at(read_at);
                self.local.fanned_out(self, &stanza, to);
                super::set_read_at(before);
            }
            ShardMsg::Verify(req) => self.remotes.verify_with_authoritative(self, req),
            ShardMsg::Verdict {
                conn,
                local,
                remote,
                result,
            } => self.s2s.apply_verdict(self, conn, &local, &remote, result),
            ShardMsg::PeerStreamFailed {
                remote,
                opened,
                condition,
                what,
            } => self.remotes.peer_verification_failed(
                self,
                &remote,
                opened,
                Failure {
                    condition,
                    text: what,
                },
            ),
        }
    }

    // ----- routing -----

    /// Routes a stanza to its owner: a local bare JID's shard, or a remote domain's. The
    /// one routing decision of the stanza: the destination travels with it
    /// ([`ShardMsg::Route`]).
    pub(super) fn route(&self, el: Element) {
        self.route_hops(el, 0);
    }

    /// [`Shard::route`] for a stanza that `hops` cluster nodes forwarded so far: first
    /// the owner node (in a cluster), then the owner shard.
    fn route_hops(&self, el: Element, hops: u8) {
        // The keys borrow `el`: each branch decides first, then lets `el` go. Nothing is
        // allocated here for a domain this shard already knows (issue 20: the remote
        // domain's key is the shard's interned one, [`Remotes::key`]).
        let Some(to) = el.to() else {
            debug!("dropping a stanza without 'to' (checked by the stream layer)");
            return;
        };
        let domain = domain_of(to);
        if self.shared().s2s.hosts(domain) {
            let owner = {
                let bare = bare_key(to);
                if self.forwarded(&el, wire::Kind::Local, &bare, hops) {
                    return;
                }
                shard_of(&bare, self.n)
            };
            if owner == self.id {
                self.deliver_local(el);
            } else {
                self.send_to_owner(owner, el, Dst::Local);
            }
        } else {
            let owner = {
                let d = domain_key(domain);
                if self.forwarded(&el, wire::Kind::Remote, &d, hops) {
                    return;
                }
                shard_of(&d, self.n)
            };
            if owner == self.id {
                self.send_remote(Queued::Whole(el, super::read_at()));
            } else {
                self.send_to_owner(owner, el, Dst::Remote);
            }
        }
    }

    /// Hands `el` to shard `owner`, which owns its destination `dst`.
    fn send_to_owner(&self, owner: usize, el: Element, dst: Dst) {
        self.send_to(
            owner,
            ShardMsg::Route {
                el,
                dst,
                read_at: super::read_at(),
            },
        );
    }

    /// A stanza another shard routed here for a remote domain this shard owns: the key
    /// is taken from its `to` again (cheaper than carrying an owned copy across).
    fn send_remote_routed(&self, el: Element) {
        self.send_remote(Queued::Whole(el, super::read_at()));
    }

    // ----- cluster -----

    /// The node that owns `key` when it is not this one (in a cluster).
    pub(super) fn owner_elsewhere(&self, key: &str) -> Option<Arc<str>> {
        let c = self.cluster.as_ref()?;
        match c.view().owner(key) {
            Owner::Me => None,
            Owner::Node(n) => Some(Arc::clone(n)),
        }
    }

    /// A stanza to a local domain's own entity with a member's name as resource
    /// (`cupdomain.test/n2`, the `from` of the admin pings node `n2` sends): that node,
    /// where the ping waits for its answer, whoever owns the domain's bare JID.
    fn node_of_entity(&self, el: &Element, kind: wire::Kind) -> Option<Arc<str>> {
        let c = self.cluster.as_ref()?;
        if kind != wire::Kind::Local {
            return None;
        }
        let to = el.to()?;
        let (bare, resource) = to.split_once('/')?;
        if bare.contains('@') {
            return None;
        }
        c.view().members.iter().find(|m| ***m == *resource).cloned()
    }

    /// In a cluster, sends `el` (for `key`) to the node that owns it, if that is not this
    /// one: true when it left (or was bounced). After [`MAX_HOPS`] forwards this node
    /// handles it whatever its view says.
    fn forwarded(&self, el: &Element, kind: wire::Kind, key: &str, hops: u8) -> bool {
        let Some(node) = self
            .node_of_entity(el, kind)
            .or_else(|| self.owner_elsewhere(key))
        else {
            return false;
        };
        if *node == *self.cluster.as_ref().map_or("", |c| &*c.node) {
            return false;
        }
        if hops >= MAX_HOPS {
            super::metrics(|m| m.count("cluster_hops_exceeded", &[], 1));
            return false;
        }
        if hops > 0 {
            if let Some(c) = &self.cluster {
                c.stats
                    .reforwarded
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.forward_bytes(&node, kind, key, hops + 1, el.bytes(), || el.clone());
        true
    }

    /// Publishes `bytes` (a stanza for `key`) to `node`; when the way to it is full,
    /// bounces the stanza (`element` builds it) with `remote-server-timeout`.
    pub(super) fn forward_bytes(
        &self,
        node: &Arc<str>,
        kind: wire::Kind,
        key: &str,
        hops: u8,
        bytes: &[u8],
        element: impl FnOnce() -> Element,
    ) {
        let Some(c) = &self.cluster else { return };
        match c.forward(node, kind, key, hops, bytes) {
            Ok(()) => super::count_cluster_forwarded(node),
            Err(e) => {
                super::metrics(|m| m.count("cluster_forward_refused", &[("node", node)], 1));
                debug!(%node, error = ?e, "cluster: the way to the node is full; bouncing");
                self.bounce(
                    &element(),
                    StanzaCondition::RemoteServerTimeout,
                    "the cluster node that serves this address cannot be reached",
                );
            }
        }
    }

    /// What the cluster's NATS thread hands this shard.
    fn handle_cluster(&self, items: Vec<Inbound>) {
        for item in items {
            match item {
                Inbound::Stanza(f) if f.kind == wire::Kind::Session => {
                    if f.hops > 0 {
                        let waited = wire::now_us().saturating_sub(f.sent_us);
                        super::metrics(|m| {
                            m.observe(Latency::ClusterHandoff, Duration::from_micros(waited))
                        });
                    }
                    self.local.cluster_session(self, f)
                }
                Inbound::Stanza(f) => {
                    let waited = wire::now_us().saturating_sub(f.sent_us);
                    super::count_cluster_received();
                    super::metrics(|m| {
                        m.observe(Latency::ClusterHandoff, Duration::from_micros(waited));
                    });
                    match parse_stanza(&f.stanza) {
                        Ok(el) => self.route_hops(el, f.hops),
                        Err(e) => {
                            warn!(error = %e, "a stanza from another node does not frame; dropped")
                        }
                    }
                }
                Inbound::Bounce(bytes) => {
                    if let Ok(el) = parse_stanza(&bytes) {
                        super::metrics(|m| {
                            m.count("cluster_forward_refused", &[("node", "backlog")], 1)
                        });
                        self.bounce(
                            &el,
                            StanzaCondition::RemoteServerTimeout,
                            "the cluster node that serves this address cannot be reached",
                        );
                    }
                }
                Inbound::ViewChanged { view, died } => {
                    info!(epoch = view.epoch, members = ?view.members, died = ?died, "cluster view changed");
                    self.local.cluster_view_changed(self, &view);
                }
                Inbound::Resend(pairs) => self.local.resend_subscriptions(self, pairs),
                Inbound::Fence => self.local.cluster_fence(self),
            }
        }
    }

    /// Updates the counts this node's heartbeat announces.
    fn count_held(&self) {
        if let Some(c) = &self.cluster {
            if let Some((d, u)) = c.held.get(self.id) {
                d.store(
                    self.remotes.len() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
                u.store(
                    self.local.user_count() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
        }
    }

    /// A stanza for a local JID this shard owns: the server's own entity answers what is
    /// addressed to a domain; users get theirs (`local/`).
    fn deliver_local(&self, el: Element) {
        match self.local.deliver_local_stanza(self, el) {
            Some(Answer::Reply(reply)) => self.route(reply),
            Some(Answer::Response { id, error }) => self.finish_ping(&id, error),
            Some(Answer::Ignore) | None => {}
        }
    }

    /// Routes a stanza written as bytes and framed once more here: a client's stanza stamped
    /// with its full JID, or one readdressed to another recipient.
    pub(super) fn route_generated(&self, bytes: &[u8]) {
        match parse_stanza(bytes) {
            Ok(el) => self.route(el),
            Err(e) => warn!(error = %e, "generated stanza does not frame; not sent"),
        }
    }

    /// Bounces `el` to its sender with `condition` (RFC 6120 §8.3.3); error stanzas are
    /// never bounced (§8.3.1).
    pub(super) fn bounce(&self, el: &Element, condition: StanzaCondition, text: &str) {
        if is_error(el) || StanzaKind::of(el).is_none() {
            return;
        }
        super::metrics(|m| m.count("bounces", &[("condition", condition.as_str())], 1));
        let by = el.from().map(domain_of);
        self.route(error_reply(el, condition, Some(text), by));
    }

    // ----- admin ping -----

    fn start_ping(&self, from: &str, to: &str, reply: crossbeam_channel::Sender<PingOutcome>) {
        let now = Instant::now();
        let id = format!("ping-{}-{}", self.id, self.next_conn_id() & 0xffff_ffff);
        {
            let mut pings = self.pings.borrow_mut();
            pings.retain(|_, p| now.duration_since(p.sent) < Duration::from_secs(300));
            pings.insert(id.clone(), PendingPing { sent: now, reply });
        }
        // In a cluster the answer comes back through whichever node the peer reaches:
        // our name as resource brings it here (`Shard::node_of_entity`).
        match &self.cluster {
            Some(c) => self.route(ping(&format!("{from}/{}", c.node), to, &id)),
            None => self.route(ping(from, to, &id)),
        }
    }

    fn finish_ping(&self, id: &str, error: Option<Option<StanzaCondition>>) {
        let Some(p) = self.pings.borrow_mut().remove(id) else {
            return;
        };
        let rtt = p.sent.elapsed();
        let outcome = match error {
            None => PingOutcome::Pong { rtt },
            Some(c) => PingOutcome::Error {
                condition: c
                    .map(|c| c.as_str())
                    .unwrap_or("undefined-condition")
                    .to_owned(),
                rtt,
            },
        };
        let _ = p.reply.try_send(outcome);
    }

    // ----- shutdown -----

    fn begin_shutdown(&self) {
        if self.shutting_down.replace(true) {
            return;
        }
        info!(shard = self.id, "shutting down");
        for l in self.listeners.borrow().iter() {
            // Completes the pending accept with an error (no in-flight accept is dropped).
            // SAFETY: shutdown(2) on a descriptor we own.
            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
        }
        // What waits for remote domains goes out or is bounced while the senders'
        // sessions are still open to receive the bounce. No stream is opened from now on.
        self.remotes.begin_shutdown(self);
        let now = Instant::now();
        self.local.close_clients(self, now);
        let conns = self.s2s.all();
        for c in conns {
            let mut st = c.st.borrow_mut();
            st.proto.close(None, now);
            st.collect_events();
            st.pump();
            drop(st);
            c.wake.notify_one();
        }
    }

    /// A copy of this shard's metrics with its gauges: streams by protocol, direction and
    /// state; queue depths.
    fn metrics_snapshot(&self) -> crate::metrics::Metrics {
        let mut m = super::metrics(|m| m.clone());
        self.s2s.gauges(&mut m);
        self.remotes.gauges(&mut m);
        let mut c2s_stalled = 0;
        for c in self.local.conns.borrow().values() {
            let st = c.st.borrow();
            let state = if st.proto.bound_jid().is_some() {
                "bound"
            } else {
                "negotiating"
            };
            m.add_gauge(
                "streams",
                &[("proto", "c2s"), ("dir", "in"), ("state", state)],
                1,
            );
            if st
                .write_waiting_since
                .is_some_and(|t| t.elapsed() >= super::s2s::STALL_SHOWN)
            {
                c2s_stalled += 1;
            }
        }
        m.add_gauge("write_stalled_streams", &[("proto", "c2s")], c2s_stalled);
        if self.cluster.is_some() {
            m.add_gauge(
                "cluster_relayed_clients",
                &[],
                self.local.relayed_count() as i64,
            );
        }
        m.add_gauge(
            "queue_depth",
            &[("queue", "cross_shard_outgoing")],
            self.outbox.len() as i64,
        );
        m.add_gauge(
            "queue_depth",
            &[("queue", "dns")],
            self.resolver.borrow().queries_waiting() as i64,
        );
        if self.id == 0 {
            if let Some(c) = &self.cluster {
                c.add_metrics(&mut m);
            }
            m.add_gauge(
                "queue_depth",
                &[("queue", "store")],
                self.shared().store.queued() as i64,
            );
            // The storage thread's own count, added once (by shard 0) to the scrape.
            m.count("store_failures", &[], self.shared().store.stats().failures);
        }
        m
    }

    /// The remote domains this shard knows of: one JSON object per domain with its
    /// streams (direction, state, authenticated pairs and methods), queue length, last
    /// failure and backoff (for `fedrouter status`).
    fn status(&self) -> Vec<serde_json::Value> {
        self.remotes.status(self.id, self.s2s.status())
    }

    fn conn_count(&self) -> usize {
        self.s2s.conns.borrow().len() + self.local.conns.borrow().len()
    }

    /// Handles what other shards still send while this one shuts down (a stanza generated
    /// by a session ending there, for a user or remote domain owned here): routed,
    /// delivered or bounced as usual, never silently dropped. Connections handed over now
    /// are closed instead of adopted. Returns how many messages were handled.
    fn drain_during_shutdown(
        &self,
        inbox: &mut ShardInbox<ShardMsg>,
        batch: &mut Vec<ShardMsg>,
    ) -> usize {
        let mut handled = 0;
        // Bounded: at most 1,024 batches per call.
        for _ in 0..1024 {
            batch.clear();
            if inbox.drain(batch, 1) == 0 {
                break;
            }
            let mut n = 0;
            for msg in batch.drain(..) {
                match msg {
                    // Dropping the hand-off closes its socket; the peer reconnects to a
                    // running server.
                    ShardMsg::Adopt(_) | ShardMsg::AdoptC2s(_) => {}
                    msg => self.handle_msg(msg),
                }
                n += 1;
            }
            // After the handling: what it sent is counted first (`drain.rs`).
            self.drain.handled(self.id, n as u64, true);
            handled += n;
        }
        self.outbox.flush(inbox);
        handled
    }

    async fn finish_shutdown(&self, inbox: &mut ShardInbox<ShardMsg>, batch: &mut Vec<ShardMsg>) {
        let deadline = Instant::now() + self.shared().config.shutdown.drain_timeout;
        let mut late = 0;
        while self.conn_count() > 0 && Instant::now() < deadline {
            late += self.drain_during_shutdown(inbox, batch);
            let ended = self.conn_ended.notified();
            tokio::select! {
                _ = tokio::time::sleep_until(deadline.into()) => {}
                _ = ended => {}
                _ = inbox.wait() => {}
            }
        }
        // Whatever is left: shut the sockets so their reads complete.
        let conns = self.s2s.all();
        for c in &conns {
            c.st.borrow_mut().closed = true;
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
            c.wake.notify_one();
        }
        let clients: Vec<Rc<Conn<C2sConnection>>> =
            self.local.conns.borrow().values().cloned().collect();
        for c in &clients {
            c.st.borrow_mut().closed = true;
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
            c.wake.notify_one();
        }
        let settle = Instant::now() + SETTLE;
        while self.conn_count() > 0 && Instant::now() < settle {
            late += self.drain_during_shutdown(inbox, batch);
            let ended = self.conn_ended.notified();
            tokio::select! {
                _ = tokio::time::sleep_until(settle.into()) => {}
                _ = ended => {}
                _ = inbox.wait() => {}
            }
        }
        // Phase 2 (`drain.rs`): no stream is left here, yet other shards may still send
        // what their own streams' ends produce (or what handling it here bounces back).
        // Keep handling it until no shard will send anything any more, or `end`.
        self.drain.quiet(self.id);
        debug!(
            shard = self.id,
            "no stream left; handling what other shards send until they have sent everything"
        );
        // Other shards may still be in their own settle step (one `SETTLE`) past `deadline`.
        let end = Instant::now().max(deadline) + 2 * SETTLE;
        // Bounded: each turn waits for an event or `end`.
        loop {
            late += self.drain_during_shutdown(inbox, batch);
            if self.drain.drained() || Instant::now() >= end {
                break;
            }
            let blocked = self.outbox.is_blocked();
            tokio::select! {
                _ = tokio::time::sleep_until(end.into()) => {}
                _ = self.drain.changed(self.id) => {}
                _ = inbox.wait() => {}
                _ = self.outbox.flush_wanted() => {}
                _ = inbox.wait_space(), if blocked => {}
            }
        }
        if late > 0 {
            info!(
                count = late,
                "cross-shard messages handled while shutting down (routed, delivered or bounced)"
            );
        }
        // Messages for other shards that could not be handed over any more.
        let unsent = self.outbox.len() + inbox.pending();
        if unsent > 0 {
            warn!(
                count = unsent,
                "cross-shard messages could not reach their shard before it stopped"
            );
        }
        let (bounced, queued) = self.remotes.finish_shutdown();
        if bounced > 0 {
            info!(
                count = bounced,
                "stanzas for remote servers bounced while shutting down (no new streams)"
            );
        }
        // Stanzas still waiting for a remote server are not delivered: every stream is
        // closed by now, so a bounce could reach nobody. Say how many, loudly.
        if queued > 0 {
            warn!(
                count = queued,
                "stanzas still queued for remote servers at shutdown were not delivered"
            );
        }
    }
}

thread_local! {
    /// The shard running on this thread.
    pub(crate) static CURRENT: RefCell<Option<Rc<Shard>>> = const { RefCell::new(None) };
}
