//! The stanzas loadgen writes (RFC 6120 §8, RFC 6121 §3–§5). JIDs and ids are loadgen's own
//! ASCII names ([`crate::topology`], [`crate::track`]), so only free text is escaped.
//!
//! `from` is `None` on C2S streams (the server stamps it, RFC 6120 §8.1.2.1) and a JID on
//! S2S streams (mandatory there, §8.1.2.2).

use std::fmt::Write as _;

use fedrouter::xml::escape_text;

fn open(out: &mut String, name: &str, kind: Option<&str>, from: Option<&str>, to: &str, id: &str) {
    out.push('<');
    out.push_str(name);
    if let Some(k) = kind {
        let _ = write!(out, " type='{k}'");
    }
    if let Some(f) = from {
        let _ = write!(out, " from='{f}'");
    }
    let _ = write!(out, " to='{to}' id='{id}'");
}

/// A subscription stanza (RFC 6121 §3): `kind` is `subscribe`, `subscribed`,
/// `unsubscribe` or `unsubscribed`; `to` a bare JID.
pub fn subscription(kind: &str, from: Option<&str>, to: &str, id: &str) -> Vec<u8> {
    let mut s = String::with_capacity(128);
    open(&mut s, "presence", Some(kind), from, to, id);
    s.push_str("/>");
    s.into_bytes()
}

/// An available presence addressed to one contact (RFC 6121 §4.6: the remote server
/// sends one per subscriber), or broadcast when `to` is `None` (C2S, §4.4.2).
pub fn presence(from: Option<&str>, to: Option<&str>, id: &str, status: &str) -> Vec<u8> {
    let mut s = String::with_capacity(160);
    s.push_str("<presence");
    if let Some(f) = from {
        let _ = write!(s, " from='{f}'");
    }
    if let Some(t) = to {
        let _ = write!(s, " to='{t}'");
    }
    let _ = write!(
        s,
        " id='{id}'><show>chat</show><status>{}</status></presence>",
        escape_text(status)
    );
    s.into_bytes()
}

/// A chat message (RFC 6121 §5.2.2).
pub fn message(from: Option<&str>, to: &str, id: &str, body: &str) -> Vec<u8> {
    let mut s = String::with_capacity(192);
    open(&mut s, "message", Some("chat"), from, to, id);
    let _ = write!(s, "><body>{}</body></message>", escape_text(body));
    s.into_bytes()
}

/// An empty iq result answering `id` (RFC 6120 §8.2.3), e.g. for a roster push (RFC 6121
/// §2.1.6) or a ping (XEP-0199).
pub fn iq_result(from: Option<&str>, to: Option<&str>, id: &str) -> Vec<u8> {
    let mut s = String::with_capacity(96);
    s.push_str("<iq type='result'");
    if let Some(f) = from {
        let _ = write!(s, " from='{f}'");
    }
    if let Some(t) = to {
        let _ = write!(s, " to='{t}'");
    }
    let _ = write!(s, " id='{id}'/>");
    s.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedrouter::xml::{Frame, Framer, Limits};

    fn parse(bytes: &[u8]) -> fedrouter::xml::Element {
        let mut f = Framer::new(Limits::default());
        f.feed(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>");
        f.feed(bytes);
        loop {
            match f.next_frame().expect("well-formed").expect("a frame") {
                Frame::Element(e) => return e,
                _ => continue,
            }
        }
    }

    #[test]
    fn stanzas_are_well_formed_and_addressed() {
        let e = parse(&subscription(
            "subscribe",
            Some("u1@peer1.test"),
            "user1@c.test",
            "lg.1.2.n",
        ));
        assert_eq!(
            (e.name(), e.type_(), e.from(), e.to(), e.id()),
            (
                "presence",
                Some("subscribe"),
                Some("u1@peer1.test"),
                Some("user1@c.test"),
                Some("lg.1.2.n")
            )
        );
        let e = parse(&message(None, "u1@peer1.test", "lg.3.4.e", "a <b> & c"));
        assert_eq!(
            (e.name(), e.from(), e.to()),
            ("message", None, Some("u1@peer1.test"))
        );
        assert!(e.as_str().contains("a &lt;b&gt; &amp; c"));
        let e = parse(&presence(None, None, "x", "busy"));
        assert_eq!((e.to(), e.type_()), (None, None));
        let e = parse(&iq_result(None, Some("a@b/c"), "push1"));
        assert_eq!(
            (e.type_(), e.to(), e.id()),
            (Some("result"), Some("a@b/c"), Some("push1"))
        );
    }
}
