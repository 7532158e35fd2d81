//! The peers' DNS zone: for every remote domain an `_xmpp-server._tcp` SRV record (RFC 6120
//! §3.2.1, RFC 2782) pointing at its server's host name, and an A record per server, served
//! by fedrouter's embedded authoritative server ([`ZoneServer`], hickory-server) on a
//! loopback address so the SUT resolves the peers for real. The same records can be written
//! as a zone file (RFC 1035 master format) for another DNS server (dnsmasq, unbound).

use std::io;
use std::net::{IpAddr, SocketAddr};

use fedrouter_testkit::zone::{zone_file, ZoneRecord, ZoneServer};

use crate::targets::SutS2s;
use crate::topology::Topology;

/// TTL of every record, seconds.
pub const TTL: u32 = 300;

/// The zone of `topo`'s peers; with `sut`, also the SUT's SRV records: one
/// `_xmpp-server._tcp` record of its domain per S2S address, all at priority 0 with the
/// address's weight (RFC 2782; a cluster behind equal-priority weighted records), each
/// target with its own A record (`sut.<suffix>` for one address, `sut1.<suffix>`,
/// `sut2.<suffix>` … for several). IPv6 addresses get no record.
pub fn records(topo: &Topology, sut: &[SutS2s]) -> Vec<ZoneRecord> {
    let mut out = Vec::with_capacity(topo.peers as usize + topo.servers() as usize + 2 * sut.len());
    for s in 0..topo.servers() {
        let host = topo.server_host(s);
        let addr = topo.server_addr(s);
        if let IpAddr::V4(ip) = addr.ip() {
            out.push(ZoneRecord::A {
                name: host.clone(),
                ttl: TTL,
                addr: ip,
            });
        }
        for d in topo.server_domains(s) {
            out.push(ZoneRecord::Srv {
                name: format!("_xmpp-server._tcp.{}", topo.domain(d)),
                ttl: TTL,
                priority: 0,
                weight: 5,
                port: addr.port(),
                target: host.clone(),
            });
        }
    }
    for (i, node) in sut.iter().enumerate() {
        let SocketAddr::V4(a) = node.addr else {
            continue;
        };
        let host = if sut.len() == 1 {
            format!("sut.{}", topo.suffix)
        } else {
            format!("sut{}.{}", i + 1, topo.suffix)
        };
        out.push(ZoneRecord::A {
            name: host.clone(),
            ttl: TTL,
            addr: *a.ip(),
        });
        out.push(ZoneRecord::Srv {
            name: format!("_xmpp-server._tcp.{}", topo.sut_domain),
            ttl: TTL,
            priority: 0,
            weight: node.weight,
            port: a.port(),
            target: host,
        });
    }
    out
}

/// Starts the zone's server on `bind` (UDP and TCP; port 0 picks one).
///
/// Errors: the address cannot be bound.
pub fn serve(bind: SocketAddr, records: Vec<ZoneRecord>) -> io::Result<ZoneServer> {
    ZoneServer::start(bind, records)
}

/// The records as a zone file.
pub fn to_zone_file(records: &[ZoneRecord]) -> String {
    zone_file(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_domain_has_srv_to_its_server() {
        let topo = Topology {
            peers: 5,
            users_per_peer: 1,
            local_users: 1,
            domains_per_server: 2,
            suffix: "test".into(),
            sut_domain: "cup.test".into(),
            peer_net: [127, 78],
            peer_subnet: None,
            peer_port: 5269,
            shard: crate::topology::Shard::ALL,
        };
        let one = [SutS2s {
            addr: "127.0.0.9:5269".parse().expect("addr"),
            weight: 1,
        }];
        let recs = records(&topo, &one);
        let srv: Vec<_> = recs
            .iter()
            .filter_map(|r| match r {
                ZoneRecord::Srv { name, target, .. } => Some((name.as_str(), target.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(srv.len(), 6);
        assert!(srv.contains(&("_xmpp-server._tcp.peer3.test", "xmpp1.test")));
        assert!(srv.contains(&("_xmpp-server._tcp.peer4.test", "xmpp2.test")));
        assert!(srv.contains(&("_xmpp-server._tcp.cup.test", "sut.test")));
        let a = recs
            .iter()
            .filter(|r| matches!(r, ZoneRecord::A { .. }))
            .count();
        assert_eq!(a, 4);
        assert!(to_zone_file(&recs).contains("xmpp2.test"));
    }

    #[test]
    fn a_cluster_gets_one_weighted_srv_target_per_node() {
        let topo = Topology {
            peers: 1,
            users_per_peer: 1,
            local_users: 1,
            domains_per_server: 1,
            suffix: "test".into(),
            sut_domain: "cup.test".into(),
            peer_net: [127, 78],
            peer_subnet: None,
            peer_port: 5269,
            shard: crate::topology::Shard::ALL,
        };
        let nodes: Vec<SutS2s> = (1..=3u8)
            .map(|i| SutS2s {
                addr: SocketAddr::from(([127, 0, 198, 10 + i], 5269)),
                weight: u16::from(i),
            })
            .collect();
        let recs = records(&topo, &nodes);
        let sut_srv: Vec<_> = recs
            .iter()
            .filter_map(|r| match r {
                ZoneRecord::Srv {
                    name,
                    priority,
                    weight,
                    port,
                    target,
                    ..
                } if name == "_xmpp-server._tcp.cup.test" => {
                    Some((*priority, *weight, *port, target.as_str()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            sut_srv,
            vec![
                (0, 1, 5269, "sut1.test"),
                (0, 2, 5269, "sut2.test"),
                (0, 3, 5269, "sut3.test")
            ]
        );
        for (i, host) in ["sut1.test", "sut2.test", "sut3.test"].iter().enumerate() {
            assert!(recs.iter().any(|r| matches!(r,
                ZoneRecord::A { name, addr, .. }
                    if name == host && addr.octets() == [127, 0, 198, 11 + i as u8])));
        }
    }
}
