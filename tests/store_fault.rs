//! Store faults (issue 21, part 3): a real full disk under a running `fedrouter serve`.
//!
//! The server's `data_dir` is a small tmpfs (`mount -t tmpfs -o size=...`: the test runs
//! as root, as CI does). Once it is filled up by a filler file, SQLite's commits fail with
//! `SQLITE_FULL`, and the contract checked is:
//!
//! - a roster set is refused with `resource-constraint` (type `wait`, RFC 6120 §8.3.3.18)
//!   and a subscription request (RFC 6121 §3.1) with the same error, and nothing of
//!   either is applied: the roster re-fetched holds exactly the acknowledged items, and
//!   the contact never sees the request;
//! - what needs no store goes on: a message between two logged-in users flows both ways,
//!   XEP-0199 pings are answered;
//! - the fault is counted and shown: `/health` `"store_failures"` and the metric
//!   `store_failures_total`;
//! - once the filler is deleted the next roster set succeeds (the storage thread and the
//!   shards survived), and it survives a restart of the server.
//!
//! [`storage_thread_survives_a_full_disk`] checks the same at the storage thread itself
//! ([`StoreHandle`] over [`SqliteStore`] on a tmpfs): changes on a full disk fail with
//! [`StoreError::Full`], nothing of them is stored, each is counted, reads still work,
//! the thread goes on, and the next change succeeds once there is room.
//!
//! Owns the loopback range `127.0.186.0/24`: `.1:5300` DNS, the server on `.2` (5222
//! C2S, 5269 S2S, 9269 admin). Every wait is for an event and bounded.

#[path = "common/c2s_client.rs"]
mod c2s_client;
#[path = "common/server.rs"]
mod server;
#[path = "common/xmpp.rs"]
mod xmpp;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use fedrouter::store::sqlite::SqliteStore;
use fedrouter::store::{Change, Op, Outcome, StoreError, StoreHandle, StoredItem, DB_FILE};
use server::{add_user, config, http_get, ip, zone, Fedrouter};
use xmpp::{attr, condition, is_stanza, Client, Target};

const NET: u8 = 186;
const LOCAL: &str = "a.test";
const PASSWORD: &str = "full disk password";

/// The tmpfs size: room for the database, its WAL and the certificates, little more.
const TMPFS_SIZE: &str = "4m";

/// Most roster sets tried after the disk is full before one must have failed (slack in
/// the WAL's last page may take a few).
const MAX_TRIES_WHEN_FULL: usize = 50;

/// A tmpfs mounted on a folder, unmounted when dropped (lazily, so that a process still
/// holding a file there cannot make the unmount fail).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` on `path` (which must exist). Panics with what to do when
    /// mounting is not permitted.
    fn mount(path: &Path, size: &str) -> Tmpfs {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0700"))
            .arg("tmpfs")
            .arg(path)
            .output()
            .unwrap_or_else(|e| {
                panic!("running mount(8): {e}; tests/store_fault.rs needs util-linux's mount and root (see .ci/run)")
            });
        assert!(
            out.status.success(),
            "mount -t tmpfs on {} failed ({}): {}; tests/store_fault.rs must run as root with \
             permission to mount (as .ci/run does)",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            path: path.to_owned(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the file system holding `dir` with `dir/filler` until a write fails with
/// `ENOSPC`; returns the filler's path. Bounded by the tmpfs size.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("create the filler");
    let chunk = vec![0x5au8; 4096];
    // Bounded: 4 MiB of tmpfs is 1,024 chunks; 10× that is a backstop.
    for _ in 0..10_240 {
        match f.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                let _ = f.flush();
                return path;
            }
            Err(e) => panic!("filling {}: unexpected error {e}", dir.display()),
        }
    }
    panic!("{}: never full after 40 MiB", dir.display());
}

fn item(contact: &str) -> String {
    format!("<item jid='{contact}' name='{contact}'/>")
}

/// The contacts (bare JIDs) of roster items as returned by [`Client::roster_get`].
fn contacts(items: &[String]) -> BTreeSet<String> {
    items
        .iter()
        .filter_map(|i| attr(i, "jid"))
        .map(|j| j.to_ascii_lowercase())
        .collect()
}

/// `/health`'s `store_failures.count`.
fn health_failures(fr: &Fedrouter) -> (u64, String) {
    let (code, body) =
        http_get(fr.admin, "/health", std::time::Duration::from_secs(10)).expect("GET /health");
    assert_eq!(code, 200, "/health while the disk is full: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("/health is JSON");
    (
        v["store_failures"]["count"].as_u64().unwrap_or(0),
        v["store_failures"]["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// Alice adds a contact and the server acknowledges it: the result and the push.
fn add_acknowledged(alice: &mut Client, contact: &str) {
    let r = alice.roster_set(&item(contact));
    assert_eq!(attr(&r, "type").as_deref(), Some("result"), "{r}");
    alice.expect_roster_push(contact);
}

#[test]
fn full_disk_refuses_roster_changes_keeps_serving_and_recovers() {
    let _dns = zone(NET, Vec::new());
    let addr = ip(NET, 2);
    let toml =
        config(NET, addr, &[LOCAL], 2, "").replace("c2s = []", &format!("c2s = [\"{addr}:5222\"]"));
    let mut fr = Fedrouter::start("store-fault", &toml);
    let alice_jid = format!("alice@{LOCAL}");
    let bob_jid = format!("bob@{LOCAL}");
    add_user(&fr.config_path(), &alice_jid, PASSWORD);
    add_user(&fr.config_path(), &bob_jid, PASSWORD);

    // The data folder moves onto a small tmpfs, with what the first start put there.
    assert!(fr.stop(), "the server did not stop on SIGTERM");
    let data = fr.dir().join("data");
    let seed = fr.dir().join("data.seed");
    std::fs::rename(&data, &seed).expect("move the data folder aside");
    std::fs::create_dir(&data).expect("create the mount point");
    let tmpfs = Tmpfs::mount(&data, TMPFS_SIZE);
    let cp = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", seed.display()))
        .arg(&data)
        .status()
        .expect("run cp");
    assert!(
        cp.success(),
        "copying the data folder onto the tmpfs failed"
    );
    fr.restart();

    let t = Target::new(SocketAddr::new(addr.into(), 5222), LOCAL, &data);
    let mut alice = Client::login(&t, "alice", PASSWORD, Some("phone"));
    let mut bob = Client::login(&t, "bob", PASSWORD, Some("laptop"));
    assert!(
        alice.roster_get().is_empty(),
        "alice starts with an empty roster"
    );
    bob.roster_get();

    let mut acknowledged: BTreeSet<String> = BTreeSet::new();
    for i in 0..3 {
        let c = format!("before{i}@remote.test");
        add_acknowledged(&mut alice, &c);
        acknowledged.insert(c);
    }
    let (failures_before, _) = health_failures(&fr);
    assert_eq!(
        failures_before, 0,
        "store failures before the disk was full"
    );

    // Full.
    let filler = fill(&data);
    let mut refused = None;
    for i in 0..MAX_TRIES_WHEN_FULL {
        let c = format!("full{i}@remote.test");
        let r = alice.roster_set(&item(&c));
        match attr(&r, "type").as_deref() {
            Some("result") => {
                alice.expect_roster_push(&c);
                acknowledged.insert(c);
            }
            Some("error") => {
                refused = Some(r);
                break;
            }
            other => panic!("roster set answered with type {other:?}: {r}"),
        }
    }
    let refused = refused.unwrap_or_else(|| {
        panic!(
            "{MAX_TRIES_WHEN_FULL} roster sets on a full disk all succeeded; log:\n{}",
            fr.log()
        )
    });
    assert_eq!(
        condition(&refused).as_deref(),
        Some("resource-constraint"),
        "{refused}"
    );
    let error_type = xmpp::node(&refused)
        .children
        .iter()
        .find(|c| c.name == "error")
        .and_then(|e| e.attr("type").map(str::to_owned));
    assert_eq!(error_type.as_deref(), Some("wait"), "{refused}");

    // Nothing half-applied: the roster read again is exactly what was acknowledged.
    assert_eq!(
        contacts(&alice.roster_get()),
        acknowledged,
        "alice's roster after the refused roster set"
    );

    // A subscription request is refused too, and never reaches its contact.
    alice.send(&format!(
        "<presence type='subscribe' to='{bob_jid}' id='sub1'/>"
    ));
    let e = alice.expect_error("presence", "sub1");
    assert_eq!(condition(&e).as_deref(), Some("resource-constraint"), "{e}");
    bob.assert_none("a subscription request from alice", |x| {
        is_stanza(x, "presence") && attr(x, "type").as_deref() == Some("subscribe")
    });
    assert_eq!(
        contacts(&alice.roster_get()),
        acknowledged,
        "alice's roster after the refused subscription request"
    );

    // What needs no store is served: messages both ways, pings.
    alice.send(&format!(
        "<message to='{bob_jid}/laptop' type='chat' id='m1'><body>disk full</body></message>"
    ));
    let m = bob.expect_message(&alice_jid);
    assert_eq!(attr(&m, "id").as_deref(), Some("m1"), "{m}");
    bob.send(&format!(
        "<message to='{alice_jid}/phone' type='chat' id='m2'><body>still here</body></message>"
    ));
    let m = alice.expect_message(&bob_jid);
    assert_eq!(attr(&m, "id").as_deref(), Some("m2"), "{m}");
    alice.sync();
    bob.sync();

    // Counted and shown.
    let (failures, last_error) = health_failures(&fr);
    assert!(failures >= 2, "/health store_failures.count = {failures}");
    assert!(
        last_error.contains("full"),
        "/health store_failures.last_error = {last_error:?}"
    );
    let metric = fr.metric("fedrouter_store_failures_total", &[]);
    assert_eq!(
        metric,
        Some(failures as f64),
        "store_failures_total against /health"
    );
    assert!(
        !fr.log_lines(&["storing a roster change failed"]).is_empty(),
        "no WARN about the failed roster change"
    );

    // Room again: the next change succeeds, and survives a restart.
    std::fs::remove_file(&filler).expect("delete the filler");
    add_acknowledged(&mut alice, "after@remote.test");
    acknowledged.insert("after@remote.test".to_owned());
    assert_eq!(contacts(&alice.roster_get()), acknowledged);
    alice.close();
    bob.close();
    assert!(fr.stop(), "the server did not stop on SIGTERM");
    fr.restart();
    let mut alice = Client::login(&t, "alice", PASSWORD, Some("phone"));
    assert_eq!(
        contacts(&alice.roster_get()),
        acknowledged,
        "alice's roster after a restart"
    );
    alice.close();
    assert!(fr.stop(), "the server did not stop on SIGTERM");
    drop(tmpfs);
}

/// A roster row for `contact` (in the roster, no subscription).
fn row(contact: &str) -> StoredItem {
    StoredItem {
        contact: contact.to_owned(),
        name: None,
        groups: Vec::new(),
        subscription: "none".to_owned(),
        pending_out: false,
        pending_in: None,
        pre_approved: false,
        in_roster: true,
    }
}

fn upsert(user: &str, contact: &str) -> Op {
    Op::Apply(vec![Change::UpsertItem {
        user: user.to_owned(),
        item: row(contact),
    }])
}

#[test]
fn storage_thread_survives_a_full_disk() {
    let dir = tempfile::Builder::new()
        .prefix("fedrouter-store-fault-thread-")
        .tempdir()
        .expect("temporary folder");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("create the mount point");
    let tmpfs = Tmpfs::mount(&data, TMPFS_SIZE);
    let store = SqliteStore::open(data.join(DB_FILE)).expect("open the store");
    let h = StoreHandle::spawn(Box::new(store), 64, 64);
    for u in ["u1@a.test", "u2@a.test"] {
        h.call(Op::AddUser {
            jid: u.to_owned(),
            creds: Vec::new(),
        })
        .unwrap_or_else(|e| panic!("add {u}: {e}"));
    }
    h.call(upsert("u1@a.test", "kept@b.test"))
        .expect("a change with room on the disk");

    let filler = fill(&data);
    // Two requests for two users queued together (one group commit when the thread
    // takes them at once): each fails, nothing of either is stored.
    let (tx, rx) = crossbeam_channel::unbounded();
    h.submit_unnotified(upsert("u1@a.test", "lost1@b.test"), tx.clone(), 1)
        .expect("queued");
    h.submit_unnotified(upsert("u2@a.test", "lost2@b.test"), tx, 2)
        .expect("queued");
    for _ in 0..2 {
        let reply = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("an answer from the storage thread");
        assert!(
            matches!(reply.result, Err(StoreError::Full(_))),
            "request {} on a full disk: {:?}",
            reply.tag,
            reply.result
        );
    }
    assert!(h.is_running(), "the storage thread stopped on a full disk");
    assert_eq!(h.stats().failures, 2, "{:?}", h.stats());
    assert!(
        h.last_failure().is_some_and(|e| e.contains("full")),
        "{:?}",
        h.last_failure()
    );
    // Reads need no room.
    let roster = |user: &str| match h.call(Op::Roster {
        user: user.to_owned(),
    }) {
        Ok(Outcome::Roster((_, items))) => items.into_iter().map(|i| i.contact).collect::<Vec<_>>(),
        other => panic!("roster of {user}: {other:?}"),
    };
    assert_eq!(roster("u1@a.test"), ["kept@b.test"]);
    assert!(roster("u2@a.test").is_empty());

    std::fs::remove_file(&filler).expect("delete the filler");
    h.call(upsert("u2@a.test", "after@b.test"))
        .expect("a change once there is room again");
    assert_eq!(roster("u1@a.test"), ["kept@b.test"]);
    assert_eq!(roster("u2@a.test"), ["after@b.test"]);
    assert_eq!(h.stats().failures, 2, "{:?}", h.stats());
    h.shutdown();
    drop(tmpfs);
}
