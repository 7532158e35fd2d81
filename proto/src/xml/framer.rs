//! The push-style stream framer.
//!
//! Two stages, both linear in the input however it is chunked:
//!
//! 1. A resumable byte scanner finds where each top-level element ends. It keeps its
//!    state between calls (inside a tag, inside a quoted value, inside CDATA, the open
//!    depth), so every byte is scanned once: feeding a byte at a time costs the same
//!    per byte as feeding 16 KiB. It enforces the size, depth and header limits at exact
//!    byte positions, so the error a peer gets does not depend on how its bytes were
//!    split by the network. It rejects comments, PIs and DTDs as it meets them.
//!    It searches for the few bytes that matter in each state (`<`, `>`, quotes) with
//!    the helpers of `find.rs`, and scans a buffered start tag, quoted values included,
//!    in one turn.
//! 2. Each completed element is checked once, in place, by `check.rs`: UTF-8 and XML
//!    characters, names, attribute quoting and duplicates, end-tag names, namespace
//!    prefixes, entity and character references. Scratch vectors are reused, so the
//!    steady state allocates nothing per element. (The stream header, once per stream,
//!    is read with quick-xml's borrowed reader.)

use bytes::{Buf, BytesMut};
use quick_xml::events::Event;
use quick_xml::Reader;

use super::check::{
    check_element, declare_default, declare_prefix, trim_ws, NsSource, Scratch, Tag, TagKind,
};
use super::element::{Element, Frame, Namespace, StreamHeader};
use super::error::{Limit, Restricted, XmlError};
use super::escape::unescape;
use super::find::{find1, find2, find3};
use super::names::{check_chars, split_qname};

/// Tag records kept between elements (12 bytes each).
const MAX_KEPT_TAGS: usize = 1024;

/// Limits that bound the framer's memory and CPU whatever a peer sends.
///
/// Per stream, the framer holds at most `max(max_header_size, max_element_size + one
/// read)` buffered bytes, plus 12 bytes of tag offsets per tag of the element in progress
/// (at most `3 × max_element_size` for an element made only of `<a></a>` pairs, given
/// back once it completes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest top-level element, in bytes (default 256 KiB). The framer buffers at most
    /// this much (plus one read) for an element in progress.
    pub max_element_size: usize,
    /// Largest XML declaration plus stream header, in bytes (default 16 KiB).
    pub max_header_size: usize,
    /// Deepest nesting, the top-level element counting as 1 (default 48).
    pub max_depth: u32,
    /// Most attributes (namespace declarations included) on one element (default 64).
    pub max_attributes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_element_size: 256 * 1024,
            max_header_size: 16 * 1024,
            max_depth: 48,
            max_attributes: 64,
        }
    }
}

/// Where the scanner is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Between top-level elements, or in the prolog: only whitespace may come before `<`.
    Top,
    /// Character data inside an element.
    Content,
    /// Just after `<`.
    Lt,
    /// Inside a start tag; `quote` is the open quote of an attribute value, or 0.
    StartTag { quote: u8 },
    /// Inside an end tag.
    EndTag,
    /// After `<!`: `matched` bytes of `[CDATA[` seen so far.
    Bang { matched: u8 },
    /// Inside a CDATA section whose content starts at `content_start`.
    CData { content_start: usize },
    /// Inside the XML declaration (prolog only).
    Decl,
}

/// Which document the framer is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the stream header: optional BOM and XML declaration, whitespace.
    Prolog { decl_allowed: bool },
    /// After the header: top-level elements until `</stream:stream>`.
    Stream,
    /// The peer closed its stream; further bytes are ignored.
    Closed,
}

/// What the scanner found.
enum Found {
    NeedMore,
    Header { end: usize },
    Element { end: usize, empty: bool },
    Close { end: usize },
}

/// What the stream header declared, for resolving elements.
#[derive(Debug, Default)]
pub(super) struct HeaderCtx {
    pub(super) close_qname: Vec<u8>,
    pub(super) default_ns: Option<Namespace>,
    pub(super) prefixes: Vec<(Vec<u8>, Namespace)>,
}

/// Size of a receive buffer when one is (re)allocated: large enough that a busy stream
/// fills it with many stanzas, so splitting elements off it rarely allocates.
const INITIAL_BUFFER: usize = 16 * 1024;

/// A push-style, zero-copy framer for one direction of an XMPP stream (RFC 6120 §4).
///
/// Feed it bytes with [`Framer::feed`] (or have them written straight into its receive
/// buffer with [`Framer::feed_with`]),
/// then call [`Framer::next_frame`] until it returns `Ok(None)`. It yields the
/// [`StreamHeader`], each top-level [`Element`] (a [`Bytes`](bytes::Bytes) view of the buffer, never
/// copied), and [`Frame::Close`]. Errors are fatal and sticky; map them to a stream error
/// with [`XmlError::condition`]. After a stream restart (RFC 6120 §5.4.3.3 after TLS,
/// §6.4.6 after SASL) call [`Framer::reset`].
///
/// Memory: the buffer holds at most one element in progress, bounded by [`Limits`], plus
/// whatever the caller feeds before calling `next_frame`.
#[derive(Debug)]
pub struct Framer {
    buf: BytesMut,
    /// The previous receive buffer, emptied: when `buf` fills while elements split off
    /// it are still alive, the framer continues in this one if every element split off
    /// it is gone by then (the usual case on a busy stream), instead of allocating.
    spare: BytesMut,
    limits: Limits,
    pos: usize,
    start: usize,
    tag_start: usize,
    depth: u32,
    scan: Scan,
    phase: Phase,
    failed: Option<XmlError>,
    header: HeaderCtx,
    scratch: Scratch,
}

impl Default for Framer {
    fn default() -> Self {
        Framer::new(Limits::default())
    }
}

impl Framer {
    /// A framer expecting a stream header, with the given limits.
    pub fn new(limits: Limits) -> Framer {
        Framer {
            buf: BytesMut::new(),
            spare: BytesMut::new(),
            limits,
            pos: 0,
            start: 0,
            tag_start: 0,
            depth: 0,
            scan: Scan::Top,
            phase: Phase::Prolog { decl_allowed: true },
            failed: None,
            header: HeaderCtx::default(),
            scratch: Scratch::default(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Appends received bytes. Nothing is parsed until [`Framer::next_frame`].
    pub fn feed(&mut self, data: &[u8]) {
        self.feed_with(data.len(), |buf| buf.extend_from_slice(data));
    }

    /// Appends received bytes written by `fill` straight into the receive buffer, for a
    /// caller that would otherwise copy them through a buffer of its own first (the
    /// runtime moves TLS plaintext from rustls here). `len`: how many bytes `fill` is
    /// about to append; room for them is made first, as [`Framer::feed`] does for its
    /// data, so that appending them does not reallocate. `fill` may only append (the
    /// bytes already buffered must stay as they are); appending more than `len` is
    /// allowed but may reallocate. `fill` is not called once the stream is closed or has
    /// failed: those bytes are dropped, as [`Framer::feed`] drops them. Nothing is parsed
    /// until [`Framer::next_frame`].
    pub fn feed_with(&mut self, len: usize, fill: impl FnOnce(&mut BytesMut)) {
        if self.phase == Phase::Closed || self.failed.is_some() {
            return;
        }
        if self.buf.capacity() == 0 {
            // First bytes, or the first since `release_idle_buffer`.
            self.buf = BytesMut::with_capacity(len.max(INITIAL_BUFFER));
        } else if self.buf.capacity() - self.buf.len() < len && !self.buf.try_reclaim(len) {
            self.next_buffer(len);
        }
        let before = self.buf.len();
        fill(&mut self.buf);
        debug_assert!(self.buf.len() >= before, "feed_with: fill may only append");
    }

    /// The buffer is full and elements split off it are still alive (or it must grow):
    /// moves what it holds (the element in progress; offsets stay valid, they count from
    /// its start) into the spare buffer when that can be reused in place, else into a
    /// new one, and keeps the full one as the spare. A new buffer at least doubles what
    /// is buffered, so an element fed a byte at a time is copied O(1) times per byte.
    fn next_buffer(&mut self, more: usize) {
        let need = self.buf.len() + more;
        let mut next = std::mem::take(&mut self.spare);
        next.clear();
        if !next.try_reclaim(need) {
            next = BytesMut::with_capacity(need.max(2 * self.buf.len()).max(INITIAL_BUFFER));
        }
        next.extend_from_slice(&self.buf);
        let mut full = std::mem::replace(&mut self.buf, next);
        full.clear();
        self.spare = full;
    }

    /// Gives the receive buffer's memory back when nothing is buffered, so that an idle
    /// stream holds no buffer (10,000 idle S2S streams would otherwise keep 160 MB). The
    /// next [`Framer::feed`] allocates a fresh buffer. Elements already yielded keep
    /// their own reference to the old buffer. Returns whether memory was released.
    pub fn release_idle_buffer(&mut self) -> bool {
        if self.buf.is_empty() && self.buf.capacity() > 0 && self.pos == 0 && self.start == 0 {
            self.buf = BytesMut::new();
            self.spare = BytesMut::new();
            true
        } else {
            false
        }
    }

    /// The receive buffer, for a runtime that reads into it directly (append only; the
    /// bytes already there must not be changed).
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes buffered and not yet yielded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Has the peer closed its stream (`</stream:stream>` seen)?
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Expects a new stream header, as after a stream restart. Bytes already buffered
    /// belong to the new stream and are kept.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.start = 0;
        self.tag_start = 0;
        self.depth = 0;
        self.scan = Scan::Top;
        self.phase = Phase::Prolog { decl_allowed: true };
        self.failed = None;
        self.header = HeaderCtx::default();
    }

    /// Drops every buffered byte, as when the transport under the stream changes (the
    /// bytes after `<proceed/>` are TLS records, not XML).
    pub fn discard_buffered(&mut self) {
        self.buf.clear();
        self.pos = 0;
        self.start = 0;
    }

    /// The next frame, `Ok(None)` when more bytes are needed (or the stream is closed).
    ///
    /// Errors: the first violation of well-formedness, RFC 6120 §11 restrictions,
    /// namespaces or [`Limits`], as an [`XmlError`]; the same error is returned by every
    /// later call.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, XmlError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.phase == Phase::Closed {
            return Ok(None);
        }
        match self.step() {
            Ok(f) => Ok(f),
            Err(e) => {
                self.failed = Some(e);
                self.buf = BytesMut::new();
                self.spare = BytesMut::new();
                Err(e)
            }
        }
    }

    fn step(&mut self) -> Result<Option<Frame>, XmlError> {
        match self.scan_input()? {
            Found::NeedMore => {
                if self.scan == Scan::Top && self.phase == Phase::Stream && self.pos > 0 {
                    // Whitespace keepalives between elements: drop them now.
                    self.buf.advance(self.pos);
                    self.pos = 0;
                    self.start = 0;
                }
                Ok(None)
            }
            Found::Header { end } => {
                let header = self.parse_header(self.tag_start, end)?;
                self.buf.advance(end);
                self.pos = 0;
                self.start = 0;
                self.scan = Scan::Top;
                self.phase = Phase::Stream;
                Ok(Some(Frame::Header(header)))
            }
            Found::Element { end, empty } => {
                let (start, header) = (self.start, &self.header);
                let (info, src) = check_element(
                    &self.buf[start..end],
                    header,
                    &mut self.scratch,
                    &self.limits,
                )?;
                self.buf.advance(start);
                let bytes = self.buf.split_to(end - start).freeze();
                if self.scratch.tags.capacity() > MAX_KEPT_TAGS {
                    // After a pathological element (thousands of tags) give the memory
                    // back; ordinary stanzas never get here, so no steady-state cost.
                    self.scratch.tags.shrink_to(MAX_KEPT_TAGS);
                }
                self.pos = 0;
                self.start = 0;
                self.scan = Scan::Top;
                let ns = match src {
                    NsSource::Element(s) => Namespace::classify(&bytes[s.range()], Some(&bytes)),
                    NsSource::Header(i) => self.header.prefixes[i].1.clone(),
                    NsSource::HeaderDefault => {
                        self.header.default_ns.clone().unwrap_or(Namespace::None)
                    }
                    NsSource::None => Namespace::None,
                };
                Ok(Some(Frame::Element(Element {
                    bytes,
                    ns,
                    qname_end: info.qname_end,
                    local: info.local,
                    start_tag_end: info.start_tag_end,
                    inner_end: info.inner_end,
                    empty,
                    uses_header_prefix: info.uses_header_prefix,
                    to: info.to.into(),
                    from: info.from.into(),
                    type_: info.type_.into(),
                    id: info.id.into(),
                    to_attr: info.to_attr.into(),
                    from_attr: info.from_attr.into(),
                })))
            }
            Found::Close { end } => {
                let name = trim_ws(&self.buf[self.tag_start + 2..end - 1]);
                if name != self.header.close_qname.as_slice() {
                    return Err(XmlError::NotWellFormed(
                        "end tag does not match the stream header",
                    ));
                }
                self.buf.advance(end);
                self.pos = 0;
                self.phase = Phase::Closed;
                Ok(Some(Frame::Close))
            }
        }
    }

    /// The exclusive end of the byte window the scanner may look at, and the limit that
    /// applies when it is reached.
    fn window(&self) -> (usize, Limit) {
        match (self.phase, self.scan) {
            (Phase::Prolog { .. }, _) => (self.limits.max_header_size, Limit::HeaderSize),
            (_, Scan::Top) => (usize::MAX, Limit::ElementSize),
            _ => (
                self.start.saturating_add(self.limits.max_element_size),
                Limit::ElementSize,
            ),
        }
    }

    /// Records a tag of the element in progress for the checker.
    #[inline]
    fn record(&mut self, kind: TagKind) {
        self.scratch.tags.push(Tag {
            start: (self.tag_start - self.start) as u32,
            end: (self.pos - self.start) as u32,
            kind,
        });
    }

    /// The scanner used up its window: more input is needed, unless the window ended at
    /// a limit.
    #[inline]
    fn exhausted(&self, limit: usize, which: Limit) -> Result<Found, XmlError> {
        if self.pos >= limit {
            Err(XmlError::PolicyViolation(which))
        } else {
            Ok(Found::NeedMore)
        }
    }

    fn scan_input(&mut self) -> Result<Found, XmlError> {
        const CDATA: &[u8; 7] = b"[CDATA[";
        // The window changes only when an element starts (the `Top` arm below).
        let (mut limit, mut which) = self.window();
        loop {
            let end = self.buf.len().min(limit);
            if self.pos >= end {
                if self.pos >= limit {
                    return Err(XmlError::PolicyViolation(which));
                }
                return Ok(Found::NeedMore);
            }
            let buf = &self.buf[..end];
            let prolog = matches!(self.phase, Phase::Prolog { .. });
            match self.scan {
                Scan::Top => {
                    if self.pos == 0 && prolog {
                        // A UTF-8 byte order mark may open the stream.
                        const BOM: &[u8] = b"\xEF\xBB\xBF";
                        let n = buf.len().min(3);
                        if buf[..n] == BOM[..n] {
                            if n < 3 {
                                return Ok(Found::NeedMore);
                            }
                            self.pos = 3;
                            continue;
                        }
                    }
                    let rest = &buf[self.pos..];
                    let ws = rest
                        .iter()
                        .position(|&b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'));
                    if ws != Some(0) {
                        // XML 1.0 §2.8: the XML declaration comes first, so whitespace
                        // (in this chunk or an earlier one) rules it out.
                        if let Phase::Prolog { decl_allowed } = &mut self.phase {
                            *decl_allowed = false;
                        }
                    }
                    match ws {
                        None => {
                            self.pos = end;
                            return self.exhausted(limit, which);
                        }
                        Some(i) => {
                            self.pos += i;
                            if buf[self.pos] != b'<' {
                                return Err(if prolog {
                                    XmlError::NotWellFormed(
                                        "character data before the stream header",
                                    )
                                } else {
                                    XmlError::BadFormat("character data at stream level")
                                });
                            }
                            if !prolog {
                                self.start = self.pos;
                                self.scratch.tags.clear();
                            }
                            self.tag_start = self.pos;
                            self.pos += 1;
                            self.scan = Scan::Lt;
                            (limit, which) = self.window();
                        }
                    }
                }
                Scan::Lt => match buf[self.pos] {
                    b'/' => {
                        if prolog {
                            return Err(XmlError::NotWellFormed(
                                "end tag before the stream header",
                            ));
                        }
                        self.pos += 1;
                        self.scan = Scan::EndTag;
                    }
                    b'!' => {
                        self.pos += 1;
                        self.scan = Scan::Bang { matched: 0 };
                    }
                    b'?' => match self.phase {
                        Phase::Prolog { decl_allowed: true } => {
                            self.pos += 1;
                            self.scan = Scan::Decl;
                        }
                        _ => {
                            return Err(XmlError::RestrictedXml(Restricted::ProcessingInstruction))
                        }
                    },
                    _ => self.scan = Scan::StartTag { quote: 0 },
                },
                Scan::StartTag { quote: 0 } => {
                    // The rest of the tag in one go, quoted values included, as far as
                    // it is buffered.
                    let mut pos = self.pos;
                    let at = loop {
                        let Some(i) = find3(b'>', b'"', b'\'', &buf[pos..]) else {
                            self.pos = end;
                            return self.exhausted(limit, which);
                        };
                        let at = pos + i;
                        pos = at + 1;
                        let quote = buf[at];
                        if quote == b'>' {
                            break at;
                        }
                        let Some(j) = find2(quote, b'<', &buf[pos..]) else {
                            self.scan = Scan::StartTag { quote };
                            self.pos = end;
                            return self.exhausted(limit, which);
                        };
                        if buf[pos + j] == b'<' {
                            return Err(XmlError::NotWellFormed("'<' in an attribute value"));
                        }
                        pos += j + 1;
                    };
                    self.pos = at + 1;
                    let empty = at > self.tag_start + 1 && buf[at - 1] == b'/';
                    if prolog {
                        if empty {
                            return Err(XmlError::BadFormat("self-closed stream header"));
                        }
                        return Ok(Found::Header { end: self.pos });
                    }
                    self.record(if empty {
                        TagKind::Empty
                    } else {
                        TagKind::Start
                    });
                    if empty {
                        if self.depth == 0 {
                            return Ok(Found::Element {
                                end: self.pos,
                                empty: true,
                            });
                        }
                    } else {
                        self.depth += 1;
                        if self.depth > self.limits.max_depth {
                            return Err(XmlError::PolicyViolation(Limit::Depth));
                        }
                    }
                    self.scan = Scan::Content;
                }
                Scan::StartTag { quote } => {
                    let rest = &buf[self.pos..];
                    let Some(i) = find2(quote, b'<', rest) else {
                        self.pos = end;
                        return self.exhausted(limit, which);
                    };
                    let at = self.pos + i;
                    if buf[at] == b'<' {
                        return Err(XmlError::NotWellFormed("'<' in an attribute value"));
                    }
                    self.pos = at + 1;
                    self.scan = Scan::StartTag { quote: 0 };
                }
                Scan::Content => match find1(b'<', &buf[self.pos..]) {
                    None => {
                        self.pos = end;
                        return self.exhausted(limit, which);
                    }
                    Some(i) => {
                        self.tag_start = self.pos + i;
                        self.pos += i + 1;
                        // A start tag (the common case) goes straight to its scan.
                        self.scan = match buf.get(self.pos) {
                            Some(b'/' | b'!' | b'?') | None => Scan::Lt,
                            Some(_) => Scan::StartTag { quote: 0 },
                        };
                    }
                },
                Scan::EndTag => match find1(b'>', &buf[self.pos..]) {
                    None => {
                        self.pos = end;
                        return self.exhausted(limit, which);
                    }
                    Some(i) => {
                        self.pos += i + 1;
                        if self.depth == 0 {
                            return Ok(Found::Close { end: self.pos });
                        }
                        self.record(TagKind::End);
                        self.depth -= 1;
                        if self.depth == 0 {
                            return Ok(Found::Element {
                                end: self.pos,
                                empty: false,
                            });
                        }
                        self.scan = Scan::Content;
                    }
                },
                Scan::Bang { matched } => {
                    let b = buf[self.pos];
                    if matched == 0 {
                        match b {
                            b'-' => return Err(XmlError::RestrictedXml(Restricted::Comment)),
                            b'[' => {}
                            _ => return Err(XmlError::RestrictedXml(Restricted::Dtd)),
                        }
                    }
                    if b != CDATA[matched as usize] {
                        return Err(XmlError::NotWellFormed("bad markup after '<!'"));
                    }
                    self.pos += 1;
                    if matched as usize + 1 < CDATA.len() {
                        self.scan = Scan::Bang {
                            matched: matched + 1,
                        };
                    } else if self.depth == 0 {
                        return Err(if prolog {
                            XmlError::NotWellFormed("CDATA before the stream header")
                        } else {
                            XmlError::BadFormat("CDATA at stream level")
                        });
                    } else {
                        self.scan = Scan::CData {
                            content_start: self.pos,
                        };
                    }
                }
                Scan::CData { content_start } => match memchr::memchr(b'>', &buf[self.pos..]) {
                    None => {
                        self.pos = end;
                        return self.exhausted(limit, which);
                    }
                    Some(i) => {
                        let gt = self.pos + i;
                        self.pos = gt + 1;
                        if gt >= content_start + 2 && &buf[gt - 2..gt] == b"]]" {
                            self.record(TagKind::CData);
                            self.scan = Scan::Content;
                        }
                    }
                },
                Scan::Decl => match memchr::memchr(b'>', &buf[self.pos..]) {
                    None => {
                        self.pos = end;
                        return self.exhausted(limit, which);
                    }
                    Some(i) => {
                        let gt = self.pos + i;
                        self.pos = gt + 1;
                        if buf[gt - 1] == b'?' && gt - 1 > self.tag_start + 1 {
                            check_decl(&buf[self.tag_start + 2..gt - 1])?;
                            self.phase = Phase::Prolog {
                                decl_allowed: false,
                            };
                            self.scan = Scan::Top;
                        }
                    }
                },
            }
        }
    }

    fn parse_header(&mut self, start: usize, end: usize) -> Result<StreamHeader, XmlError> {
        let tag = &self.buf[start..end];
        check_chars(tag)?;
        let mut reader = Reader::from_reader(tag);
        configure(&mut reader);
        let e = match reader.read_event() {
            Ok(Event::Start(e)) => e,
            _ => return Err(XmlError::NotWellFormed("malformed stream header")),
        };
        let (prefix, local) = split_qname(e.name().into_inner().as_bytes())?;
        let mut h = StreamHeader {
            to: None,
            from: None,
            id: None,
            version: None,
            lang: None,
            content_ns: Namespace::None,
            stream_prefix: String::from_utf8_lossy(prefix).into_owned(),
            prefixes: Vec::new(),
        };
        let mut ctx = HeaderCtx {
            close_qname: e.name().into_inner().as_bytes().to_vec(),
            ..Default::default()
        };
        let mut seen: Vec<&[u8]> = Vec::new();
        let mut attr_prefixes: Vec<&[u8]> = Vec::new();
        for attr in e.attributes().with_checks(false) {
            let attr = attr.map_err(|_| XmlError::NotWellFormed("malformed attribute"))?;
            if seen.len() >= self.limits.max_attributes {
                return Err(XmlError::PolicyViolation(Limit::Attributes));
            }
            let key = attr.key.into_inner().as_bytes();
            if seen.contains(&key) {
                return Err(XmlError::NotWellFormed("duplicate attribute"));
            }
            seen.push(key);
            let (kp, kl) = split_qname(key)?;
            let value = unescape(&attr.value)?.into_owned();
            match (kp, kl) {
                (b"", b"xmlns") => {
                    declare_default(value.as_bytes())?;
                    ctx.default_ns = Some(Namespace::classify(value.as_bytes(), None))
                }
                (b"xmlns", p) => {
                    declare_prefix(p, value.as_bytes())?;
                    ctx.prefixes
                        .push((p.to_vec(), Namespace::classify(value.as_bytes(), None)));
                    h.prefixes
                        .push((String::from_utf8_lossy(p).into_owned(), value));
                }
                (b"", b"to") => h.to = Some(value),
                (b"", b"from") => h.from = Some(value),
                (b"", b"id") => h.id = Some(value),
                (b"", b"version") => h.version = Some(value),
                (b"xml", b"lang") => h.lang = Some(value),
                (b"", _) | (b"xml", _) => {}
                (p, _) => attr_prefixes.push(p),
            }
        }
        if attr_prefixes
            .iter()
            .any(|p| !ctx.prefixes.iter().any(|(q, _)| q == p))
        {
            return Err(XmlError::BadNamespacePrefix(
                "undeclared attribute prefix on the stream header",
            ));
        }
        let stream_ns = if prefix.is_empty() {
            ctx.default_ns.clone()
        } else {
            ctx.prefixes
                .iter()
                .rev()
                .find(|(p, _)| p == prefix)
                .map(|(_, n)| n.clone())
        };
        match stream_ns {
            None if !prefix.is_empty() => {
                return Err(XmlError::BadNamespacePrefix("undeclared stream prefix"))
            }
            Some(Namespace::Streams) if local == b"stream" => {}
            _ => {
                return Err(XmlError::InvalidNamespace(
                    "stream element not in the streams namespace",
                ))
            }
        }
        match &ctx.default_ns {
            Some(n @ (Namespace::Server | Namespace::Client)) => h.content_ns = n.clone(),
            _ => {
                return Err(XmlError::InvalidNamespace(
                    "content namespace is not jabber:server or jabber:client",
                ))
            }
        }
        self.header = ctx;
        Ok(h)
    }
}

fn configure(reader: &mut Reader<&[u8]>) {
    let c = reader.config_mut();
    c.check_end_names = false;
    c.check_comments = false;
    c.expand_empty_elements = false;
    c.trim_text_start = false;
    c.trim_text_end = false;
    c.allow_dangling_amp = false;
    c.allow_unmatched_ends = false;
}

/// Checks the body of an XML declaration, `xml version='1.0' encoding='UTF-8'`
/// (XML 1.0 §2.8, §4.3.3); anything else that starts `<?` is a processing instruction.
fn check_decl(body: &[u8]) -> Result<(), XmlError> {
    let is_decl =
        body.len() > 3 && &body[..3] == b"xml" && matches!(body[3], b' ' | b'\t' | b'\r' | b'\n');
    if !is_decl {
        return Err(XmlError::RestrictedXml(Restricted::ProcessingInstruction));
    }
    check_chars(body)?;
    let text = std::str::from_utf8(body).map_err(|_| XmlError::UnsupportedEncoding)?;
    let value_of = |name: &str| -> Option<&str> {
        let at = text.find(name)? + name.len();
        let rest = text[at..].trim_start().strip_prefix('=')?.trim_start();
        let q = rest.chars().next()?;
        if q != '\'' && q != '"' {
            return None;
        }
        rest[1..].split(q).next()
    };
    match value_of("version") {
        Some(v) if v.starts_with("1.") => {}
        _ => return Err(XmlError::NotWellFormed("bad XML declaration version")),
    }
    if let Some(enc) = value_of("encoding") {
        if !enc.eq_ignore_ascii_case("utf-8") {
            return Err(XmlError::UnsupportedEncoding);
        }
    }
    Ok(())
}
