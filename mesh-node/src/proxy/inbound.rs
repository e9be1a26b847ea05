//! Inbound plaintext: connections for the pod's address, steered by `sk_lookup` into the
//! in-pod 15006 listener. The accepted socket's local address is the original destination.
//! Delivery to the app comes from 127.0.0.6, which `sk_lookup` lets through.

use std::sync::Arc;

use mesh_core::transport;
use tokio::net::TcpListener;

use super::{
    Authorized, ByteCounters, ConnectionInfo, PodContext, connect_from_pod, forward,
    inbound_service, labels, record_inbound_failure,
};
use crate::{
    app::State,
    metrics::{Reporter, ResponseFlags},
    policy::check_inbound,
};

pub async fn serve_inbound(listener: TcpListener, pod: Arc<PodContext>, state: Arc<State>) {
    // Capped like every listener: one pod cannot hold an unbounded share of the agent's
    // sockets; past the cap its new connections wait in the kernel's backlog.
    let listener = transport::Listener::new(listener, "inbound capture", &state.config.limits);
    loop {
        let (stream, peer, permit) = listener.accept().await;
        let Ok(dst) = stream.local_addr() else {
            continue;
        };
        let allowed = check_inbound(
            &state.policies(),
            &state.workloads(),
            &pod.pod(),
            None,
            peer,
            dst.port(),
        );
        if let Err(reason) = allowed {
            // Dropping the stream resets the client's connection.
            tracing::info!(pod = %pod.key, client = %peer, %dst, %reason, "plaintext inbound connection refused");
            record_inbound_failure(&state, &pod, peer, dst.port(), ResponseFlags::UAEX);
            continue;
        }
        let delivery_source = super::delivery_source(dst);
        let _ = stream.set_nodelay(true);
        let (pod, state) = (pod.clone(), state.clone());
        tokio::spawn(async move {
            let upstream = match connect_from_pod(&pod, dst, Some(delivery_source)).await {
                Ok(upstream) => upstream,
                Err(error) => {
                    tracing::info!(%error, pod = %pod.key, %dst, "delivery to the app failed");
                    record_inbound_failure(&state, &pod, peer, dst.port(), ResponseFlags::UF);
                    return;
                }
            };
            let info = ConnectionInfo {
                direction: "inbound",
                pod: pod.key.clone(),
                source: peer,
                destination: dst,
                peer_identity: None,
            };
            tracing::debug!(pod = %info.pod, client = %peer, %dst, "inbound connection captured");
            let labels = labels(
                &state,
                Reporter::Destination,
                &pod,
                peer,
                None,
                inbound_service(&state, &pod, dst.port()).as_ref(),
                ResponseFlags::None,
            );
            let bytes = ByteCounters::of(&state, &labels);
            let authorized = Authorized {
                pod: pod.key.clone(),
                client: None,
                source: peer,
                destination_port: dst.port(),
            };
            // The place under the cap is held until the connection ends.
            let carry = permit.hold(super::copy::copy_bidirectional(
                stream,
                upstream,
                bytes.from_client,
                bytes.from_server,
            ));
            forward(state, labels, carry, info, Some(authorized));
        });
    }
}
