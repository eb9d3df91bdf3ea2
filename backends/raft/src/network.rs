//! openraft's network, over any [`Transport`].

use crate::durable::Durable;
use crate::transport::{Transport, TransportError};
use crate::types::{NodeId, TypeConfig};
use crate::wire::{RaftReply, RaftRpc};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode};
use std::sync::Arc;
use std::time::Duration;

/// Makes a [`Peer`] per target node.
#[derive(Clone)]
pub struct Network {
    transport: Arc<dyn Transport>,
    durable: Option<Durable>,
}

impl Network {
    /// With `durable`, the commit index sent to followers never passes what
    /// is on this node's disk (see [`crate::durable`]).
    pub fn new(transport: Arc<dyn Transport>, durable: Option<Durable>) -> Self {
        Network { transport, durable }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            target,
            addr: node.addr.clone(),
            transport: self.transport.clone(),
            durable: self.durable.clone(),
        }
    }
}

/// The connection to one peer.
pub struct Peer {
    target: NodeId,
    addr: String,
    transport: Arc<dyn Transport>,
    durable: Option<Durable>,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

fn rpc_error<E: std::error::Error>(e: TransportError) -> RpcErr<E> {
    match e {
        TransportError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
        _ => RPCError::Network(NetworkError::new(&e)),
    }
}

fn mismatch<E: std::error::Error>(what: &str) -> RpcErr<E> {
    RPCError::Network(NetworkError::new(&AnyError::error(format!(
        "peer answered a {what} request with another kind of reply"
    ))))
}

impl Peer {
    async fn call(&self, rpc: RaftRpc, option: &RPCOption) -> Result<RaftReply, TransportError> {
        self.transport
            .raft(&self.addr, rpc, option.hard_ttl())
            .await
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        if let Some(d) = &self.durable {
            rpc.leader_commit = d.clamp_commit(rpc.leader_commit, rpc.prev_log_id, &rpc.entries);
        }
        match self.call(RaftRpc::Append(rpc), &option).await {
            Ok(RaftReply::Append(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(mismatch("append")),
            Err(e) => Err(rpc_error(e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        match self.call(RaftRpc::Snapshot(rpc), &option).await {
            Ok(RaftReply::Snapshot(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(mismatch("snapshot")),
            Err(e) => Err(rpc_error(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        match self.call(RaftRpc::Vote(rpc), &option).await {
            Ok(RaftReply::Vote(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(mismatch("vote")),
            Err(e) => Err(rpc_error(e)),
        }
    }

    fn backoff(&self) -> Backoff {
        // A restarted peer should be back in the group quickly.
        Backoff::new(std::iter::repeat(Duration::from_millis(100)))
    }
}
