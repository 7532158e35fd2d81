//! Stream tokenizer throughput: our [`Framer`] against quick-xml and rxml on one corpus.
//!
//! # What is measured
//!
//! The input is [`corpus::s2s_stream`]: 10 MiB of one never-ending S2S stream as a
//! server reads it after TLS (Prosody's stream header, then presence with caps, delay,
//! status text with entities and non-ASCII, subscriptions, chat and groupchat messages
//! of 20 to 2000 bytes, PEP, disco/ping/roster IQs, dialback, whitespace keepalives).
//!
//! - `s2s stream/quick-xml raw events`: `quick_xml::Reader` over the whole buffer with
//!   its default configuration, counting Start/Empty events until Eof. It checks little
//!   and parses no attributes: the speed of light for an XML scanner in Rust.
//! - `s2s stream/rxml`: rxml's `Parser` (the parser of the Rust XMPP ecosystem,
//!   tokio-xmpp) fed 16 KiB chunks, counting StartElement events. It resolves namespaces
//!   and builds owned attribute maps and text strings per event.
//! - `s2s stream/framer 16KiB`, `framer 100B`: our [`Framer`] fed in chunks of that size,
//!   calling `next_frame` after each feed until `Ok(None)` and reading each element's
//!   routing view (name, namespace, to, from, type, id) through `black_box`. This is the
//!   whole per-stanza cost of the router's read path: framing, well-formedness, RFC 6120
//!   §11 restrictions, namespaces, limits.
//! - `s2s stream/framer 1B`: the same, one byte per feed, over the first 1 MiB of the same
//!   stream (the 1 MiB corpus is a prefix of the 10 MiB one), to keep the run short.
//!   Throughput is per byte, so its ratio to 16 KiB is the per-byte cost of tiny reads.
//! - `slowloris/…`: a stream header and one `<message/>` with a 200 KiB `id` value, fed
//!   one byte at a time and in 16 KiB chunks; and a 50 KiB one a byte at a time. Equal
//!   nanoseconds per byte at 50 KiB and 200 KiB show that trickled input stays linear (a
//!   rescan per feed would make the 200 KiB case 4× dearer per byte).
//!
//! Every iteration checks its result: each parser must report exactly the number of
//! start tags the generator wrote, the framer exactly the number of top-level elements,
//! or the benchmark panics. A pass over every case runs once before measuring.
//!
//! # Noise
//!
//! The machine is small and shared, so absolute numbers move between runs; the ratios
//! move much less, because every case runs in the same process, in the same `cargo bench`
//! run, over the same bytes (fixed seed, pinned sizes). Compare ratios, not MB/s across
//! machines. Each case takes 10 samples over 5 s after 1 s of warm-up (flat sampling for
//! the 10 MiB cases); the summary printed at the end uses criterion's median (criterion's
//! own lines show the mean or slope) and its 95% confidence interval, read back from
//! `target/criterion/*/new/estimates.json`.
//!
//! # Running
//!
//! `cargo bench --bench tokenizer` (about a minute on two cores, plus the build).
//! `cargo bench --bench tokenizer -- framer` runs a subset; `-- --test` runs each case
//! once as a smoke test (no summary table then).

mod corpus;
#[path = "report.rs"]
mod report;

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, SamplingMode, Throughput};
use fedrouter::xml::{Frame, Framer, Limits};
use quick_xml::events::Event as QxEvent;
use rxml::error::EndOrError;
use rxml::Parse as _;

/// The corpus seed. Changing it changes the bytes, so results stop being comparable.
const SEED: u64 = 0x5EED_2026_F00D;
/// The main corpus: at least 10 MiB (it ends on an element boundary).
const STREAM_BYTES: usize = 10 * 1024 * 1024;
/// The corpus for byte-at-a-time feeding: the first 1 MiB of the same stream.
const SMALL_BYTES: usize = 1024 * 1024;
/// The slowloris attribute value, and a quarter of it to check linearity.
const SLOWLORIS_VALUE: usize = 200 * 1024;
const SLOWLORIS_SMALL_VALUE: usize = 50 * 1024;

const STREAM_GROUP: &str = "s2s stream";
const SLOWLORIS_GROUP: &str = "slowloris";

/// quick-xml with its default configuration: counts Start and Empty events until Eof.
fn quick_xml_events(input: &[u8]) -> usize {
    let mut reader = quick_xml::Reader::from_reader(input);
    let mut n = 0;
    loop {
        match reader.read_event() {
            Ok(QxEvent::Start(e)) | Ok(QxEvent::Empty(e)) => {
                black_box(&e);
                n += 1;
            }
            Ok(QxEvent::Eof) => return n,
            Ok(other) => {
                black_box(&other);
            }
            Err(e) => panic!("quick-xml: {e} at byte {}", reader.error_position()),
        }
    }
}

/// rxml's namespace-aware push parser fed `chunk`-byte pieces: counts StartElement
/// events. The stream never ends, so the last piece must leave it wanting more.
fn rxml_events(input: &[u8], chunk: usize) -> usize {
    let mut parser = rxml::Parser::new();
    let mut n = 0;
    for piece in input.chunks(chunk) {
        let mut piece = piece;
        let r = parser.parse_all(&mut piece, false, |ev| {
            if let rxml::Event::StartElement(_, name, attrs) = &ev {
                black_box((name, attrs));
                n += 1;
            }
            black_box(ev);
        });
        match r {
            Err(EndOrError::NeedMoreData) => {}
            Err(EndOrError::Error(e)) => panic!("rxml: {e}"),
            Ok(()) => panic!("rxml: the stream ended"),
        }
    }
    n
}

/// Our framer fed `chunk`-byte pieces, draining frames after each feed and reading each
/// element's routing view. Returns the number of elements; panics on any error or if the
/// stream header is not seen exactly once.
fn framer_elements(input: &[u8], chunk: usize) -> usize {
    let mut framer = Framer::new(Limits::default());
    let (mut headers, mut elements) = (0, 0);
    for piece in input.chunks(chunk) {
        framer.feed(piece);
        loop {
            match framer.next_frame() {
                Ok(Some(Frame::Element(e))) => {
                    black_box((e.name(), e.namespace(), e.to(), e.from(), e.type_(), e.id()));
                    elements += 1;
                }
                Ok(Some(Frame::Header(h))) => {
                    black_box(h);
                    headers += 1;
                }
                Ok(Some(Frame::Close)) => panic!("framer: the corpus never closes its stream"),
                Ok(None) => break,
                Err(e) => panic!("framer: {e:?} after element {elements}"),
            }
        }
    }
    assert_eq!(headers, 1, "framer: stream headers");
    elements
}

fn check(what: &str, got: usize, expected: usize) {
    assert_eq!(
        got, expected,
        "{what}: got {got} elements, the corpus has {expected}"
    );
}

/// One measured case, for the summary.
struct Case {
    group: &'static str,
    id: &'static str,
    bytes: usize,
    stanzas: usize,
}

fn main() {
    let started = SystemTime::now();
    let big = corpus::s2s_stream(STREAM_BYTES, SEED);
    let small = corpus::s2s_stream(SMALL_BYTES, SEED);
    assert!(
        big.bytes.starts_with(&small.bytes),
        "the small corpus must be a prefix"
    );
    let slow = corpus::big_attribute_element(SLOWLORIS_VALUE);
    let slow_small = corpus::big_attribute_element(SLOWLORIS_SMALL_VALUE);
    println!(
        "corpus: {} bytes, {} top-level elements (mean {} bytes), {} start tags; \
         1B-feed slice: {} bytes, {} elements; slowloris elements: {} and {} bytes",
        big.bytes.len(),
        big.stanzas,
        big.bytes.len() / big.stanzas,
        big.elements,
        small.bytes.len(),
        small.stanzas,
        slow.len(),
        slow_small.len(),
    );

    // Every case once, before measuring: a wrong count fails here, not mid-run.
    check("quick-xml", quick_xml_events(&big.bytes), big.elements);
    check("rxml", rxml_events(&big.bytes, 16 * 1024), big.elements);
    check(
        "framer 16KiB",
        framer_elements(&big.bytes, 16 * 1024),
        big.stanzas,
    );
    check("framer 100B", framer_elements(&big.bytes, 100), big.stanzas);
    check("framer 1B", framer_elements(&small.bytes, 1), small.stanzas);
    check("slowloris 1B", framer_elements(&slow, 1), 1);
    check("slowloris 16KiB", framer_elements(&slow, 16 * 1024), 1);
    check("slowloris 50KiB 1B", framer_elements(&slow_small, 1), 1);

    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .without_plots()
        .configure_from_args();
    let mut cases = Vec::new();

    {
        let mut g = c.benchmark_group(STREAM_GROUP);
        g.sampling_mode(SamplingMode::Flat);
        let input = &big.bytes[..];
        let (elements, stanzas) = (big.elements, big.stanzas);
        g.throughput(Throughput::BytesDecimal(input.len() as u64));
        g.bench_function("quick-xml raw events", |b| {
            b.iter(|| check("quick-xml", quick_xml_events(black_box(input)), elements))
        });
        g.bench_function("rxml", |b| {
            b.iter(|| check("rxml", rxml_events(black_box(input), 16 * 1024), elements))
        });
        g.bench_function("framer 16KiB", |b| {
            b.iter(|| {
                check(
                    "framer",
                    framer_elements(black_box(input), 16 * 1024),
                    stanzas,
                )
            })
        });
        g.bench_function("framer 100B", |b| {
            b.iter(|| check("framer", framer_elements(black_box(input), 100), stanzas))
        });
        for id in [
            "quick-xml raw events",
            "rxml",
            "framer 16KiB",
            "framer 100B",
        ] {
            cases.push(Case {
                group: STREAM_GROUP,
                id,
                bytes: input.len(),
                stanzas,
            });
        }
        let input = &small.bytes[..];
        let stanzas = small.stanzas;
        g.throughput(Throughput::BytesDecimal(input.len() as u64));
        g.bench_function("framer 1B", |b| {
            b.iter(|| check("framer", framer_elements(black_box(input), 1), stanzas))
        });
        cases.push(Case {
            group: STREAM_GROUP,
            id: "framer 1B",
            bytes: input.len(),
            stanzas,
        });
        g.finish();
    }

    {
        let mut g = c.benchmark_group(SLOWLORIS_GROUP);
        for (id, input, chunk) in [
            ("200KiB attribute, 1B chunks", &slow, 1),
            ("200KiB attribute, 16KiB chunks", &slow, 16 * 1024),
            ("50KiB attribute, 1B chunks", &slow_small, 1),
        ] {
            g.throughput(Throughput::BytesDecimal(input.len() as u64));
            g.bench_function(id, |b| {
                b.iter(|| check("slowloris", framer_elements(black_box(input), chunk), 1))
            });
            cases.push(Case {
                group: SLOWLORIS_GROUP,
                id,
                bytes: input.len(),
                stanzas: 1,
            });
        }
        g.finish();
    }

    c.final_summary();
    summary(&cases, started);
}

/// Prints throughput per case and the ratios that matter, from criterion's estimates.
fn summary(cases: &[Case], started: SystemTime) {
    struct Row<'a> {
        case: &'a Case,
        ns: f64,
        lo: f64,
        hi: f64,
    }
    let rows: Vec<Row> = cases
        .iter()
        .filter_map(|case| {
            let (ns, lo, hi) = report::median_ns(
                &[STREAM_GROUP, SLOWLORIS_GROUP],
                case.group,
                case.id,
                started,
            )?;
            Some(Row { case, ns, lo, hi })
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    let mb_s = |r: &Row| r.case.bytes as f64 / r.ns * 1e3;
    let ns_byte = |r: &Row| r.ns / r.case.bytes as f64;
    println!();
    println!("| case | input bytes | median / iter | MB/s | ns/byte | elements/s |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {}/{} | {} | {:.3} ms (±{:.1}%) | {:.1} | {:.2} | {:.0} |",
            r.case.group,
            r.case.id,
            r.case.bytes,
            r.ns / 1e6,
            (r.hi - r.lo) / 2.0 / r.ns * 100.0,
            mb_s(r),
            ns_byte(r),
            r.case.stanzas as f64 / r.ns * 1e9,
        );
    }
    let find = |group: &str, id: &str| {
        rows.iter()
            .find(|r| r.case.group == group && r.case.id == id)
    };
    let ratio = |what: &str, a: Option<&Row>, b: Option<&Row>, f: &dyn Fn(&Row) -> f64| {
        if let (Some(a), Some(b)) = (a, b) {
            println!("{what}: {:.2}", f(a) / f(b));
        }
    };
    println!();
    let s = |id| find(STREAM_GROUP, id);
    let l = |id| find(SLOWLORIS_GROUP, id);
    ratio(
        "throughput framer 16KiB / quick-xml",
        s("framer 16KiB"),
        s("quick-xml raw events"),
        &mb_s,
    );
    ratio(
        "throughput framer 16KiB / rxml",
        s("framer 16KiB"),
        s("rxml"),
        &mb_s,
    );
    ratio(
        "ns/byte framer 100B / framer 16KiB",
        s("framer 100B"),
        s("framer 16KiB"),
        &ns_byte,
    );
    ratio(
        "ns/byte framer 1B / framer 16KiB",
        s("framer 1B"),
        s("framer 16KiB"),
        &ns_byte,
    );
    ratio(
        "ns/byte slowloris 200KiB 1B / 16KiB chunks",
        l("200KiB attribute, 1B chunks"),
        l("200KiB attribute, 16KiB chunks"),
        &ns_byte,
    );
    ratio(
        "ns/byte slowloris 1B chunks 200KiB / 50KiB (linear: ~1, quadratic: ~4)",
        l("200KiB attribute, 1B chunks"),
        l("50KiB attribute, 1B chunks"),
        &ns_byte,
    );
}
