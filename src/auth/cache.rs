//! The directory's positive-result cache ([`PositiveCache`]): who logged in recently, and
//! with which password, so that repeated logins do not each cost a directory round trip
//! and recently seen users can still log in while the directory is briefly unreachable.
//!
//! An entry holds `HMAC-SHA256(process key, salt ‖ username ‖ 0x00 ‖ password)` with a
//! random 16-byte salt per entry and a random key per process: never the password, and
//! nothing that outlives the process or can be checked against a guess without the key.
//! Entries expire after the TTL; the cache holds at most `max` users (one more evicts
//! the expired ones, then the one expiring first). A password changed in the directory
//! stops working here when its entry expires: a rejected *other* password does not
//! evict the entry (a wrong guess must not be a way to evict users). Time is passed in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Recently accepted (username, password) pairs, as salted keyed hashes, with a TTL.
pub(crate) struct PositiveCache {
    ttl: Duration,
    max: usize,
    key: [u8; 32],
    entries: HashMap<String, Entry>,
}

struct Entry {
    salt: [u8; 16],
    digest: [u8; 32],
    expires: Instant,
}

impl PositiveCache {
    /// A cache keeping entries `ttl` (zero: nothing is kept) for at most `max` users,
    /// hashing with `key` (random per process).
    pub(crate) fn new(ttl: Duration, max: usize, key: [u8; 32]) -> PositiveCache {
        PositiveCache {
            ttl,
            max: max.max(1),
            key,
            entries: HashMap::new(),
        }
    }

    fn digest(&self, salt: &[u8; 16], username: &str, password: &str) -> [u8; 32] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        m.update(salt);
        m.update(username.as_bytes());
        m.update(&[0]);
        m.update(password.as_bytes());
        m.finalize().into_bytes().into()
    }

    /// Whether `username` was accepted with exactly `password` less than the TTL before
    /// `now` (compared in constant time).
    pub(crate) fn hit(&self, username: &str, password: &str, now: Instant) -> bool {
        let Some(e) = self.entries.get(username) else {
            return false;
        };
        if now >= e.expires {
            return false;
        }
        let d = self.digest(&e.salt, username, password);
        bool::from(d.ct_eq(&e.digest))
    }

    /// Remembers that `username` was accepted with `password` at `now`, with a fresh
    /// `salt`.
    pub(crate) fn insert(&mut self, username: &str, password: &str, salt: [u8; 16], now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        if !self.entries.contains_key(username) && self.entries.len() >= self.max {
            self.entries.retain(|_, e| e.expires > now);
            if self.entries.len() >= self.max {
                let first = self
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.expires)
                    .map(|(k, _)| k.clone());
                if let Some(k) = first {
                    self.entries.remove(&k);
                }
            }
        }
        let digest = self.digest(&salt, username, password);
        self.entries.insert(
            username.to_owned(),
            Entry {
                salt,
                digest,
                expires: now + self.ttl,
            },
        );
    }

    /// Users remembered (expired ones included until evicted).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_only_the_same_password_within_the_ttl() {
        let t0 = Instant::now();
        let mut c = PositiveCache::new(Duration::from_secs(60), 10, [7; 32]);
        assert!(!c.hit("alice", "pw", t0));
        c.insert("alice", "pw", [1; 16], t0);
        assert!(c.hit("alice", "pw", t0 + Duration::from_secs(59)));
        assert!(!c.hit("alice", "pw2", t0));
        assert!(!c.hit("bob", "pw", t0));
        assert!(!c.hit("alice", "pw", t0 + Duration::from_secs(60)));
        // A new entry for the user replaces the old one.
        c.insert("alice", "new", [2; 16], t0);
        assert!(!c.hit("alice", "pw", t0));
        assert!(c.hit("alice", "new", t0));
    }

    #[test]
    fn holds_no_password_and_salts_each_entry() {
        let t0 = Instant::now();
        let mut c = PositiveCache::new(Duration::from_secs(60), 10, [7; 32]);
        c.insert("alice", "same", [1; 16], t0);
        c.insert("bob", "same", [2; 16], t0);
        let a = c.entries["alice"].digest;
        let b = c.entries["bob"].digest;
        assert_ne!(a, b);
        assert!(!a.windows(4).any(|w| w == b"same"));
    }

    #[test]
    fn is_bounded_and_a_zero_ttl_keeps_nothing() {
        let t0 = Instant::now();
        let mut c = PositiveCache::new(Duration::from_secs(60), 2, [7; 32]);
        c.insert("a", "p", [0; 16], t0);
        c.insert("b", "p", [0; 16], t0 + Duration::from_secs(1));
        c.insert("c", "p", [0; 16], t0 + Duration::from_secs(2));
        assert_eq!(c.len(), 2);
        // The one expiring first went.
        assert!(!c.hit("a", "p", t0 + Duration::from_secs(2)));
        assert!(c.hit("c", "p", t0 + Duration::from_secs(2)));
        let mut off = PositiveCache::new(Duration::ZERO, 2, [7; 32]);
        off.insert("a", "p", [0; 16], t0);
        assert!(!off.hit("a", "p", t0));
    }
}
