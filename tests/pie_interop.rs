//! XEP-0227 import against REAL exports (issue 22): users and rosters are created on a
//! real Prosody (Debian's package, `.ci/setup-prosody`) by real clients over C2S, and on
//! a real ejabberd (Debian's package, `.ci/setup-ejabberd`) with `ejabberdctl`; Prosody's
//! data is exported with `prosody-migrator` (internal storage → `xep0227`), ejabberd's
//! with `ejabberdctl export_piefxis` (`tests/data/pie/regenerate-ejabberd`); the export is
//! imported with `fedrouter import`, fedrouter is started, every user logs in over C2S
//! with SCRAM (the imported credentials, never a password fedrouter was told) and its
//! roster is compared item by item with what the source server had. A second import
//! changes nothing (same roster versions, "unchanged" in the summary).
//!
//! Without Prosody or ejabberd these tests FAIL naming the setup script.
//!
//! Addresses: `127.0.166.0/24` (`.1` Prosody, `.2` and `.4` fedrouter); ejabberd's C2S
//! on `127.0.0.1:25222`, its Erlang distribution on `127.0.0.1:27191` (no epmd).

#[path = "common/c2s_client.rs"]
mod c2s_client;
#[path = "interop/prosody.rs"]
mod prosody;
#[path = "common/server.rs"]
mod server;
#[path = "common/xmpp.rs"]
mod xmpp;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use fedrouter::store::sqlite::SqliteStore;
use fedrouter::store::{Store, DB_FILE};
use fedrouter_testkit::TestCa;
use prosody::{Prosody, ProsodySpec, S2sPolicy};
use server::Fedrouter;
use xmpp::{node, Client, Mech, Target};

const HOST: &str = "pie.test";
/// Longest a `prosody-migrator` or `regenerate-ejabberd` run may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

fn ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 166, host)
}

/// One roster item as a client sees it: (subscription, ask, name, sorted groups).
type SeenItem = (String, Option<String>, Option<String>, Vec<String>);

/// One ejabberd user to check: localpart, domain, SASL mechanism, expected items.
type Case = (
    &'static str,
    &'static str,
    Mech,
    Vec<(&'static str, SeenItem)>,
);

/// The roster of a logged-in client, by contact.
fn seen_roster(c: &mut Client) -> BTreeMap<String, SeenItem> {
    c.roster_get()
        .iter()
        .map(|x| {
            let n = node(x);
            let mut groups: Vec<String> = n
                .children
                .iter()
                .filter(|g| g.name == "group")
                .map(|g| g.text.clone())
                .collect();
            groups.sort();
            (
                n.attr("jid").unwrap_or_default().to_ascii_lowercase(),
                (
                    n.attr("subscription").unwrap_or("none").to_owned(),
                    n.attr("ask").map(str::to_owned),
                    n.attr("name").map(str::to_owned),
                    groups,
                ),
            )
        })
        .collect()
}

/// Runs `cmd` to completion within [`TOOL_TIMEOUT`] (bounded polling), returning its
/// output; panics naming `what` when it cannot be spawned or overruns.
fn run_bounded(mut cmd: Command, what: &str, hint: &str) -> Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}; {hint}"));
    let deadline = Instant::now() + TOOL_TIMEOUT;
    // Bounded: TOOL_TIMEOUT / 50 ms turns. Output is read after exit: these tools print
    // little (well under a pipe's buffer).
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {TOOL_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `fedrouter import PATH -c CONFIG`.
fn fedrouter_import(config: &Path, path: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fedrouter"));
    cmd.arg("import").arg(path).arg("-c").arg(config);
    run_bounded(cmd, "fedrouter import", "")
}

/// A fedrouter serving `domains` with C2S on `addr:5222`, no S2S listener used.
fn fedrouter_config(addr: Ipv4Addr, domains: &[&str]) -> String {
    let domains: Vec<String> = domains.iter().map(|d| format!("{d:?}")).collect();
    format!(
        r#"domains = [{}]
shards = 2

[listen]
s2s = ["{addr}:5269"]
s2s_tls = []
c2s = ["{addr}:5222"]
admin = "{addr}:9269"
"#,
        domains.join(", ")
    )
}

/// Every user's roster version in fedrouter's store (stop it first).
fn versions(fr: &Fedrouter) -> BTreeMap<String, u64> {
    let mut store = SqliteStore::open(fr.dir().join("data").join(DB_FILE)).expect("open store");
    store
        .list_users(None)
        .expect("users")
        .into_iter()
        .map(|u| {
            let v = store.roster(&u).expect("roster").0;
            (u, v)
        })
        .collect()
}

/// Imports `export` into a stopped `fr` twice: the first creates `users` users with no
/// skip and `pending` pending inbound requests read; the second changes nothing (summary
/// "unchanged", roster versions equal). The requests are checked in the store as well as
/// at login, since a restarted fedrouter also re-sends the stored outbound ones.
fn import_twice(
    fr: &mut Fedrouter,
    export: &Path,
    users: usize,
    pending: usize,
) -> Vec<(String, String)> {
    assert!(fr.stop(), "fedrouter did not stop on SIGTERM");
    let o = fedrouter_import(&fr.config_path(), export);
    let summary = text(&o);
    assert!(o.status.success(), "first import: {summary}");
    assert!(
        summary.contains(&format!(
            "users: {users} created, 0 updated, 0 unchanged, 0 skipped"
        )),
        "first import: {summary}"
    );
    assert!(
        summary.contains(&format!("pending subscription requests: {pending};")),
        "first import: {summary}"
    );
    let before = versions(fr);
    let o = fedrouter_import(&fr.config_path(), export);
    let again = text(&o);
    assert!(o.status.success(), "second import: {again}");
    assert!(
        again.contains(&format!(
            "users: 0 created, 0 updated, {users} unchanged, 0 skipped"
        )),
        "second import changed something: {again}"
    );
    assert!(again.contains("rows written: 0 "), "second import: {again}");
    assert_eq!(
        versions(fr),
        before,
        "roster versions moved on a second import"
    );
    let requests = stored_requests(fr);
    fr.restart();
    requests
}

/// `(user, contact)` for every stored pending inbound request (stop fedrouter first).
fn stored_requests(fr: &Fedrouter) -> Vec<(String, String)> {
    let mut store = SqliteStore::open(fr.dir().join("data").join(DB_FILE)).expect("open store");
    let mut out = Vec::new();
    for u in store.list_users(None).expect("users") {
        for row in store.roster(&u).expect("roster").1 {
            if row.pending_in.is_some() {
                out.push((u.clone(), row.contact));
            }
        }
    }
    out
}

/// Writes the migrator configuration and runs `prosody-migrator` from Prosody's internal
/// storage (`data`) to `xep0227` files in `export`.
///
/// Prosody 0.12's `mod_storage_xep0227` writes into `prosody.paths.data`, which the
/// migrator sets from its compiled-in default (`/var/lib/prosody`) since it reads no
/// server configuration; the test points that path at `export` by setting the
/// configuration manager's `data_path` before the migrator starts (`lua5.4 -e …
/// /usr/bin/prosody-migrator`), so nothing outside the test's folder is written, and its
/// `run_as_root` (as root the migrator would switch to the `prosody` user, who cannot
/// read the test's folder). An
/// operator on a Debian install runs `prosody-migrator` as is and finds the files in
/// `/var/lib/prosody/` (README.md).
fn prosody_migrate(dir: &Path, data: &Path, export: &Path) {
    std::fs::create_dir_all(export).expect("export folder");
    let cfg = dir.join("migrator.cfg.lua");
    std::fs::write(
        &cfg,
        format!(
            r#"input {{
	type = "internal";
	path = {data:?};
	hosts = {{ [{HOST:?}] = {{ "accounts", "roster" }} }};
}}
output {{
	type = "xep0227";
}}
"#,
            data = data.display().to_string(),
        ),
    )
    .expect("write migrator configuration");
    let preset = format!(
        "package.path = '/usr/lib/prosody/?.lua;' .. package.path; \
         package.cpath = '/usr/lib/prosody/?.so;' .. package.cpath; \
         local cm = require 'core.configmanager'; \
         cm.set('*', 'data_path', {:?}); cm.set('*', 'run_as_root', true)",
        export.display().to_string()
    );
    let mut cmd = Command::new(prosody::LUA);
    cmd.arg("-e")
        .arg(preset)
        .arg("/usr/bin/prosody-migrator")
        .arg("--config")
        .arg(&cfg)
        .arg("input")
        .arg("output")
        .current_dir(dir);
    let o = run_bounded(
        cmd,
        "prosody-migrator",
        "run `.ci/setup-prosody` (Debian's prosody ships prosody-migrator)",
    );
    assert!(o.status.success(), "prosody-migrator: {}", text(&o));
}

#[test]
fn prosody_export_imported_rosters_and_logins_match() {
    prosody::require_installed();
    let tmp = tempfile::tempdir().expect("temporary folder");
    let ca = TestCa::new("fedrouter pie test CA").expect("test CA");
    let ca_pem = tmp.path().join("ca.pem");
    std::fs::write(&ca_pem, ca.ca_cert_pem()).expect("write CA");
    let leaf = ca.issue(HOST).expect("certificate");
    let mut p = Prosody::start(ProsodySpec {
        host: HOST.into(),
        addr: ip(1),
        dns: ip(3),
        cert_pem: leaf.chain_pem(),
        key_pem: leaf.key_pem(),
        s2s: S2sPolicy {
            require_encryption: false,
            secure_auth: false,
            cafile: None,
            bidi: false,
            stream_management: true,
        },
    });
    let users = ["alice", "bob", "carol", "dave", "erin"];
    for u in users {
        p.register(u, &format!("{u}-secret"));
    }
    let t = Target {
        addr: p.c2s(),
        domain: HOST.into(),
        cert: ca_pem.clone(),
    };
    let login =
        |u: &str| Client::login_with(&t, Mech::ScramSha1, u, &format!("{u}-secret"), Some("pc"));
    let jid = |u: &str| format!("{u}@{HOST}");
    let mut alice = login("alice");
    let mut bob = login("bob");
    let mut carol = login("carol");
    let mut dave = login("dave");
    for c in [&mut alice, &mut bob, &mut carol, &mut dave] {
        // A roster get first: Prosody pushes roster changes only to resources that asked
        // for the roster (RFC 6121 §2.1.6 "interested resources").
        c.roster_get();
        c.send("<presence/>");
    }

    // alice ⇄ bob: both, with a name and two groups on alice's side.
    let r = alice.roster_set(&format!(
        "<item jid='{}' name='Bob B'><group>Friends</group><group>Work</group></item>",
        jid("bob")
    ));
    assert!(
        r.contains("type='result'") || r.contains("type=\"result\""),
        "{r}"
    );
    alice.expect_roster_push(&jid("bob"));
    alice.send(&format!("<presence to='{}' type='subscribe'/>", jid("bob")));
    bob.expect_presence(&jid("alice"), Some("subscribe"));
    bob.send(&format!(
        "<presence to='{}' type='subscribed'/>",
        jid("alice")
    ));
    bob.send(&format!(
        "<presence to='{}' type='subscribe'/>",
        jid("alice")
    ));
    alice.expect_presence(&jid("bob"), Some("subscribe"));
    alice.send(&format!(
        "<presence to='{}' type='subscribed'/>",
        jid("bob")
    ));
    bob.expect_presence(&jid("alice"), None);
    alice.expect_presence(&jid("bob"), None);

    // alice → carol: to (carol: from), named.
    alice.roster_set(&format!("<item jid='{}' name='Carol'/>", jid("carol")));
    alice.send(&format!(
        "<presence to='{}' type='subscribe'/>",
        jid("carol")
    ));
    carol.expect_presence(&jid("alice"), Some("subscribe"));
    carol.send(&format!(
        "<presence to='{}' type='subscribed'/>",
        jid("alice")
    ));
    alice.expect_presence(&jid("carol"), None);

    // A contact with no subscription, in a group; dave asks alice (pending in, never
    // answered); alice asks erin, who is offline (none + ask on alice's side, pending in
    // on erin's).
    alice.roster_set("<item jid='zed@remote.test' name='Zed'><group>Remote</group></item>");
    dave.send(&format!(
        "<presence to='{}' type='subscribe'/>",
        jid("alice")
    ));
    alice.expect_presence(&jid("dave"), Some("subscribe"));
    alice.send(&format!(
        "<presence to='{}' type='subscribe'/>",
        jid("erin")
    ));
    alice.sync();

    // What each user's client sees on Prosody: the reference for the comparison.
    let mut want: BTreeMap<&str, BTreeMap<String, SeenItem>> = BTreeMap::new();
    for (u, c) in [
        ("alice", &mut alice),
        ("bob", &mut bob),
        ("carol", &mut carol),
        ("dave", &mut dave),
    ] {
        want.insert(u, seen_roster(c));
    }
    let mut erin = login("erin");
    want.insert("erin", seen_roster(&mut erin));
    for c in [alice, bob, carol, dave, erin] {
        let mut c = c;
        c.close();
    }
    assert_eq!(
        want["alice"].get(&jid("bob")),
        Some(&(
            "both".to_owned(),
            None,
            Some("Bob B".to_owned()),
            vec!["Friends".to_owned(), "Work".to_owned()]
        )),
        "the scenario did not reach its states on Prosody: {want:#?}"
    );
    assert_eq!(
        want["alice"].get(&jid("erin")).map(|i| i.1.as_deref()),
        Some(Some("subscribe")),
        "{want:#?}"
    );
    assert!(p.stop(), "prosody did not stop on SIGTERM");

    // Export with prosody-migrator.
    let export = tmp.path().join("export");
    prosody_migrate(p.dir(), &p.dir().join("data"), &export);
    if let Some(keep) = std::env::var_os("FEDROUTER_PIE_CAPTURE") {
        let keep = PathBuf::from(keep);
        std::fs::create_dir_all(&keep).expect("capture folder");
        for e in std::fs::read_dir(&export).expect("export folder") {
            let e = e.expect("entry");
            std::fs::copy(e.path(), keep.join(e.file_name())).expect("copy");
        }
    }

    // Import into fedrouter (twice: the second changes nothing), log in, compare.
    let mut fr = Fedrouter::start("pie.test", &fedrouter_config(ip(2), &[HOST]));
    let requests = import_twice(&mut fr, &export, users.len(), 2);
    assert_eq!(
        requests,
        vec![(jid("alice"), jid("dave")), (jid("erin"), jid("alice"))],
        "stored pending inbound requests"
    );
    let ft = Target::new(
        SocketAddr::new(ip(2).into(), 5222),
        HOST,
        &fr.dir().join("data"),
    );
    for u in users {
        let mut c = Client::login_with(&ft, Mech::ScramSha1, u, &format!("{u}-secret"), Some("pc"));
        let got = seen_roster(&mut c);
        let w = &want[u];
        for (contact, item) in w {
            assert_eq!(
                got.get(contact),
                Some(item),
                "{u}'s item {contact}: fedrouter {got:#?}, prosody {w:#?}"
            );
        }
        assert_eq!(
            got.len(),
            w.len(),
            "{u}: fedrouter {got:#?}, prosody {w:#?}"
        );
        if u == "alice" {
            // dave's request waits for alice's answer: redelivered when she comes online.
            c.send("<presence/>");
            c.expect_presence(&jid("dave"), Some("subscribe"));
        }
        if u == "erin" {
            c.send("<presence/>");
            c.expect_presence(&jid("alice"), Some("subscribe"));
        }
        c.close();
    }
    // A wrong password is still refused: the credentials are the imported ones.
    let (mut c, _) = Client::login_failure(&ft, Mech::ScramSha1, "alice", "not-alice-secret");
    c.close();
}

#[test]
fn ejabberd_export_imported_rosters_and_logins_match() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pie/regenerate-ejabberd");
    let hint = "run `.ci/setup-ejabberd` (installs Debian's ejabberd); an interoperability test that skips itself proves nothing, so this one fails";
    assert!(
        Command::new("sh")
            .args(["-c", "command -v ejabberdctl"])
            .output()
            .is_ok_and(|o| o.status.success()),
        "ejabberd is not installed: no ejabberdctl; {hint}"
    );
    let tmp = tempfile::tempdir().expect("temporary folder");
    let export = tmp.path().join("export");
    let mut cmd = Command::new(&script);
    cmd.arg(&export)
        .env("EJABBERD_TEST_PORT", "25222")
        .env("EJABBERD_TEST_DIST_PORT", "27191")
        .env("EJABBERD_TEST_NODE", "fedrouterpietest@localhost");
    let o = run_bounded(cmd, "regenerate-ejabberd", hint);
    assert!(o.status.success(), "regenerate-ejabberd: {}", text(&o));

    let domains = ["ej.test", "sha256.test", "plain.test"];
    let mut fr = Fedrouter::start("ej.test", &fedrouter_config(ip(4), &domains));
    let requests = import_twice(&mut fr, &export, 6, 1);
    assert_eq!(
        requests,
        vec![("alice@ej.test".to_owned(), "dave@ej.test".to_owned())],
        "stored pending inbound requests"
    );
    let item = |sub: &str, ask: Option<&str>, name: Option<&str>, groups: &[&str]| -> SeenItem {
        (
            sub.to_owned(),
            ask.map(str::to_owned),
            name.map(str::to_owned),
            groups.iter().map(|g| g.to_string()).collect(),
        )
    };
    // What regenerate-ejabberd created (its header), as each user's client sees it.
    let cases: Vec<Case> = vec![
        (
            "alice",
            "ej.test",
            Mech::ScramSha1,
            vec![
                (
                    "bob@ej.test",
                    item("both", None, Some("Bob B"), &["Friends", "Work"]),
                ),
                ("carol@ej.test", item("to", None, Some("Carol"), &[])),
                (
                    "zed@remote.test",
                    item("none", None, Some("Zed"), &["Remote"]),
                ),
            ],
        ),
        (
            "bob",
            "ej.test",
            Mech::ScramSha1,
            vec![("alice@ej.test", item("both", None, Some("Alice"), &[]))],
        ),
        (
            "carol",
            "ej.test",
            Mech::ScramSha1,
            vec![("alice@ej.test", item("from", None, None, &[]))],
        ),
        ("dave", "ej.test", Mech::ScramSha1, vec![]),
        (
            "sam",
            "sha256.test",
            Mech::ScramSha256,
            vec![("alice@ej.test", item("to", None, Some("Alice"), &[]))],
        ),
        (
            "pat",
            "plain.test",
            Mech::ScramSha256,
            vec![(
                "alice@ej.test",
                item("both", None, Some("Alice"), &["Colleagues"]),
            )],
        ),
    ];
    for (user, domain, mech, items) in cases {
        let t = Target::new(
            SocketAddr::new(ip(4).into(), 5222),
            domain,
            &fr.dir().join("data"),
        );
        let mut c = Client::login_with(&t, mech, user, &format!("{user}-secret"), Some("pc"));
        let got = seen_roster(&mut c);
        let want: BTreeMap<String, SeenItem> =
            items.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        assert_eq!(got, want, "{user}@{domain}");
        if user == "alice" {
            c.send("<presence/>");
            let p = c.expect_presence("dave@ej.test", Some("subscribe"));
            assert!(p.contains("let me in"), "the request's status: {p}");
        }
        c.close();
    }
}
