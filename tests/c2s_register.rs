//! XEP-0077 in-band registration on the C2S machine (off by default), in memory with real
//! rustls: the feature, the form, an account created through the runtime's answer and
//! then used to log in, a taken username, bad requests, one account per stream, and the
//! stream error when registration is off.

#[path = "common/c2s_client.rs"]
mod c2s_client;

use c2s_client::Harness;
use fedrouter::condition::StreamCondition;
use fedrouter::stream::c2s::{Event, RegistrationError};
use fedrouter::stream::CloseReason;

const FEATURE: &str = "<register xmlns='http://jabber.org/features/iq-register'/>";

fn set(id: &str, user: &str, password: &str) -> String {
    format!("<iq type='set' id='{id}'><query xmlns='jabber:iq:register'><username>{user}</username><password>{password}</password></query></iq>")
}

fn registering() -> Harness {
    Harness::new(|c| c.registration = true)
}

#[test]
fn register_then_log_in() {
    let mut h = registering();
    // TLS is required: no feature (and no mechanism) before it.
    assert!(!h.open().contains(FEATURE));
    h.starttls();
    let features = h.open();
    assert!(features.contains(FEATURE), "{features}");
    h.send("<iq type='get' id='g1'><query xmlns='jabber:iq:register'/></iq>");
    let form = h.take_one();
    assert!(
        form.starts_with("<iq type='result' id='g1'><query xmlns='jabber:iq:register'>")
            && form.contains("<username/><password/>"),
        "{form}"
    );
    h.send(&set("r1", "Romeo", "s3cret"));
    assert!(h.take_xml().is_empty(), "waits for the runtime");
    let Some(Event::RegistrationRequested { jid, password }) = h.events.last().cloned() else {
        panic!("{:?}", h.events.last());
    };
    assert_eq!(jid, "romeo@example.com", "the localpart is normalised");
    assert_eq!(password.expose(), "s3cret");
    assert_eq!(format!("{password:?}"), "Password(<redacted>)");
    // The runtime stored the account.
    h.add_user("romeo", "s3cret");
    h.conn.handle_registration(Ok(()), h.now).unwrap();
    h.drive();
    assert_eq!(h.take_one(), "<iq type='result' id='r1'/>");
    // One account per stream.
    h.send(&set("r2", "juliet", "x"));
    assert!(h.take_one().contains("<not-allowed "));
    // The client authenticates as usual with the new account.
    h.scram(
        "romeo",
        "s3cret",
        fedrouter::store::scram::ScramHash::Sha256,
    )
    .unwrap();
    assert!(h
        .events
        .iter()
        .any(|e| matches!(e, Event::Authenticated { jid, .. } if jid == "romeo@example.com")));
}

#[test]
fn taken_usernames_and_bad_requests_are_answered_and_the_stream_stays() {
    let mut h = registering();
    h.open_tls();
    h.send(&set("r1", "romeo", "pw"));
    h.conn
        .handle_registration(Err(RegistrationError::Conflict), h.now)
        .unwrap();
    h.drive();
    assert!(h.take_one().contains("<conflict "), "XEP-0077 §3.1");
    h.send("<iq type='set' id='r2'><query xmlns='jabber:iq:register'><username>romeo</username></query></iq>");
    assert!(h.take_one().contains("<not-acceptable "));
    h.send(&set("r3", "a@b", "pw"));
    assert!(h.take_one().contains("<jid-malformed "));
    assert!(h.closed().is_none());
    // Any other stanza before authentication still ends the stream.
    h.send("<message to='x@example.com'/>");
    assert!(matches!(
        h.closed(),
        Some(CloseReason::SentError(StreamCondition::NotAuthorized, _))
    ));
}

#[test]
fn off_by_default() {
    let mut h = Harness::new(|_| {});
    let features = h.open_tls();
    assert!(!features.contains(FEATURE), "{features}");
    h.send(&set("r1", "romeo", "pw"));
    assert!(matches!(
        h.closed(),
        Some(CloseReason::SentError(StreamCondition::NotAuthorized, _))
    ));
    assert!(!h
        .events
        .iter()
        .any(|e| matches!(e, Event::RegistrationRequested { .. })));
}
