//! HBONE server: the pod's port 15008. Mutual TLS with the pod's certificate (the client must
//! be of our trust domain), then HTTP/2; each CONNECT is checked, delivered to the app from
//! 127.0.0.6 (or ::1), and answered 200 only once the app accepted, as ztunnel does.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use bytes::Bytes;
use h2::{RecvStream, server::SendResponse};
use http::{Request, Response, StatusCode};
use mesh_common::ports;
use mesh_core::{Identity, hbone};
use tokio::net::TcpListener;

use super::{
    Authorized, ByteCounters, ConnectionInfo, PodContext, connect_from_pod, inbound_service,
    labels, record_failure, record_inbound_failure,
    tunnel::{self, H2Stream},
};
use mesh_core::transport;

use crate::{
    app::State,
    metrics::{Reporter, ResponseFlags},
    policy::check_inbound,
};

const PROXY_PORTS: [u16; 3] = [ports::OUTBOUND, ports::INBOUND_PLAINTEXT, ports::HBONE];

pub async fn serve_hbone(listener: TcpListener, pod: Arc<PodContext>, state: Arc<State>) {
    let listener = transport::Listener::new(listener, "HBONE", &state.config.limits);
    loop {
        let (tcp, peer, permit) = listener.accept().await;
        let (pod, state) = (pod.clone(), state.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(error) = serve_connection(tcp, peer, &pod, &state).await {
                tracing::info!(%error, pod = %pod.key, %peer, "HBONE connection refused");
                let flags = ResponseFlags::UAEX;
                record_failure(&state, Reporter::Destination, &pod, peer, None, flags);
            }
        });
    }
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    pod: &Arc<PodContext>,
    state: &Arc<State>,
) -> Result<(), String> {
    let _ = tcp.set_nodelay(true);
    let certs = state
        .certificates
        .as_ref()
        .ok_or("HBONE without a certificate store")?;
    // Fail closed: no certificate for the pod yet means no TLS server to offer.
    let issued = certs
        .wait_for(&pod.identity, super::CERTIFICATE_WAIT)
        .await
        .ok_or_else(|| format!("no certificate yet for {}", pod.identity))?;
    let limits = &state.config.limits;
    let hbone::server::Accepted {
        mut connection,
        client,
        local,
    } = hbone::server::accept(issued.server.clone(), tcp, limits).await?;
    let downstream = Arc::new(Downstream {
        local,
        peer,
        client,
    });
    let drain = state.drain.clone();
    hbone::server::serve_streams(&mut connection, limits, &drain, |request, respond, open| {
        let (pod, state, downstream) = (pod.clone(), state.clone(), downstream.clone());
        tokio::spawn(async move {
            handle_connect(request, respond, &downstream, &pod, &state, open).await;
        });
    })
    .await
}

/// What every stream of one HBONE connection shares.
struct Downstream {
    /// The address the connection arrived on (a CONNECT must name it).
    local: IpAddr,
    peer: SocketAddr,
    /// The identity the client's certificate proved.
    client: Identity,
}

async fn handle_connect(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    downstream: &Downstream,
    pod: &Arc<PodContext>,
    state: &Arc<State>,
    // Keeps the connection from counting as idle while the tunnel lives.
    open: transport::StreamGuard,
) {
    let (local, peer, client) = (downstream.local, downstream.peer, &downstream.client);
    let target = match hbone::parse_connect(&request, local, &PROXY_PORTS) {
        Ok(target) => target,
        Err(error) => {
            tracing::info!(%error, %client, pod = %pod.key, "HBONE request refused");
            return refuse(respond, error.status());
        }
    };
    let allowed = check_inbound(
        &state.policies(),
        &state.workloads(),
        &pod.pod(),
        Some(client),
        peer,
        target.port(),
    );
    if let Err(reason) = allowed {
        tracing::info!(%client, pod = %pod.key, %target, %reason, "HBONE request denied");
        record_inbound_failure(state, pod, peer, target.port(), ResponseFlags::UAEX);
        return refuse(respond, StatusCode::UNAUTHORIZED);
    }
    let source = super::delivery_source(target);
    let upstream = match connect_from_pod(pod, target, Some(source)).await {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::info!(%error, %target, pod = %pod.key, "HBONE delivery to the app failed");
            record_inbound_failure(state, pod, peer, target.port(), ResponseFlags::UF);
            return refuse(respond, StatusCode::SERVICE_UNAVAILABLE);
        }
    };
    let send = match respond.send_response(response(StatusCode::OK), false) {
        Ok(send) => send,
        Err(error) => {
            tracing::info!(%error, "HBONE stream ended before it was established");
            return;
        }
    };
    let stream = H2Stream::new(send, request.into_body(), None);
    let labels = labels(
        state,
        Reporter::Destination,
        pod,
        peer,
        Some(client),
        inbound_service(state, pod, target.port()).as_ref(),
        ResponseFlags::None,
    );
    let bytes = ByteCounters::of(state, &labels);
    let info = ConnectionInfo {
        direction: "inbound",
        pod: pod.key.clone(),
        source: peer,
        destination: target,
        peer_identity: Some(client.to_string()),
    };
    let authorized = Authorized {
        pod: pod.key.clone(),
        client: Some(client.clone()),
        source: peer,
        destination_port: target.port(),
    };
    // The socket is the app's (the server's); the stream the client's.
    let carry = async move {
        let _open = open;
        let (to_client, from_client) =
            tunnel::carry(upstream, stream, bytes.from_server, bytes.from_client).await?;
        Ok((from_client, to_client))
    };
    super::forward(state.clone(), labels, carry, info, Some(authorized));
}

fn refuse(mut respond: SendResponse<Bytes>, code: StatusCode) {
    if let Err(error) = respond.send_response(response(code), true) {
        tracing::debug!(%error, "HBONE refusal not sent");
    }
}

fn response(code: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = code;
    response
}
