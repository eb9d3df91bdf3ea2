//! Runs many seeds in parallel (one madsim runtime per thread) and sums up.

use crate::seeds::{replay_command, Summary};
use crate::world::{run_seed, RunOptions, RunOutcome};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One line per failure: the seed, what broke, and how to replay it.
pub fn explain(outcome: &RunOutcome, options: &RunOptions) -> String {
    let plant = options
        .bugs
        .iter()
        .map(|b| b.name())
        .collect::<Vec<_>>()
        .join(",");
    let mut s = String::new();
    for v in &outcome.report.violations {
        s.push_str(&format!("\n    {v}"));
    }
    s.push_str(&format!(
        "\n    replay: {}",
        replay_command(outcome.seed, (!plant.is_empty()).then_some(plant.as_str()))
    ));
    s
}

/// Runs every seed of `seeds` on `jobs` threads; `each` sees every outcome.
pub fn run_many(
    seeds: Range<u64>,
    options: &RunOptions,
    jobs: usize,
    each: &(dyn Fn(&RunOutcome) + Sync),
) -> Summary {
    let started = Instant::now();
    let next = AtomicU64::new(seeds.start);
    let summary = Arc::new(Mutex::new(Summary {
        threads: jobs.max(1),
        ..Summary::default()
    }));
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= seeds.end {
                    return;
                }
                // A fresh thread per seed: std's hash-map keys and tokio's
                // generator are per thread, so a seed replays exactly alone.
                let outcome = std::thread::scope(|s| s.spawn(|| run_seed(seed, options)).join());
                let Ok(outcome) = outcome else {
                    let mut s = summary.lock().unwrap_or_else(|p| p.into_inner());
                    s.seeds += 1;
                    s.failures.push((
                        seed,
                        format!(
                            "\n    the simulation panicked\n    replay: {}",
                            replay_command(seed, None)
                        ),
                    ));
                    continue;
                };
                each(&outcome);
                let mut s = summary.lock().unwrap_or_else(|p| p.into_inner());
                s.seeds += 1;
                s.sim_ms += outcome.sim_ms;
                s.faults += outcome.faults.len() as u64;
                s.ops += outcome.history.ops.len() as u64;
                s.ops_checked += outcome.report.ops_checked;
                s.inconclusive_keys += outcome.report.inconclusive_keys;
                if !outcome.report.ok() {
                    s.failures.push((seed, explain(&outcome, options)));
                }
            });
        }
    });
    let mut s = summary.lock().unwrap_or_else(|p| p.into_inner()).clone();
    s.failures.sort_by_key(|f| f.0);
    s.wall_ms = started.elapsed().as_millis() as u64;
    s
}
