//! Waking waiters: LISTEN/NOTIFY plus local wake-ups.
//!
//! A transaction that changes things for other clients (a grant, an ended
//! wait, a lost hold) sends `pg_notify(channel, key)`; Postgres delivers it
//! at commit to every process that listens. Each process keeps one LISTEN
//! connection (outside the pool: LISTEN is session state) and broadcasts the
//! keys to its waiters; its own commits are broadcast locally at once.
//!
//! Notifications can be lost (the LISTEN connection drops, the server
//! restarts). Waiters therefore also re-read their lock every
//! `recheck_interval`, and everyone is woken when the LISTEN connection comes
//! back. A lost notification delays a grant by at most `recheck_interval`
//! plus one round trip; it never loses it, because the grant itself is in the
//! database.

use crate::store::Store;
use fencelock::{Event, FencingToken, Grant, LockKey, Mode, SessionId};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio_postgres::{AsyncMessage, NoTls};

/// What a waiter is woken for.
#[derive(Debug, Clone)]
pub(crate) enum Wake {
    /// Something changed for this key.
    Key(Arc<Change>),
    /// Notifications may have been missed: everyone re-checks.
    All,
}

/// What one committed transition did to one key, as far as waiters care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub key: LockKey,
    /// Waiters granted: they can return without reading the row.
    pub grants: Vec<(SessionId, Grant)>,
    /// Sessions whose wait ended or hold was lost (they re-read);
    /// `None`: unknown, everyone interested in the key re-reads.
    pub touched: Option<Vec<SessionId>>,
}

impl Change {
    /// The change `events` describe for `key`; `None` if no one else cares.
    pub fn from_events(key: &LockKey, events: &[Event]) -> Option<Change> {
        let mut change = Change {
            key: key.clone(),
            grants: Vec::new(),
            touched: Some(Vec::new()),
        };
        for event in events {
            match event {
                Event::Granted {
                    key: k,
                    session,
                    grant,
                    ..
                } if k == key => {
                    change.grants.push((*session, *grant));
                }
                Event::WaitEnded {
                    key: k, session, ..
                }
                | Event::HoldLost {
                    key: k, session, ..
                } if k == key => {
                    if let Some(t) = change.touched.as_mut() {
                        t.push(*session);
                    }
                }
                _ => {}
            }
        }
        let quiet =
            change.grants.is_empty() && change.touched.as_ref().is_some_and(|t| t.is_empty());
        (!quiet).then_some(change)
    }

    /// Does this change concern `session`'s wait or hold (beyond a grant)?
    pub fn touches(&self, session: SessionId) -> bool {
        self.touched.as_ref().is_none_or(|t| t.contains(&session))
    }

    /// A grant to `session` in this change, if any.
    pub fn grant_for(&self, session: SessionId) -> Option<Grant> {
        self.grants
            .iter()
            .find(|(s, _)| *s == session)
            .map(|(_, g)| *g)
    }
}

/// Longest NOTIFY payload we send (Postgres allows 8000 bytes); a change
/// that does not fit is sent as its key alone (everyone re-reads).
const MAX_PAYLOAD: usize = 7_000;

/// The NOTIFY payload: `<namespace length>:<namespace><name>`, then one line
/// per grant (`g session token mode granted_at expires_at|-`) and per touched
/// session (`t session`), then the sending process (`o origin`: its own
/// notifications were delivered locally already). Keys have no control
/// characters, so lines are safe.
pub(crate) fn payload(change: &Change, origin: u64) -> String {
    let key = &change.key;
    let mut p = format!(
        "{}:{}{}",
        key.namespace().len(),
        key.namespace(),
        key.name()
    );
    let head = p.len();
    for (s, g) in &change.grants {
        let mode = match g.mode {
            Mode::Exclusive => 'e',
            Mode::Read => 'r',
            Mode::Write => 'w',
        };
        let expires = g.expires_at.map_or("-".to_string(), |e| e.to_string());
        p.push_str(&format!(
            "\ng {} {} {mode} {} {expires}",
            s.0, g.token.0, g.granted_at
        ));
    }
    match &change.touched {
        Some(touched) => {
            for s in touched {
                p.push_str(&format!("\nt {}", s.0));
            }
        }
        None => p.push_str("\n*"),
    }
    if p.len() > MAX_PAYLOAD {
        p.truncate(head);
        p.push_str("\n*");
    }
    p.push_str(&format!("\no {origin}"));
    p
}

/// A number that tells this process's notifications from every other's
/// (random: process ids repeat across hosts).
pub(crate) fn new_origin() -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    std::process::id().hash(&mut h);
    SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .hash(&mut h);
    std::time::SystemTime::now().hash(&mut h);
    h.finish()
}

/// Parses [`payload`]: the change and its sender; `None` for anything else
/// on the channel.
pub(crate) fn parse_payload(p: &str) -> Option<(Change, Option<u64>)> {
    let mut lines = p.split('\n');
    let first = lines.next()?;
    let (len, rest) = first.split_once(':')?;
    let len: usize = len.parse().ok()?;
    let key = LockKey::new(rest.get(..len)?, rest.get(len..)?).ok()?;
    let mut change = Change {
        key,
        grants: Vec::new(),
        touched: Some(Vec::new()),
    };
    let mut origin = None;
    for line in lines {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["g", s, token, mode, at, expires] => {
                let mode = match *mode {
                    "e" => Mode::Exclusive,
                    "r" => Mode::Read,
                    "w" => Mode::Write,
                    _ => return None,
                };
                let grant = Grant {
                    token: FencingToken(token.parse().ok()?),
                    mode,
                    granted_at: at.parse().ok()?,
                    expires_at: match *expires {
                        "-" => None,
                        e => Some(e.parse().ok()?),
                    },
                };
                change.grants.push((SessionId(s.parse().ok()?), grant));
            }
            ["t", s] => {
                if let Some(t) = change.touched.as_mut() {
                    t.push(SessionId(s.parse().ok()?));
                }
            }
            ["*"] => change.touched = None,
            ["o", o] => origin = Some(o.parse().ok()?),
            _ => return None,
        }
    }
    Some((change, origin))
}

/// Waits for the next wake-up that concerns `key`: `Some(change)`, or
/// `None` when everyone must re-check (missed notifications).
pub(crate) async fn next_wake(
    rx: &mut broadcast::Receiver<Wake>,
    key: &LockKey,
) -> Option<Arc<Change>> {
    loop {
        match rx.recv().await {
            Ok(Wake::Key(c)) if c.key == *key => return Some(c),
            Ok(Wake::Key(_)) => {}
            Ok(Wake::All) | Err(broadcast::error::RecvError::Lagged(_)) => return None,
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

/// Keeps a LISTEN connection open (reconnecting with back-off) and forwards
/// notifications until `shutdown` turns true.
///
/// A notification from another process also makes this one forget what it
/// remembered of the key (`known.rs`): it is stale, and a waiter that
/// subscribed to the hub and then found the key forgotten reads the row.
/// This process's own notifications were broadcast at commit; they are
/// dropped.
pub(crate) async fn listen(
    url: String,
    channel: String,
    hub: broadcast::Sender<Wake>,
    store: Arc<Store>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if *shutdown.borrow() {
            return;
        }
        tokio::select! {
            ended = listen_once(&url, &channel, &hub, &store) => {
                if let Err(e) = ended {
                    tracing::debug!("fencelock LISTEN connection: {e}");
                } else {
                    backoff = Duration::from_millis(50);
                }
            }
            _ = shutdown.changed() => return,
        }
        // Whatever was sent while we were away is lost: everyone re-checks,
        // and nothing remembered is trusted to sleep on.
        store.known.clear();
        let _ = hub.send(Wake::All);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

async fn listen_once(
    url: &str,
    channel: &str,
    hub: &broadcast::Sender<Wake>,
    store: &Arc<Store>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls).await?;
    let (forward, wanted, mine) = (hub.clone(), channel.to_string(), store.clone());
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message? {
                AsyncMessage::Notification(n) if n.channel() == wanted => {
                    match parse_payload(n.payload()) {
                        Some((_, Some(origin))) if origin == mine.origin => {}
                        Some((change, _)) => {
                            mine.known.forget(&change.key);
                            let _ = forward.send(Wake::Key(Arc::new(change)));
                        }
                        None => {}
                    }
                }
                _ => {}
            }
        }
        Ok::<(), tokio_postgres::Error>(())
    });
    let mut driver = AbortOnDrop(driver);
    let listen_sql = format!("LISTEN \"{channel}\"");
    tokio::select! {
        listening = client.batch_execute(&listen_sql) => listening?,
        ended = &mut driver.0 => return ended.unwrap_or(Ok(())),
    }
    // Anything committed before LISTEN took effect was missed.
    store.known.clear();
    let _ = hub.send(Wake::All);
    let ended = (&mut driver.0).await;
    drop(client);
    ended.unwrap_or(Ok(()))
}

/// Stops the connection task when the listener is dropped (shutdown).
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(key: LockKey, touched: Option<Vec<SessionId>>) -> Change {
        let grant = |t, mode, exp| Grant {
            token: FencingToken(t),
            mode,
            granted_at: 17,
            expires_at: exp,
        };
        Change {
            key,
            grants: vec![
                (SessionId(3), grant(9, Mode::Read, Some(99))),
                (SessionId(4), grant(10, Mode::Read, None)),
            ],
            touched,
        }
    }

    #[test]
    fn payload_round_trips_keys_with_colons_and_unicode() {
        for (ns, name) in [
            ("a", "b"),
            ("bill:ing", "inv:42"),
            ("ünï", "ç:ø g 1"),
            ("n", "x"),
        ] {
            let key = LockKey::new(ns, name).unwrap();
            for touched in [None, Some(vec![]), Some(vec![SessionId(7), SessionId(8)])] {
                let c = change(key.clone(), touched);
                assert_eq!(parse_payload(&payload(&c, 77)), Some((c, Some(77))));
            }
        }
        assert_eq!(parse_payload("junk"), None);
        assert_eq!(parse_payload("9:ab"), None);
        assert_eq!(parse_payload("0:ab"), None, "empty namespace is not a key");
        assert_eq!(parse_payload("1:ab\ng 1 2 x 3 -"), None, "bad mode");
    }

    #[test]
    fn an_oversized_change_is_sent_as_its_key_alone() {
        let key = LockKey::new("ns", "k").unwrap();
        let mut c = change(key.clone(), None);
        c.touched = Some((0..2_000).map(SessionId).collect());
        let (parsed, origin) = parse_payload(&payload(&c, u64::MAX)).unwrap();
        assert_eq!(origin, Some(u64::MAX));
        assert_eq!(parsed.key, key);
        assert!(parsed.grants.is_empty());
        assert!(parsed.touches(SessionId(123_456)), "everyone re-reads");
    }
}
