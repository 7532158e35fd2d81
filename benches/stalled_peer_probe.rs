//! The stalled-peer probe of the issue "one stalled remote server freezes every user":
//! what a peer that stops reading does to everyone else. Run by `benches/stalled-peer.sh`
//! (see the "stalled-peer.sh" section of `benches/README.md`); `cargo bench` alone only
//! prints how to run it (it needs root and Prosody).
//!
//! On loopback (`$PROBE_NET.1..4`, default `127.0.233.x`): fedrouter (`fedrouter serve`,
//! the binary Cargo built for this bench, `log.level = "info"`) serves `cupdomain.test`;
//! a real Prosody serves `gmail.test` (the peer that stalls); a second Prosody serves
//! another domain (the unaffected peer; `PEER2=0` leaves it out); fedrouter's own DNS
//! zone server answers on port 53 for all of them (Prosody's lua-unbound only asks 53).
//! Google-style federation (plain TCP, dialback). Prosody comes from
//! `tests/interop/prosody.rs`, the clients from `tests/common/xmpp.rs`.
//!
//! Every `INTERVAL_MS` (100) three pairs each make one round trip (a message and its
//! answer, timed at the sender; the answer comes from an echo thread on the other client):
//! two local pairs (both users on the shard that owns `gmail.test`; one user on each
//! shard) and one S2S pair (a local user on that shard and a user of the second Prosody).
//! After `PRE_SECS` (10) Prosody `gmail.test` is stopped with SIGSTOP (by pid) and
//! `cupuser1` floods `jdoe1@gmail.test` (registered, never logged in: Prosody answers each
//! message it gets with `service-unavailable`) with `FLOOD` (20,000) messages of
//! `BODY_BYTES` (1024); after `STALL_SECS` (60) SIGCONT; then `POST_SECS` (10) more.
//!
//! Output: the round trips' p50/p99/max per pair and phase (before, during, after the
//! stall; a round trip belongs to the phase it started in), the flood's delivered
//! (Prosody's error reply), bounced (fedrouter's, `by='cupdomain.test'`) and lost counts,
//! fedrouter's counters; a markdown table on stdout and `$OUT/stalled-peer.json`.
//! Exit status 0 when the target is met (all pairs' p99 during the stall within 2x of
//! before, no failed round trip, nothing lost), 1 when not, 101 on a panic.
//!
//! Processes are stopped by pid (fedrouter, both Prosodys); their pids are written to
//! `$OUT/pids` for the script's clean-up. SIGINT/SIGTERM/SIGHUP end the run early (still
//! reporting, still cleaning up). Every wait is bounded.

#[path = "../tests/common/c2s_client.rs"]
mod c2s_client;
#[path = "../tests/interop/prosody.rs"]
mod prosody;
#[path = "../tests/common/server.rs"]
mod server;
#[path = "../tests/common/xmpp.rs"]
mod xmpp;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use fedrouter::router::{bare_key, shard_of};
use fedrouter::xml::ns;
use fedrouter_testkit::zone::{ZoneRecord, ZoneServer};
use fedrouter_testkit::TestCa;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::prosody::{Prosody, ProsodySpec, S2sPolicy};
use crate::server::{a, add_user, http_get, srv};
use crate::xmpp::{attr, is_stanza, jid_matches, node, Client, Mech, Target};

const OURS: &str = "cupdomain.test";
const STALLED: &str = "gmail.test";
const PASSWORD: &str = "probe s3cret";
const FLOODER: &str = "cupuser1";
const SINK: &str = "jdoe1@gmail.test";
/// Candidates for the second peer's domain: the first owned by the same fedrouter shard
/// as `gmail.test` is used (the shard the old code paused).
const PEER2_DOMAINS: [&str; 8] = [
    "yahoo.test",
    "aol.test",
    "outlook.test",
    "hotmail.test",
    "proton.test",
    "icloud.test",
    "zoho.test",
    "gmx.test",
];
const PEER2_USER: &str = "frank";
/// Reported series of round trips: the three phases (a round trip belongs to the one it
/// started in), and the part of "during" while the flood was being written.
const SERIES: [&str; 4] = ["before", "during", "after", "during, flood being written"];
/// Values of the shared phase: round trips in `WARM` (the first `WARM_SECS`) are not
/// counted; `BEFORE`..=`AFTER` are series 0..=2.
const WARM: u8 = 0;
const BEFORE: u8 = 1;
const DURING: u8 = 2;
const AFTER: u8 = 3;
const DONE: u8 = 4;
/// The series of round trips that started while the flood was being written.
const FLOODING: usize = 3;
/// Flood messages written between two reads of the replies.
const BATCH: usize = 50;
/// Bound of a set-up step (log-in, warm-up round trip).
const SETUP_WAIT: Duration = Duration::from_secs(60);

/// The run's parameters (environment variables).
#[derive(Debug, Clone)]
struct Params {
    warm: Duration,
    pre: Duration,
    stall: Duration,
    post: Duration,
    interval: Duration,
    flood: usize,
    body: usize,
    peer2: bool,
    shards: usize,
    write_stall_timeout: Option<String>,
    /// After SIGCONT, how long the flood may go without a reply before the rest counts
    /// as lost.
    settle: Duration,
    net: [u8; 3],
    out: PathBuf,
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?}: not a whole number ({e})")),
        _ => default,
    }
}

impl Params {
    fn from_env() -> Params {
        let net = std::env::var("PROBE_NET").unwrap_or_else(|_| "127.0.233".into());
        let parts: Vec<u8> = net
            .split('.')
            .map(|p| p.parse().expect("PROBE_NET: three numbers, e.g. 127.0.233"))
            .collect();
        assert!(
            parts.len() == 3 && parts[0] == 127,
            "PROBE_NET={net}: three numbers on loopback, e.g. 127.0.233"
        );
        let out = std::env::var_os("OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("target/stalled-peer"));
        Params {
            warm: Duration::from_secs(env_u64("WARM_SECS", 2)),
            pre: Duration::from_secs(env_u64("PRE_SECS", 10)),
            stall: Duration::from_secs(env_u64("STALL_SECS", 60)),
            post: Duration::from_secs(env_u64("POST_SECS", 10)),
            interval: Duration::from_millis(env_u64("INTERVAL_MS", 100).max(1)),
            flood: env_u64("FLOOD", 20_000) as usize,
            body: env_u64("BODY_BYTES", 1024) as usize,
            peer2: env_u64("PEER2", 1) != 0,
            shards: env_u64("FR_SHARDS", 2).max(1) as usize,
            write_stall_timeout: std::env::var("WRITE_STALL_TIMEOUT")
                .ok()
                .filter(|s| !s.trim().is_empty()),
            settle: Duration::from_secs(env_u64("SETTLE_SECS", 30)),
            net: [parts[0], parts[1], parts[2]],
            out,
        }
    }

    fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.net[0], self.net[1], self.net[2], host)
    }

    fn json(&self) -> Value {
        json!({
            "warm_s": self.warm.as_secs(),
            "pre_s": self.pre.as_secs(),
            "stall_s": self.stall.as_secs(),
            "post_s": self.post.as_secs(),
            "interval_ms": self.interval.as_millis() as u64,
            "flood": self.flood,
            "body_bytes": self.body,
            "peer2": self.peer2,
            "shards": self.shards,
            "write_stall_timeout": self.write_stall_timeout,
            "settle_s": self.settle.as_secs(),
        })
    }
}

/// Set by SIGINT/SIGTERM/SIGHUP: end early, report, clean up.
fn aborted(flag: &AtomicBool) -> bool {
    flag.load(Ordering::Relaxed)
}

/// What the threads share.
struct Shared {
    /// [`WARM`] .. [`DONE`].
    phase: AtomicU8,
    /// The flood is being written.
    flooding: AtomicBool,
    abort: Arc<AtomicBool>,
    /// When the round trips started (the warm-up's start); times in the report are
    /// seconds after it.
    start: Instant,
}

impl Shared {
    fn phase(&self) -> u8 {
        self.phase.load(Ordering::Relaxed)
    }

    fn set_phase(&self, ph: u8) {
        self.phase.store(ph, Ordering::Relaxed);
    }

    fn over(&self) -> bool {
        self.phase() >= DONE || aborted(&self.abort)
    }
}

/// Sleeps `d`, or less when aborted (checks every 50 ms).
fn sleep_unless_aborted(d: Duration, abort: &AtomicBool) {
    let end = Instant::now() + d;
    // Bounded by `end`.
    while !aborted(abort) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        thread::sleep(left.min(Duration::from_millis(50)));
    }
}

// ---------------------------------------------------------------------------------------
// fedrouter, by pid
// ---------------------------------------------------------------------------------------

/// The `fedrouter serve` process; SIGTERM (SIGKILL 10 s later) on drop.
struct Fedrouter {
    child: Option<Child>,
    admin: SocketAddr,
    log: PathBuf,
}

impl Fedrouter {
    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn metrics(&self) -> String {
        match http_get(self.admin, "/metrics", Duration::from_secs(10)) {
            Ok((200, body)) => body,
            Ok((status, body)) => panic!("GET /metrics: status {status}: {body}"),
            Err(e) => panic!("GET /metrics: {e}"),
        }
    }

    fn log_lines(&self, needles: &[&str]) -> usize {
        fs::read(&self.log)
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .lines()
                    .filter(|l| needles.iter().all(|n| l.contains(n)))
                    .count()
            })
            .unwrap_or(0)
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            // SAFETY: kill(2) on the pid of our child, not reaped yet.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let end = Instant::now() + Duration::from_secs(10);
            // Bounded by `end`.
            while Instant::now() < end {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
            eprintln!("stalled-peer: fedrouter did not exit within 10 s of SIGTERM; SIGKILL");
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

impl Drop for Fedrouter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `sum` of the samples of `name` in Prometheus text `body` whose labels include all of
/// `labels`.
fn metric(body: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Every `label="…"` value of `name`'s samples with their values.
fn metric_by_label(body: &str, name: &str, label: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let key = format!("{label}=\"");
    for l in body.lines().filter(|l| l.starts_with(&format!("{name}{{"))) {
        let Some(i) = l.find(&key) else { continue };
        let rest = &l[i + key.len()..];
        let Some(j) = rest.find('"') else { continue };
        let v = l
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        *out.entry(rest[..j].to_owned()).or_default() += v;
    }
    out
}

// ---------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------

/// One pair's round trips per series ([`SERIES`]).
struct PairResult {
    name: String,
    hist: Vec<Histogram<u64>>,
    /// Per series: when the slowest round trip started, seconds after the warm-up.
    max_at: [f64; 4],
    /// Round trips that got an error reply or no answer within the bound.
    failed: [u64; 4],
    first_failure: Option<String>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

/// Answers every chat message `c` gets with `<id>-pong`, until the run is over.
fn echo(mut c: Client, sh: Arc<Shared>) {
    // Bounded: ends with the run (DONE or aborted), each turn waits at most 200 ms.
    while !sh.over() && !c.is_closed() {
        let Some(m) = c.try_recv(
            |x| is_stanza(x, "message") && attr(x, "type").as_deref() == Some("chat"),
            Duration::from_millis(200),
        ) else {
            let _ = c.take_buffered(|_| true);
            continue;
        };
        let (Some(id), Some(from)) = (attr(&m, "id"), attr(&m, "from")) else {
            continue;
        };
        c.send(&format!(
            "<message type='chat' to='{from}' id='{id}-pong'><body>pong</body></message>"
        ));
    }
    c.close();
}

/// Every `interval`, a message from `a` to `to` and its answer, timed; until the run is
/// over.
fn pinger(
    name: String,
    mut a: Client,
    to: String,
    interval: Duration,
    bound: Duration,
    sh: Arc<Shared>,
) -> PairResult {
    let mut r = PairResult {
        name: name.clone(),
        hist: (0..SERIES.len()).map(|_| histogram()).collect(),
        max_at: [0.0; 4],
        failed: [0; 4],
        first_failure: None,
    };
    let mut next = Instant::now();
    // Bounded: ends with the run; each turn waits at most `bound`.
    for seq in 0u64.. {
        let ph = sh.phase();
        if sh.over() || a.is_closed() {
            break;
        }
        let mut series = Vec::with_capacity(2);
        if ph != WARM {
            series.push(usize::from(ph - BEFORE));
            if sh.flooding.load(Ordering::Relaxed) {
                series.push(FLOODING);
            }
        }
        let id = format!("{name}-{seq}");
        let pong = format!("{id}-pong");
        let t0 = Instant::now();
        a.send(&format!(
            "<message type='chat' to='{to}' id='{id}'><body>ping {seq}</body></message>"
        ));
        let got = a.try_recv(
            |x| {
                is_stanza(x, "message") && {
                    let i = attr(x, "id");
                    i.as_deref() == Some(pong.as_str())
                        || (i.as_deref() == Some(id.as_str())
                            && attr(x, "type").as_deref() == Some("error"))
                }
            },
            bound,
        );
        let rtt = t0.elapsed();
        let ok = got
            .as_ref()
            .is_some_and(|m| attr(m, "type").as_deref() != Some("error"));
        for &i in &series {
            if ok {
                let us = (rtt.as_micros() as u64).clamp(1, 3_600_000_000);
                if us > r.hist[i].max() {
                    r.max_at[i] = t0.saturating_duration_since(sh.start).as_secs_f64();
                }
                r.hist[i].saturating_record(us);
            } else {
                r.failed[i] += 1;
            }
        }
        if !ok && ph != WARM && r.first_failure.is_none() {
            r.first_failure =
                Some(got.unwrap_or_else(|| format!("no answer to {id} within {bound:?}")));
        }
        // Drops what is left over (late answers), so the inbox stays small.
        let _ = a.take_buffered(|_| true);
        next += interval;
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        } else {
            next = now;
        }
    }
    a.close();
    r
}

// ---------------------------------------------------------------------------------------
// The flood
// ---------------------------------------------------------------------------------------

/// How the flood's messages ended, as `cupuser1` saw them.
#[derive(Debug, Default)]
struct Tally {
    sent: usize,
    delivered: usize,
    bounced: BTreeMap<String, usize>,
    duplicates: usize,
    unexpected: Vec<String>,
    seen: Vec<bool>,
    /// Time from the flood's start to its first bounce.
    first_bounce: Option<Duration>,
    written_in: Option<Duration>,
    error: Option<String>,
}

impl Tally {
    fn bounced_total(&self) -> usize {
        self.bounced.values().sum()
    }

    fn accounted(&self) -> usize {
        self.delivered + self.bounced_total()
    }

    /// Counts one element `cupuser1` received.
    fn record(&mut self, x: &str, t0: Instant) {
        if !x.starts_with("<message") {
            return;
        }
        let n = node(x);
        if n.name != "message" || n.ns != ns::CLIENT || n.attr("type") != Some("error") {
            return;
        }
        let Some(i) = n
            .attr("id")
            .and_then(|id| id.strip_prefix("flood-")?.parse::<usize>().ok())
            .filter(|&i| i < self.seen.len())
        else {
            return;
        };
        let err = n.children.iter().find(|c| c.name == "error");
        let by = err.and_then(|e| e.attr("by")).map(str::to_ascii_lowercase);
        let cond = err
            .and_then(|e| e.children.iter().find(|c| c.ns == ns::STANZA_ERRORS))
            .map(|c| c.name.clone())
            .unwrap_or_default();
        let from_ok = n.attr("from").is_some_and(|f| jid_matches(f, SINK));
        let ours = by.as_deref() == Some(OURS);
        let theirs = by.is_none() && cond == "service-unavailable";
        if !from_ok || !(ours || theirs) {
            if self.unexpected.len() < 20 {
                self.unexpected.push(x.to_owned());
            }
            return;
        }
        if std::mem::replace(&mut self.seen[i], true) {
            self.duplicates += 1;
        } else if theirs {
            self.delivered += 1;
        } else {
            if self.first_bounce.is_none() {
                self.first_bounce = Some(t0.elapsed());
            }
            *self.bounced.entry(cond).or_default() += 1;
        }
    }
}

/// Reads what `c` has received (each element waited for at most `wait`, at most `max`).
fn drain(c: &mut Client, tally: &mut Tally, t0: Instant, wait: Duration, max: usize) -> usize {
    let before = tally.accounted();
    // Bounded: `max` turns.
    for _ in 0..max {
        let Some(x) = c.try_recv(|_| true, wait) else {
            break;
        };
        tally.record(&x, t0);
    }
    tally.accounted() - before
}

/// Writes the flood, reading replies between batches, then reads until every message is
/// answered, or (once Prosody is continued) nothing came for `settle`, or the run aborts.
fn flood(c: &mut Client, tally: &mut Tally, p: &Params, sh: &Shared) {
    sh.flooding.store(true, Ordering::Relaxed);
    write_flood(c, tally, p, &sh.abort);
    sh.flooding.store(false, Ordering::Relaxed);
    if tally.error.is_some() {
        return;
    }
    let t0 = Instant::now();
    let mut last = Instant::now();
    // Bounded: after SIGCONT, `settle` without a reply ends it; before, the run's phases
    // (bounded) move on; aborting ends it.
    while tally.accounted() < tally.sent && !aborted(&sh.abort) && !c.is_closed() {
        let progress = drain(c, tally, t0, Duration::from_millis(500), 10_000) > 0;
        if progress || sh.phase() < AFTER {
            last = Instant::now();
        } else if last.elapsed() >= p.settle {
            break;
        }
    }
}

/// Writes the flood in batches, reading replies between them.
fn write_flood(c: &mut Client, tally: &mut Tally, p: &Params, abort: &AtomicBool) {
    let body: String = "0123456789abcdef".repeat(p.body.div_ceil(16))[..p.body].to_owned();
    let t0 = Instant::now();
    let mut batch = String::with_capacity(BATCH * (p.body + 100));
    for start in (0..p.flood).step_by(BATCH) {
        if aborted(abort) {
            return;
        }
        batch.clear();
        for i in start..(start + BATCH).min(p.flood) {
            let _ = write!(
                batch,
                "<message type='chat' to='{SINK}' id='flood-{i}'><body>{body}</body></message>"
            );
        }
        c.send(&batch);
        tally.sent = (start + BATCH).min(p.flood);
        drain(c, tally, t0, Duration::from_millis(1), 10 * BATCH);
        if c.is_closed() {
            tally.error = Some("fedrouter closed cupuser1's stream during the flood".into());
            return;
        }
    }
    tally.written_in = Some(t0.elapsed());
}

// ---------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------

fn record_pid(out: &Path, name: &str, pid: u32) {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.join("pids"))
        .expect("open the pid file");
    writeln!(f, "{name} {pid}").expect("write the pid file");
}

/// The first of `names` for which `pred` holds.
fn pick(mut names: impl Iterator<Item = String>, pred: impl Fn(&str) -> bool) -> String {
    names
        .find(|n| pred(n))
        .expect("a name that fits (64 tried)")
}

fn login(addr: SocketAddr, domain: &str, ca: &Path, mech: Mech, user: &str) -> Client {
    let t = Target {
        addr,
        domain: domain.into(),
        cert: ca.to_path_buf(),
    };
    let mut c = Client::login_with(&t, mech, user, PASSWORD, Some("probe"));
    c.timeout = SETUP_WAIT;
    c.send("<presence/>");
    c.sync();
    c
}

fn start_fedrouter(p: &Params, work: &Path, ca: &TestCa, users: &[String]) -> Fedrouter {
    let fr = p.ip(1);
    let cert = ca.issue(OURS).expect("certificate for cupdomain.test");
    fs::write(work.join("ours.crt"), cert.chain_pem()).expect("write certificate");
    fs::write(work.join("ours.key"), cert.key_pem()).expect("write key");
    let stall = p
        .write_stall_timeout
        .as_ref()
        .map(|t| format!("\n[s2s]\nwrite_stall_timeout = \"{t}\"\n"))
        .unwrap_or_default();
    let toml = format!(
        r#"# Written by benches/stalled_peer_probe.rs.
data_dir = "{data}"
domains = ["{OURS}"]
shards = {shards}

[listen]
s2s = ["{fr}:5269"]
s2s_tls = []
c2s = ["{fr}:5222"]
admin = "{fr}:9269"

[dns]
nameservers = ["{dns}:53"]
timeout = "2s"

[[tls.certificate]]
domain = "{OURS}"
cert = "{work}/ours.crt"
key = "{work}/ours.key"

[log]
level = "info"

[federation.default]
tls = "disabled"
auth = "dialback"
verify_certificates = false
{stall}"#,
        data = work.join("fedrouter-data").display(),
        shards = p.shards,
        dns = p.ip(3),
        work = work.display(),
    );
    let config = work.join("fedrouter.toml");
    fs::write(&config, toml).expect("write fedrouter.toml");
    for u in users {
        add_user(&config, &format!("{u}@{OURS}"), PASSWORD);
    }
    let log = work.join("fedrouter.log");
    let log_file = fs::File::create(&log).expect("create fedrouter.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fedrouter"));
    cmd.arg("serve")
        .arg("-c")
        .arg(&config)
        .current_dir(work)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    // SAFETY: prctl(2) only, in the child before exec: fedrouter gets SIGTERM if this
    // process dies without stopping it.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn fedrouter serve");
    let me = Fedrouter {
        child: Some(child),
        admin: SocketAddr::new(fr.into(), 9269),
        log,
    };
    record_pid(&p.out, "fedrouter", me.pid());
    let end = Instant::now() + Duration::from_secs(30);
    // Bounded by `end`.
    loop {
        if let Ok((200, b)) = http_get(me.admin, "/health", Duration::from_secs(3)) {
            if serde_json::from_str::<Value>(&b).is_ok_and(|v| v["status"] == "ok") {
                return me;
            }
        }
        assert!(
            Instant::now() < end,
            "fedrouter: /health not ok within 30 s; see {}",
            me.log.display()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn start_prosody(p: &Params, ca: &TestCa, host: &str, addr: Ipv4Addr, users: &[&str]) -> Prosody {
    let cert = ca.issue(host).expect("certificate");
    let pr = Prosody::start(ProsodySpec {
        host: host.into(),
        addr,
        dns: p.ip(3),
        cert_pem: cert.chain_pem(),
        key_pem: cert.key_pem(),
        s2s: S2sPolicy {
            require_encryption: false,
            secure_auth: false,
            cafile: None,
            bidi: false,
            stream_management: true,
        },
    });
    record_pid(&p.out, &format!("prosody-{host}"), pr.pid().unwrap_or(0));
    for u in users {
        pr.register(u, PASSWORD);
    }
    pr
}

/// A round trip in the set-up (no timing), bounded by [`SETUP_WAIT`].
fn warm_round_trip(a: &mut Client, b: &mut Client, id: &str) {
    let to = b.jid.clone().expect("bound");
    a.send(&format!(
        "<message type='chat' to='{to}' id='{id}'><body>warm</body></message>"
    ));
    b.expect(&format!("warm-up message {id}"), |x| {
        is_stanza(x, "message") && attr(x, "id").as_deref() == Some(id)
    });
}

struct Outcome {
    pairs: Vec<PairResult>,
    tally: Tally,
    metrics: String,
    congested_peak: u64,
    congested_lines: usize,
    recovered_lines: usize,
    ended_lines: usize,
    peer2_domain: Option<String>,
    stall_actual: Duration,
    /// Starts of "before", "during" and "after", after the round trips' start.
    boundaries: [Duration; 3],
}

fn run(p: &Params, abort: &Arc<AtomicBool>) -> Outcome {
    let work = p.out.join("work");
    fs::create_dir_all(&work).expect("create the work folder");
    let _ = fs::remove_file(p.out.join("pids"));
    let ca = TestCa::new("fedrouter stalled-peer probe CA").expect("test CA");
    let ca_pem = work.join("ca.pem");
    fs::write(&ca_pem, ca.ca_cert_pem()).expect("write CA");

    // Who lives where: fedrouter's shard of gmail.test is the one the old code paused.
    let n = p.shards;
    let stalled = shard_of(STALLED, n);
    let shard = |u: &str| shard_of(&bare_key(&format!("{u}@{OURS}")), n);
    let names = || (0..64).map(|i| format!("user{i}"));
    let on: Vec<String> = names().filter(|u| shard(u) == stalled).take(4).collect();
    let off = pick(names(), |u| shard(u) != stalled || n == 1);
    assert_eq!(on.len(), 4, "four users on the stalled domain's shard");
    let peer2_domain = p.peer2.then(|| {
        PEER2_DOMAINS
            .iter()
            .find(|d| shard_of(d, n) == stalled)
            .unwrap_or(&PEER2_DOMAINS[0])
            .to_string()
    });

    let mut records: Vec<ZoneRecord> = Vec::new();
    let mut domains = vec![(OURS.to_owned(), p.ip(1)), (STALLED.to_owned(), p.ip(2))];
    if let Some(d) = &peer2_domain {
        domains.push((d.clone(), p.ip(4)));
    }
    for (d, addr) in &domains {
        let host = format!("xmpp.{d}");
        records.push(srv("_xmpp-server", d, &host, 5269));
        records.push(a(&host, *addr));
    }
    let _dns = ZoneServer::start(SocketAddr::new(p.ip(3).into(), 53), records)
        .unwrap_or_else(|e| panic!("DNS on {}:53 (root needed): {e}", p.ip(3)));

    let gmail = start_prosody(p, &ca, STALLED, p.ip(2), &["jdoe1"]);
    let peer2 = peer2_domain
        .as_ref()
        .map(|d| start_prosody(p, &ca, d, p.ip(4), &[PEER2_USER]));
    let mut users = vec![FLOODER.to_owned(), off.clone()];
    users.extend(on.iter().cloned());
    let fr = start_fedrouter(p, &work, &ca, &users);

    let c2s = SocketAddr::new(p.ip(1).into(), 5222);
    let local = |u: &str| login(c2s, OURS, &ca_pem, Mech::ScramSha256, u);
    let mut flooder = local(FLOODER);
    let mut pairs: Vec<(String, Client, Client)> = vec![
        ("local-same-shard".into(), local(&on[0]), local(&on[1])),
        ("local-cross-shard".into(), local(&on[2]), local(&off)),
    ];
    if let (Some(d), Some(pr)) = (&peer2_domain, &peer2) {
        let remote = login(pr.c2s(), d, &ca_pem, Mech::ScramSha1, PEER2_USER);
        pairs.push(("s2s-second-peer".into(), local(&on[3]), remote));
    }

    // Warm-up: federation with gmail.test (Prosody's answer for jdoe1, who is offline),
    // and one round trip per pair (both ways).
    flooder.send(&format!(
        "<message type='chat' to='{SINK}' id='warm-gmail'><body>warm</body></message>"
    ));
    let e = flooder.expect_error("message", "warm-gmail");
    assert!(
        !e.contains(&format!("by='{OURS}'")),
        "gmail.test did not answer the warm-up message; fedrouter bounced it: {e}"
    );
    for (i, (_, x, y)) in pairs.iter_mut().enumerate() {
        warm_round_trip(x, y, &format!("warm-{i}-a"));
        warm_round_trip(y, x, &format!("warm-{i}-b"));
    }

    let sh = Arc::new(Shared {
        phase: AtomicU8::new(WARM),
        flooding: AtomicBool::new(false),
        abort: abort.clone(),
        start: Instant::now(),
    });
    let bound = p.stall + p.post + Duration::from_secs(120);
    let mut pingers = Vec::new();
    let mut echoes = Vec::new();
    for (name, x, mut y) in pairs {
        y.timeout = bound;
        let to = y.jid.clone().expect("bound");
        let s2 = sh.clone();
        echoes.push(thread::spawn(move || echo(y, s2)));
        let (s2, interval) = (sh.clone(), p.interval);
        pingers.push(thread::spawn(move || {
            pinger(name, x, to, interval, bound, s2)
        }));
    }
    eprintln!(
        "stalled-peer: round trips: warm-up ({:?}), then before the stall ({:?})",
        p.warm, p.pre
    );
    sleep_unless_aborted(p.warm, abort);
    let before_at = sh.start.elapsed();
    sh.set_phase(BEFORE);
    sleep_unless_aborted(p.pre, abort);

    // The stall: SIGSTOP by pid; the guard continues Prosody whatever happens.
    let stopped = gmail.suspend();
    let stall_start = Instant::now();
    let stall_at = sh.start.elapsed();
    sh.set_phase(DURING);
    eprintln!(
        "stalled-peer: prosody gmail.test (pid {}) stopped; flooding {SINK} with {} x {} B",
        stopped.pid(),
        p.flood,
        p.body
    );
    let flood_thread = {
        let (s2, pp) = (sh.clone(), p.clone());
        thread::spawn(move || {
            let mut tally = Tally {
                seen: vec![false; pp.flood],
                ..Tally::default()
            };
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                flood(&mut flooder, &mut tally, &pp, &s2);
            }));
            if let Err(e) = r {
                tally.error = Some(
                    e.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_else(|| "panicked".into()),
                );
            }
            tally
        })
    };
    let mut congested_peak = 0;
    let end = stall_start + p.stall;
    // Bounded by `end`: the congestion gauge once a second.
    while Instant::now() < end && !aborted(abort) {
        if let Ok((200, body)) = http_get(fr.admin, "/metrics", Duration::from_secs(2)) {
            congested_peak = congested_peak.max(metric(
                &body,
                "fedrouter_congested_destinations",
                &[("proto", "s2s")],
            ));
        }
        sleep_unless_aborted(
            end.saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1)),
            abort,
        );
    }
    stopped.resume();
    let stall_actual = stall_start.elapsed();
    sh.set_phase(AFTER);
    eprintln!("stalled-peer: prosody gmail.test continued after {stall_actual:?}");
    sleep_unless_aborted(p.post, abort);
    sh.set_phase(DONE);
    let pairs: Vec<PairResult> = pingers
        .into_iter()
        .map(|h| h.join().expect("a pinger thread panicked"))
        .collect();
    for h in echoes {
        let _ = h.join();
    }
    eprintln!(
        "stalled-peer: waiting for the flood's last replies (at most {:?} without one)",
        p.settle
    );
    let tally = flood_thread.join().expect("the flood thread");
    let metrics = fr.metrics();
    let congested_lines = fr.log_lines(&["WARN", "remote server congested"]);
    let recovered_lines = fr.log_lines(&["WARN", "remote server recovered"]);
    let ended_lines = fr.log_lines(&["WARN", "remote server congestion ended"]);
    drop(fr);
    drop(peer2);
    drop(gmail);
    Outcome {
        pairs,
        tally,
        metrics,
        congested_peak,
        congested_lines,
        recovered_lines,
        ended_lines,
        peer2_domain,
        stall_actual,
        boundaries: [before_at, stall_at, stall_at + stall_actual],
    }
}

// ---------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn series_json(h: &Histogram<u64>, failed: u64, max_at: Option<f64>) -> Value {
    if h.is_empty() {
        return json!({ "n": 0, "failed": failed });
    }
    json!({
        "n": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.5)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "max_ms": ms(h.max()),
        "max_at_s": max_at,
        "failed": failed,
    })
}

fn cell(h: &Histogram<u64>, q: Option<f64>) -> String {
    if h.is_empty() {
        return "—".into();
    }
    let v = match q {
        Some(q) => h.value_at_quantile(q),
        None => h.max(),
    };
    format!("{:.2}", ms(v))
}

fn report(p: &Params, o: &Outcome) -> (String, Value, bool) {
    let mut md = String::new();
    let mut all: Vec<Histogram<u64>> = (0..SERIES.len()).map(|_| histogram()).collect();
    let mut all_failed = [0u64; 4];
    let mut pairs_json = serde_json::Map::new();
    let _ = writeln!(
        md,
        "\n== stalled peer: gmail.test stopped for {:.1} s (STALL_SECS {}), flood {} x {} B, round trips every {} ms; second peer {}\n",
        o.stall_actual.as_secs_f64(),
        p.stall.as_secs(),
        p.flood,
        p.body,
        p.interval.as_millis(),
        o.peer2_domain.as_deref().unwrap_or("none"),
    );
    let [b, d, a] = o.boundaries.map(|t| t.as_secs_f64());
    let _ = writeln!(
        md,
        "Round trips from t = 0 s (the first {:.0} s not counted); before from {b:.1} s, during from {d:.1} s, after from {a:.1} s.\n",
        p.warm.as_secs_f64()
    );
    let _ = writeln!(
        md,
        "| pair | phase | round trips | p50 ms | p99 ms | max ms | slowest at s | failed |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|");
    for r in &o.pairs {
        let mut pj = serde_json::Map::new();
        for (i, ph) in SERIES.iter().enumerate() {
            let h = &r.hist[i];
            all[i].add(h).expect("same bounds");
            all_failed[i] += r.failed[i];
            let at = (!h.is_empty()).then_some(r.max_at[i]);
            let _ = writeln!(
                md,
                "| {} | {ph} | {} | {} | {} | {} | {} | {} |",
                r.name,
                h.len(),
                cell(h, Some(0.5)),
                cell(h, Some(0.99)),
                cell(h, None),
                at.map_or("—".into(), |t| format!("{t:.1}")),
                r.failed[i]
            );
            pj.insert((*ph).into(), series_json(h, r.failed[i], at));
        }
        if let Some(f) = &r.first_failure {
            pj.insert("first_failure".into(), json!(f));
        }
        pairs_json.insert(r.name.clone(), Value::Object(pj));
    }
    let mut all_json = serde_json::Map::new();
    for (i, ph) in SERIES.iter().enumerate() {
        let h = &all[i];
        let _ = writeln!(
            md,
            "| all pairs | {ph} | {} | {} | {} | {} | | {} |",
            h.len(),
            cell(h, Some(0.5)),
            cell(h, Some(0.99)),
            cell(h, None),
            all_failed[i]
        );
        all_json.insert((*ph).into(), series_json(h, all_failed[i], None));
    }
    let p99 = |h: &Histogram<u64>| (!h.is_empty()).then(|| h.value_at_quantile(0.99));
    let ratio = match (p99(&all[0]), p99(&all[1])) {
        (Some(b), Some(d)) if b > 0 => Some(d as f64 / b as f64),
        _ => None,
    };
    let pair_ratios: Vec<Value> = o
        .pairs
        .iter()
        .map(|r| match (p99(&r.hist[0]), p99(&r.hist[1])) {
            (Some(b), Some(d)) if b > 0 => json!(d as f64 / b as f64),
            _ => Value::Null,
        })
        .collect();

    let t = &o.tally;
    let lost = t.sent.saturating_sub(t.accounted());
    let unsent = p.flood - t.sent;
    // Series 3 is part of "during".
    let failed_total: u64 = all_failed[..3].iter().sum();
    let latency_ok = ratio.is_some_and(|r| r <= 2.0) && failed_total == 0;
    let flood_ok = lost == 0 && unsent == 0 && t.duplicates == 0 && t.unexpected.is_empty();
    let met = latency_ok && flood_ok && t.error.is_none();

    let _ = writeln!(
        md,
        "\np99 during / before (all pairs): {} (target ≤ 2x); per pair: {}\n",
        ratio.map_or("—".into(), |r| format!("{r:.2}x")),
        pair_ratios
            .iter()
            .map(|v| v.as_f64().map_or("—".into(), |r| format!("{r:.2}x")))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let bounced_conds = t
        .bounced
        .iter()
        .map(|(c, n)| format!("{c} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let by_cause = metric_by_label(&o.metrics, "fedrouter_bounced_by_cause_total", "cause");
    let closed = metric(
        &o.metrics,
        "fedrouter_stalled_streams_closed_total",
        &[("proto", "s2s")],
    );
    let _ = writeln!(md, "| flood | count |");
    let _ = writeln!(md, "|---|---:|");
    let _ = writeln!(md, "| sent | {} of {} |", t.sent, p.flood);
    let _ = writeln!(md, "| delivered (answered by Prosody) | {} |", t.delivered);
    let _ = writeln!(
        md,
        "| bounced by fedrouter | {} ({}) |",
        t.bounced_total(),
        if bounced_conds.is_empty() {
            "—".into()
        } else {
            bounced_conds
        }
    );
    let _ = writeln!(md, "| lost | {lost} |");
    let _ = writeln!(
        md,
        "| duplicate / unexpected replies | {} / {} |",
        t.duplicates,
        t.unexpected.len()
    );
    let _ = writeln!(
        md,
        "| written in / first bounce after | {} / {} |",
        t.written_in
            .map_or("—".into(), |d| format!("{:.2} s", d.as_secs_f64())),
        t.first_bounce
            .map_or("—".into(), |d| format!("{:.3} s", d.as_secs_f64()))
    );
    let _ = writeln!(
        md,
        "| fedrouter_bounced_by_cause_total | {} |",
        by_cause
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        md,
        "| fedrouter_stalled_streams_closed_total{{proto=\"s2s\"}} | {closed} |"
    );
    let congested_end = metric(
        &o.metrics,
        "fedrouter_congested_destinations",
        &[("proto", "s2s")],
    );
    let _ = writeln!(
        md,
        "| fedrouter_congested_destinations{{proto=\"s2s\"}}: peak during the stall / at the end | {} / {congested_end} |",
        o.congested_peak
    );
    let _ = writeln!(
        md,
        "| WARN lines: remote server congested / recovered / congestion ended | {} / {} / {} |",
        o.congested_lines, o.recovered_lines, o.ended_lines
    );
    if let Some(e) = &t.error {
        let _ = writeln!(md, "\nflood failed: {e}");
    }
    let _ = writeln!(
        md,
        "\n{}",
        if met {
            "target met: p99 during the stall within 2x of before, no failed round trip, nothing lost"
        } else {
            "target NOT met"
        }
    );

    let v = json!({
        "params": p.json(),
        "peer2_domain": o.peer2_domain,
        "stall_actual_s": o.stall_actual.as_secs_f64(),
        "phase_starts_s": { "before": b, "during": d, "after": a },
        "pairs": pairs_json,
        "all_pairs": all_json,
        "p99_during_over_before": ratio,
        "p99_during_over_before_per_pair": pair_ratios,
        "flood": {
            "requested": p.flood,
            "sent": t.sent,
            "delivered": t.delivered,
            "bounced": t.bounced_total(),
            "bounced_by_condition": t.bounced,
            "lost": lost,
            "duplicates": t.duplicates,
            "unexpected": t.unexpected,
            "written_in_s": t.written_in.map(|d| d.as_secs_f64()),
            "first_bounce_s": t.first_bounce.map(|d| d.as_secs_f64()),
            "error": t.error,
        },
        "fedrouter": {
            "bounced_by_cause": by_cause,
            "stalled_streams_closed_s2s": closed,
            "congested_destinations_peak": o.congested_peak,
            "congested_destinations_end": congested_end,
            "warn_congested_lines": o.congested_lines,
            "warn_recovered_lines": o.recovered_lines,
            "warn_congestion_ended_lines": o.ended_lines,
        },
        "target": {
            "p99_ratio_max": 2.0,
            "latency_ok": latency_ok,
            "flood_ok": flood_ok,
            "met": met,
        },
    });
    (md, v, met)
}

fn main() {
    if !std::env::args().any(|a| a == "--probe") {
        eprintln!(
            "stalled_peer_probe: not run (it needs root and Prosody); use benches/stalled-peer.sh, or pass --probe"
        );
        return;
    }
    let p = Params::from_env();
    fs::create_dir_all(&p.out).expect("create the output folder");
    let abort = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        signal_hook::flag::register(sig, abort.clone()).expect("signal handler");
    }
    let o = run(&p, &abort);
    let (md, v, met) = report(&p, &o);
    print!("{md}");
    let path = p.out.join("stalled-peer.json");
    fs::write(&path, serde_json::to_string_pretty(&v).expect("JSON")).expect("write the JSON");
    fs::write(p.out.join("stalled-peer.md"), &md).expect("write the table");
    println!("JSON: {}", path.display());
    if aborted(&abort) {
        eprintln!("stalled-peer: interrupted; the numbers cover what ran");
        std::process::exit(130);
    }
    std::process::exit(if met { 0 } else { 1 });
}
