//! `fencelock-node`: run one lock node, or administer a cluster.
//!
//! ```text
//! fencelock-node run --id 1 --listen 127.0.0.1:7001 --data-dir /var/lib/fl/1 \
//!     --init 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003
//! fencelock-node run --id 4 --listen 127.0.0.1:7004 --data-dir /var/lib/fl/4
//! fencelock-node add-learner --cluster 127.0.0.1:7001 --id 4 --addr 127.0.0.1:7004
//! fencelock-node change-membership --cluster 127.0.0.1:7001 --voters 1,2,3,4
//! fencelock-node status --node 127.0.0.1:7004
//! ```

use clap::{Parser, Subcommand};
use fencelock_raft::tcp::TcpTransport;
use fencelock_raft::{fsync_waker, grpc};
use fencelock_raft::{ClientConfig, ClusterClient, FsyncPoll, LockNode, NodeConfig, SystemClock};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "fencelock-node",
    about = "A fencelock Raft lock node and its admin commands"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// `--fsync-poll`: see [`FsyncPoll`].
#[derive(Clone, Copy, clap::ValueEnum)]
enum PollMode {
    Off,
    Auto,
    Always,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs one node until SIGINT/SIGTERM.
    Run {
        /// This node's id (unique in the cluster, > 0).
        #[arg(long)]
        id: u64,
        /// Address to listen on, host:port.
        #[arg(long)]
        listen: String,
        /// Address others reach this node at (default: --listen).
        #[arg(long)]
        advertise: Option<String>,
        /// Directory for the log, vote and snapshot (created if missing).
        #[arg(long)]
        data_dir: PathBuf,
        /// Acknowledge writes before they are on disk (benchmarks only).
        #[arg(long)]
        no_fsync: bool,
        /// On a fresh data dir, create a cluster with these voters: `id=host:port,...`.
        #[arg(long)]
        init: Option<String>,
        /// Snapshot (and purge the log) after this many entries.
        #[arg(long, default_value_t = 20_000)]
        snapshot_every: u64,
        /// Entries kept behind the latest snapshot for lagging followers.
        #[arg(long, default_value_t = 1000)]
        keep_logs: u64,
        /// Heartbeat interval in ms (election timeout is 5–10 heartbeats).
        #[arg(long, default_value_t = 100)]
        heartbeat_ms: u64,
        /// Keep a CPU awake while an fsync is in flight, for VMs that
        /// deliver disk completions to an idle vCPU late: `auto` measures
        /// fsyncs with and without and keeps it only where it pays.
        #[arg(long, value_enum, default_value_t = PollMode::Auto)]
        fsync_poll: PollMode,
        /// How often the kept-awake CPU wakes, in µs.
        #[arg(long, default_value_t = fsync_waker::DEFAULT_PERIOD.as_micros() as u64)]
        fsync_poll_us: u64,
    },
    /// Creates a cluster from fresh nodes.
    Init {
        /// A node to send the command to.
        #[arg(long)]
        cluster: String,
        /// Voters: `id=host:port,...`.
        #[arg(long)]
        members: String,
    },
    /// Adds a node as a learner and waits until it caught up.
    AddLearner {
        /// Any node(s) of the cluster, comma-separated.
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        id: u64,
        #[arg(long)]
        addr: String,
    },
    /// Sets the voters (ids, comma-separated); voters not listed leave.
    ChangeMembership {
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        voters: String,
    },
    /// Prints a node's view of the cluster.
    Status {
        #[arg(long)]
        node: String,
    },
}

fn parse_members(s: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut members = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("--members/--init: `{part}` is not `id=host:port`"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("--members/--init: `{id}` is not a node id"))?;
        members.insert(id, addr.trim().to_string());
    }
    if members.is_empty() {
        return Err("--members/--init: no members given".into());
    }
    Ok(members)
}

fn parse_ids(s: &str) -> Result<BTreeSet<u64>, String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.trim()
                .parse()
                .map_err(|_| format!("--voters: `{p}` is not a node id"))
        })
        .collect()
}

fn client(cluster: &str) -> Result<ClusterClient, String> {
    let endpoints = cluster.split(',').map(|s| s.trim().to_string()).collect();
    ClusterClient::new(
        Arc::new(TcpTransport::new()),
        endpoints,
        ClientConfig::default(),
    )
    .map_err(|e| e.to_string())
}

async fn run(cmd: Cmd) -> Result<(), String> {
    match cmd {
        Cmd::Run {
            id,
            listen,
            advertise,
            data_dir,
            no_fsync,
            init,
            snapshot_every,
            keep_logs,
            heartbeat_ms,
            fsync_poll,
            fsync_poll_us,
        } => {
            if id == 0 {
                return Err("--id: node ids start at 1".into());
            }
            if fsync_poll_us == 0 {
                return Err("--fsync-poll-us: give at least 1 (µs)".into());
            }
            let period = std::time::Duration::from_micros(fsync_poll_us);
            let members = init.as_deref().map(parse_members).transpose()?;
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|e| format!("--listen {listen}: {e}"))?;
            let mut config =
                NodeConfig::new(id, advertise.unwrap_or(listen.clone()), data_dir.clone());
            config.fsync = !no_fsync;
            config.snapshot_every = snapshot_every;
            config.keep_logs_after_snapshot = keep_logs;
            config.heartbeat_ms = heartbeat_ms;
            config.fsync_poll = match fsync_poll {
                PollMode::Off => FsyncPoll::Off,
                PollMode::Auto => FsyncPoll::Auto(period),
                PollMode::Always => FsyncPoll::Always(period),
            };
            config.election_min_ms = heartbeat_ms * 5;
            config.election_max_ms = heartbeat_ms * 10;
            let node =
                LockNode::start(config, Arc::new(TcpTransport::new()), Arc::new(SystemClock))
                    .await
                    .map_err(|e| e.to_string())?;
            if let Some(members) = members {
                let fresh = !node
                    .raft()
                    .is_initialized()
                    .await
                    .map_err(|e| e.to_string())?;
                if fresh {
                    let nodes = members
                        .into_iter()
                        .map(|(id, addr)| (id, openraft::BasicNode { addr }))
                        .collect::<BTreeMap<_, _>>();
                    node.raft()
                        .initialize(nodes)
                        .await
                        .map_err(|e| format!("--init: {e}"))?;
                }
            }
            tracing::info!(id, %listen, data_dir = %data_dir.display(), "node serving");
            let shutdown = async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("SIGTERM handler");
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            };
            grpc::serve(node.clone(), listener, shutdown)
                .await
                .map_err(|e| format!("server: {e}"))?;
            node.shutdown().await;
            Ok(())
        }
        Cmd::Init { cluster, members } => client(&cluster)?
            .init(parse_members(&members)?)
            .await
            .map_err(|e| e.to_string()),
        Cmd::AddLearner { cluster, id, addr } => client(&cluster)?
            .add_learner(id, addr)
            .await
            .map_err(|e| e.to_string()),
        Cmd::ChangeMembership { cluster, voters } => client(&cluster)?
            .change_membership(parse_ids(&voters)?)
            .await
            .map_err(|e| e.to_string()),
        Cmd::Status { node } => {
            let status = client(&node)?
                .status_of(&node)
                .await
                .map_err(|e| e.to_string())?;
            println!("{status:#?}");
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,fencelock_raft=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse().command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fencelock-node: {e}");
            ExitCode::FAILURE
        }
    }
}
