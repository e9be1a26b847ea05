//! Carrying captured connections: each enrolled pod has an outbound and an inbound listener
//! inside its network namespace; accepted connections are forwarded as plain TCP to their
//! original destination from a socket made in the same namespace (so the pod's own address
//! is the source, as without the mesh).

mod connections;
mod inbound;
mod outbound;

use std::{net::SocketAddr, sync::Arc, time::Instant};

use tokio::net::{TcpSocket, TcpStream};

pub use connections::{ConnectionInfo, Connections};
pub use inbound::serve_inbound;
pub use outbound::serve_outbound;

use crate::{
    app::State,
    metrics::{Reporter, ResponseFlags, SecurityPolicy, TcpLabels},
    netns::NetNs,
    pods::Pod,
};

/// Large enough for loopback throughput; issue-sized memory work (HBONE) revisits this.
const COPY_BUFFER: usize = 64 * 1024;

/// What the proxies need to know about an enrolled pod.
#[derive(Debug)]
pub struct PodContext {
    pub pod: Pod,
    pub netns: NetNs,
    pub netns_cookie: u64,
}

/// Opens a TCP connection from inside the pod's namespace, optionally from a fixed source.
async fn connect_from_pod(
    pod: &PodContext,
    dst: SocketAddr,
    source: Option<SocketAddr>,
) -> std::io::Result<TcpStream> {
    let socket = pod.netns.socket(socket2::Domain::for_address(dst))?;
    socket.set_nodelay(true)?;
    if let Some(source) = source {
        socket.bind(&source.into())?;
    }
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    socket.connect(dst).await
}

/// Copies both ways until both sides are done, then records the connection's bytes.
async fn forward(
    state: Arc<State>,
    labels: TcpLabels,
    mut downstream: TcpStream,
    mut upstream: TcpStream,
    info: ConnectionInfo,
) {
    let metrics = &state.metrics;
    metrics.connections_opened.get_or_create(&labels).inc();
    let _registration = state.connections.register(info.clone());
    let started = Instant::now();
    let result = tokio::io::copy_bidirectional_with_sizes(
        &mut downstream,
        &mut upstream,
        COPY_BUFFER,
        COPY_BUFFER,
    )
    .await;
    let (sent, received) = match result {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::debug!(%error, src = %info.source, dst = %info.destination, "connection ended with an error");
            (0, 0)
        }
    };
    metrics.sent_bytes.get_or_create(&labels).inc_by(sent);
    metrics
        .received_bytes
        .get_or_create(&labels)
        .inc_by(received);
    metrics.connections_closed.get_or_create(&labels).inc();
    tracing::debug!(
        src = %info.source, dst = %info.destination, sent, received,
        duration_ms = started.elapsed().as_millis() as u64, "connection closed"
    );
}

/// Labels for a connection between `local` (an enrolled pod of this node) and a peer address.
fn labels(
    state: &State,
    reporter: Reporter,
    local: &Pod,
    peer: SocketAddr,
    flags: ResponseFlags,
) -> TcpLabels {
    let (peer_workload, peer_namespace) = match peer.ip() {
        std::net::IpAddr::V4(ip) => state
            .pods()
            .by_ip(ip)
            .map(|pod| (workload_name(pod), pod.namespace.clone()))
            .unwrap_or_else(unknown),
        std::net::IpAddr::V6(_) => unknown(),
    };
    let (local_workload, local_namespace) = (workload_name(local), local.namespace.clone());
    let (
        (source_workload, source_workload_namespace),
        (destination_workload, destination_workload_namespace),
    ) = match reporter {
        Reporter::source => (
            (local_workload, local_namespace),
            (peer_workload, peer_namespace),
        ),
        Reporter::destination => (
            (peer_workload, peer_namespace),
            (local_workload, local_namespace),
        ),
    };
    TcpLabels {
        reporter,
        source_workload,
        source_workload_namespace,
        destination_workload,
        destination_workload_namespace,
        connection_security_policy: SecurityPolicy::none,
        response_flags: flags,
    }
}

/// Counts a captured connection that could not be carried.
fn record_failure(
    state: &State,
    reporter: Reporter,
    local: &Pod,
    peer: SocketAddr,
    flags: ResponseFlags,
) {
    let labels = labels(state, reporter, local, peer, flags);
    state
        .metrics
        .connections_failed
        .get_or_create(&labels)
        .inc();
}

fn unknown() -> (String, String) {
    ("unknown".to_owned(), "unknown".to_owned())
}

/// Istio names a workload by its `app` label (Deployments share it), else the pod name.
fn workload_name(pod: &Pod) -> String {
    pod.labels
        .get("app")
        .cloned()
        .unwrap_or_else(|| pod.name.clone())
}
