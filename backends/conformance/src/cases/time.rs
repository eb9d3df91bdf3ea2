//! Everything that happens because time passes: wait deadlines, leases,
//! extend, session expiry. The backend must do these on its own (no client
//! call triggers them).

use crate::ctx::{ensure, expect_error, Check, Ctx};
use fencelock::{Command, LockError, LockKind, Mode, Response, WaitEnd, WaitStatus};
use tokio::time::Instant;

/// A queued wait whose deadline passes ends with a timeout and leaves the
/// queue; the waiters behind it stay queued.
pub async fn wait_timeout(cx: &Ctx) -> Check {
    let key = cx.key("deadline");
    let (a, b, c) = (
        cx.session().await?,
        cx.session().await?,
        cx.session().await?,
    );
    let ga = cx.granted(&key, a, Mode::Exclusive).await?;
    let timeout = cx.ms(3);
    let sent = Instant::now();
    let r = cx.acquire(&key, b, Mode::Exclusive, Some(timeout)).await;
    let Ok(Response::Queued {
        deadline: Some(deadline),
        ..
    }) = r
    else {
        return Err(format!(
            "a timed acquire should queue with a deadline, got {r:?}"
        ));
    };
    ensure!(
        deadline >= ga.granted_at + timeout,
        "deadline {deadline} must be now + timeout (granted_at {} + {timeout})",
        ga.granted_at
    );
    cx.queued(&key, c, Mode::Exclusive, None).await?;
    let status = cx.outcome(&key, b).await?;
    let waited = sent.elapsed().as_millis() as u64;
    ensure!(
        status == WaitStatus::Ended(WaitEnd::TimedOut),
        "the wait should time out, got {status:?}"
    );
    ensure!(
        waited + 2 >= timeout,
        "the wait ended after {waited} ms, before its {timeout} ms timeout"
    );
    ensure!(
        cx.waiters(&key).await? == vec![c],
        "the timed-out waiter must leave the queue"
    );
    ensure!(
        cx.holders(&key).await? == vec![a],
        "the holder keeps the lock"
    );
    cx.released(&key, a, ga.token).await?;
    cx.grant_of_wait(&key, c).await?;
    Ok(())
}

/// A hold ends at its lease's expiry and the next waiter is granted at that
/// instant; the expired token then fails with `Expired`.
pub async fn lease_expiry_grants_next(cx: &Ctx) -> Check {
    let key = cx.key("lease");
    let ttl = cx.ms(3);
    cx.create(&key, LockKind::Exclusive, Some(ttl)).await?;
    let (a, b) = (cx.session().await?, cx.session().await?);
    let ga = cx.granted(&key, a, Mode::Exclusive).await?;
    ensure!(
        ga.expires_at == Some(ga.granted_at + ttl),
        "lease must end at granted_at + ttl: {ga:?}"
    );
    cx.queued(&key, b, Mode::Exclusive, Some(cx.ms(100)))
        .await?;
    let gb = cx.grant_of_wait(&key, b).await?;
    ensure!(
        Some(gb.granted_at) == ga.expires_at,
        "the next waiter must be granted at the instant the lease ended \
         ({:?}), not at {}",
        ga.expires_at,
        gb.granted_at
    );
    ensure!(
        gb.expires_at == Some(gb.granted_at + ttl),
        "the new hold gets a full lease: {gb:?}"
    );
    let r = cx.release(&key, a, ga.token).await;
    expect_error(&r, "releasing an expired hold", |e| {
        matches!(e, LockError::Expired { .. })
    })?;
    let v = cx.backend.validate(&key, ga.token).await;
    expect_error(&v, "validating an expired token", |e| {
        matches!(e, LockError::Expired { .. })
    })?;
    Ok(())
}

/// `extend` pushes the lease to now + ttl; a hold extended in time outlives
/// its first expiry; an expired hold cannot be extended.
pub async fn extend(cx: &Ctx) -> Check {
    let key = cx.key("extend");
    let ttl = cx.ms(8);
    cx.create(&key, LockKind::Exclusive, Some(ttl)).await?;
    let (a, b) = (cx.session().await?, cx.session().await?);
    let ga = cx.granted(&key, a, Mode::Exclusive).await?;
    let got = Instant::now();
    cx.sleep_units(3).await;
    let r = cx.extend(&key, a, ga.token).await;
    let Ok(Response::Extended {
        expires_at: Some(new_expiry),
    }) = r
    else {
        return Err(format!("extend should answer the new expiry, got {r:?}"));
    };
    ensure!(
        ga.expires_at.is_some_and(|old| new_expiry > old),
        "extend must move the expiry later: {:?} -> {new_expiry}",
        ga.expires_at
    );
    let r = cx.extend(&key, b, ga.token).await;
    expect_error(&r, "extend by a non-holder", |e| {
        matches!(e, LockError::NotHolder { .. })
    })?;
    // Past the first expiry (8 units after the grant), before the new one (~11).
    tokio::time::sleep_until(got + cx.units(9)).await;
    let v = cx.backend.validate(&key, ga.token).await;
    ensure!(
        matches!(&v, Ok(h) if h.expires_at == Some(new_expiry)),
        "an extended hold must still be valid after its first expiry, got {v:?}"
    );
    let st = cx.holders(&key).await?;
    ensure!(st == vec![a], "the extended hold is still listed: {st:?}");
    // Well past the new expiry: gone, and extend says so.
    tokio::time::sleep_until(got + cx.units(14)).await;
    let r = cx.extend(&key, a, ga.token).await;
    expect_error(&r, "extending an expired hold", |e| {
        matches!(e, LockError::Expired { .. })
    })?;
    // Without a TTL there is nothing to extend, and that is not an error.
    let plain = cx.key("extend-no-ttl");
    let g = cx.granted(&plain, a, Mode::Exclusive).await?;
    let r = cx.extend(&plain, a, g.token).await;
    ensure!(
        matches!(r, Ok(Response::Extended { expires_at: None })),
        "extend of a hold without lease answers no expiry, got {r:?}"
    );
    Ok(())
}

/// A session that is kept alive lives on; one that is not expires after its
/// TTL, and in that transition all its holds end and all its waits leave.
pub async fn session_expiry_releases_all(cx: &Ctx) -> Check {
    let ttl = cx.ms(4);
    // Kept alive for twice its TTL: still there.
    let kept = cx.session_with_ttl(ttl).await?;
    let kept_key = cx.key("kept");
    let gk = cx.granted(&kept_key, kept, Mode::Exclusive).await?;
    let mut last_expiry = 0;
    for _ in 0..8 {
        cx.sleep_units(1).await;
        match cx.exec_rid(Command::KeepAlive { session: kept }).await {
            Ok(Response::KeptAlive { expires_at }) => {
                ensure!(
                    expires_at >= last_expiry,
                    "keep-alive moved the expiry back"
                );
                last_expiry = expires_at;
            }
            other => return Err(format!("keep-alive answered {other:?}")),
        }
    }
    ensure!(
        cx.backend.validate(&kept_key, gk.token).await.is_ok(),
        "a kept-alive session keeps its holds"
    );

    // Not kept alive: everything goes at once.
    let (x, y, z) = (cx.key("x"), cx.key("y"), cx.key("z"));
    let doomed = cx.session_with_ttl(ttl).await?;
    let (other, blocker) = (cx.session().await?, cx.session().await?);
    let gx = cx.granted(&x, doomed, Mode::Exclusive).await?;
    cx.granted(&y, doomed, Mode::Read).await?;
    cx.granted(&z, blocker, Mode::Exclusive).await?;
    cx.queued(&z, doomed, Mode::Exclusive, None).await?;
    cx.queued(&x, other, Mode::Exclusive, Some(cx.ms(200)))
        .await?;
    let g = cx.grant_of_wait(&x, other).await?;
    ensure!(
        g.token > gx.token,
        "the hand-off after expiry bumps the token"
    );
    ensure!(
        cx.holders(&y).await?.is_empty(),
        "the expired session's read hold must end"
    );
    ensure!(
        cx.waiters(&z).await?.is_empty(),
        "the expired session's wait must leave the queue"
    );
    let st = cx.status_now(&z, doomed).await?;
    ensure!(
        st == WaitStatus::Ended(WaitEnd::SessionEnded),
        "the expired session's wait ends with SessionEnded, got {st:?}"
    );
    let s = cx.backend.describe_session(doomed).await;
    ensure!(
        matches!(s, Ok(None)),
        "describe_session of an expired session: {s:?}"
    );
    let r = cx.acquire(&y, doomed, Mode::Read, None).await;
    expect_error(&r, "an expired session cannot acquire", |e| {
        matches!(e, LockError::SessionNotFound { .. })
    })?;
    let v = cx.backend.validate(&x, gx.token).await;
    expect_error(&v, "a token of an expired session", |e| {
        matches!(e, LockError::Expired { .. })
    })?;
    Ok(())
}

/// `execute_waiting`: an acquire that queues may come back `Granted` within
/// the wait it was given, else `Queued` (and `wait` tells the rest). Either
/// way the grant is the one a plain acquire gets (FIFO order, a higher
/// token), the call does not outstay its wait, and retrying it with the
/// same request id neither queues nor grants a second time.
pub async fn acquire_waiting(cx: &Ctx) -> Check {
    let key = cx.key("waiting");
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
    let ga = cx.granted(&key, a, Mode::Exclusive).await?;
    // Nobody releases: `Queued`, after about the wait given.
    let sent = Instant::now();
    let r = cx
        .backend
        .execute_waiting(acquire(b), Some(cx.rid()), cx.units(2))
        .await;
    ensure!(
        matches!(r, Ok(Response::Queued { .. })),
        "an acquire behind a holder that stays should answer Queued, got {r:?}"
    );
    ensure!(
        sent.elapsed() < cx.units(2 + 20),
        "execute_waiting outstayed its wait of {:?}: {:?}",
        cx.units(2),
        sent.elapsed()
    );
    // `c` queues behind `b` and waits in the call while the lock changes hands.
    let rid_c = cx.rid();
    let call = {
        let (backend, command, wait) = (cx.backend.clone(), acquire(c), cx.units(200));
        tokio::spawn(async move { backend.execute_waiting(command, Some(rid_c), wait).await })
    };
    cx.sleep_units(2).await;
    cx.released(&key, a, ga.token).await?;
    let gb = cx.grant_of_wait(&key, b).await?;
    ensure!(gb.token > ga.token, "tokens rise: {:?} after {:?}", gb, ga);
    cx.released(&key, b, gb.token).await?;
    let answer = call
        .await
        .map_err(|e| format!("the execute_waiting task failed: {e}"))?;
    let gc = match answer {
        Ok(Response::Granted(g)) => g,
        Ok(Response::Queued { .. }) => cx.grant_of_wait(&key, c).await?,
        other => return Err(format!("c's execute_waiting answered {other:?}")),
    };
    ensure!(
        gc.token > gb.token,
        "c, queued behind b, must get a later grant: {gc:?} after {gb:?}"
    );
    ensure!(
        cx.holders(&key).await? == vec![c],
        "c holds the lock after b"
    );
    // The same request again: the first answer's effect, nothing new.
    let again = cx
        .backend
        .execute_waiting(acquire(c), Some(rid_c), cx.units(2))
        .await;
    match again {
        Ok(Response::Granted(g)) => ensure!(
            g.token == gc.token,
            "a retried acquire was granted anew: {g:?}, first {gc:?}"
        ),
        Ok(Response::Queued { .. }) => {}
        other => return Err(format!("the retried acquire answered {other:?}")),
    }
    ensure!(
        cx.holders(&key).await? == vec![c] && cx.waiters(&key).await?.is_empty(),
        "a retried acquire must not queue or grant again"
    );
    Ok(())
}
