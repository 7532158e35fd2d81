//! The directory thread against a black hole: a listener on 127.0.0.1 that never answers
//! (the kernel completes the TCP handshake; nobody speaks TLS). Checks are bounded by the
//! pool and the queue, every one queued is answered `TemporaryFailure` after the connect
//! timeout, and the state says unreachable. (tests/ldap.rs runs a real slapd.)

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::*;
use crate::config::LdapSection;

fn black_hole_directory(pool_size: usize, queue: usize) -> (TcpListener, Directory) {
    let hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hole.local_addr().unwrap().port();
    let cfg = LdapSection {
        urls: vec![format!("ldaps://localhost:{port}")],
        base_dn: "dc=example,dc=test".into(),
        connect_timeout: Duration::from_millis(300),
        timeout: Duration::from_millis(300),
        pool_size,
        queue,
        probe_interval: Duration::from_secs(3600),
        ..LdapSection::default()
    };
    crate::tls::install_default_provider();
    let material = DirectoryMaterial {
        bind_password: None,
        ca: Vec::new(),
    };
    (hole, Directory::spawn(&cfg, &material).unwrap())
}

#[test]
fn checks_are_bounded_and_answered_temporary_failure() {
    let (_hole, dir) = black_hole_directory(1, 1);
    let (tx, rx) = crossbeam_channel::unbounded();
    let wake = Arc::new(Notify::new());
    let mut accepted = Vec::new();
    let mut refused = 0;
    for tag in 0..10u64 {
        let check = Check {
            username: format!("user{tag}"),
            password: Password::new("secret"),
            reply_to: tx.clone(),
            wake: Arc::clone(&wake),
            tag,
        };
        match dir.submit(check) {
            Ok(()) => accepted.push(tag),
            Err(c) => {
                assert_eq!(c.tag, tag, "the refused check is handed back");
                refused += 1;
            }
        }
    }
    // At most one running (pool_size), one waiting for its slot, one in the queue.
    assert!(
        (1..=3).contains(&accepted.len()),
        "accepted {accepted:?}, refused {refused}"
    );
    for _ in &accepted {
        let reply = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("every queued check is answered");
        assert!(accepted.contains(&reply.tag));
        assert_eq!(reply.verdict, PasswordVerdict::TemporaryFailure);
        assert!(!reply.cached);
    }
    let report = dir.report();
    assert_eq!(report.state_name(), "unreachable", "{report:?}");
    let json = report.to_json();
    assert!(
        json["error"]
            .as_str()
            .is_some_and(|e| e.contains("no connection within")),
        "{json}"
    );
    dir.shutdown();
    // Stopped: nothing more is taken.
    let check = Check {
        username: "late".into(),
        password: Password::new("secret"),
        reply_to: tx,
        wake,
        tag: 99,
    };
    assert!(dir.submit(check).is_err());
}
