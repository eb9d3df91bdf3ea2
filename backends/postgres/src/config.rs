//! How to reach the database and how the backend behaves: [`PgConfig`].

use fencelock::Limits;
use std::time::Duration;

/// Settings of a [`crate::PgBackend`]. Build with [`PgConfig::new`] and the
/// `with_*` methods; every field has a working default.
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// libpq-style URL or key=value string, e.g.
    /// `postgres://app@db.internal:5432/app` (may point at pgbouncer in
    /// transaction mode).
    pub url: String,
    /// URL for the one LISTEN connection, which must reach Postgres itself
    /// (LISTEN does not work through pgbouncer in transaction mode). `None`:
    /// use `url`. If LISTEN fails, waiters fall back to timed re-checks.
    pub listen_url: Option<String>,
    /// The Postgres schema holding fencelock's tables (created if missing).
    /// Lower-case letters, digits and `_`, starting with a letter or `_`, at most 48 bytes.
    pub schema: String,
    /// Most pooled connections.
    pub pool_size: usize,
    /// Most transactions of one-round-trip writes (commands applied to a
    /// key as this process last saw it) in flight at once; writes beyond
    /// share the next transaction, so under load many commands pay for one
    /// statement and one commit. A lone write never waits. Within this
    /// limit, one transaction may be in flight per millisecond its round
    /// trips take: quick ones (CPU-bound) are better followed by one bigger
    /// batch, slow ones (waiting for the disk) better overlapped. Default 4.
    pub write_transactions: usize,
    /// Longest wait for a pooled connection or a new one before `Unavailable`.
    pub connect_timeout: Duration,
    /// Limits the core enforces (per lock and per session on one lock; see
    /// the crate docs for which global limits are not enforced).
    pub limits: Limits,
    /// A waiter re-reads its lock at least this often, so a lost NOTIFY
    /// delays a grant by at most this long (plus one round trip).
    pub recheck_interval: Duration,
    /// The sweeper looks for due leases, waits and sessions at least this
    /// often (sooner when this process itself creates an earlier deadline).
    pub sweep_interval: Duration,
    /// Expired session rows are deleted this long after their expiry (once no
    /// lock refers to them).
    pub session_grace: Duration,
    /// Destroyed keys keep a tombstone row this long, so a waiter that asks
    /// late still learns its wait ended with `Destroyed`; then the row is
    /// deleted and the token floor raised above its last token.
    pub tombstone_ttl: Duration,
    /// Whether this process runs a sweeper. At least one live process per
    /// database should; every process by default.
    pub run_sweeper: bool,
}

impl PgConfig {
    /// Defaults for `url`: schema `fencelock`, 16 connections, 250 ms re-check.
    pub fn new(url: impl Into<String>) -> Self {
        PgConfig {
            url: url.into(),
            listen_url: None,
            schema: "fencelock".into(),
            pool_size: 16,
            write_transactions: 4,
            connect_timeout: Duration::from_secs(5),
            limits: Limits::default(),
            recheck_interval: Duration::from_millis(250),
            sweep_interval: Duration::from_millis(250),
            session_grace: Duration::from_secs(60),
            tombstone_ttl: Duration::from_secs(600),
            run_sweeper: true,
        }
    }

    /// Uses another Postgres schema (several independent lock spaces per database).
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Sets the pool size.
    pub fn with_pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// Sets how many one-round-trip write transactions may be in flight.
    pub fn with_write_transactions(mut self, n: usize) -> Self {
        self.write_transactions = n;
        self
    }

    /// Sets the core's limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the LISTEN connection's URL (when `url` points at pgbouncer).
    pub fn with_listen_url(mut self, url: impl Into<String>) -> Self {
        self.listen_url = Some(url.into());
        self
    }

    /// Sets the waiters' re-check interval.
    pub fn with_recheck_interval(mut self, every: Duration) -> Self {
        self.recheck_interval = every;
        self
    }
}

/// Checks a schema name; the error says why (it is put in SQL as an identifier).
pub(crate) fn check_schema(schema: &str) -> Result<(), String> {
    let mut chars = schema.chars();
    let Some(first) = chars.next() else {
        return Err("must not be empty".into());
    };
    if schema.len() > 48 {
        return Err(format!("is {} bytes long; the limit is 48", schema.len()));
    }
    if !(first.is_ascii_lowercase() || first == '_') {
        return Err("must start with a lower-case letter or `_`".into());
    }
    if let Some(bad) = schema
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Err(format!(
            "contains {bad:?}; only lower-case letters, digits and `_` are allowed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_checked() {
        assert!(check_schema("fencelock").is_ok());
        assert!(check_schema("_t_12_x").is_ok());
        assert!(check_schema("").unwrap_err().contains("empty"));
        assert!(check_schema("Locks").unwrap_err().contains("lower-case"));
        assert!(check_schema("a;drop").unwrap_err().contains("';'"));
        assert!(check_schema(&"a".repeat(49)).unwrap_err().contains("48"));
    }
}
