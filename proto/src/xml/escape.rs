//! Escaping and unescaping of character data and attribute values (XML 1.0 §2.4, §4.6),
//! restricted to what RFC 6120 §11.1 allows: the five predefined entities and character
//! references.

use std::borrow::Cow;

use super::names::is_xml_char;
use super::{Restricted, XmlError};

/// Appends `text` to `out` escaped for use as character data (`&`, `<`, `>`).
pub fn escape_text_into(text: &str, out: &mut Vec<u8>) {
    escape_into(text, out, false);
}

/// Appends `value` to `out` escaped for use inside a single- or double-quoted attribute
/// value (`&`, `<`, `>`, `'`, `"`).
pub fn escape_attr_into(value: &str, out: &mut Vec<u8>) {
    escape_into(value, out, true);
}

/// `text` escaped as character data; borrows when nothing needs escaping.
pub fn escape_text(text: &str) -> Cow<'_, str> {
    if !text.bytes().any(|b| matches!(b, b'&' | b'<' | b'>')) {
        return Cow::Borrowed(text);
    }
    let mut out = Vec::with_capacity(text.len() + 8);
    escape_text_into(text, &mut out);
    Cow::Owned(String::from_utf8(out).expect("escaping keeps UTF-8"))
}

/// `value` escaped for an attribute value; borrows when nothing needs escaping.
pub fn escape_attr(value: &str) -> Cow<'_, str> {
    if !value
        .bytes()
        .any(|b| matches!(b, b'&' | b'<' | b'>' | b'\'' | b'"'))
    {
        return Cow::Borrowed(value);
    }
    let mut out = Vec::with_capacity(value.len() + 8);
    escape_attr_into(value, &mut out);
    Cow::Owned(String::from_utf8(out).expect("escaping keeps UTF-8"))
}

/// Bytes escaped in attribute values (`&`, `<`, `>`, `'`, `"`): one table load per byte
/// instead of five comparisons.
const ATTR_SPECIAL: [bool; 256] = special(b"&<>'\"");
/// Bytes escaped in character data (`&`, `<`, `>`).
const TEXT_SPECIAL: [bool; 256] = special(b"&<>");

const fn special(bytes: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < bytes.len() {
        t[bytes[i] as usize] = true;
        i += 1;
    }
    t
}

/// Whether `value` holds a byte that [`escape_attr_into`] escapes (`&`, `<`, `>`, `'`,
/// `"`); when not, the value is its own escaped form, and a raw attribute value (as
/// received) is its own unescaped form too.
#[inline]
pub(crate) fn needs_attr_escape(value: &str) -> bool {
    value.bytes().any(|b| ATTR_SPECIAL[b as usize])
}

fn escape_into(s: &str, out: &mut Vec<u8>, attr: bool) {
    let bytes = s.as_bytes();
    let table = if attr { &ATTR_SPECIAL } else { &TEXT_SPECIAL };
    // Most values hold nothing to escape: one scan, one copy.
    let Some(first) = bytes.iter().position(|&b| table[b as usize]) else {
        out.extend_from_slice(bytes);
        return;
    };
    out.extend_from_slice(&bytes[..first]);
    let mut last = first;
    for (i, &b) in bytes.iter().enumerate().skip(first) {
        let rep: &[u8] = match b {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'\'' if attr => b"&apos;",
            b'"' if attr => b"&quot;",
            _ => continue,
        };
        out.extend_from_slice(&bytes[last..i]);
        out.extend_from_slice(rep);
        last = i + 1;
    }
    out.extend_from_slice(&bytes[last..]);
}

/// Resolves one reference body (the text between `&` and `;`).
///
/// Errors: [`XmlError::RestrictedXml`] for entities other than the predefined five,
/// [`XmlError::NotWellFormed`] for a bad character reference.
pub(crate) fn resolve_reference(name: &[u8]) -> Result<char, XmlError> {
    resolve(name)
}

fn resolve(name: &[u8]) -> Result<char, XmlError> {
    Ok(match name {
        b"lt" => '<',
        b"gt" => '>',
        b"amp" => '&',
        b"apos" => '\'',
        b"quot" => '"',
        [b'#', b'x', hex @ ..] => char_ref(hex, 16)?,
        [b'#', dec @ ..] => char_ref(dec, 10)?,
        _ => return Err(XmlError::RestrictedXml(Restricted::EntityReference)),
    })
}

fn char_ref(digits: &[u8], radix: u32) -> Result<char, XmlError> {
    const BAD: XmlError = XmlError::NotWellFormed("invalid character reference");
    if digits.is_empty() || digits.len() > 8 {
        return Err(BAD);
    }
    let s = std::str::from_utf8(digits).map_err(|_| BAD)?;
    let v = u32::from_str_radix(s, radix).map_err(|_| BAD)?;
    if !s.bytes().all(|b| b.is_ascii_hexdigit()) || !is_xml_char(v) {
        return Err(BAD);
    }
    char::from_u32(v).ok_or(BAD)
}

/// Checks every `&...;` reference in raw (escaped) character data or an attribute value
/// without allocating.
///
/// Errors: [`XmlError::RestrictedXml`] for an entity other than the predefined five,
/// [`XmlError::NotWellFormed`] for a bare `&` or a bad character reference.
pub fn check_references(raw: &[u8]) -> Result<(), XmlError> {
    let mut at = 0;
    while let Some(i) = memchr::memchr(b'&', &raw[at..]) {
        let start = at + i + 1;
        let Some(len) = memchr::memchr(b';', &raw[start..]) else {
            return Err(XmlError::NotWellFormed("'&' without ';'"));
        };
        resolve(&raw[start..start + len])?;
        at = start + len + 1;
    }
    Ok(())
}

/// Unescapes raw character data or an attribute value; borrows when it holds no reference.
/// `raw` must be valid UTF-8 (it is when it comes from the tokenizer).
///
/// Errors: as [`check_references`].
pub fn unescape(raw: &str) -> Result<Cow<'_, str>, XmlError> {
    if !raw.contains('&') {
        return Ok(Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut at = 0;
    while let Some(i) = memchr::memchr(b'&', &bytes[at..]) {
        out.push_str(&raw[at..at + i]);
        let start = at + i + 1;
        let len = memchr::memchr(b';', &bytes[start..])
            .ok_or(XmlError::NotWellFormed("'&' without ';'"))?;
        out.push(resolve(&bytes[start..start + len])?);
        at = start + len + 1;
    }
    out.push_str(&raw[at..]);
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_unescapes_round_trip() {
        let s = "a<b>&'c\"";
        assert_eq!(escape_text(s), "a&lt;b&gt;&amp;'c\"");
        assert_eq!(escape_attr(s), "a&lt;b&gt;&amp;&apos;c&quot;");
        assert_eq!(unescape(&escape_attr(s)).unwrap(), s);
        assert_eq!(unescape(&escape_text(s)).unwrap(), s);
        assert!(matches!(escape_text("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn references() {
        assert_eq!(unescape("&#x263A;&#65;").unwrap(), "☺A");
        assert_eq!(
            unescape("&foo;"),
            Err(XmlError::RestrictedXml(Restricted::EntityReference))
        );
        assert!(check_references(b"&#0;").is_err());
        assert!(check_references(b"&#x;").is_err());
        assert!(check_references(b"a & b").is_err());
        assert!(check_references(b"&#xD800;").is_err());
        assert!(check_references(b"&amp;&lt;&#10;").is_ok());
    }
}
