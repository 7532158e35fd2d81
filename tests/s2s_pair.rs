//! Our outbound S2S stream against our inbound, in memory, for every policy combination,
//! with real rustls handshakes and rcgen certificates.

mod common;

use std::time::Duration;

use common::pair::{certified, Pair, Server};
use fedrouter::condition::StreamCondition;
use fedrouter::stream::{
    AuthMethod, AuthPolicy, CloseReason, Direction, Event, PeerPolicy, TlsPolicy,
};
use fedrouter_testkit::TestCa;

fn authenticated(events: &[Event], dir: Direction) -> Option<AuthMethod> {
    events.iter().find_map(|e| match e {
        Event::Authenticated {
            method, direction, ..
        } if *direction == dir => Some(*method),
        _ => None,
    })
}

fn closed_with(events: &[Event]) -> Option<&CloseReason> {
    events.iter().find_map(|e| match e {
        Event::Closed(r) => Some(r),
        _ => None,
    })
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

/// Sends a presence from a to b and checks it arrives intact.
fn stanza_flows(p: &mut Pair) {
    let s = b"<presence from='cupuser1@cupdomain.test/r' to='jdoe1@gmail.test' type='subscribe'/>";
    p.a.conn
        .send_stanza("cupdomain.test", "gmail.test", s, p.now)
        .unwrap();
    p.drive();
    assert_eq!(
        stanzas(&p.b.events),
        vec![String::from_utf8(s.to_vec()).unwrap()]
    );
}

#[test]
fn every_policy_combination() {
    let ca = TestCa::new("fedrouter test CA").unwrap();
    let tls = [
        TlsPolicy::Required,
        TlsPolicy::Optional,
        TlsPolicy::Disabled,
    ];
    let auth = [
        AuthPolicy::Any,
        AuthPolicy::Dialback,
        AuthPolicy::SaslExternal,
    ];
    let mut checked = 0;
    for t in tls {
        for a in auth {
            for (verify, bidi) in [(true, true), (false, true), (true, false), (false, false)] {
                let policy = PeerPolicy {
                    tls: t,
                    auth: a,
                    verify_certificates: verify,
                    allow: true,
                    bidi,
                    multiplex: true,
                };
                let mut p = Pair::new(
                    Server::new("cupdomain.test", policy, &ca, true),
                    Server::new("gmail.test", policy, &ca, true),
                );
                p.drive();
                let tls_used = t != TlsPolicy::Disabled;
                let expected = match (tls_used, a, verify) {
                    (true, AuthPolicy::Any | AuthPolicy::SaslExternal, true) => {
                        Some(AuthMethod::SaslExternal)
                    }
                    (_, AuthPolicy::Any | AuthPolicy::Dialback, _) => Some(AuthMethod::Dialback),
                    _ => None,
                };
                let what = format!("{policy:?}");
                assert_eq!(p.a.conn.is_tls(), tls_used, "{what}");
                assert_eq!(
                    authenticated(&p.a.events, Direction::Outbound),
                    expected,
                    "{what}"
                );
                assert_eq!(
                    authenticated(&p.b.events, Direction::Inbound),
                    expected,
                    "{what}"
                );
                if expected.is_some() {
                    assert_eq!(p.a.conn.is_bidi(), bidi, "{what}");
                    assert_eq!(p.b.conn.is_bidi(), bidi, "{what}");
                }
                match expected {
                    Some(_) => stanza_flows(&mut p),
                    None => assert!(
                        matches!(
                            closed_with(&p.a.events),
                            Some(CloseReason::SentError(StreamCondition::PolicyViolation, _))
                        ),
                        "{what}: {:?}",
                        p.a.events
                    ),
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 36);
}

#[test]
fn the_three_federation_profiles() {
    let ca = TestCa::new("ca").unwrap();
    for (policy, tls, method) in [
        (PeerPolicy::google(), false, AuthMethod::Dialback),
        (PeerPolicy::webex(), true, AuthMethod::Dialback),
        (PeerPolicy::strict(), true, AuthMethod::SaslExternal),
    ] {
        let mut p = Pair::new(
            Server::new("cupdomain.test", policy, &ca, true),
            Server::new("gmail.test", policy, &ca, true),
        );
        p.drive();
        assert_eq!(p.a.conn.is_tls(), tls);
        assert_eq!(
            authenticated(&p.a.events, Direction::Outbound),
            Some(method)
        );
        stanza_flows(&mut p);
    }
}

#[test]
fn webex_style_peer_without_client_certificate() {
    // The WebEx-style peer presents no client certificate; TLS still encrypts and
    // dialback authenticates.
    let ca = TestCa::new("ca").unwrap();
    let mut p = Pair::new(
        Server::new("cupdomain.test", PeerPolicy::webex(), &ca, false),
        Server::new("gmail.test", PeerPolicy::webex(), &ca, true),
    );
    p.drive();
    assert!(p.a.conn.is_tls());
    assert_eq!(
        authenticated(&p.b.events, Direction::Inbound),
        Some(AuthMethod::Dialback)
    );
    stanza_flows(&mut p);
}

#[test]
fn external_with_certificate_for_another_domain_falls_back_or_fails() {
    let ca = TestCa::new("ca").unwrap();
    // cupdomain.test presents a certificate for another name.
    let mut a_srv = Server::new("cupdomain.test", PeerPolicy::default(), &ca, true);
    a_srv.cert = Some(certified(&ca, "elsewhere.test"));
    let mut p = Pair::new(
        a_srv,
        Server::new("gmail.test", PeerPolicy::default(), &ca, true),
    );
    p.drive();
    let sent_b = String::from_utf8_lossy(&p.b.sent).to_string();
    assert!(
        !sent_b.contains("EXTERNAL"),
        "EXTERNAL offered for a wrong-name certificate: {sent_b}"
    );
    assert_eq!(
        authenticated(&p.b.events, Direction::Inbound),
        Some(AuthMethod::Dialback)
    );

    let mut a_srv = Server::new("cupdomain.test", PeerPolicy::strict(), &ca, true);
    a_srv.cert = Some(certified(&ca, "elsewhere.test"));
    let mut p = Pair::new(
        a_srv,
        Server::new("gmail.test", PeerPolicy::strict(), &ca, true),
    );
    p.drive();
    assert_eq!(authenticated(&p.b.events, Direction::Inbound), None);
    assert!(matches!(
        closed_with(&p.a.events),
        Some(CloseReason::SentError(StreamCondition::PolicyViolation, _))
    ));
}

#[test]
fn dialback_with_wrong_key_is_invalid() {
    let ca = TestCa::new("ca").unwrap();
    let mut p = Pair::new(
        Server::new("cupdomain.test", PeerPolicy::google(), &ca, false),
        Server::new("gmail.test", PeerPolicy::google(), &ca, false),
    );
    // The "authoritative server" for cupdomain.test has another secret: a spoofer.
    p.a_srv = Server::new("cupdomain.test", PeerPolicy::google(), &ca, false);
    p.a_srv.cfg = std::sync::Arc::new(fedrouter::stream::S2sConfig {
        dialback_secret: fedrouter::dialback::DialbackSecret::new("another secret"),
        local_domains: vec!["cupdomain.test".into()],
        certificate_domains: vec![],
        policy: Default::default(),
        stream_id_key: [1; 32],
        cert_verifier: None,
        limits: Default::default(),
        timeouts: Default::default(),
        stream_management: None,
    });
    p.drive();
    assert_eq!(authenticated(&p.b.events, Direction::Inbound), None);
    let failed = p.a.events.iter().any(|e| {
        matches!(
            e,
            Event::AuthFailed {
                result: fedrouter::dialback::DialbackResult::Invalid,
                ..
            }
        )
    });
    assert!(failed, "{:?}", p.a.events);
    assert!(String::from_utf8_lossy(&p.b.sent).contains("type='invalid'"));
    assert!(p
        .a
        .conn
        .send_stanza("cupdomain.test", "gmail.test", b"<message/>", p.now)
        .is_err());
}

#[test]
fn piggybacked_second_domain() {
    let ca = TestCa::new("ca").unwrap();
    let mut a_srv = Server::new("cupdomain.test", PeerPolicy::google(), &ca, false);
    let mut cfg = std::sync::Arc::try_unwrap(a_srv.cfg).unwrap();
    cfg.local_domains.push("second.test".into());
    a_srv.cfg = std::sync::Arc::new(cfg);
    let mut p = Pair::new(
        a_srv,
        Server::new("gmail.test", PeerPolicy::google(), &ca, false),
    );
    p.drive();
    // The authoritative verdict comes from a_srv's secret, which also keys second.test.
    p.a.conn.request_dialback("second.test", p.now).unwrap();
    p.drive();
    assert!(p.b.conn.is_authenticated("gmail.test", "second.test"));
    assert!(p.a.conn.is_authenticated("second.test", "gmail.test"));
    // A stanza from the second domain is accepted; one from an unauthenticated third is not.
    p.a.conn
        .send_stanza(
            "second.test",
            "gmail.test",
            b"<message from='x@second.test' to='y@gmail.test'/>",
            p.now,
        )
        .unwrap();
    p.drive();
    assert_eq!(stanzas(&p.b.events).len(), 1);
}

#[test]
fn keepalive_and_idle_close() {
    let ca = TestCa::new("ca").unwrap();
    let mut p = Pair::new(
        Server::new("cupdomain.test", PeerPolicy::google(), &ca, false),
        Server::new("gmail.test", PeerPolicy::google(), &ca, false),
    );
    p.drive();
    let sent = p.a.sent.len();
    p.advance(Duration::from_secs(61));
    assert_eq!(&p.a.sent[sent..], b" ", "whitespace keepalive after 60 s");
    p.advance(Duration::from_secs(600));
    // Both ends' idle timers fire together: each closes with no error.
    assert_eq!(closed_with(&p.a.events), Some(&CloseReason::Local));
    assert!(matches!(
        closed_with(&p.b.events),
        Some(CloseReason::Local | CloseReason::PeerClosed)
    ));
    assert!(p.a.conn.is_closed() && p.b.conn.is_closed());
}

#[test]
fn closing_handshake_with_stream_error_both_ways() {
    let ca = TestCa::new("ca").unwrap();
    let mut p = Pair::new(
        Server::new("cupdomain.test", PeerPolicy::google(), &ca, false),
        Server::new("gmail.test", PeerPolicy::google(), &ca, false),
    );
    p.drive();
    let now = p.now;
    p.b.conn
        .close(Some((StreamCondition::SystemShutdown, "bye")), now);
    p.drive();
    assert!(
        matches!(closed_with(&p.a.events), Some(CloseReason::ReceivedError(StreamCondition::SystemShutdown, Some(t))) if t == "bye")
    );
    assert!(matches!(
        closed_with(&p.b.events),
        Some(CloseReason::SentError(StreamCondition::SystemShutdown, _))
    ));
}

#[test]
fn outbound_to_denied_domain_sends_nothing() {
    let ca = TestCa::new("ca").unwrap();
    let mut policy = fedrouter::stream::FederationPolicy::default();
    policy.domains.insert(
        "gmail.test".into(),
        PeerPolicy {
            allow: false,
            ..PeerPolicy::default()
        },
    );
    let a_srv = Server::with_policy("cupdomain.test", policy, &ca, false);
    let mut conn = fedrouter::stream::S2sConnection::outbound(
        a_srv.cfg.clone(),
        "cupdomain.test",
        "gmail.test",
        false,
        std::time::Instant::now(),
    );
    let mut out = Vec::new();
    assert_eq!(conn.poll_transmit(&mut out), 0);
    assert!(conn.is_closed());
    assert!(matches!(
        conn.poll_event(),
        Some(Event::Closed(CloseReason::SentError(
            StreamCondition::PolicyViolation,
            _
        )))
    ));
}

/// The `SaslExternalNotOffered` events on `events`: (local, remote, dialback_fallback).
fn external_not_offered(events: &[Event]) -> Vec<(String, String, bool)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::SaslExternalNotOffered {
                local,
                remote,
                dialback_fallback,
            } => Some((local.clone(), remote.clone(), *dialback_fallback)),
            _ => None,
        })
        .collect()
}

fn position(events: &[Event], pred: impl Fn(&Event) -> bool) -> Option<usize> {
    events.iter().position(pred)
}

#[test]
fn sasl_external_not_offered_after_tls_is_reported() {
    let ca = TestCa::new("ca").unwrap();
    let pair = ("cupdomain.test".to_owned(), "gmail.test".to_owned(), true);

    // The peer refuses our certificate (issued for another name): after TLS it offers
    // no EXTERNAL. Policy `any`: reported once, then dialback authenticates the stream.
    let mut a_srv = Server::new("cupdomain.test", PeerPolicy::default(), &ca, true);
    a_srv.cert = Some(certified(&ca, "elsewhere.test"));
    let mut p = Pair::new(
        a_srv,
        Server::new("gmail.test", PeerPolicy::default(), &ca, true),
    );
    p.drive();
    assert!(p.a.conn.is_tls());
    assert_eq!(external_not_offered(&p.a.events), vec![pair.clone()]);
    let reported = position(&p.a.events, |e| {
        matches!(e, Event::SaslExternalNotOffered { .. })
    });
    let dialback_ok = position(&p.a.events, |e| {
        matches!(
            e,
            Event::Authenticated {
                method: AuthMethod::Dialback,
                direction: Direction::Outbound,
                ..
            }
        )
    });
    assert!(
        reported < dialback_ok && dialback_ok.is_some(),
        "reported before the dialback fallback authenticated: {:?}",
        p.a.events
    );
    assert!(external_not_offered(&p.b.events).is_empty());
    stanza_flows(&mut p);

    // Policy `sasl-external` (strict): reported with no fallback, then the stream is
    // closed with policy-violation.
    let mut a_srv = Server::new("cupdomain.test", PeerPolicy::strict(), &ca, true);
    a_srv.cert = Some(certified(&ca, "elsewhere.test"));
    let mut p = Pair::new(
        a_srv,
        Server::new("gmail.test", PeerPolicy::strict(), &ca, true),
    );
    p.drive();
    assert_eq!(
        external_not_offered(&p.a.events),
        vec![(pair.0.clone(), pair.1.clone(), false)]
    );
    let closed = position(&p.a.events, |e| {
        matches!(
            e,
            Event::Closed(CloseReason::SentError(StreamCondition::PolicyViolation, _))
        )
    });
    let reported = position(&p.a.events, |e| {
        matches!(e, Event::SaslExternalNotOffered { .. })
    });
    assert!(
        reported < closed && closed.is_some(),
        "reported before the close: {:?}",
        p.a.events
    );

    // Not reported where EXTERNAL was not wanted or not possible: the three profiles with
    // valid certificates (plain TCP; TLS + dialback policy; EXTERNAL accepted), and a
    // server without a certificate of its own.
    for (a, b, with_cert) in [
        (PeerPolicy::google(), PeerPolicy::google(), true),
        (PeerPolicy::webex(), PeerPolicy::webex(), true),
        (PeerPolicy::strict(), PeerPolicy::strict(), true),
        (PeerPolicy::default(), PeerPolicy::default(), false),
    ] {
        let mut p = Pair::new(
            Server::new("cupdomain.test", a, &ca, with_cert),
            Server::new("gmail.test", b, &ca, true),
        );
        p.drive();
        assert!(
            authenticated(&p.a.events, Direction::Outbound).is_some(),
            "{a:?} with_cert={with_cert}: {:?}",
            p.a.events
        );
        assert_eq!(
            external_not_offered(&p.a.events),
            vec![],
            "{a:?} with_cert={with_cert}"
        );
    }
}
