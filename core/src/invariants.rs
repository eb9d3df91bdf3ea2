//! The invariants of `SEMANTICS.md`, checked over the whole table.
//!
//! Used after every step by the property tests and the fuzzer, and by
//! [`Table::restore`] to refuse corrupt snapshots. O(n log n); not for hot paths.

use crate::lock::LockState;
use crate::session::sorted;
use crate::table::{Due, Table};

impl Table {
    /// Checks every structural invariant; the error says which and where.
    pub fn check_invariants(&self) -> Result<(), String> {
        let now = self.now;
        let mut expected_deadlines = 0usize;
        let mut keys: Vec<_> = self.locks.keys().collect();
        keys.sort();
        for key in keys {
            let Some(lock) = self.locks.get(key) else {
                continue;
            };
            check_lock_shape(lock).map_err(|e| format!("lock {key}: {e}"))?;
            if lock.last_token > self.last_token {
                return Err(format!(
                    "lock {key}: last token {} is above the table's {}",
                    lock.last_token, self.last_token
                ));
            }
            for (&token, hold) in &lock.holders {
                if token == 0 || token > lock.last_token {
                    return Err(format!("lock {key}: hold token {token} was never issued"));
                }
                let Some(s) = self.sessions.get(&hold.session) else {
                    return Err(format!(
                        "lock {key}: held by missing session {}",
                        hold.session
                    ));
                };
                if s.holds.get(key) != Some(&token) {
                    return Err(format!(
                        "lock {key}: session {} does not index its hold",
                        hold.session
                    ));
                }
                if s.waits.contains_key(key) {
                    return Err(format!(
                        "lock {key}: session {} both holds and waits",
                        hold.session
                    ));
                }
                if hold.expires_at.is_some() != lock.ttl_ms.is_some() {
                    return Err(format!(
                        "lock {key}: hold {token} lease does not match the lock's ttl"
                    ));
                }
                if let Some(at) = hold.expires_at {
                    if at <= now {
                        return Err(format!(
                            "lock {key}: hold {token} outlived its lease ({at} <= now {now})"
                        ));
                    }
                    if !self.deadlines.contains(&(
                        at,
                        Due::Lease {
                            key: key.clone(),
                            token,
                        },
                    )) {
                        return Err(format!(
                            "lock {key}: hold {token} lease is not in the deadline index"
                        ));
                    }
                    expected_deadlines += 1;
                }
                if hold.granted_at > now {
                    return Err(format!("lock {key}: hold {token} granted in the future"));
                }
            }
            for (&seq, w) in &lock.queue {
                if seq >= lock.next_seq {
                    return Err(format!("lock {key}: waiter seq {seq} not below next_seq"));
                }
                let Some(s) = self.sessions.get(&w.session) else {
                    return Err(format!(
                        "lock {key}: awaited by missing session {}",
                        w.session
                    ));
                };
                if s.waits.get(key) != Some(&seq) {
                    return Err(format!(
                        "lock {key}: session {} does not index its wait",
                        w.session
                    ));
                }
                if let Some(at) = w.deadline {
                    if at <= now {
                        return Err(format!(
                            "lock {key}: waiter {} outlived its deadline",
                            w.session
                        ));
                    }
                    if !self.deadlines.contains(&(
                        at,
                        Due::Wait {
                            key: key.clone(),
                            seq,
                        },
                    )) {
                        return Err(format!(
                            "lock {key}: wait of {} is not in the deadline index",
                            w.session
                        ));
                    }
                    expected_deadlines += 1;
                }
            }
            if lock.queue.len() as u64 > self.limits.max_waiters_per_lock {
                return Err(format!("lock {key}: more waiters than the limit"));
            }
            if lock.ended.len() as u64 > self.limits.max_ended_tokens_per_lock {
                return Err(format!("lock {key}: ended-token memory over its bound"));
            }
        }
        for (id, s) in &self.sessions {
            if s.expires_at <= now {
                return Err(format!("session {id} outlived its ttl"));
            }
            if !self.deadlines.contains(&(s.expires_at, Due::Session(*id))) {
                return Err(format!("session {id} is not in the deadline index"));
            }
            expected_deadlines += 1;
            for (key, token) in sorted(&s.holds) {
                let held = self.locks.get(key).and_then(|l| l.holders.get(&token));
                if held.is_none_or(|h| h.session != *id) {
                    return Err(format!(
                        "session {id} indexes a hold of {key} that does not exist"
                    ));
                }
            }
            for (key, seq) in sorted(&s.waits) {
                let queued = self.locks.get(key).and_then(|l| l.queue.get(&seq));
                if queued.is_none_or(|w| w.session != *id) {
                    return Err(format!(
                        "session {id} indexes a wait for {key} that does not exist"
                    ));
                }
            }
            if s.requests.results.len() as u64 > self.limits.max_remembered_requests {
                return Err(format!("session {id}: request memory over its bound"));
            }
            if s.lock_count() > self.limits.max_locks_per_session {
                return Err(format!("session {id}: more locks than the limit"));
            }
        }
        let remembered = &self.sessionless;
        if remembered.order.len() != remembered.results.len()
            || remembered.order.len() > crate::SESSIONLESS_REQUEST_MEMORY
            || remembered
                .order
                .iter()
                .any(|id| !remembered.results.contains_key(id))
        {
            return Err("session-less request memory is inconsistent or over its bound".into());
        }
        if self.deadlines.len() != expected_deadlines {
            return Err(format!(
                "deadline index has {} entries, expected {expected_deadlines}",
                self.deadlines.len()
            ));
        }
        if self.locks.len() as u64 > self.limits.max_locks {
            return Err("more locks than the limit".into());
        }
        if self.sessions.len() as u64 > self.limits.max_sessions {
            return Err("more sessions than the limit".into());
        }
        Ok(())
    }
}

/// Exclusion, mode/kind agreement and no lost wake-up for one lock.
fn check_lock_shape(lock: &LockState) -> Result<(), String> {
    for h in lock.holders.values() {
        if h.mode.kind() != lock.kind {
            return Err(format!("{} hold on a {} lock", h.mode, lock.kind));
        }
        if !h.mode.is_shared() && lock.holders.len() > 1 {
            return Err(format!(
                "exclusion broken: {} holders with a {} hold",
                lock.holders.len(),
                h.mode
            ));
        }
    }
    for w in lock.queue.values() {
        if w.mode.kind() != lock.kind {
            return Err(format!("{} waiter on a {} lock", w.mode, lock.kind));
        }
    }
    if let Some(head) = lock.queue.values().next() {
        if lock.compatible(head.mode) {
            return Err(format!(
                "lost wake-up: head waiter {} ({}) is compatible with the holders",
                head.session, head.mode
            ));
        }
    }
    Ok(())
}
