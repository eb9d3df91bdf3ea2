//! Unnamed-statement helpers that own their parameter list, so several can
//! be pipelined on one connection (each sends its messages on first poll).

use futures_util::{pin_mut, TryStreamExt};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Error, Row};

/// A parameter with its explicit type (no prepare round trip is needed).
pub(crate) type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// Runs `sql` and returns its rows.
pub(crate) async fn query(
    client: &Client,
    sql: &str,
    params: Vec<Param<'_>>,
) -> Result<Vec<Row>, Error> {
    client
        .query_typed_raw(sql, params)
        .await?
        .try_collect()
        .await
}

/// Runs `sql` and returns how many rows it changed.
pub(crate) async fn execute(
    client: &Client,
    sql: &str,
    params: Vec<Param<'_>>,
) -> Result<u64, Error> {
    let stream = client.query_typed_raw(sql, params).await?;
    pin_mut!(stream);
    while stream.try_next().await?.is_some() {}
    Ok(stream.rows_affected().unwrap_or(0))
}
