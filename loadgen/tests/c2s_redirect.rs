//! `<see-other-host/>` (RFC 6120 §4.9.3.19) as a fedrouter cluster node sends it, against
//! loadgen's client: [`loadgen::clients::login_following`] and [`loadgen::c2s::Reader`].
//!
//! The "nodes" are fedrouter's own C2S core (`fedrouter::stream::C2sConnection`, the code
//! every node runs; `redirect` is what a node calls for a user another node owns) driven
//! over real loopback sockets, plain TCP with SCRAM, so that which node redirects whom is
//! chosen by the test. Loopback net `127.0.198.0/24`, port 0 (the kernel picks). Every
//! test body is bounded by [`TEST_TIMEOUT`]; waits are on events (a login's result, a
//! read), never on sleeps.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fedrouter::store::{ScramCredentials, ScramHash, SCRAM_ITERATIONS};
use fedrouter::stream::{C2sConfig, C2sConnection, C2sEvent};
use loadgen::c2s::{C2sError, ClientOptions, TlsMode};
use loadgen::clients::{login_following, MAX_REDIRECTS};
use loadgen::topology::Topology;
use loadgen::world::World;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const DOMAIN: &str = "cluster.test";
const PASSWORD: &str = "loadgen";
/// Bound of a whole test body.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Most connections one scripted node accepts.
const MAX_CONNECTIONS: usize = 16;

/// What a scripted node does with an authenticated client.
#[derive(Debug, Clone)]
enum Policy {
    /// Owns every user: binds the session.
    Own,
    /// Owns nobody: `<see-other-host/>` to this `host:port` right after SASL success.
    RedirectAfterAuth(String),
    /// Binds, then (ownership moved) closes the session with `<see-other-host/>`.
    RedirectAfterBind(String),
}

/// A scripted node: a listener and its accept task (aborted on drop).
struct Node {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn listener(host: u8) -> TcpListener {
    TcpListener::bind(SocketAddr::from(([127, 0, 198, host], 0)))
        .await
        .expect("bind 127.0.198.x:0")
}

fn start(l: TcpListener, policy: Policy) -> Node {
    let addr = l.local_addr().expect("local address");
    let creds: Arc<Vec<ScramCredentials>> = Arc::new(
        ScramHash::ALL
            .iter()
            .map(|&h| {
                ScramCredentials::with_random_salt(PASSWORD, h, SCRAM_ITERATIONS, &mut rand::rng())
                    .expect("credentials")
            })
            .collect(),
    );
    let task = tokio::spawn(async move {
        for n in 0..MAX_CONNECTIONS {
            let Ok((sock, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(serve(sock, n as u64, policy.clone(), creds.clone()));
        }
    });
    Node { addr, task }
}

/// One client connection through fedrouter's C2S core.
async fn serve(mut sock: TcpStream, nonce: u64, policy: Policy, creds: Arc<Vec<ScramCredentials>>) {
    let mut cfg = C2sConfig::new(vec![DOMAIN.to_owned()], [7; 32]);
    cfg.tls_required = false;
    let mut conn = C2sConnection::new(Arc::new(cfg), nonce, false, Instant::now());
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::new();
    // Bounded: each turn handles what arrived, or the connection ends.
    for _ in 0..10_000 {
        // Events and output until neither is left (each event answer may make more).
        for _ in 0..64 {
            let mut acted = false;
            while let Some(ev) = conn.poll_event() {
                acted = true;
                let now = Instant::now();
                match ev {
                    C2sEvent::CredentialsNeeded { mechanism, .. } => {
                        let c = creds
                            .iter()
                            .find(|c| Some(c.mechanism) == mechanism.hash())
                            .cloned();
                        conn.handle_credentials(c, now)
                            .expect("credentials asked for");
                    }
                    C2sEvent::Authenticated { .. } => {
                        if let Policy::RedirectAfterAuth(to) = &policy {
                            conn.redirect(to, now);
                        }
                    }
                    C2sEvent::BindRequested { jid, requested } => {
                        let full = format!("{jid}/{}", requested.as_deref().unwrap_or("r"));
                        conn.handle_bind(Ok(&full), now).expect("bind pending");
                    }
                    C2sEvent::Bound { .. } => {
                        if let Policy::RedirectAfterBind(to) = &policy {
                            conn.redirect(to, now);
                        }
                    }
                    _ => {}
                }
            }
            out.clear();
            conn.poll_transmit(&mut out);
            if !out.is_empty() {
                acted = true;
                if sock.write_all(&out).await.is_err() {
                    return;
                }
            }
            if !acted {
                break;
            }
        }
        if conn.is_closed() {
            let _ = sock.shutdown().await;
            return;
        }
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => conn.handle_input(&buf[..n], Instant::now()),
        }
    }
}

fn world() -> World {
    World::new(
        Topology {
            peers: 1,
            users_per_peer: 1,
            local_users: 1,
            domains_per_server: 1,
            suffix: "test".into(),
            sut_domain: DOMAIN.into(),
            peer_net: [127, 76],
            peer_subnet: None,
            peer_port: 5269,
            shard: loadgen::topology::Shard::ALL,
        },
        1,
    )
}

fn options(addr: SocketAddr) -> ClientOptions {
    ClientOptions {
        addr,
        domain: DOMAIN.into(),
        tls: TlsMode::Disabled,
        timeout: Duration::from_secs(10),
    }
}

async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test body within TEST_TIMEOUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_follows_see_other_host_to_the_owner() {
    bounded(async {
        let (la, lb) = (listener(31).await, listener(32).await);
        let b_addr = lb.local_addr().unwrap();
        let b = start(lb, Policy::Own);
        let a = start(la, Policy::RedirectAfterAuth(b_addr.to_string()));
        let w = world();
        let s = login_following(&w, &options(a.addr), a.addr, "user0", PASSWORD)
            .await
            .expect("logged in at the owner");
        assert!(s.jid.starts_with(&format!("user0@{DOMAIN}/")), "{}", s.jid);
        assert_eq!(w.redirects.load(std::sync::atomic::Ordering::Relaxed), 1);
        drop(b);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_bounded_per_login() {
    bounded(async {
        // Two nodes that each say the other owns the user (views that disagree).
        let (la, lb) = (listener(33).await, listener(34).await);
        let (a_addr, b_addr) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
        let _a = start(la, Policy::RedirectAfterAuth(b_addr.to_string()));
        let _b = start(lb, Policy::RedirectAfterAuth(a_addr.to_string()));
        let w = world();
        let e = login_following(&w, &options(a_addr), a_addr, "user0", PASSWORD)
            .await
            .expect_err("never settles");
        assert!(
            matches!(&e, C2sError::Protocol(m) if m.contains("see-other-host")),
            "{e:?}"
        );
        assert_eq!(
            w.redirects.load(std::sync::atomic::Ordering::Relaxed),
            u64::from(MAX_REDIRECTS)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_session_sees_the_redirect_with_its_host() {
    bounded(async {
        let la = listener(35).await;
        let a_addr = la.local_addr().unwrap();
        let _a = start(la, Policy::RedirectAfterBind("127.0.198.36:5222".into()));
        let w = world();
        let mut s = login_following(&w, &options(a_addr), a_addr, "user0", PASSWORD)
            .await
            .expect("bound before the redirect");
        let e = s.reader.next().await.expect_err("the stream ends");
        assert_eq!(
            e,
            C2sError::SeeOtherHost {
                host: "127.0.198.36:5222".into()
            }
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn see_other_host_must_name_a_loopback_address() {
    bounded(async {
        let e = loadgen::clients::resolve("192.0.2.1:5222")
            .await
            .expect_err("not loopback");
        assert!(
            matches!(&e, C2sError::Protocol(m) if m.contains("loopback")),
            "{e:?}"
        );
        assert_eq!(
            loadgen::clients::resolve("127.0.198.9:5222").await.unwrap(),
            "127.0.198.9:5222".parse().unwrap()
        );
    })
    .await;
}
