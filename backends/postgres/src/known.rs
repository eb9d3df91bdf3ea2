//! What this process last wrote or read of a key, so the next command on it
//! can skip the read: one round trip instead of two.
//!
//! A command that finds its key here applies the core to the remembered
//! record at an *estimated* server time (the server time seen then, plus the
//! time elapsed locally since), and sends one `store_key` call that writes
//! only if
//! - the row is still at the remembered version (nobody changed it), and
//! - the server clock, read inside that call, is not before the estimate,
//!   at most [`MAX_LAG_MS`] after it, and before the first instant at which
//!   the result could differ (the key's next lease end, wait deadline or
//!   session expiry, before or after the command).
//!
//! So the state moves exactly as it would have at the server's time, except
//! that the new stamps (a lease's start, a wait's start) may be up to
//! [`MAX_LAG_MS`] earlier than the commit — a lease can only end earlier, never
//! later, than a client counting from its request expects. Anything else
//! (another writer, a late estimate, an expiry in between, a session gone)
//! writes nothing and the command runs the ordinary way.
//!
//! Session expiries remembered here only get older (keep-alives extend the
//! rows), so a stale one can only send a command down the ordinary path.
//! Versions restart when a purged key is created again, so tombstones are
//! never remembered and an entry is not used after half the tombstone
//! retention (at most [`MAX_AGE`]): a live row remembered at version `v` cannot
//! be destroyed, purged, created again and brought back to `v` in that time.

use fencelock_core::{LockKey, LockRecord, Millis, SessionId, SessionRecord};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Largest distance between the estimated and the server's clock.
pub(crate) const MAX_LAG_MS: i64 = 50;
/// Entries older than this are not used (so local clock drift stays tiny;
/// see the module docs for tombstones).
const MAX_AGE: Duration = Duration::from_secs(10);
/// Keys remembered per process.
const CAPACITY: usize = 8_192;

/// One key as this process last saw it committed.
#[derive(Clone)]
pub(crate) struct Known {
    pub version: i64,
    pub record: LockRecord,
    /// Rows of every session the record mentions (and the last caller's).
    pub sessions: Vec<SessionRecord>,
    pub floor: u64,
    /// Sessions that have a `members` row for this key (every session a
    /// record of the key ever mentioned gets one, kept while the session
    /// lives), so a write need not add it again.
    pub members: Vec<SessionId>,
    /// A server time that had passed by `seen`.
    pub server_now: Millis,
    pub seen: Instant,
}

impl Known {
    /// The session row of `session`, as remembered.
    pub fn session(&self, session: SessionId) -> Option<&SessionRecord> {
        self.sessions.iter().find(|s| s.id == session)
    }
}

/// The per-process memory of keys (bounded; any entry may be dropped).
pub(crate) struct KnownKeys {
    map: Mutex<HashMap<LockKey, Known>>,
    max_age: Duration,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// How often commands could use what the process remembered (see
/// [`crate::PgBackend::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PgStats {
    /// Commands written in one round trip from remembered state.
    pub one_round_trip: u64,
    /// Commands that tried and found the key changed (or the clock out of
    /// bounds): they cost one round trip more than the ordinary way.
    pub stale: u64,
    /// Commands that shared a transaction (and its commit) with other
    /// commands of this process on the same key.
    pub combined: u64,
    /// One-round-trip writes that shared a transaction with writes of
    /// other keys (see `PgConfig::write_transactions`).
    pub batched: u64,
}

impl KnownKeys {
    /// `tombstone_ttl`: how long the database keeps a destroyed key's row.
    pub fn new(tombstone_ttl: Duration) -> KnownKeys {
        KnownKeys {
            map: Mutex::default(),
            max_age: MAX_AGE.min(tombstone_ttl / 2),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Counts a use of an entry: it was current (`true`) or stale.
    pub fn count(&self, current: bool) {
        let counter = if current { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> PgStats {
        PgStats {
            one_round_trip: self.hits.load(Ordering::Relaxed),
            stale: self.misses.load(Ordering::Relaxed),
            combined: 0,
            batched: 0,
        }
    }

    /// The server clock now, estimated from below from `known`; `None` once
    /// the entry is too old to use.
    pub fn estimated_now(&self, known: &Known) -> Option<Millis> {
        let age = known.seen.elapsed();
        if age >= self.max_age {
            return None;
        }
        Some(known.server_now + age.as_millis() as u64)
    }

    pub fn get(&self, key: &LockKey) -> Option<Known> {
        self.map.lock().ok()?.get(key).cloned()
    }

    /// Does the remembered state of `key` have a holder or waiter other than
    /// `session`? (Then an acquire by `session` will most likely queue.)
    pub fn busy_for(&self, key: &LockKey, session: SessionId) -> bool {
        let Ok(map) = self.map.lock() else {
            return false;
        };
        map.get(key)
            .is_some_and(|k| k.record.active_sessions().iter().any(|s| *s != session))
    }

    /// Remembers `known` for `key`; a tombstone is forgotten instead.
    pub fn put(&self, key: &LockKey, known: Known) {
        if !known.record.exists() {
            self.forget(key);
            return;
        }
        let Ok(mut map) = self.map.lock() else { return };
        if map.len() >= CAPACITY && !map.contains_key(key) {
            // Which one goes does not matter for correctness.
            if let Some(victim) = map.keys().next().cloned() {
                map.remove(&victim);
            }
        }
        map.insert(key.clone(), known);
    }

    /// Forgets every key.
    pub fn clear(&self) {
        if let Ok(mut map) = self.map.lock() {
            map.clear();
        }
    }

    pub fn forget(&self, key: &LockKey) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(key);
        }
    }
}
