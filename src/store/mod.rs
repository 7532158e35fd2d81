//! The durable store (adapter): local users, their SASL credentials, their rosters and
//! block lists (XEP-0191), their offline messages (XEP-0160), and the storage thread
//! that makes roster changes and offline messages durable with group commit.
//!
//! # Shape
//!
//! ```text
//!  shard 0 ─┐  submit(op, reply_to, wake, tag)          ┌─► reply_to (crossbeam) + wake
//!  shard 1 ─┼──► bounded queue ──► storage thread ──────┤   (one Reply per request, sent
//!  shard k ─┘    (full: Err(op))   drains ≤ max_batch,  └─► after the COMMIT returned)
//!                                  applies every Change of the batch in ONE transaction
//! ```
//!
//! - [`Store`] is the storage interface, used from one thread only (`Send`, not `Sync`):
//!   [`sqlite::SqliteStore`] (embedded SQLite, WAL, the default) and
//!   [`postgres::PostgresStore`] (a PostgreSQL server, for several nodes) implement it with
//!   the same semantics; [`open`] opens the one `[store]` names.
//! - [`StoreHandle`] runs a [`Store`] on its own thread. Roster changes ([`Op::Apply`]) that
//!   are waiting together are committed together (group commit): one fsync for the whole
//!   batch, so the rate of durable changes is bounded by batch size × commits/s rather
//!   than by fsyncs/s. A reply to an [`Op::Apply`] means "durable" (DESIGN.md "Failure
//!   semantics": subscription requests and roster changes are durable before they are
//!   acknowledged or forwarded). How durable depends on the store's setting
//!   ([`sqlite::Durability`]).
//! - Back-pressure: the request queue is bounded; [`StoreHandle::submit`] hands the
//!   [`Op`] back when it is full and the shard stops reading the sockets that feed it.
//!
//! # Ordering
//!
//! Requests are executed in the order they were queued. Consecutive [`Op::Apply`]
//! requests form one group commit; any other op (user management, reads) is a barrier:
//! the changes queued before it are committed (and answered) first, then it runs alone.
//! So a read sees every change queued before it, and a removed user's later changes fail
//! with [`StoreError::NoSuchUser`].
//!
//! JIDs are passed in as normalised bare JID strings (RFC 7622 §3, see [`crate::jid`]);
//! [`Store::add_user`] checks that, the hot path (roster changes) does not.

/// SCRAM (RFC 5802, RFC 7677) lives in the protocol core: pure SASL, no SQL.
pub use fedrouter_proto::scram;
mod open;
pub mod pep;
pub mod postgres;
pub mod sqlite;
pub mod status;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use tokio::sync::Notify;

pub use open::{open, postgres_options, OpenedStore};
pub use pep::{PepPublish, StoredPepNode};
pub use scram::{ScramCredentials, ScramHash};
pub use status::{StoreReport, StoreState, StoreStatus};

/// Why a store operation failed.
///
/// `Clone` because one failed group commit fails every request in it.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// [`Store::add_user`]: the user already exists (the bare JID).
    #[error("user {0} already exists")]
    Exists(String),
    /// The user does not exist (roster read or change for an unknown bare JID).
    #[error("no such user: {0}")]
    NoSuchUser(String),
    /// [`Store::add_user`]: the string is not a normalised bare JID with a localpart
    /// (RFC 7622 §3); it holds the string.
    #[error("not a normalised bare user JID: {0}")]
    InvalidJid(String),
    /// A roster item is not storable; the text says why (e.g. an unknown subscription
    /// state).
    #[error("invalid roster item: {0}")]
    InvalidItem(&'static str),
    /// Credentials given twice for one hash, or with key lengths that do not fit it.
    #[error("invalid credentials: {0}")]
    InvalidCredentials(&'static str),
    /// The database was written by a newer fedrouter: its schema version is `found`,
    /// this build knows migrations up to `known`.
    #[error("database schema version {found} is newer than this build's {known}")]
    SchemaTooNew {
        /// The version recorded in the database.
        found: u32,
        /// [`sqlite::SCHEMA_VERSION`] of this build.
        known: u32,
    },
    /// A stored value does not decode (e.g. an unknown mechanism name); the text says
    /// which.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    /// The database itself failed (I/O error, disk full, locked, SQL error; for PostgreSQL
    /// also an unreachable server or a connection lost during the request, the message
    /// naming its URL with the password redacted): its message. Nothing of the failed
    /// operation or transaction is acknowledged (a commit whose answer was lost with the
    /// connection may still have been stored).
    #[error("database error: {0}")]
    Backend(String),
    /// The database could not grow: the disk (or the file system, or the process's file
    /// size limit) is full (`SQLITE_FULL`); its message. Nothing of the failed operation
    /// or transaction is stored, and the same operation succeeds once there is room: a
    /// client is told `resource-constraint` (type `wait`, RFC 6120 §8.3.3.18), see
    /// [`StoreError::stanza_condition`].
    #[error("storage full: {0}")]
    Full(String),
    /// The storage thread has stopped ([`StoreHandle::shutdown`]).
    #[error("storage thread stopped")]
    Closed,
    /// [`Change::AppendOffline`]: the user (bare JID) already has its `max` offline
    /// messages stored (`c2s.max_offline_messages`); the message is refused
    /// (`service-unavailable`, RFC 6121 §8.5.2.2.1).
    #[error("offline message store of {0} is full")]
    OfflineFull(String),
}

impl StoreError {
    /// The stanza error a client's request that needed this store operation is answered
    /// with (RFC 6120 §8.3.3): `resource-constraint` (type `wait`: retry later) for
    /// [`StoreError::Full`], `internal-server-error` for anything else.
    pub fn stanza_condition(&self) -> crate::condition::StanzaCondition {
        match self {
            StoreError::Full(_) => crate::condition::StanzaCondition::ResourceConstraint,
            _ => crate::condition::StanzaCondition::InternalServerError,
        }
    }

    /// Whether the database itself failed ([`StoreError::Backend`], [`StoreError::Full`]),
    /// rather than the request being refused for what it asked: what
    /// [`StoreStats::failures`] counts.
    pub fn is_fault(&self) -> bool {
        matches!(self, StoreError::Backend(_) | StoreError::Full(_))
    }
}

/// One stored offline message (XEP-0160), as [`Store::offline`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineMessage {
    /// Its id: increasing in the order the messages were stored (delivery order); the
    /// `up_to` of [`Change::DeleteOffline`].
    pub id: u64,
    /// When the server received it, in milliseconds since the Unix epoch (UTC): the
    /// XEP-0203 `stamp` it is delivered with.
    pub received_ms: u64,
    /// The `<message/>` stanza as received (XML, addressed to the user).
    pub stanza: String,
}

/// One roster item as stored (RFC 6121 §2.1.2 item attributes plus the subscription
/// bookkeeping of RFC 6121 §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredItem {
    /// The contact's normalised bare JID (the item's `jid`).
    pub contact: String,
    /// The handle the user gave the contact (`name`), if any.
    pub name: Option<String>,
    /// The roster groups (`<group/>` children), in the user's order.
    pub groups: Vec<String>,
    /// The subscription state: `none`, `to`, `from` or `both` (RFC 6121 §2.1.2.5);
    /// anything else is refused with [`StoreError::InvalidItem`].
    pub subscription: String,
    /// The user sent a subscription request that is not answered yet (`ask='subscribe'`,
    /// RFC 6121 §3.1.2: the "Pending Out" half of the state).
    pub pending_out: bool,
    /// The contact's unanswered subscription request ("Pending In", RFC 6121 §3.1.3): the
    /// `<presence type='subscribe'/>` stanza as received (XML), redelivered to the user at
    /// each login (RFC 6121 §3.4.1).
    pub pending_in: Option<String>,
    /// The user pre-approved the contact's subscription request (RFC 6121 §3.4).
    pub pre_approved: bool,
    /// Whether the contact is in the user's roster. `false` for a contact that only sent a
    /// subscription request the user has not answered and did not add ("None + Pending
    /// In" without an item, RFC 6121 Appendix A.1): the row keeps `pending_in` durable,
    /// and roster results and pushes leave it out.
    pub in_roster: bool,
}

impl StoredItem {
    /// The subscription state of this item as [`crate::presence`] keeps it (`pending_in`
    /// is whether a request is stored). An unknown `subscription` (never stored: see
    /// [`StoreError::InvalidItem`]) reads as `none`.
    pub fn sub_state(&self) -> crate::presence::SubState {
        crate::presence::SubState {
            subscription: crate::presence::Subscription::from_attr(&self.subscription)
                .unwrap_or_default(),
            pending_out: self.pending_out,
            pending_in: self.pending_in.is_some(),
            pre_approved: self.pre_approved,
        }
    }
}

/// A durable change of one user's data: its roster, or its offline messages.
///
/// Each roster change bumps the user's roster version by one (RFC 6121 §2.6 roster
/// versioning); [`Store::apply`] returns the version after each. Offline message changes
/// (XEP-0160) leave the roster version alone; [`Store::apply`] returns, for
/// [`Change::AppendOffline`], the stored message's id and, for [`Change::DeleteOffline`],
/// how many messages were deleted.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Adds `item` to `user`'s roster, or replaces the item for the same contact.
    UpsertItem {
        /// The user (bare JID).
        user: String,
        /// The new item.
        item: StoredItem,
    },
    /// Removes `contact` from `user`'s roster (no error if it was not there).
    RemoveItem {
        /// The user (bare JID).
        user: String,
        /// The contact (bare JID).
        contact: String,
    },
    /// Stores a message for `user` to be delivered later (XEP-0160 §3, RFC 6121
    /// §8.5.2.2.1), after the messages stored before it. Fails with
    /// [`StoreError::OfflineFull`] (nothing stored) when `user` already has `max` stored.
    AppendOffline {
        /// The user (bare JID).
        user: String,
        /// The `<message/>` stanza (XML).
        stanza: String,
        /// When it was received, milliseconds since the Unix epoch.
        received_ms: u64,
        /// Most messages stored for the user (`c2s.max_offline_messages`).
        max: u32,
    },
    /// Deletes `user`'s stored offline messages with an id up to `up_to` (those handed to
    /// the user's session); no error if there are none.
    DeleteOffline {
        /// The user (bare JID).
        user: String,
        /// The highest [`OfflineMessage::id`] to delete.
        up_to: u64,
    },
}

impl Change {
    /// The user whose data this change is for.
    pub fn user(&self) -> &str {
        match self {
            Change::UpsertItem { user, .. }
            | Change::RemoveItem { user, .. }
            | Change::AppendOffline { user, .. }
            | Change::DeleteOffline { user, .. } => user,
        }
    }

    /// Whether it changes the roster (and so bumps the roster version).
    pub fn is_roster(&self) -> bool {
        matches!(self, Change::UpsertItem { .. } | Change::RemoveItem { .. })
    }
}

/// A change to a user's block list (XEP-0191): normalised JIDs, as
/// [`fedrouter_proto::blocking::read_request`] gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlocklistChange {
    /// Block these JIDs (§3.3).
    Block(Vec<String>),
    /// Unblock these JIDs (§3.4); all of them when empty (§3.5).
    Unblock(Vec<String>),
}

/// A user's roster as stored: its version and its items, ordered by contact.
pub type Roster = (u64, Vec<StoredItem>);

/// What [`Store::import_user`] did for one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImportOutcome {
    /// The user did not exist and was created.
    pub created: bool,
    /// The user existed and its credentials were replaced (they differed).
    pub credentials_replaced: bool,
    /// Roster rows written (new or different); each bumped the roster version by one.
    pub items_written: usize,
    /// The user's roster version after the import.
    pub roster_version: u64,
}

/// The row to write when `new` (an imported item) meets `old` (the stored row for the
/// same contact, if any), or `None` when nothing would change, so that importing the same
/// data twice writes nothing (XEP-0227 import is idempotent).
///
/// The import carries the item's roster attributes (RFC 6121 §2.1.2: `name`, groups,
/// `subscription`, `ask`) and whether a request is pending in; it cannot carry what
/// XEP-0227 has no place for, so `old`'s pre-approval (RFC 6121 §3.4) is kept, and so is
/// `old`'s stored request stanza when both have one (the same request, received earlier).
pub fn merge_imported(old: Option<&StoredItem>, new: &StoredItem) -> Option<StoredItem> {
    let Some(old) = old else {
        return Some(new.clone());
    };
    let mut merged = new.clone();
    merged.pre_approved = old.pre_approved;
    if new.pending_in.is_some() && old.pending_in.is_some() {
        merged.pending_in.clone_from(&old.pending_in);
    }
    (merged != *old).then_some(merged)
}

/// The database file's name inside the configured `data_dir`.
pub const DB_FILE: &str = "fedrouter.db";

/// PBKDF2 iterations for new SCRAM credentials (RFC 7677 §4 asks for at least 4096).
pub const SCRAM_ITERATIONS: u32 = 4096;

/// The storage interface. Used from ONE storage thread (the [`StoreHandle`]), hence
/// `&mut self` and `Send` without `Sync`. Every method is atomic: on `Err` nothing of it
/// is stored.
pub trait Store: Send {
    /// Creates user `jid` (a normalised bare JID with a localpart) with `creds`, at most
    /// one per [`ScramHash`] (none is allowed: such a user cannot log in with SCRAM), and
    /// an empty roster at version 0.
    ///
    /// Errors: [`StoreError::Exists`], [`StoreError::InvalidJid`],
    /// [`StoreError::InvalidCredentials`], [`StoreError::Backend`].
    fn add_user(&mut self, jid: &str, creds: &[ScramCredentials]) -> Result<(), StoreError>;

    /// Removes user `jid` with its credentials, roster and offline messages. `Ok(false)` if
    /// there was no such user.
    fn remove_user(&mut self, jid: &str) -> Result<bool, StoreError>;

    /// Replaces all of `jid`'s credentials with `creds` (same rules as
    /// [`Store::add_user`]). `Ok(false)` if there is no such user.
    fn set_credentials(
        &mut self,
        jid: &str,
        creds: &[ScramCredentials],
    ) -> Result<bool, StoreError>;

    /// `jid`'s credentials for `hash`; `None` if the user does not exist or has none for
    /// that hash.
    fn credentials(
        &mut self,
        jid: &str,
        hash: ScramHash,
    ) -> Result<Option<ScramCredentials>, StoreError>;

    /// The users' bare JIDs, sorted; only those of `domain` (normalised domainpart) if
    /// given.
    fn list_users(&mut self, domain: Option<&str>) -> Result<Vec<String>, StoreError>;

    /// `user`'s roster version and items (sorted by contact).
    ///
    /// Errors: [`StoreError::NoSuchUser`], [`StoreError::Backend`].
    fn roster(&mut self, user: &str) -> Result<Roster, StoreError>;

    /// Applies `changes` in order, in one transaction (all or nothing), and returns, per
    /// change, the user's roster version after it (roster changes), the stored message's
    /// id ([`Change::AppendOffline`]) or the number of messages deleted
    /// ([`Change::DeleteOffline`]).
    ///
    /// Errors: [`StoreError::NoSuchUser`], [`StoreError::InvalidItem`],
    /// [`StoreError::OfflineFull`], [`StoreError::Backend`], [`StoreError::Full`] (SQLite:
    /// `SQLITE_FULL`).
    fn apply(&mut self, changes: &[Change]) -> Result<Vec<u64>, StoreError>;

    /// `user`'s stored offline messages (XEP-0160), oldest first (increasing id).
    ///
    /// Errors: [`StoreError::NoSuchUser`], [`StoreError::Backend`].
    fn offline(&mut self, user: &str) -> Result<Vec<OfflineMessage>, StoreError>;

    /// Every unanswered outbound subscription request: `(user, contact)` for each stored
    /// item with `pending_out` (RFC 6121 §3.1.2 "None + Pending Out" and "From + Pending
    /// Out"), sorted. The server sends these requests again when it starts, so that one
    /// acknowledged just before a crash reaches the contact (whose server ignores a
    /// duplicate, RFC 6121 Appendix A.3.1).
    ///
    /// Errors: [`StoreError::Backend`].
    fn pending_out(&mut self) -> Result<Vec<(String, String)>, StoreError>;

    /// Every unanswered inbound subscription request: `(user, contact)` for each stored
    /// item with `pending_in` (RFC 6121 §3.1.3 "Pending In"), sorted. The server counts
    /// them per remote domain at start (`limits.pending_subscriptions_per_domain`).
    /// The default reads every user's roster; a backend may answer with one query.
    ///
    /// Errors: [`StoreError::Backend`].
    fn pending_in(&mut self) -> Result<Vec<(String, String)>, StoreError> {
        let mut out = Vec::new();
        for user in self.list_users(None)? {
            let (_, items) = match self.roster(&user) {
                Ok(r) => r,
                Err(StoreError::NoSuchUser(_)) => continue,
                Err(e) => return Err(e),
            };
            out.extend(
                items
                    .into_iter()
                    .filter(|i| i.pending_in.is_some())
                    .map(|i| (user.clone(), i.contact)),
            );
        }
        out.sort();
        Ok(out)
    }

    /// `user`'s PEP nodes with their items (XEP-0163), sorted by node.
    ///
    /// Errors: [`StoreError::NoSuchUser`], [`StoreError::Backend`] (also from a store
    /// without PEP tables, the default).
    fn pep_nodes(&mut self, user: &str) -> Result<Vec<StoredPepNode>, StoreError> {
        let _ = user;
        Err(StoreError::Backend("this store keeps no PEP nodes".into()))
    }

    /// Makes one PEP publish durable ([`PepPublish`]), in one transaction.
    ///
    /// Errors: [`StoreError::NoSuchUser`], [`StoreError::Backend`].
    fn pep_publish(&mut self, publish: &PepPublish) -> Result<(), StoreError> {
        let _ = publish;
        Err(StoreError::Backend("this store keeps no PEP nodes".into()))
    }

    /// Deletes item `item_id` of `user`'s `node` (XEP-0060 §7.2); whether it was there.
    ///
    /// Errors: [`StoreError::NoSuchUser`], [`StoreError::Backend`].
    fn pep_retract(&mut self, user: &str, node: &str, item_id: &str) -> Result<bool, StoreError> {
        let _ = (user, node, item_id);
        Err(StoreError::Backend("this store keeps no PEP nodes".into()))
    }
    /// XEP-0227 import of one user: creates `jid` (a normalised bare JID with a
    /// localpart) if it does not exist, with `creds` (none when `None`); replaces an
    /// existing user's credentials with `creds` when given and different (`None` keeps
    /// them); and writes each of `items` that [`merge_imported`] says differs from the
    /// stored row (rows not in `items` are kept), each write bumping the roster version by
    /// one (RFC 6121 §2.6). Importing the same data again changes nothing.
    ///
    /// The default is built on the other methods and is atomic per step only;
    /// [`sqlite::SqliteStore`] does the whole user in one transaction.
    ///
    /// Errors: [`StoreError::InvalidJid`], [`StoreError::InvalidCredentials`],
    /// [`StoreError::InvalidItem`], [`StoreError::Backend`].
    fn import_user(
        &mut self,
        jid: &str,
        creds: Option<&[ScramCredentials]>,
        items: &[StoredItem],
    ) -> Result<ImportOutcome, StoreError> {
        let mut out = ImportOutcome::default();
        if !self
            .list_users(Some(crate::jid::domain_of(jid)))?
            .iter()
            .any(|u| u == jid)
        {
            self.add_user(jid, creds.unwrap_or(&[]))?;
            out.created = true;
        } else if let Some(creds) = creds {
            let mut stored = Vec::new();
            for h in ScramHash::ALL {
                stored.extend(self.credentials(jid, h)?);
            }
            if !same_credentials(&stored, creds) {
                self.set_credentials(jid, creds)?;
                out.credentials_replaced = true;
            }
        }
        let (version, rows) = self.roster(jid)?;
        out.roster_version = version;
        let changes: Vec<Change> = items
            .iter()
            .filter_map(|i| {
                let old = rows.iter().find(|r| r.contact == i.contact);
                merge_imported(old, i)
            })
            .map(|item| Change::UpsertItem {
                user: jid.to_owned(),
                item,
            })
            .collect();
        if !changes.is_empty() {
            let versions = self.apply(&changes)?;
            out.items_written = changes.len();
            out.roster_version = versions.last().copied().unwrap_or(version);
        }
        Ok(out)
    }

    /// `user`'s block list (XEP-0191 §3.2): the blocked JIDs (normalised, RFC 7622),
    /// sorted.
    ///
    /// Errors: [`StoreError::NoSuchUser`], [`StoreError::Backend`].
    fn blocklist(&mut self, user: &str) -> Result<Vec<String>, StoreError>;

    /// Changes `user`'s block list in one transaction (XEP-0191 §3.3–§3.5): adds each JID
    /// of [`BlocklistChange::Block`] (one already there stays once), removes each of
    /// [`BlocklistChange::Unblock`] (an absent one is no error), or all of them when its
    /// list is empty.
    ///
    /// Errors: [`StoreError::NoSuchUser`], [`StoreError::Backend`].
    fn change_blocklist(&mut self, user: &str, change: &BlocklistChange) -> Result<(), StoreError>;

    /// The connection state of a networked store (PostgreSQL: up or down, last error,
    /// reconnects), shared with the admin endpoint; `None` (the default) for a store
    /// without a connection (SQLite).
    fn status(&self) -> Option<Arc<StoreStatus>> {
        None
    }

    /// Called by the storage thread when no request came for [`IDLE_CHECK`]: a networked
    /// store checks its connection (and reconnects when the back-off allows), so that its
    /// [`Store::status`] follows the server without traffic. The default does nothing.
    fn idle(&mut self) {}

    /// Group commit: applies several independent groups of changes in ONE transaction.
    /// Each group is all-or-nothing on its own: a group that fails (unknown user, invalid
    /// item) gets its error and stores nothing, the others are stored. The outer `Err`
    /// means the transaction itself failed and no group is stored.
    ///
    /// The default applies each group with [`Store::apply`] (correct, but one transaction
    /// per group); [`sqlite::SqliteStore`] commits once.
    #[allow(clippy::type_complexity)]
    fn apply_groups(
        &mut self,
        groups: &[&[Change]],
    ) -> Result<Vec<Result<Vec<u64>, StoreError>>, StoreError> {
        Ok(groups.iter().map(|g| self.apply(g)).collect())
    }
}

/// Whether two credential sets hold the same credentials, in any order.
pub fn same_credentials(a: &[ScramCredentials], b: &[ScramCredentials]) -> bool {
    a.len() == b.len() && a.iter().all(|c| b.contains(c))
}

/// An operation for the storage thread: one [`Store`] method.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// [`Store::add_user`]; answered with [`Outcome::Done`].
    AddUser {
        /// Bare JID.
        jid: String,
        /// Credentials, at most one per hash.
        creds: Vec<ScramCredentials>,
    },
    /// [`Store::remove_user`]; answered with [`Outcome::Existed`].
    RemoveUser {
        /// Bare JID.
        jid: String,
    },
    /// [`Store::set_credentials`]; answered with [`Outcome::Existed`].
    SetCredentials {
        /// Bare JID.
        jid: String,
        /// Credentials, at most one per hash.
        creds: Vec<ScramCredentials>,
    },
    /// [`Store::credentials`]; answered with [`Outcome::Credentials`].
    Credentials {
        /// Bare JID.
        jid: String,
        /// Which hash.
        hash: ScramHash,
    },
    /// [`Store::list_users`]; answered with [`Outcome::Users`].
    ListUsers {
        /// Only this domain, if given.
        domain: Option<String>,
    },
    /// [`Store::roster`]; answered with [`Outcome::Roster`].
    Roster {
        /// Bare JID.
        user: String,
    },
    /// Roster and offline message changes, group-committed with the other `Apply`s queued
    /// beside it; answered with [`Outcome::Applied`] once durable.
    Apply(Vec<Change>),
    /// [`Store::pending_out`]; answered with [`Outcome::Pairs`].
    PendingOut,
    /// [`Store::pending_in`]; answered with [`Outcome::Pairs`].
    PendingIn,
    /// [`Store::pep_nodes`]; answered with [`Outcome::PepNodes`].
    PepNodes {
        /// Bare JID.
        user: String,
    },
    /// [`Store::pep_publish`]; answered with [`Outcome::Done`] once durable.
    PepPublish(PepPublish),
    /// [`Store::pep_retract`]; answered with [`Outcome::Existed`] once durable.
    PepRetract {
        /// Bare JID.
        user: String,
        /// The node.
        node: String,
        /// The item id.
        item_id: String,
    },
    /// [`Store::blocklist`]; answered with [`Outcome::Jids`].
    Blocklist {
        /// Bare JID.
        user: String,
    },
    /// [`Store::change_blocklist`]; answered with [`Outcome::Done`] once durable.
    ChangeBlocklist {
        /// Bare JID.
        user: String,
        /// What changes.
        change: BlocklistChange,
    },
    /// [`Store::offline`]; answered with [`Outcome::Offline`].
    Offline {
        /// Bare JID.
        user: String,
    },
}

/// What a successful [`Op`] returns.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// [`Op::AddUser`] done.
    Done,
    /// [`Op::RemoveUser`] / [`Op::SetCredentials`]: whether the user existed.
    Existed(bool),
    /// [`Op::Credentials`].
    Credentials(Option<ScramCredentials>),
    /// [`Op::ListUsers`].
    Users(Vec<String>),
    /// [`Op::Roster`]: version and items.
    Roster(Roster),
    /// [`Op::PendingOut`]: `(user, contact)` pairs.
    Pairs(Vec<(String, String)>),
    /// [`Op::Apply`]: committed; per change what [`Store::apply`] returns.
    Applied(Vec<u64>),
    /// [`Op::PepNodes`]: the account's PEP nodes.
    PepNodes(Vec<StoredPepNode>),
    /// [`Op::Blocklist`]: the blocked JIDs, sorted.
    Jids(Vec<String>),
    /// [`Op::Offline`]: the user's stored messages, oldest first.
    Offline(Vec<OfflineMessage>),
}

/// The answer to one submitted request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The `tag` given to [`StoreHandle::submit`].
    pub tag: u64,
    /// The outcome, or why the operation failed.
    pub result: Result<Outcome, StoreError>,
}

/// A queued request.
struct Request {
    op: Op,
    reply_to: Sender<Reply>,
    wake: Option<Arc<Notify>>,
    tag: u64,
}

/// What goes through the queue.
enum Msg {
    Request(Request),
    Stop,
}

/// Counters of the storage thread, read with [`StoreHandle::stats`].
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    changes: AtomicU64,
    commits: AtomicU64,
    batches: AtomicU64,
    failures: AtomicU64,
    /// The last fault's text ([`StoreError::is_fault`]).
    last_failure: Mutex<Option<String>>,
}

/// A snapshot of the storage thread's counters since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Requests taken from the queue for execution (each is answered).
    pub requests: u64,
    /// Changes (roster and offline messages) committed (in answered-`Ok` groups).
    pub changes: u64,
    /// Group commits (transactions of [`Op::Apply`] requests).
    pub commits: u64,
    /// Queue drains (each up to `max_batch` requests).
    pub batches: u64,
    /// Requests answered with a fault of the database itself ([`StoreError::is_fault`]:
    /// I/O error, disk full): every request of a failed group commit counts. The storage
    /// thread goes on; later requests succeed once the cause is gone.
    pub failures: u64,
}

/// Handle to the storage thread: cheap to clone (one per shard), `Send + Sync`.
///
/// The thread stops after [`StoreHandle::shutdown`], or when every handle is dropped (after
/// answering what was queued).
#[derive(Clone)]
pub struct StoreHandle {
    tx: Sender<Msg>,
    counters: Arc<Counters>,
    status: Option<Arc<StoreStatus>>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreHandle")
            .field("queued", &self.tx.len())
            .field("capacity", &self.tx.capacity())
            .finish()
    }
}

impl StoreHandle {
    /// Starts the storage thread (`fedrouter-store`) over `store`, with a request queue of
    /// `capacity` requests, draining at most `max_batch` requests per batch (so at most
    /// that many `Apply` requests per transaction). Both are at least 1.
    ///
    /// Panics if the thread cannot be started.
    pub fn spawn(store: Box<dyn Store>, max_batch: usize, capacity: usize) -> StoreHandle {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        let counters = Arc::new(Counters::default());
        let status = store.status();
        let c = Arc::clone(&counters);
        let max_batch = max_batch.max(1);
        let join = std::thread::Builder::new()
            .name("fedrouter-store".into())
            .spawn(move || run(store, rx, max_batch, &c))
            .expect("spawn the storage thread");
        StoreHandle {
            tx,
            counters,
            status,
            thread: Arc::new(Mutex::new(Some(join))),
        }
    }

    /// Queues `op` without blocking. The storage thread sends one [`Reply`] carrying
    /// `tag` to `reply_to`, then calls `wake.notify_one()` (once per batch per distinct
    /// `Notify`) so that the submitting shard's event loop drains its reply channel. For
    /// [`Op::Apply`] the reply comes after the commit: `Ok` means durable.
    ///
    /// `reply_to` should be unbounded, or have room for every request its owner has
    /// outstanding: the storage thread blocks on a full reply channel. A reply to a
    /// dropped receiver is discarded.
    ///
    /// Errors: `Err(op)`, the op handed back, when the queue is full (back-pressure: try
    /// again once a reply came in) or the thread has stopped ([`Self::is_running`]).
    #[allow(clippy::result_large_err)]
    pub fn submit(
        &self,
        op: Op,
        reply_to: Sender<Reply>,
        wake: Arc<Notify>,
        tag: u64,
    ) -> Result<(), Op> {
        self.try_queue(Request {
            op,
            reply_to,
            wake: Some(wake),
            tag,
        })
    }

    /// [`Self::submit`] for a caller that waits on `reply_to` itself (a thread, not an
    /// event loop): no wake-up.
    #[allow(clippy::result_large_err)]
    pub fn submit_unnotified(&self, op: Op, reply_to: Sender<Reply>, tag: u64) -> Result<(), Op> {
        self.try_queue(Request {
            op,
            reply_to,
            wake: None,
            tag,
        })
    }

    #[allow(clippy::result_large_err)]
    fn try_queue(&self, req: Request) -> Result<(), Op> {
        match self.tx.try_send(Msg::Request(req)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(Msg::Request(r)))
            | Err(TrySendError::Disconnected(Msg::Request(r))) => Err(r.op),
            Err(_) => unreachable!("only requests are try_sent"),
        }
    }

    /// Runs `op` and waits for its reply, blocking the calling thread (also while the
    /// queue is full): for tools and tests, never for a shard.
    ///
    /// Errors: the op's error, or [`StoreError::Closed`] if the thread has stopped.
    pub fn call(&self, op: Op) -> Result<Outcome, StoreError> {
        let (reply_to, replies) = crossbeam_channel::bounded(1);
        let req = Request {
            op,
            reply_to,
            wake: None,
            tag: 0,
        };
        self.tx
            .send(Msg::Request(req))
            .map_err(|_| StoreError::Closed)?;
        replies.recv().map_err(|_| StoreError::Closed)?.result
    }

    /// The store's connection state ([`Store::status`]): `None` for SQLite.
    pub fn status(&self) -> Option<&Arc<StoreStatus>> {
        self.status.as_ref()
    }

    /// Requests queued and not yet taken by the thread.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }

    /// Whether the storage thread still takes requests.
    pub fn is_running(&self) -> bool {
        self.thread
            .lock()
            .map(|t| t.as_ref().is_some_and(|j| !j.is_finished()))
            .unwrap_or(false)
    }

    /// The thread's counters so far.
    pub fn stats(&self) -> StoreStats {
        let c = &self.counters;
        StoreStats {
            requests: c.requests.load(Ordering::Relaxed),
            changes: c.changes.load(Ordering::Relaxed),
            commits: c.commits.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
        }
    }

    /// The text of the last fault counted in [`StoreStats::failures`], if any.
    pub fn last_failure(&self) -> Option<String> {
        self.counters
            .last_failure
            .lock()
            .map(|l| l.clone())
            .unwrap_or(None)
    }

    /// Stops the thread: everything queued before this call is executed and answered,
    /// requests that are still queued behind it get [`StoreError::Closed`], later submits
    /// fail; then waits for the thread to end (the store is dropped, closing the
    /// database). Blocks while the queue is full. Calling it again, or from another
    /// clone, returns at once.
    pub fn shutdown(&self) {
        let join = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(join) = join {
            let _ = self.tx.send(Msg::Stop);
            let _ = join.join();
        }
    }
}

/// How long the storage thread waits for a request before calling [`Store::idle`].
pub const IDLE_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// The storage thread's loop.
fn run(mut store: Box<dyn Store>, rx: Receiver<Msg>, max_batch: usize, counters: &Counters) {
    let mut batch: Vec<Request> = Vec::with_capacity(max_batch);
    let mut stop = false;
    while !stop {
        match rx.recv_timeout(IDLE_CHECK) {
            Ok(Msg::Request(r)) => batch.push(r),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                store.idle();
                continue;
            }
            Ok(Msg::Stop) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(Msg::Request(r)) => batch.push(r),
                Ok(Msg::Stop) => {
                    stop = true;
                    break;
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        counters.batches.fetch_add(1, Ordering::Relaxed);
        process(&mut *store, &mut batch, counters);
    }
    // Answer whatever is still queued behind the stop.
    let mut wakes = Vec::new();
    while let Ok(msg) = rx.try_recv() {
        if let Msg::Request(r) = msg {
            answer(&r, Err(StoreError::Closed), &mut wakes, counters);
        }
    }
    notify(&wakes);
}

/// Executes one drained batch in order: runs of `Apply` are group-committed, other ops
/// run alone; every request is answered, then each distinct waker is notified once.
fn process(store: &mut dyn Store, batch: &mut Vec<Request>, counters: &Counters) {
    counters
        .requests
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    let mut wakes: Vec<Arc<Notify>> = Vec::new();
    let mut i = 0;
    while i < batch.len() {
        let run_end = batch[i..]
            .iter()
            .position(|r| !matches!(r.op, Op::Apply(_)))
            .map_or(batch.len(), |p| i + p);
        if run_end > i {
            let group = &batch[i..run_end];
            let changes: Vec<&[Change]> = group
                .iter()
                .map(|r| match &r.op {
                    Op::Apply(c) => c.as_slice(),
                    _ => unreachable!("the run holds only Apply"),
                })
                .collect();
            let results = store.apply_groups(&changes);
            counters.commits.fetch_add(1, Ordering::Relaxed);
            match results {
                Ok(results) => {
                    for (r, res) in group.iter().zip(results) {
                        if let Ok(v) = &res {
                            counters
                                .changes
                                .fetch_add(v.len() as u64, Ordering::Relaxed);
                        }
                        answer(r, res.map(Outcome::Applied), &mut wakes, counters);
                    }
                }
                Err(e) => {
                    for r in group {
                        answer(r, Err(e.clone()), &mut wakes, counters);
                    }
                }
            }
            i = run_end;
            continue;
        }
        let r = &batch[i];
        let result = match &r.op {
            Op::AddUser { jid, creds } => store.add_user(jid, creds).map(|()| Outcome::Done),
            Op::RemoveUser { jid } => store.remove_user(jid).map(Outcome::Existed),
            Op::SetCredentials { jid, creds } => {
                store.set_credentials(jid, creds).map(Outcome::Existed)
            }
            Op::Credentials { jid, hash } => {
                store.credentials(jid, *hash).map(Outcome::Credentials)
            }
            Op::ListUsers { domain } => store.list_users(domain.as_deref()).map(Outcome::Users),
            Op::Roster { user } => store.roster(user).map(Outcome::Roster),
            Op::PendingOut => store.pending_out().map(Outcome::Pairs),
            Op::PendingIn => store.pending_in().map(Outcome::Pairs),
            Op::PepNodes { user } => store.pep_nodes(user).map(Outcome::PepNodes),
            Op::PepPublish(p) => store.pep_publish(p).map(|()| Outcome::Done),
            Op::PepRetract {
                user,
                node,
                item_id,
            } => store.pep_retract(user, node, item_id).map(Outcome::Existed),
            Op::Blocklist { user } => store.blocklist(user).map(Outcome::Jids),
            Op::ChangeBlocklist { user, change } => {
                store.change_blocklist(user, change).map(|()| Outcome::Done)
            }
            Op::Offline { user } => store.offline(user).map(Outcome::Offline),
            Op::Apply(_) => unreachable!("Apply runs are handled above"),
        };
        answer(r, result, &mut wakes, counters);
        i += 1;
    }
    batch.clear();
    notify(&wakes);
}

/// Sends one reply and remembers the request's waker (once per distinct `Notify`).
/// A fault ([`StoreError::is_fault`]) is counted in [`StoreStats::failures`] and kept as
/// the last failure.
fn answer(
    r: &Request,
    result: Result<Outcome, StoreError>,
    wakes: &mut Vec<Arc<Notify>>,
    counters: &Counters,
) {
    if let Err(e) = &result {
        if e.is_fault() {
            counters.failures.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut last) = counters.last_failure.lock() {
                *last = Some(e.to_string());
            }
        }
    }
    let _ = r.reply_to.send(Reply { tag: r.tag, result });
    if let Some(w) = &r.wake {
        if !wakes.iter().any(|x| Arc::ptr_eq(x, w)) {
            wakes.push(Arc::clone(w));
        }
    }
}

fn notify(wakes: &[Arc<Notify>]) {
    for w in wakes {
        w.notify_one();
    }
}
