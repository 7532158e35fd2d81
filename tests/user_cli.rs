//! `fedrouter user add|remove|list|passwd` against a real SQLite store in a temporary
//! data directory, and against a real PostgreSQL server (`common/postgres.rs`): exit
//! codes, messages, and the stored SCRAM credentials; an unreachable PostgreSQL is a
//! clear error naming the redacted URL, for `user` and `check`.

#[path = "common/postgres.rs"]
mod pg;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use fedrouter::store::postgres::{PostgresOptions, PostgresStore};
use fedrouter::store::scram::ScramHash;
use fedrouter::store::sqlite::SqliteStore;
use fedrouter::store::{Store, DB_FILE};

fn run(dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fedrouter"))
        .arg("user")
        .args(args)
        .arg("-c")
        .arg(dir.join("fedrouter.toml"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fedrouter");
    // A command that refuses before reading its input exits first: the write then gets
    // EPIPE, which is not the command's failure (its exit code and output say that).
    match child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => panic!("writing the command's input: {e}"),
    }
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn user_lifecycle_with_scram_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::write(
        dir.path().join("fedrouter.toml"),
        format!(
            "domains = [\"a.test\", \"b.test\"]\ndata_dir = {:?}\n",
            data.display().to_string()
        ),
    )
    .unwrap();

    let o = run(dir.path(), &["add", "Alice@A.test"], "correct horse\n");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(text(&o).trim(), "added alice@a.test");
    assert!(run(dir.path(), &["add", "bob@b.test"], "pw-b\n")
        .status
        .success());

    // Duplicates, foreign domains, missing localparts and empty passwords are refused.
    let o = run(dir.path(), &["add", "alice@a.test"], "again\n");
    assert!(!o.status.success());
    assert!(text(&o).contains("already exists"), "{}", text(&o));
    let o = run(dir.path(), &["add", "carol@elsewhere.test"], "x\n");
    assert!(
        text(&o).contains("not one of this server's domains"),
        "{}",
        text(&o)
    );
    let o = run(dir.path(), &["add", "a.test"], "x\n");
    assert!(text(&o).contains("needs a localpart"), "{}", text(&o));
    let o = run(dir.path(), &["add", "dave@a.test"], "\n");
    assert!(text(&o).contains("password is empty"), "{}", text(&o));

    let o = run(dir.path(), &["list"], "");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "alice@a.test\nbob@b.test\n"
    );
    let o = run(dir.path(), &["list", "b.test"], "");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "bob@b.test\n");

    // Stored: SCRAM-SHA-1 and SCRAM-SHA-256 credentials, never the password.
    let check = |jid: &str, pw: &str| -> bool {
        let mut store = SqliteStore::open(data.join(DB_FILE)).unwrap();
        ScramHash::ALL.iter().all(|&h| {
            store
                .credentials(jid, h)
                .unwrap()
                .is_some_and(|c| c.verify_password(pw))
        })
    };
    assert!(check("alice@a.test", "correct horse"));
    assert!(!check("alice@a.test", "wrong"));
    let db = std::fs::read(data.join(DB_FILE)).unwrap();
    assert!(
        !db.windows(b"correct horse".len())
            .any(|w| w == b"correct horse"),
        "the plain password must not be stored"
    );

    let o = run(dir.path(), &["passwd", "alice@a.test"], "battery staple\n");
    assert!(o.status.success(), "{}", text(&o));
    assert!(check("alice@a.test", "battery staple"));
    assert!(!check("alice@a.test", "correct horse"));
    let o = run(dir.path(), &["passwd", "nobody@a.test"], "x\n");
    assert!(text(&o).contains("no such user"), "{}", text(&o));

    assert!(run(dir.path(), &["remove", "alice@a.test"], "")
        .status
        .success());
    let o = run(dir.path(), &["remove", "alice@a.test"], "");
    assert!(!o.status.success());
    assert!(text(&o).contains("no such user"));
    let o = run(dir.path(), &["list"], "");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "bob@b.test\n");
}

#[test]
fn bad_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fedrouter.toml"), "shards = 0\n").unwrap();
    let o = run(dir.path(), &["list"], "");
    assert_eq!(o.status.code(), Some(78));
    assert!(text(&o).contains("shards"), "{}", text(&o));
}

/// The Debian package's service owns `data_dir` (user `fedrouter`); root writing the store
/// there would leave root-owned SQLite files the service cannot write, so `fedrouter user`
/// run as root refuses and names the owner. A user writing into its own folder is never
/// refused (the non-root case, and root into a root-owned folder, as in the test above).
#[test]
fn root_does_not_write_into_a_data_dir_owned_by_the_service_user() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(
        dir.path().join("fedrouter.toml"),
        format!(
            "domains = [\"a.test\"]\ndata_dir = {:?}\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        // As the package does: the folder belongs to a system user (here nobody, 65534).
        std::os::unix::fs::chown(&data, Some(65534), Some(65534)).unwrap();
        let o = run(dir.path(), &["add", "alice@a.test"], "pw\n");
        assert!(!o.status.success(), "{}", text(&o));
        let t = text(&o);
        assert!(t.contains("belongs to uid 65534"), "{t}");
        assert!(t.contains("sudo -u fedrouter"), "{t}");
        assert!(!data.join(DB_FILE).exists(), "no store file was created");
    } else {
        // Not root: the folder is ours, and the command works.
        assert_eq!(std::fs::metadata(&data).unwrap().uid(), euid);
        let o = run(dir.path(), &["add", "alice@a.test"], "pw\n");
        assert!(o.status.success(), "{}", text(&o));
        assert!(data.join(DB_FILE).exists());
    }
}

fn write_config(dir: &Path, store: &str) {
    std::fs::write(
        dir.join("fedrouter.toml"),
        format!(
            "domains = [\"a.test\"]\ndata_dir = {:?}\n\n[store]\n{store}\n",
            dir.join("data").display().to_string()
        ),
    )
    .unwrap();
}

/// The same commands with `[store] backend = "postgres"`: the users are in the server's
/// database (read back with `PostgresStore`), not in `data_dir`.
#[test]
fn user_lifecycle_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let url = pg::fresh_database();
    write_config(
        dir.path(),
        &format!("backend = \"postgres\"\nurl = {url:?}"),
    );
    let o = run(dir.path(), &["add", "Alice@A.test"], "correct horse\n");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(text(&o).trim(), "added alice@a.test");
    assert!(run(dir.path(), &["add", "bob@a.test"], "pw-b\n")
        .status
        .success());
    let o = run(dir.path(), &["add", "alice@a.test"], "again\n");
    assert!(!o.status.success());
    assert!(text(&o).contains("already exists"), "{}", text(&o));
    let o = run(dir.path(), &["list"], "");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "alice@a.test\nbob@a.test\n"
    );
    let o = run(dir.path(), &["passwd", "bob@a.test"], "new-pw\n");
    assert!(o.status.success(), "{}", text(&o));

    let mut s = PostgresStore::connect(PostgresOptions::new(&url)).unwrap();
    for h in ScramHash::ALL {
        let c = s.credentials("alice@a.test", h).unwrap().expect("stored");
        assert!(c.verify_password("correct horse"));
    }
    let c = s
        .credentials("bob@a.test", ScramHash::Sha256)
        .unwrap()
        .unwrap();
    assert!(c.verify_password("new-pw"));
    assert!(
        !dir.path().join("data").join(DB_FILE).exists(),
        "no SQLite file"
    );

    let o = run(dir.path(), &["remove", "alice@a.test"], "");
    assert!(o.status.success(), "{}", text(&o));
    let o = run(dir.path(), &["remove", "alice@a.test"], "");
    assert!(text(&o).contains("no such user"), "{}", text(&o));
    assert_eq!(s.list_users(None).unwrap(), ["bob@a.test"]);
}

/// Nothing listens at the URL: `fedrouter user` and `fedrouter check` exit non-zero with
/// the URL (password redacted) and the cause, no panic.
#[test]
fn unreachable_postgres_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind((pg::PG_ADDR, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgresql://fed:hunter2@{}:{port}/fedrouter", pg::PG_ADDR);
    write_config(
        dir.path(),
        &format!("backend = \"postgres\"\nurl = {url:?}\nconnect_timeout = \"2s\""),
    );
    let o = run(dir.path(), &["list"], "");
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains(&format!(
            "postgresql://fed:***@{}:{port}/fedrouter",
            pg::PG_ADDR
        )) && t.contains("cannot connect"),
        "{t}"
    );
    assert!(!t.contains("hunter2") && !t.contains("panicked"), "{t}");

    let o = Command::new(env!("CARGO_BIN_EXE_fedrouter"))
        .args(["check", "-c"])
        .arg(dir.path().join("fedrouter.toml"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("fed:***@") && t.contains("cannot connect"),
        "{t}"
    );
    assert!(!t.contains("hunter2") && !t.contains("panicked"), "{t}");
}

#[test]
fn bad_store_config_names_the_key_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    for (store, key, shown) in [
        ("backend = \"postgres\"", "store.url", ""),
        ("backend = \"mysql\"", "backend", "mysql"),
        (
            "backend = \"postgres\"\nurl = \"postgresql://u:s3cret@h:notaport/db\"",
            "store.url",
            "u:***@h",
        ),
        (
            "url = \"postgresql://u:s3cret@h/db\"",
            "store.url",
            "postgres",
        ),
        (
            "backend = \"postgres\"\nurl = \"postgresql://u:s3cret@h/db\"\nreconnect_max = \"1ms\"",
            "store.reconnect_max",
            "store.reconnect_initial",
        ),
    ] {
        write_config(dir.path(), store);
        let o = run(dir.path(), &["list"], "");
        let t = text(&o);
        assert_eq!(o.status.code(), Some(78), "{store}: {t}");
        assert!(t.contains(key) && t.contains(shown), "{store}: {t}");
        assert!(!t.contains("s3cret"), "{store}: {t}");
    }
}
