//! `check_invariants` must catch a corrupted state. The only way to build one
//! from outside the crate is a hand-edited snapshot, so this test decodes a
//! real snapshot into a mirror of its layout, breaks one invariant at a time,
//! and checks that `Table::restore_bytes` refuses it, naming the problem.

use fencelock_core::{
    Command, Event, HoldEnd, Limits, LockError, LockKey, LockKind, Mode, RequestId, Response,
    SessionId, Table,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

// A mirror of the snapshot layout (postcard is not self-describing, so the
// field order must match `core/src/snapshot.rs` and `core/src/lock.rs`).
// `mirror_round_trips_a_real_snapshot` fails first if the layout changes.

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotMirror {
    format: u32,
    now: u64,
    last_token: u64,
    last_session: u64,
    limits: Limits,
    sessions: Vec<SessionMirror>,
    locks: Vec<(LockKey, LockMirror)>,
    sessionless: SessionlessMirror,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SessionlessMirror {
    order: VecDeque<RequestId>,
    results: BTreeMap<RequestId, (Command, Result<Response, LockError>)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SessionMirror {
    id: SessionId,
    ttl_ms: u64,
    expires_at: u64,
    requests: RequestsMirror,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RequestsMirror {
    results: BTreeMap<RequestId, (Command, Result<Response, LockError>)>,
    forgotten_below: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LockMirror {
    kind: LockKind,
    ttl_ms: Option<u64>,
    holders: BTreeMap<u64, HoldMirror>,
    queue: BTreeMap<u64, WaiterMirror>,
    next_seq: u64,
    last_token: u64,
    ended: BTreeMap<u64, HoldEnd>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct HoldMirror {
    session: SessionId,
    mode: Mode,
    granted_at: u64,
    expires_at: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct WaiterMirror {
    session: SessionId,
    mode: Mode,
    since: u64,
    deadline: Option<u64>,
    request_id: Option<RequestId>,
}

/// A valid table: a leased RW lock held by two readers with a writer and a
/// reader queued behind them, and a mutex held by the first reader.
fn valid_table() -> Table {
    let mut t = Table::default();
    let mut ev: Vec<Event> = Vec::new();
    let rw = LockKey::new("ns", "rw").unwrap();
    let m = LockKey::new("ns", "m").unwrap();
    let s: Vec<SessionId> = (0..4)
        .map(|_| t.open_session(0, 10_000, &mut ev).unwrap())
        .collect();
    let create = Command::CreateLock {
        key: rw.clone(),
        kind: LockKind::ReadWrite,
        ttl_ms: Some(1_000),
    };
    t.apply(0, &create, &mut ev).unwrap();
    let modes = [Mode::Read, Mode::Read, Mode::Write, Mode::Read];
    for (i, (&session, mode)) in s.iter().zip(modes).enumerate() {
        t.acquire(10 + i as u64, &rw, session, mode, Some(5_000), &mut ev)
            .unwrap();
    }
    t.acquire(20, &m, s[0], Mode::Exclusive, None, &mut ev)
        .unwrap();
    t.tick(30, &mut ev);
    t.check_invariants().unwrap();
    t
}

fn mirror(t: &Table) -> SnapshotMirror {
    postcard::from_bytes(&t.snapshot_bytes().unwrap()).expect("snapshot layout matches the mirror")
}

fn restore(m: &SnapshotMirror) -> Result<Table, LockError> {
    Table::restore_bytes(&postcard::to_allocvec(m).unwrap())
}

fn lock<'a>(m: &'a mut SnapshotMirror, name: &str) -> &'a mut LockMirror {
    let key = LockKey::new("ns", name).unwrap();
    &mut m.locks.iter_mut().find(|(k, _)| *k == key).unwrap().1
}

fn first_hold(l: &mut LockMirror) -> &mut HoldMirror {
    l.holders.values_mut().next().unwrap()
}

#[test]
fn mirror_round_trips_a_real_snapshot() {
    let t = valid_table();
    let m = mirror(&t);
    assert_eq!(
        postcard::to_allocvec(&m).unwrap(),
        t.snapshot_bytes().unwrap()
    );
    assert_eq!(m.locks.len(), 2);
    assert_eq!(lock(&mut m.clone(), "rw").holders.len(), 2);
    assert!(restore(&m).is_ok());
}

#[test]
fn check_invariants_refuses_corrupted_states() {
    type Corruption = (&'static str, fn(&mut SnapshotMirror), &'static str);
    let corruptions: [Corruption; 12] = [
        (
            "a reader becomes a writer next to another reader",
            |m| lock(m, "rw").holders.values_mut().nth(1).unwrap().mode = Mode::Write,
            "exclusion broken",
        ),
        (
            "a mutex gets a second holder",
            |m| {
                let extra = HoldMirror {
                    session: SessionId(2),
                    mode: Mode::Exclusive,
                    granted_at: 0,
                    expires_at: None,
                };
                lock(m, "m").holders.insert(1, extra);
            },
            "exclusion broken",
        ),
        (
            "a hold of the wrong mode for its lock",
            |m| first_hold(lock(m, "m")).mode = Mode::Read,
            "read hold on a exclusive lock",
        ),
        (
            "a hold outlives its lease",
            |m| {
                let now = m.now;
                first_hold(lock(m, "rw")).expires_at = Some(now);
            },
            "outlived its lease",
        ),
        (
            "a leased lock with a hold without lease",
            |m| first_hold(lock(m, "rw")).expires_at = None,
            "lease does not match",
        ),
        (
            "the holders vanish but the compatible head waiter is not granted",
            |m| lock(m, "rw").holders.clear(),
            "lost wake-up",
        ),
        (
            "a waiter outlives its deadline",
            |m| {
                let now = m.now;
                lock(m, "rw").queue.values_mut().next().unwrap().deadline = Some(now);
            },
            "outlived its deadline",
        ),
        (
            "a session outlives its ttl",
            |m| m.sessions[0].expires_at = m.now,
            "outlived its ttl",
        ),
        (
            "a token that was never issued",
            |m| {
                let l = lock(m, "m");
                let hold = l.holders.pop_first().unwrap().1;
                l.holders.insert(999, hold);
            },
            "never issued",
        ),
        (
            "a hold by a session that does not exist",
            |m| first_hold(lock(m, "m")).session = SessionId(77),
            "unknown session",
        ),
        (
            "a session that both holds and waits",
            |m| {
                let w = WaiterMirror {
                    session: SessionId(1),
                    mode: Mode::Read,
                    since: 0,
                    deadline: None,
                    request_id: None,
                };
                let l = lock(m, "rw");
                l.queue.insert(l.next_seq, w);
                l.next_seq += 1;
            },
            "both holds and waits",
        ),
        (
            "a lock's last token above the table's",
            |m| {
                let above = m.last_token + 1;
                lock(m, "m").last_token = above;
            },
            "above the table's",
        ),
    ];
    let valid = mirror(&valid_table());
    for (what, corrupt, expected) in corruptions {
        let mut m = valid.clone();
        corrupt(&mut m);
        match restore(&m) {
            Ok(_) => panic!("restored a snapshot where {what}"),
            Err(LockError::InvalidArgument { field, reason }) => {
                assert_eq!(field, "snapshot", "{what}");
                assert!(reason.contains(expected), "{what}: {reason}");
            }
            Err(other) => panic!("{what}: {other:?}"),
        }
    }
}
