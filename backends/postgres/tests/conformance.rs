//! The whole conformance suite against a real PostgreSQL (a throwaway
//! cluster started by the test, or `FENCELOCK_PG_URL`). Every case gets a
//! backend in a fresh Postgres schema, enforcing the case's limits.

use fencelock_conformance::{run_case, Case, Config};
use fencelock_postgres::testkit::{shared_url, unique_schema};
use fencelock_postgres::{PgBackend, PgConfig};
use std::time::Duration;

/// Comfortably above a few round trips on a loaded 2-core CI machine.
const UNIT: Duration = Duration::from_millis(100);

async fn run(case: Case) {
    let config = Config {
        unit: UNIT,
        ..Config::with_unit(UNIT)
    };
    let result = run_case(case, &config, |limits| async move {
        let config = PgConfig::new(shared_url())
            .with_schema(unique_schema(case.name()))
            .with_limits(limits)
            .with_pool_size(8);
        PgBackend::connect(config).await
    })
    .await;
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

macro_rules! cases {
    ($($name:ident => $case:expr),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                run($case).await;
            }
        )*

        /// Every case of the suite has a test above.
        #[test]
        fn every_case_is_run() {
            let ours = [$($case),*];
            for case in Case::ALL {
                assert!(ours.contains(&case), "case {} has no test", case.name());
            }
        }
    };
}

cases! {
    exclusion => Case::Exclusion,
    rw_sharing => Case::RwSharing,
    reader_batches => Case::ReaderBatches,
    writer_not_starved => Case::WriterNotStarved,
    fifo => Case::Fifo,
    try_lock => Case::TryLock,
    wait_timeout => Case::WaitTimeout,
    acquire_waiting => Case::AcquireWaiting,
    cancel_dequeues => Case::CancelDequeues,
    lease_expiry_grants_next => Case::LeaseExpiryGrantsNext,
    extend => Case::Extend,
    session_expiry_releases_all => Case::SessionExpiryReleasesAll,
    steal_bumps_fence => Case::StealBumpsFence,
    force_release => Case::ForceRelease,
    validate => Case::Validate,
    destroy => Case::Destroy,
    describe => Case::Describe,
    idempotent_retry => Case::IdempotentRetry,
    bad_input => Case::BadInput,
    limits => Case::Limits,
    randomized => Case::Randomized,
}
