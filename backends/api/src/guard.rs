//! [`LockGuard`]: a held lock, its fencing token, and its lost-lock notice.

use crate::session::{unexpected, Session, Sessions};
use crate::Error;
use fencelock_core::{Command, FencingToken, Grant, LockError, LockKey, Millis, Mode, Response};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

/// How long one `watch_hold` long-poll of a lost-lock watcher lasts.
const WATCH_SLICE: Duration = Duration::from_secs(10);

/// A held lock. Pass [`LockGuard::token`] to every resource you touch under
/// the lock, so it can reject a stale holder.
///
/// Dropping the guard releases the lock in the background (also when the
/// task panics or is cancelled); [`LockGuard::release`] does it now and
/// reports errors.
pub struct LockGuard {
    sessions: Arc<Sessions>,
    session: Arc<Session>,
    key: LockKey,
    grant: Grant,
    /// Started on first use of the lost-lock notice.
    lost: OnceLock<LostWatch>,
    released: bool,
}

struct LostWatch {
    fired: CancellationToken,
    reason: Arc<Mutex<Option<Error>>>,
    task: AbortHandle,
}

impl LockGuard {
    pub(crate) fn new(
        sessions: Arc<Sessions>,
        session: Arc<Session>,
        key: LockKey,
        grant: Grant,
    ) -> Self {
        LockGuard {
            sessions,
            session,
            key,
            grant,
            lost: OnceLock::new(),
            released: false,
        }
    }

    /// The fencing token of this hold: larger than every earlier grant of
    /// the lock.
    pub fn token(&self) -> FencingToken {
        self.grant.token
    }

    /// The whole grant: token, mode, when, lease end (backend clock).
    pub fn grant(&self) -> &Grant {
        &self.grant
    }

    pub fn key(&self) -> &LockKey {
        &self.key
    }

    pub fn mode(&self) -> Mode {
        self.grant.mode
    }

    /// Releases the lock now.
    pub async fn release(mut self) -> Result<(), Error> {
        self.released = true;
        self.stop_watch();
        let r = release(&self.sessions, &self.session, &self.key, self.grant.token).await;
        self.sessions.checkin(&self.key, self.session.id);
        r
    }

    /// Renews the lease to the backend's now + the lock's TTL; returns the
    /// new expiry (`None` for a lock without lease).
    pub async fn extend(&mut self) -> Result<Option<Millis>, Error> {
        let command = Command::Extend {
            key: self.key.clone(),
            session: self.session.id,
            token: self.grant.token,
        };
        match self.sessions.execute(&self.session, command).await? {
            Response::Extended { expires_at } => {
                self.grant.expires_at = expires_at;
                Ok(expires_at)
            }
            other => Err(unexpected("extend", &other)),
        }
    }

    /// Asks the backend whether this hold is still current.
    pub async fn validate(&self) -> Result<(), Error> {
        self.sessions
            .backend()
            .validate(&self.key, self.grant.token)
            .await
            .map(|_| ())
    }

    /// A token cancelled when the hold is lost: lease expired, session
    /// expired, stolen, force-released or destroyed. Hand it to the code
    /// running under the lock so it can stop (`token.cancelled().await`).
    /// Not cancelled by this guard's own release.
    pub fn lost_token(&self) -> CancellationToken {
        self.watch().fired.clone()
    }

    /// Resolves when the hold is lost, with the reason (`Stolen`, `Expired`,
    /// `NotHolder` for force release, `NotFound` for destroy,
    /// `SessionNotFound` for a lost session).
    pub async fn lost(&self) -> Error {
        let watch = self.watch();
        watch.fired.cancelled().await;
        lost_reason(watch, &self.key, self.grant.token)
    }

    /// The reason the hold was lost, if the notice has fired.
    pub fn lost_reason(&self) -> Option<Error> {
        let watch = self.lost.get()?;
        watch
            .fired
            .is_cancelled()
            .then(|| lost_reason(watch, &self.key, self.grant.token))
    }

    fn watch(&self) -> &LostWatch {
        self.lost.get_or_init(|| {
            let fired = CancellationToken::new();
            let reason = Arc::new(Mutex::new(None));
            let task = tokio::spawn(watch_hold(
                self.sessions.clone(),
                self.session.clone(),
                self.key.clone(),
                self.grant.token,
                fired.clone(),
                reason.clone(),
            ));
            LostWatch {
                fired,
                reason,
                task: task.abort_handle(),
            }
        })
    }

    fn stop_watch(&self) {
        if let Some(w) = self.lost.get() {
            w.task.abort();
        }
    }
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.key)
            .field("session", &self.session.id)
            .field("grant", &self.grant)
            .finish()
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.stop_watch();
        let (sessions, session, key, token) = (
            self.sessions.clone(),
            self.session.clone(),
            self.key.clone(),
            self.grant.token,
        );
        // Without a runtime the session's expiry frees the lock instead.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = release(&sessions, &session, &key, token).await;
                sessions.checkin(&key, session.id);
            });
        }
    }
}

fn lost_reason(watch: &LostWatch, key: &LockKey, token: FencingToken) -> Error {
    let stored = watch.reason.lock().ok().and_then(|r| r.clone());
    stored.unwrap_or_else(|| {
        Error::Lock(LockError::Expired {
            key: key.clone(),
            token,
        })
    })
}

pub(crate) async fn release(
    sessions: &Sessions,
    session: &Session,
    key: &LockKey,
    token: FencingToken,
) -> Result<(), Error> {
    let command = Command::Release {
        key: key.clone(),
        session: session.id,
        token,
    };
    match sessions.execute(session, command).await? {
        Response::Released => Ok(()),
        other => Err(unexpected("release", &other)),
    }
}

/// The lost-lock watcher: long-polls `watch_hold`, and also fires when the
/// session is gone.
async fn watch_hold(
    sessions: Arc<Sessions>,
    session: Arc<Session>,
    key: LockKey,
    token: FencingToken,
    fired: CancellationToken,
    reason: Arc<Mutex<Option<Error>>>,
) {
    let why = loop {
        tokio::select! {
            _ = session.gone.cancelled() => {
                break Error::Lock(LockError::SessionNotFound { session: session.id });
            }
            r = sessions.backend().watch_hold(&key, token, WATCH_SLICE) => match r {
                Ok(_) => {}
                Err(e @ Error::Lock(_)) => break e,
                Err(e) => {
                    tracing::debug!(%key, error = %e, "lost-lock watch failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    };
    if let Ok(mut r) = reason.lock() {
        *r = Some(why);
    }
    fired.cancel();
}
