//! The state of a networked store's connection (PostgreSQL, [`super::postgres`]), shared
//! between the storage thread that changes it and the admin endpoint that shows it
//! (`"store"` in `/health` and `GET /status/store`, `fedrouter status`, the
//! `fedrouter_store_up` gauge and the `fedrouter_store_reconnects_total` /
//! `fedrouter_store_connection_failures_total` counters).
//!
//! The embedded SQLite store has no connection and no such state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{info, warn};

/// Whether the store's server answered the last time the storage thread used it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreState {
    /// Connected, and the last statement or connect succeeded.
    Up,
    /// The connection is broken or could not be made; the text is the last error (the
    /// URL in it is redacted). Requests fail with [`super::StoreError::Backend`] until a
    /// reconnect succeeds.
    Down(String),
}

/// A snapshot of [`StoreStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreReport {
    /// `"postgres"`.
    pub backend: &'static str,
    /// The server's URL with its password replaced by `***`.
    pub url: String,
    /// The state.
    pub state: StoreState,
    /// When the current state began.
    pub since: SystemTime,
    /// Successful reconnects after a connection was lost (not the first connect).
    pub reconnects: u64,
    /// Failed connection attempts and connections found broken by a request.
    pub connection_failures: u64,
}

impl StoreReport {
    /// `"up"` or `"down"`.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            StoreState::Up => "up",
            StoreState::Down(_) => "down",
        }
    }

    /// `{"backend": "postgres", "url" (redacted), "state": "up" | "down", "error" (down
    /// only), "since" (Unix seconds), "for_s" (seconds in this state), "reconnects",
    /// "connection_failures"}`.
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
            "backend": self.backend,
            "url": self.url,
            "state": self.state_name(),
            "since": since,
            "for_s": (for_s * 10.0).round() / 10.0,
            "reconnects": self.reconnects,
            "connection_failures": self.connection_failures,
        });
        if let StoreState::Down(e) = &self.state {
            v["error"] = serde_json::Value::String(e.clone());
        }
        v
    }
}

/// The shared state: written by the storage thread, read by anyone (`Send + Sync`).
#[derive(Debug)]
pub struct StoreStatus {
    backend: &'static str,
    url: String,
    inner: Mutex<(StoreState, SystemTime)>,
    reconnects: AtomicU64,
    connection_failures: AtomicU64,
}

impl StoreStatus {
    /// A new status for `backend` at `redacted_url`, [`StoreState::Up`] since now.
    pub fn new(backend: &'static str, redacted_url: String) -> StoreStatus {
        StoreStatus {
            backend,
            url: redacted_url,
            inner: Mutex::new((StoreState::Up, SystemTime::now())),
            reconnects: AtomicU64::new(0),
            connection_failures: AtomicU64::new(0),
        }
    }

    /// The current snapshot.
    pub fn report(&self) -> StoreReport {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        StoreReport {
            backend: self.backend,
            url: self.url.clone(),
            state: g.0.clone(),
            since: g.1,
            reconnects: self.reconnects.load(Ordering::Relaxed),
            connection_failures: self.connection_failures.load(Ordering::Relaxed),
        }
    }

    /// Records a failed connect, or a connection found broken, with its error; logs the
    /// change to down once.
    pub fn failed(&self, error: String) {
        self.connection_failures.fetch_add(1, Ordering::Relaxed);
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 == StoreState::Up {
            warn!(url = %self.url, error = %error, "store unreachable: requests fail until it is back");
            g.1 = SystemTime::now();
        }
        // The error text may change while down; `since` stays.
        g.0 = StoreState::Down(error);
    }

    /// Records a successful reconnect (after [`Self::failed`]); logs the change to up.
    pub fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 != StoreState::Up {
            info!(url = %self.url, "store reachable again");
            *g = (StoreState::Up, SystemTime::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_then_up_counts_and_reports() {
        let s = StoreStatus::new("postgres", "postgresql://u:***@h/db".into());
        assert_eq!(s.report().state_name(), "up");
        s.failed("connection refused".into());
        s.failed("connection refused again".into());
        let r = s.report();
        assert_eq!(r.state, StoreState::Down("connection refused again".into()));
        assert_eq!(r.connection_failures, 2);
        let j = r.to_json();
        assert_eq!(j["state"], "down");
        assert_eq!(j["error"], "connection refused again");
        assert_eq!(j["url"], "postgresql://u:***@h/db");
        s.reconnected();
        let j = s.report().to_json();
        assert_eq!(
            (j["state"].as_str(), j["reconnects"].as_u64()),
            (Some("up"), Some(1))
        );
        assert!(j.get("error").is_none());
    }
}
