//! A counting global allocator, for "bytes per idle lock".
//!
//! Counting is off by default (one relaxed load per allocation), so a bench
//! binary can install it without slowing the timed loops; [`measure`] turns it
//! on only around the code whose memory it reports.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(false);
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

/// Install with `#[global_allocator] static A: CountingAlloc = CountingAlloc;`.
pub struct CountingAlloc;

fn count(delta: isize) {
    if ENABLED.load(Ordering::Relaxed) {
        LIVE_BYTES.fetch_add(delta, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// wrapper only keeps a byte count on the side.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        System.dealloc(ptr, layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        System.realloc(ptr, layout, new_size)
    }
}

/// Runs `f` with counting on; returns its result and the net bytes it left
/// allocated (allocations minus frees, as requested sizes: no malloc overhead).
/// `None` if [`CountingAlloc`] is not this binary's global allocator.
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, Option<i64>) {
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    ENABLED.store(true, Ordering::Relaxed);
    let probe = std::hint::black_box(Box::new(0u64));
    let installed = LIVE_BYTES.load(Ordering::Relaxed) != before;
    drop(probe);
    let start = LIVE_BYTES.load(Ordering::Relaxed);
    let out = f();
    let end = LIVE_BYTES.load(Ordering::Relaxed);
    ENABLED.store(false, Ordering::Relaxed);
    (out, installed.then_some((end - start) as i64))
}
