//! Small value types shared by every command: ids, modes, kinds and time.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Milliseconds on the driver's clock. The core never reads a clock: every
/// command carries `now` (Postgres server time, the Raft leader's stamp, the
/// simulator's clock), and the core only compares these numbers.
pub type Millis = u64;

/// The latest time the core represents (2^62 ms, about 146 million years). A
/// `now` above it counts as it, and TTLs are capped below it, so `now + ttl`
/// never overflows and every expiry stays strictly in the future.
pub const MAX_TIME: Millis = 1 << 62;

/// State time for a command: never backwards, never past [`MAX_TIME`].
pub(crate) fn clamp_now(now: Millis, state_now: Millis) -> Millis {
    now.min(MAX_TIME).max(state_now)
}

/// A client session. Every holder and waiter belongs to one; when it ends, its
/// holds and waits end in the same transition. Ids are assigned by the core
/// from a counter, so every replica assigns the same id to the same command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId(pub u64);

/// A client-chosen id for one mutating request of one session. Retrying a
/// request with the same id returns the first result and changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u64);

/// A fencing token: strictly increasing with every grant of a lock (the core
/// draws them from one table-wide counter, so they also never repeat across
/// destroy/re-create or snapshot/restore). A resource guarded by the lock
/// rejects any token lower than the highest it has seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FencingToken(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What kind of lock a key names. Fixed when the lock is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LockKind {
    /// A mutex: one holder at a time, acquired in [`Mode::Exclusive`].
    Exclusive,
    /// A read/write lock: many [`Mode::Read`] holders or one [`Mode::Write`].
    ReadWrite,
}

impl fmt::Display for LockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockKind::Exclusive => "exclusive",
            LockKind::ReadWrite => "read/write",
        })
    }
}

/// The mode a hold or a wait is in. The mode also says which kind of lock it
/// needs, so an `acquire` on a missing key can create the right kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Mode {
    /// The only mode of an exclusive lock (mutex).
    Exclusive,
    /// Shared mode of a read/write lock.
    Read,
    /// Exclusive mode of a read/write lock.
    Write,
}

impl Mode {
    /// The kind of lock this mode belongs to.
    pub fn kind(self) -> LockKind {
        match self {
            Mode::Exclusive => LockKind::Exclusive,
            Mode::Read | Mode::Write => LockKind::ReadWrite,
        }
    }

    /// True for modes that may share the lock with other holders of the same mode.
    pub fn is_shared(self) -> bool {
        matches!(self, Mode::Read)
    }

    /// The exclusive mode of a lock kind (what `steal` takes).
    pub fn exclusive_of(kind: LockKind) -> Mode {
        match kind {
            LockKind::Exclusive => Mode::Exclusive,
            LockKind::ReadWrite => Mode::Write,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Exclusive => "exclusive",
            Mode::Read => "read",
            Mode::Write => "write",
        })
    }
}
