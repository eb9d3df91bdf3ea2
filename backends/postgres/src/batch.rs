//! One-round-trip writes of different keys from one process share a
//! transaction.
//!
//! A write from remembered state (`known.rs`) is one `store_key` statement in
//! a transaction of its own. Under load, what costs the server is less the
//! row than everything around it: waking a server process, parsing, starting
//! an executor, committing, flushing the WAL, replying. So only a few such
//! writes are in flight from a process; writes that come meanwhile queue,
//! and the next free slot sends all of them (up to [`MAX_BATCH`]) as one
//! `store_many` statement: one executor run and one commit for all (see
//! `schema.rs`, migration 3). A lone write goes out at once, alone.
//!
//! How many slots: one per [`SLOT_PER`] of the moving average round trip,
//! at most [`PgConfig::write_transactions`](crate::PgConfig). A quick round
//! trip means the server's CPU decides, and one bigger batch costs it less
//! than two; a slow one means the transaction waits for the WAL flush, and
//! more of them in flight share one flush, as separate clients' commits do.
//!
//! Each write keeps its own answer: `store_many` makes each write whose
//! checks pass (clock, sessions, version) and reports which, so one stale
//! write does not spoil the others. If the statement fails with an error
//! from the server, it was rolled back and every write in it is answered
//! "run again" (each then runs alone the ordinary way, so one bad write
//! cannot keep failing the others); if the connection is lost, every
//! write's outcome is unknown.
//!
//! Rows are updated in the order the plan chooses, yet batches do not
//! deadlock: a process remembers only versions it wrote itself, so of two
//! processes' writes to one key at most one matches the row's version, and
//! the other takes no lock on it; every other multi-row locker (sweeper,
//! session close) locks in key order or skips locked rows, and the session
//! share locks a batch takes first conflict only with a close, which waits
//! for them while holding no row a batch needs.
//!
//! Invariants:
//! - `inflight` counts the tasks that own a slot: a caller sending its own
//!   write alone, or a drain task sending queued ones; never more than the
//!   limit;
//! - only a slot owner takes writes out of the queue, and a write taken is
//!   always answered (drain tasks are spawned, so no caller's cancellation
//!   abandons another caller's write);
//! - a slot owner's turn ends by handing the queue to a drain task when it
//!   is not empty, also when the owner is dropped; so nothing queued is left
//!   without an owner.

use crate::error::{commit_error, db_error, is_retryable};
use crate::store::{store_call, store_many_call, Retry, Write};
use deadpool_postgres::Pool;
use fencelock::Error;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Most writes one transaction carries.
const MAX_BATCH: usize = 64;
/// Round trip that opens one more slot (see `State::slots`).
const SLOT_PER: std::time::Duration = std::time::Duration::from_millis(1);
/// Longest a write waits for company (see [`WriteBatcher::write`]).
const LINGER: std::time::Duration = std::time::Duration::from_micros(150);
/// Most times a lingering write yields to the tasks producing the others.
const LINGER_YIELDS: usize = 16;

/// What a write gets back: rows written by its `store_key` (1: written; see
/// `store_key` for the others), and the write itself for the caller to
/// remember.
pub(crate) type Written = Result<(i64, Write), Retry>;

struct Pending {
    write: Write,
    notify: Option<String>,
    reply: oneshot::Sender<Written>,
}

struct State {
    inflight: usize,
    queue: VecDeque<Pending>,
    /// Writes the last transaction carried.
    last_batch: usize,
    /// Moving average of a transaction's round trip, in microseconds.
    round_trip_us: u64,
}

impl State {
    /// Slots open now: one per [`SLOT_PER`] of round trip, at most `limit`.
    /// A transaction that takes long waits for the disk, not for the CPU,
    /// and then more of them in flight share the server's WAL flushes (as
    /// separate clients' commits do); a quick one is better followed by one
    /// bigger batch.
    fn slots(&self, limit: usize) -> usize {
        let per = SLOT_PER.as_micros() as u64;
        let wanted = self.round_trip_us.div_ceil(per).max(1);
        usize::try_from(wanted).unwrap_or(usize::MAX).min(limit)
    }

    fn took(&mut self, elapsed: std::time::Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.round_trip_us = (self.round_trip_us.saturating_mul(7).saturating_add(us)) / 8;
    }
}

/// The write slots and queue of one process.
pub(crate) struct WriteBatcher {
    pool: Pool,
    store_sql: String,
    store_many_sql: String,
    limit: usize,
    state: Mutex<State>,
    /// Writes that shared their transaction with another.
    shared: AtomicU64,
}

fn abandoned() -> Retry {
    Retry::Fail(Error::UnknownOutcome {
        reason: "the task sending this write's transaction was dropped".into(),
    })
}

fn not_sent() -> Retry {
    Retry::Fail(Error::unavailable(
        "the write was dropped before it was sent (no runtime to run it)",
    ))
}

impl WriteBatcher {
    pub fn new(pool: Pool, sql: &crate::sql::Sql, limit: usize) -> Arc<WriteBatcher> {
        Arc::new(WriteBatcher {
            pool,
            store_sql: sql.store.clone(),
            store_many_sql: sql.store_many.clone(),
            limit: limit.max(1),
            state: Mutex::new(State {
                inflight: 0,
                queue: VecDeque::new(),
                last_batch: 0,
                round_trip_us: 0,
            }),
            shared: AtomicU64::new(0),
        })
    }

    /// Writes that shared their transaction with another.
    pub fn shared(&self) -> u64 {
        self.shared.load(Ordering::Relaxed)
    }

    /// Sends `write` (with its NOTIFY payload), alone if a slot is free,
    /// else in the next transaction a slot sends.
    ///
    /// Closed-loop clients answer a transaction of n writes with about n
    /// new ones a few microseconds apart. The first of them would find a
    /// slot free and go alone, making the others wait a whole round trip
    /// behind it; so when the last transaction carried more than one write,
    /// a write that finds a slot free waits up to [`LINGER`] for as many to
    /// join it. A lone client's writes (last transaction: one) never wait.
    pub async fn write(self: &Arc<Self>, write: Write, notify: Option<String>) -> Written {
        let mut mine = Some((write, notify));
        // `None`: a slot was free, send it alone.
        let queued: Option<oneshot::Receiver<Written>> = match self.state.lock() {
            Err(_) => return Err(not_sent()),
            Ok(mut state) => {
                let free = state.inflight < state.slots(self.limit) && state.queue.is_empty();
                let runtime = tokio::runtime::Handle::try_current().ok();
                if free && (state.last_batch <= 1 || runtime.is_none()) {
                    state.inflight += 1;
                    state.last_batch = 1;
                    None
                } else {
                    let Some((write, notify)) = mine.take() else {
                        return Err(not_sent());
                    };
                    let (reply, answer) = oneshot::channel();
                    state.queue.push_back(Pending {
                        write,
                        notify,
                        reply,
                    });
                    if let (true, Some(runtime)) = (free, runtime) {
                        state.inflight += 1;
                        let wanted = state.last_batch.min(MAX_BATCH);
                        runtime.spawn(self.clone().drain(Some(wanted)));
                    }
                    Some(answer)
                }
            }
        };
        let Some(answer) = queued else {
            let _slot = Slot {
                batcher: self.clone(),
            };
            let Some((write, notify)) = mine else {
                return Err(not_sent());
            };
            let count = self.send_one(&write, notify.as_deref()).await?;
            return Ok((count, write));
        };
        answer.await.unwrap_or_else(|_| Err(abandoned()))
    }

    async fn send_one(&self, write: &Write, notify: Option<&str>) -> Result<i64, Retry> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| Retry::Fail(crate::error::pool_error(e)))?;
        let started = std::time::Instant::now();
        let result = store_call(&client, &self.store_sql, write, notify).await;
        self.took(started);
        match result {
            Ok(n) => Ok(n),
            Err(e) if is_retryable(&e) => Err(Retry::Again(db_error(e))),
            Err(e) => Err(Retry::Fail(commit_error(e))),
        }
    }

    /// Sends `batch` as one transaction; one answer per write, in order.
    async fn send_many(&self, batch: &[Pending]) -> Result<Vec<i64>, Retry> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| Retry::Fail(crate::error::pool_error(e)))?;
        let writes: Vec<(&Write, Option<&str>)> = batch
            .iter()
            .map(|p| (&p.write, p.notify.as_deref()))
            .collect();
        let started = std::time::Instant::now();
        let result = store_many_call(&client, &self.store_many_sql, &writes).await;
        self.took(started);
        match result {
            Ok(counts) => Ok(counts),
            // The server answered: the statement was rolled back. Each
            // write runs again on its own.
            Err(e) if e.as_db_error().is_some() => Err(Retry::Again(db_error(e))),
            Err(e) => Err(Retry::Fail(commit_error(e))),
        }
    }

    fn took(&self, started: std::time::Instant) {
        if let Ok(mut state) = self.state.lock() {
            state.took(started.elapsed());
        }
    }

    /// Ends a slot owner's turn: hands the queue to a drain task, or frees
    /// the slot when nothing is queued.
    fn hand_on(self: &Arc<Self>) {
        let orphans = {
            let Ok(mut state) = self.state.lock() else {
                return;
            };
            if state.queue.is_empty() {
                state.inflight -= 1;
                return;
            }
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(self.clone().drain(None));
                    return;
                }
                Err(_) => {
                    state.inflight -= 1;
                    std::mem::take(&mut state.queue)
                }
            }
        };
        for pending in orphans {
            let _ = pending.reply.send(Err(not_sent()));
        }
    }

    /// Sends what is queued, a batch per transaction, until nothing is;
    /// with `wanted`, first lingers until that many are queued.
    async fn drain(self: Arc<Self>, wanted: Option<usize>) {
        let _slot = Slot {
            batcher: self.clone(),
        };
        if let Some(wanted) = wanted {
            // Yield rather than sleep: the timer's resolution is a
            // millisecond, and the writes that are coming are produced by
            // tasks already woken (by the last batch's answers) that need
            // this thread to run. A few yields let them; more would only
            // spin a CPU the database may need.
            let give_up = std::time::Instant::now() + LINGER;
            for _ in 0..LINGER_YIELDS {
                let queued = self.state.lock().map_or(0, |s| s.queue.len());
                if queued >= wanted || std::time::Instant::now() >= give_up {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        loop {
            let mut batch: Vec<Pending> = {
                let Ok(mut state) = self.state.lock() else {
                    return;
                };
                let n = state.queue.len().min(MAX_BATCH);
                if n == 0 {
                    // `_slot` frees the slot (or sees what queued since).
                    return;
                }
                state.last_batch = n;
                state.queue.drain(..n).collect()
            };
            if batch.len() == 1 {
                let Some(one) = batch.pop() else { return };
                let result = self.send_one(&one.write, one.notify.as_deref()).await;
                let _ = one.reply.send(result.map(|n| (n, one.write)));
                continue;
            }
            self.shared.fetch_add(batch.len() as u64, Ordering::Relaxed);
            match self.send_many(&batch).await {
                Ok(counts) => {
                    for (pending, n) in batch.into_iter().zip(counts) {
                        let _ = pending.reply.send(Ok((n, pending.write)));
                    }
                }
                Err(e) => {
                    for pending in batch {
                        let _ = pending.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

/// A slot held; on drop, the turn ends (see [`WriteBatcher::hand_on`]).
struct Slot {
    batcher: Arc<WriteBatcher>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.batcher.hand_on();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn state(round_trip_us: u64) -> State {
        State {
            inflight: 0,
            queue: VecDeque::new(),
            last_batch: 0,
            round_trip_us,
        }
    }

    #[test]
    fn slots_follow_the_round_trip_within_the_limit() {
        assert_eq!(state(0).slots(4), 1, "always one");
        assert_eq!(state(600).slots(4), 1, "quick: one bigger batch");
        assert_eq!(state(1_500).slots(4), 2);
        assert_eq!(state(3_600).slots(4), 4, "a slow flush: overlap");
        assert_eq!(state(50_000).slots(4), 4, "never above the limit");
        assert_eq!(state(50_000).slots(1), 1);
    }

    #[test]
    fn the_round_trip_average_moves_an_eighth_per_sample() {
        let mut s = state(800);
        s.took(Duration::from_micros(4_000));
        assert_eq!(s.round_trip_us, 1_200);
        for _ in 0..64 {
            s.took(Duration::from_micros(4_000));
        }
        assert!(s.round_trip_us > 3_900, "{}", s.round_trip_us);
    }
}
