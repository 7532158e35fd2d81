//! The SUT's S2S addresses when it is several nodes (a cluster behind equal-priority,
//! weighted SRV records, DESIGN.md "Cluster"): the list given on the command line
//! (`--sut-s2s a,b,c`, `--sut-weights 1,1,1`), the SRV records loadgen's DNS serves for
//! them ([`crate::dns::records`]), and the order in which a peer tries them, as a real
//! server would after an SRV look-up (RFC 2782: lowest priority first, weighted random
//! choice within a priority; [`fedrouter::srv::order`]).

use std::net::SocketAddr;

use fedrouter::srv::{self, SrvRecord};
use rand::Rng;

/// One S2S address of the SUT and its SRV weight (RFC 2782 "Weight").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SutS2s {
    /// Where the node accepts S2S streams.
    pub addr: SocketAddr,
    /// Its SRV weight (all records have priority 0).
    pub weight: u16,
}

/// The default weight of every SUT SRV record.
pub const DEFAULT_WEIGHT: u16 = 1;

/// Pairs `addrs` with `weights` (empty: [`DEFAULT_WEIGHT`] each).
///
/// Errors: a message naming `--sut-weights` when the counts differ or every weight is 0.
pub fn with_weights(addrs: &[SocketAddr], weights: &[u16]) -> Result<Vec<SutS2s>, String> {
    if !weights.is_empty() && weights.len() != addrs.len() {
        return Err(format!(
            "--sut-weights: {} weights for {} --sut-s2s addresses",
            weights.len(),
            addrs.len()
        ));
    }
    if !weights.is_empty() && weights.iter().all(|&w| w == 0) {
        return Err("--sut-weights: at least one weight must be above 0".into());
    }
    Ok(addrs
        .iter()
        .enumerate()
        .map(|(i, &addr)| SutS2s {
            addr,
            weight: weights.get(i).copied().unwrap_or(DEFAULT_WEIGHT),
        })
        .collect())
}

/// The order in which to try `nodes` for one connection (RFC 2782 §"Usage rules", all at
/// priority 0): a weighted random permutation drawn from `rng`.
pub fn connect_order<R: Rng + ?Sized>(nodes: &[SutS2s], rng: &mut R) -> Vec<SocketAddr> {
    let records: Vec<SrvRecord> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| SrvRecord {
            priority: 0,
            weight: n.weight,
            port: n.addr.port(),
            target: i.to_string(),
        })
        .collect();
    srv::order(&records, rng)
        .into_iter()
        .filter_map(|r| r.target.parse::<usize>().ok())
        .filter_map(|i| nodes.get(i).map(|n| n.addr))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;

    fn addrs(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([127, 0, 198, 10 + i], 5269)))
            .collect()
    }

    #[test]
    fn weights_pair_up_or_default() {
        let a = addrs(3);
        let n = with_weights(&a, &[]).unwrap();
        assert!(n.iter().all(|x| x.weight == DEFAULT_WEIGHT));
        let n = with_weights(&a, &[1, 2, 3]).unwrap();
        assert_eq!(n[2].weight, 3);
        assert!(with_weights(&a, &[1, 2])
            .unwrap_err()
            .contains("--sut-weights"));
        assert!(with_weights(&a, &[0, 0, 0])
            .unwrap_err()
            .contains("--sut-weights"));
    }

    #[test]
    fn every_node_is_tried_once_and_weights_steer_the_first_choice() {
        let a = addrs(3);
        let nodes = with_weights(&a, &[1, 1, 6]).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut first = [0u32; 3];
        for _ in 0..2000 {
            let o = connect_order(&nodes, &mut rng);
            let mut sorted = o.clone();
            sorted.sort();
            assert_eq!(sorted, a, "a permutation of the addresses");
            first[a.iter().position(|x| *x == o[0]).unwrap()] += 1;
        }
        // RFC 2782 draws from 0..=8 and the first record also takes 0: about 6/9, 2/9
        // and 1/9 of 2,000 first choices.
        assert!(
            first[2] > 1200 && first[0] < 600 && first[1] < 400,
            "{first:?}"
        );
    }
}
