//! [`Store`] on an embedded SQLite database (`rusqlite`, SQLite compiled in).
//!
//! # Durability
//!
//! The database runs in WAL mode (`journal_mode=WAL`): a commit appends the transaction's
//! pages to the `-wal` file; readers are not blocked; pages are copied back to the main
//! file by checkpoints (every ~1000 WAL pages, SQLite's default). What a commit waits for
//! is set by `PRAGMA synchronous` ([`Durability`]):
//!
//! - `FULL` ([`Durability::PowerLoss`], the default): every commit fsyncs the WAL before
//!   it returns. A committed transaction survives a process crash (`kill -9`) and an OS
//!   crash or power loss.
//! - `NORMAL` ([`Durability::Crash`]): commits only `write()` the WAL; fsync happens at
//!   checkpoints. A committed transaction survives a process crash (its pages are in the
//!   OS page cache, which outlives the process), but the last transactions before an OS
//!   crash or power loss may be rolled back. The database is never corrupted either way.
//!
//! The default is `FULL` because DESIGN.md promises that an acknowledged subscription
//! request or roster change is never lost, and a reboot of the machine is a restart too.
//! With group commit ([`super::StoreHandle`]) one fsync covers a whole batch, so `FULL`
//! still reaches the target rate; `benches/store.rs` measures both (see its header for the
//! numbers on the development machine). `NORMAL` is for deployments whose storage has a
//! battery-backed or otherwise power-safe write cache.
//!
//! # Schema
//!
//! Migrations are ordered SQL scripts ([`SCHEMA_VERSION`] of them); `schema_version` holds
//! one row per applied migration. [`SqliteStore::open`] applies the missing ones in one
//! `BEGIN IMMEDIATE` transaction (so two processes opening a new database do not both
//! migrate it), and refuses a database from a newer build
//! ([`StoreError::SchemaTooNew`]).
//!
//! ```text
//! users(id PK, jid UNIQUE, domain, roster_version)
//! credentials(user_id, mechanism, salt, iterations, stored_key, server_key)  PK(user_id, mechanism)
//! roster(user_id, contact, name, groups JSON, subscription, pending_out, pending_in,
//!        pre_approved, in_roster)                                              PK(user_id, contact)
//! offline(id PK, user_id, received_ms, stanza)          INDEX(user_id, id)   (XEP-0160)
//! pep_nodes(user_id, node, access_model, max_items)                           PK(user_id, node)
//! pep_items(user_id, node, item_id, seq, payload)                    PK(user_id, node, item_id)
//! ```
//!
//! Statements are prepared once per connection and cached (`prepare_cached`). Tuning:
//! [`CACHE_KIB`], [`WAL_AUTOCHECKPOINT_PAGES`], [`JOURNAL_SIZE_LIMIT`], [`BUSY_TIMEOUT`].

mod pep;

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{
    merge_imported, same_credentials, BlocklistChange, Change, ImportOutcome, OfflineMessage,
    PepPublish, Roster, ScramCredentials, ScramHash, Store, StoreError, StoredItem, StoredPepNode,
};
use crate::jid::BareJid;

/// What a commit survives (`PRAGMA synchronous` in WAL mode; see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=NORMAL`: survives a process crash (`kill -9`), not an OS crash or
    /// power loss (the last commits may roll back; no corruption).
    Crash,
    /// `synchronous=FULL`: every commit is fsynced; survives power loss. The default.
    #[default]
    PowerLoss,
}

impl Durability {
    /// The `PRAGMA synchronous` value: `NORMAL` or `FULL`.
    pub fn synchronous(self) -> &'static str {
        match self {
            Durability::Crash => "NORMAL",
            Durability::PowerLoss => "FULL",
        }
    }
}

/// The migrations, in order: migration `n` (1-based) brings the schema from version
/// `n - 1` to `n`. Append only; never edit a released one.
const MIGRATIONS: &[&str] = &[
    // 1: users, SCRAM credentials, rosters.
    "CREATE TABLE users (
         id             INTEGER PRIMARY KEY,
         jid            TEXT NOT NULL UNIQUE,
         domain         TEXT NOT NULL,
         roster_version INTEGER NOT NULL DEFAULT 0
     );
     CREATE INDEX users_by_domain ON users (domain, jid);
     CREATE TABLE credentials (
         user_id    INTEGER NOT NULL,
         mechanism  TEXT NOT NULL,
         salt       BLOB NOT NULL,
         iterations INTEGER NOT NULL,
         stored_key BLOB NOT NULL,
         server_key BLOB NOT NULL,
         PRIMARY KEY (user_id, mechanism)
     ) WITHOUT ROWID;
     CREATE TABLE roster (
         user_id      INTEGER NOT NULL,
         contact      TEXT NOT NULL,
         name         TEXT,
         groups       TEXT NOT NULL,
         subscription TEXT NOT NULL,
         pending_out  INTEGER NOT NULL,
         pending_in   TEXT,
         pre_approved INTEGER NOT NULL,
         in_roster    INTEGER NOT NULL,
         PRIMARY KEY (user_id, contact)
     ) WITHOUT ROWID;",
    // 2: block lists (XEP-0191).
    "CREATE TABLE blocklist (
         user_id INTEGER NOT NULL,
         jid     TEXT NOT NULL,
         PRIMARY KEY (user_id, jid)
     ) WITHOUT ROWID;",
    // 3: offline messages (XEP-0160), in the order stored (`id` increases).
    "CREATE TABLE offline (
         id          INTEGER PRIMARY KEY,
         user_id     INTEGER NOT NULL,
         received_ms INTEGER NOT NULL,
         stanza      TEXT NOT NULL
     );
     CREATE INDEX offline_by_user ON offline (user_id, id);",
    // 4: PEP (XEP-0163): nodes and their items; `seq` orders a node's items (oldest first).
    "CREATE TABLE pep_nodes (
         user_id      INTEGER NOT NULL,
         node         TEXT NOT NULL,
         access_model TEXT NOT NULL,
         max_items    INTEGER NOT NULL,
         PRIMARY KEY (user_id, node)
     ) WITHOUT ROWID;
     CREATE TABLE pep_items (
         user_id INTEGER NOT NULL,
         node    TEXT NOT NULL,
         item_id TEXT NOT NULL,
         seq     INTEGER NOT NULL,
         payload TEXT NOT NULL,
         PRIMARY KEY (user_id, node, item_id)
     ) WITHOUT ROWID;",
];

/// The schema version this build creates and understands: the number of migrations.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// How long a statement waits for another process's lock (e.g. `fedrouter user add`
/// while the server runs) before failing with [`StoreError::Backend`].
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite's page cache for the connection, in KiB (`PRAGMA cache_size`, negative = KiB):
/// 64 MiB instead of SQLite's 2 MiB, so that the rosters a busy server touches stay in
/// process memory instead of being re-read from the OS page cache for every change.
pub const CACHE_KIB: i64 = 64 * 1024;

/// WAL pages after which a commit runs a checkpoint (`PRAGMA wal_autocheckpoint`):
/// 10,000 pages (~40 MiB at 4 KiB pages) instead of SQLite's 1,000. Roster changes hit
/// random pages, so every change dirties a page of its own; with the default, a group
/// commit of a few hundred changes checkpointed every second or third commit, and the
/// checkpoint (copying pages back and fsyncing the database file) was half of the
/// storage thread's time. A longer WAL lets a checkpoint copy a page once for many
/// commits: `benches/store.rs` measured about twice the durable changes/s. The cost: up to
/// ~40 MiB of WAL to replay when the database is opened after a crash (well under a
/// second), and a longer (tens of ms) commit when a checkpoint runs.
pub const WAL_AUTOCHECKPOINT_PAGES: i64 = 10_000;

/// The WAL file is truncated to this many bytes (64 MiB) when a checkpoint lets it start
/// over (`PRAGMA journal_size_limit`), so one burst does not leave a large file behind.
pub const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// A [`Store`] in one SQLite database file (WAL mode).
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    durability: Durability,
}

/// A database error as a [`StoreError`]: `SQLITE_FULL` (disk or file system full, file
/// size limit) is [`StoreError::Full`], anything else [`StoreError::Backend`].
fn db(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => StoreError::Full(e.to_string()),
        _ => StoreError::Backend(e.to_string()),
    }
}

impl SqliteStore {
    /// Opens (creating it if needed) the database at `path` with the default
    /// [`Durability::PowerLoss`], and migrates it to [`SCHEMA_VERSION`].
    ///
    /// Errors: [`StoreError::Backend`] (cannot open, not a database, WAL unavailable),
    /// [`StoreError::SchemaTooNew`].
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        Self::open_with(path, Durability::default())
    }

    /// [`Self::open`] with the given durability.
    pub fn open_with(
        path: impl AsRef<Path>,
        durability: Durability,
    ) -> Result<SqliteStore, StoreError> {
        let mut conn = Connection::open(path).map_err(db)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(db)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!(
                "journal_mode is {mode}, WAL unavailable"
            )));
        }
        conn.pragma_update(None, "synchronous", durability.synchronous())
            .map_err(db)?;
        conn.pragma_update(None, "cache_size", -CACHE_KIB)
            .map_err(db)?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)
            .map_err(db)?;
        conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)
            .map_err(db)?;
        conn.set_prepared_statement_cache_capacity(32);
        migrate(&mut conn)?;
        Ok(SqliteStore { conn, durability })
    }

    /// The durability this store was opened with.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// The schema version recorded in the database (the highest applied migration).
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        current_version(&self.conn)
    }
}

fn current_version(conn: &Connection) -> Result<u32, StoreError> {
    conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |r| r.get(0),
    )
    .map_err(db)
}

/// Applies the missing migrations in one immediate transaction.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version    INTEGER PRIMARY KEY,
             applied_at INTEGER NOT NULL
         )",
    )
    .map_err(db)?;
    let found = current_version(&tx)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.execute_batch(sql).map_err(db)?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?1, unixepoch())",
            [i as u32 + 1],
        )
        .map_err(db)?;
    }
    tx.commit().map_err(db)
}

/// Checks a credential set: at most one per hash, keys of the hash's length.
fn check_creds(creds: &[ScramCredentials]) -> Result<(), StoreError> {
    for (i, c) in creds.iter().enumerate() {
        if creds[..i].iter().any(|d| d.mechanism == c.mechanism) {
            return Err(StoreError::InvalidCredentials("two for one hash"));
        }
        let len = c.mechanism.output_len();
        if c.stored_key.len() != len || c.server_key.len() != len || c.iterations == 0 {
            return Err(StoreError::InvalidCredentials(
                "key length or iteration count does not fit the hash",
            ));
        }
    }
    Ok(())
}

fn insert_creds(
    conn: &Connection,
    user_id: i64,
    creds: &[ScramCredentials],
) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO credentials (user_id, mechanism, salt, iterations, stored_key, server_key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .map_err(db)?;
    for c in creds {
        stmt.execute(params![
            user_id,
            c.mechanism.mechanism(),
            c.salt,
            c.iterations,
            c.stored_key,
            c.server_key
        ])
        .map_err(db)?;
    }
    Ok(())
}

/// Every stored credential of user row `id`; an unknown mechanism name is
/// [`StoreError::Corrupt`].
fn stored_creds(conn: &Connection, id: i64) -> Result<Vec<ScramCredentials>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT mechanism, salt, iterations, stored_key, server_key
             FROM credentials WHERE user_id = ?1",
        )
        .map_err(db)?;
    let mut rows = stmt.query([id]).map_err(db)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(db)? {
        let name: String = r.get(0).map_err(db)?;
        let mechanism = ScramHash::from_mechanism(&name)
            .ok_or_else(|| StoreError::Corrupt(format!("credentials mechanism {name:?}")))?;
        out.push(ScramCredentials {
            mechanism,
            salt: r.get(1).map_err(db)?,
            iterations: r.get(2).map_err(db)?,
            stored_key: r.get(3).map_err(db)?,
            server_key: r.get(4).map_err(db)?,
        });
    }
    Ok(out)
}

/// The stored roster row of user row `id` for `contact`, if any.
fn stored_row(conn: &Connection, id: i64, contact: &str) -> Result<Option<StoredItem>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT name, groups, subscription, pending_out, pending_in, pre_approved, in_roster
             FROM roster WHERE user_id = ?1 AND contact = ?2",
        )
        .map_err(db)?
        .query_row(params![id, contact], |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, bool>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, bool>(5)?,
                r.get::<_, bool>(6)?,
            ))
        })
        .optional()
        .map_err(db)?;
    let Some((name, groups, subscription, pending_out, pending_in, pre_approved, in_roster)) = row
    else {
        return Ok(None);
    };
    Ok(Some(StoredItem {
        contact: contact.to_owned(),
        name,
        groups: serde_json::from_str(&groups)
            .map_err(|e| StoreError::Corrupt(format!("roster groups: {e}")))?,
        subscription,
        pending_out,
        pending_in,
        pre_approved,
        in_roster,
    }))
}

fn user_id(conn: &Connection, jid: &str) -> Result<Option<i64>, StoreError> {
    conn.prepare_cached("SELECT id FROM users WHERE jid = ?1")
        .map_err(db)?
        .query_row([jid], |r| r.get(0))
        .optional()
        .map_err(db)
}

fn check_item(item: &StoredItem) -> Result<(), StoreError> {
    if !matches!(item.subscription.as_str(), "none" | "to" | "from" | "both") {
        return Err(StoreError::InvalidItem(
            "subscription is not none, to, from or both",
        ));
    }
    if item.contact.is_empty() {
        return Err(StoreError::InvalidItem("empty contact"));
    }
    Ok(())
}

/// One user of a validated group: row id, roster version (before the group, then as
/// changed), whether a roster change bumped it, and offline messages stored now (before
/// the group, then as appended).
struct GroupUser {
    id: i64,
    version: u64,
    bumped: bool,
    offline: Option<u64>,
}

/// A validated group: its distinct users and, per change, the index of its user there.
struct Resolved {
    users: Vec<GroupUser>,
    user_of: Vec<usize>,
}

/// Validates a group of changes and reads its users' ids and roster versions (and, for
/// offline appends, how many messages each has), writing nothing.
fn resolve(conn: &Connection, changes: &[Change]) -> Result<Resolved, StoreError> {
    let mut users: Vec<GroupUser> = Vec::new();
    let mut user_of = Vec::with_capacity(changes.len());
    for (i, ch) in changes.iter().enumerate() {
        if let Change::UpsertItem { item, .. } = ch {
            check_item(item)?;
        }
        let user = ch.user();
        let u = match changes[..i].iter().position(|c| c.user() == user) {
            Some(p) => user_of[p],
            None => {
                let (id, version): (i64, i64) = conn
                    .prepare_cached("SELECT id, roster_version FROM users WHERE jid = ?1")
                    .map_err(db)?
                    .query_row([user], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
                    .map_err(db)?
                    .ok_or_else(|| StoreError::NoSuchUser(user.into()))?;
                users.push(GroupUser {
                    id,
                    version: version as u64,
                    bumped: false,
                    offline: None,
                });
                users.len() - 1
            }
        };
        user_of.push(u);
        if let Change::AppendOffline { max, .. } = ch {
            let g = &mut users[u];
            let stored = match g.offline {
                Some(n) => n,
                None => conn
                    .prepare_cached("SELECT COUNT(*) FROM offline WHERE user_id = ?1")
                    .map_err(db)?
                    .query_row([g.id], |r| r.get::<_, i64>(0))
                    .map_err(db)? as u64,
            };
            if stored >= u64::from(*max) {
                return Err(StoreError::OfflineFull(user.into()));
            }
            g.offline = Some(stored + 1);
        }
    }
    Ok(Resolved { users, user_of })
}

/// Writes a validated group, then each of its users' new roster version (one bump per
/// roster change); returns per change what [`Store::apply`] does. Any error here is a
/// database failure.
fn write(conn: &Connection, changes: &[Change], mut r: Resolved) -> Result<Vec<u64>, StoreError> {
    let mut versions = Vec::with_capacity(changes.len());
    for (ch, &u) in changes.iter().zip(&r.user_of) {
        let id = r.users[u].id;
        match ch {
            Change::UpsertItem { item, .. } => {
                let groups = serde_json::to_string(&item.groups).expect("strings serialise");
                conn.prepare_cached(
                    "INSERT INTO roster (user_id, contact, name, groups, subscription,
                                         pending_out, pending_in, pre_approved, in_roster)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT (user_id, contact) DO UPDATE SET
                         name = excluded.name, groups = excluded.groups,
                         subscription = excluded.subscription,
                         pending_out = excluded.pending_out, pending_in = excluded.pending_in,
                         pre_approved = excluded.pre_approved, in_roster = excluded.in_roster",
                )
                .map_err(db)?
                .execute(params![
                    id,
                    item.contact,
                    item.name,
                    groups,
                    item.subscription,
                    item.pending_out,
                    item.pending_in,
                    item.pre_approved,
                    item.in_roster
                ])
                .map_err(db)?;
            }
            Change::RemoveItem { contact, .. } => {
                conn.prepare_cached("DELETE FROM roster WHERE user_id = ?1 AND contact = ?2")
                    .map_err(db)?
                    .execute(params![id, contact])
                    .map_err(db)?;
            }
            Change::AppendOffline {
                stanza,
                received_ms,
                ..
            } => {
                conn.prepare_cached(
                    "INSERT INTO offline (user_id, received_ms, stanza) VALUES (?1, ?2, ?3)",
                )
                .map_err(db)?
                .execute(params![id, *received_ms as i64, stanza])
                .map_err(db)?;
                versions.push(conn.last_insert_rowid() as u64);
                continue;
            }
            Change::DeleteOffline { up_to, .. } => {
                let n = conn
                    .prepare_cached("DELETE FROM offline WHERE user_id = ?1 AND id <= ?2")
                    .map_err(db)?
                    .execute(params![id, i64::try_from(*up_to).unwrap_or(i64::MAX)])
                    .map_err(db)?;
                versions.push(n as u64);
                continue;
            }
        }
        let g = &mut r.users[u];
        g.version += 1;
        g.bumped = true;
        versions.push(g.version);
    }
    let mut bump = conn
        .prepare_cached("UPDATE users SET roster_version = ?2 WHERE id = ?1")
        .map_err(db)?;
    for g in r.users.iter().filter(|g| g.bumped) {
        bump.execute(params![g.id, g.version as i64]).map_err(db)?;
    }
    Ok(versions)
}

impl Store for SqliteStore {
    fn blocklist(&mut self, user: &str) -> Result<Vec<String>, StoreError> {
        let id = user_id(&self.conn, user)?.ok_or_else(|| StoreError::NoSuchUser(user.into()))?;
        let mut stmt = self
            .conn
            .prepare_cached("SELECT jid FROM blocklist WHERE user_id = ?1 ORDER BY jid")
            .map_err(db)?;
        let rows = stmt.query_map([id], |r| r.get(0)).map_err(db)?;
        rows.collect::<Result<Vec<String>, _>>().map_err(db)
    }

    fn change_blocklist(&mut self, user: &str, change: &BlocklistChange) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let id = user_id(&tx, user)?.ok_or_else(|| StoreError::NoSuchUser(user.into()))?;
        match change {
            BlocklistChange::Block(jids) => {
                let mut ins = tx
                    .prepare_cached(
                        "INSERT INTO blocklist (user_id, jid) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                    )
                    .map_err(db)?;
                for j in jids {
                    ins.execute(params![id, j]).map_err(db)?;
                }
            }
            BlocklistChange::Unblock(jids) if jids.is_empty() => {
                tx.prepare_cached("DELETE FROM blocklist WHERE user_id = ?1")
                    .map_err(db)?
                    .execute([id])
                    .map_err(db)?;
            }
            BlocklistChange::Unblock(jids) => {
                let mut del = tx
                    .prepare_cached("DELETE FROM blocklist WHERE user_id = ?1 AND jid = ?2")
                    .map_err(db)?;
                for j in jids {
                    del.execute(params![id, j]).map_err(db)?;
                }
            }
        }
        tx.commit().map_err(db)
    }

    fn add_user(&mut self, jid: &str, creds: &[ScramCredentials]) -> Result<(), StoreError> {
        match BareJid::new(jid) {
            Ok(b) if b.as_str() == jid && b.node().is_some() => {}
            _ => return Err(StoreError::InvalidJid(jid.into())),
        }
        check_creds(creds)?;
        let domain = crate::jid::domain_of(jid);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let inserted = tx
            .prepare_cached(
                "INSERT INTO users (jid, domain) VALUES (?1, ?2) ON CONFLICT (jid) DO NOTHING",
            )
            .map_err(db)?
            .execute(params![jid, domain])
            .map_err(db)?;
        if inserted == 0 {
            return Err(StoreError::Exists(jid.into()));
        }
        let id = tx.last_insert_rowid();
        insert_creds(&tx, id, creds)?;
        tx.commit().map_err(db)
    }

    fn remove_user(&mut self, jid: &str) -> Result<bool, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let Some(id) = user_id(&tx, jid)? else {
            return Ok(false);
        };
        for sql in [
            "DELETE FROM offline WHERE user_id = ?1",
            "DELETE FROM pep_items WHERE user_id = ?1",
            "DELETE FROM pep_nodes WHERE user_id = ?1",
            "DELETE FROM roster WHERE user_id = ?1",
            "DELETE FROM blocklist WHERE user_id = ?1",
            "DELETE FROM credentials WHERE user_id = ?1",
            "DELETE FROM users WHERE id = ?1",
        ] {
            tx.prepare_cached(sql)
                .map_err(db)?
                .execute([id])
                .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(true)
    }

    fn set_credentials(
        &mut self,
        jid: &str,
        creds: &[ScramCredentials],
    ) -> Result<bool, StoreError> {
        check_creds(creds)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let Some(id) = user_id(&tx, jid)? else {
            return Ok(false);
        };
        tx.prepare_cached("DELETE FROM credentials WHERE user_id = ?1")
            .map_err(db)?
            .execute([id])
            .map_err(db)?;
        insert_creds(&tx, id, creds)?;
        tx.commit().map_err(db)?;
        Ok(true)
    }

    fn credentials(
        &mut self,
        jid: &str,
        hash: ScramHash,
    ) -> Result<Option<ScramCredentials>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT c.salt, c.iterations, c.stored_key, c.server_key
                 FROM credentials c JOIN users u ON u.id = c.user_id
                 WHERE u.jid = ?1 AND c.mechanism = ?2",
            )
            .map_err(db)?
            .query_row(params![jid, hash.mechanism()], |r| {
                Ok(ScramCredentials {
                    mechanism: hash,
                    salt: r.get(0)?,
                    iterations: r.get(1)?,
                    stored_key: r.get(2)?,
                    server_key: r.get(3)?,
                })
            })
            .optional()
            .map_err(db)
    }

    fn list_users(&mut self, domain: Option<&str>) -> Result<Vec<String>, StoreError> {
        let (sql, arg) = match domain {
            Some(d) => ("SELECT jid FROM users WHERE domain = ?1 ORDER BY jid", d),
            None => ("SELECT jid FROM users WHERE ?1 = ?1 ORDER BY jid", ""),
        };
        let mut stmt = self.conn.prepare_cached(sql).map_err(db)?;
        let rows = stmt.query_map([arg], |r| r.get(0)).map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn pending_out(&mut self) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT users.jid, roster.contact FROM roster
                 JOIN users ON users.id = roster.user_id
                 WHERE roster.pending_out = 1
                 ORDER BY users.jid, roster.contact",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn pending_in(&mut self) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT users.jid, roster.contact FROM roster
                 JOIN users ON users.id = roster.user_id
                 WHERE roster.pending_in IS NOT NULL
                 ORDER BY users.jid, roster.contact",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn roster(&mut self, user: &str) -> Result<Roster, StoreError> {
        let tx = self.conn.transaction().map_err(db)?;
        let (id, version): (i64, i64) = tx
            .prepare_cached("SELECT id, roster_version FROM users WHERE jid = ?1")
            .map_err(db)?
            .query_row([user], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(db)?
            .ok_or_else(|| StoreError::NoSuchUser(user.into()))?;
        let mut items = Vec::new();
        {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT contact, name, groups, subscription, pending_out, pending_in,
                            pre_approved, in_roster
                     FROM roster WHERE user_id = ?1 ORDER BY contact",
                )
                .map_err(db)?;
            let mut rows = stmt.query([id]).map_err(db)?;
            while let Some(r) = rows.next().map_err(db)? {
                let groups: String = r.get(2).map_err(db)?;
                items.push(StoredItem {
                    contact: r.get(0).map_err(db)?,
                    name: r.get(1).map_err(db)?,
                    groups: serde_json::from_str(&groups)
                        .map_err(|e| StoreError::Corrupt(format!("roster groups: {e}")))?,
                    subscription: r.get(3).map_err(db)?,
                    pending_out: r.get(4).map_err(db)?,
                    pending_in: r.get(5).map_err(db)?,
                    pre_approved: r.get(6).map_err(db)?,
                    in_roster: r.get(7).map_err(db)?,
                });
            }
        }
        tx.commit().map_err(db)?;
        Ok((version as u64, items))
    }

    fn pep_nodes(&mut self, user: &str) -> Result<Vec<StoredPepNode>, StoreError> {
        pep::nodes(&mut self.conn, user)
    }

    fn pep_publish(&mut self, publish: &PepPublish) -> Result<(), StoreError> {
        pep::publish(&mut self.conn, publish)
    }

    fn pep_retract(&mut self, user: &str, node: &str, item_id: &str) -> Result<bool, StoreError> {
        pep::retract(&mut self.conn, user, node, item_id)
    }

    fn offline(&mut self, user: &str) -> Result<Vec<OfflineMessage>, StoreError> {
        let tx = self.conn.transaction().map_err(db)?;
        let id = user_id(&tx, user)?.ok_or_else(|| StoreError::NoSuchUser(user.into()))?;
        let mut out = Vec::new();
        {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT id, received_ms, stanza FROM offline WHERE user_id = ?1 ORDER BY id",
                )
                .map_err(db)?;
            let mut rows = stmt.query([id]).map_err(db)?;
            while let Some(r) = rows.next().map_err(db)? {
                out.push(OfflineMessage {
                    id: r.get::<_, i64>(0).map_err(db)? as u64,
                    received_ms: r.get::<_, i64>(1).map_err(db)? as u64,
                    stanza: r.get(2).map_err(db)?,
                });
            }
        }
        tx.commit().map_err(db)?;
        Ok(out)
    }

    fn apply(&mut self, changes: &[Change]) -> Result<Vec<u64>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let resolved = resolve(&tx, changes)?;
        let versions = write(&tx, changes, resolved)?;
        tx.commit().map_err(db)?;
        Ok(versions)
    }

    /// The whole user in one `BEGIN IMMEDIATE` transaction: nothing of it is stored when
    /// any part fails.
    fn import_user(
        &mut self,
        jid: &str,
        creds: Option<&[ScramCredentials]>,
        items: &[StoredItem],
    ) -> Result<ImportOutcome, StoreError> {
        match BareJid::new(jid) {
            Ok(b) if b.as_str() == jid && b.node().is_some() => {}
            _ => return Err(StoreError::InvalidJid(jid.into())),
        }
        if let Some(c) = creds {
            check_creds(c)?;
        }
        for i in items {
            check_item(i)?;
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let mut out = ImportOutcome::default();
        let (id, version) = match tx
            .prepare_cached("SELECT id, roster_version FROM users WHERE jid = ?1")
            .map_err(db)?
            .query_row([jid], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .optional()
            .map_err(db)?
        {
            Some((id, version)) => {
                if let Some(creds) = creds {
                    let stored = stored_creds(&tx, id)?;
                    if !same_credentials(&stored, creds) {
                        tx.prepare_cached("DELETE FROM credentials WHERE user_id = ?1")
                            .map_err(db)?
                            .execute([id])
                            .map_err(db)?;
                        insert_creds(&tx, id, creds)?;
                        out.credentials_replaced = true;
                    }
                }
                (id, version as u64)
            }
            None => {
                tx.prepare_cached("INSERT INTO users (jid, domain) VALUES (?1, ?2)")
                    .map_err(db)?
                    .execute(params![jid, crate::jid::domain_of(jid)])
                    .map_err(db)?;
                let id = tx.last_insert_rowid();
                insert_creds(&tx, id, creds.unwrap_or(&[]))?;
                out.created = true;
                (id, 0)
            }
        };
        let mut changes = Vec::new();
        for item in items {
            let old = stored_row(&tx, id, &item.contact)?;
            if let Some(row) = merge_imported(old.as_ref(), item) {
                changes.push(Change::UpsertItem {
                    user: jid.to_owned(),
                    item: row,
                });
            }
        }
        out.roster_version = version;
        if !changes.is_empty() {
            let resolved = Resolved {
                users: vec![GroupUser {
                    id,
                    version,
                    bumped: false,
                    offline: None,
                }],
                user_of: vec![0; changes.len()],
            };
            let versions = write(&tx, &changes, resolved)?;
            out.items_written = changes.len();
            out.roster_version = versions.last().copied().unwrap_or(version);
        }
        tx.commit().map_err(db)?;
        Ok(out)
    }

    /// One transaction for all groups: each group is validated first (unknown user,
    /// invalid item: that group's error, nothing written for it), then written; a
    /// database error fails the whole transaction.
    fn apply_groups(
        &mut self,
        groups: &[&[Change]],
    ) -> Result<Vec<Result<Vec<u64>, StoreError>>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let mut results = Vec::with_capacity(groups.len());
        for group in groups {
            match resolve(&tx, group) {
                Ok(resolved) => results.push(Ok(write(&tx, group, resolved)?)),
                Err(e) if e.is_fault() => return Err(e),
                Err(e) => results.push(Err(e)),
            }
        }
        tx.commit().map_err(db)?;
        Ok(results)
    }
}
