//! XML 1.0 (fifth edition) name and character rules, with an ASCII fast path.

use super::XmlError;

/// XML 1.0 §2.3 NameStartChar, without ':' (Namespaces in XML 1.0 NCName).
fn is_name_start(c: char) -> bool {
    matches!(c,
        'A'..='Z' | '_' | 'a'..='z'
        | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}' | '\u{F8}'..='\u{2FF}'
        | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}' | '\u{200C}'..='\u{200D}'
        | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}' | '\u{3001}'..='\u{D7FF}'
        | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}' | '\u{10000}'..='\u{EFFFF}')
}

/// XML 1.0 §2.3 NameChar, without ':'.
fn is_name_char(c: char) -> bool {
    is_name_start(c)
        || matches!(c, '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

/// ASCII NameStartChar (no ':'): letters and '_'. Bytes ≥ 0x80 are false (slow path).
const START: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 128 {
        t[b] = (b as u8).is_ascii_alphabetic() || b == b'_' as usize;
        b += 1;
    }
    t
};

/// ASCII NameChar (no ':'): NameStartChar plus digits, '-' and '.'.
const CHAR: [bool; 256] = {
    let mut t = START;
    let mut b = 0;
    while b < 128 {
        if (b as u8).is_ascii_digit() || b == b'-' as usize || b == b'.' as usize {
            t[b] = true;
        }
        b += 1;
    }
    t
};

/// Checks an NCName (a name without a colon). `name` must already be valid UTF-8.
#[inline]
fn check_ncname(name: &[u8]) -> Result<(), XmlError> {
    const BAD: XmlError = XmlError::NotWellFormed("invalid name");
    let Some(&first) = name.first() else {
        return Err(BAD);
    };
    if START[first as usize] && name[1..].iter().all(|&b| CHAR[b as usize]) {
        return Ok(());
    }
    if name.is_ascii() {
        return Err(BAD);
    }
    let s = std::str::from_utf8(name).map_err(|_| XmlError::UnsupportedEncoding)?;
    let mut chars = s.chars();
    if !chars.next().is_some_and(is_name_start) || !chars.all(is_name_char) {
        return Err(BAD);
    }
    Ok(())
}

/// Splits and checks a QName (`prefix:local` or `local`), Namespaces in XML 1.0 §4.
/// Returns `(prefix, local)`; the prefix is empty when absent.
#[inline]
pub(crate) fn split_qname(name: &[u8]) -> Result<(&[u8], &[u8]), XmlError> {
    match name.iter().position(|&b| b == b':') {
        None => {
            check_ncname(name)?;
            Ok((&[], name))
        }
        Some(i) => {
            let (prefix, local) = (&name[..i], &name[i + 1..]);
            check_ncname(prefix)?;
            check_ncname(local)?;
            Ok((prefix, local))
        }
    }
}

/// Is `c` an XML 1.0 §2.2 Char?
pub(crate) fn is_xml_char(c: u32) -> bool {
    matches!(c, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

/// Checks that `bytes` are UTF-8 and contain only XML 1.0 §2.2 characters; returns
/// them as text.
///
/// Errors: [`XmlError::UnsupportedEncoding`] for bytes that are not UTF-8,
/// [`XmlError::NotWellFormed`] for control characters, U+FFFE and U+FFFF.
pub(crate) fn check_chars(bytes: &[u8]) -> Result<&str, XmlError> {
    // One branch-free pass (it vectorises): C0 controls other than TAB, LF, CR, and
    // whether any byte is non-ASCII.
    let (bad_ctrl, high) = bytes.iter().fold((false, 0u8), |(bad, high), &b| {
        (
            bad | ((b < 0x20) & (b != b'\t') & (b != b'\n') & (b != b'\r')),
            high | b,
        )
    });
    if bad_ctrl {
        return Err(XmlError::NotWellFormed("control character"));
    }
    if high < 0x80 {
        // SAFETY: every byte is ASCII, and ASCII is valid UTF-8.
        return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    let text = std::str::from_utf8(bytes).map_err(|_| XmlError::UnsupportedEncoding)?;
    // U+FFFE and U+FFFF encode as EF BF BE / EF BF BF. Surrogates are not UTF-8 at all.
    for i in memchr::memchr_iter(0xEF, bytes) {
        if bytes.get(i + 1) == Some(&0xBF) && matches!(bytes.get(i + 2), Some(0xBE | 0xBF)) {
            return Err(XmlError::NotWellFormed("noncharacter U+FFFE/U+FFFF"));
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qnames() {
        assert_eq!(
            split_qname(b"db:result").unwrap(),
            (&b"db"[..], &b"result"[..])
        );
        assert_eq!(
            split_qname(b"presence").unwrap(),
            (&b""[..], &b"presence"[..])
        );
        assert!(split_qname("ü-x.1".as_bytes()).is_ok());
        for bad in [
            &b""[..],
            b"1a",
            b":a",
            b"a:",
            b"a:b:c",
            b"-x",
            b"a b",
            b"a\"b",
        ] {
            assert!(
                split_qname(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn characters() {
        assert!(check_chars("héllo\t\r\n".as_bytes()).is_ok());
        assert_eq!(
            check_chars(b"a\x01b"),
            Err(XmlError::NotWellFormed("control character"))
        );
        assert_eq!(check_chars(b"a\xff"), Err(XmlError::UnsupportedEncoding));
        assert!(check_chars("\u{FFFF}".as_bytes()).is_err());
        assert!(check_chars("\u{FFFD}".as_bytes()).is_ok());
    }
}
