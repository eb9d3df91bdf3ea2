//! Real processes: three `fencelock-node` processes on 127.0.0.1, a leader
//! killed with SIGKILL in the middle of a contended run and restarted, a
//! follower whose data dir is wiped rejoining from a snapshot.

use fencelock::{
    Backend, Command, FencingToken, LockKey, Mode, RequestId, Response, SessionId, WaitEnd,
    WaitStatus,
};
use fencelock_raft::grpc::GrpcTransport;
use fencelock_raft::wire::NodeStatus;
use fencelock_raft::{ClientConfig, ClusterClient, RaftBackend};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

struct Node {
    id: u64,
    addr: String,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn spawn(&mut self, init: Option<&str>, snapshot_every: u64) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_fencelock-node"));
        cmd.args(["run", "--id", &self.id.to_string(), "--listen", &self.addr])
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--heartbeat-ms", "50"])
            .args(["--snapshot-every", &snapshot_every.to_string()])
            .args(["--keep-logs", "0"])
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(members) = init {
            cmd.args(["--init", members]);
        }
        self.child = Some(cmd.spawn().expect("spawn fencelock-node"));
    }

    /// SIGKILL: no shutdown, no flush beyond what was fsynced.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn start_cluster(dir: &Path, snapshot_every: u64) -> Vec<Node> {
    let mut nodes: Vec<Node> = (1..=3)
        .map(|id| Node {
            id,
            addr: free_addr(),
            dir: dir.join(format!("n{id}")),
            log: dir.join(format!("n{id}.log")),
            child: None,
        })
        .collect();
    let members = nodes
        .iter()
        .map(|n| format!("{}={}", n.id, n.addr))
        .collect::<Vec<_>>()
        .join(",");
    for n in &mut nodes {
        let init = (n.id == 1).then_some(members.as_str());
        n.spawn(init, snapshot_every);
    }
    nodes
}

fn admin(nodes: &[Node]) -> ClusterClient {
    ClusterClient::new(
        Arc::new(GrpcTransport::new()),
        nodes.iter().map(|n| n.addr.clone()).collect(),
        ClientConfig::default(),
    )
    .unwrap()
}

async fn statuses(admin: &ClusterClient, nodes: &[Node]) -> Vec<Option<NodeStatus>> {
    let mut out = Vec::new();
    for n in nodes {
        out.push(admin.status_of(&n.addr).await.ok());
    }
    out
}

async fn leader(admin: &ClusterClient, nodes: &[Node]) -> usize {
    for _ in 0..200 {
        for (i, s) in statuses(admin, nodes).await.into_iter().enumerate() {
            if let Some(s) = s {
                if s.leader == Some(s.id) {
                    return i;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no leader");
}

/// Waits until every node applied the same index with the same table bytes.
async fn converged(admin: &ClusterClient, nodes: &[Node]) -> NodeStatus {
    let mut last = Vec::new();
    for _ in 0..300 {
        let all = statuses(admin, nodes).await;
        if all.iter().all(Option::is_some) {
            let all: Vec<NodeStatus> = all.into_iter().flatten().collect();
            let first = &all[0];
            if all
                .iter()
                .all(|s| s.last_applied == first.last_applied && s.table_crc == first.table_crc)
            {
                return first.clone();
            }
            last = all;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("replicas did not converge: {last:#?}");
}

async fn backend(nodes: &[Node]) -> Arc<RaftBackend> {
    let b = RaftBackend::with_transport(
        Arc::new(GrpcTransport::new()),
        nodes.iter().map(|n| n.addr.clone()).collect(),
        ClientConfig {
            rpc_timeout: Duration::from_secs(2),
            give_up_after: Duration::from_secs(20),
        },
    )
    .unwrap();
    // Ready once a leader answers a linearizable read.
    b.describe_session(SessionId(u64::MAX)).await.unwrap();
    Arc::new(b)
}

/// A resource guarded by the lock: rejects tokens below the highest seen and
/// records any overlap of two critical sections.
#[derive(Default)]
struct Fence {
    highest: u64,
    inside: Option<(u64, usize)>,
    grants: Vec<(u64, usize)>,
    violations: Vec<String>,
}

impl Fence {
    fn enter(&mut self, token: FencingToken, who: usize) {
        if token.0 < self.highest {
            self.violations.push(format!(
                "worker {who}: stale token {token} < {}",
                self.highest
            ));
        }
        if let Some((t, w)) = self.inside {
            self.violations.push(format!(
                "worker {who} with {token} entered while {w} holds #{t}"
            ));
        }
        self.highest = self.highest.max(token.0);
        self.inside = Some((token.0, who));
        self.grants.push((token.0, who));
    }

    fn leave(&mut self, token: FencingToken, who: usize) {
        if self.inside != Some((token.0, who)) {
            self.violations.push(format!(
                "worker {who} left #{} but inside is {:?}",
                token.0, self.inside
            ));
        }
        self.inside = None;
    }
}

#[derive(Default, Debug)]
struct Stats {
    granted: u64,
    timed_out: u64,
    errors: Vec<String>,
}

async fn worker(
    b: Arc<RaftBackend>,
    who: usize,
    key: LockKey,
    fence: Arc<Mutex<Fence>>,
    until: Instant,
) -> Stats {
    let mut stats = Stats::default();
    let Ok(Response::SessionOpened { session, .. }) = b
        .execute(Command::OpenSession { ttl_ms: 5_000 }, None)
        .await
    else {
        panic!("open session")
    };
    let rid = Arc::new(AtomicU64::new(1));
    let keeper = {
        let (b, rid) = (b.clone(), rid.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(700)).await;
                let id = RequestId(rid.fetch_add(1, Ordering::Relaxed));
                let _ = b.execute(Command::KeepAlive { session }, Some(id)).await;
            }
        })
    };
    while Instant::now() < until {
        let acquire = Command::Acquire {
            key: key.clone(),
            session,
            mode: Mode::Exclusive,
            timeout_ms: Some(4_000),
        };
        let id = RequestId(rid.fetch_add(1, Ordering::Relaxed));
        let token = match b.execute(acquire, Some(id)).await {
            Ok(Response::Granted(g)) => g.token,
            Ok(Response::Queued { .. }) => loop {
                match b.wait(&key, session, Duration::from_secs(2)).await {
                    Ok(WaitStatus::Granted(g)) => break Some(g.token),
                    Ok(WaitStatus::Waiting) => continue,
                    Ok(WaitStatus::Ended(WaitEnd::TimedOut)) => {
                        stats.timed_out += 1;
                        break None;
                    }
                    other => {
                        stats.errors.push(format!("wait: {other:?}"));
                        break None;
                    }
                }
            }
            .map_or(FencingToken(0), |t| t),
            other => {
                stats.errors.push(format!("acquire: {other:?}"));
                FencingToken(0)
            }
        };
        if token.0 == 0 {
            continue;
        }
        stats.granted += 1;
        fence.lock().unwrap().enter(token, who);
        tokio::time::sleep(Duration::from_millis(2)).await;
        fence.lock().unwrap().leave(token, who);
        let release = Command::Release {
            key: key.clone(),
            session,
            token,
        };
        let id = RequestId(rid.fetch_add(1, Ordering::Relaxed));
        match b.execute(release, Some(id)).await {
            Ok(Response::Released) => {}
            other => stats.errors.push(format!("release: {other:?}")),
        }
    }
    keeper.abort();
    let _ = b.execute(Command::CloseSession { session }, None).await;
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_mid_contention_grants_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(dir.path(), 20_000);
    let b = backend(&nodes).await;
    let admin = admin(&nodes);
    let key = LockKey::new("proc", "hot").unwrap();
    let fence = Arc::new(Mutex::new(Fence::default()));
    let until = Instant::now() + Duration::from_secs(8);
    let workers: Vec<_> = (0..6)
        .map(|who| tokio::spawn(worker(b.clone(), who, key.clone(), fence.clone(), until)))
        .collect();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let victim = leader(&admin, &nodes).await;
    let before = fence.lock().unwrap().grants.len();
    nodes[victim].kill9();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    nodes[victim].spawn(None, 20_000);
    let mut stats = Vec::new();
    for w in workers {
        stats.push(w.await.unwrap());
    }
    let (grants, violations) = {
        let f = fence.lock().unwrap();
        (f.grants.clone(), f.violations.clone())
    };
    let after = grants.len() - before;
    assert!(violations.is_empty(), "{violations:#?}");
    let mut tokens: Vec<u64> = grants.iter().map(|(t, _)| *t).collect();
    let n = tokens.len();
    tokens.dedup();
    assert_eq!(tokens.len(), n, "a token was granted twice");
    for (who, s) in stats.iter().enumerate() {
        assert!(s.errors.is_empty(), "worker {who}: {:?}", s.errors);
        assert!(s.granted > 0, "worker {who} was never granted: {s:?}");
    }
    assert!(
        before > 0 && after > 0,
        "grants before {before}, after {after}"
    );
    let status = converged(&admin, &nodes).await;
    assert_eq!(status.sessions, 0, "every session closed");
    eprintln!(
        "grants: {n} ({before} before the kill), timeouts: {}",
        stats.iter().map(|s| s.timed_out).sum::<u64>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_follower_rejoins_from_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(dir.path(), 100);
    let b = backend(&nodes).await;
    let admin = admin(&nodes);
    let Ok(Response::SessionOpened { session, .. }) = b
        .execute(Command::OpenSession { ttl_ms: 60_000 }, None)
        .await
    else {
        panic!("open session")
    };
    let grab = |i: u64| Command::Acquire {
        key: LockKey::new("proc", &format!("k{i}")).unwrap(),
        session,
        mode: Mode::Exclusive,
        timeout_ms: Some(0),
    };
    for i in 0..300 {
        b.execute(grab(i), Some(RequestId(i + 1))).await.unwrap();
    }
    let victim = (leader(&admin, &nodes).await + 1) % 3;
    nodes[victim].kill9();
    std::fs::remove_dir_all(&nodes[victim].dir).unwrap();
    for i in 300..400 {
        b.execute(grab(i), Some(RequestId(i + 1))).await.unwrap();
    }
    nodes[victim].spawn(None, 100);
    let status = converged(&admin, &nodes).await;
    assert_eq!(status.locks, 400);
    let rejoined = admin.status_of(&nodes[victim].addr).await.unwrap();
    assert!(rejoined.snapshot.is_some(), "{rejoined:?}");
    assert_eq!(rejoined.table_crc, status.table_crc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_grant_survives_killing_the_whole_cluster() {
    let dir = tempfile::tempdir().unwrap();
    // Small snapshots, so recovery goes through a snapshot plus a log tail.
    let mut nodes = start_cluster(dir.path(), 64);
    let b = backend(&nodes).await;
    let Ok(Response::SessionOpened { session, .. }) = b
        .execute(Command::OpenSession { ttl_ms: 120_000 }, None)
        .await
    else {
        panic!("open session")
    };
    let mut granted = Vec::new();
    for i in 0..150u64 {
        let key = LockKey::new("proc", &format!("durable{i}")).unwrap();
        let acquire = Command::Acquire {
            key: key.clone(),
            session,
            mode: Mode::Exclusive,
            timeout_ms: Some(0),
        };
        match b.execute(acquire, Some(RequestId(i + 1))).await {
            Ok(Response::Granted(g)) => granted.push((key, g.token)),
            other => panic!("acquire {i}: {other:?}"),
        }
    }
    for n in &mut nodes {
        n.kill9();
    }
    for n in &mut nodes {
        n.spawn(None, 64);
    }
    let b = backend(&nodes).await;
    for (key, token) in &granted {
        let held = b.validate(key, *token).await;
        assert!(held.is_ok(), "{key}: {held:?}");
    }
    // A retried request id answers its first result after the restart (the
    // session remembers its newest request ids; the last one is among them).
    let (key, token) = &granted[149];
    let retry = Command::Acquire {
        key: key.clone(),
        session,
        mode: Mode::Exclusive,
        timeout_ms: Some(0),
    };
    match b.execute(retry, Some(RequestId(150))).await {
        Ok(Response::Granted(g)) => assert_eq!(g.token, *token),
        other => panic!("retry: {other:?}"),
    }
    let status = converged(&admin(&nodes), &nodes).await;
    assert_eq!(status.locks, 150);
}
