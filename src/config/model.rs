//! The validated configuration: [`Config`], one struct per TOML table, and their defaults
//! (the values in the [module documentation](super)).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::stream::policy::FederationPolicy;
use crate::xml::Limits;

use super::{AuthSection, LimitsSection, SecretString, MAX_SHARDS};
#[cfg(doc)]
use super::{
    MAX_DNS_CACHE, MAX_DNS_IN_FLIGHT, MAX_INBOX_BATCH, MAX_INBOX_CAPACITY, MAX_QUEUE_PER_DOMAIN,
    MAX_STANZA_SIZE, MIN_SECRET_BYTES, MIN_STANZA_SIZE,
};

/// The whole configuration (see the [module documentation](super) for the file format).
///
/// Built by [`Config::from_toml_str`] or [`Config::load`] (which validate), or from
/// [`Config::default`] and edited (then call [`Config::validate`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Local (hosted) domains, normalised as RFC 7622 §3.2 domainparts (lowercase, Unicode
    /// form, no trailing dot), no duplicates, no IP addresses. Key `domains`; default
    /// `["localhost"]`.
    pub domains: Vec<String>,
    /// Shard threads, 1 to [`MAX_SHARDS`]. Key `shards`; default: the number of available
    /// cores ([`std::thread::available_parallelism`]).
    pub shards: usize,
    /// Where generated certificates and the dialback secret are kept. Key `data_dir`;
    /// default `fedrouter-data` (relative to the working directory).
    pub data_dir: PathBuf,
    /// Listening sockets (`[listen]`).
    pub listen: Listen,
    /// Certificates and trust anchors (`[tls]`).
    pub tls: TlsConfig,
    /// Name resolution (`[dns]`).
    pub dns: DnsSection,
    /// Server-to-server streams (`[s2s]`).
    pub s2s: S2sSection,
    /// Cross-shard inboxes (`[inbox]`).
    pub inbox: InboxSection,
    /// Client-to-server streams and rosters (`[c2s]`).
    pub c2s: C2sSection,
    /// The user and roster store (`[store]`).
    pub store: StoreSection,
    /// How clients' passwords are checked (`[auth]`): the store, or an LDAP directory.
    pub auth: AuthSection,
    /// The metrics endpoint (`[metrics]`).
    pub metrics: MetricsSection,
    /// Graceful shutdown (`[shutdown]`).
    pub shutdown: ShutdownSection,
    /// Logging (`[log]`).
    pub log: LogSection,
    /// Per-remote-domain policy (`[federation]`); `domains` keys normalised like
    /// [`Config::domains`].
    pub federation: FederationPolicy,
    /// Flood limits (`[limits]`).
    pub limits: LimitsSection,
    /// The cluster this node belongs to (`[cluster]`); `None`: the node runs alone.
    pub cluster: Option<super::ClusterSection>,
}

/// Listening sockets (`[listen]`). An empty list disables that listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// S2S with STARTTLS (RFC 6120), key `listen.s2s`; default `["127.0.0.1:5269"]`.
    pub s2s: Vec<SocketAddr>,
    /// S2S with direct TLS (XEP-0368), key `listen.s2s_tls`; default `["127.0.0.1:5270"]`.
    pub s2s_tls: Vec<SocketAddr>,
    /// Client-to-server (RFC 6120), key `listen.c2s`; default `["127.0.0.1:5222"]`.
    pub c2s: Vec<SocketAddr>,
    /// The HTTP admin endpoint (metrics, status, ping), key `listen.admin`; `""` in the file
    /// is `None` (disabled); default `127.0.0.1:9269`.
    pub admin: Option<SocketAddr>,
}

/// Certificates and trust anchors (`[tls]`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM files of CA certificates trusted to verify peers' certificates (RFC 6120
    /// §13.7.2), key `tls.trust`; default none.
    pub trust: Vec<PathBuf>,
    /// Whether the system's root certificates are trusted too, key `tls.system_roots`;
    /// default `false`. [`Config::materialize`] does not load them: the runtime does.
    pub system_roots: bool,
    /// Configured certificates, at most one per local domain, key `[[tls.certificate]]`.
    /// A local domain without one gets a self-signed certificate (see
    /// [`Config::materialize`]).
    #[serde(rename = "certificate")]
    pub certificates: Vec<CertificateEntry>,
}

/// One `[[tls.certificate]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateEntry {
    /// The local domain it is for (one of [`Config::domains`]); normalised like them.
    pub domain: String,
    /// PEM certificate chain, end-entity first (`fullchain.pem`).
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1; `privkey.pem`).
    pub key: PathBuf,
}

/// Name resolution (`[dns]`): SRV (RFC 2782, RFC 6120 §3.2.1) and A/AAAA look-ups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSection {
    /// Nameservers to ask, key `dns.nameservers` (`"ip:port"`); empty (the default) uses
    /// the system's `/etc/resolv.conf`.
    pub nameservers: Vec<SocketAddr>,
    /// Time allowed for one look-up, key `dns.timeout`; default 2 s; not zero.
    pub timeout: Duration,
    /// Answers cached, key `dns.cache_size`; default 4096; 1 to [`MAX_DNS_CACHE`].
    pub cache_size: usize,
    /// DNS queries one shard has sent and not yet had answered, at most, key
    /// `dns.max_in_flight`; default 64; 1 to [`MAX_DNS_IN_FLIGHT`]. Further look-ups wait
    /// for their turn (their `dns.timeout` starts when they are sent), so a burst of new
    /// remote domains (thousands of peers connecting at once) does not overflow the name
    /// server's receive queue, which would drop queries until they time out.
    pub max_in_flight: usize,
    /// Static overrides, key `[dns.static]`: remote domain (normalised like
    /// [`Config::domains`]) → where to connect, instead of SRV and A/AAAA look-ups.
    pub static_targets: HashMap<String, StaticTarget>,
}

/// Where a `[dns.static]` entry sends connections for a domain: `"host:port"` in the file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StaticTarget {
    /// A host name (resolved with A/AAAA) or an IP address (an IPv6 one without brackets).
    pub host: String,
    /// TCP port, not 0.
    pub port: u16,
}

impl StaticTarget {
    /// The socket address when `host` is an IP address; `None` for a host name.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }
}

impl fmt::Display for StaticTarget {
    /// `host:port`, with an IPv6 host in brackets (`[::1]:5269`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.parse::<Ipv6Addr>().is_ok() {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Secret bytes from the configuration (`s2s.dialback_secret`, written in hexadecimal).
/// [`Debug`](fmt::Debug) shows only the length.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Wraps raw bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        SecretBytes(bytes.into())
    }

    /// Decodes hexadecimal text (either case, surrounding whitespace ignored).
    ///
    /// Errors: the `hex` crate's, e.g. an odd number of digits or a non-hex character.
    pub fn from_hex(text: &str) -> Result<Self, hex::FromHexError> {
        hex::decode(text.trim()).map(SecretBytes)
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<{} bytes>)", self.0.len())
    }
}

/// Server-to-server streams (`[s2s]`, RFC 6120, XEP-0220).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S2sSection {
    /// TCP connect time allowed per target, key `s2s.connect_timeout`; default 5 s; not zero.
    pub connect_timeout: Duration,
    /// Time from connect to an authenticated stream (TLS, SASL or dialback), key
    /// `s2s.negotiation_timeout`; default 30 s; not zero.
    pub negotiation_timeout: Duration,
    /// Time an inbound connection has to send its stream header, and the peer of an
    /// outbound stream to answer ours with its own, key `s2s.stream_header_timeout`;
    /// default 10 s; not zero (the S2S machine's `Timeouts::stream_header`).
    pub stream_header_timeout: Duration,
    /// A stream with no traffic for this long is closed, key `s2s.idle_timeout`; `"0s"` in
    /// the file is `None` (never); default 10 min.
    pub idle_timeout: Option<Duration>,
    /// Whitespace keepalive interval on idle streams (RFC 6120 §4.6.1), key `s2s.keepalive`;
    /// default 60 s; not zero.
    pub keepalive: Duration,
    /// Time allowed for a dialback verification (XEP-0220 §2.3), key `s2s.verify_timeout`;
    /// default 30 s; not zero.
    pub verify_timeout: Duration,
    /// Stanzas waiting per remote domain while it is resolved and connected, key
    /// `s2s.queue_per_domain`; default 1000; 1 to [`MAX_QUEUE_PER_DOMAIN`].
    pub queue_per_domain: usize,
    /// Bytes buffered in one outbound stream (written to it, not yet accepted by the
    /// socket) before further stanzas wait in the domain's queue instead, key
    /// `s2s.send_queue_bytes`; default 1 MiB; at least `max_stanza_size`.
    pub send_queue_bytes: usize,
    /// A stream with bytes to send whose socket accepts none for this long is closed, key
    /// `s2s.write_stall_timeout`; default 30 s; not zero. What waited for it is bounced
    /// with `remote-server-timeout` (RFC 6120 §8.3.3.16) and the domain backs off
    /// (DESIGN.md "Failure semantics": a peer that stops reading costs only its own queue,
    /// for a bounded time).
    pub write_stall_timeout: Duration,
    /// Connections per shard not yet authenticated, key
    /// `s2s.max_unauthenticated_per_shard`; default 1024; at least 1.
    pub max_unauthenticated_per_shard: usize,
    /// First reconnect delay after a failure, key `s2s.backoff_initial`; default 1 s; not
    /// zero.
    pub backoff_initial: Duration,
    /// Longest reconnect delay, key `s2s.backoff_max`; default 5 min; at least
    /// `backoff_initial`.
    pub backoff_max: Duration,
    /// The XEP-0185 dialback secret, key `s2s.dialback_secret` (hexadecimal, at least
    /// [`MIN_SECRET_BYTES`] bytes). `None` (the default): [`Config::materialize`] generates
    /// one into `<data_dir>/dialback.secret` and reuses it. Instances serving the same
    /// domains must share it (XEP-0185 §2 note 3).
    pub dialback_secret: Option<SecretBytes>,
    /// Largest stanza accepted, in bytes, key `s2s.max_stanza_size`; default 262144;
    /// [`MIN_STANZA_SIZE`] to [`MAX_STANZA_SIZE`]. Becomes [`Limits::max_element_size`].
    pub max_stanza_size: usize,
    /// XEP-0198 stream management on S2S streams (key `s2s.stream_management`, default
    /// true): offered on inbound streams, enabled on outbound streams whose peer offers
    /// it; what the peer never acknowledged is sent again on the next stream.
    pub stream_management: bool,
    /// Ask for an acknowledgement after this many stanzas (key `s2s.sm_ack_every`,
    /// default 20; 1 to 10000). The defaults (20 stanzas or 5 s) cost no CPU per stanza
    /// measurable against stream management off; 10 or 1 s cost 12-16 % more
    /// (benches/README.md, "S2S stream management").
    pub sm_ack_every: u32,
    /// ... or once a stanza has waited this long unacknowledged (key `s2s.sm_ack_after`,
    /// default 5 s; more than 0).
    pub sm_ack_after: Duration,
}

impl S2sSection {
    /// The XML framer limits: the defaults with `max_element_size = max_stanza_size`.
    pub fn xml_limits(&self) -> Limits {
        Limits {
            max_element_size: self.max_stanza_size,
            ..Limits::default()
        }
    }
}

/// Cross-shard inboxes (`[inbox]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboxSection {
    /// Capacity of each shard-to-shard inbox, in batches, key `inbox.capacity`; default
    /// 1024; 1 to [`MAX_INBOX_CAPACITY`].
    pub capacity: usize,
    /// Most messages in one batch, key `inbox.batch`; default 256; 1 to [`MAX_INBOX_BATCH`].
    pub batch: usize,
}

/// Client-to-server streams (`[c2s]`, RFC 6120 §4–§7) and the rosters of local users
/// (RFC 6121 §2).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct C2sSection {
    /// Whether clients must negotiate STARTTLS before authenticating (RFC 6120 §5.3.1),
    /// key `c2s.tls_required`; default `true`. `PLAIN` is never offered without TLS.
    pub tls_required: bool,
    /// Time allowed for each negotiation step (header, TLS, SASL, bind), key
    /// `c2s.negotiation_timeout`; default 30 s; not zero.
    #[serde(with = "humantime_serde")]
    pub negotiation_timeout: Duration,
    /// Whitespace keepalive after this long without sending (RFC 6120 §4.6.1), key
    /// `c2s.keepalive`; default 60 s; not zero.
    #[serde(with = "humantime_serde")]
    pub keepalive: Duration,
    /// SASL failures that close the stream (RFC 6120 §6.4.5), key `c2s.max_auth_failures`;
    /// default 3; 1 to 6.
    pub max_auth_failures: u32,
    /// Hold after the first SASL failure, doubled after each further one, key
    /// `c2s.auth_failure_delay`; default 1 s.
    #[serde(with = "humantime_serde")]
    pub auth_failure_delay: Duration,
    /// Largest stanza a client may send, in bytes, key `c2s.max_stanza_size`; default
    /// 262144 (256 KiB, as Prosody's `c2s_stanza_size_limit` and ejabberd's example
    /// `max_stanza_size`); [`MIN_STANZA_SIZE`] to [`MAX_STANZA_SIZE`]. A client that sends
    /// a larger one gets the stream error `policy-violation` and its stream is closed
    /// (RFC 6120 §4.9.3.14). The limit reserves no memory: an idle session costs the same
    /// at 64 KiB and 256 KiB (`cargo bench -p loadgen --bench c2s_idle`).
    pub max_stanza_size: usize,
    /// Most items in one user's roster (RFC 6121 §2.3.3 "server-configured limit"), key
    /// `c2s.max_roster_items`; default 1000; 1 to 100000. A roster set or an outbound
    /// subscription that would add an item beyond it is refused with `not-allowed`
    /// (RFC 6120 §8.3.3.9); rows kept only for pending inbound requests
    /// are capped at twice the limit (further requests bounce `resource-constraint`).
    pub max_roster_items: usize,
    /// Most sessions (bound resources) per user, key `c2s.max_resources`; default 16; 1 to
    /// 1024. One more is refused with `resource-constraint` (RFC 6120 §7.6.2.1).
    pub max_resources: usize,
    /// Bytes buffered for one client session (written to its stream, not yet accepted by
    /// the socket) before messages and IQs for it are handled as for an unavailable
    /// resource (RFC 6121 §8.5) and presence for it is dropped, key
    /// `c2s.send_queue_bytes`; default 1 MiB; at least `max_stanza_size`.
    pub send_queue_bytes: usize,
    /// A client stream with bytes to send whose socket accepts none for this long is
    /// closed, key `c2s.write_stall_timeout`; default 30 s; not zero. The messages and IQs
    /// that waited for it are then handled as for an unavailable resource (RFC 6121 §8.5).
    #[serde(with = "humantime_serde")]
    pub write_stall_timeout: Duration,
    /// Items a PEP node keeps (XEP-0163, XEP-0060 `pubsub#max_items`) unless the
    /// publisher's publish options ask for another number, key `c2s.pep_max_items`;
    /// default 1; 1 to `c2s.pep_max_items_limit`.
    pub pep_max_items: usize,
    /// Most items a PEP node keeps whatever the publish options ask (`max` means this),
    /// key `c2s.pep_max_items_limit`; default 100; 1 to 10000.
    pub pep_max_items_limit: usize,
    /// Largest PEP item payload, in bytes as serialised, key `c2s.pep_max_item_bytes`;
    /// default 65536; 1 to [`MAX_STANZA_SIZE`] (the stanza carrying it is bounded by
    /// `c2s.max_stanza_size` anyway). A bigger one is refused with `not-acceptable`
    /// `<payload-too-big/>` (XEP-0060 §7.1.3.x).
    pub pep_max_item_bytes: usize,
    /// XEP-0198 stream management on client streams (key `c2s.stream_management`,
    /// default true): acknowledgements, and resumption of a session whose connection
    /// dropped; what a client never acknowledged goes to its other resources or is
    /// handled as for an unavailable user.
    pub stream_management: bool,
    /// Ask the client for an acknowledgement after this many stanzas (key
    /// `c2s.sm_ack_every`, default 5; 1 to 10000) ...
    pub sm_ack_every: u32,
    /// ... or once a stanza has waited this long (key `c2s.sm_ack_after`, default 30 s;
    /// more than 0).
    #[serde(with = "humantime_serde")]
    pub sm_ack_after: Duration,
    /// Longest a session whose connection dropped waits for the client to resume it (key
    /// `c2s.resume_timeout`, default 5 min; the client may ask for less; "0s": sessions
    /// are not resumable).
    #[serde(with = "humantime_serde")]
    pub resume_timeout: Duration,
    /// XEP-0077 in-band registration of new accounts by unauthenticated clients (key
    /// `c2s.allow_registration`, default false: accounts come from `fedrouter user add`,
    /// `fedrouter import` or the directory). Not with `[auth] backend = "ldap"`.
    pub allow_registration: bool,
    /// The SASL mechanisms offered to clients (key `c2s.sasl_mechanisms`, default
    /// `["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]`; PLAIN only over TLS). During a move
    /// from Prosody 0.12, whose users have SCRAM-SHA-1 credentials only, leave out
    /// SCRAM-SHA-256: clients pick the strongest mechanism offered.
    pub sasl_mechanisms: Vec<String>,
    /// Most offline messages stored per user (XEP-0160; RFC 6121 §8.5.2.2.1), key
    /// `c2s.max_offline_messages`; default 100; 0 to [`MAX_OFFLINE_MESSAGES`]. A `normal`
    /// or `chat` message to a user with no available resource is stored, durably, and
    /// delivered at the user's next available presence; past the limit it is refused
    /// with `service-unavailable`. `0` turns offline storage off (every such message is
    /// refused).
    pub max_offline_messages: u32,
    /// How long a shard remembers that a bare JID has no account, once the store said so
    /// (key `c2s.unknown_user_cache`, default 2 s; "0s" asks the store every time).
    /// Stanzas from others to that address are then refused without a store round trip
    /// (a stream of messages to unknown users would otherwise serialise on the store);
    /// an account created meanwhile is seen at most this late by them (RFC 6121 §8.5.1).
    #[serde(with = "humantime_serde")]
    pub unknown_user_cache: Duration,
}

/// The highest `c2s.max_offline_messages`.
pub const MAX_OFFLINE_MESSAGES: u32 = 100_000;

impl Default for C2sSection {
    fn default() -> Self {
        C2sSection {
            tls_required: true,
            negotiation_timeout: Duration::from_secs(30),
            keepalive: Duration::from_secs(60),
            max_auth_failures: 3,
            auth_failure_delay: Duration::from_secs(1),
            max_stanza_size: 256 * 1024,
            max_roster_items: 1000,
            max_resources: 16,
            send_queue_bytes: 1 << 20,
            write_stall_timeout: Duration::from_secs(30),
            pep_max_items: 1,
            pep_max_items_limit: 100,
            pep_max_item_bytes: 65536,
            stream_management: true,
            sm_ack_every: 5,
            sm_ack_after: Duration::from_secs(30),
            resume_timeout: Duration::from_secs(300),
            allow_registration: false,
            sasl_mechanisms: vec!["SCRAM-SHA-256".into(), "SCRAM-SHA-1".into(), "PLAIN".into()],
            max_offline_messages: 100,
            unknown_user_cache: Duration::from_secs(2),
        }
    }
}

/// The metrics endpoint (`[metrics]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetricsSection {
    /// Where `GET /metrics` (Prometheus text) and `GET /metrics/hgrm?name=…` are served,
    /// key `metrics.listen`. `None` (the default, or `""`): on the admin endpoint
    /// (`listen.admin`, 127.0.0.1:9269 by default) only; an address different from
    /// `listen.admin` gets its own HTTP listener (which serves the admin paths too).
    pub listen: Option<SocketAddr>,
}

/// How commits reach the disk (`store.durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum StoreDurability {
    /// `"crash"`: a commit survives the process being killed (`synchronous=NORMAL`).
    Crash,
    /// `"power-loss"`: every group commit is fsynced (`synchronous=FULL`). The default.
    #[default]
    PowerLoss,
}

/// Which database holds users and rosters (`store.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// `"sqlite"`: the embedded SQLite database at `<data_dir>/fedrouter.db`. The default.
    #[default]
    Sqlite,
    /// `"postgres"`: a PostgreSQL server at `store.url` ([`crate::store::postgres`]).
    Postgres,
}

/// The user and roster store (`[store]`): SQLite in WAL mode at
/// `<data_dir>/fedrouter.db` (the default), or a PostgreSQL server; written by one
/// storage thread with group commit.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// Key `store.backend`: `"sqlite"` (default) or `"postgres"`.
    pub backend: StoreBackend,
    /// Key `store.url`: the PostgreSQL server, a libpq-style connection string
    /// (`postgresql://user:password@host:port/dbname` or `host=… user=… dbname=…`).
    /// Required with `backend = "postgres"`, refused with `"sqlite"`. Its password is
    /// never shown (messages, logs and status redact it).
    pub url: Option<SecretString>,
    /// Key `store.connect_timeout`: longest wait for one PostgreSQL connection attempt;
    /// default 5s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Key `store.statement_timeout`: longest one PostgreSQL statement may run before the
    /// server cancels it (the request fails); default 30s.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// Key `store.reconnect_initial`: first back-off after a failed PostgreSQL reconnect,
    /// doubled after each further failure; default 100ms.
    #[serde(with = "humantime_serde")]
    pub reconnect_initial: Duration,
    /// Key `store.reconnect_max`: longest back-off between PostgreSQL reconnects; default
    /// 10s, at least `store.reconnect_initial`.
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Key `store.durability` (SQLite): `"power-loss"` (default) or `"crash"`. PostgreSQL
    /// commits are always durable (`synchronous_commit = on`).
    pub durability: StoreDurability,
    /// Most requests committed in one transaction, key `store.max_batch`; default 1024;
    /// 1 to 65536.
    pub max_batch: usize,
    /// Requests waiting for the storage thread before shards hold further ones back, key
    /// `store.queue`; default 65536; 1 to 1048576.
    pub queue: usize,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            backend: StoreBackend::Sqlite,
            url: None,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(10),
            durability: StoreDurability::PowerLoss,
            max_batch: 1024,
            queue: 65536,
        }
    }
}

/// Graceful shutdown (`[shutdown]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSection {
    /// Time allowed to flush queues and close streams, key `shutdown.drain_timeout`;
    /// default 5 s; zero closes at once.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

/// Logging (`[log]`), see [`crate::logging`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSection {
    /// A `tracing_subscriber::EnvFilter` directive (`info`, `fedrouter=debug,warn`), key
    /// `log.level`; default `info`. `RUST_LOG` replaces it; a bare level applies to
    /// fedrouter's own targets ([`crate::logging::directives`]).
    pub level: String,
    /// Key `log.format`: `"text"` (default) or `"json"`; the `--log-format` flag wins.
    pub format: LogFormat,
}

/// How log lines are written (`log.format`, `--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event, coloured only on a terminal (the default).
    #[default]
    Text,
    /// One JSON object per line, for log shippers: `timestamp`, `level`, `target`,
    /// `message`, the event's other fields, `span` (the current span's fields), `spans`.
    Json,
}

impl LogFormat {
    /// The format named `name` (`"text"`, `"json"`), as the file and the flag spell it.
    pub fn from_name(name: &str) -> Option<LogFormat> {
        <LogFormat as clap::ValueEnum>::from_str(name, false).ok()
    }

    /// The names [`LogFormat::from_name`] accepts.
    pub fn names() -> Vec<String> {
        <LogFormat as clap::ValueEnum>::value_variants()
            .iter()
            .filter_map(clap::ValueEnum::to_possible_value)
            .map(|p| p.get_name().to_owned())
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Defaults
// ---------------------------------------------------------------------------------------

fn default_shards() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
        .clamp(1, MAX_SHARDS)
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

impl Default for Config {
    /// Domain `localhost`, one shard per core, `fedrouter-data`, listeners on 127.0.0.1,
    /// and each section's defaults.
    fn default() -> Self {
        Config {
            domains: vec!["localhost".to_owned()],
            shards: default_shards(),
            data_dir: PathBuf::from("fedrouter-data"),
            listen: Listen::default(),
            tls: TlsConfig::default(),
            dns: DnsSection::default(),
            s2s: S2sSection::default(),
            inbox: InboxSection::default(),
            c2s: C2sSection::default(),
            store: StoreSection::default(),
            auth: AuthSection::default(),
            metrics: MetricsSection::default(),
            shutdown: ShutdownSection::default(),
            log: LogSection::default(),
            federation: FederationPolicy::default(),
            limits: LimitsSection::default(),
            cluster: None,
        }
    }
}

impl Default for Listen {
    /// S2S on 127.0.0.1:5269, direct TLS S2S on 127.0.0.1:5270, C2S on 127.0.0.1:5222,
    /// admin on 127.0.0.1:9269.
    fn default() -> Self {
        Listen {
            s2s: vec![loopback(5269)],
            s2s_tls: vec![loopback(5270)],
            c2s: vec![loopback(5222)],
            admin: Some(loopback(9269)),
        }
    }
}

impl Default for DnsSection {
    /// The system's nameservers, 2 s timeout, 4096 cached answers, 64 queries in flight
    /// per shard, no static entries.
    fn default() -> Self {
        DnsSection {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(2),
            cache_size: 4096,
            max_in_flight: 64,
            static_targets: HashMap::new(),
        }
    }
}

impl Default for S2sSection {
    /// The values in the [module documentation](super), no configured secret.
    fn default() -> Self {
        S2sSection {
            connect_timeout: Duration::from_secs(5),
            negotiation_timeout: Duration::from_secs(30),
            stream_header_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(600)),
            keepalive: Duration::from_secs(60),
            verify_timeout: Duration::from_secs(30),
            queue_per_domain: 1000,
            send_queue_bytes: 1 << 20,
            write_stall_timeout: Duration::from_secs(30),
            max_unauthenticated_per_shard: 1024,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            dialback_secret: None,
            max_stanza_size: 256 * 1024,
            stream_management: true,
            sm_ack_every: 20,
            sm_ack_after: Duration::from_secs(5),
        }
    }
}

impl Default for InboxSection {
    /// 1024 batches of at most 256 messages.
    fn default() -> Self {
        InboxSection {
            capacity: 1024,
            batch: 256,
        }
    }
}

impl Default for ShutdownSection {
    /// 5 s to drain.
    fn default() -> Self {
        ShutdownSection {
            drain_timeout: Duration::from_secs(5),
        }
    }
}

impl Default for LogSection {
    /// `info`, text.
    fn default() -> Self {
        LogSection {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_limits_follow_max_stanza_size() {
        let s = S2sSection {
            max_stanza_size: 65536,
            ..S2sSection::default()
        };
        let limits = s.xml_limits();
        assert_eq!(limits.max_element_size, 65536);
        assert_eq!(limits.max_depth, Limits::default().max_depth);
    }

    #[test]
    fn secret_debug_hides_bytes() {
        assert!(SecretBytes::from_hex("00 ff").is_err());
        assert!(SecretBytes::from_hex("0ff").is_err());
        let s = SecretBytes::from_hex(" 00FF\n").unwrap();
        assert_eq!(s.as_bytes(), &[0, 255]);
        assert_eq!(format!("{s:?}"), "SecretBytes(<2 bytes>)");
    }
}
