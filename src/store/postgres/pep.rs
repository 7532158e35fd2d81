//! PEP nodes and items (XEP-0163) in PostgreSQL: the `pep_nodes` and `pep_items` tables,
//! with SQLite's rules (`crate::store::sqlite`): a publish upserts the node and the item
//! (as the newest) and trims the node to `max_items`, in the caller's transaction.

use super::tx::Tx;
use super::user_id;
use crate::store::{PepPublish, StoreError, StoredPepNode};

/// [`crate::store::Store::pep_nodes`].
pub(super) fn nodes(tx: &mut Tx, user: &str) -> Result<Vec<StoredPepNode>, StoreError> {
    let id = user_id(tx, user)?.ok_or_else(|| StoreError::NoSuchUser(user.into()))?;
    let mut nodes: Vec<StoredPepNode> = tx
        .query(
            "SELECT node, access_model, max_items FROM pep_nodes
             WHERE user_id = $1 ORDER BY node",
            &[&id],
        )?
        .iter()
        .map(|r| StoredPepNode {
            node: r.get(0),
            access_model: r.get(1),
            max_items: u32::try_from(r.get::<_, i64>(2)).unwrap_or(u32::MAX),
            items: Vec::new(),
        })
        .collect();
    for n in &mut nodes {
        n.items = tx
            .query(
                "SELECT item_id, payload FROM pep_items
                 WHERE user_id = $1 AND node = $2 ORDER BY seq",
                &[&id, &n.node],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
    }
    Ok(nodes)
}

/// [`crate::store::Store::pep_publish`].
pub(super) fn publish(tx: &mut Tx, p: &PepPublish) -> Result<(), StoreError> {
    let id: i64 = tx
        .opt("SELECT id FROM users WHERE jid = $1 FOR UPDATE", &[&p.user])?
        .ok_or_else(|| StoreError::NoSuchUser(p.user.clone()))?
        .get(0);
    let max_items = i64::from(p.max_items.max(1));
    tx.exec(
        "INSERT INTO pep_nodes (user_id, node, access_model, max_items) VALUES ($1, $2, $3, $4)
         ON CONFLICT (user_id, node) DO UPDATE SET access_model = $3, max_items = $4",
        &[&id, &p.node, &p.access_model, &max_items],
    )?;
    tx.exec(
        "INSERT INTO pep_items (user_id, node, item_id, seq, payload)
         VALUES ($1, $2, $3,
                 (SELECT COALESCE(MAX(seq), 0) + 1 FROM pep_items WHERE user_id = $1 AND node = $2),
                 $4)
         ON CONFLICT (user_id, node, item_id) DO UPDATE SET seq = excluded.seq, payload = $4",
        &[&id, &p.node, &p.item_id, &p.payload],
    )?;
    tx.exec(
        "DELETE FROM pep_items WHERE user_id = $1 AND node = $2 AND seq NOT IN
             (SELECT seq FROM pep_items WHERE user_id = $1 AND node = $2
              ORDER BY seq DESC LIMIT $3)",
        &[&id, &p.node, &max_items],
    )?;
    Ok(())
}

/// [`crate::store::Store::pep_retract`].
pub(super) fn retract(
    tx: &mut Tx,
    user: &str,
    node: &str,
    item_id: &str,
) -> Result<bool, StoreError> {
    let id = user_id(tx, user)?.ok_or_else(|| StoreError::NoSuchUser(user.into()))?;
    let n = tx.exec(
        "DELETE FROM pep_items WHERE user_id = $1 AND node = $2 AND item_id = $3",
        &[&id, &node, &item_id],
    )?;
    Ok(n > 0)
}
