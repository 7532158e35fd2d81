//! The stanza tokenizer against real captures, generated stanzas and hostile input.

mod common;

use common::{capture_documents, frames, frames_chunked, generated_body, stream, HEADER};
use fedrouter::condition::StreamCondition;
use fedrouter::xml::{
    writer, Element, Frame, Framer, Limit, Limits, Namespace, Restricted, XmlError,
};
use proptest::prelude::*;

fn elements(fs: &[Result<Frame, XmlError>]) -> Vec<&Element> {
    fs.iter()
        .filter_map(|f| match f {
            Ok(Frame::Element(e)) => Some(e),
            _ => None,
        })
        .collect()
}

fn last_error(input: &[u8]) -> Option<XmlError> {
    frames(input).into_iter().find_map(Result::err)
}

#[test]
fn captures_parse_without_error() {
    let docs = capture_documents();
    assert!(
        docs.len() >= 10,
        "expected the captured streams, got {}",
        docs.len()
    );
    let mut total = 0;
    for d in &docs {
        let fs = frames(d);
        for f in &fs {
            assert!(f.is_ok(), "{:?} in {}", f, String::from_utf8_lossy(d));
        }
        assert!(
            matches!(fs.first(), Some(Ok(Frame::Header(_)))),
            "{}",
            String::from_utf8_lossy(d)
        );
        total += elements(&fs).len();
    }
    assert!(total > 60, "only {total} elements in the captures");
}

#[test]
fn routing_view_of_captured_stanzas() {
    let docs = capture_documents();
    let all: Vec<Frame> = docs
        .iter()
        .flat_map(|d| frames(d))
        .map(Result::unwrap)
        .collect();
    let probe = all
        .iter()
        .find_map(|f| match f {
            Frame::Element(e) if e.type_() == Some("probe") => Some(e),
            _ => None,
        })
        .expect("the captures hold a presence probe");
    assert_eq!(probe.name(), "presence");
    assert_eq!(probe.namespace(), &Namespace::Server);
    assert_eq!(probe.to(), Some("jdoe1@gmail.test"));
    assert!(probe
        .from()
        .unwrap()
        .starts_with("cupuser1@cupdomain.test/"));
    let db = all
        .iter()
        .find_map(|f| match f {
            Frame::Element(e) if e.qname() == "db:result" => Some(e),
            _ => None,
        })
        .unwrap();
    assert_eq!(db.namespace(), &Namespace::Dialback);
    assert_eq!(db.name(), "result");
    assert_eq!(db.text().len(), 64);
    // Prosody's S2S stream header carries id=''.
    let empty_id = all
        .iter()
        .any(|f| matches!(f, Frame::Header(h) if h.id.as_deref() == Some("")));
    assert!(empty_id);
    let features = all
        .iter()
        .find_map(|f| match f {
            Frame::Element(e) if e.name() == "features" => Some(e),
            _ => None,
        })
        .unwrap();
    assert_eq!(features.namespace(), &Namespace::Streams);
}

#[test]
fn header_fields() {
    let fs = frames(HEADER.as_bytes());
    let Ok(Frame::Header(h)) = &fs[0] else {
        panic!("{fs:?}")
    };
    assert_eq!(h.to.as_deref(), Some("gmail.test"));
    assert_eq!(h.from.as_deref(), Some("cupdomain.test"));
    assert_eq!(h.version.as_deref(), Some("1.0"));
    assert_eq!(h.content_ns, Namespace::Server);
    assert_eq!(h.stream_prefix, "stream");
    assert!(h.declares_dialback());
}

/// Every split of every captured document into two chunks, and byte-at-a-time feeding,
/// gives exactly the frames of feeding it whole.
#[test]
fn captures_chunking_invariance_every_split_point() {
    for d in capture_documents() {
        let whole = frames(&d);
        assert_eq!(frames_chunked(&d, &[1], Limits::default()), whole);
        for split in 1..d.len() {
            let got = frames_chunked(&d, &[split, usize::MAX], Limits::default());
            assert_eq!(got, whole, "split at {split}");
        }
    }
}

#[test]
fn generated_chunking_invariance_every_split_point() {
    let input = stream(&generated_body(21));
    let whole = frames(&input);
    assert_eq!(elements(&whole).len(), 21);
    assert!(whole.iter().all(Result::is_ok), "{whole:?}");
    for split in 1..input.len() {
        assert_eq!(
            frames_chunked(&input, &[split, usize::MAX], Limits::default()),
            whole
        );
    }
    assert_eq!(frames_chunked(&input, &[1], Limits::default()), whole);
}

/// Inputs that fail at various points keep failing the same way however they are split.
#[test]
fn errors_are_chunking_invariant() {
    let small = Limits {
        max_element_size: 300,
        max_depth: 4,
        max_attributes: 4,
        max_header_size: 400,
    };
    let cases = [
        stream("<presence/><message><body>x</body><!-- c --></message>"),
        stream("<presence><a><b><c><d><e/></d></c></b></a></presence>"),
        stream(&format!("<message to='{}'/>", "x".repeat(400))),
        stream("<message a='1' b='2' c='3' d='4' e='5'/>"),
        stream("<message><body>&bogus;</body></message>"),
        stream("<presence/><presence a='1' a='2'/>"),
        stream("<x:y/>"),
        stream("<message><body>\u{e9}</body></message><message>\u{ff}</message>"),
    ];
    for (i, input) in cases.iter().enumerate() {
        for limits in [Limits::default(), small] {
            let whole = frames_chunked(input, &[usize::MAX], limits);
            if limits == small {
                assert!(whole.last().unwrap().is_err(), "case {i}: {whole:?}");
            }
            for split in 1..input.len() {
                let got = frames_chunked(input, &[split, usize::MAX], limits);
                assert_eq!(got, whole, "case {i}, split at {split}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_chunking_gives_the_same_frames(
        chunks in proptest::collection::vec(1usize..97, 1..40),
        n in 1usize..40,
        cut in 0usize..2000,
        junk in proptest::sample::select(vec!["", "<!--x-->", "&foo;", "<a></b>", "<?pi?>", "\u{1}"]),
    ) {
        let body = generated_body(n);
        let at = body.char_indices().map(|(i, _)| i).find(|&i| i >= cut).unwrap_or(body.len());
        let input = stream(&format!("{}{}{}", &body[..at], junk, &body[at..]));
        let whole = frames(&input);
        prop_assert_eq!(frames_chunked(&input, &chunks, Limits::default()), whole);
    }
}

#[test]
fn whitespace_keepalives_and_close() {
    let fs = frames(&stream(
        " \n\t<presence/>\r\n  <presence/> </stream:stream>",
    ));
    assert_eq!(fs.len(), 4, "{fs:?}");
    assert_eq!(fs[3], Ok(Frame::Close));
}

#[test]
fn keepalives_do_not_accumulate() {
    let mut f = Framer::default();
    f.feed(HEADER.as_bytes());
    assert!(matches!(f.next_frame(), Ok(Some(Frame::Header(_)))));
    for _ in 0..10_000 {
        f.feed(b" ");
        assert_eq!(f.next_frame(), Ok(None));
    }
    assert_eq!(f.buffered(), 0);
}

#[test]
fn restart_after_tls_or_sasl() {
    let mut f = Framer::default();
    f.feed(HEADER.as_bytes());
    f.feed(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
    f.feed(HEADER.as_bytes());
    assert!(matches!(f.next_frame(), Ok(Some(Frame::Header(_)))));
    let Ok(Some(Frame::Element(e))) = f.next_frame() else {
        panic!()
    };
    assert_eq!(e.namespace(), &Namespace::Sasl);
    // Without a reset the second header is an element named stream:stream that never
    // ends; after the reset it is a new header.
    f.reset();
    assert!(matches!(f.next_frame(), Ok(Some(Frame::Header(_)))));
}

#[test]
fn dialback_only_header_without_version() {
    let fs = frames(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback'><db:result to='a' from='b'>k</db:result>");
    let Ok(Frame::Header(h)) = &fs[0] else {
        panic!("{fs:?}")
    };
    assert_eq!(h.version, None);
    assert_eq!(elements(&fs)[0].namespace(), &Namespace::Dialback);
}

#[test]
fn element_namespaces_resolve() {
    let fs = frames(&stream(
        "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\
         <stream:features/><db:verify id='x' to='a' from='b'>k</db:verify>\
         <foo:bar xmlns:foo='urn:example'/><iq xmlns='jabber:client'/>",
    ));
    let els = elements(&fs);
    assert_eq!(els[0].namespace(), &Namespace::Tls);
    assert_eq!(els[1].namespace(), &Namespace::Streams);
    assert_eq!(els[2].namespace(), &Namespace::Dialback);
    assert_eq!(els[3].namespace().as_bytes(), b"urn:example");
    assert_eq!(els[3].name(), "bar");
    assert_eq!(els[4].namespace(), &Namespace::Client);
}

fn expect(input: &[u8], err: XmlError, condition: StreamCondition) {
    let got = last_error(input);
    assert_eq!(
        got,
        Some(err),
        "{}",
        String::from_utf8_lossy(&input[..input.len().min(300)])
    );
    assert_eq!(err.condition(), condition);
}

#[test]
fn hostile_billion_laughs_dtd() {
    let dtd = "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;'>]><lolz>&lol2;</lolz>";
    expect(
        dtd.as_bytes(),
        XmlError::RestrictedXml(Restricted::Dtd),
        StreamCondition::RestrictedXml,
    );
    expect(
        &stream("<!DOCTYPE x>"),
        XmlError::RestrictedXml(Restricted::Dtd),
        StreamCondition::RestrictedXml,
    );
}

#[test]
fn hostile_deep_nesting_bounded() {
    let mut f = Framer::default();
    f.feed(HEADER.as_bytes());
    f.next_frame().unwrap();
    let mut result = Ok(None);
    for _ in 0..10_000 {
        f.feed(b"<a>");
        result = f.next_frame();
        if result.is_err() {
            break;
        }
    }
    assert_eq!(result, Err(XmlError::PolicyViolation(Limit::Depth)));
    assert_eq!(
        XmlError::PolicyViolation(Limit::Depth).condition(),
        StreamCondition::PolicyViolation
    );
    assert!(f.buffered() <= 48 * 3);
}

#[test]
fn hostile_huge_attribute_bounded() {
    let limits = Limits::default();
    let mut f = Framer::new(limits);
    f.feed(HEADER.as_bytes());
    f.next_frame().unwrap();
    f.feed(b"<message to='");
    let chunk = vec![b'a'; 64 * 1024];
    let mut err = None;
    for _ in 0..(10 * 1024 * 1024 / chunk.len()) {
        f.feed(&chunk);
        assert!(f.buffered() <= limits.max_element_size + chunk.len());
        if let Err(e) = f.next_frame() {
            err = Some(e);
            break;
        }
    }
    assert_eq!(err, Some(XmlError::PolicyViolation(Limit::ElementSize)));
}

#[test]
fn hostile_element_that_never_ends() {
    let mut f = Framer::default();
    f.feed(HEADER.as_bytes());
    f.next_frame().unwrap();
    f.feed(b"<message><body>");
    let mut err = None;
    for _ in 0..100_000 {
        f.feed(b"blah blah ");
        if let Err(e) = f.next_frame() {
            err = Some(e);
            break;
        }
    }
    assert_eq!(err, Some(XmlError::PolicyViolation(Limit::ElementSize)));
}

#[test]
fn hostile_small_cases() {
    use StreamCondition as C;
    use XmlError as E;
    expect(
        &stream("<message><body>\u{e9}\u{ff}</body></message>")
            .iter()
            .map(|&b| if b == 0xC3 { 0xFF } else { b })
            .collect::<Vec<_>>(),
        E::UnsupportedEncoding,
        C::UnsupportedEncoding,
    );
    expect(
        &stream("<message><body>&foo;</body></message>"),
        E::RestrictedXml(Restricted::EntityReference),
        C::RestrictedXml,
    );
    expect(
        &stream("<message to='&foo;'/>"),
        E::RestrictedXml(Restricted::EntityReference),
        C::RestrictedXml,
    );
    expect(
        &stream("<message><!-- hi --></message>"),
        E::RestrictedXml(Restricted::Comment),
        C::RestrictedXml,
    );
    expect(
        &stream("<!-- hi -->"),
        E::RestrictedXml(Restricted::Comment),
        C::RestrictedXml,
    );
    expect(
        &stream("<message><?php x?></message>"),
        E::RestrictedXml(Restricted::ProcessingInstruction),
        C::RestrictedXml,
    );
    expect(
        &stream("<presence a='1' a='2'/>"),
        E::NotWellFormed("duplicate attribute"),
        C::NotWellFormed,
    );
    expect(
        &stream("<message><body></bodx></message>"),
        E::NotWellFormed("mismatched end tag"),
        C::NotWellFormed,
    );
    expect(
        &stream("<x:presence/>"),
        E::BadNamespacePrefix("undeclared element prefix"),
        C::BadNamespacePrefix,
    );
    expect(
        &stream("<presence y:a='1'/>"),
        E::BadNamespacePrefix("undeclared attribute prefix"),
        C::BadNamespacePrefix,
    );
    expect(
        &stream("<presence a=1/>"),
        E::NotWellFormed("malformed attribute"),
        C::NotWellFormed,
    );
    expect(
        &stream("<presence a='<'/>"),
        E::NotWellFormed("'<' in an attribute value"),
        C::NotWellFormed,
    );
    expect(
        &stream("<message>\u{1}</message>"),
        E::NotWellFormed("control character"),
        C::NotWellFormed,
    );
    expect(
        &stream("<message>a]]>b</message>"),
        E::NotWellFormed("']]>' in character data"),
        C::NotWellFormed,
    );
    expect(
        &stream("<1message/>"),
        E::NotWellFormed("invalid name"),
        C::NotWellFormed,
    );
    expect(
        &stream("hello"),
        E::BadFormat("character data at stream level"),
        C::BadFormat,
    );
    expect(
        &stream("</stream:foo>"),
        E::NotWellFormed("end tag does not match the stream header"),
        C::NotWellFormed,
    );
    expect(
        b"<stream:stream xmlns='jabber:server' xmlns:stream='urn:wrong'>",
        E::InvalidNamespace("stream element not in the streams namespace"),
        C::InvalidNamespace,
    );
    expect(
        b"<stream:stream xmlns='urn:other' xmlns:stream='http://etherx.jabber.org/streams'>",
        E::InvalidNamespace("content namespace is not jabber:server or jabber:client"),
        C::InvalidNamespace,
    );
    expect(
        b"<stream:stream xmlns='jabber:server'>",
        E::BadNamespacePrefix("undeclared stream prefix"),
        C::BadNamespacePrefix,
    );
    expect(
        b"<?xml version='1.0' encoding='UTF-16'?><stream:stream>",
        E::UnsupportedEncoding,
        C::UnsupportedEncoding,
    );
    expect(
        b"<?xml-stylesheet href='x'?>",
        E::RestrictedXml(Restricted::ProcessingInstruction),
        C::RestrictedXml,
    );
    expect(
        &stream("<message>&#0;</message>"),
        E::NotWellFormed("invalid character reference"),
        C::NotWellFormed,
    );
    // Character references are not entity references: allowed (RFC 6120 §11.1).
    assert_eq!(
        last_error(&stream("<message>&#x263A;&#65;</message>")),
        None
    );
}

#[test]
fn errors_are_sticky_and_nothing_before_is_lost() {
    let input = stream("<presence/><message/><message><!--x--></message><presence/>");
    let mut f = Framer::default();
    f.feed(&input);
    assert!(matches!(f.next_frame(), Ok(Some(Frame::Header(_)))));
    assert!(matches!(f.next_frame(), Ok(Some(Frame::Element(_)))));
    assert!(matches!(f.next_frame(), Ok(Some(Frame::Element(_)))));
    let e = XmlError::RestrictedXml(Restricted::Comment);
    assert_eq!(f.next_frame(), Err(e));
    assert_eq!(f.next_frame(), Err(e));
    f.feed(b"<presence/>");
    assert_eq!(f.next_frame(), Err(e));
}

#[test]
fn writer_readdresses_around_untouched_body() {
    let body = "<message type='chat' from='a@gmail.test/x' id='1' to='b@cupdomain.test'><body>&lt;hi&gt; é</body><x xmlns='urn:y' to='inner'/></message>";
    let fs = frames(&stream(body));
    let el = elements(&fs)[0];
    let mut out = Vec::new();
    writer::write_readdressed(
        el,
        Some("b@cupdomain.test/res"),
        Some("a@gmail.test/x'y"),
        &mut out,
    );
    let again = frames(&stream(std::str::from_utf8(&out).unwrap()));
    let el2 = elements(&again)[0];
    assert_eq!(el2.to(), Some("b@cupdomain.test/res"));
    assert_eq!(el2.from(), Some("a@gmail.test/x&apos;y"));
    assert_eq!(el2.type_(), Some("chat"));
    assert_eq!(el2.id(), Some("1"));
    assert_eq!(el2.inner(), el.inner());
    // Unchanged addresses: byte-identical output.
    let mut same = Vec::new();
    writer::write_readdressed(el, None, None, &mut same);
    assert_eq!(&same[..], &el.bytes()[..]);
}

#[test]
fn writer_round_trip_header_and_errors() {
    let mut out = Vec::new();
    writer::write_stream_header(
        &writer::HeaderOut {
            content_ns: "jabber:server",
            from: Some("a'b.example"),
            to: Some("c.example"),
            id: Some("xyz"),
            version: true,
            dialback: true,
        },
        &mut out,
    );
    writer::write_stream_error(
        StreamCondition::HostUnknown,
        Some("no <such> host"),
        &mut out,
    );
    out.extend_from_slice(writer::STREAM_CLOSE);
    let fs = frames(&out);
    let Ok(Frame::Header(h)) = &fs[0] else {
        panic!("{fs:?}")
    };
    assert_eq!(h.from.as_deref(), Some("a'b.example"));
    assert_eq!(h.id.as_deref(), Some("xyz"));
    assert!(h.declares_dialback());
    let Ok(Frame::Element(e)) = &fs[1] else {
        panic!("{fs:?}")
    };
    assert_eq!(e.name(), "error");
    assert!(e.as_str().contains("host-unknown"));
    assert_eq!(fs[2], Ok(Frame::Close));
}

/// Every element, re-emitted through the writer with new addresses, reads back with the
/// same name, namespace and inner bytes.
#[test]
fn writer_round_trip_generated() {
    let fs = frames(&stream(&generated_body(50)));
    let mut out = HEADER.as_bytes().to_vec();
    let els = elements(&fs);
    for e in &els {
        writer::write_readdressed(e, Some("x@y.example"), None, &mut out);
    }
    let back = frames(&out);
    let els2 = elements(&back);
    assert_eq!(els.len(), els2.len());
    for (a, b) in els.iter().zip(els2) {
        assert_eq!(
            (a.qname(), a.namespace(), a.inner(), a.from()),
            (b.qname(), b.namespace(), b.inner(), b.from())
        );
        assert_eq!(b.to(), Some("x@y.example"));
    }
}

/// Found by the fuzzer: whitespace before `<?xml` must rule out the declaration whether
/// or not the whitespace and the `<` arrive in the same read.
#[test]
fn whitespace_before_xml_declaration_is_chunking_invariant() {
    for input in [&b"\t<?"[..], b"\n<?xml version='1.0'?><stream:stream>"] {
        let whole = frames(input);
        assert_eq!(
            whole,
            vec![Err(XmlError::RestrictedXml(
                Restricted::ProcessingInstruction
            ))]
        );
        for split in 1..input.len() {
            assert_eq!(
                frames_chunked(input, &[split, usize::MAX], Limits::default()),
                whole
            );
        }
    }
}

/// The receive buffer is replaced or reused (the spare buffer, `Framer::next_buffer`)
/// many times while some elements split off earlier buffers stay alive and others are
/// dropped at once, in chunks of every size class: every element, kept or not, has the
/// bytes of the same element framed from the whole input, and kept ones still have
/// them at the end. One element fed a byte at a time after that still frames.
#[test]
fn buffers_are_reused_only_when_their_elements_are_gone() {
    let input = stream(&generated_body(2_000));
    let whole = frames(&input);
    let expected = elements(&whole);
    for chunk in [1, 100, 4 * 1024, 20 * 1024, 64 * 1024] {
        let mut f = Framer::default();
        let mut kept: Vec<(usize, Element)> = Vec::new();
        let mut n = 0;
        let mut check = |f: &mut Framer, kept: &mut Vec<(usize, Element)>| {
            // Bounded: one element per turn, at most what was fed.
            while let Some(frame) = f.next_frame().expect("the generated stream frames") {
                if let Frame::Element(e) = frame {
                    assert_eq!(
                        e.bytes(),
                        expected[n].bytes(),
                        "element {n}, chunks of {chunk}"
                    );
                    if n % 3 == 0 {
                        kept.push((n, e));
                    }
                    n += 1;
                }
            }
        };
        for piece in input.chunks(chunk) {
            f.feed(piece);
            check(&mut f, &mut kept);
        }
        assert_eq!(n, expected.len(), "chunks of {chunk}");
        for (i, e) in &kept {
            assert_eq!(
                e.bytes(),
                expected[*i].bytes(),
                "kept element {i}, chunks of {chunk}"
            );
        }
        let big = format!(
            "<message to='a@b'><body>{}</body></message>",
            "x".repeat(200_000)
        );
        for b in big.as_bytes() {
            f.feed(std::slice::from_ref(b));
        }
        let last = f.next_frame().expect("frames").expect("an element");
        assert!(matches!(last, Frame::Element(e) if e.bytes().len() == big.len()));
        for (i, e) in &kept {
            assert_eq!(
                e.bytes(),
                expected[*i].bytes(),
                "kept element {i}, chunks of {chunk}"
            );
        }
    }
}
