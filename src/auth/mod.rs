//! Password checks against an LDAP directory (`[auth] backend = "ldap"`), off the shard
//! threads.
//!
//! # Shape
//!
//! ```text
//!  shard k ── Directory::submit(check) ──► bounded queue (auth.ldap.queue; full: Err)
//!                                              │  directory thread: one tokio runtime
//!                                              ▼
//!                     positive cache hit? ── yes ─► Accepted
//!                                              │ no
//!                                              ▼
//!                     a pool slot (auth.ldap.pool_size) ─► LdapClient::check (ldap.rs)
//!                                              │
//!  shard k ◄── reply channel + the shard's wake (Notify) ◄─┘
//! ```
//!
//! The shard thread never waits on the directory: [`Directory::submit`] only tries to
//! queue; the answer comes back like the store's (a crossbeam reply channel and the
//! shard's `Notify`), tagged. A full queue or a stopped thread is answered at once by the
//! caller with `temporary-auth-failure` (RFC 6120 §6.5.12).
//!
//! # The directory's state
//!
//! [`DirectoryStatus`] is `unknown` until the first answer, then `up` or `unreachable`
//! (with the error and since when). Every check that reached the directory marks it up;
//! every check that could not marks it unreachable; and a probe (a fresh connection and
//! the service account's bind) runs every `auth.ldap.probe_interval` so the state also
//! changes with no login. `/health`, `/status/directory`, `fedrouter status` and the
//! `fedrouter_directory_up` metric read it.
//!
//! # Files
//!
//! - `mod.rs`: [`Directory`] (the thread, the queue, the replies) and [`DirectoryStatus`].
//! - `ldap.rs`: the LDAP client: connections, pool, search then bind.
//! - `cache.rs`: the positive-result cache (salted keyed hashes, TTL).

mod cache;
mod ldap;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;
use tokio::sync::{Notify, Semaphore};
use tracing::{info, warn};

pub use fedrouter_proto::stream::c2s::{Password, PasswordVerdict};

use crate::config::{DirectoryMaterial, LdapSection};
use cache::PositiveCache;
use ldap::{CheckOutcome, LdapClient};

/// One password check for the directory thread.
pub struct Check {
    /// The username (the JID's normalised localpart), put into `auth.ldap.filter`.
    pub username: String,
    /// The password the client sent.
    pub password: Password,
    /// Where the answer goes.
    pub reply_to: Sender<CheckReply>,
    /// Fired after the answer was sent (the shard's wake).
    pub wake: Arc<Notify>,
    /// Given back with the answer.
    pub tag: u64,
}

/// The answer to a [`Check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckReply {
    /// The [`Check::tag`].
    pub tag: u64,
    /// What the client gets.
    pub verdict: PasswordVerdict,
    /// Whether the answer came from the positive cache (no directory round trip).
    pub cached: bool,
}

/// The directory's state as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryState {
    /// Nothing asked yet.
    Unknown,
    /// The last request or probe got an answer.
    Up,
    /// The last request or probe got none: the error.
    Unreachable(String),
}

/// The directory's state, shared by the directory thread (writer) and the admin endpoint
/// (reader).
#[derive(Debug)]
pub struct DirectoryStatus {
    inner: Mutex<StatusInner>,
}

#[derive(Debug)]
struct StatusInner {
    state: DirectoryState,
    /// When the state last changed.
    since: SystemTime,
}

/// A copy of [`DirectoryStatus`] at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryReport {
    /// The state.
    pub state: DirectoryState,
    /// When it began.
    pub since: SystemTime,
}

impl DirectoryReport {
    /// `"unknown"`, `"up"` or `"unreachable"`.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            DirectoryState::Unknown => "unknown",
            DirectoryState::Up => "up",
            DirectoryState::Unreachable(_) => "unreachable",
        }
    }

    /// `{"backend": "ldap", "state", "error" (unreachable only), "since" (Unix seconds),
    /// "for_s" (seconds in this state)}`.
    pub fn to_json(&self) -> serde_json::Value {
        let since = self
            .since
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let for_s = SystemTime::now()
            .duration_since(self.since)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let mut v = serde_json::json!({
            "backend": "ldap",
            "state": self.state_name(),
            "since": since,
            "for_s": (for_s * 10.0).round() / 10.0,
        });
        if let DirectoryState::Unreachable(e) = &self.state {
            v["error"] = serde_json::Value::String(e.clone());
        }
        v
    }
}

impl DirectoryStatus {
    fn new() -> DirectoryStatus {
        DirectoryStatus {
            inner: Mutex::new(StatusInner {
                state: DirectoryState::Unknown,
                since: SystemTime::now(),
            }),
        }
    }

    /// The state now.
    pub fn report(&self) -> DirectoryReport {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        DirectoryReport {
            state: g.state.clone(),
            since: g.since,
        }
    }

    fn set(&self, state: DirectoryState) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let changed = std::mem::discriminant(&g.state) != std::mem::discriminant(&state);
        if changed {
            match &state {
                DirectoryState::Up => info!("LDAP directory is up"),
                DirectoryState::Unreachable(e) => {
                    warn!(error = %e, "LDAP directory unreachable: logins get temporary-auth-failure")
                }
                DirectoryState::Unknown => {}
            }
            g.since = SystemTime::now();
        }
        // The error text may change while unreachable; `since` stays.
        g.state = state;
    }
}

/// The directory thread's handle (cheap to clone): submit checks, read the state, stop.
#[derive(Clone)]
pub struct Directory {
    tx: tokio::sync::mpsc::Sender<Check>,
    status: Arc<DirectoryStatus>,
    stop: Arc<Notify>,
    stopped: Arc<AtomicBool>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Directory {
    /// Starts the directory thread for `cfg` with the service password and CA that
    /// [`crate::config::Config::materialize`] read.
    ///
    /// Errors: the thread or its runtime cannot be created, or the CA certificates do not
    /// make a trust store (the text says which).
    pub fn spawn(cfg: &LdapSection, material: &DirectoryMaterial) -> Result<Directory, String> {
        let tls = if material.ca.is_empty() {
            None
        } else {
            let mut roots = rustls::RootCertStore::empty();
            for der in &material.ca {
                roots
                    .add(der.clone())
                    .map_err(|e| format!("auth.ldap.ca_file: {e}"))?;
            }
            Some(Arc::new(
                rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            ))
        };
        let client = LdapClient::new(
            cfg.clone(),
            material
                .bind_password
                .as_ref()
                .map(|p| p.expose().to_owned()),
            tls,
        );
        let (tx, rx) = tokio::sync::mpsc::channel(cfg.queue);
        let status = Arc::new(DirectoryStatus::new());
        let stop = Arc::new(Notify::new());
        let stopped = Arc::new(AtomicBool::new(false));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("directory runtime: {e}"))?;
        let worker = Worker {
            client: Arc::new(client),
            status: Arc::clone(&status),
            cache: Arc::new(Mutex::new(PositiveCache::new(
                cfg.cache_ttl,
                cfg.cache_size,
                rand::random(),
            ))),
            slots: Arc::new(Semaphore::new(cfg.pool_size)),
            probe_interval: cfg.probe_interval,
            budget: cfg.check_budget(),
        };
        let (stop2, stopped2) = (Arc::clone(&stop), Arc::clone(&stopped));
        let thread = std::thread::Builder::new()
            .name("directory".into())
            .spawn(move || {
                rt.block_on(async move {
                    tokio::select! {
                        _ = worker.run(rx) => {}
                        _ = stop2.notified() => {}
                    }
                });
                stopped2.store(true, Ordering::Release);
                // Dropping the runtime cancels the checks in flight; their shards'
                // negotiation timeouts end those logins.
                drop(rt);
            })
            .map_err(|e| format!("directory thread: {e}"))?;
        Ok(Directory {
            tx,
            status,
            stop,
            stopped,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    /// Queues `check`; hands it back when the queue is full or the thread has stopped
    /// (answer `temporary-auth-failure` then). Never blocks.
    // The error is the check itself, handed back whole (as `StoreHandle::submit` does).
    #[allow(clippy::result_large_err)]
    pub fn submit(&self, check: Check) -> Result<(), Check> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(check);
        }
        self.tx.try_send(check).map_err(|e| match e {
            tokio::sync::mpsc::error::TrySendError::Full(c)
            | tokio::sync::mpsc::error::TrySendError::Closed(c) => c,
        })
    }

    /// The directory's state now.
    pub fn report(&self) -> DirectoryReport {
        self.status.report()
    }

    /// Stops the thread and waits for it (idempotent).
    pub fn shutdown(&self) {
        self.stop.notify_one();
        let t = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

/// What runs on the directory thread.
struct Worker {
    client: Arc<LdapClient>,
    status: Arc<DirectoryStatus>,
    cache: Arc<Mutex<PositiveCache>>,
    /// One permit per pooled connection: checks beyond wait here, in the queue.
    slots: Arc<Semaphore>,
    probe_interval: std::time::Duration,
    /// The longest one check may take ([`LdapSection::check_budget`]).
    budget: std::time::Duration,
}

impl Worker {
    async fn run(self, mut rx: tokio::sync::mpsc::Receiver<Check>) {
        let probe = {
            let (client, status) = (Arc::clone(&self.client), Arc::clone(&self.status));
            let every = self.probe_interval;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    match client.probe().await {
                        Ok(()) => status.set(DirectoryState::Up),
                        Err(e) => {
                            client.clear_pool();
                            status.set(DirectoryState::Unreachable(e));
                        }
                    }
                }
            })
        };
        while let Some(check) = rx.recv().await {
            let hit = self.cache.lock().unwrap_or_else(|e| e.into_inner()).hit(
                &check.username,
                check.password.expose(),
                Instant::now(),
            );
            if hit {
                answer(&check, PasswordVerdict::Accepted, true);
                continue;
            }
            let Ok(permit) = Arc::clone(&self.slots).acquire_owned().await else {
                break;
            };
            let (client, status, cache) = (
                Arc::clone(&self.client),
                Arc::clone(&self.status),
                Arc::clone(&self.cache),
            );
            let budget = self.budget;
            tokio::spawn(async move {
                let outcome = tokio::time::timeout(
                    budget,
                    client.check(&check.username, check.password.expose()),
                )
                .await
                .unwrap_or_else(|_| {
                    CheckOutcome::Unavailable(format!(
                        "no answer within {}",
                        humantime::format_duration(budget)
                    ))
                });
                drop(permit);
                let verdict = match outcome {
                    CheckOutcome::Accepted => {
                        status.set(DirectoryState::Up);
                        cache.lock().unwrap_or_else(|e| e.into_inner()).insert(
                            &check.username,
                            check.password.expose(),
                            rand::random(),
                            Instant::now(),
                        );
                        PasswordVerdict::Accepted
                    }
                    CheckOutcome::Rejected(why) => {
                        // The cached entry, if any, is for another password: it stays
                        // (a wrong guess must not evict a user from the cache).
                        status.set(DirectoryState::Up);
                        info!(user = %check.username, why, "LDAP rejected the login");
                        PasswordVerdict::Rejected
                    }
                    CheckOutcome::Unavailable(e) => {
                        status.set(DirectoryState::Unreachable(e));
                        PasswordVerdict::TemporaryFailure
                    }
                };
                answer(&check, verdict, false);
            });
        }
        probe.abort();
    }
}

fn answer(check: &Check, verdict: PasswordVerdict, cached: bool) {
    let _ = check.reply_to.send(CheckReply {
        tag: check.tag,
        verdict,
        cached,
    });
    check.wake.notify_one();
}

#[cfg(test)]
mod tests;
