//! A server out of file descriptors keeps what it has and recovers: `accept` failing with
//! `EMFILE` on a listener is counted (`fedrouter_accept_errors_total{cause="fd_limit"}`),
//! backed off (50 ms doubling to 1 s) and logged at most once per 10 s per listener, not
//! once per retry; once descriptors are free again the listener accepts what waited in
//! its backlog and new connections.
//!
//! The real limit: the test lowers the running server's `RLIMIT_NOFILE` with
//! `prlimit(2)`, then opens more TCP connections to its S2S listener than it has
//! descriptors left. Loopback range `127.0.41.0/24` (server on `.2`: 5269 S2S,
//! 9269 admin). Every wait is bounded.

#[path = "common/server.rs"]
mod server;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use server::{config, ip, Fedrouter, GOOGLE_STYLE};

const NET: u8 = 41;
/// Longest wait for something that must happen (a hang catcher, not a speed target).
const HANG: Duration = Duration::from_secs(60);

fn open_files(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the server's /proc/PID/fd")
        .count() as u64
}

/// Sets the soft `RLIMIT_NOFILE` of process `pid` (the hard one stays: raising it back
/// would need `CAP_SYS_RESOURCE`).
fn set_nofile(pid: u32, limit: u64) {
    let l = libc::rlimit {
        rlim_cur: limit,
        rlim_max: nofile(pid).1,
    };
    // SAFETY: prlimit(2) on a process we started, with a valid new limit and no old one.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &l,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// The soft and hard `RLIMIT_NOFILE` of process `pid`.
fn nofile(pid: u32) -> (u64, u64) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit(2) reading the limits of a process we started.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut l,
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    (l.rlim_cur, l.rlim_max)
}

/// Sends an S2S stream header and reads until the server's answer header arrives.
fn s2s_header_answered(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, HANG) else {
        return false;
    };
    s.set_read_timeout(Some(HANG)).unwrap();
    s.write_all(
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
          xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
          from='peer.test' to='a.test' version='1.0'>",
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("<stream:stream") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        assert!(got.len() < 1 << 20, "no header in a MiB");
    }
    true
}

#[test]
fn out_of_descriptors_accept_backs_off_and_recovers() {
    let addr = ip(NET, 2);
    let s2s = SocketAddr::new(addr.into(), 5269);
    let fr = Fedrouter::start("fd-limit", &config(NET, addr, &["a.test"], 1, GOOGLE_STYLE));
    let pid = fr.pid();
    assert!(s2s_header_answered(s2s), "served before the limit");
    let before = nofile(pid).0;

    // Leave 8 descriptors free, then open 64 connections: the kernel completes them all
    // (listen backlog); the server can accept 8 and then gets EMFILE.
    let used = open_files(pid);
    set_nofile(pid, used + 8);
    let held: Vec<TcpStream> = (0..64)
        .map(|_| TcpStream::connect_timeout(&s2s, HANG).expect("connect (backlog)"))
        .collect();
    let warned = fr
        .wait_log(&["accept failed", "fd_limit"], HANG)
        .expect("a WARN naming the cause once accept fails");
    assert!(warned.contains("failures="), "{warned}");

    // Free the descriptors: the server serves again, the ones that waited included.
    drop(held);
    set_nofile(pid, before);
    let deadline = Instant::now() + HANG;
    while !s2s_header_answered(s2s) {
        assert!(
            Instant::now() < deadline,
            "not serving after the descriptors came back"
        );
    }

    let failures = fr
        .metric("fedrouter_accept_errors_total", &[("cause", "fd_limit")])
        .expect("fedrouter_accept_errors_total{cause=\"fd_limit\"}");
    let warns = fr.log_lines(&["accept failed"]).len() as f64;
    assert!(failures >= 1.0, "failed accepts counted: {failures}");
    assert!(
        warns <= failures,
        "at most one WARN per failed accept, and per 10 s: {warns} WARNs for {failures} failures"
    );
}
