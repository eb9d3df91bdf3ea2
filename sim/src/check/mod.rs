//! The checkers. Each reads a [`History`] and returns the violations it
//! found, each naming its checker, so a failing seed says *which* property
//! broke.

pub mod fencing;
pub mod fifo;
pub mod linear;
pub mod liveness;

use crate::history::History;
use fencelock_core::Millis;
use std::fmt;

/// The four properties the simulator checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Checker {
    /// The fenced resource never accepted a stale token, and no two clients
    /// wrote under the same token.
    Fencing,
    /// Lock operations are linearizable against the core's model, per key.
    Linearizability,
    /// Waiters that were granted were granted in queue order.
    Fifo,
    /// After healing, every wait ends within a bound and replicas agree.
    Liveness,
}

impl fmt::Display for Checker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Checker::Fencing => "fencing",
            Checker::Linearizability => "linearizability",
            Checker::Fifo => "fifo",
            Checker::Liveness => "liveness",
        })
    }
}

/// One broken property, with what shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub checker: Checker,
    pub message: String,
}

impl Violation {
    pub fn new(checker: Checker, message: impl Into<String>) -> Self {
        Violation {
            checker,
            message: message.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.checker, self.message)
    }
}

/// Knobs of the checkers.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    /// After `healed_at`, every wait must have ended within this long (past
    /// its own deadline, if that is later).
    pub liveness_bound_ms: Millis,
    /// Search budget of the linearizability checker per key (model states).
    pub max_states_per_key: usize,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            liveness_bound_ms: 30_000,
            max_states_per_key: 200_000,
        }
    }
}

/// What the checkers concluded about one run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub violations: Vec<Violation>,
    /// Operations the linearizability checker verified.
    pub ops_checked: u64,
    /// Keys whose linearizability search ran out of budget (neither passed nor failed).
    pub inconclusive_keys: u64,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Runs every checker on `history`.
pub fn check_all(history: &History, config: &CheckConfig) -> Report {
    let mut report = Report::default();
    report.violations.extend(fencing::check(&history.accesses));
    let lin = linear::check(history, config.max_states_per_key);
    report.ops_checked = lin.ops_checked;
    report.inconclusive_keys = lin.inconclusive_keys;
    report.violations.extend(lin.violations);
    report.violations.extend(fifo::check(&history.waits));
    report
        .violations
        .extend(liveness::check(history, config.liveness_bound_ms));
    report
}
