//! The durable store (`fedrouter::store`), against BOTH backends: round trips, roster
//! versions, offline messages (XEP-0160: order, the per-user bound, delete, group
//! commit), reopening, the storage thread's group commit, ordering and back-pressure, and
//! durability of acknowledged changes across `kill -9` of the writing process. Each
//! shared test is a function of a [`Backend`], instantiated by [`both!`] as
//! `sqlite::NAME` (a temp folder) and `postgres::NAME` (a fresh database on the real
//! PostgreSQL server of `common/postgres.rs`). SQLite's own file, WAL and migration
//! checks, and PostgreSQL's migrations, reconnects and start errors
//! (`tests/store_postgres.rs`), are single-backend. The storage-thread tests are in
//! `store_suite/thread.rs`, the outbox, PEP and import ones in
//! `store_suite/outbox_pep_import.rs`.
//!
//! The kill tests re-run this test binary as the writer: `child_writer` does nothing
//! unless `FEDROUTER_STORE_CHILD` names a database (a file, or a `postgresql://` URL), in
//! which case it streams roster changes through a [`StoreHandle`] and prints `ACK <seq>`
//! to stdout for each acknowledged one until it is killed (or a bound of count and time
//! is hit).

#[path = "store_suite/outbox_pep_import.rs"]
mod outbox_pep_import;
#[path = "common/postgres.rs"]
mod pg;
#[path = "store_suite/thread.rs"]
mod thread;

use outbox_pep_import::{import_user_in_one_transaction, pending_out_and_pep_round_trip};
use thread::{
    batch_keeps_order_and_isolates_failures, full_queue_hands_the_op_back,
    handle_call_round_trip_and_many_in_flight, recv,
};

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fedrouter::presence::{SubState, Subscription};
use fedrouter::store::postgres::{PostgresOptions, PostgresStore};
use fedrouter::store::scram::{ScramCredentials, ScramHash};
use fedrouter::store::sqlite::{Durability, SqliteStore, SCHEMA_VERSION};
use fedrouter::store::{Change, Op, Outcome, Store, StoreError, StoreHandle, StoredItem};

fn creds(password: &str, hash: ScramHash) -> ScramCredentials {
    ScramCredentials::derive(password, hash, b"0123456789abcdef", 16).unwrap()
}

fn item(contact: &str, subscription: &str) -> StoredItem {
    StoredItem {
        contact: contact.into(),
        name: None,
        groups: vec![],
        subscription: subscription.into(),
        pending_out: false,
        pending_in: None,
        pre_approved: false,
        in_roster: true,
    }
}

fn upsert(user: &str, item: StoredItem) -> Change {
    Change::UpsertItem {
        user: user.into(),
        item,
    }
}

fn remove(user: &str, contact: &str) -> Change {
    Change::RemoveItem {
        user: user.into(),
        contact: contact.into(),
    }
}

/// Where a shared test's store lives; [`Backend::open`] may be called again to reopen it.
trait Backend {
    /// A new, empty store.
    fn fresh() -> Self
    where
        Self: Sized;
    /// Opens (or reopens) the store.
    fn open(&self) -> Box<dyn Store>;
    /// What `child_writer` is given to open it (`FEDROUTER_STORE_CHILD`).
    fn child_target(&self) -> String;
}

/// SQLite in a temp folder (`Durability::Crash`, as the other tests ran it, except where a
/// test says otherwise).
struct Sqlite {
    dir: tempfile::TempDir,
}

impl Backend for Sqlite {
    fn fresh() -> Self {
        Sqlite {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn open(&self) -> Box<dyn Store> {
        Box::new(SqliteStore::open_with(self.dir.path().join("db"), Durability::Crash).unwrap())
    }
    fn child_target(&self) -> String {
        self.dir.path().join("db").display().to_string()
    }
}

/// A fresh database on this process's PostgreSQL server.
struct Postgres {
    url: String,
}

impl Backend for Postgres {
    fn fresh() -> Self {
        Postgres {
            url: pg::fresh_database(),
        }
    }
    fn open(&self) -> Box<dyn Store> {
        Box::new(PostgresStore::connect(PostgresOptions::new(&self.url)).unwrap())
    }
    fn child_target(&self) -> String {
        self.url.clone()
    }
}

/// Instantiates each named `fn NAME(b: &dyn Backend)` as `sqlite::NAME` and
/// `postgres::NAME`.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $name() { super::$name(&<super::Sqlite as super::Backend>::fresh()) })*
        }
        mod postgres {
            $(#[test] fn $name() { super::$name(&<super::Postgres as super::Backend>::fresh()) })*
        }
    };
}

both!(
    users_and_credentials_round_trip,
    roster_apply_and_versions,
    blocklists_round_trip,
    offline_messages_order_bound_delete,
    reopen_after_drop_keeps_data,
    pending_out_and_pep_round_trip,
    import_user_in_one_transaction,
    full_queue_hands_the_op_back,
    batch_keeps_order_and_isolates_failures,
    handle_call_round_trip_and_many_in_flight,
    acknowledged_changes_survive_kill_9,
);

#[test]
fn sqlite_default_durability_is_power_loss() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path().join("db")).unwrap();
    assert_eq!(s.durability(), Durability::PowerLoss);
}

fn users_and_credentials_round_trip(b: &dyn Backend) {
    let mut s = b.open();
    let both = [
        creds("pencil", ScramHash::Sha1),
        creds("pencil", ScramHash::Sha256),
    ];
    s.add_user("cupuser1@cupdomain.com", &both).unwrap();
    s.add_user("cupuser2@cupdomain.com", &both[..1]).unwrap();
    s.add_user("alice@other.example", &[]).unwrap();
    assert_eq!(
        s.add_user("cupuser1@cupdomain.com", &[]),
        Err(StoreError::Exists("cupuser1@cupdomain.com".into()))
    );
    // Not normalised, no localpart, full JID: refused.
    for bad in [
        "CupUser1@cupdomain.com",
        "cupdomain.com",
        "a@b.example/r",
        "",
    ] {
        assert_eq!(
            s.add_user(bad, &[]),
            Err(StoreError::InvalidJid(bad.into()))
        );
    }
    assert!(matches!(
        s.add_user("dup@cupdomain.com", &[both[0].clone(), both[0].clone()]),
        Err(StoreError::InvalidCredentials(_))
    ));

    assert_eq!(
        s.list_users(None).unwrap(),
        [
            "alice@other.example",
            "cupuser1@cupdomain.com",
            "cupuser2@cupdomain.com"
        ]
    );
    assert_eq!(
        s.list_users(Some("cupdomain.com")).unwrap(),
        ["cupuser1@cupdomain.com", "cupuser2@cupdomain.com"]
    );
    assert!(s.list_users(Some("nowhere.example")).unwrap().is_empty());

    let c = s
        .credentials("cupuser1@cupdomain.com", ScramHash::Sha256)
        .unwrap()
        .unwrap();
    assert_eq!(c, both[1]);
    assert!(c.verify_password("pencil"));
    assert_eq!(
        s.credentials("cupuser2@cupdomain.com", ScramHash::Sha256)
            .unwrap(),
        None
    );
    assert_eq!(
        s.credentials("nobody@cupdomain.com", ScramHash::Sha1)
            .unwrap(),
        None
    );

    let new = creds("eraser", ScramHash::Sha256);
    assert!(s
        .set_credentials("cupuser2@cupdomain.com", std::slice::from_ref(&new))
        .unwrap());
    assert_eq!(
        s.credentials("cupuser2@cupdomain.com", ScramHash::Sha1)
            .unwrap(),
        None
    );
    assert_eq!(
        s.credentials("cupuser2@cupdomain.com", ScramHash::Sha256)
            .unwrap(),
        Some(new)
    );
    assert!(!s.set_credentials("nobody@cupdomain.com", &[]).unwrap());

    s.apply(&[upsert(
        "cupuser1@cupdomain.com",
        item("jdoe1@gmail.com", "both"),
    )])
    .unwrap();
    assert!(s.remove_user("cupuser1@cupdomain.com").unwrap());
    assert!(!s.remove_user("cupuser1@cupdomain.com").unwrap());
    assert_eq!(
        s.credentials("cupuser1@cupdomain.com", ScramHash::Sha1)
            .unwrap(),
        None
    );
    assert_eq!(
        s.roster("cupuser1@cupdomain.com"),
        Err(StoreError::NoSuchUser("cupuser1@cupdomain.com".into()))
    );
    // Re-created: empty roster at version 0, the old items are gone.
    s.add_user("cupuser1@cupdomain.com", &[]).unwrap();
    assert_eq!(s.roster("cupuser1@cupdomain.com").unwrap(), (0, vec![]));
}

fn roster_apply_and_versions(b: &dyn Backend) {
    let mut s = b.open();
    let u = "cupuser1@cupdomain.com";
    s.add_user(u, &[]).unwrap();
    s.add_user("other@cupdomain.com", &[]).unwrap();
    assert_eq!(s.roster(u).unwrap(), (0, vec![]));

    let mut jdoe = item("jdoe1@gmail.com", "none");
    jdoe.pending_out = true;
    jdoe.name = Some("J. Doe".into());
    jdoe.groups = vec!["Friends".into(), "Work, \"quoted\"".into()];
    let mut bob = item("bob@webex.example", "from");
    bob.pending_in = Some("<presence from='bob@webex.example' type='subscribe'/>".into());
    bob.pre_approved = true;
    assert_eq!(
        s.apply(&[upsert(u, jdoe.clone()), upsert(u, bob.clone())])
            .unwrap(),
        [1, 2]
    );
    assert_eq!(s.roster(u).unwrap(), (2, vec![bob.clone(), jdoe.clone()]));

    // Replace: subscribed came back.
    jdoe.pending_out = false;
    jdoe.subscription = "to".into();
    assert_eq!(s.apply(&[upsert(u, jdoe.clone())]).unwrap(), [3]);
    assert_eq!(s.roster(u).unwrap(), (3, vec![bob.clone(), jdoe.clone()]));

    // Remove (also of an absent contact) bumps the version; other users untouched.
    assert_eq!(
        s.apply(&[
            remove(u, "bob@webex.example"),
            remove(u, "absent@x.example")
        ])
        .unwrap(),
        [4, 5]
    );
    assert_eq!(s.roster(u).unwrap(), (5, vec![jdoe.clone()]));
    assert_eq!(s.roster("other@cupdomain.com").unwrap(), (0, vec![]));

    // All or nothing: an unknown user or an invalid item fails the whole apply.
    assert_eq!(
        s.apply(&[
            upsert(u, item("c@x.example", "both")),
            remove("ghost@cupdomain.com", "c")
        ]),
        Err(StoreError::NoSuchUser("ghost@cupdomain.com".into()))
    );
    assert!(matches!(
        s.apply(&[
            upsert(u, item("c@x.example", "both")),
            upsert(u, item("d@x", "maybe"))
        ]),
        Err(StoreError::InvalidItem(_))
    ));
    assert_eq!(s.roster(u).unwrap(), (5, vec![jdoe]));

    // A pending inbound request from a contact the user has not added: stored, not in the
    // roster proper (RFC 6121 Appendix A.1 "None + Pending In" without an item).
    let mut eve = item("eve@x.example", "none");
    eve.in_roster = false;
    eve.pending_in = Some("<presence from='eve@x.example' type='subscribe'/>".into());
    assert_eq!(
        s.apply(&[upsert("other@cupdomain.com", eve.clone())])
            .unwrap(),
        [1]
    );
    let (_, items) = s.roster("other@cupdomain.com").unwrap();
    assert_eq!(items, [eve.clone()]);
    assert_eq!(items[0].sub_state(), SubState::NONE_PENDING_IN);
    assert_eq!(bob.sub_state().subscription, Subscription::From);
    s.apply(&[remove("other@cupdomain.com", "eve@x.example")])
        .unwrap();

    // Group commit through the trait: groups fail alone.
    let good: Vec<Change> = vec![upsert(u, item("e@x.example", "none"))];
    let bad: Vec<Change> = vec![upsert("ghost@cupdomain.com", item("e@x.example", "none"))];
    let other: Vec<Change> = vec![upsert("other@cupdomain.com", item("f@x.example", "both"))];
    let res = s.apply_groups(&[&good, &bad, &other]).unwrap();
    assert_eq!(
        res,
        vec![
            Ok(vec![6]),
            Err(StoreError::NoSuchUser("ghost@cupdomain.com".into())),
            Ok(vec![3])
        ]
    );
    // Two groups of one user in one transaction: the version goes on across groups, and
    // the last one is what is stored.
    let g1: Vec<Change> = vec![upsert(u, item("g1@x.example", "none"))];
    let g2: Vec<Change> = vec![
        remove(u, "g1@x.example"),
        upsert(u, item("g2@x.example", "none")),
    ];
    assert_eq!(
        s.apply_groups(&[&g1, &bad, &g2]).unwrap(),
        vec![
            Ok(vec![7]),
            Err(StoreError::NoSuchUser("ghost@cupdomain.com".into())),
            Ok(vec![8, 9])
        ]
    );
    drop(s);
    let mut s = b.open();
    assert_eq!(s.roster(u).unwrap().0, 9);
    assert_eq!(s.apply(&[remove(u, "g2@x.example")]).unwrap(), [10]);
}

/// XEP-0191 block lists: block (idempotent), unblock some, unblock all, per user, kept
/// across a reopen, gone with the user; through the storage thread too.
fn blocklists_round_trip(b: &dyn Backend) {
    use fedrouter::store::BlocklistChange::{Block, Unblock};
    let mut s = b.open();
    s.add_user("a@d.example", &[]).unwrap();
    s.add_user("b@d.example", &[]).unwrap();
    let v = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(s.blocklist("a@d.example").unwrap(), v(&[]));
    s.change_blocklist("a@d.example", &Block(v(&["x@e.example", "e.example"])))
        .unwrap();
    s.change_blocklist("a@d.example", &Block(v(&["x@e.example", "y@e.example/r"])))
        .unwrap();
    assert_eq!(
        s.blocklist("a@d.example").unwrap(),
        v(&["e.example", "x@e.example", "y@e.example/r"])
    );
    assert_eq!(s.blocklist("b@d.example").unwrap(), v(&[]));
    s.change_blocklist(
        "a@d.example",
        &Unblock(v(&["e.example", "absent@e.example"])),
    )
    .unwrap();
    drop(s);
    let mut s = b.open();
    assert_eq!(
        s.blocklist("a@d.example").unwrap(),
        v(&["x@e.example", "y@e.example/r"])
    );
    s.change_blocklist("a@d.example", &Unblock(vec![])).unwrap();
    assert_eq!(s.blocklist("a@d.example").unwrap(), v(&[]));
    assert_eq!(
        s.blocklist("nobody@d.example"),
        Err(StoreError::NoSuchUser("nobody@d.example".into()))
    );
    assert_eq!(
        s.change_blocklist("nobody@d.example", &Block(v(&["x@e.example"]))),
        Err(StoreError::NoSuchUser("nobody@d.example".into()))
    );
    s.change_blocklist("b@d.example", &Block(v(&["x@e.example"])))
        .unwrap();
    assert!(s.remove_user("b@d.example").unwrap());
    s.add_user("b@d.example", &[]).unwrap();
    assert_eq!(
        s.blocklist("b@d.example").unwrap(),
        v(&[]),
        "removed with the user"
    );

    let h = StoreHandle::spawn(s, 8, 8);
    let op = Op::ChangeBlocklist {
        user: "a@d.example".into(),
        change: Block(v(&["z@e.example"])),
    };
    assert_eq!(h.call(op), Ok(Outcome::Done));
    let got = h.call(Op::Blocklist {
        user: "a@d.example".into(),
    });
    assert_eq!(got, Ok(Outcome::Jids(v(&["z@e.example"]))));
}

fn append(user: &str, n: u64, max: u32) -> Change {
    Change::AppendOffline {
        user: user.into(),
        stanza: format!("<message to='{user}' id='m{n}'><body>{n}</body></message>"),
        received_ms: 1_796_400_000_000 + n,
        max,
    }
}

/// XEP-0160 storage: appends keep their order and do not touch the roster version, the
/// per-user bound refuses the next one (nothing stored), a delete frees room, unknown
/// users are refused, removing the user removes its messages, and in one group commit
/// the bound counts what earlier groups of the same transaction stored.
fn offline_messages_order_bound_delete(b: &dyn Backend) {
    let mut s = b.open();
    let (u, v) = ("bob@d.example", "carol@d.example");
    s.add_user(u, &[]).unwrap();
    s.add_user(v, &[]).unwrap();
    assert_eq!(s.offline(u).unwrap(), vec![]);

    let ids: Vec<u64> = (1..=3)
        .map(|n| s.apply(&[append(u, n, 3)]).unwrap()[0])
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(
        s.apply(&[append(u, 4, 3)]).unwrap_err(),
        StoreError::OfflineFull(u.into())
    );
    // A larger bound lets it in; the bound is per user.
    assert_eq!(s.apply(&[append(v, 9, 1)]).unwrap().len(), 1);
    let stored = s.offline(u).unwrap();
    assert_eq!(
        stored.iter().map(|m| m.id).collect::<Vec<_>>(),
        ids,
        "{stored:?}"
    );
    assert_eq!(stored[0].received_ms, 1_796_400_000_001);
    assert!(stored[2].stanza.contains("id='m3'"), "{stored:?}");
    assert_eq!(
        s.roster(u).unwrap().0,
        0,
        "offline appends bump no roster version"
    );

    // Delete up to the second: one left, room for two more.
    assert_eq!(
        s.apply(&[Change::DeleteOffline {
            user: u.into(),
            up_to: ids[1]
        }])
        .unwrap(),
        [2]
    );
    assert_eq!(s.offline(u).unwrap().len(), 1);
    assert_eq!(
        s.apply(&[append(u, 5, 3), append(u, 6, 3)]).unwrap().len(),
        2
    );
    assert_eq!(
        s.apply(&[append(u, 7, 3)]).unwrap_err(),
        StoreError::OfflineFull(u.into())
    );

    // Group commit: three groups for one user with room for one; the first wins.
    s.apply(&[Change::DeleteOffline {
        user: u.into(),
        up_to: u64::MAX,
    }])
    .unwrap();
    let g1 = [append(u, 10, 1)];
    let g2 = [append(u, 11, 1)];
    let g3 = [append("nobody@d.example", 12, 1)];
    let results = s.apply_groups(&[&g1, &g2, &g3]).unwrap();
    assert!(results[0].is_ok(), "{results:?}");
    assert_eq!(results[1], Err(StoreError::OfflineFull(u.into())));
    assert_eq!(
        results[2],
        Err(StoreError::NoSuchUser("nobody@d.example".into()))
    );
    assert_eq!(s.offline(u).unwrap().len(), 1);
    // A delete in one group frees room for the next group of the same transaction.
    let d = [Change::DeleteOffline {
        user: u.into(),
        up_to: u64::MAX,
    }];
    let g4 = [append(u, 13, 1)];
    let g5 = [append(u, 14, 1)];
    let results = s.apply_groups(&[&d, &g4, &g5]).unwrap();
    assert_eq!(results[0], Ok(vec![1]));
    assert!(results[1].is_ok(), "{results:?}");
    assert_eq!(results[2], Err(StoreError::OfflineFull(u.into())));
    assert_eq!(s.offline(u).unwrap().len(), 1);
    assert_eq!(
        s.offline("nobody@d.example").unwrap_err(),
        StoreError::NoSuchUser("nobody@d.example".into())
    );

    // Through the storage thread, and gone with the user.
    drop(s);
    let h = StoreHandle::spawn(b.open(), 8, 8);
    match h.call(Op::Offline { user: u.into() }).unwrap() {
        Outcome::Offline(m) => assert_eq!(m.len(), 1, "{m:?}"),
        o => panic!("{o:?}"),
    }
    assert_eq!(
        h.call(Op::RemoveUser { jid: u.into() }).unwrap(),
        Outcome::Existed(true)
    );
    h.call(Op::AddUser {
        jid: u.into(),
        creds: vec![],
    })
    .unwrap();
    assert_eq!(
        h.call(Op::Offline { user: u.into() }).unwrap(),
        Outcome::Offline(vec![])
    );
    h.shutdown();
}

fn reopen_after_drop_keeps_data(b: &dyn Backend) {
    let u = "cupuser1@cupdomain.com";
    let c = creds("pencil", ScramHash::Sha256);
    {
        let mut s = b.open();
        s.add_user(u, std::slice::from_ref(&c)).unwrap();
        s.apply(&[upsert(u, item("jdoe1@gmail.com", "both"))])
            .unwrap();
    }
    let mut s = b.open();
    assert_eq!(s.list_users(None).unwrap(), [u]);
    assert_eq!(s.credentials(u, ScramHash::Sha256).unwrap(), Some(c));
    assert_eq!(
        s.roster(u).unwrap(),
        (1, vec![item("jdoe1@gmail.com", "both")])
    );
}

#[test]
fn migrations_are_idempotent_and_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    for _ in 0..3 {
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    }
    let raw = rusqlite::Connection::open(&path).unwrap();
    let rows: Vec<u32> = raw
        .prepare("SELECT version FROM schema_version ORDER BY version")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
    let mode: String = raw
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");

    raw.execute(
        "INSERT INTO schema_version (version, applied_at) VALUES (?1, 0)",
        [SCHEMA_VERSION + 1],
    )
    .unwrap();
    drop(raw);
    assert_eq!(
        SqliteStore::open(&path).unwrap_err(),
        StoreError::SchemaTooNew {
            found: SCHEMA_VERSION + 1,
            known: SCHEMA_VERSION
        }
    );
}

const CHILD_ENV: &str = "FEDROUTER_STORE_CHILD";
const CHILD_USERS: u64 = 8;

fn child_user(n: u64) -> String {
    format!("user{}@cupdomain.com", n % CHILD_USERS)
}

/// The writer of `acknowledged_changes_survive_kill_9`; a no-op in a normal run.
#[test]
fn child_writer() {
    let Ok(target) = std::env::var(CHILD_ENV) else {
        return;
    };
    let durability = match std::env::var("FEDROUTER_STORE_CHILD_DURABILITY").as_deref() {
        Ok("crash") => Durability::Crash,
        _ => Durability::PowerLoss,
    };
    let store: Box<dyn Store> = if target.starts_with("postgresql://") {
        Box::new(PostgresStore::connect(PostgresOptions::new(target)).unwrap())
    } else {
        Box::new(SqliteStore::open_with(target, durability).unwrap())
    };
    let h = StoreHandle::spawn(store, 256, 1024);
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut out = std::io::stdout().lock();
    let (mut next, mut in_flight) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(60);
    // Bounded: the parent kills us long before either bound.
    while next < 1_000_000 && Instant::now() < deadline {
        while in_flight < 64 {
            let mut it = item(&format!("c{next}@gmail.com"), "none");
            it.pending_out = true;
            it.name = Some(next.to_string());
            let op = Op::Apply(vec![upsert(&child_user(next), it)]);
            if h.submit_unnotified(op, tx.clone(), next).is_err() {
                break;
            }
            next += 1;
            in_flight += 1;
        }
        let r = recv(&rx);
        assert!(matches!(r.result, Ok(Outcome::Applied(_))), "{r:?}");
        in_flight -= 1;
        writeln!(out, "ACK {}", r.tag).unwrap();
        out.flush().unwrap();
    }
}

/// Runs the writer child on `b`'s fresh store, kills it with SIGKILL after `kill_after`
/// acknowledgements, and checks every acknowledged change is in the reopened store.
fn kill_9_run(b: &dyn Backend, durability: &str, kill_after: usize) {
    {
        let mut s = b.open();
        for n in 0..CHILD_USERS {
            s.add_user(&child_user(n), &[]).unwrap();
        }
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child_writer", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, b.child_target())
        .env("FEDROUTER_STORE_CHILD_DURABILITY", durability)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked: Vec<u64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // The read blocks only while the child runs; it is killed below and bounded by its own
    // deadline, so this loop ends.
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("ACK ") {
            acked.push(n.parse().unwrap());
        }
        if acked.len() >= kill_after || Instant::now() > deadline {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix
                           // Acks printed before the kill landed count too.
    for line in lines {
        let Ok(line) = line else { break };
        if let Some(n) = line.strip_prefix("ACK ") {
            acked.push(n.parse().unwrap());
        }
    }
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the writer was killed, not finished: {status:?}"
    );
    assert!(
        acked.len() >= kill_after,
        "the writer acknowledged only {} changes",
        acked.len()
    );

    let mut s = b.open();
    let mut missing = Vec::new();
    let mut total_version = 0;
    let mut stored = std::collections::HashSet::new();
    for n in 0..CHILD_USERS {
        let (version, items) = s.roster(&child_user(n)).unwrap();
        assert_eq!(version as usize, items.len(), "one version per change");
        total_version += version;
        for it in items {
            stored.insert(it.name.unwrap().parse::<u64>().unwrap());
        }
    }
    for seq in &acked {
        if !stored.contains(seq) {
            missing.push(*seq);
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged changes lost after kill -9 ({durability}): {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(total_version as usize >= acked.len());
    eprintln!(
        "kill -9 ({durability}): {} changes acknowledged before SIGKILL, {} stored",
        acked.len(),
        stored.len()
    );
}

/// SQLite's default (`synchronous=FULL`) and PostgreSQL (`synchronous_commit = on`).
fn acknowledged_changes_survive_kill_9(b: &dyn Backend) {
    kill_9_run(b, "power-loss", 1000);
}

#[test]
fn acknowledged_changes_survive_kill_9_sqlite_crash_durability() {
    kill_9_run(&Sqlite::fresh(), "crash", 3000);
}
