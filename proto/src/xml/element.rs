//! What the framer yields: the stream header, top-level elements with their routing
//! view, and the stream's close.

use bytes::Bytes;

use super::ns;

/// A byte range inside an [`Element`]'s bytes. `u32` offsets: elements are bounded by
/// [`Limits::max_element_size`](super::Limits::max_element_size), far below 4 GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    /// First byte.
    pub start: u32,
    /// One past the last byte.
    pub end: u32,
}

impl Span {
    pub(crate) fn new(start: usize, end: usize) -> Self {
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    /// The range as `usize` for slicing.
    pub fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }

    /// Length in bytes.
    pub fn len(self) -> usize {
        (self.end - self.start) as usize
    }

    /// Is the span empty?
    pub fn is_empty(self) -> bool {
        self.start == self.end
    }
}

/// An optional [`Span`] in the 8 bytes of a span (`Option<Span>` takes 12): `start ==
/// u32::MAX` means none, an offset no element reaches (elements are far below 4 GiB).
/// Keeps [`Element`], which crosses shards by value, 24 bytes smaller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MaybeSpan(Span);

impl MaybeSpan {
    const NONE: MaybeSpan = MaybeSpan(Span {
        start: u32::MAX,
        end: u32::MAX,
    });

    /// The span, if there is one.
    #[inline]
    pub(crate) fn get(self) -> Option<Span> {
        (self.0.start != u32::MAX).then_some(self.0)
    }
}

impl From<Option<Span>> for MaybeSpan {
    #[inline]
    fn from(s: Option<Span>) -> Self {
        s.map_or(MaybeSpan::NONE, MaybeSpan)
    }
}

/// The namespace of an element, resolved per Namespaces in XML 1.0: well-known XMPP
/// namespaces as variants (so routing matches on an enum, not on strings), others as a
/// refcounted view of the bytes that declare them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Namespace {
    /// No namespace (`xmlns=''`, or none declared).
    None,
    /// `jabber:server` (RFC 6120 §4.8.3).
    Server,
    /// `jabber:client`.
    Client,
    /// `jabber:server:dialback` (XEP-0220).
    Dialback,
    /// `http://etherx.jabber.org/streams` (RFC 6120 §4.8.1).
    Streams,
    /// `urn:ietf:params:xml:ns:xmpp-tls` (RFC 6120 §5).
    Tls,
    /// `urn:ietf:params:xml:ns:xmpp-sasl` (RFC 6120 §6).
    Sasl,
    /// `urn:xmpp:sm:3` (XEP-0198).
    StreamManagement,
    /// Any other namespace name, exactly as declared (raw attribute value).
    Other(Bytes),
}

impl Namespace {
    /// Classifies a raw namespace name. `owner` is the buffer `raw` was sliced from, so an
    /// unknown name is kept as a refcounted view without copying.
    pub(crate) fn classify(raw: &[u8], owner: Option<&Bytes>) -> Namespace {
        match raw {
            b"" => Namespace::None,
            ns::SERVER_B => Namespace::Server,
            ns::CLIENT_B => Namespace::Client,
            ns::DIALBACK_B => Namespace::Dialback,
            ns::STREAMS_B => Namespace::Streams,
            ns::TLS_B => Namespace::Tls,
            ns::SASL_B => Namespace::Sasl,
            ns::SM_B => Namespace::StreamManagement,
            _ => Namespace::Other(match owner {
                Some(b) => b.slice_ref(raw),
                None => Bytes::copy_from_slice(raw),
            }),
        }
    }

    /// The namespace name as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Namespace::None => b"",
            Namespace::Server => ns::SERVER_B,
            Namespace::Client => ns::CLIENT_B,
            Namespace::Dialback => ns::DIALBACK_B,
            Namespace::Streams => ns::STREAMS_B,
            Namespace::Tls => ns::TLS_B,
            Namespace::Sasl => ns::SASL_B,
            Namespace::StreamManagement => ns::SM_B,
            Namespace::Other(b) => b,
        }
    }

    /// Is this one of the stanza namespaces, `jabber:server` or `jabber:client`?
    pub fn is_stanza_ns(&self) -> bool {
        matches!(self, Namespace::Server | Namespace::Client)
    }
}

/// The stream header (`<stream:stream ...>`, RFC 6120 §4.7) with unescaped attribute
/// values. Allocated once per stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    /// `to` (§4.7.2).
    pub to: Option<String>,
    /// `from` (§4.7.1).
    pub from: Option<String>,
    /// `id` (§4.7.3); servers such as Prosody send `id=''` on S2S streams they initiate.
    pub id: Option<String>,
    /// `version` (§4.7.5); absent on pre-RFC 3920 (dialback-only) peers.
    pub version: Option<String>,
    /// `xml:lang` (§4.7.4).
    pub lang: Option<String>,
    /// The content namespace declared as default (`jabber:server` or `jabber:client`).
    pub content_ns: Namespace,
    /// The prefix bound to the streams namespace (usually `stream`; empty if none).
    pub stream_prefix: String,
    /// Every prefix declared on the header, `(prefix, namespace)`, e.g. `("db",
    /// "jabber:server:dialback")`. Elements may use these prefixes.
    pub prefixes: Vec<(String, String)>,
}

impl StreamHeader {
    /// Whether the header declares `xmlns:db='jabber:server:dialback'` (XEP-0220 §2.1
    /// requires it of dialback-capable servers).
    pub fn declares_dialback(&self) -> bool {
        self.prefixes
            .iter()
            .any(|(p, n)| p == "db" && n == ns::DIALBACK)
    }
}

/// One complete top-level element: a stanza (message, presence, iq) or a nonza
/// (stream:features, starttls, db:result, SASL elements, stream:error, XEP-0198 ...).
///
/// `bytes` is a refcounted view of the read buffer holding exactly the element as
/// received (not re-serialised), or, for a stanza the server generated, the buffer an
/// [`ElementBuilder`](super::ElementBuilder) wrote. The routing view (name, namespace, `to`, `from`, `type`,
/// `id`) is a set of spans into it: nothing is copied or allocated per element. Attribute
/// values are raw, still escaped as on the wire; [`crate::xml::unescape`] them when a
/// value may hold references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub(crate) bytes: Bytes,
    pub(crate) ns: Namespace,
    pub(crate) qname_end: u32,
    pub(crate) local: Span,
    pub(crate) start_tag_end: u32,
    pub(crate) inner_end: u32,
    pub(crate) empty: bool,
    pub(crate) uses_header_prefix: bool,
    pub(crate) to: MaybeSpan,
    pub(crate) from: MaybeSpan,
    pub(crate) type_: MaybeSpan,
    pub(crate) id: MaybeSpan,
    pub(crate) to_attr: MaybeSpan,
    pub(crate) from_attr: MaybeSpan,
}

impl Element {
    #[inline]
    fn str_at(&self, span: Span) -> &str {
        let bytes = &self.bytes[span.range()];
        debug_assert!(std::str::from_utf8(bytes).is_ok());
        // SAFETY: an `Element` is built either by the framer, which checked that the
        // whole element is UTF-8 (`check_chars`), or by `ElementBuilder`, whose start tag
        // (where every span lies) is written from `&str` names and escaped `&str` values.
        // Every span starts and ends next to an ASCII delimiter (`<`, `:`, whitespace,
        // `=`, a quote, `>`), so it falls on character boundaries and is UTF-8 too.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    /// The element exactly as received, `<` to the final `>`.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Consumes the element, returning its bytes.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// The element as text (the framer checked it is UTF-8; a built element is written
    /// from text).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes).unwrap_or_default()
    }

    /// The local name, e.g. `"presence"`, `"result"` for `db:result`.
    pub fn name(&self) -> &str {
        self.str_at(self.local)
    }

    /// The qualified name as written, e.g. `"db:result"`.
    pub fn qname(&self) -> &str {
        self.str_at(Span::new(1, self.qname_end as usize))
    }

    /// The element's resolved namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// Is this `{ns}name`?
    pub fn is(&self, name: &str, ns: &Namespace) -> bool {
        self.name() == name && &self.ns == ns
    }

    /// Raw `to` attribute value.
    pub fn to(&self) -> Option<&str> {
        self.to.get().map(|s| self.str_at(s))
    }

    /// Whether the start tag carries a `to` attribute (whatever its value).
    pub fn has_to_attribute(&self) -> bool {
        self.to_attr.get().is_some()
    }

    /// Byte offset just after the qualified name in the start tag (`<message` → 8): where
    /// an attribute can be inserted without touching the rest
    /// (`fedrouter::router::fanout` writes each recipient's `to` there).
    pub fn qname_end(&self) -> usize {
        self.qname_end as usize
    }

    /// Raw `from` attribute value.
    pub fn from(&self) -> Option<&str> {
        self.from.get().map(|s| self.str_at(s))
    }

    /// Raw `type` attribute value.
    pub fn type_(&self) -> Option<&str> {
        self.type_.get().map(|s| self.str_at(s))
    }

    /// Raw `id` attribute value.
    pub fn id(&self) -> Option<&str> {
        self.id.get().map(|s| self.str_at(s))
    }

    /// Is it an empty-element tag (`<presence/>`)?
    pub fn is_empty(&self) -> bool {
        self.empty
    }

    /// The bytes between the start tag and the end tag (character data and children,
    /// raw); empty for an empty-element tag.
    pub fn inner(&self) -> &[u8] {
        if self.empty {
            return &[];
        }
        &self.bytes[self.start_tag_end as usize..self.inner_end as usize]
    }

    /// The inner character data as text when the element has no child elements, e.g. the
    /// key of a `db:result` or the base64 payload of a SASL `auth` (raw, still escaped).
    pub fn text(&self) -> &str {
        std::str::from_utf8(self.inner()).unwrap_or_default()
    }

    /// Whether a child element or attribute uses a prefix declared on the stream header
    /// (other than the element's own name): such an element needs those declarations
    /// added when forwarded onto another stream.
    pub fn uses_header_prefix(&self) -> bool {
        self.uses_header_prefix
    }
}

/// One unit yielded by the [`Framer`](super::Framer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The stream header, once per stream (and again after each restart).
    Header(StreamHeader),
    /// A complete top-level element.
    Element(Element),
    /// `</stream:stream>`: the peer closed its stream (RFC 6120 §4.4).
    Close,
}
