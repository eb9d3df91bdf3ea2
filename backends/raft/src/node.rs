//! A lock node: openraft plus the lock state machine, the batching proposer,
//! the leader's expiry ticker and the fail-over grace.
//!
//! # Time and the grace rule
//! Only the leader reads a clock ([`Clock`]), when it proposes: each entry
//! carries its `now`, and the core clamps it so state time never goes back
//! (a new leader with a slower clock just lets time stand still until its
//! clock catches up). When a node becomes leader it first commits a
//! [`Request::Grace`] entry: every session's expiry becomes at least
//! `now + its TTL`, as if each client had sent a keep-alive at that moment
//! (Chubby's grace period). Until that entry is applied the node serves no
//! writes and no reads, so nothing can expire a session on the strength of a
//! gap in which no leader could accept keep-alives. Leases and wait deadlines
//! get no grace: they are the holder's and the waiter's own limits.
//!
//! # Expiry
//! The leader watches the state machine's next deadline and proposes a
//! `Tick` when its clock reaches it; the tick is applied like any command,
//! so every replica expires the same holds at the same state time.

use crate::clock::Clock;
use crate::fsync_waker::FsyncPoll;
use crate::log_store::LogStore;
use crate::network::Network;
use crate::proposer::{ProposeError, Proposer};
use crate::rt::Instant;
use crate::state_machine::{Shared, StateMachine};
use crate::transport::Transport;
use crate::types::{NodeId, Raft, Request, Stamped};
use crate::wire::{
    AdminRpc, ClientReply, ClientRpc, NodeStatus, RaftReply, RaftRpc, ReadAnswer, ReadQuery,
    WaitState,
};
use fencelock_core::{Command, FencingToken, LockKey, SessionId};
use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{BasicNode, ServerState, SnapshotPolicy};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long a request waits for this node to become a ready leader (elected
/// and graced) before it answers "not leader" / "unavailable".
const READY_WAIT: Duration = Duration::from_secs(2);
/// Longest long-poll a node accepts.
const MAX_POLL: Duration = Duration::from_secs(30);

/// How to run one node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: NodeId,
    /// The address other nodes and clients reach this node at (`host:port`).
    pub addr: String,
    pub data_dir: PathBuf,
    /// Flush the log to disk before acknowledging. Off only for benchmarks.
    pub fsync: bool,
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Take a snapshot (and purge the log) after this many entries.
    pub snapshot_every: u64,
    /// Entries kept in the log behind the latest snapshot, so that a lagging
    /// follower can catch up from the log instead of a whole snapshot.
    pub keep_logs_after_snapshot: u64,
    /// Most commands in one log entry.
    pub max_batch: usize,
    /// Most entries being replicated at once by the proposer. 1 is best with
    /// openraft 0.9, which flushes one append at a time: commands that arrive
    /// while an entry is in flight then all share the next entry (measured:
    /// 16 clients on 3 nodes, ~2,100 pairs/s with 1, ~1,700 with 2, far fewer
    /// with 8).
    pub max_inflight: usize,
    /// The leader writes its own log in parallel with replicating it, so a
    /// commit costs one fsync round instead of two (see [`crate::durable`]).
    pub parallel_leader_write: bool,
    /// Whether a CPU is kept awake while an fsync is in flight: for VMs that
    /// deliver disk completions to an idle vCPU late (see
    /// [`crate::fsync_waker`]). Default: measured and chosen
    /// ([`FsyncPoll::Auto`]).
    pub fsync_poll: FsyncPoll,
}

impl NodeConfig {
    /// Defaults for a node on a LAN (or loopback).
    pub fn new(id: NodeId, addr: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        NodeConfig {
            id,
            addr: addr.into(),
            data_dir: data_dir.into(),
            fsync: true,
            heartbeat_ms: 100,
            election_min_ms: 500,
            election_max_ms: 1000,
            snapshot_every: 20_000,
            keep_logs_after_snapshot: 1000,
            max_batch: 1024,
            max_inflight: 1,
            parallel_leader_write: true,
            fsync_poll: FsyncPoll::default(),
        }
    }

    /// Heartbeats every 50 ms and elections after 300–600 ms: for loopback
    /// clusters (tests, benches), where round trips take microseconds.
    pub fn with_fast_elections(self) -> Self {
        NodeConfig {
            heartbeat_ms: 50,
            election_min_ms: 300,
            election_max_ms: 600,
            ..self
        }
    }

    fn raft_config(&self) -> Result<openraft::Config, NodeError> {
        let config = openraft::Config {
            cluster_name: "fencelock".into(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: self.election_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.keep_logs_after_snapshot,
            install_snapshot_timeout: 2000,
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| NodeError::Config(e.to_string()))
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("invalid node configuration: {0}")]
    Config(String),
    #[error("cannot open the data dir {path}: {source}")]
    Storage {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("raft failed to start: {0}")]
    Raft(String),
}

struct Inner {
    id: NodeId,
    raft: Raft,
    shared: Arc<Shared>,
    proposer: Proposer,
    clock: Arc<dyn Clock>,
    /// The term whose grace entry this node has applied as leader.
    graced: watch::Sender<u64>,
    /// How recent a quorum's acknowledgement must be to skip a read barrier.
    quorum_fresh_ms: u64,
    /// With parallel leader writes: the local log's durable index.
    durable: Option<crate::durable::Durable>,
}

/// A running lock node. Clones share it.
#[derive(Clone)]
pub struct LockNode {
    inner: Arc<Inner>,
}

impl LockNode {
    /// Opens the data dir and starts Raft and the node's tasks. Serve it with
    /// [`crate::grpc::serve`] (or another transport's server).
    pub async fn start(
        config: NodeConfig,
        transport: Arc<dyn Transport>,
        clock: Arc<dyn Clock>,
    ) -> Result<LockNode, NodeError> {
        let storage = |source| NodeError::Storage {
            path: config.data_dir.clone(),
            source,
        };
        let log = LogStore::open_with(&config.data_dir, config.fsync, config.fsync_poll)
            .map_err(storage)?;
        let sm = StateMachine::open(&config.data_dir).map_err(storage)?;
        Self::start_with(config, log, sm, transport, clock).await
    }

    /// Starts a node on a given log store and state machine (the simulator's
    /// seam: a log on its own [`crate::wal::LogSink`]).
    pub async fn start_with(
        config: NodeConfig,
        log: LogStore,
        mut sm: StateMachine,
        transport: Arc<dyn Transport>,
        clock: Arc<dyn Clock>,
    ) -> Result<LockNode, NodeError> {
        let raft_config = Arc::new(config.raft_config()?);
        let shared = sm.shared();
        let mut durable = None;
        if config.parallel_leader_write {
            log.write_in_parallel_as(config.id);
            sm.apply_once_durable(log.durable());
            durable = Some(log.durable());
        }
        let network = Network::new(transport, durable.clone());
        let raft = Raft::new(config.id, raft_config, network, log, sm)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        let proposer = Proposer::start(
            raft.clone(),
            clock.clone(),
            config.max_batch,
            config.max_inflight,
        );
        let node = LockNode {
            inner: Arc::new(Inner {
                id: config.id,
                raft,
                shared,
                proposer,
                clock,
                graced: watch::channel(0).0,
                quorum_fresh_ms: config.election_min_ms,
                durable,
            }),
        };
        crate::rt::spawn(grace_loop(node.clone()));
        crate::rt::spawn(tick_loop(node.clone()));
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The openraft handle (metrics, membership, shutdown).
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// The canonical snapshot bytes of this replica's lock table (equal on
    /// every replica that applied the same entries).
    pub fn table_bytes(&self) -> Vec<u8> {
        self.inner
            .shared
            .replica()
            .table
            .snapshot_bytes()
            .unwrap_or_default()
    }

    /// The index of the last entry this replica applied.
    pub fn applied_index(&self) -> u64 {
        self.inner.shared.subscribe().borrow().applied
    }

    /// Stops Raft; the node's tasks end with it.
    pub async fn shutdown(&self) {
        let _ = self.inner.raft.shutdown().await;
    }

    /// Serves a Raft RPC from a peer.
    pub async fn handle_raft(&self, rpc: RaftRpc) -> RaftReply {
        let raft = &self.inner.raft;
        match rpc {
            RaftRpc::Append(r) => {
                // Entries this node wrote as leader may still be unflushed:
                // confirm no log to a new leader before they are on disk.
                if let Some(d) = &self.inner.durable {
                    if d.wait_queued().await.is_err() {
                        return RaftReply::Append(Err(RaftError::Fatal(
                            openraft::error::Fatal::Stopped,
                        )));
                    }
                }
                RaftReply::Append(raft.append_entries(r).await)
            }
            RaftRpc::Vote(r) => RaftReply::Vote(raft.vote(r).await),
            RaftRpc::Snapshot(r) => RaftReply::Snapshot(raft.install_snapshot(r).await),
        }
    }

    /// Serves a client RPC.
    pub async fn handle_client(&self, rpc: ClientRpc) -> ClientReply {
        let result = match rpc {
            ClientRpc::Execute {
                request_id,
                command,
            } => self
                .execute(Stamped {
                    request_id,
                    command,
                })
                .await
                .map(ClientReply::Outcome),
            ClientRpc::Read(query) => self.read(query).await.map(ClientReply::Read),
            ClientRpc::Wait {
                key,
                session,
                max_wait_ms,
            } => self
                .wait(key, session, max_wait_ms)
                .await
                .map(ClientReply::Wait),
            ClientRpc::WatchHold {
                key,
                token,
                max_wait_ms,
            } => self
                .watch_hold(key, token, max_wait_ms)
                .await
                .map(ClientReply::Hold),
            ClientRpc::Admin(admin) => Ok(self.admin(admin).await),
            ClientRpc::ExecuteMany { commands } => {
                self.execute_many(commands).await.map(ClientReply::Outcomes)
            }
            ClientRpc::AcquireWait {
                request_id,
                command,
                max_wait_ms,
            } => self
                .acquire_wait(
                    Stamped {
                        request_id,
                        command,
                    },
                    max_wait_ms,
                )
                .await
                .map(ClientReply::Outcome),
        };
        result.unwrap_or_else(|reply| reply)
    }

    async fn execute(&self, stamped: Stamped) -> Result<crate::types::Outcome, ClientReply> {
        self.ready().await?;
        self.inner
            .proposer
            .propose(stamped)
            .await
            .map_err(propose_reply)
    }

    async fn execute_many(
        &self,
        commands: Vec<Stamped>,
    ) -> Result<Vec<crate::types::Outcome>, ClientReply> {
        self.ready().await?;
        self.inner
            .proposer
            .propose_many(commands)
            .await
            .map_err(propose_reply)
    }

    /// Executes `stamped`; if it is an acquire that queued, waits up to
    /// `max_wait_ms` for the grant and answers `Granted` if it came. Any
    /// other end (still queued, wait ended, leadership lost meanwhile)
    /// answers the acquire's own `Queued`: the client's next `wait` tells.
    async fn acquire_wait(
        &self,
        stamped: Stamped,
        max_wait_ms: u64,
    ) -> Result<crate::types::Outcome, ClientReply> {
        let waiter = match &stamped.command {
            Command::Acquire { key, session, .. } if max_wait_ms > 0 => {
                Some((key.clone(), *session))
            }
            _ => None,
        };
        let outcome = self.execute(stamped).await?;
        let Some((key, session)) = waiter else {
            return Ok(outcome);
        };
        if !matches!(outcome, Ok(fencelock_core::Response::Queued { .. })) {
            return Ok(outcome);
        }
        match self.wait(key, session, max_wait_ms).await {
            Ok(WaitState::Granted(grant)) => Ok(Ok(fencelock_core::Response::Granted(grant))),
            _ => Ok(outcome),
        }
    }

    async fn read(&self, query: ReadQuery) -> Result<ReadAnswer, ClientReply> {
        self.linearizable().await?;
        let now = self.inner.clock.now_ms();
        let r = self.inner.shared.replica();
        Ok(match query {
            ReadQuery::Validate { key, token } => {
                ReadAnswer::Validated(r.table.validate(now, &key, token))
            }
            ReadQuery::Describe { key } => ReadAnswer::Described(r.table.describe(&key)),
            ReadQuery::DescribeSession { session } => {
                ReadAnswer::Session(r.table.describe_session(session))
            }
        })
    }

    async fn wait(
        &self,
        key: LockKey,
        session: SessionId,
        max_wait_ms: u64,
    ) -> Result<WaitState, ClientReply> {
        // `Granted`, `Ended` and `Waiting` are safe to answer from this
        // leader's applied state without a read-index round: a grant or end is
        // a committed fact, and `Waiting` only makes the client ask again. A
        // negative answer (not waiting, session gone) might only mean that this
        // new leader has not applied the entry that queued the wait yet, so it
        // is given only after a linearizable barrier.
        // Without a barrier this leader must at least have heard from a
        // quorum recently: one cut off from it keeps believing it leads, and
        // would answer "still waiting" forever while a new leader grants.
        self.ready().await?;
        let mut confirmed = false;
        if !self.quorum_is_fresh() {
            self.linearizable().await?;
            confirmed = true;
        }
        let give_up = Instant::now() + Duration::from_millis(max_wait_ms).min(MAX_POLL);
        let shared = &self.inner.shared;
        let registered = shared.wakeups().register(session);
        loop {
            // Armed before the state is read: a wake-up in between is kept.
            let mut woken = std::pin::pin!(registered.notify().notified());
            woken.as_mut().enable();
            let state = shared.replica().wait_state(session, &key);
            let negative = matches!(
                state,
                WaitState::NotWaiting | WaitState::Ended(fencelock_core::WaitEnd::SessionEnded)
            );
            if negative && !confirmed {
                self.linearizable().await?;
                confirmed = true;
                continue;
            }
            if state != WaitState::Waiting {
                return Ok(state);
            }
            tokio::select! {
                _ = woken => {}
                _ = crate::rt::sleep_until(give_up) => return Ok(state),
            }
        }
    }

    async fn watch_hold(
        &self,
        key: LockKey,
        token: FencingToken,
        max_wait_ms: u64,
    ) -> Result<Result<fencelock_core::HolderInfo, fencelock_core::LockError>, ClientReply> {
        self.linearizable().await?;
        let give_up = Instant::now() + Duration::from_millis(max_wait_ms).min(MAX_POLL);
        let mut progress = self.inner.shared.subscribe();
        loop {
            progress.borrow_and_update();
            let now = self.inner.clock.now_ms();
            let held = self.inner.shared.replica().table.validate(now, &key, token);
            if held.is_err() {
                return Ok(held);
            }
            // The leader ticks at the lease's or session's end, which changes progress.
            tokio::select! {
                changed = progress.changed() => if changed.is_err() { return Ok(held) },
                _ = crate::rt::sleep_until(give_up) => return Ok(held),
            }
        }
    }

    /// Waits until this node is the leader of the current term and has
    /// applied its grace entry.
    async fn ready(&self) -> Result<(), ClientReply> {
        let give_up = Instant::now() + READY_WAIT;
        let mut metrics = self.inner.raft.metrics();
        let mut graced = self.inner.graced.subscribe();
        loop {
            let (leader, term) = {
                let m = metrics.borrow_and_update();
                (m.current_leader, m.current_term)
            };
            let expired = Instant::now() >= give_up;
            if leader != Some(self.inner.id) {
                if leader.is_some() || expired {
                    return Err(self.not_leader(leader));
                }
            } else if *graced.borrow_and_update() == term {
                return Ok(());
            } else if expired {
                return Err(ClientReply::Unavailable(
                    "this node was just elected; its fail-over grace entry is not committed yet"
                        .into(),
                ));
            }
            tokio::select! {
                _ = metrics.changed() => {}
                _ = graced.changed() => {}
                _ = crate::rt::sleep_until(give_up) => {}
            }
        }
    }

    /// True when a quorum acknowledged this leader within an election timeout.
    fn quorum_is_fresh(&self) -> bool {
        let m = self.inner.raft.metrics();
        let ack = m.borrow().millis_since_quorum_ack;
        ack.is_some_and(|ms| ms <= self.inner.quorum_fresh_ms)
    }

    /// Confirms leadership with a quorum (read index) and waits until the
    /// state machine has applied up to it: what follows reads no stale state.
    async fn linearizable(&self) -> Result<(), ClientReply> {
        self.ready().await?;
        match self.inner.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(ClientReply::NotLeader {
                    leader: f.leader_id,
                    addr: f.leader_node.map(|n| n.addr),
                })
            }
            Err(e) => Err(ClientReply::Unavailable(e.to_string())),
        }
    }

    fn not_leader(&self, leader: Option<NodeId>) -> ClientReply {
        let addr = leader.and_then(|id| {
            let m = self.inner.raft.metrics();
            let m = m.borrow();
            m.membership_config
                .membership()
                .get_node(&id)
                .map(|n| n.addr.clone())
        });
        ClientReply::NotLeader { leader, addr }
    }

    async fn admin(&self, rpc: AdminRpc) -> ClientReply {
        let raft = &self.inner.raft;
        let done = |r: Result<(), String>| ClientReply::AdminDone(r);
        match rpc {
            AdminRpc::Init { members } => {
                let nodes: BTreeMap<NodeId, BasicNode> = members
                    .into_iter()
                    .map(|(id, addr)| (id, BasicNode { addr }))
                    .collect();
                done(raft.initialize(nodes).await.map_err(|e| e.to_string()))
            }
            AdminRpc::AddLearner { id, addr } => {
                match raft.add_learner(id, BasicNode { addr }, true).await {
                    Ok(_) => done(Ok(())),
                    Err(e) => self.admin_error(e),
                }
            }
            AdminRpc::ChangeMembership { voters } => {
                match raft.change_membership(voters, false).await {
                    Ok(_) => done(Ok(())),
                    Err(e) => self.admin_error(e),
                }
            }
            AdminRpc::SetLimits { limits } => {
                if let Err(reply) = self.ready().await {
                    return reply;
                }
                match raft.client_write(Request::Configure { limits }).await {
                    Ok(r) => match r.data.outcomes.into_iter().next() {
                        Some(Err(e)) => done(Err(e.to_string())),
                        _ => done(Ok(())),
                    },
                    Err(e) => self.admin_error(e),
                }
            }
            AdminRpc::Snapshot => done(raft.trigger().snapshot().await.map_err(|e| e.to_string())),
            AdminRpc::Status => ClientReply::Status(self.status()),
        }
    }

    fn admin_error(
        &self,
        e: RaftError<NodeId, openraft::error::ClientWriteError<NodeId, BasicNode>>,
    ) -> ClientReply {
        match e {
            RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(f)) => {
                ClientReply::NotLeader {
                    leader: f.leader_id,
                    addr: f.leader_node.map(|n| n.addr),
                }
            }
            other => ClientReply::AdminDone(Err(other.to_string())),
        }
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> NodeStatus {
        let m = self.inner.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let (sessions, locks, table_crc, applied) = {
            let r = self.inner.shared.replica();
            (
                r.table.session_count() as u64,
                r.table.lock_count() as u64,
                crc32fast::hash(&r.table.snapshot_bytes().unwrap_or_default()),
                r.last_applied.map(|l| l.index),
            )
        };
        NodeStatus {
            id: self.inner.id,
            state: format!("{:?}", m.state),
            term: m.current_term,
            leader: m.current_leader,
            last_applied: applied,
            snapshot: m.snapshot.map(|l| l.index),
            voters: membership.voter_ids().collect(),
            nodes: membership
                .nodes()
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect(),
            sessions,
            locks,
            table_crc,
        }
    }
}

fn propose_reply(e: ProposeError) -> ClientReply {
    match e {
        ProposeError::NotLeader { leader, addr } => ClientReply::NotLeader { leader, addr },
        ProposeError::Unavailable(m) => ClientReply::Unavailable(m),
    }
}

/// Commits a grace entry at the start of every term this node leads.
async fn grace_loop(node: LockNode) {
    let inner = &node.inner;
    let mut metrics = inner.raft.metrics();
    loop {
        let (leading, term) = {
            let m = metrics.borrow_and_update();
            (
                m.state == ServerState::Leader && m.current_leader == Some(inner.id),
                m.current_term,
            )
        };
        if leading && *inner.graced.borrow() != term {
            let now = inner.clock.now_ms();
            match inner.raft.client_write(Request::Grace { now }).await {
                Ok(_) => {
                    inner.graced.send_replace(term);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(term, "grace entry not committed: {e}");
                    crate::rt::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// While this node leads, proposes a `Tick` whenever its clock reaches the
/// state machine's next deadline.
async fn tick_loop(node: LockNode) {
    let inner = &node.inner;
    let mut metrics = inner.raft.metrics();
    let mut graced = inner.graced.subscribe();
    let mut progress = inner.shared.subscribe();
    loop {
        let ready = {
            let m = metrics.borrow_and_update();
            m.state == ServerState::Leader && *graced.borrow_and_update() == m.current_term
        };
        let deadline = progress.borrow_and_update().next_deadline;
        if ready {
            if let Some(at) = deadline {
                let now = inner.clock.now_ms();
                if now >= at {
                    let tick = Stamped {
                        request_id: None,
                        command: Command::Tick,
                    };
                    if let Err(e) = inner.proposer.propose(tick).await {
                        tracing::debug!("tick not committed: {e:?}");
                        crate::rt::sleep(Duration::from_millis(20)).await;
                    }
                    continue;
                }
                let wait = Duration::from_millis(at - now);
                tokio::select! {
                    r = metrics.changed() => if r.is_err() { return },
                    r = graced.changed() => if r.is_err() { return },
                    r = progress.changed() => if r.is_err() { return },
                    _ = crate::rt::sleep(wait) => {}
                }
                continue;
            }
        }
        tokio::select! {
            r = metrics.changed() => if r.is_err() { return },
            r = graced.changed() => if r.is_err() { return },
            r = progress.changed() => if r.is_err() { return },
        }
    }
}
