//! The engine: the core [`Table`] under one mutex, plus the wake-up
//! bookkeeping that turns the core's events into woken futures.
//!
//! Everything here is synchronous and clock-free (the caller passes `now`),
//! so the loom tests drive exactly this code. The tokio parts (timer task,
//! timeouts) live in `backend.rs`.
//!
//! # Why it is race-free
//! A wait's outcome is written by the same critical section that applies the
//! command granting or ending it (the core reports it as an [`Event`]), and a
//! waiting future checks the outcome and registers its waker in one critical
//! section. So a grant can never fall between "checked" and "registered"
//! (no lost wake-up), and a cancel (`CancelWait`) either finds the session
//! still queued (`was_waiting: true`, nothing granted) or finds the grant
//! already recorded, which the canceller then releases.

use crate::sync::{lock, Mutex};
use fencelock::{grant_of, WaitStatus};
use fencelock_core::{
    Command, Event, FencingToken, HolderInfo, Limits, LockError, LockInfo, LockKey, Millis,
    RequestId, Response, SessionId, SessionInfo, Table, WaitEnd,
};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Most remembered wait outcomes per session; beyond it, finished outcomes
/// nobody is waiting on are dropped (the state still answers `Granted`).
const MAX_OUTCOMES_PER_SESSION: usize = 1024;

/// Wakers to call once the engine's mutex is released, and whether the timer
/// task must re-arm for an earlier deadline.
#[derive(Default)]
#[must_use = "wake the wakers after the engine lock is released"]
pub struct Wake {
    wakers: Vec<Waker>,
    /// The core's next deadline moved earlier than the armed timer.
    pub reschedule: bool,
}

impl Wake {
    /// Wakes every collected waker.
    #[inline]
    pub fn wake(self) {
        if self.wakers.is_empty() {
            return;
        }
        for w in self.wakers {
            w.wake();
        }
    }
}

/// One session's wait for one key: its known outcome (`None` while queued)
/// and the futures waiting for it.
#[derive(Default)]
struct Slot {
    status: Option<WaitStatus>,
    wakers: Vec<(u64, Waker)>,
}

struct Inner {
    table: Table,
    /// Wait outcomes and waiters, by session then key.
    waits: HashMap<SessionId, HashMap<LockKey, Slot>>,
    /// Futures watching a hold, woken when it ends.
    hold_watchers: HashMap<(LockKey, FencingToken), Vec<(u64, Waker)>>,
    next_waiter_id: u64,
    /// The deadline the timer task is armed for.
    armed: Option<Millis>,
    events: Vec<Event>,
}

/// The lock table and its waiters. Cheap to share behind an `Arc`.
pub struct Engine {
    inner: Mutex<Inner>,
    /// Loom builds only: check and register in two critical sections — the
    /// lost wake-up the loom tests must catch (proof that they can).
    #[cfg(fencelock_loom)]
    pub planted_lost_wakeup: bool,
}

impl Engine {
    pub fn new(limits: Limits) -> Self {
        Engine {
            inner: Mutex::new(Inner {
                table: Table::new(limits),
                waits: HashMap::new(),
                hold_watchers: HashMap::new(),
                next_waiter_id: 0,
                armed: None,
                events: Vec::new(),
            }),
            #[cfg(fencelock_loom)]
            planted_lost_wakeup: false,
        }
    }

    /// Applies one command at `now` and collects whom to wake.
    pub fn apply(
        &self,
        now: Millis,
        command: &Command,
        request_id: Option<RequestId>,
    ) -> (Result<Response, LockError>, Wake) {
        let mut guard = lock(&self.inner);
        let inner = &mut *guard;
        let mut wake = Wake::default();
        // A new acquire or steal of a key starts a new wait outcome.
        if let Command::Acquire { key, session, .. } | Command::Steal { key, session } = command {
            if let Some(slot) = inner.slot_mut(*session, key) {
                slot.status = None;
            }
        }
        let outcome = inner
            .table
            .apply_request(now, request_id, command, &mut inner.events);
        if !inner.events.is_empty() {
            let mut events = std::mem::take(&mut inner.events);
            inner.dispatch(&mut events, &mut wake);
            inner.events = events;
        }
        inner.after_command(command, &outcome, &mut wake);
        inner.check_deadline(&mut wake);
        (outcome, wake)
    }

    /// Processes expiries due at `now`.
    pub fn tick(&self, now: Millis) -> Wake {
        let mut guard = lock(&self.inner);
        let inner = &mut *guard;
        let mut wake = Wake::default();
        let mut events = std::mem::take(&mut inner.events);
        inner.table.tick(now, &mut events);
        inner.dispatch(&mut events, &mut wake);
        inner.events = events;
        inner.check_deadline(&mut wake);
        wake
    }

    /// Arms the timer: returns the core's next deadline and remembers it, so
    /// later commands know whether they moved it earlier.
    pub fn arm(&self) -> Option<Millis> {
        let mut inner = lock(&self.inner);
        inner.armed = inner.table.next_deadline();
        inner.armed
    }

    /// The outcome of `session`'s wait for `key` if it is known now;
    /// otherwise registers `cx`'s waker under `*id` and returns `Pending`.
    pub fn poll_wait(
        &self,
        cx: &mut Context<'_>,
        key: &LockKey,
        session: SessionId,
        id: &mut Option<u64>,
    ) -> Poll<WaitStatus> {
        let mut guard = lock(&self.inner);
        let inner = &mut *guard;
        if let Some(status) = inner.wait_status(key, session) {
            return Poll::Ready(status);
        }
        #[cfg(fencelock_loom)]
        if self.planted_lost_wakeup {
            drop(guard);
            guard = lock(&self.inner);
        }
        let inner = &mut *guard;
        let waiter = *id.get_or_insert_with(|| inner.new_waiter_id());
        let slot = inner
            .waits
            .entry(session)
            .or_default()
            .entry(key.clone())
            .or_default();
        register(&mut slot.wakers, waiter, cx.waker());
        Poll::Pending
    }

    /// A future of the outcome of `session`'s wait for `key`.
    pub fn wait<'a>(&'a self, key: &'a LockKey, session: SessionId) -> WaitFuture<'a> {
        WaitFuture {
            engine: self,
            key,
            session,
            id: None,
        }
    }

    /// Forgets a waiting future's waker (it was dropped or timed out).
    pub fn forget_wait(&self, key: &LockKey, session: SessionId, id: u64) {
        let mut inner = lock(&self.inner);
        if let Some(slot) = inner.slot_mut(session, key) {
            slot.wakers.retain(|(i, _)| *i != id);
        }
    }

    /// Why `token` is no longer a current hold at `now`; while it still is,
    /// registers `cx`'s waker to be woken when the hold ends.
    pub fn poll_hold(
        &self,
        cx: &mut Context<'_>,
        now: Millis,
        key: &LockKey,
        token: FencingToken,
        id: &mut Option<u64>,
    ) -> Poll<LockError> {
        let mut guard = lock(&self.inner);
        let inner = &mut *guard;
        if let Err(e) = inner.table.validate(now, key, token) {
            return Poll::Ready(e);
        }
        let watcher = *id.get_or_insert_with(|| inner.new_waiter_id());
        let list = inner.hold_watchers.entry((key.clone(), token)).or_default();
        register(list, watcher, cx.waker());
        Poll::Pending
    }

    /// Forgets a hold watcher (dropped or `max_wait` passed).
    pub fn forget_hold(&self, key: &LockKey, token: FencingToken, id: u64) {
        let mut inner = lock(&self.inner);
        let entry = (key.clone(), token);
        if let Some(list) = inner.hold_watchers.get_mut(&entry) {
            list.retain(|(i, _)| *i != id);
            if list.is_empty() {
                inner.hold_watchers.remove(&entry);
            }
        }
    }

    pub fn validate(
        &self,
        now: Millis,
        key: &LockKey,
        token: FencingToken,
    ) -> Result<HolderInfo, LockError> {
        lock(&self.inner).table.validate(now, key, token)
    }

    pub fn describe(&self, key: &LockKey) -> Option<LockInfo> {
        lock(&self.inner).table.describe(key)
    }

    pub fn describe_session(&self, session: SessionId) -> Option<SessionInfo> {
        lock(&self.inner).table.describe_session(session)
    }

    /// The core's structural invariants (tests).
    pub fn check_invariants(&self) -> Result<(), String> {
        lock(&self.inner).table.check_invariants()
    }

    /// Remembered wait slots (tests: nothing may leak).
    pub fn slot_count(&self) -> usize {
        lock(&self.inner).waits.values().map(HashMap::len).sum()
    }

    /// Registered hold watchers (tests: nothing may leak).
    pub fn hold_watcher_count(&self) -> usize {
        lock(&self.inner).hold_watchers.len()
    }
}

fn register(list: &mut Vec<(u64, Waker)>, id: u64, waker: &Waker) {
    match list.iter_mut().find(|(i, _)| *i == id) {
        Some((_, w)) => {
            if !w.will_wake(waker) {
                w.clone_from(waker);
            }
        }
        None => list.push((id, waker.clone())),
    }
}

impl Inner {
    fn new_waiter_id(&mut self) -> u64 {
        self.next_waiter_id += 1;
        self.next_waiter_id
    }

    fn slot_mut(&mut self, session: SessionId, key: &LockKey) -> Option<&mut Slot> {
        if self.waits.is_empty() {
            return None;
        }
        self.waits.get_mut(&session)?.get_mut(key)
    }

    /// Records an outcome and wakes its waiters.
    fn settle(&mut self, session: SessionId, key: &LockKey, status: WaitStatus, wake: &mut Wake) {
        let slots = self.waits.entry(session).or_default();
        let slot = slots.entry(key.clone()).or_default();
        slot.status = Some(status);
        wake.wakers.extend(slot.wakers.drain(..).map(|(_, w)| w));
        if slots.len() > MAX_OUTCOMES_PER_SESSION {
            slots.retain(|_, s| s.status.is_none() || !s.wakers.is_empty());
        }
    }

    /// Turns the core's events into recorded outcomes and wake-ups.
    fn dispatch(&mut self, events: &mut Vec<Event>, wake: &mut Wake) {
        if events.is_empty() {
            return;
        }
        for event in events.drain(..) {
            match event {
                Event::Granted {
                    key,
                    session,
                    grant,
                    ..
                } => self.settle(session, &key, WaitStatus::Granted(grant), wake),
                Event::WaitEnded {
                    key,
                    session,
                    reason,
                    ..
                } => self.settle(session, &key, WaitStatus::Ended(reason), wake),
                Event::HoldLost { key, token, .. } => self.hold_ended(&key, token, wake),
                Event::SessionExpired { session } => self.session_gone(session, wake),
            }
        }
    }

    fn hold_ended(&mut self, key: &LockKey, token: FencingToken, wake: &mut Wake) {
        if self.hold_watchers.is_empty() {
            return;
        }
        if let Some(list) = self.hold_watchers.remove(&(key.clone(), token)) {
            wake.wakers.extend(list.into_iter().map(|(_, w)| w));
        }
    }

    /// A closed or expired session: its outcomes are forgotten (waiters
    /// re-read the state, which says the session is gone).
    fn session_gone(&mut self, session: SessionId, wake: &mut Wake) {
        if let Some(slots) = self.waits.remove(&session) {
            for (_, slot) in slots {
                wake.wakers.extend(slot.wakers.into_iter().map(|(_, w)| w));
            }
        }
    }

    /// Bookkeeping the core reports only in the caller's response.
    fn after_command(
        &mut self,
        command: &Command,
        outcome: &Result<Response, LockError>,
        wake: &mut Wake,
    ) {
        match (command, outcome) {
            (Command::Acquire { key, session, .. }, Ok(Response::Queued { .. })) => {
                // Queued: an empty slot marks "waiting", so later outcome
                // lookups are one map probe, never a state scan.
                self.waits
                    .entry(*session)
                    .or_default()
                    .entry(key.clone())
                    .or_default();
            }
            // Granted at once; a thief that was queued also leaves its wait.
            (
                Command::Acquire { key, session, .. } | Command::Steal { key, session },
                Ok(Response::Granted(grant)),
            ) if self.slot_mut(*session, key).is_some() => {
                self.settle(*session, key, WaitStatus::Granted(*grant), wake);
            }
            (
                Command::CancelWait { key, session },
                Ok(Response::WaitCancelled { was_waiting: true }),
            ) => {
                if let Some(slot) = self.waits.get_mut(session).and_then(|s| s.remove(key)) {
                    wake.wakers.extend(slot.wakers.into_iter().map(|(_, w)| w));
                }
            }
            (Command::Release { key, token, .. }, Ok(Response::Released)) => {
                self.hold_ended(key, *token, wake);
            }
            (Command::CloseSession { session }, Ok(Response::SessionClosed)) => {
                self.session_gone(*session, wake);
            }
            _ => {}
        }
    }

    fn check_deadline(&mut self, wake: &mut Wake) {
        let next = self.table.next_deadline();
        wake.reschedule = match (next, self.armed) {
            (Some(n), Some(a)) => n < a,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if wake.reschedule {
            // The timer task re-arms; until then, do not ask again.
            self.armed = next;
        }
    }

    /// The known outcome of a wait, or `None` while it is queued.
    fn wait_status(&mut self, key: &LockKey, session: SessionId) -> Option<WaitStatus> {
        if let Some(slot) = self.slot_mut(session, key) {
            return slot.status.clone();
        }
        // No slot: never queued here, cancelled, or forgotten: ask the state.
        let Some(info) = self.table.describe_session(session) else {
            return Some(WaitStatus::Ended(WaitEnd::SessionEnded));
        };
        if info.waits.contains(key) {
            return None;
        }
        let held = info.holds.iter().find(|(k, _)| k == key).and_then(|_| {
            self.table
                .describe(key)
                .and_then(|l| l.holders.into_iter().find(|h| h.session == session))
        });
        Some(match held {
            Some(h) => WaitStatus::Granted(grant_of(&h)),
            None => WaitStatus::NotWaiting,
        })
    }
}

/// Resolves with the outcome of a wait; forgets its waker when dropped.
pub struct WaitFuture<'a> {
    engine: &'a Engine,
    key: &'a LockKey,
    session: SessionId,
    id: Option<u64>,
}

impl Future for WaitFuture<'_> {
    type Output = WaitStatus;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<WaitStatus> {
        let this = self.get_mut();
        this.engine
            .poll_wait(cx, this.key, this.session, &mut this.id)
    }
}

impl Drop for WaitFuture<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.engine.forget_wait(self.key, self.session, id);
        }
    }
}
