//! The Raft backend's throughput and latency next to etcd 3.4's lock, as
//! markdown tables: `cargo bench -p fencelock-benches --bench raft`.
//!
//! Our clusters run in this process (real sockets on 127.0.0.1: framed TCP,
//! or gRPC where the row says so; real files, fsync on unless the row says
//! otherwise); clients go through `RaftBackend`,
//! the same path an application takes. Then, if an `etcd` binary is found
//! (`$ETCD_BIN` or the PATH), a 3-node etcd cluster runs as three processes
//! on 127.0.0.1 with its data on the same disk, and the same workloads drive
//! its lock API through the `etcd-client` crate (lease, `lock`, `unlock`).
//! Workloads: acquire + release pairs/s with 1 and 16 clients on distinct
//! keys; 16 clients contending for one key (handoffs/s and acquire latency
//! p50/p99). Targets (16 clients >= 2x etcd's pairs/s, handoffs >= 10x
//! etcd's) are printed as PASS/MISS against the etcd of this run (or the
//! issue's figures, ~1,600 and ~160/s, when etcd is absent), never enforced.
//! Knobs: `FENCELOCK_BENCH_SECS` (measured seconds per row, default 3),
//! `FENCELOCK_BENCH_CLUSTERS` (`nodes:fsync[:waker[:transport]]`, default
//! `3:on,3:on:auto:grpc,1:on,3:off`; the nodes' fsync waker is `auto` unless
//! the row says `off` or `always`, see `fencelock_raft::fsync_waker`, and the
//! table says how many fsyncs ran with it; nodes and clients talk over the
//! framed TCP transport unless the row says `grpc`), `FENCELOCK_BENCH_INFLIGHT` (log entries
//! the leader's proposer keeps in flight), `FENCELOCK_BENCH_SERIAL=1` (the
//! leader flushes its log before replicating, as stock openraft 0.9 does),
//! `FENCELOCK_BENCH_ETCD=off` (skip etcd), `FENCELOCK_BENCH_WORKLOADS`
//! (which rows to run, 0-based, default `0,1,2`: for profiling one),
//! `FENCELOCK_BENCH_AWAKE=1` (a thread wakes a CPU every 50 µs for the whole
//! run, ours and etcd alike, as the postgres bench's second table does: this
//! VM delivers disk completions and wake-ups to an idle vCPU late).

#[path = "support/etcd.rs"]
mod etcd;

use fencelock::{Backend, Command, LockKey, Mode, RequestId, Response, SessionId, WaitStatus};
use fencelock_raft::fsync_waker::{self, FsyncCounts};
use fencelock_raft::grpc::GrpcTransport;
use fencelock_raft::local::LocalCluster;
use fencelock_raft::tcp::TcpTransport;
use fencelock_raft::{FsyncPoll, NodeConfig, RaftBackend, Transport};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// etcd 3.4's figures from the issue, used when no etcd runs here.
const ISSUE_ETCD: [f64; 3] = [f64::NAN, 1_600.0, 160.0];
const WORKLOADS: [&str; 3] = [
    "pairs/s, 1 client",
    "pairs/s, 16 clients, distinct keys",
    "handoffs/s, 16 clients, one key",
];

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
        // A queued acquire waits for its grant in the same request (as
        // etcd's `lock` does), then by long polls.
        let token = match self
            .b
            .execute_waiting(acquire, self.rid(), Duration::from_secs(5))
            .await
        {
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

    async fn close(self) {
        let close = Command::CloseSession {
            session: self.session,
        };
        let _ = self.b.execute(close, None).await;
    }
}

#[derive(Clone, Copy)]
struct Run {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Log entries the leader applied per pair (ours only): how well
    /// commands were batched.
    entries_per_pair: f64,
    /// Share of the nodes' fsyncs run with the fsync waker (ours only).
    waker_share: f64,
    /// Share of the nodes' fsyncs that took 1 ms or more (ours only): how
    /// much of the row ran in the disk's slow regime.
    slow_share: f64,
    /// CPU used meanwhile by processes other than the bench and its etcd
    /// members, in cores: what else competed for this machine.
    others_cores: f64,
}

/// The measured window: a short warm-up, then `secs`.
#[derive(Clone, Copy)]
struct Window {
    warm: Instant,
    end: Instant,
}

impl Window {
    fn new(secs: f64) -> Window {
        let warm = Instant::now() + Duration::from_millis(500);
        Window {
            warm,
            end: warm + Duration::from_secs_f64(secs),
        }
    }

    /// Records one pair's latency if it ended inside the window; false once
    /// the window is over.
    fn record(&self, lat: &mut Vec<Duration>, latency: Duration) -> bool {
        let now = Instant::now();
        if now >= self.end {
            return false;
        }
        if now >= self.warm {
            lat.push(latency);
        }
        true
    }
}

/// Runs `clients` closed-loop clients (each a task returning its latencies)
/// and sums them up.
async fn drive<F, Fut>(clients: usize, secs: f64, pids: &[u32], client: F) -> Run
where
    F: Fn(usize, Window) -> Fut,
    Fut: Future<Output = Vec<Duration>> + Send + 'static,
{
    let load = OthersLoad::start(pids);
    let window = Window::new(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|i| tokio::spawn(client(i, window)))
        .collect();
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
        entries_per_pair: f64::NAN,
        waker_share: f64::NAN,
        slow_share: f64::NAN,
        others_cores: load.cores(),
    }
}

/// CPU time (in clock ticks) the whole machine spent busy, and that this
/// process and `pids` used, from `/proc`; `None` where `/proc` is missing.
fn cpu_ticks(pids: &[u32]) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: busy = all but idle, iowait.
    let busy = cpu.iter().take(8).sum::<u64>() - cpu.get(3)? - cpu.get(4)?;
    let proc_ticks = |path: String| -> Option<u64> {
        let s = std::fs::read_to_string(path).ok()?;
        // Fields after the command name (which may hold spaces): utime is
        // the 12th, stime the 13th.
        let rest = &s[s.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    };
    let mut ours = proc_ticks("/proc/self/stat".into())?;
    for pid in pids {
        ours += proc_ticks(format!("/proc/{pid}/stat")).unwrap_or(0);
    }
    Some((busy, ours))
}

/// What other processes used while a row ran.
struct OthersLoad {
    start: Instant,
    ticks: Option<(u64, u64)>,
    pids: Vec<u32>,
}

impl OthersLoad {
    fn start(pids: &[u32]) -> OthersLoad {
        OthersLoad {
            start: Instant::now(),
            ticks: cpu_ticks(pids),
            pids: pids.to_vec(),
        }
    }

    /// Cores' worth of CPU used by others since `start` (100 ticks/s).
    fn cores(&self) -> f64 {
        let (Some((busy0, ours0)), Some((busy1, ours1))) = (self.ticks, cpu_ticks(&self.pids))
        else {
            return f64::NAN;
        };
        let others = (busy1 - busy0).saturating_sub(ours1 - ours0);
        others as f64 / 100.0 / self.start.elapsed().as_secs_f64()
    }
}

/// A row that was not asked for (`FENCELOCK_BENCH_WORKLOADS`).
const SKIPPED: Run = Run {
    per_sec: f64::NAN,
    p50_ms: f64::NAN,
    p99_ms: f64::NAN,
    entries_per_pair: f64::NAN,
    waker_share: f64::NAN,
    slow_share: f64::NAN,
    others_cores: f64::NAN,
};

/// Whether workload `w` is to run.
fn selected(w: usize) -> bool {
    std::env::var("FENCELOCK_BENCH_WORKLOADS").map_or(true, |list| {
        list.split(',').any(|x| x.trim() == w.to_string())
    })
}

/// The three workloads against one of our clusters.
async fn ours(cluster: &LocalCluster, secs: f64, tag: &str) -> [Run; 3] {
    let b = Arc::new(cluster.backend());
    let applied = || {
        let leader = cluster.leader().and_then(|i| cluster.node(i));
        leader.map_or(0, |n| n.applied_index())
    };
    let mut runs = [None; 3];
    for (w, (clients, one_key)) in [(1, false), (16, false), (16, true)]
        .into_iter()
        .enumerate()
    {
        if !selected(w) {
            runs[w] = Some(SKIPPED);
            continue;
        }
        let tag = format!("bench-{tag}-{w}");
        let before = applied();
        let fsyncs_before = fsync_waker::counts();
        let mut run = drive(clients, secs, &[], |i, window| {
            let b = b.clone();
            let name = if one_key {
                "hot".into()
            } else {
                format!("k{i}")
            };
            let key = LockKey::new(&tag, &name).unwrap();
            async move {
                let c = Client::open(b).await;
                let mut lat = Vec::new();
                while window.record(&mut lat, c.pair(&key).await) {}
                c.close().await;
                lat
            }
        })
        .await;
        // Over the whole run, warm-up included: a rough figure.
        let pairs = run.per_sec * (secs + 0.5);
        run.entries_per_pair = applied().saturating_sub(before) as f64 / pairs.max(1.0);
        let FsyncCounts {
            with_waker,
            without,
            slow,
        } = fsync_waker::counts();
        let with = with_waker - fsyncs_before.with_waker;
        let total = (with + without - fsyncs_before.without).max(1) as f64;
        run.waker_share = with as f64 / total;
        run.slow_share = (slow - fsyncs_before.slow) as f64 / total;
        runs[w] = Some(run);
    }
    runs.map(Option::unwrap)
}

/// The same workloads against etcd's lock API.
async fn etcd_runs(url: &str, pids: &[u32], secs: f64) -> [Run; 3] {
    let mut runs = [None; 3];
    for (w, (clients, one_key)) in [(1, false), (16, false), (16, true)]
        .into_iter()
        .enumerate()
    {
        if !selected(w) {
            runs[w] = Some(SKIPPED);
            continue;
        }
        runs[w] = Some(
            drive(clients, secs, pids, |i, window| {
                let url = url.to_string();
                let name = if one_key {
                    format!("bench-{w}/hot")
                } else {
                    format!("bench-{w}/k{i}")
                };
                async move {
                    let mut c = etcd::EtcdClient::open(&url).await;
                    let mut lat = Vec::new();
                    while window.record(&mut lat, c.pair(&name).await) {}
                    c.close().await;
                    lat
                }
            })
            .await,
        );
    }
    runs.map(Option::unwrap)
}

/// PASS/MISS against `factor` times etcd's number.
fn verdict(value: f64, etcd: f64, factor: f64) -> String {
    let target = etcd * factor;
    let v = if value >= target { "PASS" } else { "MISS" };
    format!("{v} (≥ {target:.0} = {factor}x etcd)")
}

/// Median and 10th percentile wall time of one small append + `fdatasync`
/// in `dir`: the floor of every commit, printed so the tables can be read
/// against this disk.
fn fdatasync_ms(dir: &std::path::Path) -> (f64, f64) {
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
    (times[times.len() / 2], times[times.len() / 10])
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

#[derive(Clone, Copy)]
struct Cluster {
    nodes: usize,
    fsync: bool,
    poll: FsyncPoll,
    grpc: bool,
}

impl Cluster {
    fn name(&self) -> String {
        format!(
            "{} node{}, fsync {}{}{}",
            self.nodes,
            if self.nodes > 1 { "s" } else { "" },
            if self.fsync { "on" } else { "off" },
            match (self.fsync, self.poll) {
                (false, _) | (_, FsyncPoll::Auto(_)) => "",
                (true, FsyncPoll::Off) => ", waker off",
                (true, FsyncPoll::Always(_)) => ", waker always",
            },
            if self.grpc { ", gRPC" } else { "" }
        )
    }
}

fn lat(r: &Run) -> String {
    format!("{:.1} / {:.1} ms", r.p50_ms, r.p99_ms)
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
    let parallel = std::env::var("FENCELOCK_BENCH_SERIAL").as_deref() != Ok("1");
    let list = std::env::var("FENCELOCK_BENCH_CLUSTERS")
        .unwrap_or_else(|_| "3:on,3:on:auto:grpc,1:on,3:off".into());
    let configs: Vec<Cluster> = list
        .split(',')
        .filter_map(|c| {
            let mut parts = c.split(':');
            Some(Cluster {
                nodes: parts.next()?.parse().ok()?,
                fsync: parts.next()? == "on",
                poll: match parts.next() {
                    Some("off") => FsyncPoll::Off,
                    Some("always") => FsyncPoll::Always(fsync_waker::DEFAULT_PERIOD),
                    _ => FsyncPoll::default(),
                },
                grpc: parts.next() == Some("grpc"),
            })
        })
        .collect();
    let etcd_bin = match std::env::var("FENCELOCK_BENCH_ETCD").as_deref() {
        Ok("off") => None,
        _ => {
            let bin = etcd::binary();
            if bin.is_none() {
                println!(
                    "no etcd binary (install Debian's etcd-server or set ETCD_BIN): ours only\n"
                );
            }
            bin
        }
    };
    let awake = std::env::var("FENCELOCK_BENCH_AWAKE").as_deref() == Ok("1");
    let stop_waking = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if awake {
        let stop = stop_waking.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_micros(50));
            }
        });
        println!("a thread wakes a CPU every 50 µs for the whole run (ours and etcd)\n");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let calib = tempfile::tempdir().unwrap();
    let (fsync_p50, fsync_p10) = fdatasync_ms(calib.path());
    println!(
        "append + fdatasync on this disk: median {fsync_p50:.2} ms, p10 {fsync_p10:.2} ms \
         (the floor of every commit); load average before: {}\n",
        loadavg()
    );
    let mut results: Vec<(Cluster, [Run; 3])> = Vec::new();
    let etcd = rt.block_on(async {
        for (i, &c) in configs.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let transport: Arc<dyn Transport> = if c.grpc {
                Arc::new(GrpcTransport::new())
            } else {
                Arc::new(TcpTransport::new())
            };
            let cluster = LocalCluster::start_with(
                dir.path(),
                c.nodes,
                move |n| NodeConfig {
                    fsync: c.fsync,
                    fsync_poll: c.poll,
                    max_inflight: inflight,
                    parallel_leader_write: parallel,
                    ..n
                },
                None,
                transport,
            )
            .await
            .unwrap();
            results.push((c, ours(&cluster, secs, &format!("c{i}")).await));
            cluster.shutdown().await;
        }
        let bin = etcd_bin?;
        match etcd::EtcdCluster::start(&bin).await {
            Ok(cluster) => Some(etcd_runs(&cluster.leader_url, &cluster.pids(), secs).await),
            Err(e) => {
                println!("etcd did not start ({e}); printing our numbers only\n");
                None
            }
        }
    });
    let side_by_side: Vec<_> = results
        .iter()
        .filter(|(c, _)| c.nodes == 3 && c.fsync)
        .collect();
    if !side_by_side.is_empty() {
        println!("| fencelock, 3 nodes | workload | fencelock | p50 / p99 | etcd 3.4, 3 nodes | p50 / p99 | fencelock / etcd | target |");
        println!("|---|---|---|---|---|---|---|---|");
    }
    for (c, main) in &side_by_side {
        for w in (0..3).filter(|&w| selected(w)) {
            let ours = &main[w];
            let (theirs, base) = match &etcd {
                Some(e) => (format!("{:.0}", e[w].per_sec), e[w].per_sec),
                None => (
                    "(issue) ~".to_string() + &format!("{:.0}", ISSUE_ETCD[w]),
                    ISSUE_ETCD[w],
                ),
            };
            let theirs_lat = etcd.as_ref().map_or("".into(), |e| lat(&e[w]));
            let ratio = if base.is_finite() {
                format!("{:.2}x", ours.per_sec / base)
            } else {
                String::new()
            };
            let target = match w {
                1 => verdict(ours.per_sec, base, 2.0),
                2 => verdict(ours.per_sec, base, 10.0),
                _ => String::new(),
            };
            println!(
                "| {} | {} | {:.0} | {} | {theirs} | {theirs_lat} | {ratio} | {target} |",
                c.name(),
                WORKLOADS[w],
                ours.per_sec,
                lat(ours)
            );
        }
    }
    println!("\n| cluster | workload | result | acquire p50 / p99 | log entries / pair | fsyncs with waker | fsyncs ≥ 1 ms | other processes' CPU |");
    println!("|---|---|---|---|---|---|---|---|");
    for (c, runs) in &results {
        let name = c.name();
        for (w, r) in runs.iter().enumerate().filter(|(w, _)| selected(*w)) {
            println!(
                "| {name} | {} | {:.0} | {} | {:.2} | {:.0}% | {:.0}% | {:.2} cores |",
                WORKLOADS[w],
                r.per_sec,
                lat(r),
                r.entries_per_pair,
                r.waker_share * 100.0,
                r.slow_share * 100.0,
                r.others_cores
            );
        }
    }
    for (w, r) in etcd
        .iter()
        .flat_map(|runs| runs.iter().enumerate())
        .filter(|(w, _)| selected(*w))
    {
        println!(
            "| etcd 3.4, 3 nodes | {} | {:.0} | {} | | | | {:.2} cores |",
            WORKLOADS[w],
            r.per_sec,
            lat(r),
            r.others_cores
        );
    }
    println!("\nload average after: {}", loadavg());
    stop_waking.store(true, Ordering::Relaxed);
}
