//! The one error enum of the client API and of every backend.
//!
//! It wraps the core's [`LockError`] (the semantic answers) and adds what only
//! a distributed store can say: unreachable, unknown outcome, not allowed.
//! [`Error::code`] maps every variant to the status codes of `SEMANTICS.md`.

use fencelock_core::{LockError, StatusCode};

/// Everything a backend or the client can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A semantic answer from the lock state machine (not held, timeout, ...).
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The backend could not be reached or has no leader. The command was
    /// **not** applied; retrying is safe.
    #[error("backend unavailable: {reason}")]
    Unavailable { reason: String },
    /// The command was sent but its result is unknown (a connection or a
    /// leader was lost after sending). It may or may not have been applied:
    /// retry with the *same* request id, which the state machine deduplicates.
    #[error("outcome unknown: {reason}; retry with the same request id")]
    UnknownOutcome { reason: String },
    /// The caller's credential has no access to this namespace.
    #[error("not authorized for namespace `{namespace}`")]
    Unauthorized { namespace: String },
    /// The client (or its session) was closed; open a new client.
    #[error("the client was closed")]
    Closed,
    /// The backend broke its own contract (corrupt row, undecodable reply).
    /// Not retryable; report it.
    #[error("backend error: {message}")]
    Backend { message: String },
}

impl Error {
    /// The wire status of `SEMANTICS.md`.
    pub fn code(&self) -> StatusCode {
        match self {
            Error::Lock(e) => e.code(),
            Error::Unavailable { .. } | Error::UnknownOutcome { .. } | Error::Backend { .. } => {
                StatusCode::Unavailable
            }
            Error::Unauthorized { .. } => StatusCode::PermissionDenied,
            Error::Closed => StatusCode::FailedPrecondition,
        }
    }

    /// True when sending the same command again (with the same request id)
    /// can succeed and cannot apply it twice.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. } | Error::UnknownOutcome { .. }
        )
    }

    /// The core error, if this is a semantic answer.
    pub fn as_lock_error(&self) -> Option<&LockError> {
        match self {
            Error::Lock(e) => Some(e),
            _ => None,
        }
    }

    /// Shorthand for [`Error::Unavailable`].
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Error::Unavailable {
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Backend`].
    pub fn backend(message: impl Into<String>) -> Self {
        Error::Backend {
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fencelock_core::{FencingToken, LockKey};

    #[test]
    fn codes_follow_semantics_table() {
        let key = LockKey::new("ns", "n").unwrap();
        let stolen = Error::from(LockError::Stolen {
            key: key.clone(),
            token: FencingToken(3),
        });
        assert_eq!(stolen.code(), StatusCode::FailedPrecondition);
        assert_eq!(
            Error::from(LockError::Timeout { key }).code(),
            StatusCode::DeadlineExceeded
        );
        assert_eq!(Error::unavailable("x").code(), StatusCode::Unavailable);
        assert_eq!(
            Error::UnknownOutcome { reason: "x".into() }.code(),
            StatusCode::Unavailable
        );
        assert_eq!(
            Error::Unauthorized {
                namespace: "ns".into()
            }
            .code(),
            StatusCode::PermissionDenied
        );
        assert!(Error::unavailable("x").is_retryable());
        assert!(!stolen.is_retryable());
    }
}
