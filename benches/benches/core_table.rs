//! The core's numbers as one markdown table, timed with `Instant` (no criterion):
//! `cargo bench -p fencelock-benches --bench core_table`.
//!
//! Every time is the median of several rounds after a warm-up round. Pin it to
//! one core (`taskset -c 1 cargo bench ...`); the header says which cores the
//! process may use. The targets are printed as PASS/MISS, never enforced: a
//! benchmark is not a test.

use fencelock_benches::alloc::CountingAlloc;
use fencelock_benches::memory::{idle_lock_bytes, map_entry_bytes};
use fencelock_benches::workloads::{expire, leased_locks, Handoff, MapPairs, Uncontended};
use std::time::Instant;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const ROUNDS: usize = 7;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Nanoseconds per call of `step`, median of rounds of `batch` calls.
fn ns_per_step(batch: usize, mut step: impl FnMut()) -> f64 {
    let mut rounds = Vec::with_capacity(ROUNDS);
    for round in 0..=ROUNDS {
        let ns = ns_per_batch(batch, &mut step);
        if round > 0 {
            rounds.push(ns); // round 0 warms caches and branch predictors
        }
    }
    median(rounds)
}

/// Nanoseconds per call of `a` and of `b`, and the median of their per-round
/// ratio. Rounds alternate between the two, so a change in machine load
/// (this runs on shared machines) hits both sides alike.
fn paired_ns(batch: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64, f64) {
    let (mut xs, mut ys, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..=ROUNDS {
        let x = ns_per_batch(batch, &mut a);
        let y = ns_per_batch(batch, &mut b);
        if round > 0 {
            xs.push(x);
            ys.push(y);
            ratios.push(x / y);
        }
    }
    (median(xs), median(ys), median(ratios))
}

fn ns_per_batch(batch: usize, step: &mut impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..batch {
        step();
    }
    start.elapsed().as_nanos() as f64 / batch as f64
}

/// Nanoseconds per handoff when a fresh queue of `waiters` is drained.
fn drain_ns(waiters: usize) -> f64 {
    let builds = (200_000 / waiters).clamp(ROUNDS, 2_000);
    let per_build: Vec<f64> = (0..builds)
        .map(|_| {
            let mut lock = Handoff::new(waiters);
            let start = Instant::now();
            let n = lock.drain();
            assert_eq!(n, waiters);
            start.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    median(per_build)
}

/// Milliseconds for one tick that ends `leases` leases.
fn expiry_ms(leases: usize) -> f64 {
    let (table, at) = leased_locks(leases, 1_000);
    let mut events = Vec::with_capacity(leases);
    let rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let mut t = table.clone();
            let start = Instant::now();
            let ended = expire(&mut t, at, &mut events);
            let ms = start.elapsed().as_secs_f64() * 1e3;
            assert_eq!(ended, leases);
            drop(t);
            ms
        })
        .collect();
    median(rounds)
}

fn mops(ns: f64) -> String {
    format!("{:.2} M/s ({ns:.0} ns)", 1e3 / ns)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

fn allowed_cpus() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// `core_table --only <pair|map|handoff|drain> <size> <iters>` runs one
/// workload `iters` times and prints nothing: `scripts/bench-instructions.sh`
/// counts its instructions under callgrind, which a busy machine cannot skew.
fn run_only(args: &[String]) -> Result<(), String> {
    let [workload, size, iters] = args else {
        return Err("usage: core_table --only <pair|map|handoff|drain> <size> <iters>".into());
    };
    let size: usize = size.parse().map_err(|e| format!("size: {e}"))?;
    let iters: usize = iters.parse().map_err(|e| format!("iters: {e}"))?;
    match workload.as_str() {
        "pair" => {
            let mut table = Uncontended::new(size);
            (0..iters).for_each(|_| table.pair());
        }
        "map" => {
            let mut map = MapPairs::new(size);
            (0..iters).for_each(|_| map.pair());
        }
        "handoff" => {
            let mut lock = Handoff::new(size);
            (0..iters).for_each(|_| lock.handoff());
        }
        "drain" => {
            let mut lock = Handoff::new(size);
            let done = lock.drain_at_most(iters);
            if done != iters {
                return Err(format!("a queue of {size} drains only {done} times"));
            }
        }
        other => return Err(format!("unknown workload {other:?}")),
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--only") {
        if let Err(e) = run_only(&args[at + 1..]) {
            eprintln!("{e}");
            std::process::exit(2);
        }
        return;
    }
    const PAIRS_BATCH: usize = 2_000_000;
    println!(
        "# fencelock core benchmark (cpus allowed: {})\n",
        allowed_cpus()
    );

    println!("| uncontended acquire + release | fencelock | HashMap<String, u64> remove + insert | time ratio (ours / HashMap, median of alternating rounds) |");
    println!("|---|---|---|---|");
    let mut pairs = Vec::new();
    for locks in [1usize, 1_000_000] {
        let mut table = Uncontended::new(locks);
        let mut map = MapPairs::new(locks);
        let (ours, theirs, ratio) = paired_ns(PAIRS_BATCH / 2, || table.pair(), || map.pair());
        drop((table, map));
        pairs.push((locks, ours, ratio));
        println!(
            "| {locks} lock(s) | {} | {} | {ratio:.2}x |",
            mops(ours),
            mops(theirs),
        );
    }

    println!("\n| handoff (release → next grant) | steady queue: ns per handoff (incl. re-queue) | draining a fresh queue: ns per handoff |");
    println!("|---|---|---|");
    let mut drains = Vec::new();
    for waiters in [100usize, 10_000, 100_000] {
        let mut lock = Handoff::new(waiters);
        let steady = ns_per_step(200_000, || lock.handoff());
        drop(lock);
        let drain = drain_ns(waiters);
        drains.push(drain);
        println!("| {waiters} waiters | {steady:.0} | {drain:.0} |");
    }

    const LEASES: usize = 100_000;
    let ms = expiry_ms(LEASES);
    println!("\n| lease expiry | one tick | per lease |");
    println!("|---|---|---|");
    println!(
        "| {LEASES} leases due at once | {ms:.1} ms | {:.0} ns |",
        ms * 1e6 / LEASES as f64
    );

    const IDLE: usize = 1_000_000;
    let show = |b: Option<f64>| b.map_or("n/a".to_string(), |b| format!("{b:.0}"));
    println!("\n| memory, {IDLE} entries (requested bytes per entry) | bytes |");
    println!("|---|---|");
    println!(
        "| idle lock, never held | {} |",
        show(idle_lock_bytes(IDLE, false))
    );
    println!(
        "| idle lock, held once | {} |",
        show(idle_lock_bytes(IDLE, true))
    );
    println!(
        "| HashMap<String, u64> entry | {} |",
        show(map_entry_bytes(IDLE))
    );

    let (_, ours, _) = pairs[0];
    let spread = drains.iter().copied().fold(f64::MIN, f64::max)
        / drains.iter().copied().fold(f64::MAX, f64::min);
    println!("\n| target | result |");
    println!("|---|---|");
    println!(
        "| ≥ 3 M pairs/s on the 1-lock table | {} ({:.2} M/s) |",
        verdict(1e3 / ours >= 3.0),
        1e3 / ours
    );
    for (locks, _, ratio) in &pairs {
        println!(
            "| within 3x of HashMap pairs ({locks} lock(s)) | {} ({ratio:.2}x) |",
            verdict(*ratio <= 3.0),
        );
    }
    println!(
        "| handoff cost independent of queue length (100 → 100,000 waiters) | {} (slowest / fastest drain = {spread:.2}x; time includes cache misses, instructions per handoff: scripts/bench-instructions.sh) |",
        verdict(spread <= 2.0)
    );
}
