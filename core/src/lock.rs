//! One lock's state: its holders, its FIFO queue, its token history.
//!
//! Invariants (checked by `Table::check_invariants` after every step in the
//! property tests and the fuzzer):
//! - Exclusion: if any holder is in an exclusive mode (`Exclusive`/`Write`),
//!   it is the only holder.
//! - No lost wake-up: if the queue is non-empty, its head is *not* compatible
//!   with the holders (otherwise it would have been granted in the same
//!   transition that made it compatible).
//! - Holders are keyed by token and the queue by a per-lock arrival sequence,
//!   so "grant order" and "queue order" are simply map order.

use crate::command::{HoldEnd, HolderInfo, WaiterInfo};
use crate::error::LockError;
use crate::key::LockKey;
use crate::types::{FencingToken, LockKind, Millis, Mode, RequestId, SessionId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod holders;
pub(crate) use holders::Holders;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Hold {
    pub session: SessionId,
    pub mode: Mode,
    pub granted_at: Millis,
    pub expires_at: Option<Millis>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Waiter {
    pub session: SessionId,
    pub mode: Mode,
    pub since: Millis,
    pub deadline: Option<Millis>,
    pub request_id: Option<RequestId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LockState {
    pub kind: LockKind,
    pub ttl_ms: Option<u64>,
    /// Current holds by token; token order is grant order.
    pub holders: Holders,
    /// Waiters by arrival sequence; map order is queue order.
    pub queue: BTreeMap<u64, Waiter>,
    /// Next arrival sequence number.
    pub next_seq: u64,
    /// Last token granted for this lock (0: none yet).
    pub last_token: u64,
    /// How recent holds ended (bounded), so late users of a token learn
    /// `Stolen`/`Expired` instead of a bare `NotHolder`.
    pub ended: BTreeMap<u64, HoldEnd>,
}

impl LockState {
    pub fn new(kind: LockKind, ttl_ms: Option<u64>) -> Self {
        LockState {
            kind,
            ttl_ms,
            holders: Holders::default(),
            queue: BTreeMap::new(),
            next_seq: 0,
            last_token: 0,
            ended: BTreeMap::new(),
        }
    }

    /// Can a request in `mode` hold the lock together with the current holders?
    /// With shared holders all holders are `Read`, so looking at one suffices.
    pub fn compatible(&self, mode: Mode) -> bool {
        match self.holders.values().next() {
            None => true,
            Some(h) => mode.is_shared() && h.mode.is_shared(),
        }
    }

    /// Grantable right now without overtaking anyone (FIFO).
    pub fn grantable_on_arrival(&self, mode: Mode) -> bool {
        self.queue.is_empty() && self.compatible(mode)
    }

    /// Records why `token` ended, keeping only the newest `max` records.
    pub fn record_end(&mut self, token: u64, why: HoldEnd, max: u64) {
        if max == 0 {
            return;
        }
        self.ended.insert(token, why);
        while self.ended.len() as u64 > max {
            self.ended.pop_first();
        }
    }

    /// `token`'s hold, if `session` owns it; otherwise why not.
    pub fn owned_hold(
        &self,
        key: &LockKey,
        session: SessionId,
        token: FencingToken,
    ) -> Result<&Hold, LockError> {
        match self.holders.get(&token.0) {
            Some(h) if h.session == session => Ok(h),
            Some(_) => Err(LockError::NotHolder {
                key: key.clone(),
                token,
            }),
            None => Err(self.ended_error(key, token)),
        }
    }

    /// The error for using `token` when it is not a current hold.
    pub fn ended_error(&self, key: &LockKey, token: FencingToken) -> LockError {
        let key = key.clone();
        match self.ended.get(&token.0) {
            Some(HoldEnd::Stolen) => LockError::Stolen { key, token },
            Some(HoldEnd::LeaseExpired | HoldEnd::SessionEnded) => {
                LockError::Expired { key, token }
            }
            Some(HoldEnd::ForceReleased | HoldEnd::Destroyed) | None => {
                LockError::NotHolder { key, token }
            }
        }
    }

    pub fn holder_infos(&self) -> Vec<HolderInfo> {
        self.holders
            .iter()
            .map(|(&token, h)| HolderInfo {
                session: h.session,
                mode: h.mode,
                token: FencingToken(token),
                granted_at: h.granted_at,
                expires_at: h.expires_at,
            })
            .collect()
    }

    pub fn waiter_infos(&self) -> Vec<WaiterInfo> {
        self.queue
            .values()
            .map(|w| WaiterInfo {
                session: w.session,
                mode: w.mode,
                since: w.since,
                deadline: w.deadline,
                request_id: w.request_id,
            })
            .collect()
    }
}
