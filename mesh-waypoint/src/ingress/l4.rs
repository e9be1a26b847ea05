//! The ingress's TCP and TLS servers: a connection is carried as TCP, to where the first of
//! the Gateway's VirtualService `tls` and `tcp` routes that fits it says, as in Istio's
//! ingress tasks (TCP traffic shifting through the gateway; SNI passthrough, where the
//! ingress reads the ClientHello's server name and the TLS ends at the destination).

use std::{net::SocketAddr, sync::Arc};

use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    app::App,
    passthrough::{self, Carried, SNIFF_WAIT},
    routes::TcpConnection,
};

/// Carries `io`, accepted on the Gateway server port `number` from `peer`; `read_sni`: the
/// server passes TLS through, so the ClientHello's server name chooses the route.
pub(super) async fn carry<IO>(
    mut io: IO,
    peer: SocketAddr,
    local: SocketAddr,
    number: u16,
    read_sni: bool,
    app: Arc<App>,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let snapshot = app.store.get();
    let gateway = app.config.ingress_gateway.as_deref().unwrap_or_default();
    let (namespace, name) = gateway.split_once('/').unwrap_or(("", gateway));
    let source_ip = peer.ip().to_canonical();
    let connection = mesh_core::policy::Connection {
        source: None,
        source_ip,
        destination_port: local.port(),
        request: None,
    };
    let targets = mesh_core::policy::Targets {
        namespace,
        gateway: name,
        class: app.config.gateway_class.as_deref(),
        service: None,
    };
    if !passthrough::admits(&snapshot, &targets, connection) {
        return;
    }
    let (first, sni) = match read_sni {
        true => crate::sni::read_client_hello(&mut io, SNIFF_WAIT).await,
        false => (Vec::new(), None),
    };
    let source = app.store.workloads.get(source_ip);
    let connection = TcpConnection {
        port: number,
        destination: local.ip().to_canonical(),
        source: source.as_deref(),
        sni: sni.as_deref(),
    };
    let Some(route) = snapshot.ingress_routes.gateway_tcp_route(&connection) else {
        tracing::info!(%peer, port = number, sni = ?sni, "ingress TCP connection: no route fits");
        return;
    };
    tracing::debug!(route = %route.origin, sni = ?sni, "ingress TCP route");
    let resolved = app
        .upstreams
        .resolve(&snapshot, &app.store.workloads, route.choose(), number);
    let carried = Carried {
        first,
        what: if read_sni { "tls passthrough" } else { "tcp" },
        target: local,
        // An ingress' TCP routes are not in Istio's TCP metrics yet.
        downstream: None,
    };
    passthrough::carry_to(io, carried, resolved, &app).await;
}
