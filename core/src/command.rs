//! Commands in, responses and events out.
//!
//! A [`Command`] is what a Raft log entry carries, what a Postgres transaction
//! applies, what the memory backend feeds in. Its [`Response`] goes to the
//! caller; [`Event`]s say what happened to *other* clients in the same
//! transition (waiters granted, waits ended, holds lost), so a driver can wake
//! exactly the right ones.

use crate::key::LockKey;
use crate::types::{FencingToken, LockKind, Millis, Mode, RequestId, SessionId};
use serde::{Deserialize, Serialize};

/// A mutating command. Every command is applied at a `now` given next to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Opens a session that lives `ttl_ms` after each keep-alive.
    OpenSession { ttl_ms: u64 },
    /// Pushes the session's expiry to `now + ttl`.
    KeepAlive { session: SessionId },
    /// Ends the session: releases its holds, cancels its waits.
    CloseSession { session: SessionId },
    /// Creates the lock, or returns the existing one if the kind matches.
    /// `ttl_ms` is the lease of every hold (none: holds live as long as their session).
    CreateLock {
        key: LockKey,
        kind: LockKind,
        ttl_ms: Option<u64>,
    },
    /// Acquires or queues. `timeout_ms`: `Some(0)` is try-lock, `Some(t)` waits
    /// at most `t`, `None` waits as long as the session lives.
    Acquire {
        key: LockKey,
        session: SessionId,
        mode: Mode,
        timeout_ms: Option<u64>,
    },
    /// Leaves the queue (a dropped or cancelled client wait).
    CancelWait { key: LockKey, session: SessionId },
    /// Releases a hold; only by its session, with its token.
    Release {
        key: LockKey,
        session: SessionId,
        token: FencingToken,
    },
    /// Renews a hold's lease to `now + ttl` of the lock.
    Extend {
        key: LockKey,
        session: SessionId,
        token: FencingToken,
    },
    /// Takes the lock exclusively at once, ahead of the queue, with a new token.
    Steal { key: LockKey, session: SessionId },
    /// Admin: removes every hold without an owner check; the queue moves on.
    ForceRelease { key: LockKey },
    /// Admin: removes the lock; its waiters end with `NotFound`.
    Destroy { key: LockKey },
    /// Processes expiries up to `now` and does nothing else.
    Tick,
}

impl Command {
    /// The session whose request-id memory deduplicates this command, if any.
    pub fn session(&self) -> Option<SessionId> {
        match self {
            Command::KeepAlive { session }
            | Command::CloseSession { session }
            | Command::Acquire { session, .. }
            | Command::CancelWait { session, .. }
            | Command::Release { session, .. }
            | Command::Extend { session, .. }
            | Command::Steal { session, .. } => Some(*session),
            Command::OpenSession { .. }
            | Command::CreateLock { .. }
            | Command::ForceRelease { .. }
            | Command::Destroy { .. }
            | Command::Tick => None,
        }
    }
}

/// A grant: the hold a caller (or a woken waiter) now has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub token: FencingToken,
    pub mode: Mode,
    pub granted_at: Millis,
    /// End of the lease, if the lock has a TTL.
    pub expires_at: Option<Millis>,
}

/// The successful result of a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    SessionOpened {
        session: SessionId,
        expires_at: Millis,
    },
    KeptAlive {
        expires_at: Millis,
    },
    SessionClosed,
    LockCreated {
        /// False when the lock already existed.
        created: bool,
        kind: LockKind,
        ttl_ms: Option<u64>,
    },
    /// Granted at once (acquire or steal).
    Granted(Grant),
    /// Queued; the grant or the end of the wait comes later as an [`Event`].
    Queued {
        /// 1-based place in the queue at the time of queueing.
        position: u64,
        deadline: Option<Millis>,
    },
    /// `was_waiting` is false when the session was not queued (never was,
    /// or was granted or timed out just before the cancel arrived).
    WaitCancelled {
        was_waiting: bool,
    },
    Released,
    Extended {
        expires_at: Option<Millis>,
    },
    ForceReleased {
        /// How many holds were removed.
        holds: u64,
    },
    Destroyed,
    Ticked,
}

/// Why a hold ended other than by its own release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum HoldEnd {
    LeaseExpired,
    SessionEnded,
    Stolen,
    ForceReleased,
    Destroyed,
}

/// Why a wait ended other than by a grant or the waiter's own cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum WaitEnd {
    /// The wait's deadline passed (`Timeout`).
    TimedOut,
    /// The waiting session was closed or expired.
    SessionEnded,
    /// The lock was destroyed (`NotFound`).
    Destroyed,
}

/// Something that happened to a client other than the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A queued waiter was granted.
    Granted {
        key: LockKey,
        session: SessionId,
        /// The request that queued the wait, if it carried one.
        request_id: Option<RequestId>,
        grant: Grant,
    },
    /// A queued waiter left the queue without a grant.
    WaitEnded {
        key: LockKey,
        session: SessionId,
        request_id: Option<RequestId>,
        reason: WaitEnd,
    },
    /// A hold ended without its owner releasing it.
    HoldLost {
        key: LockKey,
        session: SessionId,
        token: FencingToken,
        reason: HoldEnd,
    },
    /// A session's TTL passed without a keep-alive.
    SessionExpired { session: SessionId },
}

/// One hold, as `describe` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderInfo {
    pub session: SessionId,
    pub mode: Mode,
    pub token: FencingToken,
    pub granted_at: Millis,
    pub expires_at: Option<Millis>,
}

/// One waiter, as `describe` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaiterInfo {
    pub session: SessionId,
    pub mode: Mode,
    pub since: Millis,
    pub deadline: Option<Millis>,
    pub request_id: Option<RequestId>,
}

/// What `describe` returns for an existing lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub key: LockKey,
    pub kind: LockKind,
    pub ttl_ms: Option<u64>,
    /// Holders in grant (token) order.
    pub holders: Vec<HolderInfo>,
    /// Waiters in queue order.
    pub waiters: Vec<WaiterInfo>,
    /// The last fencing token issued for this lock (0: never granted).
    pub last_token: FencingToken,
}

/// What `describe_session` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub session: SessionId,
    pub ttl_ms: u64,
    pub expires_at: Millis,
    /// Held locks and their tokens, in key order.
    pub holds: Vec<(LockKey, FencingToken)>,
    /// Locks waited for, in key order.
    pub waits: Vec<LockKey>,
}
