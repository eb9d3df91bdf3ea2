//! `fencelock-sim`: runs the deterministic simulator.
//!
//! ```text
//! cargo run -p fencelock-sim --release -- --seeds 1..1000        # many seeds, all cores
//! cargo run -p fencelock-sim --release -- --seed 42 --verbose    # replay one, with its trace
//! cargo run -p fencelock-sim --release -- --seed 42 --check-determinism
//! cargo run -p fencelock-sim --release -- --seeds 1..200 --plant stale-read
//! ```
//!
//! The simulation needs `--cfg madsim`, which changes how every crate is
//! built; a normal build of this binary is a launcher that re-runs cargo with
//! that flag and a target directory of its own (`<target>/madsim`).

use fencelock_sim::bugs::Bug;
use fencelock_sim::seeds::parse_range;
use std::ops::Range;
use std::process::ExitCode;

#[derive(Debug)]
struct Args {
    seeds: Range<u64>,
    bugs: Vec<Bug>,
    verbose: bool,
    determinism: bool,
    jobs: usize,
    fault_ms: u64,
    /// `--power-loss P`: see `RunOptions::power_loss`.
    power_loss: Option<f64>,
    /// Only check a history saved with `FENCELOCK_SIM_DUMP` (its `.bin` file).
    history: Option<String>,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        seeds: 1..101,
        bugs: Vec::new(),
        verbose: false,
        determinism: false,
        jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        fault_ms: 0,
        power_loss: None,
        history: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("`{name}` needs a value"))
        };
        match flag.as_str() {
            "--seeds" | "--seed" => {
                a.seeds = parse_range(&value(flag)?).map_err(|e| e.to_string())?
            }
            "--plant" => {
                for name in value("--plant")?.split(',') {
                    a.bugs.push(
                        name.parse()
                            .map_err(|e: fencelock_sim::bugs::UnknownBug| e.to_string())?,
                    );
                }
            }
            "--jobs" => {
                a.jobs = value("--jobs")?
                    .parse()
                    .map_err(|_| "invalid `--jobs` value: expected a positive number".to_string())?
            }
            "--fault-ms" => {
                a.fault_ms = value("--fault-ms")?
                    .parse()
                    .map_err(|_| "invalid `--fault-ms` value: expected milliseconds".to_string())?
            }
            "--power-loss" => {
                let p: f64 = value("--power-loss")?.parse().map_err(|_| {
                    "invalid `--power-loss` value: expected a probability from 0 to 1".to_string()
                })?;
                if !(0.0..=1.0).contains(&p) {
                    return Err(format!(
                        "invalid `--power-loss` value {p}: expected a probability from 0 to 1"
                    ));
                }
                a.power_loss = Some(p);
            }
            "--check-history" => a.history = Some(value(flag)?),
            "--verbose" => a.verbose = true,
            "--check-determinism" => a.determinism = true,
            other => {
                return Err(format!(
                    "unknown argument `{other}` (see the README's simulator section)"
                ))
            }
        }
    }
    if a.jobs == 0 {
        return Err("invalid `--jobs` value: expected a positive number".into());
    }
    Ok(a)
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&raw) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(path) = &args.history {
        return check_history(path);
    }
    run(args, &raw)
}

/// Runs the checkers on a saved history (no simulation): to re-check a
/// failure after changing a checker.
fn check_history(path: &str) -> ExitCode {
    let history = match std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| {
            postcard::from_bytes::<fencelock_sim::history::History>(&b).map_err(|e| e.to_string())
        }) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: cannot read the history {path}: {e}");
            return ExitCode::from(2);
        }
    };
    // The defaults are the simulator's own settings.
    let report = fencelock_sim::check::check_all(&history, &Default::default());
    println!(
        "{path}: {} operations, {} checked, {} inconclusive keys",
        history.ops.len(),
        report.ops_checked,
        report.inconclusive_keys
    );
    for v in &report.violations {
        println!("  {v}");
    }
    if report.ok() {
        println!("all checkers passed");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(not(madsim))]
fn run(_args: Args, raw: &[String]) -> ExitCode {
    // Re-run under `--cfg madsim`, in a target dir of its own.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.join("target"))
        .join("madsim");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(&root)
        .args(["run", "-q", "-p", "fencelock-sim", "--release", "--"])
        .args(raw)
        .env("RUSTFLAGS", "--cfg madsim --cfg tokio_unstable")
        .env("CARGO_TARGET_DIR", &target)
        .status();
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => ExitCode::from(s.code().map_or(1, |c| c.clamp(1, 255) as u8)),
        Err(e) => {
            eprintln!("error: cannot run cargo for the madsim build: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(madsim)]
fn run(args: Args, _raw: &[String]) -> ExitCode {
    use fencelock_sim::runner::{explain, run_many};
    use fencelock_sim::world::{run_seed, RunOptions};
    let options = RunOptions {
        bugs: args.bugs.clone(),
        verbose: args.verbose,
        fault_ms: args.fault_ms,
        power_loss: args.power_loss,
    };
    if args.determinism {
        let mut ok = true;
        for seed in args.seeds.clone() {
            match fencelock_sim::world::check_determinism(seed, &options) {
                Ok(()) => println!("seed {seed}: deterministic (two runs recorded the same trace)"),
                Err(e) => {
                    println!("seed {seed}: NOT deterministic: {e}");
                    ok = false;
                }
            }
        }
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    if args.seeds.end - args.seeds.start == 1 {
        let outcome = run_seed(args.seeds.start, &options);
        println!(
            "seed {}: {} nodes, {} clients, {:.1} s simulated, {} faults, {} operations, {} checked",
            outcome.seed,
            outcome.nodes,
            outcome.clients,
            outcome.sim_ms as f64 / 1000.0,
            outcome.faults.len(),
            outcome.history.ops.len(),
            outcome.report.ops_checked
        );
        if outcome.report.ok() {
            println!("all checkers passed");
            return ExitCode::SUCCESS;
        }
        println!(
            "FAILED seed {}:{}",
            outcome.seed,
            explain(&outcome, &options)
        );
        if args.verbose {
            explain_linearizability(&outcome.history);
        }
        return ExitCode::FAILURE;
    }
    let summary = run_many(args.seeds.clone(), &options, args.jobs, &|o| {
        if !o.report.ok() {
            println!("FAILED seed {}:{}", o.seed, explain(o, &options));
        }
    });
    println!("{summary}");
    if summary.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Prints, for each key that is not linearizable, the end of the shortest
/// failing prefix of its history.
#[cfg(madsim)]
fn explain_linearizability(history: &fencelock_sim::history::History) {
    use fencelock_sim::check::linear::{
        check_key, ops_of_key, shortest_failing_prefix, KeyResult, Windows,
    };
    let keys: std::collections::BTreeSet<_> = history.ops.iter().filter_map(|o| o.key()).collect();
    let w = Windows {
        behind: history.clock_behind,
        ahead: history.clock_ahead,
        graces: history.graces.clone(),
    };
    for key in keys {
        if !matches!(
            check_key(key, &ops_of_key(history, key), &w, 200_000),
            KeyResult::Violation(_)
        ) {
            continue;
        }
        let prefix = shortest_failing_prefix(history, key, 200_000);
        println!(
            "\n{key}: the shortest failing prefix has {} operations; its last ones:",
            prefix.len()
        );
        for op in prefix.iter().rev().take(12).rev() {
            println!(
                "  client {} [{}..{}] {:?} -> {:?}",
                op.client,
                op.invoke,
                op.complete.map_or("?".into(), |c| c.to_string()),
                op.call,
                op.ret
            );
        }
        println!(
            "  (clock offsets: behind {} ms, ahead {} ms; graces at {:?})",
            history.clock_behind, history.clock_ahead, history.graces
        );
    }
}
