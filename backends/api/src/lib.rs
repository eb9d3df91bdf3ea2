//! # fencelock
//!
//! Fair, fenced locks for async Rust: FIFO mutexes and read/write locks with
//! sessions, TTL leases, steal and fencing tokens, over a pluggable store.
//!
//! - [`Backend`]: the trait a store implements (in-memory, PostgreSQL, Raft,
//!   or your own; prove it with `fencelock-conformance`).
//! - [`Error`]: the one error enum, mapped to wire status codes by [`Error::code`].

mod backend;
mod client;
mod error;
mod guard;
mod handle;
mod session;

pub use backend::{grant_of, Backend, WaitStatus, DEFAULT_POLL};
pub use client::{Client, ClientBuilder};
pub use error::Error;
pub use fencelock_core::{
    Command, Event, FencingToken, Grant, HoldEnd, HolderInfo, Limits, LockError, LockInfo, LockKey,
    LockKind, Millis, Mode, RequestId, Response, SessionId, SessionInfo, StatusCode, WaitEnd,
    WaiterInfo, MAX_NAMESPACE_LEN, MAX_NAME_LEN,
};
pub use guard::LockGuard;
pub use handle::{LockHandle, RwLockHandle};
