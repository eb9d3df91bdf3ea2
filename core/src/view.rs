//! One lock's slice of the table, for stores that keep each lock in its own
//! row (the PostgreSQL backend) and apply commands key by key.
//!
//! A [`KeyView`] is a small [`Table`] holding one lock, the sessions that hold
//! or wait for it (as the store has them now) and the lock's own request and
//! wait-outcome memory. Commands run through the *same* table code as
//! everywhere else, so a per-key store cannot drift from the other backends;
//! the store only loads a [`LockRecord`] and [`SessionRecord`]s, applies, and
//! writes [`KeyView::record`] back in the same transaction.
//!
//! What differs from one whole table, by design:
//! - Request ids are remembered per (lock, session): a retry of a keyed
//!   command reaches the same lock, so it is deduplicated there.
//! - A session that ended elsewhere (its row is gone) but still holds or waits
//!   here is ended here at the lock's own state time, in the next command.
//! - Tokens for a lock never go backwards: the record keeps the last one even
//!   after `destroy` (a tombstone), and a store that drops tombstones passes
//!   a `token_floor` above every token it ever issued.

use crate::command::{Command, Event, Grant, HolderInfo, LockInfo, Response, WaitEnd};
use crate::error::LockError;
use crate::key::LockKey;
use crate::limits::Limits;
use crate::lock::LockState;
use crate::session::{KeyIndex, Outcome, RequestMemory, Session, SessionlessMemory};
use crate::table::{Due, Table};
use crate::types::{FencingToken, Millis, RequestId, SessionId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a store keeps for one key. Opaque; encode with [`LockRecord::to_bytes`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// `None`: the key has no lock (destroyed; the record is a tombstone).
    lock: Option<LockState>,
    /// Highest token ever issued for this key, kept across destroy.
    last_token: u64,
    /// State time of this key: the highest `now` applied to it.
    now: Millis,
    /// Per-session request memory for commands on this key.
    requests: BTreeMap<SessionId, RequestMemory>,
    /// Session-less requests (create, force release, destroy) on this key:
    /// a retry reaches the same key, so it is deduplicated here (the newest
    /// [`KEY_SESSIONLESS_MEMORY`]).
    sessionless: SessionlessMemory,
    /// How each session's last wait for this key ended.
    outcomes: BTreeMap<SessionId, WaitOutcome>,
}

/// Session-less request results one key remembers. Smaller than the table's
/// [`crate::SESSIONLESS_REQUEST_MEMORY`]: a store decodes the record on every
/// command, and retries of one key's admin commands are few.
pub const KEY_SESSIONLESS_MEMORY: usize = 32;

/// How a queued acquire ended, remembered until the session's next acquire of
/// the key or the session's end, so a late `wait` still learns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WaitOutcome {
    Granted(Grant),
    Ended(WaitEnd),
}

/// Where a session stands with one key (what a client's `wait` wants to know).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitView {
    /// The session's last wait ended (granted or not); see [`WaitOutcome`].
    Finished(WaitOutcome),
    /// Still queued.
    Waiting,
    /// Holds the key (granted at once, no wait to report).
    Holding(Grant),
    /// Neither waits nor holds, and no outcome is remembered.
    Absent,
}

/// A session as the store has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: SessionId,
    pub ttl_ms: u64,
    pub expires_at: Millis,
}

impl LockRecord {
    /// Canonical bytes (postcard).
    pub fn to_bytes(&self) -> Result<Vec<u8>, LockError> {
        postcard::to_allocvec(self).map_err(|e| LockError::invalid("lock_record", e.to_string()))
    }

    /// Decodes bytes made by [`LockRecord::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<LockRecord, LockError> {
        postcard::from_bytes(bytes)
            .map_err(|e| LockError::invalid("lock_record", format!("cannot decode: {e}")))
    }

    /// True if the key currently names a lock (not a tombstone).
    pub fn exists(&self) -> bool {
        self.lock.is_some()
    }

    /// Highest token ever issued for this key.
    pub fn last_token(&self) -> FencingToken {
        FencingToken(self.last_token)
    }

    /// Every session this record mentions: holders, waiters, and sessions
    /// with remembered requests or outcomes. The store loads these.
    pub fn sessions(&self) -> Vec<SessionId> {
        let mut ids: Vec<SessionId> = self.active_sessions();
        ids.extend(self.requests.keys());
        ids.extend(self.outcomes.keys());
        ids.sort();
        ids.dedup();
        ids
    }

    /// Sessions that hold or wait for the key: ending one of them changes
    /// this lock, so a store indexes them to find the lock from the session.
    pub fn active_sessions(&self) -> Vec<SessionId> {
        let mut ids: Vec<SessionId> = match &self.lock {
            Some(l) => l
                .holders
                .values()
                .map(|h| h.session)
                .chain(l.queue.values().map(|w| w.session))
                .collect(),
            None => Vec::new(),
        };
        ids.sort();
        ids.dedup();
        ids
    }

    /// Equal apart from state time: writing `self` over `other` would change
    /// nothing a command can observe (so a store may skip the write).
    pub fn same_state_as(&self, other: &LockRecord) -> bool {
        self.lock == other.lock
            && self.last_token == other.last_token
            && self.requests == other.requests
            && self.sessionless == other.sessionless
            && self.outcomes == other.outcomes
    }

    /// Nothing worth keeping: no lock, no memory. A store need not write it
    /// (its `last_token` must then be covered by the store's token floor).
    pub fn is_empty(&self) -> bool {
        self.lock.is_none()
            && self.requests.is_empty()
            && self.sessionless.results.is_empty()
            && self.outcomes.is_empty()
    }
}

/// One key's state, loaded for one command. See the module docs.
#[derive(Debug, Clone)]
pub struct KeyView {
    key: LockKey,
    table: Table,
    outcomes: BTreeMap<SessionId, WaitOutcome>,
}

impl KeyView {
    /// Builds the view from what the store has. `sessions` are the store's
    /// current rows for (at least) the sessions in [`LockRecord::sessions`]
    /// plus the caller's session; a holder or waiter whose row is missing has
    /// ended and is ended here. Tokens issued will be above both the record's
    /// last token and `token_floor`.
    pub fn load(
        limits: Limits,
        key: LockKey,
        record: Option<LockRecord>,
        sessions: &[SessionRecord],
        token_floor: u64,
    ) -> KeyView {
        let mut record = record.unwrap_or_default();
        let mut table = Table::new(limits);
        table.now = record.now;
        table.last_token = record.last_token.max(token_floor);
        table.sessionless = std::mem::take(&mut record.sessionless);
        for s in sessions {
            table.last_session = table.last_session.max(s.id.0);
            let requests = record.requests.remove(&s.id).unwrap_or_default();
            insert_session(&mut table, s.id, s.ttl_ms, s.expires_at, requests);
        }
        // Memory of sessions that no longer exist is dropped with them.
        let outcomes: BTreeMap<SessionId, WaitOutcome> = std::mem::take(&mut record.outcomes)
            .into_iter()
            .filter(|(id, _)| table.sessions.contains_key(id))
            .collect();
        if let Some(lock) = record.lock.take() {
            // A missing session ended elsewhere: end it here at state time.
            let ended_at = record.now;
            for (&token, hold) in &lock.holders {
                if !table.sessions.contains_key(&hold.session) {
                    insert_session(&mut table, hold.session, 1, ended_at, Default::default());
                }
                if let Some(s) = table.sessions.get_mut(&hold.session) {
                    s.holds.insert(key.clone(), token);
                }
                if let Some(at) = hold.expires_at {
                    let due = Due::Lease {
                        key: key.clone(),
                        token,
                    };
                    table.deadlines.insert((at, due));
                }
            }
            for (&seq, w) in &lock.queue {
                if !table.sessions.contains_key(&w.session) {
                    insert_session(&mut table, w.session, 1, ended_at, Default::default());
                }
                if let Some(s) = table.sessions.get_mut(&w.session) {
                    s.waits.insert(key.clone(), seq);
                }
                if let Some(at) = w.deadline {
                    let due = Due::Wait {
                        key: key.clone(),
                        seq,
                    };
                    table.deadlines.insert((at, due));
                }
            }
            table.locks.insert(key.clone(), lock);
        }
        KeyView {
            key,
            table,
            outcomes,
        }
    }

    /// The key this view is for.
    pub fn key(&self) -> &LockKey {
        &self.key
    }

    /// Applies a command on this key at `now` (clamped to state time), with
    /// the table's own semantics, request deduplication included. Session
    /// commands without a key (`OpenSession`, `KeepAlive`) and commands for
    /// another key are `InvalidArgument`; `CloseSession` and `Tick` apply to
    /// this key's part.
    pub fn apply(
        &mut self,
        now: Millis,
        request_id: Option<RequestId>,
        command: &Command,
        events: &mut Vec<Event>,
    ) -> Outcome {
        match command_key(command) {
            Err(what) => {
                return Err(LockError::invalid(
                    "command",
                    format!("{what} has no lock key; a per-key store applies it to the session"),
                ))
            }
            Ok(Some(k)) if *k != self.key => {
                return Err(LockError::invalid(
                    "key",
                    format!("{k} is not the key {} this view holds", self.key),
                ))
            }
            Ok(_) => {}
        }
        let first_event = events.len();
        let outcome = self.table.apply_request(now, request_id, command, events);
        for event in &events[first_event..] {
            match event {
                Event::Granted {
                    key,
                    session,
                    grant,
                    ..
                } if *key == self.key => {
                    self.outcomes.insert(*session, WaitOutcome::Granted(*grant));
                }
                Event::WaitEnded {
                    key,
                    session,
                    reason,
                    ..
                } if *key == self.key => {
                    self.outcomes.insert(*session, WaitOutcome::Ended(*reason));
                }
                _ => {}
            }
        }
        match (command, &outcome) {
            // A new acquire starts a new wait: forget how the last one ended.
            (
                Command::Acquire { session, .. },
                Ok(Response::Granted(_) | Response::Queued { .. }),
            ) => {
                self.outcomes.remove(session);
            }
            (Command::Steal { session, .. }, Ok(Response::Granted(_))) => {
                self.outcomes.remove(session);
            }
            _ => {}
        }
        self.outcomes
            .retain(|id, _| self.table.sessions.contains_key(id));
        outcome
    }

    /// Processes every expiry of this key due at or before `now`.
    pub fn tick(&mut self, now: Millis, events: &mut Vec<Event>) {
        // Tick names no key and never fails.
        let _ = self.apply(now, None, &Command::Tick, events);
    }

    /// Highest token ever issued for this key (across destroy), or the floor.
    /// Any later grant has a higher one.
    pub fn last_token(&self) -> FencingToken {
        FencingToken(self.table.last_token)
    }

    /// State time of the view.
    pub fn now(&self) -> Millis {
        self.table.now()
    }

    /// The record to write back.
    pub fn record(&self) -> LockRecord {
        LockRecord {
            lock: self.table.locks.get(&self.key).cloned(),
            last_token: self.table.last_token,
            now: self.table.now,
            requests: self
                .table
                .sessions
                .iter()
                .filter(|(_, s)| !s.requests.results.is_empty() || s.requests.forgotten_below > 0)
                .map(|(id, s)| (*id, s.requests.clone()))
                .collect(),
            sessionless: {
                let mut memory = self.table.sessionless.clone();
                while memory.order.len() > KEY_SESSIONLESS_MEMORY {
                    if let Some(old) = memory.order.pop_front() {
                        memory.results.remove(&old);
                    }
                }
                memory
            },
            outcomes: self.outcomes.clone(),
        }
    }

    /// When this key's own clocks next run out: its earliest lease end or
    /// wait deadline. A store indexes this to find keys to tick. (Session
    /// expiries are found from the sessions' side; see [`KeyView::next_due`].)
    pub fn deadline(&self) -> Option<Millis> {
        self.first_due(false)
    }

    /// When this key next needs a tick: [`KeyView::deadline`] or the expiry
    /// of a session that holds or waits for it, whichever is first. A reader
    /// that finds it at or before `now` should tick the key before trusting
    /// what it read.
    pub fn next_due(&self) -> Option<Millis> {
        self.first_due(true)
    }

    fn first_due(&self, sessions: bool) -> Option<Millis> {
        self.table
            .deadlines
            .iter()
            .find(|(_, due)| match due {
                Due::Session(id) => {
                    sessions
                        && self
                            .table
                            .sessions
                            .get(id)
                            .is_some_and(|s| s.lock_count() > 0)
                }
                Due::Wait { .. } | Due::Lease { .. } => true,
            })
            .map(|(at, _)| *at)
    }

    /// See [`Table::validate`].
    pub fn validate(&self, now: Millis, token: FencingToken) -> Result<HolderInfo, LockError> {
        self.table.validate(now, &self.key, token)
    }

    /// See [`Table::describe`]; `None` when the key has no lock.
    pub fn describe(&self) -> Option<LockInfo> {
        self.table.describe(&self.key)
    }

    /// Where `session` stands with this key.
    pub fn wait_view(&self, session: SessionId) -> WaitView {
        if let Some(outcome) = self.outcomes.get(&session) {
            return WaitView::Finished(*outcome);
        }
        let Some(lock) = self.table.locks.get(&self.key) else {
            return WaitView::Absent;
        };
        if lock.queue.values().any(|w| w.session == session) {
            return WaitView::Waiting;
        }
        match lock.holders.iter().find(|(_, h)| h.session == session) {
            Some((&token, h)) => WaitView::Holding(Grant {
                token: FencingToken(token),
                mode: h.mode,
                granted_at: h.granted_at,
                expires_at: h.expires_at,
            }),
            None => WaitView::Absent,
        }
    }

    /// The token `session` holds this key with, and whether it waits for it.
    pub fn session_part(&self, session: SessionId) -> (Option<FencingToken>, bool) {
        match self.table.sessions.get(&session) {
            Some(s) => (
                s.holds.get(&self.key).map(|t| FencingToken(*t)),
                s.waits.contains_key(&self.key),
            ),
            None => (None, false),
        }
    }
}

/// Checks an `OpenSession` against the limits the core enforces on its own
/// (the TTL's range), so a store that creates session rows itself gives the
/// same answer as the table would.
pub fn check_open_session(limits: &Limits, ttl_ms: u64) -> Result<(), LockError> {
    let mut table = Table::new(limits.clone());
    let mut events = Vec::new();
    table.apply(0, &Command::OpenSession { ttl_ms }, &mut events)?;
    Ok(())
}

fn insert_session(
    table: &mut Table,
    id: SessionId,
    ttl_ms: u64,
    expires_at: Millis,
    requests: RequestMemory,
) {
    // A session cannot have ended before the state time the key was last at.
    let expires_at = expires_at.max(table.now);
    let session = Session {
        ttl_ms,
        expires_at,
        holds: KeyIndex::default(),
        waits: KeyIndex::default(),
        requests,
    };
    if let Some(old) = table.sessions.insert(id, session) {
        table.deadlines.remove(&(old.expires_at, Due::Session(id)));
    }
    table.deadlines.insert((expires_at, Due::Session(id)));
}

/// The key a command acts on; `Ok(None)` for key-less commands a view can
/// still apply, `Err(name)` for those it cannot.
fn command_key(command: &Command) -> Result<Option<&LockKey>, &'static str> {
    match command {
        Command::CreateLock { key, .. }
        | Command::Acquire { key, .. }
        | Command::CancelWait { key, .. }
        | Command::Release { key, .. }
        | Command::Extend { key, .. }
        | Command::Steal { key, .. }
        | Command::ForceRelease { key }
        | Command::Destroy { key } => Ok(Some(key)),
        Command::CloseSession { .. } | Command::Tick => Ok(None),
        Command::OpenSession { .. } => Err("OpenSession"),
        Command::KeepAlive { .. } => Err("KeepAlive"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{LockKind, Mode};
    use proptest::prelude::*;

    fn key() -> LockKey {
        LockKey::new("ns", "k").unwrap()
    }

    /// A per-key store as the Postgres backend keeps it: one record, and
    /// session rows that stay until deleted (expired rows linger).
    #[derive(Default)]
    struct Store {
        record: Option<Vec<u8>>,
        sessions: BTreeMap<SessionId, SessionRecord>,
        last_session: u64,
        clock: Millis,
    }

    impl Store {
        fn view(&self) -> KeyView {
            let record = self
                .record
                .as_ref()
                .map(|b| LockRecord::from_bytes(b).unwrap());
            let rows: Vec<SessionRecord> = self.sessions.values().copied().collect();
            KeyView::load(Limits::default(), key(), record, &rows, 0)
        }

        fn apply(&mut self, rid: Option<RequestId>, cmd: &Command, ev: &mut Vec<Event>) -> Outcome {
            let now = self.clock;
            match cmd {
                Command::OpenSession { ttl_ms } => {
                    check_open_session(&Limits::default(), *ttl_ms)?;
                    self.last_session += 1;
                    let id = SessionId(self.last_session);
                    let expires_at = now + ttl_ms;
                    let row = SessionRecord {
                        id,
                        ttl_ms: *ttl_ms,
                        expires_at,
                    };
                    self.sessions.insert(id, row);
                    return Ok(Response::SessionOpened {
                        session: id,
                        expires_at,
                    });
                }
                Command::KeepAlive { session } => {
                    let Some(row) = self
                        .sessions
                        .get_mut(session)
                        .filter(|r| r.expires_at > now)
                    else {
                        return Err(LockError::SessionNotFound { session: *session });
                    };
                    row.expires_at = now + row.ttl_ms;
                    return Ok(Response::KeptAlive {
                        expires_at: row.expires_at,
                    });
                }
                _ => {}
            }
            let mut view = self.view();
            let out = view.apply(now, rid, cmd, ev);
            self.record = Some(view.record().to_bytes().unwrap());
            if let (Command::CloseSession { session }, Ok(_)) = (cmd, &out) {
                self.sessions.remove(session);
            }
            out
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Open(u64),
        KeepAlive(u64),
        Close(u64),
        Create(bool, Option<u64>),
        Acquire(u64, u8, Option<u64>, Option<u64>),
        Cancel(u64),
        Release(u64, u64),
        Extend(u64, u64),
        Steal(u64),
        ForceRelease,
        Destroy,
        Tick,
        Advance(u64),
        Retry,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u64..300).prop_map(Op::Open),
            (1u64..5).prop_map(Op::KeepAlive),
            (1u64..5).prop_map(Op::Close),
            (any::<bool>(), prop::option::of(1u64..200)).prop_map(|(a, b)| Op::Create(a, b)),
            (
                1u64..5,
                0u8..3,
                prop::option::of(0u64..150),
                prop::option::of(1u64..50)
            )
                .prop_map(|(a, b, c, d)| Op::Acquire(a, b, c, d)),
            (1u64..5).prop_map(Op::Cancel),
            (1u64..5, 0u64..12).prop_map(|(a, b)| Op::Release(a, b)),
            (1u64..5, 0u64..12).prop_map(|(a, b)| Op::Extend(a, b)),
            (1u64..5).prop_map(Op::Steal),
            Just(Op::ForceRelease),
            Just(Op::Destroy),
            Just(Op::Tick),
            (0u64..120).prop_map(Op::Advance),
            Just(Op::Retry),
        ]
    }

    fn not_session_expired(ev: &[Event]) -> Vec<Event> {
        ev.iter()
            .filter(|e| !matches!(e, Event::SessionExpired { .. }))
            .cloned()
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Per-key application through records and session rows gives the
        /// same responses and the same events (session-expiry notices aside:
        /// a view only sees sessions that touch its key) as one whole table.
        #[test]
        fn per_key_store_matches_the_whole_table(ops in prop::collection::vec(op(), 1..80)) {
            let mut table = Table::default();
            let mut store = Store::default();
            let mut now = 0u64;
            let mut last: Option<(RequestId, Command)> = None;
            let (mut ev_t, mut ev_s) = (Vec::new(), Vec::new());
            for op in ops {
                let s = |i: u64| SessionId(i);
                let (rid, cmd) = match op {
                    Op::Advance(d) => { now += d; continue; }
                    Op::Retry => match last.clone() { Some((r, c)) => (Some(r), c), None => continue },
                    Op::Open(ttl) => (None, Command::OpenSession { ttl_ms: ttl }),
                    Op::KeepAlive(i) => (None, Command::KeepAlive { session: s(i) }),
                    Op::Close(i) => (None, Command::CloseSession { session: s(i) }),
                    Op::Create(rw, ttl) => (None, Command::CreateLock {
                        key: key(),
                        kind: if rw { LockKind::ReadWrite } else { LockKind::Exclusive },
                        ttl_ms: ttl,
                    }),
                    Op::Acquire(i, m, timeout, rid) => {
                        let mode = [Mode::Exclusive, Mode::Read, Mode::Write][m as usize];
                        (rid.map(RequestId), Command::Acquire { key: key(), session: s(i), mode, timeout_ms: timeout })
                    }
                    Op::Cancel(i) => (None, Command::CancelWait { key: key(), session: s(i) }),
                    Op::Release(i, t) => (Some(RequestId(100 + now)), Command::Release { key: key(), session: s(i), token: FencingToken(t) }),
                    Op::Extend(i, t) => (None, Command::Extend { key: key(), session: s(i), token: FencingToken(t) }),
                    Op::Steal(i) => (None, Command::Steal { key: key(), session: s(i) }),
                    Op::ForceRelease => (Some(RequestId(7_000 + now)), Command::ForceRelease { key: key() }),
                    Op::Destroy => (Some(RequestId(9_000 + now)), Command::Destroy { key: key() }),
                    Op::Tick => (None, Command::Tick),
                };
                if let Some(r) = rid { last = Some((r, cmd.clone())); }
                let want = table.apply_request(now, rid, &cmd, &mut ev_t);
                store.clock = now;
                let got = store.apply(rid, &cmd, &mut ev_s);
                prop_assert_eq!(&got, &want, "command {:?} at {}", cmd, now);
                // The store processes a key's expiries when the key is next
                // touched (the table on any command), at the same instants.
                if !matches!(cmd, Command::OpenSession { .. } | Command::KeepAlive { .. }) {
                    prop_assert_eq!(not_session_expired(&ev_s), not_session_expired(&ev_t), "events up to {:?}", cmd);
                }
                let mut view = store.view();
                view.tick(now, &mut Vec::new());
                prop_assert_eq!(view.describe(), table.describe(&key()));
                if let Some(d) = view.next_due() {
                    prop_assert!(table.next_deadline().is_some_and(|t| t <= d),
                        "view deadline {} is before the table's", d);
                }
            }
        }
    }

    #[test]
    fn tokens_never_go_backwards_across_destroy_and_floor() {
        let s1 = SessionRecord {
            id: SessionId(1),
            ttl_ms: 1_000,
            expires_at: 1_000,
        };
        let acquire = Command::Acquire {
            key: key(),
            session: s1.id,
            mode: Mode::Exclusive,
            timeout_ms: None,
        };
        let mut ev = Vec::new();
        let mut v = KeyView::load(Limits::default(), key(), None, &[s1], 41);
        let Ok(Response::Granted(g)) = v.apply(1, None, &acquire, &mut ev) else {
            panic!("not granted")
        };
        assert_eq!(g.token, FencingToken(42), "above the store's floor");
        assert_eq!(v.last_token(), FencingToken(42));
        v.apply(2, None, &Command::Destroy { key: key() }, &mut ev)
            .unwrap();
        let tomb = v.record();
        assert!(!tomb.exists());
        assert_eq!(tomb.last_token(), FencingToken(42));
        let bytes = tomb.to_bytes().unwrap();
        let mut v = KeyView::load(
            Limits::default(),
            key(),
            Some(LockRecord::from_bytes(&bytes).unwrap()),
            &[s1],
            0,
        );
        let Ok(Response::Granted(g2)) = v.apply(3, None, &acquire, &mut ev) else {
            panic!("not granted after re-create")
        };
        assert_eq!(g2.token, FencingToken(43));
    }

    #[test]
    fn a_holder_whose_session_row_is_gone_is_ended_and_the_queue_moves() {
        let alive = |id| SessionRecord {
            id: SessionId(id),
            ttl_ms: 10_000,
            expires_at: 10_000,
        };
        let acquire = |id| Command::Acquire {
            key: key(),
            session: SessionId(id),
            mode: Mode::Exclusive,
            timeout_ms: None,
        };
        let mut ev = Vec::new();
        let mut v = KeyView::load(Limits::default(), key(), None, &[alive(1), alive(2)], 0);
        v.apply(1, None, &acquire(1), &mut ev).unwrap();
        assert!(matches!(
            v.apply(2, None, &acquire(2), &mut ev),
            Ok(Response::Queued { .. })
        ));
        assert_eq!(
            v.record().active_sessions(),
            vec![SessionId(1), SessionId(2)]
        );
        // Session 1's row was deleted (closed elsewhere): the next command ends it.
        let mut v = KeyView::load(Limits::default(), key(), Some(v.record()), &[alive(2)], 0);
        ev.clear();
        v.tick(5, &mut ev);
        assert!(ev.iter().any(|e| matches!(e,
            Event::HoldLost { session, reason: crate::command::HoldEnd::SessionEnded, .. } if *session == SessionId(1))));
        assert!(matches!(
            v.wait_view(SessionId(2)),
            WaitView::Finished(WaitOutcome::Granted(_))
        ));
        assert_eq!(v.deadline(), None, "no lease, no wait deadline");
        assert_eq!(v.next_due(), Some(10_000), "session 2's expiry");
    }

    #[test]
    fn keyless_and_foreign_commands_are_rejected_by_name() {
        let mut v = KeyView::load(Limits::default(), key(), None, &[], 0);
        let mut ev = Vec::new();
        let e = v
            .apply(0, None, &Command::OpenSession { ttl_ms: 5 }, &mut ev)
            .unwrap_err();
        assert!(e.to_string().contains("command"), "{e}");
        let other = LockKey::new("ns", "other").unwrap();
        let e = v
            .apply(0, None, &Command::Destroy { key: other }, &mut ev)
            .unwrap_err();
        assert!(e.to_string().contains("`key`"), "{e}");
        assert!(v.record().is_empty());
        assert!(check_open_session(&Limits::default(), 0).is_err());
    }
}
