//! Fewer requests per command: concurrent commands of one process share a
//! request (`ExecuteMany`), and a queued acquire returns its grant in the
//! request that queued it (`AcquireWait`) instead of a separate long poll.
//! A counting transport shows which requests were sent.

use async_trait::async_trait;
use fencelock::{Backend, Client, Command, LockKey, Mode, RequestId, Response, SessionId};
use fencelock_raft::grpc::GrpcTransport;
use fencelock_raft::local::LocalCluster;
use fencelock_raft::wire::{ClientReply, ClientRpc, RaftReply, RaftRpc};
use fencelock_raft::{ClientConfig, NodeConfig, RaftBackend, Transport, TransportError};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// gRPC, counting client requests by kind.
#[derive(Default)]
struct Counting {
    inner: GrpcTransport,
    sent: Mutex<BTreeMap<&'static str, usize>>,
}

impl Counting {
    fn count(&self, kind: &str) -> usize {
        self.sent.lock().unwrap().get(kind).copied().unwrap_or(0)
    }
}

#[async_trait]
impl Transport for Counting {
    async fn raft(
        &self,
        addr: &str,
        rpc: RaftRpc,
        timeout: Duration,
    ) -> Result<RaftReply, TransportError> {
        self.inner.raft(addr, rpc, timeout).await
    }

    async fn client(
        &self,
        addr: &str,
        rpc: ClientRpc,
        timeout: Duration,
    ) -> Result<ClientReply, TransportError> {
        let kind = match &rpc {
            ClientRpc::Execute { .. } => "execute",
            ClientRpc::ExecuteMany { .. } => "execute_many",
            ClientRpc::AcquireWait { .. } => "acquire_wait",
            ClientRpc::Wait { .. } => "wait",
            _ => "other",
        };
        *self.sent.lock().unwrap().entry(kind).or_default() += 1;
        Transport::client(&self.inner, addr, rpc, timeout).await
    }
}

async fn cluster(dir: &std::path::Path) -> (LocalCluster, Arc<Counting>, RaftBackend) {
    let cluster = LocalCluster::start(dir, 3, NodeConfig::with_fast_elections, None)
        .await
        .unwrap();
    let counting = Arc::new(Counting::default());
    let backend = RaftBackend::with_transport(
        counting.clone(),
        cluster.endpoints(),
        ClientConfig::default(),
    )
    .unwrap();
    (cluster, counting, backend)
}

async fn open(b: &RaftBackend) -> SessionId {
    match b
        .execute(Command::OpenSession { ttl_ms: 60_000 }, None)
        .await
    {
        Ok(Response::SessionOpened { session, .. }) => session,
        other => panic!("open: {other:?}"),
    }
}

fn acquire(key: &LockKey, session: SessionId) -> Command {
    Command::Acquire {
        key: key.clone(),
        session,
        mode: Mode::Exclusive,
        timeout_ms: Some(30_000),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_share_requests_and_each_gets_its_own_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, counting, b) = cluster(dir.path()).await;
    let mut sessions = Vec::new();
    for _ in 0..32 {
        sessions.push(open(&b).await);
    }
    let keys: Vec<LockKey> = (0..32)
        .map(|i| LockKey::new("batch", &format!("k{i}")).unwrap())
        .collect();
    let before = counting.count("execute") + counting.count("execute_many");
    let answers = futures::future::join_all(
        sessions
            .iter()
            .zip(&keys)
            .map(|(s, k)| b.execute(acquire(k, *s), Some(RequestId(1)))),
    )
    .await;
    let requests = counting.count("execute") + counting.count("execute_many") - before;
    assert!(
        counting.count("execute_many") >= 1 && requests < 32,
        "32 concurrent commands took {requests} requests"
    );
    let mut tokens = Vec::new();
    for ((answer, s), k) in answers.into_iter().zip(&sessions).zip(&keys) {
        let Ok(Response::Granted(g)) = answer else {
            panic!("{k}: {answer:?}")
        };
        let info = b.describe(k).await.unwrap().unwrap();
        assert_eq!(info.holders[0].session, *s, "{k} went to another session");
        assert_eq!(info.holders[0].token, g.token, "{k}: another grant's token");
        tokens.push(g.token);
    }
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), 32);
    // A retried request id still answers its first outcome.
    let again = b
        .execute(acquire(&keys[3], sessions[3]), Some(RequestId(1)))
        .await
        .unwrap();
    assert!(matches!(again, Response::Granted(g) if g.token == tokens_of(&b, &keys[3]).await));
    cluster.shutdown().await;
}

async fn tokens_of(b: &RaftBackend, key: &LockKey) -> fencelock::FencingToken {
    b.describe(key).await.unwrap().unwrap().holders[0].token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_acquire_returns_its_grant_in_the_same_request() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, counting, b) = cluster(dir.path()).await;
    let b = Arc::new(b);
    let key = LockKey::new("handoff", "hot").unwrap();
    let (alice, bob, carol) = (open(&b).await, open(&b).await, open(&b).await);
    let Ok(Response::Granted(first)) = b.execute(acquire(&key, alice), Some(RequestId(1))).await
    else {
        panic!("alice not granted")
    };
    let waiting = {
        let b = b.clone();
        let key = key.clone();
        tokio::spawn(async move {
            b.execute_waiting(
                acquire(&key, bob),
                Some(RequestId(1)),
                Duration::from_secs(20),
            )
            .await
        })
    };
    // Bob is queued (his request is still open) before Alice releases.
    while b.describe(&key).await.unwrap().unwrap().waiters.is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let release = Command::Release {
        key: key.clone(),
        session: alice,
        token: first.token,
    };
    b.execute(release, Some(RequestId(2))).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("bob answered in time")
        .unwrap();
    let Ok(Response::Granted(second)) = answer else {
        panic!("bob: {answer:?}")
    };
    assert!(second.token > first.token);
    assert_eq!(tokens_of(&b, &key).await, second.token);
    assert_eq!(counting.count("wait"), 0, "no separate long poll");

    // Not granted within the budget: the acquire's own answer, `Queued`,
    // and the wait goes on (the long poll then reports the grant).
    let started = std::time::Instant::now();
    let answer = b
        .execute_waiting(
            acquire(&key, carol),
            Some(RequestId(1)),
            Duration::from_millis(300),
        )
        .await
        .unwrap();
    assert!(matches!(answer, Response::Queued { .. }), "{answer:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    let release = Command::Release {
        key: key.clone(),
        session: bob,
        token: second.token,
    };
    b.execute(release, Some(RequestId(2))).await.unwrap();
    let status = b.wait(&key, carol, Duration::from_secs(10)).await.unwrap();
    assert!(matches!(status, fencelock::WaitStatus::Granted(g) if g.token > second.token));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_takes_a_queued_grant_from_the_acquire_request() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, counting, b) = cluster(dir.path()).await;
    let b = Arc::new(b);
    let alice = Client::connect(b.clone()).await.unwrap();
    let bob = Client::connect(b.clone()).await.unwrap();
    let held = alice.lock("c", "k").unwrap().acquire().await.unwrap();
    let lock = bob.lock("c", "k").unwrap();
    let sent = counting.count("acquire_wait");
    let waiting = tokio::spawn(async move { lock.acquire().await.map(|g| g.token()) });
    let key = LockKey::new("c", "k").unwrap();
    while b.describe(&key).await.unwrap().unwrap().waiters.is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let token = held.token();
    held.release().await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("bob granted in time")
        .unwrap()
        .unwrap();
    assert!(second > token);
    assert_eq!(counting.count("acquire_wait"), sent + 1, "bob's acquire");
    assert_eq!(counting.count("wait"), 0, "no separate long poll");
    alice.close().await;
    bob.close().await;
    cluster.shutdown().await;
}
