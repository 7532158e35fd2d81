//! Running Python scripts that drive slixmpp (PyPI; a client library no one here wrote)
//! from the tests: the interpreter from `.ci/setup-slixmpp`, and a bounded run.
#![allow(dead_code)]

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// What to do when slixmpp is missing.
pub const SETUP_HINT: &str =
    "run `.ci/setup-slixmpp` (it makes target/slixmpp-venv with the pinned \
     slixmpp), or set FEDROUTER_SLIXMPP_PYTHON to a python that can `import slixmpp`";

/// The interpreter to run the script with; panics (the test fails) when there is none or
/// it cannot import slixmpp.
pub fn python() -> PathBuf {
    let python = match std::env::var_os("FEDROUTER_SLIXMPP_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/slixmpp-venv/bin/python"),
    };
    assert!(
        python.exists(),
        "no Python for the slixmpp interop test at {}: {SETUP_HINT}",
        python.display()
    );
    let check = Command::new(&python)
        .args(["-c", "import slixmpp; print(slixmpp.__version__)"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {SETUP_HINT}", python.display()));
    assert!(
        check.status.success(),
        "{} cannot import slixmpp ({}): {SETUP_HINT}",
        python.display(),
        String::from_utf8_lossy(&check.stderr).trim()
    );
    eprintln!(
        "slixmpp {} ({})",
        String::from_utf8_lossy(&check.stdout).trim(),
        python.display()
    );
    python
}

/// What the script printed and how it ended.
pub struct ScriptRun {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error (slixmpp's debug log with `--debug`).
    pub stderr: String,
}

/// Runs `python args...`, killing it (and failing) after `limit`.
pub fn run_script(python: &Path, args: &[String], limit: Duration) -> ScriptRun {
    let mut cmd = Command::new(python);
    cmd.args(args)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    run_bounded(&mut cmd, limit, "the slixmpp script")
}

/// Runs `cmd` (stdin closed, stdout and stderr captured), killing it (and failing with
/// what it printed) when it has not exited within `limit`; `what` names it in messages.
/// Also used for the Node scripts of `tests/xmppjs.rs`.
pub fn run_bounded(cmd: &mut Command, limit: Duration, what: &str) -> ScriptRun {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let pid = child.id() as libc::pid_t;
    let reader = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = reader(Box::new(child.stdout.take().expect("stdout")));
    let stderr = reader(Box::new(child.stderr.take().expect("stderr")));
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match rx.recv_timeout(limit) {
        Ok(status) => status.unwrap_or_else(|e| panic!("wait for {what}: {e}")),
        Err(_) => {
            // SAFETY: kill(2) on the pid of our child, not reaped yet (its waiter is
            // still blocked in wait()).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = rx.recv();
            panic!(
                "{what} did not exit within {limit:?} (killed); stdout:\n{}\nstderr:\n{}",
                stdout.join().unwrap_or_default(),
                stderr.join().unwrap_or_default()
            );
        }
    };
    waiter.join().expect("waiter thread");
    ScriptRun {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}
