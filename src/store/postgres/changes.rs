//! [`Change`] batches on PostgreSQL: validate a group (reading and locking its users'
//! rows), then write it; the same two steps and the same results as SQLite's
//! (`crate::store::sqlite`), so that both stores answer a batch identically.
//!
//! Each user row a group touches is locked (`SELECT … FOR UPDATE`) until the transaction
//! ends: two processes (cluster nodes) changing one user's roster are serialised, so
//! roster versions (RFC 6121 §2.6) stay one bump per change and the offline bound
//! (XEP-0160) counts every stored message.
//!
//! Round trips: a user's row is read and locked once per transaction ([`Locked`]), not
//! once per group, and its new roster version is written once, at the end ([`flush`]);
//! so a group commit of N one-change requests for one user costs about N + 2 statements
//! instead of 3N.

use std::collections::HashMap;

use super::tx::Tx;
use crate::store::{Change, StoreError, StoredItem};

/// Refuses an item SQLite would refuse: an unknown subscription state or an empty contact.
pub(super) fn check_item(item: &StoredItem) -> Result<(), StoreError> {
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

/// The user rows locked by this transaction: row id, roster version and (when counted)
/// offline messages as this transaction has changed them, and whether the version must
/// be written back.
#[derive(Default)]
pub(super) struct Locked {
    users: HashMap<String, GroupUser>,
}

impl Locked {
    /// Takes in what a group that was written changed.
    pub(super) fn absorb(&mut self, r: Resolved) {
        for g in r.users {
            let bumped = g.bumped || self.users.get(&g.jid).is_some_and(|o| o.bumped);
            self.users.insert(g.jid.clone(), GroupUser { bumped, ..g });
        }
    }
}

/// Writes the new roster version of every user whose roster changed in this transaction.
pub(super) fn flush(tx: &mut Tx, locked: &Locked) -> Result<(), StoreError> {
    for g in locked.users.values().filter(|g| g.bumped) {
        tx.exec(
            "UPDATE users SET roster_version = $2 WHERE id = $1",
            &[&g.id, &(g.version as i64)],
        )?;
    }
    Ok(())
}

/// One user of a validated group: bare JID, row id, roster version (before the group,
/// then as changed), whether a roster change bumped it, and offline messages stored now
/// (`None`: not counted yet).
#[derive(Clone)]
pub(super) struct GroupUser {
    pub(super) jid: String,
    pub(super) id: i64,
    pub(super) version: u64,
    pub(super) bumped: bool,
    pub(super) offline: Option<u64>,
}

/// A validated group: its distinct users and, per change, the index of its user there.
pub(super) struct Resolved {
    pub(super) users: Vec<GroupUser>,
    pub(super) user_of: Vec<usize>,
}

/// Validates a group of changes and reads (and locks, once per transaction: `locked`) its
/// users' ids and roster versions, and, for offline appends, how many messages each has;
/// writes nothing.
pub(super) fn resolve(
    tx: &mut Tx,
    locked: &mut Locked,
    changes: &[Change],
) -> Result<Resolved, StoreError> {
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
                let g = match locked.users.get(user) {
                    Some(g) => GroupUser {
                        bumped: false,
                        ..g.clone()
                    },
                    None => {
                        let row = tx
                            .opt(
                                "SELECT id, roster_version FROM users WHERE jid = $1 FOR UPDATE",
                                &[&user],
                            )?
                            .ok_or_else(|| StoreError::NoSuchUser(user.into()))?;
                        let g = GroupUser {
                            jid: user.to_owned(),
                            id: row.get(0),
                            version: row.get::<_, i64>(1) as u64,
                            bumped: false,
                            offline: None,
                        };
                        locked.users.insert(user.to_owned(), g.clone());
                        g
                    }
                };
                users.push(g);
                users.len() - 1
            }
        };
        user_of.push(u);
        if let Change::AppendOffline { max, .. } = ch {
            let g = &mut users[u];
            let stored = match g.offline {
                Some(n) => n,
                None => tx
                    .one("SELECT COUNT(*) FROM offline WHERE user_id = $1", &[&g.id])?
                    .get::<_, i64>(0) as u64,
            };
            if stored >= u64::from(*max) {
                return Err(StoreError::OfflineFull(user.into()));
            }
            g.offline = Some(stored + 1);
        }
    }
    Ok(Resolved { users, user_of })
}

/// Writes a validated group (one roster version bump per roster change, kept in `r` for
/// [`Locked::absorb`] and [`flush`]); returns per change what
/// [`crate::store::Store::apply`] does. Any error here is a database failure.
pub(super) fn write(
    tx: &mut Tx,
    changes: &[Change],
    r: &mut Resolved,
) -> Result<Vec<u64>, StoreError> {
    let mut versions = Vec::with_capacity(changes.len());
    for (ch, &u) in changes.iter().zip(&r.user_of) {
        let id = r.users[u].id;
        match ch {
            Change::UpsertItem { item, .. } => {
                tx.exec(
                    "INSERT INTO roster (user_id, contact, name, groups, subscription,
                                         pending_out, pending_in, pre_approved, in_roster)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (user_id, contact) DO UPDATE SET
                         name = excluded.name, groups = excluded.groups,
                         subscription = excluded.subscription,
                         pending_out = excluded.pending_out, pending_in = excluded.pending_in,
                         pre_approved = excluded.pre_approved, in_roster = excluded.in_roster",
                    &[
                        &id,
                        &item.contact,
                        &item.name,
                        &item.groups,
                        &item.subscription,
                        &item.pending_out,
                        &item.pending_in,
                        &item.pre_approved,
                        &item.in_roster,
                    ],
                )?;
            }
            Change::RemoveItem { contact, .. } => {
                tx.exec(
                    "DELETE FROM roster WHERE user_id = $1 AND contact = $2",
                    &[&id, contact],
                )?;
            }
            Change::AppendOffline {
                stanza,
                received_ms,
                ..
            } => {
                let row = tx.one(
                    "INSERT INTO offline (user_id, received_ms, stanza) VALUES ($1, $2, $3)
                     RETURNING id",
                    &[&id, &(*received_ms as i64), stanza],
                )?;
                versions.push(row.get::<_, i64>(0) as u64);
                continue;
            }
            Change::DeleteOffline { up_to, .. } => {
                let n = tx.exec(
                    "DELETE FROM offline WHERE user_id = $1 AND id <= $2",
                    &[&id, &i64::try_from(*up_to).unwrap_or(i64::MAX)],
                )?;
                versions.push(n);
                // Not counted any more: the next append of this transaction counts again.
                r.users[u].offline = None;
                continue;
            }
        }
        let g = &mut r.users[u];
        g.version += 1;
        g.bumped = true;
        versions.push(g.version);
    }
    Ok(versions)
}

/// The stored roster row of user row `id` for `contact`, if any.
pub(super) fn stored_row(
    tx: &mut Tx,
    id: i64,
    contact: &str,
) -> Result<Option<StoredItem>, StoreError> {
    Ok(tx
        .opt(
            "SELECT contact, name, groups, subscription, pending_out, pending_in, pre_approved,
                    in_roster
             FROM roster WHERE user_id = $1 AND contact = $2",
            &[&id, &contact],
        )?
        .map(|r| item_of(&r)))
}

/// A roster row (columns in the order of [`stored_row`]'s SELECT) as a [`StoredItem`].
pub(super) fn item_of(r: &postgres::Row) -> StoredItem {
    StoredItem {
        contact: r.get(0),
        name: r.get(1),
        groups: r.get(2),
        subscription: r.get(3),
        pending_out: r.get(4),
        pending_in: r.get(5),
        pre_approved: r.get(6),
        in_roster: r.get(7),
    }
}
