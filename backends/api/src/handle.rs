//! Lock handles: [`LockHandle`] (mutex) and [`RwLockHandle`] (read/write),
//! and the one acquire path both use.
//!
//! # Acquire, wait, cancel
//! `acquire` sends one `Acquire` command. If it is queued, the handle
//! long-polls [`crate::Backend::wait`] in slices until the grant or the end
//! of the wait. If the acquire future is dropped meanwhile (timeout of the
//! caller, `select!`, task cancelled), a background task sends `CancelWait`;
//! if the cancel lost the race against a grant, it releases that grant, so
//! the lock is handed on instead of leaking.

use crate::guard::{release, LockGuard};
use crate::session::{unexpected, Session, Sessions};
use crate::{Error, WaitStatus};
use fencelock_core::{
    Command, FencingToken, HolderInfo, LockError, LockInfo, LockKey, LockKind, Mode, RequestId,
    Response, WaitEnd,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Longest single `wait` long-poll: bounds how long one request stays open.
const WAIT_SLICE: Duration = Duration::from_secs(10);
/// How long past its own deadline a waiter trusts the backend to report the
/// timeout before giving up locally (a backend that is unreachable).
const DEADLINE_GRACE: Duration = Duration::from_secs(5);

/// What a handle names: the key, the kind, and an optional lease.
pub(crate) struct Target {
    pub sessions: Arc<Sessions>,
    pub key: LockKey,
    pub kind: LockKind,
    pub lease: Option<Duration>,
    /// The lock was created with its lease (done once per handle).
    pub created: AtomicBool,
}

impl Target {
    async fn describe(&self) -> Result<Option<LockInfo>, Error> {
        self.sessions.backend().describe(&self.key).await
    }

    async fn validate(&self, token: FencingToken) -> Result<HolderInfo, Error> {
        self.sessions.backend().validate(&self.key, token).await
    }

    async fn ensure_created(&self) -> Result<(), Error> {
        let Some(lease) = self.lease else {
            return Ok(());
        };
        if self.created.load(Ordering::Acquire) {
            return Ok(());
        }
        let command = Command::CreateLock {
            key: self.key.clone(),
            kind: self.kind,
            ttl_ms: Some(millis(lease)),
        };
        match self
            .sessions
            .retry(self.sessions.sessionless_request_id(), command)
            .await?
        {
            Response::LockCreated { .. } => {
                self.created.store(true, Ordering::Release);
                Ok(())
            }
            other => Err(unexpected("create_lock", &other)),
        }
    }

    /// The acquire path. `timeout`: `Some(ZERO)` is try-lock, `None` waits
    /// as long as the session lives.
    pub async fn acquire(&self, mode: Mode, timeout: Option<Duration>) -> Result<LockGuard, Error> {
        self.ensure_created().await?;
        let session = self.sessions.checkout(&self.key).await?;
        let command = Command::Acquire {
            key: self.key.clone(),
            session: session.id,
            mode,
            timeout_ms: timeout.map(millis),
        };
        let rid = self.sessions.request_id(&session);
        let mut pending = Pending {
            sessions: &self.sessions,
            session: &session,
            key: &self.key,
            // Without a request id there is nothing to resend (see below).
            state: PendingState::Sending(rid.map(|rid| (command.clone(), rid))),
        };
        // A backend that can answers a queued acquire's grant in the same
        // call (up to one wait slice); otherwise it says `Queued` at once.
        let first_wait = timeout.map_or(WAIT_SLICE, |t| t.min(WAIT_SLICE));
        let sent = tokio::time::Instant::now();
        let answer = (self.sessions)
            .execute_waiting_as(&session, rid, command, first_wait)
            .await;
        let grant = match answer {
            Ok(Response::Granted(grant)) => grant,
            Ok(Response::Queued { .. }) => {
                pending.state = PendingState::Queued;
                // Measured from the send: only the fallback for a backend
                // that stops answering (the backend ends the wait itself).
                let deadline = timeout.map(|t| sent + t);
                match self.wait(&session, deadline).await {
                    Ok(grant) => grant,
                    Err(WaitFailure::Ended(e)) => {
                        pending.state = PendingState::Done;
                        self.sessions.checkin(&self.key, session.id);
                        return Err(e);
                    }
                    // Still queued as far as we know: `pending` cancels it.
                    Err(WaitFailure::Unknown(e)) => return Err(e),
                }
            }
            Ok(other) => return Err(unexpected("acquire", &other)),
            // An unknown outcome is left to `pending` to resolve.
            Err(e) if matches!(e, Error::UnknownOutcome { .. }) => return Err(e),
            Err(e) => {
                pending.state = PendingState::Done;
                self.sessions.checkin(&self.key, session.id);
                return Err(e);
            }
        };
        pending.state = PendingState::Done;
        drop(pending);
        Ok(LockGuard::new(
            self.sessions.clone(),
            session,
            self.key.clone(),
            grant,
        ))
    }

    async fn wait(
        &self,
        session: &Session,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<fencelock_core::Grant, WaitFailure> {
        let key = &self.key;
        let ended = |e: LockError| Err(WaitFailure::Ended(e.into()));
        loop {
            let slice = match deadline {
                Some(d) => {
                    let give_up = d + DEADLINE_GRACE;
                    let now = tokio::time::Instant::now();
                    if now >= give_up {
                        let e = LockError::Timeout { key: key.clone() };
                        return Err(WaitFailure::Unknown(e.into()));
                    }
                    (give_up - now).min(WAIT_SLICE)
                }
                None => WAIT_SLICE,
            };
            let status = tokio::select! {
                s = self.sessions.backend().wait(key, session.id, slice) => s,
                _ = session.gone.cancelled() => {
                    return ended(LockError::SessionNotFound { session: session.id });
                }
            };
            match status {
                Ok(WaitStatus::Granted(g)) => return Ok(g),
                Ok(WaitStatus::Waiting) => {}
                Ok(WaitStatus::Ended(WaitEnd::TimedOut)) => {
                    return ended(LockError::Timeout { key: key.clone() })
                }
                Ok(WaitStatus::Ended(WaitEnd::SessionEnded)) => {
                    self.sessions.lost(session.id);
                    return ended(LockError::SessionNotFound {
                        session: session.id,
                    });
                }
                Ok(WaitStatus::Ended(WaitEnd::Destroyed)) => {
                    return ended(LockError::NotFound { key: key.clone() })
                }
                // Granted and already lost again, or forgotten: no hold.
                Ok(WaitStatus::NotWaiting) => {
                    return ended(LockError::Timeout { key: key.clone() })
                }
                Err(e) if e.is_retryable() => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(WaitFailure::Unknown(e)),
            }
        }
    }
}

/// Why a wait returned without a grant.
enum WaitFailure {
    /// The backend ended the wait: nothing to clean up.
    Ended(Error),
    /// We stopped waiting; the backend may still have us queued.
    Unknown(Error),
}

/// Where an acquire is, for the clean-up when its future is dropped.
enum PendingState {
    /// The acquire command may be in flight (outcome unknown); resolved by
    /// sending it again with the same request id (without one, the backend's
    /// outcomes are certain: not answered means not applied).
    Sending(Option<(Command, RequestId)>),
    /// Queued in the backend.
    Queued,
    /// Granted (a guard owns it) or failed cleanly.
    Done,
}

/// Cancels the wait (and releases a grant that raced the cancel) when an
/// acquire does not finish normally: dropped future, error while queued.
/// Borrows, so the common path (granted) pays no reference counting.
struct Pending<'a> {
    sessions: &'a Arc<Sessions>,
    session: &'a Arc<Session>,
    key: &'a LockKey,
    state: PendingState,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if matches!(self.state, PendingState::Done) {
            return;
        }
        let (sessions, session, key) = (
            self.sessions.clone(),
            self.session.clone(),
            self.key.clone(),
        );
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // No runtime: the session's expiry ends the wait instead.
            return;
        };
        let resend = match std::mem::replace(&mut self.state, PendingState::Done) {
            PendingState::Sending(resend) => resend,
            _ => None,
        };
        rt.spawn(async move {
            if let Some((command, rid)) = resend {
                // Learn the outcome: the core answers a repeated id with the
                // first result (or applies it now, which we undo below).
                match sessions.retry(Some(rid), command).await {
                    Ok(Response::Granted(g)) => {
                        let _ = release(&sessions, &session, &key, g.token).await;
                        sessions.checkin(&key, session.id);
                        return;
                    }
                    Ok(Response::Queued { .. }) => {}
                    _ => {
                        sessions.checkin(&key, session.id);
                        return;
                    }
                }
            }
            cancel_wait(&sessions, &session, &key).await;
            sessions.checkin(&key, session.id);
        });
    }
}

/// Leaves the queue; if a grant won the race, releases it.
async fn cancel_wait(sessions: &Sessions, session: &Session, key: &LockKey) {
    let command = Command::CancelWait {
        key: key.clone(),
        session: session.id,
    };
    let r = sessions.execute(session, command).await;
    if !matches!(r, Ok(Response::WaitCancelled { was_waiting: false })) {
        return;
    }
    // Not waiting: granted just before the cancel, or never queued. A held
    // lock shows up as `Granted`; release it so the queue moves on.
    let status = sessions
        .backend()
        .wait(key, session.id, Duration::ZERO)
        .await;
    if let Ok(WaitStatus::Granted(g)) = status {
        let _ = release(sessions, session, key, g.token).await;
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A mutex named `(namespace, name)`. Cheap to clone; create once, use often.
#[derive(Clone)]
pub struct LockHandle {
    target: Arc<Target>,
}

/// A read/write lock named `(namespace, name)`.
#[derive(Clone)]
pub struct RwLockHandle {
    target: Arc<Target>,
}

impl LockHandle {
    pub(crate) fn new(target: Target) -> Self {
        LockHandle {
            target: Arc::new(target),
        }
    }

    pub fn key(&self) -> &LockKey {
        &self.target.key
    }

    /// Waits as long as it takes (the session keeps the wait alive).
    pub async fn acquire(&self) -> Result<LockGuard, Error> {
        self.target.acquire(Mode::Exclusive, None).await
    }

    /// Takes the lock only if it is free and nobody is queued; otherwise
    /// `WouldBlock`, and nothing is queued.
    pub async fn try_acquire(&self) -> Result<LockGuard, Error> {
        self.target
            .acquire(Mode::Exclusive, Some(Duration::ZERO))
            .await
    }

    /// Waits at most `timeout`; then `Timeout`, and the wait leaves the queue.
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<LockGuard, Error> {
        self.target.acquire(Mode::Exclusive, Some(timeout)).await
    }

    /// Takes the lock at once, ahead of the queue, with a new token; the
    /// former holder's token stops working (`Stolen`).
    pub async fn steal(&self) -> Result<LockGuard, Error> {
        steal(&self.target).await
    }

    /// Kind, lease, holders, queue, last token; `None` if it does not exist.
    pub async fn describe(&self) -> Result<Option<LockInfo>, Error> {
        self.target.describe().await
    }

    /// Is `token` a current hold? What a guarded resource asks.
    pub async fn validate(&self, token: FencingToken) -> Result<HolderInfo, Error> {
        self.target.validate(token).await
    }
}

impl RwLockHandle {
    pub(crate) fn new(target: Target) -> Self {
        RwLockHandle {
            target: Arc::new(target),
        }
    }

    pub fn key(&self) -> &LockKey {
        &self.target.key
    }

    /// Shared access; waits as long as it takes.
    pub async fn read(&self) -> Result<LockGuard, Error> {
        self.target.acquire(Mode::Read, None).await
    }

    /// Exclusive access; waits as long as it takes.
    pub async fn write(&self) -> Result<LockGuard, Error> {
        self.target.acquire(Mode::Write, None).await
    }

    pub async fn try_read(&self) -> Result<LockGuard, Error> {
        self.target.acquire(Mode::Read, Some(Duration::ZERO)).await
    }

    pub async fn try_write(&self) -> Result<LockGuard, Error> {
        self.target.acquire(Mode::Write, Some(Duration::ZERO)).await
    }

    pub async fn read_timeout(&self, timeout: Duration) -> Result<LockGuard, Error> {
        self.target.acquire(Mode::Read, Some(timeout)).await
    }

    pub async fn write_timeout(&self, timeout: Duration) -> Result<LockGuard, Error> {
        self.target.acquire(Mode::Write, Some(timeout)).await
    }

    /// Acquires in `mode` with an optional timeout (the general form).
    pub async fn acquire(&self, mode: Mode, timeout: Option<Duration>) -> Result<LockGuard, Error> {
        self.target.acquire(mode, timeout).await
    }

    /// Takes the lock in write mode at once, ahead of the queue.
    pub async fn steal(&self) -> Result<LockGuard, Error> {
        steal(&self.target).await
    }

    /// Kind, lease, holders, queue, last token; `None` if it does not exist.
    pub async fn describe(&self) -> Result<Option<LockInfo>, Error> {
        self.target.describe().await
    }

    /// Is `token` a current hold (read or write)? What a guarded resource asks.
    pub async fn validate(&self, token: FencingToken) -> Result<HolderInfo, Error> {
        self.target.validate(token).await
    }
}

async fn steal(target: &Target) -> Result<LockGuard, Error> {
    target.ensure_created().await?;
    let session = target.sessions.checkout(&target.key).await?;
    let command = Command::Steal {
        key: target.key.clone(),
        session: session.id,
    };
    match target.sessions.execute(&session, command).await {
        Ok(Response::Granted(g)) => Ok(LockGuard::new(
            target.sessions.clone(),
            session,
            target.key.clone(),
            g,
        )),
        other => {
            target.sessions.checkin(&target.key, session.id);
            match other {
                Ok(r) => Err(unexpected("steal", &r)),
                Err(e) => Err(e),
            }
        }
    }
}
