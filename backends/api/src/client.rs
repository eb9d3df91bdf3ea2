//! [`Client`]: what applications use. Sessions with automatic keep-alive,
//! lock handles, the scoped `with_lock`, and admin operations.

use crate::handle::{millis, LockHandle, RwLockHandle, Target};
use crate::session::{keep_alive, unexpected, Sessions};
use crate::{Backend, Error};
use fencelock_core::{Command, FencingToken, HolderInfo, LockInfo, LockKey, LockKind, Response};
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::AbortHandle;

/// A connection to a lock store: one or more sessions kept alive in the
/// background. Cheap to clone (clones share the sessions). Call
/// [`Client::close`] to release everything at once; dropping the last clone
/// closes the sessions in the background.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    sessions: Arc<Sessions>,
    keep_alive: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.keep_alive.abort();
        let sessions = self.sessions.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { sessions.close().await });
        } else {
            sessions.abandon();
        }
    }
}

/// Options of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    session_ttl: Duration,
    keep_alive: Option<Duration>,
    retries: u32,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            session_ttl: Duration::from_secs(10),
            keep_alive: None,
            retries: 5,
        }
    }
}

impl ClientBuilder {
    /// How long the store keeps the client's locks after it stops hearing
    /// from it (crash, partition). Default 10 s.
    pub fn session_ttl(mut self, ttl: Duration) -> Self {
        self.session_ttl = ttl;
        self
    }

    /// How often sessions are kept alive. Default: a third of the TTL.
    pub fn keep_alive_interval(mut self, every: Duration) -> Self {
        self.keep_alive = Some(every);
        self
    }

    /// How often an `Unavailable`/unknown-outcome command is retried (with
    /// the same request id) before the error is returned. Default 5.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Opens the first session and starts the keep-alive task. Must run
    /// inside a Tokio runtime.
    pub async fn connect(self, backend: impl Backend) -> Result<Client, Error> {
        if self.session_ttl < Duration::from_millis(3) {
            return Err(fencelock_core::LockError::InvalidArgument {
                field: "session_ttl".into(),
                reason: format!(
                    "{:?} is too short to keep alive; use at least 3 ms",
                    self.session_ttl
                ),
            }
            .into());
        }
        let every = self
            .keep_alive
            .unwrap_or(self.session_ttl / 3)
            .max(Duration::from_millis(1));
        let sessions = Arc::new(Sessions::new(
            Arc::new(backend),
            self.session_ttl,
            self.retries,
        ));
        sessions.open().await?;
        let task = tokio::spawn(keep_alive(Arc::downgrade(&sessions), every));
        Ok(Client {
            inner: Arc::new(Inner {
                sessions,
                keep_alive: task.abort_handle(),
            }),
        })
    }
}

impl Client {
    /// A client with default options (10 s session TTL).
    pub async fn connect(backend: impl Backend) -> Result<Client, Error> {
        ClientBuilder::default().connect(backend).await
    }

    /// Options: session TTL, keep-alive interval, retries.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    fn sessions(&self) -> &Arc<Sessions> {
        &self.inner.sessions
    }

    fn target(
        &self,
        ns: &str,
        name: &str,
        kind: LockKind,
        lease: Option<Duration>,
    ) -> Result<Target, Error> {
        if lease.is_some_and(|l| millis(l) == 0) {
            return Err(fencelock_core::LockError::InvalidArgument {
                field: "lease".into(),
                reason: "must be at least 1 ms".into(),
            }
            .into());
        }
        Ok(Target {
            sessions: self.sessions().clone(),
            key: LockKey::new(ns, name)?,
            kind,
            lease,
            created: AtomicBool::new(false),
        })
    }

    /// A mutex handle. Validates the name (`InvalidArgument` naming the
    /// field); the lock is created on first acquire.
    pub fn lock(&self, ns: &str, name: &str) -> Result<LockHandle, Error> {
        Ok(LockHandle::new(self.target(
            ns,
            name,
            LockKind::Exclusive,
            None,
        )?))
    }

    /// A mutex whose holds are leases of `lease`: a hold not extended in time
    /// ends by itself (and the next waiter gets the lock).
    pub fn lock_with_lease(
        &self,
        ns: &str,
        name: &str,
        lease: Duration,
    ) -> Result<LockHandle, Error> {
        Ok(LockHandle::new(self.target(
            ns,
            name,
            LockKind::Exclusive,
            Some(lease),
        )?))
    }

    /// A read/write lock handle.
    pub fn rw_lock(&self, ns: &str, name: &str) -> Result<RwLockHandle, Error> {
        Ok(RwLockHandle::new(self.target(
            ns,
            name,
            LockKind::ReadWrite,
            None,
        )?))
    }

    /// A read/write lock whose holds are leases of `lease`.
    pub fn rw_lock_with_lease(
        &self,
        ns: &str,
        name: &str,
        lease: Duration,
    ) -> Result<RwLockHandle, Error> {
        Ok(RwLockHandle::new(self.target(
            ns,
            name,
            LockKind::ReadWrite,
            Some(lease),
        )?))
    }

    /// Runs `f` while holding the mutex `(ns, name)`, then releases it.
    ///
    /// `f` gets the fencing token, to pass to the resources it touches. If the
    /// hold is lost while `f` runs (lease or session expired, stolen,
    /// force-released), `f` is stopped — its future is dropped at its next
    /// `.await` — and the reason is returned: work never silently continues
    /// without the lock.
    pub async fn with_lock<F, Fut, T>(&self, ns: &str, name: &str, f: F) -> Result<T, Error>
    where
        F: FnOnce(FencingToken) -> Fut,
        Fut: Future<Output = T>,
    {
        let guard = self.lock(ns, name)?.acquire().await?;
        let lost = guard.lost_token();
        let out = tokio::select! {
            biased;
            _ = lost.cancelled() => None,
            v = f(guard.token()) => Some(v),
        };
        match out {
            Some(v) => {
                guard.release().await?;
                Ok(v)
            }
            None => Err(guard.lost().await),
        }
    }

    /// Is `token` a current hold of `(ns, name)`?
    pub async fn validate(
        &self,
        ns: &str,
        name: &str,
        token: FencingToken,
    ) -> Result<HolderInfo, Error> {
        self.sessions()
            .backend()
            .validate(&LockKey::new(ns, name)?, token)
            .await
    }

    /// Kind, lease, holders, queue, last token; `None` if it does not exist.
    pub async fn describe(&self, ns: &str, name: &str) -> Result<Option<LockInfo>, Error> {
        self.sessions()
            .backend()
            .describe(&LockKey::new(ns, name)?)
            .await
    }

    /// Admin: ends every hold of the lock without an owner check; returns
    /// how many there were.
    pub async fn force_release(&self, ns: &str, name: &str) -> Result<u64, Error> {
        let command = Command::ForceRelease {
            key: LockKey::new(ns, name)?,
        };
        match self
            .sessions()
            .retry(self.sessions().sessionless_request_id(), command)
            .await?
        {
            Response::ForceReleased { holds } => Ok(holds),
            other => Err(unexpected("force_release", &other)),
        }
    }

    /// Admin: removes the lock; its waiters fail with `NotFound`.
    pub async fn destroy(&self, ns: &str, name: &str) -> Result<(), Error> {
        let command = Command::Destroy {
            key: LockKey::new(ns, name)?,
        };
        match self
            .sessions()
            .retry(self.sessions().sessionless_request_id(), command)
            .await?
        {
            Response::Destroyed => Ok(()),
            other => Err(unexpected("destroy", &other)),
        }
    }

    /// Closes every session of this client (and its clones): all its locks
    /// are released and its waits cancelled at once. Later calls answer
    /// `Closed`.
    pub async fn close(&self) {
        self.inner.keep_alive.abort();
        self.sessions().close().await;
    }
}
