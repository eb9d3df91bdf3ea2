//! The measured workloads. Each builds its state in `new` (untimed) and offers
//! one step to time; a fixture panics on an unexpected answer, because a bench
//! that silently measures an error path would report a lie.

use fencelock_core::{
    Command, Event, FencingToken, LockKey, LockKind, Millis, Mode, Response, SessionId, Table,
};
use std::collections::HashMap;
use std::hint::black_box;

/// State time used by the fixtures; sessions live far longer, so nothing expires.
const NOW: Millis = 1;
/// Longest TTL the default limits accept: sessions outlive every bench.
const SESSION_TTL: u64 = 7 * 24 * 3600 * 1000;

/// Lock `i` of a bench table: `bench/lock:0000042`, like a real `type:id` name.
pub fn lock_key(i: usize) -> LockKey {
    match LockKey::new("bench", &lock_name(i)) {
        Ok(key) => key,
        Err(e) => panic!("bench key {i} is invalid: {e}"),
    }
}

fn lock_name(i: usize) -> String {
    format!("lock:{i:07}")
}

/// The same text as [`lock_key`], as the plain `String` a `HashMap` would hold.
pub fn map_key(i: usize) -> String {
    format!("bench/{}", lock_name(i))
}

fn open(table: &mut Table, events: &mut Vec<Event>) -> SessionId {
    match table.open_session(NOW, SESSION_TTL, events) {
        Ok(s) => s,
        Err(e) => panic!("open_session failed: {e}"),
    }
}

fn create(table: &mut Table, key: &LockKey, ttl_ms: Option<u64>, events: &mut Vec<Event>) {
    let cmd = Command::CreateLock {
        key: key.clone(),
        kind: LockKind::Exclusive,
        ttl_ms,
    };
    if let Err(e) = table.apply(NOW, &cmd, events) {
        panic!("create {key} failed: {e}");
    }
}

fn granted(outcome: Result<Response, fencelock_core::LockError>, what: &str) -> FencingToken {
    match outcome {
        Ok(Response::Granted(g)) => g.token,
        other => panic!("{what}: expected a grant, got {other:?}"),
    }
}

/// A table of `n` idle exclusive locks (no TTL), created by `CreateLock`.
pub fn idle_locks(n: usize) -> Table {
    let mut table = Table::default();
    let mut events = Vec::new();
    for i in 0..n {
        create(&mut table, &lock_key(i), None, &mut events);
    }
    table
}

/// Uncontended acquire + release by one session, cycling over the table's locks.
pub struct Uncontended {
    table: Table,
    session: SessionId,
    keys: Vec<LockKey>,
    next: usize,
    events: Vec<Event>,
}

impl Uncontended {
    /// A table of `locks` idle locks and one session.
    pub fn new(locks: usize) -> Self {
        let mut table = idle_locks(locks);
        let mut events = Vec::new();
        let session = open(&mut table, &mut events);
        Uncontended {
            table,
            session,
            keys: (0..locks).map(lock_key).collect(),
            next: 0,
            events,
        }
    }

    /// One try-lock acquire and its release, on the next lock in the cycle.
    pub fn pair(&mut self) {
        let key = &self.keys[self.next];
        self.next = if self.next + 1 == self.keys.len() {
            0
        } else {
            self.next + 1
        };
        let acquired = self.table.acquire(
            NOW,
            key,
            self.session,
            Mode::Exclusive,
            Some(0),
            &mut self.events,
        );
        let token = granted(acquired, "uncontended acquire");
        let released = self
            .table
            .release(NOW, key, self.session, token, &mut self.events);
        if !matches!(released, Ok(Response::Released)) || !self.events.is_empty() {
            panic!(
                "uncontended release: {released:?}, events {:?}",
                self.events
            );
        }
    }
}

/// The floor we compare against: `HashMap<String, u64>` remove + insert of the
/// same number of keys (std's default hasher, like the table's).
pub struct MapPairs {
    map: HashMap<String, u64>,
    keys: Vec<String>,
    next: usize,
}

impl MapPairs {
    /// A map holding `n` keys.
    pub fn new(n: usize) -> Self {
        MapPairs {
            map: filled_map(n),
            keys: (0..n).map(map_key).collect(),
            next: 0,
        }
    }

    /// Removes the next key and inserts it again (an owned `String`, as a
    /// table of names must store one).
    pub fn pair(&mut self) {
        let key = &self.keys[self.next];
        self.next = if self.next + 1 == self.keys.len() {
            0
        } else {
            self.next + 1
        };
        let v = self.map.remove(black_box(key.as_str())).unwrap_or(0);
        self.map.insert(key.clone(), v + 1);
    }
}

/// One exclusive lock with a holder and a FIFO queue of waiters.
pub struct Handoff {
    table: Table,
    key: LockKey,
    holder: SessionId,
    token: FencingToken,
    events: Vec<Event>,
}

impl Handoff {
    /// A held lock with `waiters` sessions queued behind the holder.
    pub fn new(waiters: usize) -> Self {
        let mut table = Table::default();
        let mut events = Vec::new();
        let key = lock_key(0);
        let holder = open(&mut table, &mut events);
        let token = granted(
            table.acquire(NOW, &key, holder, Mode::Exclusive, None, &mut events),
            "first holder",
        );
        for _ in 0..waiters {
            let s = open(&mut table, &mut events);
            let queued = table.acquire(NOW, &key, s, Mode::Exclusive, None, &mut events);
            if !matches!(queued, Ok(Response::Queued { .. })) {
                panic!("waiter did not queue: {queued:?}");
            }
        }
        Handoff {
            table,
            key,
            holder,
            token,
            events,
        }
    }

    /// The holder releases; the head waiter is granted in the same transition.
    /// Returns false when nobody was waiting.
    fn release_to_next(&mut self) -> bool {
        self.events.clear();
        let released =
            self.table
                .release(NOW, &self.key, self.holder, self.token, &mut self.events);
        if !matches!(released, Ok(Response::Released)) {
            panic!("handoff release: {released:?}");
        }
        match self.events.as_slice() {
            [] => false,
            [Event::Granted { session, grant, .. }] => {
                self.holder = *session;
                self.token = grant.token;
                true
            }
            other => panic!("handoff: unexpected events {other:?}"),
        }
    }

    /// One handoff at a steady queue length: release → next grant, and the
    /// former holder queues again at the tail.
    pub fn handoff(&mut self) {
        let former = self.holder;
        if !self.release_to_next() {
            panic!("handoff on an empty queue");
        }
        let queued = self.table.acquire(
            NOW,
            &self.key,
            former,
            Mode::Exclusive,
            None,
            &mut self.events,
        );
        if !matches!(queued, Ok(Response::Queued { .. })) {
            panic!("former holder did not queue again: {queued:?}");
        }
    }

    /// Hands the lock down the whole queue; returns the number of handoffs.
    pub fn drain(&mut self) -> usize {
        self.drain_at_most(usize::MAX)
    }

    /// Hands the lock down the queue at most `max` times (release → next
    /// grant, nobody re-queues); returns the number of handoffs.
    pub fn drain_at_most(&mut self, max: usize) -> usize {
        let mut n = 0;
        while n < max && self.release_to_next() {
            n += 1;
        }
        n
    }
}

/// A table of `n` locks with a lease of `ttl_ms`, all held and all expiring at
/// the same instant, which it returns.
pub fn leased_locks(n: usize, ttl_ms: u64) -> (Table, Millis) {
    let mut table = Table::default();
    let mut events = Vec::new();
    // Spread the holds over sessions, well under the per-session limit.
    let per_session = 10_000;
    let mut session = open(&mut table, &mut events);
    for i in 0..n {
        if i > 0 && i % per_session == 0 {
            session = open(&mut table, &mut events);
        }
        let key = lock_key(i);
        create(&mut table, &key, Some(ttl_ms), &mut events);
        granted(
            table.acquire(NOW, &key, session, Mode::Exclusive, Some(0), &mut events),
            "leased acquire",
        );
    }
    (table, NOW + ttl_ms)
}

/// One tick at `at`: every lease due ends. Returns how many did.
pub fn expire(table: &mut Table, at: Millis, events: &mut Vec<Event>) -> usize {
    events.clear();
    table.tick(at, events);
    events.len()
}

/// A table of `n` idle locks; with `held_once`, each was acquired and released
/// once (so it carries its token history), as locks in a long-running table do.
pub fn idle_table(n: usize, held_once: bool) -> Table {
    let mut table = idle_locks(n);
    if held_once {
        let mut events = Vec::new();
        let session = open(&mut table, &mut events);
        for i in 0..n {
            let key = lock_key(i);
            let token = granted(
                table.acquire(NOW, &key, session, Mode::Exclusive, Some(0), &mut events),
                "idle-table acquire",
            );
            if let Err(e) = table.release(NOW, &key, session, token, &mut events) {
                panic!("idle-table release: {e}");
            }
        }
    }
    table
}

/// A `HashMap<String, u64>` of `n` entries with the same names.
pub fn filled_map(n: usize) -> HashMap<String, u64> {
    (0..n).map(|i| (map_key(i), 0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncontended_pairs_cycle_over_every_lock_and_leave_them_idle() {
        let mut u = Uncontended::new(3);
        for _ in 0..7 {
            u.pair();
        }
        assert_eq!(u.next, 1);
        for i in 0..3 {
            let info = u.table.describe(&lock_key(i)).expect("lock exists");
            assert!(info.holders.is_empty() && info.waiters.is_empty());
            assert!(info.last_token.0 > 0, "lock {i} was never granted");
        }
    }

    #[test]
    fn map_pairs_keep_the_map_size() {
        let mut m = MapPairs::new(4);
        for _ in 0..10 {
            m.pair();
        }
        assert_eq!(m.map.len(), 4);
        assert_eq!(m.map[&map_key(0)], 3);
    }

    #[test]
    fn handoff_keeps_the_queue_length_and_follows_fifo() {
        let mut h = Handoff::new(3);
        let first_waiter = SessionId(h.holder.0 + 1);
        h.handoff();
        assert_eq!(h.holder, first_waiter);
        let info = h.table.describe(&h.key).expect("lock exists");
        assert_eq!(info.waiters.len(), 3);
        assert_eq!(info.waiters.last().map(|w| w.session), Some(SessionId(1)));
        assert_eq!(h.drain(), 3);
        assert_eq!(h.holder, SessionId(1));
    }

    #[test]
    fn all_leases_expire_in_one_tick() {
        let (mut table, at) = leased_locks(25, 1_000);
        let mut events = Vec::new();
        assert_eq!(expire(&mut table.clone(), at - 1, &mut events), 0);
        assert_eq!(expire(&mut table, at, &mut events), 25);
        assert!(events.iter().all(|e| matches!(e, Event::HoldLost { .. })));
        assert_eq!(table.next_deadline().map(|d| d > at), Some(true));
    }
}
