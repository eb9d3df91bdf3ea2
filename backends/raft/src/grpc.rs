//! gRPC over HTTP/2 with tonic: a [`Transport`] (one cached channel per
//! address; tonic reconnects it after failures) and the node's server,
//! which also speaks the framed protocol of [`crate::tcp`] on the same port.

use crate::node::LockNode;
use crate::transport::{Transport, TransportError};
use crate::wire::generated::node_client::NodeClient;
use crate::wire::generated::node_server::{Node, NodeServer};
use crate::wire::{ClientReply, ClientRpc, RaftReply, RaftRpc};
use async_trait::async_trait;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

/// Largest message either side accepts (snapshot chunks, big batches).
const MAX_MESSAGE: usize = 64 << 20;

/// Calls nodes over gRPC.
#[derive(Default)]
pub struct GrpcTransport {
    channels: Mutex<HashMap<String, Channel>>,
}

impl GrpcTransport {
    pub fn new() -> Self {
        Self::default()
    }

    fn client(&self, addr: &str) -> Result<NodeClient<Channel>, TransportError> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| TransportError::Unreachable {
                        addr: addr.to_string(),
                        reason: format!("bad address: {e}"),
                    })?
                    .tcp_nodelay(true)
                    .connect_timeout(Duration::from_millis(500))
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5));
                let c = endpoint.connect_lazy();
                channels.insert(addr.to_string(), c.clone());
                c
            }
        };
        Ok(NodeClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }
}

fn status_error(addr: &str, s: Status) -> TransportError {
    let addr = addr.to_string();
    // tonic reports a failed connect as UNAVAILABLE before anything was sent.
    if s.code() == Code::Unavailable {
        TransportError::Unreachable {
            addr,
            reason: s.message().to_string(),
        }
    } else {
        TransportError::Failed {
            addr,
            reason: format!("{}: {}", s.code(), s.message()),
        }
    }
}

async fn with_timeout<T>(
    addr: &str,
    timeout: Duration,
    call: impl Future<Output = Result<Response<T>, Status>>,
) -> Result<T, TransportError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(status_error(addr, s)),
        Err(_) => Err(TransportError::Timeout {
            addr: addr.to_string(),
            ms: timeout.as_millis() as u64,
        }),
    }
}

#[async_trait]
impl Transport for GrpcTransport {
    async fn raft(
        &self,
        addr: &str,
        rpc: RaftRpc,
        timeout: Duration,
    ) -> Result<RaftReply, TransportError> {
        let mut client = self.client(addr)?;
        with_timeout(addr, timeout, client.raft(Request::new(rpc))).await
    }

    async fn client(
        &self,
        addr: &str,
        rpc: ClientRpc,
        timeout: Duration,
    ) -> Result<ClientReply, TransportError> {
        let mut client = self.client(addr)?;
        with_timeout(addr, timeout, client.client(Request::new(rpc))).await
    }
}

struct Service(LockNode);

#[async_trait]
impl Node for Service {
    async fn raft(&self, request: Request<RaftRpc>) -> Result<Response<RaftReply>, Status> {
        Ok(Response::new(
            self.0.handle_raft(request.into_inner()).await,
        ))
    }

    async fn client(&self, request: Request<ClientRpc>) -> Result<Response<ClientReply>, Status> {
        Ok(Response::new(
            self.0.handle_client(request.into_inner()).await,
        ))
    }
}

/// Serves `node` on `listener` until `shutdown` completes: gRPC, and the
/// framed protocol of [`crate::tcp`] on connections that start with its
/// magic bytes.
pub async fn serve(
    node: LockNode,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let service = NodeServer::new(Service(node.clone()))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (to_grpc, grpc_conns) = tokio::sync::mpsc::channel::<std::io::Result<TcpStream>>(16);
    let accept = async move {
        loop {
            match listener.accept().await {
                Ok((conn, _)) => {
                    crate::rt::spawn(sniff(conn, node.clone(), to_grpc.clone(), stopped.clone()));
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    crate::rt::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    };
    let grpc = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(ReceiverStream::new(grpc_conns), async move {
            shutdown.await;
            let _ = stop.send(true);
        });
    tokio::select! {
        r = grpc => r,
        never = accept => never,
    }
}

/// Runs [`serve`] in a task of its own until the returned sender fires or
/// is dropped (for in-process clusters: tests, benchmarks).
pub fn spawn_serve(
    node: LockNode,
    listener: tokio::net::TcpListener,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let _ = serve(node, listener, async {
            let _ = stopped.await;
        })
        .await;
    });
    (stop, server)
}

/// Hands a new connection to the framed protocol if it starts with its
/// magic bytes, else to gRPC.
async fn sniff(
    conn: TcpStream,
    node: LockNode,
    to_grpc: tokio::sync::mpsc::Sender<std::io::Result<TcpStream>>,
    stopped: tokio::sync::watch::Receiver<bool>,
) {
    // The builder's `tcp_nodelay` covers only sockets it accepts itself,
    // not an incoming stream: set it on each. With Nagle on, a reply
    // written in pieces waited for the client's delayed ACK (~40 ms).
    if conn.set_nodelay(true).is_err() {
        return;
    }
    let mut first = [0u8; 4];
    let sniffed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match conn.peek(&mut first).await {
                Ok(n) if n >= first.len() => return Some(&first == crate::tcp::MAGIC),
                // Both protocols send their preface at once; a few bytes
                // more are on their way.
                Ok(n) if n > 0 => crate::rt::sleep(Duration::from_millis(1)).await,
                _ => return None,
            }
        }
    })
    .await;
    // Closed, failed, or fewer than 4 bytes in 10 s: drop the connection.
    let Ok(Some(framed)) = sniffed else {
        return;
    };
    if framed {
        crate::tcp::serve_conn(node, conn, stopped).await;
    } else {
        let _ = to_grpc.send(Ok(conn)).await;
    }
}
