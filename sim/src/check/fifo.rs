//! Checker 3: FIFO among waiters that were granted.
//!
//! If waiter A's `acquire` was answered `Queued` before waiter B's `acquire`
//! was even sent, A is ahead of B in the queue. The core grants from the head
//! of the queue only (a reader batch too is granted head first), so if both
//! were granted from the queue, A's token must be lower than B's. Waits that
//! timed out, were cancelled or ended otherwise are left out: they left the
//! queue and impose no order.

use super::{Checker, Violation};
use crate::history::{WaitRecord, WaitResult};
use fencelock_core::LockKey;
use std::collections::BTreeMap;

/// Checks grant order against queue order, per key.
pub fn check(waits: &[WaitRecord]) -> Vec<Violation> {
    let mut by_key: BTreeMap<&LockKey, Vec<(&WaitRecord, u64)>> = BTreeMap::new();
    for w in waits {
        if let Some((_, WaitResult::Granted { token, .. })) = w.ended {
            by_key.entry(&w.key).or_default().push((w, token.0));
        }
    }
    let mut out = Vec::new();
    for (key, mut granted) in by_key {
        // Sorted by when the queueing was acknowledged; then every earlier
        // one whose ack precedes a later one's send must hold a lower token.
        granted.sort_by_key(|(w, _)| (w.queued_at, w.invoked_at));
        for (i, (a, ta)) in granted.iter().enumerate() {
            for (b, tb) in &granted[i + 1..] {
                if a.queued_at < b.invoked_at && ta > tb {
                    out.push(Violation::new(
                        Checker::Fifo,
                        format!(
                            "on {key}: client {} was queued at {} ms, before client {} asked at \
                             {} ms, yet got token #{ta} after #{tb}: a later waiter overtook",
                            a.client, a.queued_at, b.client, b.invoked_at
                        ),
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fencelock_core::{FencingToken, Mode, SessionId, WaitEnd};

    fn wait(client: u32, invoked: u64, queued: u64, end: Option<WaitResult>) -> WaitRecord {
        WaitRecord {
            client,
            key: LockKey::new("sim", "k").unwrap(),
            session: SessionId(client as u64),
            mode: Mode::Exclusive,
            invoked_at: invoked,
            queued_at: queued,
            deadline: None,
            ended: end.map(|e| (queued + 100, e)),
            cancelled: false,
        }
    }

    fn granted(token: u64) -> Option<WaitResult> {
        Some(WaitResult::Granted {
            token: FencingToken(token),
            mode: Mode::Exclusive,
            granted_at: 0,
        })
    }

    #[test]
    fn grants_in_queue_order_pass() {
        let waits = [
            wait(1, 0, 5, granted(2)),
            wait(2, 6, 9, granted(3)),
            wait(3, 10, 12, granted(7)),
        ];
        assert!(check(&waits).is_empty());
    }

    #[test]
    fn an_overtaking_waiter_is_reported() {
        let waits = [wait(1, 0, 5, granted(9)), wait(2, 6, 9, granted(3))];
        let v = check(&waits);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].checker, Checker::Fifo);
    }

    #[test]
    fn concurrent_arrivals_may_be_granted_in_either_order() {
        // Client 2 asked before client 1's queueing was acknowledged.
        let waits = [wait(1, 0, 5, granted(9)), wait(2, 4, 9, granted(3))];
        assert!(check(&waits).is_empty());
    }

    #[test]
    fn waits_that_ended_without_a_grant_impose_no_order() {
        let waits = [
            wait(1, 0, 5, Some(WaitResult::Ended(WaitEnd::TimedOut))),
            wait(2, 6, 9, granted(3)),
            wait(3, 0, 1, None),
        ];
        assert!(check(&waits).is_empty());
    }
}
