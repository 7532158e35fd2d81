//! What a run produced ([`Outcome`]) and its outputs in the output folder
//! ([`write_report`]): `summary.json`, one `.hgrm` per step, `latency.svg`.

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::cpu::{self, SutCpu};
use crate::report::{Recorder, Summary};
use crate::run::{Load, RunError, RunOptions};
use crate::targets::SutS2s;

/// One second of the run (warm-up included): what loadgen received and what it gave up
/// on, for seeing when a dead node's share was served again.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Second {
    /// End of the interval, seconds from the start of the measured window (negative
    /// during the warm-up).
    pub t_s: f64,
    /// Stanzas received by peers and clients in the interval, per second.
    pub stanzas_in_per_s: f64,
    /// Tracked deliveries in flight at the end of the interval.
    pub in_flight: u64,
    /// `<see-other-host/>` redirects followed so far.
    pub redirects: u64,
    /// Client logins made again so far.
    pub relogins: u64,
    /// S2S streams closed by the SUT so far (unexpected closes).
    pub unexpected_closes: u64,
}

/// What a run produced.
#[derive(Debug)]
pub struct Outcome {
    /// Percentiles, throughput and accounting.
    pub summary: Summary,
    /// Operations started in the measured period.
    pub ops: u64,
    /// Operations the open loop skipped because too much was in flight.
    pub skipped: u64,
    /// `subscribe` operations of the mixed scenario run as presence (or a message) because
    /// every fresh pair was already subscribed (warm-up included).
    pub subscribe_as_presence: u64,
    /// Stanzas the peers sent again on a new stream (XEP-0198: not acknowledged by the SUT
    /// when the last stream dropped).
    pub peer_resent: u64,
    /// TCP connections between the peers and the SUT, each way, and the peers' bidi
    /// streams (XEP-0288).
    pub peer_sockets: crate::peers::Sockets,
    /// Tracked deliveries received more than expected: duplicates (a stanza sent again after
    /// a dropped stream that had arrived after all). Not an accounting error: delivery is
    /// at least once without end-to-end deduplication.
    pub duplicates: u64,
    /// Streams closed without loadgen asking, and S2S authentication failures.
    pub unexpected_closes: u64,
    /// S2S authentication failures.
    pub auth_failures: u64,
    /// Of those, the failures of a peer domain's first attempt (not of its retries), by
    /// cause: what a peer that does not retry soon would have lost.
    pub first_auth_failures: crate::auth::FirstFailures,
    /// Peak resident memory of this process, KiB (VmHWM); a split run: the sum of its
    /// children's.
    pub peak_rss_kib: Option<u64>,
    /// CPU of each `--sut-pid` over the measured window, in the order given; empty when
    /// none was given or the run ended before the window began.
    pub sut_cpu: Vec<SutCpu>,
    /// `--sut-pid` processes that could not be read (each message names the pid).
    pub sut_cpu_errors: Vec<String>,
    /// `<see-other-host/>` redirects the clients followed.
    pub redirects: u64,
    /// Client logins made again after a session ended without loadgen asking.
    pub relogins: u64,
    /// When `--kill-pid` was killed, seconds from the start of the measured window.
    pub killed_at_s: Option<f64>,
    /// When `--kill-pid` was killed, Unix time in seconds.
    pub killed_at_unix_s: Option<f64>,
    /// Files written.
    pub files: Vec<PathBuf>,
    /// What the measured window recorded (the summary's percentiles come from it).
    pub measured: Recorder,
    /// Everything recorded, set-up and warm-up included, with the losses: the accounting.
    pub all: Recorder,
    /// One entry per second of the warm-up and the measured window.
    pub seconds: Vec<Second>,
    /// How long set-up took.
    pub setup: SetupTimes,
    /// Stanzas received by peers and clients in the measured window.
    pub stanzas_measured: u64,
    /// Open file descriptors of this process when set-up was done (the parent of a split
    /// run: the sum over its children).
    pub fds_at_ready: Option<u64>,
    /// Processes the run was split over (`--procs`; 1 for a run in one process).
    pub procs: u32,
    /// A split run: per child, what it reported about itself (index, set-up, open files,
    /// peak RSS, accounting line).
    pub children: Vec<serde_json::Value>,
}

/// How long each set-up phase took (a split run: the slowest child's).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct SetupTimes {
    /// Until every peer domain's stream to the SUT was authenticated, seconds.
    pub streams_s: f64,
    /// Until every client was logged in, seconds.
    pub logins_s: f64,
    /// Subscriptions made during set-up.
    pub subscriptions: u32,
    /// Until they were made, seconds.
    pub subscriptions_s: f64,
}

/// Peak resident set size of this process, KiB (`VmHWM` of /proc/self/status).
pub fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Writes a run's outputs into `opts.out_dir` and adds them to `outcome.files`:
/// `summary.json` (with `params`: the options and what the run counted), one `.hgrm` per
/// step and `latency.svg`. Used by a run in one process and by the parent of a split run
/// (with the merged outcome).
///
/// Errors: an output that cannot be written.
pub fn write_report(
    opts: &RunOptions,
    sut_s2s: &[SutS2s],
    sut_c2s: &[SocketAddr],
    outcome: &mut Outcome,
) -> Result<(), RunError> {
    let setup = |m: String| RunError::Setup(m);
    let topo = &opts.topo;
    let o = &*outcome;
    let params = serde_json::json!({
        "scenario": opts.scenario.name(),
        "peers": topo.peers,
        "users_per_peer": topo.users_per_peer,
        "local_users": topo.local_users,
        "domains_per_server": topo.domains_per_server,
        "sut_domain": topo.sut_domain,
        "procs": o.procs,
        "load": match opts.load {
            Load::Open { rate } => serde_json::json!({"open_loop_ops_per_s": rate}),
            Load::Closed { concurrency } => serde_json::json!({"closed_loop_concurrency": concurrency}),
        },
        "mix": opts.mix,
        "warmup_s": opts.warmup.as_secs_f64(),
        "duration_s": opts.duration.as_secs_f64(),
        "ops_measured": o.ops,
        "ops_skipped": o.skipped,
        "subscribe_as_presence": o.subscribe_as_presence,
        "peer_sm": opts.peer_sm,
        "peer_bidi": opts.peer_bidi,
        "sut_multiplex": opts.sut_multiplex,
        // TCP connections between the peers and the SUT (XEP-0288 halves them when
        // both ends support it): opened by the peers, accepted from the SUT.
        "peer_sockets": o.peer_sockets,
        "churn_reset": opts.churn_reset,
        "peer_resent": o.peer_resent,
        "duplicates": o.duplicates,
        "peak_rss_kib": o.peak_rss_kib,
        "open_fds_at_ready": o.fds_at_ready,
        "setup": o.setup,
        "unexpected_closes": o.unexpected_closes,
        "auth_failures": o.auth_failures,
        "auth_first_failures": o.first_auth_failures,
        "sut_cpu": o.sut_cpu,
        "sut_cpu_errors": o.sut_cpu_errors,
        "sut_cpu_stanzas": "stanzas loadgen received in the measured window",
        "sut_cpu_total": cpu::total(&o.sut_cpu),
        "sut_s2s": sut_s2s.iter().map(|n| serde_json::json!({"addr": n.addr.to_string(), "weight": n.weight})).collect::<Vec<_>>(),
        "sut_c2s": sut_c2s.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "redirects": o.redirects,
        "relogins": o.relogins,
        "kill": opts.kill.map(|k| serde_json::json!({"pid": k.pid, "at_s": k.at.as_secs_f64(), "killed_at_s": o.killed_at_s, "killed_at_unix_s": o.killed_at_unix_s})),
        "per_second": o.seconds,
        "children": o.children,
    });
    let mut files = Vec::new();
    let json_path = opts.out_dir.join("summary.json");
    let mut f = BufWriter::new(File::create(&json_path)?);
    o.summary
        .write_json(&mut f, &params)
        .map_err(|e| setup(e.to_string()))?;
    f.flush()?;
    files.push(json_path);
    files.extend(
        o.measured
            .write_hgrm_files(&opts.out_dir, "loadgen")
            .map_err(|e| setup(e.to_string()))?,
    );
    let svg = opts.out_dir.join("latency.svg");
    o.measured
        .write_svg(
            &svg,
            &format!("loadgen {} — {}", opts.scenario.name(), topo.sut_domain),
        )
        .map_err(|e| setup(e.to_string()))?;
    files.push(svg);
    outcome.files.extend(files);
    Ok(())
}

/// Open file descriptors of this process (entries of `/proc/self/fd`), `None` when that
/// cannot be read.
pub fn open_fds() -> Option<u64> {
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64)
}
