//! Many tasks racing on create, acquire, steal and destroy of the same keys.

mod common;

use common::open;

use common::{retry, XorShift};
use fencelock::{
    Backend, Command, Error, LockError, LockKey, LockKind, Mode, Response, SessionId, WaitStatus,
};
use fencelock_postgres::testkit::{shared_url, unique_schema};
use fencelock_postgres::{PgBackend, PgConfig};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Barrier;
use tokio::time::Instant;

async fn backend(label: &str) -> PgBackend {
    let config = PgConfig::new(shared_url())
        .with_schema(unique_schema(label))
        .with_pool_size(12);
    PgBackend::connect(config).await.expect("connect")
}

/// Runs `n` tasks that start `op` at the same instant; returns their answers.
async fn at_once<F, Fut>(n: usize, op: F) -> Vec<Result<Response, Error>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<Response, Error>> + Send + 'static,
{
    let gate = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (gate, fut) = (gate.clone(), op(i));
            tokio::spawn(async move {
                gate.wait().await;
                fut.await
            })
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_try_locks_on_a_new_key_grant_exactly_one() {
    let b = backend("race_new_key").await;
    let mut sessions = Vec::new();
    for _ in 0..8 {
        sessions.push(open(&b).await);
    }
    for round in 0..10 {
        let key = LockKey::new("race", &format!("new-{round}")).unwrap();
        let answers = at_once(sessions.len(), |i| {
            let (b, key, session) = (b.clone(), key.clone(), sessions[i]);
            async move {
                b.execute(
                    Command::Acquire {
                        key,
                        session,
                        mode: Mode::Exclusive,
                        timeout_ms: Some(0),
                    },
                    None,
                )
                .await
            }
        })
        .await;
        let granted = answers
            .iter()
            .filter(|a| matches!(a, Ok(Response::Granted(_))))
            .count();
        let blocked = answers
            .iter()
            .filter(|a| matches!(a, Err(Error::Lock(LockError::WouldBlock { .. }))))
            .count();
        assert_eq!(
            (granted, blocked),
            (1, sessions.len() - 1),
            "round {round}: {answers:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_creates_create_once_and_kinds_do_not_mix() {
    let b = backend("race_create").await;
    for round in 0..10 {
        let key = LockKey::new("race", &format!("create-{round}")).unwrap();
        let answers = at_once(8, |i| {
            let (b, key) = (b.clone(), key.clone());
            // Half ask for a mutex, half for a read/write lock.
            let kind = if i % 2 == 0 {
                LockKind::Exclusive
            } else {
                LockKind::ReadWrite
            };
            async move {
                b.execute(
                    Command::CreateLock {
                        key,
                        kind,
                        ttl_ms: None,
                    },
                    None,
                )
                .await
            }
        })
        .await;
        let created: Vec<LockKind> = answers
            .iter()
            .filter_map(|a| match a {
                Ok(Response::LockCreated {
                    created: true,
                    kind,
                    ..
                }) => Some(*kind),
                _ => None,
            })
            .collect();
        assert_eq!(created.len(), 1, "round {round}: {answers:?}");
        let winner = created[0];
        for a in &answers {
            match a {
                Ok(Response::LockCreated { kind, .. }) => assert_eq!(*kind, winner),
                Err(Error::Lock(LockError::AlreadyExists { existing, .. })) => {
                    assert_eq!(*existing, winner)
                }
                other => panic!("round {round}: {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_steals_each_get_a_distinct_token_and_the_last_one_holds() {
    let b = backend("race_steal").await;
    let key = LockKey::new("race", "steal").unwrap();
    let mut sessions = Vec::new();
    for _ in 0..8 {
        sessions.push(open(&b).await);
    }
    b.execute(
        Command::CreateLock {
            key: key.clone(),
            kind: LockKind::Exclusive,
            ttl_ms: None,
        },
        None,
    )
    .await
    .unwrap();
    let answers = at_once(sessions.len(), |i| {
        let (b, key, session) = (b.clone(), key.clone(), sessions[i]);
        async move { b.execute(Command::Steal { key, session }, None).await }
    })
    .await;
    let mut tokens: Vec<(u64, SessionId)> = answers
        .iter()
        .zip(&sessions)
        .map(|(a, s)| match a {
            Ok(Response::Granted(g)) => (g.token.0, *s),
            other => panic!("steal: {other:?}"),
        })
        .collect();
    tokens.sort();
    tokens.dedup_by_key(|t| t.0);
    assert_eq!(
        tokens.len(),
        sessions.len(),
        "every steal gets its own token"
    );
    let info = b.describe(&key).await.unwrap().unwrap();
    let (last, thief) = tokens[tokens.len() - 1];
    assert_eq!(info.holders.len(), 1);
    assert_eq!(
        (info.holders[0].token.0, info.holders[0].session),
        (last, thief)
    );
    for (token, _) in &tokens[..tokens.len() - 1] {
        let r = b.validate(&key, fencelock::FencingToken(*token)).await;
        assert!(
            matches!(r, Err(Error::Lock(LockError::Stolen { .. }))),
            "{r:?}"
        );
    }
}

/// Random create / acquire / steal / release / destroy on two keys by many
/// tasks. Every answer is a semantic one, tokens are never reused, token
/// order is grant-time order, and nothing is left once the sessions close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_create_acquire_steal_destroy_race() {
    let b = backend("race_random").await;
    let keys = vec![
        LockKey::new("race", "x").unwrap(),
        LockKey::new("race", "y").unwrap(),
    ];
    let until = Instant::now() + Duration::from_secs(3);
    let handles: Vec<_> = (0..10u64)
        .map(|i| {
            let (b, keys) = (b.clone(), keys.clone());
            tokio::spawn(async move {
                let mut rng = XorShift(0xdead_beef ^ ((i + 1) * 7919));
                let session = open(&b).await;
                let mut grants = Vec::new();
                let mut held: Option<(LockKey, fencelock::FencingToken)> = None;
                let mut answers = 0u64;
                // At least 20 commands per task however slow the machine is,
                // then as many as fit in the time window.
                while answers < 20 || Instant::now() < until {
                    let key = keys[rng.below(2) as usize].clone();
                    let command = match (rng.below(10), &held) {
                        (0..=6, Some((k, t))) => Command::Release {
                            key: k.clone(),
                            session,
                            token: *t,
                        },
                        (0, _) => Command::CreateLock {
                            key,
                            kind: LockKind::Exclusive,
                            ttl_ms: None,
                        },
                        (1, _) => Command::Destroy { key },
                        (2, _) => Command::Steal { key, session },
                        _ => Command::Acquire {
                            key,
                            session,
                            mode: Mode::Exclusive,
                            timeout_ms: Some(100),
                        },
                    };
                    let answer = retry(&b, command.clone(), None).await;
                    answers += 1;
                    let grant = match (&command, answer) {
                        (_, Ok(Response::Granted(g))) => Some(g),
                        (Command::Acquire { key, .. }, Ok(Response::Queued { .. })) => loop {
                            match b.wait(key, session, Duration::from_secs(2)).await {
                                Ok(WaitStatus::Granted(g)) => break Some(g),
                                Ok(WaitStatus::Waiting) => continue,
                                Ok(WaitStatus::Ended(_)) => break None,
                                other => panic!("wait: {other:?}"),
                            }
                        },
                        (Command::Release { .. }, _) => {
                            held = None;
                            None
                        }
                        (_, Ok(_)) => None,
                        (_, Err(Error::Lock(_))) => None,
                        (c, Err(e)) => panic!("{c:?} answered a non-semantic error: {e}"),
                    };
                    if let (Some(g), Command::Acquire { key, .. } | Command::Steal { key, .. }) =
                        (grant, &command)
                    {
                        grants.push((key.clone(), g));
                        held = Some((key.clone(), g.token));
                    }
                }
                let closed = b.execute(Command::CloseSession { session }, None).await;
                assert_eq!(closed, Ok(Response::SessionClosed));
                (grants, answers)
            })
        })
        .collect();
    let mut by_key: BTreeMap<LockKey, Vec<fencelock::Grant>> = BTreeMap::new();
    let mut total_answers = 0;
    for h in handles {
        let (grants, answers) = h.await.expect("task");
        total_answers += answers;
        for (k, g) in grants {
            by_key.entry(k).or_default().push(g);
        }
    }
    assert!(total_answers >= 200, "only {total_answers} commands ran");
    for (key, mut grants) in by_key {
        grants.sort_by_key(|g| g.token);
        assert!(
            grants.windows(2).all(|w| w[0].token < w[1].token),
            "{key}: a token was granted twice"
        );
        assert!(
            grants
                .windows(2)
                .all(|w| w[0].granted_at <= w[1].granted_at),
            "{key}: token order is not grant order: {grants:?}"
        );
        if let Some(info) = b.describe(&key).await.unwrap() {
            assert!(
                info.holders.is_empty() && info.waiters.is_empty(),
                "left behind: {info:?}"
            );
        }
    }
}
