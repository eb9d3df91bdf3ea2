//! A deliberately simple reference model of `SEMANTICS.md`.
//!
//! Plain `Vec`s and linear scans, no indexes, no deadline set: expiries are
//! found by scanning every session, hold and waiter for the earliest one due,
//! again and again, so the model is easy to check by reading. It follows the
//! decisions documented in `core/src/table.rs`: each expiry is processed at
//! its own instant; at one instant waits end before sessions, sessions before
//! leases (then key order, then queue/token/session order); `now` is clamped so
//! it never goes backwards.
//!
//! A [`Bug`] plants a known mistake, so tests can show that the comparison
//! with the core catches it.

use fencelock_core::{
    Command, Event, FencingToken, Grant, HoldEnd, HolderInfo, Limits, LockError, LockInfo, LockKey,
    LockKind, Mode, RequestId, Response, SessionId, SessionInfo, WaitEnd, WaiterInfo,
};

pub type Outcome = Result<Response, LockError>;

/// Mistakes the model can be told to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// A reader compatible with the holders is granted even though a writer is queued.
    ReaderOvertakesQueuedWriter,
    /// Releasing the newest hold hands its token out again.
    ReusesFencingToken,
    /// A lease ends, but the next waiter is not granted in the same transition.
    ForgetsToGrantAfterLeaseExpiry,
    /// At one instant, leases end before waits (so a waiter can be granted at
    /// its own deadline), against the documented order.
    LeasesEndBeforeWaitsAtOneInstant,
    /// A head waiter cancels, and the compatible waiters behind it are not
    /// woken (a lost wake-up).
    CancelForgetsToGrant,
}

impl Bug {
    pub const ALL: [Bug; 5] = [
        Bug::ReaderOvertakesQueuedWriter,
        Bug::ReusesFencingToken,
        Bug::ForgetsToGrantAfterLeaseExpiry,
        Bug::LeasesEndBeforeWaitsAtOneInstant,
        Bug::CancelForgetsToGrant,
    ];
}

#[derive(Debug, Clone)]
struct MSession {
    id: SessionId,
    ttl_ms: u64,
    expires_at: u64,
    /// (request id, command, first result), oldest first.
    requests: Vec<(RequestId, Command, Outcome)>,
    forgotten_below: u64,
}

#[derive(Debug, Clone)]
struct MHold {
    token: u64,
    session: SessionId,
    mode: Mode,
    granted_at: u64,
    expires_at: Option<u64>,
}

#[derive(Debug, Clone)]
struct MWaiter {
    session: SessionId,
    mode: Mode,
    since: u64,
    deadline: Option<u64>,
    request_id: Option<RequestId>,
}

#[derive(Debug, Clone)]
struct MLock {
    key: LockKey,
    kind: LockKind,
    ttl_ms: Option<u64>,
    holders: Vec<MHold>,
    /// Queue order.
    queue: Vec<MWaiter>,
    last_token: u64,
    /// Why recent holds ended (newest `max_ended_tokens_per_lock` tokens).
    ended: Vec<(u64, HoldEnd)>,
}

/// What falls due: sorting these tuples gives the processing order.
/// (at, class: 1 wait / 2 session / 3 lease, key, queue index / session id / token)
type Due = (u64, u8, Option<LockKey>, u64);

#[derive(Debug, Clone)]
pub struct Model {
    now: u64,
    last_token: u64,
    last_session: u64,
    limits: Limits,
    sessions: Vec<MSession>,
    locks: Vec<MLock>,
    /// Session-less requests (open, create, force release, destroy): (id,
    /// command, first result), oldest first, the newest 4096 kept.
    sessionless: Vec<(RequestId, Command, Outcome)>,
    bug: Option<Bug>,
}

fn invalid(field: &str, reason: &str) -> LockError {
    LockError::InvalidArgument {
        field: field.into(),
        reason: reason.into(),
    }
}

fn exhausted(limit: &str, max: u64) -> LockError {
    LockError::ResourceExhausted {
        limit: limit.into(),
        max,
    }
}

impl Model {
    pub fn new(limits: Limits, bug: Option<Bug>) -> Self {
        Model {
            now: 0,
            last_token: 0,
            last_session: 0,
            limits,
            sessions: Vec::new(),
            locks: Vec::new(),
            sessionless: Vec::new(),
            bug,
        }
    }

    // ----- reads --------------------------------------------------------------

    pub fn now(&self) -> u64 {
        self.now
    }

    pub fn last_token(&self) -> u64 {
        self.last_token
    }

    pub fn last_session(&self) -> u64 {
        self.last_session
    }

    pub fn lock_count(&self) -> usize {
        self.locks.len()
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.all_due().into_iter().map(|d| d.0).min()
    }

    pub fn describe(&self, key: &LockKey) -> Option<LockInfo> {
        let lock = self.lock(key)?;
        let mut holders: Vec<HolderInfo> = lock
            .holders
            .iter()
            .map(|h| HolderInfo {
                session: h.session,
                mode: h.mode,
                token: FencingToken(h.token),
                granted_at: h.granted_at,
                expires_at: h.expires_at,
            })
            .collect();
        holders.sort_by_key(|h| h.token);
        Some(LockInfo {
            key: key.clone(),
            kind: lock.kind,
            ttl_ms: lock.ttl_ms,
            holders,
            waiters: lock
                .queue
                .iter()
                .map(|w| WaiterInfo {
                    session: w.session,
                    mode: w.mode,
                    since: w.since,
                    deadline: w.deadline,
                    request_id: w.request_id,
                })
                .collect(),
            last_token: FencingToken(lock.last_token),
        })
    }

    pub fn describe_session(&self, id: SessionId) -> Option<SessionInfo> {
        let s = self.sessions.iter().find(|s| s.id == id)?;
        let mut holds = Vec::new();
        let mut waits = Vec::new();
        for lock in self.locks_in_key_order() {
            for h in lock.holders.iter().filter(|h| h.session == id) {
                holds.push((lock.key.clone(), FencingToken(h.token)));
            }
            if lock.queue.iter().any(|w| w.session == id) {
                waits.push(lock.key.clone());
            }
        }
        Some(SessionInfo {
            session: id,
            ttl_ms: s.ttl_ms,
            expires_at: s.expires_at,
            holds,
            waits,
        })
    }

    pub fn validate(
        &self,
        now: u64,
        key: &LockKey,
        token: FencingToken,
    ) -> Result<HolderInfo, LockError> {
        let now = now.min(fencelock_core::MAX_TIME).max(self.now);
        let Some(lock) = self.lock(key) else {
            return Err(LockError::NotFound { key: key.clone() });
        };
        let Some(h) = lock.holders.iter().find(|h| h.token == token.0) else {
            return Err(ended_error(lock, token));
        };
        let lease_over = h.expires_at.is_some_and(|at| at <= now);
        let session_over = match self.sessions.iter().find(|s| s.id == h.session) {
            Some(s) => s.expires_at <= now,
            None => true,
        };
        if lease_over || session_over {
            return Err(LockError::Expired {
                key: key.clone(),
                token,
            });
        }
        Ok(HolderInfo {
            session: h.session,
            mode: h.mode,
            token,
            granted_at: h.granted_at,
            expires_at: h.expires_at,
        })
    }

    // ----- commands ----------------------------------------------------------

    pub fn apply_request(
        &mut self,
        now: u64,
        rid: Option<RequestId>,
        cmd: &Command,
        events: &mut Vec<Event>,
    ) -> Outcome {
        self.advance(now, events);
        let Some(rid) = rid else {
            return self.execute(cmd, None, events);
        };
        let Some(sid) = cmd.session() else {
            if matches!(cmd, Command::Tick) {
                return self.execute(cmd, None, events);
            }
            if let Some((_, first, outcome)) = self.sessionless.iter().find(|r| r.0 == rid) {
                if first != cmd {
                    return Err(invalid("request_id", "reused for a different command"));
                }
                return outcome.clone();
            }
            let outcome = self.execute(cmd, Some(rid), events);
            self.sessionless.push((rid, cmd.clone(), outcome.clone()));
            if self.sessionless.len() > fencelock_core::SESSIONLESS_REQUEST_MEMORY {
                let _evicted = self.sessionless.remove(0);
            }
            return outcome;
        };
        let Some(s) = self.sessions.iter().find(|s| s.id == sid) else {
            return Err(LockError::SessionNotFound { session: sid });
        };
        if let Some((_, first, outcome)) = s.requests.iter().find(|r| r.0 == rid) {
            if first != cmd {
                return Err(invalid("request_id", "reused for a different command"));
            }
            return outcome.clone();
        }
        if rid.0 < s.forgotten_below {
            return Err(invalid("request_id", "forgotten"));
        }
        let outcome = self.execute(cmd, Some(rid), events);
        let max = self.limits.max_remembered_requests;
        if let Some(s) = self.sessions.iter_mut().find(|s| s.id == sid) {
            if max == 0 {
                s.forgotten_below = s.forgotten_below.max(rid.0 + 1);
            } else {
                s.requests.push((rid, cmd.clone(), outcome.clone()));
                while s.requests.len() as u64 > max {
                    let oldest = (0..s.requests.len())
                        .min_by_key(|&i| s.requests[i].0)
                        .unwrap();
                    let (old, _, _) = s.requests.remove(oldest);
                    s.forgotten_below = s.forgotten_below.max(old.0 + 1);
                }
            }
        }
        outcome
    }

    /// Pushes every session's expiry to at least `now + ttl`; expires nothing.
    pub fn grant_grace(&mut self, now: u64) -> u64 {
        let now = now.min(fencelock_core::MAX_TIME).max(self.now);
        let mut n = 0;
        for s in &mut self.sessions {
            if now + s.ttl_ms > s.expires_at {
                s.expires_at = now + s.ttl_ms;
                n += 1;
            }
        }
        n
    }

    fn execute(&mut self, cmd: &Command, rid: Option<RequestId>, ev: &mut Vec<Event>) -> Outcome {
        match cmd.clone() {
            Command::OpenSession { ttl_ms } => {
                self.check_ttl(ttl_ms)?;
                if self.sessions.len() as u64 >= self.limits.max_sessions {
                    return Err(exhausted("max_sessions", self.limits.max_sessions));
                }
                self.last_session += 1;
                let id = SessionId(self.last_session);
                let expires_at = self.now + ttl_ms;
                self.sessions.push(MSession {
                    id,
                    ttl_ms,
                    expires_at,
                    requests: Vec::new(),
                    forgotten_below: 0,
                });
                Ok(Response::SessionOpened {
                    session: id,
                    expires_at,
                })
            }
            Command::KeepAlive { session } => {
                let now = self.now;
                let s = self.session_mut(session)?;
                s.expires_at = now + s.ttl_ms;
                Ok(Response::KeptAlive {
                    expires_at: s.expires_at,
                })
            }
            Command::CloseSession { session } => {
                self.session_mut(session)?;
                self.end_session(session, ev);
                Ok(Response::SessionClosed)
            }
            Command::CreateLock { key, kind, ttl_ms } => {
                if let Some(ttl) = ttl_ms {
                    self.check_ttl(ttl)?;
                }
                if let Some(lock) = self.lock(&key) {
                    if lock.kind != kind {
                        return Err(LockError::AlreadyExists {
                            key,
                            existing: lock.kind,
                            requested: kind,
                        });
                    }
                    return Ok(Response::LockCreated {
                        created: false,
                        kind,
                        ttl_ms: lock.ttl_ms,
                    });
                }
                self.new_lock(&key, kind, ttl_ms)?;
                Ok(Response::LockCreated {
                    created: true,
                    kind,
                    ttl_ms,
                })
            }
            Command::Acquire {
                key,
                session,
                mode,
                timeout_ms,
            } => self.acquire(&key, session, mode, timeout_ms, rid),
            Command::CancelWait { key, session } => {
                self.session_mut(session)?;
                let Some(lock) = self.lock_mut(&key) else {
                    return Ok(Response::WaitCancelled { was_waiting: false });
                };
                let Some(i) = lock.queue.iter().position(|w| w.session == session) else {
                    return Ok(Response::WaitCancelled { was_waiting: false });
                };
                lock.queue.remove(i);
                if self.bug != Some(Bug::CancelForgetsToGrant) {
                    self.grant_waiters(&key, ev);
                }
                Ok(Response::WaitCancelled { was_waiting: true })
            }
            Command::Release {
                key,
                session,
                token,
            } => {
                self.owned_hold(&key, session, token)?;
                let lock = self.lock_mut(&key).unwrap();
                lock.holders.retain(|h| h.token != token.0);
                if self.bug == Some(Bug::ReusesFencingToken) && token.0 == self.last_token {
                    self.last_token -= 1;
                }
                self.grant_waiters(&key, ev);
                Ok(Response::Released)
            }
            Command::Extend {
                key,
                session,
                token,
            } => {
                self.owned_hold(&key, session, token)?;
                let now = self.now;
                let lock = self.lock_mut(&key).unwrap();
                let Some(ttl) = lock.ttl_ms else {
                    return Ok(Response::Extended { expires_at: None });
                };
                let h = lock
                    .holders
                    .iter_mut()
                    .find(|h| h.token == token.0)
                    .unwrap();
                h.expires_at = Some(now + ttl);
                Ok(Response::Extended {
                    expires_at: h.expires_at,
                })
            }
            Command::Steal { key, session } => {
                self.session_mut(session)?;
                let involved = self.describe_session(session).is_some_and(|s| {
                    s.holds.iter().any(|(k, _)| *k == key) || s.waits.contains(&key)
                });
                if !involved && self.locks_of(session) >= self.limits.max_locks_per_session {
                    return Err(exhausted(
                        "max_locks_per_session",
                        self.limits.max_locks_per_session,
                    ));
                }
                let Some(lock) = self.lock_mut(&key) else {
                    return Err(LockError::NotFound { key });
                };
                lock.queue.retain(|w| w.session != session);
                let mode = match lock.kind {
                    LockKind::Exclusive => Mode::Exclusive,
                    LockKind::ReadWrite => Mode::Write,
                };
                for token in self.tokens_of(&key) {
                    self.end_hold(&key, token, HoldEnd::Stolen, ev);
                }
                Ok(Response::Granted(self.issue(&key, session, mode)))
            }
            Command::ForceRelease { key } => {
                if self.lock(&key).is_none() {
                    return Err(LockError::NotFound { key });
                }
                let tokens = self.tokens_of(&key);
                for &token in &tokens {
                    self.end_hold(&key, token, HoldEnd::ForceReleased, ev);
                }
                self.grant_waiters(&key, ev);
                Ok(Response::ForceReleased {
                    holds: tokens.len() as u64,
                })
            }
            Command::Destroy { key } => {
                if self.lock(&key).is_none() {
                    return Err(LockError::NotFound { key });
                }
                for token in self.tokens_of(&key) {
                    self.end_hold(&key, token, HoldEnd::Destroyed, ev);
                }
                let i = self.locks.iter().position(|l| l.key == key).unwrap();
                let lock = self.locks.remove(i);
                for w in lock.queue {
                    ev.push(Event::WaitEnded {
                        key: key.clone(),
                        session: w.session,
                        request_id: w.request_id,
                        reason: WaitEnd::Destroyed,
                    });
                }
                Ok(Response::Destroyed)
            }
            Command::Tick => Ok(Response::Ticked),
        }
    }

    fn acquire(
        &mut self,
        key: &LockKey,
        session: SessionId,
        mode: Mode,
        timeout_ms: Option<u64>,
        rid: Option<RequestId>,
    ) -> Outcome {
        if let Some(t) = timeout_ms.filter(|&t| t > 0) {
            if t > self.limits.max_ttl_ms {
                return Err(invalid("timeout_ms", "out of range"));
            }
        }
        self.session_mut(session)?;
        if let Some(lock) = self.lock(key) {
            if lock.holders.iter().any(|h| h.session == session) {
                return Err(LockError::AlreadyHeld {
                    key: key.clone(),
                    session,
                });
            }
            if lock.queue.iter().any(|w| w.session == session) {
                return Err(LockError::AlreadyWaiting {
                    key: key.clone(),
                    session,
                });
            }
        }
        if self.locks_of(session) >= self.limits.max_locks_per_session {
            return Err(exhausted(
                "max_locks_per_session",
                self.limits.max_locks_per_session,
            ));
        }
        match self.lock(key) {
            Some(lock) if lock.kind != mode.kind() => {
                return Err(LockError::AlreadyExists {
                    key: key.clone(),
                    existing: lock.kind,
                    requested: mode.kind(),
                })
            }
            Some(_) => {}
            None => self.new_lock(key, mode.kind(), None)?,
        }
        let lock = self.lock(key).unwrap();
        let free = compatible(lock, mode)
            && (lock.queue.is_empty()
                || (self.bug == Some(Bug::ReaderOvertakesQueuedWriter)
                    && mode == Mode::Read
                    && !lock.holders.is_empty()));
        if free {
            return Ok(Response::Granted(self.issue(key, session, mode)));
        }
        if timeout_ms == Some(0) {
            return Err(LockError::WouldBlock { key: key.clone() });
        }
        let max_waiters = self.limits.max_waiters_per_lock;
        let now = self.now;
        let lock = self.lock_mut(key).unwrap();
        if lock.queue.len() as u64 >= max_waiters {
            return Err(exhausted("max_waiters_per_lock", max_waiters));
        }
        let deadline = timeout_ms.map(|t| now.saturating_add(t));
        lock.queue.push(MWaiter {
            session,
            mode,
            since: now,
            deadline,
            request_id: rid,
        });
        Ok(Response::Queued {
            position: lock.queue.len() as u64,
            deadline,
        })
    }

    // ----- time ---------------------------------------------------------------

    fn all_due(&self) -> Vec<Due> {
        let mut due = Vec::new();
        for lock in &self.locks {
            for (i, w) in lock.queue.iter().enumerate() {
                if let Some(d) = w.deadline {
                    due.push((d, 1, Some(lock.key.clone()), i as u64));
                }
            }
            let lease_class = match self.bug {
                Some(Bug::LeasesEndBeforeWaitsAtOneInstant) => 0,
                _ => 3,
            };
            for h in &lock.holders {
                if let Some(e) = h.expires_at {
                    due.push((e, lease_class, Some(lock.key.clone()), h.token));
                }
            }
        }
        for s in &self.sessions {
            due.push((s.expires_at, 2, None, s.id.0));
        }
        due
    }

    /// Processes the earliest due item while one is due at or before `now`.
    fn advance(&mut self, now: u64, ev: &mut Vec<Event>) {
        let now = now.min(fencelock_core::MAX_TIME).max(self.now);
        while let Some((at, class, key, n)) =
            self.all_due().into_iter().filter(|d| d.0 <= now).min()
        {
            self.now = at;
            match (class, key) {
                (1, Some(key)) => {
                    let w = self.lock_mut(&key).unwrap().queue.remove(n as usize);
                    ev.push(Event::WaitEnded {
                        key: key.clone(),
                        session: w.session,
                        request_id: w.request_id,
                        reason: WaitEnd::TimedOut,
                    });
                    self.grant_waiters(&key, ev);
                }
                (2, _) => {
                    ev.push(Event::SessionExpired {
                        session: SessionId(n),
                    });
                    self.end_session(SessionId(n), ev);
                }
                (_, Some(key)) => {
                    self.end_hold(&key, n, HoldEnd::LeaseExpired, ev);
                    if self.bug != Some(Bug::ForgetsToGrantAfterLeaseExpiry) {
                        self.grant_waiters(&key, ev);
                    }
                }
                other => unreachable!("{other:?}"),
            }
        }
        self.now = now;
    }

    // ----- mechanics ------------------------------------------------------------

    fn end_session(&mut self, id: SessionId, ev: &mut Vec<Event>) {
        self.sessions.retain(|s| s.id != id);
        let mut affected = Vec::new();
        let mut keys: Vec<LockKey> = self.locks.iter().map(|l| l.key.clone()).collect();
        keys.sort();
        for key in &keys {
            let lock = self.lock_mut(key).unwrap();
            if let Some(i) = lock.queue.iter().position(|w| w.session == id) {
                let w = lock.queue.remove(i);
                ev.push(Event::WaitEnded {
                    key: key.clone(),
                    session: id,
                    request_id: w.request_id,
                    reason: WaitEnd::SessionEnded,
                });
                affected.push(key.clone());
            }
        }
        for key in &keys {
            let held: Vec<u64> = self
                .lock(key)
                .unwrap()
                .holders
                .iter()
                .filter(|h| h.session == id)
                .map(|h| h.token)
                .collect();
            for token in held {
                self.end_hold(key, token, HoldEnd::SessionEnded, ev);
                affected.push(key.clone());
            }
        }
        affected.sort();
        affected.dedup();
        for key in affected {
            self.grant_waiters(&key, ev);
        }
    }

    fn end_hold(&mut self, key: &LockKey, token: u64, why: HoldEnd, ev: &mut Vec<Event>) {
        let max = self.limits.max_ended_tokens_per_lock;
        let lock = self.lock_mut(key).unwrap();
        let i = lock.holders.iter().position(|h| h.token == token).unwrap();
        let h = lock.holders.remove(i);
        if max > 0 {
            lock.ended.retain(|(t, _)| *t != token);
            lock.ended.push((token, why));
            while lock.ended.len() as u64 > max {
                let oldest = (0..lock.ended.len())
                    .min_by_key(|&i| lock.ended[i].0)
                    .unwrap();
                lock.ended.remove(oldest);
            }
        }
        ev.push(Event::HoldLost {
            key: key.clone(),
            session: h.session,
            token: FencingToken(token),
            reason: why,
        });
    }

    fn grant_waiters(&mut self, key: &LockKey, ev: &mut Vec<Event>) {
        loop {
            let Some(lock) = self.lock_mut(key) else {
                return;
            };
            match lock.queue.first() {
                Some(head) if compatible(lock, head.mode) => {}
                _ => return,
            }
            let w = lock.queue.remove(0);
            let grant = self.issue(key, w.session, w.mode);
            ev.push(Event::Granted {
                key: key.clone(),
                session: w.session,
                request_id: w.request_id,
                grant,
            });
        }
    }

    fn issue(&mut self, key: &LockKey, session: SessionId, mode: Mode) -> Grant {
        self.last_token += 1;
        let token = self.last_token;
        let now = self.now;
        let lock = self.lock_mut(key).unwrap();
        lock.last_token = token;
        let expires_at = lock.ttl_ms.map(|t| now.saturating_add(t));
        lock.holders.push(MHold {
            token,
            session,
            mode,
            granted_at: now,
            expires_at,
        });
        Grant {
            token: FencingToken(token),
            mode,
            granted_at: now,
            expires_at,
        }
    }

    fn owned_hold(
        &self,
        key: &LockKey,
        session: SessionId,
        token: FencingToken,
    ) -> Result<(), LockError> {
        let Some(lock) = self.lock(key) else {
            return Err(LockError::NotFound { key: key.clone() });
        };
        match lock.holders.iter().find(|h| h.token == token.0) {
            Some(h) if h.session == session => Ok(()),
            Some(_) => Err(LockError::NotHolder {
                key: key.clone(),
                token,
            }),
            None => Err(ended_error(lock, token)),
        }
    }

    fn new_lock(
        &mut self,
        key: &LockKey,
        kind: LockKind,
        ttl_ms: Option<u64>,
    ) -> Result<(), LockError> {
        if self.locks.len() as u64 >= self.limits.max_locks {
            return Err(exhausted("max_locks", self.limits.max_locks));
        }
        self.locks.push(MLock {
            key: key.clone(),
            kind,
            ttl_ms,
            holders: Vec::new(),
            queue: Vec::new(),
            last_token: 0,
            ended: Vec::new(),
        });
        Ok(())
    }

    fn check_ttl(&self, ttl: u64) -> Result<(), LockError> {
        if ttl == 0 || ttl > self.limits.max_ttl_ms {
            return Err(invalid("ttl_ms", "out of range"));
        }
        Ok(())
    }

    fn tokens_of(&self, key: &LockKey) -> Vec<u64> {
        let mut tokens: Vec<u64> = self
            .lock(key)
            .unwrap()
            .holders
            .iter()
            .map(|h| h.token)
            .collect();
        tokens.sort();
        tokens
    }

    fn locks_of(&self, session: SessionId) -> u64 {
        let mut n = 0;
        for lock in &self.locks {
            n += lock.holders.iter().filter(|h| h.session == session).count() as u64;
            n += lock.queue.iter().filter(|w| w.session == session).count() as u64;
        }
        n
    }

    fn locks_in_key_order(&self) -> Vec<&MLock> {
        let mut locks: Vec<&MLock> = self.locks.iter().collect();
        locks.sort_by(|a, b| a.key.cmp(&b.key));
        locks
    }

    fn lock(&self, key: &LockKey) -> Option<&MLock> {
        self.locks.iter().find(|l| l.key == *key)
    }

    fn lock_mut(&mut self, key: &LockKey) -> Option<&mut MLock> {
        self.locks.iter_mut().find(|l| l.key == *key)
    }

    fn session_mut(&mut self, id: SessionId) -> Result<&mut MSession, LockError> {
        self.sessions
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or(LockError::SessionNotFound { session: id })
    }
}

/// Can `mode` hold the lock together with every current holder?
fn compatible(lock: &MLock, mode: Mode) -> bool {
    lock.holders
        .iter()
        .all(|h| mode == Mode::Read && h.mode == Mode::Read)
}

/// The error for using a token that is not a current hold.
fn ended_error(lock: &MLock, token: FencingToken) -> LockError {
    let key = lock.key.clone();
    match lock
        .ended
        .iter()
        .find(|(t, _)| *t == token.0)
        .map(|(_, why)| why)
    {
        Some(HoldEnd::Stolen) => LockError::Stolen { key, token },
        Some(HoldEnd::LeaseExpired | HoldEnd::SessionEnded) => LockError::Expired { key, token },
        _ => LockError::NotHolder { key, token },
    }
}
