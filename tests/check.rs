//! `fedrouter check` (issue 7) end to end: the binary, run with `--json` against our own
//! DNS zone on loopback (`fedrouter_testkit::zone::ZoneServer`), real `fedrouter serve`
//! instances and scripted peers, for good and broken set-ups: the right verdict and fix
//! for each step, and the exit status.
//!
//! Each test owns the loopback range `127.0.N.0/24` (N = 240 to 249) and uses fixed ports
//! in it (`.1:5300` DNS, servers on 5269/5270/9269), so tests run in parallel without
//! colliding. Every wait is bounded.

#[path = "common/server.rs"]
mod server;

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fedrouter::dialback::{DialbackErrorCondition, DialbackResult, DialbackSecret};
use fedrouter::stream::{Event, FederationPolicy, PeerPolicy, S2sConfig, S2sConnection, TlsRole};
use fedrouter::tls::{self, CertifiedDomain, ClientAuth, DomainCertResolver};
use fedrouter_testkit::{Leaf, LeafOptions, TestCa};
use rustls::pki_types::UnixTime;
use serde_json::Value;
use server::{a, config, ip, srv, xmpp_server, zone, Fedrouter, GOOGLE_STYLE};

/// Longest run of one `fedrouter check`.
const CHECK_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A configuration for a server that is not running: its own folder, data and files.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new(name: &str, toml: &str, files: &[(String, String)]) -> Site {
        let dir = tempfile::Builder::new()
            .prefix(&format!("fedrouter-check-{name}-"))
            .tempdir()
            .expect("temporary folder");
        for (file, text) in files {
            std::fs::write(dir.path().join(file), text).expect("write site file");
        }
        let data_dir = dir.path().join("data");
        let text = format!("data_dir = {:?}\n{toml}", data_dir.display().to_string());
        std::fs::write(dir.path().join("fedrouter.toml"), text).expect("write configuration");
        Site { dir }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("fedrouter.toml")
    }

    fn check(&self, args: &[&str]) -> Outcome {
        run_check(self.dir.path(), &self.config_path(), args)
    }
}

/// What one `fedrouter check --json` gave.
struct Outcome {
    code: i32,
    report: Value,
    stderr: String,
}

impl Outcome {
    fn steps(&self, domain: &str, name: &str) -> Vec<&Value> {
        self.report["steps"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|s| s["domain"] == domain && s["name"] == name)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The one step `name` of `domain` (the first when there are several), with its
    /// verdict asserted.
    fn expect(&self, domain: &str, name: &str, verdict: &str) -> &Value {
        let steps = self.steps(domain, name);
        let Some(step) = steps.first() else {
            panic!("no {name} step for {domain} in\n{self}");
        };
        assert_eq!(
            step["verdict"], verdict,
            "{domain} {name}: expected {verdict}, got {step:#}\nin\n{self}"
        );
        step
    }

    fn text(step: &Value, field: &str) -> String {
        step[field].as_str().unwrap_or_default().to_owned()
    }

    fn no_step(&self, domain: &str, name: &str) {
        assert!(
            self.steps(domain, name).is_empty(),
            "unexpected {name} step for {domain} in\n{self}"
        );
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n{:#}\nstderr: {}",
            self.code, self.report, self.stderr
        )
    }
}

/// Runs `fedrouter check ARGS -c CONFIG --json` in `cwd`, bounded by [`CHECK_TIMEOUT`].
fn run_check(cwd: &Path, config: &Path, args: &[&str]) -> Outcome {
    let child = Command::new(env!("CARGO_BIN_EXE_fedrouter"))
        .arg("check")
        .args(args)
        .arg("-c")
        .arg(config)
        .arg("--json")
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fedrouter check");
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(CHECK_TIMEOUT) {
        Ok(o) => o.expect("wait for fedrouter check"),
        Err(_) => {
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("fedrouter check {args:?} did not finish within {CHECK_TIMEOUT:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("check {args:?}: stdout is not JSON ({e}):\n{stdout}\nstderr: {stderr}")
    });
    Outcome {
        code: output.status.code().unwrap_or(-1),
        report,
        stderr,
    }
}

/// The CA certificate and a leaf for `domain`, as files `ca.pem`, `DOMAIN.crt`, `DOMAIN.key`.
fn tls_files(ca: &TestCa, leaf: &Leaf, domain: &str) -> Vec<(String, String)> {
    vec![
        ("ca.pem".to_owned(), ca.ca_cert_pem()),
        (format!("{domain}.crt"), leaf.chain_pem()),
        (format!("{domain}.key"), leaf.key_pem()),
    ]
}

fn certificate_entry(domain: &str) -> String {
    format!(
        "\n[[tls.certificate]]\ndomain = \"{domain}\"\ncert = \"{domain}.crt\"\nkey = \"{domain}.key\"\n"
    )
}

fn secret(byte: u8) -> String {
    format!(
        "\n[s2s]\ndialback_secret = \"{}\"\n",
        hex::encode([byte; 32])
    )
}

fn files_ref(files: &[(String, String)]) -> Vec<(&str, &str)> {
    files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect()
}

// ---------------------------------------------------------------------------------------
// A scripted peer: STARTTLS with a chosen certificate, a chosen dialback answer
// ---------------------------------------------------------------------------------------

/// A plain or TLS socket for the fake server.
enum Io {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Io {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Io::Plain(s) => s.read(buf),
            Io::Tls(s) => s.read(buf),
        }
    }

    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Io::Plain(s) => s.write_all(data),
            Io::Tls(s) => s.write_all(data).and_then(|()| s.flush()),
        }
    }

    /// The client's certificate chain (empty on a plain socket or when none was sent).
    fn peer_chain(&self) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        match self {
            Io::Plain(_) => Vec::new(),
            Io::Tls(s) => s
                .conn
                .peer_certificates()
                .map(<[_]>::to_vec)
                .unwrap_or_default(),
        }
    }
}

/// The server side of a TLS handshake on `sock` (bounded: 10 s); `None` when it fails.
fn tls_accept(mut sock: TcpStream, cfg: Arc<rustls::ServerConfig>) -> Option<Io> {
    let mut tls_conn = rustls::ServerConnection::new(cfg).expect("TLS");
    let deadline = Instant::now() + Duration::from_secs(10);
    while tls_conn.is_handshaking() {
        if Instant::now() >= deadline {
            return None;
        }
        match tls_conn.complete_io(&mut sock) {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return None,
        }
    }
    Some(Io::Tls(Box::new(rustls::StreamOwned::new(tls_conn, sock))))
}

/// A remote server for one domain, run by the test: it accepts S2S streams and drives each
/// with the library's receiving side ([`S2sConnection::inbound`]); it offers STARTTLS with
/// `cert` when given, and answers every `db:result` with `verdict` without checking back.
struct FakePeer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakePeer {
    fn start(
        addr: SocketAddr,
        domain: &str,
        cert: Option<CertifiedDomain>,
        verdict: DialbackResult,
    ) -> FakePeer {
        let listener =
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("fake peer: binding {addr}: {e}"));
        listener.set_nonblocking(true).expect("nonblocking");
        let tls = cert.map(|c| {
            let mut r = DomainCertResolver::new();
            r.add(&c).expect("certificate");
            tls::server_config(Arc::new(r), ClientAuth::Request, &[])
        });
        let cfg = Arc::new(S2sConfig {
            local_domains: vec![domain.to_owned()],
            certificate_domains: if tls.is_some() {
                vec![domain.to_owned()]
            } else {
                Vec::new()
            },
            policy: FederationPolicy {
                default: PeerPolicy::webex(),
                ..Default::default()
            },
            dialback_secret: DialbackSecret::generate(&mut rand::rng()),
            stream_id_key: rand::random(),
            cert_verifier: None,
            limits: fedrouter::xml::Limits::default(),
            timeouts: fedrouter::stream::Timeouts::default(),
            stream_management: None,
        });
        let stop = Arc::new(AtomicBool::new(false));
        let st = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            // Bounded: ends when `stop` is set, or after 5 minutes as a backstop.
            let end = Instant::now() + Duration::from_secs(300);
            while !st.load(Ordering::SeqCst) && Instant::now() < end {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (cfg, tls, st) = (Arc::clone(&cfg), tls.clone(), Arc::clone(&st));
                        conns.push(std::thread::spawn(move || {
                            fake_conn(s, cfg, tls, verdict, &st)
                        }));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        FakePeer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn fake_conn(
    sock: TcpStream,
    cfg: Arc<S2sConfig>,
    tls: Option<Arc<rustls::ServerConfig>>,
    verdict: DialbackResult,
    stop: &AtomicBool,
) {
    let _ = sock.set_nonblocking(false);
    let _ = sock.set_read_timeout(Some(Duration::from_millis(20)));
    let _ = sock.set_nodelay(true);
    let mut io = Io::Plain(sock);
    let mut conn = S2sConnection::inbound(cfg, rand::random(), None, Instant::now());
    let mut buf = vec![0u8; 16 * 1024];
    // Bounded: one minute per connection at most.
    let end = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::SeqCst) && Instant::now() < end && !conn.is_closed() {
        match io.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => conn.handle_input(&buf[..n], Instant::now()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
        conn.handle_timeout(Instant::now());
        let mut out = Vec::new();
        conn.poll_transmit(&mut out);
        if !out.is_empty() && io.write_all(&out).is_err() {
            break;
        }
        while let Some(ev) = conn.poll_event() {
            match ev {
                Event::StartTls(TlsRole::Server) => {
                    let Io::Plain(sock) = io else { return };
                    let Some(cfg) = tls.clone() else { return };
                    let Some(tls_io) = tls_accept(sock, cfg) else {
                        return;
                    };
                    io = tls_io;
                    conn.handle_tls_established(
                        io.peer_chain(),
                        Instant::now(),
                        rustls::pki_types::UnixTime::now(),
                    );
                }
                Event::VerifyNeeded { local, remote, .. } => {
                    conn.handle_dialback_verdict(&local, &remote, verdict, Instant::now());
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        conn.poll_transmit(&mut out);
        if !out.is_empty() && io.write_all(&out).is_err() {
            break;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Scripted remote servers that connect back: Prosody-style and pre-RFC 6120 dialback,
// and TLS peers that offer no SASL EXTERNAL
// ---------------------------------------------------------------------------------------

/// Longest wait of a script for one thing the check sends (a backstop: the scripts move on
/// as soon as it arrives).
const SCRIPT_WAIT: Duration = Duration::from_secs(60);

/// A script run by the test as a remote server, on its own thread: it returns what it saw
/// and did, in order.
struct Script {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<String>>>,
}

impl Script {
    /// Listens on `addr` and runs `body` with the listener.
    fn start(
        addr: SocketAddr,
        body: impl FnOnce(TcpListener, &AtomicBool) -> Vec<String> + Send + 'static,
    ) -> Script {
        let listener =
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("script: binding {addr}: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let st = Arc::clone(&stop);
        Script {
            stop,
            thread: Some(std::thread::spawn(move || body(listener, &st))),
        }
    }

    /// Stops the script (it was waiting for nothing more) and returns its log.
    fn log(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("the script panicked")
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The position of the first log entry that starts with `prefix`.
fn entry(log: &[String], prefix: &str) -> Option<usize> {
    log.iter().position(|l| l.starts_with(prefix))
}

/// The first connection to `listener`, waiting until `stop` or [`SCRIPT_WAIT`].
fn accept(listener: &TcpListener, stop: &AtomicBool) -> Option<TcpStream> {
    listener.set_nonblocking(true).expect("nonblocking");
    let end = Instant::now() + SCRIPT_WAIT;
    while !stop.load(Ordering::SeqCst) && Instant::now() < end {
        if let Ok((s, _)) = listener.accept() {
            s.set_nonblocking(false).expect("blocking");
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

/// A hand-written stream over [`Io`]: everything received (since the last
/// [`Raw::forget`]) as text.
struct Raw {
    io: Io,
    text: String,
}

impl Raw {
    fn new(sock: TcpStream) -> Raw {
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("read timeout");
        let _ = sock.set_nodelay(true);
        Raw {
            io: Io::Plain(sock),
            text: String::new(),
        }
    }

    fn send(&mut self, xml: &str) {
        // The check may have gone: its report says why.
        let _ = self.io.write_all(xml.as_bytes());
    }

    /// Reads until `pred(received)` holds; false when the connection ended, or nothing
    /// more came once `stop` was set or [`SCRIPT_WAIT`] passed (what had already arrived is
    /// read first: the check may have sent it just before it ended).
    fn read_until(&mut self, stop: &AtomicBool, pred: impl Fn(&str) -> bool) -> bool {
        let end = Instant::now() + SCRIPT_WAIT;
        let mut buf = [0u8; 8192];
        while !pred(&self.text) {
            match self.io.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => self.text.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if stop.load(Ordering::SeqCst) || Instant::now() >= end {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        true
    }

    /// Reads until a whole stream header has arrived.
    fn read_header(&mut self, stop: &AtomicBool) -> bool {
        self.read_until(stop, |t| {
            t.find("<stream:stream")
                .is_some_and(|i| t[i..].contains('>'))
        })
    }

    /// Forgets what was received (a stream restart).
    fn forget(&mut self) {
        self.text.clear();
    }
}

/// The value of attribute `name` in the first start tag of `text` that begins with `prefix`.
fn attr_of(text: &str, prefix: &str, name: &str) -> Option<String> {
    let start = text.find(prefix)?;
    let tag = &text[start..start + text[start..].find('>')?];
    for q in ['\'', '"'] {
        let pat = format!(" {name}={q}");
        if let Some(i) = tag.find(&pat) {
            let rest = &tag[i + pat.len()..];
            return rest.find(q).map(|j| rest[..j].to_owned());
        }
    }
    None
}

/// A stream of a scripted server driven by the library's sans-IO core (as `fedrouter
/// serve` drives its streams), over a socket that blocks at most 5 ms per read.
struct Driven {
    sock: TcpStream,
    conn: S2sConnection,
    /// Everything received.
    received: String,
    open: bool,
}

impl Driven {
    fn new(sock: TcpStream, conn: S2sConnection) -> Driven {
        sock.set_read_timeout(Some(Duration::from_millis(5)))
            .expect("read timeout");
        let _ = sock.set_nodelay(true);
        let mut d = Driven {
            sock,
            conn,
            received: String::new(),
            open: true,
        };
        d.transmit();
        d
    }

    /// Reads what came, feeds it and the time to the core, sends its answer; its events.
    fn turn(&mut self) -> Vec<Event> {
        let mut buf = [0u8; 8192];
        let now = Instant::now();
        if self.open {
            match self.sock.read(&mut buf) {
                Ok(0) => self.open = false,
                Ok(n) => {
                    self.received.push_str(&String::from_utf8_lossy(&buf[..n]));
                    self.conn.handle_input(&buf[..n], now);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => self.open = false,
            }
        }
        self.conn.handle_timeout(now);
        self.transmit();
        std::iter::from_fn(|| self.conn.poll_event()).collect()
    }

    fn transmit(&mut self) {
        let mut out = Vec::new();
        self.conn.poll_transmit(&mut out);
        if !out.is_empty() && self.sock.write_all(&out).is_err() {
            self.open = false;
        }
    }
}

/// The receiving side's configuration of a scripted server for `domain`: plain TCP,
/// dialback (Google-style), with `secret`.
fn scripted_config(domain: &str, secret: DialbackSecret) -> Arc<S2sConfig> {
    Arc::new(S2sConfig {
        local_domains: vec![domain.to_owned()],
        certificate_domains: Vec::new(),
        policy: FederationPolicy {
            default: PeerPolicy::google(),
            ..Default::default()
        },
        dialback_secret: secret,
        stream_id_key: rand::random(),
        cert_verifier: None,
        limits: fedrouter::xml::Limits::default(),
        timeouts: fedrouter::stream::Timeouts::default(),
        stream_management: None,
    })
}

/// A remote server for `domain` that verifies like Prosody (`mod_dialback`): on the
/// check's `db:result` it opens its verification connection to `authoritative` (our
/// domain's server), authenticates that connection first with its own `db:result`
/// (XEP-0220 §2.1.2), waits for it to be validated, and only then sends `db:verify`
/// (§2.1.3); it answers the check's `db:result` with what that `db:verify` got. As
/// authoritative server for its own domain it answers `db:verify` on the check's stream
/// (the library's inbound core does).
///
/// `split_secret`: its verification connection's key is made with another secret than
/// its authoritative side checks keys with (instances that do not share a dialback
/// secret), so its own `db:result` cannot be validated; it then answers the check
/// `type='error'` (`remote-connection-failed`).
fn prosody_like(
    domain: &'static str,
    authoritative: SocketAddr,
    split_secret: bool,
) -> impl FnOnce(TcpListener, &AtomicBool) -> Vec<String> + Send + 'static {
    move |listener, stop| {
        let mut log = Vec::new();
        let secret = DialbackSecret::generate(&mut rand::rng());
        let inbound_cfg = scripted_config(domain, secret.clone());
        let outbound_cfg = if split_secret {
            scripted_config(domain, DialbackSecret::generate(&mut rand::rng()))
        } else {
            scripted_config(domain, secret)
        };
        let Some(sock) = accept(&listener, stop) else {
            log.push("no connection from the check".to_owned());
            return log;
        };
        let conn = S2sConnection::inbound(inbound_cfg, 1, None, Instant::now());
        let mut inbound = Driven::new(sock, conn);
        // (our local, the check's domain, the check's stream id, its key)
        let mut pending: Option<(String, String, String, String)> = None;
        let mut verify: Option<Driven> = None;
        let end = Instant::now() + SCRIPT_WAIT;
        while !stop.load(Ordering::SeqCst)
            && Instant::now() < end
            && inbound.open
            && !inbound.conn.is_closed()
        {
            for ev in inbound.turn() {
                if let Event::VerifyNeeded {
                    local,
                    remote,
                    stream_id,
                    key,
                } = ev
                {
                    log.push(format!("db:result from {remote}"));
                    let sock = TcpStream::connect_timeout(&authoritative, Duration::from_secs(5))
                        .expect("connect to the authoritative server");
                    log.push("verification connection opened".to_owned());
                    let conn = S2sConnection::outbound(
                        Arc::clone(&outbound_cfg),
                        &local,
                        &remote,
                        false,
                        Instant::now(),
                    );
                    verify = Some(Driven::new(sock, conn));
                    pending = Some((local, remote, stream_id, key));
                }
            }
            if entry(&log, "asked by the check").is_none()
                && inbound.received.contains("<db:verify")
            {
                log.push("asked by the check: db:verify".to_owned());
            }
            let Some(v) = &mut verify else { continue };
            for ev in v.turn() {
                let Some((local, remote, stream_id, key)) = &pending else {
                    continue;
                };
                match ev {
                    Event::Authenticated { .. } => {
                        log.push("own db:result: type='valid'".to_owned());
                        let _ = v.conn.send_db_verify(local, stream_id, key, Instant::now());
                        v.transmit();
                        log.push("db:verify sent".to_owned());
                    }
                    Event::AuthFailed { result, .. } => {
                        log.push(format!("own db:result: type='{}'", result.type_str()));
                        let r =
                            DialbackResult::Error(DialbackErrorCondition::RemoteConnectionFailed);
                        inbound
                            .conn
                            .handle_dialback_verdict(local, remote, r, Instant::now());
                        log.push("answered the check: type='error'".to_owned());
                    }
                    Event::VerifyAnswered { result, .. } => {
                        log.push(format!("db:verify answered: type='{}'", result.type_str()));
                        inbound
                            .conn
                            .handle_dialback_verdict(local, remote, result, Instant::now());
                        log.push(format!("answered the check: type='{}'", result.type_str()));
                    }
                    _ => {}
                }
            }
            inbound.transmit();
        }
        log
    }
}

/// A remote server for `domain` that offers dialback and, on our `db:result`, either
/// refuses to authenticate us the way Prosody does with `s2s_secure_auth` when it does not
/// trust our certificate (`refuse`: it closes the stream with `<not-authorized/>` and its
/// reason, RFC 6120 §4.9.3.12), or never answers (until the check closes the stream).
fn dialback_peer(
    domain: &'static str,
    refuse: bool,
) -> impl FnOnce(TcpListener, &AtomicBool) -> Vec<String> + Send + 'static {
    move |listener, stop| {
        let mut log = Vec::new();
        let Some(sock) = accept(&listener, stop) else {
            log.push("no connection from the check".to_owned());
            return log;
        };
        let mut check = Raw::new(sock);
        if !check.read_header(stop) {
            return log;
        }
        check.send(&format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
             xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
             from='{domain}' to='a.test' id='{domain}-1' version='1.0'><stream:features>\
             <dialback xmlns='urn:xmpp:features:dialback'/></stream:features>"
        ));
        if !check.read_until(stop, |t| t.contains("</db:result>")) {
            return log;
        }
        log.push("db:result".to_owned());
        if refuse {
            check.send(
                "<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
                 <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>Your server's certificate \
                 is not trusted</text></stream:error></stream:stream>",
            );
        } else if check.read_until(stop, |t| t.contains("</stream:stream>")) {
            log.push("closed by the check".to_owned());
            check.send("</stream:stream>");
        }
        log
    }
}

/// The stream header of a pre-RFC 3920 server: no version, no `to`, no `from`.
fn legacy_header(id: Option<&str>) -> String {
    let id = id.map(|i| format!(" id='{i}'")).unwrap_or_default();
    format!(
        "<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' \
         xmlns='jabber:server' xmlns:db='jabber:server:dialback'{id}>"
    )
}

/// A remote server for `domain` that speaks dialback as before RFC 3920 (jabberd 1.4
/// style): version-less headers without `to` or `from`; on the check's `db:result` it
/// connects to `authoritative` and sends its header and `<db:verify>` at once, without
/// waiting for our header (XEP-0220 §2.1.3), then answers the check's `db:result` with
/// the answer it got (`invalid` when none). `verify_to`: a `to` for its verification
/// connection's header (none, as old servers send it, when `None`).
fn legacy_peer(
    domain: &'static str,
    authoritative: SocketAddr,
    verify_to: Option<&'static str>,
) -> impl FnOnce(TcpListener, &AtomicBool) -> Vec<String> + Send + 'static {
    move |listener, stop| {
        let mut log = Vec::new();
        let Some(sock) = accept(&listener, stop) else {
            log.push("no connection from the check".to_owned());
            return log;
        };
        let mut check = Raw::new(sock);
        if !check.read_header(stop) {
            log.push(format!("no stream header from the check: {}", check.text));
            return log;
        }
        check.send(&legacy_header(Some("legacy-1")));
        if !check.read_until(stop, |t| t.contains("</db:result>")) {
            log.push(format!("no db:result from the check: {}", check.text));
            return log;
        }
        let from = attr_of(&check.text, "<db:result", "from").unwrap_or_default();
        let start = check.text.find("<db:result").expect("db:result");
        let body = &check.text[start..];
        let key = body[body.find('>').expect("tag end") + 1..body.find("</db:result>").unwrap()]
            .to_owned();
        log.push(format!("db:result from {from}"));
        let sock = TcpStream::connect_timeout(&authoritative, Duration::from_secs(5))
            .expect("connect to the authoritative server");
        let mut verify = Raw::new(sock);
        let mut header = legacy_header(None);
        if let Some(to) = verify_to {
            header = header.replace("<stream:stream ", &format!("<stream:stream to='{to}' "));
        }
        verify.send(&format!(
            "{header}<db:verify from='{domain}' to='{from}' id='legacy-1'>{key}</db:verify>"
        ));
        log.push("header and db:verify sent at once".to_owned());
        let answered = verify.read_until(stop, |t| {
            attr_of(t, "<db:verify", "type").is_some() || t.contains("</stream:stream>")
        });
        let answer = attr_of(&verify.text, "<db:verify", "type");
        log.push(format!(
            "db:verify answered: {}",
            match &answer {
                Some(t) => format!("type='{t}'"),
                None if answered => format!("closed: {}", verify.text),
                None => format!("nothing: {}", verify.text),
            }
        ));
        let verdict = if answer.as_deref() == Some("valid") {
            "valid"
        } else {
            "invalid"
        };
        check.send(&format!(
            "<db:result from='{domain}' to='{from}' type='{verdict}'/>"
        ));
        log.push(format!("answered the check: type='{verdict}'"));
        verify.send("</stream:stream>");
        if check.read_until(stop, |t| t.contains("</stream:stream>")) {
            check.send("</stream:stream>");
        }
        log
    }
}

/// A remote server for `domain` with STARTTLS (certificate `cert`; a client certificate
/// requested or not) whose features after TLS are `sasl` (SASL mechanisms, or none) and
/// dialback; it answers the check's `db:result` `valid` without connecting back, and a
/// SASL `<auth/>` with `<failure><not-authorized/></failure>` (RFC 6120 §6.5.10).
fn tls_peer(
    domain: &'static str,
    cert: CertifiedDomain,
    request_client_cert: bool,
    sasl: &'static str,
) -> impl FnOnce(TcpListener, &AtomicBool) -> Vec<String> + Send + 'static {
    move |listener, stop| {
        let mut log = Vec::new();
        let mut resolver = DomainCertResolver::new();
        resolver.add(&cert).expect("certificate");
        let auth = if request_client_cert {
            ClientAuth::Request
        } else {
            ClientAuth::None
        };
        let tls_cfg = tls::server_config(Arc::new(resolver), auth, &[]);
        let header = format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
             xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
             from='{domain}' to='a.test' id='{domain}-1' version='1.0'>"
        );
        let Some(sock) = accept(&listener, stop) else {
            log.push("no connection from the check".to_owned());
            return log;
        };
        let mut check = Raw::new(sock);
        if !check.read_header(stop) {
            return log;
        }
        check.send(&format!(
            "{header}<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\
             <dialback xmlns='urn:xmpp:features:dialback'/></stream:features>"
        ));
        if !check.read_until(stop, |t| t.contains("<starttls")) {
            return log;
        }
        check.send("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        let Io::Plain(sock) = check.io else {
            unreachable!()
        };
        let Some(io) = tls_accept(sock, tls_cfg) else {
            log.push("TLS handshake failed".to_owned());
            return log;
        };
        log.push(format!(
            "client certificate: {}",
            if io.peer_chain().is_empty() {
                "none"
            } else {
                "received"
            }
        ));
        let mut check = Raw {
            io,
            text: String::new(),
        };
        if !check.read_header(stop) {
            return log;
        }
        check.forget();
        check.send(&format!(
            "{header}<stream:features>{sasl}<dialback xmlns='urn:xmpp:features:dialback'/>\
             </stream:features>"
        ));
        check.read_until(stop, |t| {
            t.contains("</db:result>") || t.contains("<auth") || t.contains("</stream:stream>")
        });
        if check.text.contains("<auth") {
            log.push("SASL auth attempted".to_owned());
            check.send(
                "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>",
            );
        }
        if check.text.contains("</db:result>") {
            log.push("db:result".to_owned());
            check.send(&format!(
                "<db:result from='{domain}' to='a.test' type='valid'/>"
            ));
        }
        if check.read_until(stop, |t| t.contains("</stream:stream>")) {
            check.send("</stream:stream>");
        }
        log
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// A good remote (a `fedrouter serve` B with a CA certificate, STARTTLS, dialback): every
/// step passes, first with this check answering B's dialback verification on A's free
/// listen address, then with A's running server answering it.
#[test]
fn good_remote_passes_every_step() {
    const NET: u8 = 240;
    let mut records = xmpp_server("a.test", ip(NET, 2));
    records.extend(xmpp_server("b.test", ip(NET, 3)));
    let _dns = zone(NET, records);
    let ca = TestCa::new("check test CA").expect("CA");
    let b_leaf = ca.issue("b.test").expect("leaf");
    let b_files = tls_files(&ca, &b_leaf, "b.test");
    // B: encrypts, does not verify peers (so A authenticates by dialback), retries fast.
    let b_extra = format!(
        "[tls]\ntrust = [\"ca.pem\"]\n{}\n[s2s]\nbackoff_initial = \"10ms\"\nbackoff_max = \"20ms\"\n\n\
         [federation.default]\ntls = \"optional\"\nauth = \"any\"\nverify_certificates = false\n",
        certificate_entry("b.test")
    );
    let _b = Fedrouter::start_with(
        "b.test",
        &config(NET, ip(NET, 3), &["b.test"], 1, &b_extra),
        &files_ref(&b_files),
    );
    // A: default policy (TLS optional, certificates verified against the CA).
    let a_extra = format!("[tls]\ntrust = [\"ca.pem\"]\n{}", secret(0xa1));
    let a_toml = config(NET, ip(NET, 2), &["a.test"], 1, &a_extra);
    let a_files = vec![("ca.pem".to_owned(), ca.ca_cert_pem())];
    let site = Site::new("a.test", &a_toml, &a_files);

    let out = site.check(&["b.test"]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.report["ok"], true, "{out}");
    let s = out.expect("b.test", "srv", "pass");
    assert!(
        Outcome::text(s, "detail").contains("xmpp.b.test:5269 (STARTTLS)"),
        "{out}"
    );
    let s = out.expect("b.test", "address", "pass");
    assert_eq!(s["target"], "xmpp.b.test");
    assert!(Outcome::text(s, "detail").contains("127.0.240.3"), "{out}");
    let s = out.expect("b.test", "tcp", "pass");
    assert_eq!(s["target"], "127.0.240.3:5269");
    assert!(s["millis"].is_number(), "{out}");
    let s = out.expect("b.test", "stream", "pass");
    let d = Outcome::text(s, "detail");
    assert!(
        d.contains("from='b.test'") && d.contains("starttls") && d.contains("dialback"),
        "{out}"
    );
    out.expect("b.test", "tls", "pass");
    let s = out.expect("b.test", "certificate", "pass");
    assert!(Outcome::text(s, "detail").contains("2100-01-01"), "{out}");
    let s = out.expect("b.test", "dialback", "pass");
    let d = Outcome::text(s, "detail");
    assert!(
        // b.test verifies on a connection of its own: since XEP-0288, one that sends
        // only its db:verify (the check's stream asked for bidi).
        d.contains("this check stood in for a.test's server")
            && d.contains("b.test asked about a.test: valid"),
        "{out}"
    );
    // A's certificate is the generated, self-signed one and B does not verify
    // certificates, so B offers no SASL EXTERNAL: a warning that says both reasons.
    let s = out.expect("b.test", "sasl-external", "warn");
    let d = Outcome::text(s, "detail");
    assert!(
        d.contains("either it does not implement SASL EXTERNAL")
            && d.contains("a.test's certificate is self-signed")
            && d.contains("falling back to dialback"),
        "{out}"
    );
    assert!(
        out.report["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["name"] != "sasl-external")
            .all(|s| s["fix"].is_null()),
        "{out}"
    );

    // The same with A running: its server answers the verification.
    let a = Fedrouter::start_with("a.test", &a_toml, &files_ref(&a_files));
    let out = run_check(a.dir(), &a.config_path(), &["b.test"]);
    assert_eq!(out.code, 0, "{out}");
    let s = out.expect("b.test", "dialback", "pass");
    assert!(Outcome::text(s, "detail").contains("in use"), "{out}");
}

/// No SRV record: the fallback to the domain's A record on 5269 works (a warning with
/// the SRV fix); with no A record either, the address step fails with "publish an SRV
/// record"; an SRV '.' fails.
#[test]
fn no_srv_record() {
    const NET: u8 = 241;
    let mut records = xmpp_server("a.test", ip(NET, 2));
    records.push(a("c.test", ip(NET, 3)));
    records.push(srv("_xmpp-server", "e.test", ".", 0));
    let _dns = zone(NET, records);
    let _c = Fedrouter::start(
        "c.test",
        &config(NET, ip(NET, 3), &["c.test"], 1, GOOGLE_STYLE),
    );
    let site = Site::new(
        "a.test",
        &config(NET, ip(NET, 2), &["a.test"], 1, GOOGLE_STYLE),
        &[],
    );

    let out = site.check(&["c.test"]);
    assert_eq!(out.code, 0, "warnings only: {out}");
    let s = out.expect("c.test", "srv", "warn");
    let fix = Outcome::text(s, "fix");
    assert!(
        fix.contains("_xmpp-server._tcp") && fix.contains("SRV"),
        "{out}"
    );
    let s = out.expect("c.test", "tcp", "pass");
    assert_eq!(s["target"], "127.0.241.3:5269");
    out.expect("c.test", "stream", "pass");
    out.expect("c.test", "tls", "skip");
    out.expect("c.test", "dialback", "pass");

    let out = site.check(&["d.test"]);
    assert_eq!(out.code, 1, "{out}");
    assert_eq!(out.report["ok"], false);
    out.expect("d.test", "srv", "warn");
    let s = out.expect("d.test", "address", "fail");
    let fix = Outcome::text(s, "fix");
    assert!(
        fix.contains("publish an _xmpp-server._tcp SRV record"),
        "{out}"
    );
    out.no_step("d.test", "tcp");

    let out = site.check(&["e.test"]);
    assert_eq!(out.code, 1, "{out}");
    let s = out.expect("e.test", "srv", "fail");
    assert!(Outcome::text(s, "detail").contains("'.'"), "{out}");
    assert!(s["fix"].is_string(), "{out}");
    out.no_step("e.test", "address");
}

/// An SRV record to a port where nothing listens: the TCP step fails and the fix names the
/// port.
#[test]
fn srv_to_a_closed_port() {
    const NET: u8 = 242;
    let mut records = xmpp_server("a.test", ip(NET, 2));
    records.push(srv("_xmpp-server", "b.test", "xmpp.b.test", 5999));
    records.push(a("xmpp.b.test", ip(NET, 3)));
    let _dns = zone(NET, records);
    let site = Site::new(
        "a.test",
        &config(NET, ip(NET, 2), &["a.test"], 1, GOOGLE_STYLE),
        &[],
    );
    let out = site.check(&["b.test"]);
    assert_eq!(out.code, 1, "{out}");
    out.expect("b.test", "srv", "pass");
    out.expect("b.test", "address", "pass");
    let s = out.expect("b.test", "tcp", "fail");
    assert_eq!(s["target"], "127.0.242.3:5999");
    assert!(Outcome::text(s, "detail").contains("refused"), "{out}");
    let fix = Outcome::text(s, "fix");
    assert!(
        fix.contains("port 5999") && fix.contains("xmpp.b.test"),
        "{out}"
    );
    out.no_step("b.test", "stream");
    out.no_step("b.test", "dialback");
}

/// A peer whose STARTTLS certificate is for another name: the TLS handshake works, the
/// certificate step fails (the policy verifies certificates) with the fix; dialback still
/// runs. With `verify_certificates = false` for the domain it is only a warning.
#[test]
fn certificate_for_the_wrong_name() {
    const NET: u8 = 243;
    let mut records = xmpp_server("a.test", ip(NET, 2));
    records.extend(xmpp_server("b.test", ip(NET, 3)));
    let _dns = zone(NET, records);
    let ca = TestCa::new("check test CA").expect("CA");
    let wrong = ca
        .issue("wrong.test")
        .expect("leaf")
        .assemble(CertifiedDomain::new)
        .expect("leaf");
    let _peer = FakePeer::start(
        SocketAddr::new(ip(NET, 3).into(), 5269),
        "b.test",
        Some(wrong),
        DialbackResult::Valid,
    );
    let files = vec![("ca.pem".to_owned(), ca.ca_cert_pem())];
    let site = Site::new(
        "a.test",
        &config(
            NET,
            ip(NET, 2),
            &["a.test"],
            1,
            "[tls]\ntrust = [\"ca.pem\"]\n",
        ),
        &files,
    );
    let out = site.check(&["b.test"]);
    assert_eq!(out.code, 1, "{out}");
    out.expect("b.test", "stream", "pass");
    out.expect("b.test", "tls", "pass");
    let s = out.expect("b.test", "certificate", "fail");
    let detail = Outcome::text(s, "detail");
    assert!(
        detail.contains("not valid for b.test") && detail.contains("wrong.test"),
        "{out}"
    );
    let fix = Outcome::text(s, "fix");
    assert!(
        fix.contains("wrong.test") && fix.contains("subjectAltName lists b.test"),
        "{out}"
    );
    out.expect("b.test", "dialback", "pass");

    let lenient = Site::new(
        "a.test",
        &config(
            NET,
            ip(NET, 2),
            &["a.test"],
            1,
            "[tls]\ntrust = [\"ca.pem\"]\n\n[federation.domains.\"b.test\"]\nverify_certificates = false\n",
        ),
        &files,
    );
    let out = lenient.check(&["b.test"]);
    assert_eq!(out.code, 0, "{out}");
    let s = out.expect("b.test", "certificate", "warn");
    assert!(Outcome::text(s, "detail").contains("tolerated"), "{out}");
}

/// Dialback answered `invalid`: by a scripted peer, and for real when our domain's DNS
/// points at another server (with another dialback secret) that the peer asks.
#[test]
fn dialback_answered_invalid() {
    const NET: u8 = 244;
    let mut records = xmpp_server("a.test", ip(NET, 2));
    records.extend(xmpp_server("b.test", ip(NET, 3)));
    records.extend(xmpp_server("a2.test", ip(NET, 4)));
    records.extend(xmpp_server("c.test", ip(NET, 5)));
    let _dns = zone(NET, records);
    let _peer = FakePeer::start(
        SocketAddr::new(ip(NET, 3).into(), 5269),
        "b.test",
        None,
        DialbackResult::Invalid,
    );
    let extra = format!("{GOOGLE_STYLE}{}", secret(0xa2));
    let site = Site::new(
        "a.test",
        &config(NET, ip(NET, 2), &["a.test", "a2.test"], 1, &extra),
        &[],
    );
    let out = site.check(&["b.test"]);
    assert_eq!(out.code, 1, "{out}");
    out.expect("b.test", "stream", "pass");
    let s = out.expect("b.test", "dialback", "fail");
    assert!(
        Outcome::text(s, "detail").contains("type='invalid'"),
        "{out}"
    );
    let fix = Outcome::text(s, "fix");
    assert!(
        fix.contains("another server answers for a.test's dialback")
            && fix.contains("s2s.dialback_secret"),
        "{out}"
    );

    // a2.test is "already hosted elsewhere": its DNS names another server (with another
    // secret), which c.test asks and which says invalid.
    let _other = Fedrouter::start(
        "a2.test",
        &config(
            NET,
            ip(NET, 4),
            &["a2.test"],
            1,
            &format!("{GOOGLE_STYLE}{}", secret(0xbb)),
        ),
    );
    let _c = Fedrouter::start(
        "c.test",
        &config(NET, ip(NET, 5), &["c.test"], 1, GOOGLE_STYLE),
    );
    let out = site.check(&["c.test", "--from", "a2.test"]);
    assert_eq!(out.code, 1, "{out}");
    let s = out.expect("c.test", "dialback", "fail");
    let detail = Outcome::text(s, "detail");
    assert!(
        detail.contains("type='invalid'")
            && detail.contains("no verification request reached this check"),
        "{out}"
    );
    let fix = Outcome::text(s, "fix");
    assert!(
        fix.contains("another server answers for a2.test's dialback")
            && fix.contains("127.0.244.4"),
        "{out}"
    );
}

/// Our own domains against the running server: SRV present and pointing at our listener,
/// the listener answers, serves the configured certificate and confirms our dialback keys;
/// a certificate expiring within 30 days fails with "renew"; a configuration whose secret
/// differs from the running server's fails the authoritative step.
#[test]
fn own_domains() {
    const NET: u8 = 245;
    let mut records = xmpp_server("a.test", ip(NET, 2));
    // a.test also publishes its direct TLS listener (XEP-0368).
    records.push(srv("_xmpps-server", "a.test", "xmpp.a.test", 5270));
    records.extend(xmpp_server("x.test", ip(NET, 2)));
    let _dns = zone(NET, records);
    let ca = TestCa::new("check test CA").expect("CA");
    let a_leaf = ca.issue("a.test").expect("leaf");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let soon = ca
        .issue_with(
            "x.test",
            &LeafOptions {
                not_after: UnixTime::since_unix_epoch(now + Duration::from_secs(10 * 86_400)),
                ..LeafOptions::default()
            },
        )
        .expect("leaf");
    let mut files = tls_files(&ca, &a_leaf, "a.test");
    files.extend(tls_files(&ca, &soon, "x.test").into_iter().skip(1));
    let extra = format!(
        "[tls]\ntrust = [\"ca.pem\"]\n{}{}{}",
        certificate_entry("a.test"),
        certificate_entry("x.test"),
        secret(0xa5)
    );
    let toml = config(NET, ip(NET, 2), &["a.test", "x.test"], 1, &extra);
    let a = Fedrouter::start_with("a.test", &toml, &files_ref(&files));

    let out = run_check(a.dir(), &a.config_path(), &[]);
    assert_eq!(out.code, 1, "x.test's certificate expires soon: {out}");
    for name in [
        "certificate",
        "srv",
        "address",
        "tcp",
        "stream",
        "tls",
        "authoritative",
    ] {
        for s in out.steps("a.test", name) {
            assert_eq!(s["verdict"], "pass", "a.test {name}: {out}");
        }
    }
    // Both listeners, direct TLS first (XEP-0368 §3: first among equal priorities).
    let targets = |name: &str| -> Vec<String> {
        out.steps("a.test", name)
            .iter()
            .map(|s| Outcome::text(s, "target"))
            .collect()
    };
    let both = ["127.0.245.2:5270", "127.0.245.2:5269"];
    for name in ["tcp", "stream", "tls", "authoritative"] {
        assert_eq!(targets(name), both, "a.test {name}: {out}");
    }
    let streams = out.steps("a.test", "stream");
    assert!(
        Outcome::text(streams[0], "detail").contains("listen.s2s_tls")
            && Outcome::text(streams[1], "detail").contains("is this configuration's listen.s2s"),
        "{out}"
    );
    let tls = out.steps("a.test", "tls");
    assert!(
        Outcome::text(tls[0], "detail").contains("direct TLS")
            && Outcome::text(tls[0], "detail").contains("ALPN xmpp-server"),
        "{out}"
    );
    let certs = out.steps("a.test", "certificate");
    assert_eq!(
        certs.len(),
        3,
        "configured, and served by each listener: {out}"
    );
    for c in &certs[1..] {
        assert!(Outcome::text(c, "detail").contains("serves the configured certificate"));
    }
    let s = out.expect("a.test", "authoritative", "pass");
    assert!(Outcome::text(s, "detail").contains("type='valid'"), "{out}");
    let s = out.expect("x.test", "certificate", "fail");
    assert!(
        Outcome::text(s, "detail").contains("in 9 days")
            || Outcome::text(s, "detail").contains("in 10 days"),
        "{out}"
    );
    assert!(Outcome::text(s, "fix").contains("renew"), "{out}");
    out.expect("x.test", "authoritative", "pass");

    // Only a.test: everything passes.
    let out = run_check(a.dir(), &a.config_path(), &["a.test"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(out.steps("x.test", "srv").is_empty());

    // A copy of the configuration with another secret: the running server does not
    // confirm its keys.
    let other = config(
        NET,
        ip(NET, 2),
        &["a.test", "x.test"],
        1,
        &format!(
            "[tls]\ntrust = [\"ca.pem\"]\n{}{}{}",
            certificate_entry("a.test"),
            certificate_entry("x.test"),
            secret(0x5a)
        ),
    );
    let site = Site::new("a.test-other", &other, &files);
    let out = site.check(&["a.test"]);
    assert_eq!(out.code, 1, "{out}");
    let s = out.expect("a.test", "authoritative", "fail");
    assert!(
        Outcome::text(s, "detail").contains("type='invalid'"),
        "{out}"
    );
    assert!(
        Outcome::text(s, "fix").contains("another server answers for a.test's dialback"),
        "{out}"
    );
}

/// `[s2s]` with the dialback secret `byte` and 10-minute negotiation and verification
/// timeouts: only a check that never waits for a deadline finishes within
/// [`CHECK_TIMEOUT`].
fn slow_deadlines(byte: u8) -> String {
    format!(
        "\n[s2s]\ndialback_secret = \"{}\"\nnegotiation_timeout = \"10m\"\nverify_timeout = \"10m\"\n",
        hex::encode([byte; 32])
    )
}

/// `fedrouter check` with no server running, against a peer that verifies like Prosody:
/// its verification connection to our (stood-in) server first authenticates itself with
/// its own `db:result`, waits for the answer, and only then sends `db:verify`. The check
/// verifies that key by the XEP-0220 route (a `db:verify` to the peer over its own
/// stream), answers it, answers the peer's `db:verify`, and the dialback step passes;
/// with 10-minute timeouts configured, no deadline was waited for. A peer whose own key
/// cannot be validated (instances without a shared secret) fails the step with that
/// explanation, not "fix your DNS, start the server".
#[test]
fn prosody_style_verification_without_a_running_server() {
    const NET: u8 = 246;
    let mut records = xmpp_server("a.test", ip(NET, 2));
    records.extend(xmpp_server("b.test", ip(NET, 3)));
    records.extend(xmpp_server("c.test", ip(NET, 4)));
    let _dns = zone(NET, records);
    let ours = SocketAddr::new(ip(NET, 2).into(), 5269);
    let extra = format!("{GOOGLE_STYLE}{}", slow_deadlines(0xa6));
    let site = Site::new(
        "a.test",
        &config(NET, ip(NET, 2), &["a.test"], 1, &extra),
        &[],
    );

    let peer = Script::start(
        SocketAddr::new(ip(NET, 3).into(), 5269),
        prosody_like("b.test", ours, false),
    );
    let out = site.check(&["b.test"]);
    let log = peer.log();
    assert_eq!(out.code, 0, "{out}\npeer: {log:#?}");
    let s = out.expect("b.test", "dialback", "pass");
    let d = Outcome::text(s, "detail");
    assert!(
        d.contains("this check stood in for a.test's server")
            && d.contains("from='b.test'")
            && d.contains("b.test first authenticated that connection with its own db:result")
            && d.contains("verified that key with b.test's authoritative server")
            && d.contains("answered type='valid'")
            && d.contains("b.test asked about a.test: valid"),
        "{out}"
    );
    // The peer's side of it, in order: the check asked the peer (as authoritative
    // server) about the peer's key before validating it; the peer sent db:verify only
    // once its own db:result was valid, and got `valid`.
    let at = |p: &str| entry(&log, p).unwrap_or_else(|| panic!("no {p:?} in {log:#?}"));
    assert!(at("db:result from a.test") < at("verification connection opened"));
    assert!(at("verification connection opened") < at("asked by the check: db:verify"));
    assert!(at("asked by the check: db:verify") < at("own db:result: type='valid'"));
    assert!(at("own db:result: type='valid'") < at("db:verify sent"));
    assert!(at("db:verify sent") < at("db:verify answered: type='valid'"));
    assert!(at("db:verify answered: type='valid'") < at("answered the check: type='valid'"));

    // Its own key is not confirmed by its authoritative side: it never asks about ours.
    let peer = Script::start(
        SocketAddr::new(ip(NET, 4).into(), 5269),
        prosody_like("c.test", ours, true),
    );
    let out = site.check(&["c.test"]);
    let log = peer.log();
    assert_eq!(out.code, 1, "{out}\npeer: {log:#?}");
    assert!(
        entry(&log, "own db:result: type='invalid'").is_some(),
        "{log:#?}"
    );
    assert!(entry(&log, "db:verify sent").is_none(), "{log:#?}");
    let s = out.expect("c.test", "dialback", "fail");
    let d = Outcome::text(s, "detail");
    assert!(
        d.contains("type='error' (remote-connection-failed)")
            && d.contains("c.test first authenticated that connection with its own db:result")
            && d.contains("answered type='invalid'"),
        "{out}"
    );
    let fix = Outcome::text(s, "fix");
    assert!(
        fix.contains("c.test's dialback is broken on its side")
            && !fix.contains("start `fedrouter serve`")
            && !fix.contains("SRV/A records"),
        "{out}"
    );
}

/// `fedrouter check` with no server running, against a pre-RFC 3920 dialback server:
/// version-less stream headers without `to` or `from`, and on the verification connection
/// its header and `db:verify` at once. The stand-in (the library's inbound core, as in
/// `fedrouter serve`) answers it and the dialback step passes, fast (10-minute timeouts).
/// A verification connection the stand-in refuses (its header names a domain we do not
/// host) fails the step with what happened and why, not with DNS advice.
#[test]
fn legacy_dialback_server_without_a_running_server() {
    const NET: u8 = 247;
    let mut records = xmpp_server("a.test", ip(NET, 2));
    records.extend(xmpp_server("b.test", ip(NET, 3)));
    records.extend(xmpp_server("c.test", ip(NET, 4)));
    let _dns = zone(NET, records);
    let ours = SocketAddr::new(ip(NET, 2).into(), 5269);
    let extra = format!("{GOOGLE_STYLE}{}", slow_deadlines(0xa7));
    let site = Site::new(
        "a.test",
        &config(NET, ip(NET, 2), &["a.test"], 1, &extra),
        &[],
    );

    let peer = Script::start(
        SocketAddr::new(ip(NET, 3).into(), 5269),
        legacy_peer("b.test", ours, None),
    );
    let out = site.check(&["b.test"]);
    let log = peer.log();
    assert_eq!(out.code, 0, "{out}\npeer: {log:#?}");
    let s = out.expect("b.test", "stream", "pass");
    assert!(
        Outcome::text(s, "detail").contains("no version: pre-RFC 3920 server"),
        "{out}"
    );
    let d = Outcome::text(out.expect("b.test", "dialback", "pass"), "detail");
    assert!(
        d.contains("stream header (no to, no from, no version: a pre-RFC 3920 server)")
            && d.contains("b.test asked about a.test: valid"),
        "{out}"
    );
    let at = |p: &str| entry(&log, p).unwrap_or_else(|| panic!("no {p:?} in {log:#?}"));
    assert!(at("db:result from a.test") < at("header and db:verify sent at once"));
    assert!(at("header and db:verify sent at once") < at("db:verify answered: type='valid'"));
    assert!(at("db:verify answered: type='valid'") < at("answered the check: type='valid'"));

    let peer = Script::start(
        SocketAddr::new(ip(NET, 4).into(), 5269),
        legacy_peer("c.test", ours, Some("elsewhere.test")),
    );
    let out = site.check(&["c.test"]);
    let log = peer.log();
    assert_eq!(out.code, 1, "{out}\npeer: {log:#?}");
    let s = out.expect("c.test", "dialback", "fail");
    let d = Outcome::text(s, "detail");
    assert!(
        d.contains("c.test answered type='invalid'")
            && d.contains("stream header to='elsewhere.test' (no from, no version")
            && d.contains("this check closed it with <host-unknown/>"),
        "{out}"
    );
    let fix = Outcome::text(s, "fix");
    assert!(
        fix.contains("this check refused c.test's verification connection with <host-unknown/>")
            && fix.contains("its stream header names elsewhere.test, which this configuration does not host (a.test)")
            && !fix.contains("SRV/A records"),
        "{out}"
    );
}

/// A peer that offers no SASL EXTERNAL after TLS: the `sasl-external` step tells apart a
/// peer that lists other SASL mechanisms after getting our certificate (it did not
/// accept it: a warning with the certificate fix), one that never asks for a client
/// certificate and offers no mechanism anywhere (it does not implement EXTERNAL: a skip),
/// and one that asks for our certificate but offers no mechanism (either: a warning that
/// says both); dialback follows each time. Where the policy forbids dialback, the step
/// fails with the fix to allow it, and a refused EXTERNAL is told from one not offered.
#[test]
fn sasl_external_not_offered_is_explained() {
    const NET: u8 = 248;
    let mut records = xmpp_server("a.test", ip(NET, 2));
    for (i, d) in ["b1.test", "b2.test", "b3.test", "b4.test", "b5.test"]
        .iter()
        .enumerate()
    {
        records.extend(xmpp_server(d, ip(NET, 3 + i as u8)));
    }
    let _dns = zone(NET, records);
    let ca = TestCa::new("check test CA").expect("CA");
    let a_leaf = ca.issue("a.test").expect("leaf");
    let files = tls_files(&ca, &a_leaf, "a.test");
    let extra = format!(
        "[tls]\ntrust = [\"ca.pem\"]\n{}{}\n[federation.domains.\"b4.test\"]\nauth = \"sasl-external\"\n\
         \n[federation.domains.\"b5.test\"]\nauth = \"sasl-external\"\n",
        certificate_entry("a.test"),
        slow_deadlines(0xa8)
    );
    let site = Site::new(
        "a.test",
        &config(NET, ip(NET, 2), &["a.test"], 1, &extra),
        &files,
    );
    const PLAIN: &str =
        "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms>";
    let peer = |n: u8, d: &'static str, request: bool, sasl: &'static str| {
        Script::start(
            SocketAddr::new(ip(NET, n).into(), 5269),
            tls_peer(
                d,
                ca.issue(d)
                    .expect("leaf")
                    .assemble(CertifiedDomain::new)
                    .expect("leaf"),
                request,
                sasl,
            ),
        )
    };
    let _b1 = peer(3, "b1.test", true, PLAIN);
    let _b2 = peer(4, "b2.test", false, "");
    let _b3 = peer(5, "b3.test", true, "");
    let b4 = peer(6, "b4.test", false, "");
    let b5 = peer(
        7,
        "b5.test",
        true,
        "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism>\
         </mechanisms>",
    );

    // Other mechanisms after seeing our certificate: it did not accept it.
    let out = site.check(&["b1.test"]);
    assert_eq!(out.code, 0, "{out}");
    out.expect("b1.test", "certificate", "pass");
    let s = out.expect("b1.test", "sasl-external", "warn");
    let d = Outcome::text(s, "detail");
    assert!(
        d.contains("offers SASL after TLS (PLAIN) but not EXTERNAL")
            && d.contains("asked for a client certificate in the TLS handshake and got a.test's")
            && d.contains("did not accept a.test's certificate")
            && d.contains("falling back to dialback"),
        "{out}"
    );
    assert!(
        Outcome::text(s, "fix").contains("must accept a.test's certificate"),
        "{out}"
    );
    out.expect("b1.test", "dialback", "pass");

    // No mechanism anywhere, no client certificate asked for: no EXTERNAL at all.
    let out = site.check(&["b2.test"]);
    assert_eq!(out.code, 0, "{out}");
    let s = out.expect("b2.test", "sasl-external", "skip");
    let d = Outcome::text(s, "detail");
    assert!(
        d.contains("offers no SASL mechanism on any stream")
            && d.contains("did not ask for a client certificate")
            && d.contains("does not implement SASL EXTERNAL")
            && !d.contains("did not accept"),
        "{out}"
    );
    assert!(s["fix"].is_null(), "{out}");
    out.expect("b2.test", "dialback", "pass");

    // No mechanism after asking for our certificate (as Prosody does when it refuses
    // one): both possibilities.
    let out = site.check(&["b3.test"]);
    assert_eq!(out.code, 0, "{out}");
    let s = out.expect("b3.test", "sasl-external", "warn");
    let d = Outcome::text(s, "detail");
    assert!(
        d.contains("either it does not implement SASL EXTERNAL")
            && d.contains("or it did not accept a.test's certificate"),
        "{out}"
    );
    out.expect("b3.test", "dialback", "pass");

    // Policy forbids dialback: a failure, with the way out.
    let out = site.check(&["b4.test"]);
    let log = b4.log();
    assert_eq!(out.code, 1, "{out}");
    let s = out.expect("b4.test", "sasl-external", "fail");
    assert!(
        Outcome::text(s, "detail").contains("does not implement SASL EXTERNAL")
            && Outcome::text(s, "detail").contains("forbids dialback"),
        "{out}"
    );
    assert!(Outcome::text(s, "fix").contains("auth = \"any\""), "{out}");
    assert_eq!(out.steps("b4.test", "sasl-external").len(), 1, "{out}");
    out.no_step("b4.test", "dialback");
    assert!(entry(&log, "db:result").is_none(), "{log:#?}");

    // EXTERNAL offered, then refused, and no dialback allowed: said as such.
    let out = site.check(&["b5.test"]);
    let log = b5.log();
    assert_eq!(out.code, 1, "{out}");
    assert!(entry(&log, "SASL auth attempted").is_some(), "{log:#?}");
    let s = out.expect("b5.test", "sasl-external", "fail");
    assert!(
        Outcome::text(s, "detail")
            .contains("b5.test refused SASL EXTERNAL for a.test, and policy forbids dialback"),
        "{out}"
    );
    assert_eq!(out.steps("b5.test", "sasl-external").len(), 1, "{out}");
}

/// Failures name what happened: a peer that answers our `db:result` with
/// `remote-connection-failed` without connecting back ("its verification connection never
/// arrived", and the DNS fix, not "start the server": the check stood in), a server that
/// does not host the domain ("refused our stream with <host-unknown/>"), and one that
/// closes our stream as it does not trust our certificate (the certificate fix, not DNS
/// advice).
#[test]
fn failures_name_what_happened() {
    const NET: u8 = 249;
    let mut records = xmpp_server("a.test", ip(NET, 2));
    records.extend(xmpp_server("b.test", ip(NET, 3)));
    records.extend(xmpp_server("c.test", ip(NET, 4)));
    records.extend(xmpp_server("d.test", ip(NET, 5)));
    let _dns = zone(NET, records);
    let _b = FakePeer::start(
        SocketAddr::new(ip(NET, 3).into(), 5269),
        "b.test",
        None,
        DialbackResult::Error(DialbackErrorCondition::RemoteConnectionFailed),
    );
    let _c = FakePeer::start(
        SocketAddr::new(ip(NET, 4).into(), 5269),
        "other.test",
        None,
        DialbackResult::Valid,
    );
    let extra = format!("{GOOGLE_STYLE}{}", slow_deadlines(0xa9));
    let site = Site::new(
        "a.test",
        &config(NET, ip(NET, 2), &["a.test"], 1, &extra),
        &[],
    );

    let out = site.check(&["b.test"]);
    assert_eq!(out.code, 1, "{out}");
    let s = out.expect("b.test", "dialback", "fail");
    let d = Outcome::text(s, "detail");
    assert!(
        d.contains("type='error' (remote-connection-failed)")
            && d.contains("b.test's verification connection never arrived at 127.0.249.2:5269"),
        "{out}"
    );
    let fix = Outcome::text(s, "fix");
    assert!(
        fix.contains("SRV/A records point to this server")
            && !fix.contains("start `fedrouter serve`"),
        "{out}"
    );

    let out = site.check(&["c.test"]);
    assert_eq!(out.code, 1, "{out}");
    let s = out.expect("c.test", "stream", "fail");
    assert!(
        Outcome::text(s, "detail").contains("the peer refused our stream with <host-unknown/>"),
        "{out}"
    );
    assert!(
        Outcome::text(s, "fix").contains("does not host c.test"),
        "{out}"
    );
    out.no_step("c.test", "dialback");

    let peer = Script::start(
        SocketAddr::new(ip(NET, 5).into(), 5269),
        dialback_peer("d.test", true),
    );
    let out = site.check(&["d.test"]);
    let log = peer.log();
    assert_eq!(out.code, 1, "{out}");
    assert!(entry(&log, "db:result").is_some(), "{log:#?}");
    let s = out.expect("d.test", "dialback", "fail");
    assert!(
        Outcome::text(s, "detail").contains(
            "the peer closed the stream with <not-authorized/>: Your server's certificate is \
             not trusted"
        ),
        "{out}"
    );
    let fix = Outcome::text(s, "fix");
    assert!(
        fix.contains("d.test requires a certificate it trusts from a.test")
            && !fix.contains("SRV/A records"),
        "{out}"
    );

    // A peer that never answers our db:result: our own deadline (1 s here, configured
    // for this one run, and waited for as the event under test) is named as such.
    let impatient = Site::new(
        "a.test-impatient",
        &config(
            NET,
            ip(NET, 2),
            &["a.test"],
            1,
            &format!("{GOOGLE_STYLE}\n[s2s]\nnegotiation_timeout = \"1s\"\n"),
        ),
        &[],
    );
    let peer = Script::start(
        SocketAddr::new(ip(NET, 5).into(), 5269),
        dialback_peer("d.test", false),
    );
    let out = impatient.check(&["d.test"]);
    let log = peer.log();
    assert_eq!(out.code, 1, "{out}");
    assert!(entry(&log, "closed by the check").is_some(), "{log:#?}");
    let s = out.expect("d.test", "dialback", "fail");
    assert!(
        Outcome::text(s, "detail").contains(
            "d.test did not answer our db:result within 1s (s2s.negotiation_timeout); no \
             verification request reached this check: d.test's verification connection never \
             arrived"
        ),
        "{out}"
    );
    assert_eq!(out.steps("d.test", "dialback").len(), 1, "{out}");
}
