//! Negative paths of the S2S state machine, driven with raw bytes: every case checks the
//! condition RFC 6120 / XEP-0220 specify, both in the `Closed` event and in the bytes we
//! actually sent, and that the offending stanza was never delivered.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::pair::{sent_documents, Server, Wire};
use fedrouter::condition::StreamCondition;
use fedrouter::dialback::{DialbackErrorCondition, DialbackResult};
use fedrouter::stream::{
    AuthMethod, CloseReason, Direction, Event, FederationPolicy, PeerPolicy, S2sConfig, Timeouts,
    TlsRole,
};
use fedrouter::xml::tree::Node;
use fedrouter::xml::writer::STREAM_CLOSE;
use fedrouter::xml::{ns, Frame, Namespace};
use fedrouter_testkit::TestCa;

const LOCAL: &str = "cupdomain.test";
const REMOTE: &str = "gmail.test";

/// The stream header gmail.test sends to open a stream to cupdomain.test.
const PEER_HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
    xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
    from='gmail.test' to='cupdomain.test' version='1.0'>";

/// gmail.test's response header on a stream we (cupdomain.test) opened.
const PEER_RESPONSE_HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
    xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
    from='gmail.test' to='cupdomain.test' id='peer-stream-1' version='1.0'>";

const DIALBACK_ONLY_FEATURES: &str =
    "<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>";

const KEY: &str = "3c1804f25d4a668f154ed8fd6738b21f5253cf9286f2a7e81711db7bc330f057";

fn ca() -> TestCa {
    TestCa::new("fedrouter test CA").unwrap()
}

fn server(policy: PeerPolicy) -> Server {
    Server::new(LOCAL, policy, &ca(), false)
}

fn header_with(attrs: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' \
         xmlns:db='jabber:server:dialback' {attrs}>"
    )
}

/// Elements (not header, not close) of every document in `bytes`.
fn elements(bytes: &[u8]) -> Vec<Node> {
    sent_documents(bytes)
        .into_iter()
        .flatten()
        .filter_map(|f| match f {
            Frame::Element(e) => Some(Node::parse(&e).unwrap()),
            _ => None,
        })
        .collect()
}

/// A dialback answer as sent.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    name: String,
    type_: String,
    from: String,
    to: String,
    id: Option<String>,
    /// The stanza error condition inside `<error/>` for `type='error'`.
    condition: Option<String>,
}

impl Answer {
    fn new(name: &str, type_: &str, from: &str, to: &str) -> Answer {
        Answer {
            name: name.into(),
            type_: type_.into(),
            from: from.into(),
            to: to.into(),
            id: None,
            condition: None,
        }
    }

    fn id(mut self, id: &str) -> Answer {
        self.id = Some(id.into());
        self
    }

    fn condition(mut self, c: &str) -> Answer {
        self.condition = Some(c.into());
        self
    }
}

/// The single dialback element in `bytes` (our output after a header).
fn dialback_answer(bytes: &[u8]) -> Answer {
    let els: Vec<Node> = elements(bytes)
        .into_iter()
        .filter(|n| n.ns == ns::DIALBACK)
        .collect();
    assert_eq!(
        els.len(),
        1,
        "one dialback answer in {:?}",
        String::from_utf8_lossy(bytes)
    );
    let n = &els[0];
    Answer {
        name: n.name.clone(),
        type_: n.attr("type").unwrap_or_default().to_owned(),
        from: n.attr("from").unwrap_or_default().to_owned(),
        to: n.attr("to").unwrap_or_default().to_owned(),
        id: n.attr("id").map(str::to_owned),
        condition: n
            .children
            .iter()
            .find(|c| c.name == "error")
            .and_then(|e| e.children.iter().find(|c| c.ns == ns::STANZA_ERRORS))
            .map(|c| c.name.clone()),
    }
}

/// Checks that the stream ended with exactly `cond`: the `Closed` event, and on the wire
/// our stream header first (RFC 6120 §4.9.1.2), then `<stream:error>` with that
/// condition in the streams-errors namespace, then `</stream:stream>` and nothing else.
fn assert_stream_error(w: &Wire, cond: StreamCondition) {
    let sent = String::from_utf8_lossy(&w.sent).into_owned();
    match w.closed() {
        Some(CloseReason::SentError(c, _)) if *c == cond => {}
        other => panic!("expected SentError({cond:?}), got {other:?}; sent {sent}"),
    }
    assert!(w.conn.is_closed(), "not closed after {cond:?}");
    assert!(
        w.sent.ends_with(STREAM_CLOSE),
        "no </stream:stream> after the error: {sent}"
    );
    let docs = sent_documents(&w.sent);
    let last = docs.last().unwrap();
    assert!(
        matches!(last.first(), Some(Frame::Header(_))),
        "our stream header must precede the error: {sent}"
    );
    assert_eq!(last.last(), Some(&Frame::Close), "{sent}");
    let Some(Frame::Element(err)) = last.get(last.len() - 2) else {
        panic!("no element before the close: {sent}")
    };
    assert!(
        err.is("error", &Namespace::Streams),
        "last element is not <stream:error>: {sent}"
    );
    let node = Node::parse(err).unwrap();
    let conds: Vec<&str> = node
        .children
        .iter()
        .filter(|c| c.ns == ns::STREAM_ERRORS && c.name != "text")
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(conds, vec![cond.as_str()], "{sent}");
    assert_eq!(
        w.events
            .iter()
            .filter(|e| matches!(e, Event::Closed(_)))
            .count(),
        1,
        "{:?}",
        w.events
    );
}

/// An inbound stream from gmail.test, header exchanged, nothing authenticated yet.
fn opened(srv: &Server) -> Wire {
    let mut w = Wire::inbound(srv.cfg.clone());
    assert!(
        w.sent.is_empty(),
        "the receiving entity speaks after the header"
    );
    w.feed(PEER_HEADER.as_bytes());
    assert!(
        matches!(
            w.events.as_slice(),
            [Event::Opened { local, remote: Some(r), stream_id }]
                if local == LOCAL && r == REMOTE && stream_id == w.conn.stream_id()
        ),
        "{:?}",
        w.events
    );
    w
}

/// An inbound stream from gmail.test authenticated by dialback (verdict Valid).
fn authenticated(srv: &Server) -> Wire {
    let mut w = opened(srv);
    let n = w.events.len();
    let out = w.feed(
        format!("<db:result from='gmail.test' to='cupdomain.test'>{KEY}</db:result>").as_bytes(),
    );
    assert!(out.is_empty(), "nothing is answered before the verdict");
    let needed = w.verify_needed_since(n);
    assert_eq!(
        needed,
        vec![(
            LOCAL.into(),
            REMOTE.into(),
            w.conn.stream_id().to_owned(),
            KEY.into()
        )]
    );
    let out = w.verdict(LOCAL, REMOTE, DialbackResult::Valid);
    assert_eq!(
        dialback_answer(&with_header(&out)),
        Answer::new("result", "valid", LOCAL, REMOTE)
    );
    assert!(w.events.contains(&Event::Authenticated {
        local: LOCAL.into(),
        remote: REMOTE.into(),
        method: AuthMethod::Dialback,
        direction: Direction::Inbound,
    }));
    assert!(w.conn.is_authenticated(LOCAL, REMOTE));
    w
}

/// Wraps answer bytes in a header so the `db:` prefix resolves.
fn with_header(out: &[u8]) -> Vec<u8> {
    [PEER_HEADER.as_bytes(), out].concat()
}

// ----- stanza authorisation (RFC 6120 §8.1.1.2, §13.8; XEP-0220 §2.1.4) -----

#[test]
fn a_good_stanza_is_delivered() {
    // The baseline the negative cases below differ from by one attribute.
    let srv = server(PeerPolicy::google());
    let mut w = authenticated(&srv);
    let s =
        "<message from='jdoe1@gmail.test/r' to='cupuser1@cupdomain.test'><body>hi</body></message>";
    assert!(w.feed(s.as_bytes()).is_empty());
    assert_eq!(w.stanzas(), vec![s.to_owned()]);
    assert!(w.closed().is_none());
}

#[test]
fn spoofed_from_is_invalid_from() {
    let srv = server(PeerPolicy::google());
    let mut w = authenticated(&srv);
    w.feed(
        b"<message from='mallory@evil.test' to='cupuser1@cupdomain.test'><body>x</body></message>",
    );
    assert_stream_error(&w, StreamCondition::InvalidFrom);
    assert!(w.stanzas().is_empty());
}

#[test]
fn stanza_to_a_domain_we_do_not_host_is_host_unknown() {
    let srv = server(PeerPolicy::google());
    let mut w = authenticated(&srv);
    w.feed(b"<presence from='jdoe1@gmail.test' to='someone@other.test' type='subscribe'/>");
    assert_stream_error(&w, StreamCondition::HostUnknown);
    assert!(w.stanzas().is_empty());
}

#[test]
fn header_to_a_domain_we_do_not_host_is_host_unknown_after_our_header() {
    let srv = server(PeerPolicy::google());
    let mut w = Wire::inbound(srv.cfg.clone());
    w.feed(
        header_with("xmlns='jabber:server' from='gmail.test' to='other.test' version='1.0'")
            .as_bytes(),
    );
    assert_stream_error(&w, StreamCondition::HostUnknown);
    // RFC 6120 §4.9.1.2: the response header, then the error, in one go.
    let docs = sent_documents(&w.sent);
    assert_eq!(docs.len(), 1);
    let Frame::Header(h) = &docs[0][0] else {
        panic!()
    };
    assert_eq!(
        h.from.as_deref(),
        Some(LOCAL),
        "our header names a domain we host"
    );
    assert_eq!(h.content_ns, Namespace::Server);
    assert_eq!(
        docs[0].len(),
        3,
        "header, error, close: no features: {docs:?}"
    );
    assert!(!w.events.iter().any(|e| matches!(e, Event::Opened { .. })));
}

#[test]
fn stanza_without_to_or_from_is_improper_addressing() {
    for s in [
        "<message to='cupuser1@cupdomain.test'><body>x</body></message>",
        "<presence from='jdoe1@gmail.test'/>",
        "<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>",
    ] {
        let srv = server(PeerPolicy::google());
        let mut w = authenticated(&srv);
        w.feed(s.as_bytes());
        assert_stream_error(&w, StreamCondition::ImproperAddressing);
        assert!(w.stanzas().is_empty(), "{s}");
    }
}

#[test]
fn stanza_before_authentication_is_not_authorized() {
    let srv = server(PeerPolicy::google());
    let mut w = opened(&srv);
    w.feed(
        b"<message from='jdoe1@gmail.test' to='cupuser1@cupdomain.test'><body>x</body></message>",
    );
    assert_stream_error(&w, StreamCondition::NotAuthorized);
    assert!(w.stanzas().is_empty());

    // Also while the verdict is still pending.
    let mut w = opened(&srv);
    w.feed(
        format!("<db:result from='gmail.test' to='cupdomain.test'>{KEY}</db:result>").as_bytes(),
    );
    w.feed(b"<presence from='jdoe1@gmail.test' to='cupuser1@cupdomain.test'/>");
    assert_stream_error(&w, StreamCondition::NotAuthorized);
    assert!(w.stanzas().is_empty());
}

// ----- dialback (XEP-0220) -----

/// Opens, sends a key, gets the verdict Invalid.
fn invalid_dialback() -> Wire {
    let srv = server(PeerPolicy::google());
    let mut w = opened(&srv);
    w.feed(
        format!(
            "<db:result from='gmail.test' to='cupdomain.test'>{}</db:result>",
            "0".repeat(64)
        )
        .as_bytes(),
    );
    assert_eq!(w.verify_needed_since(0).len(), 1);
    let out = w.verdict(LOCAL, REMOTE, DialbackResult::Invalid);
    assert!(
        String::from_utf8_lossy(&out).starts_with("<db:result "),
        "the answer comes first: {}",
        String::from_utf8_lossy(&out)
    );
    let answer = elements(&with_header(&out))
        .into_iter()
        .find(|n| n.ns == ns::DIALBACK)
        .expect("a db:result answer");
    assert_eq!(answer.name, "result");
    assert_eq!(answer.attr("type"), Some("invalid"));
    assert_eq!(answer.attr("from"), Some(LOCAL));
    assert_eq!(answer.attr("to"), Some(REMOTE));
    assert!(!w.conn.is_authenticated(LOCAL, REMOTE));
    assert_eq!(w.conn.authenticated().count(), 0);
    assert!(!w
        .events
        .iter()
        .any(|e| matches!(e, Event::Authenticated { .. })));
    w
}

#[test]
fn dialback_with_wrong_key_gets_invalid_and_no_stanza_is_accepted() {
    let mut w = invalid_dialback();
    let still_open = !w.sent.ends_with(STREAM_CLOSE);
    w.feed(b"<message from='jdoe1@gmail.test' to='cupuser1@cupdomain.test'><body>spoofed</body></message>");
    assert!(w.stanzas().is_empty());
    if still_open {
        // The stanza comes on a stream where nothing is authenticated.
        assert_stream_error(&w, StreamCondition::NotAuthorized);
    } else {
        // Closed by the invalid verdict (XEP-0220 §2.2.1): the stanza is not processed.
        assert!(w.closed().is_some());
    }
}

#[test]
fn dialback_invalid_verdict_closes_the_stream() {
    // XEP-0220 §2.2.1: "If the type is 'invalid', the Initiating Server is attempting to
    // spoof the Sender Domain. The Receiving Server MUST NOT accept stanzas from the
    // Initiating Server for the Sender Domain, ought to log the attempt, and MUST close
    // the XML stream." (also the doc of `DialbackResult::Invalid`).
    let w = invalid_dialback();
    let sent = String::from_utf8_lossy(&w.sent).into_owned();
    let answer_at = sent.find("type='invalid'").unwrap();
    assert!(
        sent[answer_at..].ends_with("</stream:stream>"),
        "type='invalid' must be followed by our stream close: {sent}"
    );
    // Closed at once (stream error) or after the peer's close (plain close).
    let mut w = w;
    w.feed(b"</stream:stream>");
    assert!(w.closed().is_some(), "no Closed event: {:?}", w.events);
    assert!(w.stanzas().is_empty());
}

#[test]
fn db_result_to_a_domain_we_do_not_host_is_item_not_found() {
    let srv = server(PeerPolicy::google());
    let mut w = opened(&srv);
    let out = w
        .feed(format!("<db:result from='gmail.test' to='other.test'>{KEY}</db:result>").as_bytes());
    assert_eq!(
        dialback_answer(&with_header(&out)),
        Answer::new("result", "error", "other.test", REMOTE).condition("item-not-found")
    );
    let n = elements(&with_header(&out)).remove(0);
    assert_eq!(
        n.children[0].attr("type"),
        Some("cancel"),
        "XEP-0220 example 8"
    );
    assert!(w.verify_needed_since(0).is_empty());
    // XEP-0220 §2.2.1: a dialback error is not a stream error; the stream stays usable.
    assert!(w.closed().is_none() && !w.conn.is_closed());
    let out = w.feed(
        format!("<db:result from='gmail.test' to='cupdomain.test'>{KEY}</db:result>").as_bytes(),
    );
    assert!(out.is_empty());
    assert_eq!(w.verify_needed_since(0).len(), 1);
}

/// Fuzz finding 5 (tests/fuzz/README.md): a dialback request whose sender domain is not a
/// domainpart (RFC 7622 §3.2) is a stream error, never verified or answered for that name.
#[test]
fn db_result_or_verify_from_an_invalid_domain_is_invalid_from() {
    let srv = server(PeerPolicy::google());
    for request in [
        format!("<db:result from='pm&gt;xample' to='{LOCAL}'>{KEY}</db:result>"),
        format!("<db:verify from='a b.test' to='{LOCAL}' id='x'>{KEY}</db:verify>"),
    ] {
        let mut w = opened(&srv);
        let out = w.feed(request.as_bytes());
        assert_stream_error(&w, StreamCondition::InvalidFrom);
        assert!(
            !String::from_utf8_lossy(&out).contains("db:"),
            "no dialback answer names the invalid domain: {}",
            String::from_utf8_lossy(&out)
        );
        assert!(w.verify_needed_since(0).is_empty());
    }
}

/// Fuzz finding 7: a dialback request pending when we close the stream is not answered
/// after our `</stream:stream>`, neither by its verdict nor by its timeout.
#[test]
fn nothing_is_answered_after_our_close() {
    let srv = server(PeerPolicy::google());
    for by_verdict in [true, false] {
        let mut w = opened(&srv);
        w.feed(format!("<db:result from='{REMOTE}' to='{LOCAL}'>{KEY}</db:result>").as_bytes());
        assert_eq!(w.verify_needed_since(0).len(), 1);
        w.conn.close(None, w.now);
        let closed = w.pump();
        assert!(String::from_utf8_lossy(&closed).ends_with("</stream:stream>"));
        let after = if by_verdict {
            w.verdict(
                LOCAL,
                REMOTE,
                DialbackResult::Error(DialbackErrorCondition::RemoteServerTimeout),
            )
        } else {
            w.advance(Duration::from_secs(31))
        };
        assert!(
            after.is_empty(),
            "sent after our close: {}",
            String::from_utf8_lossy(&after)
        );
    }
}

#[test]
fn db_verify_as_authoritative_server() {
    let srv = server(PeerPolicy::google());
    let mut w = opened(&srv);
    // gmail.test received a db:result from (someone claiming) cupdomain.test on its
    // stream 'abc123' and asks us, the authoritative server for cupdomain.test.
    let good = srv.cfg.dialback_secret.key(REMOTE, LOCAL, "abc123");
    let out = w.feed(
        format!("<db:verify from='gmail.test' to='cupdomain.test' id='abc123'>{good}</db:verify>")
            .as_bytes(),
    );
    assert_eq!(
        dialback_answer(&with_header(&out)),
        Answer::new("verify", "valid", LOCAL, REMOTE).id("abc123")
    );
    // A key for another stream id, a key made for the reverse direction, garbage.
    for (id, key) in [
        ("abc124", good.clone()),
        (
            "abc123",
            srv.cfg.dialback_secret.key(LOCAL, REMOTE, "abc123"),
        ),
        ("abc123", "not a key".to_owned()),
    ] {
        let out = w.feed(
            format!("<db:verify from='gmail.test' to='cupdomain.test' id='{id}'>{key}</db:verify>")
                .as_bytes(),
        );
        assert_eq!(
            dialback_answer(&with_header(&out)),
            Answer::new("verify", "invalid", LOCAL, REMOTE).id(id),
            "{id} {key}"
        );
    }
    // Not our domain: item-not-found, still not fatal.
    let out = w.feed(b"<db:verify from='gmail.test' to='other.test' id='abc123'>00</db:verify>");
    assert_eq!(
        dialback_answer(&with_header(&out)),
        Answer::new("verify", "error", "other.test", REMOTE)
            .id("abc123")
            .condition("item-not-found")
    );
    assert!(w.closed().is_none());
    assert_eq!(
        w.conn.authenticated().count(),
        0,
        "answering db:verify authenticates nothing"
    );
}

#[test]
fn denied_domain_in_db_result_gets_a_dialback_error() {
    let mut policy = FederationPolicy {
        default: PeerPolicy::google(),
        domains: HashMap::new(),
    };
    policy.domains.insert(
        "evil.test".into(),
        PeerPolicy {
            allow: false,
            ..PeerPolicy::google()
        },
    );
    let srv = Server::with_policy(LOCAL, policy, &ca(), false);
    let mut w = opened(&srv);
    let out = w.feed(
        format!("<db:result from='evil.test' to='cupdomain.test'>{KEY}</db:result>").as_bytes(),
    );
    let a = dialback_answer(&with_header(&out));
    assert!(
        a.condition.is_some(),
        "type='error' carries a condition: {a:?}"
    );
    assert_eq!(
        Answer {
            condition: None,
            ..a
        },
        Answer::new("result", "error", LOCAL, "evil.test")
    );
    assert!(
        w.verify_needed_since(0).is_empty(),
        "a denied domain is never verified"
    );
}

// ----- negotiation -----

#[test]
fn tls_required_but_not_offered_is_policy_violation() {
    let srv = Server::new(LOCAL, PeerPolicy::strict(), &ca(), true);
    let mut w = Wire::outbound(srv.cfg.clone(), LOCAL, REMOTE);
    let header_len = w.sent.len();
    assert!(header_len > 0);
    w.feed(PEER_RESPONSE_HEADER.as_bytes());
    assert_eq!(
        w.sent.len(),
        header_len,
        "nothing sent on the peer's header"
    );
    w.feed(DIALBACK_ONLY_FEATURES.as_bytes());
    assert_stream_error(&w, StreamCondition::PolicyViolation);
    let docs = sent_documents(&w.sent);
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].len(), 3, "only header, error, close: {docs:?}");
    let s = String::from_utf8_lossy(&w.sent);
    assert!(!s.contains("db:result") && !s.contains("<starttls"), "{s}");
}

#[test]
fn version_2_is_unsupported_version() {
    let srv = server(PeerPolicy::google());
    let mut w = Wire::inbound(srv.cfg.clone());
    w.feed(
        header_with("xmlns='jabber:server' from='gmail.test' to='cupdomain.test' version='2.0'")
            .as_bytes(),
    );
    assert_stream_error(&w, StreamCondition::UnsupportedVersion);
}

#[test]
fn wrong_stream_namespace_is_invalid_namespace() {
    let srv = server(PeerPolicy::google());
    let mut w = Wire::inbound(srv.cfg.clone());
    w.feed(
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='urn:wrong' \
          from='gmail.test' to='cupdomain.test' version='1.0'>",
    );
    assert_stream_error(&w, StreamCondition::InvalidNamespace);
}

#[test]
fn jabber_client_on_s2s_is_invalid_namespace() {
    let srv = server(PeerPolicy::google());
    let mut w = Wire::inbound(srv.cfg.clone());
    w.feed(
        header_with("xmlns='jabber:client' from='gmail.test' to='cupdomain.test' version='1.0'")
            .as_bytes(),
    );
    assert_stream_error(&w, StreamCondition::InvalidNamespace);
    // Our header still declares jabber:server.
    let Frame::Header(h) = &sent_documents(&w.sent)[0][0] else {
        panic!()
    };
    assert_eq!(h.content_ns, Namespace::Server);
}

#[test]
fn restricted_xml_mid_stream_keeps_what_came_before() {
    let srv = server(PeerPolicy::google());
    let mut w = authenticated(&srv);
    let a =
        "<message from='jdoe1@gmail.test/r' to='cupuser1@cupdomain.test'><body>1</body></message>";
    let b = "<presence from='jdoe1@gmail.test/r' to='cupuser1@cupdomain.test'/>";
    let bad = "<message from='jdoe1@gmail.test/r' to='cupuser1@cupdomain.test'><!--x--></message>";
    let after =
        "<message from='jdoe1@gmail.test/r' to='cupuser1@cupdomain.test'><body>3</body></message>";
    w.feed(format!("{a}{b}{bad}{after}").as_bytes());
    assert_eq!(w.stanzas(), vec![a.to_owned(), b.to_owned()]);
    assert_stream_error(&w, StreamCondition::RestrictedXml);
    // The bare case from the brief as well.
    let mut w = authenticated(&srv);
    w.feed(b"<message><!--x--></message>");
    assert_stream_error(&w, StreamCondition::RestrictedXml);
    assert!(w.stanzas().is_empty());
}

#[test]
fn peer_close_is_answered_with_close() {
    let srv = server(PeerPolicy::google());
    let mut w = authenticated(&srv);
    let out = w.feed(b"</stream:stream>");
    assert_eq!(out, STREAM_CLOSE);
    assert_eq!(w.closed(), Some(&CloseReason::PeerClosed));
    assert!(w.conn.is_closed());
    // Nothing after the close is processed.
    let out = w.feed(b"<presence from='jdoe1@gmail.test' to='cupuser1@cupdomain.test'/>");
    assert!(out.is_empty());
    assert!(w.stanzas().is_empty());
}

#[test]
fn denied_domain_header_is_policy_violation() {
    let mut policy = FederationPolicy {
        default: PeerPolicy::google(),
        ..Default::default()
    };
    policy.domains.insert(
        "evil.test".into(),
        PeerPolicy {
            allow: false,
            ..PeerPolicy::google()
        },
    );
    let srv = Server::with_policy(LOCAL, policy, &ca(), false);
    let mut w = Wire::inbound(srv.cfg.clone());
    w.feed(
        header_with("xmlns='jabber:server' from='evil.test' to='cupdomain.test' version='1.0'")
            .as_bytes(),
    );
    assert_stream_error(&w, StreamCondition::PolicyViolation);
    let docs = sent_documents(&w.sent);
    assert_eq!(
        docs[0].len(),
        3,
        "no features for a denied domain: {docs:?}"
    );
    // Another domain on the same configuration is fine.
    let mut w = Wire::inbound(srv.cfg.clone());
    w.feed(PEER_HEADER.as_bytes());
    assert!(w.closed().is_none());
}

#[test]
fn sasl_external_not_offered_fails_and_dialback_still_works() {
    let srv = server(PeerPolicy::default());
    let mut w = opened(&srv);
    let features = elements(&w.sent);
    assert_eq!(features.len(), 1);
    assert!(
        features[0].child("mechanisms", ns::SASL).is_none(),
        "no SASL on plain TCP"
    );
    assert!(features[0]
        .child("dialback", ns::DIALBACK_FEATURE)
        .is_some());
    let out = w.feed(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>Z21haWwudGVzdA==</auth>");
    let answer = elements(&with_header(&out));
    assert_eq!(answer.len(), 1, "{}", String::from_utf8_lossy(&out));
    assert_eq!(
        (answer[0].name.as_str(), answer[0].ns.as_str()),
        ("failure", ns::SASL)
    );
    assert!(
        answer[0]
            .children
            .iter()
            .any(|c| c.ns == ns::SASL && c.name != "text"),
        "a SASL condition: {}",
        String::from_utf8_lossy(&out)
    );
    assert!(w.closed().is_none(), "a SASL failure is not a stream error");
    assert!(!w
        .events
        .iter()
        .any(|e| matches!(e, Event::Authenticated { .. })));
    // Dialback on the same stream.
    let n = w.events.len();
    w.feed(
        format!("<db:result from='gmail.test' to='cupdomain.test'>{KEY}</db:result>").as_bytes(),
    );
    assert_eq!(w.verify_needed_since(n).len(), 1);
    w.verdict(LOCAL, REMOTE, DialbackResult::Valid);
    assert!(w.conn.is_authenticated(LOCAL, REMOTE));
    let s = "<presence from='jdoe1@gmail.test' to='cupuser1@cupdomain.test'/>";
    w.feed(s.as_bytes());
    assert_eq!(w.stanzas(), vec![s.to_owned()]);
}

// ----- timeouts (each negotiation step: 30 s) -----

fn assert_timeout(w: &mut Wire) {
    let before = w.sent.len();
    w.advance(Duration::from_secs(29));
    assert!(w.closed().is_none(), "fired early: {:?}", w.events);
    assert_eq!(w.sent.len(), before);
    w.advance(Duration::from_secs(2));
    assert_stream_error(w, StreamCondition::ConnectionTimeout);
}

#[test]
fn outbound_timeout_waiting_for_header_without_a_header_deadline() {
    let srv = server(PeerPolicy::google());
    let cfg = with_timeouts(&srv, |t| t.stream_header = None);
    let mut w = Wire::outbound(cfg, LOCAL, REMOTE);
    assert_timeout(&mut w);
    assert_closed_with(&w, "negotiation step timed out");
}

#[test]
fn outbound_timeout_waiting_for_features() {
    let srv = server(PeerPolicy::google());
    let mut w = Wire::outbound(srv.cfg.clone(), LOCAL, REMOTE);
    // Within the header deadline (10 s).
    w.advance(Duration::from_secs(9));
    w.feed(PEER_RESPONSE_HEADER.as_bytes());
    // The step's clock restarts with the header.
    assert_timeout(&mut w);
}

#[test]
fn outbound_timeout_waiting_for_proceed() {
    let srv = Server::new(LOCAL, PeerPolicy::webex(), &ca(), false);
    let mut w = Wire::outbound(srv.cfg.clone(), LOCAL, REMOTE);
    w.feed(PEER_RESPONSE_HEADER.as_bytes());
    let out = w.feed(
        b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\
          <dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>",
    );
    assert_eq!(out, b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    assert_timeout(&mut w);
    assert!(!w.events.iter().any(|e| matches!(e, Event::StartTls(_))));
}

#[test]
fn outbound_timeout_waiting_for_dialback_result() {
    let srv = server(PeerPolicy::google());
    let mut w = Wire::outbound(srv.cfg.clone(), LOCAL, REMOTE);
    w.feed(PEER_RESPONSE_HEADER.as_bytes());
    let out = w.feed(DIALBACK_ONLY_FEATURES.as_bytes());
    assert!(String::from_utf8_lossy(&out).starts_with("<db:result "));
    assert_timeout(&mut w);
    assert!(w.events.iter().any(|e| matches!(
        e,
        Event::AuthFailed { local, remote, result: DialbackResult::Error(_) }
            if local == LOCAL && remote == REMOTE
    )));
}

#[test]
fn outbound_unanswered_dialback_result_fails_the_pair() {
    // What holds today and after the fix above: the pair fails with an error result
    // after 30 s, so queued stanzas get bounced.
    let srv = server(PeerPolicy::google());
    let mut w = Wire::outbound(srv.cfg.clone(), LOCAL, REMOTE);
    w.feed(PEER_RESPONSE_HEADER.as_bytes());
    w.feed(DIALBACK_ONLY_FEATURES.as_bytes());
    w.advance(Duration::from_secs(29));
    assert!(!w
        .events
        .iter()
        .any(|e| matches!(e, Event::AuthFailed { .. })));
    w.advance(Duration::from_secs(2));
    assert!(
        w.events.iter().any(|e| matches!(
            e,
            Event::AuthFailed { local, remote, result: DialbackResult::Error(c) }
                if local == LOCAL && remote == REMOTE
                    && *c == DialbackErrorCondition::RemoteServerTimeout
        )),
        "{:?}",
        w.events
    );
    assert!(!w.conn.is_authenticated(LOCAL, REMOTE));
}

#[test]
fn inbound_timeout_waiting_for_header_without_a_header_deadline() {
    let srv = server(PeerPolicy::google());
    let cfg = with_timeouts(&srv, |t| t.stream_header = None);
    let mut w = Wire::inbound(cfg);
    assert_timeout(&mut w);
    assert_closed_with(&w, "negotiation step timed out");
    let Frame::Header(h) = &sent_documents(&w.sent)[0][0] else {
        panic!()
    };
    assert_eq!(h.from.as_deref(), Some(LOCAL));
}

// ----- the peer's first stream header (`Timeouts::stream_header`: 10 s) -----

/// The text of the `connection-timeout` stream error for a header that did not come.
const NO_HEADER: &str = "no stream header in time";

/// `srv`'s configuration with its deadlines changed by `tweak`.
fn with_timeouts(srv: &Server, tweak: impl FnOnce(&mut Timeouts)) -> Arc<S2sConfig> {
    let c = &srv.cfg;
    let mut timeouts = c.timeouts;
    tweak(&mut timeouts);
    Arc::new(S2sConfig {
        local_domains: c.local_domains.clone(),
        certificate_domains: c.certificate_domains.clone(),
        policy: c.policy.clone(),
        dialback_secret: c.dialback_secret.clone(),
        stream_id_key: c.stream_id_key,
        cert_verifier: c.cert_verifier.clone(),
        limits: c.limits,
        timeouts,
        stream_management: None,
    })
}

fn assert_closed_with(w: &Wire, text: &str) {
    assert_eq!(
        w.closed(),
        Some(&CloseReason::SentError(
            StreamCondition::ConnectionTimeout,
            text.into()
        ))
    );
    assert!(
        String::from_utf8_lossy(&w.sent).contains(&format!(">{text}</text>")),
        "{}",
        String::from_utf8_lossy(&w.sent)
    );
}

/// A fresh connection whose peer sends nothing: the header deadline (10 s, before the
/// negotiation step's 30 s) is the earliest in `poll_timeout`; nothing happens until it,
/// and at exactly it the stream is closed with `connection-timeout` and over at once (no
/// closing handshake: no deadline left).
fn assert_header_timeout(w: &mut Wire) {
    let deadline = w.now + Duration::from_secs(10);
    assert_eq!(
        Timeouts::default().stream_header,
        Some(Duration::from_secs(10))
    );
    assert_eq!(w.conn.poll_timeout(), Some(deadline));
    let before = w.sent.len();
    w.advance(Duration::from_secs(10) - Duration::from_nanos(1));
    assert!(w.closed().is_none(), "fired early: {:?}", w.events);
    assert_eq!(w.sent.len(), before, "sent something before the deadline");
    assert_eq!(w.conn.poll_timeout(), Some(deadline));
    w.advance(Duration::from_nanos(1));
    assert_eq!(w.now, deadline);
    assert_stream_error(w, StreamCondition::ConnectionTimeout);
    assert_closed_with(w, NO_HEADER);
    assert_eq!(w.conn.close_reason(), w.closed());
    assert_eq!(
        w.conn.poll_timeout(),
        None,
        "no closing handshake is waited for"
    );
}

#[test]
fn inbound_without_a_header_is_closed_at_the_header_deadline() {
    let srv = server(PeerPolicy::google());
    let mut w = Wire::inbound(srv.cfg.clone());
    assert_header_timeout(&mut w);
    assert!(w.events.iter().all(|e| matches!(e, Event::Closed(_))));
}

#[test]
fn outbound_without_an_answering_header_is_closed_at_the_header_deadline() {
    let srv = server(PeerPolicy::google());
    let mut w = Wire::outbound(srv.cfg.clone(), LOCAL, REMOTE);
    assert_header_timeout(&mut w);
    // One stream document: our header (sent at once), the error, the close.
    assert_eq!(sent_documents(&w.sent).len(), 1);
}

#[test]
fn a_header_in_time_is_not_closed() {
    let srv = server(PeerPolicy::google());
    // Inbound: the initiating server's header just before the deadline.
    let mut w = Wire::inbound(srv.cfg.clone());
    w.advance(Duration::from_secs(10) - Duration::from_nanos(1));
    w.feed(PEER_HEADER.as_bytes());
    assert!(matches!(w.events.as_slice(), [Event::Opened { .. }]));
    let opened_at = w.now;
    // The header deadline is gone; the negotiation step (30 s) runs from the header.
    assert_eq!(
        w.conn.poll_timeout(),
        Some(opened_at + Duration::from_secs(30))
    );
    w.advance(Duration::from_secs(29));
    assert!(w.closed().is_none(), "{:?}", w.events);

    // Outbound: the receiving server's answer.
    let mut w = Wire::outbound(srv.cfg.clone(), LOCAL, REMOTE);
    w.advance(Duration::from_secs(9));
    w.feed(PEER_RESPONSE_HEADER.as_bytes());
    let opened_at = w.now;
    assert_eq!(
        w.conn.poll_timeout(),
        Some(opened_at + Duration::from_secs(30))
    );
    w.advance(Duration::from_secs(2));
    assert!(w.closed().is_none(), "{:?}", w.events);
}

#[test]
fn the_header_deadline_does_not_apply_to_restarted_streams() {
    // After STARTTLS the peer's new header is a negotiation step (30 s), however long
    // after the connection's start it comes.
    let srv = Server::new(LOCAL, PeerPolicy::webex(), &ca(), true);
    let mut w = Wire::inbound(srv.cfg.clone());
    w.feed(PEER_HEADER.as_bytes());
    w.feed(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    assert!(w.events.iter().any(|e| matches!(e, Event::StartTls(_))));
    w.advance(Duration::from_secs(8));
    w.tls_established();
    let restarted_at = w.now;
    assert_eq!(
        w.conn.poll_timeout(),
        Some(restarted_at + Duration::from_secs(30))
    );
    w.advance(Duration::from_secs(29));
    assert!(w.closed().is_none(), "{:?}", w.events);
    w.advance(Duration::from_secs(1));
    assert_closed_with(&w, "negotiation step timed out");
}

#[test]
fn a_header_deadline_after_the_negotiation_step_leaves_it_to_the_step() {
    let srv = server(PeerPolicy::google());
    let cfg = with_timeouts(&srv, |t| t.stream_header = Some(Duration::from_secs(40)));
    let mut w = Wire::inbound(cfg);
    assert_eq!(w.conn.poll_timeout(), Some(w.now + Duration::from_secs(30)));
    w.advance(Duration::from_secs(30));
    assert_closed_with(&w, "negotiation step timed out");
}

/// Until it drops its own header deadline, the runtime (`src/runtime/shard.rs`) closes a
/// header-less inbound stream itself at the same instant: `close()` with the same error,
/// then it reports the same reason. Both write the same bytes, and after the runtime's
/// close the machine's header deadline is gone (the next deadline is the close timeout,
/// not one already past).
#[test]
fn the_runtime_header_close_and_the_machine_agree() {
    let srv = server(PeerPolicy::google());
    let mut machine = Wire::inbound(srv.cfg.clone());
    let mut runtime = Wire::inbound(srv.cfg.clone());
    machine.advance(Duration::from_secs(10));
    runtime.now += Duration::from_secs(10);
    runtime.conn.close(
        Some((StreamCondition::ConnectionTimeout, NO_HEADER)),
        runtime.now,
    );
    runtime.pump();
    assert_eq!(
        String::from_utf8_lossy(&machine.sent),
        String::from_utf8_lossy(&runtime.sent)
    );
    assert_eq!(
        machine.closed(),
        Some(&CloseReason::SentError(
            StreamCondition::ConnectionTimeout,
            NO_HEADER.into()
        ))
    );
    assert_eq!(
        runtime.conn.poll_timeout(),
        Some(runtime.now + Duration::from_secs(5))
    );
}

#[test]
fn inbound_verdict_timeout_is_remote_server_timeout() {
    let srv = server(PeerPolicy::google());
    let mut w = opened(&srv);
    w.feed(
        format!("<db:result from='gmail.test' to='cupdomain.test'>{KEY}</db:result>").as_bytes(),
    );
    assert_eq!(w.verify_needed_since(0).len(), 1);
    assert!(w.advance(Duration::from_secs(29)).is_empty());
    let out = w.advance(Duration::from_secs(2));
    assert_eq!(
        dialback_answer(&with_header(&out)),
        Answer::new("result", "error", LOCAL, REMOTE).condition("remote-server-timeout")
    );
    assert!(w.closed().is_none(), "a dialback error is not fatal");
    // A verdict arriving later is ignored: nothing sent, nothing authenticated.
    assert!(w.verdict(LOCAL, REMOTE, DialbackResult::Valid).is_empty());
    assert!(!w.conn.is_authenticated(LOCAL, REMOTE));
}

#[test]
fn outbound_unanswered_db_verify_is_an_error_result() {
    let srv = server(PeerPolicy::google());
    let mut w = Wire::outbound(srv.cfg.clone(), LOCAL, REMOTE);
    w.feed(PEER_RESPONSE_HEADER.as_bytes());
    w.feed(DIALBACK_ONLY_FEATURES.as_bytes());
    w.feed(b"<db:result from='gmail.test' to='cupdomain.test' type='valid'/>");
    assert!(w.conn.is_authenticated(LOCAL, REMOTE));
    w.advance(Duration::from_secs(10));
    w.conn
        .send_db_verify(LOCAL, "their-stream-7", KEY, w.now)
        .unwrap();
    let out = w.pump();
    let v = elements(&[PEER_HEADER.as_bytes(), &out].concat());
    assert_eq!(v.len(), 1);
    assert_eq!((v[0].name.as_str(), v[0].text.as_str()), ("verify", KEY));
    assert_eq!(v[0].attr("id"), Some("their-stream-7"));
    w.advance(Duration::from_secs(29));
    assert!(!w
        .events
        .iter()
        .any(|e| matches!(e, Event::VerifyAnswered { .. })));
    w.advance(Duration::from_secs(2));
    let answered: Vec<&Event> = w
        .events
        .iter()
        .filter(|e| matches!(e, Event::VerifyAnswered { .. }))
        .collect();
    assert!(
        matches!(
            answered.as_slice(),
            [Event::VerifyAnswered { local, remote, stream_id, result: DialbackResult::Error(_) }]
                if local == LOCAL && remote == REMOTE && stream_id == "their-stream-7"
        ),
        "{:?}",
        w.events
    );
    // The stream itself is fine: the authenticated pair still sends.
    w.conn
        .send_stanza(LOCAL, REMOTE, b"<presence/>", w.now)
        .unwrap();
}

#[test]
fn starttls_is_not_accepted_when_not_offered() {
    // Plain-only policy: <starttls/> anyway gets <failure/> and the stream ends.
    let srv = server(PeerPolicy::google());
    let mut w = opened(&srv);
    let out = w.feed(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    let s = String::from_utf8_lossy(&out);
    assert!(
        s.starts_with("<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"),
        "{s}"
    );
    assert!(s.ends_with("</stream:stream>"), "{s}");
    assert!(!w
        .events
        .iter()
        .any(|e| matches!(e, Event::StartTls(TlsRole::Server))));
    assert!(w.conn.is_closed());
}

#[test]
fn unsolicited_dialback_answers_authenticate_nothing() {
    // XEP-0220 §4.1 (Unsolicited Dialback): answers without a matching request, in an
    // unexpected direction, must not authenticate anything.
    let srv = server(PeerPolicy::google());
    for answer in [
        "<db:result from='gmail.test' to='cupdomain.test' type='valid'/>",
        "<db:verify from='gmail.test' to='cupdomain.test' id='x' type='valid'/>",
    ] {
        // On an inbound stream: a typed element is never a request.
        let mut w = opened(&srv);
        w.feed(answer.as_bytes());
        w.feed(b"<presence from='jdoe1@gmail.test' to='cupuser1@cupdomain.test'/>");
        assert_eq!(w.conn.authenticated().count(), 0, "{answer}");
        assert!(!w
            .events
            .iter()
            .any(|e| matches!(e, Event::Authenticated { .. })));
        assert!(w.stanzas().is_empty(), "{answer}");
        assert!(w.closed().is_some(), "{answer}");
    }
    // On an outbound stream: a valid result for a pair we never asked about.
    let mut w = Wire::outbound(srv.cfg.clone(), LOCAL, REMOTE);
    w.feed(PEER_RESPONSE_HEADER.as_bytes());
    w.feed(DIALBACK_ONLY_FEATURES.as_bytes());
    w.feed(b"<db:result from='gmail.test' to='second.test' type='valid'/>");
    w.feed(b"<db:result from='other.test' to='cupdomain.test' type='valid'/>");
    w.feed(b"<db:verify from='gmail.test' to='cupdomain.test' id='never-asked' type='valid'/>");
    assert_eq!(w.conn.authenticated().count(), 0);
    assert!(!w.events.iter().any(|e| matches!(
        e,
        Event::Authenticated { .. } | Event::VerifyAnswered { .. }
    )));
    assert!(w
        .conn
        .send_stanza("second.test", REMOTE, b"<presence/>", w.now)
        .is_err());
    // The real answer still works.
    w.feed(b"<db:result from='gmail.test' to='cupdomain.test' type='valid'/>");
    assert!(w.conn.is_authenticated(LOCAL, REMOTE));
}

#[test]
fn header_without_to_is_host_unknown() {
    // RFC 6120 §4.7.2: the initiating server names the domain it wants in `to`; without
    // it we cannot tell which of our domains is meant.
    let srv = server(PeerPolicy::google());
    let mut w = Wire::inbound(srv.cfg.clone());
    w.feed(header_with("xmlns='jabber:server' from='gmail.test' version='1.0'").as_bytes());
    assert_stream_error(&w, StreamCondition::HostUnknown);
}

#[test]
fn unauthenticated_inbound_stream_times_out() {
    let srv = server(PeerPolicy::google());
    let mut w = opened(&srv);
    let t = w.now + std::time::Duration::from_secs(31);
    w.conn.handle_timeout(t);
    w.pump();
    assert_stream_error(&w, StreamCondition::ConnectionTimeout);
}

#[test]
fn starttls_after_dialback_does_not_keep_the_plaintext_authentication() {
    // A peer authenticates by dialback on plain TCP (TLS optional and offered), then
    // upgrades. After the TLS restart the pre-TLS state must be discarded (or the late
    // STARTTLS refused): a stanza on the new stream without a new dialback is not
    // accepted.
    let srv = Server::new(LOCAL, PeerPolicy::webex(), &ca(), true);
    let mut w = authenticated(&srv);
    let out = w.feed(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    if w.events.contains(&Event::StartTls(TlsRole::Server)) {
        assert_eq!(out, b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        w.tls_established();
        w.feed(PEER_HEADER.as_bytes());
        assert_eq!(
            w.conn.authenticated().count(),
            0,
            "pairs authenticated before TLS kept after the restart"
        );
    }
    w.feed(b"<presence from='jdoe1@gmail.test' to='cupuser1@cupdomain.test'/>");
    assert!(
        w.stanzas().is_empty(),
        "stanza accepted on the upgraded stream without re-authentication"
    );
}

// ----- a failed outbound dialback, at once (XEP-0220 §2.1.1) -----

/// An outbound stream from cupdomain.test whose `db:result` waits for gmail.test's answer.
fn awaiting_dialback_answer() -> Wire {
    let srv = server(PeerPolicy::google());
    let mut w = Wire::outbound(srv.cfg.clone(), LOCAL, REMOTE);
    w.feed(PEER_RESPONSE_HEADER.as_bytes());
    w.feed(DIALBACK_ONLY_FEATURES.as_bytes());
    assert_eq!(w.conn.pending_dialbacks().collect::<Vec<_>>(), vec![LOCAL]);
    assert!(w.conn.awaits_dialback_answers());
    w
}

fn auth_failures(w: &Wire) -> Vec<(String, String, DialbackResult)> {
    w.events
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

#[test]
fn stream_error_while_our_db_result_waits_fails_the_pair_with_the_reason() {
    // The peer refuses with a stream error instead of answering: the pair fails in the
    // same step (no timer), and the stream says why, which decides the bounce condition.
    let mut w = awaiting_dialback_answer();
    w.feed(
        b"<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
          </stream:error></stream:stream>",
    );
    assert_eq!(
        auth_failures(&w),
        vec![(
            LOCAL.to_owned(),
            REMOTE.to_owned(),
            DialbackResult::Error(DialbackErrorCondition::RemoteServerTimeout)
        )]
    );
    let reason = w.conn.close_reason().expect("ended").clone();
    assert_eq!(
        reason,
        CloseReason::ReceivedError(StreamCondition::NotAuthorized, None)
    );
    assert_eq!(w.closed(), Some(&reason));
    assert_eq!(
        reason.bounce_condition(),
        fedrouter::condition::StanzaCondition::RemoteServerNotFound
    );
    assert_eq!(w.conn.pending_dialbacks().count(), 0);
}

#[test]
fn fail_dialback_ends_the_wait_and_a_late_answer_is_ignored() {
    let mut w = awaiting_dialback_answer();
    let result = DialbackResult::Error(DialbackErrorCondition::RemoteServerNotFound);
    assert!(w.conn.fail_dialback(LOCAL, result));
    w.pump();
    assert_eq!(
        auth_failures(&w),
        vec![(LOCAL.to_owned(), REMOTE.to_owned(), result)]
    );
    assert_eq!(w.conn.pending_dialbacks().count(), 0);
    assert!(!w.conn.awaits_dialback_answers());
    assert!(
        w.closed().is_none(),
        "the stream itself is the runtime's to close"
    );
    // Not pending any more: nothing to fail, and a late `valid` authenticates nothing.
    assert!(!w.conn.fail_dialback(LOCAL, result));
    w.feed(b"<db:result from='gmail.test' to='cupdomain.test' type='valid'/>");
    assert!(!w.conn.is_authenticated(LOCAL, REMOTE));
    assert_eq!(auth_failures(&w).len(), 1);
    // Only outbound streams wait for answers.
    let srv = server(PeerPolicy::google());
    let mut inbound = opened(&srv);
    assert!(!inbound.conn.fail_dialback(LOCAL, result));
    assert_eq!(inbound.conn.pending_dialbacks().count(), 0);
}

#[test]
fn close_reasons_bounce_with_not_found_or_timeout() {
    // RFC 6120 §8.3.3.15 / §8.3.3.16: whether the sender may retry later.
    use fedrouter::condition::StanzaCondition::{RemoteServerNotFound, RemoteServerTimeout};
    let cases = [
        (CloseReason::PeerClosed, RemoteServerNotFound),
        (CloseReason::Local, RemoteServerNotFound),
        (
            CloseReason::TlsFailed("bad cert".into()),
            RemoteServerNotFound,
        ),
        (
            CloseReason::ReceivedError(StreamCondition::NotAuthorized, None),
            RemoteServerNotFound,
        ),
        (
            CloseReason::ReceivedError(StreamCondition::PolicyViolation, Some("tls".into())),
            RemoteServerNotFound,
        ),
        (
            CloseReason::ReceivedError(StreamCondition::HostUnknown, None),
            RemoteServerNotFound,
        ),
        (
            CloseReason::SentError(StreamCondition::InvalidFrom, String::new()),
            RemoteServerNotFound,
        ),
        (CloseReason::CloseTimeout, RemoteServerTimeout),
        (
            CloseReason::SentError(StreamCondition::ConnectionTimeout, String::new()),
            RemoteServerTimeout,
        ),
        (
            CloseReason::ReceivedError(StreamCondition::ConnectionTimeout, None),
            RemoteServerTimeout,
        ),
        (
            CloseReason::ReceivedError(StreamCondition::SystemShutdown, None),
            RemoteServerTimeout,
        ),
        (
            CloseReason::ReceivedError(StreamCondition::ResourceConstraint, None),
            RemoteServerTimeout,
        ),
        (
            CloseReason::ReceivedError(StreamCondition::Reset, None),
            RemoteServerTimeout,
        ),
    ];
    for (reason, cond) in cases {
        assert_eq!(reason.bounce_condition(), cond, "{reason:?}");
    }
}

#[test]
fn dialback_requests_are_counted_on_inbound_streams() {
    // The runtime tells a verification connection that broke off before asking anything
    // from one that carried a dialback exchange.
    let srv = server(PeerPolicy::google());
    let mut w = opened(&srv);
    assert_eq!(w.conn.dialback_requests_received(), 0);
    w.feed(
        format!("<db:result from='gmail.test' to='cupdomain.test'>{KEY}</db:result>").as_bytes(),
    );
    assert_eq!(w.conn.dialback_requests_received(), 1);
    w.feed(
        format!("<db:verify from='gmail.test' to='cupdomain.test' id='i1'>{KEY}</db:verify>")
            .as_bytes(),
    );
    assert_eq!(w.conn.dialback_requests_received(), 2);
    // A request for a domain we do not host still counts: it was a dialback exchange.
    w.feed(
        format!("<db:verify from='gmail.test' to='other.test' id='i2'>{KEY}</db:verify>")
            .as_bytes(),
    );
    assert_eq!(w.conn.dialback_requests_received(), 3);
}
