//! XEP-0198 against the direction of an inbound bidirectional stream (XEP-0288), over real
//! sockets: `fedrouter serve` for a.test; a scripted remote server c.test opens the stream,
//! requests bidi, authenticates with dialback, enables stream management and then dies
//! (TCP RST) without acknowledging what a.test sent it on that stream; c.test's
//! authoritative side and its next stream are a [`peer::FakeServer`].
//!
//! The test owns `127.31.0.0/24` (issue 18's nets are `127.30-39.x.x`). Every wait is
//! bounded by a limit that only catches a hang.

#[path = "common/peer.rs"]
mod peer;
#[path = "common/server.rs"]
mod server;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use fedrouter::dialback::DialbackSecret;
use fedrouter_testkit::zone::ZoneServer;
use peer::{db_result, header, Peer};
use server::{xmpp_server, Fedrouter, DNS_PORT, GOOGLE_STYLE};

/// Longest wait for one answer.
const ANSWER: Duration = Duration::from_secs(30);

fn ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 31, 0, host)
}

fn config(extra: &str) -> String {
    format!(
        r#"domains = ["a.test"]
shards = 2

[listen]
s2s = ["{a}:5269"]
s2s_tls = []
c2s = []
admin = "{a}:9269"

[dns]
nameservers = ["{dns}:{DNS_PORT}"]
timeout = "2s"

{extra}
"#,
        a = ip(2),
        dns = ip(1),
    )
}

/// c.test's stream to a.test is bidirectional with stream management on; a.test sends
/// its error replies to c.test on it (c.test has no other stream) and asks for
/// acknowledgements that never come. When the connection is reset, a.test sends every
/// one of them again, first, on a stream of its own to c.test: none is lost, and all
/// show in `fedrouter_sm_resent_total`.
#[test]
fn what_an_inbound_bidi_stream_carried_unacknowledged_is_sent_again_after_a_reset() {
    const N: usize = 30;
    let c_secret = DialbackSecret::new(b"c.test's dialback secret, 32 b!!");
    let fake = peer::FakeServer::start_with(
        SocketAddr::new(ip(5).into(), 5269),
        "c.test",
        c_secret.clone(),
        peer::FakeOptions {
            stream_management: Some(fedrouter::stream::sm::AckPolicy::default()),
            reset_first_after: None,
        },
    );
    let mut records = xmpp_server("a.test", ip(2));
    records.extend(xmpp_server("c.test", ip(5)));
    let _dns =
        ZoneServer::start(SocketAddr::new(ip(1).into(), DNS_PORT), records).expect("DNS server");
    let a = Fedrouter::start(
        "a.test",
        &config(&format!(
            "[s2s]\nsm_ack_every = 5\nsm_ack_after = \"100ms\"\n{GOOGLE_STYLE}"
        )),
    );

    let mut p = Peer::connect(SocketAddr::new(ip(2).into(), 5269));
    p.send(header(Some("c.test"), "a.test").as_bytes())
        .expect("send header");
    assert!(
        p.read_until_contains("</stream:features>", ANSWER),
        "no features: {:?}",
        p.text()
    );
    assert!(p.text().contains("<bidi xmlns='urn:xmpp:features:bidi'/>"));
    let id = p.stream_id().expect("stream id");
    p.send(b"<bidi xmlns='urn:xmpp:bidi'/>").expect("send bidi");
    p.send(db_result("c.test", "a.test", &c_secret.key("a.test", "c.test", &id)).as_bytes())
        .expect("send db:result");
    assert!(
        p.read_until(ANSWER, |t| t.contains("type='valid'")),
        "no dialback answer: {:?}",
        p.text()
    );
    p.send(b"<enable xmlns='urn:xmpp:sm:3'/>")
        .expect("send enable");
    assert!(
        p.read_until_contains("<enabled xmlns='urn:xmpp:sm:3'", ANSWER),
        "stream management not enabled: {:?}",
        p.text()
    );

    // c.test's users write to a.test users that do not exist: each message comes back as
    // an error, on this stream (it is c.test's only one).
    let mut burst = String::new();
    for i in 0..N {
        burst.push_str(&format!(
            "<message from='x@c.test/r' to='nobody{i}@a.test' type='chat' id='m{i}'><body>{i}</body></message>"
        ));
    }
    p.send(burst.as_bytes()).expect("send the burst");
    assert!(
        p.read_until(ANSWER, |t| (0..N)
            .all(|i| t.contains(&format!("id='m{i}'")))),
        "not every error reply came back on the bidi stream: {:?}",
        p.text()
    );
    assert!(
        p.text().contains("<r xmlns='urn:xmpp:sm:3'/>"),
        "a.test asked for no acknowledgement: {:?}",
        p.text()
    );
    assert_eq!(fake.stanza_count(), 0, "a.test used another stream");
    p.reset();

    // Every reply reaches c.test again, on a.test's own stream.
    let deadline = Instant::now() + ANSWER;
    let missing = loop {
        let got = fake.stanzas();
        let missing: Vec<usize> = (0..N)
            .filter(|i| !got.iter().any(|s| s.contains(&format!("id='m{i}'"))))
            .collect();
        if missing.is_empty() || Instant::now() >= deadline {
            break missing;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        missing.is_empty(),
        "replies never sent again after the reset: {missing:?}"
    );
    let resent = a.metric("fedrouter_sm_resent_total", &[]).unwrap_or(0.0);
    assert_eq!(resent, N as f64, "resent after the reset");
}
