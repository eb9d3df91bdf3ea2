//! A session's state: its expiry, an index of its holds and waits (so ending a
//! session costs O(k log n) for its k locks, never a scan), and its bounded
//! memory of request results for idempotent retries.

use crate::command::{Command, Response};
use crate::error::LockError;
use crate::key::LockKey;
use crate::types::{Millis, RequestId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

mod index;
pub(crate) use index::KeyIndex;

pub(crate) type Outcome = Result<Response, LockError>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Session {
    pub ttl_ms: u64,
    pub expires_at: Millis,
    /// Held lock → token.
    pub holds: KeyIndex,
    /// Awaited lock → arrival sequence in that lock's queue.
    pub waits: KeyIndex,
    pub requests: RequestMemory,
}

impl Session {
    pub fn lock_count(&self) -> u64 {
        (self.holds.len() + self.waits.len()) as u64
    }
}

/// The entries of an index in key order (it has none of its own).
pub(crate) fn sorted(index: &KeyIndex) -> Vec<(&LockKey, u64)> {
    let mut entries: Vec<_> = index.iter().map(|(k, v)| (k, *v)).collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    entries
}

/// Remembers the newest `max` requests of one session with their results.
/// Ids below `forgotten_below` were evicted: a retry of one is rejected rather
/// than applied a second time. The command is kept next to its result so that
/// an id reused for a *different* command is an error, not a wrong answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RequestMemory {
    pub results: BTreeMap<RequestId, (Command, Outcome)>,
    pub forgotten_below: u64,
}

impl RequestMemory {
    /// A remembered result, or an error if the id is too old to know.
    pub fn lookup(&self, id: RequestId, command: &Command) -> Option<Outcome> {
        if let Some((first, outcome)) = self.results.get(&id) {
            if first != command {
                return Some(Err(LockError::invalid(
                    "request_id",
                    format!(
                        "{} was already used by this session for a different command ({first:?}); \
                         use a new id for every new request",
                        id.0
                    ),
                )));
            }
            return Some(outcome.clone());
        }
        if id.0 < self.forgotten_below {
            return Some(Err(LockError::invalid(
                "request_id",
                format!(
                    "{} is older than the oldest request this session still remembers ({}); \
                     use increasing request ids and do not retry very old requests",
                    id.0, self.forgotten_below
                ),
            )));
        }
        None
    }

    pub fn remember(&mut self, id: RequestId, command: &Command, outcome: Outcome, max: u64) {
        if max == 0 {
            self.forgotten_below = self.forgotten_below.max(id.0.saturating_add(1));
            return;
        }
        self.results.insert(id, (command.clone(), outcome));
        while self.results.len() as u64 > max {
            if let Some((old, _)) = self.results.pop_first() {
                self.forgotten_below = self.forgotten_below.max(old.0.saturating_add(1));
            }
        }
    }
}

/// How many session-less requests a table remembers.
pub const SESSIONLESS_REQUEST_MEMORY: usize = 4096;

/// Remembers the newest requests that name no session (`OpenSession`,
/// `CreateLock`, `ForceRelease`, `Destroy`), so a retry after an unknown
/// outcome (a Raft leader change) does not open a second session, or
/// force-release the *next* holder, or destroy a re-created lock. These ids
/// share one space across all clients, so clients pick them at random (64
/// bits). The oldest are forgotten first; a retry of a forgotten id is
/// applied again (there is no order to tell it from a new one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionlessMemory {
    pub order: VecDeque<RequestId>,
    pub results: BTreeMap<RequestId, (Command, Outcome)>,
}

impl SessionlessMemory {
    pub fn lookup(&self, id: RequestId, command: &Command) -> Option<Outcome> {
        let (first, outcome) = self.results.get(&id)?;
        if first != command {
            return Some(Err(LockError::invalid(
                "request_id",
                format!(
                    "{} was already used for a different command ({first:?}); \
                     pick a fresh random id for every session-less request",
                    id.0
                ),
            )));
        }
        Some(outcome.clone())
    }

    pub fn remember(&mut self, id: RequestId, command: &Command, outcome: Outcome) {
        if self
            .results
            .insert(id, (command.clone(), outcome))
            .is_none()
        {
            self.order.push_back(id);
        }
        while self.order.len() > SESSIONLESS_REQUEST_MEMORY {
            if let Some(old) = self.order.pop_front() {
                self.results.remove(&old);
            }
        }
    }
}
