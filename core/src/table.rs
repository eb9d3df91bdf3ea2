//! The lock table: every lock and session, one deterministic state machine.
//!
//! # How a driver uses it
//! Feed each command with the driver's `now`; the table first processes every
//! expiry due at or before `now` (in deadline order, each at its own instant),
//! then applies the command. Responses go to the caller; [`Event`]s describe
//! what happened to others. Call again (with [`Command::Tick`] or
//! [`Table::tick`]) no later than [`Table::next_deadline`].
//!
//! Time never goes backwards inside the table: a `now` lower than the last one
//! seen is treated as the last one (a Raft leader with a slower clock cannot
//! move state time back).
//!
//! # Expiry at the instant it is due
//! A lease that ends at `t` hands the lock to the next waiter *at `t`*, even if
//! the driver only ticks later; the new holder's lease is counted from `t`. So
//! results do not depend on how often a driver ticks, and a late tick can only
//! make a lease shorter as seen by its client, never longer. At one instant,
//! waits whose deadline is due end first (a waiter is not granted at its own
//! deadline), then sessions, then leases.
//!
//! # Cost (n = locks, sessions or waiters of a lock; h = holders of a lock)
//! | operation | cost |
//! |---|---|
//! | acquire (grant or queue), try-lock | O(log n) |
//! | release / extend / cancel wait, each grant handed on | O(log n) per grant |
//! | steal, force release | O(h log n) |
//! | destroy, close/expire a session holding k locks | O((h + w + k) log n) |
//! | expiring k leases / waits / sessions | O(k log n) — a deadline index, never a scan |
//! | validate, next_deadline | O(log n) |
//! | describe | O(log n + h + w) |
//! | snapshot / restore | O(n log n) |
//!
//! Locks live in a hash map keyed by the key's own hash (SipHash with fixed
//! keys, computed once per [`LockKey`]): lookups are O(1) expected, nothing
//! iterates the map into an output (snapshots sort by key), and the same
//! commands give the same results on every replica.

use crate::command::{Command, Event, Grant, HoldEnd, LockInfo, Response, SessionInfo, WaitEnd};
use crate::error::LockError;
use crate::key::{FixedState, LockKey};
use crate::limits::Limits;
use crate::lock::{Hold, LockState, Waiter};
use crate::session::{sorted, KeyIndex, Outcome, RequestMemory, Session, SessionlessMemory};
use crate::types::{FencingToken, LockKind, Millis, Mode, RequestId, SessionId};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Something that falls due at a point in time. Variant order is the order of
/// processing at one instant: waits end before sessions, sessions before leases.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Due {
    Wait { key: LockKey, seq: u64 },
    Session(SessionId),
    Lease { key: LockKey, token: u64 },
}

/// The whole lock state. See the module docs for how to drive it.
#[derive(Debug, Clone)]
pub struct Table {
    pub(crate) now: Millis,
    pub(crate) last_token: u64,
    pub(crate) last_session: u64,
    pub(crate) limits: Limits,
    pub(crate) locks: HashMap<LockKey, LockState, FixedState>,
    pub(crate) sessions: BTreeMap<SessionId, Session>,
    pub(crate) deadlines: BTreeSet<(Millis, Due)>,
    /// Results of recent requests that name no session.
    pub(crate) sessionless: SessionlessMemory,
}

impl Default for Table {
    fn default() -> Self {
        Table::new(Limits::default())
    }
}

impl Table {
    /// An empty table at time 0.
    pub fn new(limits: Limits) -> Self {
        Table {
            now: 0,
            last_token: 0,
            last_session: 0,
            limits,
            locks: HashMap::default(),
            sessions: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            sessionless: SessionlessMemory::default(),
        }
    }

    /// State time: the highest `now` applied so far.
    pub fn now(&self) -> Millis {
        self.now
    }

    /// The limits this table enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// When the driver must call again (a lease, wait or session falls due).
    pub fn next_deadline(&self) -> Option<Millis> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Number of locks in the table.
    pub fn lock_count(&self) -> usize {
        self.locks.len()
    }

    /// Number of open sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The last fencing token issued by this table (0: none yet).
    pub fn last_token(&self) -> FencingToken {
        FencingToken(self.last_token)
    }

    // ----- applying commands ------------------------------------------------

    /// Applies `command` at `now`, without a request id.
    pub fn apply(&mut self, now: Millis, command: &Command, events: &mut Vec<Event>) -> Outcome {
        self.apply_request(now, None, command, events)
    }

    /// Applies `command` at `now`. With a `request_id`, a command is applied
    /// at most once: a retry returns the first result and changes nothing.
    /// Commands that name a session are remembered by that session (its newest
    /// [`Limits::max_remembered_requests`]; use increasing ids). `OpenSession`,
    /// `CreateLock`, `ForceRelease` and `Destroy` are remembered table-wide
    /// (the newest [`SESSIONLESS_REQUEST_MEMORY`](crate::SESSIONLESS_REQUEST_MEMORY);
    /// use random ids). `Tick` is never remembered: repeating it is harmless.
    pub fn apply_request(
        &mut self,
        now: Millis,
        request_id: Option<RequestId>,
        command: &Command,
        events: &mut Vec<Event>,
    ) -> Outcome {
        self.advance(now, events);
        let Some(rid) = request_id else {
            return self.execute(command, None, events);
        };
        let Some(sid) = command.session() else {
            if matches!(command, Command::Tick) {
                return self.execute(command, None, events);
            }
            if let Some(known) = self.sessionless.lookup(rid, command) {
                return known;
            }
            let outcome = self.execute(command, Some(rid), events);
            self.sessionless.remember(rid, command, outcome.clone());
            return outcome;
        };
        let Some(session) = self.sessions.get(&sid) else {
            return Err(LockError::SessionNotFound { session: sid });
        };
        if let Some(known) = session.requests.lookup(rid, command) {
            return known;
        }
        let outcome = self.execute(command, Some(rid), events);
        let max = self.limits.max_remembered_requests;
        if let Some(session) = self.sessions.get_mut(&sid) {
            session
                .requests
                .remember(rid, command, outcome.clone(), max);
        }
        outcome
    }

    fn execute(
        &mut self,
        command: &Command,
        rid: Option<RequestId>,
        events: &mut Vec<Event>,
    ) -> Outcome {
        match command {
            Command::OpenSession { ttl_ms } => self.op_open_session(*ttl_ms),
            Command::KeepAlive { session } => self.op_keep_alive(*session),
            Command::CloseSession { session } => self.op_close_session(*session, events),
            Command::CreateLock { key, kind, ttl_ms } => self.op_create(key, *kind, *ttl_ms),
            Command::Acquire {
                key,
                session,
                mode,
                timeout_ms,
            } => self.op_acquire(key, *session, *mode, *timeout_ms, rid),
            Command::CancelWait { key, session } => self.op_cancel_wait(key, *session, events),
            Command::Release {
                key,
                session,
                token,
            } => self.op_release(key, *session, *token, events),
            Command::Extend {
                key,
                session,
                token,
            } => self.op_extend(key, *session, *token),
            Command::Steal { key, session } => self.op_steal(key, *session, events),
            Command::ForceRelease { key } => self.op_force_release(key, events),
            Command::Destroy { key } => self.op_destroy(key, events),
            Command::Tick => Ok(Response::Ticked),
        }
    }

    // ----- typed shortcuts (same semantics as `apply`) ----------------------

    /// Processes every expiry due at or before `now`.
    pub fn tick(&mut self, now: Millis, events: &mut Vec<Event>) {
        self.advance(now, events);
    }

    /// Opens a session; returns its id.
    pub fn open_session(
        &mut self,
        now: Millis,
        ttl_ms: u64,
        events: &mut Vec<Event>,
    ) -> Result<SessionId, LockError> {
        self.advance(now, events);
        match self.op_open_session(ttl_ms)? {
            Response::SessionOpened { session, .. } => Ok(session),
            other => unreachable!("open_session answered {other:?}"),
        }
    }

    /// Acquires (or queues for) `key` in `mode`; see [`Command::Acquire`].
    pub fn acquire(
        &mut self,
        now: Millis,
        key: &LockKey,
        session: SessionId,
        mode: Mode,
        timeout_ms: Option<u64>,
        events: &mut Vec<Event>,
    ) -> Outcome {
        self.advance(now, events);
        self.op_acquire(key, session, mode, timeout_ms, None)
    }

    /// Releases a hold; see [`Command::Release`].
    pub fn release(
        &mut self,
        now: Millis,
        key: &LockKey,
        session: SessionId,
        token: FencingToken,
        events: &mut Vec<Event>,
    ) -> Outcome {
        self.advance(now, events);
        self.op_release(key, session, token, events)
    }

    // ----- reads ------------------------------------------------------------

    /// Succeeds only while `token` is a current hold of `key` at `now`: not
    /// released, stolen, force-released, past its lease or past its session's
    /// expiry (even if no tick has processed that expiry yet). This is what a
    /// resource guarded by the lock calls before it acts.
    pub fn validate(
        &self,
        now: Millis,
        key: &LockKey,
        token: FencingToken,
    ) -> Result<crate::command::HolderInfo, LockError> {
        let now = crate::types::clamp_now(now, self.now);
        let lock = self.lock(key)?;
        let Some(hold) = lock.holders.get(&token.0) else {
            return Err(lock.ended_error(key, token));
        };
        let lease_over = hold.expires_at.is_some_and(|at| at <= now);
        let session_over = self
            .sessions
            .get(&hold.session)
            .is_none_or(|s| s.expires_at <= now);
        if lease_over || session_over {
            return Err(LockError::Expired {
                key: key.clone(),
                token,
            });
        }
        Ok(crate::command::HolderInfo {
            session: hold.session,
            mode: hold.mode,
            token,
            granted_at: hold.granted_at,
            expires_at: hold.expires_at,
        })
    }

    /// The lock's kind, TTL, holders, queue and last token; `None` if it does
    /// not exist. Shows the state as of the last applied command (tick first
    /// for a view at a later `now`).
    pub fn describe(&self, key: &LockKey) -> Option<LockInfo> {
        let lock = self.locks.get(key)?;
        Some(LockInfo {
            key: key.clone(),
            kind: lock.kind,
            ttl_ms: lock.ttl_ms,
            holders: lock.holder_infos(),
            waiters: lock.waiter_infos(),
            last_token: FencingToken(lock.last_token),
        })
    }

    /// A session's expiry, holds and waits; `None` if it does not exist.
    pub fn describe_session(&self, session: SessionId) -> Option<SessionInfo> {
        let s = self.sessions.get(&session)?;
        Some(SessionInfo {
            session,
            ttl_ms: s.ttl_ms,
            expires_at: s.expires_at,
            holds: sorted(&s.holds)
                .into_iter()
                .map(|(k, t)| (k.clone(), FencingToken(t)))
                .collect(),
            waits: sorted(&s.waits)
                .into_iter()
                .map(|(k, _)| k.clone())
                .collect(),
        })
    }

    fn lock(&self, key: &LockKey) -> Result<&LockState, LockError> {
        self.locks
            .get(key)
            .ok_or_else(|| LockError::NotFound { key: key.clone() })
    }

    fn session(&self, session: SessionId) -> Result<&Session, LockError> {
        self.sessions
            .get(&session)
            .ok_or(LockError::SessionNotFound { session })
    }

    fn check_ttl(&self, field: &str, ttl_ms: u64) -> Result<(), LockError> {
        if ttl_ms == 0 {
            return Err(LockError::invalid(field, "must be at least 1 ms"));
        }
        if ttl_ms > self.limits.max_ttl_ms.min(crate::types::MAX_TIME) {
            return Err(LockError::invalid(
                field,
                format!(
                    "{ttl_ms} ms is longer than the limit of {} ms",
                    self.limits.max_ttl_ms.min(crate::types::MAX_TIME)
                ),
            ));
        }
        Ok(())
    }

    // ----- time -------------------------------------------------------------

    /// Processes everything due at or before `now`, each at its own instant.
    fn advance(&mut self, now: Millis, events: &mut Vec<Event>) {
        let now = crate::types::clamp_now(now, self.now);
        while self.deadlines.first().is_some_and(|(at, _)| *at <= now) {
            let Some((at, due)) = self.deadlines.pop_first() else {
                break;
            };
            self.now = at;
            match due {
                Due::Wait { key, seq } => self.end_wait(&key, seq, WaitEnd::TimedOut, events),
                Due::Session(session) => {
                    events.push(Event::SessionExpired { session });
                    self.end_session(session, events);
                }
                Due::Lease { key, token } => {
                    self.end_hold(&key, token, HoldEnd::LeaseExpired, events);
                    self.grant_waiters(&key, events);
                }
            }
        }
        self.now = now;
    }

    // ----- sessions -----------------------------------------------------------

    fn op_open_session(&mut self, ttl_ms: u64) -> Outcome {
        self.check_ttl("ttl_ms", ttl_ms)?;
        if self.sessions.len() as u64 >= self.limits.max_sessions {
            return Err(LockError::exhausted(
                "max_sessions",
                self.limits.max_sessions,
            ));
        }
        self.last_session += 1;
        let session = SessionId(self.last_session);
        let expires_at = self.now.saturating_add(ttl_ms);
        self.sessions.insert(
            session,
            Session {
                ttl_ms,
                expires_at,
                holds: KeyIndex::default(),
                waits: KeyIndex::default(),
                requests: RequestMemory::default(),
            },
        );
        self.deadlines.insert((expires_at, Due::Session(session)));
        Ok(Response::SessionOpened {
            session,
            expires_at,
        })
    }

    fn op_keep_alive(&mut self, session: SessionId) -> Outcome {
        let now = self.now;
        let s = self
            .sessions
            .get_mut(&session)
            .ok_or(LockError::SessionNotFound { session })?;
        self.deadlines
            .remove(&(s.expires_at, Due::Session(session)));
        s.expires_at = now.saturating_add(s.ttl_ms);
        self.deadlines.insert((s.expires_at, Due::Session(session)));
        Ok(Response::KeptAlive {
            expires_at: s.expires_at,
        })
    }

    fn op_close_session(&mut self, session: SessionId, events: &mut Vec<Event>) -> Outcome {
        self.session(session)?;
        self.end_session(session, events);
        Ok(Response::SessionClosed)
    }

    /// Ends a session in one transition: its waits leave their queues, its
    /// holds end, then every affected lock grants its next waiters.
    fn end_session(&mut self, session: SessionId, events: &mut Vec<Event>) {
        let Some(s) = self.sessions.remove(&session) else {
            return;
        };
        self.deadlines
            .remove(&(s.expires_at, Due::Session(session)));
        // Key order, so events come out the same on every replica.
        let waits = sorted(&s.waits);
        let holds = sorted(&s.holds);
        for &(key, seq) in &waits {
            if let Some(lock) = self.locks.get_mut(key) {
                if let Some(w) = lock.queue.remove(&seq) {
                    if let Some(d) = w.deadline {
                        self.deadlines.remove(&(
                            d,
                            Due::Wait {
                                key: key.clone(),
                                seq,
                            },
                        ));
                    }
                    events.push(Event::WaitEnded {
                        key: key.clone(),
                        session,
                        request_id: w.request_id,
                        reason: WaitEnd::SessionEnded,
                    });
                }
            }
        }
        for &(key, token) in &holds {
            self.end_hold(key, token, HoldEnd::SessionEnded, events);
        }
        let affected: BTreeSet<&LockKey> = waits.iter().chain(&holds).map(|(k, _)| *k).collect();
        for key in affected {
            self.grant_waiters(key, events);
        }
    }

    // ----- locks --------------------------------------------------------------

    fn op_create(&mut self, key: &LockKey, kind: LockKind, ttl_ms: Option<u64>) -> Outcome {
        if let Some(ttl) = ttl_ms {
            self.check_ttl("ttl_ms", ttl)?;
        }
        if let Some(lock) = self.locks.get(key) {
            if lock.kind != kind {
                return Err(LockError::AlreadyExists {
                    key: key.clone(),
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
        self.check_room_for_lock()?;
        self.locks.insert(key.clone(), LockState::new(kind, ttl_ms));
        Ok(Response::LockCreated {
            created: true,
            kind,
            ttl_ms,
        })
    }

    fn check_room_for_lock(&self) -> Result<(), LockError> {
        if self.locks.len() as u64 >= self.limits.max_locks {
            return Err(LockError::exhausted("max_locks", self.limits.max_locks));
        }
        Ok(())
    }

    fn op_acquire(
        &mut self,
        key: &LockKey,
        session: SessionId,
        mode: Mode,
        timeout_ms: Option<u64>,
        rid: Option<RequestId>,
    ) -> Outcome {
        // `Limits::max_ttl_ms` bounds wait timeouts too (0 is try-lock).
        if let Some(t) = timeout_ms.filter(|&t| t > 0) {
            self.check_ttl("timeout_ms", t)?;
        }
        let now = self.now;
        let max_waiters = self.limits.max_waiters_per_lock;
        let max_per_session = self.limits.max_locks_per_session;
        let room_for_lock = self.check_room_for_lock();
        // One lookup each of the session and the lock, reused below: this is
        // the hot path of every uncontended acquire.
        let Some(s) = self.sessions.get_mut(&session) else {
            return Err(LockError::SessionNotFound { session });
        };
        if s.holds.contains_key(key) {
            return Err(LockError::AlreadyHeld {
                key: key.clone(),
                session,
            });
        }
        if s.waits.contains_key(key) {
            return Err(LockError::AlreadyWaiting {
                key: key.clone(),
                session,
            });
        }
        if s.lock_count() >= max_per_session {
            return Err(LockError::exhausted(
                "max_locks_per_session",
                max_per_session,
            ));
        }
        let lock = match self.locks.get_mut(key) {
            Some(lock) => lock,
            None => {
                room_for_lock?;
                self.locks
                    .entry(key.clone())
                    .or_insert_with(|| LockState::new(mode.kind(), None))
            }
        };
        if lock.kind != mode.kind() {
            return Err(LockError::AlreadyExists {
                key: key.clone(),
                existing: lock.kind,
                requested: mode.kind(),
            });
        }
        if lock.grantable_on_arrival(mode) {
            let grant = issue(
                &mut self.last_token,
                &mut self.deadlines,
                lock,
                key,
                session,
                mode,
                now,
            );
            s.holds.insert(key.clone(), grant.token.0);
            return Ok(Response::Granted(grant));
        }
        if timeout_ms == Some(0) {
            return Err(LockError::WouldBlock { key: key.clone() });
        }
        if lock.queue.len() as u64 >= max_waiters {
            return Err(LockError::exhausted("max_waiters_per_lock", max_waiters));
        }
        let seq = lock.next_seq;
        lock.next_seq += 1;
        let deadline = timeout_ms.map(|t| now.saturating_add(t));
        lock.queue.insert(
            seq,
            Waiter {
                session,
                mode,
                since: now,
                deadline,
                request_id: rid,
            },
        );
        let position = lock.queue.len() as u64;
        if let Some(d) = deadline {
            self.deadlines.insert((
                d,
                Due::Wait {
                    key: key.clone(),
                    seq,
                },
            ));
        }
        s.waits.insert(key.clone(), seq);
        Ok(Response::Queued { position, deadline })
    }

    fn op_cancel_wait(
        &mut self,
        key: &LockKey,
        session: SessionId,
        events: &mut Vec<Event>,
    ) -> Outcome {
        let s = self.session(session)?;
        let Some(&seq) = s.waits.get(key) else {
            // Not waiting (never queued, or granted / timed out just before).
            return Ok(Response::WaitCancelled { was_waiting: false });
        };
        if let Some(lock) = self.locks.get_mut(key) {
            if let Some(w) = lock.queue.remove(&seq) {
                if let Some(d) = w.deadline {
                    self.deadlines.remove(&(
                        d,
                        Due::Wait {
                            key: key.clone(),
                            seq,
                        },
                    ));
                }
            }
        }
        if let Some(s) = self.sessions.get_mut(&session) {
            s.waits.remove(key);
        }
        self.grant_waiters(key, events);
        Ok(Response::WaitCancelled { was_waiting: true })
    }

    /// Finds `token`'s hold and checks that `session` owns it.
    fn owned_hold(
        &self,
        key: &LockKey,
        session: SessionId,
        token: FencingToken,
    ) -> Result<&Hold, LockError> {
        self.lock(key)?.owned_hold(key, session, token)
    }

    fn op_release(
        &mut self,
        key: &LockKey,
        session: SessionId,
        token: FencingToken,
        events: &mut Vec<Event>,
    ) -> Outcome {
        // One lock lookup for the check, the removal and the hand-over.
        let Some(lock) = self.locks.get_mut(key) else {
            return Err(LockError::NotFound { key: key.clone() });
        };
        lock.owned_hold(key, session, token)?;
        take_hold(lock, key, token.0, &mut self.deadlines, &mut self.sessions);
        grant_queue(
            lock,
            key,
            self.now,
            &mut self.last_token,
            &mut self.deadlines,
            &mut self.sessions,
            events,
        );
        Ok(Response::Released)
    }

    fn op_extend(&mut self, key: &LockKey, session: SessionId, token: FencingToken) -> Outcome {
        let old = self.owned_hold(key, session, token)?.expires_at;
        let now = self.now;
        let Some(lock) = self.locks.get_mut(key) else {
            return Err(LockError::NotFound { key: key.clone() });
        };
        let Some(ttl) = lock.ttl_ms else {
            return Ok(Response::Extended { expires_at: None });
        };
        let new = now.saturating_add(ttl);
        if let Some(hold) = lock.holders.get_mut(&token.0) {
            hold.expires_at = Some(new);
        }
        if let Some(old) = old {
            self.deadlines.remove(&(
                old,
                Due::Lease {
                    key: key.clone(),
                    token: token.0,
                },
            ));
        }
        self.deadlines.insert((
            new,
            Due::Lease {
                key: key.clone(),
                token: token.0,
            },
        ));
        Ok(Response::Extended {
            expires_at: Some(new),
        })
    }

    fn op_steal(&mut self, key: &LockKey, session: SessionId, events: &mut Vec<Event>) -> Outcome {
        let s = self.session(session)?;
        let involved = s.holds.contains_key(key) || s.waits.contains_key(key);
        if !involved && s.lock_count() >= self.limits.max_locks_per_session {
            return Err(LockError::exhausted(
                "max_locks_per_session",
                self.limits.max_locks_per_session,
            ));
        }
        let kind = self.lock(key)?.kind;
        // The thief leaves the queue if it was waiting.
        if let Some(seq) = self
            .sessions
            .get_mut(&session)
            .and_then(|s| s.waits.remove(key))
        {
            if let Some(w) = self.locks.get_mut(key).and_then(|l| l.queue.remove(&seq)) {
                if let Some(d) = w.deadline {
                    self.deadlines.remove(&(
                        d,
                        Due::Wait {
                            key: key.clone(),
                            seq,
                        },
                    ));
                }
            }
        }
        let tokens: Vec<u64> = self.lock(key)?.holders.keys().copied().collect();
        for token in tokens {
            self.end_hold(key, token, HoldEnd::Stolen, events);
        }
        let now = self.now;
        let Some(lock) = self.locks.get_mut(key) else {
            return Err(LockError::NotFound { key: key.clone() });
        };
        let mode = Mode::exclusive_of(kind);
        let grant = issue(
            &mut self.last_token,
            &mut self.deadlines,
            lock,
            key,
            session,
            mode,
            now,
        );
        if let Some(s) = self.sessions.get_mut(&session) {
            s.holds.insert(key.clone(), grant.token.0);
        }
        Ok(Response::Granted(grant))
    }

    fn op_force_release(&mut self, key: &LockKey, events: &mut Vec<Event>) -> Outcome {
        let tokens: Vec<u64> = self.lock(key)?.holders.keys().copied().collect();
        for &token in &tokens {
            self.end_hold(key, token, HoldEnd::ForceReleased, events);
        }
        self.grant_waiters(key, events);
        Ok(Response::ForceReleased {
            holds: tokens.len() as u64,
        })
    }

    fn op_destroy(&mut self, key: &LockKey, events: &mut Vec<Event>) -> Outcome {
        let tokens: Vec<u64> = self.lock(key)?.holders.keys().copied().collect();
        for token in tokens {
            self.end_hold(key, token, HoldEnd::Destroyed, events);
        }
        let Some(lock) = self.locks.remove(key) else {
            return Err(LockError::NotFound { key: key.clone() });
        };
        for (seq, w) in lock.queue {
            if let Some(d) = w.deadline {
                self.deadlines.remove(&(
                    d,
                    Due::Wait {
                        key: key.clone(),
                        seq,
                    },
                ));
            }
            if let Some(s) = self.sessions.get_mut(&w.session) {
                s.waits.remove(key);
            }
            events.push(Event::WaitEnded {
                key: key.clone(),
                session: w.session,
                request_id: w.request_id,
                reason: WaitEnd::Destroyed,
            });
        }
        Ok(Response::Destroyed)
    }

    // ----- shared mechanics -------------------------------------------------

    /// Removes a hold from its lock, its session and the deadline index.
    /// Returns the removed hold. Does not grant waiters.
    fn remove_hold(&mut self, key: &LockKey, token: u64) -> Option<Hold> {
        let lock = self.locks.get_mut(key)?;
        take_hold(lock, key, token, &mut self.deadlines, &mut self.sessions)
    }

    /// Ends a hold for `why`: removes it, remembers why, tells its owner.
    fn end_hold(&mut self, key: &LockKey, token: u64, why: HoldEnd, events: &mut Vec<Event>) {
        let Some(hold) = self.remove_hold(key, token) else {
            return;
        };
        let max = self.limits.max_ended_tokens_per_lock;
        if let Some(lock) = self.locks.get_mut(key) {
            lock.record_end(token, why, max);
        }
        events.push(Event::HoldLost {
            key: key.clone(),
            session: hold.session,
            token: FencingToken(token),
            reason: why,
        });
    }

    /// Ends one queued wait (deadline passed) and lets the queue move on.
    fn end_wait(&mut self, key: &LockKey, seq: u64, why: WaitEnd, events: &mut Vec<Event>) {
        let Some(w) = self.locks.get_mut(key).and_then(|l| l.queue.remove(&seq)) else {
            return;
        };
        if let Some(s) = self.sessions.get_mut(&w.session) {
            s.waits.remove(key);
        }
        events.push(Event::WaitEnded {
            key: key.clone(),
            session: w.session,
            request_id: w.request_id,
            reason: why,
        });
        self.grant_waiters(key, events);
    }

    /// Grants the head of the queue while it is compatible with the holders;
    /// see [`grant_queue`].
    fn grant_waiters(&mut self, key: &LockKey, events: &mut Vec<Event>) {
        let Some(lock) = self.locks.get_mut(key) else {
            return;
        };
        grant_queue(
            lock,
            key,
            self.now,
            &mut self.last_token,
            &mut self.deadlines,
            &mut self.sessions,
            events,
        );
    }
}

// The mechanics below take the table's parts as separate borrows, so a caller
// that already holds `&mut LockState` does not look the lock up again.

/// Removes hold `token` from `lock`, its session's index and the deadline
/// index. Returns the removed hold. Does not grant waiters.
fn take_hold(
    lock: &mut LockState,
    key: &LockKey,
    token: u64,
    deadlines: &mut BTreeSet<(Millis, Due)>,
    sessions: &mut BTreeMap<SessionId, Session>,
) -> Option<Hold> {
    let hold = lock.holders.remove(&token)?;
    if let Some(at) = hold.expires_at {
        deadlines.remove(&(
            at,
            Due::Lease {
                key: key.clone(),
                token,
            },
        ));
    }
    if let Some(s) = sessions.get_mut(&hold.session) {
        s.holds.remove(key);
    }
    Some(hold)
}

/// Grants the head of `lock`'s queue while it is compatible with the
/// holders: one writer, or every consecutive reader at the head (a reader batch).
fn grant_queue(
    lock: &mut LockState,
    key: &LockKey,
    now: Millis,
    last_token: &mut u64,
    deadlines: &mut BTreeSet<(Millis, Due)>,
    sessions: &mut BTreeMap<SessionId, Session>,
    events: &mut Vec<Event>,
) {
    while let Some((&seq, head)) = lock.queue.first_key_value() {
        if !lock.compatible(head.mode) {
            break;
        }
        let Some(w) = lock.queue.remove(&seq) else {
            break;
        };
        if let Some(d) = w.deadline {
            deadlines.remove(&(
                d,
                Due::Wait {
                    key: key.clone(),
                    seq,
                },
            ));
        }
        let grant = issue(last_token, deadlines, lock, key, w.session, w.mode, now);
        if let Some(s) = sessions.get_mut(&w.session) {
            s.waits.remove(key);
            s.holds.insert(key.clone(), grant.token.0);
        }
        events.push(Event::Granted {
            key: key.clone(),
            session: w.session,
            request_id: w.request_id,
            grant,
        });
    }
}

/// Grants `lock` to `session`: a fresh token from the table-wide counter, a
/// lease if the lock has a TTL. The caller updates the session's index.
fn issue(
    last_token: &mut u64,
    deadlines: &mut BTreeSet<(Millis, Due)>,
    lock: &mut LockState,
    key: &LockKey,
    session: SessionId,
    mode: Mode,
    now: Millis,
) -> Grant {
    *last_token += 1;
    let token = *last_token;
    lock.last_token = token;
    let expires_at = lock.ttl_ms.map(|ttl| now.saturating_add(ttl));
    lock.holders.insert(
        token,
        Hold {
            session,
            mode,
            granted_at: now,
            expires_at,
        },
    );
    if let Some(at) = expires_at {
        deadlines.insert((
            at,
            Due::Lease {
                key: key.clone(),
                token,
            },
        ));
    }
    Grant {
        token: FencingToken(token),
        mode,
        granted_at: now,
        expires_at,
    }
}
