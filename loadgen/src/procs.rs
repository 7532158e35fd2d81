//! A run split over several processes (`loadgen --procs N`), so that loadgen's own sockets
//! (one per stream and per listener) stay under one process's open-files limit and the
//! system under test, not loadgen, is what is measured.
//!
//! ```text
//!  parent: DNS zone (every peer) ─ embedded SUT (if any) ─ spawns N children ─┐
//!    ◄── "loadgen-child: ready" (each child's set-up done) ───────────────────┤
//!    ──► "go" (all ready: every child measures the same window) ─────────────►│
//!    SUT CPU over the window, --kill-pid ─ waits (bounded) ─ child-i/child.json ┘
//!    ─► merged histograms and accounting ─► table, summary.json, .hgrm, .svg
//!  child i (`--child i/N`): servers s % N == i, local users k % N == i, pairs among
//!    them only (Topology's Shard), rate / N, no DNS server
//! ```
//!
//! The protocol between them: a child prints [`READY_LINE`] on its stdout when set-up is
//! done and waits for [`GO_LINE`] on its stdin; at the end it writes its [`ChildReport`]
//! as JSON to `child.json` in its output folder (`OUT/child-i`). Each child raises its own
//! open-files limit to the hard limit as every loadgen process does, and dies with its
//! parent (`PR_SET_DEATHSIG`).

use std::ffi::OsString;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::cpu::{self, CpuTicks, SutCpu};
use crate::dns;
use crate::report::{Recorder, RecorderWire};
use crate::run::{self, Load, Outcome, RunError, RunOptions, Second, SetupTimes, Target};
use crate::sut::{Embedded, EmbeddedOptions, Profile};
use crate::targets::{self as tgt, SutS2s};
use crate::topology::Shard;

/// What a child prints on its stdout when its set-up is done.
pub const READY_LINE: &str = "loadgen-child: ready";
/// What the parent writes on every child's stdin when all are ready.
pub const GO_LINE: &str = "go";
/// Margin added to every bound of the parent's waits (process start, stopping, writing).
pub const MARGIN: Duration = Duration::from_secs(60);
/// A child's report file, in its output folder.
pub const REPORT_FILE: &str = "child.json";

/// Child side: prints [`READY_LINE`] and waits at most `timeout` for [`GO_LINE`] on stdin.
///
/// Errors: a message saying what came instead (end of input, another line, nothing in
/// time).
pub async fn ready_and_wait_go(timeout: Duration) -> Result<(), String> {
    {
        let mut out = io::stdout().lock();
        writeln!(out, "{READY_LINE}")
            .and_then(|()| out.flush())
            .map_err(|e| format!("telling the parent set-up is done: {e}"))?;
    }
    // A plain thread (not spawn_blocking): a read that never returns must not hold up the
    // runtime's shutdown.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = tx.send(io::stdin().read_line(&mut line).map(|_| line));
    });
    match tokio::time::timeout(timeout, rx).await {
        Err(_) => Err(format!("the parent did not say go within {timeout:?}")),
        Ok(Ok(Ok(line))) if line.trim() == GO_LINE => Ok(()),
        Ok(Ok(Ok(line))) if line.is_empty() => Err("the parent closed our stdin".into()),
        Ok(Ok(Ok(line))) => Err(format!(
            "expected `{GO_LINE}` from the parent, got {line:?}"
        )),
        Ok(Ok(Err(e))) => Err(format!("reading the parent's go: {e}")),
        Ok(Err(_)) => Err("reading the parent's go: the reader thread ended".into()),
    }
}

/// What a child sends its parent: everything the parent merges.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildReport {
    /// Its part of the run.
    pub index: u32,
    /// Of how many.
    pub count: u32,
    /// Its measured window, seconds.
    pub measured_s: f64,
    /// What it recorded in the measured window.
    pub measured: RecorderWire,
    /// Everything it recorded, with its losses (its accounting).
    pub all: RecorderWire,
    /// Operations started in the measured window.
    pub ops: u64,
    /// Operations the open loop skipped.
    pub skipped: u64,
    /// `subscribe` operations run as presence.
    pub subscribe_as_presence: u64,
    /// Stanzas its peers sent again (XEP-0198).
    pub peer_resent: u64,
    /// Its peers' TCP connections with the SUT.
    pub peer_sockets: crate::peers::Sockets,
    /// Deliveries received twice.
    pub duplicates: u64,
    /// Streams closed without loadgen asking.
    pub unexpected_closes: u64,
    /// S2S authentication failures.
    pub auth_failures: u64,
    /// Failed first attempts, by cause.
    #[serde(default)]
    pub first_auth_failures: crate::auth::FirstFailures,
    /// `<see-other-host/>` redirects followed.
    pub redirects: u64,
    /// Client logins made again.
    pub relogins: u64,
    /// Stanzas received in the measured window.
    pub stanzas_measured: u64,
    /// Its peak RSS, KiB.
    pub peak_rss_kib: Option<u64>,
    /// Its open file descriptors when set-up was done.
    pub fds_at_ready: Option<u64>,
    /// Its open-files limit (soft `RLIMIT_NOFILE`, raised to the hard limit at start).
    pub fd_limit: Option<u64>,
    /// Its set-up times.
    pub setup: SetupTimes,
    /// Its per-second series.
    pub per_second: Vec<Second>,
}

impl ChildReport {
    /// The report of child `shard` from its run's outcome.
    ///
    /// Errors: a histogram that cannot be serialized.
    pub fn from_outcome(shard: Shard, o: &Outcome) -> Result<ChildReport, RunError> {
        let wire = |r: &Recorder| r.to_wire().map_err(|e| RunError::Setup(e.to_string()));
        Ok(ChildReport {
            index: shard.index,
            count: shard.count,
            measured_s: o.summary.measured.as_secs_f64(),
            measured: wire(&o.measured)?,
            all: wire(&o.all)?,
            ops: o.ops,
            skipped: o.skipped,
            subscribe_as_presence: o.subscribe_as_presence,
            peer_resent: o.peer_resent,
            peer_sockets: o.peer_sockets,
            duplicates: o.duplicates,
            unexpected_closes: o.unexpected_closes,
            auth_failures: o.auth_failures,
            first_auth_failures: o.first_auth_failures.clone(),
            redirects: o.redirects,
            relogins: o.relogins,
            stanzas_measured: o.stanzas_measured,
            peak_rss_kib: o.peak_rss_kib,
            fds_at_ready: o.fds_at_ready,
            fd_limit: nofile_limit(),
            setup: o.setup,
            per_second: o.seconds.clone(),
        })
    }

    /// Writes the report as JSON to [`REPORT_FILE`] in `dir`; returns its path.
    ///
    /// Errors: the file cannot be written.
    pub fn write(&self, dir: &Path) -> io::Result<PathBuf> {
        let path = dir.join(REPORT_FILE);
        let text = serde_json::to_string(self).map_err(io::Error::other)?;
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Reads a report written by [`ChildReport::write`].
    ///
    /// Errors: a message naming the file and what is wrong with it.
    pub fn read(path: &Path) -> Result<ChildReport, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// How the parent starts its children.
#[derive(Debug, Clone)]
pub struct ParentOptions {
    /// Number of children (≥ 2).
    pub procs: u32,
    /// loadgen's own executable.
    pub exe: PathBuf,
    /// Arguments every child gets (the run's shape and behaviour); the parent adds
    /// `--child`, `--out`, the SUT's addresses and CA, `--seed` and the load.
    pub args: Vec<OsString>,
    /// The external SUT's CA file (`--sut-ca`), passed on to the children.
    pub sut_ca: Option<PathBuf>,
}

/// The running children, killed (by pid) when this is dropped before they ended.
struct Children {
    procs: Vec<Child>,
}

impl Children {
    fn kill_all(&mut self) {
        for c in &mut self.procs {
            let _ = c.start_kill();
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Runs `opts` split over `p.procs` child processes: serves the DNS zone of the whole
/// topology, starts the embedded SUT when `opts.target` asks for one, runs the children
/// (set-up, then one measured window for all), and merges their reports into one
/// [`Outcome`] whose outputs it writes as a single process would (`params.procs` = N).
///
/// Errors: set-up failures (a child that ends or fails before it is ready, or exits with
/// an error; bounds passed; Ctrl-C), outputs that cannot be written. Children are killed on
/// every error.
pub async fn run_parent(opts: RunOptions, p: ParentOptions) -> Result<Outcome, RunError> {
    let setup = |m: String| RunError::Setup(m);
    std::fs::create_dir_all(&opts.out_dir)?;
    let mut files = Vec::new();
    let topo = opts.topo.clone();

    // DNS for every peer of every child.
    let sut_s2s_known = match &opts.target {
        Target::External { s2s, .. } => s2s.clone(),
        Target::Embedded { ip, .. } => vec![SutS2s {
            addr: SocketAddr::new(*ip, 5269),
            weight: tgt::DEFAULT_WEIGHT,
        }],
    };
    let records = dns::records(&topo, &sut_s2s_known);
    if let Some(path) = &opts.zone_file {
        std::fs::write(path, dns::to_zone_file(&records))?;
        files.push(path.clone());
    }
    let zone = dns::serve(opts.dns_bind, records)
        .map_err(|e| setup(format!("DNS server on {}: {e}", opts.dns_bind)))?;

    // The SUT.
    let (embedded, sut_s2s, sut_c2s, sut_ca) = match &opts.target {
        Target::Embedded { ip, shards } => {
            let e = Embedded::start(&EmbeddedOptions {
                domain: topo.sut_domain.clone(),
                ip: *ip,
                shards: *shards,
                nameserver: zone.addr(),
                local_users: topo.local_users,
                password: opts.password.clone(),
                profile: Profile::Google,
                peer_ca_pem: None,
                multiplex: opts.sut_multiplex,
            })
            .map_err(setup)?;
            let cert = e.data_dir.join(format!("certs/{}.crt", topo.sut_domain));
            let ca = opts.out_dir.join("sut-ca.pem");
            std::fs::copy(&cert, &ca)
                .map_err(|err| setup(format!("the SUT's certificate {}: {err}", cert.display())))?;
            let s2s = vec![SutS2s {
                addr: e.s2s,
                weight: tgt::DEFAULT_WEIGHT,
            }];
            let c2s = vec![e.c2s];
            (Some(e), s2s, c2s, Some(ca))
        }
        Target::External { s2s, c2s, .. } => (None, s2s.clone(), c2s.clone(), p.sut_ca.clone()),
    };
    let result = drive_children(&opts, &p, &sut_s2s, &sut_c2s, sut_ca.as_deref()).await;
    if let Some(e) = embedded {
        tokio::task::spawn_blocking(move || e.stop())
            .await
            .map_err(|e| setup(e.to_string()))?;
    }
    zone.stop();
    let mut outcome = result?;
    outcome.files.splice(0..0, files);
    run::write_report(&opts, &sut_s2s, &sut_c2s, &mut outcome)?;
    Ok(outcome)
}

/// The arguments of child `i`.
fn child_args(
    opts: &RunOptions,
    p: &ParentOptions,
    i: u32,
    sut_s2s: &[SutS2s],
    sut_c2s: &[SocketAddr],
    sut_ca: Option<&Path>,
) -> Vec<OsString> {
    let n = p.procs;
    let join = |v: Vec<String>| v.join(",");
    let mut a: Vec<OsString> = p.args.clone();
    let mut push = |k: &str, v: String| {
        a.push(k.into());
        a.push(v.into());
    };
    push("--child", format!("{i}/{n}"));
    push(
        "--out",
        opts.out_dir
            .join(format!("child-{i}"))
            .display()
            .to_string(),
    );
    push(
        "--sut-s2s",
        join(sut_s2s.iter().map(|s| s.addr.to_string()).collect()),
    );
    push(
        "--sut-weights",
        join(sut_s2s.iter().map(|s| s.weight.to_string()).collect()),
    );
    push(
        "--sut-c2s",
        join(sut_c2s.iter().map(ToString::to_string).collect()),
    );
    if let Some(ca) = sut_ca {
        push("--sut-ca", ca.display().to_string());
    }
    push("--seed", opts.seed.wrapping_add(u64::from(i)).to_string());
    push(
        "--max-in-flight",
        opts.max_in_flight.div_ceil(u64::from(n)).to_string(),
    );
    match opts.load {
        Load::Open { rate } => push("--rate", (rate / f64::from(n)).to_string()),
        Load::Closed { concurrency } => {
            push("--rate", "0".into());
            push(
                "--concurrency",
                concurrency.div_ceil(n as usize).max(1).to_string(),
            );
        }
    }
    a
}

/// Waits for `until` unless Ctrl-C comes first.
async fn sleep_or_interrupt(until: Instant) -> Result<(), RunError> {
    tokio::select! {
        () = tokio::time::sleep_until(until.into()) => Ok(()),
        _ = tokio::signal::ctrl_c() => Err(RunError::Setup("interrupted (Ctrl-C)".into())),
    }
}

async fn drive_children(
    opts: &RunOptions,
    p: &ParentOptions,
    sut_s2s: &[SutS2s],
    sut_c2s: &[SocketAddr],
    sut_ca: Option<&Path>,
) -> Result<Outcome, RunError> {
    let setup = |m: String| RunError::Setup(m);
    let n = p.procs;
    let mut children = Children { procs: Vec::new() };
    let (tx, mut rx) = mpsc::channel::<(u32, Option<String>)>(64);
    for i in 0..n {
        std::fs::create_dir_all(opts.out_dir.join(format!("child-{i}")))?;
        let mut cmd = Command::new(&p.exe);
        cmd.args(child_args(opts, p, i, sut_s2s, sut_c2s, sut_ca))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        // SAFETY: prctl(2) with plain integers, async-signal-safe, run in the forked child
        // before exec: the child gets SIGKILL when this process ends, however it ends.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| setup(format!("starting child {i} ({}): {e}", p.exe.display())))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send((i, Some(line))).await.is_err() {
                    return;
                }
            }
            let _ = tx.send((i, None)).await;
        });
        children.procs.push(child);
    }
    drop(tx);

    // Every child's set-up: streams, logins and subscriptions, each bounded by
    // --setup-timeout in the child.
    let t_setup = Instant::now();
    let deadline = t_setup + opts.setup_timeout * 3 + MARGIN;
    let mut ready = vec![false; n as usize];
    while ready.iter().any(|r| !r) {
        let msg = tokio::select! {
            m = rx.recv() => m,
            () = tokio::time::sleep_until(deadline.into()) => {
                return Err(setup(format!(
                    "children {:?} were not set up within {:?}",
                    (0..n).filter(|&i| !ready[i as usize]).collect::<Vec<_>>(),
                    deadline - t_setup
                )));
            }
            _ = tokio::signal::ctrl_c() => return Err(setup("interrupted (Ctrl-C)".into())),
        };
        match msg {
            Some((i, Some(line))) if line.trim() == READY_LINE => ready[i as usize] = true,
            Some((i, Some(line))) => eprintln!("loadgen: child {i}: {line}"),
            Some((i, None)) if !ready[i as usize] => {
                let status = children.procs[i as usize].wait().await;
                return Err(setup(format!(
                    "child {i} ended during set-up ({}); its messages are above",
                    status.map_or_else(|e| e.to_string(), |s| s.to_string())
                )));
            }
            Some((_, None)) => {}
            None => return Err(setup("every child closed its output".into())),
        }
    }
    eprintln!(
        "loadgen: {n} children set up in {:.2} s; measuring",
        t_setup.elapsed().as_secs_f64()
    );
    for (i, c) in children.procs.iter_mut().enumerate() {
        let stdin = c.stdin.as_mut().expect("stdin is piped");
        stdin
            .write_all(format!("{GO_LINE}\n").as_bytes())
            .await
            .map_err(|e| setup(format!("telling child {i} to go: {e}")))?;
        stdin.flush().await?;
    }
    let t_go = Instant::now();

    // The SUT's CPU over the measured window (this process reads it for all), and the
    // node to kill in it.
    let measure_from = t_go + opts.warmup;
    let measure_end = measure_from + opts.duration;
    sleep_or_interrupt(measure_from).await?;
    let start: Vec<(u32, io::Result<CpuTicks>)> = opts
        .sut_pids
        .iter()
        .map(|&pid| (pid, CpuTicks::read(pid)))
        .collect();
    let mut frozen: Vec<(u32, CpuTicks)> = Vec::new();
    let mut killed_at_s = None;
    let mut killed_at_unix_s = None;
    if let Some(k) = opts.kill {
        sleep_or_interrupt(measure_from + k.at).await?;
        if let Ok(t) = CpuTicks::read(k.pid) {
            frozen.push((k.pid, t));
        }
        killed_at_s = Some(measure_from.elapsed().as_secs_f64());
        killed_at_unix_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs_f64());
        run::kill(k.pid);
    }
    sleep_or_interrupt(measure_end).await?;
    let end: Vec<io::Result<CpuTicks>> = opts
        .sut_pids
        .iter()
        .map(|&pid| match frozen.iter().find(|(p, _)| *p == pid) {
            Some((_, t)) => Ok(*t),
            None => CpuTicks::read(pid),
        })
        .collect();

    // The children's drain and stop.
    let deadline = measure_end + opts.drain + MARGIN;
    for i in 0..n as usize {
        let status = tokio::select! {
            s = tokio::time::timeout_at(deadline.into(), children.procs[i].wait()) => s,
            _ = tokio::signal::ctrl_c() => return Err(setup("interrupted (Ctrl-C)".into())),
        };
        match status {
            Err(_) => {
                return Err(setup(format!(
                    "child {i} did not end within {:?} of the measured window's end",
                    deadline - measure_end
                )))
            }
            Ok(Err(e)) => return Err(setup(format!("waiting for child {i}: {e}"))),
            Ok(Ok(s)) if !s.success() => {
                return Err(setup(format!(
                    "child {i} failed ({s}); its messages are above"
                )))
            }
            Ok(Ok(_)) => {}
        }
    }
    let mut reports = Vec::with_capacity(n as usize);
    for i in 0..n {
        let path = opts.out_dir.join(format!("child-{i}")).join(REPORT_FILE);
        reports.push(ChildReport::read(&path).map_err(setup)?);
    }
    let mut outcome = merge(&reports).map_err(setup)?;
    let tck = cpu::ticks_per_second();
    for ((pid, s), e) in start.into_iter().zip(end) {
        match (s, e) {
            (Ok(s), Ok(e)) => {
                outcome
                    .sut_cpu
                    .push(SutCpu::between(pid, s, e, outcome.stanzas_measured, tck))
            }
            (Err(err), _) | (_, Err(err)) => outcome
                .sut_cpu_errors
                .push(format!("--sut-pid {pid}: {err}")),
        }
    }
    outcome.killed_at_s = killed_at_s;
    outcome.killed_at_unix_s = killed_at_unix_s;
    for i in 0..n {
        outcome.files.push(
            opts.out_dir
                .join(format!("child-{i}"))
                .join("intervals.hlog"),
        );
    }
    Ok(outcome)
}

/// The outcome the children's reports add up to: histograms and accounting merged,
/// counters summed, set-up times the slowest child's, per-second series summed second by
/// second. SUT CPU is left empty (the parent measures it).
///
/// Errors: a report whose histograms cannot be read.
pub fn merge(reports: &[ChildReport]) -> Result<Outcome, String> {
    let mut measured = Recorder::with_steps(crate::world::ALL_STEPS);
    let mut all = Recorder::with_steps(crate::world::ALL_STEPS);
    let mut measured_s: f64 = 0.0;
    let mut setup = SetupTimes::default();
    let mut seconds: Vec<Second> = Vec::new();
    let mut children = Vec::new();
    let sum_opt = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(x), Some(y)) => Some(x + y),
        (x, None) | (None, x) => x,
    };
    let (mut peak_rss, mut fds) = (None, None);
    for r in reports {
        let m = Recorder::from_wire(&r.measured).map_err(|e| format!("child {}: {e}", r.index))?;
        let a = Recorder::from_wire(&r.all).map_err(|e| format!("child {}: {e}", r.index))?;
        measured.merge(&m);
        all.merge(&a);
        measured_s = measured_s.max(r.measured_s);
        setup.streams_s = setup.streams_s.max(r.setup.streams_s);
        setup.logins_s = setup.logins_s.max(r.setup.logins_s);
        setup.subscriptions += r.setup.subscriptions;
        setup.subscriptions_s = setup.subscriptions_s.max(r.setup.subscriptions_s);
        for (k, s) in r.per_second.iter().enumerate() {
            match seconds.get_mut(k) {
                None => seconds.push(*s),
                Some(t) => {
                    t.stanzas_in_per_s += s.stanzas_in_per_s;
                    t.in_flight += s.in_flight;
                    t.redirects += s.redirects;
                    t.relogins += s.relogins;
                    t.unexpected_closes += s.unexpected_closes;
                }
            }
        }
        peak_rss = sum_opt(peak_rss, r.peak_rss_kib);
        fds = sum_opt(fds, r.fds_at_ready);
        children.push(serde_json::json!({
            "index": r.index,
            "setup": r.setup,
            "open_fds_at_ready": r.fds_at_ready,
            "fd_limit": r.fd_limit,
            "peak_rss_kib": r.peak_rss_kib,
            "ops_measured": r.ops,
            "auth_first_failures": r.first_auth_failures,
            "accounting": a.accounting().summary_line(),
        }));
    }
    let mut summary = measured.summary(Duration::from_secs_f64(measured_s));
    summary.accounting = all.accounting();
    let sum = |f: fn(&ChildReport) -> u64| reports.iter().map(f).sum::<u64>();
    Ok(Outcome {
        summary,
        ops: sum(|r| r.ops),
        skipped: sum(|r| r.skipped),
        subscribe_as_presence: sum(|r| r.subscribe_as_presence),
        peer_resent: sum(|r| r.peer_resent),
        peer_sockets: crate::peers::Sockets {
            opened: sum(|r| r.peer_sockets.opened),
            accepted: sum(|r| r.peer_sockets.accepted),
            bidi: sum(|r| r.peer_sockets.bidi),
            // Each child runs its own servers: counts add up, maxima do not.
            accepting_servers: sum(|r| r.peer_sockets.accepting_servers),
            accepted_max_per_server: reports
                .iter()
                .map(|r| r.peer_sockets.accepted_max_per_server)
                .max()
                .unwrap_or(0),
        },
        duplicates: sum(|r| r.duplicates),
        unexpected_closes: sum(|r| r.unexpected_closes),
        auth_failures: sum(|r| r.auth_failures),
        first_auth_failures: reports.iter().fold(Default::default(), |mut f, r| {
            f.merge(&r.first_auth_failures);
            f
        }),
        peak_rss_kib: peak_rss,
        sut_cpu: Vec::new(),
        sut_cpu_errors: Vec::new(),
        redirects: sum(|r| r.redirects),
        relogins: sum(|r| r.relogins),
        killed_at_s: None,
        killed_at_unix_s: None,
        files: Vec::new(),
        measured,
        all,
        seconds,
        setup,
        stanzas_measured: sum(|r| r.stanzas_measured),
        fds_at_ready: fds,
        procs: reports.len() as u32,
        children,
    })
}

/// This process's soft open-files limit (`RLIMIT_NOFILE`), `None` when it cannot be read or
/// is unlimited.
pub fn nofile_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid pointer to an initialised struct.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0;
    (ok && r.rlim_cur != libc::RLIM_INFINITY).then_some(r.rlim_cur)
}
