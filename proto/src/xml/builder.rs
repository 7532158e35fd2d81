//! Building the stanzas the server generates itself (error replies and bounces, RFC 6120
//! §8.3; presence `subscribed`/`unavailable`/`probe`, RFC 6121; XEP-0199 pings; the
//! server's own `iq` answers) directly as [`Element`]s.
//!
//! The bytes are written once and the routing view (name, `to`, `from`, `type`, `id`,
//! the whole `to`/`from` attributes, the namespace) is recorded while writing, so a
//! generated stanza is never framed a second time: [`ElementBuilder::finish`] yields
//! exactly the [`Element`] that [`parse_stanza`](super::parse_stanza) would yield for the
//! same bytes (the tests in `proto/tests/element_builder.rs` check that property).

use std::borrow::Cow;

use bytes::Bytes;

use super::arena::StanzaArena;
use super::element::{Element, Namespace, Span};
use super::escape::{escape_attr_into, escape_text_into, needs_attr_escape, unescape};

/// Writes one top-level element (a stanza) and records its routing view as it goes.
///
/// Shape of the output: `<name a='v' ...>inner</name>`, or the empty-element tag
/// `<name a='v' .../>` when no inner content was added. Attribute values are always
/// single-quoted and escaped with [`escape_attr_into`](super::escape_attr_into);
/// character data with [`escape_text_into`](super::escape_text_into).
///
/// The element is in the default content namespace of a `jabber:server` stream
/// ([`Namespace::Server`], what [`parse_stanza`](super::parse_stanza) yields for an
/// element without `xmlns`), unless an `xmlns` attribute is added, which is resolved as
/// the framer resolves it (`xmlns=''` gives [`Namespace::None`]).
///
/// Attributes must come before inner content; adding one after [`child_raw`],
/// [`text`] or [`child_with`] panics (a bug in the calling code). The caller must not
/// add the same attribute twice; names must be unprefixed, `xml:`-prefixed (`xml:lang`)
/// or namespace declarations (`xmlns`, `xmlns:p`), as the framer would accept for a
/// stanza on a stream whose header declares no prefix but `stream` (checked in debug
/// builds only).
///
/// ```
/// use fedrouter_proto::xml::{parse_stanza, ElementBuilder};
///
/// let el = ElementBuilder::new("iq")
///     .attr("type", "get")
///     .attr("from", "a.example")
///     .attr("to", "b&c.example")
///     .attr("id", "p1")
///     .child_raw("<ping xmlns='urn:xmpp:ping'/>")
///     .finish();
/// assert_eq!(
///     el.as_str(),
///     "<iq type='get' from='a.example' to='b&amp;c.example' id='p1'>\
///      <ping xmlns='urn:xmpp:ping'/></iq>"
/// );
/// // Spans are over the raw, escaped value, as for a received element.
/// assert_eq!(el.to(), Some("b&amp;c.example"));
/// assert_eq!(parse_stanza(el.bytes()).unwrap(), el);
/// ```
///
/// [`child_raw`]: ElementBuilder::child_raw
/// [`text`]: ElementBuilder::text
/// [`child_with`]: ElementBuilder::child_with
#[derive(Debug, Clone)]
#[must_use = "an ElementBuilder does nothing until `finish` is called"]
pub struct ElementBuilder {
    buf: Vec<u8>,
    qname_end: u32,
    /// Set once the start tag is closed with `>` (inner content follows).
    start_tag_end: Option<u32>,
    xmlns: Option<Span>,
    to: Option<Span>,
    from: Option<Span>,
    type_: Option<Span>,
    id: Option<Span>,
    to_attr: Option<Span>,
    from_attr: Option<Span>,
}

impl ElementBuilder {
    /// Starts `<name`. `name` is an unprefixed XML name (an NCName such as `message`,
    /// `presence`, `iq`); a prefixed name would not resolve on a `jabber:server` stream
    /// (checked in debug builds only).
    pub fn new(name: &str) -> ElementBuilder {
        ElementBuilder::with_capacity(name, 2 * name.len() + 64)
    }

    /// As [`ElementBuilder::new`], with room for `capacity` bytes of output, so that
    /// writing a stanza of known size allocates once.
    pub fn with_capacity(name: &str, capacity: usize) -> ElementBuilder {
        debug_assert!(
            matches!(super::names::split_qname(name.as_bytes()), Ok((b"", _))),
            "not an unprefixed element name: {name:?}"
        );
        ElementBuilder::start(name, Vec::with_capacity(capacity.max(2 * name.len() + 5)))
    }

    /// `<name` written into `buf` (empty).
    fn start(name: &str, mut buf: Vec<u8>) -> ElementBuilder {
        buf.push(b'<');
        buf.extend_from_slice(name.as_bytes());
        ElementBuilder {
            qname_end: buf.len() as u32,
            buf,
            start_tag_end: None,
            xmlns: None,
            to: None,
            from: None,
            type_: None,
            id: None,
            to_attr: None,
            from_attr: None,
        }
    }

    /// Adds ` name='value'`: `value` is unescaped text, escaped here
    /// ([`escape_attr_into`](super::escape_attr_into)). For `to`, `from`, `type` and
    /// `id` the span of the raw (escaped) value is recorded, as the framer records it, so
    /// [`Element::to`] and friends return the escaped form (`a&apos;b@x`); for `to` and
    /// `from` also the whole attribute (from the space before its name to the closing
    /// quote), which [`writer::write_readdressed`](super::writer::write_readdressed)
    /// drops when re-addressing.
    ///
    /// Panics: when inner content was already added.
    #[inline]
    pub fn attr(mut self, name: &str, value: &str) -> ElementBuilder {
        self.push_attr(name, value, false);
        self
    }

    /// Writes ` name='value'` and records the routing spans. `verbatim`: `value` holds
    /// nothing to escape (checked by the caller) and is copied as is.
    fn push_attr(&mut self, name: &str, value: &str, verbatim: bool) {
        assert!(
            self.start_tag_end.is_none(),
            "attribute {name:?} added after the element's content"
        );
        debug_assert!(valid_attr_name(name), "bad attribute name {name:?}");
        let whole_start = self.buf.len();
        self.buf.reserve(name.len() + value.len() + 4);
        self.buf.push(b' ');
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b"='");
        let value_start = self.buf.len();
        if verbatim {
            debug_assert!(!needs_attr_escape(value));
            self.buf.extend_from_slice(value.as_bytes());
        } else {
            escape_attr_into(value, &mut self.buf);
        }
        let value_end = self.buf.len();
        self.buf.push(b'\'');
        let value = Some(Span::new(value_start, value_end));
        let whole = Some(Span::new(whole_start, self.buf.len()));
        let slot = match name {
            "to" => {
                self.to_attr = whole;
                &mut self.to
            }
            "from" => {
                self.from_attr = whole;
                &mut self.from
            }
            "type" => &mut self.type_,
            "id" => &mut self.id,
            "xmlns" => &mut self.xmlns,
            _ => return,
        };
        debug_assert!(slot.is_none(), "attribute {name:?} added twice");
        *slot = value;
    }

    /// [`ElementBuilder::attr`] when `value` is `Some`; nothing when it is `None`.
    pub fn attr_opt(self, name: &str, value: Option<&str>) -> ElementBuilder {
        match value {
            Some(v) => self.attr(name, v),
            None => self,
        }
    }

    /// Adds ` name='...'` from `raw`, an attribute value exactly as received (still
    /// escaped; [`Element::to`], [`Element::from`], [`Element::id`] return that form).
    /// The value may come from a `"`-quoted attribute and hold a literal `'`, so it is
    /// unescaped and escaped again for `'` quotes: the bytes are those of
    /// [`writer::write_raw_attr`](super::writer::write_raw_attr), which copies `to`,
    /// `from` and `id` into replies (RFC 6120 §8.2.3, §8.3.1). No allocation unless `raw`
    /// holds a reference (`&...;`). A malformed `raw` (a bare `&`; never the case for a
    /// value from the framer) is taken as text and escaped.
    ///
    /// Panics: when inner content was already added.
    #[inline]
    pub fn raw_attr(mut self, name: &str, raw: &str) -> ElementBuilder {
        if needs_attr_escape(raw) {
            let value = unescape(raw).unwrap_or(Cow::Borrowed(raw));
            self.push_attr(name, &value, false);
        } else {
            // The usual JID or id: no reference to resolve and nothing to escape, so the
            // bytes as received are the bytes to write.
            self.push_attr(name, raw, true);
        }
        self
    }

    /// [`ElementBuilder::raw_attr`] when `raw` is `Some`; nothing when it is `None`
    /// (e.g. a request without `id`).
    pub fn raw_attr_opt(self, name: &str, raw: Option<&str>) -> ElementBuilder {
        match raw {
            Some(v) => self.raw_attr(name, v),
            None => self,
        }
    }

    /// Closes the start tag (once) so that inner content can follow.
    fn open_content(&mut self) {
        if self.start_tag_end.is_none() {
            self.buf.push(b'>');
            self.start_tag_end = Some(self.buf.len() as u32);
        }
    }

    /// Appends `xml` to the inner content as is: child elements and/or character data,
    /// already serialised. The caller vouches that it is well-formed content (balanced
    /// tags, escaped text, only the predefined entities, XML 1.0 characters) whose child
    /// elements declare every prefix they use (`xmlns='...'` on each child, as XMPP
    /// payloads do); it is not checked.
    pub fn child_raw(mut self, xml: &str) -> ElementBuilder {
        self.open_content();
        self.buf.extend_from_slice(xml.as_bytes());
        self
    }

    /// Appends `text` to the inner content as character data, escaped here
    /// ([`escape_text_into`](super::escape_text_into)).
    pub fn text(mut self, text: &str) -> ElementBuilder {
        self.open_content();
        escape_text_into(text, &mut self.buf);
        self
    }

    /// Lets `write` append inner content straight into the output buffer, for content
    /// produced by a writer function (no intermediate copy). Same contract as
    /// [`ElementBuilder::child_raw`]: `write` must append only well-formed UTF-8 XML
    /// content and must not touch the bytes already in the buffer.
    pub fn child_with(mut self, write: impl FnOnce(&mut Vec<u8>)) -> ElementBuilder {
        self.open_content();
        let before = self.buf.len();
        write(&mut self.buf);
        debug_assert!(self.buf.len() >= before, "child_with shrank the buffer");
        self
    }

    /// Ends the element (`/>` when no inner content was added, else `</name>`) and
    /// returns it, with the same fields [`parse_stanza`](super::parse_stanza) would give
    /// it: one allocation (the buffer, turned into [`Bytes`] without copying).
    pub fn finish(mut self) -> Element {
        let view = self.close();
        let bytes = Bytes::from(std::mem::take(&mut self.buf));
        self.element(bytes, view)
    }

    /// As [`ElementBuilder::with_capacity`], writing into `buf` (emptied first): a
    /// buffer given back by [`ElementBuilder::finish_in`], so that building allocates
    /// nothing once it is large enough.
    pub fn with_buffer(name: &str, mut buf: Vec<u8>) -> ElementBuilder {
        debug_assert!(
            matches!(super::names::split_qname(name.as_bytes()), Ok((b"", _))),
            "not an unprefixed element name: {name:?}"
        );
        buf.clear();
        ElementBuilder::start(name, buf)
    }

    /// As [`ElementBuilder::finish`], but the element's bytes are copied into `arena`
    /// (a shared chunk, [`StanzaArena`]) and this builder's buffer is given back to it
    /// for the next [`StanzaArena::builder`]: no allocation once the arena is warm.
    pub fn finish_in(mut self, arena: &mut StanzaArena) -> Element {
        let view = self.close();
        let bytes = arena.copy(&self.buf);
        let buf = std::mem::take(&mut self.buf);
        arena.give_back(buf);
        self.element(bytes, view)
    }

    /// Writes the end of the element; returns (empty, start_tag_end, inner_end).
    fn close(&mut self) -> (bool, u32, u32) {
        let qname_end = self.qname_end as usize;
        match self.start_tag_end {
            None => {
                self.buf.extend_from_slice(b"/>");
                // The framer leaves `inner_end` at 0 for an empty-element tag.
                (true, self.buf.len() as u32, 0)
            }
            Some(start_tag_end) => {
                let inner_end = self.buf.len() as u32;
                self.buf.extend_from_slice(b"</");
                self.buf.extend_from_within(1..qname_end);
                self.buf.push(b'>');
                (false, start_tag_end, inner_end)
            }
        }
    }

    /// The element over `bytes` (what [`ElementBuilder::close`] left in the buffer).
    fn element(
        &self,
        bytes: Bytes,
        (empty, start_tag_end, inner_end): (bool, u32, u32),
    ) -> Element {
        let ns = match self.xmlns {
            None => Namespace::Server,
            Some(s) => Namespace::classify(&bytes[s.range()], Some(&bytes)),
        };
        Element {
            bytes,
            ns,
            qname_end: self.qname_end,
            local: Span::new(1, self.qname_end as usize),
            start_tag_end,
            inner_end,
            empty,
            uses_header_prefix: false,
            to: self.to.into(),
            from: self.from.into(),
            type_: self.type_.into(),
            id: self.id.into(),
            to_attr: self.to_attr.into(),
            from_attr: self.from_attr.into(),
        }
    }
}

/// An attribute name the framer accepts on a stanza of a `jabber:server` stream whose
/// header declares only the `stream` prefix, without counting it as a use of a header
/// prefix: unprefixed, `xml:`, `xmlns` or `xmlns:`.
fn valid_attr_name(name: &str) -> bool {
    match super::names::split_qname(name.as_bytes()) {
        Ok((b"", _)) => true,
        Ok((b"xml", _)) => true,
        Ok((b"xmlns", p)) => p != b"xmlns",
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::parse_stanza;

    #[test]
    fn empty_element_matches_the_framer() {
        let el = ElementBuilder::new("presence")
            .attr("from", "a'b@x")
            .attr("to", "c\"d@y")
            .attr("type", "unavailable")
            .finish();
        assert_eq!(
            el.as_str(),
            "<presence from='a&apos;b@x' to='c&quot;d@y' type='unavailable'/>"
        );
        assert!(el.is_empty());
        assert_eq!(el.from(), Some("a&apos;b@x"));
        assert_eq!(el.inner(), b"");
        assert_eq!(parse_stanza(el.bytes()).unwrap(), el);
    }

    #[test]
    fn content_and_namespace_match_the_framer() {
        let el = ElementBuilder::new("message")
            .attr("xmlns", "urn:example:other")
            .attr("id", "m<1>")
            .text("a < b & c")
            .child_raw("<x xmlns='urn:x'/>")
            .child_with(|out| out.extend_from_slice(b"<y xmlns='urn:y'>t</y>"))
            .finish();
        assert_eq!(
            el.as_str(),
            "<message xmlns='urn:example:other' id='m&lt;1&gt;'>a &lt; b &amp; c\
             <x xmlns='urn:x'/><y xmlns='urn:y'>t</y></message>"
        );
        assert!(matches!(el.namespace(), Namespace::Other(n) if n == "urn:example:other"));
        assert_eq!(parse_stanza(el.bytes()).unwrap(), el);
        let none = ElementBuilder::new("iq").attr("xmlns", "").finish();
        assert_eq!(none.namespace(), &Namespace::None);
        assert_eq!(parse_stanza(none.bytes()).unwrap(), none);
    }

    #[test]
    fn raw_attr_requotes_a_double_quoted_value() {
        let src = parse_stanza(b"<message from=\"o'k&amp;&#39;@x\" to='y'/>").unwrap();
        let el = ElementBuilder::new("message")
            .raw_attr_opt("to", src.from())
            .raw_attr_opt("id", src.id())
            .finish();
        assert_eq!(el.as_str(), "<message to='o&apos;k&amp;&apos;@x'/>");
        assert_eq!(parse_stanza(el.bytes()).unwrap(), el);
    }

    #[test]
    #[should_panic(expected = "after the element's content")]
    fn attribute_after_content_panics() {
        let _ = ElementBuilder::new("message")
            .text("x")
            .attr("to", "y")
            .finish();
    }
}
