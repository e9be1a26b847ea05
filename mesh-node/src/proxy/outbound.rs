//! Outbound: connections the pod's apps opened, rewritten by `connect4/6` to the in-pod
//! 15001 listener. The original destination comes from the `ORIG_DSTS` map.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use mesh_core::{
    Identity,
    telemetry::ServiceLabel,
    transport::{self, ConnectionPermit},
};
use tokio::net::{TcpListener, TcpStream};

use super::{
    ByteCounters, ConnectionInfo, PodContext, connect_from_pod, forward, labels, record_failure,
};
use crate::{
    app::State,
    dataplane::OrigDsts,
    metrics::{Reporter, ResponseFlags},
    pods::WorkloadStore,
};

pub async fn serve_outbound(
    listener: TcpListener,
    pod: Arc<PodContext>,
    orig: OrigDsts,
    state: Arc<State>,
) {
    // Capped like every listener: one pod cannot hold an unbounded share of the agent's
    // sockets; past the cap its new connections wait in the kernel's backlog.
    let listener = transport::Listener::new(listener, "outbound capture", &state.config.limits);
    loop {
        let (stream, peer, permit) = listener.accept().await;
        let Some(dst) = orig.take(pod.netns_cookie, peer) else {
            // Fail closed: a connection we cannot place is refused, not guessed.
            tracing::warn!(pod = %pod.key, client = %peer, "captured connection has no original destination; refusing it");
            record_failure(
                &state,
                Reporter::Source,
                &pod,
                peer,
                None,
                ResponseFlags::NR,
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (pod, state) = (pod.clone(), state.clone());
        tokio::spawn(async move {
            let app = AppConnection {
                stream,
                source: SocketAddr::new(pod.pod().ip.into(), peer.port()),
                place: permit,
                service: state.services().by_addr(dst.ip()).map(|s| s.label.clone()),
            };
            match plan(&state, dst) {
                Plan::Hbone {
                    via,
                    target,
                    expected,
                } => carry_over_hbone(state, pod, app, via, target, expected).await,
                Plan::Plain(target) => carry_plain(state, pod, app, target).await,
                Plan::Refuse(reason) => {
                    // Fail closed: dropping the stream resets the app's connection.
                    tracing::warn!(pod = %pod.key, %dst, %reason, "outbound connection refused");
                    let service = app.service.as_ref();
                    record_failure(
                        &state,
                        Reporter::Source,
                        &pod,
                        dst,
                        service,
                        ResponseFlags::NR,
                    );
                }
            }
        });
    }
}

/// The app's side of a captured connection.
struct AppConnection {
    stream: TcpStream,
    /// The pod's address and the app's port: the source the other side is told of.
    source: SocketAddr,
    /// Its place under the listener's cap, held until the connection ends.
    place: ConnectionPermit,
    /// The Service the app addressed, if it addressed one (`destination_service*`).
    service: Option<ServiceLabel>,
}

impl AppConnection {
    /// Counts it as a connection that could not be carried to `dst`.
    fn failed(&self, state: &State, pod: &PodContext, dst: SocketAddr, flags: ResponseFlags) {
        record_failure(
            state,
            Reporter::Source,
            pod,
            dst,
            self.service.as_ref(),
            flags,
        );
    }
}

/// Where a captured connection goes.
enum Plan {
    /// Over HBONE: to `via` (the destination pod, or the waypoint in front of it), as a
    /// CONNECT to `target`; the server must prove `expected`.
    Hbone {
        via: IpAddr,
        target: SocketAddr,
        expected: Identity,
    },
    /// Passed through as plain TCP (the destination is not in the mesh).
    Plain(SocketAddr),
    Refuse(String),
}

/// A service address goes to the service's waypoint, else to one of its endpoints; a pod
/// bound to a waypoint is reached through it; an enrolled pod over HBONE; anything else plain.
fn plan(state: &State, dst: SocketAddr) -> Plan {
    let pods = state.workloads();
    let mut target = dst;
    if let Some(service) = state.services().by_addr(dst.ip()).cloned() {
        if let Some(waypoint) = &service.waypoint {
            return through_waypoint(state, &pods, waypoint, dst);
        }
        match service.pick_endpoint(&pods, dst.port()) {
            Some(endpoint) => target = endpoint,
            None => return Plan::Refuse(format!("service {} has no endpoints", service.key)),
        }
    }
    let Some(peer) = pods.by_addr(target.ip()) else {
        return Plan::Plain(target);
    };
    if let Some(waypoint) = &peer.waypoint {
        return through_waypoint(state, &pods, waypoint, target);
    }
    if state.hbone.is_some()
        && pods.is_enrolled(peer)
        && let Ok(expected) = peer.identity(&state.config.trust_domain)
    {
        return Plan::Hbone {
            via: target.ip(),
            target,
            expected,
        };
    }
    Plan::Plain(target)
}

fn through_waypoint(
    state: &State,
    pods: &WorkloadStore,
    waypoint: &str,
    target: SocketAddr,
) -> Plan {
    if state.hbone.is_none() {
        return Plan::Refuse(format!(
            "{target} is behind waypoint {waypoint}, which needs HBONE (no --ca-addr)"
        ));
    }
    let candidates: Vec<_> = pods.waypoint_pods(waypoint).collect();
    if candidates.is_empty() {
        return Plan::Refuse(format!("waypoint {waypoint} has no running pod"));
    }
    let chosen = candidates[fastrand::usize(..candidates.len())];
    match chosen.identity(&state.config.trust_domain) {
        Ok(expected) => Plan::Hbone {
            via: IpAddr::V4(chosen.ip),
            target,
            expected,
        },
        Err(error) => Plan::Refuse(format!("waypoint pod {}: {error}", chosen.key())),
    }
}

async fn carry_over_hbone(
    state: Arc<State>,
    pod: Arc<PodContext>,
    app: AppConnection,
    via: IpAddr,
    dst: SocketAddr,
    expected: Identity,
) {
    let Some(pool) = state.hbone.clone() else {
        return;
    };
    // Boxed: the handshake's state is large and needed only until the tunnel is up; inline it
    // would stay in the connection's task for as long as the connection lives.
    let tunnel = match Box::pin(pool.connect(&state, &pod, via, dst, &expected, app.source)).await {
        Ok(tunnel) => tunnel,
        Err(error) => {
            tracing::warn!(%error, pod = %pod.key, %dst, "HBONE connection failed; refusing the app's connection");
            app.failed(&state, &pod, dst, ResponseFlags::UF);
            return;
        }
    };
    tracing::debug!(pod = %pod.key, %dst, "outbound connection captured (HBONE)");
    let (source, service) = (app.source, app.service.clone());
    forward_outbound(state, pod, source, dst, Some(&expected), service, |bytes| {
        app.place.hold(super::tunnel::carry(
            app.stream,
            tunnel,
            bytes.from_client,
            bytes.from_server,
        ))
    });
}

async fn carry_plain(state: Arc<State>, pod: Arc<PodContext>, app: AppConnection, dst: SocketAddr) {
    let upstream = match connect_from_pod(&pod, dst, None).await {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::info!(%error, pod = %pod.key, %dst, "outbound connect failed");
            app.failed(&state, &pod, dst, ResponseFlags::UF);
            return;
        }
    };
    tracing::debug!(pod = %pod.key, %dst, "outbound connection captured");
    let (source, service) = (app.source, app.service.clone());
    forward_outbound(state, pod, source, dst, None, service, |bytes| {
        app.place.hold(super::copy::copy_bidirectional(
            app.stream,
            upstream,
            bytes.from_client,
            bytes.from_server,
        ))
    });
}

/// Forwards an outbound connection once its upstream (TCP or HBONE tunnel) is open; `carry`
/// copies it, counting in the connection's byte counters.
fn forward_outbound<Carry>(
    state: Arc<State>,
    pod: Arc<PodContext>,
    source: SocketAddr,
    dst: SocketAddr,
    peer: Option<&Identity>,
    service: Option<ServiceLabel>,
    carry: impl FnOnce(ByteCounters) -> Carry,
) where
    Carry: Future<Output = std::io::Result<(u64, u64)>> + Send + 'static,
{
    let info = ConnectionInfo {
        direction: "outbound",
        pod: pod.key.clone(),
        source,
        destination: dst,
        peer_identity: peer.map(ToString::to_string),
    };
    let labels = labels(
        &state,
        Reporter::Source,
        &pod,
        dst,
        peer,
        service.as_ref(),
        ResponseFlags::None,
    );
    let carry = carry(ByteCounters::of(&state, &labels));
    forward(state, labels, carry, info, None);
}
