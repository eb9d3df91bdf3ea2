//! Determinism: the same commands give the same results, events and snapshot
//! bytes on every replica; a restored snapshot continues exactly like the
//! original; and no byte string makes `restore_bytes` panic.

mod common;

use common::ops::{case, Action, Case, Driver};
use fencelock_core::{Event, HolderInfo, LockError, Response, Table};
use proptest::prelude::*;

/// What one action returned, whatever its kind.
#[derive(Debug, PartialEq)]
enum Seen {
    Outcome(Result<Response, LockError>),
    Validate(Result<HolderInfo, LockError>),
    Grace(u64),
}

fn perform(table: &mut Table, action: &Action, events: &mut Vec<Event>) -> Seen {
    match action {
        Action::Apply { now, rid, cmd } => {
            Seen::Outcome(table.apply_request(*now, *rid, cmd, events))
        }
        Action::Validate { now, key, token } => Seen::Validate(table.validate(*now, key, *token)),
        Action::Grace { now } => Seen::Grace(table.grant_grace(*now)),
    }
}

fn bytes(table: &Table) -> Vec<u8> {
    table.snapshot_bytes().expect("snapshot encodes")
}

/// Runs `steps` on both tables (each driven by its own driver), requiring
/// equal results, events, snapshot bytes and next deadline after every step.
fn run_in_lockstep(
    case: &Case,
    steps: std::ops::Range<usize>,
    (a, da): (&mut Table, &mut Driver),
    (b, db): (&mut Table, &mut Driver),
) -> Result<(), TestCaseError> {
    for i in steps {
        let step = &case.steps[i];
        let (action_a, action_b) = (da.next(step, a), db.next(step, b));
        prop_assert_eq!(format!("{action_a:?}"), format!("{action_b:?}"));
        let (mut ea, mut eb) = (Vec::new(), Vec::new());
        let seen_a = perform(a, &action_a, &mut ea);
        let seen_b = perform(b, &action_b, &mut eb);
        prop_assert_eq!(seen_a, seen_b, "step {}: {:?}", i, action_a);
        prop_assert_eq!(ea, eb, "step {}: {:?}", i, action_a);
        prop_assert_eq!(bytes(a), bytes(b), "step {}: {:?}", i, action_a);
        prop_assert_eq!(a.next_deadline(), b.next_deadline());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn same_commands_on_two_fresh_tables_give_equal_results_events_and_bytes(case in case(60)) {
        let (mut a, mut b) = (Table::new(case.limits.clone()), Table::new(case.limits.clone()));
        let (mut da, mut db) = (Driver::new(&case), Driver::new(&case));
        run_in_lockstep(&case, 0..case.steps.len(), (&mut a, &mut da), (&mut b, &mut db))?;
    }

    #[test]
    fn snapshot_restore_continue_equals_continuing_the_original(
        case in case(60),
        split in any::<prop::sample::Index>(),
    ) {
        let mut original = Table::new(case.limits.clone());
        let mut driver = Driver::new(&case);
        let at = split.index(case.steps.len() + 1);
        for step in &case.steps[..at] {
            let action = driver.next(step, &original);
            perform(&mut original, &action, &mut Vec::new());
        }
        let snapshot = bytes(&original);
        let mut restored = Table::restore_bytes(&snapshot)
            .map_err(|e| TestCaseError::fail(format!("restore of a real snapshot failed: {e}")))?;
        prop_assert_eq!(&bytes(&restored), &snapshot, "restore is not the identity");
        prop_assert_eq!(restored.next_deadline(), original.next_deadline());
        let mut driver_copy = driver.clone();
        run_in_lockstep(
            &case,
            at..case.steps.len(),
            (&mut original, &mut driver),
            (&mut restored, &mut driver_copy),
        )?;
    }

    #[test]
    fn random_bytes_never_make_restore_panic(data in prop::collection::vec(any::<u8>(), 0..600)) {
        match Table::restore_bytes(&data) {
            Ok(table) => prop_assert_eq!(table.check_invariants(), Ok(())),
            Err(LockError::InvalidArgument { field, .. }) => prop_assert_eq!(field, "snapshot"),
            Err(other) => prop_assert!(false, "unexpected error {:?}", other),
        }
    }

    /// Random bytes rarely get past the header; damaged real snapshots reach
    /// deep into the decoder and the invariant checks.
    #[test]
    fn damaged_real_snapshots_are_refused_or_valid(
        case in case(40),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..4),
    ) {
        let mut table = Table::new(case.limits.clone());
        let mut driver = Driver::new(&case);
        for step in &case.steps {
            let action = driver.next(step, &table);
            perform(&mut table, &action, &mut Vec::new());
        }
        let mut data = bytes(&table);
        for (at, byte, how) in edits {
            let i = at.index(data.len().max(1));
            match how {
                0 if !data.is_empty() => data[i] = byte,
                1 => data.insert(i.min(data.len()), byte),
                _ => data.truncate(i),
            }
        }
        match Table::restore_bytes(&data) {
            Ok(restored) => {
                prop_assert_eq!(restored.check_invariants(), Ok(()));
                let again = Table::restore_bytes(&bytes(&restored)).map(|t| bytes(&t));
                prop_assert_eq!(again, Ok(bytes(&restored)));
            }
            Err(LockError::InvalidArgument { field, .. }) => prop_assert_eq!(field, "snapshot"),
            Err(other) => prop_assert!(false, "unexpected error {:?}", other),
        }
    }
}
