//! `fedrouter user add|remove|list|passwd` against a real SQLite store in a temporary
//! data directory: exit codes, messages, and the stored SCRAM credentials.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

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
