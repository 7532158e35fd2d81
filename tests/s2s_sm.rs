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
