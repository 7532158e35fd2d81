//! How long a shard polls its inbox before it sleeps: adaptive, from the measured idle gaps.
//!
//! A wake-up from another thread costs 5–10 µs at p50 on this VM (`benches/inbox.rs`), so
//! at high cross-shard rates a shard that sleeps whenever its inbox is empty misses the
//! hand-off target (p99 < 20 µs at 1 M stanzas/s). Spinning (polling the inbox while
//! yielding to the sockets) avoids the wake-up, but every spin that ends with nothing
//! arriving is CPU spent for nothing: with a fixed 50 µs spin after every turn with
//! traffic, a shard at 200 operations/s spends most of its CPU spinning (issue 20).
//!
//! [`IdleSpin`] spins only while it pays: it keeps an exponentially weighted mean of the
//! *idle gap* (from the end of a turn with inbox traffic to the next inbox traffic) and
//! spins for [`IdleSpin::MULTIPLE`] times that mean, at most [`IdleSpin::MAX`], and not at
//! all when the mean is above `MAX` (traffic is sparse: a wake-up now and then is cheaper
//! than spinning). Pure: time is passed in.

use std::time::{Duration, Instant};

/// The adaptive spin policy of one shard loop (see the module documentation).
#[derive(Debug, Clone)]
pub struct IdleSpin {
    /// Mean idle gap, nanoseconds (EWMA with weight 1/8 for each new gap).
    mean_gap_ns: u64,
    /// When the last turn with inbox traffic ended (the idle period being measured).
    idle_since: Option<Instant>,
}

impl IdleSpin {
    /// The longest spin: beyond it, a sleep and a wake-up cost less than the polling.
    pub const MAX: Duration = Duration::from_micros(50);
    /// How many mean idle gaps a spin covers (arrivals are bursty: the mean alone ends
    /// too many spins just before the next arrival).
    pub const MULTIPLE: u32 = 4;
    /// Idle gaps above this count as this much: one long silence should not keep the
    /// shard from spinning for long once traffic is dense again (8 dense arrivals bring
    /// the mean from here back under `MAX`).
    const GAP_CAP: Duration = Duration::from_millis(1);

    /// A policy that does not spin until it has seen dense traffic.
    pub fn new() -> IdleSpin {
        IdleSpin {
            mean_gap_ns: Self::GAP_CAP.as_nanos() as u64,
            idle_since: None,
        }
    }

    /// Inbox traffic was found at `now` (the first drain of a turn that got messages): the
    /// idle gap since the last such turn ended is measured.
    pub fn arrived(&mut self, now: Instant) {
        if let Some(since) = self.idle_since.take() {
            let gap = now.saturating_duration_since(since).min(Self::GAP_CAP);
            let gap = gap.as_nanos() as u64;
            // mean += (gap - mean) / 8, in integers without underflow.
            self.mean_gap_ns = self.mean_gap_ns - self.mean_gap_ns / 8 + gap / 8;
        }
    }

    /// A turn with inbox traffic ended at `now`: the shard goes idle. Returns how long to
    /// poll the inbox before sleeping (zero: sleep at once).
    pub fn went_idle(&mut self, now: Instant) -> Duration {
        self.idle_since = Some(now);
        self.spin()
    }

    /// The current spin: `MULTIPLE` × the mean idle gap, or zero when that mean is above
    /// [`IdleSpin::MAX`].
    pub fn spin(&self) -> Duration {
        let mean = Duration::from_nanos(self.mean_gap_ns);
        if mean > Self::MAX {
            Duration::ZERO
        } else {
            (mean * Self::MULTIPLE).min(Self::MAX)
        }
    }

    /// The mean idle gap (for status and benchmarks).
    pub fn mean_gap(&self) -> Duration {
        Duration::from_nanos(self.mean_gap_ns)
    }
}

impl Default for IdleSpin {
    fn default() -> Self {
        IdleSpin::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives `n` turns: each turn ends, `gap` passes, traffic arrives.
    fn turns(p: &mut IdleSpin, t: &mut Instant, gap: Duration, n: usize) -> Duration {
        let mut spin = Duration::ZERO;
        for _ in 0..n {
            spin = p.went_idle(*t);
            *t += gap;
            p.arrived(*t);
        }
        spin
    }

    #[test]
    fn sparse_traffic_never_spins() {
        let mut p = IdleSpin::new();
        let mut t = Instant::now();
        assert_eq!(p.spin(), Duration::ZERO, "no spin before dense traffic");
        // 200 operations/s: gaps of milliseconds.
        assert_eq!(
            turns(&mut p, &mut t, Duration::from_millis(5), 1000),
            Duration::ZERO
        );
        assert_eq!(
            p.mean_gap(),
            IdleSpin::GAP_CAP,
            "long gaps count as the cap"
        );
        // Gaps just above the longest spin: still no spin.
        turns(&mut p, &mut t, Duration::from_micros(60), 200);
        assert_eq!(p.spin(), Duration::ZERO);
    }

    #[test]
    fn dense_traffic_spins_a_multiple_of_the_gap_within_the_bound() {
        let mut p = IdleSpin::new();
        let mut t = Instant::now();
        turns(&mut p, &mut t, Duration::from_micros(2), 200);
        let s = p.spin();
        assert!(
            s >= Duration::from_micros(8) && s <= Duration::from_micros(9),
            "{s:?}: 4 × a 2 µs gap"
        );
        turns(&mut p, &mut t, Duration::from_micros(20), 200);
        assert_eq!(p.spin(), IdleSpin::MAX, "4 × 20 µs is capped at 50 µs");
    }

    #[test]
    fn dense_traffic_after_a_long_silence_spins_again_within_a_few_turns() {
        let mut p = IdleSpin::new();
        let mut t = Instant::now();
        turns(&mut p, &mut t, Duration::from_micros(1), 200);
        assert!(p.spin() > Duration::ZERO);
        // An hour of silence weighs like one capped gap.
        turns(&mut p, &mut t, Duration::from_secs(3600), 1);
        assert_eq!(p.spin(), Duration::ZERO, "the silence stops the spinning");
        let mut back = 0;
        while p.spin() == Duration::ZERO {
            turns(&mut p, &mut t, Duration::from_micros(1), 1);
            back += 1;
            assert!(back <= 20, "still not spinning after {back} dense turns");
        }
        assert!(back <= 16, "{back} turns to come back");
    }

    #[test]
    fn traffic_without_a_preceding_idle_turn_is_not_a_gap() {
        let mut p = IdleSpin::new();
        let t = Instant::now();
        let before = p.mean_gap();
        // Arrivals seen while no idle period was open (a turn woken by a socket) change
        // nothing.
        p.arrived(t);
        p.arrived(t + Duration::from_secs(1));
        assert_eq!(p.mean_gap(), before);
    }
}
