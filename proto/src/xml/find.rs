//! Finding the first of a few bytes in the short spans markup is made of.
//!
//! Attribute values, names and the text between tags are mostly a few dozen bytes long,
//! where memchr's set-up and dispatch cost more than the search. These helpers test eight
//! bytes at a time in a `u64` (the "has zero byte" test of Hacker's Delight §6-1, which is
//! exact for the lowest matching byte) over the first [`SHORT`] bytes, then hand the rest
//! to memchr, which wins on long spans.

use std::sync::OnceLock;

use memchr::memmem::Finder;

/// A string searched for in many stanzas (a namespace name in a stanza's bytes): its
/// [`Finder`] is built once, on first use, where [`memchr::memmem::find`] builds one per
/// call (for a namespace of about 40 bytes that set-up cost more than the search itself
/// in `perf` of the routing bench). Declare one as a `static`.
pub struct Needle {
    text: &'static str,
    finder: OnceLock<Finder<'static>>,
}

impl Needle {
    /// A needle for `text` (nothing is built yet).
    pub const fn new(text: &'static str) -> Needle {
        Needle {
            text,
            finder: OnceLock::new(),
        }
    }

    /// The offset of the first occurrence of the needle in `hay`.
    pub fn find_in(&self, hay: &[u8]) -> Option<usize> {
        self.finder
            .get_or_init(|| Finder::new(self.text.as_bytes()))
            .find(hay)
    }

    /// Whether `hay` contains the needle.
    pub fn is_in(&self, hay: &[u8]) -> bool {
        self.find_in(hay).is_some()
    }
}

impl std::fmt::Debug for Needle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Needle").field(&self.text).finish()
    }
}

/// Bytes searched word by word before memchr takes over.
const SHORT: usize = 64;

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Bit 7 of each byte of `x` that equals `b` set, lowest one exact (higher ones may be
/// false positives after a match).
#[inline(always)]
fn eq_mask(x: u64, b: u8) -> u64 {
    let y = x ^ (LO * u64::from(b));
    y.wrapping_sub(LO) & !y & HI
}

/// The offset of the first byte of `hay` for which `mask` of its little-endian word is
/// set, searching the first [`SHORT`] bytes word by word, then with `long`.
#[inline(always)]
fn find_with(
    hay: &[u8],
    mask: impl Fn(u64) -> u64,
    is: impl Fn(u8) -> bool,
    long: impl Fn(&[u8]) -> Option<usize>,
) -> Option<usize> {
    let head = hay.len().min(SHORT);
    let mut i = 0;
    while i + 8 <= head {
        let word = u64::from_le_bytes(hay[i..i + 8].try_into().expect("8 bytes"));
        let m = mask(word);
        if m != 0 {
            return Some(i + (m.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    while i < head {
        if is(hay[i]) {
            return Some(i);
        }
        i += 1;
    }
    if head == hay.len() {
        return None;
    }
    long(&hay[head..]).map(|j| head + j)
}

/// The first `a` in `hay`, like [`memchr::memchr`].
#[inline]
pub(super) fn find1(a: u8, hay: &[u8]) -> Option<usize> {
    find_with(hay, |w| eq_mask(w, a), |c| c == a, |h| memchr::memchr(a, h))
}

/// The first `a` or `b` in `hay`, like [`memchr::memchr2`].
#[inline]
pub(super) fn find2(a: u8, b: u8, hay: &[u8]) -> Option<usize> {
    find_with(
        hay,
        |w| eq_mask(w, a) | eq_mask(w, b),
        |c| c == a || c == b,
        |h| memchr::memchr2(a, b, h),
    )
}

/// The first `a`, `b` or `c` in `hay`, like [`memchr::memchr3`].
#[inline]
pub(super) fn find3(a: u8, b: u8, c: u8, hay: &[u8]) -> Option<usize> {
    find_with(
        hay,
        |w| eq_mask(w, a) | eq_mask(w, b) | eq_mask(w, c),
        |x| x == a || x == b || x == c,
        |h| memchr::memchr3(a, b, c, h),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every position and length up to past the word-by-word part, every byte value as
    /// a neighbour: the same answers as memchr.
    #[test]
    fn agrees_with_memchr() {
        for len in 0..(SHORT + 20) {
            for at in 0..len {
                for fill in [0u8, b'a', 0x7F, 0x80, 0xFF, b'<' - 1, b'<' + 1] {
                    let mut hay = vec![fill; len];
                    hay[at] = b'<';
                    if at + 1 < len {
                        hay[at + 1] = b'>';
                    }
                    for h in [&hay[..], &hay[at..], &hay[..at]] {
                        assert_eq!(find1(b'<', h), memchr::memchr(b'<', h));
                        assert_eq!(find2(b'&', b'<', h), memchr::memchr2(b'&', b'<', h));
                        assert_eq!(find2(b'>', b'<', h), memchr::memchr2(b'>', b'<', h));
                        assert_eq!(
                            find3(b'"', b'\'', b'<', h),
                            memchr::memchr3(b'"', b'\'', b'<', h)
                        );
                        assert_eq!(
                            find3(b'"', b'>', b'<', h),
                            memchr::memchr3(b'"', b'>', b'<', h)
                        );
                    }
                }
            }
        }
    }
}
