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

    /// The local user of pair `r`.
    pub fn pair_local(&self, r: u32) -> u32 {
        r % self.local_users.max(1)
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

    /// The pairs of local user `k`: `k, k + K, k + 2K, …` below `P · M`.
    pub fn contacts_of(&self, k: u32) -> impl Iterator<Item = u32> {
        let step = self.local_users.max(1) as usize;
        (k..self.pairs()).step_by(step)
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
}
