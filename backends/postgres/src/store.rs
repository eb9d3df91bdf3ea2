//! Running the core on one key (or a few) inside one Postgres transaction.
//!
//! A keyed command is two round trips, each one pipeline:
//!
//! 1. `load_key` (see `schema.rs`): the server clock, the token floor, the
//!    record, its version and the rows of every session it mentions, in one
//!    statement and one snapshot.
//! 2. The core applies the command to a [`KeyView`]; then one `store_key`
//!    call, a transaction of its own (share-lock the caller's session row
//!    for acquire/steal, so a concurrent close cannot miss the new hold;
//!    update only if the row is still at the version read, or insert a new
//!    key; `pg_notify` if others are affected). A command that changes
//!    nothing stops after 1.
//!
//! Optimistic, so no row lock is held across a round trip. A write that finds
//! the row changed (or loses the race to create it) commits nothing and the
//! command runs again; after two such losses it runs pessimistically: `BEGIN`
//! and `SELECT … FOR UPDATE` in round trip 1, the write in round trip 2.
//! A failed statement aborts the transaction, so a failed command leaves
//! nothing behind.

use crate::error::{commit_error, corrupt, db_error, is_retryable, pool_error};
use crate::known::{Known, KnownKeys, MAX_LAG_MS};
use crate::notify::Change;
use crate::pg::{self, Param};
use crate::sql::Sql;
use deadpool_postgres::{Object, Pool};
use fencelock::Error;
use fencelock_core::{
    Command, Event, KeyView, Limits, LockKey, LockRecord, Millis, RequestId, Response, SessionId,
    SessionRecord,
};
use futures_util::future::try_join_all;
use std::sync::Arc;
use std::time::Instant;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row};

/// How often a transaction that lost a race is run again.
const MAX_ATTEMPTS: usize = 8;
/// Attempts without a row lock before taking one.
const OPTIMISTIC_ATTEMPTS: usize = 2;

/// One key as loaded inside (or outside) a transaction.
pub(crate) struct Loaded {
    pub key: LockKey,
    /// The row existed (possibly as a tombstone).
    pub existed: bool,
    pub before: Option<LockRecord>,
    pub view: KeyView,
    /// Server clock when loaded.
    pub now: Millis,
    pub sessions: Vec<SessionRecord>,
    /// The row's version when read (`None`: no row).
    pub version: Option<i64>,
}

impl Loaded {
    /// Is `session` alive at the load's `now`, as the database has it?
    pub fn session_alive(&self, session: SessionId) -> bool {
        self.sessions
            .iter()
            .any(|s| s.id == session && s.expires_at > self.now)
    }
}

/// What one transaction did to one key, for one of its commands.
pub(crate) struct Applied {
    pub outcome: Result<Response, fencelock_core::LockError>,
    /// What other clients must hear about (sent by NOTIFY at commit); on
    /// the first command of a batch only.
    pub change: Option<Arc<Change>>,
    /// The key after the whole transaction.
    pub loaded: Arc<Loaded>,
}

/// One keyed command of a transaction.
#[derive(Clone)]
pub(crate) struct Item {
    pub command: Command,
    pub request_id: Option<RequestId>,
    pub acting: Acting,
}

/// The sessions `items` act for, each once, in id order.
fn acting_sessions(items: &[Item]) -> Vec<SessionId> {
    let mut sessions: Vec<SessionId> = items.iter().filter_map(|i| i.acting.session).collect();
    sessions.sort();
    sessions.dedup();
    sessions
}

/// Session rows to share-lock (sorted, once each): of the items that may
/// add their session to the lock and for which `keep` holds.
fn sharing(items: &[Item], keep: impl Fn(usize) -> bool) -> Vec<i64> {
    let mut ids: Vec<i64> = (0..items.len())
        .filter(|&i| items[i].acting.share && keep(i))
        .filter_map(|i| items[i].acting.session.map(session_param))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The rows an optimistic write must share-lock: sessions whose command
/// succeeded (a refused acquire adds nothing). `None`: no lock needed.
fn shared_by(items: &[Item], outcomes: &[Outcome]) -> Option<Vec<i64>> {
    let ids = sharing(items, |i| outcomes[i].is_ok());
    (!ids.is_empty()).then_some(ids)
}

type Outcome = Result<Response, fencelock_core::LockError>;

/// Applies `items` in order to the loaded view, all at the load's `now`.
fn apply_items(loaded: &mut Loaded, items: &[Item]) -> (Vec<Outcome>, Vec<Event>) {
    let mut events = Vec::new();
    let outcomes = items
        .iter()
        .map(|i| {
            loaded
                .view
                .apply(loaded.now, i.request_id, &i.command, &mut events)
        })
        .collect();
    (outcomes, events)
}

/// One [`Applied`] per outcome, sharing the key's state; the change rides
/// on the first.
fn finish(outcomes: Vec<Outcome>, change: Option<Arc<Change>>, loaded: Loaded) -> Vec<Applied> {
    let loaded = Arc::new(loaded);
    let mut change = change;
    outcomes
        .into_iter()
        .map(|outcome| Applied {
            outcome,
            change: change.take(),
            loaded: loaded.clone(),
        })
        .collect()
}

/// A row to write back.
pub(crate) struct Write {
    key: LockKey,
    /// What `bytes` encode (remembered in `known` after the commit).
    record: LockRecord,
    insert: bool,
    bytes: Vec<u8>,
    live: bool,
    active: Vec<i64>,
    known: Vec<i64>,
    deadline: Option<i64>,
    last_token: i64,
    updated_at: i64,
    /// Only if the row is still at this version (optimistic writes).
    expected: Option<i64>,
    /// Share-lock these session rows first (the write may add them to the lock).
    share: Option<Vec<i64>>,
    /// Computed at this estimated server time, valid until the second
    /// instant (see `known.rs`): the server checks its clock against both.
    estimated: Option<(i64, i64)>,
    /// Sessions the record mentions for the first time: they get their
    /// `members` row, by which their keys are found.
    join: Option<Vec<i64>>,
}

pub(crate) struct Store {
    pub pool: Pool,
    pub sql: Sql,
    pub limits: Limits,
    /// Keys as this process last saw them (one round trip per command).
    pub known: KnownKeys,
    /// Per-key queues: one transaction per key in flight (`combine.rs`).
    pub combiner: crate::combine::Combiner,
    /// One-round-trip writes of different keys share transactions (`batch.rs`).
    pub writes: Arc<crate::batch::WriteBatcher>,
    /// Tells this process's notifications from others' (`notify.rs`).
    pub origin: u64,
}

/// Which extra checks a keyed command needs.
#[derive(Clone, Copy)]
pub(crate) struct Acting {
    /// The caller's session (loaded even if the record does not mention it).
    pub session: Option<SessionId>,
    /// Take `FOR KEY SHARE` on the session row (the command may add it to the lock).
    pub share: bool,
}

/// A session id as a bigint. Ids above `i64::MAX` were never issued (they
/// come from a Postgres sequence), so they map to -1, which matches no row.
pub(crate) fn session_param(session: SessionId) -> i64 {
    i64::try_from(session.0).unwrap_or(-1)
}

pub(crate) fn to_i64(v: u64, what: &str) -> Result<i64, Error> {
    i64::try_from(v).map_err(|_| corrupt(format!("{what} {v} does not fit a bigint")))
}

fn to_u64(v: i64, what: &str) -> Result<u64, Error> {
    u64::try_from(v).map_err(|_| corrupt(format!("{what} {v} is negative")))
}

impl Store {
    pub async fn client(&self) -> Result<Object, Error> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Decodes a row of the `load` statement.
    pub fn decode_load(&self, key: &LockKey, row: Option<&Row>) -> Result<Loaded, Error> {
        let row = row.ok_or_else(|| corrupt("the meta row is missing"))?;
        let get_err = |e: tokio_postgres::Error| corrupt(format!("load of {key}: {e}"));
        let now: i64 = row.try_get(0).map_err(get_err)?;
        let floor: i64 = row.try_get(1).map_err(get_err)?;
        let bytes: Option<Vec<u8>> = row.try_get(2).map_err(get_err)?;
        let ids: Vec<i64> = row.try_get(3).map_err(get_err)?;
        let ttls: Vec<i64> = row.try_get(4).map_err(get_err)?;
        let expiries: Vec<i64> = row.try_get(5).map_err(get_err)?;
        let version: Option<i64> = row.try_get(7).map_err(get_err)?;
        let before = bytes
            .as_deref()
            .map(LockRecord::from_bytes)
            .transpose()
            .map_err(|e| corrupt(format!("record of {key}: {e}")))?;
        let mut sessions = Vec::with_capacity(ids.len());
        for ((id, ttl), exp) in ids.iter().zip(&ttls).zip(&expiries) {
            sessions.push(SessionRecord {
                id: SessionId(to_u64(*id, "session id")?),
                ttl_ms: to_u64(*ttl, "session ttl")?,
                expires_at: to_u64(*exp, "session expiry")?,
            });
        }
        let view = KeyView::load(
            self.limits.clone(),
            key.clone(),
            before.clone(),
            &sessions,
            to_u64(floor, "token floor")?,
        );
        Ok(Loaded {
            key: key.clone(),
            existed: bytes.is_some(),
            before,
            view,
            now: to_u64(now, "clock")?,
            sessions,
            version,
        })
    }

    /// Reads one key outside any transaction (one round trip, one snapshot).
    pub async fn read(&self, key: &LockKey, extra: &[SessionId]) -> Result<Loaded, Error> {
        let client = self.client().await?;
        let row = self
            .load(&client, key, extra, LoadHow::READ)
            .await
            .map_err(db_error)?;
        self.decode_load(key, row.as_ref())
    }

    /// The `load_key` call (see `schema.rs`). `how` says which locks to
    /// take first and whose other keys to count.
    fn load<'a>(
        &'a self,
        client: &'a Client,
        key: &'a LockKey,
        extra: &[SessionId],
        how: LoadHow,
    ) -> impl std::future::Future<Output = Result<Option<Row>, tokio_postgres::Error>> + 'a {
        let extra: Vec<i64> = extra.iter().copied().map(session_param).collect();
        async move {
            let (ns, name) = (key.namespace(), key.name());
            let params: Vec<Param> = vec![
                (&ns, Type::TEXT),
                (&name, Type::TEXT),
                (&extra, Type::INT8_ARRAY),
                (&how.share, Type::INT8_ARRAY),
                (&how.lock, Type::BOOL),
                (&how.count_for, Type::INT8),
            ];
            let rows = pg::query(client, &self.sql.load, params).await?;
            Ok(rows.into_iter().next())
        }
    }

    /// Applies `items` (commands on `key`, in order) in one transaction: the
    /// remembered way first (one round trip), then the ordinary way.
    pub async fn apply_keyed(&self, key: &LockKey, items: &[Item]) -> Result<Vec<Applied>, Error> {
        match self.try_known(key, items).await {
            Ok(Some(applied)) => return Ok(applied),
            // Not usable, or no longer current: the ordinary way.
            Ok(None) | Err(Retry::Again(_)) => {}
            Err(Retry::Fail(e)) => return Err(e),
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Optimistic first (no lock held across a round trip); a key
            // that keeps changing under us is then taken with a row lock.
            let optimistic = attempt <= OPTIMISTIC_ATTEMPTS;
            match self.try_apply_keyed(key, items, optimistic).await {
                Ok(Some(applied)) => return Ok(applied),
                Ok(None) if attempt < MAX_ATTEMPTS => continue,
                Ok(None) => {
                    return Err(Error::unavailable(format!(
                        "lost the race to create {key} {MAX_ATTEMPTS} times"
                    )))
                }
                Err(Retry::Again(_)) if attempt < MAX_ATTEMPTS => continue,
                Err(Retry::Again(e)) | Err(Retry::Fail(e)) => return Err(e),
            }
        }
    }

    /// `Ok(None)`: lost a race, nothing applied, run again.
    ///
    /// Optimistic: read without a transaction, apply, then write only if
    /// the row is still at the version read (`BEGIN`, conditional write,
    /// `COMMIT` in one round trip); a batch that changes nothing needs no
    /// second round trip. Pessimistic: `BEGIN` and `SELECT … FOR UPDATE`
    /// first, so nobody can change the row in between.
    async fn try_apply_keyed(
        &self,
        key: &LockKey,
        items: &[Item],
        optimistic: bool,
    ) -> Result<Option<Vec<Applied>>, Retry> {
        let client = self.client().await.map_err(Retry::Fail)?;
        let extra = acting_sessions(items);
        // Only a command run alone counts its session's other keys.
        let counted = match items {
            [item] if self.counts_others(item) => item.acting.session,
            _ => None,
        };
        let share: Vec<i64> = sharing(items, |_| true);
        let how = LoadHow {
            share: (!optimistic && !share.is_empty()).then_some(share),
            lock: !optimistic,
            count_for: counted.map(session_param),
        };
        // Round trip 1: the load (pessimistic: after BEGIN, with the locks).
        let row = if optimistic {
            match self.load(&client, key, &extra, how).await {
                Ok(row) => row,
                Err(e) => return Err(classify(e)),
            }
        } else {
            let first = tokio::try_join!(
                client.batch_execute("BEGIN"),
                self.load(&client, key, &extra, how),
            );
            match first {
                Ok((_, row)) => row,
                Err(e) => return Err(abort(client, e).await),
            }
        };
        // The server read its clock before this; remembered with it.
        let seen = Instant::now();
        let end = |client: Object| async move {
            if !optimistic {
                rollback(client).await;
            }
        };
        let others: i64 = row
            .as_ref()
            .and_then(|r| r.try_get::<_, i64>(6).ok())
            .unwrap_or(0);
        let mut loaded = match self.decode_load(key, row.as_ref()) {
            Ok(l) => l,
            Err(e) => {
                end(client).await;
                return Err(Retry::Fail(e));
            }
        };
        let involved = |l: &Loaded, s| l.view.session_part(s) != (None, false);
        let before = counted.is_some_and(|s| involved(&loaded, s));
        let (outcomes, events) = apply_items(&mut loaded, items);
        // The core sees one key; the session's other keys are counted here.
        let max = self.limits.max_locks_per_session;
        if let Some(session) = counted {
            if outcomes[0].is_ok() && !before && involved(&loaded, session) && others as u64 >= max
            {
                end(client).await;
                let refused = Err(fencelock_core::LockError::ResourceExhausted {
                    limit: "max_locks_per_session".into(),
                    max,
                });
                return Ok(Some(finish(vec![refused], None, loaded)));
            }
        }
        let write = match plan_write(&loaded) {
            Ok(w) => w,
            Err(e) => {
                end(client).await;
                return Err(Retry::Fail(e));
            }
        };
        let write = match (optimistic, write) {
            // Nothing to write and no lock to release: done in one round trip.
            (true, None) => return Ok(Some(finish(outcomes, None, loaded))),
            (true, Some(mut w)) => {
                w.expected = loaded.version;
                w.share = shared_by(items, &outcomes);
                Some(w)
            }
            (false, w) => w,
        };
        let change = Change::from_events(key, &events).map(Arc::new);
        // Round trip 2. Optimistic: one `store_key` call, which is a
        // transaction of its own (share locks, conditional write, notify);
        // pessimistic: write, notify, COMMIT of the transaction begun above.
        let written = match (optimistic, &write) {
            (true, Some(w)) => {
                let payload = change
                    .as_deref()
                    .map(|c| crate::notify::payload(c, self.origin));
                match self.write(&client, w, payload.as_deref()).await {
                    Ok(n) => Ok(n == 1),
                    Err(e) if is_retryable(&e) => Err(Retry::Again(db_error(e))),
                    Err(e) => Err(Retry::Fail(commit_error(e))),
                }
            }
            _ => {
                self.write_many_and_commit(
                    &client,
                    optimistic,
                    write.as_slice(),
                    change.iter().map(|c| &**c).collect(),
                    None,
                )
                .await
            }
        };
        match written {
            Ok(true) => {
                if let Some(w) = write {
                    let version = if w.insert {
                        0
                    } else {
                        loaded.version.unwrap_or(0) + 1
                    };
                    self.remember(&loaded, w.record, version, (loaded.now, seen), Vec::new());
                }
                loaded.existed = true;
                Ok(Some(finish(outcomes, change, loaded)))
            }
            Ok(false) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Counting a session's other keys is a GIN scan per acquire; it is only
    /// worth it when the limit is set below its default.
    pub(crate) fn counts_others(&self, item: &Item) -> bool {
        matches!(
            item.command,
            Command::Acquire { .. } | Command::Steal { .. }
        ) && item.acting.session.is_some()
            && self.limits.max_locks_per_session < Limits::default().max_locks_per_session
    }

    /// Remembers `key` as just committed (see `known.rs`).
    /// `members`: sessions known to have a `members` row for the key besides
    /// those `record` mentions.
    fn remember(
        &self,
        loaded: &Loaded,
        record: LockRecord,
        version: i64,
        (server_now, seen): (Millis, Instant),
        mut members: Vec<SessionId>,
    ) {
        for s in record.sessions() {
            if !members.contains(&s) {
                members.push(s);
            }
        }
        let known = Known {
            version,
            record,
            sessions: loaded.sessions.clone(),
            floor: loaded.view.last_token().0,
            members,
            server_now,
            seen,
        };
        self.known.put(&loaded.key, known);
    }

    /// `key` as this process last committed or read it, at the estimated
    /// server time, if that shows `session` still waiting — then a waiter
    /// can go to sleep without reading the row. Used only to sleep: every
    /// change that ends a wait notifies, and a notification from another
    /// process makes this process forget the key first (`notify.rs`), so a
    /// waiter that subscribed before looking here misses no wake-up. `None`:
    /// not remembered, too old, or something is due by now.
    pub fn remembered_waiting(&self, key: &LockKey, session: SessionId) -> Option<Loaded> {
        let known = self.known.get(key)?;
        let now = self.known.estimated_now(&known)?;
        known.session(session)?;
        let loaded = self.loaded_from_memory(key, known, now)?;
        if loaded.view.next_due().is_some_and(|at| at <= now) {
            return None;
        }
        (loaded.view.wait_view(session) == fencelock_core::WaitView::Waiting).then_some(loaded)
    }

    /// `known` as a [`Loaded`] at the estimated server time `now`; `None`
    /// unless every session the record mentions is remembered too.
    fn loaded_from_memory(&self, key: &LockKey, known: Known, now: Millis) -> Option<Loaded> {
        if known
            .record
            .sessions()
            .iter()
            .any(|s| known.session(*s).is_none())
        {
            return None;
        }
        let view = KeyView::load(
            self.limits.clone(),
            key.clone(),
            Some(known.record.clone()),
            &known.sessions,
            known.floor,
        );
        Some(Loaded {
            key: key.clone(),
            existed: true,
            before: Some(known.record),
            view,
            now,
            sessions: known.sessions,
            version: Some(known.version),
        })
    }

    /// One round trip: the commands applied to what this process knows of
    /// the key, written only if that is still current (see `known.rs`).
    /// `Ok(None)`: nothing known, not usable here, or no longer current —
    /// nothing was written; run the ordinary way.
    async fn try_known(
        &self,
        key: &LockKey,
        items: &[Item],
    ) -> Result<Option<Vec<Applied>>, Retry> {
        let Some(mut known) = self.known.get(key) else {
            return Ok(None);
        };
        let Some(now) = self.known.estimated_now(&known) else {
            return Ok(None);
        };
        if items.iter().any(|item| self.counts_others(item)) {
            return Ok(None);
        }
        // The core must see every session involved, as the database had it.
        let mut first_due: Option<Millis> = None;
        for session in acting_sessions(items) {
            match known.session(session) {
                Some(row) => {
                    first_due = Some(first_due.map_or(row.expires_at, |d| d.min(row.expires_at)))
                }
                None => return Ok(None),
            }
        }
        let (version, server_now, seen) = (known.version, known.server_now, known.seen);
        let members = std::mem::take(&mut known.members);
        let Some(mut loaded) = self.loaded_from_memory(key, known, now) else {
            return Ok(None);
        };
        // Valid only before anything this key depends on runs out.
        let first_due = first_due.into_iter().chain(loaded.view.next_due()).min();
        if first_due.is_some_and(|at| at <= now) {
            return Ok(None);
        }
        let (outcomes, events) = apply_items(&mut loaded, items);
        let until = first_due.into_iter().chain(loaded.view.next_due()).min();
        if until.is_some_and(|at| at <= now) {
            return Ok(None);
        }
        // A batch that writes nothing needs the database's current word.
        let Some(mut write) = plan_write(&loaded).map_err(Retry::Fail)? else {
            return Ok(None);
        };
        let until = match until {
            Some(at) => to_i64(at, "deadline").map_err(Retry::Fail)?,
            None => i64::MAX,
        };
        // Sessions that were members once are members still (or gone, and
        // then the write fails on their row): no `members` insert.
        write.join = write
            .join
            .map(|join| -> Vec<i64> {
                join.into_iter()
                    .filter(|id| !members.iter().any(|m| session_param(*m) == *id))
                    .collect()
            })
            .filter(|join| !join.is_empty());
        write.expected = Some(version);
        write.share = shared_by(items, &outcomes);
        write.estimated = Some((to_i64(now, "time").map_err(Retry::Fail)?, until));
        let change = Change::from_events(key, &events).map(Arc::new);
        let payload = change
            .as_deref()
            .map(|c| crate::notify::payload(c, self.origin));
        match self.writes.write(write, payload).await {
            Ok((1, write)) => {
                self.known.count(true);
                self.remember(
                    &loaded,
                    write.record,
                    version + 1,
                    (server_now, seen),
                    members,
                );
                Ok(Some(finish(outcomes, change, loaded)))
            }
            Ok(_) => {
                self.known.count(false);
                self.known.forget(key);
                Ok(None)
            }
            Err(e) => {
                self.known.forget(key);
                Err(e)
            }
        }
    }

    /// Pipelines the writes, the notifications, an optional extra statement
    /// (`DELETE` of a closed session) and `COMMIT`. `Ok(false)`: an insert
    /// lost a race (the transaction committed nothing of ours).
    pub(crate) async fn write_many_and_commit(
        &self,
        client: &Client,
        begin: bool,
        writes: &[Write],
        notify: Vec<&Change>,
        delete_session: Option<i64>,
    ) -> Result<bool, Retry> {
        let channel = self.sql.channel.as_str();
        // A change rides on its key's write; any other goes on its own.
        let mut payloads: Vec<(Option<usize>, String)> = Vec::new();
        for change in notify {
            let at = writes.iter().position(|w| w.key == change.key);
            payloads.push((at, crate::notify::payload(change, self.origin)));
        }
        let payload_of = |i: usize| {
            payloads
                .iter()
                .find(|(at, _)| *at == Some(i))
                .map(|(_, p)| p.as_str())
        };
        let loose: Vec<&String> = payloads
            .iter()
            .filter(|(at, _)| at.is_none())
            .map(|(_, p)| p)
            .collect();
        let result = tokio::try_join!(
            async {
                if begin {
                    client.batch_execute("BEGIN").await?;
                }
                Ok(())
            },
            try_join_all(writes.iter().enumerate().map(|(i, w)| self.write(
                client,
                w,
                payload_of(i)
            ))),
            try_join_all(loose.iter().map(|p| {
                let params: Vec<Param> = vec![(&channel, Type::TEXT), (*p, Type::TEXT)];
                pg::query(client, &self.sql.notify, params)
            })),
            async {
                if let Some(id) = delete_session {
                    pg::execute(client, &self.sql.delete_session, vec![(&id, Type::INT8)]).await?;
                }
                Ok(())
            },
            client.batch_execute("COMMIT"),
        );
        match result {
            Ok((_, counts, _, _, _)) => Ok(counts.iter().all(|n| *n == 1)),
            Err(e) if is_retryable(&e) => Err(Retry::Again(db_error(e))),
            Err(e) => Err(Retry::Fail(commit_error(e))),
        }
    }

    /// The `store_key` call: rows written (0: an insert lost a race).
    async fn write(
        &self,
        client: &Client,
        w: &Write,
        notify: Option<&str>,
    ) -> Result<i64, tokio_postgres::Error> {
        store_call(client, &self.sql.store, w, notify).await
    }
}

/// Runs the `store_key` statement `sql` for `w`: rows written (0: an insert
/// lost a race or the version moved; negative: see `store_key`).
pub(crate) async fn store_call(
    client: &Client,
    sql: &str,
    w: &Write,
    notify: Option<&str>,
) -> Result<i64, tokio_postgres::Error> {
    let (ns, name) = (w.key.namespace(), w.key.name());
    let (estimated_now, valid_until) = w.estimated.unzip();
    let params: Vec<Param> = vec![
        (&ns, Type::TEXT),
        (&name, Type::TEXT),
        (&w.insert, Type::BOOL),
        (&w.bytes, Type::BYTEA),
        (&w.live, Type::BOOL),
        (&w.active, Type::INT8_ARRAY),
        (&w.known, Type::INT8_ARRAY),
        (&w.deadline, Type::INT8),
        (&w.last_token, Type::INT8),
        (&w.updated_at, Type::INT8),
        (&notify, Type::TEXT),
        (&w.expected, Type::INT8),
        (&w.share, Type::INT8_ARRAY),
        (&estimated_now, Type::INT8),
        (&valid_until, Type::INT8),
        (&MAX_LAG_MS, Type::INT8),
        (&w.join, Type::INT8_ARRAY),
    ];
    let rows = pg::query(client, sql, params).await?;
    Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0)))
}

/// An array literal (`{1,2}`) for a per-row bigint array of `store_many`.
fn array_literal(ids: &[i64]) -> String {
    let items: Vec<String> = ids.iter().map(i64::to_string).collect();
    format!("{{{}}}", items.join(","))
}

/// Runs the `store_many` statement `sql` for several one-round-trip writes
/// (each with its NOTIFY payload) in one transaction; answers, per write,
/// the rows written (1 or 0). A write that is not a one-round-trip update
/// (no expected version or estimate) is not sent and answered 0.
pub(crate) async fn store_many_call(
    client: &Client,
    sql: &str,
    writes: &[(&Write, Option<&str>)],
) -> Result<Vec<i64>, tokio_postgres::Error> {
    // Only one-round-trip updates are sent; `rows[i].0` is where the
    // statement's ordinal i + 1 answers in `writes`.
    let rows: Vec<(usize, &Write, Option<&str>)> = writes
        .iter()
        .enumerate()
        .filter(|(_, (w, _))| !w.insert && w.expected.is_some() && w.estimated.is_some())
        .map(|(i, (w, n))| (i, *w, *n))
        .collect();
    let mut answers = vec![0; writes.len()];
    if rows.is_empty() {
        return Ok(answers);
    }
    let ns: Vec<&str> = rows.iter().map(|(_, w, _)| w.key.namespace()).collect();
    let name: Vec<&str> = rows.iter().map(|(_, w, _)| w.key.name()).collect();
    let record: Vec<&[u8]> = rows.iter().map(|(_, w, _)| w.bytes.as_slice()).collect();
    let live: Vec<bool> = rows.iter().map(|(_, w, _)| w.live).collect();
    let active: Vec<String> = rows
        .iter()
        .map(|(_, w, _)| array_literal(&w.active))
        .collect();
    let known: Vec<String> = rows
        .iter()
        .map(|(_, w, _)| array_literal(&w.known))
        .collect();
    let deadline: Vec<Option<i64>> = rows.iter().map(|(_, w, _)| w.deadline).collect();
    let last_token: Vec<i64> = rows.iter().map(|(_, w, _)| w.last_token).collect();
    let updated_at: Vec<i64> = rows.iter().map(|(_, w, _)| w.updated_at).collect();
    let notify: Vec<Option<&str>> = rows.iter().map(|(_, _, n)| *n).collect();
    let expected: Vec<Option<i64>> = rows.iter().map(|(_, w, _)| w.expected).collect();
    let share: Vec<Option<String>> = rows
        .iter()
        .map(|(_, w, _)| w.share.as_deref().map(array_literal))
        .collect();
    let est: Vec<Option<i64>> = rows
        .iter()
        .map(|(_, w, _)| w.estimated.map(|e| e.0))
        .collect();
    let upto: Vec<Option<i64>> = rows
        .iter()
        .map(|(_, w, _)| w.estimated.map(|e| e.1))
        .collect();
    let join: Vec<Option<String>> = rows
        .iter()
        .map(|(_, w, _)| w.join.as_deref().map(array_literal))
        .collect();
    let params: Vec<Param> = vec![
        (&ns, Type::TEXT_ARRAY),
        (&name, Type::TEXT_ARRAY),
        (&record, Type::BYTEA_ARRAY),
        (&live, Type::BOOL_ARRAY),
        (&active, Type::TEXT_ARRAY),
        (&known, Type::TEXT_ARRAY),
        (&deadline, Type::INT8_ARRAY),
        (&last_token, Type::INT8_ARRAY),
        (&updated_at, Type::INT8_ARRAY),
        (&notify, Type::TEXT_ARRAY),
        (&expected, Type::INT8_ARRAY),
        (&share, Type::TEXT_ARRAY),
        (&est, Type::INT8_ARRAY),
        (&upto, Type::INT8_ARRAY),
        (&join, Type::TEXT_ARRAY),
        (&MAX_LAG_MS, Type::INT8),
    ];
    for row in pg::query(client, sql, params).await? {
        let ordinal: i64 = row.try_get(0)?;
        let at = usize::try_from(ordinal - 1).ok().and_then(|i| rows.get(i));
        if let Some(&(at, _, _)) = at {
            answers[at] = 1;
        }
    }
    Ok(answers)
}

/// Which locks `load_key` takes before reading.
struct LoadHow {
    /// `FOR KEY SHARE` on these session rows.
    share: Option<Vec<i64>>,
    /// `FOR UPDATE` on the key's row.
    lock: bool,
    /// Count the other keys this session holds or waits for.
    count_for: Option<i64>,
}

impl LoadHow {
    const READ: LoadHow = LoadHow {
        share: None,
        lock: false,
        count_for: None,
    };
}

/// Why a transaction attempt failed.
#[derive(Clone)]
pub(crate) enum Retry {
    /// Nothing was applied and running again may succeed.
    Again(Error),
    /// Give up with this error.
    Fail(Error),
}

/// An error outside any transaction: nothing was applied.
fn classify(e: tokio_postgres::Error) -> Retry {
    if is_retryable(&e) {
        Retry::Again(db_error(e))
    } else {
        Retry::Fail(db_error(e))
    }
}

/// After an error in round trip 1: roll back and classify.
pub(crate) async fn abort(client: Object, e: tokio_postgres::Error) -> Retry {
    rollback(client).await;
    if is_retryable(&e) {
        Retry::Again(db_error(e))
    } else {
        Retry::Fail(db_error(e))
    }
}

/// Ends the transaction; a connection that cannot is dropped, not pooled.
pub(crate) async fn rollback(client: Object) {
    if client.batch_execute("ROLLBACK").await.is_err() {
        drop(Object::take(client));
    }
}

/// The row to write for `loaded` after the command, if anything changed.
pub(crate) fn plan_write(loaded: &Loaded) -> Result<Option<Write>, Error> {
    let record = loaded.view.record();
    if !loaded.existed && record.is_empty() {
        return Ok(None);
    }
    if let Some(before) = &loaded.before {
        if loaded.existed && before.same_state_as(&record) {
            return Ok(None);
        }
    }
    let ids = |v: Vec<SessionId>| v.into_iter().map(session_param).collect::<Vec<i64>>();
    let known = ids(record.sessions());
    let before: Vec<i64> = match (&loaded.before, loaded.existed) {
        (Some(before), true) => ids(before.sessions()),
        _ => Vec::new(),
    };
    let join: Vec<i64> = known
        .iter()
        .copied()
        .filter(|s| !before.contains(s))
        .collect();
    Ok(Some(Write {
        key: loaded.key.clone(),
        insert: !loaded.existed,
        bytes: record
            .to_bytes()
            .map_err(|e| corrupt(format!("encoding: {e}")))?,
        live: record.exists(),
        active: ids(record.active_sessions()),
        known,
        join: (!join.is_empty()).then_some(join),
        deadline: loaded
            .view
            .deadline()
            .map(|d| to_i64(d, "deadline"))
            .transpose()?,
        last_token: to_i64(record.last_token().0, "token")?,
        updated_at: to_i64(loaded.view.now(), "time")?,
        expected: None,
        share: None,
        estimated: None,
        record,
    }))
}

/// The result of a transaction over several keys.
pub(crate) struct Batch {
    pub applied: Vec<Applied>,
    /// Server clock and expiry of the session locked first, if one was.
    pub session: Option<(Millis, Option<Millis>)>,
}

/// A `SELECT … FOR UPDATE` naming the keys a batch works on.
pub(crate) struct Selection<'a> {
    pub sql: &'a str,
    pub param: i64,
}

impl Store {
    /// In one transaction: optionally lock a session row (`FOR UPDATE`),
    /// lock the keys `select` returns, apply `command` to each, write back,
    /// optionally delete the session row, commit. Runs again on a deadlock
    /// or lost insert race. The keys it changed are forgotten in `known`
    /// before the caller wakes anyone (see [`Store::remembered_waiting`]).
    pub async fn apply_selected(
        &self,
        lock_session: Option<SessionId>,
        select: Selection<'_>,
        command: &Command,
        delete_session: bool,
    ) -> Result<Batch, Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .try_apply_selected(lock_session, &select, command, delete_session)
                .await
            {
                Ok(Some(batch)) => {
                    for applied in &batch.applied {
                        self.known.forget(&applied.loaded.key);
                    }
                    return Ok(batch);
                }
                Ok(None) | Err(Retry::Again(_)) if attempt < MAX_ATTEMPTS => continue,
                Ok(None) => return Err(Error::unavailable("lost an insert race too often")),
                Err(Retry::Again(e)) | Err(Retry::Fail(e)) => return Err(e),
            }
        }
    }

    async fn try_apply_selected(
        &self,
        lock_session: Option<SessionId>,
        select: &Selection<'_>,
        command: &Command,
        delete_session: bool,
    ) -> Result<Option<Batch>, Retry> {
        let client = self.client().await.map_err(Retry::Fail)?;
        let sid = lock_session.map(session_param).unwrap_or(0);
        // Round trip 1: BEGIN, the session row, the keys.
        let first = tokio::try_join!(
            client.batch_execute("BEGIN"),
            async {
                if lock_session.is_none() {
                    return Ok(None);
                }
                let rows =
                    pg::query(&client, &self.sql.lock_session, vec![(&sid, Type::INT8)]).await?;
                Ok(Some(rows))
            },
            pg::query(&client, select.sql, vec![(&select.param, Type::INT8)]),
        );
        let (_, session_rows, key_rows) = match first {
            Ok(r) => r,
            Err(e) => return Err(abort(client, e).await),
        };
        let mut keys = Vec::with_capacity(key_rows.len());
        for row in &key_rows {
            let (ns, name): (&str, &str) = (row.get(0), row.get(1));
            match LockKey::new(ns, name) {
                Ok(k) => keys.push(k),
                Err(e) => {
                    rollback(client).await;
                    return Err(Retry::Fail(corrupt(format!("stored key: {e}"))));
                }
            }
        }
        let session = match session_rows {
            Some(rows) => {
                let now_and_expiry = rows
                    .first()
                    .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)));
                Some(now_and_expiry)
            }
            None => None,
        };
        // Round trip 2: load every key.
        let extra: Vec<SessionId> = lock_session.into_iter().collect();
        // The keys are locked already (by `select`).
        let loads = keys
            .iter()
            .map(|k| self.load(&client, k, &extra, LoadHow::READ));
        let rows = match try_join_all(loads).await {
            Ok(rows) => rows,
            Err(e) => return Err(abort(client, e).await),
        };
        let mut applied = Vec::with_capacity(keys.len());
        let mut writes = Vec::new();
        for (key, row) in keys.iter().zip(&rows) {
            let mut loaded = match self.decode_load(key, row.as_ref()) {
                Ok(l) => l,
                Err(e) => {
                    rollback(client).await;
                    return Err(Retry::Fail(e));
                }
            };
            let mut events = Vec::new();
            let outcome = loaded.view.apply(loaded.now, None, command, &mut events);
            match plan_write(&loaded) {
                Ok(Some(w)) => writes.push(w),
                Ok(None) => {}
                Err(e) => {
                    rollback(client).await;
                    return Err(Retry::Fail(e));
                }
            }
            loaded.existed = true;
            applied.push(Applied {
                outcome,
                change: Change::from_events(key, &events).map(Arc::new),
                loaded: Arc::new(loaded),
            });
        }
        let notify: Vec<&Change> = applied.iter().filter_map(|a| a.change.as_deref()).collect();
        // Round trip 3: write, notify, delete the session, commit.
        let delete = delete_session.then_some(sid);
        match self
            .write_many_and_commit(&client, false, &writes, notify, delete)
            .await?
        {
            true => {}
            false => return Ok(None),
        }
        let session = match (lock_session, session) {
            (Some(_), Some(found)) => {
                let now = applied.first().map(|a| a.loaded.now);
                Some(match found {
                    Some((now_db, exp)) => (
                        now.unwrap_or(to_u64(now_db, "clock").map_err(Retry::Fail)?),
                        Some(to_u64(exp, "session expiry").map_err(Retry::Fail)?),
                    ),
                    None => (now.unwrap_or(0), None),
                })
            }
            _ => None,
        };
        Ok(Some(Batch { applied, session }))
    }
}
