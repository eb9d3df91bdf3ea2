//! etcd 3.4 side by side with the Raft backend: a throwaway 3-node etcd
//! cluster on 127.0.0.1 (data dirs in a temp dir, on the same disk as ours)
//! and its lock API driven the way applications use it through the
//! `etcd-client` crate: a lease per client, then `lock` / `unlock`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `etcd` binary: `$ETCD_BIN`, else `etcd` on the PATH (Debian's
/// `etcd-server` package; `scripts/setup.sh` installs it).
pub fn binary() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("ETCD_BIN") {
        return Some(PathBuf::from(bin));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
}

/// Three etcd processes; killed when dropped.
pub struct EtcdCluster {
    children: Vec<Child>,
    /// The client URL of the member that leads (clients talk to it directly,
    /// which spares etcd the follower-to-leader forwarding hop).
    pub leader_url: String,
    _dir: tempfile::TempDir,
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Ports nobody listens on right now (bound once, then released).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .filter_map(|_| TcpListener::bind("127.0.0.1:0").ok())
        .collect();
    listeners
        .iter()
        .filter_map(|l| l.local_addr().ok().map(|a| a.port()))
        .collect()
}

impl EtcdCluster {
    /// The members' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// Starts three members with etcd's default timing (heartbeat 100 ms)
    /// and waits until one leads.
    pub async fn start(bin: &Path) -> Result<EtcdCluster, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let ports = free_ports(6);
        if ports.len() < 6 {
            return Err("no free ports on 127.0.0.1".into());
        }
        let peer = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i]);
        let client = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i + 1]);
        let initial = (0..3)
            .map(|i| format!("n{i}={}", peer(i)))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            children: Vec::new(),
            leader_url: String::new(),
            _dir: dir,
        };
        for i in 0..3 {
            let root = cluster._dir.path();
            let log =
                std::fs::File::create(root.join(format!("n{i}.log"))).map_err(|e| e.to_string())?;
            let child = Command::new(bin)
                .args(["--name", &format!("n{i}")])
                .arg("--data-dir")
                .arg(root.join(format!("n{i}")))
                .args(["--listen-peer-urls", &peer(i)])
                .args(["--initial-advertise-peer-urls", &peer(i)])
                .args(["--listen-client-urls", &client(i)])
                .args(["--advertise-client-urls", &client(i)])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-token", "fencelock-bench"])
                .args(["--initial-cluster-state", "new"])
                .args(["--logger", "zap", "--log-level", "error"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
            cluster.children.push(child);
        }
        let give_up = Instant::now() + Duration::from_secs(30);
        while Instant::now() < give_up {
            for i in 0..3 {
                if let Some(true) = is_leader(&client(i)).await {
                    cluster.leader_url = client(i);
                    return Ok(cluster);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err("etcd elected no leader within 30 s".into())
    }
}

/// Whether the member at `url` answers and leads.
async fn is_leader(url: &str) -> Option<bool> {
    let opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(500))
        .with_timeout(Duration::from_secs(1));
    let mut c = etcd_client::Client::connect([url], Some(opts)).await.ok()?;
    let status = c.status().await.ok()?;
    let me = status.header()?.member_id();
    Some(status.leader() != 0 && status.leader() == me)
}

/// One etcd lock client: its own connection and lease, like an application
/// process.
pub struct EtcdClient {
    c: etcd_client::Client,
    lease: i64,
}

impl EtcdClient {
    pub async fn open(url: &str) -> EtcdClient {
        let mut c = etcd_client::Client::connect([url], None)
            .await
            .expect("connect to etcd");
        let lease = c.lease_grant(60, None).await.expect("etcd lease").id();
        EtcdClient { c, lease }
    }

    /// Lock (waiting as long as needed) then unlock; returns the lock latency.
    pub async fn pair(&mut self, name: &str) -> Duration {
        let start = Instant::now();
        let opts = etcd_client::LockOptions::new().with_lease(self.lease);
        let key = self
            .c
            .lock(name, Some(opts))
            .await
            .expect("etcd lock")
            .key()
            .to_vec();
        let latency = start.elapsed();
        self.c.unlock(key).await.expect("etcd unlock");
        latency
    }

    pub async fn close(mut self) {
        let _ = self.c.lease_revoke(self.lease).await;
    }
}
