//! One round trip from remembered state (`known.rs`): used when the key is
//! as remembered, and never deciding on stale state — another process's
//! write, a closed session, a lease that ran out, or a clock outside the
//! bounds the server checks.

mod common;

use common::{granted, open, open_for, release, try_acquire as acquire};
use fencelock::{Backend, Command, Error, LockError, LockKey, LockKind, Mode, Response};
use fencelock_postgres::testkit::{shared_url, unique_schema};
use fencelock_postgres::{PgBackend, PgConfig};
use std::time::Duration;
use tokio_postgres::NoTls;

async fn backend(url: &str, schema: &str) -> PgBackend {
    PgBackend::connect(PgConfig::new(url).with_schema(schema))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_used_again_by_one_process_costs_one_round_trip() {
    let url = shared_url();
    let schema = unique_schema("known_hit");
    let b = backend(&url, &schema).await;
    let s = open(&b).await;
    let key = LockKey::new("known", "k").unwrap();
    let mut last = 0;
    for _ in 0..5 {
        let token = granted(&b, &key, s).await;
        assert!(token > last);
        last = token;
        release(&b, &key, s, token).await.unwrap();
    }
    // The first acquire created the key the ordinary way; every later
    // command found it as this process had left it.
    // (A stall of over 50 ms between the server's clock and this process —
    // heavy load — sends a command the ordinary way; allow two.)
    let stats = b.stats();
    assert_eq!(stats.one_round_trip + stats.stale, 9, "{stats:?}");
    assert!(stats.one_round_trip >= 7, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_write_is_never_overlooked() {
    let url = shared_url();
    let schema = unique_schema("known_stale");
    let (a, b) = (backend(&url, &schema).await, backend(&url, &schema).await);
    let (sa, sb) = (open(&a).await, open(&b).await);
    let key = LockKey::new("known", "k").unwrap();
    let t1 = granted(&a, &key, sa).await;
    release(&a, &key, sa, t1).await.unwrap();
    // `a` remembers the key free; `b` takes it.
    let t2 = granted(&b, &key, sb).await;
    assert!(t2 > t1);
    match a.execute(acquire(&key, sa), None).await {
        Err(Error::Lock(LockError::WouldBlock { .. })) => {}
        other => panic!("a stale memory granted a held lock: {other:?}"),
    }
    assert!(a.stats().stale >= 1, "{:?}", a.stats());
    release(&b, &key, sb, t2).await.unwrap();
    let t3 = granted(&a, &key, sa).await;
    assert!(t3 > t2, "tokens keep rising: {t3} after {t2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_closed_elsewhere_cannot_acquire_from_memory() {
    let url = shared_url();
    let schema = unique_schema("known_closed");
    let (a, b) = (backend(&url, &schema).await, backend(&url, &schema).await);
    let s = open(&a).await;
    let key = LockKey::new("known", "k").unwrap();
    let t = granted(&a, &key, s).await;
    release(&a, &key, s, t).await.unwrap();
    b.execute(Command::CloseSession { session: s }, None)
        .await
        .unwrap();
    match a.execute(acquire(&key, s), None).await {
        Err(Error::Lock(LockError::SessionNotFound { .. })) => {}
        other => panic!("a closed session acquired: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_ran_out_is_not_released_from_memory() {
    let url = shared_url();
    let schema = unique_schema("known_lease");
    let a = backend(&url, &schema).await;
    let s = open(&a).await;
    let key = LockKey::new("known", "leased").unwrap();
    a.execute(
        Command::CreateLock {
            key: key.clone(),
            kind: LockKind::Exclusive,
            ttl_ms: Some(150),
        },
        None,
    )
    .await
    .unwrap();
    let t = granted(&a, &key, s).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    match release(&a, &key, s, t).await {
        Err(Error::Lock(LockError::Expired { .. })) => {}
        other => panic!("released a lease that had run out: {other:?}"),
    }
}

/// The server refuses a write whose estimated time is ahead of its clock,
/// too far behind it, or not before the first instant the result depends on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_checks_an_estimated_time() {
    let url = shared_url();
    let schema = unique_schema("known_clock");
    let a = backend(&url, &schema).await;
    let s = open(&a).await;
    let key = LockKey::new("known", "k").unwrap();
    let t = granted(&a, &key, s).await;
    release(&a, &key, s, t).await.unwrap();
    let (sql, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(conn);
    let row = sql
        .query_one(
            &format!(
                "SELECT record, version, floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint \
                 FROM {schema}.locks WHERE namespace = 'known' AND name = 'k'"
            ),
            &[],
        )
        .await
        .unwrap();
    let (record, version, now): (Vec<u8>, i64, i64) = (row.get(0), row.get(1), row.get(2));
    let store = |p_now: i64, p_until: i64| {
        let (sql, schema, record) = (&sql, &schema, record.clone());
        async move {
            let row = sql
                .query_one(
                    &format!(
                        "SELECT {schema}.store_key('known', 'k', false, $1, true, '{{}}', '{{}}', \
                         NULL, 1, $2, NULL, $3, NULL, $2, $4, 25, NULL)"
                    ),
                    &[&record, &p_now, &version, &p_until],
                )
                .await
                .unwrap();
            row.get::<_, i64>(0)
        }
    };
    assert_eq!(
        store(now + 60_000, i64::MAX).await,
        -2,
        "estimate ahead of the server"
    );
    assert_eq!(
        store(now - 60_000, i64::MAX).await,
        -2,
        "estimate far behind"
    );
    assert_eq!(store(now, now).await, -2, "an expiry passed in between");
    let after = sql
        .query_one(
            &format!("SELECT version FROM {schema}.locks WHERE namespace = 'known' AND name = 'k'"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(after.get::<_, i64>(0), version, "nothing was written");
    // Within bounds, the write goes through.
    let now: i64 = sql
        .query_one(
            "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(store(now, i64::MAX).await, 1);
}

/// Clients of one process contending for a key share transactions, each
/// command still getting its own answer; dropping callers mid-flight
/// strands nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_contending_for_a_key_shares_commits() {
    let url = shared_url();
    let schema = unique_schema("combine");
    let b = backend(&url, &schema).await;
    let key = LockKey::new("known", "hot").unwrap();
    let mut tasks = Vec::new();
    for i in 0..12 {
        let (b, key) = (b.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let s = open(&b).await;
            let mut tokens = Vec::new();
            for round in 0..6 {
                let blocking = Command::Acquire {
                    key: key.clone(),
                    session: s,
                    mode: Mode::Exclusive,
                    timeout_ms: Some(20_000),
                };
                if (i + round) % 4 == 0 {
                    // A caller that gives up at once (its own session): its
                    // command may or may not run; closing the session ends
                    // whatever it did. Nobody else may be stranded by it.
                    let quitter = open(&b).await;
                    let command = Command::Acquire {
                        key: key.clone(),
                        session: quitter,
                        mode: Mode::Exclusive,
                        timeout_ms: Some(20_000),
                    };
                    let _ =
                        tokio::time::timeout(Duration::from_micros(50), b.execute(command, None))
                            .await;
                    b.execute(Command::CloseSession { session: quitter }, None)
                        .await
                        .unwrap();
                    continue;
                }
                let token = match b.execute(blocking, None).await.unwrap() {
                    Response::Granted(g) => g.token.0,
                    Response::Queued { .. } => loop {
                        match b.wait(&key, s, Duration::from_secs(20)).await.unwrap() {
                            fencelock::WaitStatus::Granted(g) => break g.token.0,
                            fencelock::WaitStatus::Waiting => continue,
                            other => panic!("wait ended: {other:?}"),
                        }
                    },
                    other => panic!("acquire: {other:?}"),
                };
                tokens.push(token);
                release(&b, &key, s, token).await.unwrap();
            }
            tokens
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("no task hangs")
                .unwrap(),
        );
    }
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "every grant has its own token");
    assert!(b.stats().combined > 0, "{:?}", b.stats());
    let info = b.describe(&key).await.unwrap().expect("the lock exists");
    assert!(
        info.holders.is_empty() && info.waiters.is_empty(),
        "{info:?}"
    );
}

/// A remembered session expiry only gets older (keep-alives extend the row):
/// once it has passed, the command must not expire the session from memory
/// but ask the database, which knows it was kept alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_session_is_not_expired_from_memory() {
    let url = shared_url();
    let schema = unique_schema("known_alive");
    let a = backend(&url, &schema).await;
    let s = open_for(&a, 400).await;
    let key = LockKey::new("known", "alive").unwrap();
    let token = granted(&a, &key, s).await;
    // Remembered: the session's expiry as of the acquire. Keep it alive past that.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        a.execute(Command::KeepAlive { session: s }, None)
            .await
            .unwrap();
    }
    match release(&a, &key, s, token).await {
        Ok(Response::Released) => {}
        other => panic!("a live session's hold was judged from a stale expiry: {other:?}"),
    }
}

/// A hold taken in one round trip — without adding the session's `members`
/// row again, since it was there — is still found when the session closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_taken_from_memory_is_released_when_its_session_closes() {
    let url = shared_url();
    let schema = unique_schema("known_members");
    let (a, b) = (backend(&url, &schema).await, backend(&url, &schema).await);
    let (s, other) = (open(&a).await, open(&a).await);
    let key = LockKey::new("known", "members").unwrap();
    let t = granted(&a, &key, s).await;
    release(&a, &key, s, t).await.unwrap();
    let before = a.stats();
    granted(&a, &key, s).await;
    assert!(
        a.stats().one_round_trip > before.one_round_trip,
        "{:?}",
        a.stats()
    );
    b.execute(Command::CloseSession { session: s }, None)
        .await
        .unwrap();
    let info = b.describe(&key).await.unwrap().unwrap();
    assert!(
        info.holders.is_empty(),
        "closing the session left its hold: {info:?}"
    );
    granted(&a, &key, other).await;
}
