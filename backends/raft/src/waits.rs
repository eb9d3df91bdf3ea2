//! How each session's last wait for each key ended, kept as replicated state.
//!
//! A client whose `acquire` was queued learns later whether it was granted.
//! The grant is an event of some *other* command's transition (a release, an
//! expiry), so every replica records it here while applying, deterministically,
//! and the book travels in snapshots. Any leader can then answer
//! [`fencelock::Backend::wait`] exactly — also after a fail-over — without
//! keeping one open request per waiter.
//!
//! An entry lives until the session queues for the key again, releases it, or
//! ends; a session keeps at most [`MAX_PER_SESSION`] entries.

use fencelock_core::{Event, Grant, LockKey, SessionId, WaitEnd};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Outcomes remembered per session.
pub const MAX_PER_SESSION: usize = 1024;

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WaitOutcome {
    Granted(Grant),
    Ended(WaitEnd),
}

/// Ended waits by session and key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitBook {
    by_session: BTreeMap<SessionId, BTreeMap<LockKey, WaitOutcome>>,
}

impl WaitBook {
    /// Records the waits that `events` ended; forgets sessions that expired.
    pub fn record(&mut self, events: &[Event]) {
        for event in events {
            let (session, key, outcome) = match event {
                Event::Granted {
                    key,
                    session,
                    grant,
                    ..
                } => (*session, key, WaitOutcome::Granted(*grant)),
                Event::WaitEnded {
                    key,
                    session,
                    reason,
                    ..
                } => (*session, key, WaitOutcome::Ended(*reason)),
                Event::SessionExpired { session } => {
                    self.forget_session(*session);
                    continue;
                }
                Event::HoldLost { .. } => continue,
            };
            let book = self.by_session.entry(session).or_default();
            book.insert(key.clone(), outcome);
            while book.len() > MAX_PER_SESSION {
                book.pop_first();
            }
        }
        // A session that expired ended its waits after the expiry event;
        // drop what those waits added.
        for event in events {
            if let Event::SessionExpired { session } = event {
                self.forget_session(*session);
            }
        }
    }

    /// The session queued for (or released) `key`: its old outcome is obsolete.
    pub fn forget(&mut self, session: SessionId, key: &LockKey) {
        if let Some(book) = self.by_session.get_mut(&session) {
            book.remove(key);
            if book.is_empty() {
                self.by_session.remove(&session);
            }
        }
    }

    /// The session ended.
    pub fn forget_session(&mut self, session: SessionId) {
        self.by_session.remove(&session);
    }

    /// How the session's last wait for `key` ended, if remembered.
    pub fn get(&self, session: SessionId, key: &LockKey) -> Option<WaitOutcome> {
        self.by_session.get(&session)?.get(key).copied()
    }

    /// Number of remembered outcomes.
    pub fn len(&self) -> usize {
        self.by_session.values().map(BTreeMap::len).sum()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.by_session.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fencelock_core::{FencingToken, Mode};

    fn key(n: u64) -> LockKey {
        LockKey::new("ns", &format!("k{n}")).unwrap()
    }

    fn granted(session: u64, k: u64, token: u64) -> Event {
        Event::Granted {
            key: key(k),
            session: SessionId(session),
            request_id: None,
            grant: Grant {
                token: FencingToken(token),
                mode: Mode::Exclusive,
                granted_at: 5,
                expires_at: None,
            },
        }
    }

    #[test]
    fn records_outcomes_until_forgotten() {
        let mut book = WaitBook::default();
        book.record(&[granted(1, 7, 3), granted(2, 9, 4)]);
        assert!(matches!(
            book.get(SessionId(1), &key(7)),
            Some(WaitOutcome::Granted(g)) if g.token == FencingToken(3)
        ));
        book.forget(SessionId(1), &key(7));
        assert_eq!(book.get(SessionId(1), &key(7)), None);
        assert_eq!(book.len(), 1);
    }

    #[test]
    fn an_expired_session_leaves_nothing_behind() {
        let mut book = WaitBook::default();
        book.record(&[granted(1, 1, 3)]);
        book.record(&[
            Event::SessionExpired {
                session: SessionId(1),
            },
            Event::WaitEnded {
                key: key(2),
                session: SessionId(1),
                request_id: None,
                reason: WaitEnd::SessionEnded,
            },
        ]);
        assert!(book.is_empty(), "{book:?}");
    }

    #[test]
    fn keeps_at_most_the_bound_per_session() {
        let mut book = WaitBook::default();
        let events: Vec<Event> = (0..MAX_PER_SESSION as u64 + 10)
            .map(|i| granted(1, i, i + 1))
            .collect();
        book.record(&events);
        assert_eq!(book.len(), MAX_PER_SESSION);
    }
}
