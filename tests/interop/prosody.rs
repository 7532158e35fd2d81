//! A real Prosody (the Debian package, `/usr/bin/prosody`) run by pid for one test, with
//! its own configuration file, data folder, pid file and log in a temporary folder.
//!
//! Prosody facts this relies on (Prosody 0.12, checked against `/usr/lib/prosody`):
//!
//! - `prosody --config FILE -F` runs in the foreground with that file; `data_path`,
//!   `pidfile` and `log` put everything it writes in our folder.
//! - As root, the autoloaded `mod_posix` refuses to run ("Danger, Will Robinson!") unless
//!   `run_as_root = true`; `prosodyctl` would otherwise also switch to the `prosody` user.
//! - `interfaces` binds every listener (C2S, S2S) to one loopback address;
//!   `c2s_ports`/`s2s_ports` pick the ports; `c2s_direct_tls_ports`/`s2s_direct_tls_ports`
//!   are left empty.
//! - DNS goes through `net.unbound` (lua-unbound) when installed; its options are the
//!   global table `unbound = { forward = "IP" }` (lunbound knows `async`, `forward`,
//!   `resolvconf`, `hoststxt`, `trusted`, and `options`, a table of raw libunbound
//!   `ub_ctx_set_option` settings); `forward` takes an address and libunbound asks it on
//!   port 53. libunbound answers `.test` names itself (NXDOMAIN, RFC 6761 default
//!   zone) and skips forwarders on 127/8: `options` sets `local-zone: test. transparent`
//!   (`nodefault` is ignored there) and `do-not-query-localhost: no`.
//! - `certificates` must be a folder path: a table crashes start-up in `util.paths`.
//! - `s2s_require_encryption` (default true) and `s2s_secure_auth` (default false, the
//!   Debian file sets it true) decide whether plain TCP and dialback are accepted.
//!   Certificates are checked with `lsec_ignore_purpose`, so a serverAuth-only
//!   certificate is accepted on an inbound stream; `ssl = { cafile = ... }` names the CAs.
//! - Internal storage writes Lua files: `<data_path>/<host, '.' as %2e>/roster/<user>.dat`,
//!   `return { [false] = { version = N, pending = { [jid] = true } }, [jid] = { subscription
//!   = "...", ask = "subscribe"?, groups = {} } }`; they are read back with `lua5.4`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Prosody binary (Debian's package).
pub const PROSODY: &str = "/usr/bin/prosody";
/// Its control program (user registration).
pub const PROSODYCTL: &str = "/usr/bin/prosodyctl";
/// The Lua interpreter Prosody runs on (a dependency of the package); reads `.dat` files.
pub const LUA: &str = "lua5.4";

/// Longest wait for a starting Prosody to listen.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Time a stopping Prosody gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// Longest a `prosodyctl` command may run.
pub const CTL_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of the log's end is printed when a test fails.
const LOG_TAIL: usize = 24 * 1024;

const SETUP_HINT: &str = "run `.ci/setup-prosody` (installs Debian's prosody and lua-unbound); \
     an interoperability test that skips itself proves nothing, so this one fails";

/// Panics with a clear message unless Prosody and lua-unbound are installed.
pub fn require_installed() {
    let mut missing = Vec::new();
    if !Path::new(PROSODY).exists() {
        missing.push(PROSODY.to_owned());
    }
    if !Path::new(PROSODYCTL).exists() {
        missing.push(PROSODYCTL.to_owned());
    }
    if !Path::new("/usr/lib/prosody/net/unbound.lua").exists() {
        missing.push("/usr/lib/prosody/net/unbound.lua".to_owned());
    }
    let lunbound = Path::new("/usr/lib/x86_64-linux-gnu/lua/5.4/lunbound.so").exists()
        || Command::new(LUA)
            .args(["-e", "require 'lunbound'"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !lunbound {
        missing.push("the lua-unbound package (lunbound for lua5.4)".to_owned());
    }
    assert!(
        missing.is_empty(),
        "Prosody is not installed: missing {missing:?}; {SETUP_HINT}"
    );
}

/// How Prosody federates (its side of a profile).
#[derive(Debug, Clone)]
pub struct S2sPolicy {
    /// `s2s_require_encryption`.
    pub require_encryption: bool,
    /// `s2s_secure_auth`: only certificate-authenticated peers (no dialback fallback
    /// for a peer whose certificate does not verify).
    pub secure_auth: bool,
    /// PEM file of the CAs Prosody trusts for peers (`ssl.cafile`); `None`: the system's
    /// (`/etc/ssl/certs`), which does not know the test CA.
    pub cafile: Option<PathBuf>,
    /// XEP-0288 bidirectional streams: loads `mod_s2s_bidi` (not loaded by default, and
    /// commented out in Debian's `/etc/prosody/prosody.cfg.lua`). It offers and requests
    /// bidi only on an encrypted stream unless `s2s_require_encryption` is false.
    pub bidi: bool,
    /// XEP-0198 on S2S streams: `smacks_enabled_s2s` of `mod_smacks` (its default is
    /// true; `mod_smacks` is always loaded here, for C2S). Off sets it false.
    pub stream_management: bool,
}

impl S2sPolicy {
    /// The Prosody modules the policy adds to `modules_enabled`, and the options it sets,
    /// as Lua lines of the global section.
    fn modules_and_options(&self) -> (String, String) {
        let modules = if self.bidi { " \"s2s_bidi\";" } else { "" };
        let options = format!("smacks_enabled_s2s = {}\n", self.stream_management);
        (modules.to_owned(), options)
    }
}

/// What one Prosody instance serves.
#[derive(Debug, Clone)]
pub struct ProsodySpec {
    /// The host it serves (`VirtualHost`).
    pub host: String,
    /// The loopback address it listens on (C2S 5222, S2S 5269).
    pub addr: Ipv4Addr,
    /// The DNS server libunbound forwards every query to (port 53).
    pub dns: Ipv4Addr,
    /// PEM certificate chain and key for `host` (C2S and S2S).
    pub cert_pem: String,
    /// The key of `cert_pem`.
    pub key_pem: String,
    /// Federation settings.
    pub s2s: S2sPolicy,
}

/// A running Prosody.
pub struct Prosody {
    /// The spec it was started with.
    pub spec: ProsodySpec,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// `%`-escapes a host or user name as Prosody's `util.datamanager` does for paths
/// (every character outside `[A-Za-z0-9_-]`... in practice `.` → `%2e`).
pub fn encode_path_part(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

fn lua_str(s: &str) -> String {
    format!("{s:?}")
}

impl Prosody {
    /// Writes the configuration, certificate and key into a fresh temporary folder and
    /// starts Prosody; returns once its C2S and S2S ports accept connections. Panics (with
    /// the log) on failure.
    pub fn start(spec: ProsodySpec) -> Prosody {
        require_installed();
        let dir = tempfile::Builder::new()
            .prefix(&format!("prosody-{}-", spec.host))
            .tempdir()
            .expect("temporary folder");
        fs::create_dir_all(dir.path().join("data")).expect("data folder");
        // `certificates` must name a folder (a table crashes 0.12's start-up in
        // util.paths); an empty one stops it from looking in /etc/prosody/certs.
        fs::create_dir_all(dir.path().join("certs")).expect("certs folder");
        let mut me = Prosody {
            spec,
            dir,
            child: None,
        };
        fs::write(me.dir().join("host.crt"), &me.spec.cert_pem).expect("write certificate");
        fs::write(me.dir().join("host.key"), &me.spec.key_pem).expect("write key");
        fs::write(me.config_path(), me.config_text()).expect("write configuration");
        me.spawn();
        me
    }

    /// The instance's folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `prosody.cfg.lua` in the instance's folder.
    pub fn config_path(&self) -> PathBuf {
        self.dir().join("prosody.cfg.lua")
    }

    /// The log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("prosody.log")
    }

    /// The C2S address.
    pub fn c2s(&self) -> SocketAddr {
        SocketAddr::new(self.spec.addr.into(), 5222)
    }

    /// The S2S address.
    pub fn s2s(&self) -> SocketAddr {
        SocketAddr::new(self.spec.addr.into(), 5269)
    }

    /// The configuration file's text.
    pub fn config_text(&self) -> String {
        let d = self.dir().display().to_string();
        let s = &self.spec;
        let (modules, options) = s.s2s.modules_and_options();
        let cafile = s
            .s2s
            .cafile
            .as_ref()
            .map(|p| format!("\n\tcafile = {};", lua_str(&p.display().to_string())))
            .unwrap_or_default();
        format!(
            r#"-- Written by fedrouter's tests/interop for one test; nothing here is system-wide.
run_as_root = true
pidfile = {pid}
data_path = {data}
log = {{ {{ levels = {{ min = "debug" }}, to = "file", filename = {log} }} }}
interfaces = {{ {addr} }}
local_interfaces = {{ {addr} }}
c2s_ports = {{ 5222 }}
s2s_ports = {{ 5269 }}
c2s_direct_tls_ports = {{ }}
s2s_direct_tls_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
use_ipv6 = false
unbound = {{
	forward = {dns};
	hoststxt = false;
	resolvconf = false;
	options = {{
		-- libunbound answers .test (RFC 6761) itself with NXDOMAIN by default
		-- ("using localzone test. static"); "nodefault" is ignored through
		-- ub_ctx_set_option, a transparent zone of our own replaces the default one.
		["local-zone:"] = "test. transparent";
		-- Forwarders on 127/8 are skipped unless this is off.
		["do-not-query-localhost:"] = "no";
	}};
}}
modules_enabled = {{ "roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "smacks";{modules} }}
modules_disabled = {{ "offline" }}
{options}
authentication = "internal_hashed"
storage = "internal"
c2s_require_encryption = true
s2s_require_encryption = {req}
s2s_secure_auth = {secure}
s2s_timeout = 20
certificates = {certs}
ssl = {{
	certificate = {crt};
	key = {key};{cafile}
}}

VirtualHost {host}
	ssl = {{
		certificate = {crt};
		key = {key};{cafile}
	}}
"#,
            pid = lua_str(&format!("{d}/prosody.pid")),
            data = lua_str(&format!("{d}/data")),
            log = lua_str(&format!("{d}/prosody.log")),
            addr = lua_str(&s.addr.to_string()),
            dns = lua_str(&s.dns.to_string()),
            req = s.s2s.require_encryption,
            secure = s.s2s.secure_auth,
            certs = lua_str(&format!("{d}/certs")),
            crt = lua_str(&format!("{d}/host.crt")),
            key = lua_str(&format!("{d}/host.key")),
            host = lua_str(&s.host),
        )
    }

    fn spawn(&mut self) {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir().join("prosody.stdout"))
            .expect("open stdout file");
        let err = out.try_clone().expect("clone stdout file");
        let child = Command::new(PROSODY)
            .arg("--config")
            .arg(self.config_path())
            .arg("-F")
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {PROSODY}: {e}; {SETUP_HINT}"));
        self.child = Some(child);
        self.wait_listening();
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        // Bounded: START_TIMEOUT / 50 ms turns at most.
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "prosody {}: exited during start-up ({status}); stdout:\n{}\nlog:\n{}",
                    self.spec.host,
                    self.stdout(),
                    self.tail()
                );
            }
            let up = |a: SocketAddr| TcpStream::connect_timeout(&a, Duration::from_millis(200));
            if up(self.c2s()).is_ok() && up(self.s2s()).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "prosody {}: not listening on {} and {} within {START_TIMEOUT:?}; stdout:\n{}\nlog:\n{}",
            self.spec.host,
            self.c2s(),
            self.s2s(),
            self.stdout(),
            self.tail()
        );
    }

    /// The pid of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the process where it is with SIGSTOP (by pid): it reads nothing, answers
    /// nothing, and its sockets keep what the kernel already holds. The returned guard
    /// sends SIGCONT when dropped (also while a test panics), or at
    /// [`Suspended::resume`]. Panics when Prosody is not running.
    pub fn suspend(&self) -> Suspended {
        let pid = self.pid().expect("prosody: not running") as libc::pid_t;
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        let rc = unsafe { libc::kill(pid, libc::SIGSTOP) };
        assert_eq!(
            rc,
            0,
            "prosody: SIGSTOP to pid {pid}: {}",
            std::io::Error::last_os_error()
        );
        Suspended { pid, done: false }
    }

    /// Whether the process is running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stops Prosody (SIGTERM, then SIGKILL after [`STOP_GRACE`]); true when it exited on
    /// SIGTERM.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped. SIGCONT
        // after SIGTERM: a process stopped by SIGSTOP ([`Prosody::suspend`]) handles
        // its SIGTERM only once continued.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            libc::kill(child.id() as libc::pid_t, libc::SIGCONT);
        }
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

    /// SIGKILL (a crash) and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same folder (after [`Prosody::stop`] or [`Prosody::kill`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "prosody: still running");
        self.spawn();
    }

    /// Runs `prosodyctl --config FILE ARGS...`; panics unless it succeeds within
    /// [`CTL_TIMEOUT`]. Returns its stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let mut child = Command::new(PROSODYCTL)
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {PROSODYCTL}: {e}; {SETUP_HINT}"));
        let deadline = Instant::now() + CTL_TIMEOUT;
        // Bounded: CTL_TIMEOUT / 20 ms turns.
        while child.try_wait().expect("wait for prosodyctl").is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("prosodyctl {args:?}: still running after {CTL_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut stdout = String::new();
        let mut stderr = String::new();
        if let Some(mut o) = child.stdout.take() {
            let _ = o.read_to_string(&mut stdout);
        }
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        let status = child.wait().expect("prosodyctl status");
        assert!(
            status.success(),
            "prosodyctl {args:?}: {status}\n{stdout}{stderr}"
        );
        stdout
    }

    /// Registers `user@host` with `password` (`prosodyctl register`).
    pub fn register(&self, user: &str, password: &str) {
        self.ctl(&["register", user, &self.spec.host, password]);
    }

    /// The stored roster of `user` (a localpart): contact → (subscription, ask), plus the
    /// contacts with a pending inbound request under the key `"pending:JID"`. Read from
    /// the internal storage file with `lua5.4`; an absent file is an empty roster.
    pub fn stored_roster(&self, user: &str) -> BTreeMap<String, (String, Option<String>)> {
        let path = self
            .dir()
            .join("data")
            .join(encode_path_part(&self.spec.host))
            .join("roster")
            .join(format!("{}.dat", encode_path_part(user)));
        let mut out = BTreeMap::new();
        if !path.exists() {
            return out;
        }
        let script = r#"
local t = dofile(arg[1])
for k, v in pairs(t) do
  if k == false then
    for j in pairs(v.pending or {}) do print("pending:" .. j, "-", "-") end
  else
    print(k, v.subscription or "none", v.ask or "-")
  end
end
"#;
        let o = Command::new(LUA)
            .arg("-e")
            .arg(format!(
                "arg = {{ {} }}",
                lua_str(&path.display().to_string())
            ))
            .arg("-e")
            .arg(script)
            .output()
            .unwrap_or_else(|e| panic!("run {LUA}: {e}"));
        assert!(
            o.status.success(),
            "{LUA} reading {}: {}\n{}",
            path.display(),
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let cols: Vec<&str> = line.split('\t').collect();
            if cols.len() == 3 {
                let ask = (cols[2] != "-").then(|| cols[2].to_owned());
                out.insert(cols[0].to_owned(), (cols[1].to_owned(), ask));
            }
        }
        out
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits (bounded) until a log line contains every one of `needles`.
    pub fn wait_log(&self, needles: &[&str], timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .log()
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return Some(l.to_owned());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stdout(&self) -> String {
        fs::read(self.dir().join("prosody.stdout"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The end of the log.
    pub fn tail(&self) -> String {
        let log = self.log();
        let mut start = log.len().saturating_sub(LOG_TAIL);
        while !log.is_char_boundary(start) {
            start += 1;
        }
        log[start..].to_owned()
    }
}

/// A Prosody stopped by SIGSTOP ([`Prosody::suspend`]); SIGCONT on drop.
#[must_use = "dropping the guard continues Prosody at once"]
pub struct Suspended {
    pid: libc::pid_t,
    done: bool,
}

impl Suspended {
    /// The stopped process's pid.
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// SIGCONT now (by pid).
    pub fn resume(mut self) {
        self.cont();
    }

    fn cont(&mut self) {
        if !std::mem::replace(&mut self.done, true) {
            // SAFETY: kill(2) on the pid of a child the `Prosody` spawned; it is not
            // reaped while stopped (only `Prosody::stop`/`kill` reap it).
            unsafe { libc::kill(self.pid, libc::SIGCONT) };
        }
    }
}

impl Drop for Suspended {
    fn drop(&mut self) {
        self.cont();
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        let clean = self.stop();
        if std::thread::panicking() || std::env::var_os("FEDROUTER_TEST_LOGS").is_some() {
            eprintln!(
                "----- prosody {} log ({}), last {LOG_TAIL} bytes -----\n{}\n----- end of prosody log -----",
                self.spec.host,
                self.log_path().display(),
                self.tail(),
            );
            if !clean {
                eprintln!("prosody: did not exit within {STOP_GRACE:?} of SIGTERM; killed");
            }
        }
    }
}
