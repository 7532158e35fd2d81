//! `Store::import_user` (XEP-0227 import of one user): creation, idempotence (the same
//! data twice writes nothing and keeps the roster version), merging with what is stored
//! (pre-approval and the stored request stanza kept, rows the import does not name kept),
//! credential replacement, and all-or-nothing on a bad item. Run against the SQLite
//! override (one transaction) and the trait's default (built on the other methods).

use fedrouter::store::scram::{ScramCredentials, ScramHash};
use fedrouter::store::sqlite::SqliteStore;
use fedrouter::store::{
    BlocklistChange, Change, ImportOutcome, Roster, Store, StoreError, StoredItem,
};

fn creds(password: &str, hash: ScramHash) -> ScramCredentials {
    ScramCredentials::derive(password, hash, b"0123456789abcdef", 16).unwrap()
}

fn item(contact: &str, subscription: &str) -> StoredItem {
    StoredItem {
        contact: contact.into(),
        name: None,
        groups: vec![],
        subscription: subscription.into(),
        pending_out: false,
        pending_in: None,
        pre_approved: false,
        in_roster: true,
    }
}

/// A store that forwards only the required methods: `import_user` is the trait's default.
struct Default(SqliteStore);

impl Store for Default {
    fn add_user(&mut self, jid: &str, c: &[ScramCredentials]) -> Result<(), StoreError> {
        self.0.add_user(jid, c)
    }
    fn remove_user(&mut self, jid: &str) -> Result<bool, StoreError> {
        self.0.remove_user(jid)
    }
    fn set_credentials(&mut self, jid: &str, c: &[ScramCredentials]) -> Result<bool, StoreError> {
        self.0.set_credentials(jid, c)
    }
    fn credentials(
        &mut self,
        jid: &str,
        h: ScramHash,
    ) -> Result<Option<ScramCredentials>, StoreError> {
        self.0.credentials(jid, h)
    }
    fn list_users(&mut self, d: Option<&str>) -> Result<Vec<String>, StoreError> {
        self.0.list_users(d)
    }
    fn roster(&mut self, user: &str) -> Result<Roster, StoreError> {
        self.0.roster(user)
    }
    fn pending_out(&mut self) -> Result<Vec<(String, String)>, StoreError> {
        self.0.pending_out()
    }
    fn apply(&mut self, changes: &[Change]) -> Result<Vec<u64>, StoreError> {
        self.0.apply(changes)
    }
    fn blocklist(&mut self, user: &str) -> Result<Vec<String>, StoreError> {
        self.0.blocklist(user)
    }
    fn change_blocklist(&mut self, user: &str, change: &BlocklistChange) -> Result<(), StoreError> {
        self.0.change_blocklist(user, change)
    }
    fn offline(&mut self, user: &str) -> Result<Vec<fedrouter::store::OfflineMessage>, StoreError> {
        self.0.offline(user)
    }
}

const U: &str = "alice@d.test";

fn scenario(s: &mut dyn Store) {
    let sha1 = [creds("pw", ScramHash::Sha1)];
    let mut dave = item("dave@d.test", "none");
    dave.in_roster = false;
    dave.pending_in =
        Some("<presence from='dave@d.test' to='alice@d.test' type='subscribe'/>".into());
    let items = vec![item("bob@d.test", "both"), dave.clone()];

    let first = s.import_user(U, Some(&sha1), &items).unwrap();
    assert_eq!(
        first,
        ImportOutcome {
            created: true,
            credentials_replaced: false,
            items_written: 2,
            roster_version: 2
        }
    );
    let again = s.import_user(U, Some(&sha1), &items).unwrap();
    assert_eq!(
        again,
        ImportOutcome {
            roster_version: 2,
            ..ImportOutcome::default()
        },
        "the same data twice writes nothing"
    );

    // What fedrouter learnt meanwhile: a pre-approval, the request as it was received, a
    // contact the file does not know. Importing the file again keeps all of it.
    let mut carol = item("carol@d.test", "none");
    carol.pre_approved = true;
    let mut received = dave.clone();
    received.pending_in = Some("<presence type='subscribe' from='dave@d.test/phone'/>".into());
    s.apply(&[
        Change::UpsertItem {
            user: U.into(),
            item: carol.clone(),
        },
        Change::UpsertItem {
            user: U.into(),
            item: received.clone(),
        },
        Change::UpsertItem {
            user: U.into(),
            item: item("eve@d.test", "to"),
        },
    ])
    .unwrap();
    let mut file_carol = carol.clone();
    file_carol.pre_approved = false;
    let with_carol = vec![item("bob@d.test", "both"), dave.clone(), file_carol];
    let out = s.import_user(U, None, &with_carol).unwrap();
    assert_eq!(out.items_written, 0, "{out:?}");
    assert_eq!(out.roster_version, 5);
    let (v, rows) = s.roster(U).unwrap();
    assert_eq!(v, 5);
    assert_eq!(rows.len(), 4, "{rows:#?}");
    assert!(rows
        .iter()
        .any(|r| r.contact == "carol@d.test" && r.pre_approved));
    assert!(rows.contains(&received), "{rows:#?}");

    // A changed item is written (one bump); different credentials replace the stored ones.
    let mut bob = item("bob@d.test", "both");
    bob.name = Some("Bob".into());
    let sha256 = [creds("new", ScramHash::Sha256)];
    let out = s.import_user(U, Some(&sha256), &[bob.clone()]).unwrap();
    assert_eq!(
        out,
        ImportOutcome {
            created: false,
            credentials_replaced: true,
            items_written: 1,
            roster_version: 6
        }
    );
    assert_eq!(s.credentials(U, ScramHash::Sha1).unwrap(), None);
    assert_eq!(
        s.credentials(U, ScramHash::Sha256).unwrap().as_ref(),
        Some(&sha256[0])
    );
    // `None` keeps them.
    s.import_user(U, None, &[]).unwrap();
    assert_eq!(
        s.credentials(U, ScramHash::Sha256).unwrap().as_ref(),
        Some(&sha256[0])
    );

    // A user without credentials is created without any.
    let out = s.import_user("ldap@d.test", None, &[]).unwrap();
    assert!(out.created);
    for h in ScramHash::ALL {
        assert_eq!(s.credentials("ldap@d.test", h).unwrap(), None);
    }
    assert_eq!(
        s.import_user("Not A Jid", None, &[]).unwrap_err(),
        StoreError::InvalidJid("Not A Jid".into())
    );
}

#[test]
fn sqlite_import_user() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = SqliteStore::open(dir.path().join("db")).unwrap();
    scenario(&mut s);
    // All or nothing: a bad item stores nothing of a new user.
    let err = s
        .import_user(
            "bad@d.test",
            None,
            &[item("x@d.test", "both"), item("y@d.test", "remove")],
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidItem(_)), "{err:?}");
    assert!(!s
        .list_users(None)
        .unwrap()
        .contains(&"bad@d.test".to_owned()));
}

#[test]
fn default_import_user() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Default(SqliteStore::open(dir.path().join("db")).unwrap());
    scenario(&mut s);
}
