//! What the node needs to run inside the madsim simulator (`cfg(madsim)`
//! only; the simulator itself is the `fencelock-sim` crate): openraft's async
//! runtime on madsim, per-node clocks the nemesis can skew, a record of the
//! fail-over graces applied (the simulator's model replays them), and the
//! one planted bug that has to live inside the state machine.
//!
//! Everything here is thread-local: madsim runs one simulation per thread,
//! so parallel seeds never share a clock or a record.

use crate::clock::Clock;
use fencelock_core::{Command, LockKey, Millis, SessionId};
use openraft::async_runtime::AsyncOneshotSendExt;
use openraft::{AsyncRuntime, OptionalSend};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

// ----- openraft's runtime ---------------------------------------------------

/// openraft's [`AsyncRuntime`] on madsim: spawn, sleep, instants and the
/// random election timeouts all come from the simulation (seeded).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MadsimRuntime;

/// A timeout of our own: madsim's is not `Send`, openraft needs it to be.
pub struct Timeout<F> {
    future: Pin<Box<F>>,
    sleep: Pin<Box<madsim::time::Sleep>>,
}

/// The deadline passed first.
#[derive(Debug)]
pub struct Elapsed;

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl<R, F: Future<Output = R>> Future for Timeout<F> {
    type Output = Result<R, Elapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(r) = self.future.as_mut().poll(cx) {
            return Poll::Ready(Ok(r));
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A oneshot sender (tokio's channel, which needs no runtime).
pub struct OneshotSender<T>(tokio::sync::oneshot::Sender<T>);

impl<T> std::fmt::Debug for OneshotSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OneshotSender")
    }
}

impl<T: OptionalSend> AsyncOneshotSendExt<T> for OneshotSender<T> {
    fn send(self, t: T) -> Result<(), T> {
        self.0.send(t)
    }
}

impl AsyncRuntime for MadsimRuntime {
    type JoinError = madsim::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = madsim::task::JoinHandle<T>;
    type Sleep = madsim::time::Sleep;
    // tokio's instant reads std's clock, which madsim simulates.
    type Instant = tokio::time::Instant;
    type TimeoutError = Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = Timeout<T>;
    type ThreadLocalRng = madsim::rand::GlobalRng;
    type OneshotSender<T: OptionalSend> = OneshotSender<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        madsim::task::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        madsim::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        madsim::time::sleep_until(deadline.into_std())
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Timeout {
            future: Box::pin(future),
            sleep: Box::pin(madsim::time::sleep(duration)),
        }
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Timeout {
            future: Box::pin(future),
            sleep: Box::pin(madsim::time::sleep_until(deadline.into_std())),
        }
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        madsim::rand::thread_rng()
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (OneshotSender(tx), rx)
    }
}

// ----- planted bugs -----------------------------------------------------------

/// Bugs the simulator plants on purpose, to prove its checkers catch them
/// (the others are planted in the simulator's own transport and disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Planted {
    /// Replicas apply each entry at their own clock, not the leader's stamp.
    LocalClockApply,
    /// A queued acquire jumps ahead of the waiters already queued (LIFO).
    NewestWaiterFirst,
}

thread_local! {
    static PLANTED: RefCell<BTreeSet<Planted>> = const { RefCell::new(BTreeSet::new()) };
    static CLOCKS: RefCell<BTreeMap<String, i64>> = const { RefCell::new(BTreeMap::new()) };
    static GRACES: RefCell<BTreeSet<Millis>> = const { RefCell::new(BTreeSet::new()) };
}

/// Records a fail-over grace entry being applied (at its stamped `now`), so
/// the simulator's model can apply the same grace.
pub fn note_grace(now: Millis) {
    GRACES.with(|g| g.borrow_mut().insert(now));
}

/// Every grace applied so far (stamps, ascending).
pub fn graces() -> Vec<Millis> {
    GRACES.with(|g| g.borrow().iter().copied().collect())
}

/// Switches a planted bug on or off for this thread's simulation.
pub fn plant(bug: Planted, on: bool) {
    PLANTED.with(|p| {
        let mut p = p.borrow_mut();
        if on {
            p.insert(bug);
        } else {
            p.remove(&bug);
        }
    });
}

/// Whether `bug` is planted in this thread's simulation.
pub fn planted(bug: Planted) -> bool {
    PLANTED.with(|p| p.borrow().contains(&bug))
}

/// Clears this thread's clocks, grace record and planted bugs (a new simulation).
pub fn reset() {
    CLOCKS.with(|c| c.borrow_mut().clear());
    PLANTED.with(|p| p.borrow_mut().clear());
    GRACES.with(|g| g.borrow_mut().clear());
}

/// The planted FIFO bug: moves every other waiter of `key` behind
/// `newest`, within the same entry (their waits are re-queued with what was
/// left of their timeouts; the wait book is not told).
pub fn newest_waiter_first(
    table: &mut fencelock_core::Table,
    key: &LockKey,
    newest: SessionId,
    now: Millis,
) {
    let Some(info) = table.describe(key) else {
        return;
    };
    let mut events = Vec::new();
    for w in info.waiters.iter().filter(|w| w.session != newest) {
        let (key, session) = (key.clone(), w.session);
        let timeout_ms = w.deadline.map(|d| d.saturating_sub(now).max(1));
        let _ = table.apply(
            now,
            &Command::CancelWait {
                key: key.clone(),
                session,
            },
            &mut events,
        );
        let acquire = Command::Acquire {
            key,
            session,
            mode: w.mode,
            timeout_ms,
        };
        let _ = table.apply(now, &acquire, &mut events);
    }
}

// ----- clocks -----------------------------------------------------------------

/// Simulated milliseconds since the simulation started.
pub fn global_ms() -> Millis {
    madsim::time::TimeHandle::current().elapsed().as_millis() as Millis
}

/// Sets how far `node`'s clock is from global time (negative: behind).
pub fn set_clock_offset(node: &str, offset_ms: i64) {
    CLOCKS.with(|c| c.borrow_mut().insert(node.to_string(), offset_ms));
}

/// The clock offset of `node`.
pub fn clock_offset(node: &str) -> i64 {
    CLOCKS.with(|c| c.borrow().get(node).copied().unwrap_or(0))
}

/// A node's wall clock: global simulated time plus the node's offset, which
/// the nemesis skews and jumps. Starts at 1 s so offsets stay positive.
/// `node` is the madsim node id (as text) the clock belongs to.
#[derive(Debug, Clone)]
pub struct SimClock {
    pub node: String,
}

/// The madsim id (as text) of the node the calling task runs on.
pub fn current_node() -> String {
    madsim::plugin::node().to_string()
}

impl Clock for SimClock {
    fn now_ms(&self) -> Millis {
        let t = 1_000 + global_ms() as i64 + clock_offset(&self.node);
        t.max(0) as Millis
    }
}

/// The reading of the clock of the node this task runs on (for the
/// planted local-clock bug).
pub fn local_now() -> Millis {
    SimClock {
        node: current_node(),
    }
    .now_ms()
}

/// `future`, or [`Elapsed`] after `duration` (a `Send` timeout on madsim).
pub fn timeout<F: Future>(duration: Duration, future: F) -> Timeout<F> {
    Timeout {
        future: Box::pin(future),
        sleep: Box::pin(madsim::time::sleep(duration)),
    }
}
