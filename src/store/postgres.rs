//! [`Store`] on a PostgreSQL server (`[store] backend = "postgres"`), with the semantics
//! of [`super::sqlite::SqliteStore`]: the same results, errors, roster-version rules and
//! all-or-nothing batches, so that one test suite runs against both (`tests/store.rs`).
//!
//! # Client, connection, group commit
//!
//! The store runs on the one storage thread of [`super::StoreHandle`], which is
//! synchronous and does one thing at a time, so it uses the synchronous `postgres` client
//! (which drives `tokio-postgres` on a private runtime) over ONE connection: a pool would
//! only add connections that the single thread never uses at once. Group commit is the
//! storage thread's: each drained batch of [`Change`]s is ONE transaction
//! ([`Store::apply_groups`]), each other method one transaction of its own.
//!
//! # Durability
//!
//! Every session sets `synchronous_commit = on`: a COMMIT returns only once the server
//! has flushed the transaction's WAL to disk (and to synchronous standbys if the server
//! has any), so a reply means durable, as with SQLite's `synchronous=FULL`. A database or
//! role setting cannot weaken it. A commit whose answer never came (the connection broke
//! during it) is reported as failed: the change may or may not be stored, but it was
//! never acknowledged.
//!
//! # Connection loss and back-off
//!
//! A request that fails because the connection broke gets [`StoreError::Backend`] and
//! the connection is dropped; the next request reconnects. A failed reconnect fails that
//! request and sets a back-off (from [`PostgresOptions::reconnect_initial`], doubling up
//! to [`PostgresOptions::reconnect_max`]) during which requests fail at once without
//! trying, so a down server costs no connect storm. [`StoreStatus`] records the state,
//! the last error, reconnects and failures for `/health`, `fedrouter status` and the
//! metrics. When no request comes for [`super::IDLE_CHECK`], the storage thread calls
//! [`Store::idle`]: the connection is checked (one round trip) and, when down, a reconnect
//! is tried as the back-off allows, so the status follows the server without traffic.
//! Every message names the server by its redacted URL ([`redact_url`]).
//!
//! # Schema
//!
//! Versioned migrations ([`SCHEMA_VERSION`]) are applied at connect in one transaction
//! (see `schema.rs`); a database from a newer build is refused
//! ([`StoreError::SchemaTooNew`]). TLS to the server is not supported yet: the server is
//! expected on loopback or a private network (`sslmode=require` fails to connect).

mod changes;
mod pep;
mod schema;
mod tx;
mod url;

use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};

use self::changes::{
    check_item, flush, item_of, resolve, stored_row, write, GroupUser, Locked, Resolved,
};
use self::tx::{Prepared, Tx};
use super::status::StoreStatus;
use super::{
    merge_imported, same_credentials, BlocklistChange, Change, ImportOutcome, OfflineMessage,
    PepPublish, Roster, ScramCredentials, ScramHash, Store, StoreError, StoredItem, StoredPepNode,
};
use crate::jid::BareJid;

pub use self::schema::SCHEMA_VERSION;
pub use self::url::{parse_url, redact_url};

/// A client error as [`StoreError::Backend`]: the server's message and SQLSTATE for a
/// database error, else the error with its causes (`error connecting to server: Connection
/// refused (os error 111)`).
fn db(e: postgres::Error) -> StoreError {
    if let Some(d) = e.as_db_error() {
        return StoreError::Backend(format!(
            "{}: {} (SQLSTATE {})",
            d.severity(),
            d.message(),
            d.code().code()
        ));
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    StoreError::Backend(text)
}

/// How to reach the server and how hard to try (`[store]` keys of the same names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// A libpq-style connection string (`store.url`): a URL
    /// `postgresql://user:password@host:port/dbname?options` or `key=value` pairs.
    pub url: String,
    /// Longest wait for one connection attempt (`store.connect_timeout`).
    pub connect_timeout: Duration,
    /// Longest one statement may run before the server cancels it
    /// (`store.statement_timeout`, PostgreSQL's `statement_timeout`): bounds how long the
    /// storage thread can wait for a stuck server.
    pub statement_timeout: Duration,
    /// The first back-off after a failed reconnect (`store.reconnect_initial`).
    pub reconnect_initial: Duration,
    /// The longest back-off (`store.reconnect_max`).
    pub reconnect_max: Duration,
}

impl PostgresOptions {
    /// Options with the defaults of `[store]`: 5 s to connect, 30 s per statement, back-off
    /// from 100 ms to 10 s.
    pub fn new(url: impl Into<String>) -> PostgresOptions {
        PostgresOptions {
            url: url.into(),
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(10),
        }
    }
}

/// The open connection and its prepared statements.
struct Conn {
    client: Client,
    prepared: Prepared,
}

/// A [`Store`] in a PostgreSQL database (one connection, reconnected when it breaks).
pub struct PostgresStore {
    config: postgres::Config,
    redacted: String,
    options: PostgresOptions,
    conn: Option<Conn>,
    /// The back-off: no reconnect before this instant, and the next delay.
    retry_at: Option<Instant>,
    delay: Duration,
    status: Arc<StoreStatus>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.redacted)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl PostgresStore {
    /// Connects to the server of `options.url`, sets up the session (durable commits,
    /// the statement timeout) and migrates the database to [`SCHEMA_VERSION`].
    ///
    /// Errors: [`StoreError::Backend`] naming the redacted URL and the cause (the URL
    /// does not parse, the server is unreachable, authentication failed, a migration
    /// failed), [`StoreError::SchemaTooNew`].
    pub fn connect(options: PostgresOptions) -> Result<PostgresStore, StoreError> {
        let redacted = redact_url(&options.url);
        let mut config = parse_url(&options.url)
            .map_err(|e| StoreError::Backend(format!("store.url {redacted}: {e}")))?;
        config.connect_timeout(options.connect_timeout);
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        if config.get_application_name().is_none() {
            config.application_name("fedrouter");
        }
        let status = Arc::new(StoreStatus::new("postgres", redacted.clone()));
        let mut store = PostgresStore {
            config,
            redacted,
            delay: options.reconnect_initial,
            options,
            conn: None,
            retry_at: None,
            status,
        };
        let conn = store.open()?;
        store.conn = Some(conn);
        Ok(store)
    }

    /// The connection state, shared with whoever shows it (`/health`, metrics).
    pub fn status(&self) -> Arc<StoreStatus> {
        Arc::clone(&self.status)
    }

    /// The server as messages name it: its URL, password redacted.
    pub fn redacted_url(&self) -> &str {
        &self.redacted
    }

    /// The schema version recorded in the database (the highest applied migration).
    pub fn schema_version(&mut self) -> Result<u32, StoreError> {
        let conn = self.connection()?;
        schema::current_version(&mut conn.client)
    }

    /// The value of run-time parameter `name` in the store's session (`current_setting`),
    /// e.g. `synchronous_commit` → `on`: for diagnostics and tests.
    ///
    /// Errors: [`StoreError::Backend`] (unknown parameter, connection down).
    pub fn setting(&mut self, name: &str) -> Result<String, StoreError> {
        self.run(|tx| Ok(tx.one("SELECT current_setting($1)", &[&name])?.get(0)))
    }

    /// One connection attempt: connect, set the session up, migrate.
    fn open(&self) -> Result<Conn, StoreError> {
        let fail = |what: &str, e: StoreError| -> StoreError {
            match e {
                StoreError::Backend(m) => {
                    StoreError::Backend(format!("PostgreSQL at {}: {what}: {m}", self.redacted))
                }
                other => other,
            }
        };
        let mut client = self
            .config
            .connect(NoTls)
            .map_err(|e| fail("cannot connect", db(e)))?;
        let ms = self.options.statement_timeout.as_millis();
        client
            .batch_execute(&format!(
                "SET synchronous_commit = on; SET statement_timeout = {ms}"
            ))
            .map_err(|e| fail("session setup", db(e)))?;
        schema::migrate(&mut client).map_err(|e| fail("schema migration", e))?;
        Ok(Conn {
            client,
            prepared: Prepared::new(),
        })
    }

    /// The open connection, reconnecting if there is none and the back-off allows.
    fn connection(&mut self) -> Result<&mut Conn, StoreError> {
        if self.conn.is_none() {
            if let Some(at) = self.retry_at {
                let now = Instant::now();
                if now < at {
                    let last = match self.status.report().state {
                        super::status::StoreState::Down(e) => e,
                        super::status::StoreState::Up => String::new(),
                    };
                    return Err(StoreError::Backend(format!(
                        "PostgreSQL at {} unreachable, next attempt in {} ms (last error: {last})",
                        self.redacted,
                        (at - now).as_millis()
                    )));
                }
            }
            match self.open() {
                Ok(c) => {
                    self.conn = Some(c);
                    self.retry_at = None;
                    self.delay = self.options.reconnect_initial;
                    self.status.reconnected();
                }
                Err(e) => {
                    self.status.failed(e.to_string());
                    self.retry_at = Some(Instant::now() + self.delay);
                    self.delay = (self.delay * 2).min(self.options.reconnect_max);
                    return Err(e);
                }
            }
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Runs `f` in one transaction, committed when it returns `Ok` (rolled back
    /// otherwise). A database error that left the connection broken drops it (the next
    /// request reconnects) and is recorded in the status.
    fn run<T>(
        &mut self,
        f: impl FnOnce(&mut Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let probe_timeout = self.options.connect_timeout;
        let conn = self.connection()?;
        let result = (|| {
            let tx = conn.client.transaction().map_err(db)?;
            let mut tx = Tx::new(tx, &mut conn.prepared);
            let v = f(&mut tx)?;
            tx.commit()?;
            Ok(v)
        })();
        if let Err(StoreError::Backend(m)) = &result {
            let broken = conn.client.is_closed() || conn.client.is_valid(probe_timeout).is_err();
            if broken {
                self.conn = None;
                let msg = format!("PostgreSQL at {}: connection lost: {m}", self.redacted);
                self.status.failed(msg.clone());
                return Err(StoreError::Backend(msg));
            }
        }
        result
    }
}

/// The id of user `jid`, if it exists.
fn user_id(tx: &mut Tx, jid: &str) -> Result<Option<i64>, StoreError> {
    Ok(tx
        .opt("SELECT id FROM users WHERE jid = $1", &[&jid])?
        .map(|r| r.get(0)))
}

/// Refuses a string that is not a normalised bare JID with a localpart.
fn check_jid(jid: &str) -> Result<(), StoreError> {
    match BareJid::new(jid) {
        Ok(b) if b.as_str() == jid && b.node().is_some() => Ok(()),
        _ => Err(StoreError::InvalidJid(jid.into())),
    }
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

fn insert_creds(tx: &mut Tx, id: i64, creds: &[ScramCredentials]) -> Result<(), StoreError> {
    for c in creds {
        tx.exec(
            "INSERT INTO credentials (user_id, mechanism, salt, iterations, stored_key, server_key)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &id,
                &c.mechanism.mechanism(),
                &c.salt,
                &i64::from(c.iterations),
                &c.stored_key,
                &c.server_key,
            ],
        )?;
    }
    Ok(())
}

fn creds_of(mechanism: ScramHash, r: &postgres::Row) -> Result<ScramCredentials, StoreError> {
    let iterations: i64 = r.get(1);
    Ok(ScramCredentials {
        mechanism,
        salt: r.get(0),
        iterations: u32::try_from(iterations)
            .map_err(|_| StoreError::Corrupt(format!("credentials iterations {iterations}")))?,
        stored_key: r.get(2),
        server_key: r.get(3),
    })
}

/// Every stored credential of user row `id`.
fn stored_creds(tx: &mut Tx, id: i64) -> Result<Vec<ScramCredentials>, StoreError> {
    let rows = tx.query(
        "SELECT salt, iterations, stored_key, server_key, mechanism
         FROM credentials WHERE user_id = $1",
        &[&id],
    )?;
    rows.iter()
        .map(|r| {
            let name: String = r.get(4);
            let h = ScramHash::from_mechanism(&name)
                .ok_or_else(|| StoreError::Corrupt(format!("credentials mechanism {name:?}")))?;
            creds_of(h, r)
        })
        .collect()
}

impl Store for PostgresStore {
    fn status(&self) -> Option<Arc<StoreStatus>> {
        Some(Arc::clone(&self.status))
    }

    /// Checks the idle connection (one round trip); a broken one is dropped and recorded,
    /// then a reconnect is tried if the back-off allows.
    fn idle(&mut self) {
        let timeout = self.options.connect_timeout;
        if let Some(c) = &mut self.conn {
            if c.client.is_closed() || c.client.is_valid(timeout).is_err() {
                self.conn = None;
                self.status.failed(format!(
                    "PostgreSQL at {}: connection lost (found by the idle check)",
                    self.redacted
                ));
            }
        }
        if self.conn.is_none() {
            let _ = self.connection();
        }
    }

    fn add_user(&mut self, jid: &str, creds: &[ScramCredentials]) -> Result<(), StoreError> {
        check_jid(jid)?;
        check_creds(creds)?;
        let domain = crate::jid::domain_of(jid);
        self.run(|tx| {
            let id: i64 = tx
                .opt(
                    "INSERT INTO users (jid, domain) VALUES ($1, $2)
                     ON CONFLICT (jid) DO NOTHING RETURNING id",
                    &[&jid, &domain],
                )?
                .ok_or_else(|| StoreError::Exists(jid.into()))?
                .get(0);
            insert_creds(tx, id, creds)
        })
    }

    fn remove_user(&mut self, jid: &str) -> Result<bool, StoreError> {
        self.run(|tx| {
            let Some(row) = tx.opt("SELECT id FROM users WHERE jid = $1 FOR UPDATE", &[&jid])?
            else {
                return Ok(false);
            };
            let id: i64 = row.get(0);
            tx.exec("DELETE FROM offline WHERE user_id = $1", &[&id])?;
            tx.exec("DELETE FROM pep_items WHERE user_id = $1", &[&id])?;
            tx.exec("DELETE FROM pep_nodes WHERE user_id = $1", &[&id])?;
            tx.exec("DELETE FROM roster WHERE user_id = $1", &[&id])?;
            tx.exec("DELETE FROM blocklist WHERE user_id = $1", &[&id])?;
            tx.exec("DELETE FROM credentials WHERE user_id = $1", &[&id])?;
            tx.exec("DELETE FROM users WHERE id = $1", &[&id])?;
            Ok(true)
        })
    }

    fn set_credentials(
        &mut self,
        jid: &str,
        creds: &[ScramCredentials],
    ) -> Result<bool, StoreError> {
        check_creds(creds)?;
        self.run(|tx| {
            let Some(id) = user_id(tx, jid)? else {
                return Ok(false);
            };
            tx.exec("DELETE FROM credentials WHERE user_id = $1", &[&id])?;
            insert_creds(tx, id, creds)?;
            Ok(true)
        })
    }

    fn credentials(
        &mut self,
        jid: &str,
        hash: ScramHash,
    ) -> Result<Option<ScramCredentials>, StoreError> {
        self.run(|tx| {
            tx.opt(
                "SELECT c.salt, c.iterations, c.stored_key, c.server_key
                 FROM credentials c JOIN users u ON u.id = c.user_id
                 WHERE u.jid = $1 AND c.mechanism = $2",
                &[&jid, &hash.mechanism()],
            )?
            .map(|r| creds_of(hash, &r))
            .transpose()
        })
    }

    fn list_users(&mut self, domain: Option<&str>) -> Result<Vec<String>, StoreError> {
        self.run(|tx| {
            let rows = match domain {
                Some(d) => tx.query(
                    "SELECT jid FROM users WHERE domain = $1 ORDER BY jid",
                    &[&d],
                )?,
                None => tx.query("SELECT jid FROM users ORDER BY jid", &[])?,
            };
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn roster(&mut self, user: &str) -> Result<Roster, StoreError> {
        self.run(|tx| {
            let row = tx
                .opt(
                    "SELECT id, roster_version FROM users WHERE jid = $1",
                    &[&user],
                )?
                .ok_or_else(|| StoreError::NoSuchUser(user.into()))?;
            let (id, version): (i64, i64) = (row.get(0), row.get(1));
            let items = tx
                .query(
                    "SELECT contact, name, groups, subscription, pending_out, pending_in,
                            pre_approved, in_roster
                     FROM roster WHERE user_id = $1 ORDER BY contact",
                    &[&id],
                )?
                .iter()
                .map(item_of)
                .collect();
            Ok((version as u64, items))
        })
    }

    fn apply(&mut self, changes: &[Change]) -> Result<Vec<u64>, StoreError> {
        self.run(|tx| {
            let mut locked = Locked::default();
            let mut resolved = resolve(tx, &mut locked, changes)?;
            let versions = write(tx, changes, &mut resolved)?;
            locked.absorb(resolved);
            flush(tx, &locked)?;
            Ok(versions)
        })
    }

    fn offline(&mut self, user: &str) -> Result<Vec<OfflineMessage>, StoreError> {
        self.run(|tx| {
            let id = user_id(tx, user)?.ok_or_else(|| StoreError::NoSuchUser(user.into()))?;
            Ok(tx
                .query(
                    "SELECT id, received_ms, stanza FROM offline WHERE user_id = $1 ORDER BY id",
                    &[&id],
                )?
                .iter()
                .map(|r| OfflineMessage {
                    id: r.get::<_, i64>(0) as u64,
                    received_ms: r.get::<_, i64>(1) as u64,
                    stanza: r.get(2),
                })
                .collect())
        })
    }

    fn pending_out(&mut self) -> Result<Vec<(String, String)>, StoreError> {
        self.run(|tx| {
            Ok(tx
                .query(
                    "SELECT users.jid, roster.contact FROM roster
                     JOIN users ON users.id = roster.user_id
                     WHERE roster.pending_out
                     ORDER BY users.jid, roster.contact",
                    &[],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect())
        })
    }

    fn pending_in(&mut self) -> Result<Vec<(String, String)>, StoreError> {
        self.run(|tx| {
            Ok(tx
                .query(
                    "SELECT users.jid, roster.contact FROM roster
                     JOIN users ON users.id = roster.user_id
                     WHERE roster.pending_in IS NOT NULL
                     ORDER BY users.jid, roster.contact",
                    &[],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect())
        })
    }

    fn pep_nodes(&mut self, user: &str) -> Result<Vec<StoredPepNode>, StoreError> {
        self.run(|tx| pep::nodes(tx, user))
    }

    fn pep_publish(&mut self, publish: &PepPublish) -> Result<(), StoreError> {
        self.run(|tx| pep::publish(tx, publish))
    }

    fn pep_retract(&mut self, user: &str, node: &str, item_id: &str) -> Result<bool, StoreError> {
        self.run(|tx| pep::retract(tx, user, node, item_id))
    }

    /// The whole user in one transaction, as SQLite does.
    fn import_user(
        &mut self,
        jid: &str,
        creds: Option<&[ScramCredentials]>,
        items: &[StoredItem],
    ) -> Result<ImportOutcome, StoreError> {
        check_jid(jid)?;
        if let Some(c) = creds {
            check_creds(c)?;
        }
        for i in items {
            check_item(i)?;
        }
        let domain = crate::jid::domain_of(jid);
        self.run(|tx| {
            let mut out = ImportOutcome::default();
            let existing = tx.opt(
                "SELECT id, roster_version FROM users WHERE jid = $1 FOR UPDATE",
                &[&jid],
            )?;
            let (id, version) = match existing {
                Some(row) => {
                    let (id, version): (i64, i64) = (row.get(0), row.get(1));
                    if let Some(creds) = creds {
                        let stored = stored_creds(tx, id)?;
                        if !same_credentials(&stored, creds) {
                            tx.exec("DELETE FROM credentials WHERE user_id = $1", &[&id])?;
                            insert_creds(tx, id, creds)?;
                            out.credentials_replaced = true;
                        }
                    }
                    (id, version as u64)
                }
                None => {
                    let id: i64 = tx
                        .one(
                            "INSERT INTO users (jid, domain) VALUES ($1, $2) RETURNING id",
                            &[&jid, &domain],
                        )?
                        .get(0);
                    insert_creds(tx, id, creds.unwrap_or(&[]))?;
                    out.created = true;
                    (id, 0)
                }
            };
            let mut changes = Vec::new();
            for item in items {
                let old = stored_row(tx, id, &item.contact)?;
                if let Some(row) = merge_imported(old.as_ref(), item) {
                    changes.push(Change::UpsertItem {
                        user: jid.to_owned(),
                        item: row,
                    });
                }
            }
            out.roster_version = version;
            if !changes.is_empty() {
                let mut resolved = Resolved {
                    users: vec![GroupUser {
                        jid: jid.to_owned(),
                        id,
                        version,
                        bumped: false,
                        offline: None,
                    }],
                    user_of: vec![0; changes.len()],
                };
                let versions = write(tx, &changes, &mut resolved)?;
                let mut locked = Locked::default();
                locked.absorb(resolved);
                flush(tx, &locked)?;
                out.items_written = changes.len();
                out.roster_version = versions.last().copied().unwrap_or(version);
            }
            Ok(out)
        })
    }

    fn blocklist(&mut self, user: &str) -> Result<Vec<String>, StoreError> {
        self.run(|tx| {
            let id = user_id(tx, user)?.ok_or_else(|| StoreError::NoSuchUser(user.into()))?;
            Ok(tx
                .query(
                    "SELECT jid FROM blocklist WHERE user_id = $1 ORDER BY jid",
                    &[&id],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect())
        })
    }

    fn change_blocklist(&mut self, user: &str, change: &BlocklistChange) -> Result<(), StoreError> {
        self.run(|tx| {
            let id = user_id(tx, user)?.ok_or_else(|| StoreError::NoSuchUser(user.into()))?;
            match change {
                BlocklistChange::Block(jids) => {
                    for j in jids {
                        tx.exec(
                            "INSERT INTO blocklist (user_id, jid) VALUES ($1, $2)
                             ON CONFLICT DO NOTHING",
                            &[&id, j],
                        )?;
                    }
                }
                BlocklistChange::Unblock(jids) if jids.is_empty() => {
                    tx.exec("DELETE FROM blocklist WHERE user_id = $1", &[&id])?;
                }
                BlocklistChange::Unblock(jids) => {
                    for j in jids {
                        tx.exec(
                            "DELETE FROM blocklist WHERE user_id = $1 AND jid = $2",
                            &[&id, j],
                        )?;
                    }
                }
            }
            Ok(())
        })
    }

    /// One transaction for all groups: each group is validated first (unknown user,
    /// invalid item, full offline store: that group's error, nothing written for it),
    /// then written; a database error fails the whole transaction.
    fn apply_groups(
        &mut self,
        groups: &[&[Change]],
    ) -> Result<Vec<Result<Vec<u64>, StoreError>>, StoreError> {
        self.run(|tx| {
            let mut results = Vec::with_capacity(groups.len());
            let mut locked = Locked::default();
            for group in groups {
                match resolve(tx, &mut locked, group) {
                    Ok(mut resolved) => {
                        results.push(Ok(write(tx, group, &mut resolved)?));
                        locked.absorb(resolved);
                    }
                    Err(StoreError::Backend(e)) => return Err(StoreError::Backend(e)),
                    Err(e) => results.push(Err(e)),
                }
            }
            flush(tx, &locked)?;
            Ok(results)
        })
    }
}
