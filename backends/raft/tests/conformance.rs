//! The whole conformance suite against 3-node clusters in-process (real
//! tokio, real gRPC on 127.0.0.1, real files with fsync).

use fencelock::Limits;
use fencelock_conformance::{run_all, Case, Config};
use fencelock_raft::local::LocalCluster;
use fencelock_raft::{NodeConfig, RaftBackend};
use std::sync::Arc;
use std::time::Duration;

fn fast(c: NodeConfig) -> NodeConfig {
    c.with_fast_elections()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_suite_on_three_nodes() {
    let dir = tempfile::tempdir().unwrap();
    // Limits are part of the replicated state, fixed at cluster creation: the
    // `limits` case gets a cluster of its own.
    let limited = Case::Limits.limits();
    let default = LocalCluster::start(&dir.path().join("a"), 3, fast, None)
        .await
        .unwrap();
    let small = LocalCluster::start(&dir.path().join("b"), 3, fast, Some(limited.clone()))
        .await
        .unwrap();
    let backends = (Arc::new(default.backend()), Arc::new(small.backend()));
    let config = Config::with_unit(Duration::from_millis(100));
    let report = run_all(&config, |limits: Limits| {
        let b: Arc<RaftBackend> = if limits == limited {
            backends.1.clone()
        } else {
            backends.0.clone()
        };
        async move { Ok(b) }
    })
    .await;
    assert!(report.passed(), "{report}");
    assert_eq!(report.passed.len(), Case::ALL.len());
    default.shutdown().await;
    small.shutdown().await;
}
