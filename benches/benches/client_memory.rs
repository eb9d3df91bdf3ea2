//! The client API on the in-memory backend, next to `tokio::sync::Mutex`.
//! Prints one markdown table (issue 3's targets in the last column).
//!
//! `cargo bench -p fencelock-benches --bench client_memory`
//! (`FENCELOCK_BENCH_SECS` sets the length of each timed run, default 2.)

use fencelock::Client;
use fencelock_memory::MemoryBackend;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::{Builder, Runtime};

const TASKS: usize = 16;

fn secs() -> Duration {
    let s = std::env::var("FENCELOCK_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(s.max(0.1))
}

/// ns per pair, client API vs `tokio::sync::Mutex`, one task, one key.
/// The two are timed in alternating short batches for the whole `run`, so
/// load from other processes hits both alike; each is reported as its
/// fastest batch (the cost without interference) and its median batch.
async fn uncontended(run: Duration) -> [(f64, f64); 2] {
    let client = Client::connect(MemoryBackend::new()).await.expect("client");
    let lock = client.lock("bench", "uncontended").expect("key");
    let m = tokio::sync::Mutex::new(0u64);
    for _ in 0..10_000 {
        lock.acquire()
            .await
            .expect("acquire")
            .release()
            .await
            .expect("release");
    }
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let start = Instant::now();
    while start.elapsed() < run || ours.len() < 5 {
        let t = Instant::now();
        for _ in 0..5_000 {
            lock.acquire()
                .await
                .expect("acquire")
                .release()
                .await
                .expect("release");
        }
        ours.push(t.elapsed().as_nanos() as f64 / 5_000.0);
        let t = Instant::now();
        for _ in 0..50_000 {
            *m.lock().await += 1;
        }
        theirs.push(t.elapsed().as_nanos() as f64 / 50_000.0);
    }
    std::hint::black_box(*m.lock().await);
    client.close().await;
    [min_median(&mut ours), min_median(&mut theirs)]
}

fn min_median(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], v[v.len() / 2])
}

/// `TASKS` tasks of one client loop acquire/release on one key (`shared`)
/// or each on its own key. Returns (pairs per second, max/min per task).
async fn many_tasks(run: Duration, shared: bool) -> (f64, f64) {
    let client = Client::connect(MemoryBackend::new()).await.expect("client");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let name = if shared {
            "contended".to_string()
        } else {
            format!("key-{i}")
        };
        let lock = client.lock("bench", &name).expect("key");
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let g = lock.acquire().await.expect("acquire");
                n += 1;
                g.release().await.expect("release");
            }
            n
        }));
    }
    tokio::time::sleep(run).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut counts = Vec::new();
    for t in tasks {
        counts.push(t.await.expect("task"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    client.close().await;
    let total: u64 = counts.iter().sum();
    let max = counts.iter().copied().max().unwrap_or(0) as f64;
    let min = counts.iter().copied().min().unwrap_or(0).max(1) as f64;
    (total as f64 / elapsed, max / min)
}

fn runtimes() -> Vec<(&'static str, Runtime)> {
    vec![
        (
            "current_thread",
            Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
        ),
        (
            "multi_thread(2)",
            Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime"),
        ),
    ]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // useful; either way run once, quickly under test.
    let run = if std::env::args().any(|a| a == "--bench") {
        secs()
    } else {
        Duration::from_millis(100)
    };
    println!(
        "\n### fencelock client API on the memory backend ({:?} per run)\n",
        run
    );
    println!("| runtime | measure | result | target |");
    println!("|---|---|---|---|");
    for (name, rt) in runtimes() {
        let [(client, client_med), (tokio, tokio_med)] = rt.block_on(uncontended(run));
        println!(
            "| {name} | uncontended acquire+release (client API): fastest / median batch | {client:.0} / {client_med:.0} ns/pair | |"
        );
        println!(
            "| {name} | uncontended lock+unlock (tokio::sync::Mutex): fastest / median batch | {tokio:.1} / {tokio_med:.1} ns/pair | |"
        );
        println!(
            "| {name} | ratio client / tokio: fastest / median | {:.1}x / {:.1}x | within 10x |",
            client / tokio,
            client_med / tokio_med
        );
        let (handoffs, fairness) = rt.block_on(many_tasks(run, true));
        println!("| {name} | {TASKS} tasks, one lock: handoffs/s | {handoffs:.0} | >= 200,000 |");
        println!(
            "| {name} | {TASKS} tasks, one lock: max/min acquisitions per task | {fairness:.3} | <= 1.5 |"
        );
        let (pairs, _) = rt.block_on(many_tasks(run, false));
        println!("| {name} | {TASKS} tasks, distinct keys: pairs/s | {pairs:.0} | |");
    }
}
