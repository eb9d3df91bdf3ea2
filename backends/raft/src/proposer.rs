//! Group commit at the command level: concurrent client commands share one
//! log entry.
//!
//! Commands queue here; while at most `max_inflight` entries are being
//! replicated, new commands accumulate and leave together in the next entry
//! (up to `max_batch`). At low load a command goes out at once in an entry of
//! its own; under load, one log append, one fsync per node and one
//! replication round carry many commands.

use crate::clock::Clock;
use crate::types::{NodeId, Outcome, Raft, Request, Stamped};
use openraft::error::{ClientWriteError, RaftError};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Why a proposal got no outcome.
#[derive(Debug, Clone)]
pub enum ProposeError {
    /// This node is not (or no longer) the leader.
    NotLeader {
        leader: Option<NodeId>,
        addr: Option<String>,
    },
    /// Raft stopped or failed.
    Unavailable(String),
}

struct Pending {
    stamped: Stamped,
    reply: oneshot::Sender<Result<Outcome, ProposeError>>,
}

/// Queues commands for the batching loop.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
}

impl Proposer {
    /// Starts the batching loop on `raft`.
    pub fn start(raft: Raft, clock: Arc<dyn Clock>, max_batch: usize, max_inflight: usize) -> Self {
        let (tx, rx) = mpsc::channel(max_batch.max(1) * max_inflight.max(1) * 4);
        crate::rt::spawn(run(raft, clock, rx, max_batch.max(1), max_inflight.max(1)));
        Proposer { tx }
    }

    /// Proposes one command; resolves once it is committed and applied.
    pub async fn propose(&self, stamped: Stamped) -> Result<Outcome, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { stamped, reply })
            .await
            .map_err(|_| ProposeError::Unavailable("the node is shutting down".into()))?;
        rx.await
            .unwrap_or_else(|_| Err(ProposeError::Unavailable("the proposal was dropped".into())))
    }
}

async fn run(
    raft: Raft,
    clock: Arc<dyn Clock>,
    mut rx: mpsc::Receiver<Pending>,
    max_batch: usize,
    max_inflight: usize,
) {
    let slots = Arc::new(Semaphore::new(max_inflight));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        let now = clock.now_ms();
        crate::rt::spawn(async move {
            let (commands, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.stamped, p.reply)).unzip();
            let result = raft.client_write(Request::Batch { now, commands }).await;
            drop(slot);
            match result {
                Ok(resp) => {
                    let mut outcomes = resp.data.outcomes.into_iter();
                    for reply in replies {
                        let r = outcomes.next().ok_or_else(|| {
                            ProposeError::Unavailable("the state machine lost an outcome".into())
                        });
                        let _ = reply.send(r);
                    }
                }
                Err(e) => {
                    let err = propose_error(e);
                    for reply in replies {
                        let _ = reply.send(Err(err.clone()));
                    }
                }
            }
        });
    }
}

fn propose_error(
    e: RaftError<NodeId, ClientWriteError<NodeId, openraft::BasicNode>>,
) -> ProposeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ProposeError::NotLeader {
            leader: f.leader_id,
            addr: f.leader_node.map(|n| n.addr),
        },
        other => ProposeError::Unavailable(other.to_string()),
    }
}
