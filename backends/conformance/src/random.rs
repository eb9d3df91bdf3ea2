//! The randomized case: many sessions doing random acquires, try-locks,
//! timed waits, cancels, steals, extends and releases with random timing on
//! a few keys (a mutex, a read/write lock, a mutex with a short lease),
//! writing to a [`FencedResource`] while they hold. Afterwards the recorded
//! grant history is checked:
//!
//! 1. tokens are unique and follow server grant time;
//! 2. holds that ended by their own release never overlapped an
//!    incompatible hold (client-observed critical sections), and a hold that
//!    ended before another began has the smaller token;
//! 3. the fenced resource accepted every write of those holds (a double
//!    grant or a token out of order shows up as a rejected write);
//! 4. every wait ended granted or timed out (no hang), and when every
//!    session is closed no key has holders or waiters left.

use crate::ctx::{ensure, lock_error, Check, Ctx};
use fencelock::{
    Command, Error, FencingToken, Grant, LockError, LockKey, LockKind, Mode, Response, SessionId,
    WaitEnd, WaitStatus,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

/// A resource guarded by locks: it remembers the highest token it has seen
/// per key and rejects writes with a lower one (readers may share).
#[derive(Debug, Default)]
pub struct FencedResource {
    fences: Mutex<HashMap<LockKey, Fence>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Fence {
    /// Highest token of an accepted write.
    max_write: u64,
    /// Highest token of any accepted access.
    max_any: u64,
}

impl FencedResource {
    /// An exclusive write: accepted only with a token at least as high as
    /// every token seen (readers' included).
    pub fn write(&self, key: &LockKey, token: FencingToken) -> bool {
        let Ok(mut fences) = self.fences.lock() else {
            return false;
        };
        let f = fences.entry(key.clone()).or_default();
        if token.0 < f.max_any {
            return false;
        }
        f.max_write = token.0;
        f.max_any = token.0;
        true
    }

    /// A shared read: accepted only with a token at least as high as the
    /// last accepted write.
    pub fn read(&self, key: &LockKey, token: FencingToken) -> bool {
        let Ok(mut fences) = self.fences.lock() else {
            return false;
        };
        let f = fences.entry(key.clone()).or_default();
        if token.0 < f.max_write {
            return false;
        }
        f.max_any = f.max_any.max(token.0);
        true
    }
}

/// A small deterministic generator (splitmix64): no dependency, replayable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Debug, Clone)]
struct Hold {
    key: usize,
    session: SessionId,
    grant: Grant,
    got: Instant,
    released: Instant,
    /// Ended by its own successful release (not stolen, expired, ...).
    clean: bool,
    rejected_writes: u32,
}

#[derive(Default)]
struct Log {
    holds: Vec<Hold>,
    timeouts: u64,
    would_block: u64,
    cancels: u64,
    vanished: u64,
}

struct Shared {
    keys: Vec<LockKey>,
    resource: FencedResource,
    log: Mutex<Log>,
}

const LEASE_KEY: usize = 2;
const RW_KEY: usize = 1;

pub(crate) async fn randomized(cx: &Ctx) -> Check {
    let keys = vec![cx.key("mutex"), cx.key("rw"), cx.key("leased")];
    cx.create(&keys[0], LockKind::Exclusive, None).await?;
    cx.create(&keys[RW_KEY], LockKind::ReadWrite, None).await?;
    cx.create(&keys[LEASE_KEY], LockKind::Exclusive, Some(cx.ms(4)))
        .await?;
    let shared = Arc::new(Shared {
        keys,
        resource: FencedResource::default(),
        log: Mutex::new(Log::default()),
    });
    let end = Instant::now() + cx.units(cx.config.random_units);
    let mut sessions = Vec::new();
    for _ in 0..cx.config.random_workers.max(2) {
        sessions.push(cx.session().await?);
    }
    let results = futures::future::join_all(sessions.iter().enumerate().map(|(i, &s)| {
        let seed = cx.config.seed ^ (i as u64).wrapping_mul(0x1000_0000_01b3);
        worker(cx, &shared, s, Rng(seed), end)
    }))
    .await;
    let seed = cx.config.seed;
    for r in results {
        r.map_err(|e| format!("{e} (seed {seed:#x})"))?;
    }
    for &session in &sessions {
        let r = cx.exec(Command::CloseSession { session }).await;
        ensure!(r.is_ok(), "closing {session} answered {r:?}");
    }
    for key in &shared.keys {
        let info = cx.describe(key).await?;
        ensure!(
            info.holders.is_empty() && info.waiters.is_empty(),
            "with every session closed, {key} still has holders or waiters: {info:?}"
        );
    }
    let log = match shared.log.lock() {
        Ok(mut l) => std::mem::take(&mut *l),
        Err(_) => return Err("log poisoned".into()),
    };
    check_history(&log, &shared.keys).map_err(|e| format!("{e} (seed {seed:#x})"))
}

/// One session's random life until `end`.
async fn worker(cx: &Ctx, sh: &Shared, session: SessionId, mut rng: Rng, end: Instant) -> Check {
    while Instant::now() < end {
        let k = rng.below(3) as usize;
        let key = &sh.keys[k];
        let mode = match k {
            RW_KEY if rng.below(10) < 6 => Mode::Read,
            RW_KEY => Mode::Write,
            _ => Mode::Exclusive,
        };
        let dice = rng.below(100);
        if dice < 4 && k != RW_KEY {
            let r = cx
                .exec_rid(Command::Steal {
                    key: key.clone(),
                    session,
                })
                .await;
            match r {
                Ok(Response::Granted(g)) => hold(cx, sh, &mut rng, session, k, g).await?,
                other => return Err(format!("steal of {key} answered {other:?}")),
            }
            continue;
        }
        let timeout = if dice < 25 {
            0
        } else {
            cx.ms(1 + rng.below(6))
        };
        let r = cx.acquire(key, session, mode, Some(timeout)).await;
        let grant = match r {
            Ok(Response::Granted(g)) => Some(g),
            Ok(Response::Queued { .. }) if rng.below(6) == 0 => {
                cx.sleep_units(rng.below(2)).await;
                cancel(cx, sh, key, session).await?
            }
            Ok(Response::Queued { .. }) => match cx.outcome(key, session).await? {
                WaitStatus::Granted(g) => Some(g),
                WaitStatus::Ended(WaitEnd::TimedOut) => {
                    log(sh, |l| l.timeouts += 1);
                    None
                }
                // Granted and lost (lease) before we looked: no outcome left.
                WaitStatus::NotWaiting => {
                    log(sh, |l| l.vanished += 1);
                    None
                }
                other => return Err(format!("{session}'s wait for {key} ended as {other:?}")),
            },
            Err(Error::Lock(LockError::WouldBlock { .. })) => {
                log(sh, |l| l.would_block += 1);
                None
            }
            other => return Err(format!("acquire of {key} answered {other:?}")),
        };
        if let Some(g) = grant {
            ensure!(
                g.mode == mode,
                "{session} asked {key} in {mode}, was granted {}",
                g.mode
            );
            hold(cx, sh, &mut rng, session, k, g).await?;
        }
    }
    Ok(())
}

/// Leaves the queue; a grant that won the race is returned (to be used and
/// released), never leaked.
async fn cancel(
    cx: &Ctx,
    sh: &Shared,
    key: &LockKey,
    session: SessionId,
) -> Result<Option<Grant>, String> {
    log(sh, |l| l.cancels += 1);
    let r = cx
        .exec_rid(Command::CancelWait {
            key: key.clone(),
            session,
        })
        .await;
    match r {
        Ok(Response::WaitCancelled { was_waiting: true }) => Ok(None),
        Ok(Response::WaitCancelled { was_waiting: false }) => {
            match cx.status_now(key, session).await? {
                WaitStatus::Granted(g) => Ok(Some(g)),
                _ => Ok(None),
            }
        }
        other => Err(format!("cancel of {key} answered {other:?}")),
    }
}

/// Holds a grant for a random while, touching the resource, then releases.
async fn hold(
    cx: &Ctx,
    sh: &Shared,
    rng: &mut Rng,
    session: SessionId,
    k: usize,
    grant: Grant,
) -> Check {
    let key = &sh.keys[k];
    let got = Instant::now();
    let mut rejected = 0;
    let touch = |rejected: &mut u32| {
        let ok = if grant.mode == Mode::Read {
            sh.resource.read(key, grant.token)
        } else {
            sh.resource.write(key, grant.token)
        };
        if !ok {
            *rejected += 1;
        }
    };
    touch(&mut rejected);
    // Mostly short; on the leased key sometimes longer than the lease.
    let units = if k == LEASE_KEY && rng.below(4) == 0 {
        5
    } else {
        rng.below(3)
    };
    cx.sleep_units(units).await;
    if k == LEASE_KEY && rng.below(2) == 0 {
        let r = cx.extend(key, session, grant.token).await;
        let lost = matches!(
            lock_error(&r),
            Some(LockError::Expired { .. } | LockError::Stolen { .. })
        );
        ensure!(
            matches!(r, Ok(Response::Extended { .. })) || lost,
            "extend of {key} answered {r:?}"
        );
    }
    touch(&mut rejected);
    let released = Instant::now();
    let r = cx.release(key, session, grant.token).await;
    let clean = match &r {
        Ok(Response::Released) => true,
        Err(Error::Lock(
            LockError::Stolen { .. } | LockError::Expired { .. } | LockError::NotHolder { .. },
        )) => false,
        other => return Err(format!("release of {key} answered {other:?}")),
    };
    log(sh, |l| {
        l.holds.push(Hold {
            key: k,
            session,
            grant,
            got,
            released,
            clean,
            rejected_writes: rejected,
        })
    });
    Ok(())
}

fn log(sh: &Shared, f: impl FnOnce(&mut Log)) {
    if let Ok(mut l) = sh.log.lock() {
        f(&mut l);
    }
}

fn check_history(log: &Log, keys: &[LockKey]) -> Check {
    ensure!(
        log.holds.len() >= keys.len(),
        "the run granted only {} holds; too short to check anything",
        log.holds.len()
    );
    for (k, key) in keys.iter().enumerate() {
        let mut holds: Vec<&Hold> = log.holds.iter().filter(|h| h.key == k).collect();
        ensure!(!holds.is_empty(), "{key} was never granted");
        holds.sort_by_key(|h| h.grant.token);
        for pair in holds.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            ensure!(
                a.grant.token < b.grant.token,
                "{key}: token {} granted twice ({} and {})",
                a.grant.token,
                a.session,
                b.session
            );
            ensure!(
                a.grant.granted_at <= b.grant.granted_at,
                "{key}: token {} granted at {} but the larger {} at {}",
                a.grant.token,
                a.grant.granted_at,
                b.grant.token,
                b.grant.granted_at
            );
        }
        let clean: Vec<&Hold> = holds.iter().copied().filter(|h| h.clean).collect();
        for h in &clean {
            ensure!(
                h.rejected_writes == 0,
                "{key}: the fenced resource rejected {} write(s) of {} (token {}) although it \
                 held the lock throughout",
                h.rejected_writes,
                h.session,
                h.grant.token
            );
        }
        for (i, a) in clean.iter().enumerate() {
            for b in &clean[i + 1..] {
                if a.grant.mode.is_shared() && b.grant.mode.is_shared() {
                    continue;
                }
                let a_first = a.released <= b.got;
                let b_first = b.released <= a.got;
                ensure!(
                    a_first || b_first,
                    "{key}: {} ({} token {}) and {} ({} token {}) held it at the same time",
                    a.session,
                    a.grant.mode,
                    a.grant.token,
                    b.session,
                    b.grant.mode,
                    b.grant.token
                );
                ensure!(
                    !(b_first && b.released < a.got),
                    "{key}: token {} was released before the smaller token {} was granted",
                    b.grant.token,
                    a.grant.token
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn hold(token: u64, mode: Mode, from_ms: u64, to_ms: u64, base: Instant) -> Hold {
        Hold {
            key: 0,
            session: SessionId(token),
            grant: Grant {
                token: FencingToken(token),
                mode,
                granted_at: from_ms,
                expires_at: None,
            },
            got: base + Duration::from_millis(from_ms),
            released: base + Duration::from_millis(to_ms),
            clean: true,
            rejected_writes: 0,
        }
    }

    fn check(holds: Vec<Hold>) -> Check {
        let keys = vec![LockKey::new("t", "k").unwrap()];
        check_history(
            &Log {
                holds,
                ..Log::default()
            },
            &keys,
        )
    }

    #[test]
    fn history_checker_accepts_a_valid_history_and_catches_planted_bugs() {
        let t = Instant::now();
        let ok = vec![
            hold(1, Mode::Write, 0, 10, t),
            hold(2, Mode::Read, 10, 30, t),
            hold(3, Mode::Read, 12, 20, t),
            hold(5, Mode::Write, 30, 40, t),
        ];
        assert_eq!(check(ok.clone()), Ok(()));

        let mut overlap = ok.clone();
        overlap[3] = hold(5, Mode::Write, 25, 40, t);
        let e = check(overlap).unwrap_err();
        assert!(e.contains("same time"), "{e}");

        let mut twice = ok.clone();
        twice[1].grant.token = FencingToken(1);
        let e = check(twice).unwrap_err();
        assert!(e.contains("granted twice"), "{e}");

        let mut backwards = ok.clone();
        backwards[0] = hold(9, Mode::Write, 0, 10, t);
        let e = check(backwards).unwrap_err();
        assert!(e.contains("granted at"), "{e}");

        let mut rejected = ok.clone();
        rejected[2].rejected_writes = 1;
        let e = check(rejected).unwrap_err();
        assert!(e.contains("rejected"), "{e}");

        // An unclean (stolen) hold may overlap; it is not an exclusion bug.
        let mut stolen = ok;
        stolen[3] = hold(5, Mode::Write, 25, 40, t);
        stolen[2].clean = false;
        stolen[1].clean = false;
        assert_eq!(check(stolen), Ok(()));
    }

    #[test]
    fn fenced_resource_rejects_lower_tokens() {
        let r = FencedResource::default();
        let k = LockKey::new("t", "k").unwrap();
        assert!(r.write(&k, FencingToken(3)));
        assert!(!r.write(&k, FencingToken(2)));
        assert!(!r.read(&k, FencingToken(2)));
        assert!(r.read(&k, FencingToken(4)));
        assert!(r.read(&k, FencingToken(3)));
        assert!(!r.write(&k, FencingToken(3)), "below a reader's token");
        assert!(r.write(&k, FencingToken(6)));
    }
}
