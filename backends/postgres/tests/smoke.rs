//! Basic behaviour against a real server, end to end through the trait.

use fencelock::{Backend, Command, LockKey, Mode, Response, WaitStatus};
use fencelock_postgres::testkit::{shared_url, unique_schema};
use fencelock_postgres::{PgBackend, PgConfig};
use std::time::Duration;

async fn backend(label: &str) -> PgBackend {
    let config = PgConfig::new(shared_url()).with_schema(unique_schema(label));
    PgBackend::connect(config).await.expect("connect")
}

async fn open(b: &PgBackend) -> fencelock::SessionId {
    match b
        .execute(Command::OpenSession { ttl_ms: 10_000 }, None)
        .await
    {
        Ok(Response::SessionOpened { session, .. }) => session,
        other => panic!("open: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_queue_release_hands_over() {
    let b = backend("smoke").await;
    let key = LockKey::new("smoke", "k").unwrap();
    let (alice, bob) = (open(&b).await, open(&b).await);
    let acquire = |session| Command::Acquire {
        key: key.clone(),
        session,
        mode: Mode::Exclusive,
        timeout_ms: Some(5_000),
    };
    let Ok(Response::Granted(g)) = b.execute(acquire(alice), None).await else {
        panic!("alice not granted")
    };
    let queued = b.execute(acquire(bob), None).await;
    assert!(
        matches!(queued, Ok(Response::Queued { position: 1, .. })),
        "{queued:?}"
    );
    let waiter = {
        let (b, key) = (b.clone(), key.clone());
        tokio::spawn(async move { b.wait(&key, bob, Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let released = b
        .execute(
            Command::Release {
                key: key.clone(),
                session: alice,
                token: g.token,
            },
            None,
        )
        .await;
    assert_eq!(released, Ok(Response::Released));
    let status = waiter.await.unwrap().unwrap();
    let WaitStatus::Granted(g2) = status else {
        panic!("bob: {status:?}")
    };
    assert!(g2.token > g.token);
    b.validate(&key, g2.token).await.unwrap();
    assert!(b.validate(&key, g.token).await.is_err());
    let info = b.describe(&key).await.unwrap().unwrap();
    assert_eq!(info.holders.len(), 1);
    assert_eq!(info.holders[0].session, bob);
    let s = b.describe_session(bob).await.unwrap().unwrap();
    assert_eq!(s.holds, vec![(key.clone(), g2.token)]);
    assert_eq!(
        b.execute(Command::CloseSession { session: bob }, None)
            .await,
        Ok(Response::SessionClosed)
    );
    let info = b.describe(&key).await.unwrap().unwrap();
    assert!(info.holders.is_empty(), "{info:?}");
}
