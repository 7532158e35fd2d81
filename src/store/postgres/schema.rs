//! The PostgreSQL schema: versioned migrations applied at connect, in one transaction.
//!
//! The tables mirror SQLite's ([`crate::store::sqlite`]) with PostgreSQL types: `BIGINT`
//! identities and integers, `BOOLEAN` flags, `BYTEA` keys, roster groups as `TEXT[]`.
//! Every text column that is sorted on (JIDs, contacts, node names) uses the `"C"`
//! collation, so that results come in byte order exactly as SQLite's `BINARY` collation
//! gives them, whatever the database's locale.

use postgres::Client;

use super::db;
use crate::store::StoreError;

/// The migrations, in order: migration `n` (1-based) brings the schema from version
/// `n - 1` to `n`. Append only; never edit a released one.
const MIGRATIONS: &[&str] = &[
    // 1: users, SCRAM credentials, rosters, block lists (XEP-0191), offline messages
    // (XEP-0160), PEP nodes and items (XEP-0163): SQLite's migrations 1 to 4 in one.
    r#"CREATE TABLE users (
         id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
         jid            TEXT COLLATE "C" NOT NULL UNIQUE,
         domain         TEXT COLLATE "C" NOT NULL,
         roster_version BIGINT NOT NULL DEFAULT 0
     );
     CREATE INDEX users_by_domain ON users (domain, jid);
     CREATE TABLE credentials (
         user_id    BIGINT NOT NULL,
         mechanism  TEXT NOT NULL,
         salt       BYTEA NOT NULL,
         iterations BIGINT NOT NULL,
         stored_key BYTEA NOT NULL,
         server_key BYTEA NOT NULL,
         PRIMARY KEY (user_id, mechanism)
     );
     CREATE TABLE roster (
         user_id      BIGINT NOT NULL,
         contact      TEXT COLLATE "C" NOT NULL,
         name         TEXT,
         groups       TEXT[] NOT NULL,
         subscription TEXT NOT NULL,
         pending_out  BOOLEAN NOT NULL,
         pending_in   TEXT,
         pre_approved BOOLEAN NOT NULL,
         in_roster    BOOLEAN NOT NULL,
         PRIMARY KEY (user_id, contact)
     );
     CREATE INDEX roster_pending_out ON roster (user_id) WHERE pending_out;
     CREATE TABLE blocklist (
         user_id BIGINT NOT NULL,
         jid     TEXT COLLATE "C" NOT NULL,
         PRIMARY KEY (user_id, jid)
     );
     CREATE TABLE offline (
         id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
         user_id     BIGINT NOT NULL,
         received_ms BIGINT NOT NULL,
         stanza      TEXT NOT NULL
     );
     CREATE INDEX offline_by_user ON offline (user_id, id);
     CREATE TABLE pep_nodes (
         user_id      BIGINT NOT NULL,
         node         TEXT COLLATE "C" NOT NULL,
         access_model TEXT NOT NULL,
         max_items    BIGINT NOT NULL,
         PRIMARY KEY (user_id, node)
     );
     CREATE TABLE pep_items (
         user_id BIGINT NOT NULL,
         node    TEXT COLLATE "C" NOT NULL,
         item_id TEXT NOT NULL,
         seq     BIGINT NOT NULL,
         payload TEXT NOT NULL,
         PRIMARY KEY (user_id, node, item_id)
     );"#,
];

/// The schema version this build creates and understands: the number of migrations.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// The `pg_advisory_xact_lock` key that serialises migrations of one database between
/// processes (nodes starting together): "fedr" in ASCII.
const MIGRATION_LOCK: i64 = 0x6665_6472;

/// The schema version recorded in the database (0 when there is no `schema_version`
/// table yet).
pub fn current_version(client: &mut Client) -> Result<u32, StoreError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
        .map_err(db)?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let v: i32 = client
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
        .map_err(db)?
        .get(0);
    Ok(v as u32)
}

/// Applies the missing migrations in one transaction, under an advisory lock so that two
/// processes opening a new database do not both migrate it; refuses a database from a
/// newer build ([`StoreError::SchemaTooNew`]).
pub fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let mut tx = client.transaction().map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(db)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version    INTEGER PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .map_err(db)?;
    let found: i32 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
        .map_err(db)?
        .get(0);
    let found = found as u32;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(sql).map_err(db)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&(i as i32 + 1)],
        )
        .map_err(db)?;
    }
    tx.commit().map_err(db)
}
