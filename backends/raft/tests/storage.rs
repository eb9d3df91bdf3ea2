//! The log store and state machine against openraft's own storage test suite
//! (log ids, purge, truncate, vote, membership, snapshot transfer), on the
//! real file log and on the in-memory sink; plus reopen-after-writes.

use fencelock_raft::log_store::LogStore;
use fencelock_raft::state_machine::StateMachine;
use fencelock_raft::types::{Entry, LogId, TypeConfig, Vote};
use fencelock_raft::wal::MemDisk;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::testing::{StoreBuilder, Suite};
use openraft::RaftLogReader;
use openraft::{CommittedLeaderId, EntryPayload, StorageError};
use std::sync::Arc;

struct OnDisk;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for OnDisk {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().unwrap();
        let log = LogStore::open(dir.path(), true).unwrap();
        let sm = StateMachine::open(dir.path()).unwrap();
        Ok((dir, log, sm))
    }
}

struct InMemory;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for InMemory {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().unwrap();
        let log = LogStore::on_sink(&[], Arc::new(MemDisk::default())).unwrap();
        let sm = StateMachine::open(dir.path()).unwrap();
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_suite_on_the_file_log() {
    Suite::test_all(OnDisk).unwrap();
}

#[test]
fn openraft_suite_on_the_memory_sink() {
    Suite::test_all(InMemory).unwrap();
}

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Blank,
    }
}

#[tokio::test]
async fn a_reopened_log_has_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(MemDisk::default());
    {
        let mut file = LogStore::open(dir.path(), true).unwrap();
        let mut mem = LogStore::on_sink(&[], disk.clone()).unwrap();
        for log in [&mut file, &mut mem] {
            log.save_vote(&Vote::new(3, 1)).await.unwrap();
            log.blocking_append((1..=10).map(|i| entry(2, i)))
                .await
                .unwrap();
            log.truncate(entry(2, 8).log_id).await.unwrap();
            log.blocking_append((8..=9).map(|i| entry(3, i)))
                .await
                .unwrap();
            log.purge(entry(2, 3).log_id).await.unwrap();
        }
    }
    for mut log in [
        LogStore::open(dir.path(), true).unwrap(),
        LogStore::on_sink(&disk.contents(), Arc::new(MemDisk::default())).unwrap(),
    ] {
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(entry(2, 3).log_id));
        assert_eq!(state.last_log_id, Some(entry(3, 9).log_id));
        let ids: Vec<LogId> = log
            .try_get_log_entries(0..100)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id)
            .collect();
        let want: Vec<LogId> = (4..=7)
            .map(|i| entry(2, i).log_id)
            .chain((8..=9).map(|i| entry(3, i).log_id))
            .collect();
        assert_eq!(ids, want);
    }
}
