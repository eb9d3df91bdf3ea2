//! The production [`Transport`]: gRPC over HTTP/2 with tonic, one cached
//! channel per address (tonic reconnects it after failures).

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
use tokio_stream::StreamExt;
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

/// Serves `node` on `listener` until `shutdown` completes.
pub async fn serve(
    node: LockNode,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let service = NodeServer::new(Service(node))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    // The builder's `tcp_nodelay` covers only sockets it accepts itself,
    // not an incoming stream: set it on each. With Nagle on, a reply
    // written in pieces waited for the client's delayed ACK (~40 ms).
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok::<_, std::io::Error>(conn)
    });
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
