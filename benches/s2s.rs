//! S2S state machine costs: how fast two [`S2sConnection`]s negotiate, how many
//! allocations that takes, and what the state machine adds on top of the bare
//! [`Framer`] on an established stream. Everything runs in memory: our outbound against
//! our inbound, real rustls over byte buffers, no sockets, one thread.
//!
//! # What is measured
//!
//! - `s2s negotiation/plain-dialback`: Google-style policy on both sides (no TLS, Server
//!   Dialback, XEP-0220). From `S2sConnection::outbound` and `::inbound` to both ends
//!   reporting [`Event::Authenticated`] with nothing left to send: stream headers,
//!   features, `db:result`, the receiving server's [`Event::VerifyNeeded`] answered with
//!   the originating server's XEP-0185 secret (the `db:verify` round trip to the
//!   authoritative server is short-circuited: the driver checks the key with that
//!   server's `DialbackSecret::verify`), and `db:result type='valid'`. Throughput is
//!   one element per negotiation: negotiations/s. In both negotiation cases the
//!   teardown (dropping both ends) is inside the timed code.
//! - `s2s negotiation/starttls-sasl-external`: strict policy on both sides: STARTTLS
//!   (RFC 6120 §5), a full TLS 1.3 handshake with a client certificate, the stream
//!   restart, the inbound's deferred certificate check and SASL EXTERNAL (XEP-0178), and
//!   the second restart after `<success/>` up to the outbound's post-SASL features. The
//!   test CA, both certificates and both rustls configurations (`tls::client_config`,
//!   `tls::server_config`, as the runtime builds them) are made once, outside the timed
//!   loop; only the per-connection `ClientConnection`/`ServerConnection` are created per
//!   iteration. Client session resumption is switched off on the shared client
//!   configuration, so every iteration is a full handshake (with it on, iterations after
//!   the first would resume and skip the certificate signatures).
//! - Allocations per negotiation, both cases: a counting `#[global_allocator]` around
//!   [`System`] counts `alloc`, `alloc_zeroed` and `realloc` calls during one untimed
//!   negotiation (after a warm-up one), in total and inside calls into
//!   `S2sConnection` (which include the peer-certificate check it makes); the rest is
//!   rustls and the driver. Printed once, before measuring.
//! - `s2s established stream/state machine` vs `/bare framer`: the stanzas of
//!   [`corpus::s2s_stream`] (about 5.9 MB of the same seed as `benches/tokenizer.rs`)
//!   from `gmail.test` users to `cupdomain.test` users, i.e. without the groupchat
//!   messages from `conference.gmail.test` and the dialback elements, which an inbound
//!   stream authenticated for (`cupdomain.test`, `gmail.test`) would refuse or answer. The
//!   state machine case feeds them in 16 KiB chunks to an inbound stream already
//!   authenticated by a plain dialback negotiation (done per iteration, untimed), calling
//!   `handle_input` and draining `poll_event`, counting [`Event::Stanza`]. The bare framer
//!   case feeds the same bytes in the same chunks to a [`Framer`] that has already read
//!   the stream header, draining `next_frame`. Throughput is the stanza count, so
//!   criterion reports stanzas/s; the summary gives their ratio (target ≥ 0.8). Every
//!   pass checks the exact stanza count and that nothing else happened.
//!
//! # Noise
//!
//! The machine is small and shared (2 cores), so absolute numbers move between runs;
//! ratios within one run move much less. Everything runs in one process and one
//! `cargo bench` run, single-threaded, over the same bytes (fixed seed and size), with a
//! fixed simulated `now` (the state machine never reads the clock). Setup (corpus,
//! certificates, TLS configurations, the negotiation before a stream pass) is outside the
//! timed code. The allocator counts only while an untimed count is running; otherwise it
//! pays one relaxed atomic load per allocation (and the negotiation driver two relaxed
//! stores per call into the state machine, to attribute allocations). Each case runs
//! once, checked, before measuring; criterion then takes 20 samples (negotiations) or 10
//! flat samples (stream passes) over 5 s after 1 s of warm-up, and the summary uses its
//! median with the 95% confidence interval, read back from
//! `target/criterion/*/new/estimates.json`. The state machine / framer ratio is also
//! measured paired: 9 rounds, each timing one pass of both back to back in alternating
//! order, reporting the median of the per-round ratios (and their range), which cancels
//! slow drift from other load on the machine. The bench uses the system allocator; the
//! `fedrouter` binary uses mimalloc, which allocates faster.
//!
//! # Running
//!
//! `cargo bench --bench s2s` (under a minute plus the build). `cargo bench --bench s2s
//! -- negotiation` runs a subset; `-- --test` runs each case once as a smoke test (no
//! summary then).

#[path = "corpus.rs"]
mod corpus;
#[path = "report.rs"]
mod report;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::io::{self, Read as _, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::{BatchSize, Criterion, SamplingMode, Throughput};
use fedrouter::dialback::{DialbackResult, DialbackSecret};
use fedrouter::jid::domain_of;
use fedrouter::stanza::StanzaKind;
use fedrouter::stream::{
    AuthMethod, Event, FederationPolicy, PeerCertVerifier, PeerPolicy, S2sConfig, S2sConnection,
    Timeouts, TlsRole,
};
use fedrouter::tls::{self, CertError, CertifiedDomain, ClientAuth, DomainCertResolver};
use fedrouter::xml::{Frame, Framer, Limits};
use fedrouter_testkit::TestCa;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::RootCertStore;

/// The corpus seed, the same as `benches/tokenizer.rs`.
const SEED: u64 = 0x5EED_2026_F00D;
/// Corpus size before filtering; the stanza stream left is asserted to be at least
/// [`MIN_STREAM_BYTES`].
const CORPUS_BYTES: usize = 6 * 1024 * 1024;
const MIN_STREAM_BYTES: usize = 5 * 1024 * 1024;
/// Bytes per `handle_input` / `feed`, a typical socket read.
const CHUNK: usize = 16 * 1024;
/// Rounds of the paired state machine / framer comparison.
const PAIRED_ROUNDS: usize = 9;

/// The originating server (our outbound; the corpus's sender, Prosody in the captures).
const OUT_DOMAIN: &str = "gmail.test";
/// The receiving server (our inbound).
const IN_DOMAIN: &str = "cupdomain.test";

const NEGOTIATION: &str = "s2s negotiation";
const PLAIN_ID: &str = "plain-dialback";
const TLS_ID: &str = "starttls-sasl-external";
const STREAM: &str = "s2s established stream";
const SM_ID: &str = "state machine";
const FRAMER_ID: &str = "bare framer";

// ----- allocation counting ---------------------------------------------------------------

/// [`System`] plus counters, active only while [`COUNTING`] is set.
struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
/// Set while the driver is inside a call into `S2sConnection`.
static IN_SM: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static SM_ALLOCS: AtomicU64 = AtomicU64::new(0);

fn note_alloc() {
    if COUNTING.load(Relaxed) {
        ALLOCS.fetch_add(1, Relaxed);
        if IN_SM.load(Relaxed) {
            SM_ALLOCS.fetch_add(1, Relaxed);
        }
    }
}

// SAFETY: every call is forwarded unchanged to `System`; the counters allocate nothing.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc();
        // SAFETY: as for `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Runs `f`, a call into the state machine, attributing its allocations to it.
fn sm<R>(f: impl FnOnce() -> R) -> R {
    IN_SM.store(true, Relaxed);
    let r = f();
    IN_SM.store(false, Relaxed);
    r
}

/// Allocation calls made while running `f`: (total, inside the state machine).
fn count_allocs<R>(f: impl FnOnce() -> R) -> (R, u64, u64) {
    ALLOCS.store(0, Relaxed);
    SM_ALLOCS.store(0, Relaxed);
    COUNTING.store(true, Relaxed);
    let r = f();
    COUNTING.store(false, Relaxed);
    (r, ALLOCS.load(Relaxed), SM_ALLOCS.load(Relaxed))
}

// ----- the two servers -------------------------------------------------------------------

/// Checks peer certificates against the test CA (what the runtime does over
/// `tls::verify_peer_certificate` with the wall clock).
#[derive(Debug)]
struct TestVerifier {
    roots: RootCertStore,
}

impl PeerCertVerifier for TestVerifier {
    fn verify(
        &self,
        chain: &[CertificateDer<'static>],
        domain: &str,
        at: UnixTime,
    ) -> Result<(), CertError> {
        tls::verify_peer_certificate(chain, domain, &self.roots, at)
    }
}

/// The rustls configurations, built once.
struct TlsConfigs {
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
}

/// Both servers' configurations for one policy.
struct Setup {
    out_cfg: Arc<S2sConfig>,
    in_cfg: Arc<S2sConfig>,
    tls: Option<TlsConfigs>,
}

fn s2s_config(
    domain: &str,
    policy: PeerPolicy,
    with_cert: bool,
    roots: Option<&RootCertStore>,
) -> Arc<S2sConfig> {
    Arc::new(S2sConfig {
        local_domains: vec![domain.to_owned()],
        certificate_domains: if with_cert {
            vec![domain.to_owned()]
        } else {
            vec![]
        },
        policy: FederationPolicy {
            default: policy,
            ..Default::default()
        },
        dialback_secret: DialbackSecret::new(format!("secret of {domain}")),
        stream_id_key: [7; 32],
        cert_verifier: roots
            .map(|r| Arc::new(TestVerifier { roots: r.clone() }) as Arc<dyn PeerCertVerifier>),
        limits: Limits::default(),
        timeouts: Timeouts::default(),
        stream_management: None,
    })
}

impl Setup {
    /// Google-style on both sides: plain TCP, dialback.
    fn plain() -> Setup {
        Setup {
            out_cfg: s2s_config(OUT_DOMAIN, PeerPolicy::google(), false, None),
            in_cfg: s2s_config(IN_DOMAIN, PeerPolicy::google(), false, None),
            tls: None,
        }
    }

    /// Strict on both sides: TLS required, verified certificates, SASL EXTERNAL.
    fn strict() -> Setup {
        tls::install_default_provider();
        let ca = TestCa::new("fedrouter bench CA").expect("test CA");
        let out_cert = ca
            .issue(OUT_DOMAIN)
            .expect("outbound certificate")
            .assemble(CertifiedDomain::new)
            .expect("outbound certificate");
        let in_cert = ca
            .issue(IN_DOMAIN)
            .expect("inbound certificate")
            .assemble(CertifiedDomain::new)
            .expect("inbound certificate");
        let roots = Arc::new(ca.root_store());
        let client = tls::client_config(Some(roots.clone()), true, Some(&out_cert), &[])
            .expect("client config");
        let mut client = (*client).clone();
        client.resumption = rustls::client::Resumption::disabled();
        let mut resolver = DomainCertResolver::new();
        resolver.add(&in_cert).expect("server certificate");
        let server = tls::server_config(Arc::new(resolver), ClientAuth::Request, &[]);
        Setup {
            out_cfg: s2s_config(OUT_DOMAIN, PeerPolicy::strict(), true, Some(&roots)),
            in_cfg: s2s_config(IN_DOMAIN, PeerPolicy::strict(), true, Some(&roots)),
            tls: Some(TlsConfigs {
                client: Arc::new(client),
                server,
            }),
        }
    }
}

// ----- the in-memory driver (tests/common/pair.rs, trimmed for measuring) ----------------

/// Buffers reused across negotiations, so the driver's own allocations stay out of the
/// counts once warm.
struct Scratch {
    to_in: Vec<u8>,
    to_out: Vec<u8>,
    plain: Vec<u8>,
    read: Box<[u8]>,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            to_in: Vec::with_capacity(64 * 1024),
            to_out: Vec::with_capacity(64 * 1024),
            plain: Vec::with_capacity(64 * 1024),
            read: vec![0; 64 * 1024].into_boxed_slice(),
        }
    }
}

/// One end: the state machine and, after STARTTLS, its rustls connection.
struct End {
    conn: S2sConnection,
    tls: Option<rustls::Connection>,
    tls_reported: bool,
    auth: Option<AuthMethod>,
}

impl End {
    fn new(conn: S2sConnection) -> End {
        End {
            conn,
            tls: None,
            tls_reported: false,
            auth: None,
        }
    }

    /// Moves what this end has to send onto `wire`. True if anything moved.
    fn emit(&mut self, wire: &mut Vec<u8>, plain: &mut Vec<u8>) -> bool {
        plain.clear();
        sm(|| self.conn.poll_transmit(plain));
        let before = wire.len();
        match &mut self.tls {
            Some(t) => {
                if !plain.is_empty() {
                    t.writer()
                        .write_all(plain)
                        .expect("rustls buffers plaintext");
                }
                while t.wants_write() {
                    t.write_tls(wire).expect("writing to a Vec");
                }
            }
            None => wire.extend_from_slice(plain),
        }
        wire.len() > before
    }

    /// Consumes the peer's bytes on `wire`. True if there were any.
    fn receive(&mut self, wire: &mut Vec<u8>, buf: &mut [u8], now: Instant) -> bool {
        if wire.is_empty() {
            return false;
        }
        match &mut self.tls {
            Some(t) => {
                let mut rd = &wire[..];
                while !rd.is_empty() {
                    t.read_tls(&mut rd).expect("reading from a slice");
                    if let Err(e) = t.process_new_packets() {
                        panic!("TLS failed: {e}");
                    }
                }
                loop {
                    match t.reader().read(buf) {
                        Ok(0) => break,
                        Ok(n) => sm(|| self.conn.handle_input(&buf[..n], now)),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("TLS read: {e}"),
                    }
                }
            }
            None => sm(|| self.conn.handle_input(wire, now)),
        }
        wire.clear();
        true
    }

    /// Reports a finished TLS handshake, starts TLS on `StartTls`, answers
    /// `VerifyNeeded` with the authoritative server's secret, records `Authenticated`.
    fn handle_events(
        &mut self,
        tls_cfg: Option<&TlsConfigs>,
        authoritative: &DialbackSecret,
        now: Instant,
    ) -> bool {
        let mut progress = false;
        if let Some(t) = &self.tls {
            if !self.tls_reported && !t.is_handshaking() {
                self.tls_reported = true;
                let chain: Vec<CertificateDer<'static>> = t
                    .peer_certificates()
                    .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
                    .unwrap_or_default();
                sm(|| {
                    self.conn
                        .handle_tls_established(chain, now, rustls::pki_types::UnixTime::now())
                });
                progress = true;
            }
        }
        while let Some(ev) = sm(|| self.conn.poll_event()) {
            progress = true;
            match ev {
                Event::StartTls(role) => {
                    let cfg = tls_cfg.expect("STARTTLS without TLS configurations");
                    self.tls = Some(match role {
                        TlsRole::Client { sni } => rustls::Connection::Client(
                            rustls::ClientConnection::new(
                                cfg.client.clone(),
                                tls::server_name(&sni).expect("SNI"),
                            )
                            .expect("client connection"),
                        ),
                        TlsRole::Server => rustls::Connection::Server(
                            rustls::ServerConnection::new(cfg.server.clone())
                                .expect("server connection"),
                        ),
                    });
                }
                Event::VerifyNeeded {
                    local,
                    remote,
                    stream_id,
                    key,
                } => {
                    let verdict = if authoritative.verify(&local, &remote, &stream_id, &key) {
                        DialbackResult::Valid
                    } else {
                        DialbackResult::Invalid
                    };
                    sm(|| {
                        self.conn
                            .handle_dialback_verdict(&local, &remote, verdict, now)
                    });
                }
                Event::Authenticated { method, .. } => self.auth = Some(method),
                Event::Opened { .. } => {}
                other => panic!("unexpected event during negotiation: {other:?}"),
            }
        }
        progress
    }
}

/// Runs our outbound (`OUT_DOMAIN`) against our inbound (`IN_DOMAIN`) until both are
/// authenticated and neither has anything left to do.
fn negotiate(s: &Setup, nonce: u64, now: Instant, x: &mut Scratch) -> (End, End) {
    let mut out = End::new(sm(|| {
        S2sConnection::outbound(s.out_cfg.clone(), OUT_DOMAIN, IN_DOMAIN, false, now)
    }));
    let mut inb = End::new(sm(|| {
        S2sConnection::inbound(s.in_cfg.clone(), nonce, None, now)
    }));
    let tls = s.tls.as_ref();
    let secret = &s.out_cfg.dialback_secret;
    for _ in 0..64 {
        let mut p = false;
        p |= out.emit(&mut x.to_in, &mut x.plain);
        p |= inb.receive(&mut x.to_in, &mut x.read, now);
        p |= inb.emit(&mut x.to_out, &mut x.plain);
        p |= inb.handle_events(tls, secret, now);
        p |= out.receive(&mut x.to_out, &mut x.read, now);
        p |= out.emit(&mut x.to_in, &mut x.plain);
        p |= out.handle_events(tls, secret, now);
        if !p {
            assert!(
                out.auth.is_some() && inb.auth.is_some(),
                "negotiation settled unauthenticated: outbound {:?}, inbound {:?}",
                out.auth,
                inb.auth
            );
            return (out, inb);
        }
    }
    panic!("negotiation did not settle");
}

/// Checks one negotiation's outcome (untimed).
fn check_negotiation(s: &Setup, method: AuthMethod, now: Instant, x: &mut Scratch) {
    let (out, inb) = negotiate(s, 1, now, x);
    assert_eq!(out.auth, Some(method), "outbound");
    assert_eq!(inb.auth, Some(method), "inbound");
    let tls = s.tls.is_some();
    assert_eq!((out.conn.is_tls(), inb.conn.is_tls()), (tls, tls));
    assert!(inb.conn.is_authenticated(IN_DOMAIN, OUT_DOMAIN));
    assert!(out.conn.is_authenticated(OUT_DOMAIN, IN_DOMAIN));
}

// ----- the established stream ------------------------------------------------------------

/// The corpus's stanzas from `gmail.test` users to `cupdomain.test` users (whitespace
/// keepalives before them kept), without the stream header.
struct Stanzas {
    bytes: Vec<u8>,
    count: usize,
    dropped: usize,
}

fn stanza_stream() -> Stanzas {
    let c = corpus::s2s_stream(CORPUS_BYTES, SEED);
    let header = corpus::PROSODY_HEADER.as_bytes();
    assert!(c.bytes.starts_with(header));
    let src = &c.bytes[..];
    let mut f = Framer::new(Limits::default());
    f.feed(src);
    assert!(matches!(f.next_frame(), Ok(Some(Frame::Header(_)))));
    let mut at = header.len();
    let mut out = Vec::with_capacity(src.len());
    let (mut count, mut dropped) = (0, 0);
    loop {
        match f.next_frame() {
            Ok(Some(Frame::Element(el))) => {
                let raw = &el.bytes()[..];
                let ws = at;
                while src[at].is_ascii_whitespace() {
                    at += 1;
                }
                assert!(src[at..].starts_with(raw), "element not found at {at}");
                let end = at + raw.len();
                let keep = StanzaKind::of(&el).is_some()
                    && el.from().map(domain_of) == Some(OUT_DOMAIN)
                    && el.to().map(domain_of) == Some(IN_DOMAIN);
                if keep {
                    out.extend_from_slice(&src[ws..end]);
                    count += 1;
                } else {
                    dropped += 1;
                }
                at = end;
            }
            Ok(None) => break,
            other => panic!("corpus: {other:?}"),
        }
    }
    assert_eq!(count + dropped, c.stanzas, "corpus element count");
    assert!(out.len() >= MIN_STREAM_BYTES, "stanza stream too short");
    Stanzas {
        bytes: out,
        count,
        dropped,
    }
}

/// An inbound stream authenticated for (`IN_DOMAIN`, `OUT_DOMAIN`) by dialback.
fn established_inbound(s: &Setup, now: Instant, x: &mut Scratch) -> S2sConnection {
    let (_out, mut inb) = negotiate(s, 1, now, x);
    assert!(inb.conn.is_authenticated(IN_DOMAIN, OUT_DOMAIN));
    assert!(inb.conn.poll_event().is_none());
    inb.conn
}

/// A framer that has read the stream header.
fn framer_after_header() -> Framer {
    let mut f = Framer::new(Limits::default());
    f.feed(corpus::PROSODY_HEADER.as_bytes());
    assert!(matches!(f.next_frame(), Ok(Some(Frame::Header(_)))));
    assert!(matches!(f.next_frame(), Ok(None)));
    f
}

/// Feeds `input` in [`CHUNK`]s to an established inbound stream, draining events.
/// Returns the number of stanzas; panics on any other event.
fn state_machine_pass(conn: &mut S2sConnection, input: &[u8], now: Instant) -> usize {
    let mut n = 0;
    for chunk in input.chunks(CHUNK) {
        conn.handle_input(chunk, now);
        while let Some(ev) = conn.poll_event() {
            match ev {
                Event::Stanza { kind, element } => {
                    black_box((kind, &element));
                    n += 1;
                }
                other => panic!("unexpected event after stanza {n}: {other:?}"),
            }
        }
    }
    n
}

/// The same bytes and chunks through the bare framer. Returns the number of elements.
fn framer_pass(f: &mut Framer, input: &[u8]) -> usize {
    let mut n = 0;
    for chunk in input.chunks(CHUNK) {
        f.feed(chunk);
        loop {
            match f.next_frame() {
                Ok(Some(Frame::Element(el))) => {
                    black_box(&el);
                    n += 1;
                }
                Ok(None) => break,
                other => panic!("framer after element {n}: {other:?}"),
            }
        }
    }
    n
}

fn check_count(what: &str, got: usize, expected: usize) {
    assert_eq!(got, expected, "{what}: stanzas");
}

/// State machine and framer timed back to back, alternating which goes first.
struct Paired {
    /// Median per-round pass times, ns.
    sm_ns: f64,
    framer_ns: f64,
    /// Per-round throughput ratios (state machine / framer), sorted.
    ratios: Vec<f64>,
}

fn paired_ratio(s: &Setup, st: &Stanzas, now: Instant, x: &mut Scratch) -> Paired {
    let (mut sm_ns, mut fr_ns, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..PAIRED_ROUNDS {
        let mut conn = established_inbound(s, now, x);
        let mut f = framer_after_header();
        let mut time_sm = || {
            let t = Instant::now();
            let n = state_machine_pass(&mut conn, &st.bytes, now);
            let d = t.elapsed();
            check_count(SM_ID, n, st.count);
            d.as_nanos() as f64
        };
        let mut time_fr = || {
            let t = Instant::now();
            let n = framer_pass(&mut f, &st.bytes);
            let d = t.elapsed();
            check_count(FRAMER_ID, n, st.count);
            d.as_nanos() as f64
        };
        let (a, b) = if round % 2 == 0 {
            let a = time_sm();
            (a, time_fr())
        } else {
            let b = time_fr();
            (time_sm(), b)
        };
        sm_ns.push(a);
        fr_ns.push(b);
        ratios.push(b / a);
    }
    ratios.sort_by(f64::total_cmp);
    Paired {
        sm_ns: median(&mut sm_ns),
        framer_ns: median(&mut fr_ns),
        ratios,
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

// ----- main ------------------------------------------------------------------------------

fn main() {
    let started = SystemTime::now();
    let now = Instant::now();
    let plain = Setup::plain();
    let strict = Setup::strict();
    let mut x = Scratch::new();

    // Each negotiation once, checked; then allocations, counted after a warm-up run.
    check_negotiation(&plain, AuthMethod::Dialback, now, &mut x);
    check_negotiation(&strict, AuthMethod::SaslExternal, now, &mut x);
    for (what, setup) in [
        ("plain+dialback", &plain),
        ("starttls+sasl-external", &strict),
    ] {
        drop(negotiate(setup, 2, now, &mut x));
        let (ends, total, in_sm) = count_allocs(|| negotiate(setup, 3, now, &mut x));
        drop(ends);
        eprintln!(
            "allocations per negotiation ({what}): {total} ({in_sm} in S2sConnection calls, \
             {} in rustls and the driver)",
            total - in_sm
        );
    }

    // The established stream, checked once, with allocations per stanza.
    let st = stanza_stream();
    eprintln!(
        "stanza stream: {} bytes, {} stanzas (mean {} bytes), {} corpus elements dropped \
         (groupchat from conference.{OUT_DOMAIN}, dialback)",
        st.bytes.len(),
        st.count,
        st.bytes.len() / st.count,
        st.dropped
    );
    {
        let mut conn = established_inbound(&plain, now, &mut x);
        let (n, total, _) = count_allocs(|| state_machine_pass(&mut conn, &st.bytes, now));
        check_count(SM_ID, n, st.count);
        assert_eq!(conn.pending_transmit(), 0, "the stream answered something");
        assert!(!conn.is_closed());
        let mut f = framer_after_header();
        let (n, fr_total, _) = count_allocs(|| framer_pass(&mut f, &st.bytes));
        check_count(FRAMER_ID, n, st.count);
        eprintln!(
            "allocations per stream pass: state machine {total} ({:.4}/stanza), bare framer \
             {fr_total} ({:.4}/stanza)",
            total as f64 / st.count as f64,
            fr_total as f64 / st.count as f64
        );
    }
    eprintln!(
        "sizes: Event {} B, S2sConnection {} B, Framer {} B",
        size_of::<Event>(),
        size_of::<S2sConnection>(),
        size_of::<Framer>()
    );

    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .without_plots()
        .configure_from_args();

    {
        let mut g = c.benchmark_group(NEGOTIATION);
        g.sample_size(20);
        g.throughput(Throughput::Elements(1));
        for (id, setup) in [(PLAIN_ID, &plain), (TLS_ID, &strict)] {
            let mut nonce = 0u64;
            g.bench_function(id, |b| {
                b.iter(|| {
                    nonce += 1;
                    negotiate(setup, nonce, now, &mut x)
                })
            });
        }
        g.finish();
    }

    {
        let mut g = c.benchmark_group(STREAM);
        g.sampling_mode(SamplingMode::Flat);
        g.throughput(Throughput::Elements(st.count as u64));
        let input = &st.bytes[..];
        let count = st.count;
        g.bench_function(SM_ID, |b| {
            b.iter_batched(
                || established_inbound(&plain, now, &mut x),
                |mut conn| {
                    check_count(
                        SM_ID,
                        state_machine_pass(&mut conn, black_box(input), now),
                        count,
                    );
                    conn
                },
                BatchSize::PerIteration,
            )
        });
        g.bench_function(FRAMER_ID, |b| {
            b.iter_batched(
                framer_after_header,
                |mut f| {
                    check_count(FRAMER_ID, framer_pass(&mut f, black_box(input)), count);
                    f
                },
                BatchSize::PerIteration,
            )
        });
        g.finish();
    }

    c.final_summary();
    summary(started, &st, paired_ratio(&plain, &st, now, &mut x));
}

// ----- summary ---------------------------------------------------------------------------

fn summary(started: SystemTime, st: &Stanzas, paired: Paired) {
    let ci = |(ns, lo, hi): (f64, f64, f64)| (hi - lo) / 2.0 / ns * 100.0;
    println!();
    for id in [PLAIN_ID, TLS_ID] {
        if let Some(m) = report::median_ns(&[NEGOTIATION, STREAM], NEGOTIATION, id, started) {
            println!(
                "negotiation {id}: {:.0} negotiations/s ({:.1} µs each, ±{:.1}%)",
                1e9 / m.0,
                m.0 / 1e3,
                ci(m)
            );
        }
    }
    let per_s = |ns: f64| st.count as f64 / ns * 1e9;
    let mb_s = |ns: f64| st.bytes.len() as f64 / ns * 1e3;
    let sm = report::median_ns(&[NEGOTIATION, STREAM], STREAM, SM_ID, started);
    let fr = report::median_ns(&[NEGOTIATION, STREAM], STREAM, FRAMER_ID, started);
    for (id, m) in [(SM_ID, sm), (FRAMER_ID, fr)] {
        if let Some(m) = m {
            println!(
                "established stream {id}: {:.0} stanzas/s, {:.1} MB/s (±{:.1}%)",
                per_s(m.0),
                mb_s(m.0),
                ci(m)
            );
        }
    }
    if let (Some(sm), Some(fr)) = (sm, fr) {
        println!(
            "state machine / bare framer (criterion medians): {:.3}",
            fr.0 / sm.0
        );
    }
    let r = &paired.ratios;
    println!(
        "state machine / bare framer (paired, {PAIRED_ROUNDS} rounds): median {:.3}, range \
         {:.3}..{:.3} (median passes {:.0} vs {:.0} stanzas/s)",
        r[r.len() / 2],
        r[0],
        r[r.len() - 1],
        per_s(paired.sm_ns),
        per_s(paired.framer_ns)
    );
}
