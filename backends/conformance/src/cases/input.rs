//! Idempotent retries, bad input and limits.

use crate::ctx::{ensure, expect_error, Check, Ctx};
use fencelock::{Command, LockError, LockKey, LockKind, Mode, Response, SessionId};
use std::sync::LazyLock;

/// The limits [`crate::Case::Limits`] runs with.
pub(crate) static LIMITS: LazyLock<fencelock::Limits> = LazyLock::new(|| fencelock::Limits {
    max_sessions: 8,
    max_waiters_per_lock: 2,
    max_locks_per_session: 3,
    max_ttl_ms: 600_000,
    ..fencelock::Limits::default()
});

/// The same `(session, request id)` applied twice returns the first result
/// and changes nothing: no double grant, no double release, no second queue
/// entry, no second steal.
pub async fn idempotent_retry(cx: &Ctx) -> Check {
    let key = cx.key("retry");
    let (a, b, c) = (
        cx.session().await?,
        cx.session().await?,
        cx.session().await?,
    );
    let acquire = |session| Command::Acquire {
        key: key.clone(),
        session,
        mode: Mode::Exclusive,
        timeout_ms: None,
    };
    let twice = |command: Command| {
        let rid = cx.rid();
        async move {
            let first = cx.backend.execute(command.clone(), Some(rid)).await;
            let second = cx.backend.execute(command.clone(), Some(rid)).await;
            (first, second)
        }
    };
    let (first, second) = twice(acquire(a)).await;
    let Ok(Response::Granted(g)) = &first else {
        return Err(format!("acquire answered {first:?}"));
    };
    ensure!(
        first == second,
        "a retried acquire must answer the first result: {first:?} then {second:?}"
    );
    let info = cx.describe(&key).await?;
    ensure!(
        info.holders.len() == 1 && info.last_token == g.token,
        "a retried acquire must not grant twice: {info:?}"
    );
    let (q1, q2) = twice(acquire(b)).await;
    ensure!(
        matches!(q1, Ok(Response::Queued { .. })) && q1 == q2,
        "a retried queued acquire: {q1:?} then {q2:?}"
    );
    ensure!(
        cx.waiters(&key).await? == vec![b],
        "a retried acquire must not queue twice"
    );
    let (r1, r2) = twice(Command::Release {
        key: key.clone(),
        session: a,
        token: g.token,
    })
    .await;
    ensure!(
        matches!(r1, Ok(Response::Released)) && r1 == r2,
        "a retried release answers Released again: {r1:?} then {r2:?}"
    );
    let gb = cx.grant_of_wait(&key, b).await?;
    let again = cx.status_now(&key, b).await?;
    ensure!(
        again == fencelock::WaitStatus::Granted(gb),
        "asking for a wait's outcome again gives the same grant: {again:?}"
    );
    let (s1, s2) = twice(Command::Steal {
        key: key.clone(),
        session: c,
    })
    .await;
    let Ok(Response::Granted(gs)) = &s1 else {
        return Err(format!("steal answered {s1:?}"));
    };
    ensure!(s1 == s2, "a retried steal: {s1:?} then {s2:?}");
    let info = cx.describe(&key).await?;
    ensure!(
        info.last_token == gs.token && info.holders.len() == 1,
        "a retried steal must not steal twice: {info:?}"
    );
    // One id for two different commands is refused, not mis-answered.
    let rid = cx.rid();
    let ok = cx.backend.execute(acquire(a), Some(rid)).await;
    ensure!(ok.is_ok(), "acquire answered {ok:?}");
    let other = cx
        .backend
        .execute(
            Command::CancelWait {
                key: key.clone(),
                session: a,
            },
            Some(rid),
        )
        .await;
    expect_error(
        &other,
        "a request id reused for another command",
        |e| matches!(e, LockError::InvalidArgument { field, .. } if field == "request_id"),
    )?;
    Ok(())
}

/// Bad input is an error naming the field, and leaves the state unchanged.
pub async fn bad_input(cx: &Ctx) -> Check {
    let invalid = |field: &'static str| move |e: &LockError| matches!(e, LockError::InvalidArgument { field: f, .. } if f == field);
    for (ns, name, field) in [
        ("", "x", "namespace"),
        ("ns", "", "name"),
        ("ns", "a\u{7}b", "name"),
        ("n\u{0}s", "x", "namespace"),
    ] {
        let r = LockKey::new(ns, name).map_err(fencelock::Error::from);
        expect_error(&r, "an invalid key", invalid(field))?;
    }
    let long = "x".repeat(fencelock::MAX_NAME_LEN + 1);
    expect_error(
        &LockKey::new("ns", &long).map_err(fencelock::Error::from),
        "a too long name",
        invalid("name"),
    )?;

    let key = cx.key("bad");
    let (a, b) = (cx.session().await?, cx.session().await?);
    let g = cx.granted(&key, a, Mode::Exclusive).await?;
    cx.queued(&key, b, Mode::Exclusive, None).await?;
    let before = cx.describe(&key).await?;

    let r = cx.exec(Command::OpenSession { ttl_ms: 0 }).await;
    expect_error(&r, "a zero session ttl", invalid("ttl_ms"))?;
    let r = cx.exec(Command::OpenSession { ttl_ms: u64::MAX }).await;
    expect_error(&r, "a session ttl above the limit", invalid("ttl_ms"))?;
    let r = cx
        .exec(Command::CreateLock {
            key: cx.key("bad-ttl"),
            kind: LockKind::Exclusive,
            ttl_ms: Some(0),
        })
        .await;
    expect_error(&r, "a zero lock ttl", invalid("ttl_ms"))?;
    let r = cx
        .exec(Command::CreateLock {
            key: key.clone(),
            kind: LockKind::ReadWrite,
            ttl_ms: None,
        })
        .await;
    expect_error(&r, "creating an existing key with another kind", |e| {
        matches!(e, LockError::AlreadyExists { .. })
    })?;
    let c = cx.session().await?;
    let r = cx.acquire(&key, c, Mode::Read, None).await;
    expect_error(&r, "a read acquire on a mutex", |e| {
        matches!(e, LockError::AlreadyExists { .. })
    })?;
    let ghost = SessionId(u64::MAX);
    let r = cx.acquire(&key, ghost, Mode::Exclusive, None).await;
    expect_error(&r, "acquire by an unknown session", |e| {
        matches!(e, LockError::SessionNotFound { .. })
    })?;
    let r = cx.exec(Command::KeepAlive { session: ghost }).await;
    expect_error(&r, "keep-alive of an unknown session", |e| {
        matches!(e, LockError::SessionNotFound { .. })
    })?;
    let r = cx.acquire(&key, a, Mode::Exclusive, None).await;
    expect_error(&r, "acquiring a lock already held", |e| {
        matches!(e, LockError::AlreadyHeld { .. })
    })?;
    let r = cx.acquire(&key, b, Mode::Exclusive, None).await;
    expect_error(&r, "acquiring a lock already waited for", |e| {
        matches!(e, LockError::AlreadyWaiting { .. })
    })?;
    let r = cx.release(&key, b, g.token).await;
    expect_error(&r, "release by a waiter", |e| {
        matches!(e, LockError::NotHolder { .. })
    })?;
    let after = cx.describe(&key).await?;
    ensure!(
        before == after,
        "rejected commands must not change the lock: {before:?} vs {after:?}"
    );
    Ok(())
}

/// Limits answer `ResourceExhausted` naming the limit, and nothing changes.
pub async fn limits(cx: &Ctx) -> Check {
    let exhausted = |limit: &'static str| move |e: &LockError| matches!(e, LockError::ResourceExhausted { limit: l, .. } if l == limit);
    let key = cx.key("crowded");
    let (h, w1, w2, w3) = (
        cx.session().await?,
        cx.session().await?,
        cx.session().await?,
        cx.session().await?,
    );
    cx.granted(&key, h, Mode::Exclusive).await?;
    cx.queued(&key, w1, Mode::Exclusive, None).await?;
    cx.queued(&key, w2, Mode::Exclusive, None).await?;
    let r = cx.acquire(&key, w3, Mode::Exclusive, None).await;
    expect_error(&r, "a third waiter", exhausted("max_waiters_per_lock"))?;
    ensure!(
        cx.waiters(&key).await? == vec![w1, w2],
        "the refused waiter must not be queued"
    );
    // max_locks_per_session = 3 (holds plus waits).
    for name in ["l1", "l2"] {
        cx.granted(&cx.key(name), h, Mode::Exclusive).await?;
    }
    let r = cx.acquire(&cx.key("l3"), h, Mode::Exclusive, None).await;
    expect_error(
        &r,
        "a fourth lock in one session",
        exhausted("max_locks_per_session"),
    )?;
    let r = cx
        .exec(Command::OpenSession {
            ttl_ms: LIMITS.max_ttl_ms + 1,
        })
        .await;
    expect_error(
        &r,
        "a ttl above max_ttl_ms",
        |e| matches!(e, LockError::InvalidArgument { field, .. } if field == "ttl_ms"),
    )?;
    // max_sessions = 8: at most 4 more opens succeed.
    let mut refused = None;
    for _ in 0..LIMITS.max_sessions {
        match cx.session().await {
            Ok(_) => {}
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    ensure!(
        refused
            .as_deref()
            .is_some_and(|e| e.contains("max_sessions")),
        "opening more than max_sessions sessions must fail naming the limit, got {refused:?}"
    );
    Ok(())
}
