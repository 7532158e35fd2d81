//! Routing: which shard owns what (DESIGN.md "Ownership"), and the inboxes shards use to
//! hand each other work.
//!
//! - Remote domain D is owned by `shard_of(D)`: its S2S streams, send queue, dialback
//!   state, DNS answers and backoff.
//! - Local bare JID U is owned by `shard_of(U)`: its sessions, roster and presence. A
//!   local domain's own entity (the bare domain JID, e.g. `a.test`) is a bare JID too.
//!
//! Keys are normalised before hashing ([`domain_key`], [`bare_key`]) so that every
//! spelling of a JID lands on the same shard.

pub mod fanout;
pub mod inbox;
pub mod queue;
pub mod rendezvous;

use std::borrow::Cow;

use crate::jid::Jid;

/// The shard that owns `key` among `shards` shards: FNV-1a (64-bit) of the key's bytes,
/// modulo `shards`. Stable across runs, builds and machines (no random seed), so a
/// restart keeps ownership where it was. `key` must already be normalised.
///
/// Panics when `shards` is 0.
#[inline]
pub fn shard_of(key: &str, shards: usize) -> usize {
    assert!(shards > 0, "at least one shard");
    if shards == 1 {
        return 0;
    }
    let h = fnv1a(key.as_bytes());
    // Fold the high bits in: FNV's low bits are weak for short keys.
    ((h ^ (h >> 32)) % shards as u64) as usize
}

/// FNV-1a (64-bit) of `bytes` ([`fnv::FnvHasher`]): stable across runs, builds and
/// machines, no allocation. The one FNV of the crate (shard placement, metric keys).
#[inline]
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    use std::hash::Hasher as _;
    let mut h = fnv::FnvHasher::default();
    h.write(bytes);
    h.finish()
}

/// A domain as an ownership key: ASCII-lowercased, trailing dot removed. Domains on the
/// wire are already in their RFC 7622 form except for case, so no PRECIS work is done
/// for ASCII input; non-ASCII input is normalised through [`Jid::new`].
pub fn domain_key(domain: &str) -> Cow<'_, str> {
    let d = domain.strip_suffix('.').unwrap_or(domain);
    if d.is_ascii() {
        if d.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(d.to_ascii_lowercase())
        } else {
            Cow::Borrowed(d)
        }
    } else {
        match Jid::new(d) {
            Ok(j) => Cow::Owned(j.domain().to_owned()),
            Err(_) => Cow::Owned(d.to_lowercase()),
        }
    }
}

/// The bare JID of `jid` (resource removed) as an ownership key: ASCII input is
/// lowercased (UsernameCaseMapped and domain rules agree with ASCII lowercasing);
/// non-ASCII input is normalised per RFC 7622 through [`Jid::new`]. An unparsable JID
/// keeps its raw lowercase form: it routes somewhere deterministic and is refused there.
pub fn bare_key(jid: &str) -> Cow<'_, str> {
    let bare = match memchr::memchr(b'/', jid.as_bytes()) {
        Some(i) => &jid[..i],
        None => jid,
    };
    if bare.is_ascii() {
        let bare = bare.strip_suffix('.').unwrap_or(bare);
        if bare.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(bare.to_ascii_lowercase())
        } else {
            Cow::Borrowed(bare)
        }
    } else {
        match Jid::new(jid) {
            Ok(j) => Cow::Owned(j.to_bare().as_str().to_owned()),
            Err(_) => Cow::Owned(bare.to_lowercase()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_is_stable_and_spread() {
        // Fixed values: a change here moves every user and domain to another shard.
        assert_eq!(shard_of("gmail.com", 1), 0);
        let a = shard_of("gmail.com", 4);
        assert_eq!(a, shard_of("gmail.com", 4));
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[shard_of(&format!("peer{i}.test"), 4)] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven spread {counts:?}");
        }
    }

    #[test]
    fn ownership_is_pinned() {
        // Known placements, computed from FNV-1a (64-bit) as specified (the offset basis
        // and prime of draft-eastlake-fnv): a change here moves users and domains to
        // another shard across a restart.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"gmail.com"), 0x0f02_38c6_06d7_e732);
        let pinned: [(&str, [usize; 6]); 6] = [
            ("gmail.com", [0, 0, 0, 3, 4, 4]),
            ("jabber.org", [1, 0, 1, 6, 5, 13]),
            ("juliet@capulet.example", [0, 0, 2, 6, 2, 2]),
            ("a.test", [1, 2, 1, 4, 5, 13]),
            ("b.test", [1, 0, 1, 3, 5, 13]),
            ("ñandú@example.com", [0, 2, 2, 2, 2, 2]),
        ];
        for (key, want) in pinned {
            let got = [2, 3, 4, 7, 8, 16].map(|n| shard_of(key, n));
            assert_eq!(got, want, "{key}");
        }
    }

    #[test]
    fn keys_are_normalised() {
        assert_eq!(domain_key("Gmail.COM."), "gmail.com");
        assert_eq!(
            bare_key("Juliet@Capulet.example/Balcony"),
            "juliet@capulet.example"
        );
        assert_eq!(bare_key("capulet.example"), "capulet.example");
        assert_eq!(bare_key("ÑANDÚ@Example.com/x"), "ñandú@example.com");
        assert!(matches!(bare_key("a@b.test"), Cow::Borrowed(_)));
    }
}
