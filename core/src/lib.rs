//! # fencelock-core
//!
//! The pure lock state machine behind every fencelock backend: exclusive and
//! read/write locks, FIFO queues with reader batches, try-lock and timed waits,
//! TTL leases, sessions, steal, force release, destroy, describe, fencing tokens
//! and idempotent request ids. The contract is `SEMANTICS.md`.
//!
//! It reads no clock, no randomness, no environment and does no I/O. A driver
//! (the in-memory backend, a Postgres transaction, a Raft state machine, the
//! simulator) feeds each [`Command`] with its own `now`; the [`Table`] returns a
//! [`Response`] for the caller and [`Event`]s for everyone else, and says when
//! it next needs to be woken ([`Table::next_deadline`]).
//!
//! ```
//! use fencelock_core::{Command, LockKey, Mode, Response, Table, Event};
//!
//! let mut table = Table::default();
//! let mut events = Vec::new();
//! let key = LockKey::new("billing", "invoice:42").unwrap();
//! let alice = table.open_session(0, 10_000, &mut events).unwrap();
//! let bob = table.open_session(0, 10_000, &mut events).unwrap();
//!
//! // Alice gets the lock at once, with a fencing token.
//! let Ok(Response::Granted(grant)) = table.apply(1, &Command::Acquire {
//!     key: key.clone(), session: alice, mode: Mode::Exclusive, timeout_ms: None }, &mut events)
//! else { panic!() };
//! // Bob queues, with a 5 s deadline.
//! let queued = table.apply(2, &Command::Acquire {
//!     key: key.clone(), session: bob, mode: Mode::Exclusive, timeout_ms: Some(5_000) }, &mut events);
//! assert!(matches!(queued, Ok(Response::Queued { position: 1, .. })));
//! // Alice releases; the same transition grants Bob, reported as an event.
//! table.apply(3, &Command::Release { key: key.clone(), session: alice, token: grant.token }, &mut events).unwrap();
//! assert!(matches!(&events[..], [Event::Granted { session, .. }] if *session == bob));
//! ```

mod command;
mod error;
mod grace;
mod invariants;
mod key;
mod limits;
mod lock;
mod session;
mod snapshot;
mod table;
mod types;
mod view;

pub use command::{
    Command, Event, Grant, HoldEnd, HolderInfo, LockInfo, Response, SessionInfo, WaitEnd,
    WaiterInfo,
};
pub use error::{LockError, StatusCode};
pub use key::{LockKey, MAX_NAMESPACE_LEN, MAX_NAME_LEN};
pub use limits::Limits;
pub use session::SESSIONLESS_REQUEST_MEMORY;
pub use snapshot::Snapshot;
pub use table::Table;
pub use types::{FencingToken, LockKind, Millis, Mode, RequestId, SessionId, MAX_TIME};
pub use view::{
    check_open_session, KeyView, LockRecord, SessionRecord, WaitOutcome, WaitView,
    KEY_SESSIONLESS_MEMORY,
};
