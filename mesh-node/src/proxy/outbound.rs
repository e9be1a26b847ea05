//! Outbound: connections the pod's apps opened, rewritten by `connect4/6` to the in-pod
//! 15001 listener. The original destination comes from the `ORIG_DSTS` map.

use std::{net::SocketAddr, sync::Arc};

use mesh_core::Identity;
use tokio::net::{TcpListener, TcpStream};

use super::{ConnectionInfo, PodContext, connect_from_pod, forward, labels, record_failure};
use crate::{
    app::State,
    dataplane::OrigDsts,
    metrics::{Reporter, ResponseFlags},
};

pub async fn serve_outbound(
    listener: TcpListener,
    pod: Arc<PodContext>,
    orig: OrigDsts,
    state: Arc<State>,
) {
    loop {
        let (stream, peer) = super::accept(&listener, &pod, "outbound").await;
        let Some(dst) = orig.take(pod.netns_cookie, peer.port()) else {
            // Fail closed: a connection we cannot place is refused, not guessed.
            tracing::warn!(pod = %pod.pod.key(), client = %peer, "captured connection has no original destination; refusing it");
            record_failure(&state, Reporter::source, &pod, peer, ResponseFlags::NR);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (pod, state) = (pod.clone(), state.clone());
        tokio::spawn(async move {
            let source = SocketAddr::new(pod.pod.ip.into(), peer.port());
            match hbone_peer(&state, dst) {
                Some(expected) => carry_over_hbone(state, pod, stream, source, dst, expected).await,
                None => carry_plain(state, pod, stream, source, dst).await,
            }
        });
    }
}

/// The identity the destination must prove, when it is an enrolled pod and this agent speaks
/// HBONE; `None` for plain pass-through.
fn hbone_peer(state: &State, dst: SocketAddr) -> Option<Identity> {
    state.hbone.as_ref()?;
    let pods = state.pods();
    let peer = pods.by_addr(dst.ip()).filter(|p| pods.is_enrolled(p))?;
    peer.identity(&state.config.trust_domain).ok()
}

async fn carry_over_hbone(
    state: Arc<State>,
    pod: Arc<PodContext>,
    stream: TcpStream,
    source: SocketAddr,
    dst: SocketAddr,
    expected: Identity,
) {
    let Some(pool) = state.hbone.clone() else {
        return;
    };
    // Boxed: the handshake's state is large and needed only until the tunnel is up; inline it
    // would stay in the connection's task for as long as the connection lives.
    let tunnel = match Box::pin(pool.connect(&state, &pod, dst, &expected, source)).await {
        Ok(tunnel) => tunnel,
        Err(error) => {
            tracing::warn!(%error, pod = %pod.pod.key(), %dst, "HBONE connection failed; refusing the app's connection");
            record_failure(&state, Reporter::source, &pod, dst, ResponseFlags::UF);
            return;
        }
    };
    tracing::debug!(pod = %pod.pod.key(), %dst, "outbound connection captured (HBONE)");
    let carry = super::tunnel::carry(stream, tunnel);
    forward_outbound(state, pod, source, dst, Some(&expected), carry).await;
}

async fn carry_plain(
    state: Arc<State>,
    pod: Arc<PodContext>,
    stream: TcpStream,
    source: SocketAddr,
    dst: SocketAddr,
) {
    let upstream = match connect_from_pod(&pod, dst, None).await {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::info!(%error, pod = %pod.pod.key(), %dst, "outbound connect failed");
            record_failure(&state, Reporter::source, &pod, dst, ResponseFlags::UF);
            return;
        }
    };
    tracing::debug!(pod = %pod.pod.key(), %dst, "outbound connection captured");
    let carry = super::copy::copy_bidirectional(stream, upstream);
    forward_outbound(state, pod, source, dst, None, carry).await;
}

/// Forwards an outbound connection once its upstream (TCP or HBONE tunnel) is open.
async fn forward_outbound(
    state: Arc<State>,
    pod: Arc<PodContext>,
    source: SocketAddr,
    dst: SocketAddr,
    peer: Option<&Identity>,
    carry: impl Future<Output = std::io::Result<(u64, u64)>> + Send + 'static,
) {
    let info = ConnectionInfo {
        direction: "outbound",
        pod: pod.pod.key(),
        source,
        destination: dst,
        peer_identity: peer.map(ToString::to_string),
    };
    let labels = labels(
        &state,
        Reporter::source,
        &pod,
        dst,
        peer,
        ResponseFlags::None,
    );
    forward(state, labels, carry, info, None);
}
