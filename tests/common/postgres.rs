//! A real PostgreSQL server for tests (Debian's `postgresql`, installed by
//! `.ci/setup-postgres`): ONE per test process, started on first use and stopped by pid
//! when the process exits, with a fresh database per test ([`fresh_database`]).
//!
//! - `initdb` into a temp folder (password authentication, `scram-sha-256`), then
//!   `postgres` listening on 127.0.178.1 on a free port, its unix socket inside the
//!   folder. As root both run as the `postgres` OS user (PostgreSQL refuses root) through
//!   `setpriv`, the folder owned by it.
//! - Readiness is an event: the server's "ready to accept connections" log line, read
//!   from its stderr (bounded wait).
//! - Stopping: an `atexit` hook sends SIGINT (fast shutdown) to the server's pid and
//!   waits for it (bounded, then SIGKILL), then deletes the folder. If the test process
//!   is killed instead, the server still goes: it is started with a parent-death signal
//!   (`setpriv --pdeathsig`, or `prctl` when not root) tied to a keeper thread that
//!   lives as long as the process.
//!
//! Missing binaries fail the test with a message naming `.ci/setup-postgres`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The loopback address the test servers listen on.
pub const PG_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 178, 1);

/// The superuser's password (also what the tests' URLs carry, so that redaction is
/// exercised).
pub const PG_PASSWORD: &str = "pg-test-secret";

/// The running server of this process.
pub struct PgServer {
    /// Its TCP port on [`PG_ADDR`].
    pub port: u16,
    /// Its pid.
    pub pid: u32,
    /// The temp folder with its data directory and socket.
    pub dir: PathBuf,
}

static SERVER: OnceLock<PgServer> = OnceLock::new();
/// The server's recent log lines, for failure messages.
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The folder holding `postgres`, `initdb`: the highest version under
/// /usr/lib/postgresql. Panics naming `.ci/setup-postgres` when there is none.
pub fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: \
             run .ci/setup-postgres (installs Debian's postgresql)"
        ),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A command for `program`, run as the `postgres` OS user when we are root.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--pdeathsig=INT",
            "--",
        ])
        .arg(program);
        c
    } else {
        let mut c = Command::new(program);
        // SAFETY: prctl with PR_SET_PDEATHSIG is async-signal-safe and touches only the
        // child being set up.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT);
                Ok(())
            });
        }
        c
    }
}

fn free_port() -> u16 {
    TcpListener::bind((PG_ADDR, 0))
        .expect("bind a free port on 127.0.178.1")
        .local_addr()
        .unwrap()
        .port()
}

/// The server of this process, started on first use.
pub fn server() -> &'static PgServer {
    SERVER.get_or_init(start)
}

/// `postgresql://postgres:PASSWORD@127.0.178.1:PORT/dbname`.
pub fn url(dbname: &str) -> String {
    let s = server();
    format!(
        "postgresql://postgres:{PG_PASSWORD}@{PG_ADDR}:{}/{dbname}",
        s.port
    )
}

/// Creates a new empty database on this process's server and returns its URL.
pub fn fresh_database() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "t_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin = postgres::Client::connect(&url("postgres"), postgres::NoTls)
        .unwrap_or_else(|e| panic!("connect to the test PostgreSQL: {e}; log: {:?}", log()));
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create a test database");
    url(&name)
}

/// The server's last log lines.
pub fn log() -> Vec<String> {
    LOG.lock().unwrap().clone()
}

fn start() -> PgServer {
    let bin = bin_dir();
    let dir = tempfile::Builder::new()
        .prefix("fedrouter-pg-")
        .tempdir()
        .expect("temp folder")
        .keep();
    let data = dir.join("data");
    let sock = dir.join("sock");
    std::fs::create_dir_all(&sock).unwrap();
    let pwfile = dir.join("pw");
    std::fs::write(&pwfile, format!("{PG_PASSWORD}\n")).unwrap();
    if is_root() {
        let out = Command::new("id")
            .args(["-u", "postgres"])
            .output()
            .unwrap();
        let uid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().expect(
            "the postgres OS user exists (Debian's postgresql creates it): run .ci/setup-postgres",
        );
        let out = Command::new("id")
            .args(["-g", "postgres"])
            .output()
            .unwrap();
        let gid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        for p in [&dir, &sock, &pwfile] {
            std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
        }
    }
    let out = as_postgres(&bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        ])
        .arg(format!("--pwfile={}", pwfile.display()))
        .stdin(Stdio::null())
        .output()
        .expect("run initdb (as root through setpriv, from util-linux): run .ci/setup-postgres");
    assert!(
        out.status.success(),
        "initdb failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    // The keeper thread spawns the server and then lives as long as the process: the
    // server's parent-death signal fires when it (the forking thread) goes.
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<u32, String>>(1);
    let (bin2, data2, sock2) = (bin.clone(), data.clone(), sock.clone());
    std::thread::Builder::new()
        .name("pg-keeper".into())
        .spawn(move || {
            let child = as_postgres(&bin2.join("postgres"))
                .arg("-D")
                .arg(&data2)
                .arg("-k")
                .arg(&sock2)
                .args(["-h", &PG_ADDR.to_string(), "-p", &port.to_string()])
                .args(["-c", "fsync=on", "-c", "synchronous_commit=on"])
                .args(["-c", "max_connections=200", "-c", "shared_buffers=32MB"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn();
            let mut child = match child {
                Ok(c) => c,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("spawn postgres: {e}")));
                    return;
                }
            };
            let pid = child.id();
            let stderr = child.stderr.take().unwrap();
            let mut ready = Some(ready_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                {
                    let mut log = LOG.lock().unwrap();
                    log.push(line.clone());
                    let n = log.len();
                    if n > 200 {
                        log.drain(..n - 200);
                    }
                }
                if line.contains("ready to accept connections") {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(Ok(pid));
                    }
                }
            }
            // stderr closed: the server ended; reap it, then keep the thread (and so the
            // parent-death link) until the process ends.
            let _ = child.wait();
            if let Some(tx) = ready.take() {
                let _ = tx.send(Err("postgres exited before it was ready".into()));
            }
            loop {
                std::thread::park();
            }
        })
        .expect("spawn the keeper thread");
    let pid = match ready_rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(pid)) => pid,
        Ok(Err(e)) => panic!("{e}; log: {:?}", log()),
        Err(_) => panic!("postgres not ready within 60s; log: {:?}", log()),
    };
    let server = PgServer { port, pid, dir };
    STOP.lock().unwrap().replace((pid, server.dir.clone()));
    // SAFETY: registering a plain extern "C" fn with atexit.
    unsafe {
        libc::atexit(stop_at_exit);
    }
    server
}

/// What [`stop_at_exit`] stops and deletes.
static STOP: Mutex<Option<(u32, PathBuf)>> = Mutex::new(None);

extern "C" fn stop_at_exit() {
    let Some((pid, dir)) = STOP.lock().ok().and_then(|mut s| s.take()) else {
        return;
    };
    stop_pid(pid);
    let _ = std::fs::remove_dir_all(dir);
}

/// Fast shutdown (SIGINT) of `pid`, waiting for it to go: bounded (30 s), then SIGKILL.
pub fn stop_pid(pid: u32) {
    let pid = pid as libc::pid_t;
    // SAFETY: kill with a pid we started.
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        // The keeper thread reaps it; until then kill(pid, 0) succeeds.
        // SAFETY: signal 0 only checks for existence.
        if unsafe { libc::kill(pid, 0) } != 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}
