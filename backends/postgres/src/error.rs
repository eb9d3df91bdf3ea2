//! Postgres and pool errors mapped to [`fencelock::Error`].
//!
//! The one question that matters to a caller is whether the command may have
//! been applied. Before `COMMIT` is sent, nothing was: `Unavailable` (retry is
//! safe). When the connection is lost while `COMMIT` is in flight, the outcome
//! is unknown: `UnknownOutcome` (retry with the same request id).

use fencelock::Error;
use tokio_postgres::error::SqlState;

/// An error of a statement that was sent before any `COMMIT`.
pub(crate) fn db_error(e: tokio_postgres::Error) -> Error {
    match e.as_db_error() {
        Some(db) if is_unreachable_state(db.code()) => {
            Error::unavailable(format!("postgres: {}", db.message()))
        }
        Some(db) => Error::backend(format!(
            "postgres error {}: {}",
            db.code().code(),
            db.message()
        )),
        None => Error::unavailable(format!("postgres connection: {e}")),
    }
}

/// An error of the round trip that carried `COMMIT`.
pub(crate) fn commit_error(e: tokio_postgres::Error) -> Error {
    if e.as_db_error().is_some() {
        // The server answered with an error: the transaction was rolled back.
        return db_error(e);
    }
    Error::UnknownOutcome {
        reason: format!("connection lost during commit: {e}"),
    }
}

/// A pool error: no connection could be had, nothing was sent.
pub(crate) fn pool_error(e: deadpool_postgres::PoolError) -> Error {
    Error::unavailable(format!("postgres pool: {e}"))
}

/// Worth running the whole transaction again (nothing was applied).
pub(crate) fn is_retryable(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        *db.code() == SqlState::T_R_SERIALIZATION_FAILURE
            || *db.code() == SqlState::T_R_DEADLOCK_DETECTED
            || *db.code() == SqlState::UNIQUE_VIOLATION
    })
}

/// Server states that mean "the database is not there right now".
fn is_unreachable_state(code: &SqlState) -> bool {
    *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
        || *code == SqlState::TOO_MANY_CONNECTIONS
        || *code == SqlState::QUERY_CANCELED
        || code.code().starts_with("08")
}

/// A value read from the database that breaks our own format.
pub(crate) fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::backend(format!("corrupt row: {what}"))
}
