//! The configuration adapter: one TOML file → a validated [`Config`], and
//! [`Config::materialize`] → the certificates, dialback secret and trust anchors it names.
//!
//! Every table and key is optional (the embedded defaults are [`Config::default`]); an
//! unknown key, a value of the wrong type or a malformed duration is a parse error that
//! keeps `toml`'s message (it names the key and shows the line). Everything else is checked
//! by [`Config::validate`], whose errors read `KEY: PROBLEM`, e.g.
//! `s2s.backoff_max: must be at least s2s.backoff_initial (1s)`.
//!
//! ```toml
//! domains = ["a.test"]          # hosted domains (RFC 7622 §3.2 domainparts); default ["localhost"]
//! shards = 2                    # default: available cores; 1..=256
//! data_dir = "fedrouter-data"   # generated certificates and the dialback secret live here
//!
//! [listen]                      # "ip:port" lists; [] disables the listener
//! s2s = ["127.0.0.1:5269"]
//! s2s_tls = ["127.0.0.1:5270"]  # direct TLS (XEP-0368)
//! c2s = ["127.0.0.1:5222"]
//! admin = "127.0.0.1:9269"      # HTTP metrics, status, ping; "" disables
//!
//! [tls]
//! trust = ["ca.pem"]            # CA certificates trusted to verify peers
//! system_roots = false          # also trust the system's roots
//! [[tls.certificate]]           # per hosted domain; others get a generated self-signed one
//! domain = "a.test"
//! cert = "a.crt"                # PEM chain, end-entity first
//! key = "a.key"                 # PEM private key
//!
//! [dns]
//! nameservers = ["127.0.0.1:5300"]  # [] = the system's resolv.conf
//! timeout = "2s"
//! cache_size = 4096
//! [dns.static]                  # domain -> "host:port", bypassing SRV look-ups (labs)
//! "b.test" = "127.0.0.1:15269"
//!
//! [s2s]
//! connect_timeout = "5s"
//! negotiation_timeout = "30s"
//! stream_header_timeout = "10s"
//! idle_timeout = "10m"          # "0s" = never
//! keepalive = "60s"
//! verify_timeout = "30s"
//! queue_per_domain = 1000
//! send_queue_bytes = 1048576
//! write_stall_timeout = "30s"   # a stream that accepts no byte this long is closed
//! max_unauthenticated_per_shard = 1024
//! backoff_initial = "1s"
//! backoff_max = "5m"
//! dialback_secret = "<hex>"     # absent: generated into <data_dir>/dialback.secret
//! max_stanza_size = 262144
//!
//! [inbox]
//! capacity = 1024
//! batch = 256
//!
//! [c2s]                         # client streams (RFC 6120) and rosters (RFC 6121)
//! tls_required = true
//! negotiation_timeout = "30s"
//! keepalive = "60s"
//! max_auth_failures = 3
//! auth_failure_delay = "1s"
//! max_stanza_size = 65536
//! max_roster_items = 1000
//! max_resources = 16
//! send_queue_bytes = 1048576
//! write_stall_timeout = "30s"
//!
//! [metrics]
//! listen = "127.0.0.1:9269"     # Prometheus /metrics; the admin endpoint's address (default)
//!                               # serves it too; "" = only there
//!
//! [store]                       # the embedded SQLite database, <data_dir>/fedrouter.db
//! durability = "power-loss"     # or "crash" (synchronous=FULL / NORMAL)
//! max_batch = 1024
//! queue = 65536
//!
//! [shutdown]
//! drain_timeout = "5s"
//!
//! [log]
//! level = "info"                # RUST_LOG wins; a bare level is fedrouter's, libraries stay at warn
//! format = "text"               # or "json" (one object per line); --log-format wins
//!
//! [federation.default]          # crate::stream::policy::FederationPolicy
//! tls = "optional"
//! [federation.domains."gmail.test"]
//! tls = "disabled"
//! auth = "dialback"
//! verify_certificates = false
//! ```
//!
//! Relative paths (`data_dir`, `tls.trust`, `tls.certificate[].cert`/`key`) are relative to
//! the working directory of the process, not to the configuration file.
//!
//! Durations are `humantime` strings (`"500ms"`, `"5s"`, `"10m"`, `"1h 30m"`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::Deserialize;

use crate::dialback::DialbackSecret;
use crate::jid::DomainPart;
use crate::stream::policy::FederationPolicy;
use crate::tls::{self, CertifiedDomain, TlsError};
use crate::xml::Limits;

/// Most shards (`shards`).
pub const MAX_SHARDS: usize = 256;

/// Most stanzas waiting for one remote domain (`s2s.queue_per_domain`).
pub const MAX_QUEUE_PER_DOMAIN: usize = 1_000_000;

/// Smallest accepted `s2s.max_stanza_size`, in bytes: RFC 6120 §13.12 (item 4) requires
/// servers to accept stanzas of at least 10 000 bytes.
pub const MIN_STANZA_SIZE: usize = 10_000;

/// Largest accepted `s2s.max_stanza_size`, in bytes (16 MiB).
pub const MAX_STANZA_SIZE: usize = 16 << 20;

/// Fewest bytes in a configured or stored dialback secret (128 bits).
pub const MIN_SECRET_BYTES: usize = 16;

/// Largest `dns.cache_size` (answers).
pub const MAX_DNS_CACHE: usize = 1 << 20;

/// Largest `inbox.capacity` (batches).
pub const MAX_INBOX_CAPACITY: usize = 1 << 20;

/// Largest `inbox.batch` (messages).
pub const MAX_INBOX_BATCH: usize = 1 << 16;

/// The file under `data_dir` holding the generated dialback secret (hexadecimal, mode 0600).
pub const DIALBACK_SECRET_FILE: &str = "dialback.secret";

/// The folder under `data_dir` holding generated self-signed certificates, as
/// `<domain>.crt` (PEM chain) and `<domain>.key` (PEM private key, mode 0600).
pub const CERTS_DIR: &str = "certs";

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// Why a configuration cannot be loaded, validated or materialised.
///
/// Each message names the key (`s2s.backoff_max`, `listen.s2s[1]`, `dns.static."b.test"`)
/// or the file concerned and says what is wrong, for an operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The text is not TOML, has an unknown key, a value of the wrong type or a malformed
    /// duration. `message` is `toml`'s, which names the key and shows the line.
    #[error("{}{message}", file_prefix(.file))]
    Parse {
        /// The configuration file, when loaded with [`Config::load`].
        file: Option<PathBuf>,
        /// `toml`'s message.
        message: String,
    },
    /// A value is out of range, malformed or inconsistent with another, or a file a key
    /// names cannot be used (found by [`Config::materialize`]).
    #[error("{}{key}: {problem}", file_prefix(.file))]
    Invalid {
        /// The configuration file, when loaded with [`Config::load`].
        file: Option<PathBuf>,
        /// The key, as written in TOML: `shards`, `listen.s2s[1]`, `dns.static."b.test"`,
        /// `tls.certificate[0].cert`.
        key: String,
        /// What is wrong, quoting the value.
        problem: String,
    },
    /// A file or folder could not be read, written or created (the configuration file
    /// itself, `data_dir` and what lives in it).
    #[error("{}: {message}", .path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's message, e.g. `Permission denied`.
        message: String,
    },
    /// A file fedrouter keeps in `data_dir` (a generated certificate, the dialback secret)
    /// exists but cannot be used.
    #[error("{}: {problem}", .path.display())]
    DataFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it, and what to do.
        problem: String,
    },
}

fn file_prefix(file: &Option<PathBuf>) -> String {
    match file {
        Some(f) => format!("{}: ", f.display()),
        None => String::new(),
    }
}

impl ConfigError {
    /// The same error, naming `file` as the configuration file it was found in
    /// ([`ConfigError::Parse`] and [`ConfigError::Invalid`]; others are returned as they are).
    pub fn in_file(self, file: &Path) -> Self {
        match self {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                file: Some(file.to_owned()),
                message,
            },
            ConfigError::Invalid { key, problem, .. } => ConfigError::Invalid {
                file: Some(file.to_owned()),
                key,
                problem,
            },
            other => other,
        }
    }
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        file: None,
        key: key.into(),
        problem: problem.into(),
    }
}

fn io_error(path: &Path, e: &io::Error) -> ConfigError {
    ConfigError::Io {
        path: path.to_owned(),
        message: io_message(e),
    }
}

/// An I/O error's message without std's ` (os error N)` suffix: `No such file or directory`.
fn io_message(e: &io::Error) -> String {
    let text = e.to_string();
    match e.raw_os_error() {
        Some(code) => text
            .strip_suffix(&format!(" (os error {code})"))
            .map(str::to_owned)
            .unwrap_or(text),
        None => text,
    }
}

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/// The whole configuration (see the [module documentation](self) for the file format).
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
    /// The metrics endpoint (`[metrics]`).
    pub metrics: MetricsSection,
    /// Graceful shutdown (`[shutdown]`).
    pub shutdown: ShutdownSection,
    /// Logging (`[log]`).
    pub log: LogSection,
    /// Per-remote-domain policy (`[federation]`); `domains` keys normalised like
    /// [`Config::domains`].
    pub federation: FederationPolicy,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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
    /// 65536; [`MIN_STANZA_SIZE`] to [`MAX_STANZA_SIZE`].
    pub max_stanza_size: usize,
    /// Most items in one user's roster (RFC 6121 §2.3.3 "server-configured limit"), key
    /// `c2s.max_roster_items`; default 1000; 1 to 100000. A roster set or an outbound
    /// subscription that would add an item beyond it is refused with `policy-violation`
    /// (RFC 6120 §8.3.3.12, a local policy); rows kept only for pending inbound requests
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
}

impl Default for C2sSection {
    fn default() -> Self {
        C2sSection {
            tls_required: true,
            negotiation_timeout: Duration::from_secs(30),
            keepalive: Duration::from_secs(60),
            max_auth_failures: 3,
            auth_failure_delay: Duration::from_secs(1),
            max_stanza_size: 65536,
            max_roster_items: 1000,
            max_resources: 16,
            send_queue_bytes: 1 << 20,
            write_stall_timeout: Duration::from_secs(30),
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

/// The user and roster store (`[store]`): SQLite in WAL mode at
/// `<data_dir>/fedrouter.db`, written by one storage thread with group commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// Key `store.durability`: `"power-loss"` (default) or `"crash"`.
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

/// What [`Config::materialize`] loaded or created.
#[derive(Debug, Clone)]
pub struct Materialized {
    /// One certificate per local domain, in [`Config::domains`] order; each
    /// [`CertifiedDomain::domain`] is that local domain.
    pub certificates: Vec<CertifiedDomain>,
    /// The dialback secret: configured, or read from / generated into
    /// `<data_dir>/dialback.secret`.
    pub dialback_secret: DialbackSecret,
    /// The certificates of every `tls.trust` file, in order.
    pub trust: Vec<CertificateDer<'static>>,
    /// Local domains that got a freshly generated self-signed certificate in this call.
    pub generated: Vec<String>,
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
            metrics: MetricsSection::default(),
            shutdown: ShutdownSection::default(),
            log: LogSection::default(),
            federation: FederationPolicy::default(),
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
    /// The system's nameservers, 2 s timeout, 4096 cached answers, no static entries.
    fn default() -> Self {
        DnsSection {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(2),
            cache_size: 4096,
            static_targets: HashMap::new(),
        }
    }
}

impl Default for S2sSection {
    /// The values in the [module documentation](self), no configured secret.
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

// ---------------------------------------------------------------------------------------
// The file as written
// ---------------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    domains: Option<Vec<String>>,
    shards: Option<usize>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    listen: RawListen,
    #[serde(default)]
    tls: TlsConfig,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    s2s: RawS2s,
    #[serde(default)]
    inbox: InboxSection,
    #[serde(default)]
    c2s: C2sSection,
    #[serde(default)]
    store: StoreSection,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    shutdown: ShutdownSection,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    federation: FederationPolicy,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
    format: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawListen {
    s2s: Option<Vec<String>>,
    s2s_tls: Option<Vec<String>>,
    c2s: Option<Vec<String>>,
    admin: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDns {
    nameservers: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    cache_size: Option<usize>,
    #[serde(rename = "static")]
    static_targets: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawS2s {
    #[serde(default, with = "humantime_serde")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    negotiation_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    stream_header_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    keepalive: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    verify_timeout: Option<Duration>,
    queue_per_domain: Option<usize>,
    send_queue_bytes: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    write_stall_timeout: Option<Duration>,
    max_unauthenticated_per_shard: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    backoff_initial: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    backoff_max: Option<Duration>,
    dialback_secret: Option<String>,
    max_stanza_size: Option<usize>,
}

/// The normalised form of a domain when it is valid, else the text as written (left for
/// [`Config::validate`] to report).
fn normalise_domain(raw: &str) -> String {
    DomainPart::new(raw)
        .map(|d| d.as_str().to_owned())
        .unwrap_or_else(|_| raw.to_owned())
}

fn parse_socket_addr(key: String, text: &str) -> Result<SocketAddr, ConfigError> {
    text.trim()
        .parse()
        .map_err(|_| invalid(key, format!("{text:?} is not ip:port")))
}

fn parse_addr_list(key: &str, list: Vec<String>) -> Result<Vec<SocketAddr>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, text)| parse_socket_addr(format!("{key}[{i}]"), text))
        .collect()
}

/// `host:port`, `ip:port` or `[ipv6]:port`.
fn parse_static_target(key: &str, text: &str) -> Result<StaticTarget, ConfigError> {
    let trimmed = text.trim();
    if let Ok(addr) = trimmed.parse::<SocketAddr>() {
        return Ok(StaticTarget {
            host: addr.ip().to_string(),
            port: addr.port(),
        });
    }
    let bad = || invalid(key, format!("expected host:port, got {text:?}"));
    let (host, port) = trimmed.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || host.contains(':') || host.contains('[') {
        return Err(bad());
    }
    Ok(StaticTarget {
        host: host.to_owned(),
        port,
    })
}

/// Re-keys a map by normalised domain, refusing two keys that normalise alike.
fn normalise_keys<V>(
    table: &str,
    entries: impl IntoIterator<Item = (String, V)>,
) -> Result<HashMap<String, V>, ConfigError> {
    let mut out = HashMap::new();
    let mut written_as: HashMap<String, String> = HashMap::new();
    for (raw, value) in entries {
        let norm = normalise_domain(&raw);
        if let Some(first) = written_as.get(&norm) {
            return Err(invalid(
                format!("{table}.{raw:?}"),
                format!("the same domain as {first:?} (domains compare case-insensitively)"),
            ));
        }
        written_as.insert(norm.clone(), raw);
        out.insert(norm, value);
    }
    Ok(out)
}

impl RawConfig {
    fn into_config(self) -> Result<Config, ConfigError> {
        let d = Config::default();

        let listen = {
            let l = self.listen;
            let dl = d.listen;
            Listen {
                s2s: l
                    .s2s
                    .map(|v| parse_addr_list("listen.s2s", v))
                    .transpose()?
                    .unwrap_or(dl.s2s),
                s2s_tls: l
                    .s2s_tls
                    .map(|v| parse_addr_list("listen.s2s_tls", v))
                    .transpose()?
                    .unwrap_or(dl.s2s_tls),
                c2s: l
                    .c2s
                    .map(|v| parse_addr_list("listen.c2s", v))
                    .transpose()?
                    .unwrap_or(dl.c2s),
                admin: match l.admin {
                    None => dl.admin,
                    Some(text) if text.trim().is_empty() => None,
                    Some(text) => Some(parse_socket_addr("listen.admin".to_owned(), &text)?),
                },
            }
        };

        let mut tls = self.tls;
        for entry in &mut tls.certificates {
            entry.domain = normalise_domain(&entry.domain);
        }

        let dns = {
            let r = self.dns;
            let dd = d.dns;
            let mut targets = Vec::new();
            for (domain, text) in r.static_targets.unwrap_or_default() {
                let target = parse_static_target(&format!("dns.static.{domain:?}"), &text)?;
                targets.push((domain, target));
            }
            DnsSection {
                nameservers: r
                    .nameservers
                    .map(|v| parse_addr_list("dns.nameservers", v))
                    .transpose()?
                    .unwrap_or(dd.nameservers),
                timeout: r.timeout.unwrap_or(dd.timeout),
                cache_size: r.cache_size.unwrap_or(dd.cache_size),
                static_targets: normalise_keys("dns.static", targets)?,
            }
        };

        let s2s = {
            let r = self.s2s;
            let ds = d.s2s;
            let dialback_secret = r
                .dialback_secret
                .map(|text| {
                    SecretBytes::from_hex(&text).map_err(|e| {
                        invalid(
                            "s2s.dialback_secret",
                            format!(
                                "not hexadecimal ({e}); generate one with `openssl rand -hex 32`"
                            ),
                        )
                    })
                })
                .transpose()?;
            S2sSection {
                connect_timeout: r.connect_timeout.unwrap_or(ds.connect_timeout),
                negotiation_timeout: r.negotiation_timeout.unwrap_or(ds.negotiation_timeout),
                stream_header_timeout: r.stream_header_timeout.unwrap_or(ds.stream_header_timeout),
                idle_timeout: match r.idle_timeout {
                    None => ds.idle_timeout,
                    Some(Duration::ZERO) => None,
                    Some(t) => Some(t),
                },
                keepalive: r.keepalive.unwrap_or(ds.keepalive),
                verify_timeout: r.verify_timeout.unwrap_or(ds.verify_timeout),
                queue_per_domain: r.queue_per_domain.unwrap_or(ds.queue_per_domain),
                send_queue_bytes: r.send_queue_bytes.unwrap_or(ds.send_queue_bytes),
                write_stall_timeout: r.write_stall_timeout.unwrap_or(ds.write_stall_timeout),
                max_unauthenticated_per_shard: r
                    .max_unauthenticated_per_shard
                    .unwrap_or(ds.max_unauthenticated_per_shard),
                backoff_initial: r.backoff_initial.unwrap_or(ds.backoff_initial),
                backoff_max: r.backoff_max.unwrap_or(ds.backoff_max),
                dialback_secret,
                max_stanza_size: r.max_stanza_size.unwrap_or(ds.max_stanza_size),
            }
        };

        let mut policy_domains: Vec<_> = self.federation.domains.into_iter().collect();
        policy_domains.sort_by(|a, b| a.0.cmp(&b.0));
        let federation = FederationPolicy {
            default: self.federation.default,
            domains: normalise_keys("federation.domains", policy_domains)?,
        };

        Ok(Config {
            domains: self
                .domains
                .map(|v| v.iter().map(|s| normalise_domain(s)).collect())
                .unwrap_or(d.domains),
            shards: self.shards.unwrap_or(d.shards),
            data_dir: self.data_dir.unwrap_or(d.data_dir),
            listen,
            tls,
            dns,
            s2s,
            inbox: self.inbox,
            c2s: self.c2s,
            store: self.store,
            metrics: MetricsSection {
                listen: match self.metrics.listen {
                    None => None,
                    Some(text) if text.trim().is_empty() => None,
                    Some(text) => Some(parse_socket_addr("metrics.listen".to_owned(), &text)?),
                },
            },
            shutdown: self.shutdown,
            log: LogSection {
                level: self
                    .log
                    .level
                    .unwrap_or_else(|| LogSection::default().level),
                format: match self.log.format {
                    None => LogFormat::default(),
                    Some(name) => LogFormat::from_name(&name).ok_or_else(|| {
                        invalid(
                            "log.format",
                            format!(
                                "{name:?} is not a log format (expected {})",
                                LogFormat::names()
                                    .iter()
                                    .map(|n| format!("{n:?}"))
                                    .collect::<Vec<_>>()
                                    .join(" or ")
                            ),
                        )
                    })?,
                },
            },
            federation,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

fn show(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

/// A domain key: valid (RFC 7622 §3.2) and in normalised form.
fn check_domain(key: &str, raw: &str) -> Result<(), ConfigError> {
    match DomainPart::new(raw) {
        Err(e) => Err(invalid(key, format!("{raw:?} is not a valid domain ({e})"))),
        Ok(d) if d.as_str() != raw => Err(invalid(
            key,
            format!("{raw:?} is not in normalised form (write {:?})", d.as_str()),
        )),
        Ok(_) => Ok(()),
    }
}

fn is_ip_literal(domain: &str) -> bool {
    domain.starts_with('[') || domain.parse::<Ipv4Addr>().is_ok()
}

fn check_range(key: &str, value: usize, min: usize, max: usize) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("must be between {min} and {max}, got {value}"),
        ))
    }
}

fn check_nonzero(key: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        Err(invalid(key, "must be more than 0s"))
    } else {
        Ok(())
    }
}

fn check_path(key: &str, path: &Path) -> Result<(), ConfigError> {
    if path.as_os_str().is_empty() {
        Err(invalid(key, "must not be empty"))
    } else {
        Ok(())
    }
}

impl Config {
    /// Parses and validates a configuration file's text.
    ///
    /// Errors: [`ConfigError::Parse`] (TOML syntax, unknown key, wrong type, malformed
    /// duration: `toml`'s message), [`ConfigError::Invalid`] (a malformed address, secret or
    /// static target, or anything [`Config::validate`] refuses).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: None,
            message: e.to_string().trim_end().to_owned(),
        })?;
        let config = raw.into_config()?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates the configuration file at `path`.
    ///
    /// Errors: [`ConfigError::Io`] when the file cannot be read; otherwise those of
    /// [`Config::from_toml_str`], naming `path` as their `file`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = fs::read_to_string(path).map_err(|e| io_error(path, &e))?;
        Config::from_toml_str(&text).map_err(|e| e.in_file(path))
    }

    /// Checks every value's range and the consistency between values; the first problem
    /// found is returned as [`ConfigError::Invalid`] naming its key.
    ///
    /// Checked: `domains` non-empty, each a valid normalised RFC 7622 §3.2 domainpart that
    /// is not an IP address, no duplicates; `shards` in 1..=[`MAX_SHARDS`]; `data_dir`
    /// non-empty; no address (other than port 0) used by two listeners; each
    /// `tls.certificate` for a distinct local domain, with non-empty paths; `dns` timeout
    /// non-zero, cache size in range, static keys valid domains and targets a valid host and
    /// a non-zero port; `s2s` timeouts non-zero (`idle_timeout` may be `None`, not zero),
    /// `queue_per_domain`, `max_stanza_size` in range, `send_queue_bytes >=
    /// max_stanza_size`, `backoff_max >= backoff_initial`, a secret of at least
    /// [`MIN_SECRET_BYTES`]; `inbox` sizes in range; `log.level` a valid `EnvFilter`
    /// (`log.format` is checked when the file is read);
    /// `federation.domains` keys valid normalised domains.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_domains()?;
        check_range("shards", self.shards, 1, MAX_SHARDS)?;
        check_path("data_dir", &self.data_dir)?;
        self.validate_listen()?;
        self.validate_tls()?;
        self.validate_dns()?;
        self.validate_s2s()?;
        check_range("inbox.capacity", self.inbox.capacity, 1, MAX_INBOX_CAPACITY)?;
        check_range("inbox.batch", self.inbox.batch, 1, MAX_INBOX_BATCH)?;
        self.validate_c2s()?;
        check_range("store.max_batch", self.store.max_batch, 1, 65536)?;
        check_range("store.queue", self.store.queue, 1, 1 << 20)?;
        self.validate_log()?;
        let mut keys: Vec<&String> = self.federation.domains.keys().collect();
        keys.sort();
        for domain in keys {
            check_domain(&format!("federation.domains.{domain:?}"), domain)?;
        }
        Ok(())
    }

    fn validate_domains(&self) -> Result<(), ConfigError> {
        if self.domains.is_empty() {
            return Err(invalid("domains", "at least one local domain is required"));
        }
        for (i, domain) in self.domains.iter().enumerate() {
            let key = format!("domains[{i}]");
            check_domain(&key, domain)?;
            if is_ip_literal(domain) {
                return Err(invalid(
                    key,
                    format!("{domain:?} is an IP address; a hosted domain must be a DNS name"),
                ));
            }
            if let Some(j) = self.domains[..i].iter().position(|d| d == domain) {
                return Err(invalid(
                    key,
                    format!("{domain:?} is listed twice (also domains[{j}]; domains compare case-insensitively)"),
                ));
            }
        }
        Ok(())
    }

    fn validate_listen(&self) -> Result<(), ConfigError> {
        let l = &self.listen;
        let mut all: Vec<(String, SocketAddr)> = Vec::new();
        for (name, addrs) in [("s2s", &l.s2s), ("s2s_tls", &l.s2s_tls), ("c2s", &l.c2s)] {
            for (i, addr) in addrs.iter().enumerate() {
                all.push((format!("listen.{name}[{i}]"), *addr));
            }
        }
        if let Some(addr) = l.admin {
            all.push(("listen.admin".to_owned(), addr));
        }
        for (n, (key, addr)) in all.iter().enumerate() {
            if addr.port() == 0 {
                continue;
            }
            if let Some((other, _)) = all[..n].iter().find(|(_, a)| a == addr) {
                return Err(invalid(key, format!("{addr} is already used by {other}")));
            }
        }
        Ok(())
    }

    fn validate_tls(&self) -> Result<(), ConfigError> {
        for (i, path) in self.tls.trust.iter().enumerate() {
            check_path(&format!("tls.trust[{i}]"), path)?;
        }
        for (i, entry) in self.tls.certificates.iter().enumerate() {
            let key = format!("tls.certificate[{i}].domain");
            check_domain(&key, &entry.domain)?;
            if !self.domains.contains(&entry.domain) {
                return Err(invalid(
                    key,
                    format!(
                        "{:?} is not one of the local domains {:?}",
                        entry.domain, self.domains
                    ),
                ));
            }
            if let Some(j) = self.tls.certificates[..i]
                .iter()
                .position(|e| e.domain == entry.domain)
            {
                return Err(invalid(
                    key,
                    format!(
                        "{:?} already has a certificate (tls.certificate[{j}])",
                        entry.domain
                    ),
                ));
            }
            check_path(&format!("tls.certificate[{i}].cert"), &entry.cert)?;
            check_path(&format!("tls.certificate[{i}].key"), &entry.key)?;
        }
        Ok(())
    }

    fn validate_dns(&self) -> Result<(), ConfigError> {
        let dns = &self.dns;
        for (i, addr) in dns.nameservers.iter().enumerate() {
            if addr.port() == 0 {
                return Err(invalid(
                    format!("dns.nameservers[{i}]"),
                    format!("{addr}: port 0 is not a nameserver port"),
                ));
            }
        }
        check_nonzero("dns.timeout", dns.timeout)?;
        check_range("dns.cache_size", dns.cache_size, 1, MAX_DNS_CACHE)?;
        let mut domains: Vec<(&String, &StaticTarget)> = dns.static_targets.iter().collect();
        domains.sort_by(|a, b| a.0.cmp(b.0));
        for (domain, target) in domains {
            let key = format!("dns.static.{domain:?}");
            check_domain(&key, domain)?;
            let host_ok =
                target.host.parse::<IpAddr>().is_ok() || DomainPart::new(&target.host).is_ok();
            if !host_ok || target.port == 0 {
                return Err(invalid(
                    key,
                    format!(
                        "expected host:port with a host name or IP address and a port from 1 to 65535, got {:?}",
                        target.to_string()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_s2s(&self) -> Result<(), ConfigError> {
        let s = &self.s2s;
        check_nonzero("s2s.connect_timeout", s.connect_timeout)?;
        check_nonzero("s2s.negotiation_timeout", s.negotiation_timeout)?;
        check_nonzero("s2s.stream_header_timeout", s.stream_header_timeout)?;
        if s.idle_timeout == Some(Duration::ZERO) {
            return Err(invalid(
                "s2s.idle_timeout",
                "must be more than 0s (None means never; \"0s\" in the file)",
            ));
        }
        check_nonzero("s2s.keepalive", s.keepalive)?;
        check_nonzero("s2s.verify_timeout", s.verify_timeout)?;
        check_nonzero("s2s.write_stall_timeout", s.write_stall_timeout)?;
        check_range(
            "s2s.queue_per_domain",
            s.queue_per_domain,
            1,
            MAX_QUEUE_PER_DOMAIN,
        )?;
        check_range(
            "s2s.max_stanza_size",
            s.max_stanza_size,
            MIN_STANZA_SIZE,
            MAX_STANZA_SIZE,
        )?;
        if s.send_queue_bytes < s.max_stanza_size {
            return Err(invalid(
                "s2s.send_queue_bytes",
                format!(
                    "must be at least s2s.max_stanza_size ({}), got {}",
                    s.max_stanza_size, s.send_queue_bytes
                ),
            ));
        }
        if s.max_unauthenticated_per_shard == 0 {
            return Err(invalid(
                "s2s.max_unauthenticated_per_shard",
                "must be at least 1, got 0",
            ));
        }
        check_nonzero("s2s.backoff_initial", s.backoff_initial)?;
        if s.backoff_max < s.backoff_initial {
            return Err(invalid(
                "s2s.backoff_max",
                format!(
                    "must be at least s2s.backoff_initial ({}), got {}",
                    show(s.backoff_initial),
                    show(s.backoff_max)
                ),
            ));
        }
        if let Some(secret) = &s.dialback_secret {
            if secret.as_bytes().len() < MIN_SECRET_BYTES {
                return Err(invalid(
                    "s2s.dialback_secret",
                    format!(
                        "too short: {} bytes, at least {MIN_SECRET_BYTES} ({} hexadecimal digits) are required",
                        secret.as_bytes().len(),
                        2 * MIN_SECRET_BYTES
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_c2s(&self) -> Result<(), ConfigError> {
        let c = &self.c2s;
        check_nonzero("c2s.negotiation_timeout", c.negotiation_timeout)?;
        check_nonzero("c2s.keepalive", c.keepalive)?;
        check_nonzero("c2s.write_stall_timeout", c.write_stall_timeout)?;
        check_range("c2s.max_auth_failures", c.max_auth_failures as usize, 1, 6)?;
        check_range(
            "c2s.max_stanza_size",
            c.max_stanza_size,
            MIN_STANZA_SIZE,
            MAX_STANZA_SIZE,
        )?;
        check_range("c2s.max_roster_items", c.max_roster_items, 1, 100_000)?;
        check_range("c2s.max_resources", c.max_resources, 1, 1024)?;
        if c.send_queue_bytes < c.max_stanza_size {
            return Err(invalid(
                "c2s.send_queue_bytes",
                format!(
                    "must be at least c2s.max_stanza_size ({}), got {}",
                    c.max_stanza_size, c.send_queue_bytes
                ),
            ));
        }
        Ok(())
    }

    fn validate_log(&self) -> Result<(), ConfigError> {
        let level = &self.log.level;
        if level.trim().is_empty() {
            return Err(invalid("log.level", "must not be empty (e.g. \"info\")"));
        }
        tracing_subscriber::EnvFilter::try_new(level).map_err(|e| {
            invalid(
                "log.level",
                format!("{level:?} is not a tracing filter directive ({e})"),
            )
        })?;
        Ok(())
    }

    /// Loads or creates what lives outside the file: validates, creates `data_dir` (mode
    /// 0700 when new), loads each configured certificate (checking that it names its domain),
    /// reuses or generates a self-signed certificate for each local domain without one
    /// (`<data_dir>/certs/<domain>.crt` and `.key`, see [`tls::self_signed`]), reads the
    /// `tls.trust` anchors, and takes the configured dialback secret or reads or generates
    /// `<data_dir>/dialback.secret` (32 random bytes in hexadecimal, mode 0600).
    ///
    /// Idempotent: a second call generates nothing and returns the same certificates and
    /// secret. New files are written to a temporary name and renamed, so a crash leaves no
    /// half-written file.
    ///
    /// Errors: [`ConfigError::Invalid`] naming the key for a configured file that cannot be
    /// read or used (`tls.certificate[0].cert: /x/y: No such file or directory`) or a domain
    /// no certificate can be generated for; [`ConfigError::Io`] for `data_dir` and the files
    /// in it; [`ConfigError::DataFile`] for a stored file that is corrupt.
    pub fn materialize(&self) -> Result<Materialized, ConfigError> {
        self.validate()?;
        create_private_dir(&self.data_dir)?;

        let mut certificates = Vec::with_capacity(self.domains.len());
        let mut generated = Vec::new();
        for (i, domain) in self.domains.iter().enumerate() {
            let configured = self
                .tls
                .certificates
                .iter()
                .enumerate()
                .find(|(_, e)| &e.domain == domain);
            match configured {
                Some((j, entry)) => certificates.push(load_configured(j, entry)?),
                None => {
                    let (cert, fresh) = self_signed_in(&self.data_dir, i, domain)?;
                    if fresh {
                        generated.push(domain.clone());
                    }
                    certificates.push(cert);
                }
            }
        }

        let trust = load_trust(&self.tls.trust)?;

        let dialback_secret = match &self.s2s.dialback_secret {
            Some(secret) => DialbackSecret::new(secret.as_bytes()),
            None => load_or_create_secret(&self.data_dir.join(DIALBACK_SECRET_FILE))?,
        };

        Ok(Materialized {
            certificates,
            dialback_secret,
            trust,
            generated,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Materialisation
// ---------------------------------------------------------------------------------------

fn create_private_dir(path: &Path) -> Result<(), ConfigError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| io_error(path, &e))
}

fn exists(path: &Path) -> Result<bool, ConfigError> {
    path.try_exists().map_err(|e| io_error(path, &e))
}

/// Writes `bytes` to `path` through a temporary file in the same folder
/// ([`tempfile::NamedTempFile`], created with `mode`, synced) and a rename over `path`
/// ([`tempfile::NamedTempFile::persist`]): readers see the old file or the new one,
/// never a part; a failed write leaves no temporary file behind.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ConfigError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let prefix = format!(
        ".{}.",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    );
    let mut file = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(|e| io_error(dir, &e))?;
    let write = |file: &mut tempfile::NamedTempFile| -> io::Result<()> {
        // Exactly `mode`, whatever the umask.
        file.as_file()
            .set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.as_file().sync_all()
    };
    write(&mut file).map_err(|e| io_error(file.path(), &e))?;
    file.persist(path).map_err(|e| io_error(path, &e.error))?;
    Ok(())
}

/// The certificate's dNSNames cover `domain` (exactly, or by a `*.parent` wildcard for one
/// label), compared in ASCII (A-label) form, case-insensitively.
fn names_cover(names: &[String], domain: &str) -> bool {
    let Ok(ascii) = idna::domain_to_ascii(domain) else {
        return false;
    };
    let parent = ascii.split_once('.').map(|(_, p)| p);
    names.iter().any(|name| {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match name.strip_prefix("*.") {
            Some(wild) => parent == Some(wild),
            None => name == ascii,
        }
    })
}

fn load_configured(index: usize, entry: &CertificateEntry) -> Result<CertifiedDomain, ConfigError> {
    let cert_key = format!("tls.certificate[{index}].cert");
    let key_key = format!("tls.certificate[{index}].key");
    for (key, path) in [(&cert_key, &entry.cert), (&key_key, &entry.key)] {
        fs::File::open(path).map_err(|e| {
            invalid(
                key.as_str(),
                format!("{}: {}", path.display(), io_message(&e)),
            )
        })?;
    }
    let loaded = CertifiedDomain::from_pem_files(&entry.cert, &entry.key).map_err(|e| {
        let key = match &e {
            TlsError::NoPrivateKey { .. } | TlsError::BadKey { .. } => &key_key,
            TlsError::Read { path, .. } | TlsError::BadPem { path, .. } if *path == entry.key => {
                &key_key
            }
            _ => &cert_key,
        };
        invalid(key.as_str(), e.to_string())
    })?;
    let names = loaded.dns_names();
    if !names_cover(&names, &entry.domain) {
        return Err(invalid(
            cert_key,
            format!(
                "{}: the certificate names {names:?}, not {:?}",
                entry.cert.display(),
                entry.domain
            ),
        ));
    }
    CertifiedDomain::new(
        entry.domain.clone(),
        loaded.chain().to_vec(),
        loaded.key().clone_key(),
    )
    .map_err(|e| invalid(cert_key, e.to_string()))
}

/// The self-signed certificate for `domain` in `<data_dir>/certs/`, generated when absent;
/// `true` when generated now.
fn self_signed_in(
    data_dir: &Path,
    index: usize,
    domain: &str,
) -> Result<(CertifiedDomain, bool), ConfigError> {
    let dir = data_dir.join(CERTS_DIR);
    create_private_dir(&dir)?;
    let crt = dir.join(format!("{domain}.crt"));
    let key = dir.join(format!("{domain}.key"));

    if exists(&crt)? && exists(&key)? {
        let loaded =
            CertifiedDomain::from_pem_files(&crt, &key).map_err(|e| ConfigError::DataFile {
                path: crt.clone(),
                problem: format!(
                    "stored self-signed certificate unusable: {e} (delete {} and {} to generate a new one)",
                    crt.display(),
                    key.display()
                ),
            })?;
        let cert = CertifiedDomain::new(domain, loaded.chain().to_vec(), loaded.key().clone_key())
            .map_err(|e| ConfigError::DataFile {
                path: crt.clone(),
                problem: e.to_string(),
            })?;
        return Ok((cert, false));
    }

    let cert = tls::self_signed(domain).map_err(|e| {
        invalid(
            format!("domains[{index}]"),
            format!("cannot generate a self-signed certificate: {e}"),
        )
    })?;
    // The key first: a certificate file is only ever next to its key.
    write_atomically(&key, cert.key_pem().as_bytes(), 0o600)?;
    write_atomically(&crt, cert.chain_pem().as_bytes(), 0o644)?;
    Ok((cert, true))
}

fn load_trust(paths: &[PathBuf]) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let mut out = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let key = format!("tls.trust[{i}]");
        let pem = fs::read(path)
            .map_err(|e| invalid(&key, format!("{}: {}", path.display(), io_message(&e))))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(&key, format!("{}: not valid PEM: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(invalid(
                &key,
                format!(
                    "{} holds no PEM certificate (expected a '-----BEGIN CERTIFICATE-----' block)",
                    path.display()
                ),
            ));
        }
        for (n, cert) in certs.iter().enumerate() {
            webpki::anchor_from_trusted_cert(cert).map_err(|e| {
                invalid(
                    &key,
                    format!(
                        "{}: certificate #{} is not a usable trust anchor: {e}",
                        path.display(),
                        n + 1
                    ),
                )
            })?;
        }
        out.extend(certs);
    }
    Ok(out)
}

fn parse_secret_file(path: &Path, text: &str) -> Result<DialbackSecret, ConfigError> {
    let problem = match SecretBytes::from_hex(text) {
        Ok(secret) if secret.as_bytes().len() >= MIN_SECRET_BYTES => {
            return Ok(DialbackSecret::new(secret.as_bytes()))
        }
        Ok(secret) => format!(
            "the dialback secret is {} bytes, at least {MIN_SECRET_BYTES} are required",
            secret.as_bytes().len()
        ),
        Err(e) => format!("the dialback secret is not hexadecimal ({e})"),
    };
    Err(ConfigError::DataFile {
        path: path.to_owned(),
        problem: format!("{problem}; delete the file to generate a new one"),
    })
}

fn load_or_create_secret(path: &Path) -> Result<DialbackSecret, ConfigError> {
    match fs::read_to_string(path) {
        Ok(text) => parse_secret_file(path, &text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let bytes: [u8; 32] = rand::random();
            write_atomically(path, format!("{}\n", hex::encode(bytes)).as_bytes(), 0o600)?;
            Ok(DialbackSecret::new(bytes))
        }
        Err(e) => Err(io_error(path, &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_message_drops_os_error_suffix() {
        let e = io::Error::from_raw_os_error(2);
        assert_eq!(io_message(&e), "No such file or directory");
        let custom = io::Error::other("boom");
        assert_eq!(io_message(&custom), "boom");
    }

    #[test]
    fn write_atomically_replaces_with_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        fs::write(&path, b"old").unwrap();
        write_atomically(&path, b"new", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        write_atomically(&path, b"public", 0o644).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["secret"]);
        // A folder that does not exist: the error names it, nothing is written.
        let missing = dir.path().join("nope").join("x");
        let err = write_atomically(&missing, b"x", 0o600).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn static_target_forms() {
        let t = parse_static_target("k", "127.0.0.1:15269").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 15269));
        assert_eq!(t.socket_addr(), Some("127.0.0.1:15269".parse().unwrap()));
        let t = parse_static_target("k", "[::1]:5269").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 5269));
        assert_eq!(t.to_string(), "[::1]:5269");
        let t = parse_static_target("k", "xmpp.b.test:5269").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("xmpp.b.test", 5269));
        assert_eq!(t.socket_addr(), None);
        assert_eq!(t.to_string(), "xmpp.b.test:5269");
        for bad in ["b", ":5269", "b:", "b:70000", "::1:5269", "b:x"] {
            let err = parse_static_target("dns.static.\"b.test\"", bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("dns.static.\"b.test\": expected host:port, got {bad:?}")
            );
        }
    }

    #[test]
    fn names_cover_exact_wildcard_and_idn() {
        let names = vec!["a.test".to_owned(), "*.b.test".to_owned()];
        assert!(names_cover(&names, "a.test"));
        assert!(names_cover(&names, "x.b.test"));
        assert!(!names_cover(&names, "b.test"));
        assert!(!names_cover(&names, "y.x.b.test"));
        assert!(!names_cover(&names, "c.test"));
        let idn = vec!["xn--bcher-kva.example".to_owned()];
        assert!(names_cover(&idn, "bücher.example"));
    }

    #[test]
    fn keys_normalise_and_collide() {
        let map = normalise_keys("dns.static", vec![("B.Test.".to_owned(), 1)]).unwrap();
        assert_eq!(map.get("b.test"), Some(&1));
        let err = normalise_keys(
            "dns.static",
            vec![("B.test".to_owned(), 1), ("b.test".to_owned(), 2)],
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("dns.static.\"b.test\": the same domain as \"B.test\""),
            "{err}"
        );
    }

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

    #[test]
    fn stored_secret_errors_name_the_file() {
        let path = Path::new("/d/dialback.secret");
        let err = parse_secret_file(path, "zz").err().unwrap();
        assert!(err.to_string().starts_with("/d/dialback.secret: "), "{err}");
        let err = parse_secret_file(path, "00ff").err().unwrap();
        assert!(err.to_string().contains("2 bytes"), "{err}");
        assert!(parse_secret_file(path, &format!("{}\n", "ab".repeat(32))).is_ok());
    }
}
