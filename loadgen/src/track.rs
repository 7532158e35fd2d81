//! Stanza identity and accounting: every stanza loadgen sends and expects back carries a
//! tracked `id` holding a sequence number and its send time, and stays in the
//! [`Tracker`] until each expected delivery has been received or bounced.
//!
//! The id is `lg.{seq}.{sent_us}.{flag}`: `seq` is unique in the run, `sent_us` the send
//! time in microseconds since the run's [`Clock`] epoch (one process, one monotonic clock),
//! `flag` `e` when the receiver must answer (a message round trip) and `n` otherwise. Servers
//! keep a stanza's `id` when they route it (RFC 6120 §8.1.3), so the receiver computes the
//! latency from the id alone; the tracker only does the accounting.
//!
//! One tracked stanza may expect several deliveries: a presence broadcast expects one per
//! subscribed contact. Accounting counts deliveries: "sent" is the number expected, and each
//! ends as received, bounced (an error stanza with the same id, RFC 6120 §8.3) or lost (still
//! expected when the run ends).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;

/// Number of independently locked shards of the pending table.
const SHARDS: usize = 64;

/// The run's monotonic clock: microseconds since its epoch.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock whose epoch is now.
    pub fn new() -> Clock {
        Clock {
            epoch: Instant::now(),
        }
    }

    /// Microseconds since the epoch.
    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// The latency of something sent at `sent_us`, measured now (zero if the clock went
    /// backwards, which a monotonic clock does not).
    pub fn since(&self, sent_us: u64) -> Duration {
        Duration::from_micros(self.now_us().saturating_sub(sent_us))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// A parsed tracked id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackedId {
    /// Unique in the run.
    pub seq: u64,
    /// Send time, µs since the [`Clock`] epoch.
    pub sent_us: u64,
    /// The receiver must answer (message round trips).
    pub echo: bool,
}

impl TrackedId {
    /// Parses `lg.{seq}.{sent_us}.{e|n}`; `None` for any other id (stanzas loadgen does not
    /// track, such as a server's own presence probes).
    pub fn parse(id: &str) -> Option<TrackedId> {
        let rest = id.strip_prefix("lg.")?;
        let mut it = rest.split('.');
        let seq = it.next()?.parse().ok()?;
        let sent_us = it.next()?.parse().ok()?;
        let echo = match it.next()? {
            "e" => true,
            "n" => false,
            _ => return None,
        };
        it.next()
            .is_none()
            .then_some(TrackedId { seq, sent_us, echo })
    }

    /// The id's text.
    pub fn render(&self) -> String {
        format!(
            "lg.{}.{}.{}",
            self.seq,
            self.sent_us,
            if self.echo { 'e' } else { 'n' }
        )
    }
}

/// What a tracked stanza is (the report's step name, see [`crate::report::steps`]).
pub type Step = &'static str;

#[derive(Debug)]
struct Pending {
    step: Step,
    remaining: u32,
    /// Closed-loop: the permit of the operation this stanza started, given back when the
    /// last delivery ends.
    _permit: Option<OwnedSemaphorePermit>,
}

/// How a delivery of a tracked stanza ended, as [`Tracker::received`] and
/// [`Tracker::bounced`] report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// The stanza's step.
    pub step: Step,
    /// Its id.
    pub id: TrackedId,
}

/// The table of tracked stanzas still expecting deliveries. Shared by every task.
#[derive(Debug)]
pub struct Tracker {
    clock: Clock,
    next_seq: AtomicU64,
    pending: Vec<Mutex<HashMap<u64, Pending>>>,
    expected: AtomicU64,
    ended: AtomicU64,
    unexpected: AtomicU64,
}

impl Tracker {
    /// An empty tracker on `clock`.
    pub fn new(clock: Clock) -> Tracker {
        Tracker::with_first_seq(clock, 1)
    }

    /// An empty tracker on `clock` whose ids start at `first` (the processes of one run
    /// each take their own range, so that an id one of them sent never matches another's,
    /// [`crate::topology::Shard`]).
    pub fn with_first_seq(clock: Clock, first: u64) -> Tracker {
        Tracker {
            clock,
            next_seq: AtomicU64::new(first.max(1)),
            pending: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            expected: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            unexpected: AtomicU64::new(0),
        }
    }

    /// The clock ids are stamped with.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    fn shard(&self, seq: u64) -> &Mutex<HashMap<u64, Pending>> {
        &self.pending[(seq as usize) % SHARDS]
    }

    /// Starts tracking a stanza of `step` that `expect` deliveries (≥ 1) must end; returns
    /// its id, stamped now. `permit` (closed loop) is released when the last one ends.
    pub fn begin(
        &self,
        step: Step,
        expect: u32,
        echo: bool,
        permit: Option<OwnedSemaphorePermit>,
    ) -> TrackedId {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let id = TrackedId {
            seq,
            sent_us: self.clock.now_us(),
            echo,
        };
        let expect = expect.max(1);
        self.expected
            .fetch_add(u64::from(expect), Ordering::Relaxed);
        self.shard(seq).lock().expect("tracker lock").insert(
            seq,
            Pending {
                step,
                remaining: expect,
                _permit: permit,
            },
        );
        id
    }

    fn end_one(&self, id: &str) -> Option<Delivery> {
        let parsed = TrackedId::parse(id)?;
        let mut shard = self.shard(parsed.seq).lock().expect("tracker lock");
        let Some(p) = shard.get_mut(&parsed.seq) else {
            drop(shard);
            // A duplicate or a delivery beyond the expected count.
            self.unexpected.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let step = p.step;
        p.remaining -= 1;
        if p.remaining == 0 {
            shard.remove(&parsed.seq);
        }
        drop(shard);
        self.ended.fetch_add(1, Ordering::Relaxed);
        Some(Delivery { step, id: parsed })
    }

    /// A delivery of the stanza with `id` arrived. `None` when the id is not tracked or
    /// every expected delivery already ended (counted in [`Tracker::unexpected`]).
    pub fn received(&self, id: &str) -> Option<Delivery> {
        self.end_one(id)
    }

    /// An error stanza answering the stanza with `id` arrived: one expected delivery ends
    /// as bounced.
    pub fn bounced(&self, id: &str) -> Option<Delivery> {
        self.end_one(id)
    }

    /// Deliveries still expected.
    pub fn in_flight(&self) -> u64 {
        self.expected
            .load(Ordering::Relaxed)
            .saturating_sub(self.ended.load(Ordering::Relaxed))
    }

    /// Deliveries expected since the start.
    pub fn expected(&self) -> u64 {
        self.expected.load(Ordering::Relaxed)
    }

    /// Deliveries of tracked ids that were not expected (duplicates, or more recipients
    /// than counted).
    pub fn unexpected(&self) -> u64 {
        self.unexpected.load(Ordering::Relaxed)
    }

    /// Ends tracking: every delivery still expected is lost. Returns `(step, count)` per
    /// step with losses.
    pub fn drain_lost(&self) -> Vec<(Step, u64)> {
        let mut lost: HashMap<Step, u64> = HashMap::new();
        for shard in &self.pending {
            let mut shard = shard.lock().expect("tracker lock");
            for (_, p) in shard.drain() {
                *lost.entry(p.step).or_default() += u64::from(p.remaining);
                self.ended
                    .fetch_add(u64::from(p.remaining), Ordering::Relaxed);
            }
        }
        let mut v: Vec<_> = lost.into_iter().collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_others() {
        let id = TrackedId {
            seq: 42,
            sent_us: 1_234_567,
            echo: true,
        };
        assert_eq!(id.render(), "lg.42.1234567.e");
        assert_eq!(TrackedId::parse(&id.render()), Some(id));
        for bad in [
            "",
            "lg.",
            "lg.1.2",
            "lg.1.2.x",
            "lg.1.2.n.3",
            "xx.1.2.n",
            "lg.a.2.n",
            "probe1",
        ] {
            assert_eq!(TrackedId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn deliveries_end_as_received_bounced_or_lost() {
        let t = Tracker::new(Clock::new());
        let a = t.begin("presence", 3, false, None).render();
        let b = t.begin("message", 1, true, None).render();
        let c = t.begin("message", 1, false, None).render();
        assert_eq!(t.in_flight(), 5);
        assert_eq!(t.received(&a).map(|d| d.step), Some("presence"));
        assert_eq!(t.bounced(&a).map(|d| d.step), Some("presence"));
        let d = t.received(&b).expect("tracked");
        assert!(d.id.echo);
        assert_eq!(t.received(&b), None, "a duplicate is not a delivery");
        assert_eq!(t.unexpected(), 1);
        assert_eq!(t.received("someone-elses-id"), None);
        assert_eq!(t.in_flight(), 2);
        assert_eq!(t.drain_lost(), vec![("message", 1), ("presence", 1)]);
        assert_eq!(t.in_flight(), 0);
        drop(c);
    }

    #[test]
    fn closed_loop_permit_returns_with_the_last_delivery() {
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
        let t = Tracker::new(Clock::new());
        let p = sem.clone().try_acquire_owned().expect("one permit");
        let id = t.begin("presence", 2, false, Some(p)).render();
        assert_eq!(sem.available_permits(), 0);
        t.received(&id);
        assert_eq!(sem.available_permits(), 0);
        t.received(&id);
        assert_eq!(sem.available_permits(), 1);
    }
}
