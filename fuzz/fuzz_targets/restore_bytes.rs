//! Raw bytes → `Table::restore_bytes`: must never panic. A snapshot it accepts
//! must satisfy every invariant, snapshot again to bytes that restore to the
//! same bytes, and keep working: the seed corpus (`fuzz/seeds/restore_bytes`)
//! holds real snapshots so that mutations reach deep into the decoder.

#![no_main]

use fencelock_core::Table;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(table) = Table::restore_bytes(data) else {
        return;
    };
    if let Err(e) = table.check_invariants() {
        panic!("restore accepted a table that breaks an invariant: {e}");
    }
    let bytes = table
        .snapshot_bytes()
        .expect("snapshot of a restored table");
    let again = Table::restore_bytes(&bytes).expect("a snapshot of a restored table restores");
    assert!(
        again.snapshot_bytes().expect("snapshot") == bytes,
        "snapshot → restore → snapshot is not byte-identical"
    );
    // Time moves on: every expiry falls due, and the table stays consistent.
    let mut table = again;
    let mut events = Vec::new();
    if let Some(due) = table.next_deadline() {
        table.tick(due, &mut events);
        if let Err(e) = table.check_invariants() {
            panic!("after a tick to {due}: {e}");
        }
    }
});
