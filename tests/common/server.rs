//! Spawning and stopping real `fedrouter serve` processes for the runtime tests.
//!
//! Each [`Fedrouter`] runs the binary Cargo built for the integration tests
//! (`CARGO_BIN_EXE_fedrouter`) with its configuration and data in a fresh temporary
//! folder, its stderr (the tracing log, `RUST_LOG=fedrouter=debug`) in `fedrouter.log`
//! there, and talks to it through its admin endpoint (`listen.admin`, which every
//! configuration given here must set). Tests give each instance its own loopback address
//! (`127.0.N.x`, N = 200 + the test's number) with fixed ports, so tests can run in
//! parallel.
//!
//! On drop the process gets SIGTERM, then up to [`STOP_GRACE`] to exit, then SIGKILL. When
//! the test is panicking (or `FEDROUTER_TEST_LOGS` is set), the end of the log is printed
//! to stderr afterwards.
#![allow(dead_code)]

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::net::Ipv4Addr;

use fedrouter::config::Config;
use fedrouter_testkit::zone::{ZoneRecord, ZoneServer};

/// Longest wait for a new instance's `/health` to answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Time a stopping instance gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Longest wait for one admin `/ping` answer (the server itself gives up after 60 s).
pub const PING_TIMEOUT: Duration = Duration::from_secs(30);

/// How much of the log's end is printed when a test fails.
const LOG_TAIL: usize = 16 * 1024;

/// One running `fedrouter serve` process.
pub struct Fedrouter {
    /// A name for messages (`"a.test"`).
    pub name: String,
    /// The admin endpoint (`listen.admin`).
    pub admin: SocketAddr,
    /// The configuration as the server parsed it.
    pub config: Config,
    dir: tempfile::TempDir,
    log_path: PathBuf,
    launch: Launch,
    child: Option<Child>,
    /// The socket inodes of the process last killed or stopped ([`Fedrouter::restart`]
    /// waits until its listeners are gone).
    old_sockets: Vec<u64>,
}

/// The socket inodes among `pid`'s open files.
fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let link = std::fs::read_link(e.ok()?.path()).ok()?;
        let l = link.to_str()?;
        l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
    })
    .collect()
}

/// Whether a TCP socket in LISTEN state has one of `inodes` (`/proc/net/tcp`, `tcp6`).
fn listening(inodes: &[u64]) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines().skip(1).any(|l| {
                let c: Vec<&str> = l.split_whitespace().collect();
                c.len() > 9
                    && c[3] == "0A"
                    && c[9].parse::<u64>().is_ok_and(|i| inodes.contains(&i))
            })
        })
    })
}

/// How [`Fedrouter::start_launch`] runs the process, beyond `serve -c FILE` with
/// `RUST_LOG=fedrouter=debug` and `NO_COLOR=1`.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// Arguments after `serve -c FILE` (`--log-format json`).
    pub args: Vec<String>,
    /// Environment changes applied after the defaults: `Some` sets, `None` removes.
    pub env: Vec<(String, Option<String>)>,
}

impl Fedrouter {
    /// Starts `fedrouter serve` with `toml` (which must not set `data_dir`: it is put in
    /// the instance's temporary folder) and waits until `/health` answers.
    ///
    /// Panics (with the log) when the configuration is invalid, the process exits, or
    /// `/health` does not answer within [`START_TIMEOUT`].
    pub fn start(name: &str, toml: &str) -> Fedrouter {
        Self::start_with(name, toml, &[])
    }

    /// Like [`Fedrouter::start`], writing `files` (name relative to the instance's folder,
    /// contents) first: certificates, keys, CA bundles the configuration names. The
    /// process runs in that folder, so relative paths in `toml` find them.
    pub fn start_with(name: &str, toml: &str, files: &[(&str, &str)]) -> Fedrouter {
        Self::start_launch(name, toml, files, Launch::default())
    }

    /// Like [`Fedrouter::start_with`], run as `launch` says (extra arguments, environment).
    pub fn start_launch(
        name: &str,
        toml: &str,
        files: &[(&str, &str)],
        launch: Launch,
    ) -> Fedrouter {
        let dir = tempfile::Builder::new()
            .prefix(&format!("fedrouter-{name}-"))
            .tempdir()
            .expect("temporary folder");
        for (file, text) in files {
            fs::write(dir.path().join(file), text).expect("write instance file");
        }
        let data_dir = dir.path().join("data");
        let text = format!("data_dir = {:?}\n{toml}", data_dir.display().to_string());
        let config = Config::from_toml_str(&text)
            .unwrap_or_else(|e| panic!("{name}: bad test configuration: {e}\n{text}"));
        let admin = config
            .listen
            .admin
            .unwrap_or_else(|| panic!("{name}: the test configuration must set listen.admin"));
        let config_path = dir.path().join("fedrouter.toml");
        fs::write(&config_path, &text).expect("write configuration");
        let log_path = dir.path().join("fedrouter.log");
        let mut me = Fedrouter {
            name: name.to_owned(),
            admin,
            config,
            dir,
            log_path,
            launch,
            child: None,
            old_sockets: Vec::new(),
        };
        me.spawn();
        me
    }

    /// Starts the process on the instance's folder and waits for `/health`; the log is
    /// appended to.
    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_fedrouter"));
        command
            .arg("serve")
            .arg("-c")
            .arg(self.config_path())
            .args(&self.launch.args)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "fedrouter=debug")
            .env("NO_COLOR", "1");
        for (key, value) in &self.launch.env {
            match value {
                Some(v) => command.env(key, v),
                None => command.env_remove(key),
            };
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn fedrouter");
        self.child = Some(child);
        self.wait_healthy();
    }

    /// The configuration file the process runs with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("fedrouter.toml")
    }

    /// The process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends signal `sig` (e.g. `libc::SIGHUP`) to the process.
    pub fn signal(&self, sig: i32) {
        let child = self.child.as_ref().expect("running");
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    }

    /// Kills the process with SIGKILL (no shutdown at all: a crash) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.old_sockets = socket_inodes(child.id());
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again on the same folder, configuration and data (after
    /// [`Fedrouter::kill`] or [`Fedrouter::stop`]).
    ///
    /// It first waits (bounded) until the old process's listening sockets are gone: the
    /// kernel releases sockets an io_uring instance still references after the process
    /// has been reaped, and with `SO_REUSEPORT` a new connection can land on such a
    /// socket and be reset when it goes.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{}: still running", self.name);
        let old = std::mem::take(&mut self.old_sockets);
        let deadline = Instant::now() + START_TIMEOUT;
        // Bounded: START_TIMEOUT / 10 ms turns at most.
        while !old.is_empty() && listening(&old) {
            assert!(
                Instant::now() < deadline,
                "{}: the killed process's listening sockets are still there after {START_TIMEOUT:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self.spawn();
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        // Bounded: START_TIMEOUT / 20 ms turns at most.
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{}: fedrouter exited during start-up ({status}); log:\n{}",
                    self.name,
                    self.log()
                );
            }
            if matches!(self.health_within(Duration::from_secs(1)), Some((200, v)) if v["status"] == "ok")
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{}: /health did not answer within {START_TIMEOUT:?}; log:\n{}",
            self.name,
            self.log()
        );
    }

    /// The instance's folder (configuration, data, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The whole log (stderr) so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Log lines containing every one of `needles`.
    pub fn log_lines(&self, needles: &[&str]) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_owned)
            .collect()
    }

    /// Waits (bounded by `timeout`) until a log line contains every one of `needles`;
    /// returns that line.
    pub fn wait_log(&self, needles: &[&str], timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.log_lines(needles).into_iter().next() {
                return Some(l);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET /ping?to=TO` on the admin endpoint: the JSON answer.
    pub fn ping(&self, to: &str) -> serde_json::Value {
        self.ping_query(&format!("/ping?to={to}"))
    }

    /// `GET /ping?to=TO&from=FROM` on the admin endpoint: the JSON answer.
    pub fn ping_from(&self, to: &str, from: &str) -> serde_json::Value {
        self.ping_query(&format!("/ping?to={to}&from={from}"))
    }

    fn ping_query(&self, path: &str) -> serde_json::Value {
        let (status, body) = http_get(self.admin, path, PING_TIMEOUT)
            .unwrap_or_else(|e| panic!("{}: GET {path}: {e}; log:\n{}", self.name, self.tail()));
        serde_json::from_str(&body).unwrap_or_else(|e| {
            panic!(
                "{}: GET {path}: status {status}, body {body:?} is not JSON ({e})",
                self.name
            )
        })
    }

    /// `GET /metrics`: the sum of the samples of `name` (the full Prometheus name,
    /// `fedrouter_…_total` for a counter) whose labels include every one of `labels`; 0
    /// when there is none. `None` when the endpoint does not answer 200 now (shards busy).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let (status, body) = http_get(self.admin, "/metrics", Duration::from_secs(30)).ok()?;
        (status == 200).then(|| metric_sum(&body, name, labels))
    }

    /// Whether `/health` answers `ok` now: 200, every shard alive.
    pub fn healthy(&self) -> bool {
        matches!(self.health(), Some((200, v)) if v["status"] == "ok")
    }

    /// `GET /health`: the status code and the JSON answer (`{"status", "shards": [{"id",
    /// "alive", "state", "since_last_turn_ms"}]}`), `None` when it does not answer JSON
    /// within 5 s (the server waits 2 s for its shards).
    pub fn health(&self) -> Option<(u16, serde_json::Value)> {
        self.health_within(Duration::from_secs(5))
    }

    fn health_within(&self, timeout: Duration) -> Option<(u16, serde_json::Value)> {
        let (status, body) = http_get(self.admin, "/health", timeout).ok()?;
        Some((status, serde_json::from_str(&body).ok()?))
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn tail(&self) -> String {
        let log = self.log();
        let mut start = log.len().saturating_sub(LOG_TAIL);
        while !log.is_char_boundary(start) {
            start += 1;
        }
        log[start..].to_owned()
    }

    /// Stops the process (SIGTERM, then SIGKILL after [`STOP_GRACE`]); returns whether it
    /// exited on SIGTERM within the grace time.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        self.old_sockets = socket_inodes(child.id());
        let pid = child.id() as libc::pid_t;
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for Fedrouter {
    fn drop(&mut self) {
        let clean = self.stop();
        if std::thread::panicking() || std::env::var_os("FEDROUTER_TEST_LOGS").is_some() {
            eprintln!(
                "----- {} log ({}), last {} bytes -----\n{}\n----- end of {} log -----",
                self.name,
                self.log_path.display(),
                LOG_TAIL,
                self.tail(),
                self.name
            );
            if !clean {
                eprintln!(
                    "{}: did not exit within {STOP_GRACE:?} of SIGTERM; killed",
                    self.name
                );
            }
        }
    }
}

/// A minimal HTTP/1.0 GET over a std `TcpStream`: `(status, body)`. Bounded by `timeout`
/// for connecting and for each read and write.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(2)))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {timeout:?}"),
        ),
        _ => e,
    })?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP header end in {text:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    Ok((status, body.to_owned()))
}

/// In Prometheus text `body`: the sum of the samples of `name` whose labels include every
/// one of `labels` (`k="v"`, as fedrouter renders them: no escapes in the values used here).
pub fn metric_sum(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------------------
// The lab: loopback addresses, DNS zone and configuration shared by the runtime tests.
// ---------------------------------------------------------------------------------------

/// The DNS port of every test's zone server (`127.0.NET.1`).
pub const DNS_PORT: u16 = 5300;

/// `127.0.NET.HOST`: the test with number NET - 200 owns `127.0.NET.0/24`.
pub fn ip(net: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, net, host)
}

/// An SRV record `SERVICE._tcp.DOMAIN` → `TARGET:PORT`.
pub fn srv(service: &str, domain: &str, target: &str, port: u16) -> ZoneRecord {
    ZoneRecord::Srv {
        name: format!("{service}._tcp.{domain}"),
        ttl: 300,
        priority: 0,
        weight: 5,
        port,
        target: target.to_owned(),
    }
}

/// An A record.
pub fn a(name: &str, addr: Ipv4Addr) -> ZoneRecord {
    ZoneRecord::A {
        name: name.to_owned(),
        ttl: 300,
        addr,
    }
}

/// `_xmpp-server._tcp.DOMAIN` → `xmpp.DOMAIN:5269` and its A record.
pub fn xmpp_server(domain: &str, addr: Ipv4Addr) -> Vec<ZoneRecord> {
    let host = format!("xmpp.{domain}");
    vec![srv("_xmpp-server", domain, &host, 5269), a(&host, addr)]
}

/// The zone server of test NET, on `127.0.NET.1:DNS_PORT`.
pub fn zone(net: u8, records: Vec<ZoneRecord>) -> ZoneServer {
    ZoneServer::start(SocketAddr::new(ip(net, 1).into(), DNS_PORT), records)
        .expect("start the zone server")
}

/// A configuration for one instance at `addr` hosting `domains`, resolving through the
/// zone server of `net`; `extra` is appended (tables: `[s2s]`, `[federation.default]`,
/// `[tls]` ...). STARTTLS S2S on 5269, direct TLS on 5270, admin on 9269, no C2S.
pub fn config(net: u8, addr: Ipv4Addr, domains: &[&str], shards: usize, extra: &str) -> String {
    let domains: Vec<String> = domains.iter().map(|d| format!("{d:?}")).collect();
    format!(
        r#"domains = [{domains}]
shards = {shards}

[listen]
s2s = ["{addr}:5269"]
s2s_tls = ["{addr}:5270"]
c2s = []
admin = "{addr}:9269"

[dns]
nameservers = ["{dns}"]
timeout = "2s"

{extra}
"#,
        domains = domains.join(", "),
        dns = SocketAddr::new(ip(net, 1).into(), DNS_PORT),
    )
}

/// Google-style federation for every peer: plain TCP, dialback, no certificate checks.
pub const GOOGLE_STYLE: &str = r#"
[federation.default]
tls = "disabled"
auth = "dialback"
verify_certificates = false
"#;

/// Asserts a `/ping` answer is a pong.
pub fn assert_pong(v: &serde_json::Value, what: &str) {
    assert_eq!(v["result"], "pong", "{what}: {v}");
}

/// Asserts a `/ping` answer is an error with `condition`.
pub fn assert_error(v: &serde_json::Value, condition: &str, what: &str) {
    assert_eq!(v["result"], "error", "{what}: {v}");
    assert_eq!(v["condition"], condition, "{what}: {v}");
}

/// The `rtt_ms` of a `/ping` answer (NaN when absent).
pub fn rtt_ms(v: &serde_json::Value) -> f64 {
    v["rtt_ms"].as_f64().unwrap_or(f64::NAN)
}

/// Longest wait for one `fedrouter user add`.
pub const USER_ADD_TIMEOUT: Duration = Duration::from_secs(30);

/// `fedrouter user add JID -c CONFIG` with `password` on stdin; panics unless it succeeds
/// within [`USER_ADD_TIMEOUT`]. The instance need not be running (the
/// store is opened by the command).
pub fn add_user(config_path: &Path, jid: &str, password: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fedrouter"))
        .args(["user", "add", jid, "-c"])
        .arg(config_path)
        .current_dir(config_path.parent().expect("config folder"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fedrouter user add");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("write the password");
    let deadline = Instant::now() + USER_ADD_TIMEOUT;
    // Bounded: USER_ADD_TIMEOUT / 10 ms turns.
    while child.try_wait().expect("wait for fedrouter user").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("fedrouter user add {jid}: still running after {USER_ADD_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("fedrouter user add output");
    assert!(
        out.status.success(),
        "fedrouter user add {jid}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
