//! # fencelock-sim
//!
//! The deterministic simulator: a Raft lock cluster, its clients and a fenced
//! resource in madsim's simulated time and network, a nemesis injecting named
//! faults, and four checkers run on the recorded [`history::History`]:
//! fencing, per-key linearizability, FIFO, and liveness + replica agreement.
//!
//! The checkers and the seed plumbing build everywhere (and are unit-tested
//! on hand-made histories); the simulation itself is compiled only with
//! `RUSTFLAGS="--cfg madsim"` (see the README).

pub mod bugs;
pub mod check;
pub mod history;
#[cfg(madsim)]
pub mod runner;
pub mod seeds;
#[cfg(madsim)]
pub mod world;
