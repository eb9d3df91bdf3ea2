//! The engine's synchronisation primitives: std's, or loom's under
//! `--cfg fencelock_loom` so the loom tests explore every interleaving of the
//! real wake-up and cancel code.

#[cfg(fencelock_loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};
#[cfg(not(fencelock_loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

/// Locks, ignoring poisoning: the engine's state is only changed by the core,
/// which never panics half-way through a transition, so a panic elsewhere
/// (a waker) cannot leave it inconsistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}
