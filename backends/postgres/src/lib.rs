//! # fencelock-postgres
//!
//! A [`fencelock::Backend`] that keeps locks in PostgreSQL: fair FIFO mutexes
//! and read/write locks, TTL leases, sessions, steal and fencing tokens for a
//! team that already runs Postgres, without another service.
//!
//! Every command runs the core state machine ([`fencelock_core::KeyView`]) on
//! the affected key's row and writes it back in one transaction (optimistic:
//! the write happens only if the row is unchanged since it was read; after two
//! lost races, `SELECT … FOR UPDATE` first), on the Postgres server's clock.
//! Nothing lives in the Postgres session between transactions, so it works
//! through pgbouncer in transaction mode. Waiters are woken by LISTEN/NOTIFY with a timed re-check;
//! expiries are swept by every live client process (`FOR UPDATE SKIP
//! LOCKED`). See the modules for each part:
//!
//! - [`config`]: the URL, schema name, pool size, intervals and limits;
//! - `schema`: versioned migrations run on start under an advisory lock;
//! - `store`: the transaction per command (two round trips; one when the
//!   process still knows the key as it is: `known`);
//! - `combine`: commands of one process on one key share a transaction;
//! - `batch`: one-round-trip writes of different keys share a statement;
//! - `session`: open, keep-alive, close, describe a session;
//! - `notify`: LISTEN/NOTIFY and local wake-ups;
//! - `sweep`: expiry of leases, waits and sessions;
//! - [`testkit`]: a throwaway Postgres server for tests and benches.
//!
//! The crate's `README.md` has the design, the round trips per operation and
//! how to point the client at Postgres (also through pgbouncer).
//!
//! Limits: the per-lock limits and `max_sessions` are enforced as the core
//! does; `max_locks_per_session` is enforced when set below its default
//! (counting a session's keys is an index scan per acquire, not worth paying
//! for a limit of 100,000); `max_locks` (locks in the whole table) is not
//! enforced, because counting every row on each new key would cost more than
//! it protects.

mod backend;
mod batch;
mod combine;
pub mod config;
mod error;
mod known;
mod notify;
mod pg;
mod schema;
mod session;
mod sql;
mod store;
mod sweep;
pub mod testkit;

pub use backend::PgBackend;
pub use config::PgConfig;
pub use known::PgStats;
pub use schema::SCHEMA_VERSION;
