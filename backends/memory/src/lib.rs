//! # fencelock-memory
//!
//! The in-process [`fencelock::Backend`]: the core lock table under a mutex,
//! driven by tokio. It is the embedded default — no server at all — and the
//! reference the other backends are compared with.
//!
//! - A timer task sleeps until the core's `next_deadline` and ticks it, so
//!   leases, wait deadlines and sessions expire on time without any client.
//! - A waiter is woken exactly when the core grants it (the grant is an event
//!   of the same transition), never by polling.
//! - Waits are cancellation-safe: dropping a `wait` future only forgets its
//!   waker; leaving the queue is `CancelWait`, and a grant that won the race
//!   stays readable through `wait` so the canceller can release it.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), fencelock::Error> {
//! use fencelock::{Backend, Command, LockKey, Mode, Response};
//! let backend = fencelock_memory::MemoryBackend::new();
//! let Response::SessionOpened { session, .. } =
//!     backend.execute(Command::OpenSession { ttl_ms: 10_000 }, None).await? else { unreachable!() };
//! let key = LockKey::new("docs", "example")?;
//! let granted = backend.execute(Command::Acquire {
//!     key, session, mode: Mode::Exclusive, timeout_ms: Some(0) }, None).await?;
//! assert!(matches!(granted, Response::Granted(_)));
//! # Ok(()) }
//! ```

mod backend;
mod engine;
mod sync;

pub use backend::MemoryBackend;

#[cfg(fencelock_loom)]
pub mod loom_api {
    //! The engine, exposed only to the loom tests.
    pub use crate::engine::{Engine, WaitFuture, Wake};
}
