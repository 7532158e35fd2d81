//! The NATS thread: one tokio current-thread runtime with the async-nats client. It
//! publishes this node's heartbeats and follows the others' ([`Membership`]), publishes
//! the stanzas shards forward ([`Cluster::forward`]) from a bounded backlog per node,
//! and hands what other nodes send to the owning shard ([`Sink`]).
//!
//! Subjects: `<prefix>.members` (heartbeats, JSON [`Heartbeat`]) and
//! `<prefix>.node.<name>` (stanzas for that node, [`super::wire`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures::{FutureExt as _, StreamExt as _};
use tracing::{debug, info, warn};

use super::membership::{Change, Heartbeat, Membership, State};
use super::{wire, Cluster, Outgoing, Stats, Status, View};
use crate::config::ClusterSection;
use crate::router::{bare_key, rendezvous, shard_of};

/// What the NATS thread hands a shard.
pub(crate) enum Inbound {
    /// A stanza from another node (or from a dead node's backlog, to route again; a
    /// session message that could not be published comes back too, with `hops` 0).
    Stanza(wire::Forwarded),
    /// A stanza that could not reach its node: bounce it (`remote-server-timeout`).
    Bounce(Bytes),
    /// The live set changed: `view` is the new one; `died` the members that died (not
    /// those that left gracefully).
    ViewChanged {
        view: Arc<View>,
        died: Vec<Arc<str>>,
    },
    /// Send these outbound subscription requests again (`(user, contact)`): the durable
    /// outbox of users this node took over, or all of this node's after NATS came back.
    Resend(Vec<(String, String)>),
    /// This node was cut off from the others for longer than the failure timeout (they
    /// took over its share meanwhile): what it caches about its users may be stale, so
    /// its client sessions reconnect (to this node) and reload from the store.
    Fence,
}

/// The runtime side of the NATS thread.
pub(crate) trait Sink: Send + 'static {
    /// Hands `items` to `shard`. Errors: the items back when its control channel is
    /// full.
    fn deliver(&self, shard: usize, items: Vec<Inbound>) -> Result<(), Vec<Inbound>>;
    /// The durable outbox (blocking: a store request), `(user, contact)` bare JIDs.
    fn pending_out(&self) -> Vec<(String, String)>;
}

/// Hands the runtime side to a started NATS thread ([`start`]).
pub(crate) struct Attach(tokio::sync::oneshot::Sender<Box<dyn Sink>>);

impl Attach {
    /// From now on, stanzas from other nodes go to `sink`.
    pub(crate) fn attach(self, sink: Box<dyn Sink>) {
        let _ = self.0.send(sink);
    }
}

/// How long a starting node listens for the others' heartbeats before it serves
/// (they answer a hello at once; this bounds the wait).
fn discovery(cfg: &ClusterSection) -> Duration {
    (cfg.heartbeat * 2).min(Duration::from_secs(2))
}

/// Connects to NATS, learns the members and starts the NATS thread. Returns once the
/// node knows the live set, with the handle shards use and the way to attach them.
///
/// Errors: a message naming the NATS URLs and the cause when no server answers within
/// `cluster.connect_timeout`, or the thread cannot start.
pub(crate) fn start(
    cfg: &ClusterSection,
    c2s: String,
    shards: usize,
) -> Result<(Arc<Cluster>, Attach), String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let (attach_tx, attach_rx) = tokio::sync::oneshot::channel();
    let cfg = cfg.clone();
    let urls = cfg.nats.join(", ");
    std::thread::Builder::new()
        .name("cluster".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("runtime: {e}")));
                    return;
                }
            };
            rt.block_on(run(cfg, c2s, shards, ready_tx, attach_rx));
        })
        .map_err(|e| format!("starting the cluster thread: {e}"))?;
    match ready_rx.recv() {
        Ok(Ok(c)) => Ok((c, Attach(attach_tx))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("NATS at {urls}: the cluster thread ended")),
    }
}

fn subject_members(prefix: &str) -> String {
    format!("{prefix}.members")
}

/// Where stanzas for `node` from `sender` are published; `node` subscribes to
/// `<prefix>.node.<node>.*` and learns the sender from the last token.
fn subject_node(prefix: &str, node: &str, sender: &str) -> String {
    format!("{prefix}.node.{node}.{sender}")
}

/// What the connection callback reports.
enum NatsEvent {
    Connected,
    Disconnected,
    SlowConsumer,
    Error(String),
}

struct Node {
    cfg: ClusterSection,
    me: Arc<str>,
    incarnation: u64,
    c2s: String,
    membership: Membership,
    cluster: Arc<Cluster>,
    client: async_nats::Client,
    backlog: HashMap<Arc<str>, VecDeque<Bytes>>,
    sink: Option<Box<dyn Sink>>,
    shards: usize,
    leaving: bool,
    /// Stanzas published to each node since start.
    published: HashMap<Arc<str>, u64>,
    /// Stanzas received from each node since start (announced in heartbeats, so that a
    /// sender can tell how many a node that died never confirmed).
    received: HashMap<String, u64>,
    /// When this node's NATS connection went down.
    down_since: Option<Instant>,
    /// After this node reconnected: the members whose backlog waits until they are heard
    /// again. NATS core drops what is published to a subject nobody subscribes to, and
    /// a member that lost the connection too subscribes again only when it reconnects,
    /// which its next heartbeat shows.
    unheard: std::collections::HashSet<Arc<str>>,
}

async fn run(
    cfg: ClusterSection,
    c2s: String,
    shards: usize,
    ready: std::sync::mpsc::SyncSender<Result<Arc<Cluster>, String>>,
    attach: tokio::sync::oneshot::Receiver<Box<dyn Sink>>,
) {
    let urls = cfg.nats.join(", ");
    let addrs: Vec<async_nats::ServerAddr> = match cfg.nats.iter().map(|u| u.parse()).collect() {
        Ok(a) => a,
        Err(e) => {
            let _ = ready.send(Err(format!("cluster.nats: {e}")));
            return;
        }
    };
    let (ev_tx, mut ev_rx) = tokio::sync::mpsc::channel::<NatsEvent>(256);
    let options = async_nats::ConnectOptions::new()
        .name(format!("fedrouter-{}", cfg.node))
        .connection_timeout(cfg.connect_timeout)
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            // 100 ms doubling to 5 s.
            let ms = 100u64.saturating_mul(1 << attempts.min(6) as u64);
            Duration::from_millis(ms.min(5_000))
        })
        .subscription_capacity(64 * 1024)
        .event_callback(move |ev| {
            let tx = ev_tx.clone();
            async move {
                let e = match ev {
                    async_nats::Event::Connected => NatsEvent::Connected,
                    async_nats::Event::Disconnected => NatsEvent::Disconnected,
                    async_nats::Event::SlowConsumer(_) => NatsEvent::SlowConsumer,
                    other => NatsEvent::Error(other.to_string()),
                };
                let _ = tx.try_send(e);
            }
        });
    let client = match tokio::time::timeout(cfg.connect_timeout, options.connect(addrs)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            let _ = ready.send(Err(format!("cannot reach NATS at {urls}: {e}")));
            return;
        }
        Err(_) => {
            let _ = ready.send(Err(format!(
                "cannot reach NATS at {urls}: no answer within cluster.connect_timeout ({})",
                humantime::format_duration(cfg.connect_timeout)
            )));
            return;
        }
    };
    let (mut members_sub, node_sub) = match (
        client.subscribe(subject_members(&cfg.subject_prefix)).await,
        client
            .subscribe(subject_node(&cfg.subject_prefix, &cfg.node, "*"))
            .await,
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            let _ = ready.send(Err(format!("NATS at {urls}: subscribing: {e}")));
            return;
        }
    };
    let incarnation = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let me: Arc<str> = Arc::from(cfg.node.as_str());
    let (out_tx, out_rx) = tokio::sync::mpsc::channel(cfg.backlog);
    let first = View {
        me: Arc::clone(&me),
        members: vec![Arc::clone(&me)],
        epoch: 1,
        c2s: HashMap::from([(Arc::clone(&me), c2s.clone())]),
    };
    let cluster = Arc::new(Cluster {
        node: Arc::clone(&me),
        view: ArcSwap::from_pointee(first),
        out: out_tx,
        status: Mutex::new(Status {
            nats_up: true,
            nats_url: urls.clone(),
            since: Some(SystemTime::now()),
            ..Status::default()
        }),
        stats: Stats::default(),
        held: (0..shards).map(|_| Default::default()).collect(),
        leaving: Default::default(),
    });
    let mut node = Node {
        membership: Membership::new(&cfg.node, incarnation, cfg.failure_timeout),
        cfg,
        me,
        incarnation,
        c2s,
        cluster: Arc::clone(&cluster),
        client,
        backlog: HashMap::new(),
        sink: None,
        shards,
        leaving: false,
        published: HashMap::new(),
        received: HashMap::new(),
        down_since: None,
        unheard: std::collections::HashSet::new(),
    };
    // Discovery: say hello (the others answer with their heartbeat at once), listen.
    node.heartbeat(true).await;
    let until = tokio::time::Instant::now() + discovery(&node.cfg);
    for _ in 0..100_000 {
        tokio::select! {
            m = members_sub.next() => match m {
                Some(m) => node.on_member_message(&m.payload, false).await,
                None => break,
            },
            _ = tokio::time::sleep_until(until) => break,
        }
    }
    node.publish_view(Vec::new());
    info!(node = %node.me, members = ?node.cluster.view().members, "cluster membership known");
    let _ = ready.send(Ok(Arc::clone(&cluster)));
    drop(cluster);
    // Wait for the shards (the server drops the sender when it fails to start).
    match attach.await {
        Ok(sink) => node.sink = Some(sink),
        Err(_) => {
            node.leave().await;
            return;
        }
    }
    node.main_loop(members_sub, node_sub, out_rx, &mut ev_rx)
        .await;
}

impl Node {
    async fn main_loop(
        &mut self,
        mut members_sub: async_nats::Subscriber,
        mut node_sub: async_nats::Subscriber,
        mut out_rx: tokio::sync::mpsc::Receiver<Outgoing>,
        ev_rx: &mut tokio::sync::mpsc::Receiver<NatsEvent>,
    ) {
        let mut beat = tokio::time::interval(self.cfg.heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut connected = true;
        // Bounded: ends when every shard is gone (the channel closes) or on shutdown.
        loop {
            tokio::select! {
                o = out_rx.recv() => match o {
                    Some(o) => {
                        self.queue(o);
                        // Take what else is ready in one go.
                        for _ in 0..1024 {
                            match out_rx.try_recv() {
                                Ok(o) => self.queue(o),
                                Err(_) => break,
                            }
                        }
                        if connected {
                            self.flush().await;
                        }
                    }
                    None => {
                        self.leave().await;
                        return;
                    }
                },
                m = node_sub.next() => match m {
                    Some(m) => {
                        let mut batch = vec![m];
                        for _ in 0..1024 {
                            match node_sub.next().now_or_never() {
                                Some(Some(m)) => batch.push(m),
                                _ => break,
                            }
                        }
                        self.on_stanzas(batch).await;
                    }
                    None => {
                        warn!("NATS subscription ended");
                        return;
                    }
                },
                m = members_sub.next() => {
                    if let Some(m) = m {
                        self.on_member_message(&m.payload, true).await;
                    }
                }
                _ = beat.tick() => {
                    if self.cluster_stopping() {
                        self.leave().await;
                        return;
                    }
                    if connected {
                        self.heartbeat(false).await;
                    }
                    // While our own connection is down, nobody is heard: that is not
                    // their death. The view stays; stanzas for others wait in backlogs.
                    if connected {
                        let stalls = self.membership.stalls();
                        let changes = self.membership.tick(Instant::now());
                        if self.membership.stalls() > stalls {
                            warn!(failure_timeout = %humantime::format_duration(self.cfg.failure_timeout), "this node did not run for half of cluster.failure_timeout or more (a stalled process or machine): nobody is declared dead for the silence; every member gets a full failure timeout from now");
                        }
                        self.apply(changes).await;
                    }
                    if connected {
                        self.flush().await;
                    }
                    self.show_backlog();
                    let members = self.members_json();
                    self.cluster.set_status(|s| s.members = members);
                }
                e = ev_rx.recv() => match e {
                    Some(NatsEvent::Connected) if !connected => {
                        {
                            connected = true;
                            self.cluster.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                            info!("NATS reachable again");
                            self.cluster.set_status(|s| {
                                s.nats_up = true;
                                s.since = Some(SystemTime::now());
                            });
                            let outage = self.down_since.take().map(|t| t.elapsed());
                            self.membership.reconnected(Instant::now());
                            if outage.is_some_and(|d| d >= self.cfg.failure_timeout) {
                                // The others counted us dead and served our share: what
                                // this node holds in memory about it may be stale.
                                warn!(outage_ms = outage.map(|d| d.as_millis() as u64), "NATS was down longer than cluster.failure_timeout: sessions reconnect to reload their state from the store");
                                for shard in 0..self.shards {
                                    self.hand(shard, vec![Inbound::Fence]);
                                }
                            }
                            self.unheard = self
                                .membership
                                .live()
                                .into_iter()
                                .filter(|n| *n != self.me)
                                .collect();
                            // A hello: the others answer at once, which releases their
                            // backlogs here.
                            self.heartbeat(true).await;
                            self.flush().await;
                            // What was published while the connection broke may be
                            // gone: the durable outbox of our users goes out again.
                            self.resend_outbox(|_| true).await;
                        }
                    }
                    Some(NatsEvent::Disconnected) if connected => {
                        {
                            connected = false;
                            self.down_since = Some(Instant::now());
                            warn!(nats = %self.cfg.nats.join(", "), "NATS unreachable; retrying with back-off, stanzas for other nodes wait in their backlog");
                            self.cluster.set_status(|s| {
                                s.nats_up = false;
                                s.since = Some(SystemTime::now());
                                s.last_error = Some("disconnected".into());
                            });
                        }
                    }
                    Some(NatsEvent::SlowConsumer) => {
                        self.cluster.stats.lost.fetch_add(1, Ordering::Relaxed);
                        warn!("NATS dropped messages for this node (slow consumer)");
                    }
                    Some(NatsEvent::Error(e)) => {
                        debug!(error = %e, "NATS");
                        self.cluster.set_status(|s| s.last_error = Some(e));
                    }
                    Some(NatsEvent::Connected | NatsEvent::Disconnected) | None => {}
                },
            }
        }
    }

    fn cluster_stopping(&self) -> bool {
        // The shards hold the other handles; when only ours is left, they are gone.
        Arc::strong_count(&self.cluster) == 1
            || self.leaving
            || self.cluster.leaving.load(Ordering::Relaxed)
    }

    fn queue(&mut self, o: Outgoing) {
        let q = self.backlog.entry(o.node).or_default();
        if q.len() >= self.cfg.backlog {
            self.cluster
                .stats
                .backlog_full
                .fetch_add(1, Ordering::Relaxed);
            match wire::decode(o.payload) {
                Ok(mut f) if f.kind == wire::Kind::Session => {
                    // Back to the session's shard, which knows what it said (hops 0:
                    // returned, not received).
                    f.hops = 0;
                    let shard = shard_of(&f.key, self.shards);
                    self.hand(shard, vec![Inbound::Stanza(f)]);
                }
                Ok(f) => {
                    let shard = shard_of(&f.key, self.shards);
                    self.hand(shard, vec![Inbound::Bounce(f.stanza)]);
                }
                Err(e) => warn!(error = %e, "undecodable backlog entry"),
            }
            return;
        }
        q.push_back(o.payload);
    }

    async fn flush(&mut self) {
        for (node, q) in self.backlog.iter_mut() {
            if self.unheard.contains(node) {
                continue;
            }
            let subject = subject_node(&self.cfg.subject_prefix, node, &self.me);
            for _ in 0..q.len() {
                let Some(p) = q.pop_front() else { break };
                if let Err(e) = self.client.publish(subject.clone(), p.clone()).await {
                    debug!(error = %e, %node, "publish failed; kept");
                    q.push_front(p);
                    break;
                }
                *self.published.entry(Arc::clone(node)).or_default() += 1;
            }
        }
        self.backlog.retain(|_, q| !q.is_empty());
    }

    fn show_backlog(&self) {
        let b: Vec<(String, usize)> = self
            .backlog
            .iter()
            .map(|(n, q)| (n.to_string(), q.len()))
            .collect();
        self.cluster.set_status(|s| s.backlog = b);
    }

    async fn on_stanzas(&mut self, batch: Vec<async_nats::Message>) {
        let mut per_shard: HashMap<usize, Vec<Inbound>> = HashMap::new();
        for m in batch {
            if let Some(sender) = m.subject.rsplit('.').next() {
                match self.received.get_mut(sender) {
                    Some(n) => *n += 1,
                    None => {
                        self.received.insert(sender.to_owned(), 1);
                    }
                }
            }
            match wire::decode(m.payload) {
                Ok(f) => {
                    let shard = shard_of(&f.key, self.shards);
                    per_shard.entry(shard).or_default().push(Inbound::Stanza(f));
                }
                Err(e) => warn!(error = %e, "undecodable stanza from another node; dropped"),
            }
        }
        for (shard, items) in per_shard {
            self.hand_waiting(shard, items).await;
        }
    }

    /// Hands `items` to `shard`, waiting (bounded: up to 1 s) while its control channel
    /// is full; what still does not fit is counted lost.
    async fn hand_waiting(&self, shard: usize, mut items: Vec<Inbound>) {
        let Some(sink) = &self.sink else { return };
        for _ in 0..1000 {
            match sink.deliver(shard, items) {
                Ok(()) => return,
                Err(back) => items = back,
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let n = items.len() as u64;
        self.cluster.stats.lost.fetch_add(n, Ordering::Relaxed);
        warn!(
            shard,
            stanzas = n,
            "shard did not take stanzas from other nodes for 1 s; lost"
        );
    }

    fn hand(&self, shard: usize, items: Vec<Inbound>) {
        if let Some(sink) = &self.sink {
            if let Err(back) = sink.deliver(shard, items) {
                self.cluster
                    .stats
                    .lost
                    .fetch_add(back.len() as u64, Ordering::Relaxed);
            }
        }
    }

    async fn heartbeat(&mut self, hello: bool) {
        let held = self.cluster.held.iter().fold((0, 0), |(d, u), (hd, hu)| {
            (
                d + hd.load(Ordering::Relaxed),
                u + hu.load(Ordering::Relaxed),
            )
        });
        let hb = HeartbeatOut {
            beat: Heartbeat {
                node: self.me.to_string(),
                incarnation: self.incarnation,
                c2s: self.c2s.clone(),
                leaving: self.leaving,
                domains: held.0,
                users: held.1,
                received: self.received.clone().into_iter().collect(),
            },
            hello,
        };
        let Ok(body) = serde_json::to_vec(&hb) else {
            return;
        };
        if let Err(e) = self
            .client
            .publish(subject_members(&self.cfg.subject_prefix), body.into())
            .await
        {
            debug!(error = %e, "heartbeat not published");
        }
    }

    async fn on_member_message(&mut self, payload: &[u8], apply: bool) {
        let hb: HeartbeatOut = match serde_json::from_slice(payload) {
            Ok(h) => h,
            Err(e) => {
                warn!(error = %e, "unreadable heartbeat");
                return;
            }
        };
        let from_other = hb.beat.node != *self.me;
        let hello = hb.hello;
        if from_other && self.unheard.remove(hb.beat.node.as_str()) {
            debug!(node = %hb.beat.node, "heard again after the reconnection: its backlog goes out");
        }
        let changes = self.membership.on_heartbeat(hb.beat, Instant::now());
        if hello && from_other {
            // A starting node: answer at once so it knows us before it serves.
            self.heartbeat(false).await;
        }
        if apply {
            self.apply(changes).await;
        } else {
            for c in changes {
                if let Change::Conflict(n) = c {
                    warn!(node = %n, "another process announces this node's name: cluster.node must be unique");
                }
            }
        }
    }

    /// Acts on membership changes: a new view for the shards, the dead members'
    /// backlogs routed again, their users' durable outbox sent again by their new owner.
    async fn apply(&mut self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let old = self.cluster.view();
        let mut died = Vec::new();
        let mut gone = Vec::new();
        let mut moved = false;
        for c in changes {
            match c {
                Change::Joined(n) => {
                    info!(node = %n, "cluster member joined");
                    moved = true;
                }
                Change::Left(n) => {
                    info!(node = %n, "cluster member left");
                    gone.push(n);
                    moved = true;
                }
                Change::Died(n) => {
                    let sent = self.published.remove(&n).unwrap_or(0);
                    let confirmed = self.confirmed_by(&n);
                    let unconfirmed = sent.saturating_sub(confirmed);
                    self.cluster
                        .stats
                        .unconfirmed_at_death
                        .fetch_add(unconfirmed, Ordering::Relaxed);
                    if let Ok(mut by) = self.cluster.stats.unconfirmed_by_node.lock() {
                        *by.entry(n.to_string()).or_default() += unconfirmed;
                    }
                    warn!(node = %n, unconfirmed, "cluster member dead (silent for cluster.failure_timeout or restarted); taking over its share; stanzas published to it that it never confirmed may be lost");
                    died.push(n);
                    moved = true;
                }
                Change::Conflict(n) => {
                    warn!(node = %n, "another process announces this node's name: cluster.node must be unique");
                }
            }
        }
        if !moved {
            return;
        }
        self.cluster
            .stats
            .membership_changes
            .fetch_add(1, Ordering::Relaxed);
        let view = self.publish_view(died.clone());
        // The backlogs of the members that died or left: route again under the new view.
        gone.extend(died.iter().cloned());
        for n in &gone {
            if let Some(q) = self.backlog.remove(n) {
                for p in q {
                    if let Ok(mut f) = wire::decode(p) {
                        f.hops = 0;
                        let shard = shard_of(&f.key, self.shards);
                        self.hand_waiting(shard, vec![Inbound::Stanza(f)]).await;
                    }
                }
            }
        }
        if !died.is_empty() {
            let me = Arc::clone(&self.me);
            let old_members = old.members.clone();
            let new_members = view.members.clone();
            let died2 = died.clone();
            self.resend_outbox(move |user| {
                let key = bare_key(user);
                let was = rendezvous::owner(&key, &old_members);
                let now = rendezvous::owner(&key, &new_members);
                was.is_some_and(|w| died2.contains(w)) && now.is_some_and(|n| *n == me)
            })
            .await;
        }
    }

    /// The other members as status shows them.
    fn members_json(&self) -> Vec<serde_json::Value> {
        let now = Instant::now();
        self.membership
            .others()
            .map(|(name, m)| {
                serde_json::json!({
                    "node": &**name,
                    "state": m.state.as_str(),
                    "c2s": m.last.c2s,
                    "domains": m.last.domains,
                    "users": m.last.users,
                    "last_heard_ms": now.saturating_duration_since(m.seen).as_millis() as u64,
                })
            })
            .collect()
    }

    /// Stores and announces the current view; returns it.
    fn publish_view(&mut self, died: Vec<Arc<str>>) -> Arc<View> {
        let mut c2s: HashMap<Arc<str>, String> = HashMap::new();
        c2s.insert(Arc::clone(&self.me), self.c2s.clone());
        for (name, m) in self.membership.others() {
            if m.state == State::Up {
                c2s.insert(Arc::clone(name), m.last.c2s.clone());
            }
        }
        let view = Arc::new(View {
            me: Arc::clone(&self.me),
            members: self.membership.live(),
            epoch: self.membership.epoch(),
            c2s,
        });
        self.cluster.view.store(Arc::clone(&view));
        let members = self.members_json();
        self.cluster.set_status(|s| s.members = members);
        if self.sink.is_some() {
            for shard in 0..self.shards {
                self.hand(
                    shard,
                    vec![Inbound::ViewChanged {
                        view: Arc::clone(&view),
                        died: died.clone(),
                    }],
                );
            }
        }
        view
    }

    /// Sends the durable outbox entries whose user passes `mine` to their shards again.
    async fn resend_outbox(&self, mine: impl Fn(&str) -> bool + Send + 'static) {
        let Some(sink) = &self.sink else { return };
        let view = self.cluster.view();
        // One store query, answered by the storage thread: this loop waits for it.
        let pairs = sink.pending_out();
        let mut per_shard: HashMap<usize, Vec<(String, String)>> = HashMap::new();
        let mut n = 0u64;
        for (user, contact) in pairs {
            let key = bare_key(&user).into_owned();
            if matches!(view.owner(&key), super::Owner::Me) && mine(&user) {
                per_shard
                    .entry(shard_of(&key, self.shards))
                    .or_default()
                    .push((user, contact));
                n += 1;
            }
        }
        if n > 0 {
            info!(
                count = n,
                "sending the durable outbox again (subscription requests)"
            );
            self.cluster
                .stats
                .outbox_resent
                .fetch_add(n, Ordering::Relaxed);
        }
        for (shard, pairs) in per_shard {
            self.hand_waiting(shard, vec![Inbound::Resend(pairs)]).await;
        }
    }

    /// How many stanzas from this node `node` announced it received, in its last
    /// heartbeat.
    fn confirmed_by(&self, node: &str) -> u64 {
        self.membership
            .others()
            .find(|(n, _)| ***n == *node)
            .and_then(|(_, m)| m.last.received.get(&*self.me).copied())
            .unwrap_or(0)
    }

    /// Tells the others this node is leaving (graceful shutdown) and flushes.
    async fn leave(&mut self) {
        self.leaving = true;
        self.flush().await;
        self.heartbeat(false).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.flush()).await;
        info!(node = %self.me, "left the cluster");
    }
}

/// A heartbeat on the wire: [`Heartbeat`] and whether the sender is starting (then the
/// others answer at once).
#[derive(serde::Serialize, serde::Deserialize)]
struct HeartbeatOut {
    #[serde(flatten)]
    beat: Heartbeat,
    #[serde(default)]
    hello: bool,
}
