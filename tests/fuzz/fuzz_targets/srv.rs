//! Fuzz target for the RFC 2782 ordering of SRV answers (`fedrouter_proto::srv`).
//!
//! Input: `[n_xmpps, records..., rng bytes...]`. The first byte splits the records between
//! the `_xmpps-server` set (`n_xmpps % 9` records; the set is absent when the byte's top
//! bit is set) and the `_xmpp-server` set (the next up to 8 records; absent when the
//! second byte's top bit is set). A record is 7 bytes: priority (u16 LE), weight (u16 LE),
//! port (u16 LE), target selector (one of a few host names, `.`, or the empty string).
//! The remaining bytes feed the random source (then zeros).
//!
//! Invariants (the target panics when one fails):
//!
//! - `order` returns a permutation of the records whose target is not `.` (RFC 2782
//!   "Target"), sorted by priority (lowest first, whatever the weights);
//! - it makes the same choices as a direct transcription of RFC 2782's selection
//!   algorithm (running sum of weights, zero-weight records first, a uniform draw in
//!   `0..=sum`, the first record whose running sum is at least the draw) given the same
//!   random numbers;
//! - weight-0 rule: with a random source that always draws the maximum, every record of
//!   positive weight comes before every weight-0 record of its priority; with one that
//!   always draws zero, each priority keeps its weight-0 records first, in input order;
//! - `resolve_targets`: `NoService` exactly when no set has a usable target and one is
//!   the single `.` record; `Fallback` when neither has any; otherwise the targets are the
//!   two sets' orders merged by priority (direct TLS first on a tie), host names
//!   lowercased without the trailing dot.

#![no_main]

use fedrouter_proto::srv::{order, resolve_targets, Resolution, SrvRecord, Target};
use libfuzzer_sys::fuzz_target;
use rand::{Rng, RngCore};

const TARGETS: [&str; 8] = [
    "a.example.",
    "B.Example.",
    "c.example",
    ".",
    "",
    "xmpp.example.",
    "a.example.",
    "D.",
];

/// A random source that plays back the fuzz bytes, then zeros.
#[derive(Clone)]
struct Tape<'a> {
    bytes: &'a [u8],
}

impl RngCore for Tape<'_> {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for d in dst {
            *d = match self.bytes.split_first() {
                Some((b, rest)) => {
                    self.bytes = rest;
                    *b
                }
                None => 0,
            };
        }
    }
}

/// A random source that always gives the same byte.
#[derive(Clone)]
struct Constant(u8);

impl RngCore for Constant {
    fn next_u32(&mut self) -> u32 {
        u32::from_le_bytes([self.0; 4])
    }
    fn next_u64(&mut self) -> u64 {
        u64::from_le_bytes([self.0; 8])
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        dst.fill(self.0);
    }
}

fn records(data: &[u8], n: usize) -> (Vec<SrvRecord>, &[u8]) {
    let mut out = Vec::new();
    let mut rest = data;
    while out.len() < n && rest.len() >= 7 {
        let (r, tail) = rest.split_at(7);
        out.push(SrvRecord {
            priority: u16::from_le_bytes([r[0], r[1] & 0x03]),
            weight: u16::from_le_bytes([r[2], r[3]]),
            port: u16::from_le_bytes([r[4], r[5]]),
            target: TARGETS[usize::from(r[6]) % TARGETS.len()].to_owned(),
        });
        rest = tail;
    }
    (out, rest)
}

fn is_dot(r: &SrvRecord) -> bool {
    r.target == "." || r.target.is_empty()
}

/// RFC 2782 "Usage rules", transcribed: per priority, lowest first; zero-weight records
/// first; sum the weights; draw in `0..=sum`; take the first record whose running sum is
/// greater than or equal to the draw; repeat without it.
fn rfc2782<R: Rng>(records: &[SrvRecord], rng: &mut R) -> Vec<SrvRecord> {
    let mut usable: Vec<SrvRecord> = records.iter().filter(|r| !is_dot(r)).cloned().collect();
    usable.sort_by_key(|r| r.priority);
    let mut out = Vec::new();
    let mut priorities: Vec<u16> = usable.iter().map(|r| r.priority).collect();
    priorities.dedup();
    for p in priorities {
        let mut zero: Vec<SrvRecord> = Vec::new();
        let mut weighted: Vec<SrvRecord> = Vec::new();
        for r in usable.iter().filter(|r| r.priority == p) {
            if r.weight == 0 {
                zero.push(r.clone());
            } else {
                weighted.push(r.clone());
            }
        }
        let mut group: Vec<SrvRecord> = zero.into_iter().chain(weighted).collect();
        while !group.is_empty() {
            let sum: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let draw = rng.random_range(0..=sum);
            let mut running = 0u32;
            let mut chosen = group.len() - 1;
            for (i, r) in group.iter().enumerate() {
                running += u32::from(r.weight);
                if running >= draw {
                    chosen = i;
                    break;
                }
            }
            out.push(group.remove(chosen));
        }
    }
    out
}

fn check_order(input: &[SrvRecord], tape: &Tape<'_>) {
    let got = order(input, &mut tape.clone());
    // A permutation of the usable records.
    let mut a: Vec<&SrvRecord> = got.iter().collect();
    let mut b: Vec<&SrvRecord> = input.iter().filter(|r| !is_dot(r)).collect();
    let key = |r: &&SrvRecord| (r.priority, r.weight, r.port, r.target.clone());
    a.sort_by_key(key);
    b.sort_by_key(key);
    assert_eq!(a, b, "not a permutation of the usable records");
    assert!(
        got.windows(2).all(|w| w[0].priority <= w[1].priority),
        "not sorted by priority: {got:?}"
    );
    // Same choices as RFC 2782's algorithm given the same draws.
    assert_eq!(
        got,
        rfc2782(input, &mut tape.clone()),
        "differs from RFC 2782"
    );

    // Weight 0: with maximal draws, positive weights come first within a priority.
    let high = order(input, &mut Constant(0xff));
    for w in high.windows(2) {
        if w[0].priority == w[1].priority {
            assert!(
                !(w[0].weight == 0 && w[1].weight != 0),
                "weight 0 chosen before a positive weight on a maximal draw: {high:?}"
            );
        }
    }
    // With zero draws, each priority starts with its weight-0 records in input order.
    let low = order(input, &mut Constant(0));
    let mut expected: Vec<SrvRecord> = input.iter().filter(|r| !is_dot(r)).cloned().collect();
    expected.sort_by_key(|r| (r.priority, r.weight != 0));
    for p in expected.iter().map(|r| r.priority) {
        let zeros_low: Vec<&SrvRecord> = low
            .iter()
            .filter(|r| r.priority == p)
            .take_while(|r| r.weight == 0)
            .collect();
        let zeros_exp: Vec<&SrvRecord> = expected
            .iter()
            .filter(|r| r.priority == p && r.weight == 0)
            .collect();
        assert_eq!(
            zeros_low, zeros_exp,
            "weight-0 records on zero draws: {low:?}"
        );
    }
}

fn target_of(r: &SrvRecord, direct_tls: bool) -> Target {
    let host = r.target.strip_suffix('.').unwrap_or(&r.target);
    Target {
        host: host.to_ascii_lowercase(),
        port: r.port,
        direct_tls,
    }
}

fn check_resolve(xmpps: Option<&[SrvRecord]>, xmpp: Option<&[SrvRecord]>, tape: &Tape<'_>) {
    let got = resolve_targets(xmpps, xmpp, &mut tape.clone());
    let usable = |s: Option<&[SrvRecord]>| s.is_some_and(|s| s.iter().any(|r| !is_dot(r)));
    let single_dot = |s: Option<&[SrvRecord]>| s.is_some_and(|s| s.len() == 1 && is_dot(&s[0]));
    let empty = |s: Option<&[SrvRecord]>| s.is_none_or(|s| s.is_empty());
    let nothing = |s| empty(s) || single_dot(s);
    if nothing(xmpps) && nothing(xmpp) {
        let expected = if single_dot(xmpps) || single_dot(xmpp) {
            Resolution::NoService
        } else {
            Resolution::Fallback
        };
        assert_eq!(got, expected);
        return;
    }
    let Resolution::Targets(targets) = got else {
        panic!("records {xmpps:?} {xmpp:?} gave {got:?}");
    };
    // The merge of both orders, drawn from the same random source in turn.
    let mut rng = tape.clone();
    let tls = order(xmpps.unwrap_or(&[]), &mut rng);
    let plain = order(xmpp.unwrap_or(&[]), &mut rng);
    let mut merged = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < tls.len() || j < plain.len() {
        if j == plain.len() || (i < tls.len() && tls[i].priority <= plain[j].priority) {
            merged.push(target_of(&tls[i], true));
            i += 1;
        } else {
            merged.push(target_of(&plain[j], false));
            j += 1;
        }
    }
    assert_eq!(targets, merged, "merge by priority");
    if !usable(xmpps) && !usable(xmpp) {
        assert!(targets.is_empty());
    }
    for t in &targets {
        assert!(!t.host.ends_with('.') || t.host == ".", "{t:?}");
        assert_eq!(t.host, t.host.to_ascii_lowercase());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let (xmpps, rest) = records(rest, usize::from(head % 9));
    let xmpp_absent = rest.first().is_some_and(|b| b & 0x80 != 0);
    let (xmpp, rest) = records(rest, 8);
    let tape = Tape { bytes: rest };
    check_order(&xmpps, &tape);
    check_order(&xmpp, &tape);
    let xmpps = (head & 0x80 == 0).then_some(&xmpps[..]);
    let xmpp = (!xmpp_absent).then_some(&xmpp[..]);
    check_resolve(xmpps, xmpp, &tape);
});
