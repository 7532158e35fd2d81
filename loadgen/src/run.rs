//! A run: set-up (DNS zone, SUT, peers, clients, subscriptions), warm-up, the measured
//! scenario at a target rate (open loop) or as fast as it goes (closed loop), the drain,
//! and the report.
//!
//! ```text
//!  zone ─► SUT ─► peers (streams authenticated: stream_setup) ─► clients logged in
//!    ─► set-up subscriptions (pairs to `both`) ─► warm-up ─► measured ─► drain ─► report
//! ```
//!
//! Operations (one scenario step each, every stanza tracked):
//!
//! | op | what | deliveries |
//! |---|---|---|
//! | subscribe | remote user subscribes to its local user; the client approves and subscribes back; the peer approves | 4 (`subscribe`) + completion time |
//! | presence (local) | a local user changes presence; the SUT fans it out to every remote contact in `both` | one per contact (`presence`) |
//! | presence (remote) | a remote contact sends presence to its local user | 1 |
//! | message | a message either way, answered by the other side (round trip) | 2 (`message`) |
//! | churn | a peer server closes its stream to the SUT and opens a new one; one of its users sends a message meanwhile | `stream_setup` + 2 |

use std::fs::File;
use std::io::{self, BufWriter, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use rustls::RootCertStore;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::c2s::{ClientOptions, TlsMode};
use crate::clients::Clients;
use crate::cpu::{self, SutCpu};
use crate::dns;
use crate::peers::{PeerAuth, PeerOptions, Peers};
use crate::report::{steps, IntervalLog, Recorder};
use crate::stanzas;
use crate::sut::{Embedded, EmbeddedOptions, Profile};
use crate::targets::SutS2s;
use crate::topology::Topology;
use crate::world::{PairState, World, ALL_STEPS};

pub use crate::outcome::{open_fds, peak_rss_kib, write_report, Outcome, Second, SetupTimes};
pub use crate::scenario::{Mix, Scenario};

use fedrouter::stream::TlsPolicy;
use fedrouter_testkit::TestCa;

/// Open or closed loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// Operations started at this rate (per second) whatever the SUT does.
    Open {
        /// Operations per second.
        rate: f64,
    },
    /// This many operations in flight; a new one starts when one ends.
    Closed {
        /// Operations in flight.
        concurrency: usize,
    },
}

/// Which server is tested.
#[derive(Debug, Clone)]
pub enum Target {
    /// fedrouter, started in this process on `ip`.
    Embedded {
        /// Its loopback address.
        ip: IpAddr,
        /// Its shard threads.
        shards: usize,
    },
    /// Any server, already running with the local users created; several addresses for a
    /// cluster of nodes.
    External {
        /// Its S2S addresses with their SRV weights (peers' outbound streams, RFC 2782
        /// order per connection). Not empty.
        s2s: Vec<SutS2s>,
        /// Its C2S addresses (clients, round robin; `<see-other-host/>` followed). Not
        /// empty.
        c2s: Vec<SocketAddr>,
        /// Roots for its certificate; `None`: no certificate check on C2S.
        roots: Option<Arc<RootCertStore>>,
    },
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Names and pairs.
    pub topo: Topology,
    /// What to run.
    pub scenario: Scenario,
    /// `mixed` weights.
    pub mix: Mix,
    /// Open or closed loop.
    pub load: Load,
    /// Warm-up (not measured).
    pub warmup: Duration,
    /// Measured duration.
    pub duration: Duration,
    /// After the measured duration: how long stanzas in flight may take to arrive.
    pub drain: Duration,
    /// Bound of each set-up phase (streams, logins, subscriptions).
    pub setup_timeout: Duration,
    /// The SUT.
    pub target: Target,
    /// Peers' STARTTLS use.
    pub peer_tls: TlsPolicy,
    /// Peers' authentication.
    pub peer_auth: PeerAuth,
    /// Peers use XEP-0198 stream management on every stream (see [`PeerOptions::sm`]).
    pub peer_sm: bool,
    /// The peers' cadence of `<r/>` requests with `peer_sm`.
    pub peer_sm_acks: fedrouter::stream::sm::AckPolicy,
    /// Peers use XEP-0288 bidirectional streams (see [`PeerOptions::bidi`]).
    pub peer_bidi: bool,
    /// The embedded SUT multiplexes remote domains by SRV target (XEP-0220 §2.4; its
    /// `[federation.default] multiplex`).
    pub sut_multiplex: bool,
    /// Churn resets streams (TCP RST) instead of closing them (see
    /// [`PeerOptions::churn_reset`]).
    pub churn_reset: bool,
    /// Where the DNS zone is served (port 0 picks one).
    pub dns_bind: SocketAddr,
    /// Also write the zone as a file here.
    pub zone_file: Option<PathBuf>,
    /// Output directory (JSON, `.hgrm`, interval log, SVG, CA).
    pub out_dir: PathBuf,
    /// Local users' password.
    pub password: String,
    /// Concurrent logins.
    pub login_parallel: usize,
    /// Seed of the operation choices.
    pub seed: u64,
    /// Show the live progress bar (stderr).
    pub progress: bool,
    /// Most deliveries in flight before the open loop skips operations.
    pub max_in_flight: u64,
    /// SUT processes whose CPU (utime + stime, all threads) is read at the start and the
    /// end of the measured window ([`crate::cpu`]); empty: none.
    pub sut_pids: Vec<u32>,
    /// Kill one SUT process (SIGKILL) during the measured window: a cluster node's death.
    pub kill: Option<Kill>,
}

/// A SUT process killed during the run (`--kill-pid`, `--kill-at`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kill {
    /// The process.
    pub pid: u32,
    /// When, from the start of the measured window (after the warm-up).
    pub at: Duration,
}

/// Errors that end a run before it measured anything.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// Set-up failed (the message says what).
    #[error("{0}")]
    Setup(String),
    /// An output could not be written.
    #[error("output: {0}")]
    Output(#[from] io::Error),
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Subscribe(u32),
    PresenceLocal(u32),
    PresenceRemote(u32),
    MessageFromLocal(u32),
    MessageFromRemote(u32),
    Churn(u32),
}

struct Driver {
    world: Arc<World>,
    peers: Peers,
    clients: Clients,
    rng: StdRng,
    scenario: Scenario,
    mix: Mix,
    /// Next reserved pair for subscribe operations, and the end of the reserve (indices of
    /// this process's pairs, [`Topology::own_pair`]).
    next_fresh: u32,
    fresh_end: u32,
    /// `subscribe` operations of the mixed scenario that ran as presence because every
    /// fresh pair was used (reported, so a table never shows a mix it did not run).
    subscribe_as_presence: u64,
    slot: usize,
}

impl Driver {
    fn pick(&mut self) -> Option<Op> {
        let t = &self.world.topo;
        // This process's pairs only (all of them in one process): indices `0 .. pairs`
        // mapped by `own_pair`.
        let pairs = t.own_pairs();
        let kind = match self.scenario {
            Scenario::Subscribe => 2,
            Scenario::Presence => 0,
            Scenario::Message => 1,
            Scenario::Churn => 3,
            Scenario::Mixed => {
                let m = self.mix;
                let total = m.presence + m.message + m.subscribe + m.churn;
                let x = self.rng.random_range(0..total);
                if x < m.presence {
                    0
                } else if x < m.presence + m.message {
                    1
                } else if x < m.presence + m.message + m.subscribe {
                    2
                } else {
                    3
                }
            }
        };
        let kind = if kind == 2 && self.next_fresh >= self.fresh_end {
            if self.scenario == Scenario::Subscribe {
                return None;
            }
            self.subscribe_as_presence += 1;
            0
        } else {
            kind
        };
        Some(match kind {
            0 => {
                // Presence over a pair in `both`: bounded tries.
                for _ in 0..16 {
                    let r = t.own_pair(self.rng.random_range(0..pairs));
                    if self.world.pairs.state(r) == PairState::Both {
                        return Some(if self.rng.random_bool(0.5) {
                            Op::PresenceLocal(t.pair_local(r))
                        } else {
                            Op::PresenceRemote(r)
                        });
                    }
                }
                let r = t.own_pair(self.rng.random_range(0..pairs));
                Op::MessageFromRemote(r)
            }
            1 => {
                let r = t.own_pair(self.rng.random_range(0..pairs));
                if self.rng.random_bool(0.5) {
                    Op::MessageFromLocal(r)
                } else {
                    Op::MessageFromRemote(r)
                }
            }
            2 => {
                let r = t.own_pair(self.next_fresh);
                self.next_fresh += 1;
                Op::Subscribe(r)
            }
            _ => Op::Churn(t.own_server(self.rng.random_range(0..self.peers.servers()))),
        })
    }

    async fn issue(&self, op: Op, permit: Option<OwnedSemaphorePermit>) {
        let w = &self.world;
        let t = &w.topo;
        let slot = self.slot;
        match op {
            Op::Subscribe(r) => {
                w.pairs.start(r, w.clock().now_us());
                let id = w.track(slot, steps::SUBSCRIBE, 1, false, permit).render();
                let k = t.pair_local(r);
                let bytes = stanzas::subscription(
                    "subscribe",
                    Some(&t.remote_jid(r)),
                    &t.local_jid(k),
                    &id,
                );
                self.peers.send(t.pair_domain(r), bytes).await;
            }
            Op::PresenceLocal(k) => {
                let n = w.pairs.both_of(k);
                let id = w.track(slot, steps::PRESENCE, n, false, permit).render();
                self.clients
                    .send(k, stanzas::presence(None, None, &id, "busy"))
                    .await;
            }
            Op::PresenceRemote(r) => {
                let k = t.pair_local(r);
                let id = w.track(slot, steps::PRESENCE, 1, false, permit).render();
                let from = format!("{}/lg", t.remote_jid(r));
                let bytes = stanzas::presence(Some(&from), Some(&t.local_jid(k)), &id, "away");
                self.peers.send(t.pair_domain(r), bytes).await;
            }
            Op::MessageFromLocal(r) => {
                let k = t.pair_local(r);
                let id = w.track(slot, steps::MESSAGE, 1, true, permit).render();
                self.clients
                    .send(k, stanzas::message(None, &t.remote_jid(r), &id, "ping"))
                    .await;
            }
            Op::MessageFromRemote(r) => self.message_from_remote(r, permit).await,
            Op::Churn(s) => {
                self.peers.churn(s).await;
                let d = t.server_domains(s).start;
                let r = d * t.users_per_peer;
                self.message_from_remote(r, permit).await;
            }
        }
    }

    async fn message_from_remote(&self, r: u32, permit: Option<OwnedSemaphorePermit>) {
        let w = &self.world;
        let t = &w.topo;
        let k = t.pair_local(r);
        let id = w.track(self.slot, steps::MESSAGE, 1, true, permit).render();
        let from = format!("{}/lg", t.remote_jid(r));
        let bytes = stanzas::message(Some(&from), &t.local_jid(k), &id, "ping");
        self.peers.send(t.pair_domain(r), bytes).await;
    }
}

fn bar(progress: bool, len: u64, what: &str) -> ProgressBar {
    let pb = if progress {
        ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(4))
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_prefix(what.to_owned());
    pb
}

/// Runs everything; call inside a multi-threaded tokio runtime.
///
/// Errors: set-up failures ([`RunError::Setup`]) and outputs that cannot be written. Loss
/// is not an error: it is in [`Outcome::summary`]'s accounting.
pub async fn run(opts: RunOptions) -> Result<Outcome, RunError> {
    let setup = |m: String| RunError::Setup(m);
    std::fs::create_dir_all(&opts.out_dir)?;
    let mut files = Vec::new();
    let topo = opts.topo.clone();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let world = Arc::new(World::new(topo.clone(), 4 * workers));

    // Certificates: loadgen's CA for the peers, written out for the SUT to trust.
    let peer_ca = if opts.peer_tls != TlsPolicy::Disabled || opts.peer_auth == PeerAuth::External {
        let ca = TestCa::new("loadgen peers CA").map_err(|e| setup(e.to_string()))?;
        let path = opts.out_dir.join("peers-ca.pem");
        std::fs::write(&path, ca.ca_cert_pem())?;
        files.push(path);
        Some(Arc::new(ca))
    } else {
        None
    };

    // DNS.
    let sut_s2s_known = match &opts.target {
        Target::External { s2s, .. } => s2s.clone(),
        Target::Embedded { ip, .. } => vec![SutS2s {
            addr: SocketAddr::new(*ip, 5269),
            weight: crate::targets::DEFAULT_WEIGHT,
        }],
    };
    let records = dns::records(&topo, &sut_s2s_known);
    if let Some(path) = &opts.zone_file {
        std::fs::write(path, dns::to_zone_file(&records))?;
        files.push(path.clone());
    }
    // A child of a split run (`--procs`) serves no DNS: its parent answers for everyone.
    let child = topo.shard.count > 1;
    let zone = if child {
        None
    } else {
        Some(
            dns::serve(opts.dns_bind, records)
                .map_err(|e| setup(format!("DNS server on {}: {e}", opts.dns_bind)))?,
        )
    };

    // The SUT.
    let (embedded, sut_s2s, sut_c2s, sut_roots) = match &opts.target {
        Target::Embedded { ip, shards } => {
            let e = Embedded::start(&EmbeddedOptions {
                domain: topo.sut_domain.clone(),
                ip: *ip,
                shards: *shards,
                nameserver: zone
                    .as_ref()
                    .ok_or_else(|| setup("a child of a split run needs an external SUT".into()))?
                    .addr(),
                local_users: topo.local_users,
                password: opts.password.clone(),
                profile: match (opts.peer_auth, opts.peer_tls) {
                    (PeerAuth::External, _) => Profile::Strict,
                    (_, TlsPolicy::Disabled) => Profile::Google,
                    _ => Profile::Webex,
                },
                peer_ca_pem: peer_ca.as_ref().map(|c| c.ca_cert_pem()),
                multiplex: opts.sut_multiplex,
            })
            .map_err(setup)?;
            let s2s = vec![SutS2s {
                addr: e.s2s,
                weight: crate::targets::DEFAULT_WEIGHT,
            }];
            let (c2s, roots) = (vec![e.c2s], Some(e.roots.clone()));
            (Some(e), s2s, c2s, roots)
        }
        Target::External { s2s, c2s, roots } => (None, s2s.clone(), c2s.clone(), roots.clone()),
    };
    if sut_s2s.is_empty() || sut_c2s.is_empty() {
        return Err(setup("no SUT S2S or C2S address".into()));
    }

    // Peers.
    let t_peers = Instant::now();
    let peers = Peers::start(
        world.clone(),
        PeerOptions {
            sut_s2s: sut_s2s.clone(),
            tls: opts.peer_tls,
            auth: opts.peer_auth,
            ca: peer_ca.clone(),
            sut_roots: sut_roots.clone(),
            connect_timeout: Duration::from_secs(5),
            sm: opts.peer_sm,
            sm_acks: opts.peer_sm_acks,
            churn_reset: opts.churn_reset,
            bidi: opts.peer_bidi,
        },
    )
    .await
    .map_err(|e| setup(e.to_string()))?;
    let own_domains = topo.own_domains();
    let pb = bar(opts.progress, u64::from(own_domains), "streams");
    let until = Instant::now() + opts.setup_timeout;
    while peers.ready_domains() < own_domains && Instant::now() < until {
        pb.set_position(u64::from(peers.ready_domains()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pb.finish_and_clear();
    if peers.ready_domains() < own_domains {
        let ready = peers.ready_domains();
        peers.stop(Duration::from_secs(2)).await;
        return Err(setup(format!(
            "only {ready} of {} peer domains authenticated their stream to the SUT within {:?} \
             ({} authentication failures)",
            own_domains,
            opts.setup_timeout,
            world.auth_failures.load(Ordering::Relaxed)
        )));
    }
    let streams_up = t_peers.elapsed();

    // Clients.
    let t_login = Instant::now();
    let clients = Clients::login_all(
        world.clone(),
        ClientOptions {
            addr: sut_c2s[0],
            domain: topo.sut_domain.clone(),
            tls: TlsMode::Required { roots: sut_roots },
            timeout: Duration::from_secs(10),
        },
        sut_c2s.clone(),
        opts.password.clone(),
        opts.login_parallel,
    );
    let clients = match tokio::time::timeout(opts.setup_timeout, clients).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            peers.stop(Duration::from_secs(2)).await;
            return Err(setup(format!("login failed: {e}")));
        }
        Err(_) => {
            peers.stop(Duration::from_secs(2)).await;
            return Err(setup("logins did not finish in time".into()));
        }
    };
    let logins = t_login.elapsed();

    // Which pairs are subscribed before measuring.
    let pairs = topo.own_pairs();
    let presubscribed = match opts.scenario {
        Scenario::Presence => pairs,
        Scenario::Mixed => pairs - pairs / 5,
        _ => 0,
    };
    let mut driver = Driver {
        world: world.clone(),
        peers,
        clients,
        rng: StdRng::seed_from_u64(opts.seed),
        scenario: opts.scenario,
        mix: opts.mix,
        next_fresh: 0,
        fresh_end: presubscribed,
        subscribe_as_presence: 0,
        slot: world.slot(),
    };
    let mut warm = Recorder::with_steps(ALL_STEPS);
    let t_subs = Instant::now();
    if presubscribed > 0 {
        let pb = bar(opts.progress, u64::from(presubscribed), "subscribe");
        let sem = Arc::new(Semaphore::new(512));
        let until = Instant::now() + opts.setup_timeout;
        for r in 0..presubscribed {
            let permit =
                match tokio::time::timeout_at(until.into(), sem.clone().acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    _ => break,
                };
            driver
                .issue(Op::Subscribe(topo.own_pair(r)), Some(permit))
                .await;
            if r % 256 == 0 {
                pb.set_position(world.pairs.both_total());
            }
        }
        while world.pairs.both_total() < u64::from(presubscribed) && Instant::now() < until {
            pb.set_position(world.pairs.both_total());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        pb.finish_and_clear();
        if world.pairs.both_total() < u64::from(presubscribed) {
            eprintln!(
                "loadgen: only {} of {presubscribed} subscriptions completed during set-up",
                world.pairs.both_total()
            );
        }
    }
    let subs_time = t_subs.elapsed();
    driver.next_fresh = presubscribed;
    driver.fresh_end = pairs;
    eprintln!(
        "loadgen: {} peer domains ({} servers) authenticated in {:.2} s; {} clients logged in \
         in {:.2} s; {presubscribed} subscriptions in {:.2} s",
        own_domains,
        topo.own_servers(),
        streams_up.as_secs_f64(),
        topo.own_locals(),
        logins.as_secs_f64(),
        subs_time.as_secs_f64()
    );
    warm.merge(&world.take_interval());
    let fds_at_ready = open_fds();
    if child {
        // Set-up is done: tell the parent and wait until every child's is, so that all
        // measure the same window.
        crate::procs::ready_and_wait_go(opts.setup_timeout * 3 + crate::procs::MARGIN)
            .await
            .map_err(setup)?;
    }

    // Warm-up then measurement.
    let hlog_path = opts.out_dir.join("intervals.hlog");
    let mut hlog = IntervalLog::new(
        BufWriter::new(File::create(&hlog_path)?),
        SystemTime::now(),
        &format!(
            "loadgen {} against {}",
            opts.scenario.name(),
            topo.sut_domain
        ),
    )
    .map_err(|e| setup(e.to_string()))?;
    files.push(hlog_path);
    let mut measured = Recorder::with_steps(ALL_STEPS);
    let closed = match opts.load {
        Load::Closed { concurrency } => Some(Arc::new(Semaphore::new(concurrency.max(1)))),
        Load::Open { .. } => None,
    };
    let total = opts.warmup + opts.duration;
    let pb = bar(opts.progress, total.as_secs().max(1), opts.scenario.name());
    let start = Instant::now();
    let measure_from = start + opts.warmup;
    let end = start + total;
    let mut issued: u64 = 0;
    let mut ops_measured: u64 = 0;
    let mut skipped: u64 = 0;
    let mut next_interval = start + Duration::from_secs(1);
    let mut last_interval = start;
    let mut last_in = world.stanzas_in.load(Ordering::Relaxed);
    let mut exhausted = false;
    let mut cpu_window: Option<cpu::Window> = None;
    let mut stanzas_at_measure: Option<u64> = None;
    let mut seconds: Vec<Second> = Vec::new();
    let kill_at = opts.kill.map(|k| (k.pid, measure_from + k.at));
    let mut killed_at_s = None;
    let mut killed_at_unix_s = None;
    'run: while Instant::now() < end {
        let now = Instant::now();
        if let Some((pid, at)) = kill_at {
            if killed_at_s.is_none() && now >= at {
                killed_at_s = Some(signed_secs(now, measure_from));
                killed_at_unix_s = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs_f64());
                if let Some(w) = cpu_window.as_mut() {
                    w.freeze(pid);
                }
                kill(pid);
            }
        }
        if stanzas_at_measure.is_none() && now >= measure_from {
            stanzas_at_measure = Some(world.stanzas_in.load(Ordering::Relaxed));
        }
        if cpu_window.is_none() && now >= measure_from {
            cpu_window = Some(cpu::Window::start(
                &opts.sut_pids,
                world.stanzas_in.load(Ordering::Relaxed),
            ));
        }
        if now >= next_interval {
            let rec = world.take_interval();
            if now > measure_from {
                hlog.write_interval(&rec, last_interval - start, now - last_interval)
                    .map_err(|e| setup(e.to_string()))?;
                measured.merge(&rec);
            } else {
                warm.merge(&rec);
            }
            let stanzas_in = world.stanzas_in.load(Ordering::Relaxed);
            let rate = (stanzas_in - last_in) as f64 / (now - last_interval).as_secs_f64();
            seconds.push(Second {
                t_s: signed_secs(now, measure_from),
                stanzas_in_per_s: rate,
                in_flight: world.tracker.in_flight(),
                redirects: world.redirects.load(Ordering::Relaxed),
                relogins: world.relogins.load(Ordering::Relaxed),
                unexpected_closes: world.unexpected_closes.load(Ordering::Relaxed),
            });
            pb.set_position((now - start).as_secs());
            pb.set_message(format!(
                "{}{rate:.0} stanzas/s in, {} in flight",
                if now < measure_from { "warm-up: " } else { "" },
                world.tracker.in_flight()
            ));
            last_in = stanzas_in;
            last_interval = now;
            next_interval = now + Duration::from_secs(1);
        }
        match (opts.load, &closed) {
            (Load::Open { rate }, _) => {
                let due = (rate * (now - start).as_secs_f64()) as u64;
                // Bounded: at most one second's worth of operations per turn.
                let mut n = 0;
                while issued < due && n < rate.max(1.0) as u64 {
                    if world.tracker.in_flight() > opts.max_in_flight {
                        skipped += due - issued;
                        issued = due;
                        break;
                    }
                    let Some(op) = driver.pick() else {
                        exhausted = true;
                        break 'run;
                    };
                    driver.issue(op, None).await;
                    issued += 1;
                    n += 1;
                    if now >= measure_from {
                        ops_measured += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (Load::Closed { .. }, Some(sem)) => {
                let wait = next_interval.min(end);
                match tokio::time::timeout_at(wait.into(), sem.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => {
                        let Some(op) = driver.pick() else {
                            exhausted = true;
                            break 'run;
                        };
                        driver.issue(op, Some(permit)).await;
                        issued += 1;
                        if Instant::now() >= measure_from {
                            ops_measured += 1;
                        }
                    }
                    _ => continue,
                }
            }
            (Load::Closed { .. }, None) => unreachable!("closed loop has a semaphore"),
        }
    }
    let measured_for = Instant::now().saturating_duration_since(measure_from);
    let stanzas_measured = stanzas_at_measure.map_or(0, |at| {
        world.stanzas_in.load(Ordering::Relaxed).saturating_sub(at)
    });
    let (sut_cpu, sut_cpu_errors): (Vec<_>, Vec<_>) = cpu_window
        .map(|w| w.end(world.stanzas_in.load(Ordering::Relaxed)))
        .unwrap_or_default()
        .into_iter()
        .partition(Result::is_ok);
    let sut_cpu: Vec<SutCpu> = sut_cpu.into_iter().filter_map(Result::ok).collect();
    let sut_cpu_errors: Vec<String> = sut_cpu_errors.into_iter().filter_map(Result::err).collect();
    pb.finish_and_clear();
    if exhausted {
        eprintln!("loadgen: every pair is subscribed; the subscribe scenario ended early");
    }

    // Drain: wait for what is in flight, then count the rest as lost.
    let until = Instant::now() + opts.drain;
    while world.tracker.in_flight() > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lost = world.tracker.drain_lost();
    let rec = world.take_interval();
    measured.merge(&rec);
    let mut all = warm;
    all.merge(&measured);
    for (step, n) in lost {
        all.record_lost(step, n);
    }
    let Driver {
        peers,
        clients,
        subscribe_as_presence,
        ..
    } = driver;
    let peer_resent = peers.resent();
    let peer_sockets = peers.sockets();
    let duplicates = world.tracker.unexpected();
    clients.stop(Duration::from_secs(5)).await;
    peers.stop(Duration::from_secs(5)).await;
    hlog.finish().map_err(|e| setup(e.to_string()))?.flush()?;
    if let Some(e) = embedded {
        tokio::task::spawn_blocking(move || e.stop())
            .await
            .map_err(|e| setup(e.to_string()))?;
    }
    if let Some(z) = zone {
        z.stop();
    }

    let mut summary = measured.summary(measured_for);
    summary.accounting = all.accounting();
    let mut outcome = Outcome {
        summary,
        ops: ops_measured,
        skipped,
        subscribe_as_presence,
        peer_resent,
        peer_sockets,
        duplicates,
        unexpected_closes: world.unexpected_closes.load(Ordering::Relaxed),
        auth_failures: world.auth_failures.load(Ordering::Relaxed),
        first_auth_failures: world.first_auth_failures.snapshot(),
        peak_rss_kib: peak_rss_kib(),
        sut_cpu,
        sut_cpu_errors,
        redirects: world.redirects.load(Ordering::Relaxed),
        relogins: world.relogins.load(Ordering::Relaxed),
        killed_at_s,
        killed_at_unix_s,
        files,
        measured,
        all,
        seconds,
        setup: SetupTimes {
            streams_s: streams_up.as_secs_f64(),
            logins_s: logins.as_secs_f64(),
            subscriptions: presubscribed,
            subscriptions_s: subs_time.as_secs_f64(),
        },
        stanzas_measured,
        fds_at_ready,
        procs: 1,
        children: Vec::new(),
    };
    if !child {
        write_report(&opts, &sut_s2s, &sut_c2s, &mut outcome)?;
    }
    Ok(outcome)
}

/// `t − from` in seconds, negative when `t` is earlier.
fn signed_secs(t: Instant, from: Instant) -> f64 {
    match t.checked_duration_since(from) {
        Some(d) => d.as_secs_f64(),
        None => -(from - t).as_secs_f64(),
    }
}

/// Sends SIGKILL to `pid` (a SUT node's death); a failure is reported on stderr.
pub fn kill(pid: u32) {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        eprintln!("loadgen: --kill-pid {pid}: not a process id");
        return;
    };
    // SAFETY: kill(2) takes plain integers and has no memory effects on this process.
    if unsafe { libc::kill(p, libc::SIGKILL) } != 0 {
        eprintln!(
            "loadgen: --kill-pid {pid}: {}",
            std::io::Error::last_os_error()
        );
    } else {
        eprintln!("loadgen: killed SUT process {pid} (SIGKILL)");
    }
}
