//! XEP-0288 bidirectional S2S streams, sans-IO: our outbound stream against our inbound
//! in memory with a simulated clock and real rustls (`common::pair`), and one end played
//! by hand (`common::pair::Wire`) for what a misbehaving peer sends.

mod common;

use common::pair::{Pair, Server, Wire};
use fedrouter::condition::StreamCondition;
use fedrouter::stream::{
    AuthMethod, CloseReason, Direction, Event, FederationPolicy, PeerPolicy, S2sError, TlsPolicy,
};
use fedrouter_testkit::TestCa;

const A: &str = "cupdomain.test";
const B: &str = "gmail.test";
const A_TO_B: &[u8] =
    b"<presence from='cupuser1@cupdomain.test/r' to='jdoe1@gmail.test' type='subscribe'/>";
const B_TO_A: &[u8] =
    b"<presence from='jdoe1@gmail.test' to='cupuser1@cupdomain.test' type='subscribed'/>";
const BIDI_REQUEST: &str = "<bidi xmlns='urn:xmpp:bidi'/>";
const BIDI_FEATURE: &str = "<bidi xmlns='urn:xmpp:features:bidi'/>";

fn stanzas(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Stanza { element, .. } => Some(element.as_str().to_owned()),
            _ => None,
        })
        .collect()
}

fn closed_with(events: &[Event]) -> Option<&CloseReason> {
    events.iter().find_map(|e| match e {
        Event::Closed(r) => Some(r),
        _ => None,
    })
}

/// Every (local, remote, method, direction) of the side's authentication events, in
/// order: `Authenticated` as `false`, `BidiAuthenticated` as `true`.
fn auths(events: &[Event]) -> Vec<(bool, String, String, AuthMethod, Direction)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Authenticated {
                local,
                remote,
                method,
                direction,
            } => Some((false, local.clone(), remote.clone(), *method, *direction)),
            Event::BidiAuthenticated {
                local,
                remote,
                method,
                direction,
            } => Some((true, local.clone(), remote.clone(), *method, *direction)),
            _ => None,
        })
        .collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn pair(a_policy: PeerPolicy, b_policy: PeerPolicy, certs: bool) -> Pair {
    let ca = TestCa::new("fedrouter test CA").unwrap();
    Pair::new(
        Server::new(A, a_policy, &ca, certs),
        Server::new(B, b_policy, &ca, certs),
    )
}

/// Negotiates bidi with `policy` on both ends and checks: the request goes out after TLS
/// and before authentication; each end reports the pair both ways with `method`; stanzas
/// flow both ways over the one stream.
fn both_directions(policy: PeerPolicy, certs: bool, method: AuthMethod) {
    let what = format!("{policy:?}");
    let mut p = pair(policy, policy, certs);
    p.drive();
    assert!(p.a.conn.is_bidi(), "{what}");
    assert!(p.b.conn.is_bidi(), "{what}");
    assert_eq!(
        p.a.conn.is_tls(),
        policy.tls != TlsPolicy::Disabled,
        "{what}"
    );

    // The wire: the receiving end offers the feature; the initiator requests bidi once,
    // on the last stream document before authentication (after STARTTLS, XEP-0288 §2.1;
    // before SASL or dialback, §2.2).
    let b_sent = text(&p.b.sent);
    assert!(b_sent.contains(BIDI_FEATURE), "{what}: {b_sent}");
    let a_sent = text(&p.a.sent);
    assert_eq!(a_sent.matches(BIDI_REQUEST).count(), 1, "{what}: {a_sent}");
    let at = a_sent.find(BIDI_REQUEST).unwrap();
    let auth_at = a_sent
        .find("<auth ")
        .or_else(|| a_sent.find("<db:result"))
        .unwrap();
    assert!(at < auth_at, "{what}: bidi after authentication: {a_sent}");
    if let Some(tls_at) = a_sent.find("<starttls") {
        assert!(tls_at < at, "{what}: bidi before STARTTLS: {a_sent}");
    }

    assert_eq!(
        auths(&p.a.events),
        vec![
            (false, A.into(), B.into(), method, Direction::Outbound),
            (true, A.into(), B.into(), method, Direction::Inbound),
        ],
        "{what}"
    );
    assert_eq!(
        auths(&p.b.events),
        vec![
            (false, B.into(), A.into(), method, Direction::Inbound),
            (true, B.into(), A.into(), method, Direction::Outbound),
        ],
        "{what}"
    );
    assert_eq!(
        p.b.conn.bidi_authenticated().collect::<Vec<_>>(),
        vec![(B, A, method)]
    );
    assert!(p.b.conn.may_send(B, A), "{what}");
    assert!(!p.b.conn.may_send(B, "other.test"), "{what}");

    // One stream, both ways.
    p.a.conn.send_stanza(A, B, A_TO_B, p.now).unwrap();
    p.b.conn.send_stanza(B, A, B_TO_A, p.now).unwrap();
    p.drive();
    assert_eq!(stanzas(&p.b.events), vec![text(A_TO_B)], "{what}");
    assert_eq!(stanzas(&p.a.events), vec![text(B_TO_A)], "{what}");
    assert!(closed_with(&p.a.events).is_none(), "{what}");
    assert!(closed_with(&p.b.events).is_none(), "{what}");
}

#[test]
fn dialback_both_directions_plain_and_over_tls() {
    // Google-style: plain TCP and dialback.
    both_directions(PeerPolicy::google(), false, AuthMethod::Dialback);
    // WebEx-style: TLS without certificate checks, dialback.
    both_directions(PeerPolicy::webex(), true, AuthMethod::Dialback);
}

#[test]
fn sasl_external_both_directions() {
    both_directions(PeerPolicy::strict(), true, AuthMethod::SaslExternal);
}

#[test]
fn inbound_sasl_grants_the_reverse_only_once_the_restarted_stream_is_open() {
    let mut p = pair(PeerPolicy::strict(), PeerPolicy::strict(), true);
    p.drive();
    let b_events = &p.b.events;
    let authenticated = b_events
        .iter()
        .position(|e| matches!(e, Event::Authenticated { .. }))
        .unwrap();
    let reverse = b_events
        .iter()
        .position(|e| matches!(e, Event::BidiAuthenticated { .. }))
        .unwrap();
    // The restarted stream's header opens it again between the two.
    let reopened = b_events[authenticated..reverse]
        .iter()
        .any(|e| matches!(e, Event::Opened { .. }));
    assert!(reopened, "{b_events:?}");
}

#[test]
fn bidi_refused_when_either_side_disables_it() {
    for (a_bidi, b_bidi) in [(false, true), (true, false), (false, false)] {
        for base in [PeerPolicy::google(), PeerPolicy::strict()] {
            let what = format!("a bidi {a_bidi}, b bidi {b_bidi}, {base:?}");
            let mut p = pair(
                PeerPolicy {
                    bidi: a_bidi,
                    ..base
                },
                PeerPolicy {
                    bidi: b_bidi,
                    ..base
                },
                true,
            );
            p.drive();
            assert!(!p.a.conn.is_bidi(), "{what}");
            assert!(!p.b.conn.is_bidi(), "{what}");
            assert!(!text(&p.a.sent).contains(BIDI_REQUEST), "{what}");
            assert_eq!(
                text(&p.b.sent).contains(BIDI_FEATURE),
                b_bidi,
                "{what}: the feature is offered exactly when the receiving side allows it"
            );
            assert!(
                auths(&p.a.events).iter().all(|a| !a.0),
                "{what}: {:?}",
                p.a.events
            );
            assert!(auths(&p.b.events).iter().all(|a| !a.0), "{what}");
            // Today's behaviour: one direction per stream.
            assert_eq!(
                p.b.conn.send_stanza(B, A, B_TO_A, p.now),
                Err(S2sError::InvalidState(
                    "stanzas are sent on open outbound or bidirectional streams"
                )),
                "{what}"
            );
            assert!(!p.b.conn.may_send(B, A), "{what}");
            p.a.conn.send_stanza(A, B, A_TO_B, p.now).unwrap();
            p.drive();
            assert_eq!(stanzas(&p.b.events), vec![text(A_TO_B)], "{what}");
        }
    }
}

#[test]
fn the_policy_for_the_peer_domain_decides() {
    // b allows bidi in general but not with cupdomain.test; a allows it.
    let ca = TestCa::new("fedrouter test CA").unwrap();
    let mut b_policy = FederationPolicy {
        default: PeerPolicy::google(),
        ..Default::default()
    };
    b_policy.domains.insert(
        A.into(),
        PeerPolicy {
            bidi: false,
            multiplex: true,
            ..PeerPolicy::google()
        },
    );
    let mut p = Pair::new(
        Server::new(A, PeerPolicy::google(), &ca, false),
        Server::with_policy(B, b_policy, &ca, false),
    );
    p.drive();
    assert!(!text(&p.b.sent).contains(BIDI_FEATURE));
    assert!(!p.a.conn.is_bidi() && !p.b.conn.is_bidi());
}

#[test]
fn receiving_side_may_not_send_before_the_initiator_is_authenticated() {
    let mut p = pair(PeerPolicy::google(), PeerPolicy::google(), false);
    p.auto_verify = false;
    p.drive();
    assert!(p.b.conn.is_bidi());
    // b waits for the authoritative verdict on a's key (XEP-0288 §2.2: no stanzas yet).
    assert!(p
        .b
        .events
        .iter()
        .any(|e| matches!(e, Event::VerifyNeeded { .. })));
    assert_eq!(
        p.b.conn.send_stanza(B, A, B_TO_A, p.now),
        Err(S2sError::NotAuthenticated {
            local: B.into(),
            remote: A.into()
        })
    );
    assert!(p.b.conn.bidi_authenticated().next().is_none());
}

#[test]
fn dialback_invalid_grants_nothing_either_way() {
    let mut p = pair(PeerPolicy::google(), PeerPolicy::google(), false);
    p.auto_verify = false;
    p.drive();
    p.b.conn
        .handle_dialback_verdict(B, A, fedrouter::dialback::DialbackResult::Invalid, p.now);
    p.drive();
    assert!(auths(&p.a.events).is_empty(), "{:?}", p.a.events);
    assert!(auths(&p.b.events).is_empty(), "{:?}", p.b.events);
    assert!(p.b.conn.bidi_authenticated().next().is_none());
}

// ----- one end played by hand -----

const PEER_RESPONSE_HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
    xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
    from='gmail.test' to='cupdomain.test' id='peer-stream-1' version='1.0'>";
const PEER_HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
    xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
    from='gmail.test' to='cupdomain.test' version='1.0'>";
const BIDI_DIALBACK_FEATURES: &str = "<stream:features><bidi xmlns='urn:xmpp:features:bidi'/>\
    <dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>";
const DIALBACK_FEATURES: &str =
    "<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>";
const VALID: &str = "<db:result from='gmail.test' to='cupdomain.test' type='valid'/>";

fn google_server() -> Server {
    let ca = TestCa::new("fedrouter test CA").unwrap();
    Server::new(A, PeerPolicy::google(), &ca, false)
}

#[test]
fn stanza_on_a_non_bidi_outbound_stream_is_still_refused() {
    for features in [DIALBACK_FEATURES, BIDI_DIALBACK_FEATURES] {
        // Without the peer's feature, or with it but our policy off: no bidi.
        let policy = PeerPolicy {
            bidi: false,
            multiplex: true,
            ..PeerPolicy::google()
        };
        let ca = TestCa::new("fedrouter test CA").unwrap();
        let srv = Server::new(A, policy, &ca, false);
        let mut w = Wire::outbound(srv.cfg.clone(), A, B);
        w.feed(PEER_RESPONSE_HEADER.as_bytes());
        w.feed(features.as_bytes());
        w.feed(VALID.as_bytes());
        assert!(!w.conn.is_bidi());
        assert!(!text(&w.sent).contains(BIDI_REQUEST));
        w.feed(B_TO_A);
        assert!(
            matches!(
                w.closed(),
                Some(CloseReason::SentError(StreamCondition::NotAuthorized, _))
            ),
            "{:?}",
            w.events
        );
        assert!(w.stanzas().is_empty());
    }
}

#[test]
fn bidi_outbound_checks_what_the_peer_sends() {
    let srv = google_server();
    // Before authentication: not-authorized.
    let mut w = Wire::outbound(srv.cfg.clone(), A, B);
    w.feed(PEER_RESPONSE_HEADER.as_bytes());
    w.feed(BIDI_DIALBACK_FEATURES.as_bytes());
    assert!(w.conn.is_bidi());
    w.feed(B_TO_A);
    assert!(
        matches!(
            w.closed(),
            Some(CloseReason::SentError(StreamCondition::NotAuthorized, _))
        ),
        "{:?}",
        w.events
    );

    // From a domain the stream did not authenticate: invalid-from.
    let mut w = Wire::outbound(srv.cfg.clone(), A, B);
    w.feed(PEER_RESPONSE_HEADER.as_bytes());
    w.feed(BIDI_DIALBACK_FEATURES.as_bytes());
    w.feed(VALID.as_bytes());
    w.feed(b"<message from='x@evil.test' to='cupuser1@cupdomain.test'><body>hi</body></message>");
    assert!(
        matches!(
            w.closed(),
            Some(CloseReason::SentError(StreamCondition::InvalidFrom, _))
        ),
        "{:?}",
        w.events
    );

    // To a domain we do not host: host-unknown.
    let mut w = Wire::outbound(srv.cfg.clone(), A, B);
    w.feed(PEER_RESPONSE_HEADER.as_bytes());
    w.feed(BIDI_DIALBACK_FEATURES.as_bytes());
    w.feed(VALID.as_bytes());
    w.feed(b"<message from='jdoe1@gmail.test' to='x@elsewhere.test'><body>hi</body></message>");
    assert!(
        matches!(
            w.closed(),
            Some(CloseReason::SentError(StreamCondition::HostUnknown, _))
        ),
        "{:?}",
        w.events
    );

    // An unsolicited `type='valid'` for another pair authorises nothing (XEP-0288 §4).
    let mut w = Wire::outbound(srv.cfg.clone(), A, B);
    w.feed(PEER_RESPONSE_HEADER.as_bytes());
    w.feed(BIDI_DIALBACK_FEATURES.as_bytes());
    w.feed(b"<db:result from='evil.test' to='cupdomain.test' type='valid'/>");
    assert!(w.conn.bidi_authenticated().next().is_none());
    w.feed(VALID.as_bytes());
    assert_eq!(
        w.conn.bidi_authenticated().collect::<Vec<_>>(),
        vec![(A, B, AuthMethod::Dialback)]
    );
    w.feed(B_TO_A);
    assert_eq!(w.stanzas(), vec![text(B_TO_A)]);
    assert!(w.closed().is_none());
}

#[test]
fn unoffered_bidi_request_is_an_unexpected_element() {
    let ca = TestCa::new("fedrouter test CA").unwrap();
    let policy = PeerPolicy {
        bidi: false,
        multiplex: true,
        ..PeerPolicy::google()
    };
    let srv = Server::new(B, policy, &ca, false);
    let mut w = Wire::inbound(srv.cfg.clone());
    let header = PEER_HEADER.replace(
        "from='gmail.test' to='cupdomain.test'",
        "from='cupdomain.test' to='gmail.test'",
    );
    let out = w.feed(header.as_bytes());
    assert!(!text(&out).contains(BIDI_FEATURE), "{}", text(&out));
    w.feed(BIDI_REQUEST.as_bytes());
    assert!(
        matches!(
            w.closed(),
            Some(CloseReason::SentError(
                StreamCondition::UnsupportedStanzaType,
                _
            ))
        ),
        "{:?}",
        w.events
    );
}

#[test]
fn late_bidi_request_authorises_pairs_already_authenticated() {
    // A peer that sends <bidi/> after its dialback succeeded (the XEP says SHOULD before):
    // the authenticated pair is granted the other way at once.
    let ca = TestCa::new("fedrouter test CA").unwrap();
    let srv = Server::new(B, PeerPolicy::google(), &ca, false);
    let mut w = Wire::inbound(srv.cfg.clone());
    let header = PEER_HEADER.replace(
        "from='gmail.test' to='cupdomain.test'",
        "from='cupdomain.test' to='gmail.test'",
    );
    w.feed(header.as_bytes());
    w.feed(b"<db:result from='cupdomain.test' to='gmail.test'>k</db:result>");
    w.verdict(B, A, fedrouter::dialback::DialbackResult::Valid);
    assert!(!w.conn.is_bidi());
    w.feed(BIDI_REQUEST.as_bytes());
    assert!(w.conn.is_bidi());
    assert_eq!(
        auths(&w.events).last(),
        Some(&(
            true,
            B.into(),
            A.into(),
            AuthMethod::Dialback,
            Direction::Outbound
        ))
    );
    w.conn.send_stanza(B, A, B_TO_A, w.now).unwrap();
    assert!(text(&w.pump()).contains("type='subscribed'"));
}
