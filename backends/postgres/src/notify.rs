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

use fencelock::LockKey;
use futures_util::StreamExt;
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio_postgres::{AsyncMessage, NoTls};

/// What a waiter is woken for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Something changed for this key.
    Key(LockKey),
    /// Notifications may have been missed: everyone re-checks.
    All,
}

/// The NOTIFY payload for a key: `<namespace length>:<namespace><name>`.
pub(crate) fn payload(key: &LockKey) -> String {
    format!(
        "{}:{}{}",
        key.namespace().len(),
        key.namespace(),
        key.name()
    )
}

/// Parses [`payload`]; `None` for anything else on the channel.
pub(crate) fn parse_payload(p: &str) -> Option<LockKey> {
    let (len, rest) = p.split_once(':')?;
    let len: usize = len.parse().ok()?;
    let namespace = rest.get(..len)?;
    let name = rest.get(len..)?;
    LockKey::new(namespace, name).ok()
}

/// Waits for a wake-up that concerns `key`.
pub(crate) async fn woken_for(rx: &mut broadcast::Receiver<Wake>, key: &LockKey) {
    loop {
        match rx.recv().await {
            Ok(Wake::Key(k)) if k == *key => return,
            Ok(Wake::Key(_)) => {}
            Ok(Wake::All) | Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

/// Keeps a LISTEN connection open (reconnecting with back-off) and forwards
/// notifications until `shutdown` turns true.
pub(crate) async fn listen(
    url: String,
    channel: String,
    hub: broadcast::Sender<Wake>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if *shutdown.borrow() {
            return;
        }
        tokio::select! {
            ended = listen_once(&url, &channel, &hub) => {
                if let Err(e) = ended {
                    tracing::debug!("fencelock LISTEN connection: {e}");
                } else {
                    backoff = Duration::from_millis(50);
                }
            }
            _ = shutdown.changed() => return,
        }
        // Whatever was sent while we were away is lost: everyone re-checks.
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
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls).await?;
    let (forward, wanted) = (hub.clone(), channel.to_string());
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message? {
                AsyncMessage::Notification(n) if n.channel() == wanted => {
                    if let Some(key) = parse_payload(n.payload()) {
                        let _ = forward.send(Wake::Key(key));
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

    #[test]
    fn payload_round_trips_keys_with_colons_and_unicode() {
        for (ns, name) in [
            ("a", "b"),
            ("bill:ing", "inv:42"),
            ("ünï", "ç:ø"),
            ("n", "x"),
        ] {
            let key = LockKey::new(ns, name).unwrap();
            assert_eq!(parse_payload(&payload(&key)), Some(key));
        }
        assert_eq!(parse_payload("junk"), None);
        assert_eq!(parse_payload("9:ab"), None);
        assert_eq!(parse_payload("0:ab"), None, "empty namespace is not a key");
    }
}
