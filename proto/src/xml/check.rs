//! The element checker: the second stage of the framer. Given one complete top-level
//! element and the tags the scanner recorded in it, it checks the element in place
//! (UTF-8 and XML characters, names, attributes, end tags, namespace prefixes, references
//! in character data and attribute values) and extracts its routing view.
//!
//! Names are checked while they are scanned, with an ASCII class table; only names with
//! non-ASCII bytes (or invalid ones, for the error) go through [`split_qname`].

use super::element::Span;
use super::error::{Limit, XmlError};
use super::escape::{check_references, resolve_reference};
use super::find::{find1, find2};
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

/// Checks a namespace declaration `xmlns:prefix='value'` (Namespaces in XML 1.0 §3):
/// not to the empty name, not of `xmlns`, `xml` only to its own namespace, and no other
/// prefix to the `xml` or `xmlns` namespace names. `value` is raw (references are
/// resolved here for the comparison).
pub(super) fn declare_prefix(prefix: &[u8], value: &[u8]) -> Result<(), XmlError> {
    if value.is_empty() {
        return Err(XmlError::BadNamespacePrefix(
            "prefix bound to the empty namespace",
        ));
    }
    let name = namespace_name(value);
    let reserved = *name == *ns::XML.as_bytes() || *name == *ns::XMLNS.as_bytes();
    match prefix {
        b"xmlns" => Err(XmlError::BadNamespacePrefix(
            "the xmlns prefix cannot be declared",
        )),
        b"xml" if *name != *ns::XML.as_bytes() => Err(XmlError::BadNamespacePrefix(
            "the xml prefix is bound to another namespace",
        )),
        b"xml" => Ok(()),
        _ if reserved => Err(XmlError::BadNamespacePrefix(
            "a prefix bound to the xml or xmlns namespace name",
        )),
        _ => Ok(()),
    }
}

/// Checks a default namespace declaration `xmlns='value'` (Namespaces in XML 1.0 §3:
/// neither the `xml` nor the `xmlns` namespace name may be the default).
pub(super) fn declare_default(value: &[u8]) -> Result<(), XmlError> {
    let name = namespace_name(value);
    if *name == *ns::XML.as_bytes() || *name == *ns::XMLNS.as_bytes() {
        return Err(XmlError::BadNamespacePrefix(
            "the xml or xmlns namespace name declared as the default",
        ));
    }
    Ok(())
}

/// A raw namespace attribute value with its references resolved (borrowed when it has
/// none; as is when it does not resolve, which the reference checks report).
fn namespace_name(raw: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !raw.contains(&b'&') {
        return std::borrow::Cow::Borrowed(raw);
    }
    match std::str::from_utf8(raw)
        .ok()
        .and_then(|s| super::escape::unescape(s).ok())
    {
        Some(s) => std::borrow::Cow::Owned(s.into_owned().into_bytes()),
        None => std::borrow::Cow::Borrowed(raw),
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
                let (src, header_prefix, name_len) = start_tag(
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

/// Checks character data between tags: references (RFC 6120 §11.1 allows only the five
/// predefined entities and character references) and no `]]>` (XML 1.0 §2.4).
#[inline]
fn check_char_data(seg: &[u8]) -> Result<(), XmlError> {
    let mut at = 0;
    while let Some(i) = find2(b'&', b'>', &seg[at..]) {
        let p = at + i;
        if seg[p] == b'>' {
            if p >= 2 && &seg[p - 2..p] == b"]]" {
                return Err(XmlError::NotWellFormed("']]>' in character data"));
            }
            at = p + 1;
        } else {
            let Some(len) = find1(b';', &seg[p + 1..]) else {
                return Err(XmlError::NotWellFormed("'&' without ';'"));
            };
            resolve_reference(&seg[p + 1..p + 1 + len])?;
            at = p + 2 + len;
        }
    }
    Ok(())
}

/// Byte classes for the ASCII fast path of names: NameStartChar without ':' (XML 1.0
/// §2.3, Namespaces in XML 1.0 NCName).
const NAME_START: u8 = 1;
/// NameChar without ':'.
const NAME_CHAR: u8 = 2;
/// ':', the QName separator (Namespaces in XML 1.0 §4).
const COLON: u8 = 4;
/// XML 1.0 §2.3 S.
const WS: u8 = 8;

/// The class bits of every byte; bytes ≥ 0x80 have none (names with them take the slow
/// path through [`split_qname`]).
const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        if c.is_ascii_alphabetic() || c == b'_' {
            t[b] = NAME_START | NAME_CHAR;
        } else if c.is_ascii_digit() || c == b'-' || c == b'.' {
            t[b] = NAME_CHAR;
        } else if c == b':' {
            t[b] = COLON;
        } else if matches!(c, b' ' | b'\t' | b'\r' | b'\n') {
            t[b] = WS;
        }
        b += 1;
    }
    t
};

/// Scans the name that starts at `b[at]`, up to the first whitespace or `stop` byte (or
/// the end), checking it on the way. Returns the end of the name and, when it is a valid
/// ASCII QName, the offset of its colon within it (`Some(None)`: no prefix); `None` when
/// the name has non-ASCII bytes or is invalid, for [`split_qname`] to decide.
#[inline]
fn scan_qname(b: &[u8], at: usize, stop: u8) -> (usize, Option<Option<usize>>) {
    let class = |i: usize| CLASS[b[i] as usize];
    let mut i = at;
    let mut colon = None;
    let mut ok = i < b.len() && class(i) & NAME_START != 0;
    if ok {
        i += 1;
        while i < b.len() {
            let c = class(i);
            if c & NAME_CHAR != 0 {
                i += 1;
            } else if c & COLON != 0 && colon.is_none() {
                colon = Some(i - at);
                i += 1;
                if i == b.len() || class(i) & NAME_START == 0 {
                    ok = false;
                    break;
                }
                i += 1;
            } else {
                break;
            }
        }
    }
    if ok && (i == b.len() || b[i] == stop || class(i) & WS != 0) {
        return (i, Some(colon));
    }
    while i < b.len() && !is_ws(b[i]) && b[i] != stop {
        i += 1;
    }
    (i, None)
}

/// Splits a name scanned by [`scan_qname`] into `(prefix, local)`, checking it with
/// [`split_qname`] when the fast path could not.
#[inline(always)]
fn qname_parts(name: &[u8], fast: Option<Option<usize>>) -> Result<(&[u8], &[u8]), XmlError> {
    match fast {
        Some(None) => Ok((&[], name)),
        Some(Some(c)) => Ok((&name[..c], &name[c + 1..])),
        None => split_qname(name),
    }
}

/// The length of an attribute value up to its closing `quote`, and whether it holds a
/// `&`.
#[inline]
fn value_end(b: &[u8], quote: u8) -> Option<(usize, bool)> {
    let mut at = 0;
    let mut amp = false;
    loop {
        let i = at + find2(quote, b'&', &b[at..])?;
        if b[i] == quote {
            return Some((i, amp));
        }
        amp = true;
        at = i + 1;
    }
}

/// Checks a start tag's `content` (between `<` and `>`, without a final `/`): its name,
/// attributes (quoting, duplicates, references, count), namespace declarations and
/// prefixes. Pushes its namespace scope. For the top-level element (`info` given) it
/// records the routing attributes. Returns where the element's namespace comes from,
/// whether a header-declared prefix was used below the top, and the length of the
/// element's name.
fn start_tag(
    s: &[u8],
    content: &str,
    header: &HeaderCtx,
    scratch: &mut Scratch,
    limits: &Limits,
    mut info: Option<&mut Info>,
) -> Result<(NsSource, bool, usize), XmlError> {
    let b = content.as_bytes();
    let (nl, fast) = scan_qname(b, 0, b'/');
    let qname = &b[..nl];
    let (prefix, local) = qname_parts(qname, fast)?;
    scratch.scopes.push(scratch.bindings.len());
    scratch.attrs.clear();
    // Whether an attribute has a prefix other than xml and xmlns, to be resolved below.
    let mut prefixed = false;
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
        let (key_end, key_fast) = scan_qname(b, at, b'=');
        at = key_end;
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
        let Some((len, has_ref)) = value_end(&b[at..], quote) else {
            return Err(XmlError::NotWellFormed("malformed attribute"));
        };
        let value = &b[at..at + len];
        at += len + 1;
        if scratch.attrs.len() >= limits.max_attributes {
            return Err(XmlError::PolicyViolation(Limit::Attributes));
        }
        if scratch.attrs.iter().any(|a| {
            a.len() == key.len()
                && key.first() == Some(&s[a.start as usize])
                && &s[a.range()] == key
        }) {
            return Err(XmlError::NotWellFormed("duplicate attribute"));
        }
        let kspan = span_of(s, key);
        scratch.attrs.push(kspan);
        let (kp, kl) = qname_parts(key, key_fast)?;
        if has_ref {
            check_references(value)?;
        }
        let vspan = span_of(s, value);
        match (kp, kl) {
            (b"", b"xmlns") => {
                declare_default(value)?;
                scratch.bindings.push((Span::default(), vspan));
            }
            (b"xmlns", p) => {
                declare_prefix(p, value)?;
                scratch.bindings.push((span_of(s, p), vspan));
            }
            (b"", name) => {
                if let Some(info) = info.as_deref_mut() {
                    // The whole attribute, from the whitespace before its name to the
                    // closing quote, for rewriting `to`/`from` without re-parsing.
                    let mut a = kspan.start as usize;
                    while a > 0 && is_ws(s[a - 1]) {
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
            (b"xml", _) => {}
            _ => prefixed = true,
        }
    }
    let mut header_prefix = false;
    // Attribute prefixes must be declared (xml is predefined, xmlns is special), once
    // every declaration on the tag is known.
    for i in 0..scratch.attrs.len() {
        if !prefixed {
            break;
        }
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
    Ok((src, header_prefix, nl))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Namespaces in XML 1.0 §3: no prefix but `xml` bound to the `xml` namespace name,
    /// none to the `xmlns` one, neither as the default. The `routing` fuzz target's
    /// finding 9 (`tests/fuzz/seeds/routing/finding-9-prefix-bound-to-xmlns`): the
    /// framer took `xmlns:xmlto='http://www.w3.org/2000/xmlns/'`, the tree parser did not.
    #[test]
    fn reserved_namespace_names_are_not_bound() {
        use crate::xml::parse_stanza;
        for bad in [
            "<iq type='get' id='1'><x xmlns:a='http://www.w3.org/2000/xmlns/'/></iq>",
            "<iq type='get' id='1' xmlns:a='http://www.w3.org/2000/xmlns/'/>",
            "<iq type='get' id='1'><x xmlns:a='http://www.w3.org/XML/1998/namespace'/></iq>",
            "<iq type='get' id='1'><x xmlns='http://www.w3.org/2000/xmlns/'/></iq>",
            "<iq type='get' id='1'><x xmlns='http://www.w3.org/XML/1998/namespace'/></iq>",
            "<iq type='get' id='1'><x xmlns:a='http://www.w3.org/2000/xmlns&#47;'/></iq>",
            "<iq te.examAtypeid=\"q'1\"> d\u{feff}ic/>za frmm='<eest \
             xmlns:xmlto='urn:ietf:tf:paramns:xmpp-szas'/> d.>=<enst \
             xmlns:xmlto='http://www.w3.org/2000/xmlns/'/> p-</iq>",
        ] {
            assert!(
                matches!(
                    parse_stanza(bad.as_bytes()),
                    Err(XmlError::BadNamespacePrefix(_))
                ),
                "{bad}"
            );
        }
        for good in [
            "<iq type='get' id='1'><x xmlns:xml='http://www.w3.org/XML/1998/namespace'/></iq>",
            "<iq type='get' id='1'><x xmlns:a='urn:example' a:b='c'/></iq>",
        ] {
            assert!(parse_stanza(good.as_bytes()).is_ok(), "{good}");
        }
    }

    /// The fast name scan agrees with the original rule on where a name ends (the first
    /// whitespace or stop byte) and with `split_qname` on every name it accepts, for every
    /// string of up to four bytes over an alphabet with the edge cases.
    #[test]
    fn scan_qname_agrees_with_split_qname() {
        const ALPHABET: &[u8] = b"aZ_9-.:/= \t\xC3\xA9\x80";
        let mut input = Vec::new();
        for len in 0..=4u32 {
            for mut n in 0..(ALPHABET.len() as u32).pow(len) {
                input.clear();
                for _ in 0..len {
                    input.push(ALPHABET[(n % ALPHABET.len() as u32) as usize]);
                    n /= ALPHABET.len() as u32;
                }
                for stop in [b'=', b'/'] {
                    let (end, fast) = scan_qname(&input, 0, stop);
                    let expected_end = input
                        .iter()
                        .position(|&b| is_ws(b) || b == stop)
                        .unwrap_or(input.len());
                    assert_eq!(end, expected_end, "{input:?}");
                    let name = &input[..end];
                    if let Some(colon) = fast {
                        let parts = qname_parts(name, Some(colon)).unwrap();
                        assert_eq!(Ok(parts), split_qname(name), "{input:?}");
                    } else if name.is_ascii() {
                        assert!(split_qname(name).is_err(), "{input:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn value_end_finds_the_quote_and_references() {
        assert_eq!(value_end(b"abc'd", b'\''), Some((3, false)));
        assert_eq!(value_end(b"a&amp;b\"c'", b'\''), Some((9, true)));
        assert_eq!(value_end(b"a&b", b'"'), None);
        let long = [b"x".repeat(100), b"&".to_vec(), b"y'".to_vec()].concat();
        assert_eq!(value_end(&long, b'\''), Some((102, true)));
        let long = [b"x".repeat(100), b"'&".to_vec()].concat();
        assert_eq!(value_end(&long, b'\''), Some((100, false)));
    }
}
