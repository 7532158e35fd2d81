//! The durable outbox (`pending_out`), pending inbound requests (`pending_in`), PEP
//! nodes and XEP-0227 import over either backend. Part of `tests/store.rs`.

use fedrouter::store::scram::ScramHash;
use fedrouter::store::StoreError;

use super::{creds, item, upsert, Backend};

/// The durable outbox (RFC 6121 §3.1.2 requests not answered yet) and PEP nodes
/// (XEP-0163): sorted, trimmed to `max_items`, retracted, gone with the user.
pub(crate) fn pending_out_and_pep_round_trip(b: &dyn Backend) {
    let mut s = b.open();
    for u in ["b@d.example", "a@d.example"] {
        s.add_user(u, &[]).unwrap();
    }
    let mut asked = item("z@x.example", "none");
    asked.pending_out = true;
    let mut asked2 = item("m@x.example", "from");
    asked2.pending_out = true;
    s.apply(&[
        upsert("b@d.example", asked.clone()),
        upsert("a@d.example", asked.clone()),
        upsert("a@d.example", asked2),
        upsert("a@d.example", item("n@x.example", "both")),
    ])
    .unwrap();
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        s.pending_out().unwrap(),
        pairs(&[
            ("a@d.example", "m@x.example"),
            ("a@d.example", "z@x.example"),
            ("b@d.example", "z@x.example")
        ])
    );
    // Unanswered inbound requests ("Pending In", RFC 6121 §3.1.3), which the server
    // counts per remote domain at start (`limits.pending_subscriptions_per_domain`).
    assert_eq!(s.pending_in().unwrap(), pairs(&[]));
    let mut asking = item("p@y.example", "none");
    asking.pending_in = Some("<presence type='subscribe' from='p@y.example'/>".into());
    asking.in_roster = false;
    let mut asking2 = item("z@x.example", "none");
    asking2.pending_in = Some("<presence type='subscribe' from='z@x.example'/>".into());
    asking2.pending_out = true;
    s.apply(&[
        upsert("b@d.example", asking),
        upsert("a@d.example", asking2),
    ])
    .unwrap();
    assert_eq!(
        s.pending_in().unwrap(),
        pairs(&[
            ("a@d.example", "z@x.example"),
            ("b@d.example", "p@y.example")
        ])
    );

    let publish = |node: &str, max: u32, id: &str, payload: &str| fedrouter::store::PepPublish {
        user: "a@d.example".into(),
        node: node.into(),
        access_model: "presence".into(),
        max_items: max,
        item_id: id.into(),
        payload: payload.into(),
    };
    let mut ghost = publish("n", 1, "a", "<x/>");
    ghost.user = "nobody@d.example".into();
    assert_eq!(
        s.pep_publish(&ghost),
        Err(StoreError::NoSuchUser("nobody@d.example".into()))
    );
    for (node, max, id, payload) in [
        ("n", 2, "a", "<a/>"),
        ("n", 2, "b", "<b/>"),
        ("n", 2, "a", "<a2/>"),
        ("n", 2, "c", "<c/>"),
        ("m", 1, "x", "<x/>"),
    ] {
        s.pep_publish(&publish(node, max, id, payload)).unwrap();
    }
    assert!(s.pep_retract("a@d.example", "m", "x").unwrap());
    assert!(!s.pep_retract("a@d.example", "m", "x").unwrap());
    drop(s);
    let mut s = b.open();
    let nodes = s.pep_nodes("a@d.example").unwrap();
    assert_eq!(
        nodes.iter().map(|n| n.node.as_str()).collect::<Vec<_>>(),
        ["m", "n"]
    );
    assert!(nodes[0].items.is_empty());
    assert_eq!(nodes[1].max_items, 2);
    assert_eq!(
        nodes[1].items,
        vec![("a".into(), "<a2/>".into()), ("c".into(), "<c/>".into())]
    );
    assert!(s.remove_user("a@d.example").unwrap());
    assert_eq!(
        s.pending_out().unwrap(),
        pairs(&[("b@d.example", "z@x.example")])
    );
    s.add_user("a@d.example", &[]).unwrap();
    assert_eq!(s.pep_nodes("a@d.example").unwrap(), vec![]);
}

/// XEP-0227 import of one user: created with its roster, idempotent, credentials
/// replaced only when different, and all or nothing.
pub(crate) fn import_user_in_one_transaction(b: &dyn Backend) {
    let mut s = b.open();
    let u = "imp@d.example";
    let c1 = [creds("pencil", ScramHash::Sha256)];
    let items = [item("a@x.example", "both"), item("b@x.example", "to")];
    let out = s.import_user(u, Some(&c1), &items).unwrap();
    assert!(out.created && !out.credentials_replaced);
    assert_eq!((out.items_written, out.roster_version), (2, 2));
    let again = s.import_user(u, Some(&c1), &items).unwrap();
    assert_eq!(
        (
            again.created,
            again.credentials_replaced,
            again.items_written
        ),
        (false, false, 0)
    );
    assert_eq!(again.roster_version, 2);
    let c2 = [creds("eraser", ScramHash::Sha256)];
    let mut changed = items.clone();
    changed[1].subscription = "both".into();
    let out = s.import_user(u, Some(&c2), &changed).unwrap();
    assert!(out.credentials_replaced);
    assert_eq!((out.items_written, out.roster_version), (1, 3));
    assert_eq!(
        s.credentials(u, ScramHash::Sha256).unwrap(),
        Some(c2[0].clone())
    );
    assert!(matches!(
        s.import_user("new@d.example", None, &[item("c@x.example", "maybe")]),
        Err(StoreError::InvalidItem(_))
    ));
    assert_eq!(s.list_users(None).unwrap(), [u]);
    assert_eq!(
        s.import_user("Bad@d.example", None, &[]),
        Err(StoreError::InvalidJid("Bad@d.example".into()))
    );
}
