//! XEP-0227 reading, writing, import and export without sockets: the files real servers
//! wrote (`tests/data/pie/`: Prosody's `prosody-migrator`, ejabberd's `export_piefxis`),
//! a write/read round trip, import into a real SQLite store (twice: nothing changes the
//! second time), export and re-import (the same users, credentials and rows), and a file
//! with bad entries (the rest is imported, each skip is reported, the command exits 1).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use fedrouter::pie::import::{import, load, rows, Summary};
use fedrouter::pie::read::read;
use fedrouter::pie::write::{host_document, ExportUser};
use fedrouter::pie::{Credentials, Document, Item, PieError, User};
use fedrouter::store::sqlite::SqliteStore;
use fedrouter::store::{ScramHash, Store, StoredItem};

fn data(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/pie")
        .join(p)
}

fn domains() -> Vec<String> {
    ["pie.test", "ej.test", "sha256.test", "plain.test"]
        .iter()
        .map(|d| d.to_string())
        .collect()
}

fn item(jid: &str, sub: &str, ask: bool, name: Option<&str>, groups: &[&str]) -> Item {
    Item {
        jid: jid.into(),
        name: name.map(str::to_owned),
        subscription: sub.into(),
        ask,
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

fn scram(u: &User) -> &[fedrouter::store::ScramCredentials] {
    match &u.credentials {
        Credentials::Scram(c) => c,
        other => panic!("{}: credentials {other:?}, not SCRAM", u.jid),
    }
}

fn users_of(docs: &[(PathBuf, Document)]) -> BTreeMap<String, User> {
    docs.iter()
        .flat_map(|(_, d)| d.users.iter().cloned())
        .map(|u| (u.jid.clone(), u))
        .collect()
}

#[test]
fn prosody_migrator_file_reads() {
    let text = std::fs::read_to_string(data("prosody/alice@pie.test.xml")).unwrap();
    let doc = read(&text).unwrap();
    assert!(doc.skipped.is_empty(), "{:?}", doc.skipped);
    assert!(doc.ignored.is_empty(), "{:?}", doc.ignored);
    let [alice] = doc.users.as_slice() else {
        panic!("{:?}", doc.users)
    };
    assert_eq!(alice.jid, "alice@pie.test");
    let creds = scram(alice);
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0].mechanism, ScramHash::Sha1);
    assert_eq!(creds[0].iterations, 10000);
    assert!(creds[0].verify_password("alice-secret"));
    assert!(!creds[0].verify_password("bob-secret"));
    // Prosody writes items and groups in Lua table order: compare them sorted.
    let mut roster = alice.roster.clone();
    roster.sort_by(|a, b| a.jid.cmp(&b.jid));
    for i in &mut roster {
        i.groups.sort();
    }
    assert_eq!(
        roster,
        vec![
            item(
                "bob@pie.test",
                "both",
                false,
                Some("Bob B"),
                &["Friends", "Work"]
            ),
            item("carol@pie.test", "to", false, Some("Carol"), &[]),
            item("erin@pie.test", "none", true, None, &[]),
            item("zed@remote.test", "none", false, Some("Zed"), &["Remote"]),
        ]
    );
    // Prosody writes the request without xmlns: it inherits urn:xmpp:pie:0.
    assert_eq!(alice.pending_in, vec![("dave@pie.test".to_owned(), None)]);
}

#[test]
fn ejabberd_export_folder_reads_each_host_once() {
    let docs = load(&data("ejabberd")).unwrap();
    // The main file and the three per-host files it includes, each read once.
    assert_eq!(
        docs.len(),
        4,
        "{:?}",
        docs.iter().map(|d| &d.0).collect::<Vec<_>>()
    );
    let users = users_of(&docs);
    assert_eq!(
        users.keys().cloned().collect::<Vec<_>>(),
        [
            "alice@ej.test",
            "bob@ej.test",
            "carol@ej.test",
            "dave@ej.test",
            "pat@plain.test",
            "sam@sha256.test"
        ]
    );
    let alice = &users["alice@ej.test"];
    let creds = scram(alice);
    assert_eq!(creds[0].mechanism, ScramHash::Sha1);
    assert!(
        creds[0].verify_password("alice-secret"),
        "ejabberd 23.01's twice-encoded keys decode to alice's credentials"
    );
    assert_eq!(
        alice.roster,
        vec![
            item(
                "bob@ej.test",
                "both",
                false,
                Some("Bob B"),
                &["Friends", "Work"]
            ),
            item("carol@ej.test", "to", false, Some("Carol"), &[]),
            item("zed@remote.test", "none", false, Some("Zed"), &["Remote"]),
        ]
    );
    assert_eq!(
        alice.pending_in,
        vec![("dave@ej.test".to_owned(), Some("let me in".to_owned()))]
    );
    let sam = scram(&users["sam@sha256.test"]);
    assert_eq!(sam[0].mechanism, ScramHash::Sha256);
    assert!(sam[0].verify_password("sam-secret"));
    assert_eq!(
        users["pat@plain.test"].credentials,
        Credentials::Password("pat-secret".into())
    );
    // The main file alone follows its includes to the same users.
    let main = docs
        .iter()
        .find(|(_, d)| !d.includes.is_empty())
        .map(|(p, _)| p.clone())
        .unwrap();
    assert_eq!(users_of(&load(&main).unwrap()), users);
}

#[test]
fn write_then_read_gives_the_same_users() {
    let docs = load(&data("prosody")).unwrap();
    for u in users_of(&docs).into_values() {
        let export = ExportUser {
            jid: u.jid.clone(),
            credentials: scram(&u).to_vec(),
            rows: rows(&u),
        };
        let text = host_document("pie.test", &[export]);
        let back = read(&text).unwrap();
        assert!(
            back.skipped.is_empty() && back.ignored.is_empty(),
            "{back:?}"
        );
        let [b] = back.users.as_slice() else {
            panic!("{back:?}")
        };
        assert_eq!(b.jid, u.jid);
        assert_eq!(b.credentials, u.credentials, "{}", u.jid);
        let sorted = |v: &[Item]| {
            let mut v = v.to_vec();
            v.sort_by(|a, b| a.jid.cmp(&b.jid));
            v
        };
        assert_eq!(sorted(&b.roster), sorted(&u.roster), "{}", u.jid);
        assert_eq!(b.pending_in, u.pending_in, "{}", u.jid);
    }
}

/// Every user's (credentials per hash, roster version, rows).
type Snapshot = BTreeMap<String, (Vec<Option<Vec<u8>>>, u64, Vec<StoredItem>)>;

/// A [`Snapshot`] without roster versions (another store numbers them on its own).
type Content = BTreeMap<String, (Vec<Option<Vec<u8>>>, Vec<StoredItem>)>;

fn snapshot(store: &mut SqliteStore) -> Snapshot {
    store
        .list_users(None)
        .unwrap()
        .into_iter()
        .map(|u| {
            let creds = ScramHash::ALL
                .iter()
                .map(|&h| {
                    store
                        .credentials(&u, h)
                        .unwrap()
                        .map(|c| [c.salt, c.stored_key, c.server_key].concat())
                })
                .collect();
            let (v, rows) = store.roster(&u).unwrap();
            (u, (creds, v, rows))
        })
        .collect()
}

fn import_all(store: &mut SqliteStore) -> Summary {
    let mut docs = load(&data("prosody")).unwrap();
    docs.extend(load(&data("ejabberd")).unwrap());
    import(store, &docs, &domains(), &mut rand::rng())
}

#[test]
fn import_twice_changes_nothing_and_export_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(dir.path().join("a.db")).unwrap();
    let first = import_all(&mut store);
    assert!(!first.has_errors(), "{}", first.text());
    assert_eq!(first.users_created, 11, "{}", first.text());
    assert_eq!(first.pending_in, 3, "{}", first.text());
    assert!(first.without_credentials.is_empty(), "{}", first.text());
    // Prosody's five and ejabberd's four SCRAM-SHA-1 users (not sam: SHA-256; not pat:
    // derived from a plain password, both hashes).
    assert_eq!(first.sha1_only.len(), 9, "{}", first.text());
    assert!(first.text().contains("SCRAM-SHA-1 credentials only (9)"));
    let before = snapshot(&mut store);
    // alice@pie.test: 4 roster rows and dave's request (a row outside the roster).
    let alice = &before["alice@pie.test"].2;
    assert_eq!(alice.len(), 5, "{alice:#?}");
    let dave = alice.iter().find(|r| r.contact == "dave@pie.test").unwrap();
    assert!(!dave.in_roster && dave.pending_in.is_some(), "{dave:?}");
    // pat's plain password became SCRAM credentials of both hashes.
    for h in ScramHash::ALL {
        let c = store.credentials("pat@plain.test", h).unwrap().unwrap();
        assert!(c.verify_password("pat-secret"), "{h:?}");
    }

    let second = import_all(&mut store);
    assert!(!second.has_errors(), "{}", second.text());
    assert_eq!(
        (
            second.users_created,
            second.users_updated,
            second.users_unchanged
        ),
        (0, 0, 11),
        "{}",
        second.text()
    );
    assert_eq!(second.rows_written, 0);
    assert_eq!(
        snapshot(&mut store),
        before,
        "a second import changed the store"
    );

    // Export, then import the export into an empty store: the same credentials and rows.
    let out = dir.path().join("export");
    let written = fedrouter::pie::export::export(&mut store, &out, &domains()).unwrap();
    assert_eq!(written.len(), 4, "{written:?}");
    let mut fresh = SqliteStore::open(dir.path().join("b.db")).unwrap();
    let docs = load(&out).unwrap();
    let again = import(&mut fresh, &docs, &domains(), &mut rand::rng());
    assert!(!again.has_errors(), "{}", again.text());
    let strip =
        |s: Snapshot| -> Content { s.into_iter().map(|(u, (c, _, r))| (u, (c, r))).collect() };
    assert_eq!(strip(snapshot(&mut fresh)), strip(before));
}

const BAD: &str = r#"<?xml version='1.0'?>
<server-data xmlns='urn:xmpp:pie:0'>
  <host jid='pie.test'>
    <user name='good' password='good-secret'>
      <query xmlns='jabber:iq:roster'>
        <item jid='ok@pie.test' subscription='both'/>
        <item jid='@@bad' subscription='both'/>
        <item jid='weird@pie.test' subscription='remove'/>
      </query>
      <vCard xmlns='vcard-temp'/>
    </user>
    <user name='has space'/>
    <user name='broken'>
      <scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-1'>
        <iter-count>4096</iter-count><salt>c2FsdA==</salt>
        <server-key>AAAA</server-key><stored-key>AAAA</stored-key>
      </scram-credentials>
    </user>
    <user name='nopass'/>
  </host>
  <host jid='elsewhere.test'><user name='x' password='y'/></host>
</server-data>
"#;

#[test]
fn bad_entries_are_skipped_with_reasons_and_the_rest_imported() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.xml");
    std::fs::write(&file, BAD).unwrap();
    let mut store = SqliteStore::open(dir.path().join("s.db")).unwrap();
    let sum = import(
        &mut store,
        &load(&file).unwrap(),
        &domains(),
        &mut rand::rng(),
    );
    let text = sum.text();
    assert!(sum.has_errors(), "{text}");
    assert_eq!(sum.users_created, 2, "{text}");
    for needle in [
        "skipped: roster item \"@@bad\" of good@pie.test: jid is not a valid bare JID",
        "skipped: roster item \"weird@pie.test\" of good@pie.test: subscription \"remove\"",
        "skipped: user has space@pie.test: not a valid JID",
        "skipped: user broken@pie.test: SCRAM-SHA-1 keys are not 20 octets long",
        "skipped: user x@elsewhere.test: elsewhere.test is not one of this server's domains",
        "users without credentials (1)",
        "  nopass@pie.test",
        "{vcard-temp}vCard x1",
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
    assert_eq!(
        store.list_users(None).unwrap(),
        ["good@pie.test", "nopass@pie.test"]
    );
    let (_, rows) = store.roster("good@pie.test").unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].contact, "ok@pie.test");

    // The command: the same summary on stdout, exit status 1.
    let cfg = dir.path().join("fedrouter.toml");
    std::fs::write(
        &cfg,
        format!(
            "domains = [\"pie.test\"]\ndata_dir = {:?}\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_fedrouter"))
        .arg("import")
        .arg(&file)
        .arg("-c")
        .arg(&cfg)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("users: 2 created, 0 updated, 0 unchanged, 3 skipped"),
        "{out}"
    );
    // A clean file exits 0, and `export` writes what `import` reads.
    let o = Command::new(env!("CARGO_BIN_EXE_fedrouter"))
        .arg("import")
        .arg(data("prosody"))
        .arg("-c")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = Command::new(env!("CARGO_BIN_EXE_fedrouter"))
        .arg("export")
        .arg(dir.path().join("out"))
        .arg("-c")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("pie.test.xml: 7 users"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn files_that_are_not_xep0227_are_refused() {
    assert!(matches!(read("<a/>"), Err(PieError::NotPie(r)) if r == "{}a"));
    assert!(matches!(
        read("<server-data xmlns='urn:xmpp:pie:0'>"),
        Err(PieError::Xml { .. })
    ));
    let dtd = "<!DOCTYPE x [<!ENTITY a 'b'>]><server-data xmlns='urn:xmpp:pie:0'/>";
    assert!(
        matches!(read(dtd), Err(PieError::Xml { reason, .. }) if reason.contains("DTD")),
        "{:?}",
        read(dtd)
    );
    let entity = "<server-data xmlns='urn:xmpp:pie:0'><host jid='a.test'>&x;</host></server-data>";
    assert!(matches!(read(entity), Err(PieError::Xml { .. })));
    let missing = load(Path::new("/nonexistent/pie.xml"));
    assert!(matches!(missing, Err(PieError::Io { .. })), "{missing:?}");
}

#[test]
fn older_and_unsupported_credential_forms() {
    // ejabberd's older `password='scram:STORED,SERVER,SALT,ITER'` (SHA-1) and
    // `scram:sha256,…`, built from known keys; SCRAM-SHA-512 is noted and left out.
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine as _;
    let c1 = fedrouter::store::ScramCredentials::derive("one", ScramHash::Sha1, b"salt-1", 4096)
        .unwrap();
    let c2 = fedrouter::store::ScramCredentials::derive("two", ScramHash::Sha256, b"salt-2", 4096)
        .unwrap();
    let form = |c: &fedrouter::store::ScramCredentials| {
        format!(
            "{},{},{},{}",
            B64.encode(&c.stored_key),
            B64.encode(&c.server_key),
            B64.encode(&c.salt),
            c.iterations
        )
    };
    let text = format!(
        "<host xmlns='urn:xmpp:pie:0' jid='ej.test'>\
         <user name='one' password='scram:{}'/>\
         <user name='two' password='scram:sha256,{}'/>\
         <user name='big'><scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-512'>\
         <iter-count>4096</iter-count><salt>c2FsdA==</salt><server-key>AA==</server-key>\
         <stored-key>AA==</stored-key></scram-credentials></user></host>",
        form(&c1),
        form(&c2)
    );
    let doc = read(&text).unwrap();
    assert!(doc.skipped.is_empty(), "{:?}", doc.skipped);
    assert_eq!(doc.users[0].credentials, Credentials::Scram(vec![c1]));
    assert_eq!(doc.users[1].credentials, Credentials::Scram(vec![c2]));
    assert_eq!(doc.users[2].credentials, Credentials::None);
    assert!(
        doc.notes[0].contains("\"SCRAM-SHA-512\" credentials are not supported"),
        "{:?}",
        doc.notes
    );
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(dir.path().join("s.db")).unwrap();
    let sum = import(
        &mut store,
        &[(dir.path().join("x.xml"), doc)],
        &domains(),
        &mut rand::rng(),
    );
    assert_eq!(sum.without_credentials, ["big@ej.test"], "{}", sum.text());
    assert!(store
        .credentials("two@ej.test", ScramHash::Sha256)
        .unwrap()
        .unwrap()
        .verify_password("two"));
}
