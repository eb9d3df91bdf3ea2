//! The leader's clock: the only place a node reads time for the lock state.

use fencelock_core::Millis;

/// Milliseconds the leader stamps into log entries. Replicas never call it
/// when applying; only the leader does, when proposing.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> Millis;
}

/// Wall-clock milliseconds since the Unix epoch, so that `expires_at` values
/// mean the same on every node (within clock skew; the core never lets state
/// time go backwards when a new leader's clock is behind).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as Millis)
    }
}
