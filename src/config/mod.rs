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
//! max_in_flight = 64            # queries per shard sent and not answered; more wait
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
//! stream_management = true      # XEP-0198 acks; unacknowledged stanzas go again on the next stream
//! sm_ack_every = 20             # <r/> after this many stanzas ...
//! sm_ack_after = "5s"           # ... or when one has waited this long
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
//! max_stanza_size = 262144     # bigger: policy-violation stream error
//! max_roster_items = 1000
//! max_resources = 16
//! send_queue_bytes = 1048576
//! write_stall_timeout = "30s"
//! pep_max_items = 1              # PEP (XEP-0163): items per node unless publish options ask
//! pep_max_items_limit = 100      # ... at most this many
//! pep_max_item_bytes = 65536     # largest item payload
//! stream_management = true      # XEP-0198: acks, resumption of dropped sessions
//! sm_ack_every = 5
//! sm_ack_after = "30s"
//! resume_timeout = "5m"         # "0s": not resumable
//! allow_registration = false    # XEP-0077 in-band registration of new accounts
//! sasl_mechanisms = ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]
//! max_offline_messages = 100    # per user (XEP-0160); 0 = no offline storage
//! unknown_user_cache = "2s"     # a missing account is remembered this long; "0s" = off
//!
//! [metrics]
//! listen = "127.0.0.1:9269"     # Prometheus /metrics; the admin endpoint's address (default)
//!                               # serves it too; "" = only there
//!
//! [store]                       # the embedded SQLite database, <data_dir>/fedrouter.db
//! backend = "sqlite"            # or "postgres", with url (see StoreSection)
//! # url = "postgresql://fedrouter:PASSWORD@127.0.0.1:5432/fedrouter"
//! durability = "power-loss"     # or "crash" (synchronous=FULL / NORMAL), SQLite only
//! max_batch = 1024
//! queue = 65536
//!
//! [auth]                        # how client passwords are checked (see AuthSection)
//! backend = "internal"          # or "ldap", with [auth.ldap] (PLAIN over TLS only)
//!
//! [limits]                      # flood limits (LimitsSection); past one: an error, not stored
//! pending_subscriptions_per_domain = 10000   # resource-constraint
//! pending_subscriptions_per_user = 500       # resource-constraint
//! subscriptions_per_minute_per_domain = 3000 # policy-violation
//! c2s_unauthenticated_per_address = 256      # stream error policy-violation
//! c2s_auth_failures_per_address = 30         # ... per window, then refused until it ends
//! c2s_auth_failure_window = "5m"
//!
//! # [cluster]                   # several nodes, one deployment (ClusterSection); needs
//! # node = "n1"                  # store.backend = "postgres" and s2s.dialback_secret
//! # nats = ["nats://127.0.0.1:4222"]
//! # heartbeat = "1s"
//! # failure_timeout = "3s"
//! # backlog = 10000              # stanzas held per unreachable node, then bounced
//! # c2s_sessions = "stay"        # or "redirect" (<see-other-host/> to the owner)
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
//! bidi = true                   # XEP-0288; per domain too (`bidi = false` for a misbehaving peer)
//! multiplex = true              # XEP-0220 §2.4: domains behind one SRV target share a stream
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
//!
//! # Files
//!
//! - `model.rs`: the validated configuration ([`Config`] and one struct per table) and its
//!   defaults.
//! - `file.rs`: the file as written (the serde structs) and its conversion into a
//!   [`Config`]: addresses, static targets, domain keys ([`Config::from_toml_str`],
//!   [`Config::load`]).
//! - `validate.rs`: [`Config::validate`], whose errors name the key.
//! - `materialize.rs`: [`Config::materialize`]: certificates, trust anchors and the
//!   dialback secret on disk ([`Materialized`]).
//! - `limits.rs`: `[limits]` ([`LimitsSection`]): flood limits, defaults and checks.
//! - `cluster.rs`: `[cluster]` ([`ClusterSection`]): node name, NATS servers, membership
//!   timings.
//! - `auth.rs`: `[auth]` ([`AuthSection`], [`LdapSection`]): its model, defaults and
//!   checks.
//! - `error.rs`: [`ConfigError`].

mod auth;
mod cluster;
mod error;
mod file;
mod limits;
mod materialize;
mod model;
mod validate;

pub use auth::{AuthBackend, AuthSection, LdapSection, SecretString};
pub use cluster::{
    is_subject_token, C2sSessions, ClusterSection, MAX_CLUSTER_BACKLOG, MAX_NODE_NAME,
};
pub use error::ConfigError;
pub use limits::{LimitsSection, MAX_AUTH_FAILURE_WINDOW, MAX_LIMIT};
pub use materialize::{DirectoryMaterial, Materialized};
pub use model::{
    C2sSection, CertificateEntry, Config, DnsSection, InboxSection, Listen, LogFormat, LogSection,
    MetricsSection, S2sSection, SecretBytes, ShutdownSection, StaticTarget, StoreBackend,
    StoreDurability, StoreSection, TlsConfig, MAX_OFFLINE_MESSAGES,
};

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

/// Largest `dns.max_in_flight` (DNS queries per shard).
pub const MAX_DNS_IN_FLIGHT: usize = 1 << 16;

/// Largest `inbox.capacity` (batches).
pub const MAX_INBOX_CAPACITY: usize = 1 << 20;

/// Largest `inbox.batch` (messages).
pub const MAX_INBOX_BATCH: usize = 1 << 16;

/// The file under `data_dir` holding the generated dialback secret (hexadecimal, mode 0600).
pub const DIALBACK_SECRET_FILE: &str = "dialback.secret";

/// The folder under `data_dir` holding generated self-signed certificates, as
/// `<domain>.crt` (PEM chain) and `<domain>.key` (PEM private key, mode 0600).
pub const CERTS_DIR: &str = "certs";
