//! Every statement the backend sends, with the schema filled in.
//!
//! All run as unnamed statements (`query_typed`: parse, bind and execute in
//! one message group), so nothing lives in the Postgres session between
//! transactions: no prepared statements, no `search_path`, no session
//! advisory locks. That is what makes pgbouncer's transaction mode safe.

/// The database clock in milliseconds. `clock_timestamp()`, not `now()`: the
/// time when the statement runs, not when the transaction began.
pub(crate) const NOW_MS: &str = "floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// The NOTIFY channel of a schema.
pub(crate) fn channel(schema: &str) -> String {
    format!("fencelock_{schema}")
}

pub(crate) struct Sql {
    pub load: String,
    pub store: String,
    pub store_many: String,
    pub notify: String,
    pub open_session: String,
    pub keep_alive: String,
    pub lock_session: String,
    pub locks_of_session: String,
    pub delete_session: String,
    pub due_locks: String,
    pub expired_session_locks: String,
    pub next_deadline: String,
    pub purge_sessions: String,
    pub purge_tombstones: String,
    pub purge_session_requests: String,
    pub session_row: String,
    pub keys_of_session: String,
    pub channel: String,
}

impl Sql {
    pub fn new(s: &str) -> Sql {
        Sql {
            // See the functions in `schema.rs`.
            load: format!("SELECT * FROM {s}.load_key($1, $2, $3, $4, $5, $6)"),
            store: format!(
                "SELECT {s}.store_key($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
                 $14, $15, $16, $17)"
            ),
            store_many: format!(
                "SELECT * FROM {s}.store_many($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
                 $12, $13, $14, $15, $16)"
            ),
            notify: "SELECT pg_notify($1, $2)".into(),
            // $3: the request id (NULL: none). A known id answers its first
            // session (and its TTL, to tell a reused id); else a new session,
            // unless `max_sessions` ($2) live ones exist.
            open_session: format!(
                "WITH c AS (SELECT {NOW_MS} AS now), \
                 prior AS (SELECT session_id, expires_at, ttl_ms FROM {s}.session_requests \
                           WHERE request_id = $3), \
                 live AS (SELECT count(*) AS n FROM (SELECT 1 FROM {s}.sessions, c \
                          WHERE expires_at > c.now LIMIT $2) t), \
                 new AS (INSERT INTO {s}.sessions (id, ttl_ms, expires_at) \
                         SELECT nextval('{s}.session_ids'), $1, c.now + $1 FROM c, live \
                         WHERE live.n < $2 AND NOT EXISTS (SELECT 1 FROM prior) \
                         RETURNING id, expires_at), \
                 remembered AS (INSERT INTO {s}.session_requests \
                         SELECT $3, $1, new.id, new.expires_at, c.now FROM new, c \
                         WHERE $3 IS NOT NULL ON CONFLICT DO NOTHING) \
                 SELECT session_id, expires_at, ttl_ms FROM prior \
                 UNION ALL SELECT id, expires_at, $1 FROM new"
            ),
            keep_alive: format!(
                "WITH c AS (SELECT {NOW_MS} AS now) \
                 UPDATE {s}.sessions SET expires_at = GREATEST(expires_at, c.now + ttl_ms) \
                 FROM c WHERE id = $1 AND expires_at > c.now RETURNING expires_at"
            ),
            lock_session: format!(
                "SELECT {NOW_MS}, expires_at FROM {s}.sessions WHERE id = $1 FOR UPDATE"
            ),
            locks_of_session: format!(
                "SELECT l.namespace, l.name FROM {s}.members m JOIN {s}.locks l \
                 ON l.namespace = m.namespace AND l.name = m.name \
                 WHERE m.session_id = $1 AND l.active @> ARRAY[$1::bigint] \
                 ORDER BY l.namespace, l.name FOR UPDATE OF l"
            ),
            delete_session: format!(
                "WITH gone AS (DELETE FROM {s}.sessions WHERE id = $1) \
                 DELETE FROM {s}.members WHERE session_id = $1"
            ),
            due_locks: format!(
                "SELECT namespace, name FROM {s}.locks WHERE deadline <= {NOW_MS} \
                 ORDER BY deadline LIMIT $1 FOR UPDATE SKIP LOCKED"
            ),
            expired_session_locks: format!(
                "WITH gone AS (SELECT id FROM {s}.sessions WHERE expires_at <= {NOW_MS} \
                     ORDER BY expires_at LIMIT 256) \
                 SELECT l.namespace, l.name FROM {s}.locks l WHERE (l.namespace, l.name) IN (\
                     SELECT m.namespace, m.name FROM {s}.members m \
                     WHERE m.session_id IN (SELECT id FROM gone)) \
                 AND l.active && ARRAY(SELECT id FROM gone) \
                 ORDER BY l.namespace, l.name LIMIT $1 FOR UPDATE OF l SKIP LOCKED"
            ),
            next_deadline: format!(
                "SELECT {NOW_MS}, (SELECT min(deadline) FROM {s}.locks), \
                 (SELECT min(expires_at) FROM {s}.sessions)"
            ),
            purge_sessions: format!(
                "WITH gone AS (DELETE FROM {s}.sessions s WHERE s.id IN (\
                     SELECT id FROM {s}.sessions WHERE expires_at <= {NOW_MS} - $1 \
                     ORDER BY expires_at LIMIT 1000 FOR UPDATE SKIP LOCKED) \
                 AND NOT EXISTS (SELECT 1 FROM {s}.members m JOIN {s}.locks l \
                     ON l.namespace = m.namespace AND l.name = m.name \
                     WHERE m.session_id = s.id AND l.active @> ARRAY[s.id]) \
                 RETURNING s.id), \
                 left_behind AS (DELETE FROM {s}.members m USING gone WHERE m.session_id = gone.id) \
                 SELECT count(*) FROM gone"
            ),
            purge_tombstones: format!(
                "WITH gone AS (\
                     DELETE FROM {s}.locks WHERE (namespace, name) IN (\
                         SELECT namespace, name FROM {s}.locks \
                         WHERE NOT live AND updated_at <= {NOW_MS} - $1 \
                         LIMIT 1000 FOR UPDATE SKIP LOCKED) \
                     AND NOT live RETURNING last_token) \
                 , floor AS (UPDATE {s}.meta SET token_floor = GREATEST(token_floor, \
                     (SELECT coalesce(max(last_token), 0) FROM gone))) \
                 SELECT count(*) FROM gone"
            ),
            purge_session_requests: format!(
                "WITH gone AS (DELETE FROM {s}.session_requests \
                     WHERE created_at <= {NOW_MS} - $1 RETURNING 1) SELECT count(*) FROM gone"
            ),
            session_row: format!(
                "SELECT {NOW_MS}, ttl_ms, expires_at FROM {s}.sessions WHERE id = $1"
            ),
            keys_of_session: format!(
                "SELECT l.namespace, l.name FROM {s}.members m JOIN {s}.locks l \
                 ON l.namespace = m.namespace AND l.name = m.name \
                 WHERE m.session_id = $1 AND l.active @> ARRAY[$1::bigint] \
                 ORDER BY l.namespace, l.name"
            ),
            channel: channel(s),
        }
    }
}
