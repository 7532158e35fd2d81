//! The shard's link to the storage thread ([`StoreLink`]): requests go out tagged, and
//! each answer's continuation runs on the shard, in order of the requests, when the
//! storage thread has sent it through the reply channel and fired [`Local::store_wake`].
//! The store is never waited for on the event loop.
//!
//! A request the store's own queue has no room for waits in a backlog, retried in order;
//! a full backlog counts in the shard's congestion, so its readers and inbox pause until
//! the store catches up (memory stays bounded). Nothing here is RFC 6121 protocol: the
//! roster loads and durable roster changes of §2–§3 and the SASL credential lookups of
//! RFC 6120 §6 are the requests.
//!
//! [`Local::store_wake`]: super::Local::store_wake

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::Notify;
use tracing::warn;

use crate::runtime::shard::Shard;
use crate::store::{Op, Outcome, Reply, StoreError};

/// Store requests a shard holds back (the store's own queue being full) before it stops
/// reading sockets and its inbox.
const STORE_BACKLOG: usize = 4096;

/// What to do with the store's answer (runs on the shard, in order of the requests).
pub(super) type StoreThen = Box<dyn FnOnce(&Shard, Result<Outcome, StoreError>)>;

/// Requests to the store in flight, and what to do with their answers.
pub(super) struct StoreLink {
    replies_tx: Sender<Reply>,
    replies: Receiver<Reply>,
    /// Fired by the storage thread when a reply is waiting ([`super::Local::store_wake`]).
    wake: Arc<Notify>,
    waiting: RefCell<HashMap<u64, StoreThen>>,
    /// Requests the store's queue had no room for, retried in order.
    backlog: RefCell<VecDeque<(u64, Op)>>,
    /// The backlog reached [`STORE_BACKLOG`]: counted in the shard's congestion, so its
    /// readers and inbox pause until the store catches up (memory stays bounded).
    backlog_congested: Cell<bool>,
    next_tag: Cell<u64>,
}

impl StoreLink {
    /// A link whose replies are signalled on `wake`.
    pub(super) fn new(wake: Arc<Notify>) -> StoreLink {
        let (replies_tx, replies) = crossbeam_channel::unbounded();
        StoreLink {
            replies_tx,
            replies,
            wake,
            waiting: RefCell::new(HashMap::new()),
            backlog: RefCell::new(VecDeque::new()),
            backlog_congested: Cell::new(false),
            next_tag: Cell::new(1),
        }
    }

    /// A number not handed out before on this shard: the tag of a request, and also the
    /// id of a roster push (the two share one counter).
    pub(super) fn next_tag(&self) -> u64 {
        let tag = self.next_tag.get();
        self.next_tag.set(tag + 1);
        tag
    }

    /// Submits `op` to the storage thread; `then` runs on this shard with the answer.
    pub(super) fn submit(&self, shard: &Shard, op: Op, then: StoreThen) {
        let tag = self.next_tag();
        self.waiting.borrow_mut().insert(tag, then);
        if !self.backlog.borrow().is_empty() {
            self.backlog.borrow_mut().push_back((tag, op));
            self.check_backlog(shard);
            return;
        }
        if let Err(op) =
            shard
                .shared()
                .store
                .submit(op, self.replies_tx.clone(), Arc::clone(&self.wake), tag)
        {
            if !shard.shared().store.is_running() {
                self.answer(shard, tag, Err(StoreError::Closed));
                return;
            }
            self.backlog.borrow_mut().push_back((tag, op));
            self.check_backlog(shard);
        }
    }

    /// Pauses the shard's readers while the store backlog is at [`STORE_BACKLOG`], and
    /// resumes them once it is down to half.
    fn check_backlog(&self, shard: &Shard) {
        let len = self.backlog.borrow().len();
        let flagged = self.backlog_congested.get();
        if !flagged && len >= STORE_BACKLOG {
            self.backlog_congested.set(true);
            warn!(len, "store backlog full: pausing reads on this shard");
            shard.congest();
        } else if flagged && len <= STORE_BACKLOG / 2 {
            self.backlog_congested.set(false);
            shard.decongest();
        }
    }

    /// Runs the continuations of the store's answers (main loop, on
    /// [`super::Local::store_wake`]).
    pub(super) fn replies(&self, shard: &Shard) {
        // Bounded by what is queued now.
        for _ in 0..self.replies.len() {
            let Ok(reply) = self.replies.try_recv() else {
                break;
            };
            self.answer(shard, reply.tag, reply.result);
        }
        // Room again: retry the backlog in order.
        loop {
            let Some((tag, op)) = self.backlog.borrow_mut().pop_front() else {
                break;
            };
            if let Err(op) = shard.shared().store.submit(
                op,
                self.replies_tx.clone(),
                Arc::clone(&self.wake),
                tag,
            ) {
                self.backlog.borrow_mut().push_front((tag, op));
                break;
            }
        }
        self.check_backlog(shard);
    }

    fn answer(&self, shard: &Shard, tag: u64, result: Result<Outcome, StoreError>) {
        let then = self.waiting.borrow_mut().remove(&tag);
        if let Some(then) = then {
            then(shard, result);
        }
    }
}
