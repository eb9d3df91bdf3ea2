//! Checker 4: liveness after healing, and replica agreement.
//!
//! Once the nemesis has healed every fault, the cluster must finish what it
//! owes: every queued wait ends (granted, or timed out at its deadline)
//! within a bound, and every replica, having applied the same log, holds a
//! byte-identical lock table (the core's canonical snapshot).

use super::{Checker, Violation};
use crate::history::History;
use fencelock_core::Millis;

/// Checks wait ends against `bound_ms` after healing, and replica agreement.
pub fn check(history: &History, bound_ms: Millis) -> Vec<Violation> {
    let mut out = Vec::new();
    if let Some(healed) = history.healed_at {
        for w in history.waits.iter().filter(|w| !w.cancelled) {
            let due = healed.max(w.deadline.unwrap_or(0)) + bound_ms;
            match w.ended {
                Some((at, _)) if at <= due => {}
                Some((at, end)) => out.push(Violation::new(
                    Checker::Liveness,
                    format!(
                        "client {}'s wait on {} (queued at {} ms) ended only at {at} ms with \
                         {end:?}; healed at {healed} ms, bound {bound_ms} ms",
                        w.client, w.key, w.queued_at
                    ),
                )),
                None => out.push(Violation::new(
                    Checker::Liveness,
                    format!(
                        "client {}'s wait on {} (queued at {} ms, deadline {:?}) never ended; \
                         healed at {healed} ms",
                        w.client, w.key, w.queued_at, w.deadline
                    ),
                )),
            }
        }
    }
    if let Some(first) = history.replicas.first() {
        for r in &history.replicas[1..] {
            if r.applied_index != first.applied_index {
                out.push(Violation::new(
                    Checker::Liveness,
                    format!(
                        "after healing, node {} applied up to {} but node {} up to {}",
                        first.node, first.applied_index, r.node, r.applied_index
                    ),
                ));
            } else if r.table != first.table {
                let at = first
                    .table
                    .iter()
                    .zip(&r.table)
                    .position(|(a, b)| a != b)
                    .unwrap_or(first.table.len().min(r.table.len()));
                out.push(Violation::new(
                    Checker::Liveness,
                    format!(
                        "nodes {} and {} applied the same {} entries but their lock tables \
                         differ (snapshots of {} and {} bytes, first difference at byte {at})",
                        first.node,
                        r.node,
                        r.applied_index,
                        first.table.len(),
                        r.table.len()
                    ),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{ReplicaState, WaitRecord, WaitResult};
    use fencelock_core::{FencingToken, LockKey, Mode, SessionId, WaitEnd};

    fn wait(deadline: Option<u64>, ended: Option<u64>) -> WaitRecord {
        WaitRecord {
            client: 1,
            key: LockKey::new("sim", "k").unwrap(),
            session: SessionId(1),
            mode: Mode::Exclusive,
            invoked_at: 0,
            queued_at: 1,
            deadline,
            ended: ended.map(|at| {
                (
                    at,
                    WaitResult::Granted {
                        token: FencingToken(1),
                        mode: Mode::Exclusive,
                        granted_at: 0,
                    },
                )
            }),
            cancelled: false,
        }
    }

    fn replica(node: u64, applied: u64, table: &[u8]) -> ReplicaState {
        ReplicaState {
            node,
            applied_index: applied,
            table: table.to_vec(),
        }
    }

    #[test]
    fn waits_ending_in_time_and_equal_replicas_pass() {
        let h = History {
            healed_at: Some(1_000),
            waits: vec![wait(None, Some(1_500)), wait(Some(9_000), Some(9_100))],
            replicas: vec![replica(1, 7, b"abc"), replica(2, 7, b"abc")],
            ..History::default()
        };
        assert!(check(&h, 1_000).is_empty());
    }

    #[test]
    fn a_wait_that_never_ends_is_reported() {
        let h = History {
            healed_at: Some(1_000),
            waits: vec![wait(None, None)],
            ..History::default()
        };
        let v = check(&h, 1_000);
        assert_eq!(v.len(), 1);
        assert!(v[0].message.contains("never ended"), "{}", v[0].message);
    }

    #[test]
    fn a_late_end_is_reported_but_a_cancelled_wait_is_not() {
        let mut cancelled = wait(None, None);
        cancelled.cancelled = true;
        let mut late = wait(None, Some(5_000));
        late.ended = Some((5_000, WaitResult::Ended(WaitEnd::TimedOut)));
        let h = History {
            healed_at: Some(1_000),
            waits: vec![late, cancelled],
            ..History::default()
        };
        assert_eq!(check(&h, 1_000).len(), 1);
    }

    #[test]
    fn diverged_replicas_are_reported() {
        let h = History {
            replicas: vec![
                replica(1, 7, b"abc"),
                replica(2, 7, b"abd"),
                replica(3, 6, b"abc"),
            ],
            ..History::default()
        };
        let v = check(&h, 1_000);
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v[0].message.contains("first difference at byte 2"));
        assert!(v[1].message.contains("applied up to"));
    }
}
