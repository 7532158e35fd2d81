//! `loadgen --procs 2` end to end against an embedded fedrouter on loopback: the parent
//! serves the DNS zone and the SUT, two child processes each simulate half the peers and
//! local users over real sockets, and the parent merges what they measured. Addresses:
//! 127.0.16.x for the SUT and DNS, 127.16.x.y for the peers (no other test uses them).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use loadgen::procs::{ChildReport, REPORT_FILE};
use loadgen::report::Recorder;

/// Upper bound of one run (the binary also stops by itself).
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

fn loadgen(out: &Path, args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .arg("--out")
        .arg(out)
        .arg("--no-progress")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn loadgen");
    let pid = child.id();
    let start = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(RUN_TIMEOUT) {
        Ok(out) => out.expect("loadgen output"),
        Err(_) => {
            // SAFETY: kill(2) on the pid of the child we spawned (its children die with
            // it: PR_SET_PDEATHSIG).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("loadgen did not stop within {:?}", start.elapsed());
        }
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

#[test]
fn two_processes_merge_into_one_report() {
    let out = tempfile::tempdir().expect("tempdir");
    let o = loadgen(
        out.path(),
        &[
            "--procs",
            "2",
            "--peers",
            "20",
            "--users-per-peer",
            "5",
            "--local-users",
            "10",
            "--scenario",
            "mixed",
            "--rate",
            "200",
            "--warmup",
            "1s",
            "--duration",
            "4s",
            "--sut-ip",
            "127.0.16.1",
            "--dns",
            "127.0.16.53:0",
            "--peer-net",
            "127.16",
            "--sut-pid",
            "self",
        ],
    );
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("accounting: OK"), "{all}");
    assert!(stdout.contains("processes: 2 children"), "{all}");
    let s: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("summary.json")).expect("summary.json"),
    )
    .expect("summary.json is JSON");
    assert_eq!(s["params"]["procs"], 2, "{s}");
    assert_eq!(s["accounting"]["ok"], true, "{s}");

    // The children's own reports.
    let reports: Vec<ChildReport> = (0..2)
        .map(|i| {
            ChildReport::read(&out.path().join(format!("child-{i}")).join(REPORT_FILE))
                .expect("child report")
        })
        .collect();
    let recorders = |f: fn(&ChildReport) -> &loadgen::report::RecorderWire| -> Vec<Recorder> {
        reports
            .iter()
            .map(|r| Recorder::from_wire(f(r)).expect("child recorder"))
            .collect()
    };
    let alls = recorders(|r| &r.all);
    let measured = recorders(|r| &r.measured);
    // Each child raised its open-files limit to the hard limit, as every loadgen does.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid pointer to an initialised struct.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    for (i, r) in reports.iter().enumerate() {
        assert_eq!((r.index, r.count), (i as u32, 2));
        if lim.rlim_max != libc::RLIM_INFINITY {
            assert_eq!(r.fd_limit, Some(lim.rlim_max), "child {i}");
        }
        assert!(
            r.fds_at_ready.unwrap_or(0) > 20,
            "child {i}: its sockets: {s}"
        );
        assert!(r.ops > 0, "child {i} ran operations: {s}");
        assert!(alls[i].accounting().sent() > 0, "child {i} sent stanzas");
    }

    // First-attempt dialback failures: the sum of the children's, cause by cause.
    let first = &s["params"]["auth_first_failures"];
    assert!(
        first["total"].is_u64() && first["by_cause"].is_object(),
        "{s}"
    );
    let total: u64 = reports.iter().map(|r| r.first_auth_failures.total).sum();
    assert_eq!(u(&first["total"]), total, "{s}");
    for r in &reports {
        for (cause, n) in &r.first_auth_failures.by_cause {
            assert!(u(&first["by_cause"][cause]) >= *n, "{cause} in {s}");
        }
    }
    assert!(stdout.contains("first attempts failed: "), "{all}");

    // Merged accounting = the sum of the children's, step by step.
    let acc = &s["accounting"];
    let (mut sent, mut received, mut bounced, mut lost) = (0, 0, 0, 0);
    for a in alls.iter().map(Recorder::accounting) {
        sent += a.sent();
        received += a.received();
        bounced += a.bounced();
        lost += a.lost();
        for st in &a.steps {
            assert!(acc["steps"].get(&st.step).is_some(), "{} in {s}", st.step);
        }
    }
    assert_eq!(
        (
            u(&acc["sent"]),
            u(&acc["received"]),
            u(&acc["bounced"]),
            u(&acc["lost"])
        ),
        (sent, received, bounced, lost),
        "{s}"
    );
    for (step, merged) in acc["steps"].as_object().expect("steps") {
        let of = |f: fn(&loadgen::report::StepAccounting) -> u64| -> u64 {
            alls.iter()
                .filter_map(|r| r.accounting().steps.into_iter().find(|x| &x.step == step))
                .map(|x| f(&x))
                .sum()
        };
        assert_eq!(u(&merged["sent"]), of(|x| x.sent), "{step}: {s}");
        assert_eq!(u(&merged["received"]), of(|x| x.received), "{step}: {s}");
        assert_eq!(u(&merged["lost"]), of(|x| x.lost), "{step}: {s}");
    }
    assert!(received > 500, "{s}");

    // Every kind of operation appears in the merged histograms, with every sample of the
    // children's.
    for step in [
        "message",
        "presence",
        "subscribe",
        "subscription_complete",
        "stream_setup",
    ] {
        let count = u(&s["steps"][step]["count"]);
        assert!(count > 0, "no {step} samples: {s}");
        let children: u64 = measured
            .iter()
            .filter_map(|r| r.step(step))
            .map(|x| x.latency().len())
            .sum();
        assert_eq!(count, children, "{step}: {s}");
    }
    let hgrm = std::fs::read_to_string(out.path().join("loadgen-message.hgrm")).expect("hgrm");
    assert!(hgrm.contains("#[Max"), "{hgrm}");
    assert!(out.path().join("latency.svg").exists());
    // The parent read the SUT's CPU (the embedded fedrouter runs in it), per 1,000 of the
    // stanzas the children received in the window.
    let cpu = &s["params"]["sut_cpu"][0];
    assert!(u(&cpu["stanzas"]) > 0, "{s}");
    assert_eq!(
        u(&cpu["stanzas"]),
        reports.iter().map(|r| r.stanzas_measured).sum::<u64>(),
        "{s}"
    );
    assert_eq!(s["params"]["children"].as_array().map(Vec::len), Some(2));
}

#[test]
fn procs_beyond_the_run_exit_2_naming_the_option() {
    let out = tempfile::tempdir().expect("tempdir");
    let o = loadgen(
        out.path(),
        &["--procs", "4", "--peers", "3", "--local-users", "10"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--procs 4"),
        "{}",
        text(&o)
    );
    let o = loadgen(out.path(), &["--procs", "2", "--peer-tls", "optional"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("dialback"),
        "{}",
        text(&o)
    );
}
