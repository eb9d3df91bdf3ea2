//! Memory per idle lock, next to memory per `HashMap<String, u64>` entry.
//!
//! Bytes are the net requested sizes seen by [`crate::alloc`] while the table
//! or map is built (keys, nodes, the hash table's spare capacity), divided by
//! the number of entries; malloc's own per-block overhead is not included.

use crate::alloc::measure;
use crate::workloads::{filled_map, idle_table};

/// Bytes per idle lock in a table of `n` locks; `None` without the counting allocator.
pub fn idle_lock_bytes(n: usize, held_once: bool) -> Option<f64> {
    let (table, bytes) = measure(|| idle_table(n, held_once));
    drop(table);
    bytes.map(|b| b as f64 / n as f64)
}

/// Bytes per entry of a `HashMap<String, u64>` of `n` entries (same names).
pub fn map_entry_bytes(n: usize) -> Option<f64> {
    let (map, bytes) = measure(|| filled_map(n));
    drop(map);
    bytes.map(|b| b as f64 / n as f64)
}
