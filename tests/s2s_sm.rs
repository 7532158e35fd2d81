//! XEP-0198 stream management on S2S streams, sans-IO: our outbound stream against our
//! inbound in memory ([`Pair`], simulated clock, real rustls where TLS is negotiated), and
//! against a hand-played peer ([`Wire`]) for what a conforming peer never does.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::pair::{Pair, Server, Wire};
use fedrouter::condition::StreamCondition;
use fedrouter::stream::sm::AckPolicy;
use fedrouter::stream::{AuthPolicy, CloseReason, Direction, Event, PeerPolicy, TlsPolicy};
use fedrouter_testkit::TestCa;

fn policy(tls: TlsPolicy, auth: AuthPolicy) -> PeerPolicy {
    PeerPolicy {
        tls,
        auth,
        verify_certificates: true,
        ..PeerPolicy::default()
    }
}

/// `srv` with stream management configured as `sm`.
fn with_sm(mut srv: Server, sm: Option<AckPolicy>) -> Server {
    Arc::get_mut(&mut srv.cfg)
        .expect("a fresh configuration")
        .stream_management = sm;
    srv
}

fn cadence(every: u32, after_ms: u64) -> Option<AckPolicy> {
    Some(AckPolicy {
        every,
        after: Duration::from_millis(after_ms),
    })
}

fn pair(a_sm: Option<AckPolicy>, b_sm: Option<AckPolicy>, p: PeerPolicy) -> Pair {
    let ca = TestCa::new("fedrouter test CA").unwrap();
    let a = with_sm(Server::new("cupdomain.test", p, &ca, true), a_sm);
    let b = with_sm(Server::new("gmail.test", p, &ca, true), b_sm);
    let mut pair = Pair::new(a, b);
    pair.drive();
    assert!(
        pair.a.conn.is_authenticated("cupdomain.test", "gmail.test"),
        "the pair authenticates"
    );
    pair
}

fn send(p: &mut Pair, n: usize) {
    for i in 0..n {
        let s = format!("<message from='a@cupdomain.test' to='b@gmail.test' id='m{i}'/>");
        p.a.conn
            .send_stanza("cupdomain.test", "gmail.test", s.as_bytes(), p.now)
            .unwrap();
    }
}

fn acknowledged(events: &[Event]) -> u32 {
    events
        .iter()
        .map(|e| match e {
            Event::Acknowledged { count } => *count,
            _ => 0,
        })
        .sum()
}

fn received(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::Stanza { .. }))
        .count()
}

fn requests_sent(bytes: &[u8]) -> usize {
    String::from_utf8_lossy(bytes)
        .matches("<r xmlns='urn:xmpp:sm:3'/>")
        .count()
}

#[test]
fn enabled_both_ways_in_every_profile_and_every_stanza_is_acknowledged() {
    for p in [
        policy(TlsPolicy::Disabled, AuthPolicy::Dialback), // Google-style
        policy(TlsPolicy::Optional, AuthPolicy::Dialback), // WebEx-style
        policy(TlsPolicy::Required, AuthPolicy::SaslExternal), // strict
    ] {
        let mut pr = pair(cadence(5, 1000), cadence(5, 1000), p);
        assert!(pr.a.conn.acknowledges_stanzas(), "{p:?}");
        assert!(pr.a.conn.stream_management_enabled(), "{p:?}");
        assert_eq!(pr.b.conn.handled_count(), Some(0));
        send(&mut pr, 23);
        pr.drive();
        assert_eq!(received(&pr.b.events), 23);
        assert_eq!(pr.b.conn.handled_count(), Some(23));
        // Every 5th stanza asked for an ack: 20 acknowledged, 3 wait for the timer.
        assert_eq!(requests_sent(&pr.a.sent), 4, "{p:?}");
        assert_eq!(acknowledged(&pr.a.events), 20);
        assert_eq!(pr.a.conn.unacknowledged(), 3);
        pr.advance(Duration::from_millis(1000));
        assert_eq!(requests_sent(&pr.a.sent), 5);
        assert_eq!(acknowledged(&pr.a.events), 23);
        assert_eq!(pr.a.conn.unacknowledged(), 0);
        // No timer is left armed by stream management once all is acknowledged.
        let before = requests_sent(&pr.a.sent);
        pr.advance(Duration::from_secs(5));
        assert_eq!(requests_sent(&pr.a.sent), before);
    }
}

#[test]
fn not_enabled_when_either_side_lacks_it() {
    let p = policy(TlsPolicy::Disabled, AuthPolicy::Dialback);
    for (a_sm, b_sm) in [(cadence(5, 1000), None), (None, cadence(5, 1000))] {
        let mut pr = pair(a_sm, b_sm, p);
        assert!(!pr.a.conn.acknowledges_stanzas());
        assert!(!String::from_utf8_lossy(&pr.a.sent).contains("<enable"));
        send(&mut pr, 3);
        pr.drive();
        assert_eq!(received(&pr.b.events), 3);
        assert_eq!(pr.b.conn.handled_count(), None);
        assert_eq!(acknowledged(&pr.a.events), 0);
    }
}

#[test]
fn when_the_stream_drops_what_is_unacknowledged_is_what_followed_the_last_ack() {
    // 9 stanzas with an <r/> after every 5th: the peer acknowledged 5 when the stream
    // drops (the test stops driving it), and the machine reports the 4 after them as
    // unacknowledged: the runtime sends exactly those again on the next stream.
    let p = policy(TlsPolicy::Disabled, AuthPolicy::Dialback);
    let mut pr = pair(cadence(5, 60_000), cadence(5, 60_000), p);
    send(&mut pr, 9);
    pr.drive();
    assert_eq!(received(&pr.b.events), 9);
    assert_eq!(acknowledged(&pr.a.events), 5);
    assert_eq!(pr.a.conn.unacknowledged(), 4);
    assert_eq!(pr.b.conn.handled_count(), Some(9));
}

#[test]
fn h_beyond_what_was_sent_closes_with_handled_count_too_high() {
    let p = policy(TlsPolicy::Disabled, AuthPolicy::Dialback);
    let mut pr = pair(cadence(100, 60_000), cadence(100, 60_000), p);
    send(&mut pr, 2);
    pr.drive();
    // b acknowledges more than a sent.
    let mut raw = Vec::new();
    fedrouter::stream::sm::SmElement::Answer { h: 3 }.write(&mut raw);
    let sent_before = pr.a.sent.len();
    pr.a.conn.handle_input(&raw, pr.now);
    pr.drive();
    let reason = pr.a.events.iter().find_map(|e| match e {
        Event::Closed(r) => Some(r.clone()),
        _ => None,
    });
    assert!(
        matches!(
            reason,
            Some(CloseReason::SentError(
                StreamCondition::UndefinedCondition,
                _
            ))
        ),
        "{reason:?}"
    );
    let tail = String::from_utf8_lossy(&pr.a.sent[sent_before..]).into_owned();
    assert!(
        tail.contains("<undefined-condition xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>")
            && tail.contains(
                "<handled-count-too-high xmlns='urn:xmpp:sm:3' h='3' send-count='2'/></stream:error>"
            ),
        "{tail}"
    );
    assert_eq!(acknowledged(&pr.a.events), 0, "nothing was released");
}

#[test]
fn a_refused_enable_turns_acknowledgements_off() {
    // A peer that offers the feature but answers <failed/> (hand-played).
    let ca = TestCa::new("fedrouter test CA").unwrap();
    let a = with_sm(
        Server::new(
            "cupdomain.test",
            policy(TlsPolicy::Disabled, AuthPolicy::Dialback),
            &ca,
            false,
        ),
        cadence(1, 1000),
    );
    let mut w = Wire::outbound(a.cfg.clone(), "cupdomain.test", "gmail.test");
    w.pump();
    w.feed(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='gmail.test' to='cupdomain.test' id='s1' version='1.0'>\
        <stream:features><dialback xmlns='urn:xmpp:features:dialback'/><sm xmlns='urn:xmpp:sm:3'/></stream:features>");
    let out = w.feed(b"<db:result from='gmail.test' to='cupdomain.test' type='valid'/>");
    assert!(
        String::from_utf8_lossy(&out).contains("<enable xmlns='urn:xmpp:sm:3'/>"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(w.conn.acknowledges_stanzas());
    w.feed(b"<failed xmlns='urn:xmpp:sm:3'><unexpected-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>");
    assert!(w
        .events
        .iter()
        .any(|e| matches!(e, Event::StreamManagementRefused)));
    assert!(!w.conn.acknowledges_stanzas());
    w.conn
        .send_stanza(
            "cupdomain.test",
            "gmail.test",
            b"<message from='a@cupdomain.test' to='b@gmail.test'/>",
            w.now,
        )
        .unwrap();
    assert_eq!(requests_sent(&w.pump()), 0, "no <r/> once refused");
    assert!(w.closed().is_none());
}

#[test]
fn enable_before_authentication_is_refused_and_r_without_sm_is_an_error() {
    let ca = TestCa::new("fedrouter test CA").unwrap();
    let b = with_sm(
        Server::new(
            "gmail.test",
            policy(TlsPolicy::Disabled, AuthPolicy::Dialback),
            &ca,
            false,
        ),
        cadence(5, 1000),
    );
    let mut w = Wire::inbound(b.cfg.clone());
    let out = w.feed(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='cupdomain.test' to='gmail.test' version='1.0'>");
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(
        text.contains("<sm xmlns='urn:xmpp:sm:3'/>"),
        "feature offered: {text}"
    );
    let out = w.feed(b"<enable xmlns='urn:xmpp:sm:3'/>");
    assert_eq!(
        String::from_utf8_lossy(&out),
        "<failed xmlns='urn:xmpp:sm:3'><unexpected-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
    );
    assert!(w.closed().is_none());
    w.feed(b"<r xmlns='urn:xmpp:sm:3'/>");
    assert!(
        matches!(
            w.closed(),
            Some(CloseReason::SentError(
                StreamCondition::UnsupportedStanzaType,
                _
            ))
        ),
        "{:?}",
        w.closed()
    );
    let _ = Direction::Inbound;
}

/// `n` stanzas from b to a, against the stream's direction (b is the receiving end of a
/// bidirectional stream, XEP-0288).
fn send_back(p: &mut Pair, n: usize) {
    for i in 0..n {
        let s = format!("<message from='b@gmail.test' to='a@cupdomain.test' id='r{i}'/>");
        p.b.conn
            .send_stanza("gmail.test", "cupdomain.test", s.as_bytes(), p.now)
            .unwrap();
    }
}

fn closed(events: &[Event]) -> Option<&CloseReason> {
    events.iter().find_map(|e| match e {
        Event::Closed(r) => Some(r),
        _ => None,
    })
}

#[test]
fn on_a_bidi_stream_what_the_receiving_end_sends_is_acknowledged_too() {
    // XEP-0198's state is per stream and both ends count what they receive (§4): on a
    // bidirectional stream (XEP-0288) the receiving end counts what it sends from its
    // <enabled/> on, asks with <r/> on its own cadence, and is acknowledged; each
    // direction's counters are independent.
    for p in [
        policy(TlsPolicy::Disabled, AuthPolicy::Dialback),
        policy(TlsPolicy::Optional, AuthPolicy::Dialback),
        policy(TlsPolicy::Required, AuthPolicy::SaslExternal),
    ] {
        let mut pr = pair(cadence(5, 1000), cadence(5, 1000), p);
        assert!(pr.b.conn.is_bidi(), "{p:?}");
        assert!(
            pr.b.events
                .iter()
                .any(|e| matches!(e, Event::StreamManagementEnabled)),
            "{p:?}"
        );
        assert!(pr.b.conn.acknowledges_stanzas(), "{p:?}");
        assert!(pr.b.conn.stream_management_enabled(), "{p:?}");
        send_back(&mut pr, 7);
        send(&mut pr, 3);
        pr.drive();
        assert_eq!(received(&pr.a.events), 7, "{p:?}");
        assert_eq!(received(&pr.b.events), 3, "{p:?}");
        assert_eq!(pr.a.conn.handled_count(), Some(7), "{p:?}");
        assert_eq!(pr.b.conn.handled_count(), Some(3), "{p:?}");
        // b asked after its 5th; a has not reached 5.
        assert_eq!(requests_sent(&pr.b.sent), 1, "{p:?}");
        assert_eq!(requests_sent(&pr.a.sent), 0, "{p:?}");
        assert_eq!(acknowledged(&pr.b.events), 5, "{p:?}");
        assert_eq!(pr.b.conn.unacknowledged(), 2, "{p:?}");
        assert_eq!(pr.a.conn.unacknowledged(), 3, "{p:?}");
        pr.advance(Duration::from_millis(1000));
        assert_eq!(acknowledged(&pr.b.events), 7, "{p:?}");
        assert_eq!(acknowledged(&pr.a.events), 3, "{p:?}");
        assert_eq!(pr.b.conn.unacknowledged(), 0, "{p:?}");
        assert_eq!(pr.a.conn.unacknowledged(), 0, "{p:?}");
        assert!(closed(&pr.a.events).is_none(), "{p:?}");
        assert!(closed(&pr.b.events).is_none(), "{p:?}");
    }
}

#[test]
fn an_unasked_ack_is_taken_on_either_end_and_too_high_closes_the_receiving_end() {
    // Prosody's mod_smacks sends a last <a h='…'/> before it closes a stream, unasked.
    let p = policy(TlsPolicy::Disabled, AuthPolicy::Dialback);
    let mut pr = pair(cadence(100, 60_000), cadence(100, 60_000), p);
    send_back(&mut pr, 2);
    pr.drive();
    assert_eq!(received(&pr.a.events), 2);
    let ack = |h: u32| {
        let mut raw = Vec::new();
        fedrouter::stream::sm::SmElement::Answer { h }.write(&mut raw);
        raw
    };
    // The initiator sent nothing: h = 0 is right, and harmless.
    pr.a.conn.handle_input(&ack(0), pr.now);
    pr.b.conn.handle_input(&ack(2), pr.now);
    pr.drive();
    assert!(closed(&pr.a.events).is_none());
    assert!(closed(&pr.b.events).is_none());
    assert_eq!(acknowledged(&pr.b.events), 2);
    assert_eq!(pr.b.conn.unacknowledged(), 0);
    // More than b ever sent: §4's stream error, on the receiving end too.
    pr.b.conn.handle_input(&ack(3), pr.now);
    pr.drive();
    assert!(
        matches!(
            closed(&pr.b.events),
            Some(CloseReason::SentError(
                StreamCondition::UndefinedCondition,
                _
            ))
        ),
        "{:?}",
        closed(&pr.b.events)
    );
    assert!(String::from_utf8_lossy(&pr.b.sent)
        .contains("<handled-count-too-high xmlns='urn:xmpp:sm:3' h='3' send-count='2'/>"));
}

#[test]
fn the_initiator_counts_what_it_receives_from_enabled_on() {
    // §4: the initiating entity counts from the peer's <enabled/>. On a bidirectional
    // stream the peer may send a stanza before it reads our <enable/> (hand-played
    // here): it is delivered but not counted, as the peer does not count it either.
    let ca = TestCa::new("fedrouter test CA").unwrap();
    let a = with_sm(
        Server::new(
            "cupdomain.test",
            policy(TlsPolicy::Disabled, AuthPolicy::Dialback),
            &ca,
            false,
        ),
        cadence(100, 60_000),
    );
    let mut w = Wire::outbound(a.cfg.clone(), "cupdomain.test", "gmail.test");
    w.pump();
    let out = w.feed(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='gmail.test' to='cupdomain.test' id='s1' version='1.0'>\
        <stream:features><bidi xmlns='urn:xmpp:features:bidi'/><dialback xmlns='urn:xmpp:features:dialback'/><sm xmlns='urn:xmpp:sm:3'/></stream:features>");
    assert!(
        String::from_utf8_lossy(&out).contains("<bidi xmlns='urn:xmpp:bidi'/>"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let out = w.feed(b"<db:result from='gmail.test' to='cupdomain.test' type='valid'/>");
    assert!(String::from_utf8_lossy(&out).contains("<enable xmlns='urn:xmpp:sm:3'/>"));
    w.feed(b"<presence from='jdoe1@gmail.test' to='cupuser1@cupdomain.test' id='before'/>");
    w.feed(b"<enabled xmlns='urn:xmpp:sm:3'/>");
    w.feed(b"<presence from='jdoe1@gmail.test' to='cupuser1@cupdomain.test' id='after'/>");
    assert_eq!(received(&w.events), 2, "both delivered: {:?}", w.events);
    let out = w.feed(b"<r xmlns='urn:xmpp:sm:3'/>");
    assert_eq!(
        String::from_utf8_lossy(&out),
        "<a xmlns='urn:xmpp:sm:3' h='1'/>"
    );
    assert!(w.closed().is_none());
}
