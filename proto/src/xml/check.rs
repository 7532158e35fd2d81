//! The element checker: the second stage of the framer. Given one complete top-level
//! element and the tags the scanner recorded in it, it checks the element in place
//! (UTF-8 and XML characters, names, attributes, end tags, namespace prefixes, references
//! in character data and attribute values) and extracts its routing view.

use super::element::Span;
use super::error::{Limit, XmlError};
use super::escape::{check_references, resolve_reference};
use super::framer::{HeaderCtx, Limits};
use super::names::{check_chars, split_qname};
use super::ns;

/// Where a top-level element's namespace was declared.
#[derive(Clone, Copy)]
pub(super) enum NsSource {
    Element(Span),
    Header(usize),
    HeaderDefault,
    None,
}

/// The routing view the checker extracts from a completed element.
#[derive(Default)]
pub(super) struct Info {
    pub(super) qname_end: u32,
    pub(super) local: Span,
    pub(super) start_tag_end: u32,
    pub(super) inner_end: u32,
    pub(super) uses_header_prefix: bool,
    pub(super) to: Option<Span>,
    pub(super) from: Option<Span>,
    pub(super) type_: Option<Span>,
    pub(super) id: Option<Span>,
    pub(super) to_attr: Option<Span>,
    pub(super) from_attr: Option<Span>,
}

/// What kind of markup a recorded tag is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TagKind {
    Start,
    Empty,
    End,
    CData,
}

/// A tag the scanner found inside the current element: offsets relative to the
/// element's first byte, `start` at `<`, `end` one past `>`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tag {
    pub(super) start: u32,
    pub(super) end: u32,
    pub(super) kind: TagKind,
}

/// Reused scratch space for the element checker.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    /// Tags of the element in progress, recorded by the scanner.
    pub(super) tags: Vec<Tag>,
    /// Open elements' qualified names.
    pub(super) open: Vec<Span>,
    /// In-scope namespace declarations on the element: (prefix, namespace value).
    pub(super) bindings: Vec<(Span, Span)>,
    /// `bindings.len()` when each open element started.
    pub(super) scopes: Vec<usize>,
    /// Attribute names of the current start tag.
    pub(super) attrs: Vec<Span>,
}

/// Checks a namespace declaration `xmlns:prefix='value'` (Namespaces in XML 1.0 §3).
pub(super) fn declare_prefix(prefix: &[u8], value: &[u8]) -> Result<(), XmlError> {
    if value.is_empty() {
        return Err(XmlError::BadNamespacePrefix(
            "prefix bound to the empty namespace",
        ));
    }
    match prefix {
        b"xmlns" => Err(XmlError::BadNamespacePrefix(
            "the xmlns prefix cannot be declared",
        )),
        b"xml" if value != ns::XML.as_bytes() => Err(XmlError::BadNamespacePrefix(
            "the xml prefix is bound to another namespace",
        )),
        _ => Ok(()),
    }
}

#[inline]
pub(super) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

pub(super) fn trim_ws(s: &[u8]) -> &[u8] {
    let end = s
        .iter()
        .rposition(|&b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .map_or(0, |i| i + 1);
    &s[..end]
}

/// The span of `part`, a subslice of `base`.
#[inline]
fn span_of(base: &[u8], part: &[u8]) -> Span {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    Span::new(start, start + part.len())
}

/// Checks one complete top-level element in place and extracts its routing view. The
/// scanner recorded every tag in `scratch.tags`; this pass revisits only the tags and the
/// `&`/`>` bytes of character data.
pub(super) fn check_element(
    s: &[u8],
    header: &HeaderCtx,
    scratch: &mut Scratch,
    limits: &Limits,
) -> Result<(Info, NsSource), XmlError> {
    let text = check_chars(s)?;
    scratch.open.clear();
    scratch.bindings.clear();
    scratch.scopes.clear();
    let mut info = Info::default();
    let mut ns_src = NsSource::None;
    let mut text_from = 0usize;
    for i in 0..scratch.tags.len() {
        let tag = scratch.tags[i];
        let (ts, te) = (tag.start as usize, tag.end as usize);
        check_char_data(&s[text_from..ts])?;
        text_from = te;
        match tag.kind {
            TagKind::Start | TagKind::Empty => {
                let empty = tag.kind == TagKind::Empty;
                let content = &text[ts + 1..te - 1 - usize::from(empty)];
                let top = i == 0;
                let (src, header_prefix) = start_tag(
                    s,
                    content,
                    header,
                    scratch,
                    limits,
                    top.then_some(&mut info),
                )?;
                if top {
                    ns_src = src;
                    info.start_tag_end = te as u32;
                }
                info.uses_header_prefix |= header_prefix;
                if empty {
                    scratch.bindings.truncate(scratch.scopes.pop().unwrap_or(0));
                } else {
                    let name_len = name_len(content.as_bytes());
                    scratch.open.push(Span::new(ts + 1, ts + 1 + name_len));
                }
            }
            TagKind::End => {
                let name = trim_ws(&s[ts + 2..te - 1]);
                let open = scratch
                    .open
                    .pop()
                    .ok_or(XmlError::NotWellFormed("end tag without start tag"))?;
                if &s[open.range()] != name {
                    return Err(XmlError::NotWellFormed("mismatched end tag"));
                }
                scratch.bindings.truncate(scratch.scopes.pop().unwrap_or(0));
                if scratch.open.is_empty() {
                    info.inner_end = ts as u32;
                }
            }
            TagKind::CData => {}
        }
    }
    if !scratch.open.is_empty() {
        return Err(XmlError::NotWellFormed("unclosed element"));
    }
    Ok((info, ns_src))
}

/// Length of the name at the start of a tag's content.
#[inline]
fn name_len(content: &[u8]) -> usize {
    content
        .iter()
        .position(|&b| matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'/'))
        .unwrap_or(content.len())
}

/// Checks character data between tags: references (RFC 6120 §11.1 allows only the five
/// predefined entities and character references) and no `]]>` (XML 1.0 §2.4).
#[inline]
fn check_char_data(seg: &[u8]) -> Result<(), XmlError> {
    let mut at = 0;
    while let Some(i) = memchr::memchr2(b'&', b'>', &seg[at..]) {
        let p = at + i;
        if seg[p] == b'>' {
            if p >= 2 && &seg[p - 2..p] == b"]]" {
                return Err(XmlError::NotWellFormed("']]>' in character data"));
            }
            at = p + 1;
        } else {
            let Some(len) = memchr::memchr(b';', &seg[p + 1..]) else {
                return Err(XmlError::NotWellFormed("'&' without ';'"));
            };
            resolve_reference(&seg[p + 1..p + 1 + len])?;
            at = p + 2 + len;
        }
    }
    Ok(())
}

/// Checks a start tag's `content` (between `<` and `>`, without a final `/`): its name,
/// attributes (quoting, duplicates, references, count), namespace declarations and
/// prefixes. Pushes its namespace scope. For the top-level element (`info` given) it
/// records the routing attributes. Returns where the element's namespace comes from and
/// whether a header-declared prefix was used below the top.
fn start_tag(
    s: &[u8],
    content: &str,
    header: &HeaderCtx,
    scratch: &mut Scratch,
    limits: &Limits,
    mut info: Option<&mut Info>,
) -> Result<(NsSource, bool), XmlError> {
    let nl = name_len(content.as_bytes());
    let qname = &content.as_bytes()[..nl];
    let (prefix, local) = split_qname(qname)?;
    scratch.scopes.push(scratch.bindings.len());
    scratch.attrs.clear();
    let b = content.as_bytes();
    let mut at = nl;
    loop {
        // XML 1.0 §3.1: S Attribute, where Attribute is Name Eq AttValue.
        let ws = at;
        while at < b.len() && is_ws(b[at]) {
            at += 1;
        }
        if at == b.len() {
            break;
        }
        if at == ws {
            return Err(XmlError::NotWellFormed("malformed attribute"));
        }
        let key_start = at;
        while at < b.len() && !is_ws(b[at]) && b[at] != b'=' {
            at += 1;
        }
        let key = &b[key_start..at];
        while at < b.len() && is_ws(b[at]) {
            at += 1;
        }
        if at == b.len() || b[at] != b'=' {
            return Err(XmlError::NotWellFormed("malformed attribute"));
        }
        at += 1;
        while at < b.len() && is_ws(b[at]) {
            at += 1;
        }
        let quote = match b.get(at) {
            Some(&q @ (b'\'' | b'"')) => q,
            _ => return Err(XmlError::NotWellFormed("malformed attribute")),
        };
        at += 1;
        let Some(len) = memchr::memchr(quote, &b[at..]) else {
            return Err(XmlError::NotWellFormed("malformed attribute"));
        };
        let value = &b[at..at + len];
        at += len + 1;
        if scratch.attrs.len() >= limits.max_attributes {
            return Err(XmlError::PolicyViolation(Limit::Attributes));
        }
        if scratch
            .attrs
            .iter()
            .any(|a| a.len() == key.len() && &s[a.range()] == key)
        {
            return Err(XmlError::NotWellFormed("duplicate attribute"));
        }
        let kspan = span_of(s, key);
        scratch.attrs.push(kspan);
        let (kp, kl) = split_qname(key)?;
        check_references(value)?;
        let vspan = span_of(s, value);
        match (kp, kl) {
            (b"", b"xmlns") => scratch.bindings.push((Span::default(), vspan)),
            (b"xmlns", p) => {
                declare_prefix(p, value)?;
                scratch.bindings.push((span_of(s, p), vspan));
            }
            (b"", name) => {
                if let Some(info) = info.as_deref_mut() {
                    // The whole attribute, from the whitespace before its name to the
                    // closing quote, for rewriting `to`/`from` without re-parsing.
                    let mut a = kspan.start as usize;
                    while a > 0 && matches!(s[a - 1], b' ' | b'\t' | b'\r' | b'\n') {
                        a -= 1;
                    }
                    let whole = Span::new(a, vspan.end as usize + 1);
                    match name {
                        b"to" => (info.to, info.to_attr) = (Some(vspan), Some(whole)),
                        b"from" => (info.from, info.from_attr) = (Some(vspan), Some(whole)),
                        b"type" => info.type_ = Some(vspan),
                        b"id" => info.id = Some(vspan),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let mut header_prefix = false;
    // Attribute prefixes must be declared (xml is predefined, xmlns is special).
    for i in 0..scratch.attrs.len() {
        let key = &s[scratch.attrs[i].range()];
        let (kp, _) = split_qname(key)?;
        if kp.is_empty() || kp == b"xmlns" || kp == b"xml" {
            continue;
        }
        match lookup(s, kp, header, &scratch.bindings) {
            NsSource::None => {
                return Err(XmlError::BadNamespacePrefix("undeclared attribute prefix"))
            }
            NsSource::Header(_) => header_prefix = true,
            _ => {}
        }
    }
    let src = if prefix == b"xml" {
        return Err(XmlError::BadNamespacePrefix("element in the xml namespace"));
    } else {
        lookup(s, prefix, header, &scratch.bindings)
    };
    if matches!(src, NsSource::None) && !prefix.is_empty() {
        return Err(XmlError::BadNamespacePrefix("undeclared element prefix"));
    }
    if let Some(info) = info {
        info.qname_end = 1 + qname.len() as u32;
        info.local = span_of(s, local);
    } else if matches!(src, NsSource::Header(_)) {
        header_prefix = true;
    }
    Ok((src, header_prefix))
}

/// Resolves a prefix (empty for the default namespace): innermost declaration on the
/// element first, then the stream header's.
fn lookup(s: &[u8], prefix: &[u8], header: &HeaderCtx, bindings: &[(Span, Span)]) -> NsSource {
    if let Some((_, v)) = bindings
        .iter()
        .rev()
        .find(|(p, _)| p.len() == prefix.len() && &s[p.range()] == prefix)
    {
        return NsSource::Element(*v);
    }
    if prefix.is_empty() {
        return if header.default_ns.is_some() {
            NsSource::HeaderDefault
        } else {
            NsSource::None
        };
    }
    match header.prefixes.iter().rposition(|(p, _)| p == prefix) {
        Some(i) => NsSource::Header(i),
        None => NsSource::None,
    }
}
