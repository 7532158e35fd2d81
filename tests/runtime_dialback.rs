//! `fedrouter serve` against scripted remote servers over real sockets on loopback, for
//! Server Dialback (XEP-0220) beyond the happy path:
//!
//! - a pre-XMPP-1.0 ("legacy") peer, whose stream headers carry no `version`, no `to`
//!   and no `from` (the original dialback protocol allowed it), federates both ways: the
//!   domains come from the `db:result` / `db:verify` elements;
//! - when the remote server's side of our dialback fails (it answers `invalid` or a
//!   dialback error, closes the stream with a stream error, or breaks off its
//!   verification connection to us), the stanzas waiting for it are bounced at once
//!   (RFC 6120 §8.3.3) and a WARN says why, instead of after `s2s.negotiation_timeout`.
//!
//! The test plays the remote server by hand ([`peer::Peer`], raw XML), both as the peer
//! that connects to fedrouter and as the server fedrouter connects to (a listener the
//! test's DNS zone points at). Each test owns the loopback range `127.0.N.0/24`, N = 215
//! to 219 (`.1:5300` DNS, fedrouter on `.2`, the scripted server on `.5`). Every wait is
//! for an event and bounded; no test asserts on elapsed time: the fast-path tests set
//! `s2s.negotiation_timeout` to 10 minutes, so only the fast path can finish them.

#[path = "common/peer.rs"]
mod peer;
#[path = "common/server.rs"]
mod server;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use fedrouter::dialback::DialbackSecret;
use peer::{attr, tags, Peer};
use server::{assert_error, config, ip, rtt_ms, xmpp_server, zone, Fedrouter, GOOGLE_STYLE};

/// Longest wait for one step of a scripted exchange (only catches hangs).
const STEP: Duration = Duration::from_secs(10);

fn s2s(net: u8, host: u8) -> SocketAddr {
    SocketAddr::new(ip(net, host).into(), 5269)
}

/// A response stream header from `from` with stream id `id`, XMPP 1.0.
fn response_header(from: &str, to: &str, id: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
         from='{from}' to='{to}' id='{id}' version='1.0'>"
    )
}

/// Features offering only dialback with errors (XEP-0220 §2.4.2).
const DIALBACK_FEATURES: &str = "<stream:features><dialback \
    xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>";

/// Whether `text` holds a complete `<stream:stream …>` start tag.
fn has_header(text: &str) -> bool {
    !tags(text, "<stream:stream").is_empty()
}

/// a.test on `127.0.NET.2` (Google-style, 2 shards, `extra` appended) and a DNS zone
/// that puts `remote` on `127.0.NET.5`.
fn a_with_remote(
    net: u8,
    remote: &str,
    extra: &str,
) -> (fedrouter_testkit::zone::ZoneServer, Fedrouter) {
    let mut records = xmpp_server("a.test", ip(net, 2));
    records.extend(xmpp_server(remote, ip(net, 5)));
    let dns = zone(net, records);
    let a = Fedrouter::start(
        "a.test",
        &config(
            net,
            ip(net, 2),
            &["a.test"],
            2,
            &format!("{extra}\n{GOOGLE_STYLE}"),
        ),
    );
    (dns, a)
}

/// A pre-XMPP-1.0 initial header, as in the issue: no `version`, no `to`, no `from`.
const LEGACY_HEADER: &str = "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' \
    xmlns='jabber:server' xmlns:db='jabber:server:dialback'>";

/// A pre-XMPP-1.0 answering header: an id, no `version`, so no features follow.
fn legacy_response_header(id: &str) -> String {
    format!(
        "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' \
         xmlns='jabber:server' xmlns:db='jabber:server:dialback' id='{id}'>"
    )
}

/// The start tag and character data of the first `<db:NAME …>…</db:NAME>` in `text`.
fn db_element(text: &str, name: &str) -> Option<(String, String)> {
    let open = format!("<db:{name}");
    let start = text.find(&open)?;
    let tag_end = start + text[start..].find('>')?;
    let close = format!("</db:{name}>");
    let end = tag_end + text[tag_end..].find(&close)?;
    Some((
        text[start..=tag_end].to_owned(),
        text[tag_end + 1..end].trim().to_owned(),
    ))
}

/// Item 1 over real sockets: l.test's server predates XMPP 1.0 (the test plays it).
/// It opens a stream to a.test with the version-less header without `to` or `from` and
/// sends its `db:result` at once; a.test verifies the key with l.test's authoritative
/// server (the same legacy server: a.test's outbound stream is answered with a
/// version-less header, so a.test goes straight to dialback there instead of waiting
/// for features); l.test in turn verifies a.test's key over a verification connection
/// that names no domain either. Then an iq ping l.test sends reaches a.test, whose
/// answer comes back over a.test's own authenticated stream to l.test.
#[test]
fn legacy_peer_federates_both_ways_over_sockets() {
    const NET: u8 = 215;
    let secret = DialbackSecret::new("l.test's legacy dialback secret");
    let (_dns, a) = a_with_remote(NET, "l.test", "");
    let listener = TcpListener::bind(s2s(NET, 5)).expect("bind l.test's address");

    // l.test → a.test: the legacy stream and its key.
    let mut p = Peer::connect(s2s(NET, 2));
    p.send(LEGACY_HEADER.as_bytes()).unwrap();
    assert!(p.read_until(STEP, has_header), "no header: {:?}", p.text());
    let theirs = tags(&p.text(), "<stream:stream")[0].to_owned();
    assert_eq!(
        attr(&theirs, "version"),
        None,
        "a.test answered as 1.0: {theirs}"
    );
    assert_eq!(attr(&theirs, "from"), None, "nothing to echo: {theirs}");
    let id = p.stream_id().expect("a stream id");
    let key = secret.key("a.test", "l.test", &id);
    p.send(format!("<db:result to='a.test' from='l.test'>{key}</db:result>").as_bytes())
        .unwrap();

    // a.test → l.test: a.test's outbound stream, answered by a version-less header. The
    // key a.test sends and the verification it asks for go out without features.
    let mut o = Peer::accept(&listener, STEP).expect("a.test did not connect to l.test");
    assert!(o.read_until(STEP, has_header), "no header: {:?}", o.text());
    o.send(legacy_response_header("l-out-1").as_bytes())
        .unwrap();
    assert!(
        o.read_until(STEP, |t| t.contains("</db:result>")
            && t.contains("</db:verify>")),
        "a.test did not go straight to dialback: {:?}",
        o.text()
    );
    let (verify_tag, verify_key) = db_element(&o.text(), "verify").unwrap();
    assert_eq!(
        (
            attr(&verify_tag, "from").as_deref(),
            attr(&verify_tag, "to").as_deref(),
            attr(&verify_tag, "id").as_deref()
        ),
        (Some("a.test"), Some("l.test"), Some(id.as_str())),
        "{verify_tag}"
    );
    assert!(
        secret.verify("a.test", "l.test", &id, &verify_key),
        "a.test asked about another key: {verify_key}"
    );
    o.send(format!("<db:verify from='l.test' to='a.test' id='{id}' type='valid'/>").as_bytes())
        .unwrap();
    assert!(
        p.read_until(STEP, |t| t.contains("type=")),
        "no dialback answer: {:?}",
        p.text()
    );
    assert_eq!(
        p.db_result_type("a.test", "l.test").as_deref(),
        Some("valid"),
        "{:?}",
        p.text()
    );

    // l.test verifies a.test's key over a verification connection naming no domain.
    let (result_tag, our_key) = db_element(&o.text(), "result").unwrap();
    assert_eq!(attr(&result_tag, "from").as_deref(), Some("a.test"));
    assert_eq!(attr(&result_tag, "to").as_deref(), Some("l.test"));
    let mut v = Peer::connect(s2s(NET, 2));
    v.send(LEGACY_HEADER.as_bytes()).unwrap();
    assert!(v.read_until(STEP, has_header), "no header: {:?}", v.text());
    v.send(
        format!("<db:verify from='l.test' to='a.test' id='l-out-1'>{our_key}</db:verify>")
            .as_bytes(),
    )
    .unwrap();
    assert!(
        v.read_until(STEP, |t| tags(t, "<db:verify")
            .iter()
            .any(|t| t.contains("type="))),
        "no db:verify answer: {:?}",
        v.text()
    );
    let answer = tags(&v.text(), "<db:verify")[0].to_owned();
    assert_eq!(attr(&answer, "type").as_deref(), Some("valid"), "{answer}");
    assert_eq!(attr(&answer, "id").as_deref(), Some("l-out-1"), "{answer}");
    v.send(b"</stream:stream>").unwrap();
    assert!(
        v.wait_closed(STEP),
        "a.test did not close the verification connection"
    );
    o.send(b"<db:result from='l.test' to='a.test' type='valid'/>")
        .unwrap();

    // A stanza from l.test: a.test answers it over its stream to l.test.
    p.send(
        b"<iq type='get' from='l.test' to='a.test' id='legacy-ping'>\
          <ping xmlns='urn:xmpp:ping'/></iq>",
    )
    .unwrap();
    assert!(
        o.read_until_contains("id='legacy-ping'", STEP),
        "no answer to l.test's ping: {:?}",
        o.text()
    );
    let reply = tags(&o.text(), "<iq")
        .into_iter()
        .find(|t| t.contains("legacy-ping"))
        .unwrap()
        .to_owned();
    assert_eq!(attr(&reply, "type").as_deref(), Some("result"), "{reply}");
    assert_eq!(attr(&reply, "from").as_deref(), Some("a.test"), "{reply}");
    assert_eq!(attr(&reply, "to").as_deref(), Some("l.test"), "{reply}");
    for (stream, what) in [(&p, "inbound"), (&v, "verification"), (&o, "outbound")] {
        assert!(
            !stream.text().contains("features") && !stream.text().contains("stream:error"),
            "{what} stream: {:?}",
            stream.text()
        );
    }
    for dir in ["dir=\"in\"", "dir=\"out\""] {
        assert!(
            !a.log_lines(&[
                dir,
                "authenticated",
                "local=a.test",
                "remote=l.test",
                "method=Dialback"
            ])
            .is_empty(),
            "a.test did not log the {dir} authentication:\n{}",
            a.log()
        );
    }
}

/// What the scripted remote server does once fedrouter's `db:result` has arrived.
enum Refusal {
    /// `<db:result type='invalid'/>` (XEP-0220 §2.1.1); the stream stays open.
    Invalid,
    /// A `<not-authorized/>` stream error and `</stream:stream>` (RFC 6120 §4.9).
    StreamError,
    /// `<db:result type='error'>` with `<remote-connection-failed/>` (XEP-0220 §2.5: it
    /// could not reach our authoritative server); the stream stays open.
    DialbackError,
}

/// fedrouter (a.test) pings d.test, whose server (the test) negotiates a stream, receives
/// a.test's `db:result` and refuses it per `refusal`. Returns the ping's answer and
/// fedrouter.
fn refused_dialback(net: u8, refusal: Refusal) -> (serde_json::Value, Fedrouter) {
    // Only the fast path can end the wait: the per-step deadline is 10 minutes.
    let (_dns, a) = a_with_remote(net, "d.test", "[s2s]\nnegotiation_timeout = \"10m\"\n");
    let listener = TcpListener::bind(s2s(net, 5)).expect("bind d.test's address");
    let answer = std::thread::scope(|s| {
        let ping = s.spawn(|| a.ping("d.test"));
        let mut o = Peer::accept(&listener, STEP).expect("a.test did not connect to d.test");
        assert!(o.read_until(STEP, has_header), "no header: {:?}", o.text());
        o.send(response_header("d.test", "a.test", "d-stream-1").as_bytes())
            .unwrap();
        o.send(DIALBACK_FEATURES.as_bytes()).unwrap();
        assert!(
            o.read_until_contains("</db:result>", STEP),
            "no db:result from a.test: {:?}",
            o.text()
        );
        let result = tags(&o.text(), "<db:result")[0].to_owned();
        assert_eq!(attr(&result, "from").as_deref(), Some("a.test"), "{result}");
        assert_eq!(attr(&result, "to").as_deref(), Some("d.test"), "{result}");
        match refusal {
            Refusal::Invalid => o
                .send(b"<db:result from='d.test' to='a.test' type='invalid'/>")
                .unwrap(),
            Refusal::DialbackError => o
                .send(
                    b"<db:result from='d.test' to='a.test' type='error'><error type='cancel'>\
                      <remote-connection-failed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
                      </error></db:result>",
                )
                .unwrap(),
            Refusal::StreamError => o
                .send(
                    b"<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
                      <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>dialback key rejected</text>\
                      </stream:error></stream:stream>",
                )
                .unwrap(),
        }
        let v = ping.join().expect("ping thread");
        // The stream the test held stays open until here: the bounce did not wait for it.
        drop(o);
        v
    });
    (answer, a)
}

/// Item 2, first case: d.test answers a.test's `db:result` with `type='invalid'`. The
/// queued ping is bounced at once with `remote-server-not-found` (RFC 6120 §8.3.3.15:
/// the remote server refused us), and a WARN names d.test and what it did.
#[test]
fn invalid_dialback_answer_bounces_at_once() {
    const NET: u8 = 216;
    let (v, a) = refused_dialback(NET, Refusal::Invalid);
    assert_error(
        &v,
        "remote-server-not-found",
        "ping d.test answered invalid",
    );
    let warn = a
        .wait_log(&["WARN", "remote=d.test", "invalid"], STEP)
        .unwrap_or_else(|| panic!("no WARN naming d.test and 'invalid':\n{}", a.log()));
    eprintln!(
        "invalid_dialback_answer_bounces_at_once: bounce after {:.1} ms; {warn}",
        rtt_ms(&v)
    );
}

/// Item 2, second case: d.test closes the stream with a stream error after a.test's
/// `db:result`. The queued ping is bounced at once with `remote-server-not-found`, and a
/// WARN names d.test and the stream error.
#[test]
fn stream_error_after_db_result_bounces_at_once() {
    const NET: u8 = 217;
    let (v, a) = refused_dialback(NET, Refusal::StreamError);
    assert_error(
        &v,
        "remote-server-not-found",
        "ping d.test closed with not-authorized",
    );
    let warn = a
        .wait_log(&["WARN", "remote=d.test", "not-authorized"], STEP)
        .unwrap_or_else(|| panic!("no WARN naming d.test and the stream error:\n{}", a.log()));
    eprintln!(
        "stream_error_after_db_result_bounces_at_once: bounce after {:.1} ms; {warn}",
        rtt_ms(&v)
    );
}

/// Item 2, third case: d.test answers with a dialback error saying it could not reach
/// a.test's authoritative server: a passing failure, so the ping is bounced at once with
/// `remote-server-timeout` (RFC 6120 §8.3.3.16, type `wait`: the sender may retry).
#[test]
fn dialback_error_answer_bounces_at_once_as_a_timeout() {
    const NET: u8 = 219;
    let (v, a) = refused_dialback(NET, Refusal::DialbackError);
    assert_error(
        &v,
        "remote-server-timeout",
        "ping d.test answered remote-connection-failed",
    );
    let warn = a
        .wait_log(&["WARN", "remote=d.test", "remote-connection-failed"], STEP)
        .unwrap_or_else(|| panic!("no WARN naming d.test and the dialback error:\n{}", a.log()));
    eprintln!(
        "dialback_error_answer_bounces_at_once_as_a_timeout: bounce after {:.1} ms; {warn}",
        rtt_ms(&v)
    );
}

/// Item 2, the failure that used to take `s2s.negotiation_timeout` to surface: d.test
/// receives a.test's `db:result`, opens its verification connection back to a.test
/// (XEP-0220 §2.1.2) and closes it again without asking about the key. d.test's
/// verification of our key cannot succeed and d.test never answers the `db:result`; a.test
/// fails the dialback as soon as that stream ends: the ping is bounced with
/// `remote-server-not-found` and a WARN names d.test and its verification connection.
#[test]
fn closed_verification_connection_bounces_at_once() {
    const NET: u8 = 218;
    let (_dns, a) = a_with_remote(NET, "d.test", "[s2s]\nnegotiation_timeout = \"10m\"\n");
    let listener = TcpListener::bind(s2s(NET, 5)).expect("bind d.test's address");
    let v = std::thread::scope(|s| {
        let ping = s.spawn(|| a.ping("d.test"));
        let mut o = Peer::accept(&listener, STEP).expect("a.test did not connect to d.test");
        assert!(o.read_until(STEP, has_header), "no header: {:?}", o.text());
        o.send(response_header("d.test", "a.test", "d-stream-1").as_bytes())
            .unwrap();
        o.send(DIALBACK_FEATURES.as_bytes()).unwrap();
        assert!(
            o.read_until_contains("</db:result>", STEP),
            "no db:result from a.test: {:?}",
            o.text()
        );
        // The verification connection, given up on before its db:verify.
        let mut verify = Peer::connect(s2s(NET, 2));
        verify
            .send(peer::header(Some("d.test"), "a.test").as_bytes())
            .unwrap();
        assert!(
            verify.read_until_contains("</stream:features>", STEP),
            "no features on the verification connection: {:?}",
            verify.text()
        );
        verify.send(b"</stream:stream>").unwrap();
        assert!(
            verify.wait_closed(STEP),
            "a.test did not close it after ours"
        );
        let v = ping.join().expect("ping thread");
        // The outbound stream got no answer to its db:result at all.
        assert!(
            !o.text().contains("type="),
            "d.test answered nothing, yet: {:?}",
            o.text()
        );
        drop(o);
        v
    });
    assert_error(
        &v,
        "remote-server-not-found",
        "ping d.test, verification connection closed",
    );
    let warn = a
        .wait_log(&["WARN", "remote=d.test", "verification connection"], STEP)
        .unwrap_or_else(|| {
            panic!(
                "no WARN naming d.test's verification connection:\n{}",
                a.log()
            )
        });
    eprintln!(
        "closed_verification_connection_bounces_at_once: bounce after {:.1} ms; {warn}",
        rtt_ms(&v)
    );
}
