//! A real NATS server for tests (Debian's `nats-server`, installed by `.ci/setup-nats`):
//! one per [`NatsServer`], a plain child process on a loopback address the test gives,
//! with its own temp folder holding its configuration (`nats-server.conf`), pid file
//! (`nats-server.pid`) and log (`nats-server.log`, its stderr).
//!
//! - The first start asks for a random port (`port: -1`); the port is read from the
//!   server's "Listening for client connections on IP:PORT" log line, so no other process
//!   can take it between a probe and the bind. [`NatsServer::restart`] starts it again on
//!   that SAME port (clients configured with the URL reconnect to it).
//! - Readiness is an event: the "Server is ready" log line, read from its stderr by the
//!   thread that spawned it (bounded wait, [`START_TIMEOUT`], then a panic with the log's
//!   tail). The same thread reaps the process and reports its exit, which is what
//!   [`NatsServer::stop`] and [`NatsServer::kill`] wait on.
//! - The server is spawned with a parent-death signal (SIGKILL, `prctl`) tied to that
//!   thread, which lives exactly as long as the server: if the test process dies, so does
//!   the server.
//! - Stopping: SIGTERM by pid, up to [`STOP_TIMEOUT`] for it to exit, then SIGKILL.
//!   [`Drop`] stops it.
//!
//! A missing binary fails the test with a message naming `.ci/setup-nats`.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

/// Where Debian's package installs the server.
pub const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// Longest wait for "Server is ready" after a spawn.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for the process to exit after SIGTERM (then SIGKILL), or after SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of the log's end a failure message carries.
const LOG_TAIL: usize = 4 * 1024;

/// One nats-server (running or stopped) on a fixed loopback address and port.
pub struct NatsServer {
    binary: PathBuf,
    ip: Ipv4Addr,
    /// Its client port; 0 only before the first start has read it from the log.
    port: u16,
    dir: tempfile::TempDir,
    running: Option<Running>,
}

/// A spawned process: its pid and the channel its reaper thread reports the exit on.
struct Running {
    pid: u32,
    exited: Receiver<ExitStatus>,
}

/// What the reaper thread reports while the server starts.
enum Startup {
    /// The process was spawned (comes first, so that a server that never gets ready can
    /// still be killed).
    Spawned(u32),
    /// The "Server is ready" line arrived; the port is the one the listen line named.
    Ready(u16),
    /// The process could not be spawned, or ended before it was ready.
    Failed(String),
}

fn require_binary(binary: &Path) {
    assert!(
        binary.exists(),
        "{} is missing: run .ci/setup-nats (installs Debian's nats-server)",
        binary.display()
    );
}

impl NatsServer {
    /// Starts a nats-server listening on `ip` (a loopback address the test owns) on a
    /// random free port, and returns once it logged "Server is ready".
    ///
    /// Panics naming `.ci/setup-nats` when the binary is missing, and with the log's tail
    /// when the server exits or is not ready within [`START_TIMEOUT`].
    pub fn start(ip: Ipv4Addr) -> NatsServer {
        Self::start_binary(Path::new(NATS_SERVER), ip)
    }

    /// [`NatsServer::start`] with the server binary at `binary` (the harness's own test
    /// gives a missing one).
    pub fn start_binary(binary: &Path, ip: Ipv4Addr) -> NatsServer {
        require_binary(binary);
        let dir = tempfile::Builder::new()
            .prefix("fedrouter-nats-")
            .tempdir()
            .expect("temp folder for nats-server");
        let mut me = NatsServer {
            binary: binary.to_owned(),
            ip,
            port: 0,
            dir,
            running: None,
        };
        me.spawn();
        me
    }

    /// `nats://IP:PORT`, the URL clients (and `[cluster] nats`) use.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr())
    }

    /// The client listener's address (the same across restarts).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.ip, self.port))
    }

    /// The process id while the server runs; `None` once stopped or killed.
    pub fn pid(&self) -> Option<u32> {
        self.running.as_ref().map(|r| r.pid)
    }

    /// The folder with the configuration, pid file and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The pid file the server writes (`pid_file` in its configuration).
    pub fn pid_file(&self) -> PathBuf {
        self.dir.path().join("nats-server.pid")
    }

    /// The whole log so far (every run's stderr, appended).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("nats-server.log")).unwrap_or_default()
    }

    /// The last [`LOG_TAIL`] bytes of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let mut at = log.len().saturating_sub(LOG_TAIL);
        while !log.is_char_boundary(at) {
            at += 1;
        }
        log[at..].to_owned()
    }

    /// Graceful stop: SIGTERM by pid, up to [`STOP_TIMEOUT`] for the process to exit, then
    /// SIGKILL (and the same wait). Idempotent.
    pub fn stop(&mut self) {
        self.signal_and_wait(libc::SIGTERM);
    }

    /// Abrupt death: SIGKILL by pid, then waits (bounded) until the process is reaped, so
    /// its port is closed when this returns. Idempotent.
    pub fn kill(&mut self) {
        self.signal_and_wait(libc::SIGKILL);
    }

    /// Starts the server again on the same address and port (stopping it first if it
    /// runs) and returns once it is ready. Panics like [`NatsServer::start`], and when the
    /// port was taken meanwhile.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn signal_and_wait(&mut self, first: libc::c_int) {
        let Some(run) = self.running.take() else {
            return;
        };
        for sig in [first, libc::SIGKILL] {
            // SAFETY: kill(2) on the pid of our own child, which its reaper thread has not
            // reaped yet (it reports on `exited` when it has, and we stop signalling).
            unsafe {
                libc::kill(run.pid as libc::pid_t, sig);
            }
            match run.exited.recv_timeout(STOP_TIMEOUT) {
                Ok(_) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) if sig != libc::SIGKILL => continue,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "nats-server (pid {}) still runs {STOP_TIMEOUT:?} after SIGKILL; log:\n{}",
                    run.pid,
                    self.log_tail()
                ),
            }
        }
    }

    /// Writes the configuration for the current port (-1, random, before the first start)
    /// and spawns the server from a reaper thread; waits for readiness.
    fn spawn(&mut self) {
        let dir = self.dir.path().to_owned();
        let conf = dir.join("nats-server.conf");
        let port: i32 = if self.port == 0 {
            -1
        } else {
            i32::from(self.port)
        };
        fs::write(
            &conf,
            format!(
                "# fedrouter test nats-server (tests/common/nats.rs)\n\
                 server_name: \"fedrouter-test-{ip}\"\n\
                 host: \"{ip}\"\n\
                 port: {port}\n\
                 pid_file: \"{pid}\"\n",
                ip = self.ip,
                pid = dir.join("nats-server.pid").display(),
            ),
        )
        .expect("write nats-server.conf");
        let log_path = dir.join("nats-server.log");
        let binary = self.binary.clone();
        let (start_tx, start_rx) = crossbeam_channel::bounded::<Startup>(2);
        let (exit_tx, exit_rx) = crossbeam_channel::bounded::<ExitStatus>(1);
        std::thread::Builder::new()
            .name(format!("nats-{}", self.ip))
            .spawn(move || reap(&binary, &conf, &log_path, start_tx, exit_tx))
            .expect("spawn the nats-server reaper thread");
        let deadline = Instant::now() + START_TIMEOUT;
        let mut pid = None;
        let why = loop {
            match start_rx.recv_deadline(deadline) {
                Ok(Startup::Spawned(p)) => pid = Some(p),
                Ok(Startup::Ready(port)) => {
                    let pid = pid.expect("Spawned comes before Ready");
                    assert!(
                        self.port == 0 || self.port == port,
                        "nats-server restarted on port {port}, not {}",
                        self.port
                    );
                    self.port = port;
                    self.running = Some(Running {
                        pid,
                        exited: exit_rx,
                    });
                    return;
                }
                Ok(Startup::Failed(why)) => break why,
                Err(_) => break format!("not ready within {START_TIMEOUT:?}"),
            }
        };
        // Not ready: take down what may still run (not yet reaped) before failing.
        if let (Some(pid), Err(_)) = (pid, exit_rx.try_recv()) {
            self.running = Some(Running {
                pid,
                exited: exit_rx,
            });
            self.kill();
        }
        panic!(
            "nats-server on {}: {why}; log:\n{}",
            self.ip,
            self.log_tail()
        )
    }
}

/// The reaper thread: spawns the server (its parent-death signal tied to this thread),
/// copies its stderr into the log file, reports readiness on `start` and the exit status
/// on `exited`, then ends.
fn reap(
    binary: &Path,
    conf: &Path,
    log_path: &Path,
    start: crossbeam_channel::Sender<Startup>,
    exited: crossbeam_channel::Sender<ExitStatus>,
) {
    let mut log = match fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
    {
        Ok(f) => f,
        Err(e) => {
            let _ = start.send(Startup::Failed(format!("open {}: {e}", log_path.display())));
            return;
        }
    };
    let mut cmd = Command::new(binary);
    cmd.arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and only affects the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = start.send(Startup::Failed(format!(
                "spawn {}: {e} (run .ci/setup-nats)",
                binary.display()
            )));
            return;
        }
    };
    let pid = child.id();
    let _ = start.send(Startup::Spawned(pid));
    let stderr = child.stderr.take().expect("piped stderr");
    let mut port = None;
    let mut start = Some(start);
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        let _ = writeln!(log, "{line}");
        if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
            port = rest
                .trim()
                .rsplit(':')
                .next()
                .and_then(|p| p.parse::<u16>().ok());
        }
        if line.contains("Server is ready") {
            if let Some(tx) = start.take() {
                let msg = match port {
                    Some(port) => Startup::Ready(port),
                    None => Startup::Failed("ready, but no listen line named its port".into()),
                };
                let _ = tx.send(msg);
            }
        }
    }
    // stderr closed: the process ended (or closed it); reap it.
    let status = child.wait().expect("wait for nats-server");
    let _ = writeln!(log, "--- nats-server (pid {pid}) exited: {status}");
    // The exit first: a starter that hears `Failed` then finds it and signals nothing.
    let _ = exited.send(status);
    if let Some(tx) = start.take() {
        let _ = tx.send(Startup::Failed(format!(
            "exited before it was ready: {status}"
        )));
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
