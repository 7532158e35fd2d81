//! What every task of a run shares: the [`Topology`], the [`Tracker`], the per-worker
//! [`Recorder`]s, and the subscription state of every pair.
//!
//! Recording: each task takes a recorder slot once ([`World::slot`]) and records into it
//! under an uncontended lock; the run loop takes the slots' contents every interval and
//! merges them ([`World::take_interval`]).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use fedrouter::stanza::error_condition;
use fedrouter::xml::Element;
use tokio::sync::OwnedSemaphorePermit;

use crate::auth::FirstFailureCounter;
use crate::report::{steps, Recorder};
use crate::topology::Topology;
use crate::track::{Clock, Delivery, Step, TrackedId, Tracker};

/// Bits of tracked-id sequence numbers each process of a split run has to itself.
const SEQ_BITS_PER_PROCESS: u32 = 40;

/// A pair's RFC 6121 subscription progress as loadgen drove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PairState {
    /// No subscription either way.
    None = 0,
    /// The remote user asked; the exchange is under way.
    Pending = 1,
    /// Subscription `both`: the local user's approval and its own request were both
    /// answered.
    Both = 2,
}

/// Subscription state per pair, and per local user the number of pairs in `both`.
#[derive(Debug)]
pub struct Pairs {
    state: Vec<AtomicU8>,
    started_us: Vec<AtomicU64>,
    both_of_local: Vec<AtomicU32>,
}

impl Pairs {
    fn new(pairs: u32, local_users: u32) -> Pairs {
        Pairs {
            state: (0..pairs).map(|_| AtomicU8::new(0)).collect(),
            started_us: (0..pairs).map(|_| AtomicU64::new(0)).collect(),
            both_of_local: (0..local_users).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// Pair `r`'s state.
    pub fn state(&self, r: u32) -> PairState {
        match self.state[r as usize].load(Ordering::Acquire) {
            0 => PairState::None,
            1 => PairState::Pending,
            _ => PairState::Both,
        }
    }

    /// Moves pair `r` from `None` to `Pending`, remembering when (µs on the run clock).
    /// `false` if it was not `None`.
    pub fn start(&self, r: u32, now_us: u64) -> bool {
        let ok = self.state[r as usize]
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if ok {
            self.started_us[r as usize].store(now_us, Ordering::Release);
        }
        ok
    }

    /// Moves pair `r` of local user `k` from `Pending` to `Both`; returns when it started.
    pub fn complete(&self, r: u32, k: u32) -> Option<u64> {
        self.state[r as usize]
            .compare_exchange(1, 2, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        self.both_of_local[k as usize].fetch_add(1, Ordering::AcqRel);
        Some(self.started_us[r as usize].load(Ordering::Acquire))
    }

    /// Pairs of local user `k` in `both`.
    pub fn both_of(&self, k: u32) -> u32 {
        self.both_of_local[k as usize].load(Ordering::Acquire)
    }

    /// Pairs in `both`, in all.
    pub fn both_total(&self) -> u64 {
        self.both_of_local
            .iter()
            .map(|c| u64::from(c.load(Ordering::Relaxed)))
            .sum()
    }
}

/// Shared state of a run.
#[derive(Debug)]
pub struct World {
    /// Who is who.
    pub topo: Topology,
    /// Tracked stanzas.
    pub tracker: Tracker,
    /// Pair subscription states.
    pub pairs: Pairs,
    recs: Vec<Mutex<Recorder>>,
    next_slot: AtomicU64,
    /// Stanzas received by peers and clients (tracked or not).
    pub stanzas_in: AtomicU64,
    /// Stanzas sent by peers and clients.
    pub stanzas_out: AtomicU64,
    /// S2S authentication failures (dialback `invalid`/`error`, SASL failures).
    pub auth_failures: AtomicU64,
    /// Of those, the failures of a domain's first attempt (not of its retries), by cause.
    pub first_auth_failures: FirstFailureCounter,
    /// Streams that ended without loadgen asking.
    pub unexpected_closes: AtomicU64,
    /// `<see-other-host/>` redirects the clients followed (RFC 6120 §4.9.3.19).
    pub redirects: AtomicU64,
    /// Client logins made again after a session ended without loadgen asking (a closed
    /// connection or a redirect of a running session).
    pub relogins: AtomicU64,
}

impl World {
    /// A world for `topo` with `slots` recorders (a few per worker thread).
    pub fn new(topo: Topology, slots: usize) -> World {
        let pairs = Pairs::new(topo.pairs(), topo.local_users);
        World {
            // Process i of a split run numbers its ids from i · 2^40 + 1.
            tracker: Tracker::with_first_seq(
                Clock::new(),
                (u64::from(topo.shard.index) << SEQ_BITS_PER_PROCESS) + 1,
            ),
            pairs,
            recs: (0..slots.max(1))
                .map(|_| Mutex::new(Recorder::with_steps(ALL_STEPS)))
                .collect(),
            next_slot: AtomicU64::new(0),
            topo,
            stanzas_in: AtomicU64::new(0),
            stanzas_out: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            first_auth_failures: FirstFailureCounter::default(),
            unexpected_closes: AtomicU64::new(0),
            redirects: AtomicU64::new(0),
            relogins: AtomicU64::new(0),
        }
    }

    /// The run clock.
    pub fn clock(&self) -> Clock {
        self.tracker.clock()
    }

    /// A recorder slot for a new task.
    pub fn slot(&self) -> usize {
        (self.next_slot.fetch_add(1, Ordering::Relaxed) as usize) % self.recs.len()
    }

    /// Records into slot `slot`.
    pub fn record(&self, slot: usize, f: impl FnOnce(&mut Recorder)) {
        f(&mut self.recs[slot].lock().expect("recorder lock"));
    }

    /// Takes what every slot recorded since the last call, merged.
    pub fn take_interval(&self) -> Recorder {
        let mut all = Recorder::with_steps(ALL_STEPS);
        for r in &self.recs {
            let taken = r.lock().expect("recorder lock").take();
            all.merge(&taken);
        }
        all
    }

    /// Starts tracking a stanza (see [`Tracker::begin`]) and counts its expected deliveries
    /// as sent. Returns the id to put on it.
    pub fn track(
        &self,
        slot: usize,
        step: Step,
        expect: u32,
        echo: bool,
        permit: Option<OwnedSemaphorePermit>,
    ) -> TrackedId {
        let id = self.tracker.begin(step, expect, echo, permit);
        self.record(slot, |r| r.record_sent(step, u64::from(expect.max(1))));
        self.stanzas_out.fetch_add(1, Ordering::Relaxed);
        id
    }

    /// Accounts for a received stanza: a tracked delivery is recorded with its latency, a
    /// tracked error stanza as a bounce with its condition. Returns the delivery for the
    /// caller's reaction (`None` for untracked stanzas and for bounces).
    pub fn deliver(&self, slot: usize, el: &Element) -> Option<Delivery> {
        self.stanzas_in.fetch_add(1, Ordering::Relaxed);
        let id = el.id()?;
        if el.type_() == Some("error") {
            let d = self.tracker.bounced(id)?;
            let condition = error_condition(el)
                .map(|c| c.as_str().to_owned())
                .unwrap_or_else(|| "undefined-condition".to_owned());
            self.record(slot, |r| r.record_bounce(d.step, &condition));
            return None;
        }
        let d = self.tracker.received(id)?;
        let latency = self.clock().since(d.id.sent_us);
        self.record(slot, |r| r.record_received(d.step, latency));
        Some(d)
    }

    /// Records a latency that is not a delivery (stream set-up, subscription completion).
    pub fn latency(&self, slot: usize, step: Step, latency: Duration) {
        self.record(slot, |r| r.record_latency(step, latency));
    }
}

/// Every step a run records, in report order.
pub const ALL_STEPS: &[&str] = &[
    steps::MESSAGE,
    steps::PRESENCE,
    steps::SUBSCRIBE,
    steps::SUBSCRIPTION_COMPLETE,
    steps::STREAM_SETUP,
];
