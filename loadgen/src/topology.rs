//! Who is who in a run: the simulated remote domains and their servers, the local users on
//! the system under test (SUT), and which remote user is whose contact.
//!
//! Pure and deterministic: the same options give the same names, addresses and pairs, so the
//! DNS zone, the peers and the clients agree without talking to each other.
//!
//! - Remote domain `i` (0-based) is `peer{i}.{suffix}`; its users are `u{j}` for `j < M`.
//! - Domains are hosted `domains_per_server` at a time (1: one domain per server; more:
//!   Google-Apps-style, many domains behind one SRV target and one listener). Server `s`
//!   hosts domains `s·G .. (s+1)·G` and listens on its own loopback address
//!   ([`Topology::server_addr`]) at port [`Topology::peer_port`]; its SRV target is
//!   `xmpp{s}.{suffix}`.
//! - Local user `k` is `user{k}@{sut_domain}`.
//! - Pair `r` (remote user `r`: domain `r / M`, user `r % M`) is a contact of local user
//!   `r % K`, so every local user has about `P·M / K` remote contacts spread over many
//!   domains, as a presence deployment federating with Gmail does.
//! - Split over `n` processes (`loadgen --procs n`, [`Shard`]): process `i` simulates the
//!   servers `s` with `s % n == i` (with one domain per server, the domains `d % n == i`)
//!   and the local users `k % n == i`. Pairs never cross processes: a domain's pairs go to
//!   the local users of the same process, round robin (with `n = 1` that is `r % K`), so
//!   every stanza a process sends is received by that process.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// Hosts per /16 used for peer server addresses: the last octet runs 1..=250.
const HOSTS_PER_OCTET: u32 = 250;

/// The shape of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Number of remote domains (P).
    pub peers: u32,
    /// Users per remote domain (M).
    pub users_per_peer: u32,
    /// Number of local users (K).
    pub local_users: u32,
    /// Remote domains per simulated server (G ≥ 1).
    pub domains_per_server: u32,
    /// Suffix of the remote domains (`test`: `peer0.test`).
    pub suffix: String,
    /// The SUT's domain (local users' domain).
    pub sut_domain: String,
    /// The first two octets of the peer servers' loopback addresses (`[127, 78]`).
    pub peer_net: [u8; 2],
    /// The third octet too, when the peers must stay in one /24 (`--peer-net 127.0.10`):
    /// servers are then `peer_net.third.(s + 1)`, at most 250 of them.
    pub peer_subnet: Option<u8>,
    /// TCP port every peer server listens on (5269 by default).
    pub peer_port: u16,
    /// Which part of the run this process simulates (all of it by default).
    pub shard: Shard,
}

/// One process's part of a run split over `count` processes (`loadgen --procs`): it owns
/// the servers `s` with `s % count == index` (and their domains) and the local users `k`
/// with `k % count == index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This process's part, `0 .. count`.
    pub index: u32,
    /// Number of processes (≥ 1).
    pub count: u32,
}

impl Shard {
    /// The whole run in one process.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Parses `i/n` (`--child`): `i < n`, `n ≥ 1`.
    ///
    /// Errors: a message naming what is wrong.
    pub fn parse(s: &str) -> Result<Shard, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}`: expected i/n, like 0/4"))?;
        let (Ok(index), Ok(count)) = (i.trim().parse::<u32>(), n.trim().parse::<u32>()) else {
            return Err(format!("`{s}`: i and n must be whole numbers"));
        };
        if count == 0 || index >= count {
            return Err(format!("`{s}`: expected 0 <= i < n"));
        }
        Ok(Shard { index, count })
    }
}

impl Default for Shard {
    fn default() -> Self {
        Shard::ALL
    }
}

impl Topology {
    /// Number of simulated servers: `ceil(P / G)`.
    pub fn servers(&self) -> u32 {
        self.peers.div_ceil(self.domains_per_server.max(1))
    }

    /// Number of (remote user, local user) pairs: `P · M`.
    pub fn pairs(&self) -> u32 {
        self.peers * self.users_per_peer
    }

    /// Remote domain `i`.
    pub fn domain(&self, i: u32) -> String {
        format!("peer{i}.{}", self.suffix)
    }

    /// The index of a remote domain named by [`Topology::domain`], if it is one.
    pub fn domain_index(&self, domain: &str) -> Option<u32> {
        let rest = domain.strip_prefix("peer")?;
        let (n, suffix) = rest.split_once('.')?;
        if !suffix.eq_ignore_ascii_case(&self.suffix) || n.starts_with('0') && n.len() > 1 {
            return None;
        }
        let i: u32 = n.parse().ok()?;
        (i < self.peers).then_some(i)
    }

    /// The server hosting domain `i`.
    pub fn server_of(&self, i: u32) -> u32 {
        i / self.domains_per_server.max(1)
    }

    /// The domains server `s` hosts.
    pub fn server_domains(&self, s: u32) -> std::ops::Range<u32> {
        let g = self.domains_per_server.max(1);
        (s * g)..((s + 1) * g).min(self.peers)
    }

    /// Server `s`'s SRV target host name.
    pub fn server_host(&self, s: u32) -> String {
        format!("xmpp{s}.{}", self.suffix)
    }

    /// Server `s`'s listening address: `peer_net.(s / 250).(s % 250 + 1):peer_port`.
    ///
    /// Panics when `s` does not fit in the /16 (more than 64,000 servers).
    pub fn server_addr(&self, s: u32) -> SocketAddr {
        let hi = match self.peer_subnet {
            Some(third) => {
                assert!(s < HOSTS_PER_OCTET, "too many peer servers for one /24");
                u32::from(third)
            }
            None => s / HOSTS_PER_OCTET,
        };
        assert!(hi < 256, "too many peer servers for one /16");
        let ip = Ipv4Addr::new(
            self.peer_net[0],
            self.peer_net[1],
            hi as u8,
            (s % HOSTS_PER_OCTET + 1) as u8,
        );
        SocketAddr::V4(SocketAddrV4::new(ip, self.peer_port))
    }

    /// The bare JID of remote user `r` (pair `r`).
    pub fn remote_jid(&self, r: u32) -> String {
        let m = self.users_per_peer.max(1);
        format!("u{}@{}", r % m, self.domain(r / m))
    }

    /// Pair index of a remote JID (bare or full) named by [`Topology::remote_jid`].
    pub fn remote_index(&self, jid: &str) -> Option<u32> {
        let bare = jid.split('/').next()?;
        let (local, domain) = bare.split_once('@')?;
        let d = self.domain_index(domain)?;
        let j: u32 = local.strip_prefix('u')?.parse().ok()?;
        (j < self.users_per_peer).then_some(d * self.users_per_peer + j)
    }

    /// The remote domain index of pair `r`.
    pub fn pair_domain(&self, r: u32) -> u32 {
        r / self.users_per_peer.max(1)
    }

    /// The local user of pair `r`: `r % K` in one process; split over `n` processes, the
    /// pairs of a domain go round robin to the local users of the process that owns the
    /// domain (see [`Shard`]), so both ends of a pair are in one process.
    pub fn pair_local(&self, r: u32) -> u32 {
        let m = self.users_per_peer.max(1);
        let g = self.domains_per_server.max(1);
        let n = self.shard.count.max(1);
        let (d, j) = (r / m, r % m);
        let s = d / g;
        let c = s % n;
        // The domain's rank among its process's domains, then the pair's.
        let e = (s / n) * g + d % g;
        let q = e * m + j;
        c + n * (q % self.locals_of(c).max(1))
    }

    /// Local users of process `c`: `k < K` with `k % n == c`.
    fn locals_of(&self, c: u32) -> u32 {
        self.local_users
            .saturating_sub(c)
            .div_ceil(self.shard.count.max(1))
    }

    /// Servers of process `c`: `s < S` with `s % n == c`.
    fn servers_of(&self, c: u32) -> u32 {
        self.servers()
            .saturating_sub(c)
            .div_ceil(self.shard.count.max(1))
    }

    /// Domains of process `c` (the domains of its servers).
    fn domains_of(&self, c: u32) -> u32 {
        let (n, g, last) = (
            self.shard.count.max(1),
            self.domains_per_server.max(1),
            self.servers(),
        );
        let full = self.servers_of(c) * g;
        // The last server may host fewer than G domains.
        if last > 0 && (last - 1) % n == c {
            full - (g - self.server_domains(last - 1).len() as u32)
        } else {
            full
        }
    }

    /// Pair `q` (in rank order) of process `c`: its global index.
    fn pair_of(&self, c: u32, q: u32) -> u32 {
        let m = self.users_per_peer.max(1);
        let g = self.domains_per_server.max(1);
        let n = self.shard.count.max(1);
        let (e, j) = (q / m, q % m);
        let s = c + n * (e / g);
        (s * g + e % g) * m + j
    }

    /// Whether this process simulates server `s`.
    pub fn owns_server(&self, s: u32) -> bool {
        s % self.shard.count.max(1) == self.shard.index
    }

    /// Whether this process simulates remote domain `d`.
    pub fn owns_domain(&self, d: u32) -> bool {
        self.owns_server(self.server_of(d))
    }

    /// Whether this process logs local user `k` in.
    pub fn owns_local(&self, k: u32) -> bool {
        k % self.shard.count.max(1) == self.shard.index
    }

    /// Number of servers this process simulates.
    pub fn own_servers(&self) -> u32 {
        self.servers_of(self.shard.index)
    }

    /// This process's server `x` (`x < own_servers()`): its global index.
    pub fn own_server(&self, x: u32) -> u32 {
        self.shard.index + self.shard.count.max(1) * x
    }

    /// Number of remote domains this process simulates.
    pub fn own_domains(&self) -> u32 {
        self.domains_of(self.shard.index)
    }

    /// Number of local users this process logs in.
    pub fn own_locals(&self) -> u32 {
        self.locals_of(self.shard.index)
    }

    /// This process's local user `x` (`x < own_locals()`): its global index.
    pub fn own_local(&self, x: u32) -> u32 {
        self.shard.index + self.shard.count.max(1) * x
    }

    /// Number of pairs whose ends this process simulates: `own_domains() · M`.
    pub fn own_pairs(&self) -> u32 {
        self.own_domains() * self.users_per_peer
    }

    /// This process's pair `t` (`t < own_pairs()`): its global index.
    pub fn own_pair(&self, t: u32) -> u32 {
        self.pair_of(self.shard.index, t)
    }

    /// Local user `k`'s localpart.
    pub fn local_name(&self, k: u32) -> String {
        format!("user{k}")
    }

    /// Local user `k`'s bare JID.
    pub fn local_jid(&self, k: u32) -> String {
        format!("user{k}@{}", self.sut_domain)
    }

    /// The index of a local JID (bare or full) named by [`Topology::local_jid`].
    pub fn local_index(&self, jid: &str) -> Option<u32> {
        let bare = jid.split('/').next()?;
        let (local, domain) = bare.split_once('@')?;
        if !domain.eq_ignore_ascii_case(&self.sut_domain) {
            return None;
        }
        let k: u32 = local.strip_prefix("user")?.parse().ok()?;
        (k < self.local_users).then_some(k)
    }

    /// The pairs of local user `k` (in one process: `k, k + K, k + 2K, …` below `P · M`).
    pub fn contacts_of(&self, k: u32) -> impl Iterator<Item = u32> + '_ {
        let n = self.shard.count.max(1);
        let c = k % n;
        let step = self.locals_of(c).max(1) as usize;
        let pairs = self.domains_of(c) * self.users_per_peer;
        ((k / n)..pairs)
            .step_by(step)
            .map(move |q| self.pair_of(c, q))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo() -> Topology {
        Topology {
            peers: 1000,
            users_per_peer: 10,
            local_users: 100,
            domains_per_server: 50,
            suffix: "test".into(),
            sut_domain: "cupdomain.test".into(),
            peer_net: [127, 78],
            peer_subnet: None,
            peer_port: 5269,
            shard: Shard::ALL,
        }
    }

    #[test]
    fn names_round_trip() {
        let t = topo();
        assert_eq!(t.domain(7), "peer7.test");
        assert_eq!(t.domain_index("peer7.test"), Some(7));
        assert_eq!(
            t.domain_index("PEER7.TEST".to_ascii_lowercase().as_str()),
            Some(7)
        );
        assert_eq!(t.domain_index("peer07.test"), None);
        assert_eq!(t.domain_index("peer1000.test"), None);
        assert_eq!(t.domain_index("peer7.example"), None);
        for r in [0, 9, 10, 9999] {
            assert_eq!(t.remote_index(&t.remote_jid(r)), Some(r));
            assert_eq!(t.remote_index(&format!("{}/lg", t.remote_jid(r))), Some(r));
        }
        assert_eq!(t.remote_jid(123), "u3@peer12.test");
        assert_eq!(t.local_index("user42@cupdomain.test/r"), Some(42));
        assert_eq!(t.local_index("user100@cupdomain.test"), None);
        assert_eq!(t.local_index("user4@other.test"), None);
    }

    #[test]
    fn servers_partition_domains() {
        let t = topo();
        assert_eq!(t.servers(), 20);
        let mut seen = 0;
        for s in 0..t.servers() {
            for d in t.server_domains(s) {
                assert_eq!(t.server_of(d), s);
                seen += 1;
            }
        }
        assert_eq!(seen, t.peers);
        let odd = Topology {
            peers: 101,
            ..topo()
        };
        assert_eq!(odd.servers(), 3);
        assert_eq!(odd.server_domains(2), 100..101);
    }

    #[test]
    fn server_addresses_are_distinct_loopback() {
        let t = Topology {
            peers: 10_000,
            domains_per_server: 1,
            ..topo()
        };
        let mut addrs = std::collections::HashSet::new();
        for s in 0..t.servers() {
            let a = t.server_addr(s);
            assert!(a.ip().is_loopback());
            assert_ne!(a.ip().to_string().rsplit('.').next(), Some("0"));
            assert!(addrs.insert(a));
        }
        assert_eq!(t.server_addr(0).to_string(), "127.78.0.1:5269");
        assert_eq!(t.server_addr(250).to_string(), "127.78.1.1:5269");
        let one_24 = Topology {
            peer_net: [127, 0],
            peer_subnet: Some(10),
            ..topo()
        };
        assert_eq!(one_24.server_addr(0).to_string(), "127.0.10.1:5269");
        assert_eq!(one_24.server_addr(249).to_string(), "127.0.10.250:5269");
    }

    #[test]
    fn every_pair_has_one_local_user() {
        let t = topo();
        let mut count = vec![0u32; t.local_users as usize];
        for k in 0..t.local_users {
            for r in t.contacts_of(k) {
                assert_eq!(t.pair_local(r), k);
                count[k as usize] += 1;
            }
        }
        assert!(count.iter().all(|&c| c == 100));
    }

    /// Split over `n` processes, every process's pairs, servers and local users are its
    /// own, together they are everything once, and pair ends never cross processes.
    #[test]
    fn shards_partition_the_run() {
        for (peers, g, m, k, n) in [
            (20, 1, 5, 4, 2),
            (23, 1, 3, 7, 4),
            (101, 10, 2, 9, 3),
            (7, 3, 2, 5, 3),
            (1000, 50, 10, 100, 1),
        ] {
            let base = Topology {
                peers,
                users_per_peer: m,
                local_users: k,
                domains_per_server: g,
                ..topo()
            };
            let mut pairs_seen = vec![0u32; base.pairs() as usize];
            let mut locals_seen = vec![0u32; k as usize];
            let mut domains = 0;
            for index in 0..n {
                let t = Topology {
                    shard: Shard { index, count: n },
                    ..base.clone()
                };
                let own_domains = (0..peers).filter(|&d| t.owns_domain(d)).count() as u32;
                assert_eq!(t.own_domains(), own_domains, "{peers} {g} {n} {index}");
                domains += own_domains;
                assert_eq!(
                    t.own_servers(),
                    (0..t.servers()).filter(|&s| t.owns_server(s)).count() as u32
                );
                for x in 0..t.own_servers() {
                    assert!(t.owns_server(t.own_server(x)));
                }
                for x in 0..t.own_locals() {
                    let l = t.own_local(x);
                    assert!(t.owns_local(l));
                    locals_seen[l as usize] += 1;
                }
                for q in 0..t.own_pairs() {
                    let r = t.own_pair(q);
                    assert!(t.owns_domain(t.pair_domain(r)), "{r}");
                    assert!(t.owns_local(t.pair_local(r)), "{r}");
                    pairs_seen[r as usize] += 1;
                }
                for x in 0..t.own_locals() {
                    let l = t.own_local(x);
                    for r in t.contacts_of(l) {
                        assert_eq!(t.pair_local(r), l);
                    }
                }
            }
            assert_eq!(domains, peers);
            assert!(
                pairs_seen.iter().all(|&c| c == 1),
                "{peers} {g} {m} {k} {n}"
            );
            assert!(locals_seen.iter().all(|&c| c == 1));
            // contacts_of lists exactly the pairs whose local user it is.
            let t = Topology {
                shard: Shard { index: 0, count: n },
                ..base.clone()
            };
            let total: usize = (0..k).map(|l| t.contacts_of(l).count()).sum();
            assert_eq!(total, base.pairs() as usize);
        }
        assert_eq!(Shard::parse("1/4"), Ok(Shard { index: 1, count: 4 }));
        for bad in ["4/4", "1", "a/2", "0/0"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }
}
