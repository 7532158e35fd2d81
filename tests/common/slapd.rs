//! A real OpenLDAP directory for the LDAP tests: Debian's `slapd`, started by the test as
//! a plain process on 127.0.0.1 with a generated `slapd.conf`, an mdb database in a
//! temporary folder loaded with `slapadd` before start (users with `{SSHA}` passwords
//! made by `slappasswd`), LDAPS and plain LDAP (for StartTLS) with a certificate for
//! `localhost` from testkit's [`TestCa`], and stopped by pid (SIGTERM, then SIGKILL after
//! a bounded wait). [`Slapd::restart`] starts it again on the same ports and data.
//!
//! The tools come from `.ci/setup-slapd` (Debian `slapd` and `ldap-utils`); without them
//! the tests fail with a message naming that script.
#![allow(dead_code)]

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fedrouter_testkit::TestCa;

/// The directory's root.
pub const SUFFIX: &str = "dc=example,dc=test";
/// Where users live.
pub const PEOPLE: &str = "ou=people,dc=example,dc=test";
/// The service account fedrouter searches as.
pub const SERVICE_DN: &str = "cn=fedrouter,ou=services,dc=example,dc=test";
/// Its password.
pub const SERVICE_PASSWORD: &str = "svc secret";

/// Longest wait for slapd to accept connections, or to exit after SIGTERM.
const WAIT: Duration = Duration::from_secs(10);

const SLAPD: &str = "/usr/sbin/slapd";
const SLAPADD: &str = "/usr/sbin/slapadd";
const SLAPPASSWD: &str = "/usr/sbin/slappasswd";

/// A user entry: `uid`, password, and `employeeType` (what the tests' filters select on).
pub struct User<'a> {
    pub uid: &'a str,
    pub password: &'a str,
    pub employee_type: &'a str,
}

/// One running (or stopped) slapd.
pub struct Slapd {
    dir: tempfile::TempDir,
    /// LDAPS port on 127.0.0.1.
    pub ldaps_port: u16,
    /// Plain LDAP port on 127.0.0.1 (StartTLS).
    pub ldap_port: u16,
    /// The CA that issued slapd's certificate, as PEM.
    pub ca_pem: String,
    child: Option<Child>,
}

fn require_tools() {
    for tool in [SLAPD, SLAPADD, SLAPPASSWD] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: run .ci/setup-slapd (installs Debian's slapd and ldap-utils)"
        );
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// `{SSHA}` hash of `password` by `slappasswd`.
fn ssha(password: &str) -> String {
    let out = Command::new(SLAPPASSWD)
        .args(["-h", "{SSHA}", "-s", password])
        .output()
        .expect("run slappasswd (see .ci/setup-slapd)");
    assert!(out.status.success(), "slappasswd failed: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

impl Slapd {
    /// Generates the configuration, certificate and data for `users`, loads them with
    /// slapadd and starts slapd; returns once it accepts connections.
    pub fn start(users: &[User]) -> Slapd {
        require_tools();
        let dir = tempfile::Builder::new()
            .prefix("fedrouter-slapd-")
            .tempdir()
            .expect("temporary folder");
        let p = dir.path();
        fs::create_dir(p.join("db")).unwrap();
        let ca = TestCa::new("slapd test CA").unwrap();
        let leaf = ca.issue("localhost").unwrap();
        fs::write(p.join("ca.pem"), ca.ca_cert_pem()).unwrap();
        fs::write(p.join("server.crt"), leaf.chain_pem()).unwrap();
        fs::write(p.join("server.key"), leaf.key_pem()).unwrap();
        let d = p.display();
        let conf = format!(
            r#"include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {d}/slapd.pid
argsfile {d}/slapd.args
TLSCACertificateFile {d}/ca.pem
TLSCertificateFile {d}/server.crt
TLSCertificateKeyFile {d}/server.key

database mdb
suffix "{SUFFIX}"
rootdn "cn=admin,{SUFFIX}"
rootpw {rootpw}
directory {d}/db
maxsize 10485760
access to attrs=userPassword by self =w by anonymous auth by * none
access to * by dn.exact="{SERVICE_DN}" read by self read by * none
"#,
            rootpw = ssha("admin secret"),
        );
        fs::write(p.join("slapd.conf"), conf).unwrap();
        let mut ldif = format!(
            "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: example\ndc: example\n\n\
             dn: ou=services,{SUFFIX}\nobjectClass: organizationalUnit\nou: services\n\n\
             dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n\
             cn: fedrouter\nuserPassword: {}\n\n\
             dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n",
            ssha(SERVICE_PASSWORD)
        );
        for u in users {
            ldif.push_str(&format!(
                "dn: uid={uid},{PEOPLE}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\n\
                 employeeType: {et}\nuserPassword: {pw}\n\n",
                uid = u.uid,
                et = u.employee_type,
                pw = ssha(u.password),
            ));
        }
        fs::write(p.join("data.ldif"), ldif).unwrap();
        let out = Command::new(SLAPADD)
            .arg("-f")
            .arg(p.join("slapd.conf"))
            .arg("-l")
            .arg(p.join("data.ldif"))
            .output()
            .expect("run slapadd (see .ci/setup-slapd)");
        assert!(
            out.status.success(),
            "slapadd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut me = Slapd {
            dir,
            ldaps_port: free_port(),
            ldap_port: free_port(),
            ca_pem: ca.ca_cert_pem(),
            child: None,
        };
        me.spawn();
        me
    }

    /// `ldaps://localhost:PORT` (the certificate names `localhost`).
    pub fn ldaps_url(&self) -> String {
        format!("ldaps://localhost:{}", self.ldaps_port)
    }

    /// `ldap://localhost:PORT`, for StartTLS.
    pub fn ldap_url(&self) -> String {
        format!("ldap://localhost:{}", self.ldap_port)
    }

    /// The folder holding the configuration, certificates and database.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// slapd's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self) {
        let p = self.dir.path();
        let urls = format!(
            "ldaps://127.0.0.1:{}/ ldap://127.0.0.1:{}/",
            self.ldaps_port, self.ldap_port
        );
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p.join("slapd.log"))
            .unwrap();
        // `-d 0`: stays in the foreground (its pid is the child's), logs nothing extra.
        let child = Command::new(SLAPD)
            .arg("-f")
            .arg(p.join("slapd.conf"))
            .args(["-h", &urls, "-d", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn slapd (see .ci/setup-slapd)");
        self.child = Some(child);
        self.wait_listening();
    }

    /// Waits (bounded in count and time) until both ports accept connections.
    fn wait_listening(&mut self) {
        let deadline = Instant::now() + WAIT;
        for port in [self.ldaps_port, self.ldap_port] {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let mut ok = false;
            for _ in 0..200 {
                if let Some(status) = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    panic!("slapd exited ({status}): {}", self.log());
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    ok = true;
                    break;
                }
                if Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(ok, "slapd does not listen on {addr}: {}", self.log());
        }
    }

    /// slapd's stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("slapd.log")).unwrap_or_default()
    }

    /// Stops slapd by its pid: SIGTERM, up to 10 s, then SIGKILL. Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as libc::pid_t;
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + WAIT;
        for _ in 0..1000 {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts slapd again on the same ports with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// The CA file path inside slapd's folder.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}
