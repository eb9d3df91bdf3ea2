//! The replicated lock state machine: the core [`Table`] plus the wait book,
//! driven by committed log entries.
//!
//! Every replica applies the same entries with the leader's stamped `now`, so
//! all replicas hold byte-identical state (the snapshot bytes are the proof
//! the simulator compares). The state lives in memory; durability comes from
//! the log plus the latest snapshot, which is written to disk atomically and
//! is what a restarted node starts from before openraft re-applies the log.

use crate::types::{
    Entry, LogId, Membership, Reply, Request, SnapshotMeta, StorageError, TypeConfig,
};
use crate::waits::{WaitBook, WaitOutcome};
use crate::wal;
use crate::wire::WaitState;
use fencelock_core::{
    Command, Event, Grant, LockError, LockKey, Millis, Response, SessionId, Table, WaitEnd,
};
use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, Snapshot, StorageIOError,
};
use serde::{Deserialize, Serialize};
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// What every replica computes from the log.
#[derive(Debug, Default)]
pub struct Replica {
    pub table: Table,
    pub waits: WaitBook,
    pub last_applied: Option<LogId>,
    pub membership: Membership,
    /// Sessions whose waits the entries applied since the last
    /// [`Replica::take_woken`] may have changed (not replicated state: it
    /// only tells which long polls to wake, see [`crate::wake`]).
    woken: Vec<SessionId>,
}

impl Replica {
    /// Takes the sessions to wake (deduplicated).
    pub fn take_woken(&mut self) -> Vec<SessionId> {
        let mut woken = std::mem::take(&mut self.woken);
        woken.sort_unstable();
        woken.dedup();
        woken
    }

    /// Where `session`'s last wait for `key` stands.
    pub fn wait_state(&self, session: SessionId, key: &LockKey) -> WaitState {
        match self.waits.get(session, key) {
            Some(WaitOutcome::Granted(g)) => return WaitState::Granted(g),
            Some(WaitOutcome::Ended(e)) => return WaitState::Ended(e),
            None => {}
        }
        let Some(info) = self.table.describe_session(session) else {
            return WaitState::Ended(WaitEnd::SessionEnded);
        };
        if info.waits.contains(key) {
            return WaitState::Waiting;
        }
        // Outcome no longer remembered, but the session holds the key.
        match info.holds.iter().find(|(k, _)| k == key) {
            Some((_, token)) => match self.table.validate(self.table.now(), key, *token) {
                Ok(h) => WaitState::Granted(Grant {
                    token: h.token,
                    mode: h.mode,
                    granted_at: h.granted_at,
                    expires_at: h.expires_at,
                }),
                Err(_) => WaitState::NotWaiting,
            },
            None => WaitState::NotWaiting,
        }
    }

    fn apply_request(&mut self, request: &Request) -> Reply {
        match request {
            Request::Batch { now, commands } => {
                #[cfg(madsim)]
                let local = crate::sim::planted(crate::sim::Planted::LocalClockApply)
                    .then(crate::sim::local_now);
                #[cfg(madsim)]
                let now = &local.unwrap_or(*now);
                let mut events = Vec::new();
                let outcomes = commands
                    .iter()
                    .map(|c| {
                        let outcome =
                            self.table
                                .apply_request(*now, c.request_id, &c.command, &mut events);
                        self.waits.record(&events);
                        self.woken.extend(c.command.session());
                        self.woken.extend(events.iter().map(|e| match e {
                            Event::Granted { session, .. }
                            | Event::WaitEnded { session, .. }
                            | Event::HoldLost { session, .. }
                            | Event::SessionExpired { session } => *session,
                        }));
                        events.clear();
                        match (&outcome, &c.command) {
                            // A retried acquire returns its first answer
                            // (`Queued`) even when that wait has ended since:
                            // keep the book's outcome unless a wait is really
                            // pending now (found by the simulator, seed 11).
                            (
                                Ok(Response::Queued { .. }),
                                Command::Acquire { key, session, .. },
                            ) => {
                                let pending = self
                                    .table
                                    .describe_session(*session)
                                    .is_some_and(|s| s.waits.contains(key));
                                if pending {
                                    self.waits.forget(*session, key)
                                }
                                #[cfg(madsim)]
                                if pending
                                    && crate::sim::planted(crate::sim::Planted::NewestWaiterFirst)
                                {
                                    crate::sim::newest_waiter_first(
                                        &mut self.table,
                                        key,
                                        *session,
                                        *now,
                                    );
                                }
                            }
                            (Ok(Response::Released), Command::Release { key, session, .. }) => {
                                self.waits.forget(*session, key)
                            }
                            (Ok(Response::SessionClosed), Command::CloseSession { session }) => {
                                self.waits.forget_session(*session)
                            }
                            _ => {}
                        }
                        outcome
                    })
                    .collect();
                Reply { outcomes }
            }
            Request::Grace { now } => {
                #[cfg(madsim)]
                crate::sim::note_grace(*now);
                let extended = self.table.grant_grace(*now);
                tracing::info!(now, extended, "fail-over grace granted to sessions");
                Reply::default()
            }
            Request::Configure { limits } => {
                let t = &self.table;
                if t.session_count() == 0 && t.lock_count() == 0 && t.last_token().0 == 0 {
                    self.table = Table::new(limits.clone());
                    Reply::default()
                } else {
                    Reply {
                        outcomes: vec![Err(LockError::InvalidArgument {
                            field: "limits".into(),
                            reason: "the cluster already has sessions or locks; limits are set \
                                     only on a new cluster"
                                .into(),
                        })],
                    }
                }
            }
        }
    }
}

/// What waiters of the state machine watch: the applied index and the next
/// deadline the leader must tick at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub applied: u64,
    pub next_deadline: Option<Millis>,
}

/// The replica shared between the state machine and the node's read paths.
#[derive(Debug)]
pub struct Shared {
    replica: Mutex<Replica>,
    progress: watch::Sender<Progress>,
    wakeups: crate::wake::Wakeups,
}

impl Shared {
    /// Locks the replica for a short read.
    pub fn replica(&self) -> MutexGuard<'_, Replica> {
        self.replica.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The long polls waiting on sessions' waits.
    pub fn wakeups(&self) -> &crate::wake::Wakeups {
        &self.wakeups
    }

    /// A receiver that changes whenever entries are applied.
    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    fn publish(&self, replica: &Replica) {
        let p = Progress {
            applied: replica.last_applied.map_or(0, |l| l.index),
            next_deadline: replica.table.next_deadline(),
        };
        self.progress.send_replace(p);
    }
}

/// The snapshot body sent to followers: the core's snapshot bytes and the wait book.
#[derive(Serialize, Deserialize)]
struct Body {
    core: Vec<u8>,
    waits: WaitBook,
}

/// The snapshot file on disk.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    body: Vec<u8>,
}

fn snap_err(meta: Option<&SnapshotMeta>, e: impl std::fmt::Display) -> StorageError {
    StorageError::IO {
        source: StorageIOError::write_snapshot(
            meta.map(|m| m.signature()),
            AnyError::error(e.to_string()),
        ),
    }
}

fn decode_body(bytes: &[u8]) -> Result<(Table, WaitBook), String> {
    let body: Body = postcard::from_bytes(bytes).map_err(|e| format!("snapshot body: {e}"))?;
    let table = Table::restore_bytes(&body.core).map_err(|e| e.to_string())?;
    Ok((table, body.waits))
}

/// The latest snapshot, on disk and in memory; shared with snapshot builders.
struct SnapStore {
    path: PathBuf,
    current: Mutex<Option<Arc<SnapshotFile>>>,
    built: AtomicU64,
}

impl SnapStore {
    // The error type is openraft's.
    #[allow(clippy::result_large_err)]
    fn save(&self, file: SnapshotFile) -> Result<(), StorageError> {
        let bytes = postcard::to_allocvec(&file).map_err(|e| snap_err(Some(&file.meta), e))?;
        wal::write_atomic(&self.path, &bytes).map_err(|e| snap_err(Some(&file.meta), e))?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(file));
        Ok(())
    }

    fn current(&self) -> Option<Arc<SnapshotFile>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The openraft state machine over [`Shared`].
pub struct StateMachine {
    shared: Arc<Shared>,
    snaps: Arc<SnapStore>,
    /// Set by [`StateMachine::apply_once_durable`].
    durable: Option<crate::durable::Durable>,
}

impl StateMachine {
    /// Opens the state machine of `dir`, starting from its snapshot if any.
    pub fn open(dir: &Path) -> io::Result<StateMachine> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("snapshot");
        let mut replica = Replica::default();
        let mut current = None;
        match std::fs::read(&path) {
            Ok(bytes) => {
                let file: SnapshotFile = postcard::from_bytes(&bytes).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: {e}", path.display()),
                    )
                })?;
                let (table, waits) = decode_body(&file.body).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: {e}", path.display()),
                    )
                })?;
                replica = Replica {
                    table,
                    waits,
                    last_applied: file.meta.last_log_id,
                    membership: file.meta.last_membership.clone(),
                    woken: Vec::new(),
                };
                current = Some(Arc::new(file));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let (progress, _) = watch::channel(Progress::default());
        let shared = Arc::new(Shared {
            replica: Mutex::new(replica),
            progress,
            wakeups: Default::default(),
        });
        shared.publish(&shared.replica());
        Ok(StateMachine {
            shared,
            snaps: Arc::new(SnapStore {
                path,
                current: Mutex::new(current),
                built: AtomicU64::new(0),
            }),
            durable: None,
        })
    }

    /// Applies an entry only once the local log has it on disk: the gate
    /// that lets the leader write in parallel (see [`crate::durable`]).
    pub fn apply_once_durable(&mut self, durable: crate::durable::Durable) {
        self.durable = Some(durable);
    }

    /// The replica, for the node's reads.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (snap, waits, last_applied, membership) = {
            let r = self.shared.replica();
            (
                r.table.snapshot(),
                r.waits.clone(),
                r.last_applied,
                r.membership.clone(),
            )
        };
        let core = snap.to_bytes().map_err(|e| snap_err(None, e))?;
        let body = postcard::to_allocvec(&Body { core, waits }).map_err(|e| snap_err(None, e))?;
        let n = self.snaps.built.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{n}", l.leader_id, l.index),
            None => format!("none-{n}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        self.snaps.save(SnapshotFile {
            meta: meta.clone(),
            body: body.clone(),
        })?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(body)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        let r = self.shared.replica();
        Ok((r.last_applied, r.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if let (Some(durable), Some(last)) = (&self.durable, entries.last()) {
            durable
                .wait_for(last.log_id.index)
                .await
                .map_err(|e| StorageError::IO {
                    source: openraft::StorageIOError::apply(
                        last.log_id,
                        openraft::AnyError::new(&e),
                    ),
                })?;
        }
        let mut replies = Vec::new();
        let mut r = self.shared.replica();
        r.woken.clear();
        for entry in entries {
            r.last_applied = Some(entry.log_id);
            let reply = match &entry.payload {
                EntryPayload::Blank => Reply::default(),
                EntryPayload::Normal(request) => r.apply_request(request),
                EntryPayload::Membership(m) => {
                    r.membership = Membership::new(Some(entry.log_id), m.clone());
                    Reply::default()
                }
            };
            replies.push(reply);
        }
        self.shared.publish(&r);
        let woken = r.take_woken();
        drop(r);
        self.shared.wakeups.wake(&woken);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        StateMachine {
            shared: self.shared.clone(),
            snaps: self.snaps.clone(),
            durable: None,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let body = snapshot.into_inner();
        let (table, waits) = decode_body(&body).map_err(|e| snap_err(Some(meta), e))?;
        {
            let mut r = self.shared.replica();
            *r = Replica {
                table,
                waits,
                last_applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
                woken: Vec::new(),
            };
            self.shared.publish(&r);
        }
        self.shared.wakeups.wake_all();
        self.snaps.save(SnapshotFile {
            meta: meta.clone(),
            body,
        })
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.snaps.current().map(|f| Snapshot {
            meta: f.meta.clone(),
            snapshot: Box::new(Cursor::new(f.body.clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Stamped;
    use fencelock_core::{Limits, Mode, RequestId, SessionId};

    fn batch(now: Millis, commands: Vec<Command>) -> Request {
        Request::Batch {
            now,
            commands: commands
                .into_iter()
                .enumerate()
                .map(|(i, command)| Stamped {
                    request_id: command.session().map(|_| RequestId(now * 100 + i as u64)),
                    command,
                })
                .collect(),
        }
    }

    fn open(r: &mut Replica, now: Millis) -> SessionId {
        match &r
            .apply_request(&batch(now, vec![Command::OpenSession { ttl_ms: 10_000 }]))
            .outcomes[..]
        {
            [Ok(Response::SessionOpened { session, .. })] => *session,
            other => panic!("{other:?}"),
        }
    }

    fn acquire(key: &LockKey, session: SessionId) -> Command {
        Command::Acquire {
            key: key.clone(),
            session,
            mode: Mode::Exclusive,
            timeout_ms: Some(5_000),
        }
    }

    #[test]
    fn wait_state_follows_the_last_wait_of_a_session_for_a_key() {
        let mut r = Replica::default();
        let key = LockKey::new("ns", "k").unwrap();
        let (a, b) = (open(&mut r, 1), open(&mut r, 1));
        assert_eq!(r.wait_state(b, &key), WaitState::NotWaiting);
        r.apply_request(&batch(2, vec![acquire(&key, a), acquire(&key, b)]));
        assert_eq!(r.wait_state(b, &key), WaitState::Waiting);
        let token = r.table.describe(&key).unwrap().holders[0].token;
        r.apply_request(&batch(
            3,
            vec![Command::Release {
                key: key.clone(),
                session: a,
                token,
            }],
        ));
        let WaitState::Granted(g) = r.wait_state(b, &key) else {
            panic!("b not granted: {:?}", r.wait_state(b, &key))
        };
        assert!(g.token > token);
        assert_eq!(g.granted_at, 3);
        // b releases and queues behind a: the old grant is forgotten.
        r.apply_request(&batch(
            4,
            vec![
                acquire(&key, a),
                Command::Release {
                    key: key.clone(),
                    session: b,
                    token: g.token,
                },
                acquire(&key, b),
            ],
        ));
        assert_eq!(r.wait_state(b, &key), WaitState::Waiting);
        // The wait times out at 4 + 5_000 (the deadline).
        r.apply_request(&batch(5_004, vec![Command::Tick]));
        assert_eq!(r.wait_state(b, &key), WaitState::Ended(WaitEnd::TimedOut));
        r.apply_request(&batch(5_005, vec![Command::CloseSession { session: b }]));
        assert_eq!(
            r.wait_state(b, &key),
            WaitState::Ended(WaitEnd::SessionEnded)
        );
        assert_eq!(
            r.waits.get(b, &key),
            None,
            "a closed session leaves nothing"
        );
        // a's last wait (queued at 4, granted by b's release) is still known.
        assert!(matches!(r.wait_state(a, &key), WaitState::Granted(_)));
    }

    #[test]
    fn an_entry_wakes_only_the_sessions_it_touches() {
        let mut r = Replica::default();
        let key = LockKey::new("ns", "k").unwrap();
        let (a, b, c) = (open(&mut r, 1), open(&mut r, 1), open(&mut r, 1));
        r.apply_request(&batch(2, vec![acquire(&key, a), acquire(&key, b)]));
        r.apply_request(&batch(2, vec![acquire(&key, c)]));
        r.take_woken();
        let token = r.table.describe(&key).unwrap().holders[0].token;
        let release = Command::Release {
            key: key.clone(),
            session: a,
            token,
        };
        r.apply_request(&batch(3, vec![release]));
        // a released, b was granted; c still waits and is left asleep.
        assert_eq!(r.take_woken(), vec![a, b]);
        assert!(r.take_woken().is_empty());
        // c's wait times out: an event of a tick, which names no session.
        r.apply_request(&batch(30_000, vec![Command::Tick]));
        assert!(r.take_woken().contains(&c));
    }

    #[test]
    fn limits_are_configured_only_on_an_empty_table() {
        let mut r = Replica::default();
        let small = Limits {
            max_sessions: 1,
            ..Limits::default()
        };
        let reply = r.apply_request(&Request::Configure {
            limits: small.clone(),
        });
        assert!(reply.outcomes.is_empty());
        assert_eq!(r.table.limits(), &small);
        open(&mut r, 1);
        let reply = r.apply_request(&Request::Configure {
            limits: Limits::default(),
        });
        assert!(
            matches!(&reply.outcomes[..], [Err(LockError::InvalidArgument { field, .. })] if field == "limits")
        );
        assert_eq!(r.table.limits(), &small);
    }

    #[test]
    fn the_grace_entry_extends_sessions_before_anything_expires() {
        let mut r = Replica::default();
        let s = open(&mut r, 0);
        r.apply_request(&Request::Grace { now: 50_000 });
        r.apply_request(&batch(50_001, vec![Command::Tick]));
        assert_eq!(
            r.table.describe_session(s).map(|i| i.expires_at),
            Some(60_000)
        );
    }
}
