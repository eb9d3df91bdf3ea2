//! Steal, force release, validate, destroy and describe.

use crate::ctx::{ensure, expect_error, Check, Ctx};
use fencelock::{Command, LockError, LockKind, Mode, Response, WaitEnd, WaitStatus};

/// Steal takes the lock at once with a larger token; every later use of the
/// old token fails with `Stolen`; the queue is untouched.
pub async fn steal(cx: &Ctx) -> Check {
    let key = cx.key("steal");
    let (a, thief, c) = (
        cx.session().await?,
        cx.session().await?,
        cx.session().await?,
    );
    let ga = cx.granted(&key, a, Mode::Exclusive).await?;
    cx.queued(&key, c, Mode::Exclusive, None).await?;
    let r = cx
        .exec_rid(Command::Steal {
            key: key.clone(),
            session: thief,
        })
        .await;
    let Ok(Response::Granted(gt)) = r else {
        return Err(format!("steal should grant at once, got {r:?}"));
    };
    ensure!(
        gt.token > ga.token,
        "steal must bump the fencing token ({} -> {})",
        ga.token,
        gt.token
    );
    ensure!(
        cx.holders(&key).await? == vec![thief],
        "only the thief holds"
    );
    cx.still_waiting(&key, c).await?;
    let stolen = |e: &LockError| matches!(e, LockError::Stolen { .. });
    expect_error(
        &cx.release(&key, a, ga.token).await,
        "release with a stolen token",
        stolen,
    )?;
    expect_error(
        &cx.backend.validate(&key, ga.token).await,
        "validate a stolen token",
        stolen,
    )?;
    let ext = cx.extend(&key, a, ga.token).await;
    expect_error(&ext, "extend a stolen token", stolen)?;
    // The read/write kind: steal takes it in write mode from all readers.
    let rw = cx.key("steal-rw");
    let (r1, r2) = (cx.session().await?, cx.session().await?);
    let g1 = cx.granted(&rw, r1, Mode::Read).await?;
    cx.granted(&rw, r2, Mode::Read).await?;
    let r = cx
        .exec_rid(Command::Steal {
            key: rw.clone(),
            session: thief,
        })
        .await;
    ensure!(
        matches!(r, Ok(Response::Granted(g)) if g.mode == Mode::Write),
        "steal of a read/write lock takes write mode, got {r:?}"
    );
    expect_error(
        &cx.backend.validate(&rw, g1.token).await,
        "a reader's stolen token",
        stolen,
    )?;
    cx.released(&key, thief, gt.token).await?;
    cx.grant_of_wait(&key, c).await?;
    Ok(())
}

/// Force release removes every hold without an owner check and hands on.
pub async fn force_release(cx: &Ctx) -> Check {
    let key = cx.key("force");
    let (r1, r2, w) = (
        cx.session().await?,
        cx.session().await?,
        cx.session().await?,
    );
    let g1 = cx.granted(&key, r1, Mode::Read).await?;
    cx.granted(&key, r2, Mode::Read).await?;
    cx.queued(&key, w, Mode::Write, None).await?;
    let r = cx.exec(Command::ForceRelease { key: key.clone() }).await;
    ensure!(
        matches!(r, Ok(Response::ForceReleased { holds: 2 })),
        "force release of two readers answered {r:?}"
    );
    let gw = cx.grant_of_wait(&key, w).await?;
    ensure!(gw.token > g1.token, "the hand-off bumps the token");
    let v = cx.backend.validate(&key, g1.token).await;
    ensure!(
        v.is_err(),
        "a force-released token must not validate: {v:?}"
    );
    let rel = cx.release(&key, r1, g1.token).await;
    ensure!(
        rel.is_err(),
        "release of a force-released hold must fail, got {rel:?}"
    );
    let missing = cx.key("force-missing");
    let r = cx.exec(Command::ForceRelease { key: missing }).await;
    expect_error(&r, "force release of a missing lock", |e| {
        matches!(e, LockError::NotFound { .. })
    })?;
    Ok(())
}

/// Validate succeeds exactly while the token is a current hold.
pub async fn validate(cx: &Ctx) -> Check {
    let key = cx.key("validate");
    let (a, b) = (cx.session().await?, cx.session().await?);
    let ga = cx.granted(&key, a, Mode::Exclusive).await?;
    let v = cx.backend.validate(&key, ga.token).await;
    ensure!(
        matches!(&v, Ok(h) if h.session == a && h.token == ga.token && h.mode == Mode::Exclusive
            && h.granted_at == ga.granted_at),
        "validate of a current hold must describe it, got {v:?}"
    );
    let never = fencelock::FencingToken(ga.token.0 + 1_000_000);
    expect_error(
        &cx.backend.validate(&key, never).await,
        "validate of a token never issued",
        |e| matches!(e, LockError::NotHolder { .. }),
    )?;
    expect_error(
        &cx.backend
            .validate(&cx.key("validate-missing"), ga.token)
            .await,
        "validate on a missing lock",
        |e| matches!(e, LockError::NotFound { .. }),
    )?;
    expect_error(
        &cx.release(&key, b, ga.token).await,
        "release by a session that does not hold the token",
        |e| matches!(e, LockError::NotHolder { .. }),
    )?;
    cx.released(&key, a, ga.token).await?;
    expect_error(
        &cx.backend.validate(&key, ga.token).await,
        "validate after release",
        |e| matches!(e, LockError::NotHolder { .. }),
    )?;
    Ok(())
}

/// Destroy removes the lock: waiters end with NotFound/Destroyed, holds end,
/// and a re-created lock never reuses a token.
pub async fn destroy(cx: &Ctx) -> Check {
    let key = cx.key("destroy");
    let (a, b) = (cx.session().await?, cx.session().await?);
    let ga = cx.granted(&key, a, Mode::Exclusive).await?;
    cx.queued(&key, b, Mode::Exclusive, None).await?;
    let r = cx.exec(Command::Destroy { key: key.clone() }).await;
    ensure!(
        matches!(r, Ok(Response::Destroyed)),
        "destroy answered {r:?}"
    );
    let st = cx.outcome(&key, b).await?;
    ensure!(
        st == WaitStatus::Ended(WaitEnd::Destroyed),
        "a waiter of a destroyed lock ends with Destroyed, got {st:?}"
    );
    let d = cx.backend.describe(&key).await;
    ensure!(
        matches!(d, Ok(None)),
        "a destroyed lock does not exist: {d:?}"
    );
    expect_error(
        &cx.backend.validate(&key, ga.token).await,
        "validate on a destroyed lock",
        |e| matches!(e, LockError::NotFound { .. }),
    )?;
    expect_error(
        &cx.exec(Command::Destroy { key: key.clone() }).await,
        "destroying twice",
        |e| matches!(e, LockError::NotFound { .. }),
    )?;
    // Re-created (by acquire, with defaults): tokens keep increasing.
    let again = cx.granted(&key, b, Mode::Exclusive).await?;
    ensure!(
        again.token > ga.token,
        "a re-created lock must not reuse tokens ({} then {})",
        ga.token,
        again.token
    );
    Ok(())
}

/// Describe shows kind, TTL, holders, waiters in order and the last token;
/// describe_session shows a session's holds and waits.
pub async fn describe(cx: &Ctx) -> Check {
    let key = cx.key("describe");
    let ttl = cx.ms(1_000);
    let missing = cx.backend.describe(&key).await;
    ensure!(
        matches!(missing, Ok(None)),
        "describe of a missing lock: {missing:?}"
    );
    cx.create(&key, LockKind::ReadWrite, Some(ttl)).await?;
    let again = cx
        .exec(Command::CreateLock {
            key: key.clone(),
            kind: LockKind::ReadWrite,
            ttl_ms: Some(ttl),
        })
        .await;
    ensure!(
        matches!(again, Ok(Response::LockCreated { created: false, .. })),
        "creating an existing lock is idempotent, got {again:?}"
    );
    let (r, w1, w2) = (
        cx.session().await?,
        cx.session().await?,
        cx.session().await?,
    );
    let gr = cx.granted(&key, r, Mode::Read).await?;
    let timeout = cx.ms(500);
    cx.queued(&key, w1, Mode::Write, Some(timeout)).await?;
    cx.queued(&key, w2, Mode::Write, None).await?;
    let info = cx.describe(&key).await?;
    ensure!(
        info.kind == LockKind::ReadWrite && info.ttl_ms == Some(ttl),
        "kind and ttl: {info:?}"
    );
    ensure!(info.last_token == gr.token, "last token: {info:?}");
    let [h] = &info.holders[..] else {
        return Err(format!("one holder expected: {info:?}"));
    };
    ensure!(
        h.session == r
            && h.mode == Mode::Read
            && h.token == gr.token
            && h.granted_at == gr.granted_at
            && h.expires_at == Some(gr.granted_at + ttl),
        "holder fields: {h:?} vs grant {gr:?}"
    );
    let [q1, q2] = &info.waiters[..] else {
        return Err(format!("two waiters expected: {info:?}"));
    };
    ensure!(
        q1.session == w1 && q1.mode == Mode::Write && q1.deadline == Some(q1.since + timeout),
        "first waiter: {q1:?}"
    );
    ensure!(
        q2.session == w2 && q2.deadline.is_none() && q2.since >= q1.since,
        "second waiter: {q2:?}"
    );
    let s = cx.backend.describe_session(r).await;
    ensure!(
        matches!(&s, Ok(Some(i)) if i.holds == vec![(key.clone(), gr.token)] && i.waits.is_empty()),
        "describe_session of the holder: {s:?}"
    );
    let s = cx.backend.describe_session(w1).await;
    ensure!(
        matches!(&s, Ok(Some(i)) if i.holds.is_empty() && i.waits == vec![key.clone()]),
        "describe_session of a waiter: {s:?}"
    );
    Ok(())
}
