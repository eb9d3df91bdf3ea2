//! What is particular to the Postgres backend: migrations, configuration
//! errors, an unreachable server, pgbouncer in transaction mode, lost
//! notifications, tombstones and the token floor.

mod common;

use common::open;

use fencelock::{
    Backend, Command, Error, LockError, LockKey, Mode, Response, SessionId, WaitStatus,
};
use fencelock_conformance::{run_case, Case, Config};
use fencelock_postgres::testkit::{
    shared_url, unique_schema, Durability, TempBouncer, TempCluster,
};
use fencelock_postgres::{PgBackend, PgConfig, SCHEMA_VERSION};
use std::time::Duration;
use tokio::time::Instant;
use tokio_postgres::NoTls;

fn acquire(key: &LockKey, session: SessionId, timeout_ms: Option<u64>) -> Command {
    Command::Acquire {
        key: key.clone(),
        session,
        mode: Mode::Exclusive,
        timeout_ms,
    }
}

async fn sql(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_starting_at_once_migrate_once() {
    let url = shared_url();
    let schema = unique_schema("migrate");
    let starts: Vec<_> = (0..8)
        .map(|_| {
            let config = PgConfig::new(url.clone())
                .with_schema(schema.clone())
                .with_pool_size(1);
            tokio::spawn(PgBackend::connect(config))
        })
        .collect();
    for s in starts {
        s.await.unwrap().expect("every concurrent start succeeds");
    }
    let rows = sql(&url)
        .await
        .query(
            &format!("SELECT version FROM {schema}.schema_version ORDER BY version"),
            &[],
        )
        .await
        .unwrap();
    let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        versions,
        (1..=SCHEMA_VERSION).collect::<Vec<_>>(),
        "each migration ran once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused() {
    let url = shared_url();
    let schema = unique_schema("newer");
    PgBackend::connect(PgConfig::new(url.clone()).with_schema(schema.clone()))
        .await
        .unwrap();
    sql(&url)
        .await
        .execute(
            &format!("INSERT INTO {schema}.schema_version (version) VALUES (999)"),
            &[],
        )
        .await
        .unwrap();
    let Err(e) = PgBackend::connect(PgConfig::new(url).with_schema(schema)).await else {
        panic!("a schema from the future was accepted")
    };
    assert!(e.to_string().contains("999"), "{e}");
}

fn invalid_field(r: Result<PgBackend, Error>) -> String {
    match r {
        Err(Error::Lock(LockError::InvalidArgument { field, .. })) => field,
        Err(e) => panic!("expected InvalidArgument, got {e}"),
        Ok(_) => panic!("expected InvalidArgument, got a backend"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_names_the_field() {
    let url = shared_url();
    let field = invalid_field(
        PgBackend::connect(PgConfig::new(url.clone()).with_schema("Locks; DROP")).await,
    );
    assert_eq!(field, "schema");
    let field = invalid_field(PgBackend::connect(PgConfig::new("postgres://x:y@:::bad")).await);
    assert_eq!(field, "url");
    let field =
        invalid_field(PgBackend::connect(PgConfig::new(url.clone()).with_pool_size(0)).await);
    assert_eq!(field, "pool_size");
    let field =
        invalid_field(PgBackend::connect(PgConfig::new(url).with_write_transactions(0)).await);
    assert_eq!(field, "write_transactions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_unavailable_and_recovery_is_transparent() {
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = format!("postgres://postgres@127.0.0.1:{port}/postgres?connect_timeout=2");
    match PgBackend::connect(PgConfig::new(nowhere)).await {
        Err(e @ Error::Unavailable { .. }) => assert!(e.is_retryable()),
        Err(e) => panic!("expected Unavailable, got {e}"),
        Ok(_) => panic!("connected to nothing"),
    }

    let cluster = TempCluster::start(Durability::NoFsync).unwrap();
    let mut config = PgConfig::new(cluster.url()).with_schema("down");
    config.connect_timeout = Duration::from_secs(2);
    let b = PgBackend::connect(config).await.unwrap();
    let key = LockKey::new("down", "k").unwrap();
    let s = open(&b).await;
    let Ok(Response::Granted(g)) = b.execute(acquire(&key, s, Some(0)), None).await else {
        panic!("acquire")
    };
    cluster.stop().unwrap();
    let r = b
        .execute(
            acquire(&LockKey::new("down", "other").unwrap(), s, Some(0)),
            None,
        )
        .await;
    assert!(matches!(r, Err(Error::Unavailable { .. })), "{r:?}");
    let r = b.validate(&key, g.token).await;
    assert!(matches!(r, Err(Error::Unavailable { .. })), "{r:?}");
    cluster.start_again().unwrap();
    // The pool drops its dead connections and the hold is still there.
    let held = common::retry_read(|| b.validate(&key, g.token)).await;
    assert_eq!(held.session, s);
}

/// With LISTEN unreachable, grants still arrive through the timed re-check;
/// with it, a grant made by another process arrives long before the re-check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_notifications_delay_a_grant_by_at_most_the_recheck_interval() {
    let url = shared_url();
    let schema = unique_schema("notify");
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let deaf = PgBackend::connect(
        PgConfig::new(url.clone())
            .with_schema(schema.clone())
            .with_listen_url(format!(
                "postgres://postgres@127.0.0.1:{dead_port}/postgres"
            ))
            .with_recheck_interval(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    let listening = PgBackend::connect(
        PgConfig::new(url.clone())
            .with_schema(schema.clone())
            .with_recheck_interval(Duration::from_secs(30)),
    )
    .await
    .unwrap();
    // The releasing side is another backend (another "process"): no local wake-up.
    let other = PgBackend::connect(PgConfig::new(url).with_schema(schema))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // LISTEN is up.
    for (label, waiter_backend, bound) in [
        ("no LISTEN", &deaf, Duration::from_millis(300 + 1_500)),
        ("LISTEN", &listening, Duration::from_secs(5)),
    ] {
        let key = LockKey::new("notify", label).unwrap();
        let (holder, waiter) = (open(&other).await, open(waiter_backend).await);
        let Ok(Response::Granted(g)) = other.execute(acquire(&key, holder, None), None).await
        else {
            panic!("holder")
        };
        assert!(matches!(
            waiter_backend
                .execute(acquire(&key, waiter, None), None)
                .await,
            Ok(Response::Queued { .. })
        ));
        let wait = {
            let (b, key) = (waiter_backend.clone(), key.clone());
            tokio::spawn(async move { b.wait(&key, waiter, Duration::from_secs(60)).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let released_at = Instant::now();
        other
            .execute(
                Command::Release {
                    key: key.clone(),
                    session: holder,
                    token: g.token,
                },
                None,
            )
            .await
            .unwrap();
        let status = wait.await.unwrap().unwrap();
        let took = released_at.elapsed();
        assert!(
            matches!(status, WaitStatus::Granted(_)),
            "{label}: {status:?}"
        );
        assert!(
            took < bound,
            "{label}: the grant took {took:?} to arrive (bound {bound:?})"
        );
        eprintln!("{label}: grant arrived {took:?} after the release");
    }
}

/// A waiter goes to sleep without reading its row when its process
/// remembers it waiting; a grant made by another process meanwhile must
/// still be seen at once (the notification makes the process forget the
/// key), not after the re-check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_made_elsewhere_is_seen_by_a_waiter_its_process_remembers_waiting() {
    let url = shared_url();
    let schema = unique_schema("remembered_wait");
    let waiting_side = PgBackend::connect(
        PgConfig::new(url.clone())
            .with_schema(schema.clone())
            .with_recheck_interval(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    let other = PgBackend::connect(PgConfig::new(url).with_schema(schema))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // LISTEN is up.
    let key = LockKey::new("notify", "remembered").unwrap();
    let (holder, waiter) = (open(&other).await, open(&waiting_side).await);
    let Ok(Response::Granted(g)) = other.execute(acquire(&key, holder, None), None).await else {
        panic!("holder")
    };
    assert!(matches!(
        waiting_side
            .execute(acquire(&key, waiter, None), None)
            .await,
        Ok(Response::Queued { .. })
    ));
    // Granted before the waiter even starts waiting.
    other
        .execute(
            Command::Release {
                key: key.clone(),
                session: holder,
                token: g.token,
            },
            None,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let status = waiting_side
        .wait(&key, waiter, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        matches!(status, WaitStatus::Granted(ref h) if h.token > g.token),
        "{status:?}"
    );
    // (A waiter that slept on the stale memory would wake only when its
    // wait runs out and it reads the row a last time.)
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the waiter slept on what its process remembered: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purged_tombstones_leave_a_token_floor() {
    let url = shared_url();
    let schema = unique_schema("tombstone");
    let mut config = PgConfig::new(url.clone()).with_schema(schema.clone());
    config.tombstone_ttl = Duration::ZERO;
    let b = PgBackend::connect(config).await.unwrap();
    let key = LockKey::new("tomb", "k").unwrap();
    let s = open(&b).await;
    let mut last = 0;
    for _ in 0..3 {
        let Ok(Response::Granted(g)) = b.execute(acquire(&key, s, Some(0)), None).await else {
            panic!("acquire")
        };
        assert!(g.token.0 > last);
        last = g.token.0;
        b.execute(Command::Destroy { key: key.clone() }, None)
            .await
            .unwrap();
        let (_, tombstones) = b.purge().await.unwrap();
        assert!(tombstones >= 1, "the tombstone was purged");
        let rows = sql(&url)
            .await
            .query(&format!("SELECT 1 FROM {schema}.locks"), &[])
            .await
            .unwrap();
        assert!(rows.is_empty(), "no row is left for the destroyed key");
    }
}

/// Through pgbouncer in transaction mode with two server connections, every
/// transaction may land on another server connection: the conformance cases
/// that exercise waiting, steal, expiry and retries still pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_through_pgbouncer_in_transaction_mode() {
    let cluster = TempCluster::start(Durability::NoFsync).unwrap();
    let bouncer = TempBouncer::start(cluster.port(), 2).expect("start pgbouncer");
    let unit = Duration::from_millis(100);
    let config = Config::with_unit(unit);
    for case in [
        Case::Fifo,
        Case::ReaderBatches,
        Case::StealBumpsFence,
        Case::LeaseExpiryGrantsNext,
        Case::SessionExpiryReleasesAll,
        Case::IdempotentRetry,
        Case::Randomized,
    ] {
        let (pooled, direct) = (bouncer.url(), cluster.url());
        run_case(case, &config, move |limits| {
            let config = PgConfig::new(pooled.clone())
                .with_listen_url(direct.clone())
                .with_schema(format!("bouncer_{}", case.name()))
                .with_limits(limits)
                .with_pool_size(8);
            async move { PgBackend::connect(config).await }
        })
        .await
        .unwrap_or_else(|f| panic!("through pgbouncer: {f}"));
    }
}

/// Session-less commands with a request id are applied once: a retried open
/// returns the first session, a retried force release does not free the
/// next holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_session_less_requests_are_applied_once() {
    let b =
        PgBackend::connect(PgConfig::new(shared_url()).with_schema(unique_schema("sessionless")))
            .await
            .unwrap();
    let rid = fencelock::RequestId(0xfeed_f00d_dead_beef);
    let open_cmd = Command::OpenSession { ttl_ms: 60_000 };
    let first = b.execute(open_cmd.clone(), Some(rid)).await;
    assert!(
        matches!(first, Ok(Response::SessionOpened { .. })),
        "{first:?}"
    );
    assert_eq!(
        b.execute(open_cmd.clone(), Some(rid)).await,
        first,
        "a retry answers the first session"
    );
    let other = b
        .execute(Command::OpenSession { ttl_ms: 5_000 }, Some(rid))
        .await;
    assert!(
        matches!(&other, Err(Error::Lock(LockError::InvalidArgument { field, .. })) if field == "request_id"),
        "{other:?}"
    );
    assert_ne!(
        b.execute(open_cmd, None).await,
        first,
        "without an id, a new session"
    );

    let key = LockKey::new("sessionless", "k").unwrap();
    let (a, c) = (open(&b).await, open(&b).await);
    let Ok(Response::Granted(_)) = b.execute(acquire(&key, a, Some(0)), None).await else {
        panic!("a")
    };
    let force = Command::ForceRelease { key: key.clone() };
    let rid = fencelock::RequestId(42);
    let first = b.execute(force.clone(), Some(rid)).await;
    assert_eq!(first, Ok(Response::ForceReleased { holds: 1 }));
    let Ok(Response::Granted(g)) = b.execute(acquire(&key, c, Some(0)), None).await else {
        panic!("c")
    };
    assert_eq!(
        b.execute(force, Some(rid)).await,
        first,
        "the retry answers the first result"
    );
    b.validate(&key, g.token)
        .await
        .expect("the next holder keeps the lock");
}

/// A database written by version 1 (keys found through a GIN index on the
/// holders) upgrades in place: its holders become `members`, so closing or
/// describing a session still finds its keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_database_upgrades_with_its_holders() {
    use fencelock_core::{KeyView, Limits, SessionRecord};
    let url = shared_url();
    let schema = unique_schema("upgrade");
    fencelock_postgres::testkit::migrate_to(&url, &schema, 1)
        .await
        .unwrap();
    let db = sql(&url).await;
    let now: i64 = db
        .query_one(
            "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let session = SessionId(4242);
    db.execute(
        &format!("INSERT INTO {schema}.sessions VALUES (4242, 60000, $1)"),
        &[&(now + 60_000)],
    )
    .await
    .unwrap();
    // The row a version-1 process wrote for a lock session 4242 holds.
    let key = LockKey::new("upgrade", "k").unwrap();
    let row = SessionRecord {
        id: session,
        ttl_ms: 60_000,
        expires_at: (now + 60_000) as u64,
    };
    let mut view = KeyView::load(Limits::default(), key.clone(), None, &[row], 0);
    let granted = view.apply(
        now as u64,
        None,
        &acquire(&key, session, Some(0)),
        &mut Vec::new(),
    );
    assert!(matches!(granted, Ok(Response::Granted(_))), "{granted:?}");
    let record = view.record();
    let bytes = record.to_bytes().unwrap();
    let ids: Vec<i64> = vec![4242];
    db.execute(
        &format!(
            "SELECT {schema}.store_key('upgrade', 'k', true, $1, true, $2, $2, NULL, $3, $4, \
             NULL, NULL, NULL)"
        ),
        &[&bytes, &ids, &(record.last_token().0 as i64), &now],
    )
    .await
    .unwrap();
    // Upgrade by starting the current version.
    let b = PgBackend::connect(PgConfig::new(url.clone()).with_schema(schema.clone()))
        .await
        .unwrap();
    let info = b.describe_session(session).await.unwrap().expect("session");
    assert_eq!(info.holds.len(), 1, "{info:?}");
    b.execute(Command::CloseSession { session }, None)
        .await
        .unwrap();
    let lock = b.describe(&key).await.unwrap().expect("lock");
    assert!(lock.holders.is_empty(), "{lock:?}");
    let left: i64 = db
        .query_one(&format!("SELECT count(*) FROM {schema}.members"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "a closed session leaves no members behind");
}
