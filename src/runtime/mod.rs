//! The runtime: shards, listeners, sockets, timers and hand-off. The only layer with I/O
//! and a clock (DESIGN.md "Layers").
//!
//! [`Server::start`] binds every listener (SO_REUSEPORT, one socket per shard per
//! address, so the kernel spreads accepted connections over the shards), then starts one
//! thread per shard, pinned to a core with `core_affinity`, each running its own
//! tokio-uring runtime (`shard.rs`). Shards share only read-only configuration
//! (`Shared`) and the bounded inbox mesh ([`crate::router::inbox`]).
//!
//! # Failure semantics of a stalled peer
//!
//! A remote server or client that stops reading costs only its own queue, for a bounded
//! time (DESIGN.md "Ownership", "Failure semantics"):
//!
//! - a remote domain's stanzas wait first in its stream (up to `s2s.send_queue_bytes` not
//!   yet taken by the socket), then in its queue (up to `s2s.queue_per_domain`); past
//!   that they are bounced at once with `resource-constraint` (RFC 6120 §8.3.3.18). No
//!   reader and no inbox pauses for it, so the congestion never crosses to another
//!   destination or another shard. The only shard-wide pause left is the shared store's
//!   backlog; readers also wait (never for one peer) while the cross-shard inboxes are
//!   full (`reads_paused_ms`).
//! - every stream's writer restarts a timer whenever its socket takes bytes; when
//!   `s2s.write_stall_timeout` / `c2s.write_stall_timeout` passes without one, the socket
//!   is shut down (which ends the write in flight, `tests/uring_write_stall.rs`), and
//!   the stanzas that never reached the socket, tracked by their end offset in the stream
//!   (`ConnState::unsent`), are bounced with `remote-server-timeout` (S2S; the domain then
//!   backs off) or handled as for an unavailable resource (C2S, RFC 6121 §8.5). When an
//!   authenticated outbound stream is lost otherwise, those same stanzas go first on the
//!   next stream instead.
//!
//! The protocol itself lives in the sans-IO core ([`crate::stream::s2s`]); this layer
//! feeds it bytes and time and carries out what it asks for, so it could be swapped for
//! another io_uring runtime (monoio, compio) without touching protocol code.

mod admin;
mod cluster_sink;
mod conn;
mod connect;
mod drain;
mod floods;
mod health;
pub mod idle;
mod io;
mod local;
mod msg;
mod outbox;
mod read_buffers;
mod remote;
mod s2s;
mod shard;
mod shard_metrics;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::sync::Notify;
use tracing::{info, info_span, warn};

use crate::auth::Directory;
use crate::cluster::nats::Inbound;
use crate::cluster::Cluster;
use crate::config::AuthBackend;
use crate::config::{Config, Materialized};
use crate::dns::{DnsConfig, S2sResolver, StaticTarget};
use crate::router;
use crate::router::inbox::mesh;
use crate::store::{Op, Outcome, StoreHandle};
use crate::stream::c2s::{C2sConfig, C2sSmConfig, C2sTimeouts, PasswordCheck};
use crate::stream::s2s::{PeerCertVerifier, S2sConfig, Timeouts};
use crate::stream::sm::AckPolicy;
use crate::tls::{self, CertifiedDomain, ClientAuth, DomainCertResolver};
use crate::xml::Limits;

pub use admin::{
    cluster_status_via_admin, directory_status_via_admin, ping_via_admin, status_via_admin,
    store_status_via_admin,
};
use io::ListenerKind;
use shard::{Shard, CURRENT};
pub(crate) use shard_metrics::{
    count_bytes, count_cluster_forwarded, count_cluster_received, count_stanza, count_static,
    metrics, StanzaDir,
};

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The cluster could not start: NATS unreachable (the URLs and the cause).
    #[error("cluster: {0}")]
    Cluster(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which listener (`listen.s2s`, ...).
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// TLS set-up failed (a certificate or key that rustls refuses).
    #[error("TLS: {0}")]
    Tls(String),
    /// The DNS resolver could not be built.
    #[error("DNS: {0}")]
    Dns(String),
    /// A shard thread could not be started.
    #[error("starting shard threads: {0}")]
    Thread(std::io::Error),
    /// The store (`<data_dir>/fedrouter.db`, or the PostgreSQL server at `store.url`)
    /// could not be opened: the file or redacted URL and the cause.
    #[error("store: {0}")]
    Store(String),
    /// The LDAP directory's thread could not be started (`[auth.ldap]`).
    #[error("directory: {0}")]
    Directory(String),
    /// A reload applied what it could; these settings need a restart.
    #[error("reloaded, but these settings need a restart and were kept as running: {0}")]
    Reload(String),
}

/// The outcome of an XEP-0199 server-to-server ping sent through the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PingOutcome {
    /// The remote server answered with a result.
    Pong {
        /// Round-trip time, including DNS, connection and authentication when the
        /// stream had to be set up.
        rtt: Duration,
    },
    /// The ping came back as an error stanza (a bounce from us or the peer's answer).
    Error {
        /// The RFC 6120 §8.3.3 condition, e.g. `remote-server-not-found`.
        condition: String,
        /// Time until the error arrived.
        rtt: Duration,
    },
}

/// Requests from outside the shards (admin endpoint, signal handler).
pub(crate) enum Control {
    Ping {
        from: String,
        to: String,
        reply: crossbeam_channel::Sender<PingOutcome>,
    },
    Shutdown,
    /// Send these outbound subscription requests again (`(user, contact)` bare JIDs):
    /// the unanswered ones stored, at start (see [`crate::store::Store::pending_out`]).
    Resend(Vec<(String, String)>),
    /// Send a copy of the shard's metrics, with its gauges filled in.
    Metrics(crossbeam_channel::Sender<crate::metrics::Metrics>),
    /// Send the shard's remote domains and their streams (JSON objects).
    Status(crossbeam_channel::Sender<Vec<serde_json::Value>>),
    /// Answer with the shard's id: it is turning its loop (`/health`, [`health::probe`]).
    Health(crossbeam_channel::Sender<usize>),
    /// Use this configuration from now on (SIGHUP); with the `[dns]` section to build a
    /// new S2S resolver from when it changed (the shard builds its own, see
    /// [`crate::dns`]: a resolver is never shared across shard threads).
    Reload(Arc<Shared>, Option<DnsConfig>),
    /// From the cluster's NATS thread: stanzas from other nodes, bounces, a new view of
    /// the members, outbox entries to send again.
    Cluster(Vec<Inbound>),
}

thread_local! {
    /// When the socket read being processed on this thread happened: stanzas written
    /// while it is set record their routing latency from it.
    static READ_AT: std::cell::Cell<Option<std::time::Instant>> =
        const { std::cell::Cell::new(None) };
}

thread_local! {
    /// The time of the unit of work being processed on this thread (a socket read, an
    /// inbox batch), if one is: see [`now`].
    static NOW: std::cell::Cell<Option<std::time::Instant>> =
        const { std::cell::Cell::new(None) };
}

/// The current time for per-stanza bookkeeping (hand-off latency, timestamps of queued
/// stanzas, cache expiry): the time the unit of work being processed started (the socket
/// read or inbox batch, set with [`set_now`]), else a fresh clock read. One clock read
/// per read or batch instead of several per stanza (`clock_gettime` was 3-4 % of the
/// router's CPU at saturation, benches/README.md "Router cost"). Stale by at most the
/// time the unit takes to process, which no await interrupts: well under a millisecond.
pub(crate) fn now() -> std::time::Instant {
    NOW.with(|c| c.get())
        .unwrap_or_else(std::time::Instant::now)
}

/// Fixes what [`now`] returns until the next call (`None`: read the clock again); returns
/// the old value, to be put back when the unit of work is done. Never held across an
/// `await`.
pub(crate) fn set_now(t: Option<std::time::Instant>) -> Option<std::time::Instant> {
    NOW.with(|c| c.replace(t))
}

/// The shards' io_uring set-up flags: `IORING_SETUP_COOP_TASKRUN` (Linux 5.19) where the
/// kernel has it. By default the kernel completes a socket operation in the shard's
/// thread by interrupting it with an inter-processor interrupt when it is running on
/// another core (`TWA_SIGNAL`); with this flag it only marks the work, which the thread
/// runs at its next system call (a shard makes several per turn) or wake-up, as it
/// still wakes a sleeping shard. On this 2-core VM those interrupts were about a fifth
/// of the router's CPU at saturation (`irqentry_exit_to_user_mode` under
/// `asm_sysvec_reschedule_ipi`, benches/README.md "Router cost"). Probed once: an older
/// kernel refuses the flag (`EINVAL`) and gets the default set-up.
fn uring_setup(builder: &mut tokio_uring::Builder) -> &mut tokio_uring::Builder {
    let mut b = tokio_uring::uring_builder();
    if coop_taskrun() {
        b.setup_coop_taskrun();
    }
    builder.uring_builder(&b)
}

/// Whether this kernel takes `IORING_SETUP_COOP_TASKRUN` (see [`uring_setup`]); probed
/// once per process with an 8-entry ring.
fn coop_taskrun() -> bool {
    static COOP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *COOP.get_or_init(|| {
        let ok = tokio_uring::uring_builder()
            .setup_coop_taskrun()
            .build(8)
            .is_ok();
        if !ok {
            info!("io_uring: IORING_SETUP_COOP_TASKRUN refused by this kernel; default set-up");
        }
        ok
    })
}

/// The read time of the stanza being processed, if any.
pub(crate) fn read_at() -> Option<std::time::Instant> {
    READ_AT.with(|c| c.get())
}

/// Sets the read time of the stanzas processed until the next call; returns the old one.
pub(crate) fn set_read_at(t: Option<std::time::Instant>) -> Option<std::time::Instant> {
    READ_AT.with(|c| c.replace(t))
}

/// Read-only state every shard shares.
pub(crate) struct Shared {
    pub config: Config,
    pub shards: usize,
    pub s2s: Arc<S2sConfig>,
    /// STARTTLS server side (no ALPN).
    pub tls_server: Arc<ServerConfig>,
    /// XEP-0368 direct TLS server side (ALPN `xmpp-server`).
    pub tls_server_direct: Arc<ServerConfig>,
    /// Client configurations by (local domain, verify, direct TLS).
    clients: HashMap<(String, bool, bool), Arc<ClientConfig>>,
    /// The C2S stream configuration (`[c2s]`).
    pub c2s: Arc<C2sConfig>,
    /// C2S STARTTLS server side (no client certificate requested).
    pub tls_c2s: Arc<ServerConfig>,
    /// The user and roster store's thread.
    pub store: StoreHandle,
    /// The LDAP directory's thread, with `auth.backend = "ldap"`.
    pub directory: Option<Directory>,
    /// Flood counts per remote domain and client address (`[limits]`): the one mutable
    /// table shards share, see [`floods`] for why. Kept across reloads.
    pub floods: Arc<floods::Floods>,
    /// The cluster this node belongs to (`[cluster]`): the view of live members that
    /// decides which node owns what, and the way to the others. Kept across reloads.
    pub cluster: Option<Arc<Cluster>>,
}

impl Shared {
    /// The TLS client configuration for a stream from `local` to `remote`: the remote's
    /// policy decides whether its certificate is verified; our certificate for `local`
    /// is offered for SASL EXTERNAL. Falls back to the first local domain's.
    pub fn client_tls(&self, local: &str, remote: &str, direct: bool) -> Option<Arc<ClientConfig>> {
        let verify = self
            .config
            .federation
            .for_domain(remote)
            .verify_certificates;
        self.clients
            .get(&(local.to_owned(), verify, direct))
            .or_else(|| {
                self.clients
                    .get(&(self.config.domains[0].clone(), verify, direct))
            })
            .cloned()
    }
}

/// The addresses the server actually listens on (port 0 in the configuration becomes
/// the port the kernel chose).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BoundAddrs {
    /// S2S (STARTTLS).
    pub s2s: Vec<SocketAddr>,
    /// S2S direct TLS.
    pub s2s_tls: Vec<SocketAddr>,
    /// C2S.
    pub c2s: Vec<SocketAddr>,
    /// Admin HTTP.
    pub admin: Option<SocketAddr>,
}

/// A running server: its shard threads and admin endpoint.
pub struct Server {
    threads: Vec<JoinHandle<()>>,
    store: StoreHandle,
    directory: Option<Directory>,
    /// The configuration running now (reload compares against it).
    running: Arc<Shared>,
    controls: Vec<(crossbeam_channel::Sender<Control>, Arc<Notify>)>,
    admin: Option<admin::Admin>,
    metrics_admin: Option<admin::Admin>,
    bound: BoundAddrs,
}

impl Server {
    /// Starts the server described by `config`, with the certificates and secrets
    /// `materialized` from it ([`Config::materialize`]). Returns once every listener is
    /// bound and every shard thread started.
    ///
    /// Errors: [`StartError`] naming what failed; nothing keeps running on error.
    pub fn start(config: Config, materialized: Materialized) -> Result<Server, StartError> {
        tls::install_default_provider();
        let n = config.shards.max(1);
        let opened = crate::store::open(&config).map_err(StartError::Store)?;
        let location = opened.location;
        let store = StoreHandle::spawn(opened.store, config.store.max_batch, config.store.queue);
        // The durable outbox: requests acknowledged to their senders but maybe not yet
        // stored or answered by the contact when the process last stopped.
        let resend = match store.call(Op::PendingOut) {
            Ok(Outcome::Pairs(p)) => p,
            Ok(_) => Vec::new(),
            Err(e) => return Err(StartError::Store(format!("{location}: {e}"))),
        };
        let directory = match (
            &config.auth.backend,
            &config.auth.ldap,
            &materialized.directory,
        ) {
            (AuthBackend::Ldap, Some(ldap), Some(material)) => {
                Some(Directory::spawn(ldap, material).map_err(StartError::Directory)?)
            }
            (AuthBackend::Ldap, _, _) => {
                return Err(StartError::Directory(
                    "auth.backend = \"ldap\" without [auth.ldap] materialized".into(),
                ))
            }
            (AuthBackend::Internal, _, _) => None,
        };
        // Pending inbound subscription requests per remote domain start from the store.
        let pending_in = match store.call(Op::PendingIn) {
            Ok(Outcome::Pairs(p)) => p,
            Ok(_) => Vec::new(),
            Err(e) => return Err(StartError::Store(format!("{location}: {e}"))),
        };
        let floods = Arc::new(floods::Floods::new(&config.domains, &pending_in));
        drop(pending_in);
        // The cluster: connected to NATS and the live members known before anything is
        // routed (ownership depends on them).
        let (cluster, attach) = match &config.cluster {
            Some(c) => {
                let c2s = c.c2s_address.clone().unwrap_or_else(|| {
                    config
                        .listen
                        .c2s
                        .first()
                        .map(|a| a.to_string())
                        .unwrap_or_default()
                });
                let (cluster, attach) =
                    crate::cluster::nats::start(c, c2s, n).map_err(StartError::Cluster)?;
                (Some(cluster), Some(attach))
            }
            None => (None, None),
        };
        let shared = Arc::new(build_shared(
            config,
            materialized,
            n,
            store,
            directory,
            floods,
            cluster,
        )?);
        let cfg = &shared.config;

        // Listeners: one SO_REUSEPORT socket per shard per address.
        let mut per_shard: Vec<Vec<(ListenerKind, std::net::TcpListener)>> =
            (0..n).map(|_| Vec::new()).collect();
        let mut bound = BoundAddrs::default();
        let sets: [(&Vec<SocketAddr>, ListenerKind, &'static str); 3] = [
            (&cfg.listen.s2s, ListenerKind::S2s, "listen.s2s"),
            (
                &cfg.listen.s2s_tls,
                ListenerKind::S2sDirectTls,
                "listen.s2s_tls",
            ),
            (&cfg.listen.c2s, ListenerKind::C2s, "listen.c2s"),
        ];
        for (addrs, kind, what) in sets {
            for &addr in addrs {
                let mut actual = addr;
                for (i, shard_listeners) in per_shard.iter_mut().enumerate() {
                    let l = bind_reuseport(actual).map_err(|source| StartError::Bind {
                        addr: actual,
                        what,
                        source,
                    })?;
                    if i == 0 {
                        actual = l.local_addr().map_err(|source| StartError::Bind {
                            addr,
                            what,
                            source,
                        })?;
                    }
                    shard_listeners.push((kind, l));
                }
                match kind {
                    ListenerKind::S2s => bound.s2s.push(actual),
                    ListenerKind::S2sDirectTls => bound.s2s_tls.push(actual),
                    ListenerKind::C2s => bound.c2s.push(actual),
                }
            }
        }

        let dns = dns_config(cfg);
        // Fail early on a resolver that cannot be built (each shard builds its own).
        S2sResolver::new(&dns).map_err(|e| StartError::Dns(e.to_string()))?;

        let inboxes = mesh(n, cfg.inbox.capacity, cfg.inbox.batch);
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let mut threads = Vec::with_capacity(n);
        let mut controls = Vec::with_capacity(n);
        let health = health::Health::new(n);
        let drain = drain::DrainBarrier::new(n);
        for ((i, inbox), listeners) in inboxes.into_iter().enumerate().zip(per_shard) {
            let (tx, rx) = crossbeam_channel::bounded(64);
            let wake = Arc::new(Notify::new());
            controls.push((tx, Arc::clone(&wake)));
            let shared = Arc::clone(&shared);
            let dns = dns.clone();
            let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
            let health = Arc::clone(&health);
            let drain = Arc::clone(&drain);
            let t = std::thread::Builder::new()
                .name(format!("shard-{i}"))
                .spawn(move || {
                    // Marks the shard stopped or panicked for `/health` when the thread ends.
                    let _ended = health.guard(i);
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    let span = info_span!("shard", id = i);
                    let _entered = span.enter();
                    let shard_span = span.clone();
                    let entries = (shared.config.s2s.max_unauthenticated_per_shard as u32 * 2)
                        .clamp(256, 32768);
                    uring_setup(tokio_uring::builder().entries(entries.next_power_of_two())).start(
                        async move {
                            let resolver = match S2sResolver::new(&dns) {
                                Ok(r) => r,
                                Err(e) => {
                                    warn!(error = %e, "DNS resolver");
                                    return;
                                }
                            };
                            let shard = Rc::new(Shard::new(
                                i, shared, rx, wake, resolver, drain, shard_span,
                            ));
                            CURRENT.with(|c| *c.borrow_mut() = Some(Rc::clone(&shard)));
                            Rc::clone(&shard).run(inbox, listeners, &health).await;
                            CURRENT.with(|c| c.borrow_mut().take());
                        },
                    );
                })
                .map_err(StartError::Thread)?;
            threads.push(t);
        }

        if let Some(attach) = attach {
            attach.attach(Box::new(cluster_sink::RuntimeSink {
                controls: controls.clone(),
                store: shared.store.clone(),
            }));
        }
        let mut per_shard_resend: Vec<Vec<(String, String)>> = vec![Vec::new(); n];
        // In a cluster, each node sends its own users' requests (the others', theirs).
        let view = shared.cluster.as_ref().map(|c| c.view());
        let resend = resend.into_iter().filter(|(user, _)| {
            view.as_ref().is_none_or(|v| {
                matches!(v.owner(&router::bare_key(user)), crate::cluster::Owner::Me)
            })
        });
        for (user, contact) in resend {
            per_shard_resend[router::shard_of(&router::bare_key(&user), n)].push((user, contact));
        }
        for ((tx, wake), pairs) in controls.iter().zip(per_shard_resend) {
            if !pairs.is_empty() {
                info!(
                    count = pairs.len(),
                    "sending unanswered subscription requests again"
                );
                let _ = tx.try_send(Control::Resend(pairs));
                wake.notify_one();
            }
        }

        let admin = match cfg.listen.admin {
            Some(addr) => {
                let routes = controls.clone();
                let a = admin::Admin::start(addr, Arc::clone(&shared), routes, Arc::clone(&health))
                    .map_err(|source| StartError::Bind {
                        addr,
                        what: "listen.admin",
                        source,
                    })?;
                bound.admin = Some(a.addr());
                Some(a)
            }
            None => None,
        };
        // A separate metrics listener when `metrics.listen` differs from the admin one.
        let metrics_admin = match cfg.metrics.listen.filter(|m| Some(*m) != cfg.listen.admin) {
            Some(addr) => Some(
                admin::Admin::start(addr, Arc::clone(&shared), controls.clone(), health).map_err(
                    |source| StartError::Bind {
                        addr,
                        what: "metrics.listen",
                        source,
                    },
                )?,
            ),
            None => None,
        };
        info!(shards = n, io_uring_coop_taskrun = coop_taskrun(), s2s = ?bound.s2s, s2s_tls = ?bound.s2s_tls, c2s = ?bound.c2s, admin = ?bound.admin, domains = ?shared.config.domains, "listening");
        Ok(Server {
            store: shared.store.clone(),
            directory: shared.directory.clone(),
            running: Arc::clone(&shared),
            threads,
            controls,
            admin,
            metrics_admin,
            bound,
        })
    }

    /// Where the server listens.
    pub fn addrs(&self) -> &BoundAddrs {
        &self.bound
    }

    /// Starts a graceful shutdown (RFC 6120 §4.4 close on every stream, then the
    /// `shutdown.drain_timeout` deadline). Returns at once; [`Server::join`] waits.
    pub fn shutdown(&self) {
        if let Some(c) = &self.running.cluster {
            c.leave();
        }
        for (tx, wake) in &self.controls {
            let _ = tx.try_send(Control::Shutdown);
            wake.notify_one();
        }
    }

    /// Reloads certificates, trust anchors and federation policy (SIGHUP) without
    /// dropping streams: every shard switches to the new configuration for streams it
    /// opens or accepts from now on; open streams keep the configuration they started
    /// with. A changed `[dns]` section gives every shard a new S2S resolver (RFC 6120
    /// §3.2 look-ups started from now on use it; look-ups in flight finish on the old
    /// one, whose cache is dropped with it). Settings that need a restart (`domains`,
    /// `shards`, `data_dir`, `[listen]`, `[store]`, `[inbox]`) are kept as running and
    /// named in the error.
    ///
    /// Errors: [`StartError::Tls`] when the new certificates do not load, or
    /// [`StartError::Dns`] when no resolver can be built from the new `[dns]` (nothing
    /// changes); [`StartError::Reload`] naming the settings left unchanged (the rest is
    /// applied).
    pub fn reload(
        &mut self,
        mut config: Config,
        materialized: Materialized,
    ) -> Result<(), StartError> {
        let old = &self.running.config;
        let mut kept = Vec::new();
        if config.domains != old.domains {
            kept.push("domains");
            config.domains = old.domains.clone();
        }
        if config.shards != old.shards {
            kept.push("shards");
            config.shards = old.shards;
        }
        if config.data_dir != old.data_dir {
            kept.push("data_dir");
            config.data_dir = old.data_dir.clone();
        }
        if config.listen != old.listen {
            kept.push("listen");
            config.listen = old.listen.clone();
        }
        if config.store != old.store {
            kept.push("store");
            config.store = old.store.clone();
        }
        if config.inbox != old.inbox {
            kept.push("inbox");
            config.inbox = old.inbox;
        }
        if config.auth != old.auth {
            kept.push("auth");
            config.auth = old.auth.clone();
        }
        // A new `[dns]`: check that a resolver can be built before anything changes
        // (each shard then builds its own from it, as at start).
        let dns = (config.dns != old.dns).then(|| dns_config(&config));
        if let Some(dns) = &dns {
            S2sResolver::new(dns).map_err(|e| StartError::Dns(e.to_string()))?;
        }
        let n = self.running.shards;
        let shared = Arc::new(build_shared(
            config,
            materialized,
            n,
            self.store.clone(),
            self.directory.clone(),
            Arc::clone(&self.running.floods),
            self.running.cluster.clone(),
        )?);
        for (tx, wake) in &self.controls {
            let _ = tx.send_timeout(
                Control::Reload(Arc::clone(&shared), dns.clone()),
                Duration::from_secs(5),
            );
            wake.notify_one();
        }
        self.running = shared;
        if kept.is_empty() {
            Ok(())
        } else {
            Err(StartError::Reload(kept.join(", ")))
        }
    }

    /// Waits for every shard to stop.
    pub fn join(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // Every shard has stopped: what they stored is committed; close the database.
        self.store.shutdown();
        if let Some(d) = self.directory.take() {
            d.shutdown();
        }
        if let Some(a) = self.admin.take() {
            a.stop();
        }
        if let Some(a) = self.metrics_admin.take() {
            a.stop();
        }
    }
}

/// The resolver settings of `config`'s `[dns]` section.
fn dns_config(config: &Config) -> DnsConfig {
    DnsConfig {
        nameservers: config.dns.nameservers.clone(),
        timeout: config.dns.timeout,
        static_overrides: config
            .dns
            .static_targets
            .iter()
            .map(|(d, t)| {
                (
                    d.clone(),
                    StaticTarget {
                        host: t.host.clone(),
                        port: t.port,
                    },
                )
            })
            .collect(),
        cache_size: config.dns.cache_size,
        max_in_flight: config.dns.max_in_flight,
    }
}

fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

fn build_shared(
    config: Config,
    m: Materialized,
    shards: usize,
    store: StoreHandle,
    directory: Option<Directory>,
    floods: Arc<floods::Floods>,
    cluster: Option<Arc<Cluster>>,
) -> Result<Shared, StartError> {
    let tls_err = |e: tls::TlsError| StartError::Tls(e.to_string());
    let mut resolver = DomainCertResolver::new();
    for c in &m.certificates {
        resolver.add(c).map_err(tls_err)?;
    }
    resolver.set_default(&config.domains[0]);
    let resolver = Arc::new(resolver);
    let tls_server = tls::server_config(Arc::clone(&resolver), ClientAuth::Request, &[]);
    let tls_server_direct = tls::server_config(
        Arc::clone(&resolver),
        ClientAuth::Request,
        &[tls::ALPN_XMPP_SERVER],
    );
    let tls_c2s = tls::server_config(Arc::clone(&resolver), ClientAuth::None, &[]);

    let mut roots = RootCertStore::empty();
    for der in &m.trust {
        if let Err(e) = roots.add(der.clone()) {
            warn!(error = %e, "skipping an unusable trust anchor");
        }
    }
    if config.tls.system_roots {
        warn!("tls.system_roots: system trust anchors are not loaded by this build; list CA files in tls.trust");
    }
    let roots = (!roots.is_empty()).then(|| Arc::new(roots));

    let certs: HashMap<&str, &CertifiedDomain> =
        m.certificates.iter().map(|c| (c.domain(), c)).collect();
    let mut clients = HashMap::new();
    for local in &config.domains {
        let ours = certs.get(local.as_str()).copied();
        for verify in [false, true] {
            for direct in [false, true] {
                let alpn: &[&[u8]] = if direct {
                    &[tls::ALPN_XMPP_SERVER]
                } else {
                    &[]
                };
                match tls::client_config(roots.clone(), verify, ours, alpn) {
                    Ok(c) => {
                        clients.insert((local.clone(), verify, direct), c);
                    }
                    Err(tls::TlsError::NoTrustRoots) => {}
                    Err(e) => return Err(tls_err(e)),
                }
            }
        }
    }

    let s = &config.s2s;
    let s2s = S2sConfig {
        local_domains: config.domains.clone(),
        certificate_domains: m
            .certificates
            .iter()
            .map(|c| c.domain().to_owned())
            .collect(),
        policy: config.federation.clone(),
        dialback_secret: m.dialback_secret.clone(),
        stream_id_key: rand::random(),
        cert_verifier: roots
            .clone()
            .map(|roots| Arc::new(tls::RootsVerifier::new(roots)) as Arc<dyn PeerCertVerifier>),
        limits: s.xml_limits(),
        timeouts: Timeouts {
            negotiation: s.negotiation_timeout,
            stream_header: Some(s.stream_header_timeout),
            verify: s.verify_timeout,
            keepalive: s.keepalive,
            idle: s.idle_timeout,
            close: Duration::from_secs(5).min(config.shutdown.drain_timeout),
        },
        stream_management: s.stream_management.then_some(AckPolicy {
            every: s.sm_ack_every,
            after: s.sm_ack_after,
        }),
    };
    let cc = &config.c2s;
    let mut c2s = C2sConfig::new(config.domains.clone(), rand::random());
    c2s.certificate_domains = m
        .certificates
        .iter()
        .map(|c| c.domain().to_owned())
        .collect();
    c2s.tls_required = cc.tls_required;
    c2s.limits = Limits {
        max_element_size: cc.max_stanza_size,
        ..Limits::default()
    };
    c2s.timeouts = C2sTimeouts {
        negotiation: cc.negotiation_timeout,
        // No `c2s` key: the client's header is a negotiation step (`c2s.negotiation_timeout`).
        stream_header: None,
        keepalive: cc.keepalive,
        idle: None,
        close: Duration::from_secs(5).min(config.shutdown.drain_timeout),
    };
    c2s.max_auth_failures = cc.max_auth_failures;
    c2s.auth_failure_delay = cc.auth_failure_delay;
    c2s.registration = cc.allow_registration;
    c2s.mechanisms = cc
        .sasl_mechanisms
        .iter()
        .filter_map(|m| crate::stream::c2s::Mechanism::from_name(m))
        .collect();
    c2s.stream_management = cc.stream_management.then_some(C2sSmConfig {
        ack: AckPolicy {
            every: cc.sm_ack_every,
            after: cc.sm_ack_after,
        },
        max_resume: cc.resume_timeout,
    });
    if directory.is_some() {
        c2s.password_check = PasswordCheck::External;
    }
    Ok(Shared {
        shards,
        s2s: Arc::new(s2s),
        c2s: Arc::new(c2s),
        tls_c2s,
        store,
        directory,
        tls_server,
        tls_server_direct,
        clients,
        config,
        floods,
        cluster,
    })
}

/// Raises the soft open-file limit (RLIMIT_NOFILE) to the hard one: every S2S and C2S
/// stream is a socket. Returns `(soft, hard)` after the attempt; `(0, 0)` when the limit
/// cannot be read. `fedrouter serve` and `loadgen` call it at start.
pub fn raise_fd_limit() -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an initialised struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return (0, 0);
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                r = want;
            }
        }
    }
    (r.rlim_cur, r.rlim_max)
}
