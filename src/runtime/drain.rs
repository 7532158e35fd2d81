//! The end of a graceful shutdown across shards: no cross-shard message is lost because
//! its destination stopped first (issue 23).
//!
//! Shards stop independently, yet a shard that has closed its own streams can still be
//! sent work by another one still draining (a session ending there sends unavailable
//! presence, RFC 6121 §4.5.2, to a contact owned here; a stanza handled here is bounced
//! back there). So a shard finishes in two phases:
//!
//! 1. it closes its streams and waits for them to end (`shutdown.drain_timeout`), then
//!    declares itself *quiet*: from now on it creates cross-shard messages only while
//!    handling one from its inbox;
//! 2. it keeps draining its inbox until every shard is quiet and every cross-shard
//!    message sent has been handled by its destination, then stops.
//!
//! Each shard counts the messages it sends (in `Shard::send_to`,
//! before they leave its outbox) and those it has handled (after the handling, so what the
//! handling sent is counted first). The termination test reads every shard's counters and
//! quiet flag twice: the counters only grow, so equal readings held together at the
//! moment between the two readings, when nothing was in flight, no shard was handling a
//! message and none could create one any more (the "four counter" method, Mattern 1987).
//! Phase 2 is bounded in time too; what is still undelivered then is counted in the
//! shutdown WARN, never silently dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// One shard's counters, on their own cache line (written by that shard only).
#[repr(align(128))]
#[derive(Default)]
struct Counters {
    /// Cross-shard messages this shard has sent (pushed into its outbox).
    sent: AtomicU64,
    /// Cross-shard messages this shard has taken from its inbox and handled.
    handled: AtomicU64,
    /// Phase 1 is over: no stream is left, new messages come only from handling.
    quiet: AtomicBool,
    /// Wakes the shard in phase 2 when the test may have become true.
    wake: Notify,
}

/// The shared state of the two-phase shutdown drain (see the module documentation).
pub(crate) struct DrainBarrier {
    shards: Vec<Counters>,
}

impl DrainBarrier {
    /// A barrier for `n` shards.
    pub(crate) fn new(n: usize) -> Arc<Self> {
        Arc::new(DrainBarrier {
            shards: (0..n).map(|_| Counters::default()).collect(),
        })
    }

    /// Shard `id` sent `n` more cross-shard messages (hot path: one uncontended store).
    pub(crate) fn sent(&self, id: usize, n: u64) {
        let c = &self.shards[id].sent;
        c.store(c.load(Ordering::Relaxed) + n, Ordering::SeqCst);
    }

    /// Shard `id` handled `n` more cross-shard messages; `shutting_down` wakes the other
    /// shards waiting in phase 2 (only then can the test have become true).
    pub(crate) fn handled(&self, id: usize, n: u64, shutting_down: bool) {
        if n == 0 {
            return;
        }
        let c = &self.shards[id].handled;
        c.store(c.load(Ordering::Relaxed) + n, Ordering::SeqCst);
        if shutting_down {
            self.wake_all();
        }
    }

    /// Shard `id` enters phase 2.
    pub(crate) fn quiet(&self, id: usize) {
        self.shards[id].quiet.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    /// Resolves when shard `id` should test [`DrainBarrier::drained`] again.
    pub(crate) async fn changed(&self, id: usize) {
        self.shards[id].wake.notified().await
    }

    /// Whether every shard is quiet and every cross-shard message sent has been handled:
    /// no shard will be sent anything any more.
    pub(crate) fn drained(&self) -> bool {
        let first = self.read();
        first.0 && first.1 == first.2 && self.read() == first
    }

    /// (all quiet, total sent, total handled) and each shard's counters, in one reading.
    fn read(&self) -> (bool, u64, u64, Vec<(u64, u64)>) {
        let mut all_quiet = true;
        let (mut sent, mut handled) = (0, 0);
        let mut each = Vec::with_capacity(self.shards.len());
        for c in &self.shards {
            all_quiet &= c.quiet.load(Ordering::SeqCst);
            let h = c.handled.load(Ordering::SeqCst);
            let s = c.sent.load(Ordering::SeqCst);
            sent += s;
            handled += h;
            each.push((s, h));
        }
        (all_quiet, sent, handled, each)
    }

    fn wake_all(&self) {
        for c in &self.shards {
            c.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drained_only_when_all_quiet_and_balanced() {
        let b = DrainBarrier::new(2);
        assert!(!b.drained());
        b.sent(0, 1);
        b.quiet(0);
        b.quiet(1);
        assert!(!b.drained(), "one message in flight");
        b.handled(1, 1, true);
        assert!(b.drained());
    }
}
