//! The comparison checker: runs one case against the core `Table` and the
//! reference [`Model`] side by side and fails at the first difference in a
//! response, an event, a read (`describe`, `describe_session`, `validate`,
//! `next_deadline`) or an invariant.

use super::model::{Bug, Model, Outcome};
use super::ops::{keys, Action, Case, Driver};
use fencelock_core::{FencingToken, LockError, SessionId, Table};

/// Error messages are the core's business; the field an `InvalidArgument`
/// names is part of the contract, its wording is not.
fn normalize(out: Outcome) -> Outcome {
    out.map_err(|e| match e {
        LockError::InvalidArgument { field, .. } => LockError::InvalidArgument {
            field,
            reason: String::new(),
        },
        other => other,
    })
}

fn same<T: PartialEq + std::fmt::Debug>(what: &str, core: T, model: T) -> Result<(), String> {
    if core == model {
        Ok(())
    } else {
        Err(format!(
            "{what} differs:\n  core:  {core:?}\n  model: {model:?}"
        ))
    }
}

/// Runs `case` on a fresh table and a fresh model (planting `bug` in the
/// model); `Err` describes the first step where they disagree.
pub fn run_case(case: &Case, bug: Option<Bug>) -> Result<(), String> {
    let mut table = Table::new(case.limits.clone());
    let mut model = Model::new(case.limits.clone(), bug);
    let mut driver = Driver::new(case);
    for (i, step) in case.steps.iter().enumerate() {
        let action = driver.next(step, &table);
        compare_step(&mut table, &mut model, &action)
            .map_err(|e| format!("step {i} {action:?}: {e}"))?;
        table
            .check_invariants()
            .map_err(|e| format!("step {i} {action:?}: invariant broken: {e}"))?;
        compare_state(&table, &model).map_err(|e| format!("after step {i} {action:?}: {e}"))?;
    }
    Ok(())
}

fn compare_step(table: &mut Table, model: &mut Model, action: &Action) -> Result<(), String> {
    match action {
        Action::Apply { now, rid, cmd } => {
            let (mut core_events, mut model_events) = (Vec::new(), Vec::new());
            let core = table.apply_request(*now, *rid, cmd, &mut core_events);
            let expected = model.apply_request(*now, *rid, cmd, &mut model_events);
            same("response", normalize(core), normalize(expected))?;
            same("events", core_events, model_events)
        }
        Action::Validate { now, key, token } => same(
            "validate",
            table.validate(*now, key, *token),
            model.validate(*now, key, *token),
        ),
        Action::Grace { now } => same("grace", table.grant_grace(*now), model.grant_grace(*now)),
    }
}

/// Every read the core offers, over every key, session and recent token.
fn compare_state(table: &Table, model: &Model) -> Result<(), String> {
    same("now", table.now(), model.now())?;
    same("last token", table.last_token().0, model.last_token())?;
    same(
        "next deadline",
        table.next_deadline(),
        model.next_deadline(),
    )?;
    same("lock count", table.lock_count(), model.lock_count())?;
    same(
        "session count",
        table.session_count(),
        model.session_count(),
    )?;
    for key in keys() {
        same("describe", table.describe(&key), model.describe(&key))?;
        let last = table.last_token().0;
        for token in last.saturating_sub(6)..=last {
            for ahead in [0, 40] {
                let now = table.now() + ahead;
                same(
                    "validate",
                    table.validate(now, &key, FencingToken(token)),
                    model.validate(now, &key, FencingToken(token)),
                )?;
            }
        }
    }
    for id in 0..=model.last_session() + 1 {
        same(
            "describe_session",
            table.describe_session(SessionId(id)),
            model.describe_session(SessionId(id)),
        )?;
    }
    Ok(())
}
