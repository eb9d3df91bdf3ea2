//! What every case gets: the backend, a fresh namespace, the time unit, and
//! short helpers that turn unexpected answers into failure messages.

use crate::{Case, Config};
use fencelock::{
    Backend, Command, Error, FencingToken, Grant, LockError, LockInfo, LockKey, LockKind, Mode,
    RequestId, Response, SessionId, WaitStatus,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A case's result: `Err` carries what went wrong.
pub type Check = Result<(), String>;

/// Fails the case with a message unless the condition holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}
pub(crate) use ensure;

/// Session TTL of ordinary case sessions, in units: long enough never to
/// expire during a case.
const LONG_TTL_UNITS: u64 = 2_000;
/// How long a case waits for an outcome that must come, in units.
const PATIENCE_UNITS: u64 = 200;

static NAMESPACES: AtomicU64 = AtomicU64::new(0);

/// The per-case context: backend, namespace, clock unit, request ids.
pub struct Ctx {
    pub backend: Arc<dyn Backend>,
    pub config: Config,
    namespace: String,
    request_ids: AtomicU64,
    sessions: Mutex<Vec<SessionId>>,
}

impl Ctx {
    pub(crate) fn new(backend: Arc<dyn Backend>, case: Case, config: Config) -> Self {
        // Unique per process and run, so a store shared between cases (or
        // kept from an earlier run) never mixes their locks.
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let n = NAMESPACES.fetch_add(1, Ordering::Relaxed);
        Ctx {
            backend,
            config,
            namespace: format!("conformance-{}-{nonce:x}-{n}", case.name()),
            request_ids: AtomicU64::new(1),
            sessions: Mutex::new(Vec::new()),
        }
    }

    /// `n` time units.
    pub fn units(&self, n: u64) -> Duration {
        self.config.unit * u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// `n` time units, in milliseconds (for TTLs and timeouts in commands).
    pub fn ms(&self, n: u64) -> u64 {
        u64::try_from(self.units(n).as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    pub async fn sleep_units(&self, n: u64) {
        tokio::time::sleep(self.units(n)).await;
    }

    /// A key in this case's namespace.
    pub fn key(&self, name: &str) -> LockKey {
        match LockKey::new(&self.namespace, name) {
            Ok(k) => k,
            Err(e) => unreachable!("suite key names are valid: {e}"),
        }
    }

    /// A fresh request id (increasing, as the core expects).
    pub fn rid(&self) -> RequestId {
        RequestId(self.request_ids.fetch_add(1, Ordering::Relaxed))
    }

    /// Opens a session that does not expire during the case.
    pub async fn session(&self) -> Result<SessionId, String> {
        self.session_with_ttl(self.ms(LONG_TTL_UNITS)).await
    }

    /// Opens a session with this TTL (ms); it is closed when the case ends.
    pub async fn session_with_ttl(&self, ttl_ms: u64) -> Result<SessionId, String> {
        match self.exec(Command::OpenSession { ttl_ms }).await {
            Ok(Response::SessionOpened { session, .. }) => {
                if let Ok(mut s) = self.sessions.lock() {
                    s.push(session);
                }
                Ok(session)
            }
            other => Err(format!("open_session answered {other:?}")),
        }
    }

    pub(crate) async fn close_sessions(&self) {
        let sessions = match self.sessions.lock() {
            Ok(mut s) => std::mem::take(&mut *s),
            Err(_) => return,
        };
        for session in sessions {
            let _ = self.exec(Command::CloseSession { session }).await;
        }
    }

    /// Executes without a request id.
    pub async fn exec(&self, command: Command) -> Result<Response, Error> {
        self.backend.execute(command, None).await
    }

    /// Executes with a fresh request id.
    pub async fn exec_rid(&self, command: Command) -> Result<Response, Error> {
        self.backend.execute(command, Some(self.rid())).await
    }

    pub async fn create(
        &self,
        key: &LockKey,
        kind: LockKind,
        ttl_ms: Option<u64>,
    ) -> Result<(), String> {
        match self
            .exec(Command::CreateLock {
                key: key.clone(),
                kind,
                ttl_ms,
            })
            .await
        {
            Ok(Response::LockCreated { .. }) => Ok(()),
            other => Err(format!("create_lock({key}) answered {other:?}")),
        }
    }

    pub async fn acquire(
        &self,
        key: &LockKey,
        session: SessionId,
        mode: Mode,
        timeout_ms: Option<u64>,
    ) -> Result<Response, Error> {
        self.exec_rid(Command::Acquire {
            key: key.clone(),
            session,
            mode,
            timeout_ms,
        })
        .await
    }

    /// Acquires and expects an immediate grant.
    pub async fn granted(
        &self,
        key: &LockKey,
        session: SessionId,
        mode: Mode,
    ) -> Result<Grant, String> {
        match self.acquire(key, session, mode, Some(0)).await {
            Ok(Response::Granted(g)) => Ok(g),
            other => Err(format!(
                "acquire({key}, {session}, {mode}) should be granted at once, got {other:?}"
            )),
        }
    }

    /// Acquires and expects to be queued.
    pub async fn queued(
        &self,
        key: &LockKey,
        session: SessionId,
        mode: Mode,
        timeout_ms: Option<u64>,
    ) -> Check {
        match self.acquire(key, session, mode, timeout_ms).await {
            Ok(Response::Queued { .. }) => Ok(()),
            other => Err(format!(
                "acquire({key}, {session}, {mode}) should queue, got {other:?}"
            )),
        }
    }

    /// Waits until the wait's outcome is known (or the patience runs out).
    pub async fn outcome(&self, key: &LockKey, session: SessionId) -> Result<WaitStatus, String> {
        let give_up = tokio::time::Instant::now() + self.units(PATIENCE_UNITS);
        loop {
            let status = self
                .backend
                .wait(key, session, self.units(20))
                .await
                .map_err(|e| format!("wait({key}, {session}) failed: {e}"))?;
            if status != WaitStatus::Waiting {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(format!(
                    "{session}'s wait for {key} neither granted nor ended within {} units",
                    PATIENCE_UNITS
                ));
            }
        }
    }

    /// Waits for a grant that must come.
    pub async fn grant_of_wait(&self, key: &LockKey, session: SessionId) -> Result<Grant, String> {
        match self.outcome(key, session).await? {
            WaitStatus::Granted(g) => Ok(g),
            other => Err(format!(
                "{session}'s wait for {key} should be granted, got {other:?}"
            )),
        }
    }

    /// The wait's status right now, without waiting.
    pub async fn status_now(
        &self,
        key: &LockKey,
        session: SessionId,
    ) -> Result<WaitStatus, String> {
        self.backend
            .wait(key, session, Duration::ZERO)
            .await
            .map_err(|e| format!("wait({key}, {session}, 0) failed: {e}"))
    }

    /// Checks that `session` is still queued for `key`.
    pub async fn still_waiting(&self, key: &LockKey, session: SessionId) -> Check {
        let status = self.status_now(key, session).await?;
        ensure!(
            status == WaitStatus::Waiting,
            "{session} should still be waiting for {key}, but its wait is {status:?}"
        );
        Ok(())
    }

    pub async fn release(
        &self,
        key: &LockKey,
        session: SessionId,
        token: FencingToken,
    ) -> Result<Response, Error> {
        self.exec_rid(Command::Release {
            key: key.clone(),
            session,
            token,
        })
        .await
    }

    pub async fn extend(
        &self,
        key: &LockKey,
        session: SessionId,
        token: FencingToken,
    ) -> Result<Response, Error> {
        self.exec_rid(Command::Extend {
            key: key.clone(),
            session,
            token,
        })
        .await
    }

    /// Releases and expects success.
    pub async fn released(&self, key: &LockKey, session: SessionId, token: FencingToken) -> Check {
        match self.release(key, session, token).await {
            Ok(Response::Released) => Ok(()),
            other => Err(format!(
                "release({key}, {session}, {token}) should succeed, got {other:?}"
            )),
        }
    }

    pub async fn describe(&self, key: &LockKey) -> Result<LockInfo, String> {
        match self.backend.describe(key).await {
            Ok(Some(info)) => Ok(info),
            other => Err(format!(
                "describe({key}) should find the lock, got {other:?}"
            )),
        }
    }

    /// The sessions holding `key`, in token order.
    pub async fn holders(&self, key: &LockKey) -> Result<Vec<SessionId>, String> {
        Ok(self
            .describe(key)
            .await?
            .holders
            .iter()
            .map(|h| h.session)
            .collect())
    }

    /// The sessions queued for `key`, in queue order.
    pub async fn waiters(&self, key: &LockKey) -> Result<Vec<SessionId>, String> {
        Ok(self
            .describe(key)
            .await?
            .waiters
            .iter()
            .map(|w| w.session)
            .collect())
    }
}

/// The core error inside a result, if that is what it is.
pub fn lock_error<T>(r: &Result<T, Error>) -> Option<&LockError> {
    match r {
        Err(Error::Lock(e)) => Some(e),
        _ => None,
    }
}

/// Expects a specific core error, described by `what` and matched by `is`.
pub fn expect_error<T: std::fmt::Debug>(
    r: &Result<T, Error>,
    what: &str,
    is: impl Fn(&LockError) -> bool,
) -> Check {
    match lock_error(r) {
        Some(e) if is(e) => Ok(()),
        _ => Err(format!("{what}: got {r:?}")),
    }
}
