//! Client-side batching: concurrent commands of one process share a request.
//!
//! Each command sent alone costs a gRPC request and its task wake-ups on
//! both sides, which on a small machine costs more than the command itself.
//! So while [`MAX_INFLIGHT`] requests are out, a process's new commands
//! queue here and leave together in the next request
//! ([`ClientRpc::ExecuteMany`]), which the leader proposes as one group.
//! At low load a command goes out at once, alone; two requests in flight
//! keep the leader's pipeline fed (one is proposed while the other's
//! answer travels back).
//!
//! Only commands with a request id are combined: a retried request re-sends
//! all its commands, and only those the core deduplicates may be re-sent
//! after some of them may have applied.

use crate::client::{unexpected, ClusterClient};
use crate::types::{Outcome, Stamped};
use crate::wire::{ClientReply, ClientRpc};
use fencelock::Error;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::oneshot;

/// Requests of commands a process keeps in flight before it combines.
pub const MAX_INFLIGHT: usize = 2;
/// Most commands in one combined request.
pub const MAX_COMBINED: usize = 256;

struct Queued {
    stamped: Stamped,
    reply: oneshot::Sender<Result<Outcome, Error>>,
}

#[derive(Default)]
struct State {
    inflight: usize,
    queue: Vec<Queued>,
}

/// Sends a process's commands to the cluster, combining concurrent ones.
pub struct Combiner {
    client: Arc<ClusterClient>,
    state: Mutex<State>,
}

/// One of the [`MAX_INFLIGHT`] request slots; on drop it passes to the
/// commands queued meanwhile (sent from a new task) or is freed.
struct Slot(Arc<Combiner>);

impl Drop for Slot {
    fn drop(&mut self) {
        let batch = {
            let mut s = self.0.state();
            if s.queue.is_empty() {
                s.inflight -= 1;
                return;
            }
            let n = s.queue.len().min(MAX_COMBINED);
            s.queue.drain(..n).collect::<Vec<_>>()
        };
        let next = Slot(self.0.clone());
        crate::rt::spawn(next.0.clone().send(batch, next));
    }
}

impl Combiner {
    pub fn new(client: Arc<ClusterClient>) -> Arc<Combiner> {
        Arc::new(Combiner {
            client,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Executes one command (combined with others under load).
    pub async fn execute(self: &Arc<Self>, stamped: Stamped) -> Result<Outcome, Error> {
        if stamped.request_id.is_none() {
            return self.execute_alone(stamped).await;
        }
        let queued = {
            let mut s = self.state();
            if s.inflight < MAX_INFLIGHT {
                s.inflight += 1;
                Err(stamped)
            } else {
                let (reply, rx) = oneshot::channel();
                s.queue.push(Queued { stamped, reply });
                Ok(rx)
            }
        };
        match queued {
            Err(stamped) => {
                let _slot = Slot(self.clone());
                self.execute_alone(stamped).await
            }
            Ok(rx) => rx.await.unwrap_or_else(|_| {
                Err(Error::UnknownOutcome {
                    reason: "the combined request was dropped".into(),
                })
            }),
        }
    }

    async fn execute_alone(&self, stamped: Stamped) -> Result<Outcome, Error> {
        let rpc = ClientRpc::Execute {
            request_id: stamped.request_id,
            command: stamped.command,
        };
        match self.client.call(rpc, Duration::ZERO).await? {
            ClientReply::Outcome(outcome) => Ok(outcome),
            other => Err(unexpected(&other)),
        }
    }

    async fn send(self: Arc<Self>, batch: Vec<Queued>, slot: Slot) {
        let (commands, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|q| (q.stamped, q.reply)).unzip();
        let n = commands.len();
        let result = match <[Stamped; 1]>::try_from(commands) {
            Ok([stamped]) => self.execute_alone(stamped).await.map(|o| vec![o]),
            Err(commands) => match self
                .client
                .call(ClientRpc::ExecuteMany { commands }, Duration::ZERO)
                .await
            {
                Ok(ClientReply::Outcomes(o)) if o.len() == n => Ok(o),
                Ok(other) => Err(unexpected(&other)),
                Err(e) => Err(e),
            },
        };
        drop(slot);
        match result {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
