//! # fencelock
//!
//! Fair, fenced locks for async Rust: FIFO mutexes and read/write locks with
//! sessions, TTL leases, steal and fencing tokens, over a pluggable store.
//!
//! - [`Client`]: sessions kept alive in the background; [`LockHandle`] and
//!   [`RwLockHandle`] with `acquire`, `try_acquire`, `acquire_timeout`,
//!   `steal`; [`LockGuard`] carries the fencing token, releases on drop,
//!   extends, and tells you when the hold is lost; [`Client::with_lock`].
//! - [`Backend`]: the trait a store implements (in-memory, PostgreSQL, Raft,
//!   or your own; prove it with `fencelock-conformance`).
//! - [`Error`]: the one error enum, mapped to wire status codes by [`Error::code`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), fencelock::Error> {
//! use fencelock::Client;
//! use fencelock_memory::MemoryBackend;
//!
//! let client = Client::connect(MemoryBackend::new()).await?;
//! let invoice = client.lock("billing", "invoice:42")?;
//! let guard = invoice.acquire().await?;
//! // Hand the token to every resource you touch: it rejects stale holders.
//! println!("holding with fencing token {}", guard.token());
//! guard.release().await?;
//!
//! // Scoped: the closure runs under the lock, and is stopped if the lock is lost.
//! let n = client.with_lock("billing", "invoice:42", |token| async move { token.0 }).await?;
//! assert!(n > 0);
//! client.close().await; // releases whatever the client still holds
//! # Ok(()) }
//! ```
//!
//! # Tasks of one client contending for one lock
//! Each concurrent holder or waiter of a key borrows its own session from
//! the client's pool (the core lets a session hold or queue for a key only
//! once). So tasks of one client queue in the backend's FIFO like separate
//! clients, each with its own fencing token; one keep-alive task serves all
//! sessions, idle extra sessions are closed, and `close` ends them all.

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
