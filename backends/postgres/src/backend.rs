//! [`PgBackend`]: the [`Backend`] trait over [`Store`], with the LISTEN task
//! and the sweeper.

use crate::config::{check_schema, PgConfig};
use crate::error::db_error;
use crate::known::KnownKeys;
use crate::notify::{listen, next_wake, Wake};
use crate::sql::Sql;
use crate::store::{Acting, Applied, Item, Loaded, Store};
use crate::sweep::{self, Alarm};
use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use fencelock::{Backend, Error, LockError, WaitStatus};
use fencelock_core::{
    Command, FencingToken, HolderInfo, LockInfo, LockKey, RequestId, Response, SessionId,
    SessionInfo, WaitEnd, WaitOutcome, WaitView,
};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_postgres::NoTls;

/// Locks stored in PostgreSQL. Clones share one pool, one LISTEN connection
/// and one sweeper; they stop when the last clone is dropped.
///
/// Must be created inside a Tokio runtime (it spawns its two tasks).
#[derive(Clone)]
pub struct PgBackend {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    hub: broadcast::Sender<Wake>,
    alarm: Arc<Alarm>,
    shutdown: watch::Sender<bool>,
    recheck: Duration,
    keep: sweep::Retention,
    schema: String,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> Error {
    LockError::InvalidArgument {
        field: field.into(),
        reason: reason.into(),
    }
    .into()
}

impl PgBackend {
    /// Connects, runs the schema migrations, starts the LISTEN task and the
    /// sweeper. A bad URL or schema name is `InvalidArgument` naming the
    /// field; an unreachable database is `Unavailable`.
    pub async fn connect(config: PgConfig) -> Result<PgBackend, Error> {
        check_schema(&config.schema).map_err(|why| invalid("schema", why))?;
        if config.pool_size == 0 {
            return Err(invalid("pool_size", "must be at least 1"));
        }
        if config.write_transactions == 0 {
            return Err(invalid("write_transactions", "must be at least 1"));
        }
        let pg = tokio_postgres::Config::from_str(&config.url)
            .map_err(|e| invalid("url", format!("not a Postgres URL: {e}")))?;
        let listen_url = config.listen_url.clone().unwrap_or(config.url.clone());
        tokio_postgres::Config::from_str(&listen_url)
            .map_err(|e| invalid("listen_url", format!("not a Postgres URL: {e}")))?;
        let manager = Manager::from_config(
            pg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.connect_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .build()
            .map_err(|e| Error::backend(format!("building the pool: {e}")))?;
        {
            let (mut client, connection) =
                tokio::time::timeout(config.connect_timeout, pg.connect(NoTls))
                    .await
                    .map_err(|_| Error::unavailable("timed out connecting to postgres"))?
                    .map_err(db_error)?;
            let driver = tokio::spawn(connection);
            let migrated = crate::schema::migrate(&mut client, &config.schema).await;
            drop(client);
            let _ = driver.await;
            migrated?;
        }
        let sql = Sql::new(&config.schema);
        let writes = crate::batch::WriteBatcher::new(pool.clone(), &sql, config.write_transactions);
        let store = Arc::new(Store {
            origin: crate::notify::new_origin(),
            writes,
            pool,
            sql,
            limits: config.limits.clone(),
            known: KnownKeys::new(config.tombstone_ttl),
            combiner: Default::default(),
        });
        let (hub, _) = broadcast::channel(1024);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let alarm = Alarm::new();
        let keep = sweep::Retention {
            session_grace: config.session_grace,
            tombstone_ttl: config.tombstone_ttl,
        };
        tokio::spawn(listen(
            listen_url,
            store.sql.channel.clone(),
            hub.clone(),
            store.clone(),
            shutdown_rx.clone(),
        ));
        if config.run_sweeper {
            tokio::spawn(sweep::run(
                store.clone(),
                hub.clone(),
                alarm.clone(),
                config.sweep_interval,
                keep,
                shutdown_rx,
            ));
        }
        Ok(PgBackend {
            inner: Arc::new(Inner {
                store,
                hub,
                alarm,
                shutdown,
                recheck: config.recheck_interval,
                keep,
                schema: config.schema,
            }),
        })
    }

    /// How often commands were written in one round trip from what this
    /// process remembered of their key, how often that was stale, and how
    /// many shared a transaction with others.
    pub fn stats(&self) -> crate::PgStats {
        crate::PgStats {
            combined: self.inner.store.combiner.shared(),
            batched: self.inner.store.writes.shared(),
            ..self.inner.store.known.stats()
        }
    }

    /// The Postgres schema this backend uses.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// Runs one sweep now (what `Command::Tick` does); returns keys ticked.
    pub async fn sweep(&self) -> Result<usize, Error> {
        sweep::sweep(&self.inner.store, &self.inner.hub).await
    }

    /// Deletes expired sessions no lock refers to (after `session_grace`) and
    /// tombstones older than `tombstone_ttl`, now; the sweeper does this every
    /// few seconds anyway. Returns (sessions, tombstones) deleted.
    pub async fn purge(&self) -> Result<(u64, u64), Error> {
        sweep::purge(&self.inner.store, self.inner.keep).await
    }

    async fn keyed(
        &self,
        key: &LockKey,
        command: &Command,
        request_id: Option<RequestId>,
        acting: Acting,
    ) -> Result<Applied, Error> {
        let item = Item {
            command: command.clone(),
            request_id,
            acting,
        };
        let applied = crate::combine::run(&self.inner.store, key, item).await?;
        self.after_commit(&applied);
        Ok(applied)
    }

    /// Local wake-ups (remote ones come by NOTIFY) and the sweeper's alarm.
    fn after_commit(&self, applied: &Applied) {
        if let Some(change) = &applied.change {
            let _ = self.inner.hub.send(Wake::Key(change.clone()));
        }
        if let Some(at) = applied.loaded.view.deadline() {
            self.inner.alarm.deadline(at);
        }
    }

    /// Reads `key`; if an expiry is due, ticks it first so the answer is
    /// never built on state that a tick would change.
    async fn current(&self, key: &LockKey, extra: &[SessionId]) -> Result<Arc<Loaded>, Error> {
        let loaded = self.inner.store.read(key, extra).await?;
        if loaded.view.next_due().is_some_and(|at| at <= loaded.now) {
            let acting = Acting {
                session: extra.first().copied(),
                share: false,
            };
            let applied = self.keyed(key, &Command::Tick, None, acting).await?;
            return Ok(applied.loaded);
        }
        Ok(Arc::new(loaded))
    }

    /// When to re-read at the latest: the re-check interval, the key's next
    /// expiry (server clock, seen from the read's `now`), or `give_up`.
    fn nap(&self, loaded: &Loaded, give_up: Instant) -> Instant {
        let mut nap = (Instant::now() + self.inner.recheck).min(give_up);
        if let Some(at) = loaded.view.next_due() {
            let due = Duration::from_millis(at.saturating_sub(loaded.now));
            nap = nap.min(Instant::now() + due);
        }
        nap
    }
}

fn wait_status(loaded: &Loaded, session: SessionId) -> WaitStatus {
    match loaded.view.wait_view(session) {
        WaitView::Finished(WaitOutcome::Granted(g)) | WaitView::Holding(g) => {
            WaitStatus::Granted(g)
        }
        WaitView::Finished(WaitOutcome::Ended(why)) => WaitStatus::Ended(why),
        WaitView::Waiting => WaitStatus::Waiting,
        WaitView::Absent if !loaded.session_alive(session) => {
            WaitStatus::Ended(WaitEnd::SessionEnded)
        }
        WaitView::Absent => WaitStatus::NotWaiting,
    }
}

#[async_trait]
impl Backend for PgBackend {
    async fn execute(
        &self,
        command: Command,
        request_id: Option<RequestId>,
    ) -> Result<Response, Error> {
        let store = &self.inner.store;
        let (key, acting) = match &command {
            Command::OpenSession { ttl_ms } => {
                return store.open_session(*ttl_ms, request_id).await
            }
            Command::KeepAlive { session } => return store.keep_alive(*session).await,
            Command::CloseSession { session } => {
                let (response, changes) = store.close_session(*session).await?;
                for change in changes {
                    let _ = self.inner.hub.send(Wake::Key(change));
                }
                return Ok(response);
            }
            Command::Tick => {
                self.sweep().await?;
                return Ok(Response::Ticked);
            }
            Command::CreateLock { key, .. }
            | Command::ForceRelease { key }
            | Command::Destroy { key } => (
                key,
                Acting {
                    session: None,
                    share: false,
                },
            ),
            Command::Acquire { key, session, .. } | Command::Steal { key, session } => (
                key,
                Acting {
                    session: Some(*session),
                    share: true,
                },
            ),
            Command::CancelWait { key, session }
            | Command::Release { key, session, .. }
            | Command::Extend { key, session, .. } => (
                key,
                Acting {
                    session: Some(*session),
                    share: false,
                },
            ),
        };
        let applied = self.keyed(key, &command, request_id, acting).await?;
        Ok(applied.outcome?)
    }

    async fn wait(
        &self,
        key: &LockKey,
        session: SessionId,
        max_wait: Duration,
    ) -> Result<WaitStatus, Error> {
        let give_up = Instant::now() + max_wait;
        // Subscribe before reading, so a wake-up between the read and the
        // sleep is not lost.
        let mut woken = self.inner.hub.subscribe();
        // A waiter this process just queued need not read the row to learn
        // that it waits (see `Store::remembered_waiting`).
        let mut remembered = self.inner.store.remembered_waiting(key, session);
        loop {
            let loaded = match remembered.take() {
                Some(loaded) => Arc::new(loaded),
                None => self.current(key, &[session]).await?,
            };
            let status = wait_status(&loaded, session);
            let now = Instant::now();
            if status != WaitStatus::Waiting || now >= give_up {
                return Ok(status);
            }
            // A grant above every token issued before this read is the grant
            // of this wait (an older one could be a late echo of the last wait).
            let floor = loaded.view.last_token();
            let nap = self.nap(&loaded, give_up);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(nap) => break,
                    change = next_wake(&mut woken, key) => match change {
                        Some(c) => {
                            if let Some(g) = c.grant_for(session).filter(|g| g.token > floor) {
                                return Ok(WaitStatus::Granted(g));
                            }
                            if c.touches(session) {
                                break;
                            }
                        }
                        None => break,
                    },
                }
            }
        }
    }

    async fn watch_hold(
        &self,
        key: &LockKey,
        token: FencingToken,
        max_wait: Duration,
    ) -> Result<HolderInfo, Error> {
        let give_up = Instant::now() + max_wait;
        let mut woken = self.inner.hub.subscribe();
        loop {
            let loaded = self.current(key, &[]).await?;
            let holder = loaded.view.validate(loaded.now, token)?;
            if Instant::now() >= give_up {
                return Ok(holder);
            }
            let nap = self.nap(&loaded, give_up);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(nap) => break,
                    change = next_wake(&mut woken, key) => match change {
                        Some(c) if !c.touches(holder.session) => {}
                        _ => break,
                    },
                }
            }
        }
    }

    async fn validate(&self, key: &LockKey, token: FencingToken) -> Result<HolderInfo, Error> {
        let loaded = self.inner.store.read(key, &[]).await?;
        Ok(loaded.view.validate(loaded.now, token)?)
    }

    async fn describe(&self, key: &LockKey) -> Result<Option<LockInfo>, Error> {
        let mut loaded = self.inner.store.read(key, &[]).await?;
        // Show the state at the server's now (what a tick would make of it).
        let now = loaded.now;
        loaded.view.tick(now, &mut Vec::new());
        Ok(loaded.view.describe())
    }

    async fn describe_session(&self, session: SessionId) -> Result<Option<SessionInfo>, Error> {
        self.inner.store.describe_session(session).await
    }
}
