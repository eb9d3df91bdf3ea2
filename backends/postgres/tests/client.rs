//! The README's example: the client API on the Postgres backend.

use fencelock::Client;
use fencelock_postgres::testkit::{shared_url, unique_schema};
use fencelock_postgres::{PgBackend, PgConfig};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_api_on_postgres() -> Result<(), fencelock::Error> {
    let url = shared_url(); // e.g. "postgres://app@db.internal/app"
    let backend =
        PgBackend::connect(PgConfig::new(url).with_schema(unique_schema("client"))).await?;
    let client = Client::connect(backend.clone()).await?;

    // A guard carries the fencing token; it releases on drop.
    let guard = client.lock("billing", "invoice:42")?.acquire().await?;
    let token = guard.token();
    // Another client (another process, in real life) cannot have it now.
    let other = Client::connect(backend.clone()).await?;
    let blocked = other
        .lock("billing", "invoice:42")?
        .acquire_timeout(Duration::from_millis(200))
        .await;
    assert!(blocked.is_err(), "{blocked:?}");
    guard.release().await?;

    // Scoped form: the closure gets the token, and is stopped if the hold is lost.
    let next = other
        .with_lock("billing", "invoice:42", |t| async move { t })
        .await?;
    assert!(
        next > token,
        "fencing tokens increase: {token:?} then {next:?}"
    );
    client.close().await;
    other.close().await;
    Ok(())
}
