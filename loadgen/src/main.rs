//! `loadgen`: simulated Gmail-style remote servers and local clients against an XMPP server,
//! with HDR latency histograms. See the crate docs and `loadgen --help`.
//!
//! Exit status: 0 when every stanza was accounted for, 1 on any loss, 2 when the run could
//! not be set up (or bad arguments).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use fedrouter::logging::LogFormat;
use fedrouter::stream::sm::AckPolicy;
use fedrouter::stream::TlsPolicy;
use loadgen::peers::PeerAuth;
use loadgen::procs::{ChildReport, ParentOptions};
use loadgen::run::{self, Load, Mix, RunOptions, Scenario, Target};
use loadgen::topology::{Shard, Topology};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load generator for XMPP servers: thousands of simulated Gmail-style remote servers
/// (S2S with dialback or SASL EXTERNAL) and local C2S clients, with HDR latency histograms.
///
/// Without --sut-s2s it starts fedrouter in this process (embedded defaults) and runs
/// against it. Everything binds and connects on loopback only.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Scenario: subscribe, presence, message, churn or mixed.
    #[arg(long, default_value = "mixed")]
    scenario: String,
    /// Weights of the mixed scenario.
    #[arg(long, default_value = "presence=60,message=30,subscribe=8,churn=2")]
    mix: String,
    /// Number of simulated remote domains.
    #[arg(long, default_value_t = 1000, global = true)]
    peers: u32,
    /// Users per remote domain.
    #[arg(long, default_value_t = 10, global = true)]
    users_per_peer: u32,
    /// Local users (user0 … on the SUT, logged in as C2S clients).
    #[arg(long, default_value_t = 100, global = true)]
    local_users: u32,
    /// Remote domains per simulated server: 1 is one domain per server; more is
    /// Google-Apps-style (one SRV target, one listener, one dialback-multiplexed stream).
    #[arg(long, default_value_t = 1, global = true)]
    domains_per_server: u32,
    /// Operations started per second (open loop); 0 runs closed loop.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Operations in flight in closed loop (--rate 0).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Measured duration.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Warm-up before measuring.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Time allowed for stanzas in flight after the measured duration.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// Bound of each set-up phase (streams, logins, subscriptions).
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    setup_timeout: Duration,
    /// The SUT's domain.
    #[arg(long, default_value = "cupdomain.test", global = true)]
    sut_domain: String,
    /// External SUT: its S2S address (without it, fedrouter runs embedded). A cluster's
    /// nodes: comma-separated or repeated; each peer stream tries them in RFC 2782 order
    /// (equal priority, --sut-weights), and loadgen's DNS serves one SRV target per
    /// address.
    #[arg(long, value_delimiter = ',')]
    sut_s2s: Vec<SocketAddr>,
    /// SRV weights of the --sut-s2s addresses, in order (default 1 each).
    #[arg(long, value_delimiter = ',')]
    sut_weights: Vec<u16>,
    /// External SUT: its C2S address; several (comma-separated or repeated) spread the
    /// clients round robin. `<see-other-host/>` is followed (at most 3 times per login).
    #[arg(long, value_delimiter = ',')]
    sut_c2s: Vec<SocketAddr>,
    /// A SUT process to kill (SIGKILL) during the measured window, at --kill-at: a
    /// cluster node's death. Its CPU up to then counts when it is also a --sut-pid.
    #[arg(long, requires = "kill_at")]
    kill_pid: Option<u32>,
    /// When to kill --kill-pid, from the start of the measured window (after the
    /// warm-up), e.g. `10s`.
    #[arg(long, value_parser = humantime::parse_duration, requires = "kill_pid")]
    kill_at: Option<Duration>,
    /// External SUT: PEM file of the CA (or self-signed certificate) its certificate
    /// chains to; without it C2S TLS is not verified.
    #[arg(long)]
    sut_ca: Option<PathBuf>,
    /// Embedded fedrouter: its loopback address.
    #[arg(long, default_value = "127.0.100.1")]
    sut_ip: IpAddr,
    /// Embedded fedrouter: shard threads.
    #[arg(long, default_value_t = 2)]
    shards: usize,
    /// Peers' STARTTLS use.
    #[arg(long, value_enum, default_value_t = TlsArg::Disabled)]
    peer_tls: TlsArg,
    /// Peers' authentication.
    #[arg(long, value_enum, default_value_t = AuthArg::Dialback)]
    peer_auth: AuthArg,
    /// Peers use XEP-0198 stream management on every stream, both directions: they offer
    /// and enable it, and send again what the SUT did not acknowledge when a stream drops.
    #[arg(long)]
    peer_sm: bool,
    /// With `--peer-sm`: peers ask the SUT for an acknowledgement (`<r/>`, XEP-0198 §4)
    /// after this many stanzas ... (default: fedrouter's `s2s.sm_ack_every`).
    #[arg(long, default_value_t = 20)]
    peer_sm_ack_every: u32,
    /// ... or once a stanza has waited this long (humantime; default: fedrouter's
    /// `s2s.sm_ack_after`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    peer_sm_ack_after: Duration,
    /// Peers use XEP-0288 bidirectional streams: they ask for bidi on the streams they open
    /// when the SUT offers it and take the SUT's stanzas on them, so a SUT that supports it
    /// opens no stream of its own for stanzas; the report counts the sockets each way.
    #[arg(long)]
    peer_bidi: bool,
    /// The embedded fedrouter gets its own stream per remote domain (`multiplex = false`):
    /// no outbound multiplexing by SRV target (XEP-0220 §2.4), for comparison.
    #[arg(long)]
    sut_no_multiplex: bool,
    /// Churn drops streams abruptly (TCP RST, in-flight data lost, both the peer's stream
    /// and the ones the SUT opened to it) instead of `</stream:stream>`.
    #[arg(long)]
    churn_reset: bool,
    /// First two octets of the peer servers' loopback addresses (`127.78`), or three to
    /// keep every peer server in one /24 (`127.0.10`: at most 250 servers).
    #[arg(long, default_value = "127.78", global = true)]
    peer_net: String,
    /// Port every peer server listens on.
    #[arg(long, default_value_t = 5269, global = true)]
    peer_port: u16,
    /// Where loadgen's DNS server answers (port 0 picks one; Prosody needs 53).
    #[arg(long, default_value = "127.0.100.53:0")]
    dns: SocketAddr,
    /// Also write the DNS zone as a file.
    #[arg(long)]
    zone_file: Option<PathBuf>,
    /// Output directory: summary.json, .hgrm files, intervals.hlog, latency.svg (under
    /// `target/`, beside the build, so that runs do not litter the working folder).
    #[arg(long, default_value = "target/loadgen-out")]
    out: PathBuf,
    /// Local users' password.
    #[arg(long, default_value = "loadgen", global = true)]
    password: String,
    /// Concurrent logins.
    #[arg(long, default_value_t = 32)]
    login_parallel: usize,
    /// Seed of the operation choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Most deliveries in flight before the open loop skips operations.
    #[arg(long, default_value_t = 200_000)]
    max_in_flight: u64,
    /// A process of the SUT (repeatable): its CPU (utime + stime of all threads, from
    /// /proc/PID/stat) over the measured window is reported, also per 1,000 stanzas
    /// loadgen received in that window. `self` is this process (the embedded fedrouter
    /// runs in it, so loadgen's own CPU is included then).
    #[arg(long = "sut-pid", value_parser = parse_pid)]
    sut_pid: Vec<u32>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// No live progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Log lines on stderr: text (coloured only on a terminal) or json (one object per
    /// line).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Processes to split the run over (each with its own open-files limit): this process
    /// serves the DNS zone (and the embedded SUT) and starts N children, child i simulating
    /// the peer servers s % N == i and the local users k % N == i at --rate / N; their
    /// histograms and accounting are merged as if one process had run. Peers must use
    /// dialback over plain TCP when N > 1.
    #[arg(long, default_value_t = 1)]
    procs: u32,
    /// Internal: this process is child i of N of a split run (see --procs).
    #[arg(long, hide = true, value_parser = Shard::parse)]
    child: Option<Shard>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints the commands that create the local users on a server.
    Accounts {
        /// fedrouter, prosody or ejabberd.
        #[arg(long, default_value = "fedrouter")]
        server: String,
        /// The server's configuration file, passed to its command (`fedrouter user add -c`,
        /// `prosodyctl --config`, `ejabberdctl --config` with the `ejabberdctl.cfg` beside
        /// it).
        #[arg(long)]
        config: Option<PathBuf>,
        /// ejabberd: the Erlang node `ejabberdctl` must reach (default: `ERLANG_NODE` of
        /// the `ejabberdctl.cfg` beside `--config`).
        #[arg(long)]
        node: Option<String>,
    },
    /// Writes the peers' DNS zone file and exits.
    Zone {
        /// The SUT's S2S addresses (comma-separated or repeated), to include their SRV
        /// records.
        #[arg(long, value_delimiter = ',')]
        sut_s2s: Vec<SocketAddr>,
        /// Their SRV weights, in order (default 1 each).
        #[arg(long, value_delimiter = ',')]
        sut_weights: Vec<u16>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TlsArg {
    Disabled,
    Optional,
    Required,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AuthArg {
    Dialback,
    External,
}

/// `--sut-pid`: a process id, or `self`.
fn parse_pid(s: &str) -> Result<u32, String> {
    if s == "self" {
        return Ok(std::process::id());
    }
    s.parse()
        .map_err(|_| format!("`{s}`: expected a process id or `self`"))
}

fn usage(msg: String) -> ExitCode {
    eprintln!("loadgen: {msg}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The embedded fedrouter's log (and ours) on stderr, as fedrouter writes its own:
    // coloured only on a terminal; RUST_LOG overrides `warn`, a bare level is for our
    // crates (the libraries stay at warn).
    fedrouter::logging::init(cli.log_format, "warn");
    let peer_net: Vec<u8> = cli
        .peer_net
        .split('.')
        .filter_map(|p| p.parse().ok())
        .collect();
    if !(2..=3).contains(&peer_net.len())
        || peer_net[0] != 127
        || cli.peer_net.split('.').count() != peer_net.len()
    {
        return usage(format!(
            "--peer-net {}: expected two or three octets in 127.0.0.0/8, like 127.78 or 127.0.10",
            cli.peer_net
        ));
    }
    let topo = Topology {
        peers: cli.peers,
        users_per_peer: cli.users_per_peer,
        local_users: cli.local_users,
        domains_per_server: cli.domains_per_server.max(1),
        suffix: "test".into(),
        sut_domain: cli.sut_domain.clone(),
        peer_net: [peer_net[0], peer_net[1]],
        peer_subnet: peer_net.get(2).copied(),
        peer_port: cli.peer_port,
        shard: cli.child.unwrap_or(Shard::ALL),
    };
    if topo.peer_subnet.is_some() && topo.servers() > 250 {
        return usage(format!(
            "--peer-net {}: one /24 holds at most 250 peer servers, and --peers {} with --domains-per-server {} needs {}",
            cli.peer_net,
            topo.peers,
            topo.domains_per_server,
            topo.servers()
        ));
    }
    match &cli.command {
        Some(Command::Accounts {
            server,
            config,
            node,
        }) => {
            let ejabberd = match (server.as_str(), config.as_deref(), node.as_deref()) {
                ("ejabberd", Some(c), n) => match loadgen::sut::EjabberdCtl::beside(c, n) {
                    Ok(e) => Some(e),
                    Err(e) => return usage(e),
                },
                ("ejabberd", None, Some(n)) => Some(loadgen::sut::EjabberdCtl {
                    ctl_config: None,
                    node: n.to_owned(),
                }),
                _ => None,
            };
            return match loadgen::sut::account_commands(
                server,
                config.as_deref(),
                ejabberd.as_ref(),
                &topo.sut_domain,
                topo.local_users,
                &cli.password,
            ) {
                Some(s) => {
                    print!("{s}");
                    ExitCode::SUCCESS
                }
                None => usage(format!("{server}: expected fedrouter, prosody or ejabberd")),
            };
        }
        Some(Command::Zone {
            sut_s2s,
            sut_weights,
        }) => {
            let nodes = match loadgen::targets::with_weights(sut_s2s, sut_weights) {
                Ok(n) => n,
                Err(e) => return usage(e),
            };
            print!(
                "{}",
                loadgen::dns::to_zone_file(&loadgen::dns::records(&topo, &nodes))
            );
            return ExitCode::SUCCESS;
        }
        None => {}
    }
    if cli.peers == 0 || cli.users_per_peer == 0 || cli.local_users == 0 {
        return usage("--peers, --users-per-peer and --local-users must be at least 1".into());
    }
    let Some(scenario) = Scenario::parse(&cli.scenario) else {
        return usage(format!(
            "--scenario {}: expected subscribe, presence, message, churn or mixed",
            cli.scenario
        ));
    };
    let mix = match Mix::parse(&cli.mix) {
        Ok(m) => m,
        Err(e) => return usage(format!("--mix: {e}")),
    };
    for (what, addrs) in [("--sut-s2s", &cli.sut_s2s), ("--sut-c2s", &cli.sut_c2s)] {
        if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            return usage(format!(
                "{what} {a}: loadgen only connects to loopback addresses"
            ));
        }
    }
    if !cli.sut_ip.is_loopback() || !cli.dns.ip().is_loopback() {
        return usage("--sut-ip and --dns must be loopback addresses".into());
    }
    let target = match (cli.sut_s2s.is_empty(), cli.sut_c2s.is_empty()) {
        (true, true) => {
            if !cli.sut_weights.is_empty() {
                return usage("--sut-weights needs --sut-s2s".into());
            }
            Target::Embedded {
                ip: cli.sut_ip,
                shards: cli.shards.max(1),
            }
        }
        (false, false) => {
            let s2s = match loadgen::targets::with_weights(&cli.sut_s2s, &cli.sut_weights) {
                Ok(n) => n,
                Err(e) => return usage(e),
            };
            let c2s = cli.sut_c2s.clone();
            let roots = match &cli.sut_ca {
                None => None,
                Some(path) => {
                    let mut store = rustls::RootCertStore::empty();
                    let certs = match CertificateDer::pem_file_iter(path) {
                        Ok(it) => it.collect::<Result<Vec<_>, _>>(),
                        Err(e) => return usage(format!("--sut-ca {}: {e}", path.display())),
                    };
                    match certs {
                        Ok(certs) if !certs.is_empty() => {
                            for c in certs {
                                let _ = store.add(c);
                            }
                        }
                        Ok(_) => {
                            return usage(format!("--sut-ca {}: no certificate", path.display()))
                        }
                        Err(e) => return usage(format!("--sut-ca {}: {e}", path.display())),
                    }
                    Some(Arc::new(store))
                }
            };
            Target::External { s2s, c2s, roots }
        }
        _ => return usage("an external SUT needs both --sut-s2s and --sut-c2s".into()),
    };
    for &pid in &cli.sut_pid {
        if let Err(e) = loadgen::cpu::CpuTicks::read(pid) {
            return usage(format!("--sut-pid {pid}: {e}"));
        }
    }
    let kill = match (cli.kill_pid, cli.kill_at) {
        (Some(pid), Some(at)) => {
            if pid == std::process::id() || cli.sut_s2s.is_empty() {
                return usage(
                    "--kill-pid: the SUT must be external (--sut-s2s), not loadgen itself".into(),
                );
            }
            if let Err(e) = loadgen::cpu::CpuTicks::read(pid) {
                return usage(format!("--kill-pid {pid}: {e}"));
            }
            if at >= cli.duration {
                return usage(format!(
                    "--kill-at {}: must fall inside --duration {}",
                    humantime::format_duration(at),
                    humantime::format_duration(cli.duration)
                ));
            }
            Some(run::Kill { pid, at })
        }
        _ => None,
    };
    if let Err(e) = check_procs(&cli, &topo) {
        return usage(e);
    }
    // Every loadgen process, parent or child, raises its own soft limit to the hard one.
    let (limit, _) = fedrouter::runtime::raise_fd_limit();
    let procs = u64::from(cli.procs.max(1));
    let needed = (u64::from(topo.servers()) * 2 + u64::from(topo.peers)).div_ceil(procs)
        + u64::from(topo.local_users).div_ceil(procs)
        + 64;
    if needed > limit && cli.child.is_none() {
        eprintln!(
            "loadgen: warning: this run may need about {needed} file descriptors per process; \
             the limit is {limit} (use --procs to split it over more processes, or \
             --domains-per-server to multiplex domains over fewer streams)"
        );
    }
    let opts = RunOptions {
        topo,
        scenario,
        mix,
        load: if cli.rate > 0.0 {
            Load::Open { rate: cli.rate }
        } else {
            Load::Closed {
                concurrency: cli.concurrency,
            }
        },
        warmup: cli.warmup,
        duration: cli.duration,
        drain: cli.drain,
        setup_timeout: cli.setup_timeout,
        target,
        peer_tls: match cli.peer_tls {
            TlsArg::Disabled => TlsPolicy::Disabled,
            TlsArg::Optional => TlsPolicy::Optional,
            TlsArg::Required => TlsPolicy::Required,
        },
        peer_auth: match cli.peer_auth {
            AuthArg::Dialback => PeerAuth::Dialback,
            AuthArg::External => PeerAuth::External,
        },
        peer_sm: cli.peer_sm,
        peer_sm_acks: AckPolicy {
            every: cli.peer_sm_ack_every,
            after: cli.peer_sm_ack_after,
        },
        peer_bidi: cli.peer_bidi,
        sut_multiplex: !cli.sut_no_multiplex,
        churn_reset: cli.churn_reset,
        dns_bind: cli.dns,
        zone_file: cli.zone_file.clone(),
        out_dir: cli.out.clone(),
        password: cli.password.clone(),
        login_parallel: cli.login_parallel,
        seed: cli.seed,
        progress: !cli.no_progress,
        max_in_flight: cli.max_in_flight,
        sut_pids: cli.sut_pid.clone(),
        kill,
    };
    fedrouter::tls::install_default_provider();
    let workers = cli
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return usage(format!("runtime: {e}")),
    };
    let result = if cli.procs > 1 {
        let exe = match std::env::current_exe() {
            Ok(p) => p,
            Err(e) => return usage(format!("--procs: loadgen's own executable: {e}")),
        };
        rt.block_on(loadgen::procs::run_parent(
            opts,
            ParentOptions {
                procs: cli.procs,
                exe,
                args: child_common_args(&cli),
                sut_ca: cli.sut_ca.clone(),
            },
        ))
    } else {
        rt.block_on(run::run(opts))
    };
    let outcome = match result {
        Ok(o) => o,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    rt.shutdown_timeout(Duration::from_secs(2));
    if let Some(shard) = cli.child {
        // A child: its report for the parent, nothing on stdout (the parent reads it).
        let written = ChildReport::from_outcome(shard, &outcome)
            .map_err(|e| e.to_string())
            .and_then(|r| r.write(&cli.out).map_err(|e| e.to_string()));
        return match written {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!(
                    "loadgen: child {}/{}: report: {e}",
                    shard.index, shard.count
                );
                ExitCode::from(2)
            }
        };
    }
    print!("{}", outcome.summary.table());
    println!(
        "operations: {} measured ({:.1}/s), {} skipped by the open loop; unexpected stream \
         closes: {}; S2S authentication failures: {}, first attempts failed: {}; peak RSS: \
         {} KiB",
        outcome.ops,
        outcome.ops as f64 / outcome.summary.measured.as_secs_f64().max(1e-9),
        outcome.skipped,
        outcome.unexpected_closes,
        outcome.auth_failures,
        outcome.first_auth_failures.line(),
        outcome
            .peak_rss_kib
            .map_or_else(|| "?".to_owned(), |k| k.to_string()),
    );
    let ps = &outcome.peer_sockets;
    println!(
        "peer sockets: {} opened by the peers, {} accepted from the SUT by {} peer servers \
         (at most {} by one server: with outbound multiplexing by target, XEP-0220 §2.4, \
         about one per SUT shard plus dialback verifications), {} bidirectional",
        ps.opened, ps.accepted, ps.accepting_servers, ps.accepted_max_per_server, ps.bidi
    );
    if outcome.peer_resent > 0 || outcome.duplicates > 0 {
        println!(
            "stream management: {} stanzas sent again by the peers after a dropped stream; \
             {} deliveries received twice (at least once, not exactly once)",
            outcome.peer_resent, outcome.duplicates
        );
    }
    for c in &outcome.sut_cpu {
        println!("{}", c.line());
    }
    if outcome.sut_cpu.len() > 1 {
        if let Some(t) = loadgen::cpu::total(&outcome.sut_cpu) {
            println!("{}", t.line());
        }
    }
    if outcome.redirects > 0 || outcome.relogins > 0 {
        println!(
            "clients: {} see-other-host redirects followed, {} logins made again after a \
             session ended",
            outcome.redirects, outcome.relogins
        );
    }
    if let Some(t) = outcome.killed_at_s {
        println!("killed --kill-pid at {t:.2} s into the measured window");
    }
    for e in &outcome.sut_cpu_errors {
        eprintln!("loadgen: warning: {e}");
    }
    if outcome.subscribe_as_presence > 0 {
        println!(
            "note: {} subscribe operations ran as presence: every fresh pair was subscribed \
             (the mixed scenario reserves a fifth of the pairs for subscribe; use more \
             --peers or --users-per-peer, or a shorter run, to measure subscribe throughout)",
            outcome.subscribe_as_presence
        );
    }
    if outcome.procs > 1 {
        println!(
            "processes: {} children, {} open files at set-up's end (all children), set-up \
             streams {:.2} s, logins {:.2} s (the slowest child's)",
            outcome.procs,
            outcome
                .fds_at_ready
                .map_or_else(|| "?".to_owned(), |k| k.to_string()),
            outcome.setup.streams_s,
            outcome.setup.logins_s,
        );
    }
    for f in &outcome.files {
        println!("wrote {}", f.display());
    }
    if outcome.summary.accounting.is_clean() {
        ExitCode::SUCCESS
    } else {
        eprintln!("loadgen: {}", outcome.summary.accounting.summary_line());
        ExitCode::from(1)
    }
}

/// Checks `--procs` and `--child` against the run's shape: each process needs at least one
/// peer server and one local user, and a split run's peers use dialback over plain TCP
/// (their certificates would come from one CA the children cannot share yet).
///
/// Errors: a message naming the option.
fn check_procs(cli: &Cli, topo: &Topology) -> Result<(), String> {
    let n = cli.child.map_or(cli.procs, |s| s.count);
    if n == 0 {
        return Err("--procs: must be at least 1".into());
    }
    if cli.child.is_some() && cli.procs > 1 {
        return Err("--child and --procs cannot be given together".into());
    }
    if n == 1 {
        return Ok(());
    }
    if n > topo.servers() || n > topo.local_users {
        return Err(format!(
            "--procs {n}: more processes than peer servers ({}) or local users ({}); each \
             process needs at least one of each",
            topo.servers(),
            topo.local_users
        ));
    }
    if !matches!(cli.peer_tls, TlsArg::Disabled) || !matches!(cli.peer_auth, AuthArg::Dialback) {
        return Err(format!(
            "--procs {n}: split runs support --peer-tls disabled with --peer-auth dialback only"
        ));
    }
    if cli.child.is_some() && (cli.sut_s2s.is_empty() || cli.sut_c2s.is_empty()) {
        return Err("--child: needs --sut-s2s and --sut-c2s (the parent passes them)".into());
    }
    Ok(())
}

/// What every child of a split run gets from this process's options: the run's shape and
/// behaviour. The parent adds the child's part, output folder, the SUT and the load.
fn child_common_args(cli: &Cli) -> Vec<std::ffi::OsString> {
    use clap::ValueEnum as _;
    let d = |x: Duration| humantime::format_duration(x).to_string();
    let mut a: Vec<String> = vec![
        "--scenario".into(),
        cli.scenario.clone(),
        "--mix".into(),
        cli.mix.clone(),
        "--peers".into(),
        cli.peers.to_string(),
        "--users-per-peer".into(),
        cli.users_per_peer.to_string(),
        "--local-users".into(),
        cli.local_users.to_string(),
        "--domains-per-server".into(),
        cli.domains_per_server.to_string(),
        "--duration".into(),
        d(cli.duration),
        "--warmup".into(),
        d(cli.warmup),
        "--drain".into(),
        d(cli.drain),
        "--setup-timeout".into(),
        d(cli.setup_timeout),
        "--sut-domain".into(),
        cli.sut_domain.clone(),
        "--peer-net".into(),
        cli.peer_net.clone(),
        "--peer-port".into(),
        cli.peer_port.to_string(),
        "--password".into(),
        cli.password.clone(),
        "--login-parallel".into(),
        cli.login_parallel.to_string(),
        "--no-progress".into(),
    ];
    if let Some(v) = cli.log_format.to_possible_value() {
        a.extend(["--log-format".into(), v.get_name().to_owned()]);
    }
    if let Some(w) = cli.workers {
        a.extend(["--workers".into(), w.to_string()]);
    }
    if cli.peer_sm {
        a.push("--peer-sm".into());
        a.extend([
            "--peer-sm-ack-every".into(),
            cli.peer_sm_ack_every.to_string(),
            "--peer-sm-ack-after".into(),
            humantime::format_duration(cli.peer_sm_ack_after).to_string(),
        ]);
    }
    if cli.peer_bidi {
        a.push("--peer-bidi".into());
    }
    if cli.churn_reset {
        a.push("--churn-reset".into());
    }
    a.into_iter().map(Into::into).collect()
}
