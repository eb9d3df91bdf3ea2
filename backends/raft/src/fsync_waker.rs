//! Keeps a CPU awake while an fsync is in flight, for virtual machines that
//! hand a disk's completion interrupt to a halted vCPU only when it next
//! wakes up.
//!
//! Measured on the 2-vCPU dev VM (Firecracker, guest halt-polling off): one
//! small append + `fdatasync` takes 4.0 ms when the machine is idle, but
//! 0.1–0.3 ms while some thread wakes a CPU every 50 µs: the disk is fast,
//! the wake-up is late. etcd gets this for free (Go's runtime monitor polls
//! every 20 µs while a goroutine sits in a system call). Off by default
//! ([`crate::NodeConfig::fsync_poll`]): where interrupts arrive promptly it
//! only costs wake-ups.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Default)]
struct Flags {
    active: AtomicBool,
    stop: AtomicBool,
}

/// A thread that sleeps in short steps while [`FsyncWaker::during`] runs,
/// and parks otherwise.
pub struct FsyncWaker {
    flags: Arc<Flags>,
    thread: Option<JoinHandle<()>>,
}

impl FsyncWaker {
    /// Starts the thread; it wakes every `period` while active.
    pub fn start(period: Duration) -> io::Result<FsyncWaker> {
        let flags = Arc::new(Flags::default());
        let f = flags.clone();
        let thread = std::thread::Builder::new()
            .name("fencelock-fsync-waker".into())
            .spawn(move || {
                while !f.stop.load(Ordering::Acquire) {
                    if f.active.load(Ordering::Acquire) {
                        std::thread::sleep(period);
                    } else {
                        std::thread::park();
                    }
                }
            })?;
        Ok(FsyncWaker {
            flags,
            thread: Some(thread),
        })
    }

    /// Runs `f` (the fsync) with the waker ticking.
    pub fn during<T>(&self, f: impl FnOnce() -> T) -> T {
        self.flags.active.store(true, Ordering::Release);
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
        let out = f();
        self.flags.active.store(false, Ordering::Release);
        out
    }
}

impl Drop for FsyncWaker {
    fn drop(&mut self) {
        self.flags.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_the_closure_and_stops_on_drop() {
        let w = FsyncWaker::start(Duration::from_micros(50)).unwrap();
        assert_eq!(w.during(|| 7), 7);
        assert_eq!(w.during(|| 8), 8);
        drop(w); // joins the thread: a hang here would fail the test run
    }
}
