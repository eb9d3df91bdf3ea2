//! Exclusion, sharing, queue order, try-lock and cancel.

use crate::ctx::{ensure, expect_error, Check, Ctx};
use fencelock::{Command, LockError, LockKind, Mode, Response, WaitStatus};

/// One exclusive holder; others get `WouldBlock` or queue; release hands on
/// with a larger token. Same for the write mode of a read/write lock.
pub async fn exclusion(cx: &Ctx) -> Check {
    for (name, mode, other) in [
        ("mutex", Mode::Exclusive, Mode::Exclusive),
        ("rw", Mode::Write, Mode::Read),
    ] {
        let key = cx.key(name);
        let (a, b) = (cx.session().await?, cx.session().await?);
        let ga = cx.granted(&key, a, mode).await?;
        let r = cx.acquire(&key, b, other, Some(0)).await;
        expect_error(&r, "a second holder must get WouldBlock", |e| {
            matches!(e, LockError::WouldBlock { .. })
        })?;
        cx.queued(&key, b, other, None).await?;
        ensure!(
            cx.holders(&key).await? == vec![a],
            "only {a} may hold {key} while {b} waits"
        );
        cx.still_waiting(&key, b).await?;
        cx.released(&key, a, ga.token).await?;
        let gb = cx.grant_of_wait(&key, b).await?;
        ensure!(
            gb.token > ga.token,
            "tokens must increase: {} then {}",
            ga.token,
            gb.token
        );
        ensure!(gb.mode == other, "granted mode {} != {other}", gb.mode);
        ensure!(
            cx.holders(&key).await? == vec![b],
            "after the hand-off only {b} holds {key}"
        );
    }
    Ok(())
}

/// Readers share; a writer is excluded while they hold.
pub async fn rw_sharing(cx: &Ctx) -> Check {
    let key = cx.key("shared");
    let (r1, r2, w) = (
        cx.session().await?,
        cx.session().await?,
        cx.session().await?,
    );
    let g1 = cx.granted(&key, r1, Mode::Read).await?;
    let g2 = cx.granted(&key, r2, Mode::Read).await?;
    ensure!(g2.token > g1.token, "reader tokens must increase");
    let r = cx.acquire(&key, w, Mode::Write, Some(0)).await;
    expect_error(&r, "a writer must not join readers", |e| {
        matches!(e, LockError::WouldBlock { .. })
    })?;
    let info = cx.describe(&key).await?;
    ensure!(
        info.kind == LockKind::ReadWrite && info.holders.len() == 2,
        "two read holders expected, describe says {info:?}"
    );
    ensure!(
        info.holders.iter().all(|h| h.mode == Mode::Read),
        "both holds are reads: {info:?}"
    );
    cx.queued(&key, w, Mode::Write, None).await?;
    cx.released(&key, r1, g1.token).await?;
    cx.still_waiting(&key, w).await?;
    cx.released(&key, r2, g2.token).await?;
    let gw = cx.grant_of_wait(&key, w).await?;
    ensure!(gw.mode == Mode::Write, "writer granted in {}", gw.mode);
    Ok(())
}

/// Consecutive readers at the head are granted together; a reader behind a
/// queued writer waits for it.
pub async fn reader_batches(cx: &Ctx) -> Check {
    let key = cx.key("batches");
    let w0 = cx.session().await?;
    let (r1, r2, w1, r3) = (
        cx.session().await?,
        cx.session().await?,
        cx.session().await?,
        cx.session().await?,
    );
    let g0 = cx.granted(&key, w0, Mode::Write).await?;
    cx.queued(&key, r1, Mode::Read, None).await?;
    cx.queued(&key, r2, Mode::Read, None).await?;
    cx.queued(&key, w1, Mode::Write, None).await?;
    cx.queued(&key, r3, Mode::Read, None).await?;
    ensure!(
        cx.waiters(&key).await? == vec![r1, r2, w1, r3],
        "queue order must be arrival order"
    );
    cx.released(&key, w0, g0.token).await?;
    let g1 = cx.grant_of_wait(&key, r1).await?;
    let g2 = cx.grant_of_wait(&key, r2).await?;
    ensure!(
        cx.holders(&key).await? == vec![r1, r2],
        "the two head readers must be granted together"
    );
    cx.still_waiting(&key, w1).await?;
    cx.still_waiting(&key, r3).await?;
    cx.released(&key, r1, g1.token).await?;
    cx.still_waiting(&key, w1).await?;
    cx.released(&key, r2, g2.token).await?;
    let gw = cx.grant_of_wait(&key, w1).await?;
    cx.still_waiting(&key, r3).await?;
    cx.released(&key, w1, gw.token).await?;
    let g3 = cx.grant_of_wait(&key, r3).await?;
    ensure!(
        g0.token < g1.token && g1.token < g2.token && g2.token < gw.token && gw.token < g3.token,
        "tokens must follow grant order"
    );
    Ok(())
}

/// A reader arriving while readers hold and a writer waits queues behind the
/// writer.
pub async fn writer_not_starved(cx: &Ctx) -> Check {
    let key = cx.key("no-starvation");
    let (r1, w, r2) = (
        cx.session().await?,
        cx.session().await?,
        cx.session().await?,
    );
    let g1 = cx.granted(&key, r1, Mode::Read).await?;
    cx.queued(&key, w, Mode::Write, None).await?;
    let late = cx.acquire(&key, r2, Mode::Read, Some(0)).await;
    expect_error(
        &late,
        "a reader must not overtake a queued writer (try-lock)",
        |e| matches!(e, LockError::WouldBlock { .. }),
    )?;
    cx.queued(&key, r2, Mode::Read, None).await?;
    ensure!(
        cx.holders(&key).await? == vec![r1],
        "the late reader must not join the holding reader"
    );
    cx.released(&key, r1, g1.token).await?;
    let gw = cx.grant_of_wait(&key, w).await?;
    cx.still_waiting(&key, r2).await?;
    cx.released(&key, w, gw.token).await?;
    cx.grant_of_wait(&key, r2).await?;
    Ok(())
}

/// Grants follow arrival order, and a newcomer never overtakes the queue.
pub async fn fifo(cx: &Ctx) -> Check {
    let key = cx.key("fifo");
    let holder = cx.session().await?;
    let mut token = cx.granted(&key, holder, Mode::Exclusive).await?.token;
    let mut queue = Vec::new();
    for _ in 0..6 {
        let s = cx.session().await?;
        cx.queued(&key, s, Mode::Exclusive, None).await?;
        queue.push(s);
    }
    ensure!(
        cx.waiters(&key).await? == queue,
        "describe must list waiters in arrival order"
    );
    let mut current = holder;
    for (i, &next) in queue.iter().enumerate() {
        cx.released(&key, current, token).await?;
        if i == 2 {
            // A newcomer right after a release must not overtake the queue.
            let late = cx.session().await?;
            let r = cx.acquire(&key, late, Mode::Exclusive, Some(0)).await;
            expect_error(&r, "a newcomer must not overtake queued waiters", |e| {
                matches!(e, LockError::WouldBlock { .. })
            })?;
        }
        let g = cx.grant_of_wait(&key, next).await?;
        ensure!(g.token > token, "tokens must increase along the queue");
        for &later in &queue[i + 1..] {
            cx.still_waiting(&key, later).await?;
        }
        current = next;
        token = g.token;
    }
    Ok(())
}

/// `timeout = 0` grants when free, else `WouldBlock` and queues nothing.
pub async fn try_lock(cx: &Ctx) -> Check {
    let key = cx.key("try");
    let (a, b) = (cx.session().await?, cx.session().await?);
    let ga = cx.granted(&key, a, Mode::Exclusive).await?;
    let r = cx.acquire(&key, b, Mode::Exclusive, Some(0)).await;
    expect_error(&r, "try-lock on a held lock", |e| {
        matches!(e, LockError::WouldBlock { .. })
    })?;
    ensure!(
        cx.waiters(&key).await?.is_empty(),
        "try-lock must queue nothing"
    );
    let st = cx.status_now(&key, b).await?;
    ensure!(
        st == WaitStatus::NotWaiting,
        "a failed try-lock is no wait, got {st:?}"
    );
    cx.released(&key, a, ga.token).await?;
    cx.granted(&key, b, Mode::Exclusive).await?;
    Ok(())
}

/// `CancelWait` leaves the queue; the lock is not granted to the canceller
/// later, and the queue behind it moves up.
pub async fn cancel_dequeues(cx: &Ctx) -> Check {
    let key = cx.key("cancel");
    let (a, b, c) = (
        cx.session().await?,
        cx.session().await?,
        cx.session().await?,
    );
    let ga = cx.granted(&key, a, Mode::Exclusive).await?;
    cx.queued(&key, b, Mode::Exclusive, None).await?;
    cx.queued(&key, c, Mode::Exclusive, None).await?;
    let r = cx
        .exec_rid(Command::CancelWait {
            key: key.clone(),
            session: b,
        })
        .await;
    ensure!(
        matches!(r, Ok(Response::WaitCancelled { was_waiting: true })),
        "cancel of a queued wait answered {r:?}"
    );
    ensure!(
        cx.waiters(&key).await? == vec![c],
        "after the cancel only {c} waits"
    );
    let again = cx
        .exec_rid(Command::CancelWait {
            key: key.clone(),
            session: b,
        })
        .await;
    ensure!(
        matches!(again, Ok(Response::WaitCancelled { was_waiting: false })),
        "a second cancel must say was_waiting: false, got {again:?}"
    );
    cx.released(&key, a, ga.token).await?;
    let gc = cx.grant_of_wait(&key, c).await?;
    let st = cx.status_now(&key, b).await?;
    ensure!(
        !matches!(st, WaitStatus::Granted(_) | WaitStatus::Waiting),
        "the cancelled session must not be granted or queued, got {st:?}"
    );
    ensure!(
        cx.holders(&key).await? == vec![c],
        "{c} holds after the hand-off"
    );
    cx.released(&key, c, gc.token).await?;
    Ok(())
}
