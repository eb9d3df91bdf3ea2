//! Workloads for fencelock's benchmarks.
//!
//! The criterion bench (`benches/core.rs`) and the plain summary table
//! (`benches/core_table.rs`) both drive these fixtures, so the two report the
//! same work. Each fixture builds its state once (untimed) and then exposes one
//! step to time, keeping the state the same size from step to step.

pub mod alloc;
pub mod memory;
pub mod workloads;
