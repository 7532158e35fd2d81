//! What only the PostgreSQL store has (`fedrouter::store::postgres`), against a real
//! server (`common/postgres.rs`): schema migrations at connect, durable-commit session
//! settings, start errors naming the redacted URL, a broken connection failing its batch
//! (never acknowledged) and the next batch reconnecting, the back-off while the server
//! refuses, and the status (`/health`'s `"store"`) through all of it. The shared store
//! semantics are in `tests/store.rs` (`postgres::*`).

#[path = "common/postgres.rs"]
mod pg;

use std::time::{Duration, Instant};

use fedrouter::presence::Subscription;
use fedrouter::store::postgres::{PostgresOptions, PostgresStore, SCHEMA_VERSION};
use fedrouter::store::{
    Change, Op, Outcome, Store, StoreError, StoreHandle, StoreState, StoredItem,
};

fn item(contact: &str) -> StoredItem {
    StoredItem {
        contact: contact.into(),
        name: None,
        groups: vec!["Friends".into()],
        subscription: "both".into(),
        pending_out: false,
        pending_in: None,
        pre_approved: false,
        in_roster: true,
    }
}

fn upsert(user: &str, contact: &str) -> Op {
    Op::Apply(vec![Change::UpsertItem {
        user: user.into(),
        item: item(contact),
    }])
}

/// A superuser connection to the database of `url`.
fn admin(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).expect("admin connection")
}

fn dbname(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

/// Terminates the store's server process(es) for `url`'s database (the connection the
/// store holds); how many.
fn terminate_store_connection(url: &str) -> i64 {
    let mut a = admin(&pg::url("postgres"));
    a.query_one(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = $1 AND application_name = 'fedrouter'",
        &[&dbname(url)],
    )
    .unwrap()
    .get(0)
}

#[test]
fn migrations_are_idempotent_and_newer_schema_is_refused() {
    let url = pg::fresh_database();
    for _ in 0..3 {
        let mut s = PostgresStore::connect(PostgresOptions::new(&url)).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    }
    let mut raw = admin(&url);
    let rows: Vec<i32> = raw
        .query("SELECT version FROM schema_version ORDER BY version", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows, (1..=SCHEMA_VERSION as i32).collect::<Vec<_>>());
    raw.execute(
        "INSERT INTO schema_version (version) VALUES ($1)",
        &[&(SCHEMA_VERSION as i32 + 1)],
    )
    .unwrap();
    assert_eq!(
        PostgresStore::connect(PostgresOptions::new(&url)).unwrap_err(),
        StoreError::SchemaTooNew {
            found: SCHEMA_VERSION + 1,
            known: SCHEMA_VERSION
        }
    );
}

/// Commits are durable before they are answered: the store's session runs with
/// `synchronous_commit = on` even when the database's default says off.
#[test]
fn session_commits_synchronously_whatever_the_database_default() {
    let url = pg::fresh_database();
    admin(&url)
        .batch_execute(&format!(
            "ALTER DATABASE {} SET synchronous_commit = off",
            dbname(&url)
        ))
        .unwrap();
    let mut s = PostgresStore::connect(PostgresOptions::new(&url)).unwrap();
    s.add_user("a@d.example", &[]).unwrap();
    assert_eq!(s.setting("synchronous_commit").unwrap(), "on");
    assert_eq!(s.setting("statement_timeout").unwrap(), "30s");
    // A new session of the same database does get the database default, so the store's
    // `on` is its own setting.
    let off: String = admin(&url)
        .query_one("SHOW synchronous_commit", &[])
        .unwrap()
        .get(0);
    assert_eq!(off, "off");
    // One connection per store: no pool.
    let n: i64 = admin(&pg::url("postgres"))
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1
             AND application_name = 'fedrouter'",
            &[&dbname(&url)],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    assert_eq!(
        s.apply(&[Change::UpsertItem {
            user: "a@d.example".into(),
            item: item("c@x.example"),
        }])
        .unwrap(),
        [1]
    );
}

#[test]
fn unreachable_or_refusing_server_at_start_names_the_redacted_url() {
    let port = std::net::TcpListener::bind((pg::PG_ADDR, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Nothing listens on `port` any more.
    let url = format!("postgresql://fed:hunter2@{}:{port}/nowhere", pg::PG_ADDR);
    let e = PostgresStore::connect(PostgresOptions::new(&url))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!(
            "postgresql://fed:***@{}:{port}/nowhere",
            pg::PG_ADDR
        )) && e.contains("cannot connect")
            && !e.contains("hunter2"),
        "{e}"
    );
    // Wrong password on the real server.
    let real = pg::fresh_database().replace(pg::PG_PASSWORD, "wrong-password");
    let e = PostgresStore::connect(PostgresOptions::new(&real))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("postgres:***@") && e.contains("password") && !e.contains("wrong-password"),
        "{e}"
    );
}

/// The connection breaks under the store: the batch that meets it fails (never
/// acknowledged), the next one reconnects and succeeds; the status says so. The store is
/// used directly, without the storage thread, whose idle check (every
/// `fedrouter::store::IDLE_CHECK`) could otherwise find the broken connection first
/// (`tests/store_serve.rs` covers that path).
#[test]
fn broken_connection_fails_one_batch_then_reconnects() {
    let url = pg::fresh_database();
    let mut s = PostgresStore::connect(PostgresOptions::new(&url)).unwrap();
    let status = s.status();
    s.add_user("a@d.example", &[]).unwrap();
    let apply = |s: &mut PostgresStore, contact: &str| {
        s.apply_groups(&[&[Change::UpsertItem {
            user: "a@d.example".into(),
            item: item(contact),
        }]])
    };
    assert_eq!(apply(&mut s, "c1@x.example"), Ok(vec![Ok(vec![1])]));
    assert_eq!(terminate_store_connection(&url), 1);
    match apply(&mut s, "c2@x.example") {
        Err(StoreError::Backend(m)) => {
            assert!(
                m.contains("connection lost") && !m.contains(pg::PG_PASSWORD),
                "{m}"
            )
        }
        other => panic!("a batch on a broken connection must fail: {other:?}"),
    }
    let r = status.report();
    assert_eq!(r.state_name(), "down");
    assert_eq!(r.connection_failures, 1);
    assert_eq!(
        apply(&mut s, "c3@x.example"),
        Ok(vec![Ok(vec![2])]),
        "the failed change was not stored, the next one is"
    );
    let r = status.report();
    assert_eq!((r.state_name(), r.reconnects), ("up", 1));
    let (v, items) = s.roster("a@d.example").unwrap();
    assert_eq!(v, 2);
    assert_eq!(
        items.iter().map(|i| i.contact.as_str()).collect::<Vec<_>>(),
        ["c1@x.example", "c3@x.example"]
    );
    assert_eq!(items[0].sub_state().subscription, Subscription::Both);
    assert_eq!(items[0].groups, ["Friends"]);

    // Through the storage thread, a failed batch is answered with the error, never
    // `Applied`.
    let h = StoreHandle::spawn(Box::new(s), 64, 64);
    assert_eq!(terminate_store_connection(&url), 1);
    let r = h.call(upsert("a@d.example", "c4@x.example"));
    // Either this batch met the broken connection (an error) or the idle check found it
    // first and reconnected (applied): never an acknowledgement of a lost change.
    match r {
        Err(StoreError::Backend(_)) | Ok(Outcome::Applied(_)) => {}
        other => panic!("{other:?}"),
    }
    let Ok(Outcome::Roster((_, items))) = h.call(Op::Roster {
        user: "a@d.example".into(),
    }) else {
        panic!("roster");
    };
    let stored = items.iter().any(|i| i.contact == "c4@x.example");
    assert_eq!(stored, r.is_ok(), "acknowledged if and only if stored");
    h.shutdown();
}

/// The server refuses connections for a while: requests fail (down, the last error, a
/// back-off during which no connection is tried), then it accepts again and the store
/// comes back by itself on the next request after the back-off.
#[test]
fn refusing_server_backs_off_then_recovers() {
    let url = pg::fresh_database();
    let mut options = PostgresOptions::new(&url);
    options.reconnect_initial = Duration::from_millis(200);
    options.reconnect_max = Duration::from_millis(400);
    let mut s = PostgresStore::connect(options).unwrap();
    let status = s.status();
    s.add_user("a@d.example", &[]).unwrap();
    let db = dbname(&url).to_owned();
    let mut a = admin(&pg::url("postgres"));
    a.batch_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"))
        .unwrap();
    assert_eq!(terminate_store_connection(&url), 1);
    // Connection lost, then the reconnect is refused.
    assert!(s.list_users(None).is_err());
    let e = s.list_users(None).unwrap_err().to_string();
    assert!(e.contains("cannot connect"), "{e}");
    // Within the back-off: refused at once, without a connection attempt.
    let failures = status.report().connection_failures;
    let e = s.list_users(None).unwrap_err().to_string();
    assert!(e.contains("next attempt in"), "{e}");
    assert_eq!(status.report().connection_failures, failures);
    let r = status.report();
    assert!(
        matches!(&r.state, StoreState::Down(m) if m.contains("cannot connect")),
        "{r:?}"
    );
    assert_eq!(r.to_json()["state"], "down");

    a.batch_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"))
        .unwrap();
    // Bounded in count and time. While the back-off runs, a request is refused at once
    // and says when the next attempt is: wait for that moment, then ask again.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut tries = 0;
    let users = loop {
        tries += 1;
        assert!(tries < 50 && Instant::now() < deadline, "never recovered");
        match s.list_users(None) {
            Ok(u) => break u,
            Err(e) => {
                let e = e.to_string();
                if let Some(ms) = e
                    .split("next attempt in ")
                    .nth(1)
                    .and_then(|r| r.split(' ').next())
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    std::thread::sleep(Duration::from_millis(ms + 1));
                }
            }
        }
    };
    assert_eq!(users, ["a@d.example"]);
    let r = status.report();
    assert_eq!((r.state_name(), r.reconnects), ("up", 1));
    assert!(r.connection_failures >= 2, "{r:?}");
}
