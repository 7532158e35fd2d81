//! fedrouter's runtime cost, measured from outside the process: memory per idle
//! authenticated S2S stream, and CPU per routed stanza.
//!
//! The bench starts the release `fedrouter serve` binary as a child process and plays
//! every peer itself, over real loopback sockets, with the sans-IO
//! [`S2sConnection`] driving each stream (tokio current-thread runtime, one thread):
//!
//! ```text
//!            N client streams "b.test" -> "a.test" (dialback, XEP-0220)
//!   bench ──────────────────────────────────────────────► fedrouter (a.test, 2 shards)
//!   (b.test)                                               127.0.9.1:5269
//!       ▲        one outbound stream "a.test" -> "b.test":         │
//!       └──────── db:verify for every client stream, error replies ┘
//!   authoritative server for b.test on 127.0.9.2:5269 ([dns.static])
//! ```
//!
//! # What is measured
//!
//! - **Memory per idle stream** (`plain` and `tls` modes, N = `--streams`, default 1,000
//!   and 10,000). A fresh fedrouter per case. One first client stream is opened and
//!   authenticated; that also makes fedrouter open, and authenticate, its outbound stream
//!   to `b.test` (the authoritative server for the client streams' dialback keys). After
//!   1 s the baseline `VmRSS` (`/proc/PID/status`) is read. Then N more client streams
//!   are opened (at most `--concurrency`, default 200, negotiating at once) and each is
//!   driven to [`Event::Authenticated`], then left idle (its task only reads, to notice a
//!   close). After 1 s more, `VmRSS` is read again. Reported: (RSS after − baseline) / N in
//!   KiB (targets: ≤ 16 KiB plain, ≤ 64 KiB TLS), how many streams failed to open or were
//!   closed by fedrouter while idle, and fedrouter's CPU per opened stream while they
//!   opened (connection, dialback with its `db:verify` round trip, hand-off to the shard
//!   owning `b.test`, and in `tls` the handshake).
//!   - `plain`: `[federation.default] tls = "disabled"`, dialback, no certificate check
//!     (Google-style).
//!   - `tls`: `tls = "required"`: every client stream does STARTTLS (RFC 6120 §5, a full
//!     TLS 1.3 handshake: session resumption is off on the bench's client) before
//!     dialback, and so does fedrouter's outbound stream to the bench;
//!     `verify_certificates = false` (WebEx-style: TLS that only encrypts), with the
//!     self-signed certificates fedrouter generates for `a.test` and the bench for
//!     `b.test`.
//! - **Router cost** (`--router-modes`, default `plain,tls`: the streams of the idle
//!   case's mode, a fresh fedrouter per mode; `--router-streams`, default 100,
//!   authenticated client streams). In `tls`, every stanza is decrypted on its client
//!   stream and its error reply encrypted on fedrouter's outbound stream. `--stanzas` M (default 200,000)
//!   `<message from='u@b.test' to='nobody@a.test' type='chat' id='N'><body>…</body></message>`
//!   are sent over the client streams. fedrouter routes each to the shard of
//!   `nobody@a.test`, which has no session and answers `service-unavailable`; the error goes
//!   back over fedrouter's outbound stream to `b.test` (S2S in → route → S2S out), where the
//!   bench's authoritative side counts it as an [`Event::Stanza`]. Sending is closed-loop:
//!   at most `--window` (default 1,000) stanzas are unanswered at any time, and each
//!   client writes up to 8 at once. The window keeps fedrouter's backlog towards `b.test`
//!   under `s2s.send_queue_bytes`, so nothing waits in its per-domain queue: with a much
//!   larger window (50,000) that queue fills and fedrouter drops the error replies that
//!   no longer fit (see `benches/README.md`); the run then reports INCOMPLETE. Reported: stanzas/s (M over the time from the first
//!   send to the M-th reply), and fedrouter's CPU per stanza: the change in
//!   `utime + stime` (`/proc/PID/stat`, clock ticks / `sysconf(_SC_CLK_TCK)`) over the same
//!   interval, divided by M. The wait is bounded (120 s).
//!
//! # Noise
//!
//! One run of each case, on whatever machine runs it (the reference machine has 2 shared
//! cores): fedrouter's two shards are pinned to those cores and the bench's single thread
//! competes with them, so stanzas/s is a floor set partly by the bench; CPU per stanza is
//! fedrouter's own and is less affected. `/proc` CPU times have a resolution of one clock
//! tick (10 ms at 100 Hz): 1–2 % of the router run's half a second to a second of CPU;
//! run with a larger `--stanzas` for a finer figure. RSS is counted in 4 KiB pages and
//! includes what the allocator (mimalloc) keeps; one settle second is allowed before each
//! reading. fedrouter logs at `fedrouter=info` (one line per
//! authenticated stream while streams open, none per stanza) to a file.
//!
//! # Running
//!
//! `cargo bench --bench streams` builds `fedrouter` with `cargo build --release --bin
//! fedrouter` first (or uses `$FEDROUTER_BIN`). Options after `--`:
//! `--streams 1000,10000`, `--modes plain,tls`, `--concurrency 200`,
//! `--router-streams 100`, `--router-modes plain,tls`, `--stanzas 200000`, `--window 1000`, `--no-router`,
//! `--no-idle`, `--open-timeout 300` (seconds per case); for experiments `--shards N`
//! (default 2), `--rust-log FILTER` (fedrouter's `RUST_LOG`, default `fedrouter=info`) and
//! `--s2s KEY=VALUE` (an extra `[s2s]` line, e.g. `--s2s queue_per_domain=100000`).
//! Environment variables reach fedrouter (e.g. `MIMALLOC_PURGE_DELAY=0`). Uses
//! 127.0.9.1:5269 and 127.0.9.2:5269 (`--net 127.X.Y`: 127.X.Y.1 and 127.X.Y.2 instead); raises `RLIMIT_NOFILE` to its hard limit (10,000 streams need about
//! 10,100 descriptors in each process). Logs and configurations go to
//! `target/bench-streams/`.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use fedrouter::dialback::{DialbackResult, DialbackSecret};
use fedrouter::router::{bare_key, shard_of};
use fedrouter::stream::{
    AuthPolicy, Event, FederationPolicy, PeerPolicy, S2sConfig, S2sConnection, Timeouts, TlsPolicy,
    TlsRole,
};
use fedrouter::tls::{self, ClientAuth, DomainCertResolver};
use fedrouter::xml::Limits;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// The loopback network used unless `--net` says otherwise: fedrouter's S2S listener on
/// `.1:5269`, the bench's authoritative server for `b.test` on `.2:5269`.
const NET: &str = "127.0.9";

/// The network in use (`--net`), set once at start.
static NET_IN_USE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// fedrouter's S2S listener.
fn fr_addr() -> String {
    format!("{}.1:5269", NET_IN_USE.get().map_or(NET, String::as_str))
}

/// The bench's authoritative server for `b.test`.
fn b_addr() -> String {
    format!("{}.2:5269", NET_IN_USE.get().map_or(NET, String::as_str))
}
/// fedrouter's domain.
const A_DOMAIN: &str = "a.test";
/// The bench's domain.
const B_DOMAIN: &str = "b.test";
/// fedrouter's dialback secret (`s2s.dialback_secret`, 32 bytes in hexadecimal).
const A_SECRET_HEX: &str = "5be9c0ffee5be9c0ffee5be9c0ffee5be9c0ffee5be9c0ffee5be9c0ffee0001";
/// The bench's dialback secret (as the authoritative server for `b.test`).
const B_SECRET: &[u8] = b"streams bench: dialback secret of b.test";
/// Shards fedrouter runs unless `--shards` says otherwise.
const SHARDS: usize = 2;
/// The recipient of the router run's messages (a local user without a session).
const RECIPIENT: &str = "nobody@a.test";
/// Stanzas a client writes at once in the router run.
const BATCH: usize = 8;
/// Bound on the router run's wait for the last reply.
const ROUTER_TIMEOUT: Duration = Duration::from_secs(120);
/// Time for one client stream from connect to authenticated.
const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed between the readings and the streams opening.
const SETTLE: Duration = Duration::from_secs(1);

// ----- arguments ----------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    Tls,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Tls => "tls",
        }
    }

    /// The per-stream memory target, KiB.
    fn target_kib(self) -> f64 {
        match self {
            Mode::Plain => 16.0,
            Mode::Tls => 64.0,
        }
    }
}

#[derive(Debug)]
struct Args {
    streams: Vec<usize>,
    modes: Vec<Mode>,
    concurrency: usize,
    router_streams: usize,
    stanzas: usize,
    window: usize,
    idle: bool,
    router: bool,
    /// Modes of the router run (`--router-modes`), one fresh fedrouter each.
    router_modes: Vec<Mode>,
    open_timeout: Duration,
    /// `RUST_LOG` for fedrouter.
    rust_log: String,
    /// fedrouter's `shards`.
    shards: usize,
    /// Extra `[s2s]` lines (`key = value`), for experiments.
    s2s_extra: Vec<String>,
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "streams bench: {problem}\n\
         options: --streams N[,N..] --modes plain,tls --concurrency N --router-streams N \
         --router-modes plain,tls --net 127.0.9 --stanzas N --window N --open-timeout SECONDS --rust-log FILTER --shards N --s2s KEY=VALUE --no-idle --no-router"
    );
    std::process::exit(2)
}

/// A `--modes` list.
fn modes(v: Option<String>, what: &str) -> Vec<Mode> {
    let v = v.unwrap_or_else(|| usage(&format!("{what} needs a list")));
    v.split(',')
        .map(|m| match m {
            "plain" => Mode::Plain,
            "tls" => Mode::Tls,
            other => usage(&format!("unknown mode {other:?}")),
        })
        .collect()
}

fn parse_args() -> Args {
    let mut a = Args {
        streams: vec![1_000, 10_000],
        modes: vec![Mode::Plain, Mode::Tls],
        concurrency: 200,
        router_streams: 100,
        stanzas: 200_000,
        window: 1_000,
        idle: true,
        router: true,
        router_modes: vec![Mode::Plain, Mode::Tls],
        open_timeout: Duration::from_secs(300),
        rust_log: "fedrouter=info".to_owned(),
        shards: SHARDS,
        s2s_extra: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    let num = |v: Option<String>, what: &str| -> usize {
        v.and_then(|s| s.replace('_', "").parse().ok())
            .filter(|n: &usize| *n > 0)
            .unwrap_or_else(|| usage(&format!("{what} needs a positive number")))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            // `cargo bench` passes `--bench` to every bench binary.
            "--bench" => {}
            "--streams" => {
                let v = it.next().unwrap_or_else(|| usage("--streams needs a list"));
                a.streams = v
                    .split(',')
                    .map(|s| num(Some(s.to_owned()), "--streams"))
                    .collect();
            }
            "--modes" => a.modes = modes(it.next(), "--modes"),
            "--router-modes" => a.router_modes = modes(it.next(), "--router-modes"),
            "--net" => {
                let v = it.next().unwrap_or_else(|| usage("--net needs 127.X.Y"));
                let octets: Vec<&str> = v.split('.').collect();
                if octets.len() != 3
                    || octets[0] != "127"
                    || octets.iter().any(|o| o.parse::<u8>().is_err())
                {
                    usage("--net needs the first three octets of a loopback address, 127.X.Y");
                }
                let _ = NET_IN_USE.set(v);
            }
            "--concurrency" => a.concurrency = num(it.next(), "--concurrency"),
            "--router-streams" => a.router_streams = num(it.next(), "--router-streams"),
            "--stanzas" => a.stanzas = num(it.next(), "--stanzas"),
            "--window" => a.window = num(it.next(), "--window"),
            "--open-timeout" => {
                a.open_timeout = Duration::from_secs(num(it.next(), "--open-timeout") as u64)
            }
            "--rust-log" => {
                a.rust_log = it
                    .next()
                    .unwrap_or_else(|| usage("--rust-log needs a filter"))
            }
            "--shards" => a.shards = num(it.next(), "--shards"),
            "--s2s" => {
                let v = it.next().unwrap_or_else(|| usage("--s2s needs KEY=VALUE"));
                let (k, v) = v
                    .split_once('=')
                    .unwrap_or_else(|| usage("--s2s needs KEY=VALUE"));
                a.s2s_extra.push(format!("{} = {}", k.trim(), v.trim()));
            }
            "--no-idle" => a.idle = false,
            "--no-router" => a.router = false,
            other if other.starts_with("--") => usage(&format!("unknown option {other}")),
            // A name filter (as criterion takes): ignored.
            _ => {}
        }
    }
    a
}

// ----- /proc readings -------------------------------------------------------------------------

/// `VmRSS` of `pid`, KiB.
fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other("no VmRSS line"))
}

/// `utime + stime` of `pid` (or `self`), in clock ticks.
fn cpu_ticks(pid: &str) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat
        .rfind(')')
        .ok_or_else(|| io::Error::other("bad stat"))?
        + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): utime is field 14, stime 15.
    let field = |n: usize| -> io::Result<u64> {
        f.get(n - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| io::Error::other("bad stat field"))
    };
    Ok(field(14)? + field(15)?)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the new soft limit.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

// ----- the fedrouter process ------------------------------------------------------------------

/// Where logs and configurations go: `<target>/bench-streams/`.
fn work_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench-streams")
}

/// The release `fedrouter` binary: `$FEDROUTER_BIN`, or built now with cargo.
fn fedrouter_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("FEDROUTER_BIN") {
        return p.into();
    }
    eprintln!("streams bench: cargo build --release --bin fedrouter");
    let mut cargo = Command::new(env!("CARGO"));
    // What `cargo bench` sets for the running bench would make the nested build look
    // different from a plain `cargo build --release` (build scripts watch some of these,
    // e.g. ring's `CARGO_MANIFEST_DIR`) and rebuild half the tree every time.
    for (k, _) in std::env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        if k.starts_with("CARGO_PKG_")
            || matches!(
                k,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "CARGO_RUSTC_CURRENT_DIR"
                    | "OUT_DIR"
            )
        {
            cargo.env_remove(k);
        }
    }
    let out = cargo
        .args([
            "build",
            "--release",
            "--bin",
            "fedrouter",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .expect("running cargo build");
    assert!(
        out.status.success(),
        "cargo build --release --bin fedrouter failed"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "fedrouter")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported no fedrouter executable")
}

/// A running `fedrouter serve`; stopped (SIGTERM, then SIGKILL) when dropped, also while
/// a panic unwinds.
struct Fedrouter {
    child: Child,
    log: PathBuf,
    _data: tempfile::TempDir,
}

impl Fedrouter {
    fn start(bin: &Path, mode: Mode, label: &str, args: &Args) -> Fedrouter {
        let dir = work_dir();
        std::fs::create_dir_all(&dir).expect("creating target/bench-streams");
        let data = tempfile::tempdir_in(&dir).expect("temporary data_dir");
        let tls = match mode {
            Mode::Plain => "disabled",
            Mode::Tls => "required",
        };
        let config = format!(
            r#"domains = ["{A_DOMAIN}"]
shards = {shards}
data_dir = "{data}"

[listen]
s2s = ["{fr_addr}"]
s2s_tls = []
c2s = []
admin = ""

[dns.static]
"{B_DOMAIN}" = "{b_addr}"

[s2s]
idle_timeout = "0s"
max_unauthenticated_per_shard = 20000
dialback_secret = "{A_SECRET_HEX}"
{extra}

# Offline storage (XEP-0160) off: a message to `nobody` is bounced at once, as this
# bench's router path has always been measured, without the store look-up that finds
# there is no such user.
[c2s]
max_offline_messages = 0

[federation.default]
tls = "{tls}"
auth = "dialback"
verify_certificates = false
"#,
            data = data.path().display(),
            fr_addr = fr_addr(),
            b_addr = b_addr(),
            shards = args.shards,
            extra = args.s2s_extra.join("\n"),
        );
        let cfg_path = dir.join(format!("{label}.toml"));
        std::fs::write(&cfg_path, config).expect("writing the configuration");
        let log = dir.join(format!("{label}.log"));
        let log_file = std::fs::File::create(&log).expect("creating the log file");
        let child = Command::new(bin)
            .arg("serve")
            .arg("-c")
            .arg(&cfg_path)
            .env("RUST_LOG", &args.rust_log)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("starting fedrouter");
        let mut f = Fedrouter {
            child,
            log,
            _data: data,
        };
        f.wait_listening();
        f
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the S2S listener accepts a connection (bounded). The probe connection
    /// is closed at once, before sending anything.
    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr: std::net::SocketAddr = fr_addr().parse().expect("fedrouter's address");
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "fedrouter exited at start ({status}):\n{}",
                    self.log_tail(30)
                );
            }
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "fedrouter did not start listening in 20 s:\n{}",
            self.log_tail(30)
        );
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<String> = text.lines().map(strip_ansi).collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Log lines at WARN or ERROR (at most `max`), and how many there were.
    fn problems(&self, max: usize) -> (usize, Vec<String>) {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let bad: Vec<String> = text
            .lines()
            .map(strip_ansi)
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("panicked"))
            .collect();
        (bad.len(), bad.into_iter().take(max).collect())
    }

    /// As [`Fedrouter::stop`], without blocking the runtime: the bench's tasks must keep
    /// answering fedrouter's closing handshakes while it shuts down.
    async fn stop_async(&mut self) -> String {
        if let Ok(Some(status)) = self.child.try_wait() {
            return format!("had already exited ({status})");
        }
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return format!(
                    "stopped by SIGTERM in {} ms ({status})",
                    start.elapsed().as_millis()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        "did not stop within 15 s of SIGTERM; killed".to_owned()
    }

    /// SIGTERM, up to 15 s for the graceful shutdown, then SIGKILL. Returns how it ended.
    fn stop(&mut self) -> String {
        if let Ok(Some(status)) = self.child.try_wait() {
            return format!("had already exited ({status})");
        }
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return format!("stopped by SIGTERM ({status})");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        "did not stop within 15 s of SIGTERM; killed".to_owned()
    }
}

/// A log line without terminal colour sequences (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Drop for Fedrouter {
    fn drop(&mut self) {
        self.stop();
    }
}

// ----- sockets with or without TLS -------------------------------------------------------------

/// A socket, plain or after STARTTLS.
enum Io {
    Plain(TcpStream),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Between taking the plain socket and the TLS handshake's end.
    Upgrading,
}

fn upgrading() -> io::Error {
    io::Error::other("socket in the middle of a TLS upgrade")
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Client(s) => Pin::new(s).poll_read(cx, buf),
            Io::Server(s) => Pin::new(s).poll_read(cx, buf),
            Io::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Client(s) => Pin::new(s).poll_write(cx, buf),
            Io::Server(s) => Pin::new(s).poll_write(cx, buf),
            Io::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Client(s) => Pin::new(s).poll_flush(cx),
            Io::Server(s) => Pin::new(s).poll_flush(cx),
            Io::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Client(s) => Pin::new(s).poll_shutdown(cx),
            Io::Server(s) => Pin::new(s).poll_shutdown(cx),
            Io::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }
}

/// Writes what `conn` has to send (plaintext; `io` encrypts when TLS is on).
async fn transmit(conn: &mut S2sConnection, io: &mut Io, scratch: &mut Vec<u8>) -> io::Result<()> {
    scratch.clear();
    conn.poll_transmit(scratch);
    if !scratch.is_empty() {
        io.write_all(scratch).await?;
        io.flush().await?;
    }
    Ok(())
}

// ----- shared bench state -----------------------------------------------------------------------

/// What the bench's tasks share: configuration and counters (reset per case).
struct Ctx {
    /// The bench's S2S configuration as `b.test`.
    cfg: Arc<S2sConfig>,
    /// fedrouter's dialback secret, to check its `db:result` as `a.test`'s authoritative
    /// server would.
    a_secret: DialbackSecret,
    connector: tokio_rustls::TlsConnector,
    acceptor: tokio_rustls::TlsAcceptor,
    /// Client streams authenticated.
    opened: AtomicUsize,
    /// Client streams that failed to open.
    failed: AtomicUsize,
    /// Client streams fedrouter closed while they were idle (or sending).
    closed: AtomicUsize,
    /// Stanzas that arrived on the authoritative side (fedrouter's outbound stream).
    replies: AtomicU64,
    /// ... of which were not `type='error'`.
    non_error: AtomicU64,
    /// fedrouter's outbound streams to the authoritative side that authenticated.
    fr_outbound: AtomicUsize,
    /// Closed-loop window of the router run: a permit per stanza that may be sent.
    window: Semaphore,
    /// Set while a case is being torn down (closes are expected then).
    stopping: AtomicBool,
    /// The first few problems seen (bounded).
    notes: Mutex<Vec<String>>,
}

impl Ctx {
    fn note(&self, text: String) {
        let mut n = self.notes.lock().unwrap();
        if n.len() < 20 {
            n.push(text);
        }
    }

    fn reset(&self) {
        self.opened.store(0, Relaxed);
        self.failed.store(0, Relaxed);
        self.closed.store(0, Relaxed);
        self.replies.store(0, Relaxed);
        self.non_error.store(0, Relaxed);
        self.fr_outbound.store(0, Relaxed);
        self.stopping.store(false, Relaxed);
        self.notes.lock().unwrap().clear();
        let p = self.window.available_permits();
        if let Ok(permits) = self.window.try_acquire_many(p as u32) {
            permits.forget();
        }
    }
}

fn build_ctx() -> Ctx {
    tls::install_default_provider();
    let cert = tls::self_signed(B_DOMAIN).expect("self-signed certificate for b.test");
    let mut resolver = DomainCertResolver::new();
    resolver.add(&cert).expect("b.test certificate");
    let server = tls::server_config(Arc::new(resolver), ClientAuth::Request, &[]);
    let client = tls::client_config(None, false, None, &[]).expect("TLS client configuration");
    let mut client = (*client).clone();
    // Every client stream is a full handshake, as from distinct peers.
    client.resumption = rustls::client::Resumption::disabled();
    let cfg = S2sConfig {
        local_domains: vec![B_DOMAIN.to_owned()],
        certificate_domains: vec![B_DOMAIN.to_owned()],
        // TLS when offered (fedrouter requires it in the tls mode, does not offer it in the
        // plain one), dialback, no certificate check: the bench accepts either profile.
        policy: FederationPolicy {
            default: PeerPolicy {
                tls: TlsPolicy::Optional,
                auth: AuthPolicy::Dialback,
                verify_certificates: false,
                allow: true,
                bidi: false,
                multiplex: true,
            },
            ..Default::default()
        },
        dialback_secret: DialbackSecret::new(B_SECRET),
        stream_id_key: [0x5b; 32],
        cert_verifier: None,
        limits: Limits::default(),
        timeouts: Timeouts {
            idle: None,
            ..Timeouts::default()
        },
        stream_management: None,
    };
    Ctx {
        cfg: Arc::new(cfg),
        a_secret: DialbackSecret::new(hex::decode(A_SECRET_HEX).expect("hex secret")),
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        acceptor: tokio_rustls::TlsAcceptor::from(server),
        opened: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        closed: AtomicUsize::new(0),
        replies: AtomicU64::new(0),
        non_error: AtomicU64::new(0),
        fr_outbound: AtomicUsize::new(0),
        window: Semaphore::new(0),
        stopping: AtomicBool::new(false),
        notes: Mutex::new(Vec::new()),
    }
}

// ----- the authoritative server for b.test ------------------------------------------------------

async fn authoritative_listener(l: TcpListener, ctx: Arc<Ctx>) {
    let mut nonce = 0u64;
    loop {
        let Ok((tcp, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        nonce += 1;
        tokio::spawn(authoritative(tcp, nonce, Arc::clone(&ctx)));
    }
}

/// One inbound stream from fedrouter (`a.test` → `b.test`): answers fedrouter's own
/// `db:result` with `a.test`'s secret, `db:verify` (done by the [`S2sConnection`] as the
/// authoritative server, with `B_SECRET`), STARTTLS as the TLS server, and counts the
/// stanzas that arrive.
async fn authoritative(tcp: TcpStream, nonce: u64, ctx: Arc<Ctx>) {
    let mut conn = S2sConnection::inbound(Arc::clone(&ctx.cfg), nonce, None, Instant::now());
    let mut io = Io::Plain(tcp);
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(4096);
    let end = |ctx: &Ctx, why: String| {
        if !ctx.stopping.load(Relaxed) {
            ctx.note(format!(
                "authoritative side: fedrouter's outbound stream ended: {why}"
            ));
        }
    };
    loop {
        while let Some(ev) = conn.poll_event() {
            match ev {
                Event::StartTls(TlsRole::Server) => {
                    if let Err(e) = transmit(&mut conn, &mut io, &mut out).await {
                        return end(&ctx, format!("write: {e}"));
                    }
                    let Io::Plain(tcp) = std::mem::replace(&mut io, Io::Upgrading) else {
                        return end(&ctx, "STARTTLS twice".into());
                    };
                    match ctx.acceptor.accept(tcp).await {
                        Ok(s) => io = Io::Server(Box::new(s)),
                        Err(e) => return end(&ctx, format!("TLS handshake: {e}")),
                    }
                    conn.handle_tls_established(
                        Vec::new(),
                        Instant::now(),
                        rustls::pki_types::UnixTime::now(),
                    );
                }
                Event::VerifyNeeded {
                    local,
                    remote,
                    stream_id,
                    key,
                } => {
                    let ok = remote == A_DOMAIN
                        && ctx.a_secret.verify(&local, &remote, &stream_id, &key);
                    let verdict = if ok {
                        DialbackResult::Valid
                    } else {
                        DialbackResult::Invalid
                    };
                    conn.handle_dialback_verdict(&local, &remote, verdict, Instant::now());
                }
                Event::Authenticated { .. } => {
                    ctx.fr_outbound.fetch_add(1, Relaxed);
                }
                Event::Stanza { element, .. } => {
                    if element.type_() != Some("error") && ctx.non_error.fetch_add(1, Relaxed) == 0
                    {
                        ctx.note(format!("unexpected stanza: {}", element.as_str()));
                    }
                    ctx.replies.fetch_add(1, Relaxed);
                    ctx.window.add_permits(1);
                }
                Event::Closed(reason) => {
                    let _ = transmit(&mut conn, &mut io, &mut out).await;
                    return end(&ctx, format!("{reason:?}"));
                }
                _ => {}
            }
        }
        if let Err(e) = transmit(&mut conn, &mut io, &mut out).await {
            return end(&ctx, format!("write: {e}"));
        }
        let n = match io.read(&mut buf).await {
            Ok(0) => return end(&ctx, "fedrouter closed the connection".into()),
            Ok(n) => n,
            Err(e) => return end(&ctx, format!("read: {e}")),
        };
        conn.handle_input(&buf[..n], Instant::now());
    }
}

// ----- client streams -----------------------------------------------------------------------------

/// Opens one client stream `b.test` → `a.test` and drives it to authenticated.
async fn open_client(ctx: &Ctx) -> Result<Io, String> {
    let tcp = TcpStream::connect(fr_addr())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut io = Io::Plain(tcp);
    let mut conn = S2sConnection::outbound(
        Arc::clone(&ctx.cfg),
        B_DOMAIN,
        A_DOMAIN,
        false,
        Instant::now(),
    );
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::with_capacity(1024);
    for _ in 0..1_000 {
        let mut upgraded = false;
        while let Some(ev) = conn.poll_event() {
            match ev {
                Event::StartTls(TlsRole::Client { sni }) => {
                    transmit(&mut conn, &mut io, &mut out)
                        .await
                        .map_err(|e| format!("write: {e}"))?;
                    let Io::Plain(tcp) = std::mem::replace(&mut io, Io::Upgrading) else {
                        return Err("STARTTLS twice".into());
                    };
                    let name = tls::server_name(&sni).map_err(|e| e.to_string())?;
                    let s = ctx
                        .connector
                        .connect(name, tcp)
                        .await
                        .map_err(|e| format!("TLS handshake: {e}"))?;
                    io = Io::Client(Box::new(s));
                    conn.handle_tls_established(
                        Vec::new(),
                        Instant::now(),
                        rustls::pki_types::UnixTime::now(),
                    );
                    upgraded = true;
                }
                Event::Authenticated { .. } => {
                    transmit(&mut conn, &mut io, &mut out)
                        .await
                        .map_err(|e| format!("write: {e}"))?;
                    return Ok(io);
                }
                Event::AuthFailed { result, .. } => return Err(format!("dialback: {result:?}")),
                Event::Closed(reason) => return Err(format!("closed: {reason:?}")),
                _ => {}
            }
        }
        transmit(&mut conn, &mut io, &mut out)
            .await
            .map_err(|e| format!("write: {e}"))?;
        if upgraded {
            continue;
        }
        let n = io.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("fedrouter closed the connection during negotiation".into());
        }
        conn.handle_input(&buf[..n], Instant::now());
    }
    Err("negotiation did not finish in 1000 steps".into())
}

/// The router run's share of one client: `count` messages with ids from `first_id`.
struct Job {
    count: usize,
    first_id: u64,
}

/// A client stream after authentication: reads (and drops) what fedrouter sends, notes a
/// close; with a job, sends its messages within the shared window.
async fn hold(mut io: Io, job: Option<Job>, ctx: Arc<Ctx>) {
    let mut buf = [0u8; 512];
    let (mut left, mut id) = job.map_or((0, 0), |j| (j.count, j.first_id));
    let mut out = Vec::with_capacity(BATCH * 160);
    loop {
        let want = left.min(BATCH);
        tokio::select! {
            r = io.read(&mut buf) => {
                let why = match r {
                    Ok(0) => "closed by fedrouter".to_owned(),
                    Err(e) => format!("read: {e}"),
                    Ok(n) => {
                        let text = String::from_utf8_lossy(&buf[..n]);
                        if text.contains("error") {
                            ctx.note(format!("client stream received: {}", text.trim()));
                        }
                        continue;
                    }
                };
                if !ctx.stopping.load(Relaxed) && ctx.closed.fetch_add(1, Relaxed) < 3 {
                    ctx.note(format!("client stream {why}"));
                }
                return;
            }
            permits = ctx.window.acquire_many(want as u32), if want > 0 => {
                let Ok(permits) = permits else { return };
                permits.forget();
                out.clear();
                for _ in 0..want {
                    out.extend_from_slice(
                        format!(
                            "<message from='u@{B_DOMAIN}' to='{RECIPIENT}' type='chat' id='{id}'>\
                             <body>streams bench message {id}: a short chat line</body></message>"
                        )
                        .as_bytes(),
                    );
                    id += 1;
                }
                left -= want;
                if let Err(e) = async { io.write_all(&out).await?; io.flush().await }.await {
                    if !ctx.stopping.load(Relaxed) {
                        ctx.closed.fetch_add(1, Relaxed);
                        ctx.note(format!("client stream write: {e}"));
                    }
                    return;
                }
            }
        }
    }
}

/// Spawns `n` client streams (at most `concurrency` negotiating at once), each held open
/// after authentication; with `jobs`, client i gets `jobs[i]`. Waits until all opened or
/// failed, within `timeout`. Returns the tasks and the time it took.
async fn open_clients(
    ctx: &Arc<Ctx>,
    n: usize,
    concurrency: usize,
    mut jobs: Vec<Job>,
    timeout: Duration,
) -> (Vec<JoinHandle<()>>, Duration) {
    let start = Instant::now();
    let (opened0, failed0) = (ctx.opened.load(Relaxed), ctx.failed.load(Relaxed));
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(n);
    jobs.reverse();
    for _ in 0..n {
        let ctx = Arc::clone(ctx);
        let gate = Arc::clone(&gate);
        let job = jobs.pop();
        tasks.push(tokio::spawn(async move {
            let Ok(permit) = gate.acquire_owned().await else {
                return;
            };
            let r = tokio::time::timeout(NEGOTIATION_TIMEOUT, open_client(&ctx)).await;
            drop(permit);
            match r {
                Ok(Ok(io)) => {
                    ctx.opened.fetch_add(1, Relaxed);
                    hold(io, job, ctx).await;
                }
                Ok(Err(e)) => {
                    if ctx.failed.fetch_add(1, Relaxed) < 3 {
                        ctx.note(format!("client stream failed to open: {e}"));
                    }
                }
                Err(_) => {
                    if ctx.failed.fetch_add(1, Relaxed) < 3 {
                        ctx.note("client stream not authenticated within 30 s".into());
                    }
                }
            }
        }));
    }
    let deadline = start + timeout;
    loop {
        let done = ctx.opened.load(Relaxed) - opened0 + ctx.failed.load(Relaxed) - failed0;
        if done >= n {
            break;
        }
        if Instant::now() >= deadline {
            ctx.note(format!(
                "opening stopped by --open-timeout ({} s): {} of {n} done",
                timeout.as_secs(),
                done
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (tasks, start.elapsed())
}

fn close_all(ctx: &Ctx, tasks: Vec<JoinHandle<()>>) {
    ctx.stopping.store(true, Relaxed);
    for t in tasks {
        t.abort();
    }
}

// ----- cases -----------------------------------------------------------------------------------

struct IdleRow {
    mode: Mode,
    streams: usize,
    opened: usize,
    failed: usize,
    closed: usize,
    baseline_kib: u64,
    after_kib: u64,
    open_secs: f64,
    fr_cpu_open_s: f64,
}

impl IdleRow {
    fn per_stream_kib(&self) -> f64 {
        (self.after_kib as f64 - self.baseline_kib as f64) / self.opened.max(1) as f64
    }
}

struct RouterRow {
    mode: Mode,
    streams: usize,
    stanzas: usize,
    replies: u64,
    non_error: u64,
    elapsed: Duration,
    complete: bool,
    fr_cpu_s: f64,
    bench_cpu_s: f64,
}

/// What went wrong in a case, printed after its line.
struct CaseNotes {
    label: String,
    notes: Vec<String>,
    log: PathBuf,
    problems: (usize, Vec<String>),
    stop: String,
}

async fn settle() {
    tokio::time::sleep(SETTLE).await;
}

/// Opens the first client stream, which also brings up fedrouter's outbound stream to the
/// authoritative side; panics (with the log) if that fails.
async fn first_stream(ctx: &Arc<Ctx>, fr: &Fedrouter, concurrency: usize) -> Vec<JoinHandle<()>> {
    let (tasks, _) = open_clients(ctx, 1, concurrency, Vec::new(), NEGOTIATION_TIMEOUT).await;
    if ctx.opened.load(Relaxed) != 1 || ctx.fr_outbound.load(Relaxed) == 0 {
        panic!(
            "the first client stream did not authenticate (fedrouter outbound authenticated: {}); notes: {:?}\nfedrouter log tail:\n{}",
            ctx.fr_outbound.load(Relaxed),
            ctx.notes.lock().unwrap(),
            fr.log_tail(30)
        );
    }
    tasks
}

async fn idle_case(
    ctx: &Arc<Ctx>,
    bin: &Path,
    mode: Mode,
    n: usize,
    args: &Args,
) -> (IdleRow, CaseNotes) {
    ctx.reset();
    let label = format!("idle-{}-{n}", mode.name());
    eprintln!("streams bench: {label}: starting fedrouter");
    let mut fr = Fedrouter::start(bin, mode, &label, args);
    let pid = fr.pid();
    let mut tasks = first_stream(ctx, &fr, args.concurrency).await;
    settle().await;
    let baseline_kib = rss_kib(pid).expect("reading fedrouter's VmRSS");
    let cpu0 = cpu_ticks(&pid.to_string()).unwrap_or(0);
    eprintln!("streams bench: {label}: opening {n} streams");
    let (more, took) = open_clients(ctx, n, args.concurrency, Vec::new(), args.open_timeout).await;
    tasks.extend(more);
    let cpu1 = cpu_ticks(&pid.to_string()).unwrap_or(0);
    settle().await;
    let after_kib = rss_kib(pid).expect("reading fedrouter's VmRSS");
    let row = IdleRow {
        mode,
        streams: n,
        opened: ctx.opened.load(Relaxed) - 1,
        failed: ctx.failed.load(Relaxed),
        closed: ctx.closed.load(Relaxed),
        baseline_kib,
        after_kib,
        open_secs: took.as_secs_f64(),
        fr_cpu_open_s: (cpu1 - cpu0) as f64 / clock_ticks_per_second(),
    };
    eprintln!(
        "streams bench: {label}: {} opened, {:.2} KiB per stream; stopping",
        row.opened,
        row.per_stream_kib()
    );
    close_all(ctx, tasks);
    let stop = fr.stop_async().await;
    let notes = CaseNotes {
        label,
        notes: ctx.notes.lock().unwrap().clone(),
        log: fr.log.clone(),
        problems: fr.problems(5),
        stop,
    };
    (row, notes)
}

async fn router_case(
    ctx: &Arc<Ctx>,
    bin: &Path,
    mode: Mode,
    args: &Args,
) -> (RouterRow, CaseNotes) {
    ctx.reset();
    let label = format!("router-{}", mode.name());
    eprintln!("streams bench: {label}: starting fedrouter");
    let mut fr = Fedrouter::start(bin, mode, &label, args);
    let pid = fr.pid();
    let mut tasks = first_stream(ctx, &fr, args.concurrency).await;
    // The first stream stays idle; the senders are opened holding back their jobs until
    // the window opens.
    let k = args.router_streams;
    let m = args.stanzas;
    let jobs: Vec<Job> = (0..k)
        .map(|i| Job {
            count: m / k + usize::from(i < m % k),
            first_id: (i as u64) * 1_000_000_000,
        })
        .collect();
    let (more, _) = open_clients(ctx, k, args.concurrency, jobs, args.open_timeout).await;
    tasks.extend(more);
    let senders = ctx.opened.load(Relaxed) - 1;
    settle().await;

    eprintln!("streams bench: {label}: sending {m} stanzas over {senders} streams");
    let fr_cpu0 = cpu_ticks(&pid.to_string()).expect("reading fedrouter's stat");
    let me_cpu0 = cpu_ticks("self").unwrap_or(0);
    let start = Instant::now();
    ctx.window.add_permits(args.window);
    let want = m as u64;
    let deadline = start + ROUTER_TIMEOUT;
    let mut last = (0u64, Instant::now());
    while ctx.replies.load(Relaxed) < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let r = ctx.replies.load(Relaxed);
        if r != last.0 {
            last = (r, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(10) {
            ctx.note(format!("no reply for 10 s after {r} of {want}; giving up"));
            break;
        }
    }
    let elapsed = start.elapsed();
    let fr_cpu1 = cpu_ticks(&pid.to_string()).expect("reading fedrouter's stat");
    let me_cpu1 = cpu_ticks("self").unwrap_or(0);
    let replies = ctx.replies.load(Relaxed);
    let hz = clock_ticks_per_second();
    let row = RouterRow {
        mode,
        streams: senders,
        stanzas: m,
        replies,
        non_error: ctx.non_error.load(Relaxed),
        elapsed,
        complete: replies >= want,
        fr_cpu_s: (fr_cpu1 - fr_cpu0) as f64 / hz,
        bench_cpu_s: (me_cpu1 - me_cpu0) as f64 / hz,
    };
    if !row.complete {
        ctx.note(format!(
            "only {replies} of {want} replies arrived within {} s",
            elapsed.as_secs()
        ));
    }
    close_all(ctx, tasks);
    let stop = fr.stop_async().await;
    let notes = CaseNotes {
        label,
        notes: ctx.notes.lock().unwrap().clone(),
        log: fr.log.clone(),
        problems: fr.problems(5),
        stop,
    };
    (row, notes)
}

// ----- report ------------------------------------------------------------------------------------

fn print_report(args: &Args, idle: &[IdleRow], router: &[RouterRow], notes: &[CaseNotes]) {
    let shards = args.shards;
    println!();
    if !idle.is_empty() {
        println!("Idle authenticated S2S streams: fedrouter VmRSS (one run each)");
        println!(
            "{:<6} {:>7} {:>7} {:>6} {:>6} {:>13} {:>12} {:>11} {:>7} {:>6} {:>12} {:>15}",
            "mode",
            "streams",
            "opened",
            "failed",
            "closed",
            "baseline MiB",
            "after MiB",
            "KiB/stream",
            "target",
            "ok",
            "open s",
            "fr CPU ms/open"
        );
        for r in idle {
            let per = r.per_stream_kib();
            println!(
                "{:<6} {:>7} {:>7} {:>6} {:>6} {:>13.1} {:>12.1} {:>11.2} {:>7} {:>6} {:>12.2} {:>15.3}",
                r.mode.name(),
                r.streams,
                r.opened,
                r.failed,
                r.closed,
                r.baseline_kib as f64 / 1024.0,
                r.after_kib as f64 / 1024.0,
                per,
                format!("≤{}", r.mode.target_kib()),
                if per <= r.mode.target_kib() && r.opened == r.streams {
                    "yes"
                } else {
                    "NO"
                },
                r.open_secs,
                r.fr_cpu_open_s * 1e3 / r.opened.max(1) as f64,
            );
        }
        println!();
    }
    if !router.is_empty() {
        println!("Router: S2S in -> nobody@a.test (service-unavailable) -> S2S out (one run each)");
        println!(
            "{:<6} {:>8} {:>8} {:>9} {:>9} {:>11} {:>11} {:>15} {:>13}",
            "mode",
            "streams",
            "stanzas",
            "replies",
            "elapsed s",
            "stanzas/s",
            "fr CPU s",
            "fr CPU µs/st",
            "bench CPU s"
        );
    }
    for r in router {
        let secs = r.elapsed.as_secs_f64();
        println!(
            "{:<6} {:>8} {:>8} {:>9} {:>9.2} {:>11.0} {:>11.2} {:>15.2} {:>13.2}",
            r.mode.name(),
            r.streams,
            r.stanzas,
            r.replies,
            secs,
            r.replies as f64 / secs,
            r.fr_cpu_s,
            r.fr_cpu_s * 1e6 / r.stanzas as f64,
            r.bench_cpu_s,
        );
        if !r.complete {
            println!(
                "  INCOMPLETE: {} of {} replies arrived",
                r.replies, r.stanzas
            );
        }
        if r.non_error > 0 {
            println!("  {} replies were not type='error'", r.non_error);
        }
    }
    if !router.is_empty() {
        let a = shard_of(&bare_key(RECIPIENT), shards);
        let b = shard_of(B_DOMAIN, shards);
        println!(
            "  placement: {RECIPIENT} on shard {a}, {B_DOMAIN} (inbound and outbound streams) on shard {b}: {}",
            if a == b {
                "every stanza stays on one shard"
            } else {
                "every stanza crosses shards twice (inbox)"
            }
        );
        println!();
    }
    println!(
        "Noise: one run per case on {} cores shared by fedrouter's {shards} pinned shards and \
         this bench's single thread; /proc CPU times count in 1/{} s ticks; RSS in pages, \
         including what mimalloc keeps. Compare runs on the same machine only.",
        std::thread::available_parallelism().map_or(0, usize::from),
        clock_ticks_per_second()
    );
    for n in notes {
        let quiet = n.notes.is_empty() && n.problems.0 == 0 && n.stop.starts_with("stopped by");
        if quiet {
            continue;
        }
        println!("\n[{}] log: {}", n.label, n.log.display());
        println!("  fedrouter {}", n.stop);
        for note in &n.notes {
            println!("  note: {note}");
        }
        if n.problems.0 > 0 {
            println!("  {} WARN/ERROR log lines, first:", n.problems.0);
            for l in &n.problems.1 {
                println!("    {l}");
            }
        }
    }
}

fn main() {
    let args = parse_args();
    let nofile = raise_nofile();
    let biggest = args.streams.iter().copied().max().unwrap_or(0);
    if args.idle && (biggest as u64) + 200 > nofile {
        eprintln!(
            "streams bench: RLIMIT_NOFILE is {nofile}; {biggest} streams need about {}",
            biggest + 200
        );
    }
    let bin = fedrouter_binary();
    eprintln!("streams bench: using {}", bin.display());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let ctx = Arc::new(build_ctx());
        let l = TcpListener::bind(b_addr())
            .await
            .unwrap_or_else(|e| panic!("binding the authoritative server on {}: {e}", b_addr()));
        tokio::spawn(authoritative_listener(l, Arc::clone(&ctx)));

        let mut idle = Vec::new();
        let mut notes = Vec::new();
        if args.idle {
            for &mode in &args.modes {
                for &n in &args.streams {
                    let (row, note) = idle_case(&ctx, &bin, mode, n, &args).await;
                    idle.push(row);
                    notes.push(note);
                }
            }
        }
        let mut router = Vec::new();
        if args.router {
            for &mode in &args.router_modes {
                let (row, note) = router_case(&ctx, &bin, mode, &args).await;
                notes.push(note);
                router.push(row);
            }
        }
        print_report(&args, &idle, &router, &notes);
    });
}
