//! Cross-shard inboxes: a full mesh of bounded channels between the shards (DESIGN.md
//! "Ownership").
//!
//! # Shape
//!
//! [`mesh`]`(n, capacity_batches, max_batch)` builds `n` [`ShardInbox`]es, element `i`
//! for shard `i` (moved into that shard's thread). Every ordered pair `(src, dst)`,
//! including `src == dst`, has its own bounded crossbeam channel of `capacity_batches`
//! batches, so a sender never contends with another sender, and the receiver of `dst`
//! never contends with anything but the one sender of each channel. The item carried is
//! a batch, `Vec<T>`, of at most `max_batch` messages: a shard queues messages with
//! [`ShardInbox::push`] during a loop turn and sends one batch per destination with
//! [`ShardInbox::flush`] at the end of the turn. So one inbox holds at most
//! `capacity_batches * max_batch` messages in its channel plus `max_batch` in the
//! sender's pending batch; nothing grows without bound.
//!
//! A message for the shard itself (`dst == self.shard()`) takes the same path, through
//! the `(i, i)` channel: same bound, same order, same back-pressure, one code path. It is
//! received by the shard's own [`ShardInbox::drain`].
//!
//! # Back-pressure contract
//!
//! Nothing is dropped. [`ShardInbox::push`] hands the message back (`Err(msg)`) when the
//! destination's pending batch already holds `max_batch` messages and its channel is full.
//! The caller then keeps the message, stops reading from the socket that produced it (TCP
//! back-pressure, DESIGN.md "Nothing grows without bound"), keeps draining its own inbox
//! (two shards each waiting for room in the other's inbox would otherwise deadlock), and
//! retries after [`ShardInbox::wait_space`] resolves (race it with
//! [`ShardInbox::wait`] in a `select!`).
//!
//! # Wake-up edge
//!
//! A receiving shard that found all of its channels empty *arms* itself (an `AtomicBool`)
//! and sleeps on a [`tokio::sync::Notify`]. A sender that has just sent a batch does
//! `if armed.swap(false) { notify.notify_one() }`: only the first batch after the
//! receiver went to sleep (the empty → non-empty edge) pays for a wake-up; while the
//! receiver is busy, `armed` is false and sending costs one relaxed load. `Notify`
//! keeps a permit when nobody is waiting yet, so a wake-up sent between the receiver's
//! last emptiness check and its `.await` is not lost. The arm-then-check on one side and
//! the send-then-check on the other are each separated by a `SeqCst` fence (the
//! store-buffer pattern), so at least one side sees the other: either the receiver sees
//! the batch, or the sender sees `armed`. The same protocol, with a second flag and
//! `Notify`, wakes a back-pressured sender when a receiver drains one of its channels.
//!
//! # Buffer reuse
//!
//! Each pair also has a return channel on which the receiver gives the emptied batch
//! `Vec` (capacity kept) back to its sender, which reuses it for its next batch to that
//! destination: in the steady state sending a batch allocates nothing (see
//! `benches/inbox.rs`, which counts allocations).

use std::fmt;
use std::future::Future;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use tokio::sync::Notify;

/// The wake-up state of one shard, shared by all shards. Cache-line aligned so that one
/// shard's flags do not share a line with another's.
#[repr(align(128))]
#[derive(Default)]
struct Signals {
    /// Set by the shard just before it sleeps in `wait` (all its channels were empty);
    /// cleared by the first sender that sends it a batch afterwards.
    armed: AtomicBool,
    /// Woken on the empty → non-empty edge.
    notify: Notify,
    /// Set by the shard just before it sleeps in `wait_space` (all destinations it has a
    /// pending batch for were full); cleared by the first receiver that drains one of
    /// this shard's channels afterwards.
    space_armed: AtomicBool,
    /// Woken when a receiver has made room in one of this shard's outgoing channels.
    space: Notify,
}

/// Builds the full mesh of inboxes between `shards` shards: element `i` of the result
/// belongs to shard `i`.
///
/// Each ordered pair `(src, dst)` (including `src == dst`) gets a bounded channel of
/// `capacity_batches` batches of at most `max_batch` messages each, plus a return channel
/// for emptied batch buffers. Memory is `O(shards² · capacity_batches)` channel slots,
/// allocated here; the batch buffers (`max_batch` slots of `T` each) are allocated on
/// first use and then reused.
///
/// # Panics
///
/// If `shards`, `capacity_batches` or `max_batch` is zero (a zero-capacity crossbeam
/// channel is a rendezvous channel, which a non-blocking sender cannot use).
pub fn mesh<T: Send>(
    shards: usize,
    capacity_batches: usize,
    max_batch: usize,
) -> Vec<ShardInbox<T>> {
    assert!(shards > 0, "mesh: at least one shard");
    assert!(
        capacity_batches > 0,
        "mesh: capacity_batches must be at least 1"
    );
    assert!(max_batch > 0, "mesh: max_batch must be at least 1");
    let signals: Arc<[Signals]> = (0..shards).map(|_| Signals::default()).collect();
    let mut to: Vec<Vec<Sender<Vec<T>>>> =
        (0..shards).map(|_| Vec::with_capacity(shards)).collect();
    let mut returned: Vec<Vec<Receiver<Vec<T>>>> =
        (0..shards).map(|_| Vec::with_capacity(shards)).collect();
    let mut from: Vec<Vec<Receiver<Vec<T>>>> =
        (0..shards).map(|_| Vec::with_capacity(shards)).collect();
    let mut give_back: Vec<Vec<Sender<Vec<T>>>> =
        (0..shards).map(|_| Vec::with_capacity(shards)).collect();
    for src in 0..shards {
        for dst in 0..shards {
            let (tx, rx) = bounded(capacity_batches);
            // At most `capacity_batches` buffers are in the channel and one is being
            // filled, so this never overflows in the steady state (an overflow would only
            // free the buffer).
            let (back_tx, back_rx) = bounded(capacity_batches + 1);
            to[src].push(tx);
            returned[src].push(back_rx);
            from[dst].push(rx);
            give_back[dst].push(back_tx);
        }
    }
    let mut inboxes = Vec::with_capacity(shards);
    let parts = to.into_iter().zip(returned).zip(from).zip(give_back);
    for (shard, (((to, returned), from), give_back)) in parts.enumerate() {
        inboxes.push(ShardInbox {
            shard,
            max_batch,
            to,
            returned,
            from,
            give_back,
            batch: (0..shards).map(|_| Vec::new()).collect(),
            pending_msgs: 0,
            signals: Arc::clone(&signals),
            cursor: 0,
            touched: vec![false; shards],
        });
    }
    inboxes
}

/// One shard's end of the [`mesh`]: its senders to every shard, its receivers from every
/// shard, its pending batches and the shared wake-up signals.
///
/// `Send` (when `T: Send`): built on one thread, moved into the shard's thread, used
/// there only (`&mut self` for every operation that moves messages).
pub struct ShardInbox<T> {
    /// This shard's index.
    shard: usize,
    /// Most messages in one batch.
    max_batch: usize,
    /// `to[dst]`: channel from this shard to `dst`.
    to: Vec<Sender<Vec<T>>>,
    /// `returned[dst]`: emptied batch buffers that `dst` gives back to us.
    returned: Vec<Receiver<Vec<T>>>,
    /// `from[src]`: channel from `src` to this shard.
    from: Vec<Receiver<Vec<T>>>,
    /// `give_back[src]`: where emptied buffers from `src` go back.
    give_back: Vec<Sender<Vec<T>>>,
    /// `batch[dst]`: the batch being built for `dst` (at most `max_batch` messages).
    batch: Vec<Vec<T>>,
    /// Messages in `batch`, all destinations together.
    pending_msgs: usize,
    /// Wake-up state of every shard.
    signals: Arc<[Signals]>,
    /// Next source `drain` looks at (round-robin).
    cursor: usize,
    /// Scratch: which peers `flush` sent to / `drain` received from in this call.
    touched: Vec<bool>,
}

impl<T> fmt::Debug for ShardInbox<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardInbox")
            .field("shard", &self.shard)
            .field("shards", &self.to.len())
            .field("max_batch", &self.max_batch)
            .field("pending", &self.pending_msgs)
            .finish_non_exhaustive()
    }
}

impl<T: Send> ShardInbox<T> {
    /// This shard's index, `0..shards()`.
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// Number of shards in the mesh.
    pub fn shards(&self) -> usize {
        self.to.len()
    }

    /// Queues `msg` for shard `dst` in this turn's batch for `dst` (`dst` may be
    /// `self.shard()`: it goes through this shard's own channel, like any other).
    ///
    /// When the batch for `dst` already holds `max_batch` messages it is sent at once
    /// (waking `dst` if it sleeps) and `msg` starts the next one. If that send finds the
    /// channel full, `msg` is handed back intact as `Err(msg)`: back-pressure. The caller
    /// keeps it, stops reading from the socket that fed it, keeps draining its own inbox,
    /// and retries after [`wait_space`](Self::wait_space). Never drops a message.
    ///
    /// Messages to one destination are received in the order they were pushed.
    ///
    /// # Panics
    ///
    /// If `dst >= self.shards()`.
    pub fn push(&mut self, dst: usize, msg: T) -> Result<(), T> {
        if self.batch[dst].len() >= self.max_batch {
            if !self.send(dst) {
                return Err(msg);
            }
            fence(Ordering::SeqCst);
            self.wake(dst);
        }
        let batch = &mut self.batch[dst];
        if batch.capacity() == 0 {
            *batch = self.returned[dst]
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(self.max_batch));
        }
        batch.push(msg);
        self.pending_msgs += 1;
        Ok(())
    }

    /// End of a loop turn: tries to send every pending batch (`try_send`, never blocks).
    /// A batch that does not fit stays pending (it holds at most `max_batch` messages,
    /// and [`push`](Self::push) refuses more); the next `flush` retries it.
    ///
    /// Wakes a destination only if it is asleep in [`wait`](Self::wait), i.e. on the
    /// empty → non-empty edge of its inbox (see the module docs). Returns the number of
    /// batches (destinations) still pending; `0` means everything pushed was sent.
    pub fn flush(&mut self) -> usize {
        let mut sent = false;
        let mut still = 0;
        for dst in 0..self.batch.len() {
            if self.batch[dst].is_empty() {
                continue;
            }
            if self.send(dst) {
                self.touched[dst] = true;
                sent = true;
            } else {
                still += 1;
            }
        }
        if sent {
            // Pairs with the fence in `wait`: the send above is visible to a receiver
            // that armed before this fence, or this shard sees `armed` below.
            fence(Ordering::SeqCst);
            for dst in 0..self.touched.len() {
                if std::mem::take(&mut self.touched[dst]) {
                    self.wake(dst);
                }
            }
        }
        still
    }

    /// Receives up to `max_batches` batches from all sources, appending their messages to
    /// `out` in order, and returns the number of messages received.
    ///
    /// Sources are served round-robin, one batch per source per visit, and the position
    /// is kept across calls, so a busy source cannot starve the others. Per source, the
    /// order is the push order. Emptied batch buffers go back to their sender for reuse.
    /// When a source is asleep in [`wait_space`](Self::wait_space) and a channel from it
    /// was drained here, that source is woken. (The test is "the source waits for room",
    /// not "the channel was full before this receive": the latter races with a
    /// concurrent send filling the channel and would lose the wake-up.)
    pub fn drain(&mut self, out: &mut Vec<T>, max_batches: usize) -> usize {
        let n = self.from.len();
        let (mut batches, mut msgs, mut idle) = (0, 0, 0);
        while batches < max_batches && idle < n {
            let src = self.cursor;
            self.cursor = if src + 1 == n { 0 } else { src + 1 };
            match self.from[src].try_recv() {
                Ok(mut batch) => {
                    idle = 0;
                    batches += 1;
                    msgs += batch.len();
                    if out.is_empty() {
                        // The usual case (one batch per call into an emptied `out`): take
                        // the batch's buffer itself rather than copying its messages, and
                        // give `out`'s empty buffer back for reuse instead.
                        std::mem::swap(out, &mut batch);
                    } else {
                        out.append(&mut batch);
                    }
                    // Full return channel (cannot happen in the steady state): free it.
                    let _ = self.give_back[src].try_send(batch);
                    self.touched[src] = true;
                }
                Err(_) => idle += 1,
            }
        }
        if batches > 0 {
            // Pairs with the fence in `wait_space` (store-buffer pattern, as in `flush`).
            fence(Ordering::SeqCst);
            for src in 0..n {
                if std::mem::take(&mut self.touched[src]) {
                    let s = &self.signals[src];
                    if s.space_armed.load(Ordering::Relaxed)
                        && s.space_armed.swap(false, Ordering::AcqRel)
                    {
                        s.space.notify_one();
                    }
                }
            }
        }
        msgs
    }

    /// Resolves when a message may be waiting in this shard's inbox.
    ///
    /// On the call, arms this shard's wake-up flag and re-checks every incoming channel:
    /// if one is non-empty the future resolves at once, otherwise it awaits the `Notify`
    /// that the next sender's [`flush`](Self::flush) (or early send in
    /// [`push`](Self::push)) fires. No wake-up is lost: a send between the check and the
    /// `.await` leaves a permit in the `Notify`.
    ///
    /// Cancel-safe: dropping the future (it is raced with socket work in a `select!`)
    /// loses nothing; at worst a later `wait` resolves once spuriously. Spurious
    /// resolutions are possible in general: the caller drains, and waits again if it got
    /// nothing. The future borrows only the shared signals, so it is `Send`.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + '_ {
        let s = &self.signals[self.shard];
        s.armed.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let ready = self.from.iter().any(|rx| !rx.is_empty());
        if ready {
            s.armed.store(false, Ordering::Relaxed);
        }
        async move {
            if !ready {
                s.notify.notified().await;
            }
        }
    }

    /// Resolves when a destination that had no room may have room again, i.e. when the
    /// next [`flush`](Self::flush) or [`push`](Self::push) may make progress.
    ///
    /// Resolves at once when nothing is pending or some pending destination's channel is
    /// not full. Otherwise it arms this shard's space flag and awaits the `Notify` that
    /// the next [`drain`](Self::drain) of one of this shard's channels fires. Cancel-safe
    /// and possibly spurious, like [`wait`](Self::wait). A destination shard that has
    /// stopped (its inbox dropped) never drains, so waiting for it never resolves.
    pub fn wait_space(&self) -> impl Future<Output = ()> + Send + '_ {
        let s = &self.signals[self.shard];
        s.space_armed.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let blocked = self.pending_msgs > 0
            && self
                .batch
                .iter()
                .zip(&self.to)
                .filter(|(b, _)| !b.is_empty())
                .all(|(_, tx)| tx.is_full());
        if !blocked {
            s.space_armed.store(false, Ordering::Relaxed);
        }
        async move {
            if blocked {
                s.space.notified().await;
            }
        }
    }

    /// Whether a batch is waiting in this shard's inbox (cheap; no wake-up state touched).
    pub fn has_waiting(&self) -> bool {
        self.from.iter().any(|rx| !rx.is_empty())
    }

    /// Messages pushed but not yet sent (still in pending batches), all destinations.
    pub fn pending(&self) -> usize {
        self.pending_msgs
    }

    /// Current depth, in batches, of the channel from this shard to `dst` (sent, not yet
    /// drained by `dst`), for metrics. At most `capacity_batches`.
    ///
    /// # Panics
    ///
    /// If `dst >= self.shards()`.
    pub fn depth_to(&self, dst: usize) -> usize {
        self.to[dst].len()
    }

    /// Tries to send the pending batch for `dst`; on success the next batch is empty with
    /// no buffer (one is taken from the return channel on the next push).
    fn send(&mut self, dst: usize) -> bool {
        let batch = std::mem::take(&mut self.batch[dst]);
        let n = batch.len();
        match self.to[dst].try_send(batch) {
            Ok(()) => {
                self.pending_msgs -= n;
                true
            }
            // A disconnected destination (its shard stopped) keeps the batch pending, as
            // a full one would: nothing is dropped.
            Err(TrySendError::Full(batch)) | Err(TrySendError::Disconnected(batch)) => {
                self.batch[dst] = batch;
                false
            }
        }
    }

    /// Wakes `dst` if it sleeps in `wait`. The caller has sent to `dst` and then issued a
    /// `SeqCst` fence.
    fn wake(&self, dst: usize) {
        let s = &self.signals[dst];
        if s.armed.load(Ordering::Relaxed) && s.armed.swap(false, Ordering::AcqRel) {
            s.notify.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn two<T: Send>(cap: usize, max_batch: usize) -> (ShardInbox<T>, ShardInbox<T>) {
        let mut m = mesh(2, cap, max_batch).into_iter();
        (m.next().unwrap(), m.next().unwrap())
    }

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn shapes() {
        let m: Vec<ShardInbox<u32>> = mesh(3, 2, 4);
        assert_eq!(m.len(), 3);
        for (i, ib) in m.iter().enumerate() {
            assert_eq!(ib.shard(), i);
            assert_eq!(ib.shards(), 3);
            assert_eq!(ib.pending(), 0);
            assert_eq!(ib.depth_to(0), 0);
        }
        fn is_send<X: Send>() {}
        is_send::<ShardInbox<bytes::Bytes>>();
    }

    #[test]
    fn batches_per_destination_per_turn() {
        let (mut a, mut b) = two::<u32>(4, 3);
        for i in 0..5 {
            a.push(1, i).unwrap();
        }
        // The first 3 filled a batch that went out when the 4th was pushed.
        assert_eq!(a.depth_to(1), 1);
        assert_eq!(a.pending(), 2);
        assert_eq!(a.flush(), 0);
        assert_eq!(a.pending(), 0);
        assert_eq!(a.depth_to(1), 2);
        let mut out = Vec::new();
        assert_eq!(b.drain(&mut out, 1), 3);
        assert_eq!(out, [0, 1, 2]);
        assert_eq!(b.drain(&mut out, 8), 2);
        assert_eq!(out, [0, 1, 2, 3, 4]);
        assert_eq!(b.drain(&mut out, 8), 0);
        // An empty flush sends nothing.
        assert_eq!(a.flush(), 0);
        assert_eq!(a.depth_to(1), 0);
    }

    #[test]
    fn to_self_goes_through_own_channel() {
        let (mut a, _b) = two::<&str>(1, 2);
        a.push(0, "me").unwrap();
        assert_eq!(a.flush(), 0);
        assert_eq!(a.depth_to(0), 1);
        let mut out = Vec::new();
        assert_eq!(a.drain(&mut out, 4), 1);
        assert_eq!(out, ["me"]);
    }

    #[test]
    fn full_hands_the_message_back_intact_and_flush_retries() {
        let (mut a, mut b) = two::<String>(1, 2);
        a.push(1, "m0".into()).unwrap();
        a.push(1, "m1".into()).unwrap();
        assert_eq!(a.flush(), 0); // channel now full (1 batch)
        a.push(1, "m2".into()).unwrap();
        a.push(1, "m3".into()).unwrap();
        let refused = a.push(1, "m4 with its own bytes".into());
        assert_eq!(refused, Err("m4 with its own bytes".to_string()));
        assert_eq!(a.pending(), 2);
        assert_eq!(a.depth_to(1), 1);
        // Still full: the batch stays pending.
        assert_eq!(a.flush(), 1);
        assert_eq!(a.pending(), 2);
        let mut out = Vec::new();
        assert_eq!(b.drain(&mut out, 8), 2);
        assert_eq!(a.flush(), 0);
        assert_eq!(a.pending(), 0);
        a.push(1, "m4 with its own bytes".into()).unwrap();
        // The channel holds one batch (m2, m3): m4 waits for it to be drained.
        assert_eq!(a.flush(), 1);
        assert_eq!(b.drain(&mut out, 8), 2);
        assert_eq!(a.flush(), 0);
        assert_eq!(b.drain(&mut out, 8), 1);
        assert_eq!(out, ["m0", "m1", "m2", "m3", "m4 with its own bytes"]);
    }

    #[test]
    fn other_destinations_are_not_blocked_by_a_full_one() {
        let mut m = mesh::<u8>(3, 1, 1).into_iter();
        let (mut a, _b, mut c) = (m.next().unwrap(), m.next().unwrap(), m.next().unwrap());
        a.push(1, 1).unwrap();
        a.push(1, 2).unwrap(); // first batch sent, channel to 1 full
        assert_eq!(a.push(1, 3), Err(3));
        a.push(2, 9).unwrap();
        a.push(2, 10).unwrap();
        assert_eq!(a.flush(), 2); // to 1 and to 2 both full now, one batch each pending
        let mut out = Vec::new();
        assert_eq!(c.drain(&mut out, 8), 1);
        assert_eq!(a.flush(), 1);
        assert_eq!(c.drain(&mut out, 8), 1);
        assert_eq!(out, [9, 10]);
    }

    #[test]
    fn drain_is_round_robin_across_sources() {
        let mut m = mesh::<(usize, u32)>(4, 8, 1);
        let mut dst = m.pop().unwrap(); // shard 3
        for src in &mut m {
            for seq in 0..4 {
                src.push(3, (src.shard(), seq)).unwrap();
            }
            assert_eq!(src.flush(), 0);
        }
        let mut out = Vec::new();
        assert_eq!(dst.drain(&mut out, 3), 3);
        assert_eq!(out, [(0, 0), (1, 0), (2, 0)]);
        out.clear();
        // Resumes where it stopped, one batch per source per visit.
        assert_eq!(dst.drain(&mut out, 4), 4);
        assert_eq!(out, [(0, 1), (1, 1), (2, 1), (0, 2)]);
        out.clear();
        assert_eq!(dst.drain(&mut out, 100), 5);
        assert_eq!(out, [(1, 2), (2, 2), (0, 3), (1, 3), (2, 3)]);
        assert_eq!(dst.drain(&mut out, 0), 0);
    }

    #[test]
    fn batch_buffers_are_reused() {
        let (mut a, mut b) = two::<u64>(2, 16);
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for round in 0..10u64 {
            for i in 0..16 {
                a.push(1, round * 16 + i).unwrap();
            }
            let ptr = a.batch[1].as_ptr() as usize;
            seen.insert(ptr);
            assert_eq!(a.flush(), 0);
            out.clear();
            assert_eq!(b.drain(&mut out, 4), 16);
        }
        // Two buffers and no more: the receiver takes the sender's batch buffer and gives
        // its own emptied `out` back, so they swap places each round (nothing is
        // allocated, or copied, per round once both exist).
        assert_eq!(seen.len(), 2, "{seen:?}");
    }

    #[test]
    fn wait_resolves_on_send_and_stays_pending_when_empty() {
        let (a, mut b) = two::<u8>(2, 4);
        let mut a = a;
        let rt = current_thread();
        rt.block_on(async {
            // Sent while the receiver was not armed (no notification, no permit): `wait`
            // sees the non-empty channel when it re-checks after arming.
            a.push(1, 6).unwrap();
            a.flush();
            tokio::time::timeout(Duration::from_secs(1), b.wait())
                .await
                .expect("non-empty inbox not seen");
            let mut out = Vec::new();
            assert_eq!(b.drain(&mut out, 4), 1);
            // Nothing queued: wait does not resolve by itself.
            let idle = tokio::time::timeout(Duration::from_millis(20), b.wait()).await;
            assert!(idle.is_err(), "wait resolved with an empty inbox");
            // A message sent while armed (the timed-out wait above left `armed` set) is
            // signalled: the permit makes the next wait resolve at once.
            a.push(1, 7).unwrap();
            a.flush();
            tokio::time::timeout(Duration::from_secs(1), b.wait())
                .await
                .expect("wake-up lost");
            assert_eq!(b.drain(&mut out, 4), 1);
            assert_eq!(out, [6, 7]);
        });
    }

    #[test]
    fn wait_space_resolves_when_the_destination_drains() {
        let (mut a, mut b) = two::<u8>(1, 1);
        let rt = current_thread();
        rt.block_on(async {
            // Nothing pending: nothing to wait for.
            tokio::time::timeout(Duration::from_millis(100), a.wait_space())
                .await
                .expect("wait_space with nothing pending");
            a.push(1, 0).unwrap();
            a.push(1, 1).unwrap(); // [0] sent, channel full, [1] pending
            assert_eq!(a.push(1, 2), Err(2));
            // Drained while the sender was not armed (no notification, no permit):
            // `wait_space` sees the room when it re-checks after arming.
            let mut out = Vec::new();
            assert_eq!(b.drain(&mut out, 1), 1);
            tokio::time::timeout(Duration::from_secs(1), a.wait_space())
                .await
                .expect("room not seen");
            a.push(1, 2).unwrap(); // [1] sent, channel full, [2] pending
            assert_eq!(a.push(1, 3), Err(3));
            let blocked = tokio::time::timeout(Duration::from_millis(20), a.wait_space()).await;
            assert!(
                blocked.is_err(),
                "wait_space resolved while the channel is full"
            );
            assert_eq!(b.drain(&mut out, 1), 1);
            tokio::time::timeout(Duration::from_secs(1), a.wait_space())
                .await
                .expect("space wake-up lost");
            // Room for one batch: [2] goes out, 3 is pending behind it.
            a.push(1, 3).unwrap();
            assert_eq!(a.depth_to(1), 1);
            assert_eq!(a.pending(), 1);
            assert_eq!(out, [0, 1]);
        });
    }

    /// Two threads, each on its own current-thread runtime: 100 000 messages, sent in
    /// irregular small batches so the receiver goes to sleep often, and with a tiny
    /// channel so the sender is back-pressured often. Every message arrives exactly once,
    /// in order, within a bounded time; a lost wake-up on either edge would hang one side
    /// until the timeout.
    #[test]
    fn no_lost_wakeup_two_threads() {
        const N: u64 = 100_000;
        let (mut a, mut b) = two::<u64>(2, 8);
        let deadline = Duration::from_secs(30);
        let sender = std::thread::spawn(move || {
            current_thread().block_on(async move {
                tokio::time::timeout(deadline, async {
                    let mut next = 0u64;
                    let mut held = None;
                    let mut turn = 0u64;
                    while next < N || a.pending() > 0 {
                        turn += 1;
                        // 1..=13 messages this turn.
                        let want = 1 + (turn * 7919 % 13);
                        for _ in 0..want {
                            if next == N {
                                break;
                            }
                            match a.push(1, held.take().unwrap_or(next)) {
                                Ok(()) => next += 1,
                                Err(m) => {
                                    held = Some(m);
                                    break;
                                }
                            }
                        }
                        if a.flush() > 0 || held.is_some() {
                            a.wait_space().await;
                        } else if turn % 3 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
                .await
                .expect("sender stuck: lost space wake-up");
            })
        });
        let receiver = std::thread::spawn(move || {
            current_thread().block_on(async move {
                tokio::time::timeout(deadline, async {
                    let mut out = Vec::new();
                    let mut expect = 0u64;
                    let mut sleeps = 0u64;
                    while expect < N {
                        out.clear();
                        if b.drain(&mut out, 4) == 0 {
                            b.wait().await;
                            sleeps += 1;
                            continue;
                        }
                        for &m in &out {
                            assert_eq!(m, expect, "out of order or duplicated");
                            expect += 1;
                        }
                    }
                    out.clear();
                    assert_eq!(b.drain(&mut out, 4), 0, "extra messages");
                    sleeps
                })
                .await
                .expect("receiver stuck: lost wake-up")
            })
        });
        let started = Instant::now();
        sender.join().unwrap();
        let sleeps = receiver.join().unwrap();
        assert!(started.elapsed() < deadline);
        assert!(
            sleeps > 0,
            "the receiver never slept: the wake-up path was not tested"
        );
    }
}
