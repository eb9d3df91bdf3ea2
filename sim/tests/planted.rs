//! Every planted bug must be caught by some seed within a bounded budget,
//! and by the checker that should see it. Runs only in the simulator build
//! (`RUSTFLAGS="--cfg madsim --cfg tokio_unstable"`; see the README).
#![cfg(madsim)]

use fencelock_sim::bugs::Bug;
use fencelock_sim::check::Checker;
use fencelock_sim::world::{run_seed, RunOptions};

/// Seeds tried per bug before the test gives up.
const BUDGET: u64 = 40;
/// `ack-before-fsync` needs a whole-cluster power loss mid-write after a
/// client saw the lost entry. With the nemesis as drawn that was rare and
/// hung on the schedule (caught at seed 1, 13, 34 and 19 on four builds, and
/// in none of 1..=80 on one), so its test aims the nemesis at durability:
/// kills always on, 90% of them whole-cluster power losses.
const ACK_BUDGET: u64 = 40;
const ACK_POWER_LOSS: f64 = 0.9;

/// Runs seeds 1.. with `bug` planted until one is caught by one of
/// `expected`; returns the seed and the checkers that fired.
fn first_catch(
    bug: Bug,
    expected: &[Checker],
    budget: u64,
    power_loss: Option<f64>,
) -> Option<(u64, Vec<Checker>)> {
    let options = RunOptions {
        bugs: vec![bug],
        power_loss,
        ..RunOptions::default()
    };
    for seed in 1..=budget {
        let o = options.clone();
        let outcome = std::thread::spawn(move || run_seed(seed, &o))
            .join()
            .expect("the simulation does not panic");
        let caught = outcome
            .report
            .violations
            .iter()
            .any(|v| expected.contains(&v.checker));
        if caught {
            let mut checkers: Vec<Checker> = outcome
                .report
                .violations
                .iter()
                .map(|v| v.checker)
                .collect();
            checkers.sort();
            checkers.dedup();
            println!(
                "{bug}: caught by seed {seed} (after {seed} seeds) by {checkers:?}: {}",
                outcome.report.violations[0]
            );
            // The control: the same seed without the bug passes.
            let control = RunOptions {
                power_loss,
                ..RunOptions::default()
            };
            let clean = std::thread::spawn(move || run_seed(seed, &control))
                .join()
                .expect("the simulation does not panic");
            assert!(
                clean.report.ok(),
                "seed {seed} fails without {bug} too: {:?}",
                clean.report.violations
            );
            return Some((seed, checkers));
        }
    }
    None
}

fn assert_caught(bug: Bug, expected: &[Checker]) {
    assert_caught_within(bug, expected, BUDGET, None);
}

fn assert_caught_within(bug: Bug, expected: &[Checker], budget: u64, power_loss: Option<f64>) {
    assert!(
        first_catch(bug, expected, budget, power_loss).is_some(),
        "planted bug {bug} was not caught by {expected:?} in any of seeds 1..={budget}"
    );
}

#[test]
fn stale_follower_reads_are_caught() {
    assert_caught(Bug::StaleRead, &[Checker::Linearizability]);
}

#[test]
fn a_steal_that_keeps_the_token_is_caught() {
    assert_caught(
        Bug::StealKeepsToken,
        &[Checker::Fencing, Checker::Linearizability],
    );
}

#[test]
fn a_lost_wakeup_is_caught() {
    assert_caught(Bug::LostWakeup, &[Checker::Liveness]);
}

#[test]
fn applying_at_the_local_clock_is_caught() {
    assert_caught(
        Bug::LocalClockApply,
        &[Checker::Liveness, Checker::Linearizability],
    );
}

/// Caught when the whole cluster loses power at a random instant of a write
/// (the nemesis waits for unsynced bytes on a disk, not for the bug), after
/// a client saw the effect of an entry no disk had synced.
#[test]
fn acknowledging_before_fsync_is_caught() {
    assert_caught_within(
        Bug::AckBeforeFsync,
        &[
            Checker::Fencing,
            Checker::Linearizability,
            Checker::Liveness,
        ],
        ACK_BUDGET,
        Some(ACK_POWER_LOSS),
    );
}

#[test]
fn granting_the_newest_waiter_first_is_caught() {
    assert_caught(Bug::NewestWaiterFirst, &[Checker::Fifo]);
}
