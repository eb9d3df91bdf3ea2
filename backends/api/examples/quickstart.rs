//! The README's first example: fenced locks with the client API on the
//! in-memory backend (no server). Run it with
//! `cargo run --release -p fencelock --example quickstart`.

use fencelock::{Client, Error, FencingToken, LockError};
use fencelock_memory::MemoryBackend;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A resource guarded by the lock: it refuses writes with a token lower than
/// the highest it has seen, so a holder that lost the lock cannot corrupt it.
#[derive(Default)]
struct Ledger {
    highest: u64,
    lines: Vec<String>,
}

impl Ledger {
    fn write(&mut self, token: FencingToken, line: String) -> Result<(), String> {
        if token.0 < self.highest {
            return Err(format!(
                "rejected stale token {token} (seen #{})",
                self.highest
            ));
        }
        self.highest = token.0;
        self.lines.push(line);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let backend = MemoryBackend::new();
    let client = Client::connect(backend.clone()).await?;
    let ledger = Arc::new(Mutex::new(Ledger::default()));

    // 1. A mutex: acquire, use the fencing token, release.
    let invoice = client.lock("billing", "invoice:42")?;
    let guard = invoice.acquire().await?;
    println!(
        "1. acquired billing/invoice:42 with fencing token {}",
        guard.token()
    );
    ledger_write(&ledger, guard.token(), "charged 10 EUR");
    guard.release().await?;

    // 2. Four tasks contend for the same lock: FIFO, one at a time.
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let (invoice, ledger) = (invoice.clone(), ledger.clone());
        tasks.push(tokio::spawn(async move {
            let guard = invoice.acquire().await?;
            ledger_write(
                &ledger,
                guard.token(),
                &format!("worker {worker} added a line"),
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
            guard.release().await // a dropped guard would release too
        }));
    }
    for t in tasks {
        t.await.expect("worker panicked")?;
    }
    println!(
        "2. four workers took turns; ledger has {} lines",
        lines(&ledger)
    );

    // 3. try-lock and a bounded wait.
    let held = invoice.acquire().await?;
    match invoice.try_acquire().await {
        Err(Error::Lock(LockError::WouldBlock { .. })) => {
            println!("3. try_acquire: busy (WouldBlock)")
        }
        other => println!("3. try_acquire: unexpected {other:?}"),
    }
    match invoice.acquire_timeout(Duration::from_millis(50)).await {
        Err(Error::Lock(LockError::Timeout { .. })) => {
            println!("   acquire_timeout(50 ms): gave up (Timeout), and left the queue")
        }
        other => println!("   acquire_timeout: unexpected {other:?}"),
    }

    // 4. Steal: the old holder's token is fenced off, and its guard is told.
    let thief = invoice.steal().await?;
    let why = held.lost().await;
    println!(
        "4. stolen with token {}; old holder notified: {why}",
        thief.token()
    );
    ledger_write(&ledger, thief.token(), "thief took over");
    match ledger
        .lock()
        .expect("ledger")
        .write(held.token(), "late write".into())
    {
        Err(e) => println!("   the old holder's late write: ledger {e}"),
        Ok(()) => println!("   ledger accepted a stale write (bug!)"),
    }
    drop(thief);

    // 5. A lease: a hold that is not extended ends by itself.
    let job = client.lock_with_lease("jobs", "nightly-report", Duration::from_millis(100))?;
    let lease = job.acquire().await?;
    println!(
        "5. leased jobs/nightly-report for 100 ms (until t={} ms on the backend clock)",
        lease.grant().expires_at.unwrap_or_default()
    );
    let why = lease.lost().await;
    println!("   lease ran out: {why}");

    // 6. Read/write lock: readers share, a writer waits for them.
    let config = client.rw_lock("config", "app")?;
    let (r1, r2) = (config.read().await?, config.read().await?);
    println!(
        "6. two readers share config/app (tokens {} and {})",
        r1.token(),
        r2.token()
    );
    drop((r1, r2));
    let w = config.write().await?;
    println!("   then a writer got it with token {}", w.token());
    w.release().await?;

    // 7. The scoped form: the lock is held exactly while the closure runs.
    let total = client
        .with_lock("billing", "invoice:42", |token| {
            let ledger = ledger.clone();
            async move {
                ledger_write(&ledger, token, "closed the invoice");
                lines(&ledger)
            }
        })
        .await?;
    println!("7. with_lock wrote the last line; ledger has {total} lines");

    // 8. Closing the client releases everything it holds.
    let _forgotten = client.lock("billing", "invoice:7")?.acquire().await?;
    client.close().await;
    let info = backend_describe(&backend).await;
    println!("8. client closed; billing/invoice:7 holders after close: {info}");
    Ok(())
}

fn ledger_write(ledger: &Mutex<Ledger>, token: FencingToken, line: &str) {
    if let Err(e) = ledger
        .lock()
        .expect("ledger")
        .write(token, line.to_string())
    {
        println!("   ledger {e}");
    }
}

fn lines(ledger: &Mutex<Ledger>) -> usize {
    ledger.lock().expect("ledger").lines.len()
}

async fn backend_describe(backend: &MemoryBackend) -> usize {
    use fencelock::{Backend, LockKey};
    let key = LockKey::new("billing", "invoice:7").expect("valid key");
    match backend.describe(&key).await {
        Ok(Some(info)) => info.holders.len(),
        _ => 0,
    }
}
