//! The framer allocates nothing per stanza in the steady state: proven with a counting
//! global allocator (this test binary's own).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use fedrouter::stanza::StanzaKind;
use fedrouter::xml::{Frame, Framer};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
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

fn run(f: &mut Framer, input: &[u8], chunk: usize) -> usize {
    let mut n = 0;
    for c in input.chunks(chunk) {
        f.feed(c);
        while let Some(fr) = f.next_frame().expect("valid stream") {
            if let Frame::Element(e) = fr {
                // Read the whole routing view, as the router does.
                std::hint::black_box((
                    StanzaKind::of(&e),
                    e.to(),
                    e.from(),
                    e.type_(),
                    e.id(),
                    e.namespace(),
                ));
                n += 1;
            }
        }
    }
    n
}

#[test]
fn no_allocation_per_stanza_in_steady_state() {
    let body = common::generated_body(7 * 300);
    let mut f = Framer::default();
    f.feed(common::HEADER.as_bytes());
    assert!(matches!(f.next_frame(), Ok(Some(Frame::Header(_)))));
    // Warm up: buffer growth and scratch vectors reach their working size.
    for _ in 0..3 {
        run(&mut f, body.as_bytes(), 16 * 1024);
    }
    for chunk in [16 * 1024, 1000, 100, 1] {
        let before = ALLOCS.load(Ordering::Relaxed);
        let n = run(&mut f, body.as_bytes(), chunk);
        let allocs = ALLOCS.load(Ordering::Relaxed) - before;
        assert_eq!(n, 7 * 300);
        assert_eq!(
            allocs, 0,
            "{allocs} allocations for {n} stanzas fed in {chunk}-byte chunks"
        );
    }
}
