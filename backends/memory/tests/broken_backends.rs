//! The conformance suite catches planted bugs: each wrapper below breaks one
//! rule of a correct backend, and the suite must report the cases it breaks.

use async_trait::async_trait;
use fencelock::{
    Backend, Command, Error, FencingToken, Grant, HolderInfo, LockError, LockInfo, LockKey,
    RequestId, Response, SessionId, SessionInfo, WaitStatus,
};
use fencelock_conformance::{run_case, Case, Config};
use fencelock_memory::MemoryBackend;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Clone, Copy, PartialEq)]
enum Bug {
    /// Grants an unavailable lock instead of `WouldBlock`/queueing: no holder check.
    GrantsWithoutCheckingHolders,
    /// Drops request ids, so retries are applied twice.
    IgnoresRequestIds,
    /// Never reports a queued wait's grant.
    LosesWakeups,
    /// A steal answers the old holder's token (no fence bump).
    StealKeepsToken,
    /// `execute_waiting` drops request ids, so a retried acquire applies twice.
    WaitingIgnoresRequestIds,
    /// `execute_waiting` holds a queued acquire far past its `max_wait`.
    WaitingOverstays,
}

struct Broken {
    inner: MemoryBackend,
    bug: Bug,
    /// Grants the wrapper made up; it answers release/extend/validate for
    /// them itself, so it is consistent with its own lie.
    fakes: Mutex<HashMap<(LockKey, FencingToken), HolderInfo>>,
}

impl Broken {
    fn new(limits: fencelock::Limits, bug: Bug) -> Self {
        Broken {
            inner: MemoryBackend::with_limits(limits),
            bug,
            fakes: Mutex::new(HashMap::new()),
        }
    }

    fn fake(&self, key: &LockKey, token: FencingToken) -> Option<HolderInfo> {
        self.fakes
            .lock()
            .unwrap()
            .get(&(key.clone(), token))
            .cloned()
    }
}

#[async_trait]
impl Backend for Broken {
    async fn execute(&self, command: Command, rid: Option<RequestId>) -> Result<Response, Error> {
        match (self.bug, &command) {
            (Bug::IgnoresRequestIds, _) => self.inner.execute(command, None).await,
            (
                Bug::GrantsWithoutCheckingHolders,
                Command::Acquire {
                    key, session, mode, ..
                },
            ) => {
                let r = self.inner.execute(command.clone(), rid).await;
                let blocked = matches!(r, Ok(Response::Queued { .. }))
                    || matches!(r, Err(Error::Lock(LockError::WouldBlock { .. })));
                if !blocked {
                    return r;
                }
                let cancel = Command::CancelWait {
                    key: key.clone(),
                    session: *session,
                };
                let _ = self.inner.execute(cancel, None).await;
                let last = self
                    .inner
                    .describe(key)
                    .await?
                    .map_or(0, |i| i.last_token.0);
                Ok(Response::Granted(Grant {
                    token: FencingToken(last + 1),
                    mode: *mode,
                    granted_at: self.inner.now(),
                    expires_at: None,
                }))
            }
            (Bug::StealKeepsToken, Command::Steal { key, .. }) => {
                let before = self.inner.describe(key).await?;
                let r = self.inner.execute(command.clone(), rid).await;
                match (r, before.and_then(|i| i.holders.first().map(|h| h.token))) {
                    (Ok(Response::Granted(g)), Some(old)) => {
                        Ok(Response::Granted(Grant { token: old, ..g }))
                    }
                    (r, _) => r,
                }
            }
            _ => self.inner.execute(command, rid).await,
        }
    }

    async fn execute_waiting(
        &self,
        command: Command,
        rid: Option<RequestId>,
        max_wait: Duration,
    ) -> Result<Response, Error> {
        match self.bug {
            Bug::WaitingIgnoresRequestIds => {
                self.inner.execute_waiting(command, None, max_wait).await
            }
            Bug::WaitingOverstays => {
                let r = self.inner.execute_waiting(command, rid, max_wait).await;
                if matches!(r, Ok(Response::Queued { .. })) {
                    tokio::time::sleep(max_wait * 30).await;
                }
                r
            }
            _ => self.inner.execute_waiting(command, rid, max_wait).await,
        }
    }

    async fn wait(&self, key: &LockKey, s: SessionId, max: Duration) -> Result<WaitStatus, Error> {
        match self.inner.wait(key, s, max).await? {
            WaitStatus::Granted(_) if self.bug == Bug::LosesWakeups => {
                tokio::time::sleep(max).await;
                Ok(WaitStatus::Waiting)
            }
            other => Ok(other),
        }
    }

    async fn validate(&self, key: &LockKey, token: FencingToken) -> Result<HolderInfo, Error> {
        if let Some(info) = self.fake(key, token) {
            return Ok(info);
        }
        self.inner.validate(key, token).await
    }

    async fn describe(&self, key: &LockKey) -> Result<Option<LockInfo>, Error> {
        self.inner.describe(key).await
    }

    async fn describe_session(&self, s: SessionId) -> Result<Option<SessionInfo>, Error> {
        self.inner.describe_session(s).await
    }
}

async fn fails(bug: Bug, case: Case) -> String {
    let config = Config::default();
    let result = run_case(case, &config, |limits| async move {
        Ok(Broken::new(limits, bug))
    })
    .await;
    match result {
        Err(failure) => failure.to_string(),
        Ok(()) => panic!("case {} passed a backend with a planted bug", case.name()),
    }
}

async fn passes(bug: Bug, case: Case) {
    let result = run_case(case, &Config::default(), |limits| async move {
        Ok(Broken::new(limits, bug))
    })
    .await;
    assert!(result.is_ok(), "unrelated case failed: {result:?}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn catches_grants_without_holder_check() {
    let msg = fails(Bug::GrantsWithoutCheckingHolders, Case::Exclusion).await;
    assert!(msg.contains("WouldBlock"), "{msg}");
    fails(Bug::GrantsWithoutCheckingHolders, Case::Randomized).await;
    fails(Bug::GrantsWithoutCheckingHolders, Case::Fifo).await;
    // The wrapper is otherwise a correct backend: a case that never blocks passes.
    passes(Bug::GrantsWithoutCheckingHolders, Case::Validate).await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn catches_ignored_request_ids() {
    let msg = fails(Bug::IgnoresRequestIds, Case::IdempotentRetry).await;
    assert!(msg.contains("retried"), "{msg}");
    passes(Bug::IgnoresRequestIds, Case::Exclusion).await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn catches_lost_wakeups() {
    let msg = fails(Bug::LosesWakeups, Case::Exclusion).await;
    assert!(msg.contains("neither granted nor ended"), "{msg}");
    passes(Bug::LosesWakeups, Case::TryLock).await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn catches_steal_without_fence_bump() {
    let msg = fails(Bug::StealKeepsToken, Case::StealBumpsFence).await;
    assert!(msg.contains("bump the fencing token"), "{msg}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn catches_a_waiting_acquire_that_ignores_request_ids_or_overstays() {
    let msg = fails(Bug::WaitingIgnoresRequestIds, Case::AcquireWaiting).await;
    assert!(msg.contains("retried acquire"), "{msg}");
    let msg = fails(Bug::WaitingOverstays, Case::AcquireWaiting).await;
    assert!(msg.contains("outstayed"), "{msg}");
    passes(Bug::WaitingOverstays, Case::Exclusion).await;
}
