//! Memory per idle C2S session of `fedrouter serve`, and what `c2s.max_stanza_size` and
//! XEP-0198 stream management change in it.
//!
//! `cargo bench -p loadgen --bench c2s_idle` (after `cargo build --release --bin
//! fedrouter`, or with `$FEDROUTER_BIN`). Each case starts a fresh release
//! `fedrouter serve` (2 shards, C2S on 127.0.9.31:5222, STARTTLS with its generated
//! certificate, no S2S), with N users stored directly in its SQLite file (SCRAM
//! credentials with 64 PBKDF2 rounds so that logins are cheap). One client logs in and
//! the server's `VmRSS` (`/proc/PID/status`) is read after 1 s; then N more log in with
//! loadgen's C2S client (TLS, SCRAM-SHA-256, bind), enable stream management with
//! resumption when the case has it, send initial presence, and stay idle; after 2 s
//! `VmRSS` is read again. Reported: (after − before) / N in KiB. A second reading in each
//! case comes after every session sent one 60 KiB message to itself (which it receives):
//! what the larger stanza limit costs once a session has used it.
//!
//! Options after `--`: `--sessions N` (default 2000).
//!
//! Noise: one run per case on a shared machine; RSS counts pages, including what mimalloc
//! keeps. Compare cases of one run, as ratios.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fedrouter::store::scram::{ScramCredentials, ScramHash};
use fedrouter::store::sqlite::SqliteStore;
use fedrouter::store::{Store, DB_FILE};
use loadgen::c2s::{login, ClientOptions, Session, TlsMode};

const ADDR: &str = "127.0.9.31:5222";
const PASSWORD: &str = "idle session password";
const DOMAIN: &str = "a.test";

struct Case {
    name: &'static str,
    max_stanza_size: usize,
    sm: bool,
}

fn fedrouter_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FEDROUTER_BIN") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/fedrouter");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --release --bin fedrouter` or set FEDROUTER_BIN",
        p.display()
    );
    p
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

struct Server {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(case: &Case, users: usize) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    {
        let mut store = SqliteStore::open(data.join(DB_FILE)).expect("store");
        for i in 0..users {
            let salt = format!("salt of user{i}");
            let creds: Vec<ScramCredentials> = [ScramHash::Sha256, ScramHash::Sha1]
                .into_iter()
                .map(|h| ScramCredentials::derive(PASSWORD, h, salt.as_bytes(), 64).unwrap())
                .collect();
            store
                .add_user(&format!("user{i}@{DOMAIN}"), &creds)
                .expect("add user");
        }
    }
    let cfg = dir.path().join("fedrouter.toml");
    std::fs::write(
        &cfg,
        format!(
            "domains = [\"{DOMAIN}\"]\nshards = 2\ndata_dir = {:?}\n\
             [listen]\nc2s = [\"{ADDR}\"]\ns2s = []\ns2s_tls = []\nadmin = \"127.0.9.31:9269\"\n\
             [c2s]\nmax_stanza_size = {}\nstream_management = {}\n[log]\nlevel = \"warn\"\n",
            data.display().to_string(),
            case.max_stanza_size,
            case.sm
        ),
    )
    .unwrap();
    let child = Command::new(fedrouter_bin())
        .args(["serve", "-c"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn fedrouter");
    // Bounded: 20 s for the listener.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(ADDR).is_err() {
        assert!(
            Instant::now() < deadline,
            "fedrouter did not listen on {ADDR}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Server { child, _dir: dir }
}

async fn session(i: usize, sm: bool) -> Session {
    let opts = ClientOptions {
        addr: ADDR.parse::<SocketAddr>().unwrap(),
        domain: DOMAIN.into(),
        tls: TlsMode::Required { roots: None },
        timeout: Duration::from_secs(60),
    };
    let mut s = login(&opts, &format!("user{i}"), PASSWORD, "idle")
        .await
        .unwrap_or_else(|e| panic!("login of user{i}: {e}"));
    if sm {
        s.writer
            .send(b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
            .await
            .unwrap();
    }
    s.writer.send(b"<presence/>").await.unwrap();
    s
}

fn main() {
    let mut n = 2000usize;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--sessions") {
        n = args[i + 1].parse().expect("--sessions N");
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }
    fedrouter::tls::install_default_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cases = [
        Case {
            name: "max_stanza_size 64 KiB, SM off",
            max_stanza_size: 65536,
            sm: false,
        },
        Case {
            name: "max_stanza_size 64 KiB, SM on",
            max_stanza_size: 65536,
            sm: true,
        },
        Case {
            name: "max_stanza_size 256 KiB, SM on",
            max_stanza_size: 262_144,
            sm: true,
        },
    ];
    println!(
        "| case | sessions | KiB per idle session | KiB per session after one 60 KiB message |"
    );
    println!("|---|---:|---:|---:|");
    for case in &cases {
        let srv = start(case, n + 1);
        let pid = srv.child.id();
        let big = "x".repeat(60 * 1024);
        let (idle, after) = rt.block_on(async {
            let first = session(n, case.sm).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let before = rss_kib(pid);
            let sem = Arc::new(tokio::sync::Semaphore::new(64));
            let mut tasks = Vec::with_capacity(n);
            for i in 0..n {
                let sem = Arc::clone(&sem);
                let sm = case.sm;
                tasks.push(tokio::spawn(async move {
                    let _p = sem.acquire().await.unwrap();
                    session(i, sm).await
                }));
            }
            let mut sessions = Vec::with_capacity(n);
            for t in tasks {
                sessions.push(t.await.unwrap());
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            let idle = rss_kib(pid).saturating_sub(before) as f64 / n as f64;
            // Each session sends itself one large message and reads it back.
            for (i, s) in sessions.iter_mut().enumerate() {
                let msg = format!(
                    "<message to='user{i}@{DOMAIN}/idle' type='chat'><body>{big}</body></message>"
                );
                s.writer.send(msg.as_bytes()).await.unwrap();
            }
            for s in sessions.iter_mut() {
                // Bounded: the reader's own timeout ends a read that never completes.
                for _ in 0..100 {
                    match tokio::time::timeout(Duration::from_secs(30), s.reader.next()).await {
                        Ok(Ok(Some(el))) if el.name() == "message" => break,
                        Ok(Ok(Some(_))) => continue,
                        other => panic!("no message back: {other:?}"),
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            let after = rss_kib(pid).saturating_sub(before) as f64 / n as f64;
            drop(first);
            drop(sessions);
            (idle, after)
        });
        println!("| {} | {n} | {idle:.1} | {after:.1} |", case.name);
        drop(srv);
    }
}
