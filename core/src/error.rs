//! The core's error enum and its mapping to wire status codes.

use crate::key::LockKey;
use crate::types::{FencingToken, LockKind, SessionId};
use serde::{Deserialize, Serialize};

/// Everything a command can fail with. Each message says what to do next.
/// [`LockError::code`] gives the gRPC status from `SEMANTICS.md`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum LockError {
    /// Bad input; `field` names the argument (`namespace`, `name`, `ttl_ms`, ...).
    #[error("invalid argument `{field}`: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// The lock does not exist (never created, or destroyed).
    #[error("lock {key} does not exist (never created, or destroyed)")]
    NotFound { key: LockKey },
    /// The session was closed or expired; its holds and waits are gone.
    #[error("session {session} does not exist (closed or expired); open a new session")]
    SessionNotFound { session: SessionId },
    /// The key already names a lock of another kind.
    #[error("lock {key} is a {existing} lock; it cannot be used as a {requested} lock")]
    AlreadyExists {
        key: LockKey,
        existing: LockKind,
        requested: LockKind,
    },
    /// The session already holds this lock (locks are not re-entrant).
    #[error("session {session} already holds lock {key}; locks are not re-entrant")]
    AlreadyHeld { key: LockKey, session: SessionId },
    /// The session is already queued for this lock.
    #[error("session {session} is already waiting for lock {key}; cancel that wait first")]
    AlreadyWaiting { key: LockKey, session: SessionId },
    /// Try-lock (`timeout = 0`) found the lock unavailable; nothing was queued.
    #[error("lock {key} is not available now (try-lock queues nothing)")]
    WouldBlock { key: LockKey },
    /// The wait's deadline passed before the lock was granted.
    #[error("gave up waiting for lock {key}: the wait deadline passed")]
    Timeout { key: LockKey },
    /// The token is not a current hold of this session (released, force-released, never granted).
    #[error("token {token} is not a current hold of lock {key} by this caller")]
    NotHolder { key: LockKey, token: FencingToken },
    /// The hold was stolen; stop using the token.
    #[error("token {token} of lock {key} was stolen; stop the work it guarded")]
    Stolen { key: LockKey, token: FencingToken },
    /// The hold's lease or its session expired; stop using the token.
    #[error(
        "token {token} of lock {key} expired (lease or session ended); stop the work it guarded"
    )]
    Expired { key: LockKey, token: FencingToken },
    /// A configured limit was reached.
    #[error("limit `{limit}` reached (at most {max}); release something or raise the limit")]
    ResourceExhausted { limit: String, max: u64 },
}

impl LockError {
    pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> Self {
        LockError::InvalidArgument {
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn exhausted(limit: &str, max: u64) -> Self {
        LockError::ResourceExhausted {
            limit: limit.to_string(),
            max,
        }
    }

    /// The wire status this error maps to (the table in `SEMANTICS.md`).
    pub fn code(&self) -> StatusCode {
        match self {
            LockError::InvalidArgument { .. } => StatusCode::InvalidArgument,
            LockError::NotFound { .. } | LockError::SessionNotFound { .. } => StatusCode::NotFound,
            LockError::AlreadyExists { .. } => StatusCode::AlreadyExists,
            LockError::AlreadyHeld { .. }
            | LockError::AlreadyWaiting { .. }
            | LockError::WouldBlock { .. }
            | LockError::NotHolder { .. }
            | LockError::Stolen { .. }
            | LockError::Expired { .. } => StatusCode::FailedPrecondition,
            LockError::Timeout { .. } => StatusCode::DeadlineExceeded,
            LockError::ResourceExhausted { .. } => StatusCode::ResourceExhausted,
        }
    }
}

/// Wire status codes (the gRPC names, without depending on a gRPC crate).
/// `Unavailable` and `PermissionDenied` are produced by backends and servers,
/// never by the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StatusCode {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    DeadlineExceeded,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
}
