//! The client over a backend that loses replies: it applies a command and
//! then reports `UnknownOutcome` (a Raft leader lost after commit, a dropped
//! connection after COMMIT). Retries with the same request id must not
//! acquire or release twice, and nothing may leak.

use async_trait::async_trait;
use fencelock::{
    Backend, Client, Command, Error, FencingToken, HolderInfo, LockInfo, LockKey, RequestId,
    Response, SessionId, SessionInfo, WaitStatus,
};
use fencelock_memory::MemoryBackend;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

struct LosesReplies {
    inner: MemoryBackend,
    calls: AtomicU64,
    lost: AtomicU64,
}

#[async_trait]
impl Backend for LosesReplies {
    async fn execute(&self, command: Command, rid: Option<RequestId>) -> Result<Response, Error> {
        let r = self.inner.execute(command, rid).await;
        // Every third reply with a request id is lost after the command applied.
        if rid.is_some() && self.calls.fetch_add(1, Ordering::Relaxed) % 3 == 0 {
            self.lost.fetch_add(1, Ordering::Relaxed);
            return Err(Error::UnknownOutcome {
                reason: "reply lost".into(),
            });
        }
        r
    }

    async fn wait(&self, key: &LockKey, s: SessionId, max: Duration) -> Result<WaitStatus, Error> {
        self.inner.wait(key, s, max).await
    }

    async fn validate(&self, key: &LockKey, token: FencingToken) -> Result<HolderInfo, Error> {
        self.inner.validate(key, token).await
    }

    async fn describe(&self, key: &LockKey) -> Result<Option<LockInfo>, Error> {
        self.inner.describe(key).await
    }

    async fn describe_session(&self, s: SessionId) -> Result<Option<SessionInfo>, Error> {
        self.inner.describe_session(s).await
    }
}

#[tokio::test(start_paused = true)]
async fn lost_replies_are_retried_without_double_effects() {
    let inner = MemoryBackend::new();
    let backend = Arc::new(LosesReplies {
        inner: inner.clone(),
        calls: AtomicU64::new(0),
        lost: AtomicU64::new(0),
    });
    let client = Client::connect(backend.clone()).await.unwrap();
    let lock = client.lock("ns", "flaky").unwrap();
    let tokens = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (lock, tokens) = (lock.clone(), tokens.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                let g = lock.acquire().await.unwrap();
                tokens.lock().unwrap().push(g.token());
                tokio::time::sleep(Duration::from_millis(1)).await;
                g.release().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        backend.lost.load(Ordering::Relaxed) > 20,
        "replies were lost"
    );
    let tokens = tokens.lock().unwrap().clone();
    assert_eq!(tokens.len(), 100);
    let mut sorted = tokens.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 100, "no token was handed out twice");
    let info = lock.describe().await.unwrap().unwrap();
    assert!(
        info.holders.is_empty() && info.waiters.is_empty(),
        "{info:?}"
    );
    assert_eq!(
        info.last_token,
        *sorted.last().unwrap(),
        "no hidden extra grants"
    );
    inner.check_invariants().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_dropped_acquire_with_an_unknown_outcome_leaks_nothing() {
    let inner = MemoryBackend::new();
    let backend = Arc::new(LosesReplies {
        inner: inner.clone(),
        calls: AtomicU64::new(0),
        lost: AtomicU64::new(0),
    });
    let client = Client::builder()
        .retries(0)
        .connect(backend.clone())
        .await
        .unwrap();
    let lock = client.lock("ns", "drop").unwrap();
    for _ in 0..30 {
        // Without retries, a lost reply surfaces; the clean-up must still
        // release whatever the lost acquire got.
        match lock.try_acquire().await {
            Ok(g) => g.release().await.unwrap_or(()),
            Err(Error::UnknownOutcome { .. }) => {}
            Err(e) => panic!("{e}"),
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        let info = lock.describe().await.unwrap().unwrap();
        assert!(info.holders.is_empty(), "a lost grant leaked: {info:?}");
    }
    assert!(backend.lost.load(Ordering::Relaxed) > 5);
}

/// A force release whose reply is lost is retried with the same (session-less)
/// request id: the core answers the first result instead of force-releasing
/// again, which would free the waiter that the first attempt just granted.
#[tokio::test(start_paused = true)]
async fn a_retried_force_release_does_not_free_the_next_holder() {
    let inner = MemoryBackend::new();
    let backend = Arc::new(LosesReplies {
        inner: inner.clone(),
        calls: AtomicU64::new(1),
        lost: AtomicU64::new(0),
    });
    let admin = Client::connect(backend.clone()).await.unwrap();
    let holder = Client::connect(inner.clone()).await.unwrap();
    let waiter = Client::connect(inner.clone()).await.unwrap();
    let first = holder.lock("ns", "admin").unwrap().acquire().await.unwrap();
    let queued = {
        let lock = waiter.lock("ns", "admin").unwrap();
        tokio::spawn(async move { lock.acquire().await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    // The next call with a request id loses its reply after applying.
    backend.calls.store(0, Ordering::Relaxed);
    assert_eq!(admin.force_release("ns", "admin").await.unwrap(), 1);
    assert_eq!(
        backend.lost.load(Ordering::Relaxed),
        1,
        "the reply was lost"
    );
    let second = queued.await.unwrap().unwrap();
    assert!(second.token() > first.token());
    second
        .validate()
        .await
        .expect("the retry must not force-release the new holder");
    assert!(first.validate().await.is_err());
    inner.check_invariants().unwrap();
}
