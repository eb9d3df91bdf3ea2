//! The async-runtime seam: every task and timer of the node and the client
//! goes through here, so a simulator build (`--cfg madsim`) can swap in
//! madsim's deterministic scheduler and clock in one place. `tokio::sync`
//! channels and `tokio::select!` are runtime-agnostic and used directly.
//! openraft's own runtime is chosen in [`crate::types`].

use std::future::Future;

#[cfg(not(madsim))]
pub use tokio::time::{sleep, sleep_until, Instant};

#[cfg(madsim)]
pub use madsim::time::{sleep, sleep_until, Instant};

/// Spawns a background task on the current runtime.
pub fn spawn<F>(future: F)
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    #[cfg(not(madsim))]
    drop(tokio::spawn(future));
    #[cfg(madsim)]
    drop(madsim::task::spawn(future));
}

/// Lets every other ready task run once before this one continues (works
/// on any executor: it only wakes itself and returns pending once).
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}
