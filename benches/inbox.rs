//! Cross-shard inbox throughput and latency (`fedrouter::router::inbox`, DESIGN.md
//! "Ownership"): how many stanzas one shard can hand to another per second, and how long
//! a stanza waits between `push` on shard 0 and `drain` on shard 1.
//!
//! # Set-up
//!
//! Two threads, each pinned with `core_affinity` (cores 0 and 1; both on the one core if
//! there is only one, which the output says), each running a `tokio_uring::start`
//! runtime, as the server's shards do, connected by a two-shard [`mesh`]. The message is
//! what a routed stanza is: a `bytes::Bytes` of a ~200-byte presence stanza (cloned per
//! message: a reference-count increment, no copy) and the `Instant` of its `push`.
//!
//! - Shard 0 (producer) pushes up to `max_batch` stanzas per loop turn to shard 1 and
//!   flushes once per turn. When a push is refused (back-pressure) it awaits
//!   `wait_space`, exactly as the server does; a refused stanza keeps its first time
//!   stamp, so back-pressure time counts as latency.
//! - Shard 1 (consumer) drains up to 64 batches per turn, takes one `Instant::now()` per
//!   drain and records `now - pushed_at` of every stanza, in nanoseconds, in an HDR
//!   histogram (3 significant digits). When its inbox is empty it awaits `wait` (sleeps
//!   until the empty → non-empty wake-up), except in the `busy-poll` and `spin`
//!   scenarios (below), which show what the cross-thread wake-up costs.
//!
//! # Scenarios
//!
//! - `saturated`: shard 0 pushes as fast as it can, 5 M stanzas (capped at 30 s). The
//!   rate is the inbox's throughput; the latency there is mostly queueing (a full channel
//!   holds `capacity_batches * max_batch` stanzas).
//! - `paced 1M/s`: shard 0 pushes on a schedule of 1 M stanzas/s (each turn it pushes the
//!   stanzas that are due, at most `max_batch`, and `yield_now`s when none is), 3 M
//!   stanzas. The target of the issue: p99 < 20 µs while moving ≥ 1 M stanzas/s.
//! - `paced 1M/s, busy-poll`: the same with a consumer that never sleeps.
//! - `paced 1M/s, spin 50µs`: the same with a consumer that `yield_now`s until its inbox
//!   has been empty for 50 µs, then sleeps in `wait` (a policy a shard loop can adopt:
//!   no wake-up cost under load, asleep when idle); and `paced 100k/s, spin 50µs`, where
//!   it does sleep between stanzas now and then.
//! - `adaptive`: the server's shard-loop policy (`fedrouter::runtime::idle::IdleSpin`):
//!   after a drain with stanzas it polls for 4 × the measured mean idle gap, at most
//!   50 µs, and not at all when that mean is above 50 µs; at 1M/s, 100k/s and 5k/s, with
//!   `spin 50µs` and `sleeps` at 5k/s beside it. `cons.cpu µs/stz` (the consumer
//!   thread's user + system time per stanza, `getrusage(RUSAGE_THREAD)`) shows what a
//!   spin costs where it does not pay.
//!
//! Each prints stanzas/s, the p50/p90/p99/p99.9/max latency in µs, how often the producer
//! was back-pressured and the consumer slept, and the heap allocations per stanza (a
//! counting global allocator around `System`; counted on both threads for the whole run),
//! and `preempted`: the involuntary context switches of the producer/consumer thread
//! during the run (`getrusage(RUSAGE_THREAD)`), i.e. how often something else took the
//! shard's core; a tail in milliseconds with preemptions is the machine, not the inbox.
//! The percentile distributions (HdrHistogram's `.hgrm` text format, values in µs) go to
//! `target/inbox-latency.hgrm` (saturated), `target/inbox-latency-paced.hgrm`,
//! `target/inbox-latency-paced-busy.hgrm` and `target/inbox-latency-paced-spin.hgrm`.
//!
//! # Noise
//!
//! Threads are pinned, each scenario runs once after an unreported 0.5 s warm-up, and
//! nothing else runs in this process; but the machine is small (2 cores) and shared, so
//! the main thread, the kernel and other processes compete with the two shard threads,
//! and the tail (p99.9, max) moves between runs. Run it on an idle machine to compare.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fedrouter::router::inbox::{mesh, ShardInbox};
use fedrouter::runtime::idle::IdleSpin;
use hdrhistogram::Histogram;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A routed stanza: its bytes (shared) and when shard 0 pushed it. An empty `Bytes` ends
/// the run.
type Msg = (Bytes, Instant);

/// Channel capacity, in batches, of each shard pair.
const CAPACITY_BATCHES: usize = 32;
/// Most stanzas in one batch (and pushed per producer turn).
const MAX_BATCH: usize = 64;
/// Batches the consumer drains per turn.
const DRAIN_BATCHES: usize = 64;
/// Wall-clock cap of one scenario.
const TIME_CAP: Duration = Duration::from_secs(30);

/// A presence stanza of about 200 bytes, as it crosses shards.
fn stanza() -> Bytes {
    let s = "<presence from='jdoe1@gmail.com/Smartphone-4fa1c2' to='cupuser1@cupdomain.com' \
             id='p-000123'><show>away</show><status>In a meeting until 15:00</status>\
             <priority>5</priority><c xmlns='http://jabber.org/protocol/caps'/></presence>";
    Bytes::from(s.as_bytes().to_vec())
}

#[derive(Clone, Copy)]
enum Consumer {
    /// Sleeps in `wait` when its inbox is empty (the server's behaviour).
    Sleeps,
    /// `yield_now`s when its inbox is empty: never sleeps.
    BusyPolls,
    /// `yield_now`s while its inbox has been empty for less than this, then sleeps in
    /// `wait`: busy under load, asleep when idle.
    SpinsThenSleeps(Duration),
    /// The server's shard loop policy ([`IdleSpin`]): after a drain with stanzas, polls for
    /// a multiple of the measured idle gap (at most 50 µs; not at all when stanzas are
    /// sparse), then sleeps in `wait`.
    Adaptive,
}

struct Scenario {
    name: &'static str,
    stanzas: u64,
    /// Stanzas per second, or `None` for as fast as possible.
    rate: Option<f64>,
    consumer: Consumer,
    hgrm: Option<&'static str>,
}

struct Outcome {
    received: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
    allocs: u64,
    producer_blocked: u64,
    consumer_sleeps: u64,
    /// Involuntary context switches of the (producer, consumer) thread during the run:
    /// how often another process or the kernel took its core.
    preempted: (u64, u64),
    /// CPU time (user + system) of the consumer thread during the run.
    consumer_cpu: Duration,
}

/// CPU time (user + system) of the calling thread so far.
fn thread_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Involuntary context switches of the calling thread so far.
fn involuntary_switches() -> u64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } == 0 {
        ru.ru_nivcsw as u64
    } else {
        0
    }
}

fn pin(core: Option<core_affinity::CoreId>) {
    if let Some(c) = core {
        core_affinity::set_for_current(c);
    }
}

async fn produce(mut ib: ShardInbox<Msg>, sc: &Scenario, start: Instant) -> u64 {
    let payload = stanza();
    let deadline = start + TIME_CAP;
    let mut sent = 0u64;
    let mut held: Option<Msg> = None;
    let mut blocked = 0u64;
    let mut turn = 0u32;
    loop {
        let now = Instant::now();
        if held.is_none() && (sent == sc.stanzas || now >= deadline) {
            break;
        }
        let due = match sc.rate {
            None => MAX_BATCH as u64,
            Some(r) => {
                let target = ((now - start).as_secs_f64() * r) as u64;
                target
                    .min(sc.stanzas)
                    .saturating_sub(sent)
                    .min(MAX_BATCH as u64)
            }
        };
        let mut refused = false;
        for _ in 0..due {
            if held.is_none() && sent == sc.stanzas {
                break;
            }
            let msg = held
                .take()
                .unwrap_or_else(|| (payload.clone(), Instant::now()));
            match ib.push(1, msg) {
                Ok(()) => sent += 1,
                Err(m) => {
                    held = Some(m);
                    refused = true;
                    break;
                }
            }
        }
        ib.flush();
        if refused {
            blocked += 1;
            ib.wait_space().await;
        } else if due == 0 {
            tokio::task::yield_now().await;
        } else {
            // Let the runtime run its driver now and then, as a shard's loop does.
            turn = turn.wrapping_add(1);
            if turn % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
    }
    // End marker; wait for room as long as needed (the consumer keeps draining).
    let mut end = (Bytes::new(), Instant::now());
    loop {
        match ib.push(1, end) {
            Ok(()) => break,
            Err(m) => {
                end = m;
                ib.flush();
                ib.wait_space().await;
            }
        }
    }
    while ib.flush() > 0 {
        ib.wait_space().await;
    }
    blocked
}

async fn consume(mut ib: ShardInbox<Msg>, mode: Consumer) -> (u64, Histogram<u64>, u64, Instant) {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let mut out: Vec<Msg> = Vec::with_capacity(DRAIN_BATCHES * MAX_BATCH);
    let (mut received, mut sleeps) = (0u64, 0u64);
    let mut idle_since: Option<Instant> = None;
    let mut policy = IdleSpin::new();
    let mut idle_open = false;
    loop {
        if ib.drain(&mut out, DRAIN_BATCHES) == 0 {
            match mode {
                Consumer::Sleeps => {
                    sleeps += 1;
                    ib.wait().await;
                }
                Consumer::BusyPolls => tokio::task::yield_now().await,
                Consumer::SpinsThenSleeps(spin) => {
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if since.elapsed() < spin {
                        tokio::task::yield_now().await;
                    } else {
                        sleeps += 1;
                        idle_since = None;
                        ib.wait().await;
                    }
                }
                Consumer::Adaptive => {
                    // As the shard loop does after a turn with traffic.
                    if !idle_open {
                        idle_open = true;
                        let now = Instant::now();
                        let until = now + policy.went_idle(now);
                        while Instant::now() < until && !ib.has_waiting() {
                            tokio::task::yield_now().await;
                        }
                    }
                    if !ib.has_waiting() {
                        sleeps += 1;
                        ib.wait().await;
                    }
                }
            }
            continue;
        }
        idle_since = None;
        let now = Instant::now();
        if idle_open {
            idle_open = false;
            policy.arrived(now);
        }
        for (bytes, at) in out.drain(..) {
            if bytes.is_empty() {
                return (received, hist, sleeps, now);
            }
            std::hint::black_box(&bytes);
            hist.saturating_record((now - at).as_nanos() as u64);
            received += 1;
        }
    }
}

fn run(sc: &Scenario, cores: &[Option<core_affinity::CoreId>; 2]) -> Outcome {
    let mut m = mesh::<Msg>(2, CAPACITY_BATCHES, MAX_BATCH).into_iter();
    let (a, b) = (m.next().unwrap(), m.next().unwrap());
    let barrier = Arc::new(Barrier::new(3));
    let consumer_core = cores[1];
    let mode = sc.consumer;
    let b_barrier = Arc::clone(&barrier);
    let consumer = std::thread::spawn(move || {
        pin(consumer_core);
        tokio_uring::start(async move {
            b_barrier.wait();
            let before = involuntary_switches();
            let cpu_before = thread_cpu();
            let r = consume(b, mode).await;
            (
                r,
                involuntary_switches() - before,
                thread_cpu().saturating_sub(cpu_before),
            )
        })
    });
    let producer_core = cores[0];
    let a_barrier = Arc::clone(&barrier);
    let sc_copy = Scenario {
        name: sc.name,
        stanzas: sc.stanzas,
        rate: sc.rate,
        consumer: sc.consumer,
        hgrm: None,
    };
    let producer = std::thread::spawn(move || {
        pin(producer_core);
        tokio_uring::start(async move {
            a_barrier.wait();
            let start = Instant::now();
            let before = involuntary_switches();
            let r = produce(a, &sc_copy, start).await;
            (r, involuntary_switches() - before)
        })
    });
    barrier.wait();
    let allocs_before = ALLOCS.load(Ordering::Relaxed);
    let start = Instant::now();
    let (producer_blocked, producer_preempted) = producer.join().expect("producer");
    let ((received, hist, consumer_sleeps, last), consumer_preempted, consumer_cpu) =
        consumer.join().expect("consumer");
    let allocs = ALLOCS.load(Ordering::Relaxed) - allocs_before;
    Outcome {
        received,
        elapsed: last.saturating_duration_since(start),
        hist,
        allocs,
        producer_blocked,
        consumer_sleeps,
        preempted: (producer_preempted, consumer_preempted),
        consumer_cpu,
    }
}

/// Writes `hist` (nanoseconds) in HdrHistogram's `.hgrm` percentile distribution format
/// (`outputPercentileDistribution`, 5 ticks per half distance), values in microseconds.
/// hdrhistogram 7 has no writer for it.
fn hgrm(hist: &Histogram<u64>) -> String {
    const SCALE: f64 = 1000.0; // ns per µs
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    for v in hist.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let value = v.value_iterated_to() as f64 / SCALE;
        let q = v.quantile_iterated_to();
        if q < 1.0 {
            let _ = writeln!(
                s,
                "{value:12.3} {q:2.12} {total:10} {:14.2}",
                1.0 / (1.0 - q)
            );
        } else {
            let _ = writeln!(s, "{value:12.3} {q:2.12} {total:10}");
        }
    }
    let _ = writeln!(
        s,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        hist.mean() / SCALE,
        hist.stdev() / SCALE
    );
    let _ = writeln!(
        s,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        hist.max() as f64 / SCALE,
        hist.len()
    );
    let _ = writeln!(
        s,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        hist.buckets(),
        sub_buckets(hist.sigfig())
    );
    s
}

/// HdrHistogram's sub-bucket count for `sigfig` significant digits (2048 for 3), as the
/// `.hgrm` footer gives it: the smallest power of two ≥ 2·10^sigfig.
fn sub_buckets(sigfig: u8) -> u64 {
    (2 * 10u64.pow(u32::from(sigfig))).next_power_of_two()
}

/// The load average, to tell how busy the machine was around a run.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| {
            let f: Vec<&str> = l.split_whitespace().take(3).collect();
            (f.len() == 3).then(|| f.join(" "))
        })
        .unwrap_or_else(|| "unknown".to_string())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn main() {
    let ids = core_affinity::get_core_ids().unwrap_or_default();
    let cores = match ids.as_slice() {
        [] => [None, None],
        [only] => [Some(*only), Some(*only)],
        [first, second, ..] => [Some(*first), Some(*second)],
    };
    let placement = match ids.len() {
        0 => "not pinned (core list unavailable)".to_string(),
        1 => format!("both pinned to core {} (only one core)", ids[0].id),
        _ => format!(
            "producer on core {}, consumer on core {}",
            ids[0].id, ids[1].id
        ),
    };
    println!(
        "inbox bench: 2 shards (tokio-uring runtimes), {placement}; channel {CAPACITY_BATCHES} \
         batches x max_batch {MAX_BATCH}; stanza {} bytes",
        stanza().len()
    );

    let load_before = loadavg();
    // Warm-up, unreported: page faults, first buffers, CPU frequency.
    run(
        &Scenario {
            name: "warm-up",
            stanzas: 500_000,
            rate: Some(1_000_000.0),
            consumer: Consumer::Sleeps,
            hgrm: None,
        },
        &cores,
    );

    let scenarios = [
        Scenario {
            name: "saturated",
            stanzas: 5_000_000,
            rate: None,
            consumer: Consumer::Sleeps,
            hgrm: Some("inbox-latency.hgrm"),
        },
        Scenario {
            name: "paced 1M/s",
            stanzas: 3_000_000,
            rate: Some(1_000_000.0),
            consumer: Consumer::Sleeps,
            hgrm: Some("inbox-latency-paced.hgrm"),
        },
        Scenario {
            name: "paced 1M/s, busy-poll",
            stanzas: 3_000_000,
            rate: Some(1_000_000.0),
            consumer: Consumer::BusyPolls,
            hgrm: Some("inbox-latency-paced-busy.hgrm"),
        },
        Scenario {
            name: "paced 1M/s, spin 50µs",
            stanzas: 3_000_000,
            rate: Some(1_000_000.0),
            consumer: Consumer::SpinsThenSleeps(Duration::from_micros(50)),
            hgrm: Some("inbox-latency-paced-spin.hgrm"),
        },
        Scenario {
            name: "paced 1M/s, adaptive",
            stanzas: 3_000_000,
            rate: Some(1_000_000.0),
            consumer: Consumer::Adaptive,
            hgrm: Some("inbox-latency-paced-adaptive.hgrm"),
        },
        Scenario {
            name: "paced 100k/s, spin 50µs",
            stanzas: 300_000,
            rate: Some(100_000.0),
            consumer: Consumer::SpinsThenSleeps(Duration::from_micros(50)),
            hgrm: None,
        },
        Scenario {
            name: "paced 100k/s, adaptive",
            stanzas: 300_000,
            rate: Some(100_000.0),
            consumer: Consumer::Adaptive,
            hgrm: None,
        },
        Scenario {
            name: "paced 5k/s, spin 50µs",
            stanzas: 15_000,
            rate: Some(5_000.0),
            consumer: Consumer::SpinsThenSleeps(Duration::from_micros(50)),
            hgrm: None,
        },
        Scenario {
            name: "paced 5k/s, adaptive",
            stanzas: 15_000,
            rate: Some(5_000.0),
            consumer: Consumer::Adaptive,
            hgrm: None,
        },
        Scenario {
            name: "paced 5k/s, sleeps",
            stanzas: 15_000,
            rate: Some(5_000.0),
            consumer: Consumer::Sleeps,
            hgrm: None,
        },
    ];
    println!(
        "{:<24} {:>10} {:>12} {:>8} {:>8} {:>8} {:>8} {:>9} {:>10} {:>11} {:>10} {:>9} {:>15}",
        "scenario",
        "stanzas",
        "stanzas/s",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "p99.9 µs",
        "max µs",
        "prod.waits",
        "cons.sleeps",
        "allocs/stz",
        "preempted",
        "cons.cpu µs/stz"
    );
    let dir = target_dir();
    for sc in &scenarios {
        let o = run(sc, &cores);
        let h = &o.hist;
        let rate = o.received as f64 / o.elapsed.as_secs_f64();
        println!(
            "{:<24} {:>10} {:>12.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.1} {:>10} {:>11} {:>10.4} {:>9} {:>15.3}",
            sc.name,
            o.received,
            rate,
            us(h.value_at_quantile(0.50)),
            us(h.value_at_quantile(0.90)),
            us(h.value_at_quantile(0.99)),
            us(h.value_at_quantile(0.999)),
            us(h.max()),
            o.producer_blocked,
            o.consumer_sleeps,
            o.allocs as f64 / o.received.max(1) as f64,
            format!("{}/{}", o.preempted.0, o.preempted.1),
            o.consumer_cpu.as_secs_f64() * 1e6 / o.received.max(1) as f64
        );
        if o.received < sc.stanzas {
            println!("  (stopped by the {} s time cap)", TIME_CAP.as_secs());
        }
        if let Some(file) = sc.hgrm {
            let path = dir.join(file);
            match std::fs::write(&path, hgrm(h)) {
                Ok(()) => println!("  distribution: {}", path.display()),
                Err(e) => println!("  could not write {}: {e}", path.display()),
            }
        }
    }
    println!(
        "noise: shard threads pinned ({placement}), one run per scenario after a 0.5 s \
         warm-up, machine shared (2 cores: the kernel and other processes compete; tails vary \
         between runs); load average before {load_before}, after {}",
        loadavg()
    );
}
