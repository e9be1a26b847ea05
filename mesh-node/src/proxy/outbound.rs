//! Outbound: connections the pod's apps opened, rewritten by `connect4/6` to the in-pod
//! 15001 listener. The original destination comes from the `ORIG_DSTS` map.

use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpListener;

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
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, pod = %pod.pod.key(), "outbound accept failed");
                continue;
            }
        };
        let Some(dst) = orig.take(pod.netns_cookie, peer.port()) else {
            // Fail closed: a connection we cannot place is refused, not guessed.
            tracing::warn!(pod = %pod.pod.key(), client = %peer, "captured connection has no original destination; refusing it");
            record_failure(&state, Reporter::source, &pod.pod, peer, ResponseFlags::NR);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (pod, state) = (pod.clone(), state.clone());
        tokio::spawn(async move {
            let source = SocketAddr::new(pod.pod.ip.into(), peer.port());
            let upstream = match connect_from_pod(&pod, dst, None).await {
                Ok(upstream) => upstream,
                Err(error) => {
                    tracing::info!(%error, pod = %pod.pod.key(), %dst, "outbound connect failed");
                    record_failure(&state, Reporter::source, &pod.pod, dst, ResponseFlags::UF);
                    return;
                }
            };
            let info = ConnectionInfo {
                direction: "outbound",
                pod: pod.pod.key(),
                source,
                destination: dst,
            };
            tracing::debug!(pod = %info.pod, %dst, "outbound connection captured");
            let labels = labels(&state, Reporter::source, &pod.pod, dst, ResponseFlags::None);
            forward(state, labels, stream, upstream, info).await;
        });
    }
}
