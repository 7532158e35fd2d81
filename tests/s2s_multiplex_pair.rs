//! Outbound multiplexing by target (XEP-0220 §2.4), sans-IO: our outbound stream to
//! `b1.test` against our inbound stream of a server that also hosts `b2.test`
//! (Google-Apps-style), in memory with a simulated clock (`common::pair`). A second
//! remote domain joins the stream with its own `db:result`; a refusal of it leaves the
//! stream and the first domain up; the core refuses stanzas for a pair not authenticated.

mod common;

use common::pair::{Pair, Server};
use fedrouter::dialback::{DialbackErrorCondition, DialbackResult};
use fedrouter::stream::{Direction, Event, FederationPolicy, PeerPolicy, S2sError, TlsPolicy};
use fedrouter_testkit::TestCa;

const A: &str = "cupdomain.test";
const B1: &str = "b1.test";
const B2: &str = "b2.test";
const TO_B1: &[u8] = b"<message from='u@cupdomain.test/r' to='x@b1.test'><body>1</body></message>";
const TO_B2: &[u8] = b"<message from='u@cupdomain.test/r' to='y@b2.test'><body>2</body></message>";

/// The remote domains of the outbound `Authenticated` events, in order.
fn authenticated(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Authenticated {
                remote,
                direction: Direction::Outbound,
                ..
            } => Some(remote.clone()),
            _ => None,
        })
        .collect()
}

fn auth_failed(events: &[Event]) -> Vec<(String, String, DialbackResult)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::AuthFailed {
                local,
                remote,
                result,
            } => Some((local.clone(), remote.clone(), *result)),
            _ => None,
        })
        .collect()
}

fn closed(events: &[Event]) -> bool {
    events.iter().any(|e| matches!(e, Event::Closed(_)))
}

fn stanzas(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Stanza { element, .. } => Some(element.as_str().to_owned()),
            _ => None,
        })
        .collect()
}

fn policy(default: PeerPolicy, b2: Option<PeerPolicy>) -> FederationPolicy {
    let mut p = FederationPolicy {
        default,
        ..Default::default()
    };
    if let Some(b2) = b2 {
        p.domains.insert(B2.to_owned(), b2);
    }
    p
}

/// Google-style (plain TCP, dialback, bidi off so the stream stays one-way): `a` with
/// `a_policy`, the peer hosting b1.test and, when `peer_hosts_b2`, b2.test. Driven
/// until `a` authenticated b1.test.
fn pair(a_policy: FederationPolicy, peer_hosts_b2: bool, certs: bool) -> Pair {
    let ca = TestCa::new("fedrouter test CA").unwrap();
    let peer = PeerPolicy {
        bidi: false,
        ..a_policy.default
    };
    let others: &[&str] = if peer_hosts_b2 { &[B2] } else { &[] };
    let mut p = Pair::new(
        Server::with_policy(A, a_policy, &ca, certs),
        Server::hosting(B1, others, policy(peer, None), &ca, certs),
    );
    p.drive();
    assert_eq!(authenticated(&p.a.events), vec![B1.to_owned()]);
    p
}

fn google() -> PeerPolicy {
    PeerPolicy {
        bidi: false,
        ..PeerPolicy::google()
    }
}

#[test]
fn second_domain_authenticated_on_the_same_stream() {
    let mut p = pair(policy(google(), None), true, false);
    p.a.conn.request_dialback_for(A, B2, p.now).unwrap();
    p.drive();

    // One more db:result on the stream, from our domain to the second remote domain.
    let sent = String::from_utf8_lossy(&p.a.sent).into_owned();
    assert_eq!(sent.matches("<db:result").count(), 2, "{sent}");
    assert!(
        sent.contains("<db:result from='cupdomain.test' to='b2.test'>"),
        "{sent}"
    );
    assert_eq!(
        authenticated(&p.a.events),
        vec![B1.to_owned(), B2.to_owned()]
    );
    assert_eq!(
        p.a.conn.served_remotes(),
        vec![B1.to_owned(), B2.to_owned()]
    );
    assert!(p.a.conn.may_send(A, B1) && p.a.conn.may_send(A, B2));

    // Stanzas for both domains flow over the one stream, each accepted by the peer for
    // the pair it authenticated.
    p.a.conn.send_stanza(A, B1, TO_B1, p.now).unwrap();
    p.a.conn.send_stanza(A, B2, TO_B2, p.now).unwrap();
    p.drive();
    let got = stanzas(&p.b.events);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[0].contains("x@b1.test") && got[1].contains("y@b2.test"),
        "{got:?}"
    );
    assert!(!closed(&p.a.events) && !closed(&p.b.events));
}

#[test]
fn second_domain_refused_with_an_error_leaves_the_stream_and_first_domain_up() {
    // The peer does not host b2.test: XEP-0220 §2.5 `item-not-found`.
    let mut p = pair(policy(google(), None), false, false);
    p.a.conn.request_dialback_for(A, B2, p.now).unwrap();
    p.drive();
    assert_eq!(
        auth_failed(&p.a.events),
        vec![(
            A.to_owned(),
            B2.to_owned(),
            DialbackResult::Error(DialbackErrorCondition::ItemNotFound)
        )]
    );
    assert!(!closed(&p.a.events) && !closed(&p.b.events));
    assert!(!p.a.conn.may_send(A, B2));
    assert_eq!(
        p.a.conn.send_stanza(A, B2, TO_B2, p.now),
        Err(S2sError::NotAuthenticated {
            local: A.into(),
            remote: B2.into()
        })
    );
    // The first domain keeps working: a marker arrives after the refusal.
    p.a.conn.send_stanza(A, B1, TO_B1, p.now).unwrap();
    p.drive();
    assert_eq!(stanzas(&p.b.events).len(), 1);
    assert!(stanzas(&p.b.events)[0].contains("x@b1.test"));
}

#[test]
fn second_domain_answered_invalid_leaves_the_stream_and_first_domain_up() {
    // XEP-0220 (since 0.6): an invalid key no longer closes the stream, "since the stream
    // might be used for multiple domain pairs". The peer's answer is played by hand.
    let mut p = pair(policy(google(), None), true, false);
    p.auto_verify = false;
    p.a.conn.request_dialback_for(A, B2, p.now).unwrap();
    p.drive();
    assert!(p.a.conn.pending_dialbacks().any(|l| l == A));
    p.a.conn.handle_input(
        b"<db:result xmlns:db='jabber:server:dialback' from='b2.test' to='cupdomain.test' type='invalid'/>",
        p.now,
    );
    p.drive();
    assert_eq!(
        auth_failed(&p.a.events),
        vec![(A.to_owned(), B2.to_owned(), DialbackResult::Invalid)]
    );
    assert!(!closed(&p.a.events));
    assert!(p.a.conn.may_send(A, B1) && !p.a.conn.may_send(A, B2));
    p.a.conn.send_stanza(A, B1, TO_B1, p.now).unwrap();
    p.drive();
    assert_eq!(stanzas(&p.b.events).len(), 1);
}

#[test]
fn an_invalid_key_for_a_second_domain_gets_forbidden_and_the_stream_stays() {
    // The receiving side of the same exchange: the peer (b) hears from its authoritative
    // server that our key for the second pair is invalid. Other pairs are authenticated
    // on the stream, so it answers `<forbidden/>` rather than `invalid` and keeps the
    // stream (XEP-0220 §2.2.1).
    let mut p = pair(policy(google(), None), true, false);
    p.auto_verify = false;
    p.a.conn.request_dialback_for(A, B2, p.now).unwrap();
    p.drive();
    let asked: Vec<(String, String)> =
        p.b.events
            .iter()
            .filter_map(|e| match e {
                Event::VerifyNeeded { local, remote, .. } => Some((local.clone(), remote.clone())),
                _ => None,
            })
            .collect();
    assert_eq!(asked, vec![(B2.to_owned(), A.to_owned())]);
    p.b.conn
        .handle_dialback_verdict(B2, A, DialbackResult::Invalid, p.now);
    p.drive();
    let sent = String::from_utf8_lossy(&p.b.sent).into_owned();
    assert!(
        sent.contains("<db:result from='b2.test' to='cupdomain.test' type='error'><error type='auth'><forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>"),
        "{sent}"
    );
    assert!(!sent.contains("type='invalid'"), "{sent}");
    assert_eq!(
        auth_failed(&p.a.events),
        vec![(
            A.to_owned(),
            B2.to_owned(),
            DialbackResult::Error(DialbackErrorCondition::Forbidden)
        )]
    );
    assert!(!closed(&p.a.events) && !closed(&p.b.events));
    // The refused pair carries nothing; the first pair still does: a marker arrives.
    p.a.conn.send_stanza(A, B1, TO_B1, p.now).unwrap();
    p.drive();
    assert_eq!(stanzas(&p.b.events).len(), 1);
    assert!(stanzas(&p.b.events)[0].contains("x@b1.test"));
}

#[test]
fn an_invalid_key_for_the_first_domain_still_closes_the_stream() {
    // No other pair on the stream: `invalid`, then the stream closes (XEP-0220 §2.2.1).
    let ca = TestCa::new("fedrouter test CA").unwrap();
    let mut p = Pair::new(
        Server::with_policy(A, policy(google(), None), &ca, false),
        Server::hosting(B1, &[], policy(google(), None), &ca, false),
    );
    p.auto_verify = false;
    p.drive();
    assert!(p
        .b
        .events
        .iter()
        .any(|e| matches!(e, Event::VerifyNeeded { .. })));
    p.b.conn
        .handle_dialback_verdict(B1, A, DialbackResult::Invalid, p.now);
    p.drive();
    let sent = String::from_utf8_lossy(&p.b.sent).into_owned();
    assert!(
        sent.contains("<db:result from='b1.test' to='cupdomain.test' type='invalid'/>"),
        "{sent}"
    );
    assert!(sent.ends_with("</stream:stream>"), "{sent}");
    assert_eq!(
        auth_failed(&p.a.events),
        vec![(A.to_owned(), B1.to_owned(), DialbackResult::Invalid)]
    );
}

#[test]
fn stanzas_for_a_second_domain_not_yet_authenticated_are_refused() {
    let mut p = pair(policy(google(), None), true, false);
    // Never asked for.
    assert!(matches!(
        p.a.conn.send_stanza(A, B2, TO_B2, p.now),
        Err(S2sError::NotAuthenticated { .. })
    ));
    // Asked for, answer not in yet.
    p.auto_verify = false;
    p.a.conn.request_dialback_for(A, B2, p.now).unwrap();
    p.drive();
    assert!(!p.a.conn.may_send(A, B2));
    assert!(matches!(
        p.a.conn.send_stanza(A, B2, TO_B2, p.now),
        Err(S2sError::NotAuthenticated { .. })
    ));
    assert_eq!(
        p.a.conn.served_remotes(),
        vec![B1.to_owned(), B2.to_owned()]
    );
    assert!(stanzas(&p.b.events).is_empty());
}

#[test]
fn policy_decides_who_may_join() {
    let refused = |a_policy: FederationPolicy, certs: bool| {
        let mut p = pair(a_policy, true, certs);
        let before = p.a.sent.len();
        let r = p.a.conn.request_dialback_for(A, B2, p.now);
        p.drive();
        let after = String::from_utf8_lossy(&p.a.sent[before..]).into_owned();
        assert!(!after.contains("<db:result"), "{after}");
        match r {
            Err(S2sError::MultiplexRefused { remote, why }) => {
                assert_eq!(remote, B2);
                why
            }
            other => panic!("joined: {other:?}"),
        }
    };
    // The switch, on either domain.
    let off = PeerPolicy {
        multiplex: false,
        ..google()
    };
    assert!(refused(policy(google(), Some(off)), false).contains("policy"));
    assert!(refused(policy(off, Some(google())), false).contains("policy"));
    // Different TLS requirements.
    let webex = PeerPolicy {
        bidi: false,
        ..PeerPolicy::webex()
    };
    assert!(refused(policy(google(), Some(webex)), false).contains("TLS"));
    // Dialback not allowed for the second domain.
    let external = PeerPolicy {
        auth: fedrouter::stream::AuthPolicy::SaslExternal,
        ..google()
    };
    assert!(refused(policy(google(), Some(external)), false).contains("dialback"));
}

#[test]
fn tls_stream_carries_a_second_domain_only_if_the_certificate_covers_it() {
    // TLS with verified certificates and dialback; the peer's certificate names b1.test
    // only.
    let tls_dialback = PeerPolicy {
        tls: TlsPolicy::Required,
        auth: fedrouter::stream::AuthPolicy::Dialback,
        verify_certificates: true,
        allow: true,
        bidi: false,
        multiplex: true,
    };
    let mut p = pair(policy(tls_dialback, None), true, true);
    assert!(p.a.conn.is_tls());
    let r = p.a.conn.request_dialback_for(A, B2, p.now);
    assert!(
        matches!(&r, Err(S2sError::MultiplexRefused { why, .. }) if why.contains("certificate")),
        "{r:?}"
    );
    // Without certificate checks for the domains (WebEx-style), the TLS stream may carry
    // it.
    let webex = PeerPolicy {
        tls: TlsPolicy::Required,
        verify_certificates: false,
        ..tls_dialback
    };
    let mut p = pair(policy(webex, None), true, true);
    assert!(p.a.conn.is_tls());
    p.a.conn.request_dialback_for(A, B2, p.now).unwrap();
    p.drive();
    assert_eq!(
        authenticated(&p.a.events),
        vec![B1.to_owned(), B2.to_owned()]
    );
}

#[test]
fn a_plain_only_domain_joins_a_stream_still_negotiating() {
    // A burst: b2.test asks while the stream to the target is still negotiating. A
    // plain-only domain joins at once, its db:result waiting for the stream; a domain
    // whose policy allows TLS waits until TLS is settled.
    let ca = TestCa::new("fedrouter test CA").unwrap();
    let webex = PeerPolicy {
        bidi: false,
        ..PeerPolicy::webex()
    };
    let mut p = Pair::new(
        Server::with_policy(A, policy(google(), None), &ca, false),
        Server::hosting(B1, &[B2], policy(google(), None), &ca, false),
    );
    p.a.conn.request_dialback_for(A, B2, p.now).unwrap();
    let r = p.a.conn.request_dialback_for(A, "b3.test", p.now);
    assert!(r.is_ok(), "{r:?}");
    let mut p2 = Pair::new(
        Server::with_policy(A, policy(webex, None), &ca, false),
        Server::hosting(B1, &[B2], policy(webex, None), &ca, false),
    );
    assert!(matches!(
        p2.a.conn.request_dialback_for(A, B2, p2.now),
        Err(S2sError::MultiplexRefused { why, .. }) if why.contains("TLS")
    ));
    p2.drive();
    p.drive();
    assert_eq!(
        authenticated(&p.a.events),
        vec![B1.to_owned(), B2.to_owned()]
    );
    // b3.test is not hosted there: refused, the stream stays.
    assert_eq!(auth_failed(&p.a.events).len(), 1);
    assert!(!closed(&p.a.events));
}
