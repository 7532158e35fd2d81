//! A counting global allocator for tests that count fedrouter's heap allocations per
//! routed stanza (`tests/routed_allocs.rs`, `tests/routed_allocs_tls.rs`). A test binary
//! installs it with `#[global_allocator] static GLOBAL: Counting = Counting;`.
//!
//! Only allocations (and reallocations) made by threads that did not call
//! [`exempt_this_thread`] are counted: fedrouter's shards, its store and admin threads,
//! not the test's own peers. With `ROUTED_ALLOCS_SITES=1`, [`count_allocations`] samples
//! every [`SAMPLE_EVERY`]th counted allocation's backtrace and prints the most frequent
//! fedrouter frames (a profile of where the allocations are, for whoever removes them).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The allocator: [`System`]'s, counting.
pub struct Counting;

/// Allocations (and reallocations) by threads that are not exempt.
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Set by the test's own threads: their allocations are not fedrouter's.
    static EXEMPT: Cell<bool> = const { Cell::new(false) };
}

/// Set while measuring with `ROUTED_ALLOCS_SITES=1`: every [`SAMPLE_EVERY`]th counted
/// allocation records its backtrace in [`SITES`].
static SAMPLING: AtomicBool = AtomicBool::new(false);
const SAMPLE_EVERY: usize = 37;
static SITES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn count() {
    // `try_with`: a thread being torn down has no thread-locals left; count it.
    if !EXEMPT.try_with(Cell::get).unwrap_or(false) {
        let n = ALLOCS.fetch_add(1, Ordering::Relaxed);
        if SAMPLING.load(Ordering::Relaxed) && n % SAMPLE_EVERY == 0 {
            EXEMPT.with(|e| e.set(true));
            let bt = std::backtrace::Backtrace::force_capture().to_string();
            SITES.lock().unwrap_or_else(|e| e.into_inner()).push(bt);
            EXEMPT.with(|e| e.set(false));
        }
    }
}

/// Prints the sampled allocation sites per stanza (of `stanzas`): for each backtrace, its
/// first frames in fedrouter's own code, most frequent first.
fn print_sites(stanzas: usize) {
    let sites = std::mem::take(&mut *SITES.lock().unwrap_or_else(|e| e.into_inner()));
    let mut by: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for bt in &sites {
        let frames: Vec<&str> = bt
            .lines()
            .map(str::trim)
            .filter(|l| {
                (l.contains("fedrouter::") || l.contains("fedrouter_proto::"))
                    && !l.starts_with("at ")
            })
            .take(4)
            .collect();
        *by.entry(frames.join("\n    ")).or_default() += 1;
    }
    let mut v: Vec<_> = by.into_iter().collect();
    v.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    for (frames, n) in v.into_iter().take(40) {
        println!(
            "{:6.2}/stanza  {frames}",
            (n * SAMPLE_EVERY) as f64 / stanzas as f64
        );
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(p, l, n) }
    }
}

/// Marks the calling thread's allocations as the test's own: not counted.
pub fn exempt_this_thread() {
    EXEMPT.with(|e| e.set(true));
}

/// Runs `routed`, which routes `stanzas` stanzas, and returns the allocations counted
/// meanwhile (process-wide: measurements in one process must take turns). With
/// `ROUTED_ALLOCS_SITES` set, also prints where they were made.
pub fn count_allocations(stanzas: usize, routed: impl FnOnce()) -> usize {
    let sites = std::env::var_os("ROUTED_ALLOCS_SITES").is_some();
    SAMPLING.store(sites, Ordering::SeqCst);
    let before = ALLOCS.load(Ordering::SeqCst);
    routed();
    let allocs = ALLOCS.load(Ordering::SeqCst) - before;
    SAMPLING.store(false, Ordering::SeqCst);
    if sites {
        print_sites(stanzas);
    }
    allocs
}
