//! Commands on one key from one process share transactions.
//!
//! When clients of one process contend for a key, their commands would race
//! each other optimistically and each pay a durable commit. Instead, at most
//! one transaction per key is in flight from a process; commands that arrive
//! meanwhile queue, and the next transaction applies all of them in arrival
//! order to the same state and commits once (group commit, one level up).
//! Each command still gets its own result; the state moves exactly as if
//! they had run one after the other.
//!
//! An acquire that will most likely queue (the key is held or waited for by
//! another session, as this process last saw it) is not urgent: it lingers up
//! to [`LINGER`] for another command on the key — typically the holder's
//! release — and they commit together. In a contended hand-off that halves
//! the commits: the release that grants the next waiter carries the previous
//! holder's new request.
//!
//! Invariants:
//! - a key has an entry in `queues` exactly while one task owns it: a caller
//!   running its own command alone, or a drain task running queued ones;
//! - only the owner takes commands out of the queue, and a command taken is
//!   always answered (drain tasks are spawned, so no caller's cancellation
//!   abandons another caller's command; a caller running alone risks only
//!   its own);
//! - the owner hands the queue to a new drain task when its turn ends, also
//!   when it is dropped; without a runtime to spawn on, the queued commands
//!   are answered `Unavailable` (nothing was sent).

use crate::store::{Applied, Item, Store};
use fencelock::{Command, Error};
use fencelock_core::LockKey;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, Notify};

/// Most commands one transaction carries.
const MAX_BATCH: usize = 64;
/// How long an acquire that will queue waits for company.
pub(crate) const LINGER: Duration = Duration::from_millis(2);

type Reply = oneshot::Sender<Result<Applied, Error>>;

struct Entry {
    queue: VecDeque<(Item, Reply)>,
    /// Signalled when a command joins the queue (ends a linger early).
    arrived: Arc<Notify>,
}

/// The per-key queues of one process.
#[derive(Default)]
pub(crate) struct Combiner {
    queues: Mutex<HashMap<LockKey, Entry>>,
    /// Commands that shared their transaction with another.
    shared: AtomicU64,
}

impl Combiner {
    /// Commands so far that shared their transaction with another.
    pub fn shared(&self) -> u64 {
        self.shared.load(Ordering::Relaxed)
    }
}

fn not_sent() -> Error {
    Error::unavailable("the command was dropped before it was sent (no runtime to run it)")
}

fn abandoned() -> Error {
    Error::UnknownOutcome {
        reason: "the task running this command's transaction was dropped".into(),
    }
}

/// Runs `item` on `key`, alone or together with other commands of this
/// process on the same key.
pub(crate) async fn run(store: &Arc<Store>, key: &LockKey, item: Item) -> Result<Applied, Error> {
    // A command that counts its session's other keys runs alone.
    if store.counts_others(&item) {
        return first(store.apply_keyed(key, std::slice::from_ref(&item)).await);
    }
    let linger = lingers(store, key, &item);
    let answer = {
        let Ok(mut queues) = store.combiner.queues.lock() else {
            return Err(not_sent());
        };
        match queues.get_mut(key) {
            Some(entry) => {
                let (reply, answer) = oneshot::channel();
                entry.queue.push_back((item.clone(), reply));
                entry.arrived.notify_one();
                Some(answer)
            }
            None if linger => {
                // Queue itself and let a drain task wait for company.
                let (reply, answer) = oneshot::channel();
                let arrived = Arc::new(Notify::new());
                let entry = Entry {
                    queue: VecDeque::from([(item.clone(), reply)]),
                    arrived: arrived.clone(),
                };
                queues.insert(key.clone(), entry);
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => {
                        runtime.spawn(drain(store.clone(), key.clone(), Some(arrived)));
                    }
                    Err(_) => {
                        queues.remove(key);
                        return Err(not_sent());
                    }
                }
                Some(answer)
            }
            None => {
                let entry = Entry {
                    queue: VecDeque::new(),
                    arrived: Arc::new(Notify::new()),
                };
                queues.insert(key.clone(), entry);
                None
            }
        }
    };
    if let Some(answer) = answer {
        return answer.await.unwrap_or_else(|_| Err(abandoned()));
    }
    // This caller owns the key until the guard hands it on.
    let _turn = Turn {
        store: store.clone(),
        key: key.clone(),
    };
    first(store.apply_keyed(key, std::slice::from_ref(&item)).await)
}

/// Is `item` an acquire that will most likely queue?
fn lingers(store: &Store, key: &LockKey, item: &Item) -> bool {
    match item.command {
        Command::Acquire {
            session,
            timeout_ms,
            ..
        } => timeout_ms != Some(0) && store.known.busy_for(key, session),
        _ => false,
    }
}

fn first(applied: Result<Vec<Applied>, Error>) -> Result<Applied, Error> {
    applied?
        .into_iter()
        .next()
        .ok_or_else(|| Error::backend("a transaction answered no command"))
}

/// Ownership of a key's queue; on drop, hands what queued to a drain task.
struct Turn {
    store: Arc<Store>,
    key: LockKey,
}

impl Drop for Turn {
    fn drop(&mut self) {
        hand_on(&self.store, &self.key);
    }
}

/// Ends an owner's turn: the queue goes to a new drain task, or the key's
/// entry is removed when nothing waits.
fn hand_on(store: &Arc<Store>, key: &LockKey) {
    let orphans = {
        let Ok(mut queues) = store.combiner.queues.lock() else {
            return;
        };
        match queues.get(key) {
            Some(entry) if !entry.queue.is_empty() => match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(drain(store.clone(), key.clone(), None));
                    return;
                }
                Err(_) => queues.remove(key),
            },
            _ => {
                queues.remove(key);
                return;
            }
        }
    };
    for (_, reply) in orphans.into_iter().flat_map(|e| e.queue) {
        let _ = reply.send(Err(not_sent()));
    }
}

/// Runs the queued commands of `key`, a batch per transaction, until none
/// are left; with `linger`, first waits up to [`LINGER`] for a second one.
async fn drain(store: Arc<Store>, key: LockKey, linger: Option<Arc<Notify>>) {
    let _turn = Turn {
        store: store.clone(),
        key: key.clone(),
    };
    if let Some(arrived) = linger {
        let _ = tokio::time::timeout(LINGER, arrived.notified()).await;
    }
    loop {
        let batch: Vec<(Item, Reply)> = {
            let Ok(mut queues) = store.combiner.queues.lock() else {
                return;
            };
            let Some(entry) = queues.get_mut(&key) else {
                return;
            };
            if entry.queue.is_empty() {
                // `_turn` ends the turn (and sees anything queued after this).
                return;
            }
            let n = entry.queue.len().min(MAX_BATCH);
            entry.queue.drain(..n).collect()
        };
        let items: Vec<Item> = batch.iter().map(|(item, _)| item.clone()).collect();
        if items.len() > 1 {
            let n = items.len() as u64;
            store.combiner.shared.fetch_add(n, Ordering::Relaxed);
        }
        match store.apply_keyed(&key, &items).await {
            Ok(applied) => {
                for ((_, reply), applied) in batch.into_iter().zip(applied) {
                    let _ = reply.send(Ok(applied));
                }
            }
            Err(e) => {
                for (_, reply) in batch {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
