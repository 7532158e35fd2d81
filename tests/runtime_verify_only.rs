//! Verify-only streams (XEP-0220 §2.1.3) over real sockets, against a remote server the
//! test plays: v.test opens a bidirectional stream (XEP-0288) to a.test and sends its
//! `db:result`; a.test checks the key with v.test's authoritative server on a stream that
//! carries only `db:verify` (no `db:result` of a.test's, no `<bidi/>`), sends it again
//! on a new stream when the first one breaks off before it was written, and closes the
//! stream once answered.
//!
//! Loopback range `127.0.19.0/24` (`.1:5300` DNS, fedrouter on `.2`, the scripted server
//! on `.5`). Every wait is for an event and bounded.

#[path = "common/peer.rs"]
mod peer;
#[path = "common/server.rs"]
mod server;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use fedrouter::dialback::DialbackSecret;
use peer::{attr, db_result, header, tags, Peer};
use server::{config, ip, xmpp_server, zone, Fedrouter, GOOGLE_STYLE};

const NET: u8 = 19;
/// Longest wait for one step of a scripted exchange (only catches hangs).
const STEP: Duration = Duration::from_secs(10);

fn s2s(host: u8) -> SocketAddr {
    SocketAddr::new(ip(NET, host).into(), 5269)
}

fn has_header(text: &str) -> bool {
    !tags(text, "<stream:stream").is_empty()
}

#[test]
fn bidi_dialback_is_verified_on_a_verify_only_stream_sent_again_after_a_drop() {
    let secret = DialbackSecret::new("v.test's dialback secret");
    let mut records = xmpp_server("a.test", ip(NET, 2));
    records.extend(xmpp_server("v.test", ip(NET, 5)));
    let _dns = zone(NET, records);
    let a = Fedrouter::start(
        "a.test",
        &config(NET, ip(NET, 2), &["a.test"], 2, GOOGLE_STYLE),
    );
    let listener = TcpListener::bind(s2s(5)).expect("bind v.test's address");

    // v.test → a.test, bidirectional, with its key.
    let mut p = Peer::connect(s2s(2));
    p.send(header(Some("v.test"), "a.test").as_bytes()).unwrap();
    assert!(
        p.read_until_contains("</stream:features>", STEP),
        "no features: {:?}",
        p.text()
    );
    assert!(
        p.text().contains("urn:xmpp:features:bidi"),
        "bidi not offered: {}",
        p.text()
    );
    let id = p.stream_id().expect("a stream id");
    let key = secret.key("a.test", "v.test", &id);
    p.send(b"<bidi xmlns='urn:xmpp:bidi'/>").unwrap();
    p.send(db_result("v.test", "a.test", &key).as_bytes())
        .unwrap();

    // The first verification connection breaks off before its negotiation: nothing was
    // written to it but the header.
    let first = Peer::accept(&listener, STEP).expect("a.test did not connect to verify");
    first.close();

    // The second gets the `db:verify`, and nothing that authenticates a.test.
    let mut o = Peer::accept(&listener, STEP).expect("a.test did not connect again");
    assert!(o.read_until(STEP, has_header), "no header: {:?}", o.text());
    let theirs = tags(&o.text(), "<stream:stream")[0].to_owned();
    assert_eq!(attr(&theirs, "from").as_deref(), Some("a.test"), "{theirs}");
    assert_eq!(attr(&theirs, "to").as_deref(), Some("v.test"), "{theirs}");
    o.send(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
         from='v.test' to='a.test' id='v-verify-1' version='1.0'>\
         <stream:features><bidi xmlns='urn:xmpp:features:bidi'/>\
         <dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>"
            .as_bytes(),
    )
    .unwrap();
    assert!(
        o.read_until_contains("</db:verify>", STEP),
        "no db:verify: {:?}",
        o.text()
    );
    let text = o.text();
    let verify = tags(&text, "<db:verify")[0];
    assert_eq!(attr(verify, "id").as_deref(), Some(id.as_str()), "{text}");
    assert_eq!(attr(verify, "from").as_deref(), Some("a.test"), "{text}");
    assert!(text.contains(&format!(">{key}</db:verify>")), "{text}");
    for absent in [
        "<db:result",
        "<bidi xmlns='urn:xmpp:bidi'",
        "<starttls",
        "<auth",
    ] {
        assert!(
            !text.contains(absent),
            "{absent} on the verify-only stream: {text}"
        );
    }
    o.send(format!("<db:verify from='v.test' to='a.test' id='{id}' type='valid'/>").as_bytes())
        .unwrap();

    // The verdict reaches v.test's stream, and the verify-only stream is closed.
    assert!(
        p.read_until(STEP, |t| t.contains("type='valid'")),
        "no verdict: {:?}",
        p.text()
    );
    assert_eq!(
        p.db_result_type("a.test", "v.test").as_deref(),
        Some("valid"),
        "{}",
        p.text()
    );
    assert!(
        o.read_until_contains("</stream:stream>", STEP),
        "the verify-only stream was not closed: {:?}",
        o.text()
    );
    assert_eq!(
        a.metric("fedrouter_s2s_verify_only_streams_total", &[]),
        Some(2.0),
        "verify-only streams opened"
    );
    assert_eq!(
        a.metric("fedrouter_s2s_connect_seconds_count", &[]),
        Some(2.0),
        "connections a.test opened"
    );
}
