//! `ElementBuilder` and the element-returning generators (`stanza::error_reply`,
//! `stanza::presence`, `service::ping`, `service::Answer::Reply`) against the framer.
//!
//! The key property: for every built element, `parse_stanza(built.bytes()) == built`,
//! every field of the routing view included (`Element` derives `PartialEq`; a namespace
//! outside the known ones is an `Other(Bytes)` view, compared by content). And the
//! generators write exactly the bytes the byte-writing functions they replace write.

use fedrouter_proto::condition::StanzaCondition;
use fedrouter_proto::service::{
    answer_plain_ping, answer_server, answer_unavailable_user, ping, write_ping, Answer,
};
use fedrouter_proto::stanza::{error_reply, presence, write_error_reply, StanzaKind};
use fedrouter_proto::xml::{
    escape_attr, escape_text, parse_stanza, unescape, writer, Element, ElementBuilder, Namespace,
    StanzaArena,
};
use proptest::prelude::*;
use proptest::sample::select;

// ----- strategies -----

fn is_xml_char(c: char) -> bool {
    matches!(c as u32, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

/// Characters for attribute values and text: mostly those that need escaping or are
/// multi-byte, some printable ASCII, and any XML character.
fn xml_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => select(vec![
            '\'', '"', '<', '>', '&', ';', '#', '=', '/', ' ', '\t', '\n', '\r', 'é', 'ß', '☺',
            '名', '😀', '\u{FFFD}', '\u{10FFFF}',
        ]),
        4 => proptest::char::range(' ', '~'),
        1 => any::<char>().prop_filter("an XML 1.0 Char", |c| is_xml_char(*c)),
    ]
}

fn xml_string(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(xml_char(), 0..max).prop_map(|v| v.into_iter().collect())
}

/// Element names: the stanza names, non-ASCII NCNames, and random ASCII NCNames.
fn element_name() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "message", "presence", "iq", "x", "ñame", "名前", "a.b-c_1", "é·x"
        ])
        .prop_map(str::to_owned),
        "[a-zA-Z_][a-zA-Z0-9_.-]{0,8}",
    ]
}

/// How an attribute value is handed to the builder.
#[derive(Debug, Clone, Copy)]
enum Form {
    /// `attr(name, text)`.
    Text,
    /// `raw_attr(name, escape_attr(text))`: as received in single quotes.
    RawSingle,
    /// `raw_attr` of the value as received in double quotes: a literal `'`, `"` as
    /// `&quot;`, `&` and `<` as `&amp;`/`&lt;`.
    RawDouble,
    /// `raw_attr` of the value written entirely as character references.
    RawCharRefs,
}

fn form() -> impl Strategy<Value = Form> {
    select(vec![
        Form::Text,
        Form::RawSingle,
        Form::RawDouble,
        Form::RawCharRefs,
    ])
}

fn raw_of(text: &str, form: Form) -> String {
    match form {
        Form::Text | Form::RawSingle => escape_attr(text).into_owned(),
        Form::RawDouble => text
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('"', "&quot;"),
        Form::RawCharRefs => text
            .chars()
            .map(|c| format!("&#x{:X};", c as u32))
            .collect(),
    }
}

#[derive(Debug, Clone)]
struct Attr {
    name: String,
    value: String,
    form: Form,
}

/// Attributes: each routing attribute present or not, the namespace declaration present
/// or not, some others (unique names), in any order.
fn attributes() -> impl Strategy<Value = Vec<Attr>> {
    let routing = proptest::collection::vec(proptest::option::of((xml_string(12), form())), 4);
    let xmlns = proptest::option::of(select(vec![
        "jabber:client",
        "jabber:server",
        "jabber:server:dialback",
        "urn:xmpp:sm:3",
        "urn:example:other",
        "",
    ]));
    let others = proptest::collection::btree_map(
        prop_oneof![
            "[a-z][a-z0-9]{0,4}".prop_filter("not a routing attribute", |n| {
                !matches!(n.as_str(), "to" | "from" | "type" | "id" | "xmlns")
            }),
            select(vec!["xml:lang", "xmlns:p"]).prop_map(str::to_owned),
        ],
        (xml_string(8), form()),
        0..4,
    );
    (routing, xmlns, others)
        .prop_map(|(routing, xmlns, others)| {
            let mut attrs = Vec::new();
            for (name, v) in ["to", "from", "type", "id"].into_iter().zip(routing) {
                if let Some((value, form)) = v {
                    attrs.push(Attr {
                        name: name.into(),
                        value,
                        form,
                    });
                }
            }
            if let Some(ns) = xmlns {
                attrs.push(Attr {
                    name: "xmlns".into(),
                    value: ns.into(),
                    form: Form::Text,
                });
            }
            for (name, (mut value, form)) in others {
                if name == "xmlns:p" && value.is_empty() {
                    // A prefix cannot be bound to the empty namespace.
                    value.push('u');
                }
                attrs.push(Attr { name, value, form });
            }
            attrs
        })
        .prop_shuffle()
}

/// One piece of inner content.
#[derive(Debug, Clone)]
enum Part {
    /// `text(s)`.
    Text(String),
    /// `child_raw` of a child element (serialised here, with escaping).
    Child(String),
    /// `child_with` writing a child element.
    With(String),
}

fn child_xml() -> impl Strategy<Value = String> {
    (
        select(vec!["body", "c", "ping", "error", "名"]),
        xml_string(8),
        xml_string(8),
        0..4u8,
    )
        .prop_map(|(name, attr, text, shape)| match shape {
            0 => format!("<{name} xmlns='urn:c'/>"),
            1 => format!(
                "<{name} xmlns='urn:c' a='{}'>{}</{name}>",
                escape_attr(&attr),
                escape_text(&text)
            ),
            2 => format!(
                "<q:{name} xmlns:q='urn:q' q:a=\"{}\"><x/>{}</q:{name}>",
                attr.replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('"', "&quot;"),
                escape_text(&text)
            ),
            _ => {
                let mut text = text;
                while text.contains("]]>") {
                    text = text.replace("]]>", "");
                }
                format!("<![CDATA[{text}]]>")
            }
        })
}

fn part() -> impl Strategy<Value = Part> {
    prop_oneof![
        xml_string(12).prop_map(Part::Text),
        child_xml().prop_map(Part::Child),
        child_xml().prop_map(Part::With),
    ]
}

/// Builds the element, and independently the bytes it must have.
fn build(name: &str, attrs: &[Attr], content: &Option<Vec<Part>>) -> (Element, String) {
    build_in(None, name, attrs, content)
}

/// [`build`], in `arena` when there is one ([`StanzaArena::builder`],
/// [`ElementBuilder::finish_in`]).
fn build_in(
    mut arena: Option<&mut StanzaArena>,
    name: &str,
    attrs: &[Attr],
    content: &Option<Vec<Part>>,
) -> (Element, String) {
    let mut b = match arena.as_deref_mut() {
        Some(a) => a.builder(name),
        None => ElementBuilder::new(name),
    };
    let mut expected = format!("<{name}");
    for a in attrs {
        b = match a.form {
            Form::Text => b.attr(&a.name, &a.value),
            f => b.raw_attr(&a.name, &raw_of(&a.value, f)),
        };
        expected.push_str(&format!(" {}='{}'", a.name, escape_attr(&a.value)));
    }
    match content {
        None => expected.push_str("/>"),
        Some(parts) => {
            expected.push('>');
            for p in parts {
                b = match p {
                    Part::Text(t) => {
                        expected.push_str(&escape_text(t));
                        b.text(t)
                    }
                    Part::Child(x) => {
                        expected.push_str(x);
                        b.child_raw(x)
                    }
                    Part::With(x) => {
                        expected.push_str(x);
                        b.child_with(|out| out.extend_from_slice(x.as_bytes()))
                    }
                };
            }
            if parts.is_empty() {
                // No content call at all: still the empty-element tag.
                expected.pop();
                expected.push_str("/>");
            } else {
                expected.push_str(&format!("</{name}>"));
            }
        }
    }
    let el = match arena {
        Some(a) => b.finish_in(a),
        None => b.finish(),
    };
    (el, expected)
}

fn value_of<'a>(attrs: &'a [Attr], name: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.value.as_str())
}

/// Escaped as the builder writes every value.
fn escaped(v: Option<&str>) -> Option<String> {
    v.map(|v| escape_attr(v).into_owned())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// The built element is exactly what the framer makes of its bytes, and the bytes
    /// are the expected serialisation.
    #[test]
    fn built_equals_framed(
        name in element_name(),
        attrs in attributes(),
        content in proptest::option::of(proptest::collection::vec(part(), 0..4)),
    ) {
        let (el, expected) = build(&name, &attrs, &content);
        prop_assert_eq!(el.as_str(), expected.as_str());
        let framed = parse_stanza(el.bytes());
        prop_assert!(framed.is_ok(), "{:?} does not frame: {:?}", el.as_str(), framed);
        let framed = framed.unwrap();
        prop_assert_eq!(&framed, &el);

        // The routing view reads the escaped values, which unescape to the input.
        prop_assert_eq!(el.name(), name.as_str());
        prop_assert_eq!(el.qname(), name.as_str());
        for (got, n) in [(el.to(), "to"), (el.from(), "from"), (el.type_(), "type"), (el.id(), "id")] {
            let want = value_of(&attrs, n);
            prop_assert_eq!(got.map(str::to_owned), escaped(want));
            prop_assert_eq!(got.map(|g| unescape(g).unwrap().into_owned()), want.map(str::to_owned));
        }
        prop_assert_eq!(el.has_to_attribute(), value_of(&attrs, "to").is_some());
        let ns = match value_of(&attrs, "xmlns") {
            None => Namespace::Server,
            Some("") => Namespace::None,
            Some("jabber:client") => Namespace::Client,
            Some("jabber:server") => Namespace::Server,
            Some("jabber:server:dialback") => Namespace::Dialback,
            Some("urn:xmpp:sm:3") => Namespace::StreamManagement,
            Some(other) => Namespace::Other(other.as_bytes().to_vec().into()),
        };
        prop_assert_eq!(el.namespace(), &ns);
        let has_content = content.as_ref().is_some_and(|p| !p.is_empty());
        prop_assert_eq!(el.is_empty(), !has_content);
        prop_assert!(!el.uses_header_prefix());

        // Re-addressing uses the whole-attribute spans: same output as for the framed.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        writer::write_readdressed(&el, Some("n'ew@x"), Some("o@y"), &mut a);
        writer::write_readdressed(&framed, Some("n'ew@x"), Some("o@y"), &mut b);
        prop_assert_eq!(&a, &b);
        let re = parse_stanza(&a).unwrap();
        prop_assert_eq!(re.to(), Some("n&apos;ew@x"));
        prop_assert_eq!(re.inner(), el.inner());
    }

    /// Elements built one after the other in one arena with small chunks (so chunks
    /// fill, are reused in place or replaced) are those built alone, and the ones kept
    /// alive (every other one) are unchanged when the last is built.
    #[test]
    fn arena_built_equals_built(
        elements in proptest::collection::vec(
            (
                element_name(),
                attributes(),
                proptest::option::of(proptest::collection::vec(part(), 0..4)),
            ),
            1..12,
        ),
        chunk in 1usize..300,
    ) {
        let mut arena = StanzaArena::new(chunk);
        let mut kept = Vec::new();
        for (i, (name, attrs, content)) in elements.iter().enumerate() {
            let (el, expected) = build_in(Some(&mut arena), name, attrs, content);
            let (alone, _) = build(name, attrs, content);
            prop_assert_eq!(el.as_str(), expected.as_str());
            prop_assert_eq!(&el, &alone);
            prop_assert_eq!(&parse_stanza(el.bytes()).unwrap(), &el);
            if i % 2 == 0 {
                kept.push((el, alone));
            }
        }
        for (el, alone) in &kept {
            prop_assert_eq!(el, alone);
        }
    }

    /// `raw_attr(raw)` writes what `attr(unescape(raw))` writes, whatever the quoting the
    /// raw value was received in.
    #[test]
    fn raw_attr_is_attr_of_the_unescaped_value(value in xml_string(16), form in form()) {
        let raw = raw_of(&value, form);
        let a = ElementBuilder::new("m").raw_attr("to", &raw).finish();
        let b = ElementBuilder::new("m").attr("to", &value).finish();
        prop_assert_eq!(&a, &b);
        let mut old = b"<m".to_vec();
        writer::write_raw_attr("to", Some(&raw), &mut old);
        old.extend_from_slice(b"/>");
        prop_assert_eq!(a.bytes().as_ref(), old.as_slice());
    }

    /// `error_reply` writes the bytes of `write_error_reply`, and frames to itself, for
    /// any stanza with any (escaped, either-quoted) addresses.
    #[test]
    fn error_reply_is_write_error_reply(
        kind in select(vec!["message", "presence", "iq"]),
        to in proptest::option::of((xml_string(10), form())),
        from in proptest::option::of((xml_string(10), form())),
        id in proptest::option::of((xml_string(6), form())),
        body in proptest::option::of(xml_string(10)),
        condition in select(StanzaCondition::ALL.to_vec()),
        text in proptest::option::of(xml_string(12)),
        by in proptest::option::of(xml_string(8)),
    ) {
        let mut src = format!("<{kind}");
        for (n, v) in [("to", &to), ("from", &from), ("id", &id)] {
            if let Some((v, f)) = v {
                match f {
                    Form::RawDouble => src.push_str(&format!(" {n}=\"{}\"", raw_of(v, *f))),
                    f => src.push_str(&format!(" {n}='{}'", raw_of(v, *f))),
                }
            }
        }
        src.push_str(" type='chat'");
        match &body {
            Some(b) => src.push_str(&format!("><body>{}</body></{kind}>", escape_text(b))),
            None => src.push_str("/>"),
        }
        let el = parse_stanza(src.as_bytes()).unwrap();
        let reply = error_reply(&el, condition, text.as_deref(), by.as_deref());
        let mut old = Vec::new();
        write_error_reply(&el, condition, text.as_deref(), by.as_deref(), &mut old);
        prop_assert_eq!(reply.as_str(), String::from_utf8(old).unwrap());
        prop_assert_eq!(&parse_stanza(reply.bytes()).unwrap(), &reply);
        prop_assert_eq!(reply.to().map(str::to_owned), escaped(from.as_ref().map(|f| f.0.as_str())));
        prop_assert_eq!(reply.from().map(str::to_owned), escaped(to.as_ref().map(|t| t.0.as_str())));
        prop_assert_eq!(reply.id().map(str::to_owned), escaped(id.as_ref().map(|i| i.0.as_str())));
        prop_assert_eq!(reply.type_(), Some("error"));
        prop_assert_eq!(fedrouter_proto::stanza::error_condition(&reply), Some(condition));
    }

    /// `ping` writes the bytes of `write_ping`; `presence` those of the runtime's
    /// hand-written presence (escaped `from`/`to`, a plain `type`).
    #[test]
    fn ping_and_presence_keep_their_bytes(
        from in xml_string(10),
        to in xml_string(10),
        id in xml_string(8),
        type_ in proptest::option::of(select(vec![
            "subscribe", "subscribed", "unsubscribe", "unsubscribed", "probe", "unavailable",
        ])),
    ) {
        let p = ping(&from, &to, &id);
        let mut old = Vec::new();
        write_ping(&from, &to, &id, &mut old);
        prop_assert_eq!(p.bytes().as_ref(), old.as_slice());
        prop_assert_eq!(&parse_stanza(p.bytes()).unwrap(), &p);

        let pr = presence(&from, &to, type_);
        prop_assert_eq!(pr.as_str(), old_presence(&from, &to, type_));
        prop_assert_eq!(&parse_stanza(pr.bytes()).unwrap(), &pr);
    }
}

/// What the runtime's former `presence` helper (now `stanza::presence`) wrote.
fn old_presence(from: &str, to: &str, type_: Option<&str>) -> String {
    let mut out = format!(
        "<presence from='{}' to='{}'",
        escape_attr(from),
        escape_attr(to)
    );
    if let Some(t) = type_ {
        out.push_str(&format!(" type='{t}'"));
    }
    out.push_str("/>");
    out
}

// ----- tables -----

fn stanza(s: &str) -> Element {
    parse_stanza(s.as_bytes()).unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn error_reply_table() {
    use StanzaCondition::*;
    type Row<'a> = (
        &'a str,
        StanzaCondition,
        Option<&'a str>,
        Option<&'a str>,
        &'a str,
    );
    let rows: &[Row] = &[
        (
            "<message from='juliet@capulet.example/balcony' to='romeo@montague.example' \
             id='m&amp;1' type='chat'><body>hi</body></message>",
            RemoteServerNotFound,
            Some("no <SRV>"),
            Some("capulet.example"),
            "<message from='romeo@montague.example' to='juliet@capulet.example/balcony' \
             id='m&amp;1' type='error'><error type='cancel' by='capulet.example'>\
             <remote-server-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>no &lt;SRV&gt;</text>\
             </error></message>",
        ),
        (
            "<iq type='get' from='u@b.test/r' to='a.test' id='v'>\
             <query xmlns='jabber:iq:version'/></iq>",
            ServiceUnavailable,
            None,
            None,
            "<iq from='a.test' to='u@b.test/r' id='v' type='error'><error type='cancel'>\
             <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             </error></iq>",
        ),
        (
            // No addresses and no id at all; a presence.
            "<presence/>",
            RemoteServerTimeout,
            Some("timed out"),
            None,
            "<presence type='error'><error type='wait'>\
             <remote-server-timeout xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>timed out</text>\
             </error></presence>",
        ),
        (
            // Raw-escaped addresses, one double-quoted with a literal `'`, non-ASCII,
            // a character reference, and an explicit client namespace.
            "<message xmlns='jabber:client' from='a&apos;b@x' to=\"c'd@ÿ.example/&#x72;\" \
             id=\"q&quot;1\"><body>x</body></message>",
            RecipientUnavailable,
            Some("a & b"),
            Some("ÿ.example"),
            "<message from='c&apos;d@ÿ.example/r' to='a&apos;b@x' id='q&quot;1' \
             type='error'><error type='wait' by='ÿ.example'>\
             <recipient-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>a &amp; b</text>\
             </error></message>",
        ),
    ];
    for &(input, condition, text, by, want) in rows {
        let el = stanza(input);
        let reply = error_reply(&el, condition, text, by);
        let mut old = Vec::new();
        write_error_reply(&el, condition, text, by, &mut old);
        assert_eq!(reply.as_str(), want, "{input}");
        assert_eq!(reply.bytes().as_ref(), old.as_slice(), "{input}");
        assert_eq!(parse_stanza(reply.bytes()).unwrap(), reply, "{input}");
        assert_eq!(reply.namespace(), &Namespace::Server);
        assert_eq!(StanzaKind::of(&reply), StanzaKind::of(&el));
    }
}

#[test]
fn ping_table() {
    for (from, to, id, want) in [
        (
            "a.test",
            "b.test",
            "ping-0-1",
            "<iq type='get' from='a.test' to='b.test' id='ping-0-1'>\
             <ping xmlns='urn:xmpp:ping'/></iq>",
        ),
        (
            "a.test",
            "b&c.test",
            "x'1\"<>",
            "<iq type='get' from='a.test' to='b&amp;c.test' id='x&apos;1&quot;&lt;&gt;'>\
             <ping xmlns='urn:xmpp:ping'/></iq>",
        ),
        (
            "ÿ.example",
            "名.example",
            "",
            "<iq type='get' from='ÿ.example' to='名.example' id=''>\
             <ping xmlns='urn:xmpp:ping'/></iq>",
        ),
    ] {
        let p = ping(from, to, id);
        let mut old = Vec::new();
        write_ping(from, to, id, &mut old);
        assert_eq!(p.as_str(), want);
        assert_eq!(p.bytes().as_ref(), old.as_slice());
        assert_eq!(parse_stanza(p.bytes()).unwrap(), p);
        assert_eq!(StanzaKind::of(&p), Some(StanzaKind::Iq));
    }
}

#[test]
fn presence_table() {
    for (from, to, type_, want) in [
        (
            "u@a.test",
            "v@b.test",
            Some("subscribed"),
            "<presence from='u@a.test' to='v@b.test' type='subscribed'/>",
        ),
        (
            "u@a.test/r",
            "v@b.test",
            Some("unavailable"),
            "<presence from='u@a.test/r' to='v@b.test' type='unavailable'/>",
        ),
        (
            "u@a.test",
            "o'k&@b.test",
            Some("probe"),
            "<presence from='u@a.test' to='o&apos;k&amp;@b.test' type='probe'/>",
        ),
        (
            "u@a.test",
            "v@b.test",
            None,
            "<presence from='u@a.test' to='v@b.test'/>",
        ),
    ] {
        let p = presence(from, to, type_);
        assert_eq!(p.as_str(), want);
        assert_eq!(p.as_str(), old_presence(from, to, type_));
        assert_eq!(parse_stanza(p.bytes()).unwrap(), p);
        assert!(p.is_empty());
    }
}

#[test]
fn answers_are_elements_that_frame_to_themselves() {
    let cases: &[(&str, StanzaKind)] = &[
        (
            "<iq type='get' from=\"u'1@b.test/r\" to='a.test' id='p&amp;5'>\
             <ping xmlns='urn:xmpp:ping'/></iq>",
            StanzaKind::Iq,
        ),
        (
            "<iq type='get' from='b.test' to='a.test' id='d'>\
             <query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            StanzaKind::Iq,
        ),
        (
            "<iq type='set' from='b.test' to='a.test' id='s'/>",
            StanzaKind::Iq,
        ),
        ("<iq from='b.test' to='a.test' id='t'/>", StanzaKind::Iq),
        (
            "<message from='u@b.test' to='a.test'><body>x</body></message>",
            StanzaKind::Message,
        ),
    ];
    for &(input, kind) in cases {
        let el = stanza(input);
        let software = fedrouter_proto::service::Software {
            name: "fedrouter".into(),
            version: "0.1.0".into(),
            os: None,
        };
        let Answer::Reply(r) = answer_server(&el, kind, &software) else {
            panic!("{input}: no reply");
        };
        assert_eq!(parse_stanza(r.bytes()).unwrap(), r, "{input}");
        assert_eq!(
            r.to().map(|t| unescape(t).unwrap().into_owned()),
            el.from().map(|f| unescape(f).unwrap().into_owned())
        );
    }
    // The plain ping's answer built in an arena is `answer_server`'s; anything else is
    // left to `answer_server`.
    let mut arena = StanzaArena::new(64);
    for &(input, kind) in cases {
        let el = stanza(input);
        let software = fedrouter_proto::service::Software {
            name: "fedrouter".into(),
            version: "0.1.0".into(),
            os: None,
        };
        match answer_plain_ping(&el, &mut arena) {
            Some(pong) => {
                assert_eq!(answer_server(&el, kind, &software), Answer::Reply(pong));
            }
            None => assert!(!input.contains("urn:xmpp:ping"), "{input}"),
        }
    }
    for not_plain in [
        "<iq type='result' from='b.test' to='a.test' id='p'><ping xmlns='urn:xmpp:ping'/></iq>",
        "<iq type='get' from='b.test' to='a.test' id='p'><p:ping xmlns:p='urn:xmpp:ping'/></iq>",
        "<message type='get' from='b.test' to='a.test'><ping xmlns='urn:xmpp:ping'/></message>",
    ] {
        assert_eq!(
            answer_plain_ping(&stanza(not_plain), &mut arena),
            None,
            "{not_plain}"
        );
    }
    let chat = stanza("<message type='chat' from='u@b.test/r' to='v@a.test' id='1'/>");
    let Answer::Reply(r) = answer_unavailable_user(&chat, StanzaKind::Message) else {
        panic!("no reply");
    };
    let mut old = Vec::new();
    write_error_reply(
        &chat,
        StanzaCondition::ServiceUnavailable,
        None,
        None,
        &mut old,
    );
    assert_eq!(r.bytes().as_ref(), old.as_slice());
    assert_eq!(parse_stanza(r.bytes()).unwrap(), r);
}
