//! Presence fan-out (RFC 6121 §4.2.2, §4.4.2): one local user with 1,000 contacts across
//! 500 remote domains changes presence. How long until every S2S write is queued, and how
//! many bytes are allocated and written anew per recipient. Everything runs in memory: 500
//! open outbound [`S2sConnection`]s (sans-IO, authenticated by Server Dialback against our
//! own inbound), no sockets, one thread.
//!
//! # What is measured
//!
//! Per broadcast, from the stamped presence bytes (`<presence from='…/desktop'>` with
//! `<show/>`, `<status/>`, `<priority/>` and a XEP-0115 `<c/>`, 323 bytes) until the
//! stanza, addressed to each of the 1,000 contacts, sits in the transmit buffer of the
//! outbound stream to the contact's domain:
//!
//! - `fanout/shared`: the path of `src/runtime/local/presence.rs` (`broadcast`, `fan_out`,
//!   `fanned_out`) reduced to its essentials. [`SharedStanza::parse`] once (no `to`),
//!   [`plan`] over the contacts (2 shards, all remote), then per recipient: its domain
//!   ([`domain_key`] of [`domain_of`], borrowed), the stream for that domain (a `HashMap`
//!   look-up by `&str`), [`write_to_attr`] into one reused buffer, and
//!   [`S2sConnection::send_stanza_parts`] with [`SharedStanza::parts`]. All shards' groups
//!   are handled in turn on this thread (the `ShardMsg::Fanout` hop between shards is not
//!   modelled).
//! - `fanout/copy-per-recipient`: the naive way, for comparison. [`parse_stanza`] once,
//!   the same [`plan`], then per recipient a fresh `Vec` holding the whole stanza
//!   re-addressed ([`write_readdressed`], what a router that owns one copy per queued
//!   recipient does) and [`S2sConnection::send_stanza`].
//! - `fanout/runtime-replica`: what the runtime does today, replicated step by step from
//!   `fanned_out`, `Shard::send_remote` and `Queued::send` (src/runtime/shard.rs) for an
//!   open, authenticated stream with an empty queue: per recipient the domain as an owned
//!   `String`, a `Queued::Shared(stanza.clone(), jid)`, the sending domain as an owned
//!   `String`, `remotes.entry(d.to_owned())`, the `is_authenticated` and backlog checks, a
//!   fresh `Vec` for the `to` attribute, `send_stanza_parts`, and `pump` (the stream's
//!   transmit buffer copied into the connection's `wire` buffer, which is what the socket
//!   writes from). Not the runtime itself: it drifts if the runtime changes.
//!
//! In all three cases the contacts are given as a ready `Vec<String>` (what the runtime's
//! `Roster::contacts` returns): that per-broadcast copy of the roster's JIDs is not
//! measured.
//!
//! After each timed broadcast, untimed: every stream's output is drained with
//! `poll_transmit` into one reused buffer (and the replica's `wire` buffers are cleared),
//! so the transmit buffers keep their capacity and appending to them allocates nothing
//! once warm. The drain time is measured separately and printed.
//!
//! Allocations: a counting `#[global_allocator]` around mimalloc (the `fedrouter`
//! binary's allocator) counts bytes requested (`alloc`, `alloc_zeroed`: the size;
//! `realloc`: the growth, 0 when shrinking) and calls, during 20 untimed broadcasts of
//! each case after 3 warm-up ones. Allocations made inside the calls that append to a
//! transmit buffer (`send_stanza_parts`, `send_stanza`, `poll_transmit` in the replica's
//! `pump`) are counted apart and excluded: that is the copy to the socket buffer every
//! stanza pays however it was built (and it is 0 once the buffers are warm). "Written
//! anew" counts the bytes each case writes per recipient before that append: the ` to='…'`
//! attribute for the shared stanza, the whole re-addressed stanza for the copy.
//!
//! Before measuring, one broadcast of each case is checked: every stream receives exactly
//! the bytes `write_readdressed` gives for its two contacts, in the plan's order, and the
//! three cases produce the same bytes. Also printed: `plan()`'s share of the allocations
//! and, timed by hand (median of 200 calls), of the time; and the drain time.
//!
//! # Noise
//!
//! The machine is small and shared (2 cores): absolute times move between runs, the
//! ratios within one run much less. One thread, a fixed simulated `now`, the same contacts
//! and stanza every iteration. Criterion times each broadcast alone (`iter_custom`) and
//! takes 20 samples over 3 s after 1 s of warm-up per case; the summary uses its median
//! (read back from `target/criterion/fanout/*/new/estimates.json`) with the 95% interval.
//! The ratios to `shared` are also measured paired: 101 rounds, each timing one broadcast
//! of every case back to back in rotating order, reporting the median per-round ratio and
//! its 10th-90th percentiles, which cancels slow drift from other load on the machine.
//! The allocator pays one relaxed atomic load per allocation when not counting.
//!
//! # Running
//!
//! `cargo bench --bench fanout` (about 15 s after the build). `-- --test` runs each case
//! once as a smoke test (no summary line then); `-- shared` runs a subset.

#[path = "report.rs"]
mod report;

use std::alloc::{GlobalAlloc, Layout};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, Throughput};
use fedrouter::dialback::{DialbackResult, DialbackSecret};
use fedrouter::jid::domain_of;
use fedrouter::router::domain_key;
use fedrouter::router::fanout::{plan, write_to_attr, SharedStanza};
use fedrouter::stream::{Event, FederationPolicy, PeerPolicy, S2sConfig, S2sConnection, Timeouts};
use fedrouter::xml::writer::write_readdressed;
use fedrouter::xml::{parse_stanza, Element, Frame, Framer, Limits};

/// Our domain, the sender's.
const LOCAL: &str = "cupdomain.example";
/// Remote domains, each with [`PER_DOMAIN`] contacts.
const DOMAINS: usize = 500;
const PER_DOMAIN: usize = 2;
const RECIPIENTS: usize = DOMAINS * PER_DOMAIN;
/// Shards the plan groups by (one per core on this machine).
const SHARDS: usize = 2;
/// Broadcasts counted for allocations, after [`WARM_UP`] uncounted ones.
const COUNTED: usize = 20;
/// `s2s.send_queue_bytes`'s default, for the replica's backlog check.
const SEND_QUEUE_BYTES: usize = 1 << 20;
const WARM_UP: usize = 3;
/// Rounds of the paired comparison: one broadcast of each case, back to back.
const PAIRED_ROUNDS: usize = 101;

/// The presence as the C2S stream stamped it: `from` the full JID, no `to`.
const PRESENCE: &str = "<presence from='cupuser1@cupdomain.example/desktop-3f9a1c' \
id='pres-8d2e41b7'><show>away</show><status>In a meeting until 3pm, ping me on my \
mobile if urgent</status><priority>5</priority><c xmlns='http://jabber.org/protocol/caps' \
hash='sha-1' node='https://conversations.im' ver='q07IKJEyjvHSyhy//CH0CxmKi8w='/></presence>";

const GROUP: &str = "fanout";
const SHARED_ID: &str = "shared";
const COPY_ID: &str = "copy-per-recipient";
const REPLICA_ID: &str = "runtime-replica";

// ----- allocation counting ---------------------------------------------------------------

/// mimalloc plus counters, active only while [`COUNTING`] is set.
struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
/// Set while inside a call that appends to a transmit buffer.
static IN_TX: AtomicBool = AtomicBool::new(false);
static BYTES: AtomicU64 = AtomicU64::new(0);
static CALLS: AtomicU64 = AtomicU64::new(0);
static TX_BYTES: AtomicU64 = AtomicU64::new(0);
static TX_CALLS: AtomicU64 = AtomicU64::new(0);

fn note_alloc(bytes: usize) {
    if COUNTING.load(Relaxed) {
        if IN_TX.load(Relaxed) {
            TX_BYTES.fetch_add(bytes as u64, Relaxed);
            TX_CALLS.fetch_add(1, Relaxed);
        } else {
            BYTES.fetch_add(bytes as u64, Relaxed);
            CALLS.fetch_add(1, Relaxed);
        }
    }
}

// SAFETY: every call is forwarded unchanged to `MiMalloc`; the counters allocate nothing.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `MiMalloc` through this allocator.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc(new_size.saturating_sub(layout.size()));
        // SAFETY: as for `dealloc`.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Runs `f`, an append to a transmit buffer, counting its allocations apart.
#[inline]
fn tx<R>(f: impl FnOnce() -> R) -> R {
    IN_TX.store(true, Relaxed);
    let r = f();
    IN_TX.store(false, Relaxed);
    r
}

/// Allocations while running `f`: bytes and calls outside and inside [`tx`].
#[derive(Debug, Default, Clone, Copy)]
struct Allocs {
    bytes: u64,
    calls: u64,
    tx_bytes: u64,
    tx_calls: u64,
}

fn count_allocs<R>(f: impl FnOnce() -> R) -> (R, Allocs) {
    for c in [&BYTES, &CALLS, &TX_BYTES, &TX_CALLS] {
        c.store(0, Relaxed);
    }
    COUNTING.store(true, Relaxed);
    let r = f();
    COUNTING.store(false, Relaxed);
    let a = Allocs {
        bytes: BYTES.load(Relaxed),
        calls: CALLS.load(Relaxed),
        tx_bytes: TX_BYTES.load(Relaxed),
        tx_calls: TX_CALLS.load(Relaxed),
    };
    (r, a)
}

// ----- 500 open outbound streams ---------------------------------------------------------

fn s2s_config(domains: Vec<String>) -> Arc<S2sConfig> {
    Arc::new(S2sConfig {
        dialback_secret: DialbackSecret::new(format!("secret of {}", domains[0])),
        local_domains: domains,
        certificate_domains: vec![],
        policy: FederationPolicy {
            default: PeerPolicy::google(),
            ..Default::default()
        },
        stream_id_key: [7; 32],
        cert_verifier: None,
        limits: Limits::default(),
        timeouts: Timeouts::default(),
        stream_management: None,
    })
}

fn remote_domain(i: usize) -> String {
    format!(
        "xmpp{i:03}.remote-{}.example",
        ["net", "org", "com", "chat"][i % 4]
    )
}

/// Our outbound stream from [`LOCAL`] to `remote`, driven against our inbound (which
/// hosts every remote domain) over plain TCP until Server Dialback (XEP-0220) has
/// authenticated it. The receiving server's `db:verify` to the authoritative server is
/// short-circuited with `out_cfg`'s secret, as `tests/common/pair.rs` does.
fn open_outbound(
    out_cfg: &Arc<S2sConfig>,
    in_cfg: &Arc<S2sConfig>,
    remote: &str,
    nonce: u64,
    now: Instant,
) -> S2sConnection {
    let mut out = S2sConnection::outbound(out_cfg.clone(), LOCAL, remote, false, now);
    let mut inb = S2sConnection::inbound(in_cfg.clone(), nonce, None, now);
    let (mut to_in, mut to_out) = (Vec::new(), Vec::new());
    let mut authenticated = (false, false);
    for _ in 0..64 {
        let mut progress = false;
        out.poll_transmit(&mut to_in);
        if !to_in.is_empty() {
            inb.handle_input(&to_in, now);
            to_in.clear();
            progress = true;
        }
        while let Some(ev) = inb.poll_event() {
            progress = true;
            match ev {
                Event::VerifyNeeded {
                    local,
                    remote,
                    stream_id,
                    key,
                } => {
                    let verdict = if out_cfg
                        .dialback_secret
                        .verify(&local, &remote, &stream_id, &key)
                    {
                        DialbackResult::Valid
                    } else {
                        DialbackResult::Invalid
                    };
                    inb.handle_dialback_verdict(&local, &remote, verdict, now);
                }
                Event::Authenticated { .. } => authenticated.1 = true,
                Event::Opened { .. } => {}
                other => panic!("inbound for {remote}: unexpected {other:?}"),
            }
        }
        inb.poll_transmit(&mut to_out);
        if !to_out.is_empty() {
            out.handle_input(&to_out, now);
            to_out.clear();
            progress = true;
        }
        while let Some(ev) = out.poll_event() {
            progress = true;
            match ev {
                Event::Authenticated { .. } => authenticated.0 = true,
                Event::Opened { .. } => {}
                other => panic!("outbound to {remote}: unexpected {other:?}"),
            }
        }
        if !progress {
            assert_eq!(
                authenticated,
                (true, true),
                "{remote}: settled unauthenticated"
            );
            assert!(out.is_authenticated(LOCAL, remote));
            assert_eq!(out.pending_transmit(), 0);
            return out;
        }
    }
    panic!("{remote}: negotiation did not settle");
}

/// The streams, the contacts and the reused buffers.
struct Fleet {
    /// `streams[i]` goes to `domains[i]`.
    streams: Vec<S2sConnection>,
    domains: Vec<String>,
    /// Domain → stream index (the runtime's `remotes` map, owned keys).
    index: HashMap<String, usize>,
    /// The runtime replica's per-connection `wire` buffers.
    wires: Vec<Vec<u8>>,
    /// The roster's contacts with a `from`/`both` subscription, as `Roster::contacts`
    /// returns them.
    contacts: Vec<String>,
    /// Drain buffer, reused.
    drain: Vec<u8>,
    /// The shared case's `to` attribute buffer, reused.
    attr: Vec<u8>,
    now: Instant,
}

impl Fleet {
    fn new() -> Fleet {
        let now = Instant::now();
        let domains: Vec<String> = (0..DOMAINS).map(remote_domain).collect();
        let out_cfg = s2s_config(vec![LOCAL.to_owned()]);
        let in_cfg = s2s_config(domains.clone());
        let streams: Vec<S2sConnection> = domains
            .iter()
            .enumerate()
            .map(|(i, d)| open_outbound(&out_cfg, &in_cfg, d, i as u64 + 1, now))
            .collect();
        let index = domains
            .iter()
            .enumerate()
            .map(|(i, d)| (d.clone(), i))
            .collect();
        // Contacts interleaved across domains, as a roster (a BTreeMap by JID) lists them.
        let names = ["jdoe", "alice.martin", "bob", "k.nakamura", "maria-lopez"];
        let mut contacts: Vec<String> = (0..RECIPIENTS)
            .map(|n| {
                let d = &domains[n % DOMAINS];
                format!("{}{}@{d}", names[n % names.len()], n / DOMAINS + 1)
            })
            .collect();
        contacts.sort();
        Fleet {
            streams,
            wires: vec![Vec::new(); domains.len()],
            domains,
            index,
            contacts,
            drain: Vec::new(),
            attr: Vec::new(),
            now,
        }
    }

    /// Empties every stream's transmit buffer (and the replica's wires), keeping their
    /// capacity. Returns the bytes drained.
    fn drain(&mut self) -> usize {
        let mut n = 0;
        for s in &mut self.streams {
            self.drain.clear();
            n += s.poll_transmit(&mut self.drain);
        }
        for w in &mut self.wires {
            n += w.len();
            w.clear();
        }
        n
    }

    /// Every stream's pending output (and wire), drained.
    fn take_outputs(&mut self) -> Vec<Vec<u8>> {
        self.streams
            .iter_mut()
            .zip(&mut self.wires)
            .map(|(s, w)| {
                let mut v = std::mem::take(w);
                s.poll_transmit(&mut v);
                v
            })
            .collect()
    }
}

fn is_local(d: &str) -> bool {
    d == LOCAL
}

// ----- the three cases -------------------------------------------------------------------

/// The shared stanza, as the runtime means it. Returns the bytes written anew (the `to`
/// attributes).
fn fan_out_shared(f: &mut Fleet, stamped: &[u8]) -> usize {
    let shared = SharedStanza::parse(stamped).expect("stamped presence frames");
    let mut written = 0;
    for (_shard, to) in plan(f.contacts.iter().map(String::as_str), SHARDS, is_local) {
        for jid in &to {
            let domain = domain_key(domain_of(jid));
            let i = f.index[&*domain];
            f.attr.clear();
            write_to_attr(jid, &mut f.attr);
            written += f.attr.len();
            let parts = shared.parts(&f.attr);
            let s = &mut f.streams[i];
            tx(|| s.send_stanza_parts(LOCAL, &domain, &parts, f.now)).expect("open stream");
        }
    }
    written
}

/// A whole re-addressed copy per recipient. Returns the bytes written anew (the copies).
fn fan_out_copy(f: &mut Fleet, stamped: &[u8]) -> usize {
    let el = parse_stanza(stamped).expect("stamped presence frames");
    let mut written = 0;
    for (_shard, to) in plan(f.contacts.iter().map(String::as_str), SHARDS, is_local) {
        for jid in &to {
            let domain = domain_key(domain_of(jid));
            let i = f.index[&*domain];
            let mut copy = Vec::new();
            write_readdressed(&el, Some(jid), None, &mut copy);
            written += copy.len();
            let s = &mut f.streams[i];
            tx(|| s.send_stanza(LOCAL, &domain, &copy, f.now)).expect("open stream");
        }
    }
    written
}

/// `src/runtime/shard.rs`'s `Queued`, the `Shared` half.
enum Queued {
    Shared(SharedStanza, Box<str>),
}

impl Queued {
    fn from(&self) -> Option<&str> {
        match self {
            Queued::Shared(s, _) => s.from(),
        }
    }
}

/// `fan_out` → `fanned_out` → `send_remote` → `Queued::send` → `pump`, for open
/// authenticated streams with empty queues. Returns the bytes written anew before the
/// transmit buffer (the `to` attributes).
fn fan_out_replica(f: &mut Fleet, stamped: &[u8]) -> usize {
    let stanza = SharedStanza::parse(stamped).expect("stamped presence frames");
    let mut written = 0;
    for (_shard, to) in plan(f.contacts.iter().map(String::as_str), SHARDS, is_local) {
        // fanned_out(&stanza, to)
        for jid in to {
            let domain = domain_key(domain_of(&jid)).into_owned();
            if is_local(&domain) {
                unreachable!("no local contacts here");
            }
            // send_remote(&domain, Queued::Shared(stanza.clone(), jid))
            let el = Queued::Shared(stanza.clone(), jid);
            let d = domain.as_str();
            let Some(from) = el.from() else { continue };
            let local = domain_key(domain_of(from)).into_owned();
            assert!(is_local(&local));
            let i = *f.index.entry(d.to_owned()).or_default();
            let ready = f.streams[i].is_authenticated(&local, d);
            let backlog = f.wires[i].len() + f.streams[i].pending_transmit();
            assert!(ready && backlog < SEND_QUEUE_BYTES);
            // Queued::send
            let Queued::Shared(s, to) = &el;
            let mut attr = Vec::with_capacity(8 + to.len());
            write_to_attr(to, &mut attr);
            written += attr.len();
            let (proto, wire) = (&mut f.streams[i], &mut f.wires[i]);
            tx(|| {
                proto
                    .send_stanza_parts(&local, d, &s.parts(&attr), f.now)
                    .expect("open stream");
                // st.pump() on a plain stream
                proto.poll_transmit(wire);
            });
        }
    }
    written
}

type Case = fn(&mut Fleet, &[u8]) -> usize;

const CASES: [(&str, Case); 3] = [
    (SHARED_ID, fan_out_shared),
    (COPY_ID, fan_out_copy),
    (REPLICA_ID, fan_out_replica),
];

// ----- checks ----------------------------------------------------------------------------

/// What every stream must receive: `write_readdressed` for each of its contacts, in JID
/// order (the plan sorts by shard, domain, JID; a domain lives on one shard).
fn expected_outputs(f: &Fleet) -> Vec<Vec<u8>> {
    let el = parse_stanza(PRESENCE.as_bytes()).expect("presence frames");
    let mut out = vec![Vec::new(); f.domains.len()];
    let mut contacts = f.contacts.clone();
    contacts.sort();
    for jid in &contacts {
        write_readdressed(&el, Some(jid), None, &mut out[f.index[domain_of(jid)]]);
    }
    out
}

/// Each stream's output parses into [`PER_DOMAIN`] presences to its own domain, `from`
/// the sender.
fn check_frames(f: &Fleet, outputs: &[Vec<u8>]) {
    for (i, bytes) in outputs.iter().enumerate() {
        let mut fr = Framer::new(Limits::default());
        fr.feed(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>");
        assert!(matches!(fr.next_frame(), Ok(Some(Frame::Header(_)))));
        fr.feed(bytes);
        let mut n = 0;
        while let Some(frame) = fr.next_frame().expect("well-formed output") {
            let Frame::Element(el) = frame else {
                panic!("stream {i}: {frame:?}")
            };
            check_presence(&el, &f.domains[i]);
            n += 1;
        }
        assert_eq!(n, PER_DOMAIN, "stream {i}: stanzas");
    }
}

fn check_presence(el: &Element, domain: &str) {
    assert_eq!(el.to().map(domain_of), Some(domain));
    assert_eq!(el.from(), Some("cupuser1@cupdomain.example/desktop-3f9a1c"));
}

fn check_cases(f: &mut Fleet) {
    let expected = expected_outputs(f);
    check_frames(f, &expected);
    for (id, case) in CASES {
        f.drain();
        let written = case(f, PRESENCE.as_bytes());
        assert!(written > 0);
        let got = f.take_outputs();
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert!(
                g == e,
                "{id}: stream {i} ({}): got {:?}, want {:?}",
                f.domains[i],
                String::from_utf8_lossy(g),
                String::from_utf8_lossy(e)
            );
        }
        f.wires = vec![Vec::new(); f.domains.len()];
    }
}

// ----- main ------------------------------------------------------------------------------

/// Per-recipient allocation and write figures of one case.
struct Counted {
    allocs: Allocs,
    written: usize,
}

impl Counted {
    fn per_recipient(&self, v: u64) -> f64 {
        v as f64 / (COUNTED * RECIPIENTS) as f64
    }
}

fn count_case(f: &mut Fleet, case: Case) -> Counted {
    for _ in 0..WARM_UP {
        case(f, PRESENCE.as_bytes());
        f.drain();
    }
    let mut total = Allocs::default();
    let mut written = 0;
    for _ in 0..COUNTED {
        let (w, a) = count_allocs(|| case(f, PRESENCE.as_bytes()));
        f.drain();
        written += w;
        total.bytes += a.bytes;
        total.calls += a.calls;
        total.tx_bytes += a.tx_bytes;
        total.tx_calls += a.tx_calls;
    }
    Counted {
        allocs: total,
        written,
    }
}

fn main() {
    let started = SystemTime::now();
    let t = Instant::now();
    let mut fleet = Fleet::new();
    eprintln!(
        "fanout setup: {DOMAINS} outbound streams authenticated by dialback in {:.0} ms; \
         {RECIPIENTS} contacts; presence {} bytes",
        t.elapsed().as_secs_f64() * 1e3,
        PRESENCE.len()
    );
    check_cases(&mut fleet);

    // Allocations, untimed.
    let mut counted = Vec::new();
    for (id, case) in CASES {
        let c = count_case(&mut fleet, case);
        eprintln!(
            "allocated per recipient ({id}): {:.1} B in {:.2} calls, excluding transmit \
             buffer appends ({} B in {} calls over {COUNTED} broadcasts); written anew \
             {:.1} B",
            c.per_recipient(c.allocs.bytes),
            c.per_recipient(c.allocs.calls),
            c.allocs.tx_bytes,
            c.allocs.tx_calls,
            c.per_recipient(c.written as u64),
        );
        counted.push((id, c));
    }
    // The plan alone, and the stanza's creation alone (once per broadcast).
    let plan_allocs = {
        let contacts = &fleet.contacts;
        black_box(plan(contacts.iter().map(String::as_str), SHARDS, is_local));
        let (_, a) = count_allocs(|| {
            black_box(plan(contacts.iter().map(String::as_str), SHARDS, is_local));
        });
        a
    };
    let (_, create_allocs) = count_allocs(|| {
        black_box(SharedStanza::parse(PRESENCE.as_bytes()).expect("frames"));
    });
    eprintln!(
        "of which plan(): {:.1} B in {:.2} calls per recipient; SharedStanza::parse: {} B in \
         {} calls per broadcast",
        plan_allocs.bytes as f64 / RECIPIENTS as f64,
        plan_allocs.calls as f64 / RECIPIENTS as f64,
        create_allocs.bytes,
        create_allocs.calls
    );

    // The plan alone, timed by hand (part of every case above).
    let plan_ns = {
        let contacts = &fleet.contacts;
        let mut v = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            black_box(plan(contacts.iter().map(String::as_str), SHARDS, is_local));
            v.push(t.elapsed().as_nanos() as f64);
        }
        median(&mut v)
    };

    // Drain cost, for reference (not in the timed part).
    let drain_ns = {
        let mut v = Vec::new();
        for _ in 0..20 {
            fan_out_shared(&mut fleet, PRESENCE.as_bytes());
            let t = Instant::now();
            let n = fleet.drain();
            v.push(t.elapsed().as_nanos() as f64);
            assert_eq!(
                n,
                RECIPIENTS * (PRESENCE.len() + 6) + written_to_len(&fleet)
            );
        }
        median(&mut v)
    };

    let paired = paired(&mut fleet);

    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .without_plots()
        .configure_from_args();
    {
        let mut g = c.benchmark_group(GROUP);
        g.throughput(Throughput::Elements(RECIPIENTS as u64));
        for (id, case) in CASES {
            g.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let t = Instant::now();
                        black_box(case(&mut fleet, black_box(PRESENCE.as_bytes())));
                        total += t.elapsed();
                        fleet.drain();
                    }
                    total
                })
            });
        }
        g.finish();
    }
    c.final_summary();
    summary(started, &counted, &paired, plan_ns, drain_ns);
}

/// The `to` values' total length over all recipients (their attribute is ` to='…'`).
fn written_to_len(f: &Fleet) -> usize {
    f.contacts.iter().map(String::len).sum()
}

/// One case in the paired comparison.
#[derive(Debug, Clone, Copy)]
struct Paired {
    /// Median time per broadcast, ns.
    ns: f64,
    /// Median, 10th and 90th percentile of the per-round ratio to `shared`'s time.
    ratio: f64,
    p10: f64,
    p90: f64,
}

/// Each case's time over one broadcast, the three timed back to back in rotating order
/// ([`PAIRED_ROUNDS`] rounds, drained in between, untimed). Per-round ratios cancel slow
/// drift from other load on the machine.
fn paired(f: &mut Fleet) -> Vec<Paired> {
    let mut times = vec![Vec::new(); CASES.len()];
    let mut ratios = vec![Vec::new(); CASES.len()];
    for round in 0..PAIRED_ROUNDS {
        let mut t = [0.0; CASES.len()];
        for k in 0..CASES.len() {
            let c = (round + k) % CASES.len();
            let start = Instant::now();
            black_box(CASES[c].1(f, black_box(PRESENCE.as_bytes())));
            t[c] = start.elapsed().as_nanos() as f64;
            f.drain();
        }
        for c in 0..CASES.len() {
            times[c].push(t[c]);
            ratios[c].push(t[c] / t[0]);
        }
    }
    times
        .iter_mut()
        .zip(&mut ratios)
        .map(|(t, r)| {
            r.sort_by(f64::total_cmp);
            Paired {
                ns: median(t),
                ratio: r[r.len() / 2],
                p10: r[r.len() / 10],
                p90: r[r.len() * 9 / 10],
            }
        })
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn summary(
    started: SystemTime,
    counted: &[(&str, Counted)],
    paired: &[Paired],
    plan_ns: f64,
    drain_ns: f64,
) {
    let time = |id: &str| report::median_ns(&[GROUP], GROUP, id, started);
    let alloc = |id: &str| {
        counted
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, c)| c.per_recipient(c.allocs.bytes))
            .expect("counted")
    };
    let written = |id: &str| {
        counted
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, c)| c.per_recipient(c.written as u64))
            .expect("counted")
    };
    let Some((ns, lo, hi)) = time(SHARED_ID) else {
        eprintln!("fanout: no timing for {SHARED_ID} in this run; no summary");
        return;
    };
    let (a_shared, a_copy) = (alloc(SHARED_ID), alloc(COPY_ID));
    println!(
        "fanout: {RECIPIENTS} recipients / {DOMAINS} domains: {:.1} us per broadcast \
         ({:.1}-{:.1}), {:.0} ns per recipient; allocated per recipient: shared {a_shared:.0} B, \
         copy-per-recipient {a_copy:.0} B ({:.1}x); written anew per recipient: shared {:.0} B, \
         copy-per-recipient {:.0} B",
        ns / 1e3,
        lo / 1e3,
        hi / 1e3,
        ns / RECIPIENTS as f64,
        a_copy / a_shared,
        written(SHARED_ID),
        written(COPY_ID),
    );
    for (k, (id, _)) in CASES.iter().enumerate().skip(1) {
        let Paired {
            ns,
            ratio,
            p10,
            p90,
        } = paired[k];
        println!(
            "fanout paired ({PAIRED_ROUNDS} rounds, back to back): {id} {:.1} us vs shared {:.1} \
             us per broadcast: {ratio:.2}x (10-90%: {p10:.2}-{p90:.2})",
            ns / 1e3,
            paired[0].ns / 1e3,
        );
    }
    for id in [COPY_ID, REPLICA_ID] {
        if let Some((n, lo, hi)) = time(id) {
            println!(
                "fanout {id}: {:.1} us per broadcast ({:.1}-{:.1}), {:.0} ns per recipient \
                 ({:.2}x shared); allocated per recipient {:.0} B",
                n / 1e3,
                lo / 1e3,
                hi / 1e3,
                n / RECIPIENTS as f64,
                n / ns,
                alloc(id)
            );
        }
    }
    println!(
        "fanout: of which plan() alone: {:.1} us per broadcast (median of 200, timed by hand); \
         draining the {DOMAINS} streams (poll_transmit, not timed above): {:.1} us per \
         broadcast",
        plan_ns / 1e3,
        drain_ns / 1e3
    );
}
