//! Succession between agent processes on one node: taking over from a running agent,
//! handing over to a new one, and releasing every pod for an uninstall.

use std::{path::Path, sync::Arc, time::Duration};

use tokio::sync::oneshot;

use super::{Error, State};
use crate::{
    config::Config,
    dataplane,
    enrollment::Enrollment,
    handover::{self, Offer, PodListeners, Predecessor},
    pods::PodsFile,
};
use mesh_core::Identity;

/// How long a successor waits for its pods' certificates before taking over anyway.
const CERTIFICATES_BEFORE_TAKEOVER: Duration = Duration::from_secs(10);

/// After an uninstall stops capturing, how long the pods' listeners keep accepting: a
/// connection redirected a moment before waits in a backlog and is carried, not reset.
const RELEASE_GRACE: Duration = Duration::from_millis(500);

/// Serves successors; without the socket a restart still works, with a gap (logged).
pub(super) fn offer(config: &Config, offer: &Arc<Offer>) {
    if let Err(error) = handover::serve(&config.handover_socket, offer.clone()) {
        tracing::error!(%error, "no hand-over: a restart will refuse new connections until the next agent is ready");
    }
}

/// Answers a successor's request for the pods' listeners; `true` once it has them all (this
/// agent must then stop accepting).
pub(super) async fn hand_over(
    enrollment: &Enrollment,
    reply: oneshot::Sender<Vec<PodListeners>>,
    sent: oneshot::Receiver<bool>,
) -> bool {
    let pods = match enrollment.hand_over() {
        Ok(pods) => pods,
        Err(error) => {
            tracing::error!(%error, "cannot hand the pods' listeners over; keeping them");
            return false;
        }
    };
    let count = pods.len();
    if reply.send(pods).is_err() {
        return false;
    }
    match sent.await {
        Ok(true) => {
            tracing::info!(pods = count, "pods handed over to the successor; draining");
            true
        }
        _ => {
            tracing::warn!("the successor did not take the pods; keeping them");
            false
        }
    }
}

/// Before taking the predecessor's listeners: this agent's policies are in place (they came
/// with `file`) and its pods' certificates are issued, so it serves the first connection it
/// accepts as the predecessor would have.
pub(super) async fn take_over(
    state: &Arc<State>,
    file: &PodsFile,
    predecessor: Predecessor,
    enrollment: &mut Enrollment,
) -> Result<(), Error> {
    let mut identities: Vec<Identity> = file
        .enrolled_on(&state.config.node_name)
        .filter_map(|pod| pod.identity(&state.config.trust_domain).ok())
        .collect();
    identities.sort();
    identities.dedup();
    state.set_identities(identities.clone());
    if let Some(certificates) = &state.certificates {
        let started = std::time::Instant::now();
        while !certificates.has_all(&identities) && started.elapsed() < CERTIFICATES_BEFORE_TAKEOVER
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !certificates.has_all(&identities) {
            tracing::warn!(
                "taking over without every pod's certificate: their HBONE connections wait for it"
            );
        }
    }
    let started = std::time::Instant::now();
    let inherited = tokio::task::spawn_blocking(move || predecessor.take_pods())
        .await
        .map_err(|e| Error::Config(format!("hand-over task: {e}")))??;
    tracing::info!(
        pods = inherited.pods(),
        took_ms = started.elapsed().as_millis() as u64,
        "took the pods' listeners over"
    );
    enrollment.inherit(inherited);
    Ok(())
}

/// Releases every pod and removes the programs and pins (`mesh-node --uninstall` asked);
/// answers how many pods were released.
pub(super) async fn release(
    enrollment: &mut Enrollment,
    bpf_dir: &Path,
    done: oneshot::Sender<Result<usize, String>>,
) {
    tracing::info!("uninstall asked: releasing every pod");
    let released = enrollment.release_all(RELEASE_GRACE).await;
    let answer = match dataplane::remove_pins(bpf_dir) {
        Ok(()) => {
            tracing::info!(
                pods = released,
                bpf_dir = %bpf_dir.display(),
                "every pod released; programs detached and pins removed"
            );
            Ok(released)
        }
        Err(error) => {
            tracing::error!(%error, "pods released, but the pins could not all be removed");
            Err(error.to_string())
        }
    };
    let _ = done.send(answer);
}
