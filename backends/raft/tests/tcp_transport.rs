//! The framed TCP transport (`fencelock_raft::tcp`): a cluster whose nodes
//! and clients talk over it, gRPC clients on the same port, failures.

use fencelock::{Backend, Command, LockKey, Mode, Response};
use fencelock_raft::grpc::{self, GrpcTransport};
use fencelock_raft::tcp::TcpTransport;
use fencelock_raft::wire::{AdminRpc, ClientReply, ClientRpc};
use fencelock_raft::{
    ClientConfig, LockNode, NodeConfig, RaftBackend, SystemClock, Transport, TransportError,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

struct Served {
    node: LockNode,
    addr: String,
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

async fn serve(node: LockNode, listener: tokio::net::TcpListener) -> Served {
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, server) = grpc::spawn_serve(node.clone(), listener);
    Served {
        node,
        addr,
        stop,
        server,
    }
}

/// Three nodes that call each other over `transport`.
async fn cluster(dir: &std::path::Path, transport: Arc<TcpTransport>) -> Vec<Served> {
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let mut served = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let addr = listener.local_addr().unwrap().to_string();
        let config = NodeConfig::new(id, addr, dir.join(format!("n{id}"))).with_fast_elections();
        let node = LockNode::start(config, transport.clone(), Arc::new(SystemClock))
            .await
            .unwrap();
        served.push(serve(node, listener).await);
    }
    let members: BTreeMap<u64, String> = served
        .iter()
        .map(|s| (s.node.id(), s.addr.clone()))
        .collect();
    backend(&transport, &served)
        .cluster()
        .init(members)
        .await
        .unwrap();
    served
}

fn backend(transport: &Arc<TcpTransport>, served: &[Served]) -> RaftBackend {
    RaftBackend::with_transport(
        transport.clone(),
        served.iter().map(|s| s.addr.clone()).collect(),
        ClientConfig::default(),
    )
    .unwrap()
}

async fn session(b: &RaftBackend) -> fencelock::SessionId {
    match b
        .execute(Command::OpenSession { ttl_ms: 60_000 }, None)
        .await
    {
        Ok(Response::SessionOpened { session, .. }) => session,
        other => panic!("open session: {other:?}"),
    }
}

fn status() -> ClientRpc {
    ClientRpc::Admin(AdminRpc::Status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_runs_over_it_and_grpc_clients_share_the_port() {
    let dir = tempfile::tempdir().unwrap();
    let transport = Arc::new(TcpTransport::new());
    let served = cluster(dir.path(), transport.clone()).await;
    let b = Arc::new(backend(&transport, &served));
    let key = LockKey::new("tcp", "hot").unwrap();
    // Four clients hand one lock around, concurrently (their requests share
    // connections and are answered out of order).
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (b, key) = (b.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let s = session(&b).await;
            for rid in 1..=20u64 {
                let acquire = Command::Acquire {
                    key: key.clone(),
                    session: s,
                    mode: Mode::Exclusive,
                    timeout_ms: Some(30_000),
                };
                let token = match b
                    .execute_waiting(
                        acquire,
                        Some(fencelock::RequestId(2 * rid)),
                        Duration::from_secs(10),
                    )
                    .await
                {
                    Ok(Response::Granted(g)) => g.token,
                    other => panic!("acquire: {other:?}"),
                };
                let release = Command::Release {
                    key: key.clone(),
                    session: s,
                    token,
                };
                let r = b
                    .execute(release, Some(fencelock::RequestId(2 * rid + 1)))
                    .await;
                assert_eq!(r.unwrap(), Response::Released);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let info = b.describe(&key).await.unwrap();
    assert!(
        info.as_ref().is_none_or(|i| i.holders.is_empty()),
        "{info:?}"
    );
    // Every replica applied the same entries (followers may lag a moment).
    let applied = served[0]
        .node
        .applied_index()
        .max(served[1].node.applied_index());
    for _ in 0..200 {
        if served.iter().all(|s| s.node.applied_index() >= applied) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let tables: Vec<Vec<u8>> = served.iter().map(|s| s.node.table_bytes()).collect();
    assert!(tables.windows(2).all(|w| w[0] == w[1]), "replicas differ");
    // A gRPC client is served on the same port.
    let grpc = GrpcTransport::new();
    for s in &served {
        match grpc.client(&s.addr, status(), Duration::from_secs(5)).await {
            Ok(ClientReply::Status(st)) => assert_eq!(st.id, s.node.id()),
            other => panic!("status over gRPC: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_answers_cancelled_calls_and_big_frames_leave_the_connection_usable() {
    let dir = tempfile::tempdir().unwrap();
    let transport = Arc::new(TcpTransport::new());
    let served = cluster(dir.path(), transport.clone()).await;
    let b = backend(&transport, &served);
    let (holder, waiter) = (session(&b).await, session(&b).await);
    let key = LockKey::new("tcp", "held").unwrap();
    for (s, want) in [(holder, "Granted"), (waiter, "Queued")] {
        let acquire = Command::Acquire {
            key: key.clone(),
            session: s,
            mode: Mode::Exclusive,
            timeout_ms: Some(30_000),
        };
        let r = b.execute(acquire, Some(fencelock::RequestId(1))).await;
        assert!(format!("{r:?}").contains(want), "{r:?}");
    }
    // A long poll answered after the caller's timeout (by the leader;
    // followers redirect at once): the caller times out, the late answer
    // is dropped, and later calls get their own answers.
    let poll = ClientRpc::Wait {
        key,
        session: waiter,
        max_wait_ms: 300,
    };
    let mut leader = None;
    for s in &served {
        match transport
            .client(&s.addr, poll.clone(), Duration::from_millis(50))
            .await
        {
            Err(TransportError::Timeout { .. }) => leader = Some(s.addr.clone()),
            Ok(ClientReply::NotLeader { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    let addr = &leader.expect("the leader answers the poll late");
    // Frames of several MB, many of them abandoned mid-call: each is written
    // whole or not at all, so the small calls between them are answered.
    // (An init of a running cluster: refused, changes nothing.)
    let big = ClientRpc::Admin(AdminRpc::Init {
        members: BTreeMap::from([(99, "x".repeat(4 << 20))]),
    });
    for round in 0..6 {
        let mut calls = Vec::new();
        for _ in 0..4 {
            let (t, big, addr) = (transport.clone(), big.clone(), addr.clone());
            calls.push(tokio::spawn(async move {
                let call = t.client(&addr, big, Duration::from_secs(10));
                let _ = tokio::time::timeout(Duration::from_micros(200 * round), call).await;
            }));
        }
        for c in calls {
            c.await.unwrap();
        }
        match transport
            .client(addr, status(), Duration::from_secs(5))
            .await
        {
            Ok(ClientReply::Status(st)) => assert_eq!(&st.nodes[&st.id], addr),
            other => panic!("round {round}: {other:?}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    match transport
        .client(addr, status(), Duration::from_secs(5))
        .await
    {
        Ok(ClientReply::Status(_)) => {}
        other => panic!("after the late answers: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_fails_calls_and_a_restarted_one_is_reached_again() {
    let dir = tempfile::tempdir().unwrap();
    let transport = Arc::new(TcpTransport::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let config = NodeConfig::new(1, addr.clone(), dir.path().join("n1"));
    let node = LockNode::start(config, transport.clone(), Arc::new(SystemClock))
        .await
        .unwrap();
    let served = serve(node.clone(), listener).await;
    let ok = transport
        .client(&addr, status(), Duration::from_secs(5))
        .await;
    assert!(matches!(ok, Ok(ClientReply::Status(_))), "{ok:?}");
    // A long poll in flight when the server stops ends with an error, not at
    // its timeout.
    let poll = ClientRpc::Wait {
        key: LockKey::new("tcp", "k").unwrap(),
        session: fencelock::SessionId(7),
        max_wait_ms: 20_000,
    };
    let pending = tokio::spawn({
        let (t, addr) = (transport.clone(), addr.clone());
        async move { t.client(&addr, poll, Duration::from_secs(30)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = served.stop.send(());
    served.server.await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("the poll outlived its server")
        .unwrap();
    assert!(ended.is_err(), "{ended:?}");
    let refused = transport
        .client(&addr, status(), Duration::from_secs(5))
        .await;
    assert!(
        matches!(refused, Err(TransportError::Unreachable { .. })),
        "{refused:?}"
    );
    // Served again on the same address: the transport reconnects.
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    let _again = serve(node, listener).await;
    let ok = transport
        .client(&addr, status(), Duration::from_secs(5))
        .await;
    assert!(matches!(ok, Ok(ClientReply::Status(_))), "{ok:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_silent_through_a_timeout_is_replaced() {
    // A peer that accepts and reads but never answers (as one gone without
    // a FIN would look).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (accepted, mut conns) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let _ = accepted.send(conn);
        }
    });
    let transport = TcpTransport::new();
    let mut open = Vec::new(); // never closed by this side
    for round in 1..=2 {
        let r = transport
            .client(&addr, status(), Duration::from_millis(100))
            .await;
        assert!(matches!(r, Err(TransportError::Timeout { .. })), "{r:?}");
        // Each call went out on a connection of its own: the first one was
        // given up when it stayed silent.
        match tokio::time::timeout(Duration::from_secs(1), conns.recv()).await {
            Ok(Some(conn)) => open.push(conn),
            _ => panic!("round {round}: no new connection"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_says_which_protocol_is_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let config = NodeConfig::new(1, addr.clone(), dir.path().join("n1"));
    let node = LockNode::start(config, Arc::new(TcpTransport::new()), Arc::new(SystemClock))
        .await
        .unwrap();
    let _served = serve(node, listener).await;
    // Two bytes of a preface, then silence: after its 10 s the server
    // closes the connection (and stops looking at it).
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(b"FL").await.unwrap();
    let mut buf = [0u8; 8];
    let read = tokio::time::timeout(Duration::from_secs(15), conn.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
}
