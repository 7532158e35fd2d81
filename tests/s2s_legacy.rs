//! Pre-XMPP-1.0 ("legacy") S2S peers against our state machine, in memory with a
//! simulated clock: servers whose stream headers carry no `version` (RFC 6120 §4.7.5) and,
//! as RFC 3920 and the original dialback protocol allowed, no `to` and no `from`, and
//! that send `db:result` / `db:verify` right after the header (XEP-0220 §2.4.1: dialback
//! announced by the `xmlns:db` declaration, no stream features).
//!
//! [`LegacyPeer`] plays gmail.test's server in every XEP-0220 role with its own secret,
//! byte for byte, against our inbound and outbound [`Wire`]s: keys are really computed
//! and really checked both ways. What is checked: such a peer federates both ways; every
//! check on the dialback elements' and the stanzas' `to` and `from` still holds; we send
//! it no features and accept no STARTTLS from it; a policy that needs TLS or SASL
//! EXTERNAL for it refuses it with `policy-violation`, whichever side opened the stream.

mod common;

use common::pair::{sent_documents, Server, Wire};
use fedrouter::condition::StreamCondition;
use fedrouter::dialback::{DialbackResult, DialbackSecret};
use fedrouter::stream::{
    AuthMethod, AuthPolicy, CloseReason, Direction, Event, FederationPolicy, PeerPolicy, TlsPolicy,
    TlsRole,
};
use fedrouter::xml::tree::Node;
use fedrouter::xml::writer::STREAM_CLOSE;
use fedrouter::xml::{ns, Frame, Namespace, StreamHeader};
use fedrouter_testkit::TestCa;

/// Our domain.
const LOCAL: &str = "cupdomain.test";
/// The legacy peer's domain.
const REMOTE: &str = "gmail.test";

/// The legacy initial header of the issue: no `version`, no `to`, no `from`.
const LEGACY_HEADER: &str = "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' \
    xmlns='jabber:server' xmlns:db='jabber:server:dialback'>";

/// gmail.test's server, pre-XMPP 1.0: it speaks only the original dialback protocol.
struct LegacyPeer {
    secret: DialbackSecret,
}

impl LegacyPeer {
    fn new() -> LegacyPeer {
        LegacyPeer {
            secret: DialbackSecret::new("gmail.test's legacy secret"),
        }
    }

    /// Its answering header on a stream we opened: an id, and again no `version`.
    fn response_header(id: &str) -> String {
        format!(
            "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' \
             xmlns='jabber:server' xmlns:db='jabber:server:dialback' id='{id}'>"
        )
    }

    /// As Initiating Server: its key for a stream to `receiving` with our id.
    fn key(&self, receiving: &str, stream_id: &str) -> String {
        self.secret.key(receiving, REMOTE, stream_id)
    }

    /// As Authoritative Server: its verdict on a key we were given (XEP-0220 §2.2.2).
    fn verdict(&self, receiving: &str, stream_id: &str, key: &str) -> DialbackResult {
        if self.secret.verify(receiving, REMOTE, stream_id, key) {
            DialbackResult::Valid
        } else {
            DialbackResult::Invalid
        }
    }
}

fn ca() -> TestCa {
    TestCa::new("fedrouter legacy test CA").unwrap()
}

fn server(policy: PeerPolicy) -> Server {
    Server::new(LOCAL, policy, &ca(), false)
}

/// Elements (not headers, not closes) of what a connection sent after `header`, which
/// declares the prefixes they use.
fn elements_after(header: &str, out: &[u8]) -> Vec<Node> {
    sent_documents(&[header.as_bytes(), out].concat())
        .into_iter()
        .flatten()
        .filter_map(|f| match f {
            Frame::Element(e) => Some(Node::parse(&e).unwrap()),
            _ => None,
        })
        .collect()
}

/// The one dialback element in `out`: (name, from, to, type, error condition).
fn dialback_element(out: &[u8]) -> (String, String, String, Option<String>, Option<String>) {
    let els = elements_after(LEGACY_HEADER, out);
    assert_eq!(els.len(), 1, "{:?}", String::from_utf8_lossy(out));
    let n = &els[0];
    assert_eq!(n.ns, ns::DIALBACK, "{:?}", String::from_utf8_lossy(out));
    (
        n.name.clone(),
        n.attr("from").unwrap_or_default().to_owned(),
        n.attr("to").unwrap_or_default().to_owned(),
        n.attr("type").map(str::to_owned),
        n.children
            .iter()
            .find(|c| c.name == "error")
            .and_then(|e| e.children.iter().find(|c| c.ns == ns::STANZA_ERRORS))
            .map(|c| c.name.clone()),
    )
}

/// Our header in `sent` (the first frame of the first document).
fn our_header(sent: &[u8]) -> StreamHeader {
    match &sent_documents(sent)[0][0] {
        Frame::Header(h) => h.clone(),
        other => panic!("we sent {other:?} before a header"),
    }
}

/// Checks that the stream ended with our stream error `cond` after our header, as
/// RFC 6120 §4.9.1.2 wants, and nothing else was sent or delivered.
fn assert_refused(w: &Wire, cond: StreamCondition) {
    let sent = String::from_utf8_lossy(&w.sent).into_owned();
    assert!(
        matches!(w.closed(), Some(CloseReason::SentError(c, _)) if *c == cond),
        "expected SentError({cond:?}): {:?}; sent {sent}",
        w.events
    );
    assert!(w.conn.is_closed());
    assert!(w.sent.ends_with(STREAM_CLOSE), "{sent}");
    let docs = sent_documents(&w.sent);
    let doc = docs.last().unwrap();
    assert!(matches!(doc.first(), Some(Frame::Header(_))), "{sent}");
    let Some(Frame::Element(err)) = doc.get(doc.len() - 2) else {
        panic!("no stream error: {sent}")
    };
    assert!(err.is("error", &Namespace::Streams), "{sent}");
    let node = Node::parse(err).unwrap();
    assert!(
        node.children
            .iter()
            .any(|c| c.ns == ns::STREAM_ERRORS && c.name == cond.as_str()),
        "{sent}"
    );
    assert!(!sent.contains("<stream:features"), "{sent}");
    assert!(w.stanzas().is_empty());
    assert!(!w
        .events
        .iter()
        .any(|e| matches!(e, Event::Authenticated { .. } | Event::VerifyNeeded { .. })));
}

/// Our inbound stream from the legacy peer, header exchanged: checks our answer has no
/// `version`, no `from` or `to` (there was no `to` to echo) and no features.
fn legacy_inbound(srv: &Server) -> Wire {
    let mut w = Wire::inbound(srv.cfg.clone());
    let out = w.feed(LEGACY_HEADER.as_bytes());
    let h = our_header(&out);
    assert_eq!(
        (h.version.as_deref(), h.from.as_deref(), h.to.as_deref()),
        (None, None, None),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    assert!(h.declares_dialback());
    assert_eq!(h.id.as_deref(), Some(w.conn.stream_id()));
    assert!(
        !String::from_utf8_lossy(&out).contains("features"),
        "features sent to a pre-1.0 peer: {:?}",
        String::from_utf8_lossy(&out)
    );
    assert!(w.conn.is_legacy());
    assert_eq!(
        w.events,
        vec![Event::Opened {
            local: String::new(),
            remote: None,
            stream_id: w.conn.stream_id().to_owned(),
        }]
    );
    w
}

/// [`legacy_inbound`], then the peer's `db:result` for (`LOCAL`, `REMOTE`) verified with
/// its authoritative server (the peer itself): authenticated.
fn legacy_authenticated(srv: &Server, peer: &LegacyPeer) -> Wire {
    let mut w = legacy_inbound(srv);
    let id = w.conn.stream_id().to_owned();
    let key = peer.key(LOCAL, &id);
    let out =
        w.feed(format!("<db:result to='{LOCAL}' from='{REMOTE}'>{key}</db:result>").as_bytes());
    assert!(out.is_empty(), "answered before the verdict");
    let needed = w.verify_needed_since(0);
    assert_eq!(
        needed,
        vec![(LOCAL.to_owned(), REMOTE.to_owned(), id.clone(), key.clone())]
    );
    let out = w.verdict(LOCAL, REMOTE, peer.verdict(LOCAL, &id, &key));
    assert_eq!(
        dialback_element(&out),
        (
            "result".to_owned(),
            LOCAL.to_owned(),
            REMOTE.to_owned(),
            Some("valid".to_owned()),
            None
        )
    );
    assert!(w.events.contains(&Event::Authenticated {
        local: LOCAL.into(),
        remote: REMOTE.into(),
        method: AuthMethod::Dialback,
        direction: Direction::Inbound,
    }));
    w
}

// ----- both directions, plain -----

/// The scenario of the issue, both ways. gmail.test (legacy) opens a stream with the
/// version-less header and sends its `db:result` at once; we verify its key with its
/// authoritative server over our outbound stream, which it also answers with a
/// version-less header; we go straight to dialback there (no features to wait for) and
/// it verifies our key over a verification connection that names no domain either.
/// Then stanzas flow both ways.
#[test]
fn legacy_peer_federates_both_ways() {
    let srv = server(PeerPolicy::google());
    let peer = LegacyPeer::new();

    // gmail.test → cupdomain.test: its stream to us.
    let mut inbound = legacy_inbound(&srv);
    let in_id = inbound.conn.stream_id().to_owned();
    let in_key = peer.key(LOCAL, &in_id);
    inbound
        .feed(format!("<db:result to='{LOCAL}' from='{REMOTE}'>{in_key}</db:result>").as_bytes());
    assert_eq!(inbound.verify_needed_since(0).len(), 1);

    // cupdomain.test → gmail.test: our stream to it, on which we also ask its
    // authoritative side about the key (XEP-0220 §2.1.2).
    let mut outbound = Wire::outbound(srv.cfg.clone(), LOCAL, REMOTE);
    outbound
        .conn
        .send_db_verify(LOCAL, &in_id, &in_key, outbound.now)
        .unwrap();
    assert!(
        outbound.pump().is_empty(),
        "db:verify before the peer's header"
    );
    let out = outbound.feed(LegacyPeer::response_header("L-1").as_bytes());
    // No features come: our db:result and the queued db:verify go out at once.
    let els = elements_after(LEGACY_HEADER, &out);
    let names: Vec<(&str, Option<&str>, Option<&str>)> = els
        .iter()
        .map(|n| (n.name.as_str(), n.attr("from"), n.attr("to")))
        .collect();
    assert_eq!(
        names,
        vec![
            ("result", Some(LOCAL), Some(REMOTE)),
            ("verify", Some(LOCAL), Some(REMOTE))
        ],
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    let our_key = els[0].text.clone();
    assert_eq!(
        our_key,
        srv.cfg.dialback_secret.key(REMOTE, LOCAL, "L-1"),
        "XEP-0185 key over the legacy peer's stream id"
    );
    assert_eq!(els[1].attr("id"), Some(in_id.as_str()));
    assert_eq!(els[1].text, in_key);

    // The legacy peer, as authoritative server, answers our db:verify...
    let verdict = peer.verdict(LOCAL, &in_id, &els[1].text);
    assert_eq!(verdict, DialbackResult::Valid);
    outbound.feed(
        format!("<db:verify from='{REMOTE}' to='{LOCAL}' id='{in_id}' type='valid'/>").as_bytes(),
    );
    assert!(outbound.events.contains(&Event::VerifyAnswered {
        local: LOCAL.into(),
        remote: REMOTE.into(),
        stream_id: in_id.clone(),
        result: DialbackResult::Valid,
    }));
    // ...which we relay to its stream: authenticated inbound.
    let out = inbound.verdict(LOCAL, REMOTE, DialbackResult::Valid);
    assert_eq!(dialback_element(&out).3.as_deref(), Some("valid"));
    assert!(inbound.conn.is_authenticated(LOCAL, REMOTE));

    // As receiving server it checks our key over its verification connection to us,
    // whose header names no domain.
    let mut verification = legacy_inbound(&srv);
    let out = verification.feed(
        format!("<db:verify from='{REMOTE}' to='{LOCAL}' id='L-1'>{our_key}</db:verify>")
            .as_bytes(),
    );
    let (name, from, to, ty, _) = dialback_element(&out);
    assert_eq!(
        (name.as_str(), from.as_str(), to.as_str(), ty.as_deref()),
        ("verify", LOCAL, REMOTE, Some("valid"))
    );
    assert_eq!(
        elements_after(LEGACY_HEADER, &out)[0].attr("id"),
        Some("L-1")
    );
    // A key that is not ours (another stream id) is invalid, as for any peer.
    let out = verification.feed(
        format!("<db:verify from='{REMOTE}' to='{LOCAL}' id='L-9'>{our_key}</db:verify>")
            .as_bytes(),
    );
    assert_eq!(dialback_element(&out).3.as_deref(), Some("invalid"));
    verification.feed(b"</stream:stream>");
    assert_eq!(verification.closed(), Some(&CloseReason::PeerClosed));
    // The verification connection authenticated nothing.
    assert_eq!(verification.conn.authenticated().count(), 0);

    // It tells our outbound stream: authenticated outbound.
    outbound.feed(format!("<db:result from='{REMOTE}' to='{LOCAL}' type='valid'/>").as_bytes());
    assert!(outbound.events.contains(&Event::Authenticated {
        local: LOCAL.into(),
        remote: REMOTE.into(),
        method: AuthMethod::Dialback,
        direction: Direction::Outbound,
    }));

    // Stanzas both ways.
    let ours =
        b"<presence from='cupuser1@cupdomain.test/r' to='jdoe1@gmail.test' type='subscribe'/>";
    outbound
        .conn
        .send_stanza(LOCAL, REMOTE, ours, outbound.now)
        .unwrap();
    assert_eq!(outbound.pump(), ours);
    let theirs =
        "<presence from='jdoe1@gmail.test' to='cupuser1@cupdomain.test' type='subscribed'/>";
    inbound.feed(theirs.as_bytes());
    assert_eq!(inbound.stanzas(), vec![theirs.to_owned()]);
    assert!(inbound.closed().is_none() && outbound.closed().is_none());
    // Neither side ever saw or sent features or STARTTLS.
    for w in [&inbound, &outbound] {
        let sent = String::from_utf8_lossy(&w.sent);
        assert!(
            !sent.contains("features") && !sent.contains("starttls"),
            "{sent}"
        );
        assert!(!w.events.iter().any(|e| matches!(e, Event::StartTls(_))));
    }
}

/// On a legacy stream the domains come from the dialback elements, and every check on
/// them stays: a key for a domain we do not host gets the XEP-0220 §2.5 `item-not-found`
/// dialback error (the stream stays, as for any peer), and so does a `db:verify` for one.
#[test]
fn legacy_dialback_to_a_domain_we_do_not_host_is_item_not_found() {
    let srv = server(PeerPolicy::google());
    let peer = LegacyPeer::new();
    let mut w = legacy_inbound(&srv);
    let key = peer.key("other.test", w.conn.stream_id());
    let out =
        w.feed(format!("<db:result to='other.test' from='{REMOTE}'>{key}</db:result>").as_bytes());
    assert_eq!(
        dialback_element(&out),
        (
            "result".to_owned(),
            "other.test".to_owned(),
            REMOTE.to_owned(),
            Some("error".to_owned()),
            Some("item-not-found".to_owned())
        )
    );
    assert!(w.verify_needed_since(0).is_empty());
    let out = w.feed(
        format!("<db:verify from='{REMOTE}' to='other.test' id='x'>{key}</db:verify>").as_bytes(),
    );
    assert_eq!(
        dialback_element(&out),
        (
            "verify".to_owned(),
            "other.test".to_owned(),
            REMOTE.to_owned(),
            Some("error".to_owned()),
            Some("item-not-found".to_owned())
        )
    );
    assert!(w.closed().is_none(), "a dialback error is not fatal");
    assert_eq!(w.conn.authenticated().count(), 0);
    // A dialback element without from or to is still improper addressing.
    w.feed(b"<db:result to='cupdomain.test'>00</db:result>");
    assert!(matches!(
        w.closed(),
        Some(CloseReason::SentError(
            StreamCondition::ImproperAddressing,
            _
        ))
    ));
}

/// Stanzas on an authenticated legacy stream: only from the authenticated domain, only to
/// the domain it authenticated for (RFC 6120 §8.1.1.2, XEP-0220 §2.1.4), and one before
/// authentication is refused.
#[test]
fn legacy_stream_keeps_every_stanza_check() {
    let srv = server(PeerPolicy::google());
    let peer = LegacyPeer::new();
    let cases: &[(&str, &str, StreamCondition)] = &[
        (
            "from a domain it did not authenticate",
            "<message from='x@evil.test' to='cupuser1@cupdomain.test'><body>spoof</body></message>",
            StreamCondition::InvalidFrom,
        ),
        (
            "to a domain we do not host",
            "<message from='jdoe1@gmail.test' to='y@other.test'><body>relay</body></message>",
            StreamCondition::HostUnknown,
        ),
        (
            "without from",
            "<message to='cupuser1@cupdomain.test'><body>?</body></message>",
            StreamCondition::ImproperAddressing,
        ),
    ];
    for (what, stanza, cond) in cases {
        let mut w = legacy_authenticated(&srv, &peer);
        w.feed(stanza.as_bytes());
        assert!(w.stanzas().is_empty(), "{what}: delivered");
        assert!(
            matches!(w.closed(), Some(CloseReason::SentError(c, _)) if c == cond),
            "{what}: {:?}",
            w.closed()
        );
    }
    // Before authentication: not-authorized.
    let mut w = legacy_inbound(&srv);
    w.feed(b"<message from='jdoe1@gmail.test' to='cupuser1@cupdomain.test'/>");
    assert!(w.stanzas().is_empty());
    assert!(matches!(
        w.closed(),
        Some(CloseReason::SentError(StreamCondition::NotAuthorized, _))
    ));
    // And the good one is delivered.
    let mut w = legacy_authenticated(&srv, &peer);
    let ok =
        "<message from='jdoe1@gmail.test/r' to='cupuser1@cupdomain.test'><body>hi</body></message>";
    w.feed(ok.as_bytes());
    assert_eq!(w.stanzas(), vec![ok.to_owned()]);
}

/// A legacy header that names a `to` we do not host is still `host-unknown`, and so is a
/// version 1.0 header without `to` (RFC 6120 §4.7.2 makes it a MUST since XMPP 1.0;
/// only pre-1.0 headers may omit it).
#[test]
fn a_wrong_or_missing_to_is_still_host_unknown() {
    let srv = server(PeerPolicy::google());
    for header in [
        "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:server' \
         xmlns:db='jabber:server:dialback' to='other.test'>",
        "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:server' \
         xmlns:db='jabber:server:dialback' from='gmail.test' version='1.0'>",
    ] {
        let mut w = Wire::inbound(srv.cfg.clone());
        w.feed(header.as_bytes());
        assert_refused(&w, StreamCondition::HostUnknown);
    }
    // A legacy header with a `to` we host is accepted as before, `to` echoed as `from`.
    let mut w = Wire::inbound(srv.cfg.clone());
    let out = w.feed(
        b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:server' \
          xmlns:db='jabber:server:dialback' to='cupdomain.test'>",
    );
    let h = our_header(&out);
    assert_eq!(
        (h.from.as_deref(), h.version.as_deref()),
        (Some(LOCAL), None)
    );
    assert!(w.closed().is_none());
}

// ----- TLS and SASL policy: a legacy peer cannot be offered either -----

/// A policy with `tls = "required"` (or SASL EXTERNAL only) for every peer refuses a
/// version-less header at once with `policy-violation`: no features means no STARTTLS
/// and no SASL can ever happen on that stream (RFC 6120 §4.7.5).
#[test]
fn legacy_header_with_tls_required_is_refused_cleanly() {
    let required_dialback = PeerPolicy {
        tls: TlsPolicy::Required,
        auth: AuthPolicy::Dialback,
        verify_certificates: false,
        allow: true,
        bidi: true,
        multiplex: true,
    };
    let external_only = PeerPolicy {
        tls: TlsPolicy::Optional,
        auth: AuthPolicy::SaslExternal,
        verify_certificates: true,
        allow: true,
        bidi: true,
        multiplex: true,
    };
    for policy in [required_dialback, PeerPolicy::strict(), external_only] {
        let srv = Server::new(LOCAL, policy, &ca(), true);
        let mut w = Wire::inbound(srv.cfg.clone());
        w.feed(LEGACY_HEADER.as_bytes());
        assert_refused(&w, StreamCondition::PolicyViolation);
        let h = our_header(&w.sent);
        assert_eq!(
            h.version, None,
            "{policy:?}: our header must stay pre-1.0 too"
        );
    }
    // Over XEP-0368 direct TLS the socket already is TLS: the same header is accepted
    // when dialback is allowed (and refused when only SASL EXTERNAL is).
    for (policy, accepted) in [(required_dialback, true), (external_only, false)] {
        let srv = Server::new(LOCAL, policy, &ca(), true);
        let now = std::time::Instant::now();
        let mut w = Wire {
            conn: fedrouter::stream::S2sConnection::inbound(
                srv.cfg.clone(),
                1,
                Some((Vec::new(), rustls::pki_types::UnixTime::now())),
                now,
            ),
            now,
            sent: Vec::new(),
            events: Vec::new(),
        };
        w.feed(LEGACY_HEADER.as_bytes());
        if accepted {
            assert!(w.closed().is_none(), "{policy:?}: {:?}", w.events);
            w.feed(b"<db:result to='cupdomain.test' from='gmail.test'>00</db:result>");
            assert_eq!(w.verify_needed_since(0).len(), 1, "{policy:?}");
        } else {
            assert_refused(&w, StreamCondition::PolicyViolation);
        }
    }
}

/// With per-domain policy the peer is known only from its `db:result`: a stream without
/// `from` is accepted when some policy could take it, and then each claimed domain gets
/// its own policy; one that needs TLS refuses the stream with `policy-violation`. A
/// header that names the domain is judged at once.
#[test]
fn legacy_stream_is_judged_by_the_claimed_domains_policy() {
    let mut policy = FederationPolicy {
        default: PeerPolicy::strict(),
        ..Default::default()
    };
    policy.domains.insert(REMOTE.into(), PeerPolicy::google());
    let srv = Server::with_policy(LOCAL, policy, &ca(), true);
    let peer = LegacyPeer::new();

    // gmail.test may use plain dialback: authenticated on the legacy stream.
    let w = legacy_authenticated(&srv, &peer);
    assert!(w.conn.is_authenticated(LOCAL, REMOTE));

    // strict.test falls under the default (TLS + SASL EXTERNAL): refused.
    let mut w = legacy_inbound(&srv);
    w.feed(b"<db:result to='cupdomain.test' from='strict.test'>00</db:result>");
    assert_refused(&w, StreamCondition::PolicyViolation);

    // A legacy header naming strict.test is refused at once.
    let mut w = Wire::inbound(srv.cfg.clone());
    w.feed(
        b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:server' \
          xmlns:db='jabber:server:dialback' from='strict.test'>",
    );
    assert_refused(&w, StreamCondition::PolicyViolation);
}

/// TLS optional and a certificate to offer: a legacy peer still gets no features, and a
/// `<starttls/>` it sends anyway is refused (we offered nothing), the stream ends.
#[test]
fn legacy_peer_is_not_offered_or_granted_starttls() {
    let srv = Server::new(LOCAL, PeerPolicy::webex(), &ca(), true);
    let mut w = Wire::inbound(srv.cfg.clone());
    let out = w.feed(
        b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:server' \
          xmlns:db='jabber:server:dialback' to='cupdomain.test'>",
    );
    assert!(!String::from_utf8_lossy(&out).contains("features"));
    let out = w.feed(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    let s = String::from_utf8_lossy(&out);
    assert!(
        s.starts_with("<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"),
        "{s}"
    );
    assert!(w.conn.is_closed());
    assert!(!w
        .events
        .iter()
        .any(|e| matches!(e, Event::StartTls(TlsRole::Server))));
    // And no SASL either.
    let mut w = Wire::inbound(srv.cfg.clone());
    w.feed(LEGACY_HEADER.as_bytes());
    let out =
        w.feed(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>");
    assert!(
        String::from_utf8_lossy(&out).contains("<failure"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(w.conn.authenticated().count(), 0);
}

/// Our outbound side: when the peer answers our header with a version-less header, no
/// features will come, so we do not wait for them: dialback starts at once when policy
/// allows plain dialback (TLS optional or disabled), and the stream is closed with
/// `policy-violation` when policy needs TLS or SASL EXTERNAL for the peer (nothing sent
/// but the error; no key leaves in plaintext).
#[test]
fn outbound_to_a_legacy_peer_follows_policy() {
    for (policy, dialback) in [
        (PeerPolicy::google(), true),
        (PeerPolicy::webex(), true),
        (PeerPolicy::default(), true),
        (PeerPolicy::strict(), false),
        (
            PeerPolicy {
                tls: TlsPolicy::Required,
                auth: AuthPolicy::Dialback,
                verify_certificates: false,
                allow: true,
                bidi: true,
                multiplex: true,
            },
            false,
        ),
        (
            PeerPolicy {
                tls: TlsPolicy::Optional,
                auth: AuthPolicy::SaslExternal,
                verify_certificates: true,
                allow: true,
                bidi: true,
                multiplex: true,
            },
            false,
        ),
    ] {
        let srv = Server::new(LOCAL, policy, &ca(), true);
        let mut w = Wire::outbound(srv.cfg.clone(), LOCAL, REMOTE);
        let out = w.feed(LegacyPeer::response_header("L-2").as_bytes());
        let text = String::from_utf8_lossy(&out).into_owned();
        assert!(!text.contains("starttls"), "{policy:?}: {text}");
        if dialback {
            let (name, from, to, ty, _) = dialback_element(&out);
            assert_eq!(
                (name.as_str(), from.as_str(), to.as_str(), ty),
                ("result", LOCAL, REMOTE, None),
                "{policy:?}"
            );
            assert_eq!(w.conn.pending_dialbacks().collect::<Vec<_>>(), vec![LOCAL]);
            assert!(w.closed().is_none(), "{policy:?}");
        } else {
            assert!(!text.contains("db:result"), "{policy:?}: key sent: {text}");
            assert!(
                matches!(
                    w.closed(),
                    Some(CloseReason::SentError(StreamCondition::PolicyViolation, _))
                ),
                "{policy:?}: {:?}",
                w.events
            );
        }
    }
}

/// The simulated clock: a legacy stream that never authenticates is closed with
/// `connection-timeout` after the negotiation deadline (30 s), like any other.
#[test]
fn legacy_stream_that_never_authenticates_times_out() {
    let srv = server(PeerPolicy::google());
    let mut w = legacy_inbound(&srv);
    assert!(w.advance(std::time::Duration::from_secs(29)).is_empty());
    assert!(w.closed().is_none());
    w.advance(std::time::Duration::from_secs(2));
    assert_refused(&w, StreamCondition::ConnectionTimeout);
}
