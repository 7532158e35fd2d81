//! The S2S resolver: RFC 6120 §3.2.1 SRV look-ups (with XEP-0368 `_xmpps-server`) and
//! A/AAAA look-ups, cached by TTL, over hickory-resolver.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, NameServerConfigGroup, ResolveHosts, ResolverConfig,
    ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{Name, ResolveError, TokioResolver};
use rand::Rng;
use tokio::sync::Semaphore;

use crate::srv::{self, Resolution, SrvRecord, Target};

/// How many times one query is sent before the look-up gives up: the first try plus one
/// retry. A look-up against one silent name server so fails after about
/// `ATTEMPTS × DnsConfig::timeout`.
pub const ATTEMPTS: usize = 2;

/// Resolver configuration (one per deployment; each shard builds its own
/// [`S2sResolver`] from it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Name servers to ask, each over UDP and (after a truncated answer) TCP on the given
    /// address and port. Empty: the system's, from `/etc/resolv.conf` (its search domains
    /// and `ndots` are ignored: every name is looked up as absolute).
    pub nameservers: Vec<SocketAddr>,
    /// Time allowed for one query to one name server; see [`ATTEMPTS`]. Must not be zero.
    pub timeout: Duration,
    /// Remote domains (lowercase, no trailing dot) whose S2S target is fixed by
    /// configuration: [`S2sResolver::resolve_srv`] answers with it without asking DNS.
    pub static_overrides: HashMap<String, StaticTarget>,
    /// Number of answers (positive or negative, per name and record type) the cache
    /// holds.
    pub cache_size: usize,
    /// Queries this resolver has sent and not yet had answered, at most (not zero; see
    /// [`S2sResolver::queries_waiting`]). Further look-ups wait for a turn, first come
    /// first served, and their [`DnsConfig::timeout`] starts when they are sent: a burst
    /// of thousands of look-ups would otherwise overflow the name server's receive queue
    /// (measured: 10,000 peers connecting at once lost ~50 look-ups to timeouts against
    /// one single-threaded UDP server), and a lost query costs `timeout` before it is sent
    /// again.
    pub max_in_flight: usize,
}

impl Default for DnsConfig {
    /// System name servers, 2 s per query, no overrides, 1024 cached answers, 64 queries
    /// in flight.
    fn default() -> Self {
        DnsConfig {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(2),
            static_overrides: HashMap::new(),
            cache_size: 1024,
            max_in_flight: 64,
        }
    }
}

/// A configured S2S target for a remote domain, used instead of its SRV records.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StaticTarget {
    /// An IP literal (`192.0.2.1`, `::1`) or a host name, resolved by
    /// [`S2sResolver::resolve_host`].
    pub host: String,
    /// TCP port (STARTTLS, not direct TLS).
    pub port: u16,
}

/// Why a look-up gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// The name does not exist (NXDOMAIN) or has no record of the asked type (NODATA).
    #[error("no DNS records for {name}")]
    NoRecords {
        /// The name looked up, as given.
        name: String,
    },
    /// No name server answered in time (`ATTEMPTS × timeout`).
    #[error("DNS look-up of {name} timed out")]
    Timeout {
        /// The name looked up, as given.
        name: String,
    },
    /// A name server failed (SERVFAIL, REFUSED, ...), the name is not a valid domain name,
    /// or the connection to the name server failed.
    #[error("DNS look-up of {name} failed: {message}")]
    Failed {
        /// The name looked up, as given.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// The resolver could not be built (bad [`DnsConfig`], unreadable `/etc/resolv.conf`).
    #[error("DNS resolver configuration: {message}")]
    Config {
        /// What is wrong.
        message: String,
    },
}

impl DnsError {
    /// Did the look-up time out? (Callers bounce queued stanzas with
    /// `remote-server-timeout` then, RFC 6120 §8.3.3.)
    pub fn is_timeout(&self) -> bool {
        matches!(self, DnsError::Timeout { .. })
    }
}

/// A caching stub resolver for S2S connection set-up (RFC 6120 §3.2).
///
/// One per shard. It may be built outside or inside a tokio runtime; its futures must be
/// polled inside one (a current-thread runtime is enough, such as tokio-uring's), and always
/// the same one, since name-server connections are tasks spawned on the runtime that first
/// needs them.
///
/// Answers are cached by TTL, positive ones and negative ones alike (NXDOMAIN and NODATA
/// for the SOA's negative TTL, RFC 2308 §5); failures and timeouts are not cached.
pub struct S2sResolver {
    inner: TokioResolver,
    overrides: HashMap<String, StaticTarget>,
    /// One permit per query in flight ([`DnsConfig::max_in_flight`]); fair (FIFO).
    in_flight: Semaphore,
    /// Queries waiting for a permit.
    waiting: AtomicUsize,
}

impl std::fmt::Debug for S2sResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S2sResolver")
            .field("nameservers", &self.inner.config().name_servers())
            .field("overrides", &self.overrides)
            .field("in_flight", &self.in_flight)
            .field("waiting", &self.queries_waiting())
            .finish_non_exhaustive()
    }
}

impl S2sResolver {
    /// Builds a resolver from `cfg`. Reads `/etc/resolv.conf` when `cfg.nameservers` is
    /// empty. Errors: [`DnsError::Config`] for a zero timeout or `max_in_flight`, or an
    /// unreadable or empty system configuration.
    pub fn new(cfg: &DnsConfig) -> Result<Self, DnsError> {
        if cfg.timeout.is_zero() {
            return Err(DnsError::Config {
                message: "timeout must be positive".into(),
            });
        }
        if cfg.max_in_flight == 0 || cfg.max_in_flight > Semaphore::MAX_PERMITS {
            return Err(DnsError::Config {
                message: format!(
                    "max_in_flight must be 1 to {}, not {}",
                    Semaphore::MAX_PERMITS,
                    cfg.max_in_flight
                ),
            });
        }
        let mut group = NameServerConfigGroup::new();
        if cfg.nameservers.is_empty() {
            let (system, _) = hickory_resolver::system_conf::read_system_conf().map_err(|e| {
                DnsError::Config {
                    message: format!("reading the system resolver configuration: {e}"),
                }
            })?;
            for ns in system.name_servers() {
                group.push(ns.clone());
            }
        } else {
            for &addr in &cfg.nameservers {
                group.push(NameServerConfig::new(addr, Protocol::Udp));
                group.push(NameServerConfig::new(addr, Protocol::Tcp));
            }
        }
        if group.is_empty() {
            return Err(DnsError::Config {
                message: "no name servers configured".into(),
            });
        }
        // No domain, no search list: names are absolute (a trailing dot is appended).
        let config = ResolverConfig::from_parts(None, Vec::new(), group);
        let mut opts = ResolverOpts::default();
        opts.timeout = cfg.timeout;
        opts.attempts = ATTEMPTS - 1; // hickory counts retries
        opts.cache_size = cfg.cache_size;
        opts.ndots = 0;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.edns0 = true;
        opts.preserve_intermediates = false;
        let mut builder =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default());
        *builder.options_mut() = opts;
        let overrides = cfg
            .static_overrides
            .iter()
            .map(|(d, t)| (normalize(d), t.clone()))
            .collect();
        Ok(S2sResolver {
            inner: builder.build(),
            overrides,
            in_flight: Semaphore::new(cfg.max_in_flight),
            waiting: AtomicUsize::new(0),
        })
    }

    /// Look-ups (queries) waiting for their turn because [`DnsConfig::max_in_flight`]
    /// queries are in flight (the `queue_depth{queue="dns"}` gauge).
    pub fn queries_waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// One query (`name`, `rtype`) through hickory (its cache first), sent once fewer
    /// than [`DnsConfig::max_in_flight`] are in flight.
    async fn lookup(
        &self,
        name: Name,
        rtype: RecordType,
    ) -> Result<hickory_resolver::lookup::Lookup, ResolveError> {
        let _permit = match self.in_flight.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                self.waiting.fetch_add(1, Ordering::Relaxed);
                // Decrements when the wait ends, also when the look-up is dropped.
                let _waiting = Waiting(&self.waiting);
                self.in_flight
                    .acquire()
                    .await
                    .expect("the semaphore is never closed")
            }
        };
        self.inner.lookup(name, rtype).await
    }

    /// The S2S targets of `domain` (RFC 6120 §3.2.1, XEP-0368 §3).
    ///
    /// A static override for `domain` (case-insensitive, trailing dot ignored) gives
    /// `Targets([host:port, direct_tls = false])` without DNS. Otherwise
    /// `_xmpps-server._tcp.<domain>` and `_xmpp-server._tcp.<domain>` are looked up
    /// concurrently and handed to [`srv::resolve_targets`]: an NXDOMAIN or NODATA answer
    /// counts as "no records" there (so no SRV at all gives [`Resolution::Fallback`], a
    /// single `.` target [`Resolution::NoService`]).
    ///
    /// Errors: when neither look-up found records and at least one failed (timeout,
    /// SERVFAIL, ...), that failure ([`DnsError::Timeout`] preferred); the `name` in it is
    /// `domain`. When one look-up found records and the other failed, the records found are
    /// used.
    pub async fn resolve_srv(
        &self,
        domain: &str,
        rng: &mut impl Rng,
    ) -> Result<Resolution, DnsError> {
        let d = normalize(domain);
        if let Some(t) = self.overrides.get(&d) {
            return Ok(Resolution::Targets(vec![Target {
                host: t.host.clone(),
                port: t.port,
                direct_tls: false,
            }]));
        }
        let (xmpps, xmpp) = tokio::join!(
            self.lookup_srv(domain, "_xmpps-server._tcp.", &d),
            self.lookup_srv(domain, "_xmpp-server._tcp.", &d)
        );
        let found = |r: &Result<Option<Vec<SrvRecord>>, DnsError>| matches!(r, Ok(Some(v)) if !v.is_empty());
        let (xmpps, xmpp) = if found(&xmpps) || found(&xmpp) {
            (xmpps.unwrap_or(None), xmpp.unwrap_or(None))
        } else {
            match (xmpps, xmpp) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(e), Ok(_)) | (Ok(_), Err(e)) => return Err(e),
                (Err(a), Err(b)) => return Err(pick(a, b)),
            }
        };
        Ok(srv::resolve_targets(xmpps.as_deref(), xmpp.as_deref(), rng))
    }

    /// The addresses of `host`: its A records, then its AAAA records (both looked up
    /// concurrently). An IP literal (`192.0.2.1`, `::1`, `[::1]`) is returned as is,
    /// without DNS.
    ///
    /// Errors: [`DnsError::NoRecords`] when neither type exists; otherwise, when neither
    /// look-up found addresses, its failure ([`DnsError::Timeout`] preferred). When one type
    /// was found and the other failed, the addresses found are returned.
    pub async fn resolve_host(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let name = absolute(host, &normalize(host))?;
        let (a, aaaa) = tokio::join!(
            self.lookup(name.clone(), RecordType::A),
            self.lookup(name, RecordType::AAAA)
        );
        let addrs = |r: Result<hickory_resolver::lookup::Lookup, ResolveError>| {
            r.map(|l| {
                l.iter()
                    .filter_map(|d| match d {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
            })
            .map_err(|e| classify(host, &e))
        };
        match (addrs(a), addrs(aaaa)) {
            (Ok(mut v4), Ok(v6)) => {
                v4.extend(v6);
                if v4.is_empty() {
                    Err(DnsError::NoRecords { name: host.into() })
                } else {
                    Ok(v4)
                }
            }
            (Ok(v), Err(e)) | (Err(e), Ok(v)) => {
                if v.is_empty() {
                    Err(e)
                } else {
                    Ok(v)
                }
            }
            (Err(a), Err(b)) => Err(pick(a, b)),
        }
    }

    /// One SRV look-up: `Ok(None)` for NXDOMAIN/NODATA.
    async fn lookup_srv(
        &self,
        domain: &str,
        service: &str,
        normalized: &str,
    ) -> Result<Option<Vec<SrvRecord>>, DnsError> {
        let name = absolute(domain, &format!("{service}{normalized}"))?;
        match self.lookup(name, RecordType::SRV).await {
            Ok(lookup) => Ok(Some(
                lookup
                    .iter()
                    .filter_map(|d| match d {
                        RData::SRV(s) => Some(SrvRecord {
                            priority: s.priority(),
                            weight: s.weight(),
                            port: s.port(),
                            target: s.target().to_ascii(),
                        }),
                        _ => None,
                    })
                    .collect(),
            )),
            Err(e) => match classify(domain, &e) {
                DnsError::NoRecords { .. } => Ok(None),
                other => Err(other),
            },
        }
    }
}

/// Counts a look-up waiting for its turn while it lives ([`S2sResolver::queries_waiting`]).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Lowercase, no trailing dot.
fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_lowercase()
}

/// The absolute DNS name for `normalized` (U-labels become A-labels, IDNA2008/UTS 46).
fn absolute(given: &str, normalized: &str) -> Result<Name, DnsError> {
    let invalid = |e: &dyn std::fmt::Display| DnsError::Failed {
        name: given.into(),
        message: format!("not a valid domain name: {e}"),
    };
    if normalized.is_empty() {
        return Err(invalid(&"empty"));
    }
    let fqdn = format!("{normalized}.");
    let name = if fqdn.is_ascii() {
        Name::from_ascii(&fqdn)
    } else {
        Name::from_utf8(&fqdn)
    };
    name.map_err(|e| invalid(&e))
}

/// Maps a hickory error to ours: NXDOMAIN/NODATA are [`DnsError::NoRecords`], other
/// response codes are failures.
fn classify(name: &str, e: &ResolveError) -> DnsError {
    let failed = |message: String| DnsError::Failed {
        name: name.into(),
        message,
    };
    let Some(proto) = e.proto() else {
        return failed(e.to_string());
    };
    match proto.kind() {
        ProtoErrorKind::NoRecordsFound { response_code, .. } => match *response_code {
            ResponseCode::NXDomain | ResponseCode::NoError => {
                DnsError::NoRecords { name: name.into() }
            }
            code => failed(format!("name server answered {code}")),
        },
        ProtoErrorKind::Timeout => DnsError::Timeout { name: name.into() },
        ProtoErrorKind::Io(io) if io.kind() == io::ErrorKind::TimedOut => {
            DnsError::Timeout { name: name.into() }
        }
        _ => failed(e.to_string()),
    }
}

/// Of two failures, the more telling: a timeout, then a failure, then "no records".
fn pick(a: DnsError, b: DnsError) -> DnsError {
    let rank = |e: &DnsError| match e {
        DnsError::Timeout { .. } => 0,
        DnsError::NoRecords { .. } => 2,
        _ => 1,
    };
    if rank(&b) < rank(&a) {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_absolute_and_idna() {
        assert_eq!(
            absolute("A.Test.", &normalize("A.Test."))
                .unwrap()
                .to_ascii(),
            "a.test."
        );
        assert_eq!(
            absolute("x", "_xmpp-server._tcp.a.test")
                .unwrap()
                .to_ascii(),
            "_xmpp-server._tcp.a.test."
        );
        assert_eq!(
            absolute("bücher.test", "bücher.test").unwrap().to_ascii(),
            "xn--bcher-kva.test."
        );
        assert!(matches!(absolute("", ""), Err(DnsError::Failed { .. })));
    }

    #[test]
    fn pick_prefers_timeout_then_failure() {
        let t = DnsError::Timeout { name: "a".into() };
        let n = DnsError::NoRecords { name: "a".into() };
        let f = DnsError::Failed {
            name: "a".into(),
            message: "x".into(),
        };
        assert_eq!(pick(n.clone(), t.clone()), t);
        assert_eq!(pick(f.clone(), n.clone()), f);
        assert_eq!(pick(n.clone(), f.clone()), f);
        assert!(t.is_timeout() && !n.is_timeout());
    }

    #[test]
    fn zero_timeout_is_rejected() {
        let cfg = DnsConfig {
            nameservers: vec!["127.0.0.1:53".parse().unwrap()],
            timeout: Duration::ZERO,
            ..DnsConfig::default()
        };
        assert!(matches!(
            S2sResolver::new(&cfg),
            Err(DnsError::Config { .. })
        ));
    }
}
