//! The PostgreSQL backend next to raw `pg_advisory_lock`/`pg_advisory_unlock`
//! and a naive row lock (`INSERT … ON CONFLICT DO NOTHING` / `DELETE`), all
//! on one throwaway server with Postgres' default durability (`fsync = on`,
//! `synchronous_commit = on`), in the same run. Prints markdown tables.
//!
//! `cargo bench -p fencelock-benches --bench postgres`
//! (`FENCELOCK_BENCH_SECS`: time per contender and workload, default 3, in
//! 5 interleaved slices; `FENCELOCK_BENCH_ONLY=<part of a row's label>`;
//! `FENCELOCK_PG_URL`: use that server instead of a throwaway one;
//! `FENCELOCK_BENCH_FSYNC=off`: a throwaway server without fsync;
//! `FENCELOCK_BENCH_WRITE_TX=<n>`: the backend's `write_transactions`.)
//!
//! Round trips are counted by a small TCP proxy between the client and the
//! server: each burst the client sends before it waits for an answer is one
//! read on the proxy's client side.

use fencelock::{Backend, Command, Mode, Response, SessionId, WaitStatus};
use fencelock_core::LockKey;
use fencelock_postgres::testkit::{Durability, TempCluster, URL_ENV};
use fencelock_postgres::{PgBackend, PgConfig};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::{Client, NoTls, Statement};

const CLIENTS: usize = 16;
/// Turns each contender takes per workload.
const ROUNDS: u32 = 5;

fn secs() -> Duration {
    let s = std::env::var("FENCELOCK_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(s.max(0.2))
}

/// `FENCELOCK_BENCH_WRITE_TX=<n>`: the backend's `write_transactions`.
fn write_transactions(config: PgConfig) -> PgConfig {
    match std::env::var("FENCELOCK_BENCH_WRITE_TX")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(n) => config.with_write_transactions(n),
        None => config,
    }
}

/// Acquire (+ wait if queued) and release of one key by one session.
#[derive(Clone)]
struct Fence {
    backend: PgBackend,
}

impl Fence {
    async fn session(&self) -> SessionId {
        match self
            .backend
            .execute(Command::OpenSession { ttl_ms: 600_000 }, None)
            .await
        {
            Ok(Response::SessionOpened { session, .. }) => session,
            other => panic!("open session: {other:?}"),
        }
    }

    /// Returns the acquire latency.
    async fn pair(&self, key: &LockKey, session: SessionId) -> Duration {
        let start = Instant::now();
        let acquire = Command::Acquire {
            key: key.clone(),
            session,
            mode: Mode::Exclusive,
            timeout_ms: None,
        };
        let grant = match self.backend.execute(acquire, None).await {
            Ok(Response::Granted(g)) => g,
            Ok(Response::Queued { .. }) => loop {
                match self
                    .backend
                    .wait(key, session, Duration::from_secs(10))
                    .await
                {
                    Ok(WaitStatus::Granted(g)) => break g,
                    Ok(WaitStatus::Waiting) => continue,
                    other => panic!("wait: {other:?}"),
                }
            },
            other => panic!("acquire: {other:?}"),
        };
        let latency = start.elapsed();
        let release = Command::Release {
            key: key.clone(),
            session,
            token: grant.token,
        };
        match self.backend.execute(release, None).await {
            Ok(Response::Released) => latency,
            other => panic!("release: {other:?}"),
        }
    }
}

/// One lock implementation under test: how to make a per-client worker.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fencelock,
    Advisory,
    NaiveRow,
}

struct Worker {
    kind: Kind,
    fence: Option<(Fence, SessionId)>,
    /// The baselines' connection and their two statements, prepared once.
    client: Option<(Client, Statement, Statement)>,
}

async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(conn);
    client
}

impl Worker {
    async fn new(kind: Kind, url: &str, fence: &Fence) -> Worker {
        match kind {
            Kind::Fencelock => Worker {
                kind,
                fence: Some((fence.clone(), fence.session().await)),
                client: None,
            },
            _ => {
                let client = connect(url).await;
                let (lock, unlock) = match kind {
                    Kind::Advisory => (
                        "SELECT pg_advisory_lock($1)",
                        "SELECT pg_advisory_unlock($1)",
                    ),
                    _ => (
                        "INSERT INTO naive_lock (k) VALUES ($1) ON CONFLICT DO NOTHING",
                        "DELETE FROM naive_lock WHERE k = $1",
                    ),
                };
                let lock = client.prepare(lock).await.expect("prepare");
                let unlock = client.prepare(unlock).await.expect("prepare");
                Worker {
                    kind,
                    fence: None,
                    client: Some((client, lock, unlock)),
                }
            }
        }
    }

    /// One acquire + release of key number `k`; returns the acquire latency.
    async fn pair(&self, k: i64, key: &LockKey) -> Duration {
        match (self.kind, &self.fence, &self.client) {
            (Kind::Fencelock, Some((f, s)), _) => f.pair(key, *s).await,
            (Kind::Advisory, _, Some((c, lock, unlock))) => {
                let start = Instant::now();
                c.execute(lock, &[&k]).await.expect("lock");
                let latency = start.elapsed();
                c.execute(unlock, &[&k]).await.expect("unlock");
                latency
            }
            (Kind::NaiveRow, _, Some((c, lock, unlock))) => {
                let start = Instant::now();
                // A naive lock cannot wait: it polls.
                while c.execute(lock, &[&k]).await.expect("insert") == 0 {
                    tokio::time::sleep(Duration::from_micros(500)).await;
                }
                let latency = start.elapsed();
                c.execute(unlock, &[&k]).await.expect("delete");
                latency
            }
            _ => unreachable!("worker built for its kind"),
        }
    }
}

struct Run {
    pairs_per_sec: f64,
    p50: Duration,
    p99: Duration,
}

/// Acquire latencies of one timed slice, and how long it ran.
#[derive(Default)]
struct Sample {
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Sample {
    fn add(&mut self, other: Sample) {
        self.latencies.extend(other.latencies);
        self.elapsed += other.elapsed;
    }

    fn run(mut self) -> Run {
        let all = &mut self.latencies;
        all.sort();
        let pct = |p: f64| {
            all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        Run {
            pairs_per_sec: all.len() as f64 / self.elapsed.as_secs_f64().max(1e-9),
            p50: pct(0.50),
            p99: pct(0.99),
        }
    }
}

/// `clients` workers for `run`, each on its own key (`shared`: all on one).
async fn measure(
    kind: Kind,
    url: &str,
    fence: &Fence,
    clients: usize,
    shared: bool,
    run: Duration,
) -> Sample {
    static ROUND: AtomicU64 = AtomicU64::new(0);
    let round = ROUND.fetch_add(1, Ordering::Relaxed) as i64;
    let mut handles = Vec::new();
    let stop = Arc::new(AtomicBool::new(false));
    let start_gate = Arc::new(tokio::sync::Barrier::new(clients + 1));
    for i in 0..clients {
        let k = if shared {
            round * 1000
        } else {
            round * 1000 + i as i64 + 1
        };
        let key = LockKey::new("bench", &format!("k{k}")).expect("key");
        let worker = Worker::new(kind, url, fence).await;
        let (stop, gate) = (stop.clone(), start_gate.clone());
        handles.push(tokio::spawn(async move {
            // Warm-up: create the key, fill caches.
            for _ in 0..3 {
                worker.pair(k, &key).await;
            }
            gate.wait().await;
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                latencies.push(worker.pair(k, &key).await);
            }
            latencies
        }));
    }
    start_gate.wait().await;
    let start = Instant::now();
    tokio::time::sleep(run).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("worker"));
    }
    Sample {
        latencies: all,
        elapsed: start.elapsed(),
    }
}

/// A thread that wakes every 50 µs, so a vCPU is never idle long (see main).
struct CpuWaker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CpuWaker {
    fn start() -> CpuWaker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_micros(50));
            }
        });
        CpuWaker {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for CpuWaker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP proxy that counts round trips: each time the client speaks after
/// the server has (the client waited for an answer), one more.
async fn counting_proxy(upstream: std::net::SocketAddr) -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let port = listener.local_addr().expect("addr").port();
    let count = Arc::new(AtomicU64::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                // true: the server spoke last.
                let server_spoke = Arc::new(AtomicBool::new(true));
                let (mut ri, mut wi) = inbound.split();
                let (mut ro, mut wo) = outbound.split();
                let up = async {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = ri.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        if server_spoke.swap(false, Ordering::AcqRel) {
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                        if wo.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                let down = async {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = ro.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        server_spoke.store(true, Ordering::Release);
                        if wi.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                tokio::join!(up, down);
            });
        }
    });
    (port, count)
}

/// Round trips per acquire + release, uncontended, one client, through the proxy.
async fn round_trips(kind: Kind, url: &str, schema: &str, port: u16, count: &AtomicU64) -> f64 {
    let proxied = url.replacen(
        &format!(":{port_of}", port_of = port_of(url)),
        &format!(":{port}"),
        1,
    );
    let fence = Fence {
        backend: PgBackend::connect(
            PgConfig::new(proxied.clone())
                .with_schema(schema)
                .with_pool_size(1),
        )
        .await
        .expect("proxied backend"),
    };
    let worker = Worker::new(kind, &proxied, &fence).await;
    let key = LockKey::new("bench", "round-trips").expect("key");
    for _ in 0..5 {
        worker.pair(424_242, &key).await;
    }
    // The sweeper and LISTEN connection also talk; count them out by
    // measuring an idle interval of the same length too.
    let n = 200u64;
    let before = count.load(Ordering::Relaxed);
    let start = Instant::now();
    for _ in 0..n {
        worker.pair(424_242, &key).await;
    }
    let busy = count.load(Ordering::Relaxed) - before;
    let took = start.elapsed();
    let idle_before = count.load(Ordering::Relaxed);
    tokio::time::sleep(took).await;
    let idle = count.load(Ordering::Relaxed) - idle_before;
    busy.saturating_sub(idle) as f64 / n as f64
}

fn port_of(url: &str) -> u16 {
    url.split("127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .expect("a 127.0.0.1:<port> URL")
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let cluster;
    let url = match std::env::var(URL_ENV) {
        Ok(url) if !url.is_empty() => url,
        _ => {
            // Default durability; `FENCELOCK_BENCH_FSYNC=off` shows the
            // cost without the disk (not a setting to run locks on).
            let durability = match std::env::var("FENCELOCK_BENCH_FSYNC").as_deref() {
                Ok("off") => Durability::NoFsync,
                _ => Durability::Default,
            };
            cluster = TempCluster::start(durability).expect("start postgres");
            cluster.url()
        }
    };
    runtime.block_on(async move {
        let run = secs();
        let admin = connect(&url).await;
        admin
            .batch_execute("CREATE TABLE IF NOT EXISTS naive_lock (k bigint PRIMARY KEY)")
            .await
            .expect("naive table");
        let show = |name: &'static str| {
            let admin = &admin;
            async move {
                let row = admin.query_one(&format!("SHOW {name}"), &[]).await.expect("show");
                row.get::<_, String>(0)
            }
        };
        let (fsync, sync_commit, version) = (show("fsync").await, show("synchronous_commit").await, show("server_version").await);
        let schema = format!("bench_{}", std::process::id());
        let fence = Fence {
            backend: PgBackend::connect(write_transactions(PgConfig::new(url.clone()).with_schema(schema.clone()).with_pool_size(32)))
                .await
                .expect("backend"),
        };
        println!("\nPostgreSQL {version}, fsync = {fsync}, synchronous_commit = {sync_commit}; {} s per run; {} CPUs\n",
            run.as_secs_f64(), std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
        println!("| workload | fencelock | pg_advisory_lock | naive row lock | fencelock / naive |");
        println!("|---|---|---|---|---|");
        let kinds = [Kind::Fencelock, Kind::Advisory, Kind::NaiveRow];
        if let Ok(sql) = std::env::var("FENCELOCK_BENCH_SQL") {
            // An experiment on the backend's tables (e.g. an index setting).
            admin.batch_execute(&sql.replace("{schema}", &schema)).await.expect("FENCELOCK_BENCH_SQL");
        }
        // The disk's flush latency swings with whatever else the machine
        // writes, so the three contenders take turns in short slices.
        let only = std::env::var("FENCELOCK_BENCH_ONLY").unwrap_or_default();
        // For a profiler: run fencelock alone.
        let profile_only = std::env::var("FENCELOCK_BENCH_PROFILE").is_ok();
        // This VM delivers an fsync's completion to an idle vCPU late (ms);
        // the second table keeps a CPU awake, the same for all three.
        for awake in [false, true] {
        let waker = awake.then(CpuWaker::start);
        if awake {
            println!("| *same, with a thread waking a CPU every 50 µs* | | | | |");
        }
        let mut rows: Vec<(String, Vec<Run>)> = Vec::new();
        for (label, clients, shared) in [
            ("1 client: acquire+release pairs/s", 1, false),
            ("16 clients, distinct keys: pairs/s", CLIENTS, false),
            ("16 clients, one key: handoffs/s", CLIENTS, true),
        ] {
            if !label.contains(only.as_str()) {
                continue;
            }
            let mut samples: Vec<Sample> = kinds.iter().map(|_| Sample::default()).collect();
            for _ in 0..ROUNDS {
                for (i, kind) in kinds.iter().enumerate() {
                    if profile_only && *kind != Kind::Fencelock {
                        continue;
                    }
                    let slice = measure(*kind, &url, &fence, clients, shared, run / ROUNDS).await;
                    samples[i].add(slice);
                }
            }
            let runs: Vec<Run> = samples.into_iter().map(Sample::run).collect();
            let ratio = runs[0].pairs_per_sec / runs[2].pairs_per_sec;
            println!(
                "| {label} | {:.0} | {:.0} | {:.0} | {ratio:.2}x |",
                runs[0].pairs_per_sec, runs[1].pairs_per_sec, runs[2].pairs_per_sec
            );
            rows.push((label.to_string(), runs));
        }
        if let Some((_, runs)) = rows.iter().find(|(label, _)| label.contains("one key")) {
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            println!(
                "| 16 clients, one key: acquire p50 / p99 (ms) | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | |",
                ms(runs[0].p50), ms(runs[0].p99), ms(runs[1].p50), ms(runs[1].p99), ms(runs[2].p50), ms(runs[2].p99)
            );
        }
        drop(waker);
        }
        let (port, count) = counting_proxy(format!("127.0.0.1:{}", port_of(&url)).parse().expect("addr")).await;
        let mut rts = Vec::new();
        for kind in kinds {
            rts.push(round_trips(kind, &url, &schema, port, &count).await);
        }
        println!(
            "| round trips per acquire+release (1 client, uncontended) | {:.1} | {:.1} | {:.1} | |",
            rts[0], rts[1], rts[2]
        );
        let stats = fence.backend.stats();
        println!(
            "\nfencelock commands written in one round trip from remembered state: {}; found stale: {}; \
             sharing a transaction (same key): {}; (other keys): {}",
            stats.one_round_trip, stats.stale, stats.combined, stats.batched
        );
    });
}
