//! # fencelock-raft
//!
//! The fencelock lock table replicated with [openraft](https://docs.rs/openraft)
//! 0.9: every lock operation is a log entry, applied by the pure core on every
//! replica, so locks survive the loss of a minority of nodes and every grant
//! is linearizable.
//!
//! - [`LockNode`]: one node (durable log, snapshots, leader ticking, fail-over grace).
//! - [`grpc`]: the gRPC transport, and the node's server (gRPC and framed TCP
//!   on one port); [`tcp`]: the framed TCP transport (fewer task hops than
//!   gRPC; [`RaftBackend::connect`] uses it); [`Transport`] is the seam for others.
//! - [`RaftBackend`]: a [`fencelock::Backend`] that talks to a cluster.
//! - [`local::LocalCluster`]: an in-process cluster on loopback for tests and benches.

pub mod backend;
pub mod client;
pub mod clock;
pub mod combine;
pub mod durable;
pub mod fsync_waker;
pub mod grpc;
pub mod local;
pub mod log_store;
pub mod network;
pub mod node;
pub mod proposer;
pub mod rt;
#[cfg(madsim)]
pub mod sim;
pub mod state_machine;
pub mod tcp;
pub mod transport;
pub mod types;
pub mod waits;
pub mod wake;
pub mod wal;
pub mod wire;

pub use backend::RaftBackend;
pub use client::{ClientConfig, ClusterClient};
pub use clock::{Clock, SystemClock};
pub use fsync_waker::FsyncPoll;
pub use node::{LockNode, NodeConfig, NodeError};
pub use transport::{Transport, TransportError};
