//! An in-process cluster on 127.0.0.1, for tests and benchmarks: real nodes,
//! real sockets on loopback (the framed TCP transport, as deployed nodes and
//! `RaftBackend::connect` use; gRPC with [`LocalCluster::start_with`]), real
//! files.

use crate::backend::RaftBackend;
use crate::client::ClientConfig;
use crate::clock::SystemClock;
use crate::grpc;
use crate::node::{LockNode, NodeConfig};
use crate::tcp::TcpTransport;
use crate::transport::Transport;
use crate::types::NodeId;
use fencelock::{Backend, Limits, SessionId};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// One running node of a [`LocalCluster`].
pub struct LocalNode {
    pub node: LockNode,
    stop: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

/// Nodes `1..=n` on loopback ports, data under one directory.
pub struct LocalCluster {
    /// `None` while a node is stopped.
    pub nodes: Vec<Option<LocalNode>>,
    pub addrs: Vec<String>,
    dirs: Vec<PathBuf>,
    configure: Arc<dyn Fn(NodeConfig) -> NodeConfig + Send + Sync>,
    transport: Arc<dyn Transport>,
}

impl LocalCluster {
    /// Starts `n` nodes and initializes them as one cluster (with `limits`,
    /// if given); returns once a leader serves requests.
    pub async fn start(
        base: &Path,
        n: usize,
        configure: impl Fn(NodeConfig) -> NodeConfig + Send + Sync + 'static,
        limits: Option<Limits>,
    ) -> Result<LocalCluster, String> {
        Self::start_with(base, n, configure, limits, Arc::new(TcpTransport::new())).await
    }

    /// Like [`LocalCluster::start`], the nodes and the cluster's backends
    /// calling each other through `transport` (every node serves both
    /// protocols).
    pub async fn start_with(
        base: &Path,
        n: usize,
        configure: impl Fn(NodeConfig) -> NodeConfig + Send + Sync + 'static,
        limits: Option<Limits>,
        transport: Arc<dyn Transport>,
    ) -> Result<LocalCluster, String> {
        let mut listeners = Vec::new();
        let mut addrs = Vec::new();
        for _ in 0..n {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| format!("bind: {e}"))?;
            addrs.push(l.local_addr().map_err(|e| e.to_string())?.to_string());
            listeners.push(l);
        }
        let mut cluster = LocalCluster {
            nodes: Vec::new(),
            dirs: (1..=n).map(|i| base.join(format!("node{i}"))).collect(),
            addrs,
            configure: Arc::new(configure),
            transport,
        };
        for (i, listener) in listeners.into_iter().enumerate() {
            let node = cluster.launch(i, listener).await?;
            cluster.nodes.push(Some(node));
        }
        let members: BTreeMap<NodeId, String> = cluster
            .addrs
            .iter()
            .enumerate()
            .map(|(i, a)| (i as NodeId + 1, a.clone()))
            .collect();
        let admin = cluster.backend_with(ClientConfig::default());
        admin
            .cluster()
            .init(members)
            .await
            .map_err(|e| format!("init: {e}"))?;
        if let Some(limits) = limits {
            admin
                .cluster()
                .set_limits(limits)
                .await
                .map_err(|e| format!("set limits: {e}"))?;
        }
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    async fn launch(
        &self,
        i: usize,
        listener: tokio::net::TcpListener,
    ) -> Result<LocalNode, String> {
        let config = (self.configure)(NodeConfig::new(
            i as NodeId + 1,
            self.addrs[i].clone(),
            self.dirs[i].clone(),
        ));
        let node = LockNode::start(config, self.transport.clone(), Arc::new(SystemClock))
            .await
            .map_err(|e| e.to_string())?;
        let (stop, server) = grpc::spawn_serve(node.clone(), listener);
        Ok(LocalNode { node, stop, server })
    }

    /// Starts one more node (not yet a member: add it with
    /// `add_learner` and `change_membership`); returns its 0-based index.
    pub async fn add_node(&mut self, base: &Path) -> Result<usize, String> {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("bind: {e}"))?;
        let i = self.nodes.len();
        self.addrs
            .push(l.local_addr().map_err(|e| e.to_string())?.to_string());
        self.dirs.push(base.join(format!("node{}", i + 1)));
        let node = self.launch(i, l).await?;
        self.nodes.push(Some(node));
        Ok(i)
    }

    /// Node `i` (0-based) as a running node.
    pub fn node(&self, i: usize) -> Option<&LockNode> {
        self.nodes.get(i)?.as_ref().map(|n| &n.node)
    }

    /// Addresses of all nodes (running or not).
    pub fn endpoints(&self) -> Vec<String> {
        self.addrs.clone()
    }

    /// A client backend for this cluster.
    pub fn backend(&self) -> RaftBackend {
        self.backend_with(ClientConfig::default())
    }

    /// A client backend with the given timeouts.
    pub fn backend_with(&self, config: ClientConfig) -> RaftBackend {
        RaftBackend::with_transport(self.transport.clone(), self.endpoints(), config)
            .expect("a local cluster has endpoints")
    }

    /// Waits until some node leads and serves linearizable reads.
    pub async fn wait_ready(&self) -> Result<(), String> {
        let backend = self.backend_with(ClientConfig {
            rpc_timeout: Duration::from_secs(2),
            give_up_after: Duration::from_secs(15),
        });
        backend
            .describe_session(SessionId(u64::MAX))
            .await
            .map(|_| ())
            .map_err(|e| format!("no ready leader: {e}"))
    }

    /// The 0-based index of the node that currently leads, by its own metrics.
    pub fn leader(&self) -> Option<usize> {
        self.nodes.iter().enumerate().find_map(|(i, n)| {
            let n = n.as_ref()?;
            let m = n.node.raft().metrics().borrow().clone();
            (m.current_leader == Some(n.node.id()) && m.state == openraft::ServerState::Leader)
                .then_some(i)
        })
    }

    /// Stops node `i`: its server and Raft end (its files stay).
    pub async fn stop_node(&mut self, i: usize) {
        if let Some(n) = self.nodes[i].take() {
            let _ = n.stop.send(());
            n.node.shutdown().await;
            let _ = n.server.await;
        }
    }

    /// Restarts a stopped node on its old address and data dir.
    pub async fn restart_node(&mut self, i: usize) -> Result<(), String> {
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(&self.addrs[i]).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::debug!("rebinding {}: {e}", self.addrs[i]);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(format!("rebind {}: {e}", self.addrs[i])),
            }
        };
        let node = self.launch(i, listener).await?;
        self.nodes[i] = Some(node);
        Ok(())
    }

    /// Deletes a stopped node's data dir (a replaced disk).
    pub fn wipe_node(&self, i: usize) -> std::io::Result<()> {
        match std::fs::remove_dir_all(&self.dirs[i]) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Stops every node.
    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop_node(i).await;
        }
    }
}
