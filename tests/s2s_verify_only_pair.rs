//! Verify-only outbound streams (XEP-0220 §2.1.3), sans-IO with a simulated clock: the
//! Receiving Server's connection to the Authoritative Server carries its `db:verify`s
//! and nothing that authenticates it, so the peer has nothing to verify back.
//!
//! Against our own inbound stream (`Pair`, real rustls for STARTTLS) and against a peer
//! played by hand (`Wire`) to see when each byte goes out.

mod common;

use common::pair::{Pair, Server, Wire};
use fedrouter::dialback::{DialbackErrorCondition, DialbackResult};
use fedrouter::stream::{CloseReason, Event, PeerPolicy, S2sError};
use fedrouter_testkit::TestCa;

/// We, the Receiving Server.
const LOCAL: &str = "cupdomain.test";
/// The Authoritative Server's domain.
const REMOTE: &str = "gmail.test";
/// The id of the inbound stream whose `db:result` key is being verified.
const INBOUND_ID: &str = "inbound-stream-1";

/// The peer's answering header on the stream we opened.
const PEER_RESPONSE_HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
    xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
    from='gmail.test' to='cupdomain.test' id='peer-stream-1' version='1.0'>";

/// Features of a peer offering dialback, XEP-0288 and XEP-0198.
const FEATURES: &str = "<stream:features><bidi xmlns='urn:xmpp:features:bidi'/>\
    <sm xmlns='urn:xmpp:sm:3'/>\
    <dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>";

fn servers(policy: PeerPolicy) -> (Server, Server) {
    let ca = TestCa::new("fedrouter test CA").unwrap();
    (
        Server::new(LOCAL, policy, &ca, true),
        Server::new(REMOTE, policy, &ca, true),
    )
}

/// The key gmail.test's authoritative side accepts for the inbound stream
/// `INBOUND_ID` (XEP-0185).
fn key_of(authoritative: &Server) -> String {
    authoritative
        .cfg
        .dialback_secret
        .key(LOCAL, REMOTE, INBOUND_ID)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn answers(events: &[Event]) -> Vec<(String, String, String, DialbackResult)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::VerifyAnswered {
                local,
                remote,
                stream_id,
                result,
            } => Some((local.clone(), remote.clone(), stream_id.clone(), *result)),
            _ => None,
        })
        .collect()
}

fn authenticated_any(events: &[Event]) -> bool {
    events.iter().any(|e| {
        matches!(
            e,
            Event::Authenticated { .. }
                | Event::BidiAuthenticated { .. }
                | Event::VerifyNeeded { .. }
        )
    })
}

/// Plain dialback (Google-style): the `db:verify` goes out, the verdict comes back, and
/// neither side authenticated anything: no `db:result`, no `<bidi/>`, no SM.
#[test]
fn sends_db_verify_and_no_db_result() {
    let (a, b) = servers(PeerPolicy::google());
    let key = key_of(&b);
    let mut p = Pair::verify_only(a, b);
    assert!(p.a.conn.is_verify_only());
    p.a.conn
        .send_db_verify(LOCAL, INBOUND_ID, &key, p.now)
        .unwrap();
    p.drive();
    assert_eq!(
        answers(&p.a.events),
        vec![(
            LOCAL.to_owned(),
            REMOTE.to_owned(),
            INBOUND_ID.to_owned(),
            DialbackResult::Valid
        )]
    );
    let sent = text(&p.a.sent);
    assert!(sent.contains("<db:verify "), "{sent}");
    for absent in ["<db:result", "<bidi", "<enable", "<auth", "<starttls"] {
        assert!(!sent.contains(absent), "{absent} in {sent}");
    }
    assert!(!authenticated_any(&p.a.events), "{:?}", p.a.events);
    assert!(!authenticated_any(&p.b.events), "{:?}", p.b.events);
    assert_eq!(p.b.conn.dialback_requests_received(), 1);
    assert!(!p.a.conn.awaits_dialback_answers());
    assert_eq!(p.a.conn.authenticated().count(), 0);
    assert!(!p.a.conn.may_send(LOCAL, REMOTE));
}

/// A wrong key gets the authoritative server's `invalid`, reported as such.
#[test]
fn wrong_key_is_invalid() {
    let (a, b) = servers(PeerPolicy::google());
    let mut p = Pair::verify_only(a, b);
    p.a.conn
        .send_db_verify(LOCAL, INBOUND_ID, "00ff", p.now)
        .unwrap();
    p.drive();
    assert_eq!(
        answers(&p.a.events)
            .into_iter()
            .map(|a| a.3)
            .collect::<Vec<_>>(),
        vec![DialbackResult::Invalid]
    );
}

/// TLS required by policy: STARTTLS first (real rustls), then the `db:verify` inside
/// TLS; still no `db:result`, and no SASL EXTERNAL although both sides could.
#[test]
fn starttls_first_when_policy_requires_it() {
    let mut policy = PeerPolicy::strict();
    policy.auth = fedrouter::stream::AuthPolicy::Any;
    let (a, b) = servers(policy);
    let key = key_of(&b);
    let mut p = Pair::verify_only(a, b);
    p.a.conn
        .send_db_verify(LOCAL, INBOUND_ID, &key, p.now)
        .unwrap();
    p.drive();
    assert!(p.a.conn.is_tls());
    assert!(p.b.conn.is_tls());
    assert!(
        p.a.events.iter().any(|e| matches!(e, Event::StartTls(_))),
        "{:?}",
        p.a.events
    );
    let sent = text(&p.a.sent);
    let tls_at = sent.find("<starttls").expect("STARTTLS sent");
    let verify_at = sent.find("<db:verify ").expect("db:verify sent");
    assert!(tls_at < verify_at, "{sent}");
    for absent in ["<db:result", "<auth", "<bidi"] {
        assert!(!sent.contains(absent), "{absent} in {sent}");
    }
    assert_eq!(
        answers(&p.a.events)
            .into_iter()
            .map(|a| a.3)
            .collect::<Vec<_>>(),
        vec![DialbackResult::Valid]
    );
    assert!(!authenticated_any(&p.a.events), "{:?}", p.a.events);
    assert!(!authenticated_any(&p.b.events), "{:?}", p.b.events);
}

/// Byte by byte: nothing but the header before the peer's features; the `db:verify`
/// right after them; the verdict delivered; our close leaves nothing pending.
#[test]
fn db_verify_waits_for_features_and_close_leaves_nothing_pending() {
    let (a, _b) = servers(PeerPolicy::google());
    let mut w = Wire::verify_only(a.cfg.clone(), LOCAL, REMOTE);
    assert!(text(&w.sent).starts_with("<?xml"), "{}", text(&w.sent));
    w.conn
        .send_db_verify(LOCAL, INBOUND_ID, "abcd", w.now)
        .unwrap();
    assert!(w.conn.awaits_dialback_answers());
    assert_eq!(w.pump(), b"", "sent before the peer's header");
    assert_eq!(
        w.feed(PEER_RESPONSE_HEADER.as_bytes()),
        b"",
        "sent before the features"
    );
    let out = text(&w.feed(FEATURES.as_bytes()));
    assert_eq!(
        out,
        "<db:verify from='cupdomain.test' to='gmail.test' id='inbound-stream-1'>abcd</db:verify>"
    );
    // A second request once open goes out at once.
    w.conn
        .send_db_verify(LOCAL, "inbound-stream-2", "ef01", w.now)
        .unwrap();
    assert!(text(&w.pump()).starts_with("<db:verify "));
    w.feed(
        b"<db:verify from='gmail.test' to='cupdomain.test' id='inbound-stream-1' type='valid'/>",
    );
    assert_eq!(
        answers(&w.events),
        vec![(
            LOCAL.to_owned(),
            REMOTE.to_owned(),
            INBOUND_ID.to_owned(),
            DialbackResult::Valid
        )]
    );
    assert!(w.conn.awaits_dialback_answers(), "the second one waits");
    // Closing with one unanswered: it is answered with an error, nothing stays pending.
    w.conn.close(None, w.now);
    assert_eq!(text(&w.pump()), "</stream:stream>");
    w.feed(b"</stream:stream>");
    assert!(w.conn.is_closed());
    assert!(!w.conn.awaits_dialback_answers());
    assert_eq!(
        answers(&w.events)[1..],
        [(
            LOCAL.to_owned(),
            REMOTE.to_owned(),
            "inbound-stream-2".to_owned(),
            DialbackResult::Error(DialbackErrorCondition::RemoteConnectionFailed)
        )]
    );
    assert!(
        matches!(w.events.last(), Some(Event::Closed(CloseReason::Local))),
        "{:?}",
        w.events
    );
    assert!(!authenticated_any(&w.events));
}

/// It authenticates nothing: asking for a `db:result` on it is refused.
#[test]
fn refuses_dialback_requests() {
    let (a, _b) = servers(PeerPolicy::google());
    let mut w = Wire::verify_only(a.cfg.clone(), LOCAL, REMOTE);
    assert!(matches!(
        w.conn.request_dialback(LOCAL, w.now),
        Err(S2sError::InvalidState(_))
    ));
    w.feed(PEER_RESPONSE_HEADER.as_bytes());
    w.feed(FEATURES.as_bytes());
    assert!(!text(&w.sent).contains("<db:result"));
    assert!(w
        .conn
        .send_stanza(LOCAL, REMOTE, b"<presence/>", w.now)
        .is_err());
}
