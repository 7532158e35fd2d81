//! The DNS adapter against a real authoritative server on 127.0.0.1 (UDP and TCP):
//! RFC 6120 §3.2.1 SRV resolution with XEP-0368, fallback, "no service", address look-ups,
//! static overrides, positive and negative caching, TCP after truncation, timeouts and
//! server failures.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fedrouter::dns::{DnsConfig, DnsError, S2sResolver, StaticTarget, ATTEMPTS};
use fedrouter::srv::{Resolution, Target};
use fedrouter_testkit::zone::{ZoneRecord, ZoneServer};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn srv(name: &str, priority: u16, weight: u16, port: u16, target: &str) -> ZoneRecord {
    ZoneRecord::Srv {
        name: name.into(),
        ttl: 300,
        priority,
        weight,
        port,
        target: target.into(),
    }
}

fn a(name: &str, addr: [u8; 4]) -> ZoneRecord {
    ZoneRecord::A {
        name: name.into(),
        ttl: 300,
        addr: Ipv4Addr::from(addr),
    }
}

fn aaaa(name: &str, addr: Ipv6Addr) -> ZoneRecord {
    ZoneRecord::Aaaa {
        name: name.into(),
        ttl: 300,
        addr,
    }
}

/// The test zone:
/// - `a.test`: `_xmpps-server` (priority 5) and `_xmpp-server` (10/60, 10/40, 20/0);
/// - `nosvc.test`: `_xmpp-server` with target `.`;
/// - `plain.test`: no SRV, an A record;
/// - `v6only.test`: AAAA only;
/// - `nx.test`: nothing at all.
fn zone_records() -> Vec<ZoneRecord> {
    vec![
        srv("_xmpps-server._tcp.a.test", 5, 0, 5270, "xmpp1.a.test"),
        srv("_xmpp-server._tcp.a.test", 10, 60, 5269, "xmpp1.a.test"),
        srv("_xmpp-server._tcp.a.test", 10, 40, 5269, "xmpp2.a.test"),
        srv("_xmpp-server._tcp.a.test", 20, 0, 15269, "backup.a.test."),
        a("xmpp1.a.test", [127, 0, 0, 1]),
        aaaa("xmpp1.a.test", Ipv6Addr::LOCALHOST),
        a("xmpp2.a.test", [127, 0, 0, 2]),
        srv("_xmpp-server._tcp.nosvc.test", 0, 0, 0, "."),
        a("plain.test", [127, 0, 0, 3]),
        aaaa("v6only.test", Ipv6Addr::LOCALHOST),
    ]
}

fn start_zone() -> ZoneServer {
    ZoneServer::start("127.0.0.1:0".parse().unwrap(), zone_records()).unwrap()
}

fn config(ns: SocketAddr) -> DnsConfig {
    DnsConfig {
        nameservers: vec![ns],
        timeout: Duration::from_millis(1000),
        static_overrides: HashMap::new(),
        cache_size: 256,
        max_in_flight: 64,
    }
}

fn target(host: &str, port: u16, direct_tls: bool) -> Target {
    Target {
        host: host.into(),
        port,
        direct_tls,
    }
}

#[test]
fn srv_targets_are_merged_by_priority_and_weighted() {
    let zone = start_zone();
    assert_ne!(zone.addr().port(), 53);
    // Built outside any runtime; used inside a current-thread one.
    let resolver = S2sResolver::new(&config(zone.addr())).unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    rt().block_on(async {
        let mut xmpp1_first = 0u32;
        let n = 400;
        for _ in 0..n {
            let Resolution::Targets(t) = resolver.resolve_srv("a.test", &mut rng).await.unwrap()
            else {
                panic!("expected targets");
            };
            assert_eq!(t.len(), 4, "{t:?}");
            assert_eq!(t[0], target("xmpp1.a.test", 5270, true));
            let mut middle = vec![t[1].clone(), t[2].clone()];
            xmpp1_first += u32::from(middle[0].host == "xmpp1.a.test");
            middle.sort_by(|x, y| x.host.cmp(&y.host));
            assert_eq!(
                middle,
                vec![
                    target("xmpp1.a.test", 5269, false),
                    target("xmpp2.a.test", 5269, false)
                ]
            );
            assert_eq!(t[3], target("backup.a.test", 15269, false));
        }
        // Weights 60:40 within priority 10 (RFC 2782).
        let share = f64::from(xmpp1_first) / f64::from(n);
        assert!((share - 0.6).abs() < 0.1, "xmpp1 first {share}");
    });
    // 400 resolutions, two queries: the rest came from the cache.
    assert_eq!(zone.queries_for("_xmpps-server._tcp.a.test"), 1);
    assert_eq!(zone.queries_for("_XMPP-server._tcp.a.test."), 1);
    assert_eq!(zone.queries(), 2);
}

#[test]
fn dot_target_means_no_service() {
    let zone = start_zone();
    let resolver = S2sResolver::new(&config(zone.addr())).unwrap();
    let mut rng = StdRng::seed_from_u64(0);
    let got = rt().block_on(resolver.resolve_srv("nosvc.test", &mut rng));
    assert_eq!(got, Ok(Resolution::NoService));
}

#[test]
fn no_srv_falls_back_to_the_domain_address() {
    let zone = start_zone();
    let resolver = S2sResolver::new(&config(zone.addr())).unwrap();
    let mut rng = StdRng::seed_from_u64(0);
    rt().block_on(async {
        assert_eq!(
            resolver.resolve_srv("plain.test", &mut rng).await,
            Ok(Resolution::Fallback)
        );
        assert_eq!(
            resolver.resolve_host("plain.test").await,
            Ok(vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3))])
        );
    });
}

#[test]
fn nxdomain_falls_back_then_has_no_address() {
    let zone = start_zone();
    let resolver = S2sResolver::new(&config(zone.addr())).unwrap();
    let mut rng = StdRng::seed_from_u64(0);
    rt().block_on(async {
        assert_eq!(
            resolver.resolve_srv("nx.test", &mut rng).await,
            Ok(Resolution::Fallback)
        );
        assert_eq!(
            resolver.resolve_host("nx.test").await,
            Err(DnsError::NoRecords {
                name: "nx.test".into()
            })
        );
    });
}

#[test]
fn hosts_resolve_to_both_families_and_literals_skip_dns() {
    let zone = start_zone();
    let resolver = S2sResolver::new(&config(zone.addr())).unwrap();
    rt().block_on(async {
        assert_eq!(
            resolver.resolve_host("192.0.2.7").await,
            Ok(vec!["192.0.2.7".parse::<IpAddr>().unwrap()])
        );
        assert_eq!(
            resolver.resolve_host("[::1]").await,
            Ok(vec![IpAddr::V6(Ipv6Addr::LOCALHOST)])
        );
        assert_eq!(zone.queries(), 0, "IP literals must not reach DNS");

        assert_eq!(
            resolver.resolve_host("XMPP1.a.test.").await,
            Ok(vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            ])
        );
        assert_eq!(
            resolver.resolve_host("v6only.test").await,
            Ok(vec![IpAddr::V6(Ipv6Addr::LOCALHOST)])
        );
        // An empty non-terminal (ancestor of SRV owners): NODATA for both types.
        assert!(matches!(
            resolver.resolve_host("a.test").await,
            Err(DnsError::NoRecords { .. })
        ));
    });
}

#[test]
fn static_override_skips_dns() {
    let zone = start_zone();
    let mut cfg = config(zone.addr());
    cfg.static_overrides.insert(
        "over.test".into(),
        StaticTarget {
            host: "127.0.0.9".into(),
            port: 15269,
        },
    );
    // An override also wins over published SRV records.
    cfg.static_overrides.insert(
        "a.test".into(),
        StaticTarget {
            host: "relay.example".into(),
            port: 5269,
        },
    );
    let resolver = S2sResolver::new(&cfg).unwrap();
    let mut rng = StdRng::seed_from_u64(0);
    rt().block_on(async {
        assert_eq!(
            resolver.resolve_srv("Over.Test.", &mut rng).await,
            Ok(Resolution::Targets(vec![target("127.0.0.9", 15269, false)]))
        );
        assert_eq!(
            resolver.resolve_srv("a.test", &mut rng).await,
            Ok(Resolution::Targets(vec![target(
                "relay.example",
                5269,
                false
            )]))
        );
    });
    assert_eq!(zone.queries(), 0);
}

#[test]
fn positive_and_negative_answers_are_cached() {
    let zone = start_zone();
    let resolver = S2sResolver::new(&config(zone.addr())).unwrap();
    let mut rng = StdRng::seed_from_u64(0);
    let runtime = rt();
    let round = || {
        runtime.block_on(async {
            // Positive SRV and A/AAAA.
            assert!(matches!(
                resolver
                    .resolve_srv("a.test", &mut StdRng::seed_from_u64(1))
                    .await,
                Ok(Resolution::Targets(_))
            ));
            assert_eq!(
                resolver.resolve_host("xmpp2.a.test").await.unwrap().len(),
                1
            );
            // NXDOMAIN (both SRV names, then A and AAAA).
            assert!(matches!(
                resolver.resolve_host("nx.test").await,
                Err(DnsError::NoRecords { .. })
            ));
            // NODATA (A at a name that has only AAAA; AAAA at a name with only A).
            assert!(resolver.resolve_host("v6only.test").await.is_ok());
            assert!(resolver.resolve_host("plain.test").await.is_ok());
        })
    };
    runtime.block_on(async {
        assert_eq!(
            resolver.resolve_srv("nx.test", &mut rng).await,
            Ok(Resolution::Fallback)
        );
    });
    round();
    let after_first = zone.queries();
    // 2 (nx SRV) + 2 (a.test SRV) + 2 (xmpp2) + 2 (nx A/AAAA) + 2 (v6only) + 2 (plain)
    assert_eq!(after_first, 12);
    runtime.block_on(async {
        assert_eq!(
            resolver.resolve_srv("nx.test", &mut rng).await,
            Ok(Resolution::Fallback)
        );
    });
    round();
    assert_eq!(
        zone.queries(),
        after_first,
        "repeated look-ups reached the server"
    );
    for name in [
        "_xmpp-server._tcp.nx.test",
        "_xmpps-server._tcp.nx.test",
        "_xmpp-server._tcp.a.test",
        "xmpp2.a.test",
        "nx.test",
        "v6only.test",
        "plain.test",
    ] {
        let expected = if name.starts_with('_') { 1 } else { 2 };
        assert_eq!(zone.queries_for(name), expected, "{name}");
    }

    // The cache is the resolver's own: a second resolver (another shard) asks again.
    let other = S2sResolver::new(&config(zone.addr())).unwrap();
    runtime.block_on(async {
        assert!(other.resolve_host("nx.test").await.is_err());
    });
    assert_eq!(zone.queries_for("nx.test"), 4);
}

#[test]
fn truncated_udp_answer_is_retried_over_tcp() {
    // 80 SRV targets with long names: far over the 1232-byte EDNS UDP payload.
    let records: Vec<ZoneRecord> = (0..80)
        .map(|i| {
            srv(
                "_xmpp-server._tcp.big.test",
                10,
                1,
                5269,
                &format!("host-{i:03}-with-a-rather-long-label-to-fill-the-packet.big.test"),
            )
        })
        .collect();
    let zone = ZoneServer::start("127.0.0.1:0".parse().unwrap(), records).unwrap();
    let resolver = S2sResolver::new(&config(zone.addr())).unwrap();
    let mut rng = StdRng::seed_from_u64(0);
    let got = rt().block_on(resolver.resolve_srv("big.test", &mut rng));
    let Ok(Resolution::Targets(t)) = got else {
        panic!("{got:?}");
    };
    assert_eq!(t.len(), 80);
    assert!(zone.tcp_queries() >= 1, "no TCP query reached the server");
}

/// The question names of the DNS queries waiting on `socket` (read without blocking),
/// lowercase, without the trailing dot.
fn queued_questions(socket: &UdpSocket) -> Vec<String> {
    socket.set_nonblocking(true).unwrap();
    let mut names = Vec::new();
    let mut buf = [0u8; 1500];
    // Bounded: ends at the first read that would block.
    while let Ok(n) = socket.recv(&mut buf) {
        // RFC 1035 §4.1: a 12-byte header, then the question's labels.
        let mut labels = Vec::new();
        let mut at = 12;
        while at < n && buf[at] != 0 {
            let len = usize::from(buf[at]);
            let end = (at + 1 + len).min(n);
            labels.push(String::from_utf8_lossy(&buf[at + 1..end]).to_ascii_lowercase());
            at = end;
        }
        names.push(labels.join("."));
    }
    names
}

#[test]
fn silent_name_server_times_out() {
    // Bound, never read while the look-ups run: queries vanish. Nothing listens on its TCP
    // port.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let timeout = Duration::from_millis(300);
    let cfg = DnsConfig {
        timeout,
        ..config(silent.local_addr().unwrap())
    };
    let resolver = S2sResolver::new(&cfg).unwrap();
    let mut rng = StdRng::seed_from_u64(0);
    let runtime = rt();
    let start = Instant::now();
    let err = runtime
        .block_on(resolver.resolve_srv("a.test", &mut rng))
        .unwrap_err();
    let took = start.elapsed();
    assert_eq!(
        err,
        DnsError::Timeout {
            name: "a.test".into()
        }
    );
    assert!(err.is_timeout());
    // It waited for the timeout (a lower bound; how much longer depends on the load)…
    assert!(took >= timeout, "took {took:?}");
    // …and gave up after ATTEMPTS tries of each name: the queries, read afterwards, are
    // all there is (loopback delivers a datagram before `send` returns).
    let mut asked = queued_questions(&silent);
    asked.sort();
    let each = |names: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = names
            .iter()
            .flat_map(|n| std::iter::repeat_n(n.to_string(), ATTEMPTS))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        asked,
        each(&["_xmpps-server._tcp.a.test", "_xmpp-server._tcp.a.test"]),
        "the SRV look-up's queries"
    );

    let err = runtime
        .block_on(resolver.resolve_host("xmpp1.a.test"))
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    // A and AAAA, ATTEMPTS times each.
    assert_eq!(
        queued_questions(&silent),
        each(&["xmpp1.a.test", "xmpp1.a.test"]),
        "the address look-up's queries"
    );
    drop(silent);
}

/// A UDP server answering SERVFAIL to everything, until dropped.
struct ServFail {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServFail {
    fn start() -> ServFail {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            // Bounded: at most 10 s of 50 ms waits.
            for _ in 0..200 {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if n < 12 {
                    continue;
                }
                let mut reply = buf[..n].to_vec();
                reply[2] |= 0x80; // QR: response
                reply[3] = (reply[3] & 0xf0) | 2; // RCODE: SERVFAIL
                let _ = socket.send_to(&reply, from);
            }
        });
        ServFail {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for ServFail {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn server_failure_is_an_error_not_a_fallback() {
    let server = ServFail::start();
    let resolver = S2sResolver::new(&config(server.addr)).unwrap();
    let mut rng = StdRng::seed_from_u64(0);
    rt().block_on(async {
        let err = resolver.resolve_srv("a.test", &mut rng).await.unwrap_err();
        assert!(
            matches!(&err, DnsError::Failed { name, .. } if name == "a.test"),
            "{err:?}"
        );
        assert!(!err.is_timeout());
        let err = resolver.resolve_host("xmpp1.a.test").await.unwrap_err();
        assert!(matches!(err, DnsError::Failed { .. }), "{err:?}");
    });
}

#[test]
fn stopped_server_no_longer_answers() {
    let zone = start_zone();
    let addr = zone.addr();
    // `stop` returns (a generous bound: it only catches a hang).
    let (done, stopped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        zone.stop();
        let _ = done.send(());
    });
    stopped
        .recv_timeout(Duration::from_secs(60))
        .expect("the zone server did not stop");
    let cfg = DnsConfig {
        timeout: Duration::from_millis(200),
        ..config(addr)
    };
    let resolver = S2sResolver::new(&cfg).unwrap();
    let got = rt().block_on(resolver.resolve_host("xmpp1.a.test"));
    assert!(
        matches!(got, Err(DnsError::Failed { .. } | DnsError::Timeout { .. })),
        "{got:?}"
    );
}

#[test]
fn works_when_built_and_dropped_inside_a_runtime() {
    rt().block_on(async {
        let zone = start_zone();
        let resolver = S2sResolver::new(&config(zone.addr())).unwrap();
        let mut rng = StdRng::seed_from_u64(0);
        assert!(matches!(
            resolver.resolve_srv("a.test", &mut rng).await,
            Ok(Resolution::Targets(_))
        ));
        drop(resolver);
        drop(zone);
    });
}

#[test]
fn works_on_a_tokio_uring_runtime() {
    let zone = start_zone();
    let resolver = S2sResolver::new(&config(zone.addr())).unwrap();
    tokio_uring::start(async {
        let mut rng = StdRng::seed_from_u64(0);
        assert!(matches!(
            resolver.resolve_srv("a.test", &mut rng).await,
            Ok(Resolution::Targets(_))
        ));
        assert_eq!(
            resolver.resolve_host("xmpp2.a.test").await,
            Ok(vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))])
        );
    });
}

/// What the holding name server of
/// [`a_burst_of_look_ups_has_at_most_max_in_flight_queries_at_the_name_server`] reports.
#[derive(Debug, PartialEq)]
enum Heard {
    /// A query from the resolver, held unanswered (until the release).
    Query,
    /// The test's marker arrived, with the number of resolver queries held at that moment.
    Marker(usize),
}

/// Issue 20 item 6: 10,000 peers connecting at once sent ~40,000 queries to one UDP name
/// server; its receive queue overflowed and ~50 look-ups timed out, failing the peers'
/// dialback. With `max_in_flight`, a burst sends at most that many queries; the others
/// wait their turn (`queries_waiting`) and go out as answers come.
///
/// The name server holds every query unanswered until the test releases them, so the
/// resolver can only send more by breaking the limit. The test's marker, sent once the
/// resolver reports the rest waiting, arrives behind any query the resolver sent before it
/// (one UDP socket, first in first out): the server counts exactly `LIMIT` then. The
/// per-query timeout is longer than any run, so no query is sent twice.
#[test]
fn a_burst_of_look_ups_has_at_most_max_in_flight_queries_at_the_name_server() {
    use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
    use std::rc::Rc;

    const LIMIT: usize = 4;
    const DOMAINS: usize = 25; // two SRV queries each (RFC 6120 §3.2.1, XEP-0368)
    const QUERIES: usize = 2 * DOMAINS;
    const MARKER: &str = "marker.test.";
    const RELEASE: &str = "release.test.";

    let server = UdpSocket::bind("127.0.43.1:0").unwrap();
    // Only a bound on a broken run; the test waits on events.
    server
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let ns = server.local_addr().unwrap();
    let control = UdpSocket::bind("127.0.43.1:0").unwrap();
    let control_addr = control.local_addr().unwrap();
    let (heard_tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let thread = std::thread::spawn(move || {
        let answer = |query: &Message| {
            let mut m = Message::new();
            m.set_id(query.id())
                .set_message_type(MessageType::Response)
                .set_op_code(query.op_code())
                .set_recursion_desired(query.recursion_desired())
                .set_recursion_available(true)
                .set_response_code(ResponseCode::NXDomain)
                .add_queries(query.queries().to_vec());
            m.to_vec().unwrap()
        };
        let mut held: Vec<(SocketAddr, Message)> = Vec::new();
        let mut released = false;
        let mut answered = 0;
        let mut buf = [0u8; 4096];
        // Bounded: every query, the marker and the release, with room to spare.
        for _ in 0..4 * QUERIES {
            let Ok((n, from)) = server.recv_from(&mut buf) else {
                break;
            };
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let name = query
                .queries()
                .first()
                .map(|q| q.name().to_ascii().to_ascii_lowercase())
                .unwrap_or_default();
            if from == control_addr && name == MARKER {
                let _ = heard_tx.send(Heard::Marker(held.len()));
            } else if from == control_addr && name == RELEASE {
                released = true;
                for (to, q) in held.drain(..) {
                    server.send_to(&answer(&q), to).unwrap();
                    answered += 1;
                }
            } else if released {
                server.send_to(&answer(&query), from).unwrap();
                answered += 1;
            } else {
                held.push((from, query));
                let _ = heard_tx.send(Heard::Query);
            }
            if answered == QUERIES {
                break;
            }
        }
        answered
    });
    let send_control = |name: &str| {
        let mut m = Message::new();
        m.add_query(hickory_resolver::proto::op::Query::query(
            hickory_resolver::Name::from_ascii(name).unwrap(),
            hickory_resolver::proto::rr::RecordType::A,
        ));
        control.send_to(&m.to_vec().unwrap(), ns).unwrap();
    };

    let cfg = DnsConfig {
        timeout: Duration::from_secs(3600),
        max_in_flight: LIMIT,
        ..config(ns)
    };
    let resolver = Rc::new(S2sResolver::new(&cfg).unwrap());
    let local = tokio::task::LocalSet::new();
    let results = local.block_on(&rt(), async {
        let lookups: Vec<_> = (0..DOMAINS)
            .map(|i| {
                let r = Rc::clone(&resolver);
                tokio::task::spawn_local(async move {
                    let mut rng = StdRng::seed_from_u64(i as u64);
                    r.resolve_srv(&format!("d{i}.test"), &mut rng).await
                })
            })
            .collect();
        for _ in 0..LIMIT {
            assert_eq!(heard.recv().await, Some(Heard::Query));
        }
        // Every look-up has started: the queries not sent wait for their turn.
        let mut turns = 0;
        while resolver.queries_waiting() < QUERIES - LIMIT && turns < 100_000 {
            tokio::task::yield_now().await;
            turns += 1;
        }
        send_control(MARKER);
        assert_eq!(
            heard.recv().await,
            Some(Heard::Marker(LIMIT)),
            "the name server got more than max_in_flight queries at once"
        );
        assert_eq!(resolver.queries_waiting(), QUERIES - LIMIT);
        send_control(RELEASE);
        let mut out = Vec::new();
        for l in lookups {
            out.push(l.await.unwrap());
        }
        out
    });
    assert_eq!(thread.join().unwrap(), QUERIES);
    assert_eq!(resolver.queries_waiting(), 0);
    for r in results {
        // NXDOMAIN for both services: the domain itself on 5269 (RFC 6120 §3.2.1).
        assert_eq!(r, Ok(Resolution::Fallback));
    }
}
