//! A 3-node cluster in-process on loopback: grants, hand-off, fail-over with
//! the session grace, membership changes, and a wiped node rejoining from a
//! snapshot.

use fencelock::{
    Backend, Command, Error, LockError, LockKey, Mode, RequestId, Response, WaitStatus,
};
use fencelock_raft::local::LocalCluster;
use fencelock_raft::NodeConfig;
use std::collections::BTreeSet;
use std::time::Duration;

fn fast(c: NodeConfig) -> NodeConfig {
    c.with_fast_elections()
}

async fn open(b: &impl Backend, ttl_ms: u64) -> fencelock::SessionId {
    match b.execute(Command::OpenSession { ttl_ms }, None).await {
        Ok(Response::SessionOpened { session, .. }) => session,
        other => panic!("open session: {other:?}"),
    }
}

fn acquire(key: &LockKey, session: fencelock::SessionId, timeout_ms: Option<u64>) -> Command {
    Command::Acquire {
        key: key.clone(),
        session,
        mode: Mode::Exclusive,
        timeout_ms,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_waiter_is_granted_on_release_across_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(dir.path(), 3, fast, None)
        .await
        .unwrap();
    let b = cluster.backend();
    let key = LockKey::new("test", "handoff").unwrap();
    let alice = open(&b, 10_000).await;
    let bob = open(&b, 10_000).await;
    let Ok(Response::Granted(first)) = b
        .execute(acquire(&key, alice, None), Some(RequestId(1)))
        .await
    else {
        panic!("alice not granted")
    };
    let queued = b
        .execute(acquire(&key, bob, Some(10_000)), Some(RequestId(1)))
        .await;
    assert!(
        matches!(queued, Ok(Response::Queued { position: 1, .. })),
        "{queued:?}"
    );
    assert_eq!(
        b.wait(&key, bob, Duration::from_millis(100)).await,
        Ok(WaitStatus::Waiting)
    );
    // A retry of alice's acquire with the same request id returns the first grant.
    let retry = b
        .execute(acquire(&key, alice, None), Some(RequestId(1)))
        .await;
    assert_eq!(retry, Ok(Response::Granted(first)));
    let release = Command::Release {
        key: key.clone(),
        session: alice,
        token: first.token,
    };
    assert_eq!(
        b.execute(release, Some(RequestId(2))).await,
        Ok(Response::Released)
    );
    let Ok(WaitStatus::Granted(second)) = b.wait(&key, bob, Duration::from_secs(5)).await else {
        panic!("bob not granted")
    };
    assert!(second.token > first.token);
    assert!(b.validate(&key, second.token).await.is_ok());
    assert!(matches!(
        b.validate(&key, first.token).await,
        Err(Error::Lock(LockError::NotHolder { .. }))
    ));
    let info = b.describe(&key).await.unwrap().unwrap();
    assert_eq!(info.holders.len(), 1);
    assert_eq!(info.holders[0].session, bob);
    // Every replica applied the same entries into the same bytes.
    wait_converged(&cluster).await;
    cluster.shutdown().await;
}

/// Waits until every running node applied the same index, then compares tables.
async fn wait_converged(cluster: &LocalCluster) {
    for _ in 0..100 {
        let running: Vec<_> = (0..cluster.nodes.len())
            .filter_map(|i| cluster.node(i))
            .collect();
        let indexes: BTreeSet<u64> = running.iter().map(|n| n.applied_index()).collect();
        if indexes.len() == 1 {
            let bytes: BTreeSet<Vec<u8>> = running.iter().map(|n| n.table_bytes()).collect();
            assert_eq!(bytes.len(), 1, "replicas diverged at the same index");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("replicas did not converge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_leaderless_gap_longer_than_their_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::start(dir.path(), 3, fast, None)
        .await
        .unwrap();
    let b = cluster.backend();
    let key = LockKey::new("test", "grace").unwrap();
    let s = open(&b, 2_000).await;
    let Ok(Response::Granted(g)) = b.execute(acquire(&key, s, None), Some(RequestId(1))).await
    else {
        panic!("not granted")
    };
    // Lose the quorum for twice the session TTL: no leader, no keep-alive.
    let leader = cluster.leader().expect("a leader");
    let other = (leader + 1) % 3;
    cluster.stop_node(leader).await;
    cluster.stop_node(other).await;
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    cluster.restart_node(other).await.unwrap();
    cluster.restart_node(leader).await.unwrap();
    cluster.wait_ready().await.unwrap();
    // The new leader's grace entry gave the session a fresh TTL.
    assert!(
        b.validate(&key, g.token).await.is_ok(),
        "hold lost in fail-over"
    );
    let info = b.describe_session(s).await.unwrap().expect("session kept");
    assert_eq!(info.holds, vec![(key.clone(), g.token)]);
    // Without keep-alives it still ends, one TTL later, and the lock with it.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(b.describe_session(s).await.unwrap().is_none());
    assert!(matches!(
        b.validate(&key, g.token).await,
        Err(Error::Lock(LockError::Expired { .. }))
    ));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_from_one_node_to_three_then_remove_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::start(dir.path(), 1, fast, None)
        .await
        .unwrap();
    let b = cluster.backend();
    let key = LockKey::new("test", "membership").unwrap();
    let s = open(&b, 30_000).await;
    let Ok(Response::Granted(g)) = b.execute(acquire(&key, s, None), Some(RequestId(1))).await
    else {
        panic!("not granted")
    };
    for _ in 0..2 {
        let i = cluster.add_node(dir.path()).await.unwrap();
        b.cluster()
            .add_learner(i as u64 + 1, cluster.addrs[i].clone())
            .await
            .unwrap();
    }
    b.cluster()
        .change_membership(BTreeSet::from([1, 2, 3]))
        .await
        .unwrap();
    // A follower applies the membership entry a moment after the leader
    // commits it: wait for it (bounded) rather than racing it.
    voters_become(&b, &cluster.addrs[2], BTreeSet::from([1, 2, 3])).await;
    // Remove node 1 (the leader so far); the others elect one of themselves.
    b.cluster()
        .change_membership(BTreeSet::from([2, 3]))
        .await
        .unwrap();
    cluster.stop_node(0).await;
    let b = fencelock_raft::RaftBackend::connect(cluster.addrs[1..].to_vec()).unwrap();
    assert!(b.validate(&key, g.token).await.is_ok());
    let s2 = open(&b, 30_000).await;
    let r = b
        .execute(acquire(&key, s2, Some(0)), Some(RequestId(1)))
        .await;
    assert!(
        matches!(r, Err(Error::Lock(LockError::WouldBlock { .. }))),
        "{r:?}"
    );
    voters_become(&b, &cluster.addrs[1], BTreeSet::from([2, 3])).await;
    cluster.shutdown().await;
}

/// Polls a node's status until its voters are `want` (at most 10 s).
async fn voters_become(b: &fencelock_raft::RaftBackend, addr: &str, want: BTreeSet<u64>) {
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = b.cluster().status_of(addr).await;
        match status {
            Ok(s) if s.voters == want => return,
            other if std::time::Instant::now() > give_up => {
                panic!("voters of {addr} never became {want:?}: {other:?}")
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_follower_rejoins_from_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::start(
        dir.path(),
        3,
        |c| NodeConfig {
            snapshot_every: 50,
            keep_logs_after_snapshot: 0,
            ..fast(c)
        },
        None,
    )
    .await
    .unwrap();
    let b = cluster.backend();
    let s = open(&b, 30_000).await;
    for i in 0..120u64 {
        let key = LockKey::new("test", &format!("k{i}")).unwrap();
        b.execute(acquire(&key, s, Some(0)), Some(RequestId(i + 1)))
            .await
            .unwrap();
    }
    let leader = cluster.leader().unwrap();
    let victim = (leader + 1) % 3;
    cluster.stop_node(victim).await;
    cluster.wipe_node(victim).unwrap();
    for i in 120..200u64 {
        let key = LockKey::new("test", &format!("k{i}")).unwrap();
        b.execute(acquire(&key, s, Some(0)), Some(RequestId(i + 1)))
            .await
            .unwrap();
    }
    cluster.restart_node(victim).await.unwrap();
    wait_converged(&cluster).await;
    let status = b.cluster().status_of(&cluster.addrs[victim]).await.unwrap();
    assert_eq!(status.locks, 200);
    assert!(status.snapshot.is_some(), "the wiped node got a snapshot");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_calls_end_unavailable_and_reads_never_go_stale() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::start(dir.path(), 3, fast, None)
        .await
        .unwrap();
    let b = cluster.backend();
    let key = LockKey::new("test", "quorum").unwrap();
    let s = open(&b, 60_000).await;
    let Ok(Response::Granted(g)) = b.execute(acquire(&key, s, None), Some(RequestId(1))).await
    else {
        panic!("not granted")
    };
    let leader = cluster.leader().unwrap();
    let survivor = (leader + 1) % 3;
    for i in 0..3 {
        if i != survivor {
            cluster.stop_node(i).await;
        }
    }
    let impatient = cluster.backend_with(fencelock_raft::ClientConfig {
        rpc_timeout: Duration::from_millis(500),
        give_up_after: Duration::from_millis(1_500),
    });
    let started = std::time::Instant::now();
    let read = impatient.validate(&key, g.token).await;
    assert!(matches!(read, Err(Error::Unavailable { .. })), "{read:?}");
    let write = impatient
        .execute(Command::KeepAlive { session: s }, Some(RequestId(2)))
        .await;
    assert!(
        matches!(
            write,
            Err(Error::Unavailable { .. } | Error::UnknownOutcome { .. })
        ),
        "{write:?}"
    );
    assert_eq!(
        write.unwrap_err().code(),
        fencelock::StatusCode::Unavailable
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_quorum_stops_answering_waits() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::start(dir.path(), 3, fast, None)
        .await
        .unwrap();
    let b = cluster.backend();
    let key = LockKey::new("test", "cut-off").unwrap();
    let (alice, bob) = (open(&b, 60_000).await, open(&b, 60_000).await);
    b.execute(acquire(&key, alice, None), Some(RequestId(1)))
        .await
        .unwrap();
    b.execute(acquire(&key, bob, Some(60_000)), Some(RequestId(1)))
        .await
        .unwrap();
    // Both followers go away; the old leader still believes it leads. It must
    // not keep telling bob "still waiting" from state that may be stale.
    let leader = cluster.leader().unwrap();
    for i in 0..3 {
        if i != leader {
            cluster.stop_node(i).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let impatient = cluster.backend_with(fencelock_raft::ClientConfig {
        rpc_timeout: Duration::from_millis(500),
        give_up_after: Duration::from_millis(1_500),
    });
    let answer = impatient.wait(&key, bob, Duration::from_millis(200)).await;
    assert!(
        matches!(answer, Err(Error::Unavailable { .. })),
        "{answer:?}"
    );
    cluster.shutdown().await;
}
