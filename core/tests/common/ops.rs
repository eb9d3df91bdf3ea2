//! Random command sequences for the property tests.
//!
//! A generated [`Step`] names sessions, keys and tokens abstractly (indexes,
//! "the holder's token", "a recent token"); [`Driver::next`] turns it into a
//! concrete [`Action`] by looking at the table under test, so tokens and
//! owners are real often enough to reach deep states. Time moves by random
//! jumps, including big ones that cross many deadlines and stamps that go
//! backwards (which the table must clamp).

use fencelock_core::{
    Command, FencingToken, Limits, LockKey, LockKind, Mode, RequestId, SessionId, Table,
};
use proptest::prelude::*;

/// The lock keys every case uses: two namespaces, three names.
pub fn keys() -> [LockKey; 3] {
    [
        LockKey::new("ns", "a").expect("valid key"),
        LockKey::new("ns", "b").expect("valid key"),
        LockKey::new("other", "a").expect("valid key"),
    ]
}

/// Longest TTL a generated case allows (its `Limits::max_ttl_ms`).
const MAX_TTL: u64 = 5_000;

#[derive(Debug, Clone)]
pub enum Tok {
    /// A current holder of the key (by index), or else the newest token.
    Holder(u8),
    /// The newest token minus a few: often one that just ended.
    Recent(u8),
}

#[derive(Debug, Clone)]
pub enum Wait {
    Timeout(Option<u64>),
    /// The lock's TTL (100 without one): a natural client choice that makes a
    /// wait deadline and a lease end fall on one instant.
    AsLongAsTheLease,
}

#[derive(Debug, Clone)]
pub enum Who {
    /// The session that holds the token, if anyone does.
    Owner,
    Session(u8),
}

#[derive(Debug, Clone)]
pub enum Op {
    Open {
        ttl: u64,
    },
    KeepAlive {
        s: u8,
    },
    Close {
        s: u8,
    },
    Create {
        k: u8,
        kind: LockKind,
        ttl: Option<u64>,
    },
    Acquire {
        k: u8,
        s: u8,
        mode: u8,
        timeout: Wait,
    },
    /// `queued`: cancel the wait of one of the key's waiters (often the
    /// head), not just of a random session.
    Cancel {
        k: u8,
        s: u8,
        queued: bool,
    },
    Release {
        k: u8,
        who: Who,
        tok: Tok,
    },
    Extend {
        k: u8,
        who: Who,
        tok: Tok,
    },
    Steal {
        k: u8,
        s: u8,
    },
    ForceRelease {
        k: u8,
    },
    Destroy {
        k: u8,
    },
    Tick,
    /// Read-only: validate a token, possibly at a time ahead of the table.
    Validate {
        k: u8,
        tok: Tok,
        ahead: u64,
    },
    /// Fail-over grace: every session lives at least one more TTL.
    Grace,
    /// Sends an earlier command again, with its request id (a client retry).
    Retry {
        back: u8,
    },
}

#[derive(Debug, Clone)]
pub enum Jump {
    Forward(u64),
    /// This command is stamped earlier than the driver's clock.
    Back(u64),
}

#[derive(Debug, Clone)]
pub enum Rid {
    None,
    /// A request id never used before.
    Fresh,
    /// A recent id again, usually for a different command (a client bug).
    Reuse(u8),
}

#[derive(Debug, Clone)]
pub struct Step {
    pub jump: Jump,
    pub rid: Rid,
    pub op: Op,
}

#[derive(Debug, Clone)]
pub struct Case {
    pub limits: Limits,
    /// Every step goes to the read/write key: dense reader/writer queues.
    pub focus: bool,
    pub steps: Vec<Step>,
}

/// What a step does, concretely.
#[derive(Debug, Clone)]
pub enum Action {
    Apply {
        now: u64,
        rid: Option<RequestId>,
        cmd: Command,
    },
    Validate {
        now: u64,
        key: LockKey,
        token: FencingToken,
    },
    Grace {
        now: u64,
    },
}

fn session_ttl() -> impl Strategy<Value = u64> {
    prop_oneof![
        1 => Just(0u64),
        2 => 1..50u64,
        4 => 50..1_000u64,
        8 => 1_000..=MAX_TTL,
        1 => Just(MAX_TTL + 1),
    ]
}

// Round values (with the 50 ms jumps below) make deadlines coincide, so the
// order of expiries at one instant gets exercised.
fn round() -> impl Strategy<Value = u64> {
    prop_oneof![Just(50u64), Just(100u64), (1..40u64).prop_map(|n| n * 10)]
}

fn lock_ttl() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        4 => Just(None),
        2 => (1..400u64).prop_map(Some),
        2 => round().prop_map(Some),
        1 => Just(Some(0u64)),
        1 => Just(Some(MAX_TTL + 1)),
    ]
}

fn timeout() -> impl Strategy<Value = Wait> {
    prop_oneof![
        6 => Just(Wait::Timeout(None)),
        2 => (1_000..=MAX_TTL).prop_map(|t| Wait::Timeout(Some(t))),
        2 => Just(Wait::Timeout(Some(0u64))),
        2 => (1..600u64).prop_map(|t| Wait::Timeout(Some(t))),
        2 => round().prop_map(|t| Wait::Timeout(Some(t))),
        2 => Just(Wait::AsLongAsTheLease),
        1 => Just(Wait::Timeout(Some(MAX_TTL + 1))),
    ]
}

fn tok() -> impl Strategy<Value = Tok> {
    prop_oneof![3 => any::<u8>().prop_map(Tok::Holder), 2 => (0..4u8).prop_map(Tok::Recent)]
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![4 => Just(Who::Owner), 1 => any::<u8>().prop_map(Who::Session)]
}

/// Mostly small steps; now and then a jump over many deadlines at once.
fn jump() -> impl Strategy<Value = Jump> {
    prop_oneof![
        40 => Just(Jump::Forward(0)),
        15 => (1..20u64).prop_map(Jump::Forward),
        40 => (1..=5u64).prop_map(|n| Jump::Forward(n * 10)),
        10 => (20..150u64).prop_map(Jump::Forward),
        5 => (1..3u64).prop_map(|n| Jump::Forward(n * 100)),
        5 => (150..1_000u64).prop_map(Jump::Forward),
        2 => (1_000..20_000u64).prop_map(Jump::Forward),
        3 => (1..300u64).prop_map(Jump::Back),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let s = any::<u8>;
    // Most traffic on two keys, so that there is contention.
    let k = || prop_oneof![5 => Just(0u8), 4 => Just(1u8), 2 => Just(2u8)];
    prop_oneof![
        4 => session_ttl().prop_map(|ttl| Op::Open { ttl }),
        4 => s().prop_map(|s| Op::KeepAlive { s }),
        1 => s().prop_map(|s| Op::Close { s }),
        3 => (k(), prop_oneof![Just(LockKind::Exclusive), Just(LockKind::ReadWrite)], lock_ttl())
            .prop_map(|(k, kind, ttl)| Op::Create { k, kind, ttl }),
        30 => (k(), s(), any::<u8>(), timeout())
            .prop_map(|(k, s, mode, timeout)| Op::Acquire { k, s, mode, timeout }),
        5 => (k(), s(), any::<bool>()).prop_map(|(k, s, queued)| Op::Cancel { k, s, queued }),
        4 => (k(), who(), tok()).prop_map(|(k, who, tok)| Op::Release { k, who, tok }),
        2 => (k(), who(), tok()).prop_map(|(k, who, tok)| Op::Extend { k, who, tok }),
        2 => (k(), s()).prop_map(|(k, s)| Op::Steal { k, s }),
        1 => k().prop_map(|k| Op::ForceRelease { k }),
        1 => k().prop_map(|k| Op::Destroy { k }),
        2 => Just(Op::Tick),
        2 => (k(), tok(), prop_oneof![Just(0u64), 0..400u64])
            .prop_map(|(k, tok, ahead)| Op::Validate { k, tok, ahead }),
        1 => Just(Op::Grace),
        2 => any::<u8>().prop_map(|back| Op::Retry { back }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (
        jump(),
        prop_oneof![
            6 => Just(Rid::None),
            6 => Just(Rid::Fresh),
            1 => (0..4u8).prop_map(Rid::Reuse),
        ],
        op(),
    )
        .prop_map(|(jump, rid, op)| Step { jump, rid, op })
}

/// Either roomy limits, or small ones so that every limit is reached.
fn limits() -> impl Strategy<Value = Limits> {
    let roomy = Just(Limits {
        max_ttl_ms: MAX_TTL,
        ..Limits::default()
    });
    let tight = (1..5u64, 1..6u64, 1..5u64, 1..4u64, 0..4u64, 0..4u64).prop_map(
        |(locks, sessions, waiters, per_session, requests, ended)| Limits {
            max_locks: locks,
            max_sessions: sessions,
            max_waiters_per_lock: waiters,
            max_locks_per_session: per_session,
            max_remembered_requests: requests,
            max_ttl_ms: MAX_TTL,
            max_ended_tokens_per_lock: ended,
        },
    );
    prop_oneof![2 => roomy, 1 => tight]
}

/// A random case: a few sessions opened and locks created (often with a
/// lease) at time 0, then up to `max_steps` random steps.
pub fn case(max_steps: usize) -> impl Strategy<Value = Case> {
    let at_start = |op| Step {
        jump: Jump::Forward(0),
        rid: Rid::None,
        op,
    };
    let open = (1_000..=MAX_TTL).prop_map(move |ttl| at_start(Op::Open { ttl }));
    let create = (0..3u8, any::<bool>(), lock_ttl()).prop_map(move |(k, rw, ttl)| {
        let kind = match (k, rw) {
            (0, _) | (2, false) => LockKind::Exclusive,
            _ => LockKind::ReadWrite,
        };
        at_start(Op::Create { k, kind, ttl })
    });
    (
        limits(),
        prop::bool::weighted(0.3),
        prop::collection::vec(open, 2..=6),
        prop::collection::vec(create, 0..=3),
        prop::collection::vec(step(), 1..=max_steps),
    )
        .prop_map(|(limits, focus, mut steps, creates, rest)| {
            steps.extend(creates);
            steps.extend(rest);
            Case {
                limits,
                focus,
                steps,
            }
        })
}

/// The mode a raw byte means on key `k`: key 0 is mostly a mutex, key 1 mostly
/// read/write, key 2 anything (so kind mismatches happen too).
fn mode_for(k: usize, raw: u8) -> Mode {
    use Mode::{Exclusive as X, Read as R, Write as W};
    match k {
        0 => [X, X, X, X, X, X, X, X, X, R][raw as usize % 10],
        1 => [R, R, W, R, W, R, W, R, W, X][raw as usize % 10],
        _ => [X, R, W][raw as usize % 3],
    }
}

/// Turns abstract steps into concrete actions against a table.
#[derive(Debug, Default, Clone)]
pub struct Driver {
    focus: bool,
    clock: u64,
    last_rid: u64,
    steps: u64,
    /// Commands sent so far, for `Op::Retry`.
    sent: Vec<(Option<RequestId>, Command)>,
}

/// A session for a raw byte: mostly an open one, sometimes any id at all
/// (closed, expired, never opened).
fn pick_session(table: &Table, steps: u64, raw: u8) -> SessionId {
    // At most one session is opened per step, so ids stay below `steps`.
    let open: Vec<SessionId> = (1..=steps)
        .map(SessionId)
        .filter(|&s| table.describe_session(s).is_some())
        .collect();
    if raw % 8 == 7 || open.is_empty() {
        SessionId(raw as u64 % 9)
    } else {
        open[raw as usize % open.len()]
    }
}

impl Driver {
    pub fn new(case: &Case) -> Self {
        Driver {
            focus: case.focus,
            ..Driver::default()
        }
    }

    /// The concrete action for `step`, given the table's current state.
    pub fn next(&mut self, step: &Step, table: &Table) -> Action {
        let now = match step.jump {
            Jump::Forward(dt) => {
                self.clock += dt;
                self.clock
            }
            Jump::Back(dt) => self.clock.saturating_sub(dt),
        };
        let keys = keys();
        let focus = self.focus;
        let slot = |k: u8| if focus { 1 } else { k as usize % keys.len() };
        let key = |k: u8| keys[slot(k)].clone();
        self.steps += 1;
        let steps = self.steps;
        let sid = |s: u8| pick_session(table, steps, s);
        let rid = match step.rid {
            Rid::None => None,
            Rid::Fresh => {
                self.last_rid += 1;
                Some(RequestId(self.last_rid))
            }
            Rid::Reuse(back) => Some(RequestId(self.last_rid.saturating_sub(back as u64))),
        };
        let cmd = match &step.op {
            Op::Open { ttl } => Command::OpenSession { ttl_ms: *ttl },
            Op::KeepAlive { s } => Command::KeepAlive { session: sid(*s) },
            Op::Close { s } => Command::CloseSession { session: sid(*s) },
            Op::Create { k, kind, ttl } => Command::CreateLock {
                key: key(*k),
                kind: if focus { LockKind::ReadWrite } else { *kind },
                ttl_ms: *ttl,
            },
            Op::Acquire {
                k,
                s,
                mode,
                timeout,
            } => Command::Acquire {
                key: key(*k),
                session: sid(*s),
                mode: mode_for(slot(*k), *mode),
                timeout_ms: match timeout {
                    Wait::Timeout(t) => *t,
                    Wait::AsLongAsTheLease => {
                        let ttl = table.describe(&key(*k)).and_then(|info| info.ttl_ms);
                        Some(ttl.unwrap_or(100))
                    }
                },
            },
            Op::Cancel { k, s, queued } => {
                let waiters = table.describe(&key(*k)).map(|info| info.waiters);
                let session = match waiters {
                    // Half of the time the head: its leaving must wake the next.
                    Some(w) if *queued && !w.is_empty() => {
                        w[if s % 2 == 0 { 0 } else { *s as usize % w.len() }].session
                    }
                    _ => sid(*s),
                };
                Command::CancelWait {
                    key: key(*k),
                    session,
                }
            }
            Op::Release { k, who, tok } | Op::Extend { k, who, tok } => {
                let key = key(*k);
                let token = pick_token(table, &key, tok);
                let session = match who {
                    Who::Owner => owner(table, &key, token).unwrap_or(SessionId(1)),
                    Who::Session(s) => sid(*s),
                };
                if matches!(step.op, Op::Release { .. }) {
                    Command::Release {
                        key,
                        session,
                        token,
                    }
                } else {
                    Command::Extend {
                        key,
                        session,
                        token,
                    }
                }
            }
            Op::Steal { k, s } => Command::Steal {
                key: key(*k),
                session: sid(*s),
            },
            Op::ForceRelease { k } => Command::ForceRelease { key: key(*k) },
            Op::Destroy { k } => Command::Destroy { key: key(*k) },
            Op::Tick => Command::Tick,
            Op::Validate { k, tok, ahead } => {
                let key = key(*k);
                let token = pick_token(table, &key, tok);
                return Action::Validate {
                    now: now + ahead,
                    key,
                    token,
                };
            }
            Op::Grace => return Action::Grace { now },
            Op::Retry { back } => match self.sent.len() {
                0 => Command::Tick,
                n => {
                    let (rid, cmd) = self.sent[n - 1 - (*back as usize % n)].clone();
                    return Action::Apply { now, rid, cmd };
                }
            },
        };
        self.sent.push((rid, cmd.clone()));
        Action::Apply { now, rid, cmd }
    }
}

fn pick_token(table: &Table, key: &LockKey, tok: &Tok) -> FencingToken {
    let last = table.last_token().0;
    match tok {
        Tok::Holder(i) => table
            .describe(key)
            .filter(|info| !info.holders.is_empty())
            .map(|info| info.holders[*i as usize % info.holders.len()].token)
            .unwrap_or(FencingToken(last)),
        Tok::Recent(back) => FencingToken(last.saturating_sub(*back as u64)),
    }
}

fn owner(table: &Table, key: &LockKey, token: FencingToken) -> Option<SessionId> {
    let info = table.describe(key)?;
    info.holders
        .iter()
        .find(|h| h.token == token)
        .map(|h| h.session)
}
