//! Which node of a cluster owns a key: rendezvous (highest-random-weight) hashing over
//! the live members (Thaler and Ravishankar, "Using name-based mappings to increase hit
//! rates", 1998). The shard rule ([`super::shard_of`]) then applies inside the node.
//!
//! Every node computes the same owner from the same member set, without talking to the
//! others; when a member leaves, only the keys it owned move (each to the member with
//! the next highest weight), and when one joins it takes about `1/n` of the keys from
//! the others.

/// The weight of `node` for `key`: FNV-1a over the node name, a separator and the key,
/// then the SplitMix64 finaliser (FNV alone is weak in its high bits for short,
/// similar inputs). Stable across runs, builds and machines.
#[inline]
pub fn weight(node: &str, key: &str) -> u64 {
    use std::hash::Hasher as _;
    let mut h = fnv::FnvHasher::default();
    h.write(node.as_bytes());
    h.write_u8(0xff); // not valid UTF-8: no node/key split collides with another
    h.write(key.as_bytes());
    let mut z = h.finish();
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The member of `members` that owns `key` (an ownership key: [`super::domain_key`] or
/// [`super::bare_key`]): the one with the highest [`weight`], ties broken by the larger
/// name. `None` when `members` is empty.
pub fn owner<'a, S: AsRef<str>>(key: &str, members: &'a [S]) -> Option<&'a S> {
    members.iter().max_by(|a, b| {
        let (a, b) = (a.as_ref(), b.as_ref());
        (weight(a, key), a).cmp(&(weight(b, key), b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("user{i}@example{}.test", i % 97))
            .collect()
    }

    #[test]
    fn same_members_same_owner_whatever_their_order() {
        let a = ["n1", "n2", "n3"];
        let b = ["n3", "n1", "n2"];
        for k in keys(1000) {
            assert_eq!(owner(&k, &a), owner(&k, &b), "{k}");
        }
        assert!(owner::<&str>("x", &[]).is_none());
    }

    #[test]
    fn keys_spread_evenly_over_three_nodes() {
        let m = ["n1", "n2", "n3"];
        let mut count = [0usize; 3];
        let ks = keys(30_000);
        for k in &ks {
            let o = owner(k, &m).unwrap();
            count[m.iter().position(|x| x == o).unwrap()] += 1;
        }
        for c in count {
            // 10,000 expected each; a binomial's 5 sigma is about 410.
            assert!((9_000..=11_000).contains(&c), "{count:?}");
        }
    }

    #[test]
    fn a_leaving_member_moves_only_its_own_keys() {
        let three = ["n1", "n2", "n3"];
        let two = ["n1", "n3"];
        let mut moved = 0;
        for k in keys(10_000) {
            let before = *owner(&k, &three).unwrap();
            let after = *owner(&k, &two).unwrap();
            if before != "n2" {
                assert_eq!(before, after, "{k} moved though its owner stayed");
            } else {
                moved += 1;
            }
        }
        // And a joining member takes only keys, never moves them between others.
        for k in keys(10_000) {
            let before = *owner(&k, &two).unwrap();
            let after = *owner(&k, &three).unwrap();
            assert!(after == before || after == "n2", "{k}");
        }
        assert!(moved > 2_500, "n2 owned {moved} of 10000");
    }
}
