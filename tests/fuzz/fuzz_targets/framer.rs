//! Fuzz target for the stream framer (`fedrouter::xml::Framer`).
//!
//! Input layout: `[seed_lo, seed_hi, stream bytes...]`.
//!
//! - Bit 0 of the little-endian `u16` seed: when set, a valid S2S stream header is put
//!   before the stream bytes, so the fuzzer reaches element parsing quickly.
//! - Bits 1..16: the seed of the chunk sizes (1..=64 bytes, from a small xorshift). When
//!   bits 1..4 are all zero the stream is fed one byte at a time.
//!
//! For each set of limits (default, small, tiny) the stream is run through two framers:
//! one fed the whole stream at once, one fed in chunks, each drained with `next_frame`
//! after every feed until `Ok(None)`, the first `Err` (recorded; the run stops) or
//! `Frame::Close` (the run stops). The two sequences of results must be identical
//! (chunking invariance: same frames, same error). After a SASL `<success/>` element both
//! framers call `reset()`, as the stream layer does on a stream restart.
//!
//! Memory: after every feed and drain the chunked framer must hold fewer than
//! `max(max_header_size, max_element_size + chunk)` bytes (which implies the looser
//! `max_element_size + max_header_size + chunk`).

#![no_main]

use fedrouter::xml::{Element, Frame, Framer, Limits, Namespace, XmlError};
use libfuzzer_sys::fuzz_target;

const HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
to='a.example' from='b.example' version='1.0'>";

const SMALL: Limits = Limits {
    max_element_size: 512,
    max_header_size: 1024,
    max_depth: 8,
    max_attributes: 8,
};

/// Still admits `HEADER` (190 bytes, 6 attributes), so limits are hit on short inputs.
const TINY: Limits = Limits {
    max_element_size: 64,
    max_header_size: 256,
    max_depth: 2,
    max_attributes: 6,
};

type Outcome = Result<Frame, XmlError>;

/// Chunk sizes from the seed.
struct Chunks {
    state: u32,
    bytewise: bool,
}

impl Chunks {
    fn new(seed: u16) -> Chunks {
        let s = u32::from(seed >> 1);
        Chunks {
            state: s.wrapping_mul(0x9E37_79B9) | 1,
            bytewise: s & 7 == 0,
        }
    }

    fn next(&mut self) -> usize {
        if self.bytewise {
            return 1;
        }
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.state = x;
        1 + (x % 64) as usize
    }
}

/// Calls `next_frame` until `Ok(None)`; returns true when the run is over (error or close).
fn drain(f: &mut Framer, out: &mut Vec<Outcome>) -> bool {
    loop {
        match f.next_frame() {
            Ok(None) => return false,
            Ok(Some(frame)) => {
                let close = matches!(frame, Frame::Close);
                let restart =
                    matches!(&frame, Frame::Element(e) if e.is("success", &Namespace::Sasl));
                out.push(Ok(frame));
                if close {
                    assert!(f.is_closed(), "Frame::Close but not is_closed()");
                    assert_eq!(f.next_frame(), Ok(None), "next_frame after Close");
                    return true;
                }
                if restart {
                    f.reset();
                }
            }
            Err(e) => {
                out.push(Err(e));
                assert_eq!(f.next_frame(), Err(e), "errors must be sticky");
                assert_eq!(f.buffered(), 0, "buffer kept after a fatal error");
                return true;
            }
        }
    }
}

fn run_whole(limits: Limits, stream: &[u8]) -> Vec<Outcome> {
    let mut f = Framer::new(limits);
    let mut out = Vec::new();
    f.feed(stream);
    drain(&mut f, &mut out);
    assert!(f.buffered() <= stream.len());
    out
}

fn run_chunked(limits: Limits, stream: &[u8], seed: u16) -> Vec<Outcome> {
    let mut f = Framer::new(limits);
    let mut out = Vec::new();
    let mut sizes = Chunks::new(seed);
    let mut rest = stream;
    while !rest.is_empty() {
        let n = sizes.next().min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        f.feed(chunk);
        let done = drain(&mut f, &mut out);
        let held = f.buffered();
        assert!(
            held <= limits.max_element_size + limits.max_header_size + n,
            "framer holds {held} bytes after a {n}-byte chunk (limits {limits:?}, last {:?})",
            out.last()
        );
        let bound = limits.max_header_size.max(limits.max_element_size + n);
        assert!(
            held < bound,
            "framer holds {held} bytes >= {bound} after a {n}-byte chunk (limits {limits:?}, \
             last {:?})",
            out.last()
        );
        if done {
            break;
        }
    }
    out
}

/// Checks an element's accessors against each other (and that none panics).
fn check_element(e: &Element, stream: &[u8], cursor: &mut usize) {
    let bytes = e.bytes();
    // The accessors return `&str` built with `from_utf8_unchecked`: the framer promises
    // UTF-8 on character boundaries, so check that promise explicitly.
    assert!(std::str::from_utf8(bytes).is_ok(), "element is not UTF-8");
    assert_eq!(e.as_str().as_bytes(), &bytes[..]);
    let strs = [
        Some(e.name()),
        Some(e.qname()),
        Some(e.text()),
        e.to(),
        e.from(),
        e.type_(),
        e.id(),
    ];
    for s in strs.into_iter().flatten() {
        assert!(
            std::str::from_utf8(s.as_bytes()).is_ok(),
            "accessor returned non-UTF-8"
        );
    }
    assert!(bytes.starts_with(b"<") && bytes.ends_with(b">"));
    let qname = e.qname();
    let name = e.name();
    assert!(!name.is_empty());
    assert!(
        qname == name || qname.ends_with(&format!(":{name}")),
        "{qname:?} vs {name:?}"
    );
    assert!(bytes[1..].starts_with(qname.as_bytes()));
    if e.is_empty() {
        assert!(bytes.ends_with(b"/>"));
        assert!(e.inner().is_empty());
    } else {
        let close = format!("</{qname}");
        let inner = e.inner();
        assert!(inner.len() < bytes.len());
        let _ = e.text();
        assert!(
            e.as_str().contains(&close),
            "no end tag in {:?}",
            e.as_str()
        );
    }
    for v in [e.to(), e.from(), e.type_(), e.id()].into_iter().flatten() {
        assert!(!v.contains('<'), "attribute value {v:?}");
    }
    let _ = (e.namespace().as_bytes(), e.uses_header_prefix());
    // Zero-copy: the element is a run of the input, after the previous one.
    let hay = &stream[*cursor..];
    let at = hay
        .windows(bytes.len())
        .position(|w| w == &bytes[..])
        .expect("element bytes are not in the input");
    *cursor += at + bytes.len();
}

fn compare(whole: &[Outcome], chunked: &[Outcome], limits: Limits, seed: u16) {
    if whole == chunked {
        return;
    }
    let i = whole
        .iter()
        .zip(chunked)
        .take_while(|(a, b)| a == b)
        .count();
    panic!(
        "chunking changed the result at index {i} (limits {limits:?}, seed {seed:#06x}):\n  \
         whole:   {:?}\n  chunked: {:?}\n  (whole has {} results, chunked {})",
        whole.get(i),
        chunked.get(i),
        whole.len(),
        chunked.len()
    );
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let seed = u16::from_le_bytes([data[0], data[1]]);
    let body = &data[2..];
    let owned;
    let stream: &[u8] = if seed & 1 == 1 {
        owned = [HEADER, body].concat();
        &owned
    } else {
        body
    };
    for limits in [Limits::default(), SMALL, TINY] {
        let whole = run_whole(limits, stream);
        let chunked = run_chunked(limits, stream, seed);
        compare(&whole, &chunked, limits, seed);
        let mut cursor = 0;
        for r in &whole {
            if let Ok(Frame::Element(e)) = r {
                check_element(e, stream, &mut cursor);
            }
        }
    }
});
