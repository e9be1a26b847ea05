//! HBONE in: mutual TLS on port 15008 with the waypoint's certificate (the client must chain
//! to the mesh root; its SPIFFE identity is the source workload's), HTTP/2 CONNECT streams
//! whose `:authority` is the original destination, and HTTP/1.1 or HTTP/2 served inside each
//! stream. A destination that is not bound to this waypoint is refused (403): a waypoint only
//! carries the traffic it was made for.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use h2::{RecvStream, server::SendResponse};
use http::{Method, Request, Response, StatusCode};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use mesh_core::{Identity, hbone, transport};
use tokio::net::{TcpListener, TcpStream};

use crate::{
    app::App,
    h2io::H2Io,
    proxy::{self, Downstream},
    store::{PortProtocol, Snapshot, Workloads},
};

const CERTIFICATE_WAIT: Duration = Duration::from_secs(5);

pub async fn serve(listener: TcpListener, app: Arc<App>) {
    let listener = transport::Listener::new(listener, "HBONE", &app.config.limits);
    loop {
        let (tcp, peer, permit) = listener.accept().await;
        let served = app.clone();
        app.workers.assign(tcp, move |tcp| async move {
            let _permit = permit;
            let _counted = served.connections.open();
            if let Err(error) = serve_connection(tcp, peer, &served).await {
                tracing::info!(%error, %peer, "HBONE connection refused");
            }
        });
    }
}

async fn serve_connection(tcp: TcpStream, peer: SocketAddr, app: &Arc<App>) -> Result<(), String> {
    let _ = tcp.set_nodelay(true);
    // Fail closed: without a certificate there is no TLS server to offer.
    let issued = app
        .certificates
        .wait(CERTIFICATE_WAIT)
        .await
        .ok_or("no certificate for the waypoint yet")?;
    let limits = &app.config.limits;
    let hbone::server::Accepted {
        mut connection,
        client,
        ..
    } = hbone::server::accept(issued.server.clone(), tcp, limits).await?;
    hbone::server::serve_streams(
        &mut connection,
        limits,
        &app.drain,
        |request, respond, open| {
            let (app, client) = (app.clone(), client.clone());
            tokio::spawn(async move {
                let _open = open;
                serve_stream(request, respond, client, peer, app).await;
            });
        },
    )
    .await
}

/// The source address policy and load balancing see: the one the client's node agent
/// forwarded (`forwarded: for="ip:port"`), but only when it is the address of a workload with
/// the identity the client proved in its certificate. Anything else in the header is the
/// client's own say-so (any pod can send any header) and is ignored: the connection's peer
/// address is used, which names no workload, so address-based ALLOW rules fail closed.
fn source_address(
    request: &Request<RecvStream>,
    client: &Identity,
    peer: SocketAddr,
    app: &App,
) -> SocketAddr {
    let Some(forwarded) = forwarded_for(request) else {
        return peer;
    };
    let owner = app.store.workloads.get(forwarded.ip());
    if owner.is_some_and(|w| w.identity.as_ref() == Some(client)) {
        return forwarded;
    }
    app.metrics.forwarded_distrusted.inc();
    tracing::debug!(%client, %forwarded, %peer,
        "forwarded address is not the client's own workload; using the peer address");
    peer
}

/// The address in `forwarded: for="ip:port"`, as written.
fn forwarded_for(request: &Request<RecvStream>) -> Option<SocketAddr> {
    let value = request
        .headers()
        .get(http::header::FORWARDED)?
        .to_str()
        .ok()?;
    value
        .split(';')
        .find_map(|part| part.trim().strip_prefix("for="))
        .map(|v| v.trim_matches('"'))
        .and_then(|v| v.parse().ok())
}

async fn serve_stream(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    client: Identity,
    peer: SocketAddr,
    app: Arc<App>,
) {
    let refuse = |respond: &mut SendResponse<Bytes>, status: StatusCode| {
        let response = Response::builder()
            .status(status)
            .body(())
            .expect("a status");
        let _ = respond.send_response(response, true);
    };
    if request.method() != Method::CONNECT {
        return refuse(&mut respond, StatusCode::BAD_REQUEST);
    }
    let Some(target) = request
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
    else {
        return refuse(&mut respond, StatusCode::BAD_REQUEST);
    };
    let snapshot = app.store.get();
    let own = app.config.waypoint.as_deref().unwrap_or_default();
    let Some(destination) = destination(&snapshot, &app.store.workloads, target, own) else {
        tracing::warn!(%client, %target, waypoint = %own,
            "refused: the destination is not bound to this waypoint");
        return refuse(&mut respond, StatusCode::FORBIDDEN);
    };
    let source = source_address(&request, &client, peer, &app);
    let ok = Response::builder()
        .status(StatusCode::OK)
        .body(())
        .expect("200");
    let send = match respond.send_response(ok, false) {
        Ok(send) => send,
        Err(error) => {
            tracing::debug!(%error, "CONNECT answer not sent");
            return;
        }
    };
    let mut io = H2Io::new(send, request.into_body());
    let declared = match &destination {
        proxy::Destination::Service(service) => service.protocol(target.port()),
        _ => PortProtocol::Sniff,
    };
    let http = match declared {
        PortProtocol::Http => true,
        PortProtocol::Tcp => false,
        PortProtocol::Sniff => match io.peek(crate::passthrough::SNIFF_WAIT).await {
            Ok(Some(first)) => crate::passthrough::looks_like_http(first),
            Ok(None) => false,
            Err(error) => {
                tracing::debug!(%error, %target, "HBONE stream ended before any data");
                return;
            }
        },
    };
    let downstream = Arc::new(Downstream {
        client: Some(client),
        source,
        target,
        destination,
        source_workload: app.store.workloads.get(source.ip()),
        series: Default::default(),
    });
    if !http {
        let how = if declared == PortProtocol::Tcp {
            "declared"
        } else {
            "sniffed"
        };
        return crate::passthrough::carry(io, downstream, app, how).await;
    }
    let drain = app.drain.clone();
    let service = hyper::service::service_fn(move |request| {
        proxy::handle(request, downstream.clone(), app.clone())
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = drain.signalled() => {
            // HTTP/2 gets GOAWAY, HTTP/1.1 `connection: close` after the current request.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = ended {
        tracing::debug!(%error, %target, "HTTP inside HBONE ended");
    }
}

/// What a CONNECT's target is to this waypoint: a service (by its address) or a workload
/// bound to it; `None` when neither is.
pub fn destination(
    snapshot: &Snapshot,
    workloads: &Workloads,
    target: SocketAddr,
    waypoint: &str,
) -> Option<proxy::Destination> {
    if waypoint.is_empty() {
        // An ingress gateway is no waypoint.
        return None;
    }
    let ip: IpAddr = target.ip().to_canonical();
    if let Some(service) = snapshot.services_by_addr.get(&ip) {
        return (service.waypoint.as_deref() == Some(waypoint))
            .then(|| proxy::Destination::Service(service.clone()));
    }
    let workload = workloads.get(ip)?;
    (workload.waypoint.as_deref() == Some(waypoint))
        .then_some(proxy::Destination::Workload(workload))
}
