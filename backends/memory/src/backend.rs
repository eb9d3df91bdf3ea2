//! [`MemoryBackend`]: the engine behind the [`Backend`] trait, with a tokio
//! timer task that ticks the core at its `next_deadline`.

use crate::engine::{Engine, Wake};
use async_trait::async_trait;
use fencelock::{Backend, Error, WaitStatus};
use fencelock_core::{
    Command, FencingToken, HolderInfo, Limits, LockInfo, LockKey, Millis, RequestId, Response,
    SessionId, SessionInfo,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The embedded, in-process lock store: no server, no I/O. Clones share one
/// lock table. Time is tokio's clock (so `tokio::time::pause` works in tests),
/// in milliseconds since the backend was created.
///
/// Must be used from inside a Tokio runtime (its timer task is spawned on the
/// first command).
#[derive(Clone)]
pub struct MemoryBackend {
    shared: Arc<Shared>,
}

struct Shared {
    engine: Engine,
    base: Instant,
    /// Wakes the timer task when a deadline earlier than its armed one
    /// appears. Shared separately so the task holds no strong reference.
    timer: Arc<Notify>,
    timer_started: AtomicBool,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Let the timer task see that the backend is gone and exit.
        self.timer.notify_one();
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        MemoryBackend::new()
    }
}

impl MemoryBackend {
    /// A fresh, empty store with default limits.
    pub fn new() -> Self {
        MemoryBackend::with_limits(Limits::default())
    }

    /// A fresh, empty store enforcing `limits`.
    pub fn with_limits(limits: Limits) -> Self {
        MemoryBackend {
            shared: Arc::new(Shared {
                engine: Engine::new(limits),
                base: Instant::now(),
                timer: Arc::new(Notify::new()),
                timer_started: AtomicBool::new(false),
            }),
        }
    }

    /// The store's clock: milliseconds since creation.
    pub fn now(&self) -> Millis {
        self.shared.now()
    }

    /// Checks the core's invariants (for tests).
    pub fn check_invariants(&self) -> Result<(), String> {
        self.shared.engine.check_invariants()
    }

    /// Remembered wait outcomes plus registered hold watchers (for tests:
    /// closed sessions and dropped futures must leave nothing behind).
    pub fn bookkeeping_len(&self) -> usize {
        self.shared.engine.slot_count() + self.shared.engine.hold_watcher_count()
    }

    fn start_timer(&self) {
        if self.shared.timer_started.load(Ordering::Acquire)
            || self.shared.timer_started.swap(true, Ordering::AcqRel)
        {
            return;
        }
        tokio::spawn(run_timer(
            Arc::downgrade(&self.shared),
            self.shared.timer.clone(),
        ));
    }

    /// Applies a command now: the memory backend never waits.
    fn apply(&self, command: &Command, request_id: Option<RequestId>) -> Result<Response, Error> {
        self.start_timer();
        let (outcome, wake) = self
            .shared
            .engine
            .apply(self.shared.now(), command, request_id);
        self.finish(wake);
        Ok(outcome?)
    }

    fn finish(&self, wake: Wake) {
        if wake.reschedule {
            self.shared.timer.notify_one();
        }
        wake.wake();
    }
}

impl Shared {
    fn now(&self) -> Millis {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Sleeps until the core's next deadline and ticks; re-arms when a command
/// brings a deadline forward. Exits when the backend is dropped.
async fn run_timer(shared: Weak<Shared>, timer: Arc<Notify>) {
    loop {
        let (next, base) = {
            let Some(s) = shared.upgrade() else { return };
            (s.engine.arm(), s.base)
        };
        match next {
            Some(at) => {
                let sleep = tokio::time::sleep_until(base + Duration::from_millis(at));
                tokio::select! {
                    _ = sleep => {
                        let Some(s) = shared.upgrade() else { return };
                        let wake = s.engine.tick(s.now());
                        if wake.reschedule {
                            timer.notify_one();
                        }
                        wake.wake();
                    }
                    _ = timer.notified() => {}
                }
            }
            None => timer.notified().await,
        }
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    async fn execute(
        &self,
        command: Command,
        request_id: Option<RequestId>,
    ) -> Result<Response, Error> {
        // Never pending otherwise: without this a task looping on an
        // uncontended lock would starve the runtime (timers, other tasks),
        // as a `tokio::sync::Mutex` would not. Once per acquire suffices.
        if matches!(command, Command::Acquire { .. } | Command::Steal { .. }) {
            tokio::task::coop::consume_budget().await;
        }
        self.apply(&command, request_id)
    }

    fn execute_now(
        &self,
        command: &Command,
        request_id: Option<RequestId>,
    ) -> Option<Result<Response, Error>> {
        Some(self.apply(command, request_id))
    }

    async fn wait(
        &self,
        key: &LockKey,
        session: SessionId,
        max_wait: Duration,
    ) -> Result<WaitStatus, Error> {
        self.start_timer();
        let fut = self.shared.engine.wait(key, session);
        Ok(tokio::time::timeout(max_wait, fut)
            .await
            .unwrap_or(WaitStatus::Waiting))
    }

    async fn watch_hold(
        &self,
        key: &LockKey,
        token: FencingToken,
        max_wait: Duration,
    ) -> Result<HolderInfo, Error> {
        self.start_timer();
        let fut = HoldFuture {
            shared: &self.shared,
            key,
            token,
            id: None,
        };
        match tokio::time::timeout(max_wait, fut).await {
            Ok(lost) => lost,
            Err(_) => self.validate(key, token).await,
        }
    }

    /// `execute` applies and answers in one step with no await in between
    /// (the only await, the budget check, comes before), so an outcome is
    /// never lost.
    fn outcomes_are_certain(&self) -> bool {
        true
    }

    async fn validate(&self, key: &LockKey, token: FencingToken) -> Result<HolderInfo, Error> {
        Ok(self.shared.engine.validate(self.shared.now(), key, token)?)
    }

    async fn describe(&self, key: &LockKey) -> Result<Option<LockInfo>, Error> {
        Ok(self.shared.engine.describe(key))
    }

    async fn describe_session(&self, session: SessionId) -> Result<Option<SessionInfo>, Error> {
        Ok(self.shared.engine.describe_session(session))
    }
}

/// Resolves with the reason a hold ended; forgets its waker when dropped.
struct HoldFuture<'a> {
    shared: &'a Shared,
    key: &'a LockKey,
    token: FencingToken,
    id: Option<u64>,
}

impl Future for HoldFuture<'_> {
    type Output = Result<HolderInfo, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let now = this.shared.now();
        this.shared
            .engine
            .poll_hold(cx, now, this.key, this.token, &mut this.id)
            .map(|lost| Err(lost.into()))
    }
}

impl Drop for HoldFuture<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.shared.engine.forget_hold(self.key, self.token, id);
        }
    }
}
