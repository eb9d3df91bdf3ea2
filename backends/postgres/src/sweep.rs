//! Expiry without a daemon: every live client process sweeps.
//!
//! Each pass ticks, in batches, (1) locks whose `deadline` (a lease end or a
//! wait deadline) has passed, found through the partial index on `deadline`,
//! and (2) locks held or awaited by sessions whose expiry has passed, found
//! through the sessions' expiry index and the GIN index on `active`. Rows are
//! taken with `FOR UPDATE SKIP LOCKED`, so processes sweeping at once split
//! the work instead of queueing on each other. Now and then a pass also
//! deletes expired session rows no lock refers to, and old tombstones
//! (raising the token floor above their last tokens first).
//!
//! The core processes each expiry at its own instant, so a late sweep never
//! lengthens a lease as far as tokens and grants are concerned; it only
//! delays when the next waiter *learns* of its grant. Waiters whose lock has
//! a due expiry also tick it themselves.

use crate::notify::Wake;
use crate::store::{Selection, Store};
use fencelock::Error;
use fencelock_core::Command;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch, Notify};
use tokio::time::Instant;
use tokio_postgres::types::Type;

/// Keys ticked per transaction.
const BATCH: i64 = 32;
/// How often expired sessions and tombstones are purged.
const PURGE_EVERY: Duration = Duration::from_secs(10);

/// Ticks every due key (both kinds), batch after batch. Returns how many
/// keys were ticked.
pub(crate) async fn sweep(store: &Store, hub: &broadcast::Sender<Wake>) -> Result<usize, Error> {
    let mut total = 0;
    for sql in [&store.sql.due_locks, &store.sql.expired_session_locks] {
        loop {
            let batch = store
                .apply_selected(None, Selection { sql, param: BATCH }, &Command::Tick, false)
                .await?;
            for change in batch.applied.iter().filter_map(|a| a.change.clone()) {
                let _ = hub.send(Wake::Key(change));
            }
            total += batch.applied.len();
            if (batch.applied.len() as i64) < BATCH {
                break;
            }
        }
    }
    Ok(total)
}

/// How long expired rows are kept before [`purge`] deletes them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention {
    pub session_grace: Duration,
    pub tombstone_ttl: Duration,
}

/// Deletes expired session rows nobody refers to and old tombstones
/// (raising the token floor above their tokens in the same statement).
/// Returns how many sessions and tombstones went.
pub(crate) async fn purge(store: &Store, keep: Retention) -> Result<(u64, u64), Error> {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let (grace, tombstones) = (ms(keep.session_grace), ms(keep.tombstone_ttl));
    let client = store.client().await?;
    let hour: i64 = 3_600_000;
    let (sessions, tombs, _) = tokio::try_join!(
        crate::pg::query(
            &client,
            &store.sql.purge_sessions,
            vec![(&grace, Type::INT8)]
        ),
        crate::pg::query(
            &client,
            &store.sql.purge_tombstones,
            vec![(&tombstones, Type::INT8)]
        ),
        crate::pg::query(
            &client,
            &store.sql.purge_session_requests,
            vec![(&hour, Type::INT8)]
        ),
    )
    .map_err(crate::error::db_error)?;
    let count = |rows: &[tokio_postgres::Row]| {
        rows.first()
            .map_or(0, |r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0))
    };
    Ok((count(&sessions), count(&tombs)))
}

/// How long until the next known deadline (capped by `interval`).
async fn next_sleep(store: &Store, interval: Duration) -> Result<(Duration, i64), Error> {
    let client = store.client().await?;
    let row = crate::pg::query(&client, &store.sql.next_deadline, Vec::new())
        .await
        .map_err(crate::error::db_error)?;
    let Some(row) = row.first() else {
        return Ok((interval, 0));
    };
    let now: i64 = row.get(0);
    let lock_deadline: Option<i64> = row.get(1);
    let session_expiry: Option<i64> = row.get(2);
    let next = [lock_deadline, session_expiry]
        .into_iter()
        .flatten()
        .filter(|at| *at > now)
        .min();
    let sleep = match next {
        Some(at) => Duration::from_millis((at - now) as u64).min(interval),
        None => interval,
    };
    Ok((sleep, now))
}

/// Wakes the sweeper early when a command creates an earlier deadline.
pub(crate) struct Alarm {
    /// Server time (ms) the sweeper will next look; `i64::MAX` while sweeping.
    planned: AtomicI64,
    notify: Notify,
}

impl Alarm {
    pub fn new() -> Arc<Alarm> {
        Arc::new(Alarm {
            planned: AtomicI64::new(i64::MAX),
            notify: Notify::new(),
        })
    }

    /// A key now has a deadline at `at` (server ms).
    pub fn deadline(&self, at: u64) {
        if i64::try_from(at).unwrap_or(i64::MAX) < self.planned.load(Ordering::Relaxed) {
            self.notify.notify_one();
        }
    }
}

/// The sweeper task: sweeps, sleeps until the next deadline (at most
/// `interval`, sooner when poked), until `shutdown`.
pub(crate) async fn run(
    store: Arc<Store>,
    hub: broadcast::Sender<Wake>,
    alarm: Arc<Alarm>,
    interval: Duration,
    keep: Retention,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last_purge = Instant::now();
    loop {
        if *shutdown.borrow() {
            return;
        }
        alarm.planned.store(i64::MAX, Ordering::Relaxed);
        if let Err(e) = sweep(&store, &hub).await {
            tracing::debug!("fencelock sweep: {e}");
        }
        if last_purge.elapsed() >= PURGE_EVERY {
            last_purge = Instant::now();
            if let Err(e) = purge(&store, keep).await {
                tracing::debug!("fencelock purge: {e}");
            }
        }
        let sleep = match next_sleep(&store, interval).await {
            Ok((sleep, now)) => {
                let ms = i64::try_from(sleep.as_millis()).unwrap_or(i64::MAX);
                alarm
                    .planned
                    .store(now.saturating_add(ms), Ordering::Relaxed);
                sleep
            }
            Err(_) => interval,
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = alarm.notify.notified() => {}
            _ = shutdown.changed() => return,
        }
    }
}
