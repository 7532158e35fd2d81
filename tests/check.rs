//! `fedrouter check` (issue 7) end to end: the binary, run with `--json` against our own
//! DNS zone on loopback (`fedrouter::dns::zone::ZoneServer`), real `fedrouter serve`
//! instances and scripted peers, for good and broken set-ups: the right verdict and fix
//! for each step, and the exit status.
//!
//! Each test owns the loopback range `127.0.N.0/24` (N = 240 to 245) and uses fixed ports
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

use fedrouter::dialback::{DialbackResult, DialbackSecret};
use fedrouter::stream::{Event, FederationPolicy, PeerPolicy, S2sConfig, S2sConnection, TlsRole};
use fedrouter::tls::{self, CertifiedDomain, ClientAuth, DomainCertResolver, LeafOptions, TestCa};
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
fn tls_files(ca: &TestCa, leaf: &CertifiedDomain, domain: &str) -> Vec<(String, String)> {
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
            dialback_secret: DialbackSecret::generate(),
            stream_id_key: rand::random(),
            cert_verifier: None,
            limits: fedrouter::xml::Limits::default(),
            timeouts: fedrouter::stream::Timeouts::default(),
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
                    let mut tls_conn = rustls::ServerConnection::new(cfg).expect("TLS");
                    let mut sock = sock;
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while tls_conn.is_handshaking() && Instant::now() < deadline {
                        match tls_conn.complete_io(&mut sock) {
                            Ok(_) => {}
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    ErrorKind::WouldBlock | ErrorKind::TimedOut
                                ) => {}
                            Err(_) => return,
                        }
                    }
                    let chain = tls_conn
                        .peer_certificates()
                        .map(<[_]>::to_vec)
                        .unwrap_or_default();
                    io = Io::Tls(Box::new(rustls::StreamOwned::new(tls_conn, sock)));
                    conn.handle_tls_established(chain, Instant::now());
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
        d.contains("this check answered the verification")
            && d.contains("b.test asked about a.test: valid"),
        "{out}"
    );
    assert!(out.report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["fix"].is_null()));

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
    let wrong = ca.issue("wrong.test").expect("leaf");
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
