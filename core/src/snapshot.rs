//! Snapshot and restore of the whole table.
//!
//! A snapshot lists sessions in id order and locks in key order, and encodes
//! with postcard (a deterministic format), so equal states give byte-identical
//! snapshots on every replica. Indexes (a session's holds and waits, the
//! deadline index) are derived, not stored: restore rebuilds them and then
//! checks every invariant, so a corrupt snapshot is an error, never a panic or
//! a half-built table.

use crate::error::LockError;
use crate::key::LockKey;
use crate::limits::Limits;
use crate::lock::LockState;
use crate::session::{KeyIndex, RequestMemory, Session, SessionlessMemory};
use crate::table::{Due, Table};
use crate::types::{Millis, SessionId};
use serde::{Deserialize, Serialize};

const FORMAT: u32 = 1;

/// The whole state of a [`Table`], in a canonical order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    format: u32,
    now: Millis,
    last_token: u64,
    last_session: u64,
    limits: Limits,
    sessions: Vec<SessionSnapshot>,
    locks: Vec<(LockKey, LockState)>,
    sessionless: SessionlessMemory,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SessionSnapshot {
    id: SessionId,
    ttl_ms: u64,
    expires_at: Millis,
    requests: RequestMemory,
}

impl Snapshot {
    /// Canonical bytes (postcard).
    pub fn to_bytes(&self) -> Result<Vec<u8>, LockError> {
        postcard::to_allocvec(self).map_err(|e| LockError::invalid("snapshot", e.to_string()))
    }

    /// Decodes bytes made by [`Snapshot::to_bytes`]. Does not yet check the
    /// state; [`Table::restore`] does.
    pub fn from_bytes(bytes: &[u8]) -> Result<Snapshot, LockError> {
        postcard::from_bytes(bytes)
            .map_err(|e| LockError::invalid("snapshot", format!("cannot decode: {e}")))
    }
}

fn corrupt(reason: impl Into<String>) -> LockError {
    LockError::invalid("snapshot", reason)
}

impl Table {
    /// The whole state, canonical: equal states give equal snapshots.
    pub fn snapshot(&self) -> Snapshot {
        let mut locks: Vec<(LockKey, LockState)> = self
            .locks
            .iter()
            .map(|(k, l)| (k.clone(), l.clone()))
            .collect();
        locks.sort_by(|a, b| a.0.cmp(&b.0));
        Snapshot {
            format: FORMAT,
            now: self.now,
            last_token: self.last_token,
            last_session: self.last_session,
            limits: self.limits.clone(),
            sessions: self
                .sessions
                .iter()
                .map(|(id, s)| SessionSnapshot {
                    id: *id,
                    ttl_ms: s.ttl_ms,
                    expires_at: s.expires_at,
                    requests: s.requests.clone(),
                })
                .collect(),
            locks,
            sessionless: self.sessionless.clone(),
        }
    }

    /// Canonical snapshot bytes; see [`Snapshot::to_bytes`].
    pub fn snapshot_bytes(&self) -> Result<Vec<u8>, LockError> {
        self.snapshot().to_bytes()
    }

    /// Rebuilds a table from snapshot bytes, checking every invariant.
    pub fn restore_bytes(bytes: &[u8]) -> Result<Table, LockError> {
        Table::restore(Snapshot::from_bytes(bytes)?)
    }

    /// Rebuilds a table from a snapshot, checking every invariant.
    pub fn restore(snap: Snapshot) -> Result<Table, LockError> {
        if snap.format != FORMAT {
            return Err(corrupt(format!(
                "format {} is not supported (expected {FORMAT})",
                snap.format
            )));
        }
        let mut table = Table::new(snap.limits);
        table.now = snap.now;
        table.last_token = snap.last_token;
        table.last_session = snap.last_session;
        table.sessionless = snap.sessionless;
        for s in snap.sessions {
            if s.id.0 == 0 || s.id.0 > snap.last_session {
                return Err(corrupt(format!("session {} was never issued", s.id)));
            }
            table.deadlines.insert((s.expires_at, Due::Session(s.id)));
            let session = Session {
                ttl_ms: s.ttl_ms,
                expires_at: s.expires_at,
                holds: KeyIndex::default(),
                waits: KeyIndex::default(),
                requests: s.requests,
            };
            if table.sessions.insert(s.id, session).is_some() {
                return Err(corrupt(format!("session {} appears twice", s.id)));
            }
        }
        for (key, lock) in snap.locks {
            for (&token, hold) in &lock.holders {
                let Some(s) = table.sessions.get_mut(&hold.session) else {
                    return Err(corrupt(format!(
                        "lock {key} is held by unknown session {}",
                        hold.session
                    )));
                };
                if s.holds.insert(key.clone(), token).is_some() {
                    return Err(corrupt(format!(
                        "session {} holds {key} twice",
                        hold.session
                    )));
                }
                if let Some(at) = hold.expires_at {
                    table.deadlines.insert((
                        at,
                        Due::Lease {
                            key: key.clone(),
                            token,
                        },
                    ));
                }
            }
            for (&seq, w) in &lock.queue {
                let Some(s) = table.sessions.get_mut(&w.session) else {
                    return Err(corrupt(format!(
                        "lock {key} is awaited by unknown session {}",
                        w.session
                    )));
                };
                if s.waits.insert(key.clone(), seq).is_some() {
                    return Err(corrupt(format!(
                        "session {} waits for {key} twice",
                        w.session
                    )));
                }
                if let Some(at) = w.deadline {
                    table.deadlines.insert((
                        at,
                        Due::Wait {
                            key: key.clone(),
                            seq,
                        },
                    ));
                }
            }
            if table.locks.insert(key.clone(), lock).is_some() {
                return Err(corrupt(format!("lock {key} appears twice")));
            }
        }
        table.check_invariants().map_err(corrupt)?;
        Ok(table)
    }
}
