//! Arbitrary bytes → a sequence of commands on one `Table`.
//!
//! The bytes choose limits (tiny ones make `ResourceExhausted` reachable), then
//! steps over a small pool of sessions and keys: every command, ticks, big and
//! backward time jumps, huge TTLs and timeouts, request ids with retries and
//! reuse, keys built from raw bytes (mostly invalid), snapshot round trips.
//!
//! Checked after every step: `check_invariants`, that nothing due is left
//! behind (`next_deadline > now`), fencing tokens of each lock strictly
//! increasing in grant order over responses and events, per-command postconditions,
//! that a rejected command changes nothing, that a retried request id replays its
//! first result and changes nothing. At the end the whole run is replayed on a
//! fresh table (no snapshot round trips): same results, same events, same bytes.

#![no_main]

use fencelock_core::{
    Command, Event, FencingToken, Limits, LockError, LockKey, LockKind, Millis, Mode, RequestId,
    Response, SessionId, Table, MAX_NAMESPACE_LEN, MAX_NAME_LEN, MAX_TIME,
};
use libfuzzer_sys::arbitrary::{Result as Decoded, Unstructured};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

type Outcome = Result<Response, LockError>;

const MAX_STEPS: usize = 400;
const POOL: usize = 8;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(mut run) = Run::new(&mut u) else {
        return;
    };
    while !u.is_empty() && run.log.len() < MAX_STEPS {
        if run.step(&mut u).is_err() {
            break;
        }
    }
    run.replay_on_a_fresh_table();
});

/// One call made on the table, with what it returned, for the final replay.
#[derive(Debug)]
enum Call {
    Tick(Millis),
    Apply(Millis, Option<RequestId>, Command, Outcome),
}

struct Run {
    table: Table,
    limits: Limits,
    /// The driver's clock: may lag behind the table's (`Table::now` never goes back).
    clock: Millis,
    keys: Vec<LockKey>,
    sessions: Vec<SessionId>,
    /// Recent grants (key, session, token), for release/extend with real tokens.
    grants: Vec<(LockKey, SessionId, FencingToken)>,
    /// Highest token seen granted per lock (survives destroy and re-create).
    last_grant: HashMap<LockKey, u64>,
    /// Request ids used, per session (`None`: session-less commands, which
    /// the table deduplicates table-wide), with the command and first result.
    requests: HashMap<(Option<SessionId>, RequestId), (Command, Outcome)>,
    next_request: u64,
    log: Vec<(Call, Vec<Event>)>,
}

impl Run {
    fn new(u: &mut Unstructured) -> Decoded<Run> {
        let limits = if u.ratio(1, 2)? {
            Limits {
                max_locks: u.int_in_range(1..=6)?,
                max_sessions: u.int_in_range(1..=6)?,
                max_waiters_per_lock: u.int_in_range(1..=4)?,
                max_locks_per_session: u.int_in_range(1..=4)?,
                max_remembered_requests: u.int_in_range(0..=4)?,
                max_ttl_ms: *u.choose(&[1, 100, 10_000, Limits::default().max_ttl_ms, u64::MAX])?,
                max_ended_tokens_per_lock: u.int_in_range(0..=3)?,
            }
        } else {
            Limits::default()
        };
        let key = |ns: &str, name: &str| LockKey::new(ns, name).expect("pool key is valid");
        Ok(Run {
            table: Table::new(limits.clone()),
            limits,
            clock: 0,
            keys: vec![
                key("ns", "a"),
                key("ns", "b"),
                key("other", "a"),
                key(&"n".repeat(MAX_NAMESPACE_LEN), &"x".repeat(MAX_NAME_LEN)),
            ],
            sessions: Vec::new(),
            grants: Vec::new(),
            last_grant: HashMap::new(),
            requests: HashMap::new(),
            next_request: 1,
            log: Vec::new(),
        })
    }

    // ----- decoding -------------------------------------------------------

    fn advance_clock(&mut self, u: &mut Unstructured) -> Decoded<Millis> {
        let now = self.clock;
        self.clock = match u.int_in_range(0u8..=15)? {
            0..=5 => now,
            6..=10 => now.saturating_add(u.int_in_range(1..=50)?),
            11..=12 => now.saturating_add(u.int_in_range(51..=20_000)?),
            13 => now.saturating_add(u64::from(u.arbitrary::<u32>()?) * 1_000),
            14 => now.saturating_sub(u.int_in_range(1..=100)?),
            // Up to u64::MAX: the core clamps its time at MAX_TIME.
            _ => now.saturating_add(u.arbitrary::<u64>()? >> u.int_in_range(0..=20)?),
        };
        Ok(self.clock)
    }

    fn ttl(&self, u: &mut Unstructured) -> Decoded<u64> {
        Ok(match u.int_in_range(0u8..=9)? {
            0 => 0,
            1 => u64::MAX,
            2 => self.limits.max_ttl_ms,
            3 => self.limits.max_ttl_ms.saturating_add(1),
            4 => u.arbitrary()?,
            _ => u.int_in_range(1..=200)?,
        })
    }

    fn timeout(&self, u: &mut Unstructured) -> Decoded<Option<u64>> {
        Ok(match u.int_in_range(0u8..=7)? {
            0..=1 => None,
            2..=3 => Some(0),
            4 => Some(u.arbitrary()?),
            _ => Some(u.int_in_range(1..=300)?),
        })
    }

    fn key(&self, u: &mut Unstructured) -> Decoded<LockKey> {
        u.choose(&self.keys).cloned()
    }

    fn session(&self, u: &mut Unstructured) -> Decoded<SessionId> {
        if self.sessions.is_empty() || u.ratio(1, 16)? {
            // Never issued (ids count up from 1), so never alive later either.
            return Ok(SessionId(*u.choose(&[0, u64::MAX])?));
        }
        u.choose(&self.sessions).copied()
    }

    fn mode(u: &mut Unstructured) -> Decoded<Mode> {
        u.choose(&[Mode::Exclusive, Mode::Read, Mode::Write])
            .copied()
    }

    /// A (key, session, token) for release/extend: mostly a real grant, sometimes mixed up.
    fn hold(&self, u: &mut Unstructured) -> Decoded<(LockKey, SessionId, FencingToken)> {
        if self.grants.is_empty() || u.ratio(1, 8)? {
            return Ok((
                self.key(u)?,
                self.session(u)?,
                FencingToken(u.int_in_range(0..=40)?),
            ));
        }
        let (mut key, mut session, token) = u.choose(&self.grants).cloned()?;
        if u.ratio(1, 8)? {
            key = self.key(u)?;
        }
        if u.ratio(1, 8)? {
            session = self.session(u)?;
        }
        Ok((key, session, token))
    }

    fn command(&self, u: &mut Unstructured) -> Decoded<Command> {
        Ok(match u.int_in_range(0u8..=13)? {
            0 => Command::OpenSession {
                ttl_ms: self.ttl(u)?,
            },
            1 => Command::KeepAlive {
                session: self.session(u)?,
            },
            2 => Command::CloseSession {
                session: self.session(u)?,
            },
            3 => Command::CreateLock {
                key: self.key(u)?,
                kind: *u.choose(&[LockKind::Exclusive, LockKind::ReadWrite])?,
                ttl_ms: if u.ratio(1, 2)? {
                    Some(self.ttl(u)?)
                } else {
                    None
                },
            },
            4..=6 => Command::Acquire {
                key: self.key(u)?,
                session: self.session(u)?,
                mode: Self::mode(u)?,
                timeout_ms: self.timeout(u)?,
            },
            7 => Command::CancelWait {
                key: self.key(u)?,
                session: self.session(u)?,
            },
            8..=9 => {
                let (key, session, token) = self.hold(u)?;
                Command::Release {
                    key,
                    session,
                    token,
                }
            }
            10 => {
                let (key, session, token) = self.hold(u)?;
                Command::Extend {
                    key,
                    session,
                    token,
                }
            }
            11 => Command::Steal {
                key: self.key(u)?,
                session: self.session(u)?,
            },
            12 => Command::ForceRelease { key: self.key(u)? },
            _ => Command::Destroy { key: self.key(u)? },
        })
    }

    // ----- steps ----------------------------------------------------------

    fn step(&mut self, u: &mut Unstructured) -> Decoded<()> {
        // Sessions come first so that most inputs have someone to act for.
        if self.sessions.is_empty() && u.ratio(3, 4)? {
            let cmd = Command::OpenSession {
                ttl_ms: u.int_in_range(1..=500)?,
            };
            let now = self.advance_clock(u)?;
            self.fresh(now, None, cmd, u.ratio(1, 2)?);
            return Ok(());
        }
        match u.int_in_range(0u8..=19)? {
            0..=13 => {
                let cmd = self.command(u)?;
                let now = self.advance_clock(u)?;
                let rid = match u.ratio(1, 3)? {
                    true => Some(self.new_request_id(u)?),
                    false => None,
                };
                let split = u.ratio(1, 2)?;
                self.fresh(now, rid, cmd, split);
            }
            14 => {
                let now = self.advance_clock(u)?;
                self.tick(now);
            }
            15 => self.retry(u)?,
            16 => self.round_trip_snapshot(),
            17 => self.key_from_bytes(u)?,
            _ => self.reads(u)?,
        }
        Ok(())
    }

    /// Mostly increasing ids (as a client should use), sometimes a small one
    /// that may be old or already used for another command.
    fn new_request_id(&mut self, u: &mut Unstructured) -> Decoded<RequestId> {
        if u.ratio(1, 6)? {
            return Ok(RequestId(u.int_in_range(0..=self.next_request)?));
        }
        self.next_request += u.int_in_range(1..=3)?;
        Ok(RequestId(self.next_request))
    }

    fn tick(&mut self, now: Millis) {
        let mut events = Vec::new();
        self.table.tick(now, &mut events);
        self.saw_events(&events);
        self.log.push((Call::Tick(now), events));
        self.check(now);
    }

    /// Applies a command that is not a deliberate retry. With `split`, the
    /// expiries are processed by a separate tick first, so the command itself
    /// can be checked for "rejected ⇒ nothing changed".
    fn fresh(&mut self, now: Millis, rid: Option<RequestId>, cmd: Command, split: bool) {
        let reused = rid.and_then(|r| self.requests.get(&(cmd.session(), r)).cloned());
        if let Some((first_cmd, first_outcome)) = reused {
            // The id was used before: never applied again.
            let outcome = self.apply_unchanged(now, rid, &cmd);
            if first_cmd == cmd {
                expect_replay(&outcome, &first_outcome);
            } else {
                assert!(
                    is_request_id_error(&outcome) || is_session_gone(&outcome),
                    "request id reused for {cmd:?} (first {first_cmd:?}) answered {outcome:?}"
                );
            }
            return;
        }
        let before = if split {
            self.tick(now);
            Some(self.table.snapshot_bytes().expect("snapshot"))
        } else {
            None
        };
        let mut events = Vec::new();
        let outcome = self.table.apply_request(now, rid, &cmd, &mut events);
        if let (Some(before), Err(_), None) = (&before, &outcome, rid) {
            let after = self.table.snapshot_bytes().expect("snapshot");
            assert!(
                events.is_empty() && *before == after,
                "rejected {cmd:?} ({outcome:?}) changed the state or emitted {events:?}"
            );
        }
        self.saw_events(&events);
        self.postconditions(&cmd, &outcome);
        if let Some(r) = rid {
            self.requests
                .insert((cmd.session(), r), (cmd.clone(), outcome.clone()));
        }
        self.log.push((Call::Apply(now, rid, cmd, outcome), events));
        self.check(now);
    }

    /// Applies a retry (same session and request id); it must change nothing.
    fn apply_unchanged(&mut self, now: Millis, rid: Option<RequestId>, cmd: &Command) -> Outcome {
        self.tick(now);
        let before = self.table.snapshot_bytes().expect("snapshot");
        let mut events = Vec::new();
        let outcome = self.table.apply_request(now, rid, cmd, &mut events);
        let after = self.table.snapshot_bytes().expect("snapshot");
        assert!(
            events.is_empty() && before == after,
            "retry of {cmd:?} ({outcome:?}) changed the state or emitted {events:?}"
        );
        self.log
            .push((Call::Apply(now, rid, cmd.clone(), outcome.clone()), events));
        self.check(now);
        outcome
    }

    fn retry(&mut self, u: &mut Unstructured) -> Decoded<()> {
        if self.requests.is_empty() {
            return Ok(());
        }
        let mut known: Vec<_> = self.requests.iter().collect();
        known.sort_by_key(|((s, r), _)| (*s, *r));
        let ((_, rid), (cmd, _)) = u.choose(&known)?;
        let (rid, cmd) = (*rid, cmd.clone());
        let now = self.advance_clock(u)?;
        self.fresh(now, Some(rid), cmd, false);
        Ok(())
    }

    fn round_trip_snapshot(&mut self) {
        let bytes = self
            .table
            .snapshot_bytes()
            .expect("snapshot of a valid table");
        let restored = Table::restore_bytes(&bytes)
            .unwrap_or_else(|e| panic!("own snapshot does not restore: {e}"));
        let again = restored
            .snapshot_bytes()
            .expect("snapshot of a restored table");
        assert!(
            bytes == again,
            "snapshot → restore → snapshot is not byte-identical"
        );
        assert_eq!(restored.next_deadline(), self.table.next_deadline());
        for key in &self.keys {
            assert_eq!(restored.describe(key), self.table.describe(key), "{key}");
        }
        self.table = restored;
    }

    /// Builds a key from raw bytes; validity must match the documented rule,
    /// and a rejection must name the offending field.
    fn key_from_bytes(&mut self, u: &mut Unstructured) -> Decoded<()> {
        let ns = text(u, MAX_NAMESPACE_LEN)?;
        let name = text(u, MAX_NAME_LEN)?;
        let ns_ok = valid_part(&ns, MAX_NAMESPACE_LEN);
        let name_ok = valid_part(&name, MAX_NAME_LEN);
        let built = LockKey::new(&ns, &name);
        match &built {
            Ok(key) => {
                assert!(ns_ok && name_ok, "accepted invalid key {ns:?} / {name:?}");
                assert_eq!((key.namespace(), key.name()), (ns.as_str(), name.as_str()));
                if self.keys.len() < POOL && !self.keys.contains(key) {
                    self.keys.push(key.clone());
                }
            }
            Err(LockError::InvalidArgument { field, .. }) => {
                let expected = if ns_ok { "name" } else { "namespace" };
                assert!(!(ns_ok && name_ok), "rejected valid key {ns:?} / {name:?}");
                assert_eq!(field, expected, "{ns:?} / {name:?}");
            }
            Err(other) => panic!("LockKey::new answered {other:?}"),
        }
        // The wire form must be validated the same way.
        let wire = postcard::to_allocvec(&(ns.as_str(), name.as_str())).expect("encode");
        let decoded: Result<LockKey, _> = postcard::from_bytes(&wire);
        assert_eq!(
            decoded.ok(),
            built.ok(),
            "deserialize disagrees with LockKey::new"
        );
        Ok(())
    }

    /// Read-only calls: must not panic, and must agree with each other.
    fn reads(&mut self, u: &mut Unstructured) -> Decoded<()> {
        let key = self.key(u)?;
        let at = self.clock.saturating_add(u.int_in_range(0..=100)?);
        let info = self.table.describe(&key);
        if let Some(info) = &info {
            for h in &info.holders {
                let valid = self.table.validate(self.table.now(), &key, h.token);
                assert_eq!(
                    valid.map(|v| v.session).ok(),
                    Some(h.session),
                    "{key} {h:?}"
                );
            }
            let token = FencingToken(u.int_in_range(0..=info.last_token.0.saturating_add(2))?);
            if let Ok(v) = self.table.validate(at, &key, token) {
                assert!(info
                    .holders
                    .iter()
                    .any(|h| h.token == token && h.session == v.session));
                // `validate` reads at `at` clamped like every `now`: past
                // MAX_TIME, time stands still (a lease may end beyond it).
                let read_at = at.clamp(self.table.now(), MAX_TIME);
                assert!(v.expires_at.is_none_or(|e| e > read_at));
            }
        }
        let session = self.session(u)?;
        if let Some(s) = self.table.describe_session(session) {
            for (k, t) in &s.holds {
                let held = self.table.describe(k).expect("held lock exists");
                assert!(held
                    .holders
                    .iter()
                    .any(|h| h.token == *t && h.session == session));
            }
        }
        Ok(())
    }

    // ----- checks ---------------------------------------------------------

    fn saw_grant(&mut self, key: &LockKey, session: SessionId, token: FencingToken) {
        let last = self.last_grant.entry(key.clone()).or_insert(0);
        assert!(
            token.0 > *last,
            "fencing: {key} granted {token} after #{last}"
        );
        *last = token.0;
        assert!(
            token <= self.table.last_token(),
            "{token} above the table's last token"
        );
        if self.grants.len() >= 16 {
            self.grants.remove(0);
        }
        self.grants.push((key.clone(), session, token));
    }

    fn saw_events(&mut self, events: &[Event]) {
        for e in events {
            match e {
                Event::Granted {
                    key,
                    session,
                    grant,
                    ..
                } => self.saw_grant(key, *session, grant.token),
                Event::SessionExpired { session } => {
                    assert!(self.table.describe_session(*session).is_none());
                }
                _ => {}
            }
        }
    }

    fn check(&self, clock: Millis) {
        if let Err(e) = self.table.check_invariants() {
            panic!("invariant broken after step {}: {e}", self.log.len());
        }
        let now = self.table.now();
        assert!(
            now >= clock.min(MAX_TIME) && now <= MAX_TIME,
            "table time {now} vs the driver's {clock}"
        );
        if let Some(due) = self.table.next_deadline() {
            assert!(due > now, "deadline {due} left unprocessed at {now}");
        }
    }

    /// What a successful (or failed) fresh command must have done.
    fn postconditions(&mut self, cmd: &Command, outcome: &Outcome) {
        let now = self.table.now();
        if let Err(e) = outcome {
            let _ = (e.code(), e.to_string());
            assert!(!matches!(e, LockError::Timeout { .. }), "{cmd:?} → {e:?}");
            if let LockError::InvalidArgument { field, .. } = e {
                assert!(!field.is_empty());
            }
        }
        match (cmd, outcome) {
            (Command::OpenSession { ttl_ms }, _) => {
                let bad = *ttl_ms == 0 || *ttl_ms > self.limits.max_ttl_ms.min(MAX_TIME);
                match outcome {
                    Ok(Response::SessionOpened { session, .. }) => {
                        assert!(!bad, "opened a session with ttl {ttl_ms}");
                        self.sessions.push(*session);
                    }
                    Err(LockError::InvalidArgument { field, .. }) => assert_eq!(field, "ttl_ms"),
                    Err(LockError::ResourceExhausted { .. }) => assert!(!bad),
                    other => panic!("open session answered {other:?}"),
                }
            }
            (
                Command::Acquire {
                    key,
                    session,
                    mode,
                    timeout_ms,
                },
                Ok(r),
            ) => match r {
                Response::Granted(g) => {
                    assert_eq!((g.mode, g.granted_at), (*mode, now));
                    self.saw_grant(key, *session, g.token);
                    let v = self
                        .table
                        .validate(now, key, g.token)
                        .expect("fresh grant valid");
                    assert_eq!(v.session, *session);
                }
                Response::Queued { deadline, .. } => {
                    assert_ne!(*timeout_ms, Some(0), "try-lock queued");
                    assert_eq!(*deadline, timeout_ms.map(|t| now.saturating_add(t)));
                    let info = self.table.describe(key).expect("queued on a lock");
                    assert!(info.waiters.iter().any(|w| w.session == *session));
                }
                other => panic!("acquire answered {other:?}"),
            },
            (Command::Acquire { timeout_ms, .. }, Err(LockError::WouldBlock { .. })) => {
                assert_eq!(*timeout_ms, Some(0), "WouldBlock without try-lock");
            }
            (Command::Release { key, token, .. }, Ok(_)) => {
                assert!(
                    self.table.validate(now, key, *token).is_err(),
                    "released {token} valid"
                );
            }
            (Command::Steal { key, session }, Ok(r)) => {
                let Response::Granted(g) = r else {
                    panic!("steal answered {r:?}");
                };
                self.saw_grant(key, *session, g.token);
                let info = self.table.describe(key).expect("stolen lock exists");
                let tokens: Vec<_> = info.holders.iter().map(|h| h.token).collect();
                assert_eq!(tokens, [g.token], "after a steal the thief holds alone");
            }
            (Command::Destroy { key }, Ok(_)) => assert!(self.table.describe(key).is_none()),
            (Command::CloseSession { session }, Ok(_)) => {
                assert!(self.table.describe_session(*session).is_none());
            }
            (Command::CreateLock { key, kind, .. }, Ok(_)) => {
                assert_eq!(self.table.describe(key).map(|i| i.kind), Some(*kind));
            }
            _ => {}
        }
    }

    /// Same calls on a fresh table: same results, same events, same bytes.
    fn replay_on_a_fresh_table(&self) {
        let mut table = Table::new(self.limits.clone());
        for (i, (call, events)) in self.log.iter().enumerate() {
            let mut got = Vec::new();
            match call {
                Call::Tick(now) => table.tick(*now, &mut got),
                Call::Apply(now, rid, cmd, outcome) => {
                    let again = table.apply_request(*now, *rid, cmd, &mut got);
                    assert_eq!(&again, outcome, "replay step {i}: {cmd:?}");
                }
            }
            assert_eq!(&got, events, "replay step {i}: events differ");
        }
        assert!(
            table.snapshot_bytes().expect("snapshot")
                == self.table.snapshot_bytes().expect("snapshot"),
            "replay ends in a different state"
        );
    }
}

fn expect_replay(outcome: &Outcome, first: &Outcome) {
    assert!(
        outcome == first || is_request_id_error(outcome) || is_session_gone(outcome),
        "retry answered {outcome:?}, first answer was {first:?}"
    );
}

fn is_request_id_error(outcome: &Outcome) -> bool {
    matches!(outcome, Err(LockError::InvalidArgument { field, .. }) if field == "request_id")
}

fn is_session_gone(outcome: &Outcome) -> bool {
    matches!(outcome, Err(LockError::SessionNotFound { .. }))
}

/// Text for a key part: raw bytes (often invalid), or one char repeated
/// around the length limit.
fn text(u: &mut Unstructured, max: usize) -> Decoded<String> {
    if u.ratio(1, 2)? {
        let len = u.int_in_range(0..=24)?;
        return Ok(String::from_utf8_lossy(u.bytes(len)?).into_owned());
    }
    let c = *u.choose(&['a', 'é', '\0', '\n', '\u{7f}', '\u{85}', ':'])?;
    let len = u.int_in_range(max.saturating_sub(2)..=max + 2)? / c.len_utf8();
    Ok(std::iter::repeat_n(c, len).collect())
}

/// The documented rule, written independently of the core's validation.
fn valid_part(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && !s.chars().any(char::is_control)
}
