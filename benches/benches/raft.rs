//! The Raft backend's throughput and latency, as one markdown table:
//! `cargo bench -p fencelock-benches --bench raft`.
//!
//! Clusters run in this process (real gRPC over 127.0.0.1, real files, fsync
//! on unless the row says otherwise); clients go through `RaftBackend`, the
//! same path an application takes. Rows: acquire + release pairs/s with 1 and
//! 16 clients on distinct keys; 16 clients contending for one key (handoffs/s
//! and acquire latency p50/p99). Targets (from etcd 3.4 on this kind of
//! machine: ~1,600 pairs/s with 16 clients, ~160 contended handoffs/s) are
//! printed as PASS/MISS, never enforced. Knobs: `FENCELOCK_BENCH_SECS`
//! (measured seconds per row, default 3), `FENCELOCK_BENCH_CLUSTERS` (e.g.
//! `3:on,1:on,3:off` = nodes:fsync, the default), `FENCELOCK_BENCH_INFLIGHT`
//! (log entries the leader's proposer keeps in flight).

use fencelock::{Backend, Command, LockKey, Mode, RequestId, Response, SessionId, WaitStatus};
use fencelock_raft::local::LocalCluster;
use fencelock_raft::{NodeConfig, RaftBackend};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ETCD_PAIRS_16: f64 = 1_600.0;
const ETCD_HANDOFFS: f64 = 160.0;

struct Client {
    b: Arc<RaftBackend>,
    session: SessionId,
    rid: AtomicU64,
}

impl Client {
    async fn open(b: Arc<RaftBackend>) -> Client {
        let Ok(Response::SessionOpened { session, .. }) = b
            .execute(Command::OpenSession { ttl_ms: 60_000 }, None)
            .await
        else {
            panic!("cannot open a session")
        };
        Client {
            b,
            session,
            rid: AtomicU64::new(1),
        }
    }

    fn rid(&self) -> Option<RequestId> {
        Some(RequestId(self.rid.fetch_add(1, Ordering::Relaxed)))
    }

    /// Acquire (waiting as long as needed) then release; returns the acquire latency.
    async fn pair(&self, key: &LockKey) -> Duration {
        let start = Instant::now();
        let acquire = Command::Acquire {
            key: key.clone(),
            session: self.session,
            mode: Mode::Exclusive,
            timeout_ms: Some(60_000),
        };
        let token = match self.b.execute(acquire, self.rid()).await {
            Ok(Response::Granted(g)) => g.token,
            Ok(Response::Queued { .. }) => loop {
                match self.b.wait(key, self.session, Duration::from_secs(5)).await {
                    Ok(WaitStatus::Granted(g)) => break g.token,
                    Ok(WaitStatus::Waiting) => continue,
                    other => panic!("wait: {other:?}"),
                }
            },
            other => panic!("acquire: {other:?}"),
        };
        let latency = start.elapsed();
        let release = Command::Release {
            key: key.clone(),
            session: self.session,
            token,
        };
        match self.b.execute(release, self.rid()).await {
            Ok(Response::Released) => latency,
            other => panic!("release: {other:?}"),
        }
    }
}

struct Run {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `clients` clients doing pairs for `secs` (after a short warm-up), on
/// distinct keys or all on one.
async fn run(b: &Arc<RaftBackend>, clients: usize, one_key: bool, secs: f64, tag: &str) -> Run {
    let mut tasks = Vec::new();
    let warm = Instant::now() + Duration::from_millis(500);
    let end = warm + Duration::from_secs_f64(secs);
    for i in 0..clients {
        let b = b.clone();
        let name = if one_key {
            "hot".to_string()
        } else {
            format!("k{i}")
        };
        let key = LockKey::new(&format!("bench-{tag}"), &name).unwrap();
        tasks.push(tokio::spawn(async move {
            let c = Client::open(b).await;
            let mut lat = Vec::new();
            loop {
                let l = c.pair(&key).await;
                let now = Instant::now();
                if now >= end {
                    break;
                }
                if now >= warm {
                    lat.push(l);
                }
            }
            let _ =
                c.b.execute(Command::CloseSession { session: c.session }, None)
                    .await;
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    Run {
        per_sec: all.len() as f64 / secs,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
    }
}

/// PASS/MISS against `factor` times etcd's number, with the measured ratio.
fn verdict(value: f64, etcd: f64, factor: f64) -> String {
    let target = etcd * factor;
    let v = if value >= target { "PASS" } else { "MISS" };
    format!(
        "{v} (target ≥ {target:.0} = {factor}x etcd; measured {:.2}x etcd)",
        value / etcd
    )
}

/// Median wall time of one small append + `fdatasync` in `dir`: the floor of
/// every commit, printed so the table can be read against this disk.
fn fdatasync_ms(dir: &std::path::Path) -> f64 {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("calibrate")).unwrap();
    let mut times: Vec<f64> = (0..200)
        .map(|_| {
            let start = Instant::now();
            f.write_all(&[7u8; 200]).unwrap();
            f.sync_data().unwrap();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let secs: f64 = std::env::var("FENCELOCK_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let inflight: usize = std::env::var("FENCELOCK_BENCH_INFLIGHT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(NodeConfig::new(1, "", "").max_inflight);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let calib = tempfile::tempdir().unwrap();
    println!(
        "append + fdatasync on this disk: median {:.2} ms (the floor of every commit)\n",
        fdatasync_ms(calib.path())
    );
    println!("| cluster | workload | result | latency p50 / p99 | target |");
    println!("|---|---|---|---|---|");
    rt.block_on(async {
        let configs: Vec<(usize, bool)> = match std::env::var("FENCELOCK_BENCH_CLUSTERS") {
            // e.g. "3:on,1:off"
            Ok(list) => list
                .split(',')
                .filter_map(|c| {
                    let (n, f) = c.split_once(':')?;
                    Some((n.parse().ok()?, f == "on"))
                })
                .collect(),
            Err(_) => vec![(3, true), (1, true), (3, false)],
        };
        for (nodes, fsync) in configs {
            let dir = tempfile::tempdir().unwrap();
            let cluster = LocalCluster::start(
                dir.path(),
                nodes,
                move |c| NodeConfig {
                    fsync,
                    max_inflight: inflight,
                    ..c
                },
                None,
            )
            .await
            .unwrap();
            let b = Arc::new(cluster.backend());
            let name = format!(
                "{nodes} node{}, fsync {}",
                if nodes > 1 { "s" } else { "" },
                if fsync { "on" } else { "off" }
            );
            let tag = format!("{nodes}{fsync}");
            let r1 = run(&b, 1, false, secs, &tag).await;
            println!(
                "| {name} | pairs/s, 1 client | {:.0} | {:.2} / {:.2} ms | |",
                r1.per_sec, r1.p50_ms, r1.p99_ms
            );
            let r16 = run(&b, 16, false, secs, &tag).await;
            let target = if nodes == 3 && fsync {
                verdict(r16.per_sec, ETCD_PAIRS_16, 2.0)
            } else {
                String::new()
            };
            println!(
                "| {name} | pairs/s, 16 clients, distinct keys | {:.0} | {:.2} / {:.2} ms | {target} |",
                r16.per_sec, r16.p50_ms, r16.p99_ms
            );
            let rc = run(&b, 16, true, secs, &tag).await;
            let target = if nodes == 3 && fsync {
                verdict(rc.per_sec, ETCD_HANDOFFS, 10.0)
            } else {
                String::new()
            };
            println!(
                "| {name} | handoffs/s, 16 clients, one key | {:.0} | {:.2} / {:.2} ms (acquire) | {target} |",
                rc.per_sec, rc.p50_ms, rc.p99_ms
            );
            cluster.shutdown().await;
        }
    });
}
