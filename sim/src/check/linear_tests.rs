//! Hand-made histories: ones the checker must accept and ones it must reject.

use super::*;
use crate::history::{Call, History, Op, Ret, WaitResult};
use fencelock_core::{Grant, Mode, RequestId, WaitEnd};

fn key() -> LockKey {
    LockKey::new("sim", "k").unwrap()
}

/// A small history builder: one session per client, opened at time 0.
struct H {
    h: History,
}

impl H {
    fn new(clients: u32, ttl: u64) -> H {
        let mut h = History::default();
        for c in 1..=clients {
            h.ops.push(Op {
                client: c,
                invoke: 0,
                complete: Some(1),
                call: Call::Exec {
                    request_id: None,
                    command: Command::OpenSession { ttl_ms: ttl },
                },
                // Real ids differ from the model's on purpose (x100).
                ret: Ret::Exec(Ok(Response::SessionOpened {
                    session: SessionId(c as u64 * 100),
                    expires_at: ttl,
                })),
                retried: false,
            });
        }
        H { h }
    }

    fn op(&mut self, client: u32, span: (u64, Option<u64>), command: Command, ret: Ret) {
        self.h.ops.push(Op {
            client,
            invoke: span.0,
            complete: span.1,
            call: Call::Exec {
                request_id: Some(RequestId(self.h.ops.len() as u64)),
                command,
            },
            ret,
            retried: false,
        });
    }

    fn acquire(&mut self, c: u32, span: (u64, Option<u64>), timeout: Option<u64>, ret: Ret) {
        let command = Command::Acquire {
            key: key(),
            session: s(c),
            mode: Mode::Exclusive,
            timeout_ms: timeout,
        };
        self.op(c, span, command, ret);
    }

    fn release(&mut self, c: u32, span: (u64, Option<u64>), token: u64, ret: Ret) {
        let command = Command::Release {
            key: key(),
            session: s(c),
            token: FencingToken(token),
        };
        self.op(c, span, command, ret);
    }

    fn steal(&mut self, c: u32, span: (u64, Option<u64>), ret: Ret) {
        let command = Command::Steal {
            key: key(),
            session: s(c),
        };
        self.op(c, span, command, ret);
    }

    fn validate(&mut self, c: u32, span: (u64, u64), token: u64, ret: Result<(), LockError>) {
        self.h.ops.push(Op {
            client: c,
            invoke: span.0,
            complete: Some(span.1),
            call: Call::Validate {
                key: key(),
                token: FencingToken(token),
            },
            ret: Ret::Validate(ret),
            retried: false,
        });
    }

    fn wait_result(&mut self, c: u32, span: (u64, u64), result: WaitResult) {
        self.h.ops.push(Op {
            client: c,
            invoke: span.0,
            complete: Some(span.1),
            call: Call::WaitResult {
                key: key(),
                session: s(c),
            },
            ret: Ret::Wait(result),
            retried: false,
        });
    }

    fn check(&self) -> LinReport {
        check(&self.h, 100_000)
    }
}

fn s(c: u32) -> SessionId {
    SessionId(c as u64 * 100)
}

fn granted(token: u64, at: u64) -> Ret {
    Ret::Exec(Ok(Response::Granted(Grant {
        token: FencingToken(token),
        mode: Mode::Exclusive,
        granted_at: at,
        expires_at: None,
    })))
}

fn ok(r: Response) -> Ret {
    Ret::Exec(Ok(r))
}

fn would_block() -> Ret {
    Ret::Exec(Err(LockError::WouldBlock { key: key() }))
}

fn assert_ok(r: &LinReport) {
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert_eq!(r.inconclusive_keys, 0);
    assert!(r.ops_checked > 0);
}

fn assert_violation(r: &LinReport) {
    assert_eq!(r.violations.len(), 1, "expected a violation: {r:?}");
    assert_eq!(r.violations[0].checker, Checker::Linearizability);
}

#[test]
fn a_sequential_handoff_is_linearizable() {
    let mut h = H::new(2, 60_000);
    h.acquire(1, (10, Some(12)), Some(0), granted(7, 11));
    h.acquire(2, (20, Some(22)), Some(0), would_block());
    h.release(1, (30, Some(32)), 7, ok(Response::Released));
    h.acquire(2, (40, Some(42)), Some(0), granted(9, 41));
    h.validate(2, (50, 52), 9, Ok(()));
    h.validate(
        1,
        (50, 52),
        7,
        Err(LockError::NotHolder {
            key: key(),
            token: FencingToken(7),
        }),
    );
    assert_ok(&h.check());
}

#[test]
fn two_holders_at_once_are_rejected() {
    let mut h = H::new(2, 60_000);
    h.acquire(1, (10, Some(12)), Some(0), granted(7, 11));
    h.acquire(2, (20, Some(22)), Some(0), granted(8, 21));
    assert_violation(&h.check());
}

#[test]
fn concurrent_acquires_may_be_ordered_either_way() {
    let mut h = H::new(2, 60_000);
    // Client 2's try-lock overlaps client 1's acquire, and wins.
    h.acquire(1, (10, Some(30)), Some(0), would_block());
    h.acquire(2, (15, Some(20)), Some(0), granted(3, 18));
    assert_ok(&h.check());
}

#[test]
fn tokens_out_of_grant_order_are_rejected() {
    // The second grant carries a lower token than the first: fencing broken.
    let mut h = H::new(2, 60_000);
    h.acquire(1, (10, Some(12)), Some(0), granted(7, 11));
    h.release(1, (20, Some(22)), 7, ok(Response::Released));
    h.acquire(2, (30, Some(32)), Some(0), granted(5, 31));
    assert_violation(&h.check());
}

#[test]
fn a_stale_validate_after_a_steal_is_rejected() {
    // What a follower serving validate from stale state produces.
    let mut h = H::new(2, 60_000);
    h.acquire(1, (10, Some(12)), Some(0), granted(7, 11));
    h.steal(2, (20, Some(22)), granted(8, 21));
    h.validate(1, (30, 32), 7, Ok(()));
    assert_violation(&h.check());
    // The same with the correct answer passes.
    let mut h = H::new(2, 60_000);
    h.acquire(1, (10, Some(12)), Some(0), granted(7, 11));
    h.steal(2, (20, Some(22)), granted(8, 21));
    h.validate(
        1,
        (30, 32),
        7,
        Err(LockError::Stolen {
            key: key(),
            token: FencingToken(7),
        }),
    );
    assert_ok(&h.check());
}

#[test]
fn a_steal_that_reuses_the_token_is_rejected() {
    let mut h = H::new(2, 60_000);
    h.acquire(1, (10, Some(12)), Some(0), granted(7, 11));
    h.steal(2, (20, Some(22)), granted(7, 21));
    assert_violation(&h.check());
}

#[test]
fn an_unknown_acquire_may_or_may_not_have_happened() {
    for later in [would_block(), granted(4, 31)] {
        let mut h = H::new(2, 60_000);
        h.acquire(1, (10, None), Some(0), Ret::Unknown);
        h.acquire(2, (30, Some(32)), Some(0), later);
        assert_ok(&h.check());
    }
    // But it cannot have happened before it was sent.
    let mut h = H::new(2, 60_000);
    h.acquire(2, (5, Some(8)), Some(0), would_block());
    h.acquire(1, (10, None), Some(0), Ret::Unknown);
    assert_violation(&h.check());
}

#[test]
fn session_expiry_frees_the_lock_only_after_the_ttl() {
    // Client 1's session (TTL 1 s, opened at 0) lapses; client 2 gets the lock.
    let mut h = H::new(2, 1_000);
    h.acquire(1, (10, Some(12)), Some(0), granted(7, 11));
    h.op(
        2,
        (500, Some(502)),
        Command::KeepAlive { session: s(2) },
        ok(Response::KeptAlive { expires_at: 1_501 }),
    );
    h.acquire(2, (1_200, Some(1_202)), Some(0), granted(9, 1_201));
    assert_ok(&h.check());
    // Granted before client 1's session could have ended: not linearizable.
    let mut h = H::new(2, 1_000);
    h.acquire(1, (10, Some(12)), Some(0), granted(7, 11));
    h.acquire(2, (600, Some(602)), Some(0), granted(9, 601));
    assert_violation(&h.check());
}

#[test]
fn a_queued_waiter_is_granted_on_release() {
    let mut h = H::new(2, 60_000);
    h.acquire(1, (10, Some(12)), Some(0), granted(7, 11));
    h.acquire(
        2,
        (20, Some(22)),
        Some(5_000),
        ok(Response::Queued {
            position: 1,
            deadline: Some(5_021),
        }),
    );
    h.release(1, (30, Some(32)), 7, ok(Response::Released));
    let g = WaitResult::Granted {
        token: FencingToken(8),
        mode: Mode::Exclusive,
        granted_at: 30,
    };
    h.wait_result(2, (25, 40), g);
    h.validate(2, (50, 52), 8, Ok(()));
    assert_ok(&h.check());
    // A wait that "timed out" although the lock was free long before its deadline.
    let mut h = H::new(2, 60_000);
    h.acquire(1, (10, Some(12)), Some(0), granted(7, 11));
    h.acquire(
        2,
        (20, Some(22)),
        Some(5_000),
        ok(Response::Queued {
            position: 1,
            deadline: Some(5_021),
        }),
    );
    h.release(1, (30, Some(32)), 7, ok(Response::Released));
    h.wait_result(2, (25, 6_000), WaitResult::Ended(WaitEnd::TimedOut));
    assert_violation(&h.check());
}

#[test]
fn a_wait_times_out_at_its_deadline() {
    let mut h = H::new(2, 60_000);
    h.acquire(1, (10, Some(12)), Some(0), granted(7, 11));
    h.acquire(
        2,
        (20, Some(22)),
        Some(1_000),
        ok(Response::Queued {
            position: 1,
            deadline: Some(1_021),
        }),
    );
    h.wait_result(2, (25, 1_100), WaitResult::Ended(WaitEnd::TimedOut));
    // Client 1 still holds the lock after the wait ended.
    h.validate(1, (1_200, 1_202), 7, Ok(()));
    assert_ok(&h.check());
}

#[test]
fn a_grace_during_an_election_keeps_a_session_alive() {
    // Session TTL 1 s; no keep-alive from client 1; an election at 800..900
    // grants grace, so at 1_500 client 1 still holds.
    let mut h = H::new(2, 1_000);
    h.acquire(1, (10, Some(12)), Some(0), granted(7, 11));
    h.acquire(2, (1_500, Some(1_502)), Some(0), would_block());
    assert_violation(&h.check());
    h.h.graces.push(850);
    assert_ok(&h.check());
}

#[test]
fn a_late_grace_among_several_keeps_a_session_alive() {
    // Client 1's session (TTL 3 s, expiring at 18_785) gets no keep-alive (a
    // paused client); a new leader's grace at 18_718 carries it past that.
    let mut h = History::default();
    for (c, at) in [(1, 15_775), (2, 18_000)] {
        h.ops.push(Op {
            client: c,
            invoke: at,
            complete: Some(at + 40),
            call: Call::Exec {
                request_id: None,
                command: Command::OpenSession { ttl_ms: 3_000 },
            },
            ret: Ret::Exec(Ok(Response::SessionOpened {
                session: s(c),
                expires_at: at + 10 + 3_000,
            })),
            retried: false,
        });
    }
    h.graces = vec![1_128, 5_819, 13_474, 18_718, 19_626];
    let mut b = H { h };
    b.acquire(1, (15_824, Some(15_855)), Some(0), granted(2, 15_830));
    b.acquire(2, (19_000, Some(19_040)), Some(0), would_block());
    let close = Command::CloseSession { session: s(1) };
    b.op(
        1,
        (21_445, Some(21_547)),
        close,
        ok(Response::SessionClosed),
    );
    assert_ok(&b.check());
    // Without the graces, client 1's session is gone by 19_000.
    b.h.graces.clear();
    assert_violation(&b.check());
}

#[test]
fn a_tick_before_a_grace_may_end_one_session_and_not_another() {
    // Session 1 (holding) lapses at 1_000, session 2 at 1_300; the old
    // leader ticks past 1_000, then a new leader's grace at 1_200 keeps
    // session 2, which then gets the lock.
    let mut h = H::new(2, 1_000);
    h.h.ops[1].invoke = 290;
    h.h.ops[1].complete = Some(310);
    h.h.ops[1].ret = ok(Response::SessionOpened {
        session: s(2),
        expires_at: 1_300,
    });
    h.acquire(1, (10, Some(12)), Some(0), granted(7, 11));
    h.acquire(2, (1_500, Some(1_502)), Some(0), granted(9, 1_501));
    h.h.graces.push(1_200);
    assert_ok(&h.check());
}

#[test]
fn a_tick_between_two_expiries_before_a_grace_is_found() {
    // Session 1 (holding) lapses at 1_000, session 2 at 1_100; the old
    // leader ticks at 1_000 only; the grace at 1_200 keeps session 2 alive.
    let mut h = H::new(2, 1_000);
    h.h.ops[1].invoke = 90;
    h.h.ops[1].complete = Some(110);
    h.h.ops[1].ret = ok(Response::SessionOpened {
        session: s(2),
        expires_at: 1_100,
    });
    h.acquire(1, (10, Some(12)), Some(0), granted(7, 11));
    h.acquire(2, (1_500, Some(1_502)), Some(0), granted(9, 1_501));
    h.h.graces.push(1_200);
    assert_ok(&h.check());
}

/// A leased lock handed over by a release whose time its interval does not
/// pin: the waiter's grant time says when it took effect, and the lease runs
/// from then (simulator seed 45: the lease was judged expired 50 ms early).
fn leased_handoff(grant_seen_at: u64) -> H {
    let mut h = H::new(2, 60_000);
    let command = Command::CreateLock {
        key: key(),
        kind: fencelock_core::LockKind::Exclusive,
        ttl_ms: Some(2_000),
    };
    let created = ok(Response::LockCreated {
        created: true,
        kind: fencelock_core::LockKind::Exclusive,
        ttl_ms: Some(2_000),
    });
    h.op(1, (2, Some(3)), command, created);
    let first = Grant {
        token: FencingToken(7),
        mode: Mode::Exclusive,
        granted_at: 11,
        expires_at: Some(2_011),
    };
    h.acquire(1, (10, Some(12)), Some(0), ok(Response::Granted(first)));
    let queued = ok(Response::Queued {
        position: 1,
        deadline: None,
    });
    h.acquire(2, (20, Some(22)), None, queued);
    // Applied at 800, answered at 900.
    h.release(1, (100, Some(900)), 7, ok(Response::Released));
    let g = WaitResult::Granted {
        token: FencingToken(8),
        mode: Mode::Exclusive,
        granted_at: grant_seen_at,
    };
    h.wait_result(2, (25, 950), g);
    let extend = Command::Extend {
        key: key(),
        session: s(2),
        token: FencingToken(8),
    };
    let extended = ok(Response::Extended {
        expires_at: Some(4_705),
    });
    h.op(2, (2_700, Some(2_710)), extend, extended);
    h
}

#[test]
fn a_lease_runs_from_the_grant_time_the_waiter_saw() {
    assert_ok(&leased_handoff(800).check());
    // A grant time before the release was even sent cannot be.
    assert_violation(&leased_handoff(50).check());
}

/// A release that applied (handing the lock to client 2 at 40), retried after
/// the session expired and so answered `SessionNotFound` (seed 32).
fn release_answered_after_expiry(ttl: u64, retried: bool) -> H {
    let mut h = H::new(2, ttl);
    h.acquire(1, (10, Some(12)), Some(0), granted(7, 11));
    let queued = ok(Response::Queued {
        position: 1,
        deadline: None,
    });
    h.acquire(2, (20, Some(22)), None, queued);
    let gone = Ret::Exec(Err(LockError::SessionNotFound { session: s(1) }));
    h.release(1, (30, Some(1_500)), 7, gone);
    if let Some(op) = h.h.ops.last_mut() {
        op.retried = retried;
    }
    let g = WaitResult::Granted {
        token: FencingToken(8),
        mode: Mode::Exclusive,
        granted_at: 40,
    };
    h.wait_result(2, (25, 60), g);
    h
}

#[test]
fn a_retry_answered_after_the_session_ended_may_have_applied_before() {
    assert_ok(&release_answered_after_expiry(1_000, true).check());
    // Answered on the first attempt: the release never applied, and nothing
    // else could have handed the lock over by 60.
    assert_violation(&release_answered_after_expiry(1_000, false).check());
    // Retried, but the session was alive all along: "not found" is false.
    assert_violation(&release_answered_after_expiry(60_000, true).check());
}

/// A keep-alive with no answer moved a session's expiry, and so the instant
/// a waiter was granted: that instant is tried for it (seed 45 of a later
/// build).
fn handoff_at_a_moved_expiry(granted_at: u64) -> H {
    let mut h = H::new(2, 1_000);
    h.acquire(1, (10, Some(12)), Some(0), granted(7, 11));
    let queued = ok(Response::Queued {
        position: 1,
        deadline: None,
    });
    h.acquire(2, (20, Some(22)), None, queued);
    let kept = ok(Response::KeptAlive { expires_at: 1_505 });
    h.op(
        2,
        (500, Some(510)),
        Command::KeepAlive { session: s(2) },
        kept,
    );
    // Applied at 300, never answered: session 1 then expires at 1_300.
    h.op(
        1,
        (100, None),
        Command::KeepAlive { session: s(1) },
        Ret::Unknown,
    );
    let g = WaitResult::Granted {
        token: FencingToken(8),
        mode: Mode::Exclusive,
        granted_at,
    };
    h.wait_result(2, (25, 1_400), g);
    h
}

#[test]
fn an_unanswered_keep_alive_may_set_the_expiry_that_hands_over() {
    assert_ok(&handoff_at_a_moved_expiry(1_300).check());
    assert_violation(&handoff_at_a_moved_expiry(50).check());
}
