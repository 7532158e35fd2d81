//! The C2S state machine with an external password check ([`PasswordCheck::External`],
//! what `[auth] backend = "ldap"` uses), in memory with real rustls and a simulated clock:
//! only `PLAIN` over TLS is offered, SCRAM is `invalid-mechanism`, the password reaches
//! the runtime in [`Event::PasswordCheckNeeded`], and each [`PasswordVerdict`] gives
//! `<success/>`, a counted and delayed `not-authorized` (RFC 6120 §6.5.10), or an
//! uncounted `temporary-auth-failure` (§6.5.12).

#[path = "common/c2s_client.rs"]
mod c2s_client;

use std::time::Duration;

use c2s_client::{Harness, DOMAIN, NS_SASL};
use fedrouter::condition::StreamCondition;
use fedrouter::store::scram::ScramHash;
use fedrouter::stream::c2s::{C2sError, Event, Mechanism, PasswordCheck, PasswordVerdict};
use fedrouter::stream::CloseReason;

fn failure(condition: &str) -> String {
    format!("<failure xmlns='{NS_SASL}'><{condition}/></failure>")
}

/// A server whose passwords are checked by the runtime, 100 ms failure delay.
fn external() -> Harness {
    Harness::new(|c| {
        c.password_check = PasswordCheck::External;
        c.auth_failure_delay = Duration::from_millis(100);
    })
}

/// Sends `PLAIN` as `user`, checks that nothing is answered before the verdict, and
/// returns the check the runtime was asked for: (jid, username, password).
fn plain_pending(h: &mut Harness, user: &str, password: &str) -> (String, String, String) {
    let before = h.events.len();
    h.send_auth("PLAIN", format!("\0{user}\0{password}").as_bytes());
    assert_eq!(
        h.take_xml(),
        Vec::<String>::new(),
        "answered before the verdict"
    );
    let asked: Vec<_> = h.events[before..]
        .iter()
        .filter_map(|e| match e {
            Event::PasswordCheckNeeded {
                jid,
                username,
                password,
            } => Some((jid.clone(), username.clone(), password.expose().to_owned())),
            _ => None,
        })
        .collect();
    assert_eq!(
        asked.len(),
        1,
        "one check asked for: {:?}",
        &h.events[before..]
    );
    assert!(
        !h.events[before..]
            .iter()
            .any(|e| matches!(e, Event::CredentialsNeeded { .. })),
        "no stored credentials asked for"
    );
    asked.into_iter().next().unwrap()
}

fn verdict(h: &mut Harness, v: PasswordVerdict) -> String {
    h.conn.handle_password_verdict(v, h.now).unwrap();
    h.drive();
    h.take_one()
}

#[test]
fn only_plain_over_tls_is_offered() {
    let mut h = external();
    let features = h.open();
    assert!(!features.contains("<mechanism>"), "{features}");
    h.starttls();
    let features = h.open();
    assert_eq!(
        features,
        "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
         <mechanism>PLAIN</mechanism></mechanisms></stream:features>"
    );
}

#[test]
fn without_tls_nothing_is_offered_and_plain_is_refused() {
    let mut h = Harness::new(|c| {
        c.password_check = PasswordCheck::External;
        c.tls_required = false;
        c.certificate_domains.clear();
        c.auth_failure_delay = Duration::ZERO;
    });
    let features = h.open();
    assert_eq!(features, "<stream:features></stream:features>");
    h.send_auth("PLAIN", b"\0juliet\0secret");
    assert_eq!(h.take_one(), failure("encryption-required"));
    assert!(!h
        .events
        .iter()
        .any(|e| matches!(e, Event::PasswordCheckNeeded { .. })));
}

#[test]
fn scram_is_an_invalid_mechanism() {
    let mut h = external();
    h.open_tls();
    for hash in [ScramHash::Sha256, ScramHash::Sha1] {
        let err = h.scram("juliet", "secret", hash).unwrap_err();
        assert_eq!(err, failure("invalid-mechanism"));
        h.advance(Duration::from_secs(1));
    }
    assert!(!h.events.iter().any(|e| matches!(
        e,
        Event::CredentialsNeeded { .. } | Event::PasswordCheckNeeded { .. }
    )));
}

#[test]
fn accepted_password_authenticates_and_restarts() {
    let mut h = external();
    h.open_tls();
    // The username is a localpart: case-mapped (RFC 7622 §3.3).
    let (jid, username, password) = plain_pending(&mut h, "Juliet", "r0m30 myr0m30");
    assert_eq!(jid, format!("juliet@{DOMAIN}"));
    assert_eq!(username, "juliet");
    assert_eq!(password, "r0m30 myr0m30");
    // Input waits while the check runs.
    assert_eq!(
        h.conn.handle_credentials(None, h.now),
        Err(C2sError::InvalidState("no credentials were asked for"))
    );
    assert_eq!(
        verdict(&mut h, PasswordVerdict::Accepted),
        format!("<success xmlns='{NS_SASL}'/>")
    );
    assert!(h.events.iter().any(|e| matches!(
        e,
        Event::Authenticated { jid, mechanism: Mechanism::Plain } if jid == &format!("juliet@{DOMAIN}")
    )));
    let features = h.open();
    assert!(
        features.contains("urn:ietf:params:xml:ns:xmpp-bind"),
        "{features}"
    );
    assert_eq!(
        h.conn
            .handle_password_verdict(PasswordVerdict::Accepted, h.now),
        Err(C2sError::InvalidState("no password check was asked for"))
    );
}

#[test]
fn rejected_passwords_are_counted_and_delayed() {
    let mut h = external();
    h.open_tls();
    plain_pending(&mut h, "juliet", "wrong");
    assert_eq!(
        verdict(&mut h, PasswordVerdict::Rejected),
        failure("not-authorized")
    );
    assert_eq!(h.conn.auth_failures(), 1);
    // Held for 100 ms: the next attempt is read only then.
    h.send_auth("PLAIN", b"\0juliet\0wrong again");
    assert!(h.take_xml().is_empty());
    assert!(!matches!(
        h.events.last(),
        Some(Event::PasswordCheckNeeded { .. })
    ));
    h.advance(Duration::from_millis(100));
    assert!(matches!(
        h.events.last(),
        Some(Event::PasswordCheckNeeded { .. })
    ));
    assert_eq!(
        verdict(&mut h, PasswordVerdict::Rejected),
        failure("not-authorized")
    );
    h.advance(Duration::from_millis(200));
    plain_pending(&mut h, "juliet", "third");
    // The third failure (max_auth_failures) also closes the stream.
    h.conn
        .handle_password_verdict(PasswordVerdict::Rejected, h.now)
        .unwrap();
    h.drive();
    let got = h.take_xml();
    assert_eq!(got.first(), Some(&failure("not-authorized")), "{got:?}");
    match h.closed() {
        Some(CloseReason::SentError(StreamCondition::PolicyViolation, _)) => {}
        other => panic!("expected policy-violation, got {other:?}"),
    }
}

#[test]
fn temporary_failures_are_not_counted_nor_delayed() {
    let mut h = external();
    h.open_tls();
    // More temporary failures than max_auth_failures (3): the stream stays open, and
    // each retry is read at once.
    for _ in 0..5 {
        plain_pending(&mut h, "juliet", "secret");
        assert_eq!(
            verdict(&mut h, PasswordVerdict::TemporaryFailure),
            failure("temporary-auth-failure")
        );
        assert_eq!(h.conn.auth_failures(), 0);
    }
    assert!(h.closed().is_none());
    assert!(!h
        .events
        .iter()
        .any(|e| matches!(e, Event::AuthFailed { .. })));
    plain_pending(&mut h, "juliet", "secret");
    assert_eq!(
        verdict(&mut h, PasswordVerdict::Accepted),
        format!("<success xmlns='{NS_SASL}'/>")
    );
}

#[test]
fn a_verdict_that_never_comes_times_out() {
    let mut h = external();
    h.open_tls();
    plain_pending(&mut h, "juliet", "secret");
    h.advance(Duration::from_secs(31));
    match h.closed() {
        Some(CloseReason::SentError(StreamCondition::ConnectionTimeout, _)) => {}
        other => panic!("expected connection-timeout, got {other:?}"),
    }
}

#[test]
fn password_debug_is_redacted() {
    let p = fedrouter::stream::c2s::Password::new("hunter2");
    assert_eq!(format!("{p:?}"), "Password(<redacted>)");
    assert_eq!(p.expose(), "hunter2");
}

#[test]
fn invalid_authzid_is_refused_before_the_check() {
    let mut h = external();
    h.open_tls();
    h.send_auth("PLAIN", b"romeo@example.com\0juliet\0secret");
    assert_eq!(h.take_one(), failure("invalid-authzid"));
    assert!(!h
        .events
        .iter()
        .any(|e| matches!(e, Event::PasswordCheckNeeded { .. })));
}
