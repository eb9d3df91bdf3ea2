//! How far this node's log is on disk, and the gates that let the leader
//! write its own log in parallel with replicating it.
//!
//! openraft 0.9 waits for the leader's own flush before it even starts
//! replicating an entry, so every commit paid two fsyncs one after the other
//! (the leader's, then a follower's). The Raft thesis (§10.2.1) lets the
//! leader write in parallel instead. We do that by acknowledging the leader's
//! own appends to openraft as soon as they are queued on the write-ahead file
//! ([`crate::log_store`]), and hold back everything through which a commit
//! becomes visible until the leader's fsync covers it:
//! - the state machine applies an entry (and so answers a client or a read)
//!   only once it is durable here ([`Durable::wait_for`]);
//! - the commit index sent to followers is clamped to what is durable here
//!   ([`Durable::clamp_commit`]), so no follower applies it earlier either.
//!
//! - a node answers no append request while entries it wrote as leader are
//!   still unflushed ([`Durable::wait_queued`]): once deposed, it would
//!   otherwise confirm to the new leader a log it does not have on disk yet.
//!
//! So an entry takes effect anywhere only once it is on the leader's disk and
//! on the disks of the followers that completed the quorum: still a majority.
//! If the leader dies before its fsync, the entry was applied nowhere and
//! acknowledged to nobody, and may be lost like any uncommitted entry.
//! Membership entries never take this path (see the log store): a new
//! configuration's safety rests on the previous one being truly committed.

use crate::types::{Entry, LogId};
use std::io;
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct State {
    /// Every entry at or below this index is durable.
    upto: Option<u64>,
    /// The last index queued for writing.
    queued: Option<u64>,
    /// Bumped by each truncation: a completion queued before it vouches
    /// only for the entries below the truncation, not for those that
    /// replaced the truncated ones.
    epoch: u64,
    /// Truncations not yet passed by a completion: (epoch they began, last
    /// index they kept).
    truncations: Vec<(u64, Option<u64>)>,
    /// The log could not be written; nothing will become durable again.
    failed: bool,
}

/// The durable index of one node's log; clones share it.
#[derive(Clone)]
pub struct Durable {
    tx: Arc<watch::Sender<State>>,
}

impl Durable {
    /// A log whose entries up to `upto` are already on disk (replayed).
    pub fn new(upto: Option<u64>) -> Durable {
        let state = State {
            upto,
            queued: upto,
            ..State::default()
        };
        Durable {
            tx: Arc::new(watch::channel(state).0),
        }
    }

    /// The highest index known durable (`None` if none, or if the log failed).
    pub fn index(&self) -> Option<u64> {
        let s = self.tx.borrow();
        if s.failed {
            None
        } else {
            s.upto
        }
    }

    /// Entries up to `last` were queued for writing; returns the epoch to
    /// hand to [`Durable::completed`]. Called under the log's lock, once per
    /// append. Wakes nobody: no waiter's condition reads `queued`
    /// (`wait_queued` reads it once, then waits on `upto`).
    pub(crate) fn queue(&self, last: Option<u64>) -> u64 {
        let mut epoch = 0;
        self.tx.send_if_modified(|s| {
            epoch = s.epoch;
            if let Some(last) = last {
                s.queued = s.queued.max(Some(last));
            }
            false
        });
        epoch
    }

    /// A write of entries up to `last`, queued in `epoch`, completed with `r`.
    /// The writer completes writes in the order they were queued, so all
    /// that came before is durable too.
    pub(crate) fn completed(&self, epoch: u64, last: u64, r: &io::Result<()>) {
        self.tx.send_if_modified(|s| match r {
            Err(_) => !std::mem::replace(&mut s.failed, true),
            Ok(()) => {
                // Truncations queued after this write cap what it proves.
                let cap = s
                    .truncations
                    .iter()
                    .filter(|(e, _)| *e > epoch)
                    .map(|(_, kept)| *kept)
                    .min();
                let proven = cap.map_or(Some(last), |kept| kept.min(Some(last)));
                // Later completions come from this epoch on: older
                // truncations no longer matter.
                s.truncations.retain(|(e, _)| *e > epoch);
                if proven > s.upto {
                    s.upto = proven;
                    true
                } else {
                    false
                }
            }
        });
    }

    /// Entries from `index` on were removed (queued under the log's lock).
    pub(crate) fn truncated(&self, index: u64) {
        self.tx.send_modify(|s| {
            let kept = index.checked_sub(1);
            s.epoch += 1;
            s.truncations.push((s.epoch, kept));
            s.upto = s.upto.min(kept);
            s.queued = s.queued.min(kept);
        });
    }

    /// Waits until the entry at `index` is durable here.
    pub async fn wait_for(&self, index: u64) -> io::Result<()> {
        self.wait(|s| s.upto >= Some(index)).await
    }

    /// Waits until everything queued so far is durable.
    pub async fn wait_queued(&self) -> io::Result<()> {
        let queued = self.tx.borrow().queued;
        self.wait(|s| s.upto >= queued).await
    }

    async fn wait(&self, done: impl Fn(&State) -> bool) -> io::Result<()> {
        let mut rx = self.tx.subscribe();
        let state = rx
            .wait_for(|s| s.failed || done(s))
            .await
            .map_err(|_| io::Error::other("the log is gone"))?;
        if state.failed {
            return Err(io::Error::other("the log could not be written"));
        }
        Ok(())
    }

    /// The commit index to tell a follower in an append request carrying
    /// `prev` and `entries`: `commit` itself if it is durable here, else the
    /// highest id of this request that is (a follower could not commit past
    /// the request anyway), else none.
    pub fn clamp_commit(
        &self,
        commit: Option<LogId>,
        prev: Option<LogId>,
        entries: &[Entry],
    ) -> Option<LogId> {
        let commit = commit?;
        let upto = self.index()?;
        if commit.index <= upto {
            return Some(commit);
        }
        entries
            .iter()
            .rev()
            .map(|e| e.log_id)
            .chain(prev)
            .find(|id| id.index <= upto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: id(index),
            payload: EntryPayload::Blank,
        }
    }

    #[test]
    fn completions_raise_the_index_and_truncation_lowers_it() {
        let d = Durable::new(Some(3));
        let e = d.queue(Some(7));
        d.completed(e, 7, &Ok(()));
        assert_eq!(d.index(), Some(7));
        // A truncation while an older write of 8..=9 is still queued: its
        // completion must not vouch for the entries that replace them.
        let old = d.queue(Some(9));
        d.truncated(6);
        assert_eq!(d.index(), Some(5));
        d.completed(old, 9, &Ok(()));
        assert_eq!(d.index(), Some(5));
        let e = d.queue(Some(8));
        d.completed(e, 8, &Ok(()));
        assert_eq!(d.index(), Some(8));
        let e = d.queue(Some(9));
        d.completed(e, 9, &Err(io::Error::other("disk gone")));
        assert_eq!(d.index(), None);
    }

    #[tokio::test]
    async fn a_truncation_behind_a_pending_write_does_not_strand_waiters() {
        // A deposed leader: 4..=9 written but not flushed, then 7.. truncated.
        let d = Durable::new(Some(3));
        let old = d.queue(Some(9));
        d.truncated(7);
        let queued = tokio::spawn({
            let d = d.clone();
            async move { d.wait_queued().await }
        });
        tokio::task::yield_now().await;
        assert!(!queued.is_finished());
        // The old write lands: it proves 4..=6 (kept), not 7..=9 (gone).
        d.completed(old, 9, &Ok(()));
        assert_eq!(d.index(), Some(6));
        queued.await.unwrap().unwrap();
    }

    #[test]
    fn the_commit_sent_to_followers_never_passes_the_durable_index() {
        let d = Durable::new(Some(5));
        let entries: Vec<Entry> = (6..=8).map(entry).collect();
        assert_eq!(
            d.clamp_commit(Some(id(4)), Some(id(5)), &entries),
            Some(id(4))
        );
        assert_eq!(
            d.clamp_commit(Some(id(8)), Some(id(5)), &entries),
            Some(id(5))
        );
        let e = d.queue(Some(8));
        d.completed(e, 7, &Ok(()));
        assert_eq!(
            d.clamp_commit(Some(id(8)), Some(id(5)), &entries),
            Some(id(7))
        );
        assert_eq!(d.clamp_commit(Some(id(8)), Some(id(9)), &[]), None);
        assert_eq!(d.clamp_commit(None, Some(id(5)), &entries), None);
    }

    #[tokio::test]
    async fn apply_waits_for_the_fsync() {
        let d = Durable::new(None);
        let waiter = tokio::spawn({
            let d = d.clone();
            async move { d.wait_for(2).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let e = d.queue(Some(3));
        let queued = tokio::spawn({
            let d = d.clone();
            async move { d.wait_queued().await }
        });
        d.completed(e, 2, &Ok(()));
        waiter.await.unwrap().unwrap();
        tokio::task::yield_now().await;
        assert!(!queued.is_finished(), "3 is queued, not yet durable");
        d.completed(e, 3, &Ok(()));
        queued.await.unwrap().unwrap();
        let failed = Durable::new(None);
        failed.completed(0, 1, &Err(io::Error::other("x")));
        assert!(failed.wait_for(1).await.is_err());
    }
}
