//! What is not HTTP through a waypoint (TLS from the client, a database protocol, a protocol
//! where the server speaks first): carried as TCP to an endpoint of the destination, after
//! an L4 authorization check (rules that need HTTP attributes fail closed, as at a node).

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};

use crate::{
    app::App,
    h2io::H2Io,
    proxy::{Destination, Downstream},
    routes::Target,
    store::Snapshot,
    upstream::{Failure, Resolved},
};

/// How long the waypoint waits for a client's first bytes, on a port whose Service does not
/// declare its protocol, before deciding the protocol is one where the server speaks first.
/// A port declared TCP (`appProtocol: tcp`, `mysql-*`) is carried at once.
pub const SNIFF_WAIT: Duration = Duration::from_millis(300);

/// Whether the first bytes of a stream are HTTP/1 (a method then a space) or the HTTP/2
/// preface.
pub fn looks_like_http(first: &[u8]) -> bool {
    if first.starts_with(b"PRI * HTTP/2.0") {
        return true;
    }
    let method_len = first
        .iter()
        .take(16)
        .take_while(|b| b.is_ascii_uppercase())
        .count();
    method_len > 0 && method_len < 16 && first.get(method_len) == Some(&b' ')
}

/// Carries `io` to an endpoint of the destination until either side ends.
/// `how` says whether the port was declared TCP or sniffed as not HTTP.
pub async fn carry(mut io: H2Io, downstream: Arc<Downstream>, app: Arc<App>, how: &'static str) {
    let snapshot = app.store.get();
    let (namespace, service) = match &downstream.destination {
        Destination::Service(s) => (s.namespace.clone(), Some(s.clone())),
        Destination::Workload(w) => (w.namespace.clone(), None),
        Destination::Gateway(_) => return,
    };
    let gateway = app
        .config
        .waypoint
        .as_deref()
        .and_then(|w| w.split_once('/'))
        .map_or("", |(_, name)| name);
    let connection = mesh_core::policy::Connection {
        source: downstream.client.as_ref(),
        source_ip: downstream.source.ip(),
        destination_port: downstream.target.port(),
        request: None,
    };
    let targets = mesh_core::policy::Targets {
        namespace: &namespace,
        gateway,
        class: app.config.gateway_class.as_deref(),
        service: service.as_ref().map(|s| s.name.as_str()),
    };
    if !admits(&snapshot, &targets, connection) {
        return;
    }
    let mut first = Vec::new();
    let resolved = match (&downstream.destination, &service) {
        (_, Some(service)) => {
            let sni = match snapshot.routes.reads_sni(&service.hostname) {
                true => {
                    let (seen, sni) = crate::sni::read_client_hello(&mut io, SNIFF_WAIT).await;
                    first = seen;
                    sni
                }
                false => None,
            };
            let connection = crate::routes::TcpConnection {
                port: downstream.target.port(),
                destination: downstream.target.ip(),
                source: downstream.source_workload.as_deref(),
                sni: sni.as_deref(),
            };
            let target = match snapshot.routes.tcp_route(&service.hostname, &connection) {
                Some(route) => {
                    tracing::debug!(route = %route.origin, "TCP route");
                    route.choose().clone()
                }
                None => Target {
                    host: service.hostname.clone(),
                    subset: None,
                    port: None,
                },
            };
            app.upstreams.resolve(
                &snapshot,
                &app.store.workloads,
                &target,
                downstream.target.port(),
            )
        }
        (Destination::Workload(w), None) => {
            Ok(app.upstreams.resolve_workload(w, downstream.target))
        }
        _ => return,
    };
    let carried = Carried {
        first,
        what: how,
        target: downstream.target,
        downstream: Some(downstream.clone()),
    };
    carry_to(io, carried, resolved, &app).await;
}

/// L4 AuthorizationPolicies on a connection carried as TCP (rules that need HTTP attributes
/// fail closed): whether it may go on. A denied one is logged.
pub fn admits(
    snapshot: &Snapshot,
    targets: &mesh_core::policy::Targets<'_>,
    connection: mesh_core::policy::Connection<'_>,
) -> bool {
    let port = connection.destination_port;
    match snapshot.policies.authorize_request(targets, connection) {
        mesh_core::policy::Decision::Allow => true,
        mesh_core::policy::Decision::Deny { policy, reason } => {
            tracing::info!(port, %policy, %reason, "TCP connection denied");
            false
        }
    }
}

/// A connection on its way to an endpoint.
pub struct Carried {
    /// What the client already sent (read to find its server name): sent on first.
    pub first: Vec<u8>,
    /// How it came to be carried as TCP, for the log.
    pub what: &'static str,
    /// The address the client connected to, for the log.
    pub target: std::net::SocketAddr,
    /// The mesh connection it came on, when it is counted in Istio's TCP metrics.
    pub downstream: Option<Arc<Downstream>>,
}

/// Carries `io` to an endpoint of `resolved` until either side ends.
pub async fn carry_to<IO>(
    mut io: IO,
    carried: Carried,
    resolved: Result<Arc<Resolved>, Failure>,
    app: &App,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let target = carried.target;
    let resolved = match resolved {
        Ok(resolved) => resolved,
        Err(failure) => {
            tracing::info!(%failure, %target, "TCP connection not carried");
            return;
        }
    };
    let Some(endpoint) = resolved
        .cluster
        .pick(&resolved.endpoints, &resolved.policy, None)
        .cloned()
    else {
        tracing::info!(%target, "TCP connection: no endpoint");
        return;
    };
    let identity = endpoint
        .workload
        .as_ref()
        .filter(|w| w.enrolled)
        .and_then(|w| w.identity.clone());
    match app
        .upstreams
        .connect(endpoint.addr, identity.as_ref(), endpoint.via.as_ref())
        .await
    {
        Ok(mut upstream) => {
            tracing::debug!(%target, upstream = %endpoint.addr, protocol = carried.what, "TCP through the waypoint");
            let Some(downstream) = &carried.downstream else {
                if upstream.write_all(&carried.first).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut io, &mut upstream).await;
                }
                return;
            };
            let labels = crate::metrics::traffic_labels(
                downstream,
                endpoint.workload.as_deref(),
                None,
                "tcp",
                &app.config.cluster_id,
                &[],
            );
            let metrics = &app.metrics;
            metrics.tcp_opened.get_or_create(&labels).inc();
            let from_client = metrics.tcp_received_bytes.get_or_create(&labels).clone();
            let from_server = metrics.tcp_sent_bytes.get_or_create(&labels).clone();
            // What the client sent before the protocol was known is the request's too.
            if upstream.write_all(&carried.first).await.is_ok() {
                from_client.inc_by(carried.first.len() as u64);
                let mut io = Counted::new(io, from_client);
                let mut upstream = Counted::new(upstream, from_server);
                let _ = tokio::io::copy_bidirectional(&mut io, &mut upstream).await;
            }
            metrics.tcp_closed.get_or_create(&labels).inc();
        }
        Err(error) => {
            tracing::info!(%error, upstream = %endpoint.addr, "TCP connection to the endpoint failed")
        }
    }
}

/// A stream whose reads are counted as they happen (a long transfer shows in the rates while
/// it runs).
struct Counted<IO> {
    io: IO,
    read: Counter,
}

impl<IO> Counted<IO> {
    fn new(io: IO, read: Counter) -> Self {
        Counted { io, read }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.read.inc_by((buf.filled().len() - before) as u64);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::looks_like_http;

    #[test]
    fn http_is_told_from_tls_and_binary_protocols() {
        assert!(looks_like_http(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_http(b"OPTIONS * HTTP/1.1\r\n"));
        assert!(looks_like_http(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(
            !looks_like_http(&[0x16, 0x03, 0x01, 0x02, 0x00]),
            "a TLS ClientHello"
        );
        assert!(
            !looks_like_http(b"\x00\x00\x00\x08\x04\xd2\x16\x2f"),
            "postgres"
        );
        assert!(
            !looks_like_http(b"get / HTTP/1.1"),
            "methods are upper case"
        );
        assert!(!looks_like_http(b"GET"), "not yet known");
    }
}
