//! One test per rule of `SEMANTICS.md`, named after the rule. Each test drives
//! the core through the story the rule describes and checks the caller's
//! response, the events other clients get, and `check_invariants`.

use fencelock_core::{
    Command, Event, FencingToken, Grant, HoldEnd, HolderInfo, Limits, LockError, LockInfo, LockKey,
    LockKind, Mode, RequestId, Response, SessionId, StatusCode, Table, WaitEnd, WaiterInfo,
};

type Outcome = Result<Response, LockError>;

/// A table plus the events of the last step.
struct World {
    table: Table,
    events: Vec<Event>,
}

impl World {
    fn new() -> Self {
        World::with_limits(Limits::default())
    }

    fn with_limits(limits: Limits) -> Self {
        World {
            table: Table::new(limits),
            events: Vec::new(),
        }
    }

    /// Applies one command; `self.events` holds only this step's events.
    fn run(&mut self, now: u64, cmd: Command) -> Outcome {
        self.run_req(now, None, cmd)
    }

    fn run_req(&mut self, now: u64, rid: Option<u64>, cmd: Command) -> Outcome {
        self.events.clear();
        let out = self
            .table
            .apply_request(now, rid.map(RequestId), &cmd, &mut self.events);
        if let Err(e) = self.table.check_invariants() {
            panic!("invariant broken after {cmd:?} at {now}: {e}");
        }
        out
    }

    fn open(&mut self, now: u64, ttl_ms: u64) -> SessionId {
        match self.run(now, Command::OpenSession { ttl_ms }) {
            Ok(Response::SessionOpened { session, .. }) => session,
            other => panic!("open session: {other:?}"),
        }
    }

    fn acquire(
        &mut self,
        now: u64,
        key: &LockKey,
        session: SessionId,
        mode: Mode,
        timeout_ms: Option<u64>,
    ) -> Outcome {
        self.run(now, acquire(key, session, mode, timeout_ms))
    }

    /// Acquires and expects an immediate grant.
    fn grant(&mut self, now: u64, key: &LockKey, session: SessionId, mode: Mode) -> Grant {
        match self.acquire(now, key, session, mode, None) {
            Ok(Response::Granted(g)) => g,
            other => panic!("expected a grant for {session} on {key}: {other:?}"),
        }
    }

    /// Acquires and expects to be queued at `position`.
    fn queue(
        &mut self,
        now: u64,
        key: &LockKey,
        session: SessionId,
        mode: Mode,
        timeout_ms: Option<u64>,
        position: u64,
    ) {
        let out = self.acquire(now, key, session, mode, timeout_ms);
        let deadline = timeout_ms.map(|t| now + t);
        assert_eq!(out, Ok(Response::Queued { position, deadline }));
        assert!(self.events.is_empty(), "queueing emitted {:?}", self.events);
    }

    fn release(
        &mut self,
        now: u64,
        key: &LockKey,
        session: SessionId,
        token: FencingToken,
    ) -> Outcome {
        self.run(
            now,
            Command::Release {
                key: key.clone(),
                session,
                token,
            },
        )
    }

    fn create(&mut self, now: u64, key: &LockKey, kind: LockKind, ttl_ms: Option<u64>) -> Outcome {
        self.run(
            now,
            Command::CreateLock {
                key: key.clone(),
                kind,
                ttl_ms,
            },
        )
    }

    fn tick(&mut self, now: u64) {
        assert_eq!(self.run(now, Command::Tick), Ok(Response::Ticked));
    }

    fn holders(&self, key: &LockKey) -> Vec<SessionId> {
        self.table
            .describe(key)
            .map(|i| i.holders.iter().map(|h| h.session).collect())
            .unwrap_or_default()
    }

    fn waiters(&self, key: &LockKey) -> Vec<SessionId> {
        self.table
            .describe(key)
            .map(|i| i.waiters.iter().map(|w| w.session).collect())
            .unwrap_or_default()
    }

    fn bytes(&self) -> Vec<u8> {
        self.table.snapshot_bytes().expect("snapshot encodes")
    }
}

fn key(name: &str) -> LockKey {
    LockKey::new("test", name).expect("valid key")
}

fn acquire(key: &LockKey, session: SessionId, mode: Mode, timeout_ms: Option<u64>) -> Command {
    Command::Acquire {
        key: key.clone(),
        session,
        mode,
        timeout_ms,
    }
}

fn granted(key: &LockKey, session: SessionId, request_id: Option<u64>, grant: Grant) -> Event {
    Event::Granted {
        key: key.clone(),
        session,
        request_id: request_id.map(RequestId),
        grant,
    }
}

fn wait_ended(key: &LockKey, session: SessionId, reason: WaitEnd) -> Event {
    Event::WaitEnded {
        key: key.clone(),
        session,
        request_id: None,
        reason,
    }
}

fn hold_lost(key: &LockKey, session: SessionId, token: FencingToken, reason: HoldEnd) -> Event {
    Event::HoldLost {
        key: key.clone(),
        session,
        token,
        reason,
    }
}

fn grant_at(token: u64, mode: Mode, granted_at: u64, expires_at: Option<u64>) -> Grant {
    Grant {
        token: FencingToken(token),
        mode,
        granted_at,
        expires_at,
    }
}

fn field_of(err: &LockError) -> &str {
    match err {
        LockError::InvalidArgument { field, .. } => field,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

// ----- names ------------------------------------------------------------------

#[test]
fn names_reject_empty_long_and_control_characters() {
    let cases: [(&str, &str, &str); 7] = [
        ("", "x", "namespace"),
        ("ns", "", "name"),
        (&"n".repeat(129), "x", "namespace"),
        ("ns", &"x".repeat(513), "name"),
        ("ns", "a\0b", "name"),
        ("n\ts", "x", "namespace"),
        ("ns", "line\u{85}break", "name"),
    ];
    for (ns, name, field) in cases {
        let err = LockKey::new(ns, name).expect_err("invalid key accepted");
        assert_eq!(field_of(&err), field, "{err}");
        assert_eq!(err.code(), StatusCode::InvalidArgument);
        assert!(err.to_string().contains(field), "{err}");
    }
    // Limits are in bytes, not characters: 64 two-byte chars fit, 65 do not.
    assert!(LockKey::new(&"é".repeat(64), "x").is_ok());
    assert_eq!(
        field_of(&LockKey::new(&"é".repeat(65), "x").unwrap_err()),
        "namespace"
    );
    assert!(LockKey::new(&"n".repeat(128), &"x".repeat(512)).is_ok());
    // The suggested `type:id` convention is allowed, not required.
    let k = LockKey::new("billing", "invoice:42").unwrap();
    assert_eq!((k.namespace(), k.name()), ("billing", "invoice:42"));
    // Deserialization validates too: bytes on the wire cannot smuggle a bad key.
    let bytes = postcard::to_allocvec(&("ns", "a\u{1}b")).unwrap();
    assert!(postcard::from_bytes::<LockKey>(&bytes).is_err());
    let bytes = postcard::to_allocvec(&("ns", "ok")).unwrap();
    assert_eq!(
        postcard::from_bytes::<LockKey>(&bytes).unwrap(),
        LockKey::new("ns", "ok").unwrap()
    );
}

// ----- sessions ---------------------------------------------------------------

#[test]
fn session_expiry_releases_holds_and_cancels_waits_in_one_transition() {
    let mut w = World::new();
    let (a, b) = (key("a"), key("b"));
    let doomed = w.open(0, 100);
    let other = w.open(0, 10_000);
    let next = w.open(0, 10_000);
    let held = w.grant(1, &a, doomed, Mode::Exclusive);
    w.grant(2, &b, other, Mode::Exclusive);
    w.queue(3, &b, doomed, Mode::Exclusive, None, 1);
    w.queue(4, &a, next, Mode::Exclusive, None, 1);
    // Nothing happens before the TTL.
    w.tick(99);
    assert!(w.events.is_empty());
    // One late tick: the session ends at 100, with everything it had.
    w.tick(500);
    assert_eq!(
        w.events,
        vec![
            Event::SessionExpired { session: doomed },
            wait_ended(&b, doomed, WaitEnd::SessionEnded),
            hold_lost(&a, doomed, held.token, HoldEnd::SessionEnded),
            granted(&a, next, None, grant_at(3, Mode::Exclusive, 100, None)),
        ]
    );
    assert_eq!(w.holders(&a), vec![next]);
    assert!(w.waiters(&b).is_empty());
    assert!(w.table.describe_session(doomed).is_none());
    let err = w
        .acquire(501, &a, doomed, Mode::Exclusive, None)
        .unwrap_err();
    assert_eq!(err, LockError::SessionNotFound { session: doomed });
    assert_eq!(err.code(), StatusCode::NotFound);
    assert_eq!(
        w.release(501, &a, doomed, held.token),
        Err(LockError::Expired {
            key: a.clone(),
            token: held.token
        })
    );
}

#[test]
fn session_close_releases_holds_and_cancels_waits_in_one_transition() {
    let mut w = World::new();
    let (a, b) = (key("a"), key("b"));
    let s1 = w.open(0, 10_000);
    let s2 = w.open(0, 10_000);
    let t = w.grant(1, &a, s1, Mode::Exclusive).token;
    w.grant(1, &b, s2, Mode::Exclusive);
    w.queue(2, &b, s1, Mode::Exclusive, Some(1_000), 1);
    w.queue(3, &a, s2, Mode::Exclusive, None, 1);
    assert_eq!(
        w.run(10, Command::CloseSession { session: s1 }),
        Ok(Response::SessionClosed)
    );
    assert_eq!(
        w.events,
        vec![
            wait_ended(&b, s1, WaitEnd::SessionEnded),
            hold_lost(&a, s1, t, HoldEnd::SessionEnded),
            granted(&a, s2, None, grant_at(3, Mode::Exclusive, 10, None)),
        ]
    );
    // The cancelled wait's deadline is gone too: only s2's session expiry is left.
    assert_eq!(w.table.next_deadline(), Some(10_000));
    assert_eq!(
        w.run(11, Command::CloseSession { session: s1 }),
        Err(LockError::SessionNotFound { session: s1 })
    );
}

#[test]
fn keep_alive_pushes_session_expiry_to_now_plus_ttl() {
    let mut w = World::new();
    let s = w.open(0, 100);
    assert_eq!(
        w.run(90, Command::KeepAlive { session: s }),
        Ok(Response::KeptAlive { expires_at: 190 })
    );
    w.tick(189);
    assert!(w.table.describe_session(s).is_some());
    w.tick(190);
    assert_eq!(w.events, vec![Event::SessionExpired { session: s }]);
    assert_eq!(
        w.run(191, Command::KeepAlive { session: s }),
        Err(LockError::SessionNotFound { session: s })
    );
}

// ----- kinds and modes --------------------------------------------------------

#[test]
fn create_lock_is_idempotent_and_kind_mismatch_is_already_exists() {
    let mut w = World::new();
    let k = key("k");
    assert_eq!(
        w.create(0, &k, LockKind::ReadWrite, Some(500)),
        Ok(Response::LockCreated {
            created: true,
            kind: LockKind::ReadWrite,
            ttl_ms: Some(500)
        })
    );
    // Creating again returns the existing lock (and its TTL).
    assert_eq!(
        w.create(1, &k, LockKind::ReadWrite, None),
        Ok(Response::LockCreated {
            created: false,
            kind: LockKind::ReadWrite,
            ttl_ms: Some(500)
        })
    );
    let err = w.create(2, &k, LockKind::Exclusive, None).unwrap_err();
    assert_eq!(
        err,
        LockError::AlreadyExists {
            key: k.clone(),
            existing: LockKind::ReadWrite,
            requested: LockKind::Exclusive
        }
    );
    assert_eq!(err.code(), StatusCode::AlreadyExists);
    assert_eq!(w.table.describe(&k).unwrap().kind, LockKind::ReadWrite);
}

#[test]
fn acquire_on_missing_key_creates_it_with_defaults() {
    let mut w = World::new();
    let (m, rw) = (key("m"), key("rw"));
    let s = w.open(0, 10_000);
    assert!(w.table.describe(&m).is_none());
    w.grant(1, &m, s, Mode::Exclusive);
    w.grant(1, &rw, s, Mode::Read);
    let info = w.table.describe(&m).unwrap();
    assert_eq!((info.kind, info.ttl_ms), (LockKind::Exclusive, None));
    let info = w.table.describe(&rw).unwrap();
    assert_eq!((info.kind, info.ttl_ms), (LockKind::ReadWrite, None));
    assert_eq!(w.table.lock_count(), 2);
}

#[test]
fn mutex_is_acquired_only_in_exclusive_mode_and_rw_lock_only_in_read_or_write() {
    let mut w = World::new();
    let (m, rw) = (key("m"), key("rw"));
    let s = w.open(0, 10_000);
    w.create(0, &m, LockKind::Exclusive, None).unwrap();
    w.create(0, &rw, LockKind::ReadWrite, None).unwrap();
    for mode in [Mode::Read, Mode::Write] {
        let err = w.acquire(1, &m, s, mode, None).unwrap_err();
        assert!(
            matches!(
                err,
                LockError::AlreadyExists {
                    existing: LockKind::Exclusive,
                    ..
                }
            ),
            "{err:?}"
        );
    }
    let err = w.acquire(1, &rw, s, Mode::Exclusive, None).unwrap_err();
    assert!(
        matches!(
            err,
            LockError::AlreadyExists {
                existing: LockKind::ReadWrite,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(w.holders(&m).is_empty() && w.holders(&rw).is_empty());
}

#[test]
fn read_write_lock_shares_reads_and_excludes_writes() {
    let mut w = World::new();
    let k = key("rw");
    let (r1, r2, wr) = (w.open(0, 10_000), w.open(0, 10_000), w.open(0, 10_000));
    w.grant(1, &k, r1, Mode::Read);
    w.grant(2, &k, r2, Mode::Read);
    assert_eq!(w.holders(&k), vec![r1, r2]);
    assert_eq!(
        w.acquire(3, &k, wr, Mode::Write, Some(0)),
        Err(LockError::WouldBlock { key: k.clone() })
    );
    w.run(4, Command::ForceRelease { key: k.clone() }).unwrap();
    w.grant(5, &k, wr, Mode::Write);
    assert_eq!(
        w.acquire(6, &k, r1, Mode::Read, Some(0)),
        Err(LockError::WouldBlock { key: k.clone() })
    );
}

// ----- acquire, waiting, fairness ---------------------------------------------

#[test]
fn fifo_arrivals_never_overtake_queued_waiters() {
    let mut w = World::new();
    let k = key("m");
    let s: Vec<SessionId> = (0..4).map(|_| w.open(0, 10_000)).collect();
    let mut token = w.grant(1, &k, s[0], Mode::Exclusive).token;
    w.queue(2, &k, s[1], Mode::Exclusive, None, 1);
    w.queue(3, &k, s[2], Mode::Exclusive, Some(1_000), 2);
    w.queue(4, &k, s[3], Mode::Exclusive, None, 3);
    // Each release hands the lock to the head, in arrival order.
    for (i, now) in [(1usize, 10u64), (2, 11), (3, 12)] {
        w.release(now, &k, s[i - 1], token).unwrap();
        let [Event::Granted { session, grant, .. }] = &w.events[..] else {
            panic!("expected one grant: {:?}", w.events);
        };
        assert_eq!(*session, s[i]);
        token = grant.token;
    }
    // A reader behind queued readers-and-writers on an RW lock also waits its turn.
    let rw = key("rw");
    w.grant(20, &rw, s[0], Mode::Write);
    w.queue(21, &rw, s[1], Mode::Read, None, 1);
    w.queue(22, &rw, s[2], Mode::Write, None, 2);
    assert_eq!(w.waiters(&rw), vec![s[1], s[2]]);
}

#[test]
fn try_lock_with_zero_timeout_is_would_block_and_queues_nothing() {
    let mut w = World::new();
    let k = key("m");
    let (a, b) = (w.open(0, 10_000), w.open(0, 10_000));
    // Free: try-lock just gets it.
    let g = match w.acquire(1, &k, a, Mode::Exclusive, Some(0)) {
        Ok(Response::Granted(g)) => g,
        other => panic!("{other:?}"),
    };
    let before = w.bytes();
    let err = w.acquire(2, &k, b, Mode::Exclusive, Some(0)).unwrap_err();
    assert_eq!(err, LockError::WouldBlock { key: k.clone() });
    assert_eq!(err.code(), StatusCode::FailedPrecondition);
    assert!(w.events.is_empty());
    assert!(w.waiters(&k).is_empty());
    assert!(w.table.describe_session(b).unwrap().waits.is_empty());
    // Only the clock moved.
    let mut same_time = World {
        table: Table::restore_bytes(&before).unwrap(),
        events: vec![],
    };
    same_time.tick(2);
    assert_eq!(w.bytes(), same_time.bytes());
    // The release grants nobody: nothing was queued.
    w.release(3, &k, a, g.token).unwrap();
    assert!(w.events.is_empty());
}

#[test]
fn wait_deadline_passing_ends_with_timeout_and_leaves_queue() {
    let mut w = World::new();
    let k = key("m");
    let (a, b, c) = (w.open(0, 10_000), w.open(0, 10_000), w.open(0, 10_000));
    let t = w.grant(1, &k, a, Mode::Exclusive).token;
    w.queue(10, &k, b, Mode::Exclusive, Some(50), 1);
    w.queue(11, &k, c, Mode::Exclusive, None, 2);
    w.tick(59);
    assert!(w.events.is_empty());
    assert_eq!(w.waiters(&k), vec![b, c]);
    w.tick(60);
    assert_eq!(w.events, vec![wait_ended(&k, b, WaitEnd::TimedOut)]);
    assert_eq!(w.waiters(&k), vec![c]);
    assert!(w.table.describe_session(b).unwrap().waits.is_empty());
    // The next release goes to c, not to the timed-out b.
    w.release(70, &k, a, t).unwrap();
    assert_eq!(
        w.events,
        vec![granted(
            &k,
            c,
            None,
            grant_at(t.0 + 1, Mode::Exclusive, 70, None)
        )]
    );
    // The wire status for a wait that timed out.
    assert_eq!(
        LockError::Timeout { key: k }.code(),
        StatusCode::DeadlineExceeded
    );
}

#[test]
fn wait_without_timeout_lasts_as_long_as_its_session() {
    let mut w = World::new();
    let k = key("m");
    let a = w.open(0, 1_000_000);
    let b = w.open(0, 500);
    w.grant(1, &k, a, Mode::Exclusive);
    w.queue(2, &k, b, Mode::Exclusive, None, 1);
    w.run(400, Command::KeepAlive { session: b }).unwrap();
    w.tick(899);
    assert_eq!(w.waiters(&k), vec![b]);
    w.tick(900);
    assert_eq!(
        w.events,
        vec![
            Event::SessionExpired { session: b },
            wait_ended(&k, b, WaitEnd::SessionEnded)
        ]
    );
}

#[test]
fn cancel_wait_leaves_queue_and_wakes_compatible_waiters() {
    let mut w = World::new();
    let k = key("rw");
    let (r1, wr, r2) = (w.open(0, 10_000), w.open(0, 10_000), w.open(0, 10_000));
    w.grant(1, &k, r1, Mode::Read);
    w.queue(2, &k, wr, Mode::Write, None, 1);
    w.queue(3, &k, r2, Mode::Read, None, 2);
    // The writer at the head gives up: the reader behind it is compatible with
    // the reading holder and is granted in the same transition (no lost wake-up).
    assert_eq!(
        w.run(
            4,
            Command::CancelWait {
                key: k.clone(),
                session: wr
            }
        ),
        Ok(Response::WaitCancelled { was_waiting: true })
    );
    assert_eq!(
        w.events,
        vec![granted(&k, r2, None, grant_at(2, Mode::Read, 4, None))]
    );
    assert_eq!(
        w.run(
            5,
            Command::CancelWait {
                key: k.clone(),
                session: wr
            }
        ),
        Ok(Response::WaitCancelled { was_waiting: false })
    );
}

#[test]
fn head_waiter_timing_out_wakes_compatible_waiters() {
    let mut w = World::new();
    let k = key("rw");
    let (r1, wr, r2, r3) = (
        w.open(0, 10_000),
        w.open(0, 10_000),
        w.open(0, 10_000),
        w.open(0, 10_000),
    );
    w.grant(1, &k, r1, Mode::Read);
    w.queue(2, &k, wr, Mode::Write, Some(100), 1);
    w.queue(3, &k, r2, Mode::Read, None, 2);
    w.queue(4, &k, r3, Mode::Read, Some(500), 3);
    // The writer's deadline passes: the readers behind it join the reading
    // holder at that instant (no lost wake-up).
    w.tick(150);
    assert_eq!(
        w.events,
        vec![
            wait_ended(&k, wr, WaitEnd::TimedOut),
            granted(&k, r2, None, grant_at(2, Mode::Read, 102, None)),
            granted(&k, r3, None, grant_at(3, Mode::Read, 102, None)),
        ]
    );
    assert_eq!(w.holders(&k), vec![r1, r2, r3]);
}

#[test]
fn consecutive_readers_at_head_are_granted_together() {
    let mut w = World::new();
    let k = key("rw");
    let s: Vec<SessionId> = (0..5).map(|_| w.open(0, 10_000)).collect();
    let t0 = w.grant(1, &k, s[0], Mode::Write).token;
    w.queue(2, &k, s[1], Mode::Read, None, 1);
    w.run_req(3, Some(7), acquire(&k, s[2], Mode::Read, None))
        .unwrap();
    w.queue(4, &k, s[3], Mode::Write, None, 3);
    w.queue(5, &k, s[4], Mode::Read, None, 4);
    w.release(10, &k, s[0], t0).unwrap();
    assert_eq!(
        w.events,
        vec![
            granted(&k, s[1], None, grant_at(2, Mode::Read, 10, None)),
            granted(&k, s[2], Some(7), grant_at(3, Mode::Read, 10, None)),
        ]
    );
    assert_eq!(w.holders(&k), vec![s[1], s[2]]);
    // The batch stops at the writer; the reader behind the writer waits.
    assert_eq!(w.waiters(&k), vec![s[3], s[4]]);
    w.release(11, &k, s[1], FencingToken(2)).unwrap();
    assert!(w.events.is_empty());
    w.release(12, &k, s[2], FencingToken(3)).unwrap();
    assert_eq!(
        w.events,
        vec![granted(&k, s[3], None, grant_at(4, Mode::Write, 12, None))]
    );
    w.release(13, &k, s[3], FencingToken(4)).unwrap();
    assert_eq!(
        w.events,
        vec![granted(&k, s[4], None, grant_at(5, Mode::Read, 13, None))]
    );
}

#[test]
fn reader_arriving_behind_queued_writer_waits() {
    let mut w = World::new();
    let k = key("rw");
    let (r1, wr, r2) = (w.open(0, 10_000), w.open(0, 10_000), w.open(0, 10_000));
    let t1 = w.grant(1, &k, r1, Mode::Read).token;
    w.queue(2, &k, wr, Mode::Write, None, 1);
    // Compatible with the reading holder, but a writer waits: the reader queues
    // (writers do not starve) and try-lock says WouldBlock.
    assert_eq!(
        w.acquire(3, &k, r2, Mode::Read, Some(0)),
        Err(LockError::WouldBlock { key: k.clone() })
    );
    w.queue(3, &k, r2, Mode::Read, None, 2);
    w.release(4, &k, r1, t1).unwrap();
    assert_eq!(
        w.events,
        vec![granted(&k, wr, None, grant_at(2, Mode::Write, 4, None))]
    );
    assert_eq!(w.waiters(&k), vec![r2]);
}

#[test]
fn writer_arriving_behind_queued_readers_waits_its_turn() {
    let mut w = World::new();
    let k = key("rw");
    let (w1, r1, w2) = (w.open(0, 10_000), w.open(0, 10_000), w.open(0, 10_000));
    let t = w.grant(1, &k, w1, Mode::Write).token;
    w.queue(2, &k, r1, Mode::Read, None, 1);
    w.queue(3, &k, w2, Mode::Write, None, 2);
    // Readers do not starve either: the queued reader goes before the later writer.
    w.release(4, &k, w1, t).unwrap();
    assert_eq!(
        w.events,
        vec![granted(&k, r1, None, grant_at(2, Mode::Read, 4, None))]
    );
    assert_eq!(w.waiters(&k), vec![w2]);
}

#[test]
fn acquire_on_held_lock_is_already_held() {
    let mut w = World::new();
    let (m, rw) = (key("m"), key("rw"));
    let (a, b) = (w.open(0, 10_000), w.open(0, 10_000));
    w.grant(1, &m, a, Mode::Exclusive);
    w.grant(1, &rw, a, Mode::Read);
    let before = w.bytes();
    for (k, mode) in [(&m, Mode::Exclusive), (&rw, Mode::Read), (&rw, Mode::Write)] {
        for timeout in [None, Some(0), Some(100)] {
            let err = w.acquire(1, k, a, mode, timeout).unwrap_err();
            assert_eq!(
                err,
                LockError::AlreadyHeld {
                    key: k.clone(),
                    session: a
                }
            );
            assert_eq!(err.code(), StatusCode::FailedPrecondition);
        }
    }
    assert_eq!(w.bytes(), before);
    // Queued twice is refused as well.
    w.queue(1, &m, b, Mode::Exclusive, None, 1);
    let before = w.bytes();
    let err = w.acquire(1, &m, b, Mode::Exclusive, None).unwrap_err();
    assert_eq!(
        err,
        LockError::AlreadyWaiting {
            key: m.clone(),
            session: b
        }
    );
    assert_eq!(err.code(), StatusCode::FailedPrecondition);
    assert_eq!(w.bytes(), before);
}

// ----- fencing ------------------------------------------------------------------

#[test]
fn fencing_tokens_strictly_increase_across_destroy_recreate_and_restore() {
    let mut w = World::new();
    let k = key("k");
    let other = key("other");
    let s = w.open(0, 1_000_000);
    let mut seen = Vec::new();
    let grant_and_release = |w: &mut World, now: u64, k: &LockKey| {
        let g = w.grant(now, k, s, Mode::Exclusive);
        w.release(now, k, s, g.token).unwrap();
        g.token
    };
    for now in 1..4 {
        seen.push(grant_and_release(&mut w, now, &k));
        grant_and_release(&mut w, now, &other);
    }
    w.run(10, Command::Destroy { key: k.clone() }).unwrap();
    seen.push(grant_and_release(&mut w, 11, &k));
    // A restarted table (restored from a snapshot) continues above the last token.
    let mut restored = World {
        table: Table::restore_bytes(&w.bytes()).unwrap(),
        events: vec![],
    };
    seen.push(grant_and_release(&mut restored, 12, &k));
    restored
        .run(13, Command::Destroy { key: k.clone() })
        .unwrap();
    let mut restored = World {
        table: Table::restore_bytes(&restored.bytes()).unwrap(),
        events: vec![],
    };
    seen.push(grant_and_release(&mut restored, 14, &k));
    assert!(
        seen.windows(2).all(|p| p[0] < p[1]),
        "tokens not strictly increasing: {seen:?}"
    );
    // Steal and lease expiry issue fresh tokens too.
    let t_steal = match restored.run(
        15,
        Command::Steal {
            key: k.clone(),
            session: s,
        },
    ) {
        Ok(Response::Granted(g)) => g.token,
        other => panic!("{other:?}"),
    };
    assert!(t_steal > *seen.last().unwrap());
    assert_eq!(restored.table.describe(&k).unwrap().last_token, t_steal);
}

#[test]
fn fenced_resource_never_accepts_a_write_from_a_holder_who_lost_the_lock() {
    /// A resource that remembers the highest token it has seen.
    struct Fenced {
        highest: u64,
        writes: Vec<SessionId>,
    }
    impl Fenced {
        fn write(&mut self, w: &World, now: u64, k: &LockKey, token: FencingToken) -> bool {
            if token.0 < self.highest || w.table.validate(now, k, token).is_err() {
                return false;
            }
            self.highest = token.0;
            self.writes
                .push(w.table.validate(now, k, token).unwrap().session);
            true
        }
    }
    let mut w = World::new();
    let k = key("fenced");
    w.create(0, &k, LockKind::Exclusive, Some(100)).unwrap();
    let (slow, fast) = (w.open(0, 10_000), w.open(0, 10_000));
    let mut res = Fenced {
        highest: 0,
        writes: vec![],
    };
    let old = w.grant(1, &k, slow, Mode::Exclusive).token;
    assert!(res.write(&w, 50, &k, old));
    w.queue(60, &k, fast, Mode::Exclusive, None, 1);
    // The slow client pauses past its lease; the lock moves on.
    w.tick(101);
    let new = w.table.describe(&k).unwrap().holders[0].token;
    assert!(new > old);
    // Even before the new holder writes, the stale token is refused ...
    assert!(!res.write(&w, 102, &k, old));
    assert!(res.write(&w, 103, &k, new));
    // ... and after it, both by validation and by the token order.
    assert!(!res.write(&w, 104, &k, old));
    assert_eq!(res.writes, vec![slow, fast]);
}

// ----- leases -----------------------------------------------------------------

#[test]
fn lease_expiry_grants_next_waiter_in_same_transition() {
    let mut w = World::new();
    let k = key("leased");
    w.create(0, &k, LockKind::ReadWrite, Some(100)).unwrap();
    let (a, b, c, d) = (
        w.open(0, 10_000),
        w.open(0, 10_000),
        w.open(0, 10_000),
        w.open(0, 10_000),
    );
    let g = w.grant(0, &k, a, Mode::Write);
    assert_eq!(g, grant_at(1, Mode::Write, 0, Some(100)));
    w.queue(10, &k, b, Mode::Read, None, 1);
    w.queue(11, &k, c, Mode::Read, Some(1_000), 2);
    w.queue(12, &k, d, Mode::Write, None, 3);
    w.tick(99);
    assert!(w.events.is_empty());
    w.tick(100);
    assert_eq!(
        w.events,
        vec![
            hold_lost(&k, a, g.token, HoldEnd::LeaseExpired),
            granted(&k, b, None, grant_at(2, Mode::Read, 100, Some(200))),
            granted(&k, c, None, grant_at(3, Mode::Read, 100, Some(200))),
        ]
    );
    assert_eq!(
        w.release(101, &k, a, g.token),
        Err(LockError::Expired {
            key: k.clone(),
            token: g.token
        })
    );
}

#[test]
fn expiry_is_processed_at_its_own_instant_even_when_ticked_late() {
    let mut w = World::new();
    let k = key("leased");
    w.create(0, &k, LockKind::Exclusive, Some(100)).unwrap();
    let s: Vec<SessionId> = (0..3).map(|_| w.open(0, 100_000)).collect();
    w.grant(0, &k, s[0], Mode::Exclusive);
    w.queue(1, &k, s[1], Mode::Exclusive, None, 1);
    w.queue(2, &k, s[2], Mode::Exclusive, None, 2);
    // One tick at 250 covers two lease ends: at 100 (s1 granted, lease to 200)
    // and at 200 (s2 granted, lease to 300). No lease is longer for a late tick.
    w.tick(250);
    assert_eq!(
        w.events,
        vec![
            hold_lost(&k, s[0], FencingToken(1), HoldEnd::LeaseExpired),
            granted(&k, s[1], None, grant_at(2, Mode::Exclusive, 100, Some(200))),
            hold_lost(&k, s[1], FencingToken(2), HoldEnd::LeaseExpired),
            granted(&k, s[2], None, grant_at(3, Mode::Exclusive, 200, Some(300))),
        ]
    );
    assert_eq!(w.table.next_deadline(), Some(300));
}

#[test]
fn waits_end_before_sessions_before_leases_at_the_same_instant() {
    let mut w = World::new();
    let k = key("leased");
    w.create(0, &k, LockKind::Exclusive, Some(100)).unwrap();
    let holder = w.open(0, 100_000);
    let waiter = w.open(0, 100_000);
    let late = w.open(0, 100);
    let last = w.open(0, 100_000);
    w.grant(0, &k, holder, Mode::Exclusive);
    // All three fall due at 100.
    w.queue(50, &k, waiter, Mode::Exclusive, Some(50), 1);
    w.queue(60, &k, late, Mode::Exclusive, None, 2);
    w.queue(70, &k, last, Mode::Exclusive, None, 3);
    w.tick(100);
    // The waiter is not granted at its own deadline, the expired session is
    // gone before the lease ends, so the lease hands the lock to `last`.
    assert_eq!(
        w.events,
        vec![
            wait_ended(&k, waiter, WaitEnd::TimedOut),
            Event::SessionExpired { session: late },
            wait_ended(&k, late, WaitEnd::SessionEnded),
            hold_lost(&k, holder, FencingToken(1), HoldEnd::LeaseExpired),
            granted(&k, last, None, grant_at(2, Mode::Exclusive, 100, Some(200))),
        ]
    );
}

#[test]
fn extend_renews_lease() {
    let mut w = World::new();
    let (k, plain) = (key("leased"), key("plain"));
    w.create(0, &k, LockKind::Exclusive, Some(100)).unwrap();
    let (a, b) = (w.open(0, 10_000), w.open(0, 10_000));
    let t = w.grant(0, &k, a, Mode::Exclusive).token;
    let extend = |key: &LockKey, session, token| Command::Extend {
        key: key.clone(),
        session,
        token,
    };
    assert_eq!(
        w.run(80, extend(&k, a, t)),
        Ok(Response::Extended {
            expires_at: Some(180)
        })
    );
    assert_eq!(w.table.next_deadline(), Some(180));
    w.tick(150);
    assert!(w.events.is_empty());
    assert!(w.table.validate(150, &k, t).is_ok());
    assert_eq!(
        w.run(150, extend(&k, b, t)),
        Err(LockError::NotHolder {
            key: k.clone(),
            token: t
        })
    );
    w.tick(180);
    assert_eq!(w.events, vec![hold_lost(&k, a, t, HoldEnd::LeaseExpired)]);
    assert_eq!(
        w.run(181, extend(&k, a, t)),
        Err(LockError::Expired {
            key: k.clone(),
            token: t
        })
    );
    // Without a TTL there is no lease to renew: extending says so, and changes nothing.
    let tp = w.grant(200, &plain, a, Mode::Exclusive).token;
    assert_eq!(
        w.run(201, extend(&plain, a, tp)),
        Ok(Response::Extended { expires_at: None })
    );
}

// ----- release, force release, steal, validate, destroy -----------------------

#[test]
fn release_checks_token_notholder_stolen_expired() {
    let mut w = World::new();
    let (k, leased) = (key("k"), key("leased"));
    w.create(0, &leased, LockKind::Exclusive, Some(10)).unwrap();
    let (a, b) = (w.open(0, 10_000), w.open(0, 10_000));
    let t = w.grant(1, &k, a, Mode::Exclusive).token;
    let codes = |e: &LockError| e.code();
    // Someone else's session, or a token never granted: NotHolder.
    let e = w.release(2, &k, b, t).unwrap_err();
    assert_eq!(
        (e.clone(), codes(&e)),
        (
            LockError::NotHolder {
                key: k.clone(),
                token: t
            },
            StatusCode::FailedPrecondition
        )
    );
    let e = w.release(2, &k, a, FencingToken(999)).unwrap_err();
    assert_eq!(
        e,
        LockError::NotHolder {
            key: k.clone(),
            token: FencingToken(999)
        }
    );
    // The holder with its token: released, once.
    assert_eq!(w.release(3, &k, a, t), Ok(Response::Released));
    assert_eq!(
        w.release(4, &k, a, t),
        Err(LockError::NotHolder {
            key: k.clone(),
            token: t
        })
    );
    // Stolen.
    let t2 = w.grant(5, &k, a, Mode::Exclusive).token;
    w.run(
        6,
        Command::Steal {
            key: k.clone(),
            session: b,
        },
    )
    .unwrap();
    let e = w.release(7, &k, a, t2).unwrap_err();
    assert_eq!(
        (e.clone(), codes(&e)),
        (
            LockError::Stolen {
                key: k.clone(),
                token: t2
            },
            StatusCode::FailedPrecondition
        )
    );
    // Expired lease.
    let t3 = w.grant(8, &leased, a, Mode::Exclusive).token;
    let e = w.release(18, &leased, a, t3).unwrap_err();
    assert_eq!(
        (e.clone(), codes(&e)),
        (
            LockError::Expired {
                key: leased.clone(),
                token: t3
            },
            StatusCode::FailedPrecondition
        )
    );
    // Release on a lock that does not exist.
    let none = key("none");
    assert_eq!(
        w.release(19, &none, a, t3),
        Err(LockError::NotFound { key: none })
    );
}

#[test]
fn force_release_removes_all_holds_and_grants_next() {
    let mut w = World::new();
    let k = key("rw");
    let (r1, r2, wr) = (w.open(0, 10_000), w.open(0, 10_000), w.open(0, 10_000));
    let t1 = w.grant(1, &k, r1, Mode::Read).token;
    let t2 = w.grant(2, &k, r2, Mode::Read).token;
    w.queue(3, &k, wr, Mode::Write, None, 1);
    assert_eq!(
        w.run(4, Command::ForceRelease { key: k.clone() }),
        Ok(Response::ForceReleased { holds: 2 })
    );
    assert_eq!(
        w.events,
        vec![
            hold_lost(&k, r1, t1, HoldEnd::ForceReleased),
            hold_lost(&k, r2, t2, HoldEnd::ForceReleased),
            granted(&k, wr, None, grant_at(3, Mode::Write, 4, None)),
        ]
    );
    assert_eq!(
        w.release(5, &k, r1, t1),
        Err(LockError::NotHolder {
            key: k.clone(),
            token: t1
        })
    );
    assert!(w.table.describe_session(r1).unwrap().holds.is_empty());
    let none = key("none");
    assert_eq!(
        w.run(6, Command::ForceRelease { key: none.clone() }),
        Err(LockError::NotFound { key: none })
    );
}

#[test]
fn steal_takes_lock_ahead_of_queue_and_old_token_fails_with_stolen() {
    let mut w = World::new();
    let k = key("rw");
    w.create(0, &k, LockKind::ReadWrite, Some(1_000)).unwrap();
    let (r1, r2, waiter, thief) = (
        w.open(0, 10_000),
        w.open(0, 10_000),
        w.open(0, 10_000),
        w.open(0, 10_000),
    );
    let t1 = w.grant(1, &k, r1, Mode::Read).token;
    let t2 = w.grant(2, &k, r2, Mode::Read).token;
    w.queue(3, &k, waiter, Mode::Write, None, 1);
    w.queue(4, &k, thief, Mode::Write, None, 2);
    let out = w.run(
        5,
        Command::Steal {
            key: k.clone(),
            session: thief,
        },
    );
    assert_eq!(
        out,
        Ok(Response::Granted(grant_at(3, Mode::Write, 5, Some(1_005))))
    );
    // Former holders are told; the thief left its own place in the queue; the
    // earlier waiter is still waiting.
    assert_eq!(
        w.events,
        vec![
            hold_lost(&k, r1, t1, HoldEnd::Stolen),
            hold_lost(&k, r2, t2, HoldEnd::Stolen)
        ]
    );
    assert_eq!(w.holders(&k), vec![thief]);
    assert_eq!(w.waiters(&k), vec![waiter]);
    let stolen = Err(LockError::Stolen {
        key: k.clone(),
        token: t1,
    });
    assert_eq!(w.release(6, &k, r1, t1), stolen);
    assert_eq!(
        w.run(
            6,
            Command::Extend {
                key: k.clone(),
                session: r1,
                token: t1
            }
        ),
        stolen
    );
    assert_eq!(w.table.validate(6, &k, t1).map(|_| ()), stolen.map(|_| ()));
    // Steal does not create locks.
    let none = key("none");
    assert_eq!(
        w.run(
            7,
            Command::Steal {
                key: none.clone(),
                session: r1
            }
        ),
        Err(LockError::NotFound { key: none })
    );
}

#[test]
fn validate_only_succeeds_for_current_hold() {
    let mut w = World::new();
    let (k, leased) = (key("k"), key("leased"));
    w.create(0, &leased, LockKind::Exclusive, Some(100))
        .unwrap();
    let a = w.open(0, 1_000);
    let t = w.grant(10, &k, a, Mode::Exclusive).token;
    assert_eq!(
        w.table.validate(20, &k, t),
        Ok(HolderInfo {
            session: a,
            mode: Mode::Exclusive,
            token: t,
            granted_at: 10,
            expires_at: None
        })
    );
    let tl = w.grant(10, &leased, a, Mode::Exclusive).token;
    // Lease or session past, even with no tick yet: Expired.
    assert!(w.table.validate(109, &leased, tl).is_ok());
    assert_eq!(
        w.table.validate(110, &leased, tl),
        Err(LockError::Expired {
            key: leased.clone(),
            token: tl
        })
    );
    assert!(w.table.validate(999, &k, t).is_ok());
    assert_eq!(
        w.table.validate(1_000, &k, t),
        Err(LockError::Expired {
            key: k.clone(),
            token: t
        })
    );
    // Wrong token, other lock, missing lock.
    assert_eq!(
        w.table.validate(20, &k, tl),
        Err(LockError::NotHolder {
            key: k.clone(),
            token: tl
        })
    );
    let none = key("none");
    assert_eq!(
        w.table.validate(20, &none, t),
        Err(LockError::NotFound { key: none })
    );
    // Released: no longer valid.
    w.release(30, &k, a, t).unwrap();
    assert_eq!(
        w.table.validate(30, &k, t),
        Err(LockError::NotHolder {
            key: k.clone(),
            token: t
        })
    );
}

#[test]
fn destroy_ends_waiters_with_notfound() {
    let mut w = World::new();
    let k = key("k");
    let (a, b, c) = (w.open(0, 10_000), w.open(0, 10_000), w.open(0, 10_000));
    let t = w.grant(1, &k, a, Mode::Exclusive).token;
    w.queue(2, &k, b, Mode::Exclusive, Some(500), 1);
    w.run_req(3, Some(9), acquire(&k, c, Mode::Exclusive, None))
        .unwrap();
    assert_eq!(
        w.run(4, Command::Destroy { key: k.clone() }),
        Ok(Response::Destroyed)
    );
    assert_eq!(
        w.events,
        vec![
            hold_lost(&k, a, t, HoldEnd::Destroyed),
            wait_ended(&k, b, WaitEnd::Destroyed),
            Event::WaitEnded {
                key: k.clone(),
                session: c,
                request_id: Some(RequestId(9)),
                reason: WaitEnd::Destroyed
            },
        ]
    );
    assert!(w.table.describe(&k).is_none());
    assert!(w.table.describe_session(b).unwrap().waits.is_empty());
    // The wait's deadline went with it.
    assert_eq!(w.table.next_deadline(), Some(10_000));
    let not_found = LockError::NotFound { key: k.clone() };
    assert_eq!(not_found.code(), StatusCode::NotFound);
    assert_eq!(w.release(5, &k, a, t), Err(not_found.clone()));
    assert_eq!(w.table.validate(5, &k, t), Err(not_found.clone()));
    assert_eq!(
        w.run(5, Command::Destroy { key: k.clone() }),
        Err(not_found)
    );
}

#[test]
fn describe_shows_holders_waiters_last_token() {
    let mut w = World::new();
    let k = key("rw");
    w.create(0, &k, LockKind::ReadWrite, Some(1_000)).unwrap();
    assert_eq!(w.table.describe(&k).unwrap().last_token, FencingToken(0));
    let (r1, r2, wr, r3) = (
        w.open(0, 10_000),
        w.open(0, 10_000),
        w.open(0, 10_000),
        w.open(0, 10_000),
    );
    w.grant(5, &k, r1, Mode::Read);
    w.grant(6, &k, r2, Mode::Read);
    w.queue(7, &k, wr, Mode::Write, Some(300), 1);
    w.run_req(8, Some(4), acquire(&k, r3, Mode::Read, None))
        .unwrap();
    assert_eq!(
        w.table.describe(&k),
        Some(LockInfo {
            key: k.clone(),
            kind: LockKind::ReadWrite,
            ttl_ms: Some(1_000),
            holders: vec![
                HolderInfo {
                    session: r1,
                    mode: Mode::Read,
                    token: FencingToken(1),
                    granted_at: 5,
                    expires_at: Some(1_005)
                },
                HolderInfo {
                    session: r2,
                    mode: Mode::Read,
                    token: FencingToken(2),
                    granted_at: 6,
                    expires_at: Some(1_006)
                },
            ],
            waiters: vec![
                WaiterInfo {
                    session: wr,
                    mode: Mode::Write,
                    since: 7,
                    deadline: Some(307),
                    request_id: None
                },
                WaiterInfo {
                    session: r3,
                    mode: Mode::Read,
                    since: 8,
                    deadline: None,
                    request_id: Some(RequestId(4))
                },
            ],
            last_token: FencingToken(2),
        })
    );
    let info = w.table.describe_session(r1).unwrap();
    assert_eq!(info.holds, vec![(k.clone(), FencingToken(1))]);
    assert_eq!((info.ttl_ms, info.expires_at), (10_000, 10_000));
    assert_eq!(w.table.describe_session(wr).unwrap().waits, vec![k.clone()]);
    assert!(w.table.describe(&key("missing")).is_none());
}

// ----- time, determinism, idempotency ---------------------------------------------

#[test]
fn now_never_goes_backwards() {
    let mut w = World::new();
    let k = key("k");
    let a = w.open(0, 1_000);
    w.tick(500);
    // A command stamped earlier (a leader with a slower clock) runs at 500.
    let g = w.grant(100, &k, a, Mode::Exclusive);
    assert_eq!(g.granted_at, 500);
    assert_eq!(w.table.now(), 500);
    assert_eq!(
        w.run(200, Command::KeepAlive { session: a }),
        Ok(Response::KeptAlive { expires_at: 1_500 })
    );
    // Validate at an earlier time does not resurrect anything either.
    w.tick(1_500);
    assert_eq!(
        w.table.validate(0, &k, g.token),
        Err(LockError::Expired {
            key: k.clone(),
            token: g.token
        })
    );
    assert_eq!(w.table.now(), 1_500);
}

#[test]
fn idempotent_request_returns_first_result_and_changes_nothing() {
    let mut w = World::new();
    let k = key("k");
    let (a, b) = (w.open(0, 10_000), w.open(0, 10_000));
    let first = w
        .run_req(1, Some(1), acquire(&k, a, Mode::Exclusive, None))
        .unwrap();
    let Response::Granted(g) = first.clone() else {
        panic!("{first:?}")
    };
    let queued = w
        .run_req(2, Some(1), acquire(&k, b, Mode::Exclusive, None))
        .unwrap();
    assert_eq!(
        queued,
        Response::Queued {
            position: 1,
            deadline: None
        }
    );
    let state = w.bytes();
    // Retries (e.g. after a Raft leader change) return the first result and
    // change nothing: no second hold, no second wait.
    assert_eq!(
        w.run_req(2, Some(1), acquire(&k, a, Mode::Exclusive, None)),
        Ok(first.clone())
    );
    assert_eq!(
        w.run_req(2, Some(1), acquire(&k, b, Mode::Exclusive, None)),
        Ok(queued.clone())
    );
    assert!(w.events.is_empty());
    assert_eq!(w.bytes(), state);
    let release = Command::Release {
        key: k.clone(),
        session: a,
        token: g.token,
    };
    assert_eq!(
        w.run_req(3, Some(2), release.clone()),
        Ok(Response::Released)
    );
    assert_eq!(w.events.len(), 1, "b is granted once");
    let state = w.bytes();
    assert_eq!(
        w.run_req(3, Some(2), release.clone()),
        Ok(Response::Released)
    );
    assert!(w.events.is_empty());
    assert_eq!(w.bytes(), state);
    // Without a request id, a second release is a new request (and fails).
    assert!(w.run(3, release).is_err());
    // A failed first result is returned again, too.
    let bogus = Command::Release {
        key: k.clone(),
        session: a,
        token: FencingToken(77),
    };
    let err = w.run_req(4, Some(3), bogus.clone());
    assert_eq!(
        err,
        Err(LockError::NotHolder {
            key: k.clone(),
            token: FencingToken(77)
        })
    );
    assert_eq!(w.run_req(4, Some(3), bogus), err);
    // An id reused for a different command is refused, not answered wrongly.
    let state = w.bytes();
    let reused = w
        .run_req(4, Some(3), Command::KeepAlive { session: a })
        .unwrap_err();
    assert_eq!(field_of(&reused), "request_id");
    assert_eq!(w.bytes(), state);
}

#[test]
fn request_memory_is_bounded() {
    let limits = Limits {
        max_remembered_requests: 4,
        ..Limits::default()
    };
    let mut w = World::with_limits(limits);
    let a = w.open(0, 1_000_000);
    // Ids and times stay within the same varint widths from 300 to 10_000, so
    // the snapshot size only changes if the memory itself grows.
    for rid in 1..=300 {
        w.run_req(rid, Some(rid), Command::KeepAlive { session: a })
            .unwrap();
    }
    let small = w.bytes().len();
    for rid in 301..=10_000 {
        w.run_req(rid, Some(rid), Command::KeepAlive { session: a })
            .unwrap();
    }
    assert_eq!(w.bytes().len(), small, "request memory grew");
    // The newest 4 are still answered from memory ...
    assert_eq!(
        w.run_req(10_001, Some(9_997), Command::KeepAlive { session: a }),
        Ok(Response::KeptAlive {
            expires_at: 1_009_997
        })
    );
    // ... an older one is refused, never applied a second time.
    let before = w.bytes();
    let err = w
        .run_req(10_001, Some(9_996), Command::KeepAlive { session: a })
        .unwrap_err();
    assert_eq!(field_of(&err), "request_id");
    assert_eq!(w.bytes(), before);
}

// ----- limits and bad input -----------------------------------------------------

#[test]
fn limits_give_resource_exhausted() {
    let limits = Limits {
        max_locks: 2,
        max_sessions: 3,
        max_waiters_per_lock: 1,
        max_locks_per_session: 2,
        ..Limits::default()
    };
    let exhausted = |limit: &str, max| LockError::ResourceExhausted {
        limit: limit.into(),
        max,
    };
    let mut w = World::with_limits(limits);
    let (a, b, c) = (w.open(0, 10_000), w.open(0, 10_000), w.open(0, 10_000));
    let e = w.run(0, Command::OpenSession { ttl_ms: 10 }).unwrap_err();
    assert_eq!(e, exhausted("max_sessions", 3));
    assert_eq!(e.code(), StatusCode::ResourceExhausted);
    let (k1, k2, k3) = (key("1"), key("2"), key("3"));
    w.grant(1, &k1, a, Mode::Exclusive);
    w.create(1, &k2, LockKind::Exclusive, None).unwrap();
    assert_eq!(
        w.create(1, &k3, LockKind::Exclusive, None),
        Err(exhausted("max_locks", 2))
    );
    assert_eq!(
        w.acquire(1, &k3, a, Mode::Exclusive, None),
        Err(exhausted("max_locks", 2))
    );
    w.queue(2, &k1, b, Mode::Exclusive, None, 1);
    assert_eq!(
        w.acquire(3, &k1, c, Mode::Exclusive, None),
        Err(exhausted("max_waiters_per_lock", 1))
    );
    // Try-lock is still just WouldBlock: it would not queue anyway.
    assert_eq!(
        w.acquire(3, &k1, c, Mode::Exclusive, Some(0)),
        Err(LockError::WouldBlock { key: k1.clone() })
    );
    w.grant(4, &k2, a, Mode::Exclusive);
    w.run(5, Command::Destroy { key: k2.clone() }).unwrap();
    w.grant(6, &k3, a, Mode::Exclusive);
    assert_eq!(
        w.acquire(7, &k2, a, Mode::Exclusive, None),
        Err(exhausted("max_locks_per_session", 2))
    );
    w.create(7, &k2, LockKind::Exclusive, None).unwrap_err();
    w.run(8, Command::Destroy { key: k3.clone() }).unwrap();
    w.create(9, &k2, LockKind::Exclusive, None).unwrap();
    w.grant(10, &k2, c, Mode::Exclusive);
    // b waits on k1; fill it up with a second wait, then let it steal that lock:
    // stealing a lock the session already waits for needs no extra room.
    w.queue(11, &k2, b, Mode::Exclusive, None, 1);
    assert_eq!(w.table.describe_session(b).unwrap().waits.len(), 2);
    assert!(matches!(
        w.run(
            12,
            Command::Steal {
                key: k2.clone(),
                session: b
            }
        ),
        Ok(Response::Granted(_))
    ));
    // A full session cannot steal a lock it has nothing to do with.
    let mut w = World::with_limits(Limits {
        max_locks_per_session: 1,
        ..Limits::default()
    });
    let (a, b) = (w.open(0, 10_000), w.open(0, 10_000));
    w.grant(1, &k1, a, Mode::Exclusive);
    w.grant(1, &k2, b, Mode::Exclusive);
    let before = w.bytes();
    assert_eq!(
        w.run(
            2,
            Command::Steal {
                key: k1.clone(),
                session: b
            }
        ),
        Err(exhausted("max_locks_per_session", 1))
    );
    assert_eq!(w.bytes().len(), before.len());
    assert_eq!(w.holders(&k1), vec![a]);
}

#[test]
fn bad_input_leaves_state_unchanged() {
    let mut w = World::new();
    let k = key("k");
    let a = w.open(0, 10_000);
    w.create(0, &k, LockKind::Exclusive, Some(100)).unwrap();
    let t = w.grant(0, &k, a, Mode::Exclusive).token;
    let max = Limits::default().max_ttl_ms;
    let bad: Vec<(Command, &str)> = vec![
        (Command::OpenSession { ttl_ms: 0 }, "ttl_ms"),
        (Command::OpenSession { ttl_ms: max + 1 }, "ttl_ms"),
        (
            Command::CreateLock {
                key: key("new"),
                kind: LockKind::Exclusive,
                ttl_ms: Some(0),
            },
            "ttl_ms",
        ),
        (
            Command::CreateLock {
                key: key("new"),
                kind: LockKind::Exclusive,
                ttl_ms: Some(max + 1),
            },
            "ttl_ms",
        ),
        (
            Command::CreateLock {
                key: k.clone(),
                kind: LockKind::Exclusive,
                ttl_ms: Some(0),
            },
            "ttl_ms",
        ),
        (acquire(&k, a, Mode::Exclusive, Some(max + 1)), "timeout_ms"),
        (
            acquire(&key("new"), a, Mode::Exclusive, Some(max + 1)),
            "timeout_ms",
        ),
    ];
    let before = w.bytes();
    for (cmd, field) in bad {
        let err = w.run(0, cmd.clone()).unwrap_err();
        assert_eq!(field_of(&err), field, "{cmd:?}");
        assert!(w.events.is_empty());
        assert_eq!(w.bytes(), before, "{cmd:?} changed the state");
    }
    // Failed preconditions change nothing either.
    let other = SessionId(99);
    let failing = vec![
        acquire(&k, other, Mode::Exclusive, None),
        acquire(&k, a, Mode::Read, None),
        Command::Release {
            key: k.clone(),
            session: a,
            token: FencingToken(t.0 + 1),
        },
        Command::Extend {
            key: k.clone(),
            session: other,
            token: t,
        },
        Command::KeepAlive { session: other },
        Command::CloseSession { session: other },
        Command::Steal {
            key: k.clone(),
            session: other,
        },
        Command::Steal {
            key: key("missing"),
            session: a,
        },
        Command::Destroy {
            key: key("missing"),
        },
        Command::ForceRelease {
            key: key("missing"),
        },
    ];
    for cmd in failing {
        assert!(w.run(0, cmd.clone()).is_err(), "{cmd:?}");
        assert!(w.events.is_empty());
        assert_eq!(w.bytes(), before, "{cmd:?} changed the state");
    }
    // Garbage snapshots are an error, not a panic.
    let err = Table::restore_bytes(&[0xff; 7]).unwrap_err();
    assert_eq!(field_of(&err), "snapshot");
}

#[test]
fn error_codes_map_to_grpc_statuses() {
    let k = key("k");
    let t = FencingToken(1);
    let s = SessionId(1);
    let table = [
        (
            LockError::NotHolder {
                key: k.clone(),
                token: t,
            },
            StatusCode::FailedPrecondition,
        ),
        (
            LockError::Stolen {
                key: k.clone(),
                token: t,
            },
            StatusCode::FailedPrecondition,
        ),
        (
            LockError::Expired {
                key: k.clone(),
                token: t,
            },
            StatusCode::FailedPrecondition,
        ),
        (
            LockError::AlreadyHeld {
                key: k.clone(),
                session: s,
            },
            StatusCode::FailedPrecondition,
        ),
        (
            LockError::AlreadyWaiting {
                key: k.clone(),
                session: s,
            },
            StatusCode::FailedPrecondition,
        ),
        (
            LockError::WouldBlock { key: k.clone() },
            StatusCode::FailedPrecondition,
        ),
        (
            LockError::Timeout { key: k.clone() },
            StatusCode::DeadlineExceeded,
        ),
        (
            LockError::AlreadyExists {
                key: k.clone(),
                existing: LockKind::Exclusive,
                requested: LockKind::ReadWrite,
            },
            StatusCode::AlreadyExists,
        ),
        (LockError::NotFound { key: k.clone() }, StatusCode::NotFound),
        (
            LockError::SessionNotFound { session: s },
            StatusCode::NotFound,
        ),
        (
            LockError::InvalidArgument {
                field: "name".into(),
                reason: "empty".into(),
            },
            StatusCode::InvalidArgument,
        ),
        (
            LockError::ResourceExhausted {
                limit: "max_locks".into(),
                max: 1,
            },
            StatusCode::ResourceExhausted,
        ),
    ];
    for (err, code) in table {
        assert_eq!(err.code(), code, "{err:?}");
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn next_deadline_reports_earliest_expiry() {
    let mut w = World::new();
    let k = key("leased");
    assert_eq!(w.table.next_deadline(), None);
    let a = w.open(0, 1_000);
    assert_eq!(w.table.next_deadline(), Some(1_000));
    let b = w.open(0, 5_000);
    w.create(0, &k, LockKind::Exclusive, Some(600)).unwrap();
    let t = w.grant(10, &k, a, Mode::Exclusive).token;
    assert_eq!(w.table.next_deadline(), Some(610));
    w.queue(20, &k, b, Mode::Exclusive, Some(300), 1);
    assert_eq!(w.table.next_deadline(), Some(320));
    w.run(
        30,
        Command::CancelWait {
            key: k.clone(),
            session: b,
        },
    )
    .unwrap();
    assert_eq!(w.table.next_deadline(), Some(610));
    w.release(40, &k, a, t).unwrap();
    assert_eq!(w.table.next_deadline(), Some(1_000));
    // Ticking exactly at the reported deadline is what makes things happen.
    w.tick(999);
    assert!(w.events.is_empty());
    w.tick(1_000);
    assert_eq!(w.events, vec![Event::SessionExpired { session: a }]);
    assert_eq!(w.table.next_deadline(), Some(5_000));
    w.run(1_001, Command::CloseSession { session: b }).unwrap();
    assert_eq!(w.table.next_deadline(), None);
}

#[test]
fn every_waiter_is_eventually_granted_or_times_out() {
    let mut w = World::new();
    let k = key("leased");
    w.create(0, &k, LockKind::ReadWrite, Some(50)).unwrap();
    let sessions: Vec<SessionId> = (0..12).map(|_| w.open(0, 1_000_000)).collect();
    let mut ended = std::collections::BTreeSet::new();
    for (i, &s) in sessions.iter().enumerate() {
        let mode = if i % 3 == 0 { Mode::Write } else { Mode::Read };
        let timeout = if i % 4 == 1 { Some(60) } else { None };
        w.acquire(i as u64, &k, s, mode, timeout).unwrap();
    }
    // Nobody releases or extends: leases and deadlines alone drain the queue.
    let mut now = 0;
    while let Some(at) = w
        .table
        .describe(&k)
        .filter(|i| !i.waiters.is_empty())
        .and(w.table.next_deadline())
    {
        now = at;
        w.tick(now);
        for e in &w.events {
            if let Event::Granted { session, .. } | Event::WaitEnded { session, .. } = e {
                ended.insert(*session);
            }
        }
        assert!(now < 10_000, "queue did not drain");
    }
    let first = w.table.describe(&k).unwrap();
    assert!(first.waiters.is_empty());
    assert_eq!(
        ended.len() + 1,
        sessions.len(),
        "every waiter but the first holder ended its wait (at {now})"
    );
}

/// Idempotency for commands that name no session: a retried `ForceRelease`
/// (after an unknown outcome) must not force-release the *next* holder, a
/// retried `OpenSession` must not open a second session, and a retried
/// `Destroy` must not destroy a re-created lock.
#[test]
fn sessionless_requests_are_deduplicated_table_wide() {
    let mut t = Table::default();
    let mut ev = Vec::new();
    let k = LockKey::new("ns", "admin").unwrap();
    let open = Command::OpenSession { ttl_ms: 10_000 };
    let first = t.apply_request(0, Some(RequestId(0xfeed)), &open, &mut ev);
    let again = t.apply_request(1, Some(RequestId(0xfeed)), &open, &mut ev);
    assert_eq!(first, again);
    assert_eq!(
        t.session_count(),
        1,
        "a retried open opened a second session"
    );
    let Ok(Response::SessionOpened { session: a, .. }) = first else {
        panic!("{first:?}")
    };
    let b = t.open_session(1, 10_000, &mut ev).unwrap();
    let acq = |s| Command::Acquire {
        key: k.clone(),
        session: s,
        mode: Mode::Exclusive,
        timeout_ms: None,
    };
    t.apply(2, &acq(a), &mut ev).unwrap();
    t.apply(2, &acq(b), &mut ev).unwrap();
    let force = Command::ForceRelease { key: k.clone() };
    ev.clear();
    let first = t.apply_request(3, Some(RequestId(7)), &force, &mut ev);
    assert_eq!(first, Ok(Response::ForceReleased { holds: 1 }));
    assert!(ev
        .iter()
        .any(|e| matches!(e, Event::Granted { session, .. } if *session == b)));
    // The retry answers the first result and leaves b's new hold alone.
    ev.clear();
    let again = t.apply_request(4, Some(RequestId(7)), &force, &mut ev);
    assert_eq!(again, first);
    assert!(ev.is_empty(), "{ev:?}");
    assert_eq!(t.describe(&k).unwrap().holders[0].session, b);
    // The same id for another command is refused, naming the field.
    let other = Command::Destroy { key: k.clone() };
    let err = t
        .apply_request(5, Some(RequestId(7)), &other, &mut ev)
        .unwrap_err();
    assert!(matches!(&err, LockError::InvalidArgument { field, .. } if field == "request_id"));
    assert!(t.describe(&k).is_some());
    // A retried destroy does not destroy the lock re-created in between.
    t.apply_request(6, Some(RequestId(8)), &other, &mut ev)
        .unwrap();
    t.apply(7, &acq(a), &mut ev).unwrap();
    assert_eq!(
        t.apply_request(8, Some(RequestId(8)), &other, &mut ev),
        Ok(Response::Destroyed)
    );
    assert!(
        t.describe(&k).is_some(),
        "the retried destroy destroyed the re-created lock"
    );
    // It survives snapshot/restore.
    let back = Table::restore_bytes(&t.snapshot_bytes().unwrap()).unwrap();
    assert_eq!(back.snapshot_bytes().unwrap(), t.snapshot_bytes().unwrap());
    t.check_invariants().unwrap();
}

/// A driver clock at the very end of `u64` must not make an expiry land at
/// `now` (a session that is born expired): time is clamped to `MAX_TIME`.
#[test]
fn time_beyond_max_time_is_clamped_so_expiries_stay_in_the_future() {
    let mut t = Table::default();
    let mut ev = Vec::new();
    let s = t.open_session(u64::MAX, 1_000, &mut ev).unwrap();
    assert_eq!(t.now(), fencelock_core::MAX_TIME);
    let info = t.describe_session(s).unwrap();
    assert_eq!(info.expires_at, fencelock_core::MAX_TIME + 1_000);
    let k = LockKey::new("ns", "end-of-time").unwrap();
    t.apply(
        u64::MAX,
        &Command::CreateLock {
            key: k.clone(),
            kind: LockKind::Exclusive,
            ttl_ms: Some(500),
        },
        &mut ev,
    )
    .unwrap();
    let granted = t.apply(
        u64::MAX,
        &Command::Acquire {
            key: k.clone(),
            session: s,
            mode: Mode::Exclusive,
            timeout_ms: None,
        },
        &mut ev,
    );
    assert!(matches!(granted, Ok(Response::Granted(_))), "{granted:?}");
    t.check_invariants().unwrap();
    // A TTL limit configured above MAX_TIME is capped, naming the field.
    let mut huge = Table::new(Limits {
        max_ttl_ms: u64::MAX,
        ..Limits::default()
    });
    let err = huge.open_session(0, u64::MAX, &mut ev).unwrap_err();
    assert!(matches!(&err, LockError::InvalidArgument { field, .. } if field == "ttl_ms"));
}
