//! [`RaftBackend`]: the [`Backend`] of a Raft cluster, over the network.
//!
//! Commands go to the leader and come back after commit; `wait` and
//! `watch_hold` are bounded long polls the leader answers from replicated
//! state (see [`crate::waits`]), so a waiter holds no request open for longer
//! than its `max_wait`, and a retried poll on a new leader answers the same.
//! Reads are linearizable: the leader confirms its leadership with a quorum
//! (openraft's `ensure_linearizable`) before it reads.

use crate::client::{unexpected, ClientConfig, ClusterClient};
use crate::combine::Combiner;
use crate::tcp::TcpTransport;
use crate::transport::Transport;
use crate::types::Stamped;
use crate::wire::{ClientReply, ClientRpc, ReadAnswer, ReadQuery, WaitState};
use async_trait::async_trait;
use fencelock::{
    Backend, Command, Error, FencingToken, HolderInfo, LockInfo, LockKey, RequestId, Response,
    SessionId, SessionInfo, WaitStatus,
};
use std::sync::Arc;
use std::time::Duration;

/// A lock backend served by a Raft cluster.
pub struct RaftBackend {
    client: Arc<ClusterClient>,
    combiner: Arc<Combiner>,
}

impl RaftBackend {
    /// Connects (lazily) to the cluster at `endpoints` over the framed TCP
    /// protocol ([`crate::tcp`]; fewer task hops per request than gRPC).
    pub fn connect(endpoints: Vec<String>) -> Result<Self, Error> {
        Self::with_transport(
            Arc::new(TcpTransport::new()),
            endpoints,
            ClientConfig::default(),
        )
    }

    /// Connects over any transport (the simulator's, for instance).
    pub fn with_transport(
        transport: Arc<dyn Transport>,
        endpoints: Vec<String>,
        config: ClientConfig,
    ) -> Result<Self, Error> {
        let client = Arc::new(ClusterClient::new(transport, endpoints, config)?);
        Ok(RaftBackend {
            combiner: Combiner::new(client.clone()),
            client,
        })
    }

    /// The underlying cluster client (membership and status commands).
    pub fn cluster(&self) -> &ClusterClient {
        &self.client
    }

    async fn read(&self, query: ReadQuery) -> Result<ReadAnswer, Error> {
        match self
            .client
            .call(ClientRpc::Read(query), Duration::ZERO)
            .await?
        {
            ClientReply::Read(answer) => Ok(answer),
            other => Err(unexpected(&other)),
        }
    }
}

#[async_trait]
impl Backend for RaftBackend {
    async fn execute(
        &self,
        command: Command,
        request_id: Option<RequestId>,
    ) -> Result<Response, Error> {
        let stamped = Stamped {
            request_id,
            command,
        };
        self.combiner.execute(stamped).await?.map_err(Error::Lock)
    }

    async fn execute_waiting(
        &self,
        command: Command,
        request_id: Option<RequestId>,
        max_wait: Duration,
    ) -> Result<Response, Error> {
        if max_wait.is_zero() || !matches!(command, Command::Acquire { .. }) {
            return self.execute(command, request_id).await;
        }
        let rpc = ClientRpc::AcquireWait {
            request_id,
            command,
            max_wait_ms: max_wait.as_millis() as u64,
        };
        match self.client.call(rpc, max_wait).await? {
            ClientReply::Outcome(outcome) => outcome.map_err(Error::Lock),
            other => Err(unexpected(&other)),
        }
    }

    async fn wait(
        &self,
        key: &LockKey,
        session: SessionId,
        max_wait: Duration,
    ) -> Result<WaitStatus, Error> {
        let rpc = ClientRpc::Wait {
            key: key.clone(),
            session,
            max_wait_ms: max_wait.as_millis() as u64,
        };
        match self.client.call(rpc, max_wait).await? {
            ClientReply::Wait(state) => Ok(match state {
                WaitState::Granted(g) => WaitStatus::Granted(g),
                WaitState::Waiting => WaitStatus::Waiting,
                WaitState::Ended(e) => WaitStatus::Ended(e),
                WaitState::NotWaiting => WaitStatus::NotWaiting,
            }),
            other => Err(unexpected(&other)),
        }
    }

    async fn watch_hold(
        &self,
        key: &LockKey,
        token: FencingToken,
        max_wait: Duration,
    ) -> Result<HolderInfo, Error> {
        let rpc = ClientRpc::WatchHold {
            key: key.clone(),
            token,
            max_wait_ms: max_wait.as_millis() as u64,
        };
        match self.client.call(rpc, max_wait).await? {
            ClientReply::Hold(held) => held.map_err(Error::Lock),
            other => Err(unexpected(&other)),
        }
    }

    async fn validate(&self, key: &LockKey, token: FencingToken) -> Result<HolderInfo, Error> {
        let query = ReadQuery::Validate {
            key: key.clone(),
            token,
        };
        match self.read(query).await? {
            ReadAnswer::Validated(held) => held.map_err(Error::Lock),
            other => Err(Error::backend(format!("unexpected answer: {other:?}"))),
        }
    }

    async fn describe(&self, key: &LockKey) -> Result<Option<LockInfo>, Error> {
        match self.read(ReadQuery::Describe { key: key.clone() }).await? {
            ReadAnswer::Described(info) => Ok(info),
            other => Err(Error::backend(format!("unexpected answer: {other:?}"))),
        }
    }

    async fn describe_session(&self, session: SessionId) -> Result<Option<SessionInfo>, Error> {
        match self.read(ReadQuery::DescribeSession { session }).await? {
            ReadAnswer::Session(info) => Ok(info),
            other => Err(Error::backend(format!("unexpected answer: {other:?}"))),
        }
    }
}
