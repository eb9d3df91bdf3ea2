//! The [`Backend`] trait: the one interface the in-memory, PostgreSQL, Raft and
//! user-written stores implement.
//!
//! # Why it looks like this
//! - **One mutating entry point.** [`Backend::execute`] takes a core
//!   [`Command`] and an optional [`RequestId`]. A Raft backend puts exactly
//!   that pair in a log entry; a Postgres backend applies it in one
//!   transaction; the memory backend applies it under a mutex. The backend
//!   stamps `now` from *its* clock; the caller never sends a time.
//! - **Unknown outcomes are first-class.** A command whose fate is unknown
//!   returns [`Error::UnknownOutcome`]; the caller retries with the same
//!   request id and the core returns the first result instead of applying it
//!   twice. Commands without a session (open, create, force release, destroy,
//!   tick) are not deduplicated by the core; they are idempotent or harmless
//!   to repeat (a repeated open leaves a session that expires).
//! - **Waiting is a bounded long-poll, not an open request per waiter.** An
//!   `Acquire` that cannot be granted answers [`Response::Queued`] at once;
//!   the caller then asks [`Backend::wait`] with a `max_wait`, as often as it
//!   likes. Each call is a read that ends within about `max_wait`, so a
//!   Postgres backend can serve it from LISTEN/NOTIFY plus a re-check, and a
//!   Raft backend from the leader's state (a retried call on a new leader
//!   answers the same).
//! - **Cancellation-safe.** Dropping any future of this trait changes no lock
//!   state beyond what the command itself did (a dropped `execute` is an
//!   unknown outcome). Leaving a queue is an explicit
//!   [`Command::CancelWait`]; the client layer sends it when an acquire
//!   future is dropped, and releases the grant if the cancel lost the race
//!   (`was_waiting: false` and [`Backend::wait`] says `Granted`).
//! - **Small.** Sessions' keep-alive, guards, retries and lost-lock notices
//!   live in the client ([`crate::Client`]), once, above every backend.

use crate::Error;
use async_trait::async_trait;
use fencelock_core::{
    Command, FencingToken, Grant, HolderInfo, LockInfo, LockKey, RequestId, Response, SessionId,
    SessionInfo, WaitEnd,
};
use std::sync::Arc;
use std::time::Duration;

/// What a queued acquire has become. Answer of [`Backend::wait`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitStatus {
    /// The wait was granted with this grant. The hold may have ended since
    /// (lease, steal): `validate` tells; the client's guard will notice.
    Granted(Grant),
    /// Still queued when `max_wait` passed (or the backend woke early); ask again.
    Waiting,
    /// The wait left the queue without a grant.
    Ended(WaitEnd),
    /// The session is not queued for the key and the backend knows no outcome
    /// (never queued, cancelled, or the outcome is no longer remembered).
    NotWaiting,
}

/// A lock store. See the module docs for the design; every implementation
/// must pass `fencelock-conformance`.
///
/// Contract for implementors, beyond "apply the core's semantics":
/// - `now` comes from the backend's own clock and never goes backwards.
/// - Expiries (leases, wait deadlines, sessions) happen without any client
///   call: at the core's `next_deadline` the backend applies a `Tick`
///   (or an equivalent), and wakes whoever it affects.
/// - Errors are [`Error`]s: core answers as [`Error::Lock`], an unreachable
///   store as [`Error::Unavailable`] (not applied) or
///   [`Error::UnknownOutcome`] (maybe applied). Never a panic.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Applies one mutating command at the backend's `now`. With a
    /// `request_id`, applying the same `(session, request_id)` again returns
    /// the first result and changes nothing (the core remembers it).
    async fn execute(
        &self,
        command: Command,
        request_id: Option<RequestId>,
    ) -> Result<Response, Error>;

    /// Like [`Backend::execute`], but an `Acquire` that queues may wait up
    /// to `max_wait` for its grant within the same call and then answer
    /// [`Response::Granted`]: a backend that can (a networked one) saves the
    /// waiter's separate [`Backend::wait`] round trip. Any other end of the
    /// wait answers `Queued`, as `execute` would; [`Backend::wait`] tells
    /// the rest. Same request-id semantics as `execute`. The default is
    /// `execute` (no wait).
    async fn execute_waiting(
        &self,
        command: Command,
        request_id: Option<RequestId>,
        max_wait: Duration,
    ) -> Result<Response, Error> {
        let _ = max_wait;
        self.execute(command, request_id).await
    }

    /// Applies the command at once, synchronously, if this backend can do so
    /// without waiting (in-process stores); `None` otherwise (the default).
    /// Same semantics as [`Backend::execute`]. The client tries it first: it
    /// spares the boxed future of an async call on the hot path.
    fn execute_now(
        &self,
        command: &Command,
        request_id: Option<RequestId>,
    ) -> Option<Result<Response, Error>> {
        let _ = (command, request_id);
        None
    }

    /// Waits (up to about `max_wait`) for the outcome of `session`'s queued
    /// acquire of `key`, and returns as soon as it is known.
    ///
    /// A read: dropping it or calling it again is always safe. An outcome
    /// that happened before the call must still be reported: at least
    /// `Granted` while the session holds the key (the default implementation
    /// derives it from state), and ideally the exact `Granted`/`Ended` of the
    /// session's last wait for the key, remembered until its next acquire of
    /// that key or its end.
    ///
    /// The default polls [`Backend::describe_session`]; backends that can be
    /// woken (all three built-in ones) override it.
    async fn wait(
        &self,
        key: &LockKey,
        session: SessionId,
        max_wait: Duration,
    ) -> Result<WaitStatus, Error> {
        let give_up = tokio::time::Instant::now() + max_wait;
        loop {
            let status = match self.describe_session(session).await? {
                None => WaitStatus::Ended(WaitEnd::SessionEnded),
                Some(info) => {
                    if let Some((_, token)) = info.holds.iter().find(|(k, _)| k == key) {
                        match self.validate(key, *token).await {
                            Ok(h) => WaitStatus::Granted(grant_of(&h)),
                            Err(_) => WaitStatus::NotWaiting,
                        }
                    } else if info.waits.contains(key) {
                        WaitStatus::Waiting
                    } else {
                        WaitStatus::NotWaiting
                    }
                }
            };
            let now = tokio::time::Instant::now();
            if status != WaitStatus::Waiting || now >= give_up {
                return Ok(status);
            }
            tokio::time::sleep(DEFAULT_POLL.min(give_up - now)).await;
        }
    }

    /// Waits (up to about `max_wait`) until `token` stops being a current
    /// hold of `key`. Returns `Ok(holder)` if it is still held when
    /// `max_wait` passes, and the error [`Backend::validate`] would give
    /// (`Stolen`, `Expired`, `NotHolder`, `NotFound`) as soon as it is lost.
    /// This drives the guards' lost-lock notice. A read; safe to drop.
    ///
    /// The default polls [`Backend::validate`].
    async fn watch_hold(
        &self,
        key: &LockKey,
        token: FencingToken,
        max_wait: Duration,
    ) -> Result<HolderInfo, Error> {
        let give_up = tokio::time::Instant::now() + max_wait;
        loop {
            let held = self.validate(key, token).await?;
            let now = tokio::time::Instant::now();
            if now >= give_up {
                return Ok(held);
            }
            tokio::time::sleep(DEFAULT_POLL.min(give_up - now)).await;
        }
    }

    /// True when `execute` never leaves an outcome unknown: it either
    /// returns the result of the applied command or applied nothing
    /// (in-process stores). The client then sends no request ids, which
    /// spares the core's per-session request memory. Default: false.
    fn outcomes_are_certain(&self) -> bool {
        false
    }

    /// Succeeds only while `token` is a current hold of `key` at the
    /// backend's `now` (lease and session not past, even if no tick ran yet).
    /// Linearizable: never answered from stale state.
    async fn validate(&self, key: &LockKey, token: FencingToken) -> Result<HolderInfo, Error>;

    /// The lock's kind, TTL, holders, queue and last token; `None` if it does
    /// not exist.
    async fn describe(&self, key: &LockKey) -> Result<Option<LockInfo>, Error>;

    /// A session's expiry, holds and waits; `None` if it does not exist.
    async fn describe_session(&self, session: SessionId) -> Result<Option<SessionInfo>, Error>;
}

/// How often the default `wait`/`watch_hold` re-read state.
pub const DEFAULT_POLL: Duration = Duration::from_millis(20);

/// The grant a current hold stands for.
pub fn grant_of(h: &HolderInfo) -> Grant {
    Grant {
        token: h.token,
        mode: h.mode,
        granted_at: h.granted_at,
        expires_at: h.expires_at,
    }
}

/// Shared backends are backends: `Client` and the conformance suite take an
/// `Arc<dyn Backend>` or `Arc<B>` as readily as `B`.
#[async_trait]
impl<B: Backend + ?Sized> Backend for Arc<B> {
    async fn execute(
        &self,
        command: Command,
        request_id: Option<RequestId>,
    ) -> Result<Response, Error> {
        (**self).execute(command, request_id).await
    }

    async fn execute_waiting(
        &self,
        command: Command,
        request_id: Option<RequestId>,
        max_wait: Duration,
    ) -> Result<Response, Error> {
        (**self)
            .execute_waiting(command, request_id, max_wait)
            .await
    }

    async fn wait(
        &self,
        key: &LockKey,
        session: SessionId,
        max_wait: Duration,
    ) -> Result<WaitStatus, Error> {
        (**self).wait(key, session, max_wait).await
    }

    async fn watch_hold(
        &self,
        key: &LockKey,
        token: FencingToken,
        max_wait: Duration,
    ) -> Result<HolderInfo, Error> {
        (**self).watch_hold(key, token, max_wait).await
    }

    fn outcomes_are_certain(&self) -> bool {
        (**self).outcomes_are_certain()
    }

    fn execute_now(
        &self,
        command: &Command,
        request_id: Option<RequestId>,
    ) -> Option<Result<Response, Error>> {
        (**self).execute_now(command, request_id)
    }

    async fn validate(&self, key: &LockKey, token: FencingToken) -> Result<HolderInfo, Error> {
        (**self).validate(key, token).await
    }

    async fn describe(&self, key: &LockKey) -> Result<Option<LockInfo>, Error> {
        (**self).describe(key).await
    }

    async fn describe_session(&self, session: SessionId) -> Result<Option<SessionInfo>, Error> {
        (**self).describe_session(session).await
    }
}
