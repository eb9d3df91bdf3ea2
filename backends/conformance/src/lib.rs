//! # fencelock-conformance
//!
//! The suite every [`fencelock::Backend`] must pass: one named case per rule
//! of `SEMANTICS.md`, plus a randomized run of many sessions on a few keys
//! against a fenced resource whose recorded grant history is then checked.
//!
//! ## Running it against your backend
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! use fencelock_conformance::{run_all, Config};
//! use fencelock_memory::MemoryBackend;
//!
//! let report = run_all(&Config::default(), |limits| async move {
//!     Ok(MemoryBackend::with_limits(limits))
//! })
//! .await;
//! assert!(report.passed(), "{report}");
//! # }
//! ```
//! Or one test per case: `run_case(Case::Fifo, &config, make).await`, over
//! [`Case::ALL`].
//!
//! ## What the builder must give
//! `make(limits)` returns a backend enforcing `limits`. Every case works in
//! its own fresh namespace and closes its sessions, so the builder may hand
//! out the *same* running store each time (a Postgres database, a Raft
//! cluster) as long as the limits match; only [`Case::Limits`] asks for
//! non-default limits.
//!
//! ## Time
//! Every TTL and timeout is a small multiple of [`Config::unit`]. It must be
//! comfortably above the backend's command latency (a few round trips):
//! 20–50 ms for an in-process store, 100–200 ms for a networked one. The
//! suite only asserts *orders* and server-reported times, plus generous upper
//! bounds (so a slow CI machine delays it, never fails it).

mod cases;
mod ctx;
mod random;

pub use ctx::Ctx;
pub use random::FencedResource;

use fencelock::{Backend, Error, Limits};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Knobs of a suite run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The suite's time unit: TTLs and timeouts are small multiples of it.
    pub unit: Duration,
    /// Concurrent sessions in the randomized case.
    pub random_workers: usize,
    /// Length of the randomized case, in units.
    pub random_units: u64,
    /// Seed of the randomized case (printed on failure, to replay).
    pub seed: u64,
    /// Most units a single case may take before it counts as hung.
    pub case_timeout_units: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            unit: Duration::from_millis(25),
            random_workers: 8,
            random_units: 60,
            seed: 0x5eed_f00d,
            case_timeout_units: 2_000,
        }
    }
}

impl Config {
    /// A config with this time unit and the other defaults.
    pub fn with_unit(unit: Duration) -> Self {
        Config {
            unit,
            ..Config::default()
        }
    }
}

/// The named cases, one per rule of `SEMANTICS.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Case {
    Exclusion,
    RwSharing,
    ReaderBatches,
    WriterNotStarved,
    Fifo,
    TryLock,
    WaitTimeout,
    AcquireWaiting,
    CancelDequeues,
    LeaseExpiryGrantsNext,
    Extend,
    SessionExpiryReleasesAll,
    StealBumpsFence,
    ForceRelease,
    Validate,
    Destroy,
    Describe,
    IdempotentRetry,
    BadInput,
    Limits,
    /// Many sessions, random operations and timing, a fenced resource.
    Randomized,
}

impl Case {
    /// Every case, in the order `run_all` runs them.
    pub const ALL: [Case; 21] = [
        Case::Exclusion,
        Case::RwSharing,
        Case::ReaderBatches,
        Case::WriterNotStarved,
        Case::Fifo,
        Case::TryLock,
        Case::WaitTimeout,
        Case::AcquireWaiting,
        Case::CancelDequeues,
        Case::LeaseExpiryGrantsNext,
        Case::Extend,
        Case::SessionExpiryReleasesAll,
        Case::StealBumpsFence,
        Case::ForceRelease,
        Case::Validate,
        Case::Destroy,
        Case::Describe,
        Case::IdempotentRetry,
        Case::BadInput,
        Case::Limits,
        Case::Randomized,
    ];

    /// The case's name, as in reports and test names.
    pub fn name(self) -> &'static str {
        match self {
            Case::Exclusion => "exclusion",
            Case::RwSharing => "rw_sharing",
            Case::ReaderBatches => "reader_batches",
            Case::WriterNotStarved => "writer_not_starved",
            Case::Fifo => "fifo",
            Case::TryLock => "try_lock",
            Case::WaitTimeout => "wait_timeout",
            Case::AcquireWaiting => "acquire_waiting",
            Case::CancelDequeues => "cancel_dequeues",
            Case::LeaseExpiryGrantsNext => "lease_expiry_grants_next",
            Case::Extend => "extend",
            Case::SessionExpiryReleasesAll => "session_expiry_releases_all",
            Case::StealBumpsFence => "steal_bumps_fence",
            Case::ForceRelease => "force_release",
            Case::Validate => "validate",
            Case::Destroy => "destroy",
            Case::Describe => "describe",
            Case::IdempotentRetry => "idempotent_retry",
            Case::BadInput => "bad_input",
            Case::Limits => "limits",
            Case::Randomized => "randomized",
        }
    }

    /// The limits the case's backend must enforce.
    pub fn limits(self) -> Limits {
        match self {
            Case::Limits => cases::input::LIMITS.clone(),
            _ => Limits::default(),
        }
    }
}

/// Why a case failed.
#[derive(Debug, Clone)]
pub struct Failure {
    pub case: Case,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "case `{}` failed: {}", self.case.name(), self.message)
    }
}

impl std::error::Error for Failure {}

/// Outcome of [`run_all`].
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub passed: Vec<Case>,
    pub failed: Vec<Failure>,
}

impl Report {
    /// True when every case passed.
    pub fn passed(&self) -> bool {
        self.failed.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} passed, {} failed",
            self.passed.len(),
            self.failed.len()
        )?;
        for failure in &self.failed {
            writeln!(f, "  {failure}")?;
        }
        Ok(())
    }
}

/// Runs every case in [`Case::ALL`], one after the other, each on a backend
/// from `make(case.limits())`.
pub async fn run_all<F, Fut, B>(config: &Config, make: F) -> Report
where
    F: Fn(Limits) -> Fut,
    Fut: Future<Output = Result<B, Error>>,
    B: Backend,
{
    let mut report = Report::default();
    for case in Case::ALL {
        match run_case(case, config, &make).await {
            Ok(()) => report.passed.push(case),
            Err(failure) => report.failed.push(failure),
        }
    }
    report
}

/// Runs one case on a backend from `make(case.limits())`.
pub async fn run_case<F, Fut, B>(case: Case, config: &Config, make: F) -> Result<(), Failure>
where
    F: Fn(Limits) -> Fut,
    Fut: Future<Output = Result<B, Error>>,
    B: Backend,
{
    let fail = |message: String| Failure { case, message };
    let backend = make(case.limits())
        .await
        .map_err(|e| fail(format!("building the backend failed: {e}")))?;
    let ctx = Ctx::new(Arc::new(backend), case, config.clone());
    let limit = config.unit * u32::try_from(config.case_timeout_units).unwrap_or(u32::MAX);
    let result = match tokio::time::timeout(limit, cases::run(case, &ctx)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "did not finish within {limit:?} (a lost wake-up or a hung backend?)"
        )),
    };
    ctx.close_sessions().await;
    result.map_err(fail)
}
