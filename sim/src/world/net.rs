//! The simulated network between nodes, clients and the fenced resource:
//! request/response messages over madsim endpoints (so partitions, loss and
//! delay apply), and the node's server loop.

use crate::bugs::Bug;
use async_trait::async_trait;
use fencelock_core::{Command, Response};
use fencelock_raft::sim::timeout;
use fencelock_raft::wire::{
    ClientReply, ClientRpc, RaftReply, RaftRpc, ReadAnswer, ReadQuery, WaitState,
};
use fencelock_raft::{LockNode, Transport, TransportError};
use madsim::net::Endpoint;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// What travels to a node or the resource.
pub enum Msg {
    Raft(RaftRpc),
    Client(ClientRpc),
    /// A write to the fenced resource: (client, key, token).
    Write(u32, fencelock_core::LockKey, fencelock_core::FencingToken),
}

/// What comes back.
pub enum Reply {
    Raft(RaftReply),
    Client(ClientReply),
    Written(bool),
}

const REQUEST_TAG: u64 = 0;
const REPLY_TAG: u64 = 1;

/// A message with the id its reply must carry: an ephemeral port is reused,
/// so a late reply to an abandoned request can reach a newer request's
/// endpoint, and must be told apart.
struct Envelope<T> {
    id: u64,
    body: T,
}

thread_local! {
    static NEXT_ID: std::cell::Cell<u64> = const { std::cell::Cell::new(1) };
}

fn next_id() -> u64 {
    NEXT_ID.with(|n| {
        let id = n.get();
        n.set(id + 1);
        id
    })
}

/// Sends `msg` to `addr` and waits at most `limit` for the answer.
pub async fn call(addr: &str, msg: Msg, limit: Duration) -> Result<Reply, TransportError> {
    let unreachable = |reason: String| TransportError::Unreachable {
        addr: addr.to_string(),
        reason,
    };
    let dst: SocketAddr = addr
        .parse()
        .map_err(|e| unreachable(format!("bad address: {e}")))?;
    let ep = Endpoint::bind("0.0.0.0:0")
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let id = next_id();
    ep.send_to_raw(dst, REQUEST_TAG, Box::new(Envelope { id, body: msg }))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let answer = async {
        loop {
            let (payload, _) = ep.recv_from_raw(REPLY_TAG).await?;
            if let Ok(reply) = payload.downcast::<Envelope<Reply>>() {
                if reply.id == id {
                    return Ok(reply.body);
                }
            }
        }
    };
    match timeout(limit, answer).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err::<_, std::io::Error>(e)) => Err(TransportError::Failed {
            addr: addr.to_string(),
            reason: e.to_string(),
        }),
        Err(_) => Err(TransportError::Timeout {
            addr: addr.to_string(),
            ms: limit.as_millis() as u64,
        }),
    }
}

/// The [`Transport`] the lock nodes use inside the simulation.
pub struct SimTransport;

fn mismatch(addr: &str) -> TransportError {
    TransportError::Failed {
        addr: addr.to_string(),
        reason: "reply of the wrong kind".into(),
    }
}

#[async_trait]
impl Transport for SimTransport {
    async fn raft(
        &self,
        addr: &str,
        rpc: RaftRpc,
        limit: Duration,
    ) -> Result<RaftReply, TransportError> {
        match call(addr, Msg::Raft(rpc), limit).await? {
            Reply::Raft(r) => Ok(r),
            _ => Err(mismatch(addr)),
        }
    }

    async fn client(
        &self,
        addr: &str,
        rpc: ClientRpc,
        limit: Duration,
    ) -> Result<ClientReply, TransportError> {
        match call(addr, Msg::Client(rpc), limit).await? {
            Reply::Client(r) => Ok(r),
            _ => Err(mismatch(addr)),
        }
    }
}

/// Serves a lock node at `addr` until the node is killed.
pub async fn serve_node(node: LockNode, addr: String, bugs: Arc<Vec<Bug>>) {
    let Ok(ep) = Endpoint::bind(addr.as_str()).await else {
        return;
    };
    let ep = Arc::new(ep);
    while let Ok((payload, from)) = ep.recv_from_raw(REQUEST_TAG).await {
        let Ok(msg) = payload.downcast::<Envelope<Msg>>() else {
            continue;
        };
        let (node, ep, bugs) = (node.clone(), ep.clone(), bugs.clone());
        madsim::task::spawn(async move {
            let Envelope { id, body } = *msg;
            let reply = match body {
                Msg::Raft(r) => Reply::Raft(node.handle_raft(r).await),
                Msg::Client(c) => Reply::Client(handle_client(&node, c, &bugs).await),
                Msg::Write(..) => return,
            };
            let reply = Envelope { id, body: reply };
            let _ = ep.send_to_raw(from, REPLY_TAG, Box::new(reply)).await;
        });
    }
}

/// A client request, with the planted bugs of the serving path applied
/// when they are switched on.
async fn handle_client(node: &LockNode, rpc: ClientRpc, bugs: &[Bug]) -> ClientReply {
    if bugs.contains(&Bug::StaleRead) {
        if let ClientRpc::Read(ReadQuery::Validate { key, token }) = &rpc {
            // Answer from this node's own applied state: no leadership check.
            let clock = fencelock_raft::sim::SimClock {
                node: fencelock_raft::sim::current_node(),
            };
            if let Ok(table) = fencelock_core::Table::restore_bytes(&node.table_bytes()) {
                let now = fencelock_raft::Clock::now_ms(&clock);
                return ClientReply::Read(ReadAnswer::Validated(table.validate(now, key, *token)));
            }
        }
    }
    if bugs.contains(&Bug::LostWakeup) && matches!(rpc, ClientRpc::Wait { .. }) {
        return match node.handle_client(rpc).await {
            ClientReply::Wait(WaitState::Granted(_)) => ClientReply::Wait(WaitState::Waiting),
            other => other,
        };
    }
    let steal_key = match &rpc {
        ClientRpc::Execute {
            command: Command::Steal { key, .. },
            ..
        } if bugs.contains(&Bug::StealKeepsToken) => Some(key.clone()),
        _ => None,
    };
    let Some(key) = steal_key else {
        return node.handle_client(rpc).await;
    };
    let before = node
        .handle_client(ClientRpc::Read(ReadQuery::Describe { key }))
        .await;
    let old = match before {
        ClientReply::Read(ReadAnswer::Described(Some(info))) => {
            info.holders.first().map(|h| h.token)
        }
        _ => None,
    };
    match (node.handle_client(rpc).await, old) {
        (ClientReply::Outcome(Ok(Response::Granted(mut g))), Some(old)) => {
            g.token = old;
            ClientReply::Outcome(Ok(Response::Granted(g)))
        }
        (reply, _) => reply,
    }
}

/// The fenced resource: per key, accepts a write only with a token at least
/// the highest it has seen, and records every access.
pub async fn serve_resource(addr: String, world: Arc<super::World>) {
    let Ok(ep) = Endpoint::bind(addr.as_str()).await else {
        return;
    };
    let mut highest: std::collections::BTreeMap<fencelock_core::LockKey, u64> =
        std::collections::BTreeMap::new();
    while let Ok((payload, from)) = ep.recv_from_raw(REQUEST_TAG).await {
        let Ok(msg) = payload.downcast::<Envelope<Msg>>() else {
            continue;
        };
        let Envelope {
            id,
            body: Msg::Write(client, key, token),
        } = *msg
        else {
            continue;
        };
        let max = highest.entry(key.clone()).or_insert(0);
        let accepted = token.0 >= *max;
        if accepted {
            *max = token.0;
        }
        world.record_access(crate::history::Access {
            at: super::now(),
            client,
            key,
            token,
            accepted,
        });
        let _ = ep
            .send_to_raw(
                from,
                REPLY_TAG,
                Box::new(Envelope {
                    id,
                    body: Reply::Written(accepted),
                }),
            )
            .await;
    }
}
