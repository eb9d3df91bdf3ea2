//! Model-based property test: random command sequences run against the core
//! `Table` and a deliberately simple reference model, comparing every
//! response, every event and every read, and checking the invariants after
//! every step. Plus the proof that this checker has teeth: planted bugs in the
//! model are caught, and corrupted states are refused by `check_invariants`.

mod common;

use common::check::run_case;
use common::model::Bug;
use common::ops::case;
use proptest::prelude::*;
use proptest::test_runner::{RngAlgorithm, TestError, TestRng, TestRunner};
use std::cell::Cell;

/// Steps per case: 60, or `MODEL_STEPS` for a longer soak
/// (`PROPTEST_CASES` sets the number of cases).
fn max_steps() -> usize {
    std::env::var("MODEL_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

proptest! {
    #![proptest_config(ProptestConfig {
        // 256 cases unless PROPTEST_CASES says otherwise.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn core_matches_reference_model(case in case(max_steps())) {
        if let Err(e) = run_case(&case, None) {
            return Err(TestCaseError::fail(e));
        }
    }
}

/// A runner with a fixed seed, so "caught after N cases" is reproducible.
fn seeded_runner(cases: u32) -> TestRunner {
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 300,
        ..ProptestConfig::default()
    };
    TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
}

/// Runs the checker with `bug` planted for up to `cases` cases; returns how
/// many cases it took to fail and the shrunk failure, or `None` if it passed.
fn hunt(bug: Option<Bug>, cases: u32) -> Option<(u32, usize, String)> {
    let ran = Cell::new(0u32);
    let first_failure = Cell::new(None);
    let result = seeded_runner(cases).run(&case(60), |case| {
        ran.set(ran.get() + 1);
        run_case(&case, bug).map_err(|e| {
            if first_failure.get().is_none() {
                first_failure.set(Some(ran.get()));
            }
            TestCaseError::fail(e)
        })
    });
    match result {
        Ok(()) => None,
        Err(TestError::Fail(why, minimal)) => Some((
            first_failure.get().unwrap_or(0),
            minimal.steps.len(),
            why.to_string(),
        )),
        Err(other) => panic!("runner aborted: {other}"),
    }
}

/// Each planted bug must make the checker fail within the budget, and the
/// very same seeded cases must pass on the unmodified model.
#[test]
fn checker_catches_every_planted_bug_and_passes_without_one() {
    const BUDGET: u32 = 2_000;
    let mut needed = 0;
    for bug in Bug::ALL {
        let Some((after, steps, why)) = hunt(Some(bug), BUDGET) else {
            panic!("planted bug {bug:?} survived {BUDGET} cases: the checker is too weak");
        };
        eprintln!("{bug:?}: caught after {after} cases; shrunk to {steps} steps\n  {why}");
        needed = needed.max(after);
    }
    // A seeded runner generates the same cases whatever the model does.
    assert_eq!(hunt(None, needed).map(|(_, _, why)| why), None);
}

/// The generator is only useful if it reaches every outcome: tally what the
/// seeded cases produce and require every response, error and event kind.
#[test]
fn generated_cases_reach_every_outcome() {
    use common::ops::{Action, Driver};
    use fencelock_core::{Event, Table};
    use proptest::strategy::ValueTree;
    use std::collections::BTreeSet;

    let mut runner = seeded_runner(256);
    let mut seen = BTreeSet::new();
    for _ in 0..256 {
        let case = case(60).new_tree(&mut runner).unwrap().current();
        let mut table = Table::new(case.limits.clone());
        let mut driver = Driver::new(&case);
        for step in &case.steps {
            let Action::Apply { now, rid, cmd } = driver.next(step, &table) else {
                continue;
            };
            let mut events = Vec::new();
            let name = match table.apply_request(now, rid, &cmd, &mut events) {
                Ok(r) => format!("{r:?}"),
                Err(e) => format!("{e:?}"),
            };
            seen.insert(name.split([' ', '(', '{']).next().unwrap().to_string());
            for e in events {
                seen.insert(match e {
                    Event::Granted { .. } => "event Granted".into(),
                    Event::WaitEnded { reason, .. } => format!("event WaitEnded {reason:?}"),
                    Event::HoldLost { reason, .. } => format!("event HoldLost {reason:?}"),
                    Event::SessionExpired { .. } => "event SessionExpired".into(),
                });
            }
        }
    }
    let expected = [
        "SessionOpened",
        "KeptAlive",
        "SessionClosed",
        "LockCreated",
        "Granted",
        "Queued",
        "WaitCancelled",
        "Released",
        "Extended",
        "ForceReleased",
        "Destroyed",
        "Ticked",
        "InvalidArgument",
        "NotFound",
        "SessionNotFound",
        "AlreadyExists",
        "AlreadyHeld",
        "AlreadyWaiting",
        "WouldBlock",
        "NotHolder",
        "Stolen",
        "Expired",
        "ResourceExhausted",
        "event Granted",
        "event SessionExpired",
        "event WaitEnded TimedOut",
        "event WaitEnded SessionEnded",
        "event WaitEnded Destroyed",
        "event HoldLost LeaseExpired",
        "event HoldLost SessionEnded",
        "event HoldLost Stolen",
        "event HoldLost ForceReleased",
        "event HoldLost Destroyed",
    ];
    let missing: Vec<_> = expected.iter().filter(|e| !seen.contains(**e)).collect();
    assert!(missing.is_empty(), "never generated: {missing:?}");
}
