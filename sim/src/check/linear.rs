//! Checker 2: per-key linearizability of lock operations (Wing–Gong search
//! with Lowe's / Porcupine's memoization), against the core's own [`Table`]
//! as the sequential model: clone, apply, compare.
//!
//! # The history of one key
//! Every operation that names the key, plus the session operations (open,
//! keep-alive, close) of the sessions that appear in them. Keys are checked
//! independently (P-compositionality): a session's expiry ends its holds on
//! every key, and each key's model sees that on its own.
//!
//! # Ids and time
//! The model issues its own session ids and tokens (it sees one key only),
//! so the checker keeps a translation. Real tokens of one key must be in the
//! same order as the model's: that is the fencing order. The model needs a
//! `now` for each operation: responses that carry a time (a grant's
//! `granted_at`, a queue deadline, a keep-alive's expiry) pin it; otherwise
//! the checker tries the earliest state time the operation's interval allows
//! and each expiry instant inside it (behaviour only changes at those). The
//! fail-over graces new leaders applied ([`Table::grant_grace`], recorded
//! with their stamps) are internal transitions the model may take in order.
//!
//! # Search
//! Depth first, trying the earliest-invoked operation first and generating
//! successors lazily, with a memo of (linearized set, model state) pairs
//! already explored (states are compared by a 128-bit hash of their
//! canonical bytes).
//!
//! # Outcomes
//! An operation with an unknown outcome may take effect at any point after
//! its invocation, or never; its result is not compared.

use super::{Checker, Violation};
use crate::history::{Call, History, Op, Ret, WaitResult};
use fencelock_core::{
    Command, Event, FencingToken, LockError, LockKey, Millis, Response, SessionId, Table,
};
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// Most `now` values tried for one operation that does not pin its time.
const MAX_TIME_CANDIDATES: usize = 16;

/// What the linearizability checker found in a whole history.
#[derive(Debug, Default)]
pub struct LinReport {
    pub violations: Vec<Violation>,
    pub ops_checked: u64,
    pub inconclusive_keys: u64,
}

/// Checks every key of `history`.
pub fn check(history: &History, max_states: usize) -> LinReport {
    let mut report = LinReport::default();
    let keys: BTreeSet<&LockKey> = history.ops.iter().filter_map(Op::key).collect();
    for key in keys {
        let ops = ops_of_key(history, key);
        let window = Windows {
            behind: history.clock_behind,
            ahead: history.clock_ahead,
            graces: history.graces.clone(),
        };
        match check_key(key, &ops, &window, max_states) {
            KeyResult::Linearizable => report.ops_checked += ops.len() as u64,
            KeyResult::Inconclusive => report.inconclusive_keys += 1,
            KeyResult::Violation(message) => report
                .violations
                .push(Violation::new(Checker::Linearizability, message)),
        }
    }
    report
}

/// The operations of `key`'s sub-history, in invocation order.
pub fn ops_of_key<'a>(history: &'a History, key: &LockKey) -> Vec<&'a Op> {
    let sessions: BTreeSet<SessionId> = history
        .ops
        .iter()
        .filter(|op| op.key() == Some(key))
        .filter_map(Op::session)
        .collect();
    let mut ops: Vec<&Op> = history
        .ops
        .iter()
        .filter(|op| match op.key() {
            Some(k) => k == key,
            None => op.session().is_some_and(|s| sessions.contains(&s)),
        })
        .collect();
    ops.sort_by_key(|op| op.invoke);
    ops
}

/// Bounds that turn real-time intervals into state-time intervals.
#[derive(Debug, Clone, Default)]
pub struct Windows {
    /// Largest amount any node clock was behind global time.
    pub behind: Millis,
    /// Largest amount any node clock was ahead of global time.
    pub ahead: Millis,
    /// Fail-over graces applied by new leaders (stamps, ascending).
    pub graces: Vec<Millis>,
}

/// The verdict on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyResult {
    Linearizable,
    Inconclusive,
    Violation(String),
}

/// The sequential model: the core's table plus the translation of ids.
#[derive(Clone)]
struct Model {
    table: Table,
    /// Real session id → model session id.
    sessions: BTreeMap<u64, SessionId>,
    /// Model token → real token (known once a client learned it).
    tokens: BTreeMap<u64, u64>,
    /// How each model session's last wait on this key ended.
    waits: BTreeMap<SessionId, WaitResult>,
    /// Elections whose grace has been applied or passed.
    graces: usize,
    /// The sessions the last step granted this key to (not part of the state).
    granted_now: Vec<SessionId>,
}

impl Model {
    fn new() -> Self {
        Model {
            table: Table::default(),
            sessions: BTreeMap::new(),
            tokens: BTreeMap::new(),
            waits: BTreeMap::new(),
            graces: 0,
            granted_now: Vec::new(),
        }
    }

    /// A 128-bit hash of the canonical bytes of the whole model state (the memo key).
    fn fingerprint(&self) -> u128 {
        use std::hash::Hasher;
        let mut bytes = self.table.snapshot_bytes().unwrap_or_default();
        let rest = (
            &self.sessions,
            &self.tokens,
            self.waits.iter().collect::<Vec<_>>(),
            self.graces,
        );
        bytes.extend(postcard::to_allocvec(&rest).unwrap_or_default());
        let mut a = std::collections::hash_map::DefaultHasher::new();
        a.write(&bytes);
        let mut b = std::collections::hash_map::DefaultHasher::new();
        b.write_u8(0x5a);
        b.write(&bytes);
        (u128::from(a.finish()) << 64) | u128::from(b.finish())
    }

    fn real_to_model_token(&self, real: FencingToken) -> Option<FencingToken> {
        self.tokens
            .iter()
            .find(|(_, r)| **r == real.0)
            .map(|(m, _)| FencingToken(*m))
    }

    /// Records that model token `m` is real token `r`; false if that breaks
    /// the translation or the order of tokens.
    fn bind_token(&mut self, m: u64, r: u64) -> bool {
        if let Some(&known) = self.tokens.get(&m) {
            return known == r;
        }
        if self.tokens.values().any(|&x| x == r) {
            return false;
        }
        let below_ok = self
            .tokens
            .range(..m)
            .next_back()
            .is_none_or(|(_, &x)| x < r);
        let above_ok = self
            .tokens
            .range(m + 1..)
            .next()
            .is_none_or(|(_, &x)| x > r);
        if below_ok && above_ok {
            self.tokens.insert(m, r);
            true
        } else {
            false
        }
    }

    fn note(&mut self, key: &LockKey, events: &[Event]) {
        for e in events {
            match e {
                Event::Granted {
                    key: k,
                    session,
                    grant,
                    ..
                } if k == key => {
                    self.waits.insert(
                        *session,
                        WaitResult::Granted {
                            token: grant.token,
                            mode: grant.mode,
                            granted_at: grant.granted_at,
                        },
                    );
                }
                Event::WaitEnded {
                    key: k,
                    session,
                    reason,
                    ..
                } if k == key => {
                    self.waits.insert(*session, WaitResult::Ended(*reason));
                }
                _ => {}
            }
        }
    }

    /// Translates a command's real ids into model ids. `None`: the op uses a
    /// session the model has not opened (so it cannot come yet). The flag is
    /// true when a token could not be translated (the result is then only
    /// compared as ok / error).
    fn translate(&self, command: &Command) -> Option<(Command, bool)> {
        let mut loose = false;
        let s = |real: &SessionId| self.sessions.get(&real.0).copied();
        let mut t = |real: &FencingToken| {
            self.real_to_model_token(*real).unwrap_or_else(|| {
                loose = true;
                FencingToken(u64::MAX - real.0)
            })
        };
        let c = match command {
            Command::KeepAlive { session } => Command::KeepAlive {
                session: s(session)?,
            },
            Command::CloseSession { session } => Command::CloseSession {
                session: s(session)?,
            },
            Command::Acquire {
                key,
                session,
                mode,
                timeout_ms,
            } => Command::Acquire {
                key: key.clone(),
                session: s(session)?,
                mode: *mode,
                timeout_ms: *timeout_ms,
            },
            Command::CancelWait { key, session } => Command::CancelWait {
                key: key.clone(),
                session: s(session)?,
            },
            Command::Release {
                key,
                session,
                token,
            } => Command::Release {
                key: key.clone(),
                session: s(session)?,
                token: t(token),
            },
            Command::Extend {
                key,
                session,
                token,
            } => Command::Extend {
                key: key.clone(),
                session: s(session)?,
                token: t(token),
            },
            Command::Steal { key, session } => Command::Steal {
                key: key.clone(),
                session: s(session)?,
            },
            other => other.clone(),
        };
        Some((c, loose))
    }
}

/// One operation, prepared for the search.
struct Prepared<'a> {
    op: &'a Op,
    /// Earliest and latest state time at which it can take effect.
    lo: Millis,
    hi: Millis,
    role: Role,
}

/// What a prepared item stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The operation, taking effect once with the answer it got.
    Whole,
    /// A retried command answered `SessionNotFound`: an earlier attempt may
    /// have applied (any result, or none; the session's request memory died
    /// with the session) ...
    Effect,
    /// ... and the session had ended by the answer (a read of its absence).
    Absent,
}

/// A retried session command answered `SessionNotFound` (see [`Role::Effect`]).
fn answered_after_session_end(op: &Op) -> bool {
    let (Call::Exec { command, .. }, Ret::Exec(Err(LockError::SessionNotFound { session }))) =
        (&op.call, &op.ret)
    else {
        return false;
    };
    op.retried && command.session() == Some(*session)
}

/// Checks one key's operations (as [`ops_of_key`] returns them).
pub fn check_key(key: &LockKey, ops: &[&Op], w: &Windows, max_states: usize) -> KeyResult {
    let mut prepared: Vec<Prepared> = Vec::with_capacity(ops.len());
    for op in ops {
        let roles: &[Role] = if answered_after_session_end(op) {
            &[Role::Effect, Role::Absent]
        } else {
            &[Role::Whole]
        };
        for &role in roles {
            prepared.push(Prepared {
                op,
                lo: op.invoke.saturating_sub(w.behind),
                hi: op
                    .complete
                    .map_or(Millis::MAX, |c| c.saturating_add(w.ahead)),
                role,
            });
        }
    }
    // The state times of grants clients learned from their waits, per real
    // session: the operation that handed over the lock took effect then.
    let mut instants: Instants = BTreeMap::new();
    for op in ops {
        if let (
            Call::WaitResult { session, .. },
            Ret::Wait(WaitResult::Granted { granted_at, .. }),
        ) = (&op.call, &op.ret)
        {
            instants.entry(session.0).or_default().insert(*granted_at);
        }
    }
    let n = prepared.len();
    let must: usize = prepared.iter().filter(|p| p.op.complete.is_some()).count();
    if must == 0 {
        return KeyResult::Linearizable;
    }
    let mut seen: HashSet<(Vec<u64>, u128)> = HashSet::new();
    /// One node of the depth-first search; successors are made lazily.
    struct Frame {
        done: Vec<u64>,
        completed: usize,
        model: Model,
        /// Pending operations invoked after this cannot come next.
        horizon: Millis,
        /// Next operation index to try.
        cursor: usize,
        /// Models after the operation being tried, still to explore.
        queue: Vec<(usize, Model)>,
    }
    let frame = |done: Vec<u64>, completed: usize, model: Model| {
        let horizon = prepared
            .iter()
            .enumerate()
            .filter(|(i, _)| !is_done(&done, *i))
            .filter_map(|(_, p)| p.op.complete)
            .min()
            .unwrap_or(Millis::MAX);
        Frame {
            done,
            completed,
            model,
            horizon,
            cursor: 0,
            queue: Vec::new(),
        }
    };
    let mut stack = vec![frame(vec![0; n.div_ceil(64)], 0, Model::new())];
    let mut deepest = 0usize;
    let mut states = 0usize;
    while let Some(top) = stack.last_mut() {
        let Some((i, model)) = top.queue.pop() else {
            // Try the next operation that may come now.
            let next = (top.cursor..n).find(|&i| !is_done(&top.done, i));
            match next {
                Some(i) if prepared[i].op.invoke <= top.horizon => {
                    top.cursor = i + 1;
                    let mut q = successors(key, &prepared[i], &top.model, w, &instants);
                    q.reverse();
                    top.queue = q.into_iter().map(|m| (i, m)).collect();
                }
                _ => {
                    stack.pop();
                }
            }
            continue;
        };
        let mut done = top.done.clone();
        done[i / 64] |= 1 << (i % 64);
        let completed = top.completed + usize::from(prepared[i].op.complete.is_some());
        if completed == must {
            return KeyResult::Linearizable;
        }
        if !seen.insert((done.clone(), model.fingerprint())) {
            continue;
        }
        states += 1;
        if states > max_states {
            return KeyResult::Inconclusive;
        }
        deepest = deepest.max(completed);
        stack.push(frame(done, completed, model));
    }
    // Explain with the first operation no order could account for.
    let stuck = (0..n)
        .filter(|&i| prepared[i].op.complete.is_some())
        .nth(deepest)
        .map(|i| describe(prepared[i].op))
        .unwrap_or_default();
    KeyResult::Violation(format!(
        "{key}: no linearization of {n} operations; the longest valid prefix has {deepest} \
         completed operations, and nothing can follow it among operations such as: {stuck}"
    ))
}

fn describe(op: &Op) -> String {
    format!(
        "client {} [{}..{}] {:?} -> {:?}",
        op.client,
        op.invoke,
        op.complete.map_or("?".to_string(), |c| c.to_string()),
        op.call,
        op.ret
    )
}

fn is_done(done: &[u64], i: usize) -> bool {
    done[i / 64] & (1 << (i % 64)) != 0
}

/// Grant times waiters reported, by real session id.
type Instants = BTreeMap<u64, BTreeSet<Millis>>;

/// Every model `p` can lead to from `model` with the answer it really got.
fn successors(
    key: &LockKey,
    p: &Prepared,
    model: &Model,
    w: &Windows,
    instants: &Instants,
) -> Vec<Model> {
    let mut out = Vec::new();
    if p.role == Role::Effect {
        // The earlier attempt may not have applied at all.
        out.push(model.clone());
    }
    for base in with_graces(key, model, p, w) {
        let times = time_candidates(&base, p);
        let mut granted: BTreeSet<SessionId> = BTreeSet::new();
        for &now in &times {
            let mut m = base.clone();
            let (ok, g) = step(key, &mut m, p, now);
            granted.extend(g);
            if ok {
                out.push(m);
            }
        }
        // An operation that hands the lock to a waiter stamps the grant (and
        // a lease's expiry) with its own state time, which its interval does
        // not pin: try the grant times those waiters reported.
        let Some(&from) = times.first() else { continue };
        if pinned_time(&base, p.op).is_some() {
            continue;
        }
        // An operation that sets a deadline (a keep-alive, an extend, a
        // timed wait) decides when a later expiry hands the lock over: try
        // the times that put that expiry on a grant time a waiter saw.
        if let Some(d) = deadline_offset(&base, p.op) {
            let shifted: BTreeSet<Millis> = instants
                .values()
                .flatten()
                .filter_map(|g| g.checked_sub(d))
                .filter(|&t| t > from && t <= p.hi && !times.contains(&t))
                .take(MAX_TIME_CANDIDATES)
                .collect();
            for now in shifted {
                let mut m = base.clone();
                if step(key, &mut m, p, now).0 {
                    out.push(m);
                }
            }
        }
        if granted.is_empty() {
            continue;
        }
        let seen: BTreeSet<Millis> = base
            .sessions
            .iter()
            .filter(|(_, m)| granted.contains(m))
            .filter_map(|(real, _)| instants.get(real))
            .flatten()
            .copied()
            .filter(|&t| t > from && t <= p.hi && !times.contains(&t))
            .collect();
        for now in seen {
            let mut m = base.clone();
            if step(key, &mut m, p, now).0 {
                out.push(m);
            }
        }
    }
    out
}

/// The model, and the model after each recorded fail-over grace that may
/// have come before `p` (in log order, each at its own stamp). A grace
/// processes no expiry itself, but the old leader may have ticked, at any
/// expiry instant up to the grace's stamp, before it: each is tried.
fn with_graces(key: &LockKey, model: &Model, p: &Prepared, w: &Windows) -> Vec<Model> {
    let mut out = vec![model.clone()];
    let mut m = model.clone();
    while let Some(&at) = w.graces.get(m.graces) {
        if at > p.hi {
            break;
        }
        m.graces += 1;
        let mut ticked = m.clone();
        let mut events = Vec::new();
        for _ in 0..MAX_TIME_CANDIDATES {
            match ticked.table.next_deadline() {
                Some(d) if d <= at => {
                    events.clear();
                    ticked.table.tick(d, &mut events);
                    ticked.note(key, &events);
                    let mut g = ticked.clone();
                    g.table.grant_grace(at);
                    out.push(g);
                }
                _ => break,
            }
        }
        m.table.grant_grace(at);
        out.push(m.clone());
    }
    out
}

/// State times worth trying for `p` on `model`.
///
/// A write is stamped by the leader between its invocation and completion
/// (clock offsets widen that), so its state time is the later of the stamp
/// and the current state time. A read does not move state time: it sees the
/// state as it is, possibly after expiries the leader ticked in the meantime
/// (each deadline up to the read's completion is a candidate).
fn time_candidates(model: &Model, p: &Prepared) -> Vec<Millis> {
    let is_read = p.role == Role::Absent || !matches!(p.op.call, Call::Exec { .. });
    let from = if is_read {
        model.table.now()
    } else {
        p.lo.max(model.table.now())
    };
    if let Some(pinned) = pinned_time(model, p.op).filter(|_| p.role == Role::Whole) {
        return if pinned >= model.table.now() {
            vec![pinned]
        } else {
            Vec::new()
        };
    }
    if from > p.hi {
        return Vec::new();
    }
    let mut out = vec![from];
    let mut probe = model.table.clone();
    let mut events = Vec::new();
    probe.tick(from, &mut events);
    while out.len() < MAX_TIME_CANDIDATES {
        match probe.next_deadline() {
            Some(d) if d <= p.hi && d > *out.last().unwrap_or(&0) => {
                out.push(d);
                events.clear();
                probe.tick(d, &mut events);
            }
            _ => break,
        }
    }
    out
}

/// How long after it takes effect `op` sets a deadline (session expiry,
/// lease expiry, wait timeout), if it does.
fn deadline_offset(model: &Model, op: &Op) -> Option<Millis> {
    let Call::Exec { command, .. } = &op.call else {
        return None;
    };
    match command {
        Command::KeepAlive { session } => {
            let s = model.sessions.get(&session.0)?;
            Some(model.table.describe_session(*s)?.ttl_ms)
        }
        Command::Extend { key, .. } => model.table.describe(key)?.ttl_ms,
        Command::Acquire {
            timeout_ms: Some(t),
            ..
        } => Some(*t),
        _ => None,
    }
}

/// The state time an answer reveals, if it carries one.
fn pinned_time(model: &Model, op: &Op) -> Option<Millis> {
    let Call::Exec { command, .. } = &op.call else {
        return None;
    };
    let Ret::Exec(Ok(resp)) = &op.ret else {
        return None;
    };
    match (command, resp) {
        (Command::OpenSession { ttl_ms }, Response::SessionOpened { expires_at, .. }) => {
            expires_at.checked_sub(*ttl_ms)
        }
        (Command::KeepAlive { session }, Response::KeptAlive { expires_at }) => {
            let s = model.sessions.get(&session.0)?;
            let ttl = model.table.describe_session(*s)?.ttl_ms;
            expires_at.checked_sub(ttl)
        }
        (Command::Acquire { .. } | Command::Steal { .. }, Response::Granted(g)) => {
            Some(g.granted_at)
        }
        (
            Command::Acquire {
                timeout_ms: Some(t),
                ..
            },
            Response::Queued {
                deadline: Some(d), ..
            },
        ) => d.checked_sub(*t),
        (
            Command::Extend { key, .. },
            Response::Extended {
                expires_at: Some(e),
            },
        ) => {
            let ttl = model.table.describe(key)?.ttl_ms?;
            e.checked_sub(ttl)
        }
        _ => None,
    }
}

/// Applies `op` to `m` at `now`; true if the model's answer matches the real
/// one, and whether the model granted the key to someone on the way.
fn step(key: &LockKey, m: &mut Model, p: &Prepared, now: Millis) -> (bool, Vec<SessionId>) {
    let matched = apply_op(key, m, p, now);
    (matched, std::mem::take(&mut m.granted_now))
}

fn apply_op(key: &LockKey, m: &mut Model, p: &Prepared, now: Millis) -> bool {
    m.granted_now.clear();
    let op = p.op;
    let (read_lo, read_hi) = (p.lo, p.hi);
    let mut events = Vec::new();
    match &op.call {
        Call::Exec {
            request_id,
            command,
        } => {
            let Some((cmd, loose)) = m.translate(command) else {
                return false;
            };
            if p.role == Role::Absent {
                m.table.tick(now, &mut events);
                m.note(key, &events);
                return cmd
                    .session()
                    .is_some_and(|s| m.table.describe_session(s).is_none());
            }
            let got = m.table.apply_request(now, *request_id, &cmd, &mut events);
            m.note(key, &events);
            m.granted_now = events
                .iter()
                .filter_map(|e| match e {
                    Event::Granted {
                        key: k, session, ..
                    } if k == key => Some(*session),
                    _ => None,
                })
                .collect();
            if matches!(got, Ok(Response::Queued { .. })) {
                if let Some(s) = cmd.session() {
                    m.waits.remove(&s);
                }
            }
            match &op.ret {
                _ if p.role == Role::Effect => true,
                Ret::Unknown => true,
                Ret::Exec(real) if loose => real.is_ok() == got.is_ok(),
                Ret::Exec(real) => exec_matches(m, real, &got),
                _ => false,
            }
        }
        Call::Validate { token, .. } => {
            m.table.tick(now, &mut events);
            m.note(key, &events);
            let Ret::Validate(real) = &op.ret else {
                return matches!(op.ret, Ret::Unknown);
            };
            match m.real_to_model_token(*token) {
                // The node checks expiry at its own clock's reading, some
                // time within the read's interval.
                Some(t) => [read_lo, read_hi].iter().any(|&at| {
                    let got = m.table.validate(at, key, t).map(|_| ());
                    same_error_kind(real, &got)
                }),
                // A token the checker never saw granted can only be invalid.
                None => real.is_err(),
            }
        }
        Call::WaitResult { session, .. } => {
            m.table.tick(now, &mut events);
            m.note(key, &events);
            let Ret::Wait(real) = &op.ret else {
                return matches!(op.ret, Ret::Unknown);
            };
            let Some(s) = m.sessions.get(&session.0).copied() else {
                return false;
            };
            let known = m.waits.get(&s).copied();
            if m.table.describe_session(s).is_none()
                && *real == WaitResult::Ended(fencelock_core::WaitEnd::SessionEnded)
            {
                // An ended session's wait book is gone: the node answers "session ended".
                return true;
            }
            match (real, known) {
                (
                    WaitResult::Granted {
                        token,
                        mode,
                        granted_at,
                    },
                    Some(WaitResult::Granted {
                        token: mt,
                        mode: mm,
                        granted_at: mg,
                    }),
                ) => *mode == mm && *granted_at == mg && m.bind_token(mt.0, token.0),
                (WaitResult::Ended(r), Some(WaitResult::Ended(mr))) => *r == mr,
                _ => false,
            }
        }
    }
}

fn same_error_kind<T, U>(a: &Result<T, LockError>, b: &Result<U, LockError>) -> bool {
    match (a, b) {
        (Ok(_), Ok(_)) => true,
        (Err(x), Err(y)) => std::mem::discriminant(x) == std::mem::discriminant(y),
        _ => false,
    }
}

/// Compares a real answer with the model's, binding ids on the way.
fn exec_matches(
    m: &mut Model,
    real: &Result<Response, LockError>,
    got: &Result<Response, LockError>,
) -> bool {
    let (Ok(real), Ok(got)) = (real, got) else {
        return same_error_kind(real, got);
    };
    match (real, got) {
        (
            Response::SessionOpened {
                session: rs,
                expires_at: re,
            },
            Response::SessionOpened {
                session: ms,
                expires_at: me,
            },
        ) => {
            if re != me || m.sessions.contains_key(&rs.0) {
                return false;
            }
            m.sessions.insert(rs.0, *ms);
            true
        }
        (Response::Granted(r), Response::Granted(g)) => {
            r.mode == g.mode
                && r.granted_at == g.granted_at
                && r.expires_at == g.expires_at
                && m.bind_token(g.token.0, r.token.0)
        }
        _ => real == got,
    }
}

#[cfg(test)]
#[path = "linear_tests.rs"]
mod tests;

/// For a key that fails: the shortest prefix of its history (operations
/// invoked up to some instant, those still running then counted as unknown)
/// that already fails — what `--verbose` prints to explain a failure.
pub fn shortest_failing_prefix(history: &History, key: &LockKey, max_states: usize) -> Vec<Op> {
    let all: Vec<Op> = ops_of_key(history, key).into_iter().cloned().collect();
    let w = Windows {
        behind: history.clock_behind,
        ahead: history.clock_ahead,
        graces: history.graces.clone(),
    };
    let cut = |t: Millis| -> Vec<Op> {
        all.iter()
            .filter(|op| op.invoke <= t)
            .map(|op| match op.complete {
                Some(c) if c > t => Op {
                    complete: None,
                    ret: Ret::Unknown,
                    ..op.clone()
                },
                _ => op.clone(),
            })
            .collect()
    };
    let fails = |t: Millis| {
        let ops = cut(t);
        let refs: Vec<&Op> = ops.iter().collect();
        matches!(
            check_key(key, &refs, &w, max_states),
            KeyResult::Violation(_)
        )
    };
    let mut times: Vec<Millis> = all.iter().filter_map(|op| op.complete).collect();
    times.sort_unstable();
    times.dedup();
    let (mut lo, mut hi) = (0usize, times.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if fails(times[mid]) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    times.get(lo).map_or(all.clone(), |&t| cut(t))
}
