//! Criterion bench of the core lock table (`cargo bench -p fencelock-benches --bench core`).
//!
//! Single-threaded by construction; pin it to one core with `taskset -c 1` for
//! steadier numbers. Memory per idle lock is printed first (criterion measures
//! time only). `core_table` prints the same workloads as one summary table.

use criterion::{criterion_group, BatchSize, BenchmarkId, Criterion, Throughput};
use fencelock_benches::alloc::CountingAlloc;
use fencelock_benches::memory::{idle_lock_bytes, map_entry_bytes};
use fencelock_benches::workloads::{expire, leased_locks, Handoff, MapPairs, Uncontended};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Uncontended acquire + release against HashMap remove + insert, 1 and 1M keys.
fn pairs(c: &mut Criterion) {
    let mut group = c.benchmark_group("acquire_release_pair");
    group.throughput(Throughput::Elements(1));
    for locks in [1usize, 1_000_000] {
        let mut table = Uncontended::new(locks);
        group.bench_function(BenchmarkId::new("fencelock", locks), |b| {
            b.iter(|| table.pair())
        });
        drop(table);
        let mut map = MapPairs::new(locks);
        group.bench_function(BenchmarkId::new("hashmap_string_u64", locks), |b| {
            b.iter(|| map.pair())
        });
    }
    group.finish();
}

/// Release → next grant (and the former holder re-queues), at three queue lengths.
fn handoff(c: &mut Criterion) {
    let mut group = c.benchmark_group("handoff");
    group.throughput(Throughput::Elements(1));
    for waiters in [100usize, 10_000, 100_000] {
        let mut lock = Handoff::new(waiters);
        group.bench_function(BenchmarkId::new("waiters", waiters), |b| {
            b.iter(|| lock.handoff())
        });
    }
    group.finish();
}

/// 100,000 leases ending at the same instant, processed by one tick.
fn lease_expiry(c: &mut Criterion) {
    const LEASES: usize = 100_000;
    let mut group = c.benchmark_group("expire_leases");
    group.sample_size(10);
    group.throughput(Throughput::Elements(LEASES as u64));
    let (table, at) = leased_locks(LEASES, 1_000);
    let mut events = Vec::with_capacity(LEASES);
    group.bench_function(BenchmarkId::new("one_tick", LEASES), |b| {
        b.iter_batched(
            || table.clone(),
            |mut t| {
                let ended = expire(&mut t, at, &mut events);
                assert_eq!(ended, LEASES);
                t
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn print_memory() {
    const LOCKS: usize = 1_000_000;
    let show = |b: Option<f64>| b.map_or("n/a".to_string(), |b| format!("{b:.0} B"));
    println!("memory per entry, {LOCKS} entries (requested bytes, no malloc overhead):");
    println!(
        "  idle lock, never held:      {}",
        show(idle_lock_bytes(LOCKS, false))
    );
    println!(
        "  idle lock, held once:       {}",
        show(idle_lock_bytes(LOCKS, true))
    );
    println!(
        "  HashMap<String, u64> entry: {}",
        show(map_entry_bytes(LOCKS))
    );
}

criterion_group!(benches, pairs, handoff, lease_expiry);

fn main() {
    print_memory();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
