//! Flood limits as pure state with time passed in (issue 21; anchors: ejabberd
//! `mod_pres_counter` and `max_fsm_queue`, Prosody `limits` and `mod_limits`):
//!
//! - [`TokenBucket`]: at most `per_minute` events per minute, with a burst of
//!   `per_minute` (subscription requests per remote domain).
//! - [`FailureWindow`]: failures counted in a fixed window; past a limit the subject is
//!   blocked until the window ends (SASL failures per client address).
//! - [`Throttle`]: at most one event per interval (a WARN per remote domain, not one per
//!   refused stanza).
//!
//! None reads a clock: each takes `now`, so tests drive them with made-up instants.

use std::time::{Duration, Instant};

/// Credits in one token: a token is one event, and `per_minute` tokens come back per
/// minute, so with credits counted in 1/60000 of a token the refill is exactly
/// `per_minute` credits per millisecond (no floating point, no drift).
const CREDITS_PER_TOKEN: u64 = 60_000;

/// A token bucket of capacity `per_minute` refilled at `per_minute` tokens per minute
/// (continuously, at millisecond granularity). Starts full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    /// Credits held ([`CREDITS_PER_TOKEN`] per token).
    credits: u64,
    /// When `credits` was last brought up to date.
    at: Instant,
}

impl TokenBucket {
    /// A full bucket for a rate of `per_minute` events per minute, at `now`.
    pub fn full(per_minute: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            credits: u64::from(per_minute) * CREDITS_PER_TOKEN,
            at: now,
        }
    }

    /// Takes one token if there is one at `now` (after refilling for the time since the
    /// last call at `per_minute` per minute); `false` when the bucket is empty: the event
    /// is over the rate. `now` earlier than the last call counts as no time passed.
    pub fn try_take(&mut self, per_minute: u32, now: Instant) -> bool {
        self.refill(per_minute, now);
        if self.credits >= CREDITS_PER_TOKEN {
            self.credits -= CREDITS_PER_TOKEN;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full again at `now` (so forgetting it loses nothing).
    pub fn is_full(&self, per_minute: u32, now: Instant) -> bool {
        let mut b = *self;
        b.refill(per_minute, now);
        b.credits >= u64::from(per_minute) * CREDITS_PER_TOKEN
    }

    fn refill(&mut self, per_minute: u32, now: Instant) {
        let cap = u64::from(per_minute) * CREDITS_PER_TOKEN;
        let ms = now.saturating_duration_since(self.at).as_millis();
        let add = u64::try_from(ms)
            .unwrap_or(u64::MAX)
            .saturating_mul(u64::from(per_minute));
        self.credits = self.credits.saturating_add(add).min(cap);
        if now > self.at {
            self.at = now;
        }
    }
}

/// Failures counted in fixed windows of a given length: once `limit` failures fall in
/// one window, the subject is blocked until that window ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureWindow {
    /// Start of the current window.
    start: Instant,
    /// Failures in it.
    count: u32,
}

impl FailureWindow {
    /// No failures yet; the first window starts at `now`.
    pub fn new(now: Instant) -> FailureWindow {
        FailureWindow {
            start: now,
            count: 0,
        }
    }

    /// Records one failure at `now` (a new window begins when `window` has passed since
    /// the last one began); whether the subject is now blocked (`limit` reached).
    pub fn fail(&mut self, now: Instant, limit: u32, window: Duration) -> bool {
        if now.saturating_duration_since(self.start) >= window {
            self.start = now;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        self.count >= limit
    }

    /// Whether the subject is blocked at `now`: `limit` failures in the window still
    /// running.
    pub fn is_blocked(&self, now: Instant, limit: u32, window: Duration) -> bool {
        self.count >= limit && now.saturating_duration_since(self.start) < window
    }

    /// Whether the window has ended at `now` (so forgetting it loses nothing).
    pub fn is_expired(&self, now: Instant, window: Duration) -> bool {
        now.saturating_duration_since(self.start) >= window
    }
}

/// At most one event per interval: [`Throttle::ready`] says whether one may happen now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Throttle {
    last: Option<Instant>,
}

impl Throttle {
    /// Whether an event may happen at `now` (none did within `interval` before); if so it
    /// is recorded as happening.
    pub fn ready(&mut self, now: Instant, interval: Duration) -> bool {
        match self.last {
            Some(l) if now.saturating_duration_since(l) < interval => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A starting instant for the tests (the only clock read; everything after it is
    /// made up).
    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let t0 = t0();
        let mut b = TokenBucket::full(60, t0);
        // A burst of 60 at once, then nothing.
        assert!((0..60).all(|_| b.try_take(60, t0)));
        assert!(!b.try_take(60, t0));
        // 60 per minute is one per second: 999 ms is not enough, 1000 ms is.
        assert!(!b.try_take(60, t0 + 999 * MS));
        assert!(b.try_take(60, t0 + 1000 * MS));
        assert!(!b.try_take(60, t0 + 1000 * MS));
        assert!(!b.is_full(60, t0 + 60 * 1000 * MS));
        assert!(b.is_full(60, t0 + 61 * 1000 * MS));
        // Refill is capped at the burst.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..100).filter(|_| b.try_take(60, later)).count(), 60);
    }

    #[test]
    fn bucket_ignores_time_going_backwards() {
        let t0 = t0() + Duration::from_secs(10);
        let mut b = TokenBucket::full(1, t0);
        assert!(b.try_take(1, t0));
        assert!(!b.try_take(1, t0 - Duration::from_secs(5)));
        assert!(!b.try_take(1, t0 + 59_999 * MS));
        assert!(b.try_take(1, t0 + 60_000 * MS));
    }

    #[test]
    fn bucket_of_zero_takes_nothing() {
        let t0 = t0();
        let mut b = TokenBucket::full(0, t0);
        assert!(!b.try_take(0, t0 + Duration::from_secs(600)));
    }

    #[test]
    fn failures_block_until_the_window_ends() {
        let t0 = t0();
        let w = Duration::from_secs(60);
        let mut f = FailureWindow::new(t0);
        assert!(!f.fail(t0, 3, w));
        assert!(!f.fail(t0 + 10 * MS, 3, w));
        assert!(!f.is_blocked(t0 + 10 * MS, 3, w));
        assert!(f.fail(t0 + 20 * MS, 3, w));
        assert!(f.is_blocked(t0 + w - MS, 3, w));
        assert!(!f.is_blocked(t0 + w, 3, w));
        assert!(f.is_expired(t0 + w, w));
        // A failure after the window starts a new count.
        assert!(!f.fail(t0 + w, 3, w));
        assert!(!f.is_blocked(t0 + w, 3, w));
    }

    #[test]
    fn throttle_lets_one_event_per_interval() {
        let t0 = t0();
        let i = Duration::from_secs(60);
        let mut t = Throttle::default();
        assert!(t.ready(t0, i));
        assert!(!t.ready(t0 + i - MS, i));
        assert!(t.ready(t0 + i, i));
    }
}
