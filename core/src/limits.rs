//! Configurable limits. Reaching one is `ResourceExhausted`, never unbounded growth.

use serde::{Deserialize, Serialize};

/// Limits of one table. They are part of the replicated state (snapshots carry
/// them), so every replica enforces the same ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Locks in the table (explicitly created or created by `acquire`).
    pub max_locks: u64,
    /// Open sessions.
    pub max_sessions: u64,
    /// Queued waiters of one lock.
    pub max_waiters_per_lock: u64,
    /// Holds plus waits of one session.
    pub max_locks_per_session: u64,
    /// Request ids remembered per session for idempotent retries. Older ids
    /// are forgotten; a retry of a forgotten id is rejected, never re-applied.
    pub max_remembered_requests: u64,
    /// Longest session TTL, lock TTL (lease) and wait timeout. A longer one is
    /// `InvalidArgument`; to wait as long as the session lives, pass no timeout.
    pub max_ttl_ms: u64,
    /// Ended tokens remembered per lock, so a late `release`/`validate` says
    /// `Stolen` or `Expired` rather than just `NotHolder`.
    pub max_ended_tokens_per_lock: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_locks: 16_000_000,
            max_sessions: 1_000_000,
            max_waiters_per_lock: 100_000,
            max_locks_per_session: 100_000,
            max_remembered_requests: 64,
            max_ttl_ms: 7 * 24 * 3600 * 1000,
            max_ended_tokens_per_lock: 8,
        }
    }
}
