//! Keeps a CPU awake while an fsync is in flight, for machines that hand a
//! disk's completion interrupt to a halted vCPU only when it next wakes up.
//!
//! Measured on the 2-vCPU dev VM (Firecracker, guest halt-polling off): in
//! some runs one small append + `fdatasync` took 4.0 ms, and 0.1–0.3 ms while
//! some thread woke a CPU every 50 µs. In others the waker made no
//! difference: there the slow fsyncs came from other processes (a build
//! writing gigabytes, CPU hogs delaying the writer thread's wake-up), which
//! no waker fixes. etcd gets the waker's effect for free (Go's runtime
//! monitor polls every 20 µs while a goroutine sits in a system call).
//!
//! Whether it pays depends on the machine and the moment, so the default
//! ([`FsyncPoll::Auto`]) measures: the log writer times its fsyncs with and
//! without the waker ([`AutoChoice`]) and keeps it only while it makes them
//! markedly faster. Where it does not, it would only cost wake-ups, and it
//! stays off.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The waker's default period: short against a fast fsync (~100 µs), and
/// only ~20,000 wake-ups a second while fsyncs are in flight.
pub const DEFAULT_PERIOD: Duration = Duration::from_micros(50);

/// When the log writer keeps a CPU awake during its fsyncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPoll {
    /// Never.
    Off,
    /// During every fsync, waking a CPU at this period.
    Always(Duration),
    /// During an fsync only while measurements say it makes fsyncs faster
    /// here ([`AutoChoice`]), waking a CPU at this period. The default.
    Auto(Duration),
}

impl Default for FsyncPoll {
    fn default() -> Self {
        FsyncPoll::Auto(DEFAULT_PERIOD)
    }
}

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

/// Fsyncs the other way run at each probe.
const PROBE: usize = 8;
/// Fsyncs between probes right after a start or a switch.
const MIN_INTERVAL: u64 = 16;
/// Fsyncs between probes at most, once the choice keeps being confirmed:
/// on a steady machine, one fsync in ~500 runs the other way.
const MAX_INTERVAL: u64 = 4096;

/// The last [`PROBE`] fsync times of one way of running them.
#[derive(Debug, Clone, Default)]
struct Recent {
    times: [Duration; PROBE],
    len: usize,
    next: usize,
}

impl Recent {
    fn push(&mut self, t: Duration) {
        self.times[self.next] = t;
        self.next = (self.next + 1) % PROBE;
        self.len = (self.len + 1).min(PROBE);
    }

    fn median(&self) -> Option<Duration> {
        if self.len < PROBE {
            return None;
        }
        let mut t = self.times;
        t.sort_unstable();
        Some(t[PROBE / 2])
    }
}

/// Chooses, fsync by fsync, whether to run the waker, from measured times.
///
/// It runs its current choice and, every `interval` fsyncs, [`PROBE`] fsyncs
/// the other way; then it compares the two medians of the latest [`PROBE`]
/// each way (adjacent in time, so under the same load). The waker is chosen
/// only when it makes fsyncs at least a quarter faster: it costs wake-ups,
/// and a tie should not flip the choice back and forth. A confirmed choice
/// doubles the interval (up to [`MAX_INTERVAL`]), so a steady machine pays
/// for few probes; a switch starts again from [`MIN_INTERVAL`]. It starts
/// with the waker on: a wrong "on" costs wake-ups, a wrong "off" costs
/// milliseconds per commit.
#[derive(Debug, Clone)]
pub struct AutoChoice {
    on: bool,
    probe_left: usize,
    until_probe: u64,
    interval: u64,
    /// Index 0: without the waker; 1: with it.
    recent: [Recent; 2],
}

impl Default for AutoChoice {
    fn default() -> Self {
        AutoChoice {
            on: true,
            probe_left: 0,
            until_probe: MIN_INTERVAL,
            interval: MIN_INTERVAL,
            recent: Default::default(),
        }
    }
}

impl AutoChoice {
    /// The current choice (not counting a probe in progress).
    pub fn on(&self) -> bool {
        self.on
    }

    /// Whether the next fsync runs with the waker.
    pub fn use_waker(&self) -> bool {
        if self.probe_left > 0 {
            !self.on
        } else {
            self.on
        }
    }

    /// Records how long an fsync took, run `with_waker` or not.
    pub fn record(&mut self, with_waker: bool, took: Duration) {
        self.recent[usize::from(with_waker)].push(took);
        if self.probe_left > 0 {
            if with_waker != self.on {
                self.probe_left -= 1;
                if self.probe_left == 0 {
                    self.decide();
                }
            }
            return;
        }
        self.until_probe = self.until_probe.saturating_sub(1);
        if self.until_probe == 0 {
            self.probe_left = PROBE;
        }
    }

    fn decide(&mut self) {
        let (Some(without), Some(with)) = (self.recent[0].median(), self.recent[1].median()) else {
            self.until_probe = self.interval;
            return;
        };
        let want_on = with.as_nanos() * 4 <= without.as_nanos() * 3;
        if want_on == self.on {
            self.interval = (self.interval * 2).min(MAX_INTERVAL);
        } else {
            tracing::info!(
                waker = want_on,
                with_us = with.as_micros() as u64,
                without_us = without.as_micros() as u64,
                "fsync waker turned {} (median fsync {} µs with it, {} µs without)",
                if want_on { "on" } else { "off" },
                with.as_micros(),
                without.as_micros()
            );
            self.on = want_on;
            self.interval = MIN_INTERVAL;
        }
        self.until_probe = self.interval;
    }
}

/// Fsyncs run with and without the waker in this process, for benchmarks
/// and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsyncCounts {
    pub with_waker: u64,
    pub without: u64,
    /// Fsyncs (either way) that took [`SLOW_FSYNC`] or longer: how often
    /// the disk or the writer thread's wake-up was slow (on the dev VM: while
    /// other processes loaded the machine).
    pub slow: u64,
}

/// An fsync this long is counted as slow ([`FsyncCounts::slow`]).
pub const SLOW_FSYNC: Duration = Duration::from_millis(1);

static WITH_WAKER: AtomicU64 = AtomicU64::new(0);
static WITHOUT: AtomicU64 = AtomicU64::new(0);
static SLOW: AtomicU64 = AtomicU64::new(0);

/// How many fsyncs the log writers of this process ran each way so far.
pub fn counts() -> FsyncCounts {
    FsyncCounts {
        with_waker: WITH_WAKER.load(Ordering::Relaxed),
        without: WITHOUT.load(Ordering::Relaxed),
        slow: SLOW.load(Ordering::Relaxed),
    }
}

/// Runs a log writer's fsyncs under its [`FsyncPoll`] policy.
pub struct FsyncRunner {
    waker: Option<FsyncWaker>,
    auto: Option<AutoChoice>,
}

impl FsyncRunner {
    /// Starts the waker thread unless the policy is [`FsyncPoll::Off`].
    pub fn start(poll: FsyncPoll) -> io::Result<FsyncRunner> {
        let (waker, auto) = match poll {
            FsyncPoll::Off => (None, None),
            FsyncPoll::Always(p) => (Some(FsyncWaker::start(p)?), None),
            FsyncPoll::Auto(p) => (Some(FsyncWaker::start(p)?), Some(AutoChoice::default())),
        };
        Ok(FsyncRunner { waker, auto })
    }

    /// Runs `fsync`, with the waker ticking if the policy says so now.
    pub fn run<T>(&mut self, fsync: impl FnOnce() -> T) -> T {
        let waker = match (&self.waker, &self.auto) {
            (Some(w), Some(a)) => a.use_waker().then_some(w),
            (w, None) => w.as_ref(),
            (None, Some(_)) => None,
        };
        let start = Instant::now();
        let out = match waker {
            Some(w) => w.during(fsync),
            None => fsync(),
        };
        let with = waker.is_some();
        let took = start.elapsed();
        if let Some(a) = &mut self.auto {
            a.record(with, took);
        }
        if took >= SLOW_FSYNC {
            SLOW.fetch_add(1, Ordering::Relaxed);
        }
        let counter = if with { &WITH_WAKER } else { &WITHOUT };
        counter.fetch_add(1, Ordering::Relaxed);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Duration = Duration::from_micros(120);
    const SLOW: Duration = Duration::from_millis(4);

    /// Feeds `n` fsyncs to `a`, timed by `took(with_waker)`; returns how
    /// many ran with the waker.
    fn feed(a: &mut AutoChoice, n: usize, took: impl Fn(bool) -> Duration) -> usize {
        let mut with = 0;
        for _ in 0..n {
            let w = a.use_waker();
            with += usize::from(w);
            a.record(w, took(w));
        }
        with
    }

    #[test]
    fn keeps_the_waker_where_it_makes_fsyncs_faster() {
        let mut a = AutoChoice::default();
        let with = feed(&mut a, 10_000, |w| if w { FAST } else { SLOW });
        assert!(a.on());
        // Probes without it back off: a few dozen slow fsyncs in 10,000.
        assert!(
            with >= 10_000 - 100,
            "only {with} of 10000 ran with the waker"
        );
    }

    #[test]
    fn drops_the_waker_where_it_does_not_help() {
        let mut a = AutoChoice::default();
        let with = feed(&mut a, 10_000, |_| FAST);
        assert!(!a.on());
        assert!(
            with <= 100,
            "{with} of 10000 fsyncs ran with a useless waker"
        );
        // A small gain is not worth its wake-ups either.
        let mut a = AutoChoice::default();
        feed(&mut a, 10_000, |w| if w { FAST * 9 / 10 } else { FAST });
        assert!(!a.on());
    }

    #[test]
    fn follows_the_machine_when_it_changes() {
        let mut a = AutoChoice::default();
        feed(&mut a, 5_000, |_| FAST);
        assert!(!a.on());
        // Interrupts start arriving late: the next probe (within the longest
        // interval) turns the waker back on.
        feed(&mut a, MAX_INTERVAL as usize + 2 * PROBE, |w| {
            if w {
                FAST
            } else {
                SLOW
            }
        });
        assert!(a.on());
        feed(&mut a, MAX_INTERVAL as usize + 2 * PROBE, |_| FAST);
        assert!(!a.on());
    }

    #[test]
    fn one_slow_outlier_does_not_flip_the_choice() {
        let mut a = AutoChoice::default();
        feed(&mut a, 10_000, |w| if w { FAST } else { SLOW });
        assert!(a.on());
        // A quarter of the fsyncs with the waker very slow (big group
        // commits): their mean is no better than without, their median is.
        let mut i = 0u32;
        let mut with_outliers = |w: bool| {
            i += 1;
            match (w, i % 4) {
                (true, 0) => SLOW * 4,
                (true, _) => FAST,
                (false, _) => SLOW,
            }
        };
        for _ in 0..10_000 {
            let w = a.use_waker();
            let t = with_outliers(w);
            a.record(w, t);
        }
        assert!(a.on());
    }

    #[test]
    fn the_runner_counts_and_honours_off_and_always() {
        let before = counts();
        let mut off = FsyncRunner::start(FsyncPoll::Off).unwrap();
        assert_eq!(off.run(|| 1), 1);
        let mut always = FsyncRunner::start(FsyncPoll::Always(DEFAULT_PERIOD)).unwrap();
        assert_eq!(always.run(|| 2), 2);
        let after = counts();
        // Other tests in this process may run fsyncs too: at least ours.
        assert!(after.without > before.without);
        assert!(after.with_waker > before.with_waker);
    }

    #[test]
    fn runs_the_closure_and_stops_on_drop() {
        let w = FsyncWaker::start(Duration::from_micros(50)).unwrap();
        assert_eq!(w.during(|| 7), 7);
        assert_eq!(w.during(|| 8), 8);
        drop(w); // joins the thread: a hang here would fail the test run
    }
}
