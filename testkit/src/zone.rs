//! A small authoritative DNS server over hickory-server, for tests, loadgen and labs.
//!
//! It serves a fixed record set (SRV, A, AAAA) as the root zone `.`: a name listed gets
//! its records; a name that exists with other types only, or only as an ancestor of a
//! listed name (an empty non-terminal, RFC 8020), gets NODATA; any other name gets
//! NXDOMAIN. Negative answers carry the zone's SOA in the authority section, so resolvers
//! cache them for [`NEGATIVE_TTL`] seconds (RFC 2308 §5). Every answer is authoritative
//! (AA set).
//!
//! [`zone_file`] and [`dnsmasq_args`] render the same records for other servers.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_server::authority::MessageResponseBuilder;
use hickory_server::proto::op::{Edns, Header, MessageType, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, NS, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::proto::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::ServerFuture;

/// Negative-caching time of the zone, in seconds: the SOA's TTL and MINIMUM fields
/// (RFC 2308 §5), so NXDOMAIN and NODATA answers are cached this long.
pub const NEGATIVE_TTL: u32 = 60;

/// The zone's primary server and contact (SOA MNAME, RNAME) and its NS target.
const MNAME: &str = "localhost.";
const RNAME: &str = "hostmaster.localhost.";

/// How long an idle TCP connection to the server is kept.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// How many port-0 picks are tried to find a port free for both UDP and TCP.
const BIND_TRIES: usize = 32;

/// One record of the zone. Names without a trailing dot are taken as absolute
/// (`a.test` is `a.test.`); `""` and `"."` are the root. TTLs are in seconds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ZoneRecord {
    /// An SRV record (RFC 2782); `target` `"."` means "no service here".
    Srv {
        /// Owner, e.g. `_xmpp-server._tcp.a.test`.
        name: String,
        /// TTL, seconds.
        ttl: u32,
        /// Lower is tried first.
        priority: u16,
        /// Relative weight within a priority.
        weight: u16,
        /// TCP port.
        port: u16,
        /// Target host name, or `"."`.
        target: String,
    },
    /// An IPv4 address record.
    A {
        /// Owner.
        name: String,
        /// TTL, seconds.
        ttl: u32,
        /// The address.
        addr: Ipv4Addr,
    },
    /// An IPv6 address record.
    Aaaa {
        /// Owner.
        name: String,
        /// TTL, seconds.
        ttl: u32,
        /// The address.
        addr: Ipv6Addr,
    },
}

impl ZoneRecord {
    /// The owner name, as given.
    pub fn name(&self) -> &str {
        match self {
            ZoneRecord::Srv { name, .. }
            | ZoneRecord::A { name, .. }
            | ZoneRecord::Aaaa { name, .. } => name,
        }
    }

    fn to_record(&self) -> io::Result<Record> {
        Ok(match self {
            ZoneRecord::Srv {
                name,
                ttl,
                priority,
                weight,
                port,
                target,
            } => Record::from_rdata(
                parse_name(name)?,
                *ttl,
                RData::SRV(SRV::new(*priority, *weight, *port, parse_name(target)?)),
            ),
            ZoneRecord::A { name, ttl, addr } => {
                Record::from_rdata(parse_name(name)?, *ttl, RData::A(A(*addr)))
            }
            ZoneRecord::Aaaa { name, ttl, addr } => {
                Record::from_rdata(parse_name(name)?, *ttl, RData::AAAA(AAAA(*addr)))
            }
        })
    }
}

/// `name` made absolute, as the master-file text writes it.
fn absolute_text(name: &str) -> String {
    if name.is_empty() || name.ends_with('.') {
        if name.is_empty() {
            ".".into()
        } else {
            name.into()
        }
    } else {
        format!("{name}.")
    }
}

/// `name` without its trailing dot (the root stays `""`), as dnsmasq takes it.
fn relative_text(name: &str) -> &str {
    name.strip_suffix('.').unwrap_or(name)
}

fn parse_name(name: &str) -> io::Result<Name> {
    let text = absolute_text(name);
    let parsed = if text.is_ascii() {
        Name::from_ascii(&text)
    } else {
        Name::from_utf8(&text)
    };
    parsed.map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad DNS name {name:?}: {e}"),
        )
    })
}

/// The zone's SOA record at the root.
fn soa_record() -> Record {
    let soa = SOA::new(
        Name::from_ascii(MNAME).expect("constant name"),
        Name::from_ascii(RNAME).expect("constant name"),
        1,
        3600,
        600,
        86400,
        NEGATIVE_TTL,
    );
    Record::from_rdata(Name::root(), NEGATIVE_TTL, RData::SOA(soa))
}

fn ns_record() -> Record {
    Record::from_rdata(
        Name::root(),
        NEGATIVE_TTL,
        RData::NS(NS(Name::from_ascii(MNAME).expect("constant name"))),
    )
}

/// The records by owner; every ancestor of an owner is present too (possibly with no
/// records: an empty non-terminal).
struct Zone {
    by_name: HashMap<LowerName, Vec<Record>>,
    soa: Record,
}

impl Zone {
    fn new(records: &[ZoneRecord]) -> io::Result<Zone> {
        let soa = soa_record();
        let mut by_name: HashMap<LowerName, Vec<Record>> = HashMap::new();
        let all = records
            .iter()
            .map(ZoneRecord::to_record)
            .chain([Ok(soa.clone()), Ok(ns_record())]);
        for record in all {
            let record = record?;
            let mut ancestor = record.name().base_name();
            loop {
                by_name.entry(LowerName::from(&ancestor)).or_default();
                if ancestor.is_root() {
                    break;
                }
                ancestor = ancestor.base_name();
            }
            let set = by_name.entry(LowerName::from(record.name())).or_default();
            if !set.contains(&record) {
                set.push(record);
            }
        }
        Ok(Zone { by_name, soa })
    }

    /// The answer records and response code for a query, and whether the SOA goes in the
    /// authority section (negative answers).
    fn answer(&self, name: &LowerName, qtype: RecordType) -> (Vec<&Record>, ResponseCode, bool) {
        match self.by_name.get(name) {
            None => (Vec::new(), ResponseCode::NXDomain, true),
            Some(set) => {
                let answers: Vec<&Record> = set
                    .iter()
                    .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
                    .collect();
                let negative = answers.is_empty();
                (answers, ResponseCode::NoError, negative)
            }
        }
    }
}

/// What the server answered, for tests.
#[derive(Default)]
struct Counters {
    total: AtomicU64,
    tcp: AtomicU64,
    by_name: Mutex<HashMap<String, u64>>,
}

impl Counters {
    fn count(&self, name: &LowerName, protocol: Protocol) {
        self.total.fetch_add(1, Ordering::SeqCst);
        if protocol == Protocol::Tcp {
            self.tcp.fetch_add(1, Ordering::SeqCst);
        }
        let key = Name::from(name.clone()).to_ascii().to_ascii_lowercase();
        let mut map = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(key).or_insert(0) += 1;
    }
}

struct Handler {
    zone: Zone,
    counters: Arc<Counters>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(req_edns) = request.edns() {
            let mut edns = Edns::new();
            edns.set_max_payload(req_edns.max_payload().max(512));
            edns.set_version(0);
            builder.edns(edns);
        }
        let mut header = Header::response_from_request(request.header());
        header.set_authoritative(true);
        header.set_recursion_available(false);

        let query = match request.request_info() {
            Ok(info)
                if request.message_type() == MessageType::Query
                    && request.op_code() == OpCode::Query =>
            {
                info.query.clone()
            }
            Ok(_) => {
                header.set_response_code(ResponseCode::NotImp);
                return send(response_handle, builder.build_no_records(header)).await;
            }
            Err(_) => {
                header.set_response_code(ResponseCode::FormErr);
                return send(response_handle, builder.build_no_records(header)).await;
            }
        };
        self.counters.count(query.name(), request.protocol());
        let (answers, code, negative) = self.zone.answer(query.name(), query.query_type());
        header.set_response_code(code);
        let soa = negative.then_some(&self.zone.soa);
        let response = builder.build(
            header,
            answers,
            std::iter::empty::<&Record>(),
            soa,
            std::iter::empty::<&Record>(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(_) => servfail(),
        }
    }
}

async fn send<'a, R: ResponseHandler>(
    mut handle: R,
    response: hickory_server::authority::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
) -> ResponseInfo {
    handle
        .send_response(response)
        .await
        .unwrap_or_else(|_| servfail())
}

fn servfail() -> ResponseInfo {
    let mut header = Header::new();
    header.set_response_code(ResponseCode::ServFail);
    header.into()
}

/// An authoritative DNS server for a fixed record set, on UDP and TCP of one address.
///
/// It runs on its own thread with its own tokio current-thread runtime, and is stopped
/// (thread joined) by [`ZoneServer::stop`] or on drop. Its sockets are bound and listening
/// when [`ZoneServer::start`] returns, so it can be queried at once.
pub struct ZoneServer {
    addr: SocketAddr,
    counters: Arc<Counters>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ZoneServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZoneServer")
            .field("addr", &self.addr)
            .field("queries", &self.queries())
            .finish()
    }
}

impl ZoneServer {
    /// Starts serving `records` on UDP and TCP at `bind` (port 0: a port free for both is
    /// picked; see [`ZoneServer::addr`]). Meant for loopback addresses.
    ///
    /// Errors: a record name that is not a valid DNS name (`InvalidInput`), or the socket,
    /// runtime or thread could not be set up.
    pub fn start(bind: SocketAddr, records: Vec<ZoneRecord>) -> io::Result<ZoneServer> {
        let zone = Zone::new(&records)?;
        let (udp, tcp) = bind_pair(bind)?;
        let addr = udp.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let counters = Arc::new(Counters::default());
        let mut server = ServerFuture::new(Handler {
            zone,
            counters: Arc::clone(&counters),
        });
        let registered = {
            let _guard = runtime.enter();
            server
                .register_socket_std(udp)
                .and_then(|()| server.register_listener_std(tcp, TCP_IDLE))
        };
        if let Err(e) = registered {
            drop(server);
            runtime.shutdown_background();
            return Err(e);
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("zone-server-{addr}"))
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        _ = stopped => {}
                        _ = server.block_until_done() => {}
                    }
                    let _ = server.shutdown_gracefully().await;
                });
            })?;
        Ok(ZoneServer {
            addr,
            counters,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address it serves on (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many queries it has answered, over both transports.
    pub fn queries(&self) -> u64 {
        self.counters.total.load(Ordering::SeqCst)
    }

    /// How many of those came over TCP.
    pub fn tcp_queries(&self) -> u64 {
        self.counters.tcp.load(Ordering::SeqCst)
    }

    /// How many queries it has answered for `name` (any type; case-insensitive; trailing
    /// dot optional).
    pub fn queries_for(&self, name: &str) -> u64 {
        let Ok(name) = parse_name(name) else {
            return 0;
        };
        let key = name.to_ascii().to_ascii_lowercase();
        let map = self
            .counters
            .by_name
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.get(&key).copied().unwrap_or(0)
    }

    /// Stops the server and joins its thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ZoneServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A UDP socket and a TCP listener on the same address (retrying port-0 picks whose TCP
/// port is taken).
fn bind_pair(bind: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..BIND_TRIES {
        let udp = UdpSocket::bind(bind)?;
        match TcpListener::bind(udp.local_addr()?) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if bind.port() == 0 && e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)))
}

/// The zone as an RFC 1035 §5 master file: `$ORIGIN .`, the SOA and NS at the root (as
/// [`ZoneServer`] serves them), then `records` in order, names made absolute.
pub fn zone_file(records: &[ZoneRecord]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "; fedrouter test zone: authoritative for the root, names not listed are NXDOMAIN"
    );
    let _ = writeln!(out, "$ORIGIN .");
    let _ = writeln!(out, "$TTL {NEGATIVE_TTL}");
    let _ = writeln!(
        out,
        ".\t{NEGATIVE_TTL}\tIN\tSOA\t{MNAME} {RNAME} 1 3600 600 86400 {NEGATIVE_TTL}"
    );
    let _ = writeln!(out, ".\t{NEGATIVE_TTL}\tIN\tNS\t{MNAME}");
    for r in records {
        let _ = match r {
            ZoneRecord::Srv {
                name,
                ttl,
                priority,
                weight,
                port,
                target,
            } => writeln!(
                out,
                "{}\t{ttl}\tIN\tSRV\t{priority} {weight} {port} {}",
                absolute_text(name),
                absolute_text(target)
            ),
            ZoneRecord::A { name, ttl, addr } => {
                writeln!(out, "{}\t{ttl}\tIN\tA\t{addr}", absolute_text(name))
            }
            ZoneRecord::Aaaa { name, ttl, addr } => {
                writeln!(out, "{}\t{ttl}\tIN\tAAAA\t{addr}", absolute_text(name))
            }
        };
    }
    out
}

/// The records as dnsmasq options: `--srv-host=NAME,TARGET,PORT,PRIORITY,WEIGHT` (a `.`
/// target becomes `--srv-host=NAME`, dnsmasq's "service not available"; dnsmasq has no
/// per-SRV TTL) and `--host-record=NAME,ADDR,TTL`. The caller adds `--port`,
/// `--listen-address`, `--no-resolv` and the like.
pub fn dnsmasq_args(records: &[ZoneRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| match r {
            ZoneRecord::Srv {
                name,
                priority,
                weight,
                port,
                target,
                ..
            } => {
                let target = relative_text(target);
                if target.is_empty() {
                    format!("--srv-host={}", relative_text(name))
                } else {
                    format!(
                        "--srv-host={},{target},{port},{priority},{weight}",
                        relative_text(name)
                    )
                }
            }
            ZoneRecord::A { name, ttl, addr } => {
                format!("--host-record={},{addr},{ttl}", relative_text(name))
            }
            ZoneRecord::Aaaa { name, ttl, addr } => {
                format!("--host-record={},{addr},{ttl}", relative_text(name))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> Vec<ZoneRecord> {
        vec![
            ZoneRecord::Srv {
                name: "_xmpp-server._tcp.a.test".into(),
                ttl: 300,
                priority: 10,
                weight: 60,
                port: 5269,
                target: "xmpp1.a.test".into(),
            },
            ZoneRecord::Srv {
                name: "_xmpp-server._tcp.none.test.".into(),
                ttl: 300,
                priority: 0,
                weight: 0,
                port: 0,
                target: ".".into(),
            },
            ZoneRecord::A {
                name: "xmpp1.a.test".into(),
                ttl: 120,
                addr: Ipv4Addr::LOCALHOST,
            },
            ZoneRecord::Aaaa {
                name: "xmpp1.a.test.".into(),
                ttl: 120,
                addr: Ipv6Addr::LOCALHOST,
            },
        ]
    }

    #[test]
    fn zone_file_is_an_absolute_master_file() {
        let text = zone_file(&records());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            &lines[1..],
            &[
                "$ORIGIN .",
                "$TTL 60",
                ".\t60\tIN\tSOA\tlocalhost. hostmaster.localhost. 1 3600 600 86400 60",
                ".\t60\tIN\tNS\tlocalhost.",
                "_xmpp-server._tcp.a.test.\t300\tIN\tSRV\t10 60 5269 xmpp1.a.test.",
                "_xmpp-server._tcp.none.test.\t300\tIN\tSRV\t0 0 0 .",
                "xmpp1.a.test.\t120\tIN\tA\t127.0.0.1",
                "xmpp1.a.test.\t120\tIN\tAAAA\t::1",
            ]
        );
        assert!(lines[0].starts_with(';'));
    }

    #[test]
    fn dnsmasq_lines() {
        assert_eq!(
            dnsmasq_args(&records()),
            vec![
                "--srv-host=_xmpp-server._tcp.a.test,xmpp1.a.test,5269,10,60",
                "--srv-host=_xmpp-server._tcp.none.test",
                "--host-record=xmpp1.a.test,127.0.0.1,120",
                "--host-record=xmpp1.a.test,::1,120",
            ]
        );
    }

    #[test]
    fn zone_answers_records_nodata_and_nxdomain() {
        let zone = Zone::new(&records()).unwrap();
        let name = |s: &str| LowerName::from(parse_name(s).unwrap());
        let (a, code, neg) = zone.answer(&name("XMPP1.a.test"), RecordType::A);
        assert_eq!((a.len(), code, neg), (1, ResponseCode::NoError, false));
        let (a, code, neg) = zone.answer(&name("xmpp1.a.test"), RecordType::SRV);
        assert_eq!((a.len(), code, neg), (0, ResponseCode::NoError, true));
        // Empty non-terminals exist (RFC 8020): NODATA, not NXDOMAIN.
        let (a, code, _) = zone.answer(&name("_tcp.a.test"), RecordType::SRV);
        assert_eq!((a.len(), code), (0, ResponseCode::NoError));
        let (_, code, neg) = zone.answer(&name("nowhere.test"), RecordType::A);
        assert_eq!((code, neg), (ResponseCode::NXDomain, true));
        let (a, _, _) = zone.answer(&name("."), RecordType::SOA);
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn bad_names_are_rejected() {
        let bad = vec![ZoneRecord::A {
            name: "a..test".into(),
            ttl: 1,
            addr: Ipv4Addr::LOCALHOST,
        }];
        let err = ZoneServer::start("127.0.0.1:0".parse().unwrap(), bad).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
