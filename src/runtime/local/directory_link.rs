//! The shard's link to the directory thread ([`DirectoryLink`], `[auth] backend =
//! "ldap"`): a client's `PLAIN` password (RFC 6120 §6, RFC 4616) goes out as a tagged
//! [`Check`], and the answer comes back through a reply channel and the same wake as the
//! store's ([`super::Local::store_wake`]). The directory is never waited for on the event
//! loop.
//!
//! A check that cannot be queued (the directory's queue is full, or its thread stopped)
//! is answered `temporary-auth-failure` at once (RFC 6120 §6.5.12). An accepted user who
//! is not in the store yet gets a user row (no credentials) before `<success/>`, so that
//! its roster (empty) loads like any user's; then the verdict goes to the connection.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::auth::{Check, CheckReply, Password, PasswordVerdict};
use crate::runtime::conn::ConnId;
use crate::runtime::shard::Shard;
use crate::store::{Op, StoreError};

/// Checks in flight, by tag: the connection and the bare JID.
pub(super) struct DirectoryLink {
    replies_tx: Sender<CheckReply>,
    replies: Receiver<CheckReply>,
    wake: Arc<Notify>,
    waiting: RefCell<HashMap<u64, (ConnId, String)>>,
    next_tag: Cell<u64>,
}

impl DirectoryLink {
    /// A link whose replies are signalled on `wake`.
    pub(super) fn new(wake: Arc<Notify>) -> DirectoryLink {
        let (replies_tx, replies) = crossbeam_channel::unbounded();
        DirectoryLink {
            replies_tx,
            replies,
            wake,
            waiting: RefCell::new(HashMap::new()),
            next_tag: Cell::new(1),
        }
    }

    /// Sends connection `id`'s password for `username` (`jid`) to the directory; the
    /// verdict reaches the connection when it comes back ([`DirectoryLink::replies`]).
    pub(super) fn submit(
        &self,
        shard: &Shard,
        id: ConnId,
        jid: String,
        username: String,
        password: Password,
    ) {
        let Some(directory) = shard.shared().directory.clone() else {
            warn!("a password check without a directory configured");
            return deliver(shard, id, PasswordVerdict::TemporaryFailure);
        };
        let tag = self.next_tag.get();
        self.next_tag.set(tag + 1);
        let check = Check {
            username,
            password,
            reply_to: self.replies_tx.clone(),
            wake: Arc::clone(&self.wake),
            tag,
        };
        self.waiting.borrow_mut().insert(tag, (id, jid));
        if directory.submit(check).is_err() {
            self.waiting.borrow_mut().remove(&tag);
            warn!("directory queue full (auth.ldap.queue) or its thread stopped: temporary-auth-failure");
            count("busy");
            deliver(shard, id, PasswordVerdict::TemporaryFailure);
        }
    }

    /// Hands the directory's answers to their connections (main loop, on the wake).
    pub(super) fn replies(&self, shard: &Shard) {
        // Bounded by what is queued now.
        for _ in 0..self.replies.len() {
            let Ok(reply) = self.replies.try_recv() else {
                break;
            };
            let Some((id, jid)) = self.waiting.borrow_mut().remove(&reply.tag) else {
                continue;
            };
            count(match (reply.verdict, reply.cached) {
                (PasswordVerdict::Accepted, true) => "accepted_cached",
                (PasswordVerdict::Accepted, false) => "accepted",
                (PasswordVerdict::Rejected, _) => "rejected",
                (PasswordVerdict::TemporaryFailure, _) => "unavailable",
            });
            if reply.verdict != PasswordVerdict::Accepted {
                deliver(shard, id, reply.verdict);
                continue;
            }
            // A directory user not in the store yet gets a row (no credentials): its
            // roster then loads, empty, like any user's.
            let op = Op::AddUser {
                jid: jid.clone(),
                creds: Vec::new(),
            };
            shard.local.store.submit(
                shard,
                op,
                Box::new(move |shard, result| {
                    let verdict = match result {
                        Ok(_) => {
                            info!(%jid, "first login of a directory user: added to the store");
                            PasswordVerdict::Accepted
                        }
                        Err(StoreError::Exists(_)) => PasswordVerdict::Accepted,
                        Err(e) => {
                            warn!(%jid, error = %e, "cannot add the directory user to the store");
                            PasswordVerdict::TemporaryFailure
                        }
                    };
                    deliver(shard, id, verdict);
                }),
            );
        }
    }
}

/// Counts a directory answer: `fedrouter_directory_checks_total{result}`.
fn count(result: &'static str) {
    crate::runtime::metrics(|m| m.count("directory_checks", &[("result", result)], 1));
}

/// Gives connection `id` its verdict (it may have gone meanwhile).
fn deliver(shard: &Shard, id: ConnId, verdict: PasswordVerdict) {
    let Some(conn) = shard.local.conns.borrow().get(&id).cloned() else {
        debug!("the client left before its password was checked");
        return;
    };
    {
        let mut st = conn.st.borrow_mut();
        if let Err(e) = st.proto.handle_password_verdict(verdict, Instant::now()) {
            debug!(parent: &conn.span, error = %e, "password verdict not taken");
        }
        st.collect_events();
        st.pump();
    }
    shard.local.sessions.after_answer(shard, &conn);
}
