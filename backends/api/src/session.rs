//! The client's sessions: a small pool, one keep-alive task for all of them.
//!
//! # Why a pool
//! The core lets one session hold or wait for a key only once (`AlreadyHeld`,
//! `AlreadyWaiting`), which is what makes a session's hold unambiguous. Tasks
//! of one client that contend for the same key therefore each borrow a
//! different session: the first free one in the pool, or a new one. So two
//! tasks of one client contend exactly like two clients — in the backend's
//! FIFO queue, with their own fencing tokens — and no in-process queue can
//! reorder them. Most clients only ever need the first session.

use crate::{Backend, Error};
use fencelock_core::{Command, LockError, LockKey, RequestId, Response, SessionId};
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One backend session of a client.
#[derive(Debug)]
pub(crate) struct Session {
    pub id: SessionId,
    next_request: AtomicU64,
    /// Fires when the session is gone (expired, closed, or not kept alive
    /// in time): every guard on it has lost its lock.
    pub gone: CancellationToken,
}

impl Session {
    fn new(id: SessionId) -> Self {
        Session {
            id,
            next_request: AtomicU64::new(1),
            gone: CancellationToken::new(),
        }
    }

    /// A fresh request id (increasing per session, as the core expects).
    pub fn request_id(&self) -> RequestId {
        RequestId(self.next_request.fetch_add(1, Ordering::Relaxed))
    }
}

/// The client's live sessions and which keys each is busy with.
#[derive(Default)]
struct Pool {
    sessions: Vec<Arc<Session>>,
    /// Key → sessions holding or waiting for it through this client.
    busy: HashMap<LockKey, Busy, FastHash>,
    closed: bool,
}

/// The sessions busy with one key: almost always exactly one, so that case
/// allocates nothing.
enum Busy {
    One(SessionId),
    Many(Vec<SessionId>),
}

impl Busy {
    fn contains(&self, s: SessionId) -> bool {
        match self {
            Busy::One(one) => *one == s,
            Busy::Many(all) => all.contains(&s),
        }
    }

    fn add(&mut self, s: SessionId) {
        match self {
            Busy::One(one) => *self = Busy::Many(vec![*one, s]),
            Busy::Many(all) => all.push(s),
        }
    }

    /// Removes `s`; true when no session is left.
    fn remove(&mut self, s: SessionId) -> bool {
        match self {
            Busy::One(one) => *one == s,
            Busy::Many(all) => {
                all.retain(|x| *x != s);
                all.is_empty()
            }
        }
    }
}

/// A fast, unkeyed hasher (FxHash's multiply-rotate) for the pool's key
/// map: it is on every acquire and release, holds only this client's own
/// keys, and SipHash's flooding resistance buys nothing there.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type FastHash = std::hash::BuildHasherDefault<FxHasher>;

fn mark_busy(busy: &mut HashMap<LockKey, Busy, FastHash>, key: &LockKey, s: SessionId) {
    match busy.get_mut(key) {
        Some(b) => b.add(s),
        None => {
            busy.insert(key.clone(), Busy::One(s));
        }
    }
}

/// Sessions, keep-alive and retries: what every lock operation goes through.
pub(crate) struct Sessions {
    backend: Arc<dyn Backend>,
    /// The backend never leaves an outcome unknown: no request ids needed.
    certain: bool,
    pub ttl: Duration,
    pub retries: u32,
    pool: Mutex<Pool>,
    /// Counter for request ids of session-less commands (create, force
    /// release, destroy).
    sessionless: AtomicU64,
}

impl Sessions {
    pub fn new(backend: Arc<dyn Backend>, ttl: Duration, retries: u32) -> Self {
        Sessions {
            certain: backend.outcomes_are_certain(),
            backend,
            ttl,
            retries,
            pool: Mutex::new(Pool::default()),
            sessionless: AtomicU64::new(1),
        }
    }

    /// The backend, called directly (calling through the `Arc` would box
    /// every future twice).
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// A request id for the next command of `session`, unless the backend
    /// never needs one (its outcomes are never unknown, so nothing is
    /// retried, and the core's request memory is skipped).
    pub fn request_id(&self, session: &Session) -> Option<RequestId> {
        (!self.certain).then(|| session.request_id())
    }

    /// A request id for a command that names no session (create, force
    /// release, destroy), so that a retry after an unknown outcome is applied
    /// once: the core remembers these table-wide, so the id must be unique
    /// across clients. It is built from one of this client's session ids (unique
    /// in the store) and a counter; no randomness, so simulations stay
    /// deterministic. `None` when the backend needs no ids, or before the
    /// client has a session.
    pub fn sessionless_request_id(&self) -> Option<RequestId> {
        if self.certain {
            return None;
        }
        let owner = self.pool().sessions.first().map(|s| s.id.0)?;
        let n = self.sessionless.fetch_add(1, Ordering::Relaxed);
        Some(RequestId((owner << 32) | (n & 0xffff_ffff)))
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        match self.pool.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Opens a session and adds it to the pool.
    pub async fn open(&self) -> Result<Arc<Session>, Error> {
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let command = Command::OpenSession { ttl_ms };
        match self.retry(None, command).await? {
            Response::SessionOpened { session, .. } => {
                let s = Arc::new(Session::new(session));
                let closed = {
                    let mut pool = self.pool();
                    if !pool.closed {
                        pool.sessions.push(s.clone());
                    }
                    pool.closed
                };
                if closed {
                    self.close_one(&s).await;
                    return Err(Error::Closed);
                }
                Ok(s)
            }
            other => Err(unexpected("open_session", &other)),
        }
    }

    /// Borrows a session that neither holds nor waits for `key` through this
    /// client, opening one if all are busy with it.
    pub async fn checkout(&self, key: &LockKey) -> Result<Arc<Session>, Error> {
        {
            let mut pool = self.pool();
            let pool = &mut *pool;
            if pool.closed {
                return Err(Error::Closed);
            }
            // One hash lookup: the entry is either vacant (the usual case)
            // or lists the sessions already busy with this key.
            let sessions = &pool.sessions;
            let usable = |s: &&Arc<Session>| !s.gone.is_cancelled();
            match pool.busy.entry(key.clone()) {
                Entry::Vacant(e) => {
                    if let Some(s) = sessions.iter().find(usable) {
                        e.insert(Busy::One(s.id));
                        return Ok(s.clone());
                    }
                }
                Entry::Occupied(mut e) => {
                    let busy = e.get_mut();
                    if let Some(s) = sessions
                        .iter()
                        .filter(usable)
                        .find(|s| !busy.contains(s.id))
                    {
                        busy.add(s.id);
                        return Ok(s.clone());
                    }
                }
            }
        }
        let s = self.open().await?;
        mark_busy(&mut self.pool().busy, key, s.id);
        Ok(s)
    }

    /// Returns a borrowed session: it no longer holds or waits for `key`.
    pub fn checkin(&self, key: &LockKey, session: SessionId) {
        let mut pool = self.pool();
        // Two probes rather than `entry`, which would clone the key (an
        // atomic increment and decrement) on every release.
        if pool.busy.get_mut(key).is_some_and(|b| b.remove(session)) {
            pool.busy.remove(key);
        }
    }

    /// Executes with retries: a retryable error is retried with the *same*
    /// request id, so a command applied before the error is not applied twice.
    /// A backend whose outcomes are certain is in-process and never
    /// unavailable: its commands are sent once.
    pub async fn retry(
        &self,
        request_id: Option<RequestId>,
        command: Command,
    ) -> Result<Response, Error> {
        self.retry_waiting(request_id, command, Duration::ZERO)
            .await
    }

    /// [`Sessions::retry`] through [`Backend::execute_waiting`]: a queued
    /// acquire may come back granted within `max_wait` (zero: `execute`).
    async fn retry_waiting(
        &self,
        request_id: Option<RequestId>,
        command: Command,
        max_wait: Duration,
    ) -> Result<Response, Error> {
        if self.certain || self.retries == 0 {
            // Nothing to retry: no clone of the command; and an in-process
            // backend answers without an async call.
            if matches!(command, Command::Acquire { .. } | Command::Steal { .. }) {
                // A synchronous answer never yields: yield to the runtime's
                // budget once per acquire, as a `tokio::sync::Mutex` would.
                tokio::task::coop::consume_budget().await;
            }
            if let Some(r) = self.backend().execute_now(&command, request_id) {
                return r;
            }
            return self.send(command, request_id, max_wait).await;
        }
        let mut attempt = 0;
        loop {
            match self.send(command.clone(), request_id, max_wait).await {
                Err(e) if e.is_retryable() && attempt < self.retries => {
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                }
                other => return other,
            }
        }
    }

    async fn send(
        &self,
        command: Command,
        request_id: Option<RequestId>,
        max_wait: Duration,
    ) -> Result<Response, Error> {
        if max_wait.is_zero() {
            self.backend().execute(command, request_id).await
        } else {
            (self.backend())
                .execute_waiting(command, request_id, max_wait)
                .await
        }
    }

    /// Executes a command of `session` with a fresh request id and retries.
    pub async fn execute(&self, session: &Session, command: Command) -> Result<Response, Error> {
        self.execute_as(session, self.request_id(session), command)
            .await
    }

    /// Executes a command of `session` with the given request id and retries.
    pub async fn execute_as(
        &self,
        session: &Session,
        request_id: Option<RequestId>,
        command: Command,
    ) -> Result<Response, Error> {
        self.execute_waiting_as(session, request_id, command, Duration::ZERO)
            .await
    }

    /// [`Sessions::execute_as`] for an acquire that may wait up to
    /// `max_wait` for its grant in the same call
    /// ([`Backend::execute_waiting`]).
    pub async fn execute_waiting_as(
        &self,
        session: &Session,
        request_id: Option<RequestId>,
        command: Command,
        max_wait: Duration,
    ) -> Result<Response, Error> {
        let r = self.retry_waiting(request_id, command, max_wait).await;
        if let Err(Error::Lock(LockError::SessionNotFound { .. })) = &r {
            self.lost(session.id);
        }
        r
    }

    /// Marks a session gone (its guards' lost notices fire) and drops it.
    pub fn lost(&self, id: SessionId) {
        let mut pool = self.pool();
        if let Some(i) = pool.sessions.iter().position(|s| s.id == id) {
            let s = pool.sessions.swap_remove(i);
            s.gone.cancel();
        }
    }

    fn snapshot(&self) -> Vec<Arc<Session>> {
        self.pool().sessions.clone()
    }

    /// Takes out of the pool the extra sessions (all but the first) that
    /// hold and wait for nothing now, so a burst of contention does not
    /// leave sessions to keep alive forever. Under the pool lock, so no
    /// acquire can pick one of them meanwhile.
    fn take_idle_extras(&self) -> Vec<Arc<Session>> {
        let mut pool = self.pool();
        let pool = &mut *pool;
        if pool.sessions.len() <= 1 {
            return Vec::new();
        }
        let busy = &pool.busy;
        let is_busy = |id: SessionId| busy.values().any(|b| b.contains(id));
        let mut idle = Vec::new();
        let mut i = 1;
        while i < pool.sessions.len() {
            if is_busy(pool.sessions[i].id) {
                i += 1;
            } else {
                idle.push(pool.sessions.swap_remove(i));
            }
        }
        idle
    }

    /// Closes every session; later operations answer `Closed`.
    pub async fn close(&self) {
        let sessions = {
            let mut pool = self.pool();
            pool.closed = true;
            pool.busy.clear();
            std::mem::take(&mut pool.sessions)
        };
        for s in sessions {
            self.close_one(&s).await;
        }
    }

    async fn close_one(&self, s: &Session) {
        let command = Command::CloseSession { session: s.id };
        let _ = self.retry(self.request_id(s), command).await;
        s.gone.cancel();
    }

    pub fn is_closed(&self) -> bool {
        self.pool().closed
    }

    /// Closes the pool without talking to the backend (no runtime left).
    pub fn abandon(&self) -> Vec<Arc<Session>> {
        let mut pool = self.pool();
        pool.closed = true;
        std::mem::take(&mut pool.sessions)
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(10u64.saturating_mul(1 << attempt.min(6)))
}

pub(crate) fn unexpected(what: &str, r: &Response) -> Error {
    Error::backend(format!("{what} answered an unexpected {r:?}"))
}

/// Keeps every session of the pool alive: a keep-alive per session every
/// `interval`; extra sessions found idle are closed instead. A session the backend no longer knows, or one that could not
/// be kept alive for a whole TTL (the backend may have expired it), is
/// marked gone. Ends when the client is dropped or closed.
pub(crate) async fn keep_alive(sessions: Weak<Sessions>, interval: Duration) {
    let mut last_ok: HashMap<SessionId, tokio::time::Instant> = HashMap::new();
    loop {
        tokio::time::sleep(interval).await;
        let Some(all) = sessions.upgrade() else {
            return;
        };
        if all.is_closed() {
            return;
        }
        for s in all.take_idle_extras() {
            all.close_one(&s).await;
        }
        for s in all.snapshot() {
            let command = Command::KeepAlive { session: s.id };
            let started = tokio::time::Instant::now();
            let seen = *last_ok.entry(s.id).or_insert(started);
            match all.backend().execute(command, all.request_id(&s)).await {
                Ok(_) => {
                    last_ok.insert(s.id, started);
                }
                Err(Error::Lock(LockError::SessionNotFound { .. })) => all.lost(s.id),
                Err(e) => {
                    if started.duration_since(seen) >= all.ttl {
                        tracing::warn!(session = %s.id, error = %e, "session not kept alive for a whole TTL; treating it as lost");
                        all.lost(s.id);
                    } else {
                        tracing::debug!(session = %s.id, error = %e, "keep-alive failed; retrying");
                    }
                }
            }
        }
        let live: Vec<SessionId> = all.snapshot().iter().map(|s| s.id).collect();
        last_ok.retain(|id, _| live.contains(id));
    }
}
