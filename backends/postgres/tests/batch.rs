//! One-round-trip writes of different keys share a statement (`batch.rs`):
//! each write keeps its own answer, and one that is stale (another
//! process's write, a closed session, a clock out of bounds) spoils none of
//! the others.

mod common;

use common::{granted as token_of, open, release, try_acquire as acquire};
use fencelock::{Backend, Command, Error, LockError, LockKey, Response, SessionId};
use fencelock_postgres::testkit::{shared_url, unique_schema};
use fencelock_postgres::{PgBackend, PgConfig};
use std::time::Duration;
use tokio_postgres::{AsyncMessage, NoTls};

/// Acquires every key with its session at once; the answers in key order.
async fn acquire_all(
    b: &PgBackend,
    keys: &[LockKey],
    sessions: &[SessionId],
) -> Vec<Result<Response, Error>> {
    let tasks: Vec<_> = keys
        .iter()
        .zip(sessions)
        .map(|(key, s)| {
            let (b, key, s) = (b.clone(), key.clone(), *s);
            tokio::spawn(async move { b.execute(acquire(&key, s), None).await })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_write_spoils_none_of_the_writes_it_shares_a_statement_with() {
    let url = shared_url();
    let schema = unique_schema("batch_mixed");
    // One write transaction in flight: writes arriving meanwhile share the next.
    let a = PgBackend::connect(
        PgConfig::new(&url)
            .with_schema(&schema)
            .with_write_transactions(1),
    )
    .await
    .unwrap();
    let b = PgBackend::connect(PgConfig::new(&url).with_schema(&schema))
        .await
        .unwrap();
    let keys: Vec<LockKey> = (0..12)
        .map(|i| LockKey::new("batch", &format!("k{i}")).unwrap())
        .collect();
    let mut sessions = Vec::new();
    for _ in &keys {
        sessions.push(open(&a).await);
    }
    let (taken, closed) = (3, 5);
    let other = open(&b).await;
    // Tokens rise per key.
    let mut last = vec![0_u64; keys.len()];
    // Ordinary rounds until one shared statements (at least three, at most
    // 19), then a last round that also closes a session behind `a`'s back.
    let mut batched_seen = false;
    for rounds in 1.. {
        // `a` remembers every key free.
        for (key, s) in keys.iter().zip(&sessions) {
            let t = token_of(&a, key, *s).await;
            release(&a, key, *s, t).await.unwrap();
        }
        let before = a.stats();
        // Behind `a`'s back: `b` takes one key (and in the last round closes
        // one of `a`'s sessions).
        let t_other = token_of(&b, &keys[taken], other).await;
        let last_round = batched_seen || rounds == 20;
        if last_round {
            b.execute(
                Command::CloseSession {
                    session: sessions[closed],
                },
                None,
            )
            .await
            .unwrap();
        }
        let answers = acquire_all(&a, &keys, &sessions).await;
        let acquired = a.stats();
        for (i, answer) in answers.iter().enumerate() {
            match answer {
                Err(Error::Lock(LockError::WouldBlock { .. })) if i == taken => {}
                Err(Error::Lock(LockError::SessionNotFound { .. }))
                    if i == closed && last_round => {}
                Ok(Response::Granted(g)) if i != taken && !(i == closed && last_round) => {
                    assert!(
                        g.token.0 > last[i],
                        "key {i}: token {} after {}",
                        g.token.0,
                        last[i]
                    );
                    last[i] = g.token.0;
                    release(&a, &keys[i], sessions[i], g.token.0).await.unwrap();
                }
                other => panic!("round {rounds}, key {i}: {other:?}"),
            }
        }
        release(&b, &keys[taken], other, t_other).await.unwrap();
        let after = a.stats();
        if last_round {
            // The writes really shared statements, and the stale ones were
            // found stale (not overlooked).
            assert!(after.batched > 0, "{after:?}");
            assert!(after.stale > before.stale, "{before:?} -> {after:?}");
            // ... and did not take the current writes down with them: those
            // were made from memory (two spare for a stalled clock).
            let from_memory = acquired.one_round_trip - before.one_round_trip;
            assert!(
                from_memory + 2 >= keys.len() as u64 - 2,
                "only {from_memory} of {} current writes were made from memory",
                keys.len() - 2
            );
            break;
        }
        batched_seen = rounds >= 3 && after.batched > before.batched;
    }
    // `b`, which remembers nothing of these keys, sees them all free.
    for key in &keys {
        let info = b.describe(key).await.unwrap().unwrap();
        assert!(info.holders.is_empty(), "{key}: {info:?}");
    }
}

/// `store_many` itself: of four writes — one current, one at an old
/// version, one share-locking a session that is gone, one with an estimate
/// ahead of the server clock — only the first is made, with its `members`
/// rows and its NOTIFY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_many_makes_only_the_writes_that_are_current() {
    let url = shared_url();
    let schema = unique_schema("batch_sql");
    let a = PgBackend::connect(PgConfig::new(&url).with_schema(&schema))
        .await
        .unwrap();
    let s = open(&a).await;
    let newcomer = open(&a).await.0 as i64;
    let keys: Vec<LockKey> = (0..4)
        .map(|i| LockKey::new("batch", &format!("k{i}")).unwrap())
        .collect();
    for key in &keys {
        let t = token_of(&a, key, s).await;
        release(&a, key, s, t).await.unwrap();
    }
    let (sql, mut conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    let (tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        use futures_util::StreamExt;
        while let Some(Ok(m)) = messages.next().await {
            if let AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    sql.batch_execute(&format!("LISTEN fencelock_{schema}"))
        .await
        .unwrap();
    let row = sql
        .query_one(
            &format!(
                "SELECT array_agg(version ORDER BY name), array_agg(record ORDER BY name), \
                 floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint FROM {schema}.locks"
            ),
            &[],
        )
        .await
        .unwrap();
    let (versions, records, now): (Vec<i64>, Vec<Vec<u8>>, i64) =
        (row.get(0), row.get(1), row.get(2));
    let gone = 1_000_000_007_i64;
    let s_id = s.0 as i64;
    let share: Vec<Option<String>> = vec![
        Some(format!("{{{s_id}}}")),
        None,
        Some(format!("{{{s_id},{gone}}}")),
        None,
    ];
    let expected = vec![versions[0], versions[1] - 1, versions[2], versions[3]];
    let est = vec![now, now, now, now + 60_000];
    let rows = sql
        .query(
            &format!(
                "SELECT * FROM {schema}.store_many($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
                 $11, $12, $13, $14, $15, 1000)"
            ),
            &[
                &vec!["batch"; 4],
                &vec!["k0", "k1", "k2", "k3"],
                &records,
                &vec![true; 4],
                &vec!["{}"; 4],
                &vec![format!("{{{s_id}}}"); 4],
                &vec![None::<i64>; 4],
                &vec![7_i64; 4],
                &vec![now; 4],
                &vec![
                    Some("note k0"),
                    Some("note k1"),
                    Some("note k2"),
                    Some("note k3"),
                ],
                &expected,
                &share,
                &est,
                &vec![i64::MAX; 4],
                &vec![Some(format!("{{{newcomer}}}")); 4],
            ],
        )
        .await
        .unwrap();
    let written: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(written, vec![1], "only the current write is made");
    let after: Vec<i64> = sql
        .query_one(
            &format!("SELECT array_agg(version ORDER BY name) FROM {schema}.locks"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        after,
        vec![versions[0] + 1, versions[1], versions[2], versions[3]]
    );
    let note = tokio::time::timeout(Duration::from_secs(5), notes.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(note, "note k0");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(notes.try_recv().is_err(), "a write not made notified");
    let members: Vec<String> = sql
        .query(
            &format!("SELECT name FROM {schema}.members WHERE session_id = $1"),
            &[&newcomer],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(members, vec!["k0"], "only the write made adds its members");
}
