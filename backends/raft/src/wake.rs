//! Targeted wake-ups for long polls on a session's waits.
//!
//! A waiting `wait` poll must answer the moment its wait is granted: that
//! answer is on the critical path of every contended hand-off. Waking every
//! poll on every applied entry (a watch on the applied index) made the one
//! granted poll queue behind all the others, each re-reading the table. So
//! applying an entry notes the sessions whose waits it may have changed —
//! those named by its commands and by the core's events (grant, wait end,
//! hold lost, session expired) — and only their polls wake. A wake-up lost
//! here would only delay an answer until the poll's deadline (the client
//! then asks again); installing a snapshot wakes everyone.

use fencelock_core::SessionId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// Polls registered per session.
#[derive(Debug, Default)]
pub struct Wakeups {
    by_session: Mutex<HashMap<SessionId, (Arc<Notify>, usize)>>,
}

/// A registration; dropping it unregisters.
pub struct Registered<'a> {
    wakeups: &'a Wakeups,
    session: SessionId,
    notify: Arc<Notify>,
}

impl Registered<'_> {
    /// Resolves at the next wake-up of the session after the call that
    /// created this future was first polled or enabled.
    pub fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut map = self.wakeups.map();
        if let Some((_, n)) = map.get_mut(&self.session) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.session);
            }
        }
    }
}

impl Wakeups {
    fn map(&self) -> MutexGuard<'_, HashMap<SessionId, (Arc<Notify>, usize)>> {
        self.by_session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a poll on `session`'s waits.
    pub fn register(&self, session: SessionId) -> Registered<'_> {
        let mut map = self.map();
        let (notify, n) = map
            .entry(session)
            .or_insert_with(|| (Arc::new(Notify::new()), 0));
        *n += 1;
        Registered {
            wakeups: self,
            session,
            notify: notify.clone(),
        }
    }

    /// Wakes the polls of these sessions.
    pub fn wake(&self, sessions: &[SessionId]) {
        if sessions.is_empty() {
            return;
        }
        let map = self.map();
        for s in sessions {
            if let Some((notify, _)) = map.get(s) {
                notify.notify_waiters();
            }
        }
    }

    /// Wakes every poll (the state was replaced wholesale).
    pub fn wake_all(&self) {
        for (notify, _) in self.map().values() {
            notify.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll};

    fn ready(f: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>) -> bool {
        let waker = std::task::Waker::noop();
        matches!(f.poll(&mut Context::from_waker(waker)), Poll::Ready(()))
    }

    #[test]
    fn only_the_named_sessions_wake_and_registrations_are_dropped() {
        let w = Wakeups::default();
        {
            let (a, b) = (w.register(SessionId(1)), w.register(SessionId(2)));
            let again = w.register(SessionId(2));
            let mut fa = pin!(a.notify().notified());
            let mut fb = pin!(b.notify().notified());
            let mut fc = pin!(again.notify().notified());
            for f in [fa.as_mut(), fb.as_mut(), fc.as_mut()] {
                f.enable();
            }
            w.wake(&[SessionId(2), SessionId(3)]);
            assert!(!ready(fa.as_mut()), "session 1 was not named");
            assert!(ready(fb.as_mut()) && ready(fc.as_mut()));
            w.wake_all();
            assert!(ready(fa.as_mut()));
        }
        assert!(w.map().is_empty(), "registrations outlived their polls");
    }
}
