//! The tables, created and upgraded by versioned migrations on start.
//!
//! Migrations run in one transaction under `pg_advisory_xact_lock` (a
//! transaction-scoped lock, so it works through pgbouncer too): when several
//! processes start at once, one migrates and the others wait, then see the
//! new version and do nothing. A database newer than this library is refused.
//!
//! Layout (all in the configured schema):
//! - `meta`: one row; `token_floor` is above every token of a purged tombstone.
//! - `sessions` + sequence `session_ids`: id, TTL, expiry (ms, server clock).
//! - `locks`: one row per key: the core's [`fencelock_core::LockRecord`]
//!   (postcard bytes) plus columns the database needs to find rows:
//!   `active` (sessions holding or waiting; GIN) for closing and expiring
//!   sessions, `known` (every session the record mentions) to load them,
//!   `deadline` (next lease end or wait deadline; indexed) for the sweeper,
//!   `live`/`last_token`/`updated_at` for tombstones.

use crate::error::db_error;
use crate::sql::NOW_MS;
use fencelock::Error;
use tokio_postgres::Client;

/// Version this library writes; `migrate` brings older schemas up to it.
pub const SCHEMA_VERSION: i32 = 3;

/// Migration `i` brings the schema from version `i` to `i + 1`.
fn migrations(s: &str) -> Vec<String> {
    let now = NOW_MS;
    let channel = crate::sql::channel(s);
    let sessions_of = |col: &str| {
        format!(
            "ARRAY(SELECT x.{col} FROM {s}.sessions x \
             WHERE x.id = ANY(coalesce(l.known, '{{}}') || p_extra) ORDER BY x.id)"
        )
    };
    let (ids, ttls, expiries) = (
        sessions_of("id"),
        sessions_of("ttl_ms"),
        sessions_of("expires_at"),
    );
    vec![
        format!(
            "CREATE TABLE {s}.meta (
             id smallint PRIMARY KEY CHECK (id = 1),
             token_floor bigint NOT NULL);
         INSERT INTO {s}.meta VALUES (1, 0);
         CREATE SEQUENCE {s}.session_ids;
         CREATE TABLE {s}.sessions (
             id bigint PRIMARY KEY,
             ttl_ms bigint NOT NULL,
             expires_at bigint NOT NULL);
         CREATE INDEX sessions_expiry ON {s}.sessions (expires_at);
         -- Request ids of OpenSession, so a retry returns the first session.
         CREATE TABLE {s}.session_requests (
             request_id bigint PRIMARY KEY,
             ttl_ms bigint NOT NULL,
             session_id bigint NOT NULL,
             expires_at bigint NOT NULL,
             created_at bigint NOT NULL);
         CREATE INDEX session_requests_age ON {s}.session_requests (created_at);
         CREATE TABLE {s}.locks (
             namespace text NOT NULL,
             name text NOT NULL,
             record bytea NOT NULL,
             live boolean NOT NULL,
             active bigint[] NOT NULL,
             known bigint[] NOT NULL,
             deadline bigint,
             last_token bigint NOT NULL,
             updated_at bigint NOT NULL,
             version bigint NOT NULL DEFAULT 0,
             PRIMARY KEY (namespace, name));
         CREATE INDEX locks_deadline ON {s}.locks (deadline) WHERE deadline IS NOT NULL;
         CREATE INDEX locks_active ON {s}.locks USING gin (active) WITH (fastupdate = off);
         CREATE INDEX locks_tombstones ON {s}.locks (updated_at) WHERE NOT live;

         -- Round trip 1 of a command, in one call: the session share lock
         -- (p_share), the row lock (p_lock), then in one fresh snapshot the
         -- clock, the token floor, the record, the rows of every session it
         -- mentions plus p_extra, and how many other keys p_count_for holds
         -- or waits for. A function, so its plans are cached server-side
         -- without any client-visible session state (pgbouncer-safe).
         CREATE FUNCTION {s}.load_key(p_ns text, p_name text, p_extra bigint[],
                                      p_share bigint, p_lock boolean, p_count_for bigint)
         RETURNS TABLE (now bigint, token_floor bigint, record bytea, sid bigint[],
                        sttl bigint[], sexp bigint[], others bigint, version bigint)
         LANGUAGE plpgsql VOLATILE AS $fn$
         BEGIN
             IF p_share IS NOT NULL THEN
                 PERFORM 1 FROM {s}.sessions WHERE id = p_share FOR KEY SHARE;
             END IF;
             IF p_lock THEN
                 PERFORM 1 FROM {s}.locks WHERE namespace = p_ns AND name = p_name FOR UPDATE;
             END IF;
             RETURN QUERY
             SELECT {now}, (SELECT m.token_floor FROM {s}.meta m), l.record,
                    {ids}, {ttls}, {expiries},
                    CASE WHEN p_count_for IS NULL THEN 0::bigint ELSE (
                        SELECT count(*) FROM {s}.locks o WHERE o.active @> ARRAY[p_count_for]
                        AND NOT (o.namespace = p_ns AND o.name = p_name)) END,
                    l.version
             FROM (VALUES (1)) AS one (x)
             LEFT JOIN {s}.locks l ON l.namespace = p_ns AND l.name = p_name;
         END $fn$;

         -- Round trip 2: write the row back and notify. A new key is an
         -- insert (0 rows: another transaction created it first). With
         -- p_expected, the update happens only if the row is still at that
         -- version (0 rows: it changed since it was read; read again). With
         -- p_share, the session row is share-locked first (-1: it is gone).
         CREATE FUNCTION {s}.store_key(p_ns text, p_name text, p_insert boolean, p_record bytea,
                                       p_live boolean, p_active bigint[], p_known bigint[],
                                       p_deadline bigint, p_last_token bigint, p_updated_at bigint,
                                       p_notify text, p_expected bigint, p_share bigint)
         RETURNS bigint LANGUAGE plpgsql VOLATILE AS $fn$
         DECLARE n bigint;
         BEGIN
             IF p_share IS NOT NULL THEN
                 PERFORM 1 FROM {s}.sessions WHERE id = p_share FOR KEY SHARE;
                 IF NOT FOUND THEN
                     RETURN -1;
                 END IF;
             END IF;
             IF p_insert THEN
                 INSERT INTO {s}.locks (namespace, name, record, live, active, known,
                                        deadline, last_token, updated_at)
                 VALUES (p_ns, p_name, p_record, p_live, p_active, p_known,
                         p_deadline, p_last_token, p_updated_at)
                 ON CONFLICT DO NOTHING;
             ELSE
                 UPDATE {s}.locks SET record = p_record, live = p_live, active = p_active,
                        known = p_known, deadline = p_deadline, last_token = p_last_token,
                        updated_at = p_updated_at, version = version + 1
                 WHERE namespace = p_ns AND name = p_name
                   AND (p_expected IS NULL OR version = p_expected);
             END IF;
             GET DIAGNOSTICS n = ROW_COUNT;
             IF n = 1 AND p_notify IS NOT NULL THEN
                 PERFORM pg_notify('{channel}', p_notify);
             END IF;
             RETURN n;
         END $fn$;"
        ),
        // 2: `store_key` can check the server clock against the `now` a client
        // estimated (`p_now`; see `known.rs`): -2 when it is before the estimate,
        // more than `p_lag` after it, or at/after `p_until`. Both functions
        // share-lock a list of session rows (a transaction may carry several
        // commands; see `combine.rs`), in id order.
        //
        // And updates of a lock row become HOT (no index touched, no dead
        // index entries to step over): a session's keys are found through
        // `members` (a row per session and key whose record mentions it,
        // added when the session first appears in the record, deleted with
        // the session) instead of a GIN index on `active`, which changed on
        // every acquire and release; tombstones are indexed by `live` alone,
        // not by `updated_at`; pages keep room for new row versions. The
        // functions always use generic plans: their statements look a row up
        // by primary key, and re-planning them per call cost more than
        // running them.
        format!(
            "DROP FUNCTION {s}.store_key(text, text, boolean, bytea, boolean, bigint[], bigint[],
                                     bigint, bigint, bigint, text, bigint, bigint);
         DROP FUNCTION {s}.load_key(text, text, bigint[], bigint, boolean, bigint);
         CREATE TABLE {s}.members (
             session_id bigint NOT NULL,
             namespace text NOT NULL,
             name text NOT NULL,
             PRIMARY KEY (session_id, namespace, name));
         INSERT INTO {s}.members SELECT DISTINCT unnest(known), namespace, name FROM {s}.locks;
         DROP INDEX {s}.locks_active;
         DROP INDEX {s}.locks_tombstones;
         CREATE INDEX locks_tombstones ON {s}.locks (live) WHERE NOT live;
         ALTER TABLE {s}.locks SET (fillfactor = 70);
         CREATE FUNCTION {s}.load_key(p_ns text, p_name text, p_extra bigint[],
                                      p_share bigint[], p_lock boolean, p_count_for bigint)
         RETURNS TABLE (now bigint, token_floor bigint, record bytea, sid bigint[],
                        sttl bigint[], sexp bigint[], others bigint, version bigint)
         LANGUAGE plpgsql VOLATILE SET plan_cache_mode = force_generic_plan AS $fn$
         BEGIN
             IF p_share IS NOT NULL THEN
                 PERFORM 1 FROM {s}.sessions WHERE id = ANY(p_share) ORDER BY id FOR KEY SHARE;
             END IF;
             IF p_lock THEN
                 PERFORM 1 FROM {s}.locks WHERE namespace = p_ns AND name = p_name FOR UPDATE;
             END IF;
             RETURN QUERY
             SELECT {now}, (SELECT m.token_floor FROM {s}.meta m), l.record,
                    {ids}, {ttls}, {expiries},
                    CASE WHEN p_count_for IS NULL THEN 0::bigint ELSE (
                        SELECT count(*) FROM {s}.members m JOIN {s}.locks o
                            ON o.namespace = m.namespace AND o.name = m.name
                        WHERE m.session_id = p_count_for AND o.active @> ARRAY[p_count_for]
                        AND NOT (o.namespace = p_ns AND o.name = p_name)) END,
                    l.version
             FROM (VALUES (1)) AS one (x)
             LEFT JOIN {s}.locks l ON l.namespace = p_ns AND l.name = p_name;
         END $fn$;

         CREATE FUNCTION {s}.store_key(p_ns text, p_name text, p_insert boolean, p_record bytea,
                                       p_live boolean, p_active bigint[], p_known bigint[],
                                       p_deadline bigint, p_last_token bigint, p_updated_at bigint,
                                       p_notify text, p_expected bigint, p_share bigint[],
                                       p_now bigint, p_until bigint, p_lag bigint,
                                       p_join bigint[])
         RETURNS bigint LANGUAGE plpgsql VOLATILE
         SET plan_cache_mode = force_generic_plan AS $fn$
         DECLARE n bigint; c bigint;
         BEGIN
             IF p_now IS NOT NULL THEN
                 c := {now};
                 IF c < p_now OR c - p_now > p_lag OR c >= p_until THEN
                     RETURN -2;
                 END IF;
             END IF;
             IF p_share IS NOT NULL THEN
                 PERFORM 1 FROM {s}.sessions WHERE id = ANY(p_share) ORDER BY id FOR KEY SHARE;
                 GET DIAGNOSTICS n = ROW_COUNT;
                 IF n < cardinality(p_share) THEN
                     RETURN -1;
                 END IF;
             END IF;
             IF p_insert THEN
                 INSERT INTO {s}.locks (namespace, name, record, live, active, known,
                                        deadline, last_token, updated_at)
                 VALUES (p_ns, p_name, p_record, p_live, p_active, p_known,
                         p_deadline, p_last_token, p_updated_at)
                 ON CONFLICT DO NOTHING;
             ELSE
                 UPDATE {s}.locks SET record = p_record, live = p_live, active = p_active,
                        known = p_known, deadline = p_deadline, last_token = p_last_token,
                        updated_at = p_updated_at, version = version + 1
                 WHERE namespace = p_ns AND name = p_name
                   AND (p_expected IS NULL OR version = p_expected);
             END IF;
             GET DIAGNOSTICS n = ROW_COUNT;
             IF n = 1 AND p_join IS NOT NULL THEN
                 INSERT INTO {s}.members SELECT j, p_ns, p_name FROM unnest(p_join) AS j
                 ON CONFLICT DO NOTHING;
             END IF;
             IF n = 1 AND p_notify IS NOT NULL THEN
                 PERFORM pg_notify('{channel}', p_notify);
             END IF;
             RETURN n;
         END $fn$;"
        ),
        // 3: `store_many`: the one-round-trip writes of several keys (see
        // `batch.rs`) in one statement: one executor run, one commit for all.
        // Per write (the arrays' i-th elements) the same checks as
        // `store_key` with `p_now`/`p_expected` set: the server clock within
        // [est, est + lag] and before `upto`, every session in `share` still
        // there (share-locked), the row still at `expected`. Returns the
        // ordinals (1-based) of the writes that were made. The per-row
        // bigint arrays come as array literals in text (SQL arrays cannot be
        // ragged).
        format!(
            "CREATE FUNCTION {s}.store_many(p_ns text[], p_name text[], p_record bytea[],
                                        p_live boolean[], p_active text[], p_known text[],
                                        p_deadline bigint[], p_last_token bigint[],
                                        p_updated_at bigint[], p_notify text[],
                                        p_expected bigint[], p_share text[], p_est bigint[],
                                        p_upto bigint[], p_join text[], p_lag bigint)
         RETURNS SETOF bigint LANGUAGE plpgsql VOLATILE
         SET plan_cache_mode = force_generic_plan AS $fn$
         BEGIN
             RETURN QUERY
             WITH u AS (
                 SELECT * FROM unnest(p_ns, p_name, p_record, p_live, p_active, p_known,
                                      p_deadline, p_last_token, p_updated_at, p_notify,
                                      p_expected, p_share, p_est, p_upto, p_join)
                     WITH ORDINALITY AS u(ns, name, record, live, active, known, deadline,
                                          last_token, updated_at, notify, expected, share,
                                          est, upto, joins, i)
             ), c AS (SELECT {now} AS now),
             timely AS (
                 SELECT u.* FROM u, c
                 WHERE c.now >= u.est AND c.now - u.est <= p_lag AND c.now < u.upto
             ),
             locked AS (
                 SELECT x.id FROM {s}.sessions x
                 WHERE x.id IN (SELECT unnest(t.share::bigint[]) FROM timely t)
                 ORDER BY x.id FOR KEY SHARE
             ),
             ready AS (
                 SELECT t.* FROM timely t
                 WHERE t.share IS NULL
                    OR NOT EXISTS (SELECT 1 FROM unnest(t.share::bigint[]) AS w(id)
                                   WHERE w.id NOT IN (SELECT k.id FROM locked k))
             ),
             done AS (
                 UPDATE {s}.locks l SET record = r.record, live = r.live,
                        active = r.active::bigint[], known = r.known::bigint[],
                        deadline = r.deadline, last_token = r.last_token,
                        updated_at = r.updated_at, version = l.version + 1
                 FROM ready r
                 WHERE l.namespace = r.ns AND l.name = r.name AND l.version = r.expected
                 RETURNING r.i, r.ns, r.name, r.notify, r.joins
             ),
             joined AS (
                 INSERT INTO {s}.members
                 SELECT j, d.ns, d.name FROM done d, unnest(d.joins::bigint[]) AS j
                 ON CONFLICT DO NOTHING
             ),
             told AS (
                 SELECT pg_notify('{channel}', d.notify) FROM done d WHERE d.notify IS NOT NULL
             )
             SELECT d.i FROM done d WHERE (SELECT count(*) FROM told) >= 0;
         END $fn$;"
        ),
    ]
}

/// Creates the schema or upgrades it to [`SCHEMA_VERSION`].
pub(crate) async fn migrate(client: &mut Client, schema: &str) -> Result<(), Error> {
    migrate_to(client, schema, SCHEMA_VERSION).await
}

/// Creates the schema or upgrades it to `target` (≤ [`SCHEMA_VERSION`]).
pub(crate) async fn migrate_to(
    client: &mut Client,
    schema: &str,
    target: i32,
) -> Result<(), Error> {
    let tx = client.transaction().await.map_err(db_error)?;
    let lock_name = format!("fencelock migrate {schema}");
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&lock_name])
        .await
        .map_err(db_error)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.schema_version (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now());"
    ))
    .await
    .map_err(db_error)?;
    let row = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {schema}.schema_version"),
            &[],
        )
        .await
        .map_err(db_error)?;
    let current: i32 = row.get(0);
    if current > SCHEMA_VERSION {
        return Err(Error::backend(format!(
            "schema `{schema}` is at version {current}, newer than this library's \
             {SCHEMA_VERSION}; upgrade fencelock-postgres"
        )));
    }
    let upgrades = migrations(schema);
    let wanted = upgrades.iter().take(target.max(0) as usize);
    for (from, sql) in wanted.enumerate().skip(current as usize) {
        tx.batch_execute(sql).await.map_err(db_error)?;
        let to = from as i32 + 1;
        tx.execute(
            &format!("INSERT INTO {schema}.schema_version (version) VALUES ($1)"),
            &[&to],
        )
        .await
        .map_err(db_error)?;
    }
    tx.commit().await.map_err(db_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_migration_per_version() {
        assert_eq!(migrations("x").len(), SCHEMA_VERSION as usize);
    }
}
