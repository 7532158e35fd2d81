//! Opening the store `[store]` describes: the embedded SQLite database in `data_dir`, or
//! the PostgreSQL server at `store.url` (for `fedrouter serve`, `user`, `import`,
//! `export` and `check`).

use std::sync::Arc;

use super::postgres::{redact_url, PostgresOptions, PostgresStore};
use super::sqlite::{Durability, SqliteStore};
use super::status::StoreStatus;
use super::{Store, StoreError, DB_FILE};
use crate::config::{Config, StoreBackend, StoreDurability};

/// An opened store.
pub struct OpenedStore {
    /// The store, ready for a [`super::StoreHandle`] or direct use.
    pub store: Box<dyn Store>,
    /// The connection state of a networked store (PostgreSQL); `None` for SQLite.
    pub status: Option<Arc<StoreStatus>>,
    /// Where it is, for messages: the database file, or the URL with its password
    /// redacted.
    pub location: String,
}

impl std::fmt::Debug for OpenedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedStore")
            .field("location", &self.location)
            .finish()
    }
}

/// The [`PostgresOptions`] of `config`'s `[store]`; `None` with the SQLite backend.
pub fn postgres_options(config: &Config) -> Option<PostgresOptions> {
    let st = &config.store;
    match (st.backend, &st.url) {
        (StoreBackend::Postgres, Some(url)) => Some(PostgresOptions {
            url: url.expose().to_owned(),
            connect_timeout: st.connect_timeout,
            statement_timeout: st.statement_timeout,
            reconnect_initial: st.reconnect_initial,
            reconnect_max: st.reconnect_max,
        }),
        _ => None,
    }
}

/// Opens (and migrates) the store of `config` (a validated configuration; `data_dir`
/// must exist for SQLite).
///
/// Errors: a message for an operator naming the database file, or the PostgreSQL URL
/// (password redacted) and the cause: unreachable server, failed authentication, a
/// database from a newer build.
pub fn open(config: &Config) -> Result<OpenedStore, String> {
    if let Some(options) = postgres_options(config) {
        let redacted = redact_url(&options.url);
        return match PostgresStore::connect(options) {
            Ok(s) => Ok(OpenedStore {
                status: Some(s.status()),
                store: Box::new(s),
                location: redacted,
            }),
            Err(StoreError::Backend(m)) => Err(m),
            Err(e) => Err(format!("PostgreSQL at {redacted}: {e}")),
        };
    }
    if config.store.backend == StoreBackend::Postgres {
        return Err("store.url: store.backend = \"postgres\" needs a URL".into());
    }
    let durability = match config.store.durability {
        StoreDurability::Crash => Durability::Crash,
        StoreDurability::PowerLoss => Durability::PowerLoss,
    };
    let path = config.data_dir.join(DB_FILE);
    let s = SqliteStore::open_with(&path, durability)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(OpenedStore {
        store: Box::new(s),
        status: None,
        location: path.display().to_string(),
    })
}
