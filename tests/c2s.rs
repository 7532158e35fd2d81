//! The C2S state machine against a scripted client, in memory, with real rustls and a
//! simulated clock: STARTTLS, SASL SCRAM-SHA-256 / SCRAM-SHA-1 / PLAIN, failures and their
//! delays, resource binding, the legacy session, stanza checks, timeouts.

#[path = "common/c2s_client.rs"]
mod c2s_client;

use std::time::Duration;

use c2s_client::{sasl_data, Harness, ScramClient, DOMAIN, NS_BIND, NS_SASL};
use fedrouter::condition::StreamCondition;
use fedrouter::stanza::StanzaKind;
use fedrouter::store::scram::ScramHash;
use fedrouter::stream::c2s::{BindError, C2sError, Event, Mechanism};
use fedrouter::stream::CloseReason;

const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
const STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";

fn stream_error(condition: &str) -> String {
    format!("<stream:error><{condition} xmlns='{STREAMS}'/>")
}

fn failure(condition: &str) -> String {
    format!("<failure xmlns='{NS_SASL}'><{condition}/></failure>")
}

fn sent_error(h: &Harness) -> StreamCondition {
    match h.closed() {
        Some(CloseReason::SentError(c, _)) => *c,
        other => panic!("expected a stream error, got {other:?}"),
    }
}

/// Everything from the first header to a bound resource, a stanza each way, and the close.
fn happy_path(hash: ScramHash, chunk: usize) -> Harness {
    let mut h = Harness::new(|_| {});
    h.chunk = chunk;
    h.add_user("juliet", "r0m30myr0m30");

    // RFC 6120 §5.3.1: TLS required, so only STARTTLS is offered, with <required/>.
    let features = h.open();
    assert_eq!(
        features,
        "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/>\
         </starttls></stream:features>"
    );
    assert!(matches!(&h.events[0], Event::Opened { domain, .. } if domain == DOMAIN));
    h.starttls();

    // After TLS: SCRAM both ways and PLAIN, no -PLUS, no STARTTLS.
    let features = h.open();
    assert_eq!(
        features,
        "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
         <mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism>\
         <mechanism>PLAIN</mechanism></mechanisms></stream:features>"
    );

    // The username is a localpart: case-mapped (RFC 7622 §3.3).
    h.scram("Juliet", "r0m30myr0m30", hash).unwrap();
    let mechanism = match hash {
        ScramHash::Sha256 => Mechanism::ScramSha256,
        ScramHash::Sha1 => Mechanism::ScramSha1,
    };
    assert!(h.events.contains(&Event::CredentialsNeeded {
        jid: "juliet@example.com".into(),
        mechanism
    }));
    assert!(h.events.contains(&Event::Authenticated {
        jid: "juliet@example.com".into(),
        mechanism
    }));
    assert_eq!(
        h.conn.authenticated_jid().map(|j| j.as_str()),
        Some("juliet@example.com")
    );

    // RFC 6120 §7.4: bind, and the legacy session as optional.
    let features = h.open();
    assert_eq!(
        features,
        "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>\
         <session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session>\
         <ver xmlns='urn:xmpp:features:rosterver'/>\
         <sub xmlns='urn:xmpp:features:pre-approval'/>\
         <csi xmlns='urn:xmpp:csi:0'/>\
         </stream:features>"
    );
    h.request_bind("bind_1", Some("balcony"));
    assert!(h.take_xml().is_empty(), "bind waits for the runtime");
    assert_eq!(
        h.events.last(),
        Some(&Event::BindRequested {
            jid: "juliet@example.com".into(),
            requested: Some("balcony".into())
        })
    );
    h.conn
        .handle_bind(Ok("juliet@example.com/balcony"), h.now)
        .unwrap();
    h.drive();
    assert_eq!(
        h.take_one(),
        format!(
            "<iq type='result' id='bind_1'><bind xmlns='{NS_BIND}'>\
             <jid>juliet@example.com/balcony</jid></bind></iq>"
        )
    );
    assert_eq!(
        h.events.last(),
        Some(&Event::Bound {
            jid: "juliet@example.com/balcony".into()
        })
    );

    // The legacy session iq (RFC 3921 §3) gets an empty result.
    h.send(
        "<iq type='set' id='sess_1' to='example.com'>\
         <session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>",
    );
    assert_eq!(
        h.take_one(),
        "<iq type='result' id='sess_1' from='example.com'/>"
    );

    // A stanza from the client: an event, stamped for routing.
    h.send("<message to='romeo@montague.example' id='m1'><body>hi</body></message>");
    let Some(Event::Stanza { kind, element }) = h.events.last().cloned() else {
        panic!("no stanza event: {:?}", h.events.last());
    };
    assert_eq!(kind, StanzaKind::Message);
    let mut routed = Vec::new();
    h.conn.stamp(&element, &mut routed).unwrap();
    assert_eq!(
        String::from_utf8(routed).unwrap(),
        "<message from='juliet@example.com/balcony' to='romeo@montague.example' id='m1'>\
         <body>hi</body></message>"
    );

    // A stanza to the client, written for a jabber:server stream with an explicit xmlns.
    h.conn
        .send_stanza(
            b"<message xmlns='jabber:server' from='romeo@montague.example/orchard' \
              to='juliet@example.com/balcony'><body>hello</body></message>",
            h.now,
        )
        .unwrap();
    h.drive();
    assert_eq!(
        h.take_one(),
        "<message from='romeo@montague.example/orchard' to='juliet@example.com/balcony'>\
         <body>hello</body></message>"
    );

    // The client closes (RFC 6120 §4.4).
    h.send("</stream:stream>");
    assert_eq!(h.take_xml(), vec!["</stream:stream>"]);
    assert_eq!(h.closed(), Some(&CloseReason::PeerClosed));
    assert!(h.conn.is_closed());
    h
}

#[test]
fn happy_path_scram_sha256() {
    happy_path(ScramHash::Sha256, usize::MAX);
}

#[test]
fn happy_path_scram_sha1() {
    happy_path(ScramHash::Sha1, usize::MAX);
}

#[test]
fn byte_at_a_time_input_gives_the_same_result() {
    let whole = happy_path(ScramHash::Sha256, usize::MAX);
    let bytes = happy_path(ScramHash::Sha256, 1);
    assert_eq!(whole.server_sent, bytes.server_sent);
    assert_eq!(whole.transcript, bytes.transcript);
    assert_eq!(whole.events, bytes.events);
    let sevens = happy_path(ScramHash::Sha1, 7);
    let sha1 = happy_path(ScramHash::Sha1, usize::MAX);
    assert_eq!(sevens.server_sent, sha1.server_sent);
    assert_eq!(sevens.events, sha1.events);
}

#[test]
fn test_client_scram_matches_rfc_vectors() {
    // RFC 7677 §3.
    let mut c = ScramClient::new(ScramHash::Sha256, "user", "pencil", "rOprNGfwEbeRWgbNEkqO");
    assert_eq!(c.first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
    let fin = c.final_message(
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
    );
    assert_eq!(
        fin,
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
         p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    );
    assert!(c.verify("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="));
    // RFC 5802 §5.
    let mut c = ScramClient::new(
        ScramHash::Sha1,
        "user",
        "pencil",
        "fyko+d2lbbFgONRv9qkxdawL",
    );
    let fin =
        c.final_message("r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096");
    assert_eq!(
        fin,
        "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
    );
    assert!(c.verify("v=rmF9pqV8S7suAoZWja4dJRkFsKQ="));
}

#[test]
fn plain_over_tls() {
    let mut h = Harness::new(|_| {});
    h.add_user("juliet", "r0m30myr0m30");
    h.open_tls();
    h.plain("juliet", "r0m30myr0m30").unwrap();
    assert!(h.events.contains(&Event::CredentialsNeeded {
        jid: "juliet@example.com".into(),
        mechanism: Mechanism::Plain
    }));
    assert!(h.events.contains(&Event::Authenticated {
        jid: "juliet@example.com".into(),
        mechanism: Mechanism::Plain
    }));
    assert!(h
        .open()
        .contains("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"));
    assert_eq!(h.conn.mechanism(), Some(Mechanism::Plain));
}

#[test]
fn plain_without_tls_is_neither_offered_nor_accepted() {
    let mut h = Harness::new(|c| c.tls_required = false);
    h.add_user("juliet", "r0m30myr0m30");
    let features = h.open();
    // STARTTLS offered (not required), SCRAM without TLS, no PLAIN.
    assert_eq!(
        features,
        "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'></starttls>\
         <mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
         <mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism>\
         </mechanisms></stream:features>"
    );
    // RFC 6120 §6.5.4: PLAIN needs a protected stream.
    assert_eq!(
        h.plain("juliet", "r0m30myr0m30"),
        Err(failure("encryption-required"))
    );
    assert!(!h
        .events
        .iter()
        .any(|e| matches!(e, Event::CredentialsNeeded { .. })));
    assert!(matches!(
        h.events.last(),
        Some(Event::AuthFailed { failures: 1, .. })
    ));
    // SCRAM is fine without TLS when TLS is not required (after the failure delay).
    h.advance(Duration::from_secs(1));
    h.scram("juliet", "r0m30myr0m30", ScramHash::Sha256)
        .unwrap();
    assert!(!h.conn.is_tls());
}

#[test]
fn no_sasl_before_tls_when_tls_is_required() {
    let mut h = Harness::new(|_| {});
    h.add_user("juliet", "r0m30myr0m30");
    h.open();
    let client = ScramClient::new(ScramHash::Sha256, "juliet", "x", "abcdef");
    h.send_auth("SCRAM-SHA-256", client.first().as_bytes());
    assert_eq!(h.take_one(), failure("encryption-required"));
}

#[test]
fn plus_variants_and_unknown_mechanisms_are_invalid() {
    let mut h = Harness::new(|_| {});
    h.add_user("juliet", "r0m30myr0m30");
    h.open_tls();
    h.send_auth("SCRAM-SHA-1-PLUS", b"p=tls-unique,,n=juliet,r=abc");
    assert_eq!(h.take_one(), failure("invalid-mechanism"));
}

#[test]
fn wrong_password_is_not_authorized() {
    let mut h = Harness::new(|_| {});
    h.add_user("juliet", "r0m30myr0m30");
    h.open_tls();
    assert_eq!(
        h.scram("juliet", "wrong", ScramHash::Sha256),
        Err(failure("not-authorized"))
    );
    assert_eq!(
        h.events.last(),
        Some(&Event::AuthFailed {
            username: Some("juliet".into()),
            failures: 1,
            retry_after: Some(h.now + Duration::from_secs(1)),
        })
    );
    assert_eq!(h.conn.auth_failures(), 1);
    assert!(h.conn.authenticated_jid().is_none());
    // After the delay, the right password works on the same stream.
    h.advance(Duration::from_secs(1));
    h.scram("juliet", "r0m30myr0m30", ScramHash::Sha1).unwrap();
}

#[test]
fn repeated_failures_are_delayed_then_closed_with_policy_violation() {
    let mut h = Harness::new(|c| c.auth_failure_delay = Duration::from_secs(1));
    h.add_user("juliet", "r0m30myr0m30");
    h.open_tls();
    let t0 = h.now;
    assert_eq!(h.plain("juliet", "nope"), Err(failure("not-authorized")));
    assert_eq!(h.conn.poll_timeout(), Some(t0 + Duration::from_secs(1)));

    // The second attempt is held until the deadline (1 s), then answered.
    h.send_auth("PLAIN", b"\0juliet\0nope2");
    assert!(h.take_xml().is_empty());
    h.advance(Duration::from_millis(999));
    assert!(h.take_xml().is_empty(), "answered before the deadline");
    h.advance(Duration::from_millis(1));
    assert_eq!(h.take_one(), failure("not-authorized"));
    assert_eq!(
        h.events.last(),
        Some(&Event::AuthFailed {
            username: Some("juliet".into()),
            failures: 2,
            retry_after: Some(t0 + Duration::from_secs(3)),
        })
    );

    // The third waits twice as long (2 s), fails, and closes the stream (RFC 6120 §6.4.5).
    h.send_auth("PLAIN", b"\0juliet\0nope3");
    h.advance(Duration::from_millis(1999));
    assert!(h.take_xml().is_empty());
    h.advance(Duration::from_millis(1));
    let got = h.take_xml();
    assert_eq!(got[0], failure("not-authorized"));
    assert!(
        got[1].starts_with(&stream_error("policy-violation")),
        "{got:?}"
    );
    assert_eq!(got[2], "</stream:stream>");
    assert_eq!(sent_error(&h), StreamCondition::PolicyViolation);
    assert!(h.events.iter().any(|e| matches!(
        e,
        Event::AuthFailed {
            failures: 3,
            retry_after: None,
            ..
        }
    )));
    assert!(h.conn.is_closed());
}

#[test]
fn unknown_user_fails_like_a_wrong_password() {
    let mut h = Harness::new(|c| c.auth_failure_delay = Duration::ZERO);
    h.add_user("juliet", "r0m30myr0m30");
    h.open_tls();
    let wrong = h.scram("juliet", "wrong", ScramHash::Sha256);
    let first = h.scram_with_nonce("nobody", "x", ScramHash::Sha256, "n1");
    assert_eq!(first, Err(failure("not-authorized")));
    assert_eq!(wrong, Err(failure("not-authorized")));
    // The runtime answered None: the exchange went on to the proof anyway.
    assert!(h.events.contains(&Event::CredentialsNeeded {
        jid: "nobody@example.com".into(),
        mechanism: Mechanism::ScramSha256
    }));
    assert!(h.events.contains(&Event::AuthFailed {
        username: Some("nobody".into()),
        failures: 2,
        retry_after: Some(h.now),
    }));
}

#[test]
fn unknown_user_gets_a_stable_salt() {
    let mut h = Harness::new(|c| {
        c.auth_failure_delay = Duration::ZERO;
        c.max_auth_failures = 5;
    });
    h.open_tls();
    // Capture server-first of two attempts for the same unknown user (RFC 5802 §9).
    let server_first = |h: &mut Harness, nonce: &str| {
        let client = ScramClient::new(ScramHash::Sha1, "nobody", "x", nonce);
        h.send_auth("SCRAM-SHA-1", client.first().as_bytes());
        let challenge = h.take_one();
        let sf = String::from_utf8(sasl_data(&challenge, "challenge").unwrap()).unwrap();
        h.send(&format!("<abort xmlns='{NS_SASL}'/>"));
        assert_eq!(h.take_one(), failure("aborted"));
        sf
    };
    let a = server_first(&mut h, "aaaa");
    let b = server_first(&mut h, "bbbb");
    let tail = |s: &str| s.split_once(",s=").unwrap().1.to_owned();
    assert_eq!(tail(&a), tail(&b));
    assert!(a.ends_with(",i=4096"), "{a}");
    // Distinct server nonces per exchange.
    let nonce = |s: &str| s.split(',').next().unwrap()[2 + 4..].to_owned();
    assert_ne!(nonce(&a), nonce(&b));
    // <aborted/> is not a counted failure (RFC 6120 §6.4.4).
    assert_eq!(h.conn.auth_failures(), 0);
}

#[test]
fn invalid_authzid_is_refused() {
    let mut h = Harness::new(|_| {});
    h.add_user("juliet", "r0m30myr0m30");
    h.open_tls();
    h.send_auth("PLAIN", b"romeo@example.com\0juliet\0r0m30myr0m30");
    assert_eq!(h.take_one(), failure("invalid-authzid"));
    // Her own JID as authzid is fine.
    h.advance(Duration::from_secs(1));
    h.send_auth("PLAIN", b"juliet@example.com\0juliet\0r0m30myr0m30");
    assert_eq!(h.take_one(), format!("<success xmlns='{NS_SASL}'/>"));
}

#[test]
fn bad_base64_is_incorrect_encoding() {
    let mut h = Harness::new(|_| {});
    h.open_tls();
    h.send(&format!(
        "<auth xmlns='{NS_SASL}' mechanism='PLAIN'>not base64!</auth>"
    ));
    assert_eq!(h.take_one(), failure("incorrect-encoding"));
}

#[test]
fn auth_without_initial_response_gets_an_empty_challenge() {
    let mut h = Harness::new(|_| {});
    h.add_user("juliet", "r0m30myr0m30");
    h.open_tls();
    h.send(&format!("<auth xmlns='{NS_SASL}' mechanism='PLAIN'/>"));
    assert_eq!(h.take_one(), format!("<challenge xmlns='{NS_SASL}'/>"));
    h.send(&format!(
        "<response xmlns='{NS_SASL}'>{}</response>",
        base64_of(b"\0juliet\0r0m30myr0m30")
    ));
    assert_eq!(h.take_one(), format!("<success xmlns='{NS_SASL}'/>"));
}

fn base64_of(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn bind_with_a_generated_resource() {
    let mut h = Harness::new(|_| {});
    h.add_user("juliet", "r0m30myr0m30");
    h.login("juliet", "r0m30myr0m30");
    h.request_bind("b", None);
    assert_eq!(
        h.events.last(),
        Some(&Event::BindRequested {
            jid: "juliet@example.com".into(),
            requested: None
        })
    );
    h.conn
        .handle_bind(Ok("juliet@example.com/fr-4d2e"), h.now)
        .unwrap();
    h.drive();
    assert!(h
        .take_one()
        .contains("<jid>juliet@example.com/fr-4d2e</jid>"));
    assert_eq!(
        h.conn.bound_jid().map(|j| j.as_str()),
        Some("juliet@example.com/fr-4d2e")
    );
}

#[test]
fn bind_resource_is_enforced_as_opaque_string() {
    let mut h = Harness::new(|_| {});
    h.add_user("juliet", "r0m30myr0m30");
    h.login("juliet", "r0m30myr0m30");
    // U+3000 IDEOGRAPHIC SPACE becomes U+0020 (RFC 8265 §4.2.2).
    h.request_bind("b", Some("my\u{3000}phone"));
    assert_eq!(
        h.events.last(),
        Some(&Event::BindRequested {
            jid: "juliet@example.com".into(),
            requested: Some("my phone".into())
        })
    );
}

#[test]
fn bind_conflict_is_answered_and_the_client_may_retry() {
    let mut h = Harness::new(|_| {});
    h.add_user("juliet", "r0m30myr0m30");
    h.login("juliet", "r0m30myr0m30");
    h.request_bind("b1", Some("balcony"));
    h.conn.handle_bind(Err(BindError::Conflict), h.now).unwrap();
    h.drive();
    assert_eq!(
        h.take_one(),
        format!(
            "<iq id='b1' type='error'><error type='cancel'><conflict xmlns='{STANZAS}'/>\
             </error></iq>"
        )
    );
    assert!(h.conn.bound_jid().is_none());
    h.request_bind("b2", Some("garden"));
    h.conn
        .handle_bind(Ok("juliet@example.com/garden"), h.now)
        .unwrap();
    h.drive();
    assert!(h.take_one().starts_with("<iq type='result' id='b2'>"));
}

#[test]
fn runtime_replaces_an_old_session_with_a_conflict_stream_error() {
    // RFC 6120 §7.7.2.2: the runtime may terminate the old session instead.
    let mut h = Harness::new(|_| {});
    h.add_user("juliet", "r0m30myr0m30");
    h.bound("juliet", "r0m30myr0m30", "balcony");
    h.conn.close(
        Some((StreamCondition::Conflict, "replaced by a new session")),
        h.now,
    );
    h.drive();
    let got = h.take_xml();
    assert!(got[0].starts_with(&stream_error("conflict")), "{got:?}");
    assert_eq!(got[1], "</stream:stream>");
    h.send("</stream:stream>");
    assert!(matches!(
        h.closed(),
        Some(CloseReason::SentError(StreamCondition::Conflict, _))
    ));
}

#[test]
fn a_cluster_node_redirects_after_the_restart_with_see_other_host() {
    // RFC 6120 §4.9.3.19: the runtime of a node that does not own the user sends it to
    // the owner once the client restarted the stream after SASL.
    let mut h = Harness::new(|_| {});
    h.add_user("juliet", "r0m30myr0m30");
    h.login("juliet", "r0m30myr0m30");
    h.conn.redirect("n2.example.net:5222", h.now);
    h.drive();
    let got = h.take_xml();
    assert_eq!(
        got[0],
        format!(
            "<stream:error><see-other-host xmlns='{STREAMS}'>n2.example.net:5222</see-other-host></stream:error>"
        ),
        "{got:?}"
    );
    assert_eq!(got[1], "</stream:stream>");
    // Nothing the client pipelined is answered after our close.
    h.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>");
    assert!(h.take_xml().is_empty());
    h.send("</stream:stream>");
    assert!(matches!(
        h.closed(),
        Some(CloseReason::SentError(StreamCondition::SeeOtherHost, host)) if host == "n2.example.net:5222"
    ));
}

#[test]
fn invalid_resource_is_bad_request() {
    let mut h = Harness::new(|_| {});
    h.add_user("juliet", "r0m30myr0m30");
    h.login("juliet", "r0m30myr0m30");
    // Longer than 1023 octets (RFC 7622 §3.4.1).
    h.request_bind("b1", Some(&"r".repeat(1024)));
    let got = h.take_one();
    assert!(
        got.starts_with(&format!(
            "<iq id='b1' type='error'><error type='modify'><bad-request xmlns='{STANZAS}'/>"
        )),
        "{got}"
    );
    // A control character (PRECIS FreeformClass disallows Cc).
    h.request_bind("b2", Some("a&#x9;b"));
    assert!(h.take_one().contains("<bad-request"));
    assert!(!h
        .events
        .iter()
        .any(|e| matches!(e, Event::BindRequested { .. })));
    // Still possible to bind properly.
    h.request_bind("b3", Some("ok"));
    assert!(matches!(
        h.events.last(),
        Some(Event::BindRequested { requested: Some(r), .. }) if r == "ok"
    ));
}

#[test]
fn handle_bind_refuses_a_jid_of_another_user() {
    let mut h = Harness::new(|_| {});
    h.add_user("juliet", "r0m30myr0m30");
    h.login("juliet", "r0m30myr0m30");
    h.request_bind("b1", Some("x"));
    assert_eq!(
        h.conn.handle_bind(Ok("romeo@example.com/x"), h.now),
        Err(C2sError::InvalidJid("romeo@example.com/x".into()))
    );
    h.drive();
    assert!(h.take_one().contains("<internal-server-error"));
    assert_eq!(
        h.conn.handle_bind(Ok("juliet@example.com/x"), h.now),
        Err(C2sError::InvalidState("no bind request is pending"))
    );
}

#[test]
fn stanza_before_bind_is_not_authorized() {
    let mut h = Harness::new(|_| {});
    h.add_user("juliet", "r0m30myr0m30");
    h.login("juliet", "r0m30myr0m30");
    h.send("<presence/>");
    let got = h.take_xml();
    assert!(
        got[0].starts_with(&stream_error("not-authorized")),
        "{got:?}"
    );
    assert_eq!(sent_error(&h), StreamCondition::NotAuthorized);
    assert!(!h.events.iter().any(|e| matches!(e, Event::Stanza { .. })));
}

#[test]
fn stanza_before_auth_is_not_authorized() {
    let mut h = Harness::new(|_| {});
    h.open_tls();
    h.send("<message to='romeo@montague.example'><body>x</body></message>");
    assert_eq!(sent_error(&h), StreamCondition::NotAuthorized);
}

#[test]
fn legacy_session_is_answered_and_rebind_is_not_allowed() {
    let mut h = Harness::new(|_| {});
    h.add_user("juliet", "r0m30myr0m30");
    h.bound("juliet", "r0m30myr0m30", "balcony");
    h.send("<iq type='set' id='s'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>");
    assert_eq!(h.take_one(), "<iq type='result' id='s'/>");
    h.request_bind("again", Some("other"));
    assert!(h.take_one().contains("<not-allowed"));
    assert!(!h.events.iter().any(|e| matches!(e, Event::Stanza { .. })));
}

/// RFC 6120 §8.2.3: the iqs the machine answers itself (bind, the legacy session) hold
/// exactly one payload; with another element beside it they are a `bad-request`, not
/// bound, not answered as a session.
#[test]
fn own_iqs_with_more_than_one_payload_are_bad_requests() {
    let mut h = Harness::new(|_| {});
    h.add_user("juliet", "r0m30myr0m30");
    h.login("juliet", "r0m30myr0m30");
    h.send(&format!(
        "<iq type='set' id='b2'><bind xmlns='{NS_BIND}'/><x xmlns='urn:example'/></iq>"
    ));
    let got = h.take_one();
    assert!(
        got.contains("type='error'") && got.contains("<bad-request"),
        "{got}"
    );
    assert!(!h
        .events
        .iter()
        .any(|e| matches!(e, Event::BindRequested { .. })));
    h.request_bind("b1", Some("balcony"));
    h.conn
        .handle_bind(Ok("juliet@example.com/balcony"), h.now)
        .unwrap();
    h.drive();
    assert!(h
        .take_one()
        .contains("<jid>juliet@example.com/balcony</jid>"));
    h.send(
        "<iq type='set' id='s2'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/>\
         <session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>",
    );
    let got = h.take_one();
    assert!(
        got.contains("id='s2'") && got.contains("<bad-request"),
        "{got}"
    );
    h.send(&format!(
        "<iq type='set' id='b3'><bind xmlns='{NS_BIND}'/><x xmlns='urn:example'/></iq>"
    ));
    let got = h.take_one();
    assert!(
        got.contains("id='b3'") && got.contains("<bad-request"),
        "{got}"
    );
    assert!(!h.events.iter().any(|e| matches!(e, Event::Stanza { .. })));
}

#[test]
fn from_must_be_the_session_jid() {
    let mut h = Harness::new(|_| {});
    h.add_user("juliet", "r0m30myr0m30");
    h.bound("juliet", "r0m30myr0m30", "balcony");
    // Full and bare JIDs of the session are fine, in any normalisation.
    h.send("<presence from='juliet@example.com/balcony'/>");
    h.send("<presence from='Juliet@EXAMPLE.com'/>");
    let stanzas = h
        .events
        .iter()
        .filter(|e| matches!(e, Event::Stanza { .. }))
        .count();
    assert_eq!(stanzas, 2);
    h.send("<message from='romeo@montague.example/orchard' to='a@b'/>");
    assert_eq!(sent_error(&h), StreamCondition::InvalidFrom);
}

#[test]
fn subscription_presence_is_stamped_with_the_bare_jid() {
    let mut h = Harness::new(|_| {});
    h.add_user("juliet", "r0m30myr0m30");
    h.bound("juliet", "r0m30myr0m30", "balcony");
    h.send("<presence xmlns='jabber:client' to='romeo@montague.example' type='subscribe'/>");
    let Some(Event::Stanza { element, .. }) = h.events.last().cloned() else {
        panic!()
    };
    let mut out = Vec::new();
    h.conn.stamp(&element, &mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "<presence from='juliet@example.com' to='romeo@montague.example' type='subscribe'/>"
    );
}

#[test]
fn header_to_an_unknown_host_is_host_unknown() {
    let mut h = Harness::new(|_| {});
    h.header_to("other.example");
    let got = h.take_xml();
    assert!(
        got[0].starts_with("<stream:stream from=Some(\"example.com\")"),
        "{got:?}"
    );
    assert!(got[1].starts_with(&stream_error("host-unknown")), "{got:?}");
    assert_eq!(got[2], "</stream:stream>");
    assert_eq!(sent_error(&h), StreamCondition::HostUnknown);
}

#[test]
fn header_namespace_and_version_are_checked() {
    let mut h = Harness::new(|_| {});
    h.send(
        "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
         to='example.com' version='1.0'>",
    );
    assert_eq!(sent_error(&h), StreamCondition::InvalidNamespace);

    let mut h = Harness::new(|_| {});
    h.send(
        "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
         to='example.com'>",
    );
    assert_eq!(sent_error(&h), StreamCondition::UnsupportedVersion);

    let mut h = Harness::new(|_| {});
    h.send(
        "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
         to='EXAMPLE.com.' version='1.0'>",
    );
    assert_eq!(
        h.take_xml().len(),
        2,
        "case and trailing dot are normalised"
    );
}

#[test]
fn tls_required_without_a_certificate_is_a_misconfiguration() {
    let mut h = Harness::new(|c| c.certificate_domains.clear());
    h.header();
    assert_eq!(sent_error(&h), StreamCondition::InternalServerError);
}

#[test]
fn negotiation_steps_time_out() {
    let mut h = Harness::new(|_| {});
    h.open();
    h.advance(Duration::from_secs(29));
    assert!(h.closed().is_none());
    h.advance(Duration::from_secs(1));
    assert_eq!(sent_error(&h), StreamCondition::ConnectionTimeout);

    // Waiting for the runtime's credentials counts too.
    let mut h = Harness::new(|_| {});
    h.add_user("juliet", "r0m30myr0m30");
    h.open_tls();
    h.auto_credentials = false;
    h.send_auth("PLAIN", b"\0juliet\0r0m30myr0m30");
    h.advance(Duration::from_secs(30));
    assert_eq!(sent_error(&h), StreamCondition::ConnectionTimeout);
    assert_eq!(
        h.conn.handle_credentials(None, h.now),
        Err(C2sError::InvalidState("no credentials were asked for"))
    );
}

/// The text of the `connection-timeout` stream error for a header that did not come.
const NO_HEADER: &str = "no stream header in time";

#[test]
fn the_first_header_must_arrive_within_the_header_timeout() {
    let mut h = Harness::new(|_| {});
    let deadline = h.now + Duration::from_secs(10);
    // The header deadline (10 s) comes before the negotiation step's (30 s).
    assert_eq!(h.conn.poll_timeout(), Some(deadline));
    h.advance(Duration::from_secs(10) - Duration::from_nanos(1));
    assert!(h.closed().is_none());
    assert!(
        h.take_xml().is_empty(),
        "sent something before the deadline"
    );
    h.advance(Duration::from_nanos(1));
    assert_eq!(h.now, deadline);
    assert_eq!(
        h.closed(),
        Some(&CloseReason::SentError(
            StreamCondition::ConnectionTimeout,
            NO_HEADER.into()
        ))
    );
    // Our header, the error with its text, our close; then nothing is waited for.
    let got = h.take_xml();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got[0].starts_with("<stream:stream from=Some(\"example.com\")"));
    assert_eq!(
        got[1],
        format!(
            "{}<text xmlns='{STREAMS}'>{NO_HEADER}</text></stream:error>",
            stream_error("connection-timeout")
        )
    );
    assert_eq!(got[2], "</stream:stream>");
    assert!(h.conn.is_closed());
    assert_eq!(h.conn.poll_timeout(), None);
}

#[test]
fn a_header_in_time_starts_the_negotiation() {
    let mut h = Harness::new(|_| {});
    h.advance(Duration::from_secs(9));
    h.open();
    let opened_at = h.now;
    assert_eq!(
        h.conn.poll_timeout(),
        Some(opened_at + Duration::from_secs(30))
    );
    h.advance(Duration::from_secs(29));
    assert!(h.closed().is_none());
}

#[test]
fn without_a_header_timeout_the_negotiation_step_applies() {
    let mut h = Harness::new(|c| c.timeouts.stream_header = None);
    assert_eq!(h.conn.poll_timeout(), Some(h.now + Duration::from_secs(30)));
    h.advance(Duration::from_secs(29));
    assert!(h.closed().is_none());
    h.advance(Duration::from_secs(1));
    assert_eq!(
        h.closed(),
        Some(&CloseReason::SentError(
            StreamCondition::ConnectionTimeout,
            "negotiation step timed out".into()
        ))
    );
}

#[test]
fn bound_streams_send_keepalives_and_do_not_time_out() {
    let mut h = Harness::new(|_| {});
    h.add_user("juliet", "r0m30myr0m30");
    h.bound("juliet", "r0m30myr0m30", "balcony");
    let before = h.server_sent.len();
    assert_eq!(h.conn.poll_timeout(), Some(h.now + Duration::from_secs(60)));
    h.advance(Duration::from_secs(60));
    assert_eq!(&h.server_sent[before..], b" ");
    h.advance(Duration::from_secs(600));
    assert!(h.closed().is_none());
}

#[test]
fn idle_timeout_when_configured() {
    let mut h = Harness::new(|c| c.timeouts.idle = Some(Duration::from_secs(300)));
    h.add_user("juliet", "r0m30myr0m30");
    h.bound("juliet", "r0m30myr0m30", "balcony");
    h.advance(Duration::from_secs(200));
    h.send(" ");
    h.advance(Duration::from_secs(200));
    assert!(h.closed().is_none(), "whitespace from the client counts");
    h.advance(Duration::from_secs(100));
    let got = h.take_xml();
    assert!(got
        .iter()
        .any(|g| g.starts_with(&stream_error("connection-timeout"))));
    h.advance(Duration::from_secs(5));
    assert_eq!(h.closed(), Some(&CloseReason::CloseTimeout));
}

#[test]
fn local_close_waits_for_the_client() {
    let mut h = Harness::new(|_| {});
    h.add_user("juliet", "r0m30myr0m30");
    h.bound("juliet", "r0m30myr0m30", "balcony");
    h.conn.close(None, h.now);
    h.drive();
    assert_eq!(h.take_xml(), vec!["</stream:stream>"]);
    assert_eq!(
        h.conn.send_stanza(b"<message/>", h.now),
        Err(C2sError::NotBound)
    );
    // A stanza the client sent before it saw our close is still delivered.
    h.send("<message to='romeo@montague.example'/></stream:stream>");
    assert!(h.events.iter().any(|e| matches!(e, Event::Stanza { .. })));
    assert_eq!(h.closed(), Some(&CloseReason::Local));
}

#[test]
fn send_stanza_needs_a_bound_resource() {
    let mut h = Harness::new(|_| {});
    h.add_user("juliet", "r0m30myr0m30");
    h.login("juliet", "r0m30myr0m30");
    assert_eq!(
        h.conn.send_stanza(b"<message/>", h.now),
        Err(C2sError::NotBound)
    );
}

#[test]
fn client_stream_error_is_reported() {
    let mut h = Harness::new(|_| {});
    h.open();
    h.send(
        "<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
         </stream:error>",
    );
    assert_eq!(
        h.closed(),
        Some(&CloseReason::ReceivedError(
            StreamCondition::PolicyViolation,
            None
        ))
    );
}

#[test]
fn input_held_during_a_delay_is_bounded() {
    let mut h = Harness::new(|c| c.auth_failure_delay = Duration::from_secs(10));
    h.open_tls();
    assert!(h.plain("juliet", "nope").is_err());
    let big = format!("<message>{}</message>", "x".repeat(300 * 1024));
    h.send(&big);
    assert_eq!(sent_error(&h), StreamCondition::PolicyViolation);
}

/// `c2s.sasl_mechanisms` without SCRAM-SHA-256 (users moved from Prosody 0.12 have
/// SCRAM-SHA-1 credentials only): it is neither offered nor accepted, and SCRAM-SHA-1
/// still logs in.
#[test]
fn mechanisms_can_be_restricted() {
    let mut h = Harness::new(|c| c.mechanisms = vec![Mechanism::ScramSha1, Mechanism::Plain]);
    h.add_user("juliet", "r0m30myr0m30");
    let features = h.open_tls();
    assert_eq!(
        features,
        "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
         <mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms>\
         </stream:features>"
    );
    h.send_auth("SCRAM-SHA-256", b"n,,n=juliet,r=abc");
    assert_eq!(h.take_one(), failure("invalid-mechanism"));
    // The failure holds the next attempt for c2s.auth_failure_delay (1 s).
    h.advance(Duration::from_secs(1));
    h.scram("juliet", "r0m30myr0m30", ScramHash::Sha1).unwrap();
    assert!(h
        .events
        .iter()
        .any(|e| matches!(e, Event::Authenticated { .. })));
}
