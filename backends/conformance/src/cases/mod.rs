//! The named cases, grouped by theme. Each returns `Err(message)` on the first
//! broken rule.

mod admin;
mod basic;
pub(crate) mod input;
mod time;

use crate::ctx::{Check, Ctx};
use crate::Case;

pub(crate) async fn run(case: Case, cx: &Ctx) -> Check {
    match case {
        Case::Exclusion => basic::exclusion(cx).await,
        Case::RwSharing => basic::rw_sharing(cx).await,
        Case::ReaderBatches => basic::reader_batches(cx).await,
        Case::WriterNotStarved => basic::writer_not_starved(cx).await,
        Case::Fifo => basic::fifo(cx).await,
        Case::TryLock => basic::try_lock(cx).await,
        Case::WaitTimeout => time::wait_timeout(cx).await,
        Case::AcquireWaiting => time::acquire_waiting(cx).await,
        Case::CancelDequeues => basic::cancel_dequeues(cx).await,
        Case::LeaseExpiryGrantsNext => time::lease_expiry_grants_next(cx).await,
        Case::Extend => time::extend(cx).await,
        Case::SessionExpiryReleasesAll => time::session_expiry_releases_all(cx).await,
        Case::StealBumpsFence => admin::steal(cx).await,
        Case::ForceRelease => admin::force_release(cx).await,
        Case::Validate => admin::validate(cx).await,
        Case::Destroy => admin::destroy(cx).await,
        Case::Describe => admin::describe(cx).await,
        Case::IdempotentRetry => input::idempotent_retry(cx).await,
        Case::BadInput => input::bad_input(cx).await,
        Case::Limits => input::limits(cx).await,
        Case::Randomized => crate::random::randomized(cx).await,
    }
}
