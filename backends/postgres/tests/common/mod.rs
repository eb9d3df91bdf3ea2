//! A contended workload against a fenced resource, shared by the fault and
//! concurrency tests.
//!
//! Workers acquire one of a few keys (exclusive), "write" to a fenced
//! resource with their token, and release. The resource is a table on a
//! connection the faults never touch; it rejects a token lower than the
//! highest it has seen, and counts an *overlap* when a holder enters while
//! another has not left (which would mean the lock granted twice).
//! Every command is retried with the same request id on `Unavailable` /
//! `UnknownOutcome`, as a client must.

#![allow(dead_code)]

use deadpool_postgres::{Manager, Pool};
use fencelock::{
    Backend, Command, Error, FencingToken, LockError, LockKey, Mode, RequestId, Response,
    SessionId, WaitEnd, WaitStatus,
};
use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;
use std::time::Duration;
use tokio::time::Instant;
use tokio_postgres::NoTls;

/// The fenced resource: one row per key.
#[derive(Clone)]
pub struct Fenced {
    pool: Pool,
    table: String,
}

/// What the resource saw for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FencedStats {
    pub high: i64,
    pub accepted: i64,
    pub rejected: i64,
    pub overlaps: i64,
}

impl Fenced {
    /// Creates the table `<schema>_fenced.resource` (its own schema, so it is
    /// not a fencelock table) with a row per key.
    pub async fn create(url: &str, schema: &str, keys: &[LockKey]) -> Fenced {
        let url = with_app_name(url, "fenced_resource");
        let mgr = Manager::new(tokio_postgres::Config::from_str(&url).unwrap(), NoTls);
        let pool = Pool::builder(mgr).max_size(4).build().unwrap();
        let table = format!("{schema}_fenced.resource");
        let fenced = Fenced { pool, table };
        let sql = format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}_fenced;
             CREATE TABLE IF NOT EXISTS {t} (key text PRIMARY KEY, high bigint NOT NULL DEFAULT 0,
               holder bigint, accepted bigint NOT NULL DEFAULT 0, rejected bigint NOT NULL DEFAULT 0,
               overlapped bigint NOT NULL DEFAULT 0);",
            t = fenced.table
        );
        fenced
            .retry(|c| {
                let sql = sql.clone();
                async move { c.batch_execute(&sql).await }
            })
            .await;
        for key in keys {
            let (t, k) = (fenced.table.clone(), key.to_string());
            fenced
                .retry(|c| {
                    let (t, k) = (t.clone(), k.clone());
                    async move {
                        c.execute(
                            &format!("INSERT INTO {t} (key) VALUES ($1) ON CONFLICT DO NOTHING"),
                            &[&k],
                        )
                        .await
                        .map(|_| ())
                    }
                })
                .await;
        }
        fenced
    }

    /// Enters the critical section with `token`; false if the token is stale.
    /// Idempotent, so it can be retried after a lost connection.
    pub async fn enter(&self, key: &LockKey, token: FencingToken) -> bool {
        let (t, k, tok) = (self.table.clone(), key.to_string(), token.0 as i64);
        let accepted = self
            .retry(|c| {
                let (t, k) = (t.clone(), k.clone());
                async move {
                    let n = c
                        .execute(
                            &format!(
                                "UPDATE {t} SET high = $2, holder = $2,
                                   overlapped = overlapped + CASE WHEN holder IS NOT NULL AND holder <> $2 THEN 1 ELSE 0 END,
                                   accepted = accepted + CASE WHEN holder = $2 THEN 0 ELSE 1 END
                                 WHERE key = $1 AND high <= $2"
                            ),
                            &[&k, &tok],
                        )
                        .await?;
                    Ok(n == 1)
                }
            })
            .await;
        if !accepted {
            let (t, k) = (self.table.clone(), key.to_string());
            self.retry(|c| {
                let (t, k) = (t.clone(), k.clone());
                async move {
                    c.execute(
                        &format!("UPDATE {t} SET rejected = rejected + 1 WHERE key = $1"),
                        &[&k],
                    )
                    .await
                    .map(|_| ())
                }
            })
            .await;
        }
        accepted
    }

    /// Leaves the critical section (idempotent).
    pub async fn exit(&self, key: &LockKey, token: FencingToken) {
        let (t, k, tok) = (self.table.clone(), key.to_string(), token.0 as i64);
        self.retry(|c| {
            let (t, k) = (t.clone(), k.clone());
            async move {
                c.execute(
                    &format!("UPDATE {t} SET holder = NULL WHERE key = $1 AND holder = $2"),
                    &[&k, &tok],
                )
                .await
                .map(|_| ())
            }
        })
        .await
    }

    pub async fn stats(&self, key: &LockKey) -> FencedStats {
        let (t, k) = (self.table.clone(), key.to_string());
        self.retry(|c| {
            let (t, k) = (t.clone(), k.clone());
            async move {
                let r = c
                    .query_one(
                        &format!(
                            "SELECT high, accepted, rejected, overlapped FROM {t} WHERE key = $1"
                        ),
                        &[&k],
                    )
                    .await?;
                Ok(FencedStats {
                    high: r.get(0),
                    accepted: r.get(1),
                    rejected: r.get(2),
                    overlaps: r.get(3),
                })
            }
        })
        .await
    }

    /// Runs `op` until it succeeds (the server may be restarting), at most 60 s.
    async fn retry<T, F, Fut>(&self, op: F) -> T
    where
        F: Fn(deadpool_postgres::Object) -> Fut,
        Fut: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let give_up = Instant::now() + Duration::from_secs(60);
        loop {
            let err = match self.pool.get().await {
                Ok(c) => match op(c).await {
                    Ok(v) => return v,
                    Err(e) => match e.as_db_error() {
                        // The server going away is expected; a SQL error is a bug.
                        Some(db) if !matches!(&db.code().code()[..2], "57" | "08") => {
                            panic!("fenced resource: {db}")
                        }
                        _ => format!("{e:?}"),
                    },
                },
                Err(e) => e.to_string(),
            };
            assert!(
                Instant::now() < give_up,
                "fenced resource unreachable for 60 s: {err}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Adds `application_name` to a URL, so faults can target one client's connections.
pub fn with_app_name(url: &str, name: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}application_name={name}")
}

/// Runs a command until it is not a retryable error (same request id), at most 60 s.
pub async fn retry<B: Backend + ?Sized>(
    backend: &B,
    command: Command,
    rid: Option<RequestId>,
) -> Result<Response, Error> {
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        match backend.execute(command.clone(), rid).await {
            Err(e) if e.is_retryable() && Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

async fn retry_wait<B: Backend + ?Sized>(
    backend: &B,
    key: &LockKey,
    session: SessionId,
) -> Result<WaitStatus, Error> {
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        match backend.wait(key, session, Duration::from_millis(500)).await {
            Err(e) if e.is_retryable() && Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// What one worker did.
#[derive(Debug, Default, Clone)]
pub struct WorkerLog {
    /// Every grant it received, in order.
    pub grants: Vec<(LockKey, FencingToken)>,
    pub timeouts: u64,
    /// Tokens the resource refused (the hold was lost before use).
    pub stale: u64,
    /// Anything a correct backend never answers here.
    pub anomalies: Vec<String>,
}

/// A small deterministic generator (no `rand` dependency).
pub struct XorShift(pub u64);

impl XorShift {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Acquire, write through the fence, release — until `until`.
pub async fn worker<B: Backend + ?Sized>(
    backend: &B,
    fenced: &Fenced,
    keys: &[LockKey],
    until: Instant,
    seed: u64,
) -> WorkerLog {
    let mut log = WorkerLog::default();
    let mut rng = XorShift(seed | 1);
    let session = match retry(backend, Command::OpenSession { ttl_ms: 30_000 }, None).await {
        Ok(Response::SessionOpened { session, .. }) => session,
        other => {
            log.anomalies.push(format!("open: {other:?}"));
            return log;
        }
    };
    let mut rid = 0u64;
    while Instant::now() < until {
        let key = keys[rng.below(keys.len() as u64) as usize].clone();
        rid += 1;
        let acquire = Command::Acquire {
            key: key.clone(),
            session,
            mode: Mode::Exclusive,
            timeout_ms: Some(3_000),
        };
        let grant = match retry(backend, acquire, Some(RequestId(rid))).await {
            Ok(Response::Granted(g)) => Some(g),
            Ok(Response::Queued { .. }) => loop {
                match retry_wait(backend, &key, session).await {
                    Ok(WaitStatus::Granted(g)) => break Some(g),
                    Ok(WaitStatus::Waiting) => continue,
                    Ok(WaitStatus::Ended(WaitEnd::TimedOut)) => {
                        log.timeouts += 1;
                        break None;
                    }
                    other => {
                        log.anomalies.push(format!("wait for {key}: {other:?}"));
                        break None;
                    }
                }
            },
            Err(Error::Lock(LockError::Timeout { .. })) => {
                log.timeouts += 1;
                None
            }
            other => {
                log.anomalies.push(format!("acquire {key}: {other:?}"));
                None
            }
        };
        let Some(grant) = grant else { continue };
        log.grants.push((key.clone(), grant.token));
        if fenced.enter(&key, grant.token).await {
            tokio::time::sleep(Duration::from_millis(1 + rng.below(3))).await;
            fenced.exit(&key, grant.token).await;
        } else {
            log.stale += 1;
        }
        rid += 1;
        let release = Command::Release {
            key: key.clone(),
            session,
            token: grant.token,
        };
        match retry(backend, release, Some(RequestId(rid))).await {
            Ok(Response::Released) => {}
            other => log.anomalies.push(format!("release {key}: {other:?}")),
        }
    }
    match retry(backend, Command::CloseSession { session }, None).await {
        Ok(Response::SessionClosed) => {}
        other => log.anomalies.push(format!("close: {other:?}")),
    }
    log
}

/// Checks the logs and the resource: no token granted twice, no overlap, no
/// stale write accepted, nothing anomalous, some progress; returns grants per key.
pub async fn check(
    logs: &[WorkerLog],
    fenced: &Fenced,
    keys: &[LockKey],
    min_grants: usize,
) -> BTreeMap<LockKey, usize> {
    let mut seen = HashSet::new();
    let mut per_key = BTreeMap::new();
    for (i, log) in logs.iter().enumerate() {
        assert!(log.anomalies.is_empty(), "worker {i}: {:?}", log.anomalies);
        assert_eq!(
            log.stale, 0,
            "worker {i} held a stale token without losing its session"
        );
        for (key, token) in &log.grants {
            assert!(
                seen.insert((key.clone(), *token)),
                "{key} token {token} granted twice"
            );
            *per_key.entry(key.clone()).or_insert(0) += 1;
        }
        // Each worker's tokens for a key increase (grants are ordered).
        for key in keys {
            let mine: Vec<_> = log
                .grants
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, t)| *t)
                .collect();
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "worker {i}: tokens of {key} not increasing: {mine:?}"
            );
        }
    }
    let total: usize = per_key.values().sum();
    assert!(
        total >= min_grants,
        "only {total} grants (expected at least {min_grants})"
    );
    for key in keys {
        let stats = fenced.stats(key).await;
        assert_eq!(
            stats.overlaps, 0,
            "{key}: two holders in the critical section: {stats:?}"
        );
        assert_eq!(
            stats.rejected, 0,
            "{key}: a stale token reached the resource: {stats:?}"
        );
        assert_eq!(
            stats.accepted as usize,
            per_key.get(key).copied().unwrap_or(0),
            "{key}: {stats:?}"
        );
    }
    per_key
}

/// Runs a read until it is not a retryable error, at most 60 s; panics on others.
pub async fn retry_read<T, F, Fut>(op: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) if e.is_retryable() && Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

/// Opens a session with a TTL of one minute.
pub async fn open<B: Backend>(b: &B) -> SessionId {
    open_for(b, 60_000).await
}

/// Opens a session with a TTL of `ttl_ms`.
pub async fn open_for<B: Backend>(b: &B, ttl_ms: u64) -> SessionId {
    match b.execute(Command::OpenSession { ttl_ms }, None).await {
        Ok(Response::SessionOpened { session, .. }) => session,
        other => panic!("open: {other:?}"),
    }
}

/// An exclusive acquire that does not wait.
pub fn try_acquire(key: &LockKey, session: SessionId) -> Command {
    Command::Acquire {
        key: key.clone(),
        session,
        mode: Mode::Exclusive,
        timeout_ms: Some(0),
    }
}

/// Acquires `key` (which must be free) and returns the token.
pub async fn granted<B: Backend>(b: &B, key: &LockKey, session: SessionId) -> u64 {
    match b.execute(try_acquire(key, session), None).await {
        Ok(Response::Granted(g)) => g.token.0,
        other => panic!("acquire {key}: {other:?}"),
    }
}

/// Releases the hold of `token`.
pub async fn release<B: Backend>(
    b: &B,
    key: &LockKey,
    session: SessionId,
    token: u64,
) -> Result<Response, Error> {
    b.execute(
        Command::Release {
            key: key.clone(),
            session,
            token: FencingToken(token),
        },
        None,
    )
    .await
}
