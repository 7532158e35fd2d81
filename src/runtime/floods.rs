//! Flood limits shared by all shards ([`Floods`], issue 21, `[limits]`): unanswered
//! inbound subscription requests and the subscription request rate per remote domain,
//! and unauthenticated client connections and SASL failures per client IP address.
//!
//! # Why one shared table, not per-shard budgets
//!
//! A remote domain's pending requests are rows of local users' rosters, and local users
//! are spread over the shards by hash: counting per shard with a budget of `limit /
//! shards` each would refuse a legitimate domain whose contacts happen to hash unevenly
//! (and a small limit would round to nothing). Clients' connections land on any shard
//! (SO_REUSEPORT) and move once authenticated, so a per-address count must be shared too.
//! So both are one table behind a [`Mutex`], the one exception to "nothing shared but
//! inboxes and configuration": it is touched only when a subscription request arrives, a
//! pending request is stored or cleared, or a client connects, authenticates, fails SASL
//! or goes away — never for messages or presence — and each lock is held for one
//! hash-map operation. Entries that hold nothing (no pending request, a full bucket, no
//! connection, an expired window) are swept, so the tables stay as large as the set of
//! domains and addresses that are active now.
//!
//! # Restarts
//!
//! Pending counts start from the store ([`Floods::new`] with every stored "Pending In"
//! row, [`crate::store::Store::pending_in`]) and follow the roster cache from then on
//! ([`Floods::pending_changed`]). A roster change the store fails to make durable, or
//! rows removed by `fedrouter user remove` while the server runs, leave the count one
//! high until the next start: the error is on the side of refusing. Rates, connection
//! counts and failure windows are not kept across restarts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::LimitsSection;
use crate::limits::{FailureWindow, Throttle, TokenBucket};

/// Least time between two WARNs about the same domain or address.
pub(crate) const WARN_INTERVAL: Duration = Duration::from_secs(60);

/// Entries a table may hold before entries that hold nothing are swept.
const SWEEP_AT: usize = 4096;

/// Why a subscription request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Over `limits.subscriptions_per_minute_per_domain`: `policy-violation`.
    Rate,
    /// At `limits.pending_subscriptions_per_domain`: `resource-constraint`.
    DomainPending,
    /// At `limits.pending_subscriptions_per_user`: `resource-constraint`.
    UserPending,
}

impl Refusal {
    /// The `reason` label of `fedrouter_flood_refused_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::Rate => "subscription_rate",
            Refusal::DomainPending => "pending_per_domain",
            Refusal::UserPending => "pending_per_user",
        }
    }
}

#[derive(Default)]
struct DomainEntry {
    /// Stored "Pending In" rows whose contact is of this domain.
    pending: u32,
    /// Subscription requests per minute; `None` is a full bucket.
    bucket: Option<TokenBucket>,
    warn: Throttle,
}

#[derive(Default)]
struct AddressEntry {
    /// Client connections from the address not authenticated yet.
    unauthenticated: u32,
    /// SASL failures in the current window.
    failures: Option<FailureWindow>,
    warn: Throttle,
}

/// Per remote domain and per client address counts; see the module documentation.
pub(crate) struct Floods {
    /// Hosted domains (not counted per domain).
    local: Vec<String>,
    domains: Mutex<HashMap<Box<str>, DomainEntry>>,
    addresses: Mutex<HashMap<IpAddr, AddressEntry>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain counters behind: still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The domain part of a bare JID (`user@domain` or `domain`).
fn domain_of(jid: &str) -> &str {
    jid.rsplit_once('@').map_or(jid, |(_, d)| d)
}

impl Floods {
    /// Empty tables for a server hosting `local`, with one pending request counted for
    /// each `(user, contact)` in `pending_in` (the store's "Pending In" rows) whose
    /// contact is remote.
    pub(crate) fn new(local: &[String], pending_in: &[(String, String)]) -> Floods {
        let f = Floods {
            local: local.to_vec(),
            domains: Mutex::new(HashMap::new()),
            addresses: Mutex::new(HashMap::new()),
        };
        {
            let mut d = lock(&f.domains);
            for (_, contact) in pending_in {
                let dom = domain_of(contact);
                if !f.is_local(dom) {
                    d.entry(dom.into()).or_default().pending += 1;
                }
            }
        }
        f
    }

    fn is_local(&self, domain: &str) -> bool {
        self.local.iter().any(|l| l == domain)
    }

    /// The remote domain of a contact's bare JID; `None` for a hosted one.
    pub(crate) fn remote_domain<'a>(&self, contact: &'a str) -> Option<&'a str> {
        let d = domain_of(contact);
        (!self.is_local(d)).then_some(d)
    }

    /// A subscription request from `contact` at `now`: takes a token from its domain's
    /// bucket (`limits.subscriptions_per_minute_per_domain`). Hosted domains are not
    /// limited.
    ///
    /// Errors: [`Refusal::Rate`].
    pub(crate) fn request(
        &self,
        contact: &str,
        limits: &LimitsSection,
        now: Instant,
    ) -> Result<(), Refusal> {
        let Some(dom) = self.remote_domain(contact) else {
            return Ok(());
        };
        let rate = limits.subscriptions_per_minute_per_domain;
        let mut d = lock(&self.domains);
        if d.len() >= SWEEP_AT && !d.contains_key(dom) {
            d.retain(|_, e| e.pending > 0 || e.bucket.is_some_and(|b| !b.is_full(rate, now)));
        }
        let e = d.entry(dom.into()).or_default();
        let b = e.bucket.get_or_insert_with(|| TokenBucket::full(rate, now));
        if b.try_take(rate, now) {
            Ok(())
        } else {
            Err(Refusal::Rate)
        }
    }

    /// A new "Pending In" row from `contact` is about to be stored: counts it against
    /// its domain (`limits.pending_subscriptions_per_domain`) unless that is full.
    /// Hosted domains are not counted.
    ///
    /// Errors: [`Refusal::DomainPending`] (nothing counted).
    pub(crate) fn reserve_pending(
        &self,
        contact: &str,
        limits: &LimitsSection,
    ) -> Result<(), Refusal> {
        let Some(dom) = self.remote_domain(contact) else {
            return Ok(());
        };
        let mut d = lock(&self.domains);
        let e = d.entry(dom.into()).or_default();
        if e.pending >= limits.pending_subscriptions_per_domain {
            return Err(Refusal::DomainPending);
        }
        e.pending += 1;
        Ok(())
    }

    /// A row of `contact` went from holding a pending inbound request (`before`) to not
    /// (`after`), or back: the domain's count follows. (Counting up is normally done by
    /// [`Floods::reserve_pending`], which checks the limit.)
    pub(crate) fn pending_changed(&self, contact: &str, before: bool, after: bool) {
        if before == after {
            return;
        }
        let Some(dom) = self.remote_domain(contact) else {
            return;
        };
        let mut d = lock(&self.domains);
        let e = d.entry(dom.into()).or_default();
        if after {
            e.pending += 1;
        } else {
            e.pending = e.pending.saturating_sub(1);
        }
    }

    /// Stored pending inbound requests counted for `domain`.
    #[cfg(test)]
    pub(crate) fn pending(&self, domain: &str) -> u32 {
        lock(&self.domains).get(domain).map_or(0, |e| e.pending)
    }

    /// Whether a WARN about `contact`'s domain may be logged at `now` (at most one per
    /// [`WARN_INTERVAL`]).
    pub(crate) fn warn_domain(&self, contact: &str, now: Instant) -> bool {
        let dom = domain_of(contact);
        lock(&self.domains)
            .entry(dom.into())
            .or_default()
            .warn
            .ready(now, WARN_INTERVAL)
    }

    /// A client connected from `ip` at `now`: counted as unauthenticated, unless the
    /// address is refused for SASL failures or already has
    /// `limits.c2s_unauthenticated_per_address` such connections. The slot is given back
    /// when the returned [`AddressSlot`] is dropped (the client authenticated, or the
    /// connection ended).
    ///
    /// Errors: the reason, for the log and the `reason` label.
    pub(crate) fn connect(
        self: &Arc<Self>,
        ip: IpAddr,
        limits: &LimitsSection,
        now: Instant,
    ) -> Result<AddressSlot, AddressRefusal> {
        let window = limits.c2s_auth_failure_window;
        let mut a = lock(&self.addresses);
        if a.len() >= SWEEP_AT && !a.contains_key(&ip) {
            a.retain(|_, e| {
                e.unauthenticated > 0 || e.failures.is_some_and(|f| !f.is_expired(now, window))
            });
        }
        let e = a.entry(ip).or_default();
        if e.failures
            .is_some_and(|f| f.is_blocked(now, limits.c2s_auth_failures_per_address, window))
        {
            return Err(AddressRefusal::AuthFailures);
        }
        if e.unauthenticated >= limits.c2s_unauthenticated_per_address {
            return Err(AddressRefusal::Unauthenticated);
        }
        e.unauthenticated += 1;
        Ok(AddressSlot {
            floods: Arc::clone(self),
            ip,
        })
    }

    /// Whether a WARN about address `ip` may be logged at `now`.
    pub(crate) fn warn_address(&self, ip: IpAddr, now: Instant) -> bool {
        lock(&self.addresses)
            .entry(ip)
            .or_default()
            .warn
            .ready(now, WARN_INTERVAL)
    }

    fn release(&self, ip: IpAddr) {
        if let Some(e) = lock(&self.addresses).get_mut(&ip) {
            e.unauthenticated = e.unauthenticated.saturating_sub(1);
        }
    }

    fn auth_failed(&self, ip: IpAddr, limits: &LimitsSection, now: Instant) -> bool {
        let mut a = lock(&self.addresses);
        let e = a.entry(ip).or_default();
        e.failures
            .get_or_insert_with(|| FailureWindow::new(now))
            .fail(
                now,
                limits.c2s_auth_failures_per_address,
                limits.c2s_auth_failure_window,
            )
    }
}

/// Why a client connection is refused (stream error `policy-violation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AddressRefusal {
    /// `limits.c2s_unauthenticated_per_address` reached.
    Unauthenticated,
    /// `limits.c2s_auth_failures_per_address` reached in the current window.
    AuthFailures,
}

impl AddressRefusal {
    /// The `reason` label of `fedrouter_flood_refused_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            AddressRefusal::Unauthenticated => "c2s_unauthenticated_per_address",
            AddressRefusal::AuthFailures => "c2s_auth_failures_per_address",
        }
    }

    /// The text of the stream error.
    pub(crate) fn text(self) -> &'static str {
        match self {
            AddressRefusal::Unauthenticated => {
                "too many unauthenticated connections from this address"
            }
            AddressRefusal::AuthFailures => {
                "too many authentication failures from this address; try again later"
            }
        }
    }
}

/// An unauthenticated client connection counted against its address; dropping it gives
/// the slot back. Kept in the connection's state, so it moves with a hand-off.
pub(crate) struct AddressSlot {
    floods: Arc<Floods>,
    ip: IpAddr,
}

impl AddressSlot {
    /// The client's address.
    pub(crate) fn ip(&self) -> IpAddr {
        self.ip
    }

    /// A SASL failure on this connection at `now`; whether the address is now refused
    /// (`limits.c2s_auth_failures_per_address` failures in the window).
    pub(crate) fn auth_failed(&self, limits: &LimitsSection, now: Instant) -> bool {
        self.floods.auth_failed(self.ip, limits, now)
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        self.floods.release(self.ip);
    }
}

impl std::fmt::Debug for AddressSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressSlot").field("ip", &self.ip).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LimitsSection {
        LimitsSection {
            pending_subscriptions_per_domain: 2,
            pending_subscriptions_per_user: 1,
            subscriptions_per_minute_per_domain: 3,
            c2s_unauthenticated_per_address: 2,
            c2s_auth_failures_per_address: 2,
            c2s_auth_failure_window: Duration::from_secs(60),
        }
    }

    #[test]
    fn pending_per_domain_counts_from_the_store_and_follows_changes() {
        let f = Floods::new(
            &["a.test".into()],
            &[
                ("u@a.test".into(), "x@b.test".into()),
                ("u@a.test".into(), "v@a.test".into()),
            ],
        );
        assert_eq!(f.pending("b.test"), 1);
        assert_eq!(f.pending("a.test"), 0);
        let l = limits();
        assert_eq!(f.reserve_pending("y@b.test", &l), Ok(()));
        assert_eq!(
            f.reserve_pending("z@b.test", &l),
            Err(Refusal::DomainPending)
        );
        // Hosted domains are not counted.
        assert_eq!(f.reserve_pending("w@a.test", &l), Ok(()));
        assert_eq!(f.pending("a.test"), 0);
        f.pending_changed("x@b.test", true, false);
        assert_eq!(f.reserve_pending("z@b.test", &l), Ok(()));
        assert_eq!(f.pending("b.test"), 2);
    }

    #[test]
    fn rate_is_per_domain() {
        let f = Floods::new(&["a.test".into()], &[]);
        let l = limits();
        let t = Instant::now();
        assert!((0..3).all(|i| f.request(&format!("s{i}@b.test"), &l, t).is_ok()));
        assert_eq!(f.request("s@b.test", &l, t), Err(Refusal::Rate));
        assert_eq!(f.request("s@c.test", &l, t), Ok(()));
        assert_eq!(f.request("s@a.test", &l, t), Ok(()));
        assert_eq!(
            f.request("s@b.test", &l, t + Duration::from_secs(20)),
            Ok(())
        );
    }

    #[test]
    fn addresses_are_limited_and_released() {
        let f = Arc::new(Floods::new(&[], &[]));
        let l = limits();
        let t = Instant::now();
        let ip: IpAddr = "127.0.181.10".parse().unwrap();
        let other: IpAddr = "127.0.181.11".parse().unwrap();
        let s1 = f.connect(ip, &l, t).unwrap();
        let _s2 = f.connect(ip, &l, t).unwrap();
        assert_eq!(
            f.connect(ip, &l, t).unwrap_err(),
            AddressRefusal::Unauthenticated
        );
        assert!(f.connect(other, &l, t).is_ok());
        assert!(!s1.auth_failed(&l, t));
        assert!(s1.auth_failed(&l, t));
        drop(s1);
        assert_eq!(
            f.connect(ip, &l, t).unwrap_err(),
            AddressRefusal::AuthFailures
        );
        assert!(f.connect(ip, &l, t + Duration::from_secs(60)).is_ok());
    }
}
