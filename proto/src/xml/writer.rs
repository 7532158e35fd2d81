//! Serialising outgoing XML: stream headers, and stanzas re-addressed around their
//! original bytes.
//!
//! A router forwards a stanza it received with a different `to` or `from` (stamping the
//! sender's full JID, RFC 6120 §8.1.2.1) without re-parsing or re-serialising its body:
//! [`write_readdressed`] copies the element's bytes, dropping the old `to`/`from`
//! attributes (located by the framer) and inserting new ones after the element name.

use super::escape::escape_attr_into;
use super::Element;

/// Appends `el` to `out` with its `to` and `from` replaced.
///
/// `to`/`from`: `None` keeps the original attribute (if any); `Some(v)` replaces it with
/// `v` (unescaped text; escaped here). Everything else, attribute order aside, is copied
/// byte for byte. Cost: one copy of the element, no parsing.
pub fn write_readdressed(el: &Element, to: Option<&str>, from: Option<&str>, out: &mut Vec<u8>) {
    let b = el.bytes();
    let name_end = el.qname_end as usize;
    out.reserve(b.len() + to.map_or(0, str::len) + from.map_or(0, str::len) + 16);
    out.extend_from_slice(&b[..name_end]);
    let mut skip: [Option<std::ops::Range<usize>>; 2] = [None, None];
    if let Some(v) = to {
        out.extend_from_slice(b" to='");
        escape_attr_into(v, out);
        out.push(b'\'');
        skip[0] = el.to_attr.get().map(|s| s.range());
    }
    if let Some(v) = from {
        out.extend_from_slice(b" from='");
        escape_attr_into(v, out);
        out.push(b'\'');
        skip[1] = el.from_attr.get().map(|s| s.range());
    }
    skip.sort_by_key(|r| r.as_ref().map_or(0, |r| r.start));
    let mut at = name_end;
    for r in skip.into_iter().flatten() {
        out.extend_from_slice(&b[at..r.start]);
        at = r.end;
    }
    out.extend_from_slice(&b[at..]);
}

/// Appends ` key='value'` where `raw` is an attribute value as received (still escaped,
/// possibly from a `"`-quoted attribute): it is unescaped and escaped again for `'`
/// quotes. `None` writes nothing. Used when a reply copies `to`, `from` or `id` from the
/// request (RFC 6120 §8.2.3, §8.3.1).
pub fn write_raw_attr(key: &str, raw: Option<&str>, out: &mut Vec<u8>) {
    let Some(raw) = raw else { return };
    let value = super::unescape(raw).unwrap_or(std::borrow::Cow::Borrowed(raw));
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"='");
    escape_attr_into(&value, out);
    out.push(b'\'');
}

/// Parameters of a stream header we send (RFC 6120 §4.7).
#[derive(Debug, Clone, Copy, Default)]
pub struct HeaderOut<'a> {
    /// Content namespace, `jabber:server` or `jabber:client`.
    pub content_ns: &'a str,
    /// `from` attribute.
    pub from: Option<&'a str>,
    /// `to` attribute.
    pub to: Option<&'a str>,
    /// `id` attribute (receiving entity only).
    pub id: Option<&'a str>,
    /// `version='1.0'` when true (omitted for pre-RFC 3920 dialback-only peers).
    pub version: bool,
    /// Declare `xmlns:db='jabber:server:dialback'` (XEP-0220).
    pub dialback: bool,
}

/// Appends an XML declaration and a stream header (an open `<stream:stream>` tag).
pub fn write_stream_header(h: &HeaderOut<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<?xml version='1.0'?><stream:stream xmlns='");
    escape_attr_into(h.content_ns, out);
    out.extend_from_slice(b"' xmlns:stream='http://etherx.jabber.org/streams'");
    if h.dialback {
        out.extend_from_slice(b" xmlns:db='jabber:server:dialback'");
    }
    for (name, value) in [("from", h.from), ("to", h.to), ("id", h.id)] {
        if let Some(v) = value {
            out.push(b' ');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"='");
            escape_attr_into(v, out);
            out.push(b'\'');
        }
    }
    if h.version {
        out.extend_from_slice(b" version='1.0'");
    }
    out.push(b'>');
}

/// The stream close tag (RFC 6120 §4.4).
pub const STREAM_CLOSE: &[u8] = b"</stream:stream>";

/// Appends `<stream:error>` with `condition` and optional `text` (RFC 6120 §4.9).
pub fn write_stream_error(
    condition: crate::condition::StreamCondition,
    text: Option<&str>,
    out: &mut Vec<u8>,
) {
    write_stream_error_with(condition, text, b"", out);
}

/// Appends the `<see-other-host/>` stream error whose content names where to reconnect
/// (`host`, `host:port`, `[v6]:port`; RFC 6120 §4.9.3.19).
pub fn write_see_other_host(host: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(
        b"<stream:error><see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>",
    );
    super::escape_text_into(host, out);
    out.extend_from_slice(b"</see-other-host></stream:error>");
}

/// [`write_stream_error`] with an application-specific condition element (`app`, XML
/// with its own namespace, RFC 6120 §4.9.4) after the text, e.g. XEP-0198's
/// `<handled-count-too-high/>`.
pub fn write_stream_error_with(
    condition: crate::condition::StreamCondition,
    text: Option<&str>,
    app: &[u8],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"<stream:error><");
    out.extend_from_slice(condition.as_str().as_bytes());
    out.extend_from_slice(b" xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>");
    if let Some(t) = text {
        out.extend_from_slice(b"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>");
        super::escape_text_into(t, out);
        out.extend_from_slice(b"</text>");
    }
    out.extend_from_slice(app);
    out.extend_from_slice(b"</stream:error>");
}
