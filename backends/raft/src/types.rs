//! The openraft type configuration and what a log entry carries.
//!
//! A log entry is a batch of core commands stamped by the leader with one
//! `now`: every replica applies it with [`fencelock_core::Table::apply_request`]
//! at that `now` and never reads its own clock, so all replicas compute the
//! same state, byte for byte.

use fencelock_core::{Command, Limits, LockError, Millis, RequestId, Response};
use serde::{Deserialize, Serialize};
use std::io::Cursor;

/// A Raft node id.
pub type NodeId = u64;

/// One command and the request id that makes its retry idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamped {
    pub request_id: Option<RequestId>,
    pub command: Command,
}

/// The application payload of a log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Client commands proposed together (group commit), applied in order at `now`.
    Batch { now: Millis, commands: Vec<Stamped> },
    /// A new leader's first entry: every session gets a fail-over grace
    /// ([`fencelock_core::Table::grant_grace`]) before anything can expire.
    Grace { now: Millis },
    /// Sets the table's limits; applied only while the table is still empty
    /// (a new cluster), so every replica starts from the same limits.
    Configure { limits: Limits },
}

/// A command's result as the core gave it.
pub type Outcome = Result<Response, LockError>;

/// What applying one entry returned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// One outcome per command of a [`Request::Batch`]; empty otherwise.
    pub outcomes: Vec<Outcome>,
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Batch { now, commands } => write!(f, "batch of {} at {now}", commands.len()),
            Request::Grace { now } => write!(f, "grace at {now}"),
            Request::Configure { .. } => write!(f, "configure limits"),
        }
    }
}

#[cfg(not(madsim))]
type Runtime = openraft::TokioRuntime;
#[cfg(madsim)]
type Runtime = crate::sim::MadsimRuntime;

openraft::declare_raft_types!(
    /// Types of the fencelock Raft group.
    pub TypeConfig:
        D = Request,
        R = Reply,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = Runtime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Membership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type StorageError = openraft::StorageError<NodeId>;
