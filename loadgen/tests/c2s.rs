//! `loadgen::c2s` against a real fedrouter started in-process
//! (`fedrouter::runtime::Server::start`) with a C2S listener on loopback, users created
//! through the store API (SCRAM-SHA-256 and SCRAM-SHA-1 credentials, as `fedrouter user
//! add` does), and the self-signed certificate the server generates into
//! `<data_dir>/certs/<domain>.crt` as the client's only trust root.
//!
//! Loopback net `127.0.231.0/24` (no other suite uses it), one host per test, port 0 (the
//! kernel picks). Every test body is bounded by [`TEST_TIMEOUT`].

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use fedrouter::config::{Config, CERTS_DIR};
use fedrouter::runtime::Server;
use fedrouter::store::sqlite::SqliteStore;
use fedrouter::store::{ScramCredentials, ScramHash, Store, DB_FILE, SCRAM_ITERATIONS};
use fedrouter::xml::tree::Node;
use fedrouter::xml::{Element, Namespace};
use loadgen::c2s::{login, C2sError, ClientOptions, Reader, TlsMode};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;

const DOMAIN: &str = "c2s.test";
const PASSWORD: &str = "s3cret horse";
/// Bound of each negotiation step.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound of a whole test body.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of one wait for an element.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// `127.0.231.host`.
fn ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 231, host)
}

/// A fedrouter running in this process, with its data in a temporary folder.
struct Lab {
    server: Option<Server>,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Lab {
    /// Starts a server for [`DOMAIN`] with C2S on `127.0.231.host:0` and `users` (localparts,
    /// all with [`PASSWORD`]); `c2s_extra` goes into the `[c2s]` table.
    fn start(host: u8, users: &[&str], c2s_extra: &str) -> Lab {
        let dir = tempfile::Builder::new()
            .prefix("loadgen-c2s-")
            .tempdir()
            .expect("temporary folder");
        let data_dir = dir.path().join("data");
        let text = format!(
            r#"domains = ["{DOMAIN}"]
shards = 2
data_dir = {data_dir:?}

[listen]
s2s = []
s2s_tls = []
c2s = ["{c2s}"]
admin = ""

[dns]
nameservers = ["{dns}"]

[c2s]
auth_failure_delay = "10ms"
{c2s_extra}

[store]
durability = "crash"

[shutdown]
drain_timeout = "1s"
"#,
            data_dir = data_dir.display().to_string(),
            c2s = SocketAddr::new(ip(host).into(), 0),
            dns = SocketAddr::new(ip(1).into(), 5300),
        );
        let config = Config::from_toml_str(&text)
            .unwrap_or_else(|e| panic!("bad test configuration: {e}\n{text}"));
        let materialized = config.materialize().expect("materialize the configuration");
        {
            let mut store = SqliteStore::open(data_dir.join(DB_FILE)).expect("open the store");
            for user in users {
                let creds: Vec<ScramCredentials> = ScramHash::ALL
                    .iter()
                    .map(|&h| {
                        ScramCredentials::with_random_salt(
                            PASSWORD,
                            h,
                            SCRAM_ITERATIONS,
                            &mut rand::rng(),
                        )
                        .expect("credentials")
                    })
                    .collect();
                store
                    .add_user(&format!("{user}@{DOMAIN}"), &creds)
                    .expect("add user");
            }
        }
        let server = Server::start(config, materialized).expect("start fedrouter");
        let addr = server.addrs().c2s[0];
        Lab {
            server: Some(server),
            dir,
            addr,
        }
    }

    /// The server's generated certificate as the only root.
    fn roots(&self) -> Arc<rustls::RootCertStore> {
        let file = self
            .dir
            .path()
            .join("data")
            .join(CERTS_DIR)
            .join(format!("{DOMAIN}.crt"));
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&file).expect("read the certificate") {
            roots
                .add(c.expect("parse the certificate"))
                .expect("trust it");
        }
        assert!(!roots.is_empty(), "no certificate in {}", file.display());
        Arc::new(roots)
    }

    /// Options for [`DOMAIN`] with TLS verified against the server's certificate.
    fn opts(&self) -> ClientOptions {
        self.opts_with(TlsMode::Required {
            roots: Some(self.roots()),
        })
    }

    fn opts_with(&self, tls: TlsMode) -> ClientOptions {
        ClientOptions {
            addr: self.addr,
            domain: DOMAIN.to_owned(),
            tls,
            timeout: STEP_TIMEOUT,
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
            s.join();
        }
    }
}

/// Runs `f` bounded by [`TEST_TIMEOUT`].
async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("the test did not finish in time");
}

/// The next element, bounded by [`READ_TIMEOUT`]; panics on an error or the end.
async fn next(r: &mut Reader, who: &str) -> Element {
    match tokio::time::timeout(READ_TIMEOUT, r.next()).await {
        Ok(Ok(Some(e))) => e,
        Ok(Ok(None)) => panic!("{who}: stream closed"),
        Ok(Err(e)) => panic!("{who}: {e}"),
        Err(_) => panic!("{who}: nothing within {READ_TIMEOUT:?}"),
    }
}

/// The next `<message/>` (skipping at most 16 other elements).
async fn next_message(r: &mut Reader, who: &str) -> Element {
    for _ in 0..16 {
        let e = next(r, who).await;
        if e.is("message", &Namespace::Client) {
            return e;
        }
    }
    panic!("{who}: no message among 16 elements");
}

/// `Ok(None)` within [`READ_TIMEOUT`], skipping at most 16 elements (presence
/// broadcasts and the like).
async fn expect_end(r: &mut Reader, who: &str) {
    for _ in 0..16 {
        match tokio::time::timeout(READ_TIMEOUT, r.next()).await {
            Ok(Ok(None)) => return,
            Ok(Ok(Some(_))) => continue,
            Ok(Err(e)) => panic!("{who}: expected a clean end, got {e}"),
            Err(_) => panic!("{who}: stream not closed within {READ_TIMEOUT:?}"),
        }
    }
    panic!("{who}: stream not closed after 16 elements");
}

fn body(e: &Element) -> String {
    let n = Node::parse(e).expect("a message tree");
    n.children
        .iter()
        .find(|c| c.name == "body")
        .map(|c| c.text.clone())
        .expect("a body")
}

fn message(to: &str, id: &str, body: &str) -> Vec<u8> {
    format!(
        "<message type='chat' to='{to}' id='{id}'><body>{}</body></message>",
        fedrouter::xml::escape_text(body)
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha256_login_over_verified_tls() {
    let lab = Lab::start(10, &["alice"], "");
    bounded(async {
        let s = login(&lab.opts(), "alice", PASSWORD, "loadgen")
            .await
            .expect("login");
        assert_eq!(s.jid, format!("alice@{DOMAIN}/loadgen"));
        assert_eq!(s.mechanism, "SCRAM-SHA-256");
        // The roster helper: an empty roster comes back as a result with our id.
        let (mut w, mut r) = (s.writer, s.reader);
        w.request_roster("roster-1").await.expect("roster get");
        let e = next(&mut r, "alice").await;
        assert!(e.is("iq", &Namespace::Client), "{}", e.as_str());
        assert_eq!((e.type_(), e.id()), (Some("result"), Some("roster-1")));
        w.send_initial_presence().await.expect("presence");
        w.close().await.expect("close");
        expect_end(&mut r, "alice").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_not_authorized() {
    let lab = Lab::start(11, &["alice"], "");
    bounded(async {
        let err = login(&lab.opts(), "alice", "not the password", "loadgen")
            .await
            .expect_err("a wrong password must fail");
        assert_eq!(
            err,
            C2sError::AuthFailed {
                condition: "not-authorized".into()
            }
        );
        let err = login(&lab.opts(), "nobody", PASSWORD, "loadgen")
            .await
            .expect_err("an unknown user must fail");
        assert_eq!(
            err,
            C2sError::AuthFailed {
                condition: "not-authorized".into()
            }
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_exchange_a_message() {
    let lab = Lab::start(12, &["alice", "bob"], "");
    bounded(async {
        let opts = lab.opts();
        let (a, b) = tokio::join!(
            login(&opts, "alice", PASSWORD, "phone"),
            login(&opts, "bob", PASSWORD, "desk")
        );
        let (a, b) = (a.expect("alice logs in"), b.expect("bob logs in"));
        let (alice, bob) = (a.jid.clone(), b.jid.clone());
        let mut bob_reader = b.reader;
        let received = tokio::spawn(async move {
            let m = next_message(&mut bob_reader, "bob").await;
            (m, bob_reader)
        });
        let mut aw = a.writer;
        aw.send(&message(&bob, "m1", "hello <bob> & co"))
            .await
            .expect("send");
        let (m, mut bob_reader) = received.await.expect("bob's task");
        assert_eq!(m.from(), Some(alice.as_str()));
        assert_eq!(m.to(), Some(bob.as_str()));
        assert_eq!(m.id(), Some("m1"));
        assert_eq!(body(&m), "hello <bob> & co");

        // And back, to the bare JID: delivered to the available resources (RFC 6121
        // §8.5.2.1.1), so alice sends initial presence first; the roster result that
        // follows it on her stream shows that the server has processed it.
        let mut bw = b.writer;
        let mut ar = a.reader;
        aw.send_initial_presence().await.expect("presence");
        aw.request_roster("sync").await.expect("roster get");
        for _ in 0..16 {
            let e = next(&mut ar, "alice").await;
            if e.is("iq", &Namespace::Client) && e.id() == Some("sync") {
                break;
            }
        }
        bw.send(&message(&format!("alice@{DOMAIN}"), "m2", "hi alice"))
            .await
            .expect("send");
        let m = next_message(&mut ar, "alice").await;
        assert_eq!(m.from(), Some(bob.as_str()));
        assert_eq!(body(&m), "hi alice");

        aw.close().await.expect("alice closes");
        bw.close().await.expect("bob closes");
        expect_end(&mut ar, "alice").await;
        expect_end(&mut bob_reader, "bob").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_the_reader_in_another_task() {
    let lab = Lab::start(13, &["alice"], "");
    bounded(async {
        let s = login(&lab.opts(), "alice", PASSWORD, "loadgen")
            .await
            .expect("login");
        let mut reader = s.reader;
        let reading = tokio::spawn(async move {
            let mut seen = 0usize;
            // Bounded: 64 elements at most, each wait bounded.
            for _ in 0..64 {
                match tokio::time::timeout(READ_TIMEOUT, reader.next()).await {
                    Ok(Ok(Some(_))) => seen += 1,
                    Ok(Ok(None)) => {
                        // Sticky: the end stays the end.
                        assert_eq!(reader.next().await, Ok(None));
                        return seen;
                    }
                    Ok(Err(e)) => panic!("reader: {e}"),
                    Err(_) => panic!("reader: no end within {READ_TIMEOUT:?}"),
                }
            }
            panic!("reader: no end after 64 elements");
        });
        let mut w = s.writer;
        w.close().await.expect("close");
        w.close().await.expect("a second close does nothing");
        reading.await.expect("reader task");
        assert!(matches!(
            w.send(b"<presence/>").await,
            Err(C2sError::Closed | C2sError::Io(..))
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_queued_messages_arrives_in_order() {
    const N: usize = 500;
    let lab = Lab::start(14, &["alice", "bob"], "");
    bounded(async {
        let opts = lab.opts();
        let a = login(&opts, "alice", PASSWORD, "a").await.expect("alice");
        let b = login(&opts, "bob", PASSWORD, "b").await.expect("bob");
        let bob = b.jid.clone();
        let mut br = b.reader;
        let reading = tokio::spawn(async move {
            let mut got = Vec::with_capacity(N);
            // Bounded: N messages, each wait bounded.
            while got.len() < N {
                let m = next_message(&mut br, "bob").await;
                got.push(m.id().expect("an id").to_owned());
            }
            got
        });
        let mut w = a.writer;
        for i in 0..N {
            w.queue(&message(&bob, &format!("b{i}"), "burst"));
            if i % 50 == 49 {
                w.flush().await.expect("flush");
            }
        }
        w.flush().await.expect("flush");
        assert_eq!(w.queued(), 0);
        let got = reading.await.expect("bob's task");
        let want: Vec<String> = (0..N).map(|i| format!("b{i}")).collect();
        assert_eq!(got, want);
        w.close().await.expect("close");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_domain_is_a_stream_error() {
    let lab = Lab::start(15, &["alice"], "");
    bounded(async {
        let mut opts = lab.opts();
        opts.domain = "elsewhere.test".into();
        let err = login(&opts, "alice", PASSWORD, "loadgen")
            .await
            .expect_err("an unknown domain must fail");
        assert!(
            matches!(&err, C2sError::StreamError { condition, .. } if condition == "host-unknown"),
            "{err:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_checks() {
    let lab = Lab::start(16, &["alice"], "");
    bounded(async {
        // A root that did not sign the server's certificate: the handshake fails.
        let other = fedrouter_testkit::TestCa::new("other CA").expect("a CA");
        let opts = lab.opts_with(TlsMode::Required {
            roots: Some(Arc::new(other.root_store())),
        });
        let err = login(&opts, "alice", PASSWORD, "loadgen")
            .await
            .expect_err("an untrusted certificate must fail");
        assert!(matches!(err, C2sError::Tls(_)), "{err:?}");
        // No certificate check: the same server is accepted.
        let opts = lab.opts_with(TlsMode::Required { roots: None });
        let s = login(&opts, "alice", PASSWORD, "loadgen")
            .await
            .expect("login without a certificate check");
        assert_eq!(s.jid, format!("alice@{DOMAIN}/loadgen"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_uses_scram_and_respects_a_tls_requirement() {
    // A server requiring TLS (the default) refuses a TLS-less client before SASL.
    let strict = Lab::start(17, &["alice"], "");
    // A server allowing plain TCP: SCRAM over TCP, PLAIN not used.
    let lax = Lab::start(18, &["alice"], "tls_required = false");
    bounded(async {
        let err = login(&strict.opts_with(TlsMode::Disabled), "alice", PASSWORD, "r")
            .await
            .expect_err("TLS is required");
        assert_eq!(err, C2sError::TlsRequiredByServer);
        let s = login(&lax.opts_with(TlsMode::Disabled), "alice", PASSWORD, "r")
            .await
            .expect("login over plain TCP");
        assert_eq!(s.mechanism, "SCRAM-SHA-256");
        assert_eq!(s.jid, format!("alice@{DOMAIN}/r"));
    })
    .await;
}
