//! Talking to a cluster: find the leader, follow redirects, retry.
//!
//! A request goes to the last known leader, else round-robin over the
//! configured endpoints. A redirect ("not leader, try X") is followed at once;
//! "unavailable", "no leader" and network errors are retried with a short
//! backoff until `give_up_after`. Retrying a command is safe because the same
//! request (and so the same request id) is sent again: the core returns the
//! first result instead of applying it twice.

use crate::rt::Instant;
use crate::transport::Transport;
use crate::types::NodeId;
use crate::wire::{AdminRpc, ClientReply, ClientRpc, NodeStatus};
use fencelock::Error;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Timeouts of a [`ClusterClient`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Longest wait for one answer (long polls get their poll time on top).
    pub rpc_timeout: Duration,
    /// After this long without an answer from a ready leader, a call fails
    /// with `Unavailable` (or `UnknownOutcome` if a command may have landed).
    pub give_up_after: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            rpc_timeout: Duration::from_secs(5),
            give_up_after: Duration::from_secs(20),
        }
    }
}

/// A connection to a cluster through its nodes' addresses.
pub struct ClusterClient {
    transport: Arc<dyn Transport>,
    endpoints: Vec<String>,
    leader: Mutex<Option<String>>,
    next: AtomicUsize,
    config: ClientConfig,
}

impl ClusterClient {
    /// A client of the cluster reachable at `endpoints` (any subset of its nodes).
    pub fn new(
        transport: Arc<dyn Transport>,
        endpoints: Vec<String>,
        config: ClientConfig,
    ) -> Result<Self, Error> {
        if endpoints.is_empty() {
            return Err(Error::Lock(fencelock::LockError::InvalidArgument {
                field: "endpoints".into(),
                reason: "give at least one node address".into(),
            }));
        }
        Ok(ClusterClient {
            transport,
            endpoints,
            leader: Mutex::new(None),
            next: AtomicUsize::new(0),
            config,
        })
    }

    fn target(&self) -> String {
        if let Some(l) = self
            .leader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return l;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.endpoints[i % self.endpoints.len()].clone()
    }

    fn set_leader(&self, addr: Option<String>) {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = addr;
    }

    /// Sends `rpc` to the leader, following redirects and retrying; `poll`
    /// is added to the per-call timeout for long polls.
    pub async fn call(&self, rpc: ClientRpc, poll: Duration) -> Result<ClientReply, Error> {
        let started = Instant::now();
        let timeout = self.config.rpc_timeout + poll;
        let mutating = matches!(
            rpc,
            ClientRpc::Execute { .. }
                | ClientRpc::ExecuteMany { .. }
                | ClientRpc::AcquireWait { .. }
        );
        let mut maybe_applied = false;
        let mut backoff = Duration::from_millis(5);
        let mut redirects = 0;
        loop {
            let addr = self.target();
            let why = match self.transport.client(&addr, rpc.clone(), timeout).await {
                Ok(ClientReply::NotLeader {
                    addr: Some(leader), ..
                }) if leader != addr && redirects < 3 => {
                    redirects += 1;
                    self.set_leader(Some(leader));
                    continue;
                }
                Ok(ClientReply::NotLeader { leader, .. }) => {
                    maybe_applied |= mutating;
                    self.set_leader(None);
                    format!("{addr} is not the leader (leader: {leader:?})")
                }
                Ok(ClientReply::Unavailable(reason)) => {
                    maybe_applied |= mutating;
                    self.set_leader(None);
                    format!("{addr}: {reason}")
                }
                Ok(reply) => {
                    self.set_leader(Some(addr));
                    return Ok(reply);
                }
                Err(e) => {
                    maybe_applied |= mutating && !e.not_delivered();
                    self.set_leader(None);
                    e.to_string()
                }
            };
            redirects = 0;
            if started.elapsed() >= self.config.give_up_after {
                return Err(if maybe_applied {
                    Error::UnknownOutcome { reason: why }
                } else {
                    Error::unavailable(why)
                });
            }
            crate::rt::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
    }

    async fn admin(&self, rpc: AdminRpc) -> Result<(), Error> {
        match self.call(ClientRpc::Admin(rpc), Duration::ZERO).await? {
            ClientReply::AdminDone(Ok(())) => Ok(()),
            ClientReply::AdminDone(Err(e)) => Err(Error::backend(e)),
            other => Err(unexpected(&other)),
        }
    }

    /// Initializes a new cluster with these voters; send to one fresh node.
    pub async fn init(&self, members: BTreeMap<NodeId, String>) -> Result<(), Error> {
        self.admin(AdminRpc::Init { members }).await
    }

    /// Sets the lock table's limits; only on a new (empty) cluster, right
    /// after [`ClusterClient::init`].
    pub async fn set_limits(&self, limits: fencelock::Limits) -> Result<(), Error> {
        self.admin(AdminRpc::SetLimits { limits }).await
    }

    /// Adds a learner and waits until it has caught up.
    pub async fn add_learner(&self, id: NodeId, addr: String) -> Result<(), Error> {
        self.admin(AdminRpc::AddLearner { id, addr }).await
    }

    /// Makes `voters` the voting members (joint consensus under the hood).
    pub async fn change_membership(&self, voters: BTreeSet<NodeId>) -> Result<(), Error> {
        self.admin(AdminRpc::ChangeMembership { voters }).await
    }

    /// Asks the leader to take a snapshot now.
    pub async fn snapshot(&self) -> Result<(), Error> {
        self.admin(AdminRpc::Snapshot).await
    }

    /// The status of the node at `addr` (no redirect).
    pub async fn status_of(&self, addr: &str) -> Result<NodeStatus, Error> {
        let rpc = ClientRpc::Admin(AdminRpc::Status);
        match self
            .transport
            .client(addr, rpc, self.config.rpc_timeout)
            .await
        {
            Ok(ClientReply::Status(s)) => Ok(s),
            Ok(other) => Err(unexpected(&other)),
            Err(e) => Err(Error::unavailable(e.to_string())),
        }
    }
}

/// A reply of the wrong kind: the node broke the protocol.
pub fn unexpected(reply: &ClientReply) -> Error {
    Error::backend(format!("unexpected reply from node: {reply:?}"))
}
