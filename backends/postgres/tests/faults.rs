//! Fault tests against a real server, each checked with a fenced resource:
//! connections of waiting and holding clients terminated mid-run, the server
//! restarted mid-run, and two OS processes on the same database. Nothing is
//! granted twice, no stale token reaches the resource, no state is lost, and
//! every waiter ends granted or timed out (no worker hangs).

mod common;

use common::{check, with_app_name, worker, Fenced, WorkerLog};
use fencelock::{Backend, Command, LockKey, Mode, Response};
use fencelock_postgres::testkit::{shared_url, unique_schema, Durability, TempCluster, URL_ENV};
use fencelock_postgres::{PgBackend, PgConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_postgres::NoTls;

fn keys(label: &str) -> Vec<LockKey> {
    vec![
        LockKey::new(label, "a").unwrap(),
        LockKey::new(label, "b").unwrap(),
    ]
}

async fn run_workers(
    backend: &PgBackend,
    fenced: &Fenced,
    keys: &[LockKey],
    n: u64,
    run_for: Duration,
) -> Vec<WorkerLog> {
    let until = Instant::now() + run_for;
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (b, f, k) = (backend.clone(), fenced.clone(), keys.to_vec());
            tokio::spawn(async move { worker(&b, &f, &k, until, 0x9e37_79b9 * (i + 1)).await })
        })
        .collect();
    // Every acquire waits at most 3 s: a worker still running long after
    // `until` has a waiter that neither got the lock nor timed out.
    let all = futures_util::future::join_all(handles);
    let logs = tokio::time::timeout(run_for + Duration::from_secs(40), all)
        .await
        .expect("a worker hung: some waiter was neither granted nor timed out");
    logs.into_iter()
        .map(|r| r.expect("worker panicked"))
        .collect()
}

async fn assert_idle(backend: &PgBackend, keys: &[LockKey]) {
    for key in keys {
        let info = backend
            .describe(key)
            .await
            .unwrap()
            .expect("the key exists");
        assert!(
            info.holders.is_empty() && info.waiters.is_empty(),
            "state left behind: {info:?}"
        );
    }
}

async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&with_app_name(url, "fencelock_chaos"), NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_connections_of_waiting_and_holding_clients() {
    let url = shared_url();
    let schema = unique_schema("terminate");
    let victim = format!("victim_{schema}");
    let config = PgConfig::new(with_app_name(&url, &victim))
        .with_schema(schema.clone())
        .with_pool_size(6);
    let backend = PgBackend::connect(config).await.unwrap();
    let keys = keys("terminate");
    let fenced = Fenced::create(&url, &schema, &keys).await;
    let run_for = Duration::from_secs(4);
    let chaos = {
        let url = url.clone();
        tokio::spawn(async move {
            let admin = admin(&url).await;
            let stop = Instant::now() + run_for;
            let mut killed = 0u64;
            let mut round = 0u64;
            while Instant::now() < stop {
                round += 1;
                // Mostly connections inside a transaction (holding a row lock
                // or waiting for one); now and then any, the LISTEN one included.
                let filter = if round % 3 == 0 {
                    "true"
                } else {
                    "state <> 'idle'"
                };
                let sql = format!(
                    "SELECT count(pg_terminate_backend(pid)) FROM (SELECT pid FROM pg_stat_activity \
                     WHERE application_name = $1 AND {filter} ORDER BY random() LIMIT 1) v"
                );
                if let Ok(row) = admin.query_one(&sql, &[&victim]).await {
                    killed += row.get::<_, i64>(0) as u64;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            killed
        })
    };
    let logs = run_workers(&backend, &fenced, &keys, 8, run_for).await;
    let killed = chaos.await.unwrap();
    for l in &logs {
        eprintln!(
            "grants {} timeouts {} anomalies {}",
            l.grants.len(),
            l.timeouts,
            l.anomalies.len()
        );
    }
    assert!(
        killed >= 10,
        "the fault injector killed only {killed} connections"
    );
    let per_key = check(&logs, &fenced, &keys, 20).await;
    assert_idle(&backend, &keys).await;
    eprintln!("terminate: {killed} connections killed, grants per key {per_key:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_server_mid_run() {
    let cluster = Arc::new(TempCluster::start(Durability::NoFsync).expect("start a cluster"));
    let url = cluster.url();
    let schema = unique_schema("restart");
    let config = PgConfig::new(url.clone())
        .with_schema(schema.clone())
        .with_pool_size(6);
    let backend = PgBackend::connect(config).await.unwrap();
    let keys = keys("restart");
    let fenced = Fenced::create(&url, &schema, &keys).await;
    // A hold from before the restarts must survive them.
    let witness_key = LockKey::new("restart", "witness").unwrap();
    let Ok(Response::SessionOpened {
        session: witness, ..
    }) = backend
        .execute(Command::OpenSession { ttl_ms: 60_000 }, None)
        .await
    else {
        panic!("open")
    };
    let acquire = Command::Acquire {
        key: witness_key.clone(),
        session: witness,
        mode: Mode::Exclusive,
        timeout_ms: Some(0),
    };
    let Ok(Response::Granted(held)) = backend.execute(acquire, None).await else {
        panic!("witness acquire")
    };

    let run_for = Duration::from_secs(6);
    let chaos = {
        let cluster = cluster.clone();
        tokio::spawn(async move {
            for _ in 0..2 {
                tokio::time::sleep(Duration::from_millis(1_500)).await;
                let c = cluster.clone();
                tokio::task::spawn_blocking(move || c.restart())
                    .await
                    .unwrap()
                    .expect("restart");
            }
        })
    };
    let logs = run_workers(&backend, &fenced, &keys, 8, run_for).await;
    chaos.await.unwrap();
    let per_key = check(&logs, &fenced, &keys, 20).await;
    assert_idle(&backend, &keys).await;

    let info = common::retry_read(|| backend.describe(&witness_key))
        .await
        .expect("witness lock");
    assert_eq!(info.holders.len(), 1, "{info:?}");
    assert_eq!(
        (info.holders[0].session, info.holders[0].token),
        (witness, held.token),
        "the hold survived"
    );
    backend
        .validate(&witness_key, held.token)
        .await
        .expect("still valid");
    // Tokens keep increasing across restarts: a thief gets a higher one.
    let thief = match backend
        .execute(Command::OpenSession { ttl_ms: 60_000 }, None)
        .await
    {
        Ok(Response::SessionOpened { session, .. }) => session,
        other => panic!("open: {other:?}"),
    };
    let stolen = backend
        .execute(
            Command::Steal {
                key: witness_key.clone(),
                session: thief,
            },
            None,
        )
        .await;
    assert!(
        matches!(stolen, Ok(Response::Granted(g)) if g.token > held.token),
        "{stolen:?}"
    );
    eprintln!("restart: grants per key {per_key:?}");
}

const CHILD_ENV: &str = "FENCELOCK_TEST_CHILD_SCHEMA";

/// Entry point of the child processes of `two_processes_on_one_database`:
/// does nothing unless started by it (with the environment it sets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process_entry() {
    let Ok(schema) = std::env::var(CHILD_ENV) else {
        return;
    };
    let seed: u64 = std::env::var("FENCELOCK_TEST_CHILD_SEED")
        .unwrap()
        .parse()
        .unwrap();
    let url = shared_url();
    let backend = PgBackend::connect(
        PgConfig::new(url.clone())
            .with_schema(schema.clone())
            .with_pool_size(4),
    )
    .await
    .expect("child connect (and migrate at the same time as the other child)");
    let keys = keys("twoproc");
    let fenced = Fenced::create(&url, &schema, &keys).await;
    let until = Instant::now() + Duration::from_secs(4);
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let (b, f, k) = (backend.clone(), fenced.clone(), keys.clone());
            tokio::spawn(async move { worker(&b, &f, &k, until, seed * 1000 + i + 1).await })
        })
        .collect();
    for h in handles {
        let log = h.await.unwrap();
        for (key, token) in &log.grants {
            println!("FENCELOCK-LOG grant {} {}", key.name(), token.0);
        }
        println!(
            "FENCELOCK-LOG stale {} timeouts {}",
            log.stale, log.timeouts
        );
        for a in &log.anomalies {
            println!("FENCELOCK-LOG anomaly {a}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_database() {
    let url = shared_url();
    let schema = unique_schema("twoproc");
    let keys = keys("twoproc");
    // The children attach to this table; the fencelock schema they create
    // themselves, both at once.
    let fenced = Fenced::create(&url, &schema, &keys).await;
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (1..=2)
        .map(|seed| {
            tokio::process::Command::new(&exe)
                .args([
                    "--exact",
                    "child_process_entry",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, &schema)
                .env("FENCELOCK_TEST_CHILD_SEED", seed.to_string())
                .env(URL_ENV, &url)
                .kill_on_drop(true)
                .output()
        })
        .collect();
    let outputs = tokio::time::timeout(
        Duration::from_secs(90),
        futures_util::future::join_all(children),
    )
    .await
    .expect("a child process hung");
    let mut logs = Vec::new();
    for out in outputs {
        let out = out.expect("run child");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut log = WorkerLog::default();
        // The harness prints "test … " without a newline before the test's
        // own output, so a marker can start mid-line.
        let marker = "FENCELOCK-LOG ";
        let lines = text
            .lines()
            .filter_map(|l| l.find(marker).map(|at| &l[at + marker.len()..]));
        for line in lines {
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.as_slice() {
                ["grant", name, token] => log.grants.push((
                    LockKey::new("twoproc", name).unwrap(),
                    fencelock::FencingToken(token.parse().unwrap()),
                )),
                ["stale", n, "timeouts", _] => log.stale += n.parse::<u64>().unwrap(),
                _ => log.anomalies.push(line.to_string()),
            }
        }
        // Grants of different workers of one child are interleaved in `log`:
        // per-worker order is checked inside the child's own tokens only.
        log.grants.sort_by_key(|(k, t)| (k.clone(), *t));
        logs.push(log);
    }
    assert!(
        logs.iter().all(|l| !l.grants.is_empty()),
        "both processes got grants"
    );
    let per_key = check(&logs, &fenced, &keys, 20).await;
    eprintln!("two processes: grants per key {per_key:?}");
}
