//! The client API on the memory backend: guards, timeouts, cancellation,
//! lost-lock notices, sessions, `with_lock`.

use fencelock::{Backend, Client, Command, Error, LockError, Mode};
use fencelock_memory::MemoryBackend;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn client(backend: &MemoryBackend) -> Client {
    Client::builder()
        .session_ttl(ms(300))
        .connect(backend.clone())
        .await
        .unwrap()
}

/// Lets background clean-up tasks (release on drop, cancel) run.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(ms(1)).await;
}

fn is_lock_err(e: &Error, f: impl Fn(&LockError) -> bool) -> bool {
    matches!(e, Error::Lock(l) if f(l))
}

#[tokio::test(start_paused = true)]
async fn acquire_release_and_tokens_increase() {
    let b = MemoryBackend::new();
    let c = client(&b).await;
    let lock = c.lock("ns", "a").unwrap();
    let g1 = lock.acquire().await.unwrap();
    assert_eq!(g1.mode(), Mode::Exclusive);
    let t1 = g1.token();
    assert!(lock.validate(t1).await.is_ok());
    g1.release().await.unwrap();
    let e = lock.validate(t1).await.unwrap_err();
    assert!(
        is_lock_err(&e, |l| matches!(l, LockError::NotHolder { .. })),
        "{e}"
    );
    let g2 = lock.acquire().await.unwrap();
    assert!(g2.token() > t1);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_guard_releases_the_lock() {
    let b = MemoryBackend::new();
    let c = client(&b).await;
    let lock = c.lock("ns", "drop").unwrap();
    let g = lock.acquire().await.unwrap();
    drop(g);
    settle().await;
    let info = lock.describe().await.unwrap().unwrap();
    assert!(info.holders.is_empty(), "{info:?}");
    // Also when the holding task panics.
    let l2 = lock.clone();
    let task = tokio::spawn(async move {
        let _g = l2.acquire().await.unwrap();
        panic!("boom");
    });
    assert!(task.await.is_err());
    settle().await;
    assert!(
        lock.try_acquire().await.is_ok(),
        "the panicked task's lock came back"
    );
}

#[tokio::test(start_paused = true)]
async fn try_acquire_and_timeout() {
    let b = MemoryBackend::new();
    let c = client(&b).await;
    let lock = c.lock("ns", "t").unwrap();
    let _g = lock.acquire().await.unwrap();
    let e = lock.try_acquire().await.unwrap_err();
    assert!(
        is_lock_err(&e, |l| matches!(l, LockError::WouldBlock { .. })),
        "{e}"
    );
    let started = tokio::time::Instant::now();
    let e = lock.acquire_timeout(ms(50)).await.unwrap_err();
    assert!(
        is_lock_err(&e, |l| matches!(l, LockError::Timeout { .. })),
        "{e}"
    );
    assert!(started.elapsed() >= ms(50));
    settle().await;
    assert!(lock.describe().await.unwrap().unwrap().waiters.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_dropped_acquire_leaves_the_queue() {
    let b = MemoryBackend::new();
    let c = client(&b).await;
    let lock = c.lock("ns", "cancel").unwrap();
    let g = lock.acquire().await.unwrap();
    let r = tokio::time::timeout(ms(20), lock.acquire()).await;
    assert!(
        r.is_err(),
        "still held, so the acquire must still be waiting"
    );
    settle().await;
    let info = lock.describe().await.unwrap().unwrap();
    assert!(
        info.waiters.is_empty(),
        "dropped wait still queued: {info:?}"
    );
    g.release().await.unwrap();
    let info = lock.describe().await.unwrap().unwrap();
    assert!(info.holders.is_empty(), "nobody may get the lock: {info:?}");
}

/// A waiter cancelled at the moment it is granted must not leak the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_racing_a_grant_never_leaks() {
    let b = MemoryBackend::new();
    let c = client(&b).await;
    let lock = c.lock("ns", "race").unwrap();
    for i in 0..200u64 {
        let g = lock.acquire().await.unwrap();
        let l2 = lock.clone();
        let waiter = tokio::spawn(async move { l2.acquire().await });
        // Let the waiter queue, then release and abort it at about the same time.
        tokio::time::sleep(Duration::from_micros(200 + (i % 7) * 30)).await;
        let release = tokio::spawn(g.release());
        if i % 2 == 0 {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        release.await.unwrap().unwrap();
        if let Ok(Ok(g)) = waiter.await {
            g.release().await.unwrap();
        }
        // Whatever won, the lock must come back free.
        let mut free = false;
        for _ in 0..200 {
            let info = lock.describe().await.unwrap().unwrap();
            if info.holders.is_empty() && info.waiters.is_empty() {
                free = true;
                break;
            }
            tokio::time::sleep(ms(1)).await;
        }
        assert!(
            free,
            "iteration {i}: the lock leaked: {:?}",
            lock.describe().await
        );
    }
    b.check_invariants().unwrap();
}

#[tokio::test(start_paused = true)]
async fn tasks_of_one_client_queue_fifo_with_their_own_sessions() {
    let b = MemoryBackend::new();
    let c = client(&b).await;
    let lock = c.lock("ns", "shared").unwrap();
    let first = lock.acquire().await.unwrap();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..5 {
        let (l, order) = (lock.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let g = l.acquire().await.unwrap();
            order.lock().unwrap().push((i, g.token()));
            tokio::time::sleep(ms(1)).await;
            g.release().await.unwrap();
        }));
        // Queue them in a known order.
        tokio::time::sleep(ms(1)).await;
    }
    let info = lock.describe().await.unwrap().unwrap();
    assert_eq!(info.waiters.len(), 5, "each task waits in its own session");
    first.release().await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    assert_eq!(
        order.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    assert!(order.windows(2).all(|w| w[0].1 < w[1].1));
}

#[tokio::test(start_paused = true)]
async fn readers_of_one_client_share() {
    let b = MemoryBackend::new();
    let c = client(&b).await;
    let rw = c.rw_lock("ns", "rw").unwrap();
    let r1 = rw.read().await.unwrap();
    let r2 = rw.try_read().await.unwrap();
    let e = rw.try_write().await.unwrap_err();
    assert!(is_lock_err(&e, |l| matches!(
        l,
        LockError::WouldBlock { .. }
    )));
    let rw2 = rw.clone();
    let writer = tokio::spawn(async move { rw2.write().await.map(|g| g.token()) });
    settle().await;
    drop(r1);
    r2.release().await.unwrap();
    let wt = writer.await.unwrap().unwrap();
    assert!(wt.0 > 0);
}

#[tokio::test(start_paused = true)]
async fn lost_notice_fires_on_lease_expiry() {
    let b = MemoryBackend::new();
    let c = client(&b).await;
    let lock = c.lock_with_lease("ns", "lease", ms(100)).unwrap();
    let mut g = lock.acquire().await.unwrap();
    assert!(g.grant().expires_at.is_some());
    tokio::time::sleep(ms(60)).await;
    let new_expiry = g.extend().await.unwrap();
    assert_eq!(g.grant().expires_at, new_expiry);
    let started = tokio::time::Instant::now();
    let why = g.lost().await;
    assert!(
        is_lock_err(&why, |l| matches!(l, LockError::Expired { .. })),
        "{why}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= ms(90) && waited <= ms(110),
        "fired after {waited:?}"
    );
    assert!(g.lost_token().is_cancelled());
    assert!(g.release().await.is_err());
}

#[tokio::test(start_paused = true)]
async fn lost_notice_fires_on_steal_and_force_release() {
    let b = MemoryBackend::new();
    let c = client(&b).await;
    let lock = c.lock("ns", "steal").unwrap();
    let g = lock.acquire().await.unwrap();
    let token = g.lost_token();
    let thief = lock.steal().await.unwrap();
    assert!(thief.token() > g.token());
    let why = g.lost().await;
    assert!(token.is_cancelled());
    assert!(
        is_lock_err(&why, |l| matches!(l, LockError::Stolen { .. })),
        "{why}"
    );
    assert_eq!(c.force_release("ns", "steal").await.unwrap(), 1);
    let why = thief.lost().await;
    assert!(
        is_lock_err(&why, |l| matches!(l, LockError::NotHolder { .. })),
        "{why}"
    );
}

#[tokio::test(start_paused = true)]
async fn lost_notice_fires_when_the_session_is_gone() {
    let b = MemoryBackend::new();
    let c = client(&b).await;
    let lock = c.lock("ns", "session").unwrap();
    let g = lock.acquire().await.unwrap();
    let holder = lock.describe().await.unwrap().unwrap().holders[0].session;
    // Someone (an operator, a partition) ends the session behind our back.
    b.execute(Command::CloseSession { session: holder }, None)
        .await
        .unwrap();
    let why = tokio::time::timeout(ms(1_000), g.lost()).await.unwrap();
    assert!(why.as_lock_error().is_some(), "{why}");
    // The client opens a fresh session for the next acquire.
    let g2 = lock.acquire().await.unwrap();
    assert!(g2.token() > g.token());
}

#[tokio::test(start_paused = true)]
async fn keep_alive_keeps_locks_beyond_the_ttl() {
    let b = MemoryBackend::new();
    let c = client(&b).await;
    let lock = c.lock("ns", "long").unwrap();
    let g = lock.acquire().await.unwrap();
    tokio::time::sleep(ms(3_000)).await; // ten session TTLs
    assert!(
        g.validate().await.is_ok(),
        "keep-alive must keep the session"
    );
}

#[tokio::test(start_paused = true)]
async fn with_lock_runs_the_closure_and_releases() {
    let b = MemoryBackend::new();
    let c = client(&b).await;
    let counter = AtomicUsize::new(0);
    let runs = &counter;
    let token = c
        .with_lock("billing", "invoice:42", |token| async move {
            runs.fetch_add(1, Ordering::SeqCst);
            token
        })
        .await
        .unwrap();
    assert_eq!(counter.load(Ordering::SeqCst), 1);
    assert!(token.0 > 0);
    let info = c.describe("billing", "invoice:42").await.unwrap().unwrap();
    assert!(info.holders.is_empty());
}

#[tokio::test(start_paused = true)]
async fn with_lock_stops_the_closure_when_the_lock_is_stolen() {
    let b = MemoryBackend::new();
    let c = client(&b).await;
    let c2 = c.clone();
    let thief = tokio::spawn(async move {
        tokio::time::sleep(ms(50)).await;
        c2.lock("ns", "job").unwrap().steal().await.unwrap()
    });
    let finished = AtomicUsize::new(0);
    let r = c
        .with_lock("ns", "job", |_| async {
            tokio::time::sleep(ms(1_000)).await;
            finished.fetch_add(1, Ordering::SeqCst);
        })
        .await;
    let e = r.unwrap_err();
    assert!(
        is_lock_err(&e, |l| matches!(l, LockError::Stolen { .. })),
        "{e}"
    );
    assert_eq!(
        finished.load(Ordering::SeqCst),
        0,
        "the closure was stopped"
    );
    thief.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn closing_the_client_releases_everything() {
    let b = MemoryBackend::new();
    let a = client(&b).await;
    let other = client(&b).await;
    let held = a.lock("ns", "x").unwrap().acquire().await.unwrap();
    let l2 = a.lock("ns", "x").unwrap();
    let queued = tokio::spawn(async move { l2.acquire().await.map(|_| ()) });
    settle().await;
    a.close().await;
    let r = queued.await.unwrap();
    assert!(r.is_err(), "a wait of a closed client ends: {r:?}");
    let g = other.lock("ns", "x").unwrap().try_acquire().await;
    assert!(g.is_ok(), "closing released the lock: {g:?}");
    let e = a.lock("ns", "y").unwrap().acquire().await.unwrap_err();
    assert_eq!(e, Error::Closed);
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn bad_names_and_options_name_the_field() {
    let b = MemoryBackend::new();
    let c = client(&b).await;
    let field = |r: Result<fencelock::LockHandle, Error>| match r {
        Err(Error::Lock(LockError::InvalidArgument { field, .. })) => field,
        other => panic!("expected InvalidArgument, got {:?}", other.map(|_| ())),
    };
    assert_eq!(field(c.lock("", "x")), "namespace");
    assert_eq!(field(c.lock("ns", &"x".repeat(513))), "name");
    assert_eq!(field(c.lock("ns", "a\nb")), "name");
    assert_eq!(field(c.lock_with_lease("ns", "x", Duration::ZERO)), "lease");
    let e = Client::builder()
        .session_ttl(Duration::ZERO)
        .connect(b.clone())
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("session_ttl"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn extra_sessions_are_closed_when_idle() {
    let b = MemoryBackend::new();
    let c = client(&b).await;
    let lock = c.lock("ns", "burst").unwrap();
    let first = lock.acquire().await.unwrap();
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let l = lock.clone();
        waiters.push(tokio::spawn(async move {
            l.acquire().await.unwrap().release().await
        }));
    }
    settle().await;
    first.release().await.unwrap();
    for w in waiters {
        w.await.unwrap().unwrap();
    }
    // Four sessions were needed at once; after a keep-alive round only the
    // first is left (the others are closed, not kept alive forever).
    tokio::time::sleep(ms(250)).await;
    let mut open = 0;
    for id in 1..=4 {
        if b.describe_session(fencelock::SessionId(id))
            .await
            .unwrap()
            .is_some()
        {
            open += 1;
        }
    }
    assert_eq!(open, 1);
    assert!(lock.try_acquire().await.is_ok());
}
