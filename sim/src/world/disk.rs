//! The simulated disk under each node's Raft log: appends reach it at once
//! but become durable only at the next (simulated) fsync, and a kill loses
//! whatever was not durable yet. The log store talks to it through the
//! node's [`LogSink`] seam.

use fencelock_raft::wal::{Done, LogSink};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Debug, Default)]
struct Bytes {
    durable: Vec<u8>,
    /// Written but not fsynced: gone after a crash.
    pending: Vec<u8>,
}

/// One node's disk; the harness keeps it across kills and restarts.
#[derive(Debug)]
pub struct SimDisk {
    bytes: Mutex<Bytes>,
    /// How long one fsync takes (drawn per seed: fast and slow disks).
    fsync: Duration,
}

impl SimDisk {
    pub fn new(fsync: Duration) -> SimDisk {
        SimDisk {
            bytes: Mutex::default(),
            fsync,
        }
    }

    /// How long one fsync takes on this disk.
    pub fn fsync(&self) -> Duration {
        self.fsync
    }

    fn lock(&self) -> MutexGuard<'_, Bytes> {
        self.bytes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What survives a crash: the durable bytes.
    pub fn durable(&self) -> Vec<u8> {
        self.lock().durable.clone()
    }

    /// Bytes written but not yet fsynced.
    pub fn unsynced(&self) -> usize {
        self.lock().pending.len()
    }

    /// A power loss: drops what was not fsynced; returns how many bytes.
    pub fn crash(&self) -> usize {
        std::mem::take(&mut self.lock().pending).len()
    }
}

enum Op {
    Append(Vec<u8>, Option<Done>),
    Rewrite(Vec<u8>, Option<Done>),
}

/// The log's sink on a [`SimDisk`]: a writer task on the node does group
/// commit with a simulated fsync. With `ack_early` (the planted
/// "ack before fsync" bug) it acknowledges before the fsync.
pub struct SimSink {
    tx: mpsc::UnboundedSender<Op>,
}

impl SimSink {
    /// Starts the writer task on the calling (simulated) node.
    pub fn start(disk: Arc<SimDisk>, ack_early: bool) -> SimSink {
        let (tx, rx) = mpsc::unbounded_channel();
        madsim::task::spawn(writer(disk, ack_early, rx));
        SimSink { tx }
    }

    fn send(&self, op: Op) {
        if let Err(mpsc::error::SendError(op)) = self.tx.send(op) {
            let (Op::Append(_, done) | Op::Rewrite(_, done)) = op;
            if let Some(done) = done {
                done(Err(std::io::Error::other("the log writer has stopped")));
            }
        }
    }
}

impl LogSink for SimSink {
    fn append(&self, bytes: Vec<u8>, done: Option<Done>) {
        self.send(Op::Append(bytes, done));
    }

    fn rewrite(&self, bytes: Vec<u8>, done: Option<Done>) {
        self.send(Op::Rewrite(bytes, done));
    }
}

async fn writer(disk: Arc<SimDisk>, ack_early: bool, mut rx: mpsc::UnboundedReceiver<Op>) {
    let mut waiting: Vec<Done> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(op) = next.take() {
            match op {
                Op::Append(bytes, done) => {
                    disk.lock().pending.extend_from_slice(&bytes);
                    waiting.extend(done);
                }
                Op::Rewrite(bytes, done) => {
                    // Compaction writes a new file and renames it: atomic.
                    let mut b = disk.lock();
                    b.durable = bytes;
                    b.pending.clear();
                    waiting.extend(done);
                }
            }
            next = rx.try_recv().ok();
        }
        if ack_early {
            for done in waiting.drain(..) {
                done(Ok(()));
            }
        }
        // A kill during this sleep loses the batch: it never became durable.
        madsim::time::sleep(disk.fsync).await;
        {
            let mut b = disk.lock();
            let p = std::mem::take(&mut b.pending);
            b.durable.extend(p);
        }
        for done in waiting.drain(..) {
            done(Ok(()));
        }
    }
}
