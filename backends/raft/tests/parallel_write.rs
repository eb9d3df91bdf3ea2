//! The leader writes its log in parallel with replicating it (see
//! `fencelock_raft::durable`): an entry the followers have on disk but the
//! leader has not flushed yet must take effect nowhere — no node applies it,
//! no client hears of it — until the leader's flush completes.

use fencelock::{Backend, Command, Response};
use fencelock_raft::grpc::{self, GrpcTransport};
use fencelock_raft::log_store::LogStore;
use fencelock_raft::state_machine::StateMachine;
use fencelock_raft::wal::{Done, LogSink, MemDisk};
use fencelock_raft::{LockNode, NodeConfig, RaftBackend, SystemClock};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An in-memory disk whose flushes can be held back.
#[derive(Default)]
struct HeldDisk {
    disk: MemDisk,
    /// `Some` while flush completions are held, in order.
    held: Mutex<Option<Vec<Done>>>,
}

impl HeldDisk {
    fn hold(&self) {
        *self.held.lock().unwrap() = Some(Vec::new());
    }

    fn release(&self) {
        let held = self.held.lock().unwrap().take().unwrap_or_default();
        for done in held {
            done(Ok(()));
        }
    }
}

impl LogSink for HeldDisk {
    fn append(&self, bytes: Vec<u8>, done: Option<Done>) {
        let mut held = self.held.lock().unwrap();
        match (held.as_mut(), done) {
            (Some(queue), Some(done)) => {
                self.disk.append(bytes, None);
                queue.push(done);
            }
            (_, done) => {
                drop(held);
                self.disk.append(bytes, done);
            }
        }
    }

    fn rewrite(&self, bytes: Vec<u8>, done: Option<Done>) {
        self.disk.rewrite(bytes, done);
    }
}

async fn open(b: &RaftBackend) -> Result<Response, fencelock::Error> {
    b.execute(Command::OpenSession { ttl_ms: 60_000 }, None)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_takes_effect_only_once_the_leader_flushed_it() {
    let dir = tempfile::tempdir().unwrap();
    let transport = Arc::new(GrpcTransport::new());
    let mut nodes = Vec::new();
    let mut disks = Vec::new();
    let mut addrs = Vec::new();
    for i in 1..=3u64 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let data = dir.path().join(format!("n{i}"));
        let disk = Arc::new(HeldDisk::default());
        let log = LogStore::on_sink(&[], disk.clone()).unwrap();
        let sm = StateMachine::open(&data).unwrap();
        let config = NodeConfig::new(i, addr.clone(), data).with_fast_elections();
        let node = LockNode::start_with(config, log, sm, transport.clone(), Arc::new(SystemClock))
            .await
            .unwrap();
        let served = node.clone();
        tokio::spawn(async move {
            let _ = grpc::serve(served, listener, std::future::pending()).await;
        });
        nodes.push(node);
        disks.push(disk);
        addrs.push(addr);
    }
    let b = RaftBackend::connect(addrs.clone()).unwrap();
    let members: BTreeMap<u64, String> = (1..=3).zip(addrs).collect();
    b.cluster().init(members).await.unwrap();
    // A first command: the leader is elected, graced and serving.
    assert!(matches!(open(&b).await, Ok(Response::SessionOpened { .. })));

    let leader = nodes
        .iter()
        .position(|n| n.raft().metrics().borrow().current_leader == Some(n.id()))
        .expect("a leader");
    // Let the followers catch up with what is committed so far.
    let target = nodes[leader].applied_index();
    tokio::time::timeout(Duration::from_secs(5), async {
        while nodes.iter().any(|n| n.applied_index() < target) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every replica applies the first command");
    let applied: Vec<u64> = nodes.iter().map(|n| n.applied_index()).collect();
    disks[leader].hold();
    let b = Arc::new(b);
    let pending = tokio::spawn({
        let b = b.clone();
        async move { open(&b).await }
    });
    // Followers flush at once and acknowledge; several heartbeats pass.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !pending.is_finished(),
        "a command was acknowledged before the leader flushed it"
    );
    let now: Vec<u64> = nodes.iter().map(|n| n.applied_index()).collect();
    assert_eq!(
        now, applied,
        "a node applied an entry the leader had not flushed"
    );

    disks[leader].release();
    let reply = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("the command completes once the leader flushed")
        .unwrap();
    assert!(
        matches!(reply, Ok(Response::SessionOpened { .. })),
        "{reply:?}"
    );
    // And the commit reaches the followers.
    let target = nodes[leader].applied_index();
    tokio::time::timeout(Duration::from_secs(5), async {
        while nodes.iter().any(|n| n.applied_index() < target) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every replica applies the entry");
    for n in &nodes {
        n.shutdown().await;
    }
}
