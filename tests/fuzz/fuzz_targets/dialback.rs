//! Fuzz target for Server Dialback keys and their verification (`fedrouter_proto::dialback`,
//! XEP-0185; XEP-0220 §2.1.3 `db:verify` answered by an inbound S2S stream).
//!
//! Input: `[flags, receiving, 0xff, originating, 0xff, stream id, 0xff, key, 0xff,
//! secret]` (missing fields are empty; invalid UTF-8 is replaced). For the stream part the
//! three names lose the characters XML 1.0 cannot carry (controls, U+FFFE, U+FFFF).
//!
//! Invariants (the target panics when one fails):
//!
//! - `key` is 64 lowercase hexadecimal digits, the same for the same inputs, and
//!   `verify` accepts it, in upper case and with surrounding ASCII whitespace;
//! - `verify` never accepts a key other than the computed one (compared as hexadecimal,
//!   case-insensitively, after trimming ASCII whitespace): not the fuzzer's key unless it
//!   is that one, not the computed key with one digit changed, not under another secret,
//!   not for the swapped domain pair (unless the two `"{receiving} {originating} {id}"`
//!   strings are the same);
//! - an inbound stream, after a valid header, answers a `<db:verify/>` carrying these
//!   values (or, by `flags`, the right key, possibly in upper case and padded, or the
//!   right key with one digit changed) with exactly one `<db:verify/>`: `type='valid'`
//!   exactly when `to` is a domain it hosts and the key is the computed one for the
//!   lowercased domains; `item-not-found` when it does not host `to`; `from`/`to`
//!   swapped, the same `id`; and the stream stays open; except when `from` is not a
//!   domainpart (RFC 7622 §3.2): then nothing is answered and the stream closes with
//!   `invalid-from` (RFC 6120 §4.9.3.9);
//! - `DialbackResult::from_type` and `DialbackErrorCondition::from_name` round-trip
//!   through `type_str` and `as_str`.

#![no_main]

use fedrouter_fuzz::{s2s_config, Clock, OutputCheck, DIALBACK_SECRET, INBOUND_HEADER};
use fedrouter_proto::condition::StreamCondition;
use fedrouter_proto::dialback::{DialbackErrorCondition, DialbackResult, DialbackSecret};
use fedrouter_proto::jid::DomainPart;
use fedrouter_proto::stream::s2s::{CloseReason, Event, S2sConnection};
use fedrouter_proto::xml::{escape_attr, escape_text, unescape, Namespace};
use libfuzzer_sys::fuzz_target;

fn xml_chars(s: &str) -> String {
    s.chars()
        .filter(|&c| c >= ' ' && c != '\u{fffe}' && c != '\u{ffff}')
        .collect()
}

/// `key` with the digit at `at % 64` changed to another hexadecimal digit.
fn spoil(key: &str, at: usize) -> String {
    let mut b = key.as_bytes().to_vec();
    let i = at % b.len();
    b[i] = if b[i] == b'0' { b'1' } else { b'0' };
    String::from_utf8(b).expect("hex")
}

fn check_keys(secret: &DialbackSecret, r: &str, o: &str, id: &str, fuzz_key: &str, flags: u8) {
    let key = secret.key(r, o, id);
    assert_eq!(key.len(), 64);
    assert!(
        key.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{key}"
    );
    assert_eq!(secret.key(r, o, id), key, "not deterministic");
    assert!(secret.verify(r, o, id, &key));
    assert!(secret.verify(r, o, id, &key.to_uppercase()));
    assert!(secret.verify(r, o, id, &format!(" \t{key}\r\n")));
    let accepted = secret.verify(r, o, id, fuzz_key);
    let is_it = fuzz_key.trim_ascii().eq_ignore_ascii_case(&key);
    assert_eq!(
        accepted, is_it,
        "verify({fuzz_key:?}) = {accepted}, computed {key}"
    );
    assert!(!secret.verify(r, o, id, &spoil(&key, usize::from(flags))));
    let other = DialbackSecret::new(format!("{DIALBACK_SECRET}, and more"));
    assert!(
        !other.verify(r, o, id, &key),
        "another secret accepted the key"
    );
    if format!("{r} {o} {id}") != format!("{o} {r} {id}") {
        assert!(
            !secret.verify(o, r, id, &key),
            "the swapped pair accepted the key"
        );
    }
}

fn check_names() {
    for c in DialbackErrorCondition::TABLE {
        assert_eq!(DialbackErrorCondition::from_name(c.as_str()), Some(c));
        let r = DialbackResult::Error(c);
        assert_eq!(
            DialbackResult::from_type(Some(r.type_str()), Some(c.as_str())),
            Some(r)
        );
    }
    for r in [DialbackResult::Valid, DialbackResult::Invalid] {
        assert_eq!(DialbackResult::from_type(Some(r.type_str()), None), Some(r));
    }
}

fn check_stream(flags: u8, from: &str, to: &str, id: &str, fuzz_key: &str) {
    let cfg = s2s_config(false);
    let clock = Clock::new();
    let mut conn = S2sConnection::inbound(cfg.clone(), 1, None, clock.now());
    let mut out = OutputCheck::new();
    conn.handle_input(INBOUND_HEADER, clock.now());
    let mut bytes = Vec::new();
    conn.poll_transmit(&mut bytes);
    out.feed(&bytes);
    while conn.poll_event().is_some() {}

    let (from_l, to_l) = (from.to_ascii_lowercase(), to.to_ascii_lowercase());
    let right = cfg.dialback_secret.key(&from_l, &to_l, id);
    let key = match flags % 4 {
        0 | 1 => fuzz_key.to_owned(),
        2 => format!(
            "\n  {}\n",
            if flags & 4 != 0 {
                right.to_uppercase()
            } else {
                right.clone()
            }
        ),
        _ => spoil(&right, usize::from(flags >> 2)),
    };
    let element = format!(
        "<db:verify from='{}' to='{}' id='{}'>{}</db:verify>",
        escape_attr(from),
        escape_attr(to),
        escape_attr(id),
        escape_text(&key)
    );
    conn.handle_input(element.as_bytes(), clock.now());
    let mut bytes = Vec::new();
    conn.poll_transmit(&mut bytes);
    let answers: Vec<_> = out
        .feed(&bytes)
        .into_iter()
        .filter(|el| el.name() == "verify" && *el.namespace() == Namespace::Dialback)
        .collect();
    if DomainPart::new(&from_l).is_err() {
        assert!(
            answers.is_empty(),
            "{element} answered for an invalid domain"
        );
        let mut closed = false;
        while let Some(ev) = conn.poll_event() {
            if let Event::Closed(reason) = &ev {
                assert!(
                    matches!(
                        reason,
                        CloseReason::SentError(StreamCondition::InvalidFrom, _)
                    ),
                    "{element} closed the stream with {reason:?}, not invalid-from"
                );
                closed = true;
            }
        }
        assert!(closed, "{element}: an invalid 'from' left the stream open");
        return;
    }
    while let Some(ev) = conn.poll_event() {
        assert!(
            !matches!(ev, Event::Closed(_)),
            "a db:verify closed the stream: {ev:?}"
        );
        assert!(
            !matches!(ev, Event::Authenticated { .. }),
            "a db:verify authenticated: {ev:?}"
        );
    }
    assert_eq!(
        answers.len(),
        1,
        "one answer to {element}: {}",
        String::from_utf8_lossy(&bytes)
    );
    let a = &answers[0];
    let un = |v: Option<&str>| v.map(|v| unescape(v).expect("our escaping").into_owned());
    assert_eq!(un(a.from()).as_deref(), Some(to_l.as_str()));
    assert_eq!(un(a.to()).as_deref(), Some(from_l.as_str()));
    assert_eq!(un(a.id()).as_deref(), Some(id));
    let valid = cfg.hosts(&to_l) && key.trim_ascii().eq_ignore_ascii_case(&right);
    let expected = if !cfg.hosts(&to_l) {
        "error"
    } else if valid {
        "valid"
    } else {
        "invalid"
    };
    assert_eq!(
        a.type_(),
        Some(expected),
        "answer to {element}: {}",
        a.as_str()
    );
    if expected == "error" {
        assert!(a.as_str().contains("<item-not-found "), "{}", a.as_str());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut fields = rest.split(|&b| b == 0xff).map(String::from_utf8_lossy);
    let mut next = || fields.next().map(|f| f.into_owned()).unwrap_or_default();
    let (r, o, id, key, secret) = (next(), next(), next(), next(), next());
    let s = DialbackSecret::new(secret.as_bytes());
    check_keys(&s, &r, &o, &id, &key, flags);
    check_names();
    let default = DialbackSecret::new(DIALBACK_SECRET);
    check_keys(&default, &r, &o, &id, &key, flags);
    // On the stream: `r` asks us, as authoritative for `o`, about `key`. Hosted
    // domains are likelier with the flag.
    let o = if flags & 0x40 != 0 {
        "A.example".to_owned()
    } else {
        xml_chars(&o)
    };
    check_stream(flags, &xml_chars(&r), &o, &xml_chars(&id), &xml_chars(&key));
});
