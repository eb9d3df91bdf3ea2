//! The memory backend passes the whole conformance suite: once on tokio's
//! paused clock (fast, deterministic timing), once on the real clock.

use fencelock_conformance::{run_all, run_case, Case, Config};
use fencelock_memory::MemoryBackend;
use std::time::Duration;

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn whole_suite_on_paused_clock() {
    let report = run_all(&Config::default(), |limits| async move {
        Ok(MemoryBackend::with_limits(limits))
    })
    .await;
    assert!(report.passed(), "{report}");
    assert_eq!(report.passed.len(), Case::ALL.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_suite_on_real_clock() {
    let config = Config::with_unit(Duration::from_millis(50));
    let report = run_all(&config, |limits| async move {
        Ok(MemoryBackend::with_limits(limits))
    })
    .await;
    assert!(report.passed(), "{report}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn randomized_case_with_other_seeds() {
    for seed in 1..=5 {
        let config = Config {
            seed,
            random_workers: 12,
            ..Config::default()
        };
        let backend = MemoryBackend::new();
        let shared = backend.clone();
        run_case(Case::Randomized, &config, move |_| {
            let b = shared.clone();
            async move { Ok(b) }
        })
        .await
        .unwrap_or_else(|f| panic!("seed {seed}: {f}"));
        backend.check_invariants().unwrap();
        assert_eq!(
            backend.bookkeeping_len(),
            0,
            "closed sessions leave nothing behind"
        );
    }
}
