//! A shard's outbox: the messages for other shards produced during a turn, and the
//! back-pressure that keeps it bounded (DESIGN.md "Back-pressure").
//!
//! The main loop, sole owner of the shard's end of the inbox mesh, moves the outbox into
//! the mesh at the end of each turn ([`Outbox::flush`]). Readers, the only sources of new
//! work, wait before each read while the outbox is over its limit or the shard is paused
//! ([`Outbox::wait_for_room`]): a full inbox then becomes TCP back-pressure on the
//! sockets, never an unbounded queue.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::time::Instant;

use tokio::sync::Notify;

use crate::router::inbox::ShardInbox;

/// Messages of type `M` waiting for room in other shards' inboxes, and the shard-wide
/// pause (the store's backlog).
pub(super) struct Outbox<M> {
    /// `(destination shard, message)` in production order.
    queue: RefCell<VecDeque<(usize, M)>>,
    /// Readers pause while more than this many messages wait.
    limit: usize,
    /// Wakes readers paused by back-pressure.
    space: Notify,
    /// Wakes the main loop to flush at the end of this turn.
    flush_wake: Notify,
    flush_scheduled: Cell<bool>,
    /// Reasons to pause the whole shard: only the store's backlog being full, the one
    /// resource every user of every shard shares. While non-zero the shard reads no
    /// socket and drains no inbox. A remote domain or client that stops reading never
    /// counts here: its own queue is bounded and bounces instead (DESIGN.md "Ownership").
    paused: Cell<usize>,
}

impl<M: Send> Outbox<M> {
    /// An empty outbox whose readers pause past `limit` waiting messages.
    pub(super) fn new(limit: usize) -> Self {
        Outbox {
            queue: RefCell::new(VecDeque::new()),
            limit,
            space: Notify::new(),
            flush_wake: Notify::new(),
            flush_scheduled: Cell::new(false),
            paused: Cell::new(0),
        }
    }

    /// Queues `msg` for shard `dst` (sent at the end of the turn).
    pub(super) fn push(&self, dst: usize, msg: M) {
        self.queue.borrow_mut().push_back((dst, msg));
        self.schedule_flush();
    }

    /// Ends a turn: moves the waiting messages into the inbox mesh (batched per
    /// destination) and sends the batches; what does not fit stays, in order.
    pub(super) fn flush(&self, inbox: &mut ShardInbox<M>) {
        self.flush_scheduled.set(false);
        let mut out = self.queue.borrow_mut();
        while let Some((dst, msg)) = out.pop_front() {
            if let Err(msg) = inbox.push(dst, msg) {
                out.push_front((dst, msg));
                break;
            }
        }
        inbox.flush();
        if out.len() <= self.limit && self.paused.get() == 0 {
            self.space.notify_waiters();
        }
    }

    /// Asks the main loop to flush at the end of this turn.
    pub(super) fn schedule_flush(&self) {
        if !self.flush_scheduled.replace(true) {
            self.flush_wake.notify_one();
        }
    }

    /// Whether a flush is due (the main loop does not sleep then).
    pub(super) fn flush_scheduled(&self) -> bool {
        self.flush_scheduled.get()
    }

    /// Resolves when a flush is asked for, or a pause ends.
    pub(super) async fn flush_wanted(&self) {
        self.flush_wake.notified().await
    }

    /// Messages waiting.
    pub(super) fn len(&self) -> usize {
        self.queue.borrow().len()
    }

    /// Whether some message waits for room.
    pub(super) fn is_blocked(&self) -> bool {
        !self.queue.borrow().is_empty()
    }

    /// Counts one more reason to pause reads and inbox drains.
    pub(super) fn pause(&self) {
        self.paused.set(self.paused.get() + 1);
    }

    /// One reason to pause is gone; when none is left, paused readers and the inbox drain
    /// resume.
    pub(super) fn resume(&self) {
        self.paused.set(self.paused.get().saturating_sub(1));
        if self.paused.get() == 0 {
            self.space.notify_waiters();
            self.flush_wake.notify_one();
        }
    }

    /// Whether the shard may take more work from its inbox: not while it is paused. (Not
    /// gated on the outbox: two shards each waiting for room in the other's inbox would
    /// deadlock. The outbox is bounded instead by the readers pausing.)
    pub(super) fn can_take_work(&self) -> bool {
        self.paused.get() == 0
    }

    /// Readers call this before each read: waits while too many messages wait for room
    /// in the inbox, or the shard is paused, unless `stop()` says the shard is shutting
    /// down. Returns since when it waited, if it did (`reads_paused_ms`).
    pub(super) async fn wait_for_room(&self, stop: impl Fn() -> bool) -> Option<Instant> {
        let mut paused: Option<Instant> = None;
        // Bounded: each pass waits for a wake-up.
        for _ in 0..100_000 {
            let room = self.len() <= self.limit && self.paused.get() == 0;
            if room || stop() {
                break;
            }
            paused.get_or_insert_with(Instant::now);
            let notified = self.space.notified();
            if self.paused.get() == 0 {
                // Waiting for inbox room: the main loop's flush makes progress.
                self.schedule_flush();
            }
            // Else waiting for the pause to end: `resume` wakes us.
            notified.await;
        }
        paused
    }
}
