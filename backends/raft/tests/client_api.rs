//! The README's client API over a 3-node Raft cluster: guards, FIFO
//! hand-off between two clients, and the lost-lock notice when a lock is
//! stolen.

use fencelock::{Client, Error, LockError};
use fencelock_raft::local::LocalCluster;
use fencelock_raft::NodeConfig;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guards_hand_off_and_notice_a_steal() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(dir.path(), 3, NodeConfig::with_fast_elections, None)
        .await
        .unwrap();
    let alice = Client::connect(Arc::new(cluster.backend())).await.unwrap();
    let bob = Client::connect(Arc::new(cluster.backend())).await.unwrap();

    let first = alice
        .lock("billing", "invoice:42")
        .unwrap()
        .acquire()
        .await
        .unwrap();
    let bob_lock = bob.lock("billing", "invoice:42").unwrap();
    let waiting = tokio::spawn(async move { bob_lock.acquire().await.map(|g| g.token()) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let token = first.token();
    first.release().await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("bob granted in time")
        .unwrap()
        .unwrap();
    assert!(second > token);

    // Alice steals it; Bob's guard (held again here) is told it lost the lock.
    let held = bob
        .lock("billing", "receipt:7")
        .unwrap()
        .acquire()
        .await
        .unwrap();
    let stolen = alice
        .lock("billing", "receipt:7")
        .unwrap()
        .steal()
        .await
        .unwrap();
    assert!(stolen.token() > held.token());
    let why = tokio::time::timeout(Duration::from_secs(10), held.lost())
        .await
        .expect("lost-lock notice in time");
    assert!(
        matches!(why, Error::Lock(LockError::Stolen { .. })),
        "{why:?}"
    );
    stolen.release().await.unwrap();
    alice.close().await;
    bob.close().await;
    cluster.shutdown().await;
}
