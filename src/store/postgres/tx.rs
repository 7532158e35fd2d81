//! One transaction on the store's connection, with the connection's prepared statements:
//! each SQL text is prepared once per connection (the first time it is used) and reused
//! after, so a statement costs one round trip instead of two.

use std::collections::HashMap;

use postgres::types::ToSql;
use postgres::{Row, Statement, Transaction};

use super::db;
use crate::store::StoreError;

/// The prepared statements of one connection, by SQL text.
pub(super) type Prepared = HashMap<&'static str, Statement>;

/// A statement's parameters.
pub(super) type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

/// An open transaction; dropped without [`Tx::commit`], it is rolled back.
pub(super) struct Tx<'a> {
    tx: Transaction<'a>,
    prepared: &'a mut Prepared,
}

impl<'a> Tx<'a> {
    pub(super) fn new(tx: Transaction<'a>, prepared: &'a mut Prepared) -> Tx<'a> {
        Tx { tx, prepared }
    }

    fn statement(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(s) = self.prepared.get(sql) {
            return Ok(s.clone());
        }
        let s = self.tx.prepare(sql).map_err(db)?;
        self.prepared.insert(sql, s.clone());
        Ok(s)
    }

    /// Every row `sql` returns.
    pub(super) fn query(&mut self, sql: &'static str, p: Params) -> Result<Vec<Row>, StoreError> {
        let s = self.statement(sql)?;
        self.tx.query(&s, p).map_err(db)
    }

    /// The one row `sql` returns, if any (more than one is an error).
    pub(super) fn opt(&mut self, sql: &'static str, p: Params) -> Result<Option<Row>, StoreError> {
        let s = self.statement(sql)?;
        self.tx.query_opt(&s, p).map_err(db)
    }

    /// The one row `sql` returns (none is an error).
    pub(super) fn one(&mut self, sql: &'static str, p: Params) -> Result<Row, StoreError> {
        let s = self.statement(sql)?;
        self.tx.query_one(&s, p).map_err(db)
    }

    /// Runs `sql`; the number of rows it changed.
    pub(super) fn exec(&mut self, sql: &'static str, p: Params) -> Result<u64, StoreError> {
        let s = self.statement(sql)?;
        self.tx.execute(&s, p).map_err(db)
    }

    /// Commits: returns once the server has made the transaction durable
    /// (`synchronous_commit = on`).
    pub(super) fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().map_err(db)
    }
}
