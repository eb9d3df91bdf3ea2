//! Session commands: open, keep-alive, close, describe.
//!
//! A session is a row (id, TTL, expiry on the server clock). Open and
//! keep-alive touch only that row (one statement, one round trip). Close
//! locks the row, then every lock the session holds or waits for (found
//! through the GIN index on `active`, locked in key order so two closes
//! cannot deadlock), ends the session on each with the core, and deletes the
//! row — all in one transaction, so its holds and waits end together.

use crate::error::{corrupt, db_error};
use crate::notify::Change;
use crate::store::{session_param, to_i64, Selection, Store};
use fencelock::Error;
use fencelock_core::{
    check_open_session, Command, LockError, LockKey, Millis, RequestId, Response, SessionId,
    SessionInfo,
};
use futures_util::future::try_join_all;
use std::sync::Arc;
use tokio_postgres::types::Type;

impl Store {
    /// Opens a session. With a request id, a retry answers the first session
    /// (ids are remembered for an hour; the core remembers the newest 4096).
    pub async fn open_session(
        &self,
        ttl_ms: u64,
        request_id: Option<RequestId>,
    ) -> Result<Response, Error> {
        check_open_session(&self.limits, ttl_ms)?;
        let ttl = to_i64(ttl_ms, "ttl_ms")?;
        let max = i64::try_from(self.limits.max_sessions).unwrap_or(i64::MAX);
        // Request ids are random 64-bit values: stored bit for bit.
        let rid = request_id.map(|r| i64::from_ne_bytes(r.0.to_ne_bytes()));
        let client = self.client().await?;
        let rows = crate::pg::query(
            &client,
            &self.sql.open_session,
            vec![(&ttl, Type::INT8), (&max, Type::INT8), (&rid, Type::INT8)],
        )
        .await
        .map_err(db_error)?;
        let Some(row) = rows.first() else {
            return Err(LockError::ResourceExhausted {
                limit: "max_sessions".into(),
                max: self.limits.max_sessions,
            }
            .into());
        };
        let (id, expires_at, first_ttl): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        if first_ttl != ttl {
            return Err(LockError::InvalidArgument {
                field: "request_id".into(),
                reason: format!(
                    "{} was already used to open a session with ttl_ms {first_ttl}; \
                     pick a fresh random id for every session-less request",
                    request_id.map_or(0, |r| r.0)
                ),
            }
            .into());
        }
        Ok(Response::SessionOpened {
            session: SessionId(u64::try_from(id).map_err(corrupt)?),
            expires_at: u64::try_from(expires_at).map_err(corrupt)?,
        })
    }

    pub async fn keep_alive(&self, session: SessionId) -> Result<Response, Error> {
        let id = session_param(session);
        let client = self.client().await?;
        let rows = crate::pg::query(&client, &self.sql.keep_alive, vec![(&id, Type::INT8)])
            .await
            .map_err(db_error)?;
        match rows.first() {
            Some(row) => Ok(Response::KeptAlive {
                expires_at: u64::try_from(row.get::<_, i64>(0)).map_err(corrupt)?,
            }),
            None => Err(LockError::SessionNotFound { session }.into()),
        }
    }

    /// Closes the session; returns the answer and the events per key.
    pub async fn close_session(
        &self,
        session: SessionId,
    ) -> Result<(Response, Vec<Arc<Change>>), Error> {
        let id = session_param(session);
        let batch = self
            .apply_selected(
                Some(session),
                Selection {
                    sql: &self.sql.locks_of_session,
                    param: id,
                },
                &Command::CloseSession { session },
                true,
            )
            .await?;
        // Every key answers the same (the session's row is the same for all).
        let answer = match (batch.applied.first(), batch.session) {
            (Some(a), _) => a.outcome.clone(),
            (None, Some((now, Some(expires_at)))) if expires_at > now => {
                Ok(Response::SessionClosed)
            }
            _ => Err(LockError::SessionNotFound { session }),
        };
        let changes = batch.applied.into_iter().filter_map(|a| a.change).collect();
        Ok((answer?, changes))
    }

    pub async fn describe_session(&self, session: SessionId) -> Result<Option<SessionInfo>, Error> {
        let id = session_param(session);
        let client = self.client().await?;
        let (row, keys) = tokio::try_join!(
            crate::pg::query(&client, &self.sql.session_row, vec![(&id, Type::INT8)]),
            crate::pg::query(&client, &self.sql.keys_of_session, vec![(&id, Type::INT8)]),
        )
        .map_err(db_error)?;
        drop(client);
        let Some(row) = row.first() else {
            return Ok(None);
        };
        let (now, ttl, expires_at): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        let (now, expires_at): (Millis, Millis) = (
            u64::try_from(now).map_err(corrupt)?,
            u64::try_from(expires_at).map_err(corrupt)?,
        );
        if expires_at <= now {
            return Ok(None);
        }
        let mut keys_parsed = Vec::with_capacity(keys.len());
        for r in &keys {
            keys_parsed.push(LockKey::new(r.get(0), r.get(1)).map_err(corrupt)?);
        }
        let me = [session];
        let loaded = try_join_all(keys_parsed.iter().map(|k| self.read(k, &me))).await?;
        let mut info = SessionInfo {
            session,
            ttl_ms: u64::try_from(ttl).map_err(corrupt)?,
            expires_at,
            holds: Vec::new(),
            waits: Vec::new(),
        };
        for mut l in loaded {
            let now = l.now;
            l.view.tick(now, &mut Vec::new());
            match l.view.session_part(session) {
                (Some(token), _) => info.holds.push((l.key, token)),
                (None, true) => info.waits.push(l.key),
                (None, false) => {}
            }
        }
        info.holds.sort();
        info.waits.sort();
        Ok(Some(info))
    }
}
