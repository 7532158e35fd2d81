//! XEP-0198 stream management on the C2S machine, in memory (real rustls, simulated
//! clock): the feature, enable before and after binding, acknowledgements both ways and
//! their cadence, `h` too high, resumption onto a new stream (the stanzas the client had
//! not acknowledged sent again), and a resumption refused.

#[path = "common/c2s_client.rs"]
mod c2s_client;

use std::time::Duration;

use c2s_client::Harness;
use fedrouter::condition::StreamCondition;
use fedrouter::stream::c2s::{C2sError, C2sSmConfig, Event};
use fedrouter::stream::sm::AckPolicy;
use fedrouter::stream::CloseReason;

const SM: &str = "urn:xmpp:sm:3";

fn harness(every: u32, after: Duration, max_resume: Duration) -> Harness {
    let mut h = Harness::new(|c| {
        c.stream_management = Some(C2sSmConfig {
            ack: AckPolicy { every, after },
            max_resume,
        })
    });
    h.add_user("juliet", "r0m30myr0m30");
    h
}

fn message(i: usize) -> String {
    format!("<message from='romeo@montague.example/o' to='juliet@example.com/balcony' id='s{i}'><body>{i}</body></message>")
}

/// juliet bound as `balcony` with stream management enabled (resumable); returns the
/// resumption id.
fn enabled(h: &mut Harness) -> String {
    h.bound("juliet", "r0m30myr0m30", "balcony");
    h.send(&format!("<enable xmlns='{SM}' resume='true' max='60'/>"));
    let got = h.take_one();
    let id = got
        .split("id='")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .unwrap_or_else(|| panic!("no id in {got}"))
        .to_owned();
    assert_eq!(
        got,
        format!("<enabled xmlns='{SM}' id='{id}' resume='true' max='60'/>")
    );
    assert_eq!(
        h.events.last(),
        Some(&Event::StreamManagementEnabled {
            resumption_id: Some(id.clone())
        })
    );
    id
}

#[test]
fn offered_after_sasl_and_enabled_only_once_bound() {
    let mut h = harness(5, Duration::from_secs(30), Duration::from_secs(300));
    let features = h.login("juliet", "r0m30myr0m30");
    assert!(
        features.contains("<sm xmlns='urn:xmpp:sm:3'/>"),
        "{features}"
    );
    h.send(&format!("<enable xmlns='{SM}'/>"));
    assert_eq!(
        h.take_one(),
        format!("<failed xmlns='{SM}'><unexpected-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"),
        "§3: not before binding"
    );
    h.request_bind("b1", Some("balcony"));
    h.conn
        .handle_bind(Ok("juliet@example.com/balcony"), h.now)
        .unwrap();
    h.drive();
    h.take_one();
    // Without resume: no id, not resumable.
    h.send(&format!("<enable xmlns='{SM}'/>"));
    assert_eq!(h.take_one(), format!("<enabled xmlns='{SM}'/>"));
    assert!(h.conn.stream_management_enabled());
    assert_eq!(h.conn.resumption_timeout(), Duration::ZERO);
    h.send(&format!("<enable xmlns='{SM}'/>"));
    assert!(h.take_one().contains("unexpected-request"), "only once");
    assert!(h.closed().is_none());
}

#[test]
fn not_offered_when_not_configured() {
    let mut h = Harness::new(|_| {});
    h.add_user("juliet", "r0m30myr0m30");
    let features = h.login("juliet", "r0m30myr0m30");
    assert!(!features.contains("urn:xmpp:sm:3"), "{features}");
}

#[test]
fn acknowledgements_both_ways_with_the_cadence() {
    let mut h = harness(3, Duration::from_secs(10), Duration::from_secs(300));
    enabled(&mut h);
    // The client's stanzas count toward our h, whoever answers them.
    h.send("<iq type='set' id='sess'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>");
    h.take_one();
    h.send("<message to='romeo@montague.example' id='c1'><body>x</body></message>");
    h.send(&format!("<r xmlns='{SM}'/>"));
    assert_eq!(h.take_one(), format!("<a xmlns='{SM}' h='2'/>"));
    // Ours: the session iq result counted too; <r/> after every 3rd stanza.
    for i in 0..4 {
        h.conn.send_stanza(message(i).as_bytes(), h.now).unwrap();
    }
    h.drive();
    let sent = h.take_xml();
    assert_eq!(sent.len(), 5, "{sent:#?}");
    assert_eq!(
        sent[2],
        format!("<r xmlns='{SM}'/>"),
        "after the 3rd stanza: {sent:#?}"
    );
    assert_eq!(h.conn.unacknowledged(), 5);
    h.send(&format!("<a xmlns='{SM}' h='3'/>"));
    assert_eq!(h.conn.unacknowledged(), 2);
    // A quiet stream: the 10 s timer asks for the rest.
    h.advance(Duration::from_secs(10));
    assert_eq!(h.take_xml(), vec![format!("<r xmlns='{SM}'/>")]);
    h.send(&format!("<a xmlns='{SM}' h='5'/>"));
    assert_eq!(h.conn.unacknowledged(), 0);
    assert!(h.closed().is_none());
}

#[test]
fn h_beyond_what_was_sent_closes_the_stream() {
    let mut h = harness(100, Duration::from_secs(30), Duration::from_secs(300));
    enabled(&mut h);
    h.conn.send_stanza(message(0).as_bytes(), h.now).unwrap();
    h.drive();
    h.take_xml();
    h.send(&format!("<a xmlns='{SM}' h='2'/>"));
    assert!(
        matches!(
            h.closed(),
            Some(CloseReason::SentError(
                StreamCondition::UndefinedCondition,
                _
            ))
        ),
        "{:?}",
        h.closed()
    );
    let wire = String::from_utf8_lossy(&h.server_sent).into_owned();
    assert!(
        wire.contains("<handled-count-too-high xmlns='urn:xmpp:sm:3' h='2' send-count='1'/>"),
        "{wire}"
    );
}

#[test]
fn a_dropped_session_resumes_on_a_new_stream_and_gets_what_it_missed() {
    let mut old = harness(100, Duration::from_secs(30), Duration::from_secs(300));
    let id = enabled(&mut old);
    old.send("<message to='romeo@montague.example' id='c1'><body>x</body></message>");
    for i in 0..4 {
        old.conn
            .send_stanza(message(i).as_bytes(), old.now)
            .unwrap();
    }
    old.drive();
    old.take_xml();
    old.send(&format!("<a xmlns='{SM}' h='1'/>"));
    // The TCP connection drops here (no </stream:stream>): the runtime keeps the session
    // detached; the client reconnects, authenticates and resumes, saying it received 2.
    assert_eq!(old.conn.resumption_timeout(), Duration::from_secs(60));
    let state = old.conn.take_resumable_state().expect("resumable");
    assert_eq!(state.jid(), "juliet@example.com/balcony");
    assert_eq!(state.unacknowledged(), 3);

    let mut new = harness(100, Duration::from_secs(30), Duration::from_secs(300));
    new.login("juliet", "r0m30myr0m30");
    new.send(&format!("<resume xmlns='{SM}' previd='{id}' h='2'/>"));
    assert_eq!(
        new.events.last(),
        Some(&Event::ResumeRequested {
            previd: id.clone(),
            h: 2
        })
    );
    assert!(new.take_xml().is_empty(), "waits for the runtime");
    new.conn.handle_resume(Some(state), new.now).unwrap();
    new.drive();
    let got = new.take_xml();
    assert_eq!(
        got,
        vec![
            format!("<resumed xmlns='{SM}' h='1' previd='{id}'/>"),
            message(2),
            message(3),
            format!("<r xmlns='{SM}'/>"),
        ]
    );
    assert_eq!(
        new.events.last(),
        Some(&Event::Resumed {
            jid: "juliet@example.com/balcony".into()
        })
    );
    assert_eq!(
        new.conn.bound_jid().map(|j| j.as_str()),
        Some("juliet@example.com/balcony")
    );
    // The counters carry on: the client acknowledges all 4 of the old stream's stanzas.
    new.send(&format!("<a xmlns='{SM}' h='4'/>"));
    assert_eq!(new.conn.unacknowledged(), 0);
    new.send("<message to='romeo@montague.example' id='c2'><body>y</body></message>");
    new.send(&format!("<r xmlns='{SM}'/>"));
    assert_eq!(new.take_one(), format!("<a xmlns='{SM}' h='2'/>"));
    assert!(new.closed().is_none());
}

#[test]
fn an_unknown_or_foreign_session_is_not_resumed_and_binding_still_works() {
    let mut other = harness(100, Duration::from_secs(30), Duration::from_secs(300));
    other.add_user("romeo", "0rch4rd");
    other.bound("romeo", "0rch4rd", "orchard");
    other.send(&format!("<enable xmlns='{SM}' resume='true'/>"));
    other.take_one();
    let romeos = other.conn.take_resumable_state().expect("resumable");

    let mut h = harness(100, Duration::from_secs(30), Duration::from_secs(300));
    h.login("juliet", "r0m30myr0m30");
    h.send(&format!("<resume xmlns='{SM}' previd='nope' h='0'/>"));
    h.conn.handle_resume(None, h.now).unwrap();
    h.drive();
    assert_eq!(
        h.take_one(),
        format!("<failed xmlns='{SM}'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>")
    );
    // Another account's session: refused the same way, and reported to the runtime.
    h.send(&format!("<resume xmlns='{SM}' previd='x' h='0'/>"));
    assert!(matches!(
        h.conn.handle_resume(Some(romeos), h.now),
        Err(C2sError::InvalidJid(_))
    ));
    h.drive();
    assert!(h.take_one().contains("item-not-found"));
    // The client binds as usual.
    h.request_bind("b1", Some("balcony"));
    h.conn
        .handle_bind(Ok("juliet@example.com/balcony"), h.now)
        .unwrap();
    h.drive();
    assert!(h
        .take_one()
        .contains("<jid>juliet@example.com/balcony</jid>"));
}

#[test]
fn what_was_never_acknowledged_is_handed_back() {
    let mut h = harness(100, Duration::from_secs(30), Duration::ZERO);
    h.bound("juliet", "r0m30myr0m30", "balcony");
    h.send(&format!("<enable xmlns='{SM}' resume='true'/>"));
    assert_eq!(
        h.take_one(),
        format!("<enabled xmlns='{SM}'/>"),
        "resumption off"
    );
    for i in 0..3 {
        h.conn.send_stanza(message(i).as_bytes(), h.now).unwrap();
    }
    h.drive();
    h.send(&format!("<a xmlns='{SM}' h='1'/>"));
    assert!(h.conn.take_resumable_state().is_none());
    let back: Vec<String> = h
        .conn
        .take_unacknowledged()
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert_eq!(back, vec![message(1), message(2)]);
}
