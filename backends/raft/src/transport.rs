//! The seam between the node and the network.
//!
//! Everything above it (openraft's network, the client backend) talks to
//! [`Transport`]; below it are two implementations that one server
//! ([`crate::grpc::serve`]) answers on the same port: framed TCP
//! ([`crate::tcp`], fewer task hops, used by [`crate::RaftBackend::connect`])
//! and gRPC with tonic ([`crate::grpc`]). The simulator can plug in its own (a
//! madsim endpoint calling [`crate::LockNode::handle_raft`] and
//! [`crate::LockNode::handle_client`] directly) without touching the node.

use crate::wire::{ClientReply, ClientRpc, RaftReply, RaftRpc};
use async_trait::async_trait;
use std::time::Duration;

/// Why a call got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// Nothing was delivered (connection refused, no route): safe to retry.
    #[error("cannot reach {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    /// The request may have been delivered, but no answer came in time.
    #[error("no answer from {addr} within {ms} ms")]
    Timeout { addr: String, ms: u64 },
    /// The call failed after it may have been delivered.
    #[error("call to {addr} failed: {reason}")]
    Failed { addr: String, reason: String },
}

impl TransportError {
    /// True when the request certainly did not reach the node.
    pub fn not_delivered(&self) -> bool {
        matches!(self, TransportError::Unreachable { .. })
    }
}

/// Request/response calls to a node by address.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// A Raft RPC to a peer.
    async fn raft(
        &self,
        addr: &str,
        rpc: RaftRpc,
        timeout: Duration,
    ) -> Result<RaftReply, TransportError>;

    /// A client RPC to a node.
    async fn client(
        &self,
        addr: &str,
        rpc: ClientRpc,
        timeout: Duration,
    ) -> Result<ClientReply, TransportError>;
}
