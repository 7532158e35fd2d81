//! One shard: a thread pinned to a core, running its own tokio-uring runtime, owning a
//! subset of remote domains and local bare JIDs (DESIGN.md "Ownership").
//!
//! Everything here is single-threaded: state lives in `RefCell`s that are never
//! borrowed across an `.await`. Other shards are reached only through the inbox mesh
//! ([`crate::router::inbox`]); the admin thread through a small control channel.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Notify;
use tokio_uring::net::{TcpListener, TcpStream};
use tracing::{debug, info, info_span, warn, Instrument};

use super::conn::{Conn, ConnId, ConnState, Handoff, Proto, Tls, READ_BUF, READ_BUF_MAX};
use super::local::Local;
use super::{Control, PingOutcome, Shared};
use crate::condition::{StanzaCondition, StreamCondition};
use crate::dialback::{DialbackErrorCondition, DialbackResult};
use crate::dns::{DnsError, S2sResolver};
use crate::jid::domain_of;
use crate::metrics::Latency;
use crate::router::fanout::{write_to_attr, SharedStanza};
use crate::router::inbox::ShardInbox;
use crate::router::{bare_key, domain_key, shard_of};
use crate::service::{write_ping, Answer};
use crate::srv::{Resolution, Target};
use crate::stanza::{is_error, write_error_reply, StanzaKind};
use crate::stream::c2s::C2sConnection;
use crate::stream::s2s::{AuthMethod, CloseReason, Direction, Event, S2sConnection, TlsRole};
use crate::xml::{parse_stanza, Element};

/// How long a write must have waited for the socket before `fedrouter status` and the
/// `write_stalled_streams` gauge show the stream as stalled.
const STALL_SHOWN: Duration = Duration::from_secs(1);

/// How long a shard polls its inbox after cross-shard traffic before it sleeps.
const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(50);

/// What crosses from one shard to another.
pub(crate) enum ShardMsg {
    /// A stanza for a local bare JID or a remote domain the receiver owns, with the time
    /// it was read from a socket (for latency metrics). The element is a refcounted view
    /// of the bytes as received: never re-serialised.
    Route(Element, Option<Instant>),
    /// An inbound stream whose remote domain the receiver owns.
    Adopt(Box<Handoff>),
    /// A client stream whose user (bare JID) the receiver owns, after SASL.
    AdoptC2s(Box<Handoff<C2sConnection>>),
    /// A presence broadcast: the shared stanza and the recipients the receiver owns
    /// (local bare JIDs, or contacts at remote domains it owns).
    Fanout {
        stanza: SharedStanza,
        to: Vec<Box<str>>,
        read_at: Option<Instant>,
    },
    /// Verify a dialback key with `remote`'s authoritative server (XEP-0220 §2.1.3):
    /// the receiver owns `remote`.
    Verify {
        local: String,
        remote: String,
        stream_id: String,
        key: String,
        reply_shard: usize,
        conn: ConnId,
    },
    /// The authoritative server's answer for a [`ShardMsg::Verify`].
    Verdict {
        conn: ConnId,
        local: String,
        remote: String,
        result: DialbackResult,
    },
    /// An inbound stream from `remote` (owned by the receiver), opened at `opened`, broke
    /// off before it carried a dialback request: see [`Shard::peer_verification_failed`].
    PeerStreamFailed {
        remote: String,
        opened: Instant,
        condition: StanzaCondition,
        what: String,
    },
}

/// A `db:verify` waiting for its answer from the authoritative server.
struct VerifyReq {
    local: String,
    stream_id: String,
    key: String,
    reply_shard: usize,
    conn: ConnId,
    sent: bool,
}

/// Why connecting to a remote domain failed, as the bounce it causes.
#[derive(Debug, Clone)]
struct Failure {
    condition: StanzaCondition,
    text: String,
}

/// Why a stanza for a remote domain is not sent while the shard shuts down: no stream is
/// opened any more (it would outlive the drain) and the open ones are closing. Bounced
/// with `remote-server-timeout` (RFC 6120 §8.3.3.16, type `wait`): the remote server is
/// not known to be unreachable, and the sender may retry once we are back; error stanzas
/// are dropped as ever (§8.3.1).
fn shutdown_failure() -> Failure {
    Failure {
        condition: StanzaCondition::RemoteServerTimeout,
        text: "the server is shutting down".into(),
    }
}

/// Why a stanza for a remote domain was bounced: the `cause` label of the
/// `bounced_by_cause` and `undeliverable_errors` counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BounceCause {
    /// The domain's queue was full (`resource-constraint`).
    QueueFull,
    /// Its stream accepted no byte for `s2s.write_stall_timeout` (`remote-server-timeout`).
    WriteStall,
    /// The domain is backing off after a failure.
    Backoff,
    /// Resolving, connecting or negotiating failed.
    Unreachable,
    /// The remote server did not authenticate us.
    AuthFailed,
    /// The server is shutting down.
    Shutdown,
}

impl BounceCause {
    fn as_str(self) -> &'static str {
        match self {
            BounceCause::QueueFull => "queue_full",
            BounceCause::WriteStall => "write_stall",
            BounceCause::Backoff => "backoff",
            BounceCause::Unreachable => "unreachable",
            BounceCause::AuthFailed => "auth_failed",
            BounceCause::Shutdown => "shutdown",
        }
    }
}

/// A stanza waiting for a remote domain's stream.
pub(super) enum Queued {
    /// A stanza as received or generated; when it was read, if it was.
    Whole(Element, Option<Instant>),
    /// One recipient of a broadcast: the shared body, this recipient's `to`, read time.
    Shared(SharedStanza, Box<str>, Option<Instant>),
}

impl Queued {
    /// A stanza, stamped with the read time of what is being processed.
    pub(super) fn whole(el: Element) -> Queued {
        Queued::Whole(el, super::read_at())
    }

    /// One recipient of a broadcast, stamped likewise.
    pub(super) fn shared(s: SharedStanza, to: Box<str>) -> Queued {
        Queued::Shared(s, to, super::read_at())
    }

    fn read_at(&self) -> Option<Instant> {
        match self {
            Queued::Whole(_, t) | Queued::Shared(_, _, t) => *t,
        }
    }

    fn from(&self) -> Option<&str> {
        match self {
            Queued::Whole(el, _) => el.from(),
            Queued::Shared(s, _, _) => s.from(),
        }
    }

    /// The local domain that sends it (normalised).
    fn local_domain(&self) -> String {
        self.from()
            .map(|f| domain_key(domain_of(f)).into_owned())
            .unwrap_or_default()
    }

    /// Writes it onto an outbound stream.
    fn send(&self, proto: &mut S2sConnection, local: &str, d: &str, now: Instant) -> bool {
        let (ok, kind) = match self {
            Queued::Whole(el, _) => (
                proto.send_stanza(local, d, el.bytes(), now).is_ok(),
                el.name(),
            ),
            Queued::Shared(s, to, _) => {
                thread_local! {
                    // The recipient's ` to='…'`, rewritten per recipient (no allocation).
                    static ATTR: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
                }
                let ok = ATTR.with(|attr| {
                    let mut attr = attr.borrow_mut();
                    attr.clear();
                    write_to_attr(to, &mut attr);
                    proto
                        .send_stanza_parts(local, d, &s.parts(&attr), now)
                        .is_ok()
                });
                (ok, s.element().name())
            }
        };
        if ok {
            count_stanza("s2s_out", kind);
        }
        ok
    }

    /// The stanza as an element (a copy for a shared one): for bounces.
    fn into_element(self) -> Option<Element> {
        match self {
            Queued::Whole(el, _) => Some(el),
            Queued::Shared(s, to, _) => s.to_element(&to).ok(),
        }
    }
}

/// A remote domain owned by this shard.
#[derive(Default)]
struct Remote {
    /// Stanzas waiting for the outbound stream (bounded by `s2s.queue_per_domain`).
    queue: VecDeque<Queued>,
    /// The outbound stream, connecting or open.
    conn: Option<Rc<Conn>>,
    /// A connection attempt (DNS, TCP, direct TLS) is running.
    connecting: bool,
    /// Local domains that asked to send (authenticated or being authenticated).
    locals: Vec<String>,
    /// Consecutive failures (for backoff).
    failures: u32,
    /// No new attempt before this.
    backoff_until: Option<Instant>,
    /// The last failure, bounced to senders while backing off.
    last_failure: Option<Failure>,
    /// Dialback verifications to send / waiting for answers.
    verifies: Vec<VerifyReq>,
    /// Since when the queue has been full (congested: new stanzas are bounced with
    /// `resource-constraint` until it is half empty again).
    congested_since: Option<Instant>,
    /// Stanzas bounced because the queue was full, in this congestion episode.
    congestion_bounces: u64,
    /// Why the remote server's side of our dialback failed, when that was learned on
    /// another stream ([`Shard::peer_verification_failed`]): the bounce and the WARN of
    /// the [`Event::AuthFailed`] it causes say so.
    auth_failure_note: Option<Failure>,
}

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
    /// Messages for other shards produced this turn; the main loop (sole owner of the
    /// inbox mesh end) moves them into the inbox at the end of the turn. Readers pause
    /// while more than [`Shard::outgoing_limit`] wait here (back-pressure).
    outgoing: RefCell<VecDeque<(usize, ShardMsg)>>,
    outgoing_limit: usize,
    /// Wakes readers paused by back-pressure.
    space: Notify,
    /// Wakes the main loop to flush the outbox at the end of this turn.
    flush_wake: Notify,
    flush_scheduled: Cell<bool>,
    control: crossbeam_channel::Receiver<Control>,
    control_wake: Arc<Notify>,
    resolver: S2sResolver,
    conns: RefCell<HashMap<ConnId, Rc<Conn>>>,
    remotes: RefCell<HashMap<String, Remote>>,
    pings: RefCell<HashMap<String, PendingPing>>,
    unauthenticated: Cell<usize>,
    /// Reasons to pause the whole shard: only the store's backlog being full (`local.rs`),
    /// the one resource every user of every shard shares. While non-zero the shard reads
    /// no socket and drains no inbox. A remote domain or client that stops reading never
    /// counts here: its own queue is bounded and bounces instead (DESIGN.md "Ownership").
    pub(super) congested: Cell<usize>,
    next_id: Cell<u64>,
    pub(super) rng: RefCell<SmallRng>,
    /// Local users, their sessions and rosters (`local.rs`).
    pub(super) local: Local,
    shutting_down: Cell<bool>,
    listeners: RefCell<Vec<Rc<TcpListener>>>,
    /// Signalled whenever a connection ends (shutdown waits on it).
    conn_ended: Notify,
    /// The shard's span (`shard{id=N}`): the parent of every stream span this shard
    /// creates, whichever stream's task creates it.
    span: tracing::Span,
    /// Stanzas for remote servers bounced because the shard was shutting down.
    shutdown_bounced: Cell<usize>,
}

/// Where the read loop goes after handling a read.
pub(super) enum After {
    /// Keep reading.
    Continue,
    /// Move the connection to this shard.
    HandOff(usize),
}

/// How a write of a stream's bytes ended.
enum WriteEnd {
    /// The socket accepted every byte.
    Done,
    /// The socket failed (reset, closed).
    Failed,
    /// The socket accepted no byte for the write-stall timeout; the stream is closed.
    Stalled,
}

/// How the shard drives the connections of one protocol (S2S, C2S): the parts of the read
/// loop, the writer and the hand-off that differ.
pub(super) trait Driven: Proto + Sized + 'static {
    /// The `proto` label of its metrics.
    const PROTO: &'static str;
    /// Acts on the connection's events; `may_hand_off`: the caller is the read loop and
    /// can move the connection to another shard.
    fn on_events(shard: &Shard, conn: &Rc<Conn<Self>>, may_hand_off: bool) -> After;
    /// Bookkeeping when the connection ends (called once).
    fn ended(shard: &Shard, conn: &Rc<Conn<Self>>, reason: &CloseReason);
    /// The writer moved bytes to the socket: there is room in the stream again.
    fn written(_shard: &Shard, _conn: &Rc<Conn<Self>>) {}
    /// How long the socket may accept no byte while some wait (`*.write_stall_timeout`).
    fn write_stall_timeout(shard: &Shard) -> Duration;
    /// The socket accepted no byte for the write-stall timeout: the stream is closed
    /// (marked so, socket shut down); bounce or re-route what waited for it and do the
    /// bookkeeping of [`Driven::ended`].
    fn write_stalled(shard: &Shard, conn: &Rc<Conn<Self>>);
    /// The shard's table of these connections.
    fn conns(shard: &Shard) -> &RefCell<HashMap<ConnId, Rc<Conn<Self>>>>;
    /// The message that hands the connection to another shard.
    fn adopt_msg(h: Handoff<Self>) -> ShardMsg;
}

impl Driven for S2sConnection {
    const PROTO: &'static str = "s2s";
    fn on_events(shard: &Shard, conn: &Rc<Conn<Self>>, may_hand_off: bool) -> After {
        shard.on_events(conn, may_hand_off)
    }
    fn ended(shard: &Shard, conn: &Rc<Conn<Self>>, reason: &CloseReason) {
        shard.connection_ended(conn, reason)
    }
    fn write_stall_timeout(shard: &Shard) -> Duration {
        shard.shared().config.s2s.write_stall_timeout
    }
    fn write_stalled(shard: &Shard, conn: &Rc<Conn<Self>>) {
        shard.s2s_write_stalled(conn)
    }
    fn written(shard: &Shard, conn: &Rc<Conn<Self>>) {
        if conn.direction == Direction::Outbound {
            let d = domain_key(conn.st.borrow().proto.remote_domain()).into_owned();
            shard.drain_queue(conn, &d);
        }
    }
    fn conns(shard: &Shard) -> &RefCell<HashMap<ConnId, Rc<Conn<Self>>>> {
        &shard.conns
    }
    fn adopt_msg(h: Handoff<Self>) -> ShardMsg {
        ShardMsg::Adopt(Box::new(h))
    }
}

impl Shard {
    pub(crate) fn new(
        id: usize,
        shared: Arc<Shared>,
        control: crossbeam_channel::Receiver<Control>,
        control_wake: Arc<Notify>,
        resolver: S2sResolver,
        span: tracing::Span,
    ) -> Self {
        Shard {
            id,
            n: shared.shards,
            outgoing: RefCell::new(VecDeque::new()),
            outgoing_limit: shared.config.inbox.batch.max(16),
            shared: RefCell::new(shared),
            space: Notify::new(),
            flush_wake: Notify::new(),
            flush_scheduled: Cell::new(false),
            control,
            control_wake,
            resolver,
            conns: RefCell::new(HashMap::new()),
            remotes: RefCell::new(HashMap::new()),
            pings: RefCell::new(HashMap::new()),
            unauthenticated: Cell::new(0),
            congested: Cell::new(0),
            next_id: Cell::new(1),
            rng: RefCell::new(SmallRng::from_os_rng()),
            local: Local::new(),
            shutting_down: Cell::new(false),
            listeners: RefCell::new(Vec::new()),
            conn_ended: Notify::new(),
            span,
            shutdown_bounced: Cell::new(0),
        }
    }

    /// The current configuration. Never held across an `.await` (a reload replaces it):
    /// async code clones the `Arc`.
    pub(super) fn shared(&self) -> std::cell::Ref<'_, Arc<Shared>> {
        self.shared.borrow()
    }

    /// Switches to a reloaded configuration (certificates, federation policy): new
    /// streams use it, open ones keep theirs.
    fn reload(&self, shared: Arc<Shared>) {
        *self.shared.borrow_mut() = shared;
        info!(shard = self.id, "configuration reloaded");
    }

    pub(super) fn next_conn_id(&self) -> ConnId {
        let n = self.next_id.get();
        self.next_id.set(n + 1);
        ((self.id as u64) << 48) | n
    }

    // ----- main loop -----

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
            let me = Rc::clone(&self);
            tokio_uring::spawn(async move { me.accept_loop(kind, l).await });
        }
        let mut batch: Vec<ShardMsg> = Vec::new();
        let mut busy = false;
        // Bounded: one iteration per wake-up; ends on shutdown.
        loop {
            if busy {
                // After a turn with cross-shard traffic, poll the inbox for a short while
                // (yielding to the sockets) before sleeping: a wake-up from another thread
                // costs 5-10 us at p50 on this VM, which alone breaks the p99 < 20 us
                // hand-off target at 1M stanzas/s (benches/inbox.rs, "spins 50 us").
                let until = Instant::now() + SPIN_BEFORE_SLEEP;
                while Instant::now() < until && !inbox.has_waiting() && !self.flush_scheduled.get()
                {
                    tokio::task::yield_now().await;
                }
            }
            let blocked = !self.outgoing.borrow().is_empty();
            tokio::select! {
                _ = inbox.wait(), if self.can_take_work() => {}
                _ = self.local.store_wake.notified() => {}
                _ = self.control_wake.notified() => {}
                _ = self.flush_wake.notified() => {}
                _ = inbox.wait_space(), if blocked => {}
            }
            // The heartbeat `/health` reports (liveness itself is judged by answering
            // `Control::Health`: an idle shard sleeps in the `select!` above).
            health.turn(self.id);
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
                    Control::Reload(shared) => self.reload(shared),
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
                if !self.can_take_work() {
                    break;
                }
                batch.clear();
                let got = inbox.drain(&mut batch, 1);
                busy |= got > 0;
                for msg in batch.drain(..) {
                    self.handle_msg(msg);
                }
                if got == 0 {
                    break;
                }
                if i % 64 == 63 {
                    self.flush(&mut inbox);
                    tokio::task::yield_now().await;
                }
            }
            self.flush(&mut inbox);
        }
        self.finish_shutdown(&mut inbox, &mut batch).await;
    }

    /// Ends a turn: moves this turn's cross-shard messages into the inbox (batched per
    /// destination) and sends the batches; what does not fit stays in `outgoing`.
    fn flush(&self, inbox: &mut ShardInbox<ShardMsg>) {
        self.flush_scheduled.set(false);
        let mut out = self.outgoing.borrow_mut();
        while let Some((dst, msg)) = out.pop_front() {
            if let Err(msg) = inbox.push(dst, msg) {
                out.push_front((dst, msg));
                break;
            }
        }
        inbox.flush();
        if out.len() <= self.outgoing_limit && self.congested.get() == 0 {
            self.space.notify_waiters();
        }
    }

    /// Counts one more reason to pause reads and inbox drains (back-pressure).
    pub(super) fn congest(&self) {
        self.congested.set(self.congested.get() + 1);
    }

    /// One reason to pause is gone; when none is left, paused readers and the inbox
    /// drain resume.
    pub(super) fn decongest(&self) {
        self.congested.set(self.congested.get().saturating_sub(1));
        if self.congested.get() == 0 {
            self.space.notify_waiters();
            self.flush_wake.notify_one();
        }
    }

    fn schedule_flush(&self) {
        if !self.flush_scheduled.replace(true) {
            self.flush_wake.notify_one();
        }
    }

    /// Whether this shard may take more work from its inbox: not while one of its send
    /// queues is full. (Not gated on `outgoing`: two shards each waiting for room in the
    /// other's inbox would deadlock. `outgoing` is bounded instead by the readers, the only
    /// sources of new work, pausing while it is over its limit.)
    fn can_take_work(&self) -> bool {
        self.congested.get() == 0
    }

    /// Sends `msg` to shard `dst` (batched until the end of the turn).
    pub(super) fn send_to(&self, dst: usize, msg: ShardMsg) {
        self.outgoing.borrow_mut().push_back((dst, msg));
        self.schedule_flush();
    }

    /// Readers call this before each read: while too many cross-shard messages wait for
    /// room in the inbox, sockets are not read (TCP back-pressure instead of unbounded
    /// queues).
    async fn wait_for_room(&self, proto: &'static str) {
        let mut paused: Option<Instant> = None;
        for _ in 0..100_000 {
            let room =
                self.outgoing.borrow().len() <= self.outgoing_limit && self.congested.get() == 0;
            if room || self.shutting_down.get() {
                break;
            }
            paused.get_or_insert_with(Instant::now);
            let notified = self.space.notified();
            if self.congested.get() == 0 {
                // Waiting for inbox room: the main loop's flush makes progress.
                self.schedule_flush();
            }
            // Else waiting for the store's backlog to drain: `decongest` wakes us.
            notified.await;
        }
        if let Some(t) = paused {
            let ms = t.elapsed().as_millis() as u64;
            super::metrics(|m| m.count("reads_paused_ms", &[("proto", proto)], ms));
        }
    }

    fn handle_msg(&self, msg: ShardMsg) {
        match msg {
            ShardMsg::Route(el, t) => {
                if let Some(t) = t {
                    super::metrics(|m| m.observe(Latency::Handoff, t.elapsed()));
                }
                let before = super::set_read_at(t);
                self.route(el);
                super::set_read_at(before);
            }
            ShardMsg::Adopt(h) => self.adopt(*h),
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
            ShardMsg::Verify {
                local,
                remote,
                stream_id,
                key,
                reply_shard,
                conn,
            } => self.verify_with_authoritative(local, remote, stream_id, key, reply_shard, conn),
            ShardMsg::Verdict {
                conn,
                local,
                remote,
                result,
            } => self.apply_verdict(conn, &local, &remote, result),
            ShardMsg::PeerStreamFailed {
                remote,
                opened,
                condition,
                what,
            } => self.peer_verification_failed(
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

    /// Routes a stanza to its owner: a local bare JID's shard, or a remote domain's.
    pub(super) fn route(&self, el: Element) {
        enum Dst {
            Local(usize),
            Remote(usize, String),
        }
        let dst = {
            let Some(to) = el.to() else {
                debug!("dropping a stanza without 'to' (checked by the stream layer)");
                return;
            };
            let domain = domain_of(to);
            if self.shared().s2s.hosts(domain) {
                Dst::Local(shard_of(&bare_key(to), self.n))
            } else {
                let d = domain_key(domain).into_owned();
                Dst::Remote(shard_of(&d, self.n), d)
            }
        };
        match dst {
            Dst::Local(s) if s == self.id => self.deliver_local(el),
            Dst::Remote(s, d) if s == self.id => self.send_remote(&d, Queued::whole(el)),
            Dst::Local(s) | Dst::Remote(s, _) => {
                self.send_to(s, ShardMsg::Route(el, super::read_at()))
            }
        }
    }

    /// A stanza for a local JID this shard owns: the server's own entity answers what is
    /// addressed to a domain; users get theirs (`local.rs`).
    fn deliver_local(&self, el: Element) {
        match self.local.deliver_local_stanza(self, el) {
            Some(Answer::Reply(bytes)) => self.route_generated(&bytes),
            Some(Answer::Response { id, error }) => self.finish_ping(&id, error),
            Some(Answer::Ignore) | None => {}
        }
    }

    /// Routes a stanza we generated (a reply or a bounce).
    pub(super) fn route_generated(&self, bytes: &[u8]) {
        match parse_stanza(bytes) {
            Ok(el) => self.route(el),
            Err(e) => warn!(error = %e, "generated stanza does not frame; not sent"),
        }
    }

    /// Bounces a queued stanza for `cause` (counted in `bounced_by_cause`); an error
    /// stanza, which is never bounced (RFC 6120 §8.3.1), is logged and counted in
    /// `undeliverable_errors` instead.
    fn bounce_queued_for(
        &self,
        el: Queued,
        condition: StanzaCondition,
        text: &str,
        cause: BounceCause,
    ) {
        let Some(el) = el.into_element() else { return };
        if is_error(&el) {
            super::metrics(|m| m.count("undeliverable_errors", &[("cause", cause.as_str())], 1));
            debug!(to = el.to(), %condition, "dropping an error stanza that cannot be delivered");
            return;
        }
        if StanzaKind::of(&el).is_some() {
            super::metrics(|m| m.count("bounced_by_cause", &[("cause", cause.as_str())], 1));
        }
        self.bounce(&el, condition, text);
    }

    /// Bounces `el` to its sender with `condition` (RFC 6120 §8.3.3); error stanzas are
    /// never bounced (§8.3.1).
    pub(super) fn bounce(&self, el: &Element, condition: StanzaCondition, text: &str) {
        if is_error(el) || StanzaKind::of(el).is_none() {
            return;
        }
        super::metrics(|m| m.count("bounces", &[("condition", condition.as_str())], 1));
        let by = el.from().map(domain_of);
        let mut out = Vec::with_capacity(256);
        write_error_reply(el, condition, Some(text), by, &mut out);
        self.route_generated(&out);
    }

    // ----- remote domains (owned here) -----

    /// Sends a stanza to remote domain `d` (owned by this shard) over its outbound
    /// stream, queueing it while the stream is being set up.
    pub(super) fn send_remote(&self, d: &str, el: Queued) {
        let Some(from) = el.from() else {
            return;
        };
        let local = domain_key(domain_of(from)).into_owned();
        if !self.shared().s2s.hosts(&local) {
            // Only our own users and our server originate stanzas to remote domains.
            debug!(from, "not sending a stanza from a domain we do not host");
            return;
        }
        if self.shutting_down.get() {
            // Every stream of this shard is closed or closing by now, and none is opened
            // any more: nothing can carry it.
            debug!(
                remote = %d,
                "shutting down: not connecting to the remote server; stanza bounced"
            );
            self.shutdown_bounced.set(self.shutdown_bounced.get() + 1);
            let f = shutdown_failure();
            return self.bounce_queued_for(el, f.condition, &f.text, BounceCause::Shutdown);
        }
        let now = Instant::now();
        let mut remotes = self.remotes.borrow_mut();
        if !remotes.contains_key(d) {
            remotes.insert(d.to_owned(), Remote::default());
        }
        let r = remotes.get_mut(d).expect("inserted above");
        if let Some(until) = r.backoff_until {
            if now < until && r.conn.is_none() {
                let f = r.last_failure.clone().unwrap_or(Failure {
                    condition: StanzaCondition::RemoteServerNotFound,
                    text: "remote server unreachable".into(),
                });
                drop(remotes);
                return self.bounce_queued_for(
                    el,
                    f.condition,
                    &format!("{} (backing off)", f.text),
                    BounceCause::Backoff,
                );
            }
        }
        if let Some(conn) = r.conn.clone() {
            let ready = {
                let st = conn.st.borrow();
                !st.closed && st.proto.is_authenticated(&local, d)
            };
            if ready
                && r.queue.is_empty()
                && conn.backlog() < self.shared().config.s2s.send_queue_bytes
            {
                let mut st = conn.st.borrow_mut();
                if el.send(&mut st.proto, &local, d, now) {
                    st.pump();
                    st.mark(el.read_at());
                    st.track(el);
                    drop(st);
                    conn.wake.notify_one();
                    return;
                }
            }
        }
        // Congestion stays with its destination (DESIGN.md "Ownership"): a full queue
        // bounces what comes next for this domain, and nothing else waits.
        let cap = self.shared().config.s2s.queue_per_domain;
        if r.queue.len() >= cap {
            r.congestion_bounces += 1;
            if r.congested_since.is_none() {
                r.congested_since = Some(now);
                r.congestion_bounces = 1;
                let pending = r.conn.as_ref().map_or(0, |c| c.backlog());
                warn!(
                    parent: &self.span,
                    remote = %d,
                    queue = r.queue.len(),
                    stream = if r.conn.is_some() { "open" } else { "connecting" },
                    pending_bytes = pending,
                    "remote server congested: its queue is full; new stanzas for it are bounced (resource-constraint)"
                );
            }
            drop(remotes);
            return self.bounce_queued_for(
                el,
                StanzaCondition::ResourceConstraint,
                "too many stanzas waiting for this remote server",
                BounceCause::QueueFull,
            );
        }
        r.queue.push_back(el);
        drop(remotes);
        self.ensure_outbound(d, &local);
    }

    /// Makes sure an outbound stream to `d` exists and `local` is (being) authenticated
    /// on it; starts a connection attempt if none runs.
    fn ensure_outbound(self: &Shard, d: &str, local: &str) {
        let mut remotes = self.remotes.borrow_mut();
        let r = remotes.entry(d.to_owned()).or_default();
        if !r.locals.iter().any(|l| l == local) {
            r.locals.push(local.to_owned());
            if let Some(conn) = &r.conn {
                let mut st = conn.st.borrow_mut();
                let _ = st.proto.request_dialback(local, Instant::now());
                st.pump();
                drop(st);
                conn.wake.notify_one();
            }
        }
        if r.conn.is_none() && !r.connecting {
            if self.shutting_down.get() {
                drop(remotes);
                return self.refuse_during_shutdown(d);
            }
            r.connecting = true;
            let first = r
                .locals
                .first()
                .cloned()
                .unwrap_or_else(|| local.to_owned());
            drop(remotes);
            let me = self.rc();
            let d = d.to_owned();
            // A child of the shard's span, not of the stream whose task asks for it.
            let span = info_span!(parent: &self.span, "s2s", dir = "out", peer = %d, id = tracing::field::Empty);
            tokio_uring::spawn(async move { me.connect(d, first).await }.instrument(span));
        }
    }

    /// The shard is shutting down and `d` has no stream: no connection is opened; what
    /// waits for `d` is bounced ([`shutdown_failure`]) and its pending dialback
    /// verifications are answered with an error.
    fn refuse_during_shutdown(&self, d: &str) {
        let n = self.remotes.borrow().get(d).map_or(0, |r| r.queue.len());
        self.shutdown_bounced.set(self.shutdown_bounced.get() + n);
        info!(
            parent: &self.span,
            remote = d,
            stanzas = n,
            "shutting down: not connecting to the remote server; bouncing what waits for it"
        );
        self.remote_failed(d, shutdown_failure(), BounceCause::Shutdown);
    }

    /// The `Rc` of this shard (stored in a thread-local by the runtime).
    fn rc(&self) -> Rc<Shard> {
        CURRENT.with(|c| c.borrow().clone().expect("shard context"))
    }

    /// Resolves `d`, connects to its targets in order and starts the outbound stream.
    async fn connect(self: Rc<Self>, d: String, local: String) {
        let started = Instant::now();
        let opened = self.open_socket(&local, &d).await;
        if self.shutting_down.get() {
            // The shutdown began while connecting: the stream would outlive the drain.
            if let Ok((stream, _, _)) = &opened {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
            return self.refuse_during_shutdown(&d);
        }
        match opened {
            Ok((stream, target, tls)) => {
                debug!(target = %target.host, port = target.port, ms = started.elapsed().as_millis() as u64, "connected");
                let now = Instant::now();
                let proto = S2sConnection::outbound(
                    Arc::clone(&self.shared().s2s),
                    &local,
                    &d,
                    tls.is_some(),
                    now,
                );
                let mut st = ConnState::new(proto, tls);
                st.collect_events();
                st.pump();
                let conn = Rc::new(Conn::new(
                    self.next_conn_id(),
                    stream,
                    st,
                    tracing::Span::current(),
                ));
                let others: Vec<String> = {
                    let mut remotes = self.remotes.borrow_mut();
                    let r = remotes.entry(d.clone()).or_default();
                    r.connecting = false;
                    r.conn = Some(Rc::clone(&conn));
                    r.locals.iter().filter(|l| **l != local).cloned().collect()
                };
                {
                    let mut st = conn.st.borrow_mut();
                    for l in &others {
                        let _ = st.proto.request_dialback(l, now);
                    }
                }
                self.send_pending_verifies(&d);
                self.conns.borrow_mut().insert(conn.id, Rc::clone(&conn));
                self.spawn_conn(conn);
            }
            Err(f) => {
                info!(condition = %f.condition, reason = %f.text, "remote server unreachable");
                self.remote_failed(&d, f, BounceCause::Unreachable);
            }
        }
    }

    /// DNS SRV (RFC 6120 §3.2, XEP-0368), then each target's addresses in turn with the
    /// connect timeout; direct TLS targets get their TLS handshake here.
    async fn open_socket(
        &self,
        local: &str,
        d: &str,
    ) -> Result<(TcpStream, Target, Option<Tls>), Failure> {
        let connect_timeout = self.shared().config.s2s.connect_timeout;
        let not_found = |text: String| Failure {
            condition: StanzaCondition::RemoteServerNotFound,
            text,
        };
        let dns_failure = |e: DnsError| Failure {
            condition: if e.is_timeout() {
                StanzaCondition::RemoteServerTimeout
            } else {
                StanzaCondition::RemoteServerNotFound
            },
            text: format!("DNS: {e}"),
        };
        let resolution = {
            let mut rng = SmallRng::from_rng(&mut *self.rng.borrow_mut());
            let t0 = Instant::now();
            let r = self.resolver.resolve_srv(d, &mut rng).await;
            super::metrics(|m| m.observe(Latency::Dns, t0.elapsed()));
            r
        };
        let targets = match resolution.map_err(dns_failure)? {
            Resolution::Targets(t) => t,
            Resolution::Fallback => vec![Target {
                host: d.to_owned(),
                port: 5269,
                direct_tls: false,
            }],
            Resolution::NoService => {
                return Err(not_found(format!(
                    "{d} publishes no XMPP server service (SRV '.')"
                )))
            }
        };
        let mut last = not_found(format!("no address for {d}"));
        for target in targets.into_iter().take(16) {
            let addrs = match self.resolver.resolve_host(&target.host).await {
                Ok(a) => a,
                Err(e) => {
                    last = dns_failure(e);
                    continue;
                }
            };
            for ip in addrs.into_iter().take(8) {
                let addr = SocketAddr::new(ip, target.port);
                // A connect that times out is abandoned with its socket: nothing else
                // reads from it, so the dropped operation loses nothing.
                let t0 = Instant::now();
                let attempt = tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await;
                let stream = match attempt {
                    Ok(Ok(s)) => {
                        super::metrics(|m| m.observe(Latency::Connect, t0.elapsed()));
                        s
                    }
                    Ok(Err(e)) => {
                        last = not_found(format!("connecting to {addr}: {e}"));
                        continue;
                    }
                    Err(_) => {
                        last = Failure {
                            condition: StanzaCondition::RemoteServerTimeout,
                            text: format!("connecting to {addr} timed out"),
                        };
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                if !target.direct_tls {
                    return Ok((stream, target, None));
                }
                match self.client_handshake(&stream, local, d).await {
                    Ok(tls) => return Ok((stream, target, Some(tls))),
                    Err(text) => {
                        last = not_found(format!("direct TLS to {addr}: {text}"));
                        let _ = stream.shutdown(std::net::Shutdown::Both);
                    }
                }
            }
        }
        Err(last)
    }

    /// A XEP-0368 direct TLS handshake as client, before any XMPP byte. Bounded by the
    /// negotiation timeout; on failure the socket is abandoned (so a read dropped by the
    /// timeout loses nothing we need).
    async fn client_handshake(
        &self,
        stream: &TcpStream,
        local: &str,
        d: &str,
    ) -> Result<Tls, String> {
        let cfg = self
            .shared()
            .client_tls(local, d, true)
            .ok_or("no trust anchors to verify the server's certificate (tls.trust)")?;
        let name = crate::tls::server_name(d).map_err(|e| e.to_string())?;
        let mut tls = rustls::ClientConnection::new(cfg, name).map_err(|e| e.to_string())?;
        let fut = handshake(stream, &mut tls);
        let limit = self.shared().config.s2s.negotiation_timeout;
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(())) => Ok(Tls::Client(tls)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("handshake timed out".into()),
        }
    }

    /// Connecting to `d` failed: bounce what waits, answer waiting verifications, back
    /// off exponentially with jitter.
    fn remote_failed(&self, d: &str, f: Failure, cause: BounceCause) {
        let cfg = &self.shared().config.s2s;
        let (queue, verifies) = {
            let mut remotes = self.remotes.borrow_mut();
            let r = remotes.entry(d.to_owned()).or_default();
            r.connecting = false;
            r.conn = None;
            r.locals.clear();
            r.failures = r.failures.saturating_add(1);
            let exp = cfg
                .backoff_initial
                .saturating_mul(1u32 << (r.failures - 1).min(16))
                .min(cfg.backoff_max);
            // Full jitter on the upper half: [exp/2, exp].
            let jitter = self.rng.borrow_mut().random_range(0.5..=1.0);
            r.backoff_until = Some(Instant::now() + exp.mul_f64(jitter));
            r.last_failure = Some(f.clone());
            if let Some(since) = r.congested_since.take() {
                warn!(
                    parent: &self.span,
                    remote = %d,
                    congested_ms = since.elapsed().as_millis() as u64,
                    bounced = r.congestion_bounces,
                    "remote server congestion ended: its stream failed"
                );
            }
            (
                std::mem::take(&mut r.queue),
                std::mem::take(&mut r.verifies),
            )
        };
        for el in queue {
            self.bounce_queued_for(el, f.condition, &f.text, cause);
        }
        let cond = DialbackErrorCondition::from_stanza_condition(f.condition);
        for v in verifies {
            self.send_verdict(
                v.reply_shard,
                v.conn,
                v.local,
                d.to_owned(),
                DialbackResult::Error(cond),
            );
        }
    }

    /// An outbound stream authenticated `local` → `d`: send what waited.
    fn outbound_ready(&self, conn: &Conn, _local: &str, d: &str) {
        {
            let mut remotes = self.remotes.borrow_mut();
            let Some(r) = remotes.get_mut(d) else { return };
            r.failures = 0;
            r.backoff_until = None;
            r.last_failure = None;
        }
        self.drain_queue(conn, d);
    }

    /// Moves queued stanzas for `d` whose local domain is authenticated on `conn` into
    /// the stream, in order, while the stream's backlog is under `s2s.send_queue_bytes`.
    fn drain_queue(&self, conn: &Conn, d: &str) {
        let limit = self.shared().config.s2s.send_queue_bytes;
        self.drain_queue_within(conn, d, limit);
    }

    /// [`Shard::drain_queue`] while the stream's backlog is under `limit` bytes.
    fn drain_queue_within(&self, conn: &Conn, d: &str, limit: usize) {
        let now = Instant::now();
        let mut remotes = self.remotes.borrow_mut();
        let Some(r) = remotes.get_mut(d) else { return };
        if r.queue.is_empty() || r.conn.as_ref().is_none_or(|c| c.id != conn.id) {
            return;
        }
        let mut st = conn.st.borrow_mut();
        if st.closed {
            return;
        }
        let mut keep = VecDeque::new();
        while let Some(el) = r.queue.pop_front() {
            if st.backlog() >= limit {
                keep.push_back(el);
                keep.extend(r.queue.drain(..));
                break;
            }
            let local = el.local_domain();
            if !st.proto.is_authenticated(&local, d) || !el.send(&mut st.proto, &local, d, now) {
                keep.push_back(el);
            } else {
                // One pump per stanza: its bytes' end in the stream is then exact
                // (what a write stall leaves unsent is known stanza by stanza).
                st.pump();
                st.mark(el.read_at());
                st.track(el);
            }
        }
        r.queue = keep;
        if r.queue.len() <= self.shared().config.s2s.queue_per_domain / 2 {
            if let Some(since) = r.congested_since.take() {
                warn!(
                    parent: &self.span,
                    remote = %d,
                    queue = r.queue.len(),
                    congested_ms = since.elapsed().as_millis() as u64,
                    bounced = r.congestion_bounces,
                    "remote server recovered: its queue has room again"
                );
            }
        }
        drop(st);
        conn.wake.notify_one();
    }

    /// The outbound stream `conn` could not authenticate `local` → `d` (XEP-0220 §2.1.1):
    /// the stanzas waiting for that pair are bounced at once, with the RFC 6120 §8.3.3
    /// condition that says whether retrying can help ([`DialbackResult::bounce_condition`]
    /// for an answer, [`CloseReason::bounce_condition`] when the stream ended, or what
    /// [`Shard::peer_verification_failed`] found), and a WARN names the remote domain and
    /// what its server did. A stream left with nothing to carry (no authenticated pair,
    /// no answer awaited) is closed and the domain backs off ([`Shard::remote_failed`]),
    /// rather than a new dialback being tried for every stanza.
    fn outbound_auth_failed(&self, conn: &Conn, d: &str, local: &str, result: DialbackResult) {
        let (ended, idle) = {
            let st = conn.st.borrow();
            let idle =
                st.proto.authenticated().next().is_none() && !st.proto.awaits_dialback_answers();
            (st.proto.close_reason().cloned(), idle)
        };
        let (bounced, note, current): (Vec<Queued>, Option<Failure>, bool) = {
            let mut remotes = self.remotes.borrow_mut();
            let Some(r) = remotes.get_mut(d) else { return };
            r.locals.retain(|l| l != local);
            let (out, keep): (VecDeque<Queued>, VecDeque<Queued>) =
                r.queue.drain(..).partition(|el| el.local_domain() == local);
            r.queue = keep;
            let current = r.conn.as_ref().is_some_and(|c| c.id == conn.id);
            (
                out.into_iter().collect(),
                r.auth_failure_note.clone(),
                current,
            )
        };
        let f = note.unwrap_or_else(|| match &ended {
            Some(reason) => Failure {
                condition: reason.bounce_condition(),
                text: describe_outbound_end(reason),
            },
            None => Failure {
                condition: result
                    .bounce_condition()
                    .unwrap_or(StanzaCondition::RemoteServerNotFound),
                text: describe_dialback_answer(result),
            },
        });
        warn!(
            parent: &conn.span,
            remote = %d,
            %local,
            condition = %f.condition,
            bounced = bounced.len(),
            "the remote server did not authenticate us: {}; what waited for it is bounced",
            f.text
        );
        let text = format!("{d} did not authenticate {local}: {}", f.text);
        for el in bounced {
            self.bounce_queued_for(el, f.condition, &text, BounceCause::AuthFailed);
        }
        if idle && current {
            if ended.is_none() {
                let mut st = conn.st.borrow_mut();
                st.proto.close(None, Instant::now());
                st.pump();
                drop(st);
                conn.wake.notify_one();
            }
            self.remote_failed(
                d,
                Failure {
                    condition: f.condition,
                    text,
                },
                BounceCause::AuthFailed,
            );
        }
    }

    /// The outbound stream to `d` ended.
    fn outbound_closed(&self, conn: &Conn, d: &str, reason: &CloseReason, authenticated: bool) {
        let is_current = {
            let remotes = self.remotes.borrow();
            remotes
                .get(d)
                .and_then(|r| r.conn.as_ref())
                .is_some_and(|c| c.id == conn.id)
        };
        if !is_current {
            return;
        }
        if authenticated {
            // An established stream closed (idle, peer restart): reconnect on demand.
            // What never reached the socket goes out first on the next stream, in order.
            let unsent = conn.st.borrow_mut().take_unsent();
            let (has_queue, local) = {
                let mut remotes = self.remotes.borrow_mut();
                let r = remotes.get_mut(d).expect("checked");
                r.conn = None;
                r.locals.clear();
                for q in unsent.into_iter().rev() {
                    r.queue.push_front(q);
                }
                let local = r.queue.front().map(Queued::local_domain);
                (!r.queue.is_empty() || !r.verifies.is_empty(), local)
            };
            if has_queue {
                let local = local.unwrap_or_else(|| self.shared().config.domains[0].clone());
                self.ensure_outbound(d, &local);
            }
            return;
        }
        if self.shutting_down.get() {
            // Closed by the shutdown (or failing during it): no new attempt.
            return self.refuse_during_shutdown(d);
        }
        let what = describe_outbound_end(reason);
        let f = Failure {
            condition: reason.bounce_condition(),
            text: format!("stream negotiation failed: {what}"),
        };
        let waiting = self.remotes.borrow().get(d).map_or(0, |r| r.queue.len());
        if waiting > 0 {
            warn!(
                parent: &conn.span,
                remote = %d,
                condition = %f.condition,
                bounced = waiting,
                "the stream to the remote server ended before it authenticated us: {what}; what waited for it is bounced"
            );
        }
        self.remote_failed(d, f, BounceCause::Unreachable);
    }

    // ----- dialback verification (XEP-0220 §2.1.3) -----

    /// On shard(remote): asks `remote`'s authoritative server about `key` over the
    /// outbound stream (opened if needed).
    fn verify_with_authoritative(
        &self,
        local: String,
        remote: String,
        stream_id: String,
        key: String,
        reply_shard: usize,
        conn: ConnId,
    ) {
        let backoff = {
            let mut remotes = self.remotes.borrow_mut();
            let r = remotes.entry(remote.clone()).or_default();
            let now = Instant::now();
            if r.conn.is_none() && r.backoff_until.is_some_and(|u| now < u) {
                r.last_failure.clone()
            } else {
                r.verifies.push(VerifyReq {
                    local: local.clone(),
                    stream_id,
                    key,
                    reply_shard,
                    conn,
                    sent: false,
                });
                None
            }
        };
        if let Some(f) = backoff {
            let cond = DialbackErrorCondition::from_stanza_condition(f.condition);
            return self.send_verdict(
                reply_shard,
                conn,
                local,
                remote,
                DialbackResult::Error(cond),
            );
        }
        let has_conn = self
            .remotes
            .borrow()
            .get(&remote)
            .is_some_and(|r| r.conn.is_some());
        if has_conn {
            self.send_pending_verifies(&remote);
        } else {
            self.ensure_outbound(&remote, &local);
        }
    }

    fn send_pending_verifies(&self, d: &str) {
        let now = Instant::now();
        let mut remotes = self.remotes.borrow_mut();
        let Some(r) = remotes.get_mut(d) else { return };
        let Some(conn) = r.conn.clone() else { return };
        let mut st = conn.st.borrow_mut();
        for v in r.verifies.iter_mut().filter(|v| !v.sent) {
            if st
                .proto
                .send_db_verify(&v.local, &v.stream_id, &v.key, now)
                .is_ok()
            {
                v.sent = true;
            }
        }
        st.pump();
        drop(st);
        conn.wake.notify_one();
    }

    fn verify_answered(&self, d: &str, local: &str, stream_id: &str, result: DialbackResult) {
        let reqs: Vec<VerifyReq> = {
            let mut remotes = self.remotes.borrow_mut();
            let Some(r) = remotes.get_mut(d) else { return };
            let (done, keep) = r
                .verifies
                .drain(..)
                .partition(|v| v.sent && v.local == local && v.stream_id == stream_id);
            r.verifies = keep;
            done
        };
        for v in reqs {
            self.send_verdict(v.reply_shard, v.conn, v.local, d.to_owned(), result);
        }
    }

    fn send_verdict(
        &self,
        shard: usize,
        conn: ConnId,
        local: String,
        remote: String,
        result: DialbackResult,
    ) {
        if shard == self.id {
            self.apply_verdict(conn, &local, &remote, result);
        } else {
            self.send_to(
                shard,
                ShardMsg::Verdict {
                    conn,
                    local,
                    remote,
                    result,
                },
            );
        }
    }

    fn apply_verdict(&self, conn: ConnId, local: &str, remote: &str, result: DialbackResult) {
        let Some(c) = self.conns.borrow().get(&conn).cloned() else {
            return;
        };
        {
            let mut st = c.st.borrow_mut();
            st.proto
                .handle_dialback_verdict(local, remote, result, Instant::now());
            st.collect_events();
        }
        self.on_events(&c, false);
        c.st.borrow_mut().pump();
        c.wake.notify_one();
    }

    // ----- connections -----

    async fn accept_loop(self: Rc<Self>, kind: ListenerKind, l: Rc<TcpListener>) {
        loop {
            let (stream, peer) = match l.accept().await {
                Ok(x) => x,
                Err(e) => {
                    if self.shutting_down.get() {
                        return;
                    }
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if self.shutting_down.get() {
                let _ = stream.shutdown(std::net::Shutdown::Both);
                return;
            }
            let _ = stream.set_nodelay(true);
            match kind {
                ListenerKind::C2s => self.local.accept_c2s(&self, stream, peer),
                ListenerKind::S2s | ListenerKind::S2sDirectTls => {
                    if self.unauthenticated.get()
                        >= self.shared().config.s2s.max_unauthenticated_per_shard
                    {
                        debug!(%peer, "too many unauthenticated connections; refusing");
                        let _ = stream.shutdown(std::net::Shutdown::Both);
                        continue;
                    }
                    self.unauthenticated.set(self.unauthenticated.get() + 1);
                    let me = Rc::clone(&self);
                    let direct = kind == ListenerKind::S2sDirectTls;
                    let span = info_span!(parent: &self.span, "s2s", dir = "in", %peer, peer_domain = tracing::field::Empty, id = tracing::field::Empty);
                    tokio_uring::spawn(
                        async move { me.inbound(stream, direct).await }.instrument(span),
                    );
                }
            }
        }
    }

    async fn inbound(self: Rc<Self>, stream: TcpStream, direct_tls: bool) {
        let now = Instant::now();
        let header_timeout = self.shared().config.s2s.stream_header_timeout;
        let mut tls = None;
        let mut chain = None;
        if direct_tls {
            let mut server =
                match rustls::ServerConnection::new(Arc::clone(&self.shared().tls_server_direct)) {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(error = %e, "TLS server setup failed");
                        self.unauthenticated.set(self.unauthenticated.get() - 1);
                        return;
                    }
                };
            let hs = tokio::time::timeout(header_timeout, handshake(&stream, &mut server)).await;
            match hs {
                Ok(Ok(())) => {
                    chain = Some((
                        server
                            .peer_certificates()
                            .map(|c| c.to_vec())
                            .unwrap_or_default(),
                        rustls::pki_types::UnixTime::now(),
                    ));
                    tls = Some(Tls::Server(server));
                }
                _ => {
                    debug!("direct TLS handshake failed or timed out");
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    self.unauthenticated.set(self.unauthenticated.get() - 1);
                    return;
                }
            }
        }
        let nonce = self.rng.borrow_mut().random::<u64>();
        let proto = S2sConnection::inbound(Arc::clone(&self.shared().s2s), nonce, chain, now);
        let mut st = ConnState::new(proto, tls);
        st.header_deadline = Some(now + header_timeout);
        st.counted_unauth = true;
        if direct_tls {
            // Plaintext that arrived with the end of the handshake.
            st.input(&[], now);
        }
        let conn = Rc::new(Conn::new(
            self.next_conn_id(),
            stream,
            st,
            tracing::Span::current(),
        ));
        self.conns.borrow_mut().insert(conn.id, Rc::clone(&conn));
        self.spawn_conn(conn);
    }

    /// Takes over a connection another shard accepted.
    fn adopt(&self, mut h: Handoff) {
        h.state.moved = true;
        let std_stream = std::net::TcpStream::from(h.fd);
        let stream = TcpStream::from_std(std_stream);
        let span = info_span!(
            parent: &self.span,
            "s2s",
            dir = "in",
            peer_domain = tracing::field::Empty,
            id = tracing::field::Empty,
            adopted = true
        );
        let conn = Rc::new(Conn::new(self.next_conn_id(), stream, h.state, span));
        {
            let st = conn.st.borrow();
            if st.opened {
                conn.record_once("id", st.proto.stream_id());
                if !st.proto.remote_domain().is_empty() {
                    conn.record_once("peer_domain", st.proto.remote_domain());
                }
            }
        }
        debug!(parent: &conn.span, "adopted from another shard");
        self.conns.borrow_mut().insert(conn.id, Rc::clone(&conn));
        self.spawn_conn(conn);
    }

    pub(super) fn spawn_conn<P: Driven>(&self, conn: Rc<Conn<P>>) {
        let me = self.rc();
        let span = conn.span.clone();
        let c2 = Rc::clone(&conn);
        tokio_uring::spawn(async move { me.writer(c2).await }.instrument(span.clone()));
        let me = self.rc();
        tokio_uring::spawn(async move { me.reader(conn).await }.instrument(span));
    }

    /// The connection's one read loop.
    async fn reader<P: Driven>(self: Rc<Self>, conn: Rc<Conn<P>>) {
        // Events carried over (adopted connections, outbound header already sent).
        if let After::HandOff(dst) = P::on_events(&self, &conn, true) {
            return self.hand_off(conn, dst).await;
        }
        conn.wake.notify_one();
        let mut buf = Vec::with_capacity(READ_BUF);
        for _ in 0..u64::MAX {
            self.wait_for_room(P::PROTO).await;
            let (res, b) = conn.stream.read(buf).await;
            buf = b;
            let n = match res {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let now = Instant::now();
            super::metrics(|m| m.count("bytes", &[("proto", P::PROTO), ("dir", "in")], n as u64));
            {
                let mut st = conn.st.borrow_mut();
                if st.closed {
                    break;
                }
                st.input(&buf[..n], now);
            }
            // Adapt the next read's buffer: grow while reads fill it, give memory back
            // when the stream is quiet (idle streams must stay small).
            let cap = buf.capacity();
            if n == cap && cap < READ_BUF_MAX {
                buf = Vec::with_capacity(cap * 2);
            } else if n < READ_BUF / 2 && cap > READ_BUF {
                buf = Vec::with_capacity(READ_BUF);
            } else {
                buf.clear();
            }
            if n < READ_BUF / 2 {
                conn.st.borrow_mut().proto.release_idle_memory();
            }
            let before = super::set_read_at(Some(now));
            let after = P::on_events(&self, &conn, true);
            super::set_read_at(before);
            conn.st.borrow_mut().pump();
            conn.wake.notify_one();
            if let After::HandOff(dst) = after {
                return self.hand_off(conn, dst).await;
            }
        }
        // The peer closed, the socket failed, or the writer shut it down.
        let was_closed = {
            let mut st = conn.st.borrow_mut();
            let was = st.closed;
            st.closed = true;
            was
        };
        if !was_closed {
            P::ended(&self, &conn, &CloseReason::PeerClosed);
        }
        conn.wake.notify_one();
        if !conn.writer_stopped.get() {
            conn.writer_done.notified().await;
        }
        P::conns(&self).borrow_mut().remove(&conn.id);
        self.conn_ended.notify_waiters();
    }

    /// The connection's writer: socket writes and deadlines.
    async fn writer<P: Driven>(self: Rc<Self>, conn: Rc<Conn<P>>) {
        let mut spare: Vec<u8> = Vec::new();
        // Read times of the stanzas in the write in flight.
        let mut marks: Vec<Instant> = Vec::new();
        loop {
            let (out, deadline, stop) = {
                let mut st = conn.st.borrow_mut();
                st.pump();
                if st.wire.is_empty() {
                    if st.handing_off {
                        break;
                    }
                    if st.closed {
                        (None, None, true)
                    } else {
                        (None, st.next_deadline(), false)
                    }
                } else {
                    let out = st.take_wire(std::mem::take(&mut spare));
                    marks.append(&mut st.marks);
                    (Some(out), None, false)
                }
            };
            if stop {
                let _ = conn.stream.shutdown(std::net::Shutdown::Both);
                break;
            }
            if let Some(out) = out {
                let (end, mut b) = self
                    .write_out(&conn, out, P::write_stall_timeout(&self))
                    .await;
                match end {
                    WriteEnd::Done => {}
                    WriteEnd::Failed => {
                        let was_closed = std::mem::replace(&mut conn.st.borrow_mut().closed, true);
                        if !was_closed {
                            P::ended(&self, &conn, &CloseReason::PeerClosed);
                        }
                        let _ = conn.stream.shutdown(std::net::Shutdown::Both);
                        break;
                    }
                    WriteEnd::Stalled => {
                        // `write_out` marked the stream closed and shut the socket down.
                        P::write_stalled(&self, &conn);
                        break;
                    }
                }
                let written = b.len() as u64;
                super::metrics(|m| {
                    m.count("bytes", &[("proto", P::PROTO), ("dir", "out")], written);
                    for t in marks.drain(..) {
                        m.observe(Latency::Routing, t.elapsed());
                    }
                });
                b.clear();
                // Keep a small spare only: idle streams must not hold big buffers.
                if b.capacity() <= 4 * 1024 {
                    spare = b;
                }
                P::written(&self, &conn);
                continue;
            }
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = conn.wake.notified() => {}
                _ = sleep => {
                    let now = Instant::now();
                    let header_timeout = {
                        let mut st = conn.st.borrow_mut();
                        let expired = !st.opened && st.header_deadline.is_some_and(|d| now >= d);
                        if expired {
                            st.header_deadline = None;
                            st.proto.close(Some((StreamCondition::ConnectionTimeout, "no stream header in time")), now);
                        } else {
                            st.proto.handle_timeout(now);
                        }
                        st.collect_events();
                        expired
                    };
                    P::on_events(&self, &conn, false);
                    if header_timeout {
                        // A peer that sent nothing gets no closing handshake: send the
                        // error and free the slot now (RFC 6120 §4.9.1.1).
                        let was = std::mem::replace(&mut conn.st.borrow_mut().closed, true);
                        if !was {
                            P::ended(&self, &conn, &CloseReason::SentError(StreamCondition::ConnectionTimeout, "no stream header in time".into()));
                        }
                    }
                }
            }
        }
        conn.writer_stopped.set(true);
        conn.writer_done.notify_waiters();
    }

    /// Writes `out` to the socket, one write at a time, while it accepts bytes: the
    /// write-stall timer (`stall`, `s2s.write_stall_timeout` / `c2s.write_stall_timeout`)
    /// restarts whenever the socket accepts some. When it fires, the stream is marked
    /// closed and the socket shut down, which ends the write in flight (EPIPE) so that
    /// nothing more of it reaches the peer later: the bytes the socket accepted before are
    /// exactly those [`ConnState::accepted`] counted. Returns how it ended and the buffer.
    async fn write_out<P: Driven>(
        &self,
        conn: &Conn<P>,
        out: Vec<u8>,
        stall: Duration,
    ) -> (WriteEnd, Vec<u8>) {
        use tokio_uring::buf::BoundedBuf;
        let len = out.len();
        let mut buf = out;
        let mut off = 0;
        let mut deadline = Instant::now() + stall;
        conn.st.borrow_mut().write_waiting_since = Some(Instant::now());
        let end = 'write: {
            // Bounded: every pass but the last moves at least one byte.
            while off < len {
                let op = conn.stream.write(buf.slice(off..)).submit();
                tokio::pin!(op);
                let (res, slice) = tokio::select! {
                    r = &mut op => r,
                    _ = tokio::time::sleep_until(deadline.into()) => {
                        conn.st.borrow_mut().closed = true;
                        let _ = conn.stream.shutdown(std::net::Shutdown::Both);
                        // The shutdown completes the write with an error, or with what
                        // the socket took meanwhile; bounded in case it does not.
                        match tokio::time::timeout(Duration::from_secs(5), op).await {
                            Ok((Ok(n), slice)) => {
                                conn.st.borrow_mut().accepted(n);
                                buf = slice.into_inner();
                            }
                            Ok((Err(_), slice)) => buf = slice.into_inner(),
                            Err(_) => {
                                warn!("a write to a stalled stream did not end after its shutdown");
                                buf = Vec::new();
                            }
                        }
                        break 'write WriteEnd::Stalled;
                    }
                };
                buf = slice.into_inner();
                match res {
                    Ok(n) if n > 0 => {
                        off += n;
                        let now = Instant::now();
                        deadline = now + stall;
                        let mut st = conn.st.borrow_mut();
                        st.accepted(n);
                        st.write_waiting_since = Some(now);
                    }
                    _ => break 'write WriteEnd::Failed,
                }
            }
            WriteEnd::Done
        };
        conn.st.borrow_mut().write_waiting_since = None;
        (end, buf)
    }

    /// Acts on the connection's events. `may_hand_off`: the caller is the read loop and
    /// can move the connection to another shard.
    fn on_events(&self, conn: &Rc<Conn>, may_hand_off: bool) -> After {
        loop {
            let ev = {
                let mut st = conn.st.borrow_mut();
                st.collect_events();
                match st.events.pop_front() {
                    Some(e) => e,
                    None => return After::Continue,
                }
            };
            // Hand-off: an inbound stream goes to the shard of the domain it names.
            if may_hand_off && conn.direction == Direction::Inbound {
                let claimed = match &ev {
                    Event::Opened {
                        remote: Some(r), ..
                    } => Some(r.as_str()),
                    Event::VerifyNeeded { remote, .. } | Event::Authenticated { remote, .. } => {
                        Some(remote.as_str())
                    }
                    _ => None,
                };
                if let Some(r) = claimed {
                    let dst = shard_of(&domain_key(r), self.n);
                    let stays = {
                        let st = conn.st.borrow();
                        st.handing_off || st.moved || st.pinned
                    };
                    if dst != self.id && !stays {
                        if let Event::Opened {
                            remote, stream_id, ..
                        } = &ev
                        {
                            if let Some(r) = remote {
                                conn.record_once("peer_domain", r);
                            }
                            conn.record_once("id", stream_id);
                        }
                        debug!(parent: &conn.span, remote = r, to_shard = dst, "handing off");
                        let mut st = conn.st.borrow_mut();
                        if let Event::Opened { .. } = ev {
                            st.opened = true;
                        }
                        st.events.push_front(ev);
                        st.handing_off = true;
                        return After::HandOff(dst);
                    }
                }
            }
            self.on_event(conn, ev);
        }
    }

    fn on_event(&self, conn: &Rc<Conn>, ev: Event) {
        match ev {
            Event::Opened {
                local,
                remote,
                stream_id,
            } => {
                // The span keeps the first id (see `Conn::record_once`); each restart's
                // id is on this line.
                conn.record_once("id", &stream_id);
                if let Some(r) = &remote {
                    conn.record_once("peer_domain", r);
                }
                debug!(parent: &conn.span, %local, %stream_id, "stream opened");
                conn.st.borrow_mut().opened = true;
            }
            Event::StartTls(role) => {
                let tls = match role {
                    TlsRole::Server => {
                        rustls::ServerConnection::new(Arc::clone(&self.shared().tls_server))
                            .map(Tls::Server)
                    }
                    TlsRole::Client { sni } => {
                        let local = conn.st.borrow().proto.local_domain().to_owned();
                        match (
                            self.shared().client_tls(&local, &sni, false),
                            crate::tls::server_name(&sni),
                        ) {
                            (Some(cfg), Ok(name)) => {
                                rustls::ClientConnection::new(cfg, name).map(Tls::Client)
                            }
                            (None, _) => Err(rustls::Error::General(
                                "no trust anchors to verify the server's certificate (tls.trust)"
                                    .into(),
                            )),
                            (_, Err(e)) => Err(rustls::Error::General(e.to_string())),
                        }
                    }
                };
                let mut st = conn.st.borrow_mut();
                match tls {
                    Ok(t) => st.start_tls(t),
                    Err(e) => {
                        st.proto.handle_tls_failed(&e.to_string());
                        st.collect_events();
                    }
                }
            }
            Event::Authenticated {
                local,
                remote,
                method,
                direction,
            } => {
                conn.st.borrow_mut().pinned = true;
                info!(parent: &conn.span, %local, %remote, ?method, "authenticated");
                super::metrics(|mm| {
                    mm.count(
                        "auth",
                        &[
                            ("proto", "s2s"),
                            ("method", method.as_str()),
                            ("result", "ok"),
                        ],
                        1,
                    );
                    if direction == Direction::Outbound {
                        mm.observe(Latency::Negotiation, conn.st.borrow().started.elapsed());
                    }
                });
                {
                    let mut st = conn.st.borrow_mut();
                    if st.counted_unauth {
                        st.counted_unauth = false;
                        self.unauthenticated
                            .set(self.unauthenticated.get().saturating_sub(1));
                    }
                }
                if direction == Direction::Outbound {
                    self.outbound_ready(conn, &local, &remote);
                }
            }
            Event::SaslExternalNotOffered {
                local,
                remote,
                dialback_fallback,
            } => {
                // XEP-0178 §3: no EXTERNAL after TLS. The peer refused our certificate or
                // does not implement EXTERNAL; often even its features cannot tell (Prosody
                // offers no mechanism when it refuses a certificate), so both are said and
                // `check` tells them apart where it can. Counted.
                if dialback_fallback {
                    warn!(parent: &conn.span, %local, %remote, "peer did not offer SASL EXTERNAL after TLS: it does not accept our certificate for {local}, or it does not implement SASL EXTERNAL (XEP-0178); `fedrouter check {remote}` tells which where it can; falling back to dialback");
                } else {
                    warn!(parent: &conn.span, %local, %remote, "peer did not offer SASL EXTERNAL after TLS: it does not accept our certificate for {local}, or it does not implement SASL EXTERNAL (XEP-0178); `fedrouter check {remote}` tells which where it can; policy forbids dialback");
                }
                super::metrics(|m| {
                    m.count(
                        "auth",
                        &[
                            ("proto", "s2s"),
                            ("method", AuthMethod::SaslExternal.as_str()),
                            ("result", "not-offered"),
                        ],
                        1,
                    )
                });
            }
            Event::AuthFailed {
                local,
                remote,
                result,
            } => {
                debug!(parent: &conn.span, %local, %remote, ?result, "authentication failed");
                super::metrics(|m| {
                    m.count(
                        "auth",
                        &[("proto", "s2s"), ("method", "dialback"), ("result", "fail")],
                        1,
                    )
                });
                self.outbound_auth_failed(conn, &domain_key(&remote), &local, result);
            }
            Event::VerifyNeeded {
                local,
                remote,
                stream_id,
                key,
            } => {
                // The verdict comes back addressed to this connection on this shard.
                conn.st.borrow_mut().pinned = true;
                let d = domain_key(&remote).into_owned();
                let dst = shard_of(&d, self.n);
                if dst == self.id {
                    self.verify_with_authoritative(local, d, stream_id, key, self.id, conn.id);
                } else {
                    self.send_to(
                        dst,
                        ShardMsg::Verify {
                            local,
                            remote: d,
                            stream_id,
                            key,
                            reply_shard: self.id,
                            conn: conn.id,
                        },
                    );
                }
            }
            Event::VerifyAnswered {
                local,
                remote,
                stream_id,
                result,
            } => {
                self.verify_answered(&domain_key(&remote), &local, &stream_id, result);
            }
            Event::Stanza { element, .. } => {
                count_stanza("s2s_in", element.name());
                self.route(element)
            }
            Event::Closed(reason) => {
                if let CloseReason::ReceivedError(condition, text) = &reason {
                    // RFC 6120 §4.9: the peer's reason for ending the stream (a refused
                    // certificate, a policy, a restart) is an operator's first question.
                    let dir = direction_label(conn.direction);
                    let remote = conn.st.borrow().proto.remote_domain().to_owned();
                    warn!(
                        parent: &conn.span,
                        direction = dir,
                        %remote,
                        %condition,
                        text = text.as_deref().unwrap_or(""),
                        "the peer closed the stream with a stream error"
                    );
                    super::metrics(|m| {
                        m.count(
                            "stream_errors",
                            &[("dir", dir), ("condition", condition.as_str())],
                            1,
                        )
                    });
                }
                debug!(parent: &conn.span, ?reason, "stream closed");
                let was = std::mem::replace(&mut conn.st.borrow_mut().closed, true);
                if !was {
                    self.connection_ended(conn, &reason);
                }
                conn.st.borrow_mut().close_tls();
                conn.wake.notify_one();
            }
        }
    }

    /// An S2S stream's socket accepted no byte for `s2s.write_stall_timeout` (the writer
    /// closed it): the stanzas that never reached the socket and, on the domain's current
    /// outbound stream, everything queued for the domain are bounced with
    /// `remote-server-timeout` (RFC 6120 §8.3.3.16), and the domain backs off. Stanzas the
    /// socket had accepted still reach the peer if it resumes reading before the kernel
    /// gives up (no XEP-0198 acknowledgements here to tell).
    fn s2s_write_stalled(&self, conn: &Rc<Conn>) {
        let timeout = self.shared().config.s2s.write_stall_timeout;
        let (remote, pending, unsent) = {
            let mut st = conn.st.borrow_mut();
            let pending = st.backlog();
            (
                domain_key(st.proto.remote_domain()).into_owned(),
                pending,
                st.take_unsent(),
            )
        };
        super::metrics(|m| m.count("stalled_streams_closed", &[("proto", "s2s")], 1));
        warn!(
            parent: &conn.span,
            remote = %remote,
            dir = direction_label(conn.direction),
            unsent = unsent.len(),
            pending_bytes = pending,
            timeout = %humantime::format_duration(timeout),
            "remote server stopped reading: stream closed by s2s.write_stall_timeout; what waited for it is bounced (remote-server-timeout)"
        );
        let f = Failure {
            condition: StanzaCondition::RemoteServerTimeout,
            text: format!(
                "the remote server accepted no data for {}",
                humantime::format_duration(timeout)
            ),
        };
        for q in unsent {
            self.bounce_queued_for(q, f.condition, &f.text, BounceCause::WriteStall);
        }
        let current = conn.direction == Direction::Outbound
            && self
                .remotes
                .borrow()
                .get(&remote)
                .and_then(|r| r.conn.as_ref())
                .is_some_and(|c| c.id == conn.id);
        if current {
            self.remote_failed(&remote, f, BounceCause::WriteStall);
        }
        self.connection_ended(conn, &CloseReason::Local);
    }

    /// Bookkeeping when a connection ends (once).
    fn connection_ended(&self, conn: &Conn, reason: &CloseReason) {
        let (counted, remote, authenticated) = {
            let mut st = conn.st.borrow_mut();
            let counted = std::mem::replace(&mut st.counted_unauth, false);
            let remote = st.proto.remote_domain().to_owned();
            let auth = st.proto.authenticated().next().is_some();
            (counted, remote, auth)
        };
        if counted {
            self.unauthenticated
                .set(self.unauthenticated.get().saturating_sub(1));
        }
        match conn.direction {
            Direction::Outbound => {
                self.outbound_closed(conn, &domain_key(&remote), reason, authenticated)
            }
            Direction::Inbound => self.inbound_ended(conn, reason),
        }
    }

    /// An inbound stream ended. One that named a remote domain but authenticated nothing
    /// and carried no dialback request, and that the peer broke off (it closed it, sent a
    /// stream error, failed TLS) or that we refused with a stream error, is how a remote
    /// server's verification connection fails (XEP-0220 §2.1.2: the Receiving Server
    /// connects to our authoritative side to check our key, and sends `db:verify`). The
    /// domain's owner is told ([`Shard::peer_verification_failed`]), so that a dialback
    /// of ours waiting on that check fails at once instead of after
    /// `s2s.negotiation_timeout`. Our own closes (idle, after an `invalid` verdict) are
    /// not such failures.
    fn inbound_ended(&self, conn: &Conn, reason: &CloseReason) {
        let (d, opened) = {
            let st = conn.st.borrow();
            let silent = st.proto.authenticated().next().is_none()
                && st.proto.dialback_requests_received() == 0;
            if !silent || st.proto.remote_domain().is_empty() {
                return;
            }
            (
                domain_key(st.proto.remote_domain()).into_owned(),
                st.started,
            )
        };
        let what = match reason {
            CloseReason::Local | CloseReason::CloseTimeout => return,
            CloseReason::PeerClosed => {
                "it closed its stream to us (its verification connection) before asking about our key".to_owned()
            }
            CloseReason::ReceivedError(c, text) => format!(
                "it closed its stream to us (its verification connection) with a <{c}/> stream error{}",
                text.as_deref().map(|t| format!(" ({t})")).unwrap_or_default()
            ),
            CloseReason::SentError(c, text) => format!(
                "we refused its stream to us (its verification connection) with <{c}/> ({text})"
            ),
            CloseReason::TlsFailed(e) => format!(
                "TLS failed on its stream to us (its verification connection): {e}"
            ),
        };
        let failure = Failure {
            condition: reason.bounce_condition(),
            text: what,
        };
        let dst = shard_of(&d, self.n);
        if dst == self.id {
            self.peer_verification_failed(&d, opened, failure);
        } else {
            self.send_to(
                dst,
                ShardMsg::PeerStreamFailed {
                    remote: d,
                    opened,
                    condition: failure.condition,
                    what: failure.text,
                },
            );
        }
    }

    /// On shard(`d`): an inbound stream from `d` opened at `opened` broke off before it
    /// carried a dialback request ([`Shard::inbound_ended`]). If our outbound stream to
    /// `d` was opened before it and still waits for answers to our `db:result`s, that
    /// stream was `d`'s verification connection (or its attempt at one), and our key
    /// cannot be verified on it: the waiting dialbacks fail now
    /// ([`S2sConnection::fail_dialback`], XEP-0220 §2.1.1), their stanzas are bounced
    /// with `failure`'s condition and a WARN says what `d` did.
    fn peer_verification_failed(&self, d: &str, opened: Instant, failure: Failure) {
        let Some(conn) = self.remotes.borrow().get(d).and_then(|r| r.conn.clone()) else {
            return;
        };
        let locals: Vec<String> = {
            let st = conn.st.borrow();
            if st.closed || st.started > opened {
                return;
            }
            st.proto.pending_dialbacks().map(str::to_owned).collect()
        };
        if locals.is_empty() {
            return;
        }
        let result = DialbackResult::Error(
            if failure.condition == StanzaCondition::RemoteServerTimeout {
                DialbackErrorCondition::RemoteServerTimeout
            } else {
                DialbackErrorCondition::RemoteServerNotFound
            },
        );
        if let Some(r) = self.remotes.borrow_mut().get_mut(d) {
            r.auth_failure_note = Some(failure);
        }
        {
            let mut st = conn.st.borrow_mut();
            for l in &locals {
                st.proto.fail_dialback(l, result);
            }
        }
        self.on_events(&conn, false);
        if let Some(r) = self.remotes.borrow_mut().get_mut(d) {
            r.auth_failure_note = None;
        }
        conn.st.borrow_mut().pump();
        conn.wake.notify_one();
    }

    /// Moves an inbound connection to shard `dst` once the writer has flushed.
    async fn hand_off<P: Driven>(self: Rc<Self>, conn: Rc<Conn<P>>, dst: usize) {
        conn.wake.notify_one();
        if !conn.writer_stopped.get() {
            conn.writer_done.notified().await;
        }
        P::conns(&self).borrow_mut().remove(&conn.id);
        let fd = match conn.dup_fd() {
            Ok(fd) => fd,
            Err(e) => {
                warn!(error = %e, "hand-off failed; closing");
                let _ = conn.stream.shutdown(std::net::Shutdown::Both);
                return;
            }
        };
        let conn = match Rc::try_unwrap(conn) {
            Ok(c) => c,
            Err(c) => {
                warn!("connection still referenced at hand-off; closing");
                let _ = c.stream.shutdown(std::net::Shutdown::Both);
                return;
            }
        };
        let mut state = conn.st.into_inner();
        state.handing_off = false;
        if std::mem::replace(&mut state.counted_unauth, false) {
            self.unauthenticated
                .set(self.unauthenticated.get().saturating_sub(1));
        }
        drop(conn.stream);
        self.send_to(dst, P::adopt_msg(Handoff { fd, state }));
        self.conn_ended.notify_waiters();
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
        let mut out = Vec::with_capacity(128);
        write_ping(from, to, &id, &mut out);
        self.route_generated(&out);
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
        // Queued stanzas go out on the authenticated outbound streams before these close
        // (all of them: the queue is bounded); what is left, for remote domains without
        // a stream for its sender, is bounced now, while the senders' sessions are still
        // open to receive the bounce. No stream is opened from now on.
        let open: Vec<(String, Rc<Conn>)> = self
            .remotes
            .borrow()
            .iter()
            .filter(|(_, r)| !r.queue.is_empty())
            .filter_map(|(d, r)| r.conn.as_ref().map(|c| (d.clone(), Rc::clone(c))))
            .collect();
        for (d, c) in &open {
            self.drain_queue_within(c, d, usize::MAX);
        }
        let stuck: Vec<String> = self
            .remotes
            .borrow()
            .iter()
            .filter(|(_, r)| !r.queue.is_empty() || (r.conn.is_none() && !r.verifies.is_empty()))
            .map(|(d, _)| d.clone())
            .collect();
        for d in &stuck {
            self.refuse_during_shutdown(d);
        }
        let now = Instant::now();
        self.local.close_clients(self, now);
        let conns: Vec<Rc<Conn>> = self.conns.borrow().values().cloned().collect();
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
        for c in self.conns.borrow().values() {
            let st = c.st.borrow();
            let dir = if c.direction == Direction::Outbound {
                "out"
            } else {
                "in"
            };
            let state = if st.proto.authenticated().next().is_some() {
                "authenticated"
            } else {
                "negotiating"
            };
            m.add_gauge(
                "streams",
                &[("proto", "s2s"), ("dir", dir), ("state", state)],
                1,
            );
        }
        for c in self.local.conns.borrow().values() {
            let state = if c.st.borrow().proto.bound_jid().is_some() {
                "bound"
            } else {
                "negotiating"
            };
            m.add_gauge(
                "streams",
                &[("proto", "c2s"), ("dir", "in"), ("state", state)],
                1,
            );
        }
        let remote: usize = self.remotes.borrow().values().map(|r| r.queue.len()).sum();
        m.add_gauge("queue_depth", &[("queue", "s2s_remote")], remote as i64);
        let congested = self
            .remotes
            .borrow()
            .values()
            .filter(|r| r.congested_since.is_some())
            .count();
        m.add_gauge(
            "congested_destinations",
            &[("proto", "s2s")],
            congested as i64,
        );
        let stalled = |since: Option<Instant>| since.is_some_and(|t| t.elapsed() >= STALL_SHOWN);
        let s2s_stalled = self
            .conns
            .borrow()
            .values()
            .filter(|c| stalled(c.st.borrow().write_waiting_since))
            .count();
        let c2s_stalled = self
            .local
            .conns
            .borrow()
            .values()
            .filter(|c| stalled(c.st.borrow().write_waiting_since))
            .count();
        m.add_gauge(
            "write_stalled_streams",
            &[("proto", "s2s")],
            s2s_stalled as i64,
        );
        m.add_gauge(
            "write_stalled_streams",
            &[("proto", "c2s")],
            c2s_stalled as i64,
        );
        m.add_gauge(
            "queue_depth",
            &[("queue", "cross_shard_outgoing")],
            self.outgoing.borrow().len() as i64,
        );
        if self.id == 0 {
            m.add_gauge(
                "queue_depth",
                &[("queue", "store")],
                self.shared().store.queued() as i64,
            );
        }
        m
    }

    /// The remote domains this shard knows of: one JSON object per domain with its
    /// streams (direction, state, authenticated pairs and methods), queue length, last
    /// failure and backoff (for `fedrouter status`).
    fn status(&self) -> Vec<serde_json::Value> {
        use serde_json::json;
        let now = Instant::now();
        let mut by_domain: std::collections::BTreeMap<String, Vec<serde_json::Value>> =
            Default::default();
        for c in self.conns.borrow().values() {
            let st = c.st.borrow();
            let remote = domain_key(st.proto.remote_domain()).into_owned();
            let pairs: Vec<serde_json::Value> = st
                .proto
                .authenticated()
                .map(|(l, r, m)| json!({"local": l, "remote": r, "method": format!("{m:?}").to_ascii_lowercase()}))
                .collect();
            let state = if st.closed {
                "closing"
            } else if pairs.is_empty() {
                "negotiating"
            } else {
                "authenticated"
            };
            let mut stream = json!({
                "direction": if c.direction == Direction::Outbound { "out" } else { "in" },
                "state": state,
                "tls": st.tls.is_some(),
                "authenticated": pairs,
                "age_s": st.started.elapsed().as_secs_f64(),
            });
            if let Some(t) = st
                .write_waiting_since
                .filter(|t| t.elapsed() >= STALL_SHOWN)
            {
                // The peer has accepted no byte for this long (s2s.write_stall_timeout
                // closes the stream).
                stream["write_stalled_ms"] = json!(t.elapsed().as_millis() as u64);
                stream["pending_bytes"] = json!(st.backlog());
            }
            by_domain.entry(remote).or_default().push(stream);
        }
        let remotes = self.remotes.borrow();
        let mut domains: std::collections::BTreeSet<&String> = remotes.keys().collect();
        let keys: Vec<String> = by_domain.keys().cloned().collect();
        let mut out = Vec::new();
        for d in keys.iter() {
            domains.insert(d);
        }
        for d in domains {
            let r = remotes.get(d);
            let mut streams = by_domain.get(d).cloned().unwrap_or_default();
            if r.is_some_and(|r| r.connecting && r.conn.is_none()) {
                streams.push(json!({"direction": "out", "state": "connecting"}));
            }
            out.push(json!({
                "domain": d,
                "shard": self.id,
                "streams": streams,
                "queue": r.map_or(0, |r| r.queue.len()),
                "congested": r.is_some_and(|r| r.congested_since.is_some()),
                "congested_s": r.and_then(|r| r.congested_since).map(|t| t.elapsed().as_secs_f64()),
                "failures": r.map_or(0, |r| r.failures),
                "last_error": r.and_then(|r| r.last_failure.as_ref()).map(|f| format!("{}: {}", f.condition.as_str(), f.text)),
                "backoff_s": r.and_then(|r| r.backoff_until).filter(|u| *u > now).map(|u| (u - now).as_secs_f64()),
            }));
        }
        out
    }

    fn conn_count(&self) -> usize {
        self.conns.borrow().len() + self.local.conns.borrow().len()
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
            for msg in batch.drain(..) {
                match msg {
                    // Dropping the hand-off closes its socket; the peer reconnects to a
                    // running server.
                    ShardMsg::Adopt(_) | ShardMsg::AdoptC2s(_) => {}
                    msg => self.handle_msg(msg),
                }
                handled += 1;
            }
        }
        self.flush(inbox);
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
        let conns: Vec<Rc<Conn>> = self.conns.borrow().values().cloned().collect();
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
        let settle = Instant::now() + Duration::from_millis(500);
        while self.conn_count() > 0 && Instant::now() < settle {
            late += self.drain_during_shutdown(inbox, batch);
            let ended = self.conn_ended.notified();
            tokio::select! {
                _ = tokio::time::sleep_until(settle.into()) => {}
                _ = ended => {}
                _ = inbox.wait() => {}
            }
        }
        late += self.drain_during_shutdown(inbox, batch);
        if late > 0 {
            info!(
                count = late,
                "cross-shard messages handled while shutting down (routed, delivered or bounced)"
            );
        }
        // Messages for other shards that could not be handed over any more.
        let unsent = self.outgoing.borrow().len() + inbox.pending();
        if unsent > 0 {
            warn!(
                count = unsent,
                "cross-shard messages could not reach their shard before it stopped"
            );
        }
        let bounced = self.shutdown_bounced.get();
        if bounced > 0 {
            info!(
                count = bounced,
                "stanzas for remote servers bounced while shutting down (no new streams)"
            );
        }
        // Stanzas still waiting for a remote server are not delivered: every stream is
        // closed by now, so a bounce could reach nobody. Say how many, loudly.
        let queued: Vec<Queued> = self
            .remotes
            .borrow_mut()
            .values_mut()
            .flat_map(|r| std::mem::take(&mut r.queue))
            .collect();
        if !queued.is_empty() {
            warn!(
                count = queued.len(),
                "stanzas still queued for remote servers at shutdown were not delivered"
            );
        }
    }
}

/// The `dir` label of a stream's metrics and logs: `"out"` or `"in"`.
/// What the remote server did, for the WARN and the bounce text of an outbound stream
/// that ended before it authenticated us.
fn describe_outbound_end(reason: &CloseReason) -> String {
    match reason {
        CloseReason::ReceivedError(c, text) => format!(
            "it closed the stream with a <{c}/> stream error{}",
            text.as_deref()
                .map(|t| format!(" ({t})"))
                .unwrap_or_default()
        ),
        CloseReason::PeerClosed => "it closed the stream".to_owned(),
        CloseReason::SentError(c, text) => format!("we closed the stream with <{c}/> ({text})"),
        CloseReason::CloseTimeout | CloseReason::Local => "we closed the stream".to_owned(),
        CloseReason::TlsFailed(e) => format!("TLS failed: {e}"),
    }
}

/// What the remote server answered to our `db:result` (XEP-0220 §2.1.1, §2.5).
fn describe_dialback_answer(result: DialbackResult) -> String {
    match result {
        DialbackResult::Valid => "it answered valid".to_owned(),
        DialbackResult::Invalid => "it answered our dialback key invalid".to_owned(),
        DialbackResult::Error(DialbackErrorCondition::RemoteServerTimeout) => {
            "no valid answer to our dialback key in time (remote-server-timeout)".to_owned()
        }
        DialbackResult::Error(c) => {
            format!("it answered our dialback key with the dialback error <{c}/>")
        }
    }
}

fn direction_label(d: Direction) -> &'static str {
    match d {
        Direction::Outbound => "out",
        Direction::Inbound => "in",
    }
}

/// Counts one stanza of `kind` (element name) in direction `dir`.
pub(super) fn count_stanza(dir: &'static str, kind: &str) {
    let kind = match kind {
        "message" => "message",
        "presence" => "presence",
        "iq" => "iq",
        _ => "other",
    };
    super::metrics(|m| m.count("stanzas", &[("dir", dir), ("kind", kind)], 1));
}

/// Which protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListenerKind {
    /// S2S with STARTTLS (RFC 6120), port 5269.
    S2s,
    /// S2S with direct TLS (XEP-0368), port 5270.
    S2sDirectTls,
    /// C2S, port 5222.
    C2s,
}

thread_local! {
    /// The shard running on this thread.
    pub(crate) static CURRENT: RefCell<Option<Rc<Shard>>> = const { RefCell::new(None) };
}

/// Drives a TLS handshake to completion with sequential reads and writes (used before
/// any XMPP byte: XEP-0368 direct TLS).
async fn handshake<C, S>(stream: &TcpStream, tls: &mut C) -> Result<(), String>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    let mut buf = Vec::with_capacity(READ_BUF);
    for _ in 0..64 {
        while tls.wants_write() {
            let mut out = Vec::new();
            tls.write_tls(&mut out).map_err(|e| e.to_string())?;
            let (res, _) = stream.write_all(out).await;
            res.map_err(|e| e.to_string())?;
        }
        if !tls.is_handshaking() {
            return Ok(());
        }
        let (res, b) = stream.read(buf).await;
        buf = b;
        let n = res.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed during the TLS handshake".into());
        }
        let mut rd = &buf[..n];
        while !rd.is_empty() {
            tls.read_tls(&mut rd).map_err(|e| e.to_string())?;
            if let Err(e) = tls.process_new_packets() {
                let mut out = Vec::new();
                let _ = tls.write_tls(&mut out);
                let _ = stream.write_all(out).await;
                return Err(e.to_string());
            }
        }
        buf.clear();
    }
    Err("TLS handshake did not finish".into())
}
