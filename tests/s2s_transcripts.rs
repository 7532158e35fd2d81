//! Our S2S state machine against real traffic: the Prosody 0.12 <-> ejabberd 23.01
//! captures in `tests/data/` (see `/work/shared/captures/README.md`). Our receiving side
//! must accept what the real initiators sent; our initiating side, fed what the real
//! receivers answered, must send the same sequence of elements ejabberd sent.

mod common;

use common::pair::{sent_documents, Server, Wire};
use common::transcript;
use fedrouter::dialback::DialbackResult;
use fedrouter::stanza::StanzaKind;
use fedrouter::stream::{AuthMethod, Direction, Event, PeerPolicy, TlsRole};
use fedrouter::xml::tree::Node;
use fedrouter::xml::{ns, Frame, Namespace};
use fedrouter_testkit::TestCa;

const CUP: &str = "cupdomain.test";
const GMAIL: &str = "gmail.test";

fn data(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn chunks(conn: usize, c2s: bool) -> Vec<Vec<u8>> {
    let v: Vec<Vec<u8>> = transcript()
        .into_iter()
        .filter(|c| c.conn == conn && c.c2s == c2s)
        .map(|c| c.bytes)
        .collect();
    assert!(!v.is_empty());
    v
}

/// One block of a Prosody raw log: `ts session type local remote IN|OUT\n<payload>`.
#[derive(Debug, Clone)]
struct Block {
    session: String,
    incoming: bool,
    payload: Vec<u8>,
}

fn prosody_log(name: &str) -> Vec<Block> {
    let raw = String::from_utf8(data(name)).unwrap();
    let mut out = Vec::new();
    for block in raw.split("\n\n") {
        let (head, payload) = block.split_once('\n').unwrap_or((block, ""));
        let cols: Vec<&str> = head.split(' ').collect();
        if head.starts_with('#') || cols.len() != 6 {
            continue;
        }
        out.push(Block {
            session: cols[1].to_owned(),
            incoming: cols[5] == "IN",
            payload: payload.trim_end_matches('\n').as_bytes().to_vec(),
        });
    }
    out
}

/// One direction of one Prosody session, block by block.
fn session(name: &str, session: &str, incoming: bool) -> Vec<Vec<u8>> {
    let v: Vec<Vec<u8>> = prosody_log(name)
        .into_iter()
        .filter(|b| b.session == session && b.incoming == incoming)
        .map(|b| b.payload)
        .collect();
    assert!(!v.is_empty(), "no blocks for {session}");
    v
}

fn starts_with(b: &[u8], p: &str) -> bool {
    b.starts_with(p.as_bytes())
}

/// The top-level elements in `bytes` (which must start with a stream header), parsed.
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

/// `(namespace, name)` of every frame in `bytes`, documents concatenated; the header is
/// `("stream", "header")`, the close `("stream", "close")`.
fn shape(bytes: &[u8]) -> Vec<(String, String)> {
    sent_documents(bytes)
        .into_iter()
        .flatten()
        .map(|f| match f {
            Frame::Header(_) => ("stream".into(), "header".into()),
            Frame::Close => ("stream".into(), "close".into()),
            Frame::Element(e) => (
                String::from_utf8_lossy(e.namespace().as_bytes()).into_owned(),
                e.name().to_owned(),
            ),
        })
        .collect()
}

const OUR_HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
    xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback'>";

/// Runs a receiving-side replay: feeds `input` (one entry per captured write, optionally
/// re-chunked to `chunk` bytes), answering every `VerifyNeeded` with Valid as soon as it
/// appears, as the runtime would once the authoritative server said so. Returns the
/// connection and the `VerifyNeeded`s seen.
fn replay_inbound(
    mut w: Wire,
    input: &[Vec<u8>],
    chunk: usize,
) -> (Wire, Vec<(String, String, String, String)>) {
    let mut needed = Vec::new();
    for write in input {
        for piece in write.chunks(chunk) {
            let n = w.events.len();
            w.feed(piece);
            let sid = w.conn.stream_id().to_owned();
            for v in w.verify_needed_since(n) {
                assert_eq!(v.2, sid, "the key is for our current stream id");
                w.verdict(&v.0, &v.1, DialbackResult::Valid);
                needed.push(v);
            }
            if w.events.iter().any(|e| matches!(e, Event::StartTls(_))) && !w.conn.is_tls() {
                w.tls_established();
            }
        }
    }
    (w, needed)
}

/// The captured stanzas: the writes after the dialback exchange that hold presences and
/// messages, concatenated (Prosody packs several stanzas into one write).
fn stanza_bytes(input: &[Vec<u8>]) -> Vec<u8> {
    input
        .iter()
        .filter(|c| starts_with(c, "<presence") || starts_with(c, "<message"))
        .flat_map(|c| c.iter().copied())
        .collect()
}

/// Checks every captured stanza came out as an `Event::Stanza`, byte for byte and in
/// order, with the right kind, and returns how many.
fn assert_all_stanzas(w: &Wire, input: &[Vec<u8>]) -> usize {
    let got: Vec<(StanzaKind, String)> = w
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Stanza { kind, element } => Some((*kind, element.as_str().to_owned())),
            _ => None,
        })
        .collect();
    for (kind, s) in &got {
        assert!(
            s.starts_with(&format!("<{}", kind.as_str())),
            "{kind:?} {s}"
        );
    }
    let joined: String = got.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(
        joined.as_bytes(),
        stanza_bytes(input).as_slice(),
        "delivered stanzas differ from the capture"
    );
    got.len()
}

fn assert_open(w: &Wire) {
    assert!(
        w.closed().is_none() && !w.conn.is_closed(),
        "stream ended: {:?}; sent {}",
        w.closed(),
        String::from_utf8_lossy(&w.sent)
    );
    assert!(
        !String::from_utf8_lossy(&w.sent).contains("stream:error"),
        "{}",
        String::from_utf8_lossy(&w.sent)
    );
}

fn ca() -> TestCa {
    TestCa::new("fedrouter test CA").unwrap()
}

// ----- receiving side: what the real initiators sent -----

#[test]
fn transcript_parses_as_documented() {
    // Guard for the helpers: the three connections and their byte counts.
    let t = transcript();
    assert_eq!(t.iter().map(|c| c.conn).max(), Some(2));
    assert_eq!(chunks(0, true)[0].len(), 206);
    assert_eq!(chunks(0, false)[0].len(), 329);
    assert_eq!(chunks(1, true).len(), 10);
    assert_eq!(chunks(2, true).last().unwrap(), b"</stream:stream>");
}

#[test]
fn ejabberd_initiator_is_accepted_by_our_receiving_side() {
    // Connection #0: ejabberd (cupdomain.test) -> us as gmail.test.
    let input = chunks(0, true);
    for policy in [PeerPolicy::google(), PeerPolicy::default()] {
        for chunk in [usize::MAX, 1, 7] {
            let srv = Server::new(GMAIL, policy, &ca(), false);
            let (w, needed) = replay_inbound(Wire::inbound(srv.cfg.clone()), &input, chunk);
            assert_open(&w);
            assert!(
                matches!(w.events.first(), Some(Event::Opened { local, remote: Some(r), .. })
                    if local == GMAIL && r == CUP),
                "{:?}",
                w.events
            );
            assert_eq!(
                needed,
                vec![(
                    GMAIL.into(),
                    CUP.into(),
                    w.conn.stream_id().to_owned(),
                    "3c1804f25d4a668f154ed8fd6738b21f5253cf9286f2a7e81711db7bc330f057".into()
                )]
            );
            assert!(w.events.contains(&Event::Authenticated {
                local: GMAIL.into(),
                remote: CUP.into(),
                method: AuthMethod::Dialback,
                direction: Direction::Inbound,
            }));
            assert_eq!(
                assert_all_stanzas(&w, &input),
                9,
                "{policy:?} chunk {chunk}"
            );
            // What we answered: header (with our id), features offering dialback, the
            // valid result.
            let docs = sent_documents(&w.sent);
            assert_eq!(docs.len(), 1);
            let Frame::Header(h) = &docs[0][0] else {
                panic!()
            };
            assert_eq!(
                (h.from.as_deref(), h.to.as_deref(), h.id.as_deref()),
                (Some(GMAIL), Some(CUP), Some(w.conn.stream_id()))
            );
            assert!(h.declares_dialback());
            let els = elements(&w.sent);
            assert_eq!(els.len(), 2, "features and the result only");
            assert!(els[0].child("dialback", ns::DIALBACK_FEATURE).is_some());
            assert_eq!(
                (
                    els[1].name.as_str(),
                    els[1].attr("type"),
                    els[1].attr("from"),
                    els[1].attr("to")
                ),
                ("result", Some("valid"), Some(GMAIL), Some(CUP))
            );
        }
    }
}

#[test]
fn prosody_initiator_is_accepted_by_our_receiving_side() {
    // Connection #1: Prosody (gmail.test, header id='') -> us as cupdomain.test, with a
    // piggybacked db:verify for ejabberd's key on #0.
    let input = chunks(1, true);
    assert!(String::from_utf8_lossy(&input[0]).contains("id=''"));
    for policy in [PeerPolicy::google(), PeerPolicy::default()] {
        for chunk in [usize::MAX, 1, 13] {
            let srv = Server::new(CUP, policy, &ca(), false);
            let (w, needed) = replay_inbound(Wire::inbound(srv.cfg.clone()), &input, chunk);
            assert_open(&w);
            assert_eq!(
                needed,
                vec![(
                    CUP.into(),
                    GMAIL.into(),
                    w.conn.stream_id().to_owned(),
                    "785e0aa5d086367a5e47cf0fca5613efe2cd9bce8b9d988cde214865a9b45c61".into()
                )]
            );
            assert!(w.conn.is_authenticated(CUP, GMAIL));
            assert_eq!(
                assert_all_stanzas(&w, &input),
                10,
                "{policy:?} chunk {chunk}"
            );
            // As authoritative server for cupdomain.test we do not know ejabberd's secret:
            // its key is invalid for us.
            let answers: Vec<Node> = elements(&w.sent)
                .into_iter()
                .filter(|n| n.ns == ns::DIALBACK)
                .collect();
            assert_eq!(answers.len(), 2);
            assert_eq!(answers[0].name, "result");
            assert_eq!(answers[0].attr("type"), Some("valid"));
            let v = &answers[1];
            assert_eq!(
                (
                    v.name.as_str(),
                    v.attr("type"),
                    v.attr("from"),
                    v.attr("to"),
                    v.attr("id")
                ),
                (
                    "verify",
                    Some("invalid"),
                    Some(CUP),
                    Some(GMAIL),
                    Some("67fd6dc2-c13d-4c55-90a3-326b14cb7f7a")
                )
            );
            assert!(String::from_utf8_lossy(&w.sent).contains(
                "<db:verify from='cupdomain.test' to='gmail.test' \
                 id='67fd6dc2-c13d-4c55-90a3-326b14cb7f7a' type='invalid'/>"
            ));
        }
    }
}

#[test]
fn our_own_key_is_valid_for_the_captured_verify() {
    // The same piggybacked db:verify, had the key been ours, is answered valid: the
    // invalid answer above is about the secret, not about parsing Prosody's element.
    let srv = Server::new(CUP, PeerPolicy::google(), &ca(), false);
    let ours = srv
        .cfg
        .dialback_secret
        .key(GMAIL, CUP, "67fd6dc2-c13d-4c55-90a3-326b14cb7f7a");
    let mut input = chunks(1, true);
    let i = input
        .iter()
        .position(|c| starts_with(c, "<db:verify"))
        .unwrap();
    let v = String::from_utf8(input[i].clone()).unwrap();
    input[i] = v
        .replace(
            "3c1804f25d4a668f154ed8fd6738b21f5253cf9286f2a7e81711db7bc330f057",
            &ours,
        )
        .into_bytes();
    let (w, _) = replay_inbound(Wire::inbound(srv.cfg.clone()), &input, usize::MAX);
    assert_open(&w);
    assert!(String::from_utf8_lossy(&w.sent).contains(
        "<db:verify from='cupdomain.test' to='gmail.test' \
         id='67fd6dc2-c13d-4c55-90a3-326b14cb7f7a' type='valid'/>"
    ));
}

#[test]
fn ejabberd_starttls_initiator_is_accepted_by_our_receiving_side() {
    // tls-prosody-s2s-raw.txt, Prosody's s2sin558aaba31ce0: what ejabberd
    // (cupdomain.test) sent, decrypted: header, <starttls/>, then after TLS a new
    // header, db:result and the stanzas.
    let input = session("tls-prosody-s2s-raw.txt", "s2sin558aaba31ce0", true);
    assert!(starts_with(&input[1], "<starttls"));
    for policy in [PeerPolicy::webex(), PeerPolicy::default()] {
        let srv = Server::new(GMAIL, policy, &ca(), true);
        let mut w = Wire::inbound(srv.cfg.clone());
        // Pre-TLS document.
        w.feed(&input[0]);
        let pre_id = w.conn.stream_id().to_owned();
        let features = elements(&w.sent);
        assert!(
            features[0].child("starttls", ns::TLS).is_some(),
            "STARTTLS offered: {}",
            String::from_utf8_lossy(&w.sent)
        );
        let out = w.feed(&input[1]);
        assert_eq!(out, b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        assert_eq!(w.events.last(), Some(&Event::StartTls(TlsRole::Server)));
        assert!(w.tls_established().is_empty(), "the initiator speaks first");
        assert!(w.conn.is_tls());
        // Post-TLS document(s).
        let (w, needed) = replay_inbound(w, &input[2..], usize::MAX);
        assert_open(&w);
        assert_ne!(
            w.conn.stream_id(),
            pre_id,
            "a new stream id after the restart"
        );
        assert_eq!(
            needed,
            vec![(
                GMAIL.into(),
                CUP.into(),
                w.conn.stream_id().to_owned(),
                "c87ed73f131d96c0f3f588f68f1e305e669174aa6726a360b36ed39489aed770".into()
            )]
        );
        let docs = sent_documents(&w.sent);
        assert_eq!(docs.len(), 2, "one document per stream");
        let post: Vec<Node> = docs[1]
            .iter()
            .filter_map(|f| match f {
                Frame::Element(e) => Some(Node::parse(e).unwrap()),
                _ => None,
            })
            .collect();
        let f = &post[0];
        assert_eq!(f.name, "features");
        assert!(f.child("starttls", ns::TLS).is_none(), "no STARTTLS twice");
        assert!(
            f.child("mechanisms", ns::SASL).is_none(),
            "no EXTERNAL without a cert"
        );
        assert!(f.child("dialback", ns::DIALBACK_FEATURE).is_some());
        assert_eq!(assert_all_stanzas(&w, &input), 9, "{policy:?}");
    }
}

#[test]
fn prosody_starttls_and_failed_external_then_dialback_is_accepted() {
    // tls-prosody-s2s-raw.txt, Prosody's s2sout558aaba3a0f0 OUT: what Prosody
    // (gmail.test) sent to cupdomain.test, decrypted: header, <starttls/>, new header,
    // SASL EXTERNAL (which we did not offer: no valid client certificate), then dialback
    // on the same stream, a piggybacked db:verify, and the stanzas.
    let input = session("tls-prosody-s2s-raw.txt", "s2sout558aaba3a0f0", false);
    let auth = input
        .iter()
        .position(|c| starts_with(c, "<auth"))
        .expect("Prosody tries EXTERNAL");
    for policy in [PeerPolicy::default(), PeerPolicy::webex()] {
        let srv = Server::new(CUP, policy, &ca(), true);
        let (w, _) = replay_inbound(Wire::inbound(srv.cfg.clone()), &input[..auth], usize::MAX);
        assert!(w.conn.is_tls());
        assert_open(&w);
        let post_tls = sent_documents(&w.sent);
        assert_eq!(post_tls.len(), 2);
        let Some(Frame::Element(f)) = post_tls[1].get(1) else {
            panic!("no features after the TLS restart")
        };
        let f = Node::parse(f).unwrap();
        assert_eq!(f.name, "features");
        assert!(
            f.child("mechanisms", ns::SASL).is_none(),
            "EXTERNAL offered without a client certificate"
        );
        let mut w = w;
        let out = w.feed(&input[auth]);
        let failure = elements(&[OUR_HEADER.as_bytes(), &out].concat());
        assert_eq!(failure.len(), 1, "{}", String::from_utf8_lossy(&out));
        assert_eq!(
            (failure[0].name.as_str(), failure[0].ns.as_str()),
            ("failure", ns::SASL)
        );
        assert!(!w
            .events
            .iter()
            .any(|e| matches!(e, Event::Authenticated { .. })));
        assert_open(&w);
        let (w, needed) = replay_inbound(w, &input[auth + 1..], usize::MAX);
        assert_open(&w);
        assert_eq!(
            needed,
            vec![(
                CUP.into(),
                GMAIL.into(),
                w.conn.stream_id().to_owned(),
                "a560851ee3648808407d344f447005eb3dfa09b231a50e8e59305bdbf940b772".into()
            )]
        );
        assert!(w.events.contains(&Event::Authenticated {
            local: CUP.into(),
            remote: GMAIL.into(),
            method: AuthMethod::Dialback,
            direction: Direction::Inbound,
        }));
        assert!(String::from_utf8_lossy(&w.sent).contains(
            "<db:verify from='cupdomain.test' to='gmail.test' \
             id='a7f6487b-d32e-4aa9-908b-421b24a16509' type='invalid'/>"
        ));
        assert_eq!(assert_all_stanzas(&w, &input), 10, "{policy:?}");
    }
}

#[test]
fn ejabberd_verify_only_connection_is_answered_and_closed() {
    // tls-prosody-s2s-raw.txt s2sin558aab9b1030: ejabberd's short-lived verification
    // stream: header, STARTTLS, header, db:verify, </stream:stream>.
    let input = session("tls-prosody-s2s-raw.txt", "s2sin558aab9b1030", true);
    assert_eq!(input.last().unwrap(), b"</stream:stream>");
    let srv = Server::new(GMAIL, PeerPolicy::webex(), &ca(), true);
    let (w, needed) = replay_inbound(Wire::inbound(srv.cfg.clone()), &input, usize::MAX);
    assert!(needed.is_empty());
    assert!(w.conn.is_tls());
    let sent = String::from_utf8_lossy(&w.sent).into_owned();
    assert!(
        sent.ends_with(
            "<db:verify from='gmail.test' to='cupdomain.test' id='11906614281658269842' \
             type='invalid'/></stream:stream>"
        ),
        "{sent}"
    );
    assert_eq!(
        w.closed(),
        Some(&fedrouter::stream::CloseReason::PeerClosed)
    );
}

// ----- initiating side: against what the real receivers answered -----

#[test]
fn our_initiating_side_against_prosody() {
    // Connection #0 S>C: Prosody's header + features, then its db:result type='valid'.
    let peer = chunks(0, false);
    let ejabberd = chunks(0, true);
    for policy in [PeerPolicy::google(), PeerPolicy::default()] {
        let srv = Server::new(CUP, policy, &ca(), false);
        let mut w = Wire::outbound(srv.cfg.clone(), CUP, GMAIL);
        let Frame::Header(h) = &sent_documents(&w.sent)[0][0] else {
            panic!()
        };
        assert_eq!(
            (
                h.from.as_deref(),
                h.to.as_deref(),
                h.version.as_deref(),
                h.id.as_deref()
            ),
            (Some(CUP), Some(GMAIL), Some("1.0"), None)
        );
        assert_eq!(h.content_ns, Namespace::Server);
        assert!(h.declares_dialback());

        let out = w.feed(&peer[0]);
        assert!(
            w.events.contains(&Event::Opened {
                local: CUP.into(),
                remote: Some(GMAIL.into()),
                stream_id: "67fd6dc2-c13d-4c55-90a3-326b14cb7f7a".into(),
            }),
            "{:?}",
            w.events
        );
        let els = elements(&[OUR_HEADER.as_bytes(), &out].concat());
        assert_eq!(els.len(), 1, "{}", String::from_utf8_lossy(&out));
        let r = &els[0];
        assert_eq!(
            (
                r.name.as_str(),
                r.ns.as_str(),
                r.attr("from"),
                r.attr("to"),
                r.attr("type")
            ),
            ("result", ns::DIALBACK, Some(CUP), Some(GMAIL), None)
        );
        assert_eq!(r.text.len(), 64);
        assert!(r
            .text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(
            r.text,
            srv.cfg
                .dialback_secret
                .key(GMAIL, CUP, "67fd6dc2-c13d-4c55-90a3-326b14cb7f7a"),
            "XEP-0185 key for (receiving gmail.test, originating cupdomain.test, the recorded id)"
        );
        assert!(w
            .conn
            .send_stanza(CUP, GMAIL, b"<presence/>", w.now)
            .is_err());

        let out = w.feed(&peer[1]);
        assert!(out.is_empty());
        assert!(w.events.contains(&Event::Authenticated {
            local: CUP.into(),
            remote: GMAIL.into(),
            method: AuthMethod::Dialback,
            direction: Direction::Outbound,
        }));
        for s in ejabberd
            .iter()
            .filter(|c| starts_with(c, "<presence") || starts_with(c, "<message"))
        {
            w.conn.send_stanza(CUP, GMAIL, s, w.now).unwrap();
            assert_eq!(&w.pump(), s, "stanzas go out verbatim");
        }
        assert!(w.closed().is_none());
        // Same element sequence as ejabberd's: header, db:result, the stanzas.
        assert_eq!(shape(&w.sent), shape(&ejabberd.concat()));
    }
}

#[test]
fn our_verify_only_connection_against_prosody() {
    // Connection #2: we ask gmail.test (authoritative) about the key Prosody gave us on
    // #1; Prosody answers type='valid'.
    let peer = chunks(2, false);
    let ejabberd = chunks(2, true);
    let srv = Server::new(CUP, PeerPolicy::google(), &ca(), false);
    let mut w = Wire::outbound(srv.cfg.clone(), CUP, GMAIL);
    let key = "785e0aa5d086367a5e47cf0fca5613efe2cd9bce8b9d988cde214865a9b45c61";
    w.conn
        .send_db_verify(CUP, "8151351135248315593", key, w.now)
        .unwrap();
    assert_eq!(w.pump(), b"", "queued until the stream is ready");
    let out = w.feed(&peer[0]);
    let ours: Vec<Node> = elements(&[OUR_HEADER.as_bytes(), &out].concat())
        .into_iter()
        .filter(|n| n.name == "verify")
        .collect();
    let theirs: Vec<Node> = elements(&ejabberd.concat())
        .into_iter()
        .filter(|n| n.name == "verify")
        .collect();
    assert_eq!(ours.len(), 1, "{}", String::from_utf8_lossy(&out));
    let mut a = ours[0].attrs.clone();
    let mut b = theirs[0].attrs.clone();
    a.sort();
    b.sort();
    assert_eq!(a, b, "same from/to/id as ejabberd's db:verify");
    assert_eq!(ours[0].text, theirs[0].text);
    assert_eq!(ours[0].ns, ns::DIALBACK);

    w.feed(&peer[1]);
    assert!(
        w.events.contains(&Event::VerifyAnswered {
            local: CUP.into(),
            remote: GMAIL.into(),
            stream_id: "8151351135248315593".into(),
            result: DialbackResult::Valid,
        }),
        "{:?}",
        w.events
    );
    assert!(w.closed().is_none());
    // Close it as ejabberd did.
    w.conn.close(None, w.now);
    assert_eq!(w.pump(), b"</stream:stream>");
}
