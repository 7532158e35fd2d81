//! PEP nodes and items (XEP-0163) in SQLite: the `pep_nodes` and `pep_items` tables of
//! the second migration. Each function is one transaction.

use rusqlite::{params, Connection, TransactionBehavior};

use super::{db, user_id};
use crate::store::{PepPublish, StoreError, StoredPepNode};

/// [`crate::store::Store::pep_nodes`].
pub(super) fn nodes(conn: &mut Connection, user: &str) -> Result<Vec<StoredPepNode>, StoreError> {
    let tx = conn.transaction().map_err(db)?;
    let id = user_id(&tx, user)?.ok_or_else(|| StoreError::NoSuchUser(user.into()))?;
    let mut nodes: Vec<StoredPepNode> = Vec::new();
    {
        let mut stmt = tx
            .prepare_cached(
                "SELECT node, access_model, max_items FROM pep_nodes
                 WHERE user_id = ?1 ORDER BY node",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map([id], |r| {
                Ok(StoredPepNode {
                    node: r.get(0)?,
                    access_model: r.get(1)?,
                    max_items: r.get(2)?,
                    items: Vec::new(),
                })
            })
            .map_err(db)?;
        for n in rows {
            nodes.push(n.map_err(db)?);
        }
        let mut stmt = tx
            .prepare_cached(
                "SELECT item_id, payload FROM pep_items
                 WHERE user_id = ?1 AND node = ?2 ORDER BY seq",
            )
            .map_err(db)?;
        for n in &mut nodes {
            let rows = stmt
                .query_map(params![id, n.node], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(db)?;
            for it in rows {
                n.items.push(it.map_err(db)?);
            }
        }
    }
    tx.commit().map_err(db)?;
    Ok(nodes)
}

/// [`crate::store::Store::pep_publish`].
pub(super) fn publish(conn: &mut Connection, p: &PepPublish) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db)?;
    let id = user_id(&tx, &p.user)?.ok_or_else(|| StoreError::NoSuchUser(p.user.clone()))?;
    let max_items = p.max_items.max(1);
    tx.prepare_cached(
        "INSERT INTO pep_nodes (user_id, node, access_model, max_items) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (user_id, node) DO UPDATE SET access_model = ?3, max_items = ?4",
    )
    .map_err(db)?
    .execute(params![id, p.node, p.access_model, max_items])
    .map_err(db)?;
    tx.prepare_cached(
        "INSERT INTO pep_items (user_id, node, item_id, seq, payload)
         VALUES (?1, ?2, ?3,
                 (SELECT COALESCE(MAX(seq), 0) + 1 FROM pep_items WHERE user_id = ?1 AND node = ?2),
                 ?4)
         ON CONFLICT (user_id, node, item_id) DO UPDATE SET seq = excluded.seq, payload = ?4",
    )
    .map_err(db)?
    .execute(params![id, p.node, p.item_id, p.payload])
    .map_err(db)?;
    tx.prepare_cached(
        "DELETE FROM pep_items WHERE user_id = ?1 AND node = ?2 AND seq NOT IN
             (SELECT seq FROM pep_items WHERE user_id = ?1 AND node = ?2
              ORDER BY seq DESC LIMIT ?3)",
    )
    .map_err(db)?
    .execute(params![id, p.node, max_items])
    .map_err(db)?;
    tx.commit().map_err(db)
}

/// [`crate::store::Store::pep_retract`].
pub(super) fn retract(
    conn: &mut Connection,
    user: &str,
    node: &str,
    item_id: &str,
) -> Result<bool, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db)?;
    let id = user_id(&tx, user)?.ok_or_else(|| StoreError::NoSuchUser(user.into()))?;
    let n = tx
        .prepare_cached("DELETE FROM pep_items WHERE user_id = ?1 AND node = ?2 AND item_id = ?3")
        .map_err(db)?
        .execute(params![id, node, item_id])
        .map_err(db)?;
    tx.commit().map_err(db)?;
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use crate::store::sqlite::SqliteStore;
    use crate::store::{PepPublish, Store, StoreError};

    fn publish(user: &str, node: &str, max: u32, id: &str, payload: &str) -> PepPublish {
        PepPublish {
            user: user.into(),
            node: node.into(),
            access_model: "presence".into(),
            max_items: max,
            item_id: id.into(),
            payload: payload.into(),
        }
    }

    #[test]
    fn publish_trim_retract_reload() {
        let dir = std::env::temp_dir().join(format!("fedrouter-pep-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("db");
        {
            let mut s = SqliteStore::open(&path).unwrap();
            s.add_user("alice@a.test", &[]).unwrap();
            assert_eq!(
                s.pep_publish(&publish("nobody@a.test", "n", 1, "a", "<x/>")),
                Err(StoreError::NoSuchUser("nobody@a.test".into()))
            );
            s.pep_publish(&publish("alice@a.test", "n", 2, "a", "<a/>"))
                .unwrap();
            s.pep_publish(&publish("alice@a.test", "n", 2, "b", "<b/>"))
                .unwrap();
            s.pep_publish(&publish("alice@a.test", "n", 2, "a", "<a2/>"))
                .unwrap();
            s.pep_publish(&publish("alice@a.test", "n", 2, "c", "<c/>"))
                .unwrap();
            s.pep_publish(&publish("alice@a.test", "m", 1, "x", "<x/>"))
                .unwrap();
            assert!(s.pep_retract("alice@a.test", "m", "x").unwrap());
            assert!(!s.pep_retract("alice@a.test", "m", "x").unwrap());
        }
        let mut s = SqliteStore::open(&path).unwrap();
        let nodes = s.pep_nodes("alice@a.test").unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].node, "m");
        assert!(nodes[0].items.is_empty());
        assert_eq!(
            nodes[1].items,
            vec![("a".into(), "<a2/>".into()), ("c".into(), "<c/>".into())]
        );
        assert!(s.remove_user("alice@a.test").unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
