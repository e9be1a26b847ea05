//! Policy at the node: PeerAuthentication and AuthorizationPolicy from the config directory
//! (Istio's YAML), applied to inbound connections, and re-applied to live ones on change.

use std::{net::SocketAddr, path::PathBuf, time::SystemTime};

use mesh_core::{
    Identity,
    pods::{Pod, WorkloadStore},
    policy::{Connection, Decision, LoadError, MtlsMode, PolicySet, Workload, load_dir},
};

use crate::{
    app::State,
    proxy::{Authorized, Rechecked},
};

/// Notices changes to the YAML files of a directory (names, sizes, modification times).
pub struct PolicyWatch {
    dir: PathBuf,
    root_namespace: String,
    last: Option<Vec<(PathBuf, SystemTime, u64)>>,
}

impl PolicyWatch {
    pub fn new(dir: PathBuf, root_namespace: String) -> Self {
        Self {
            dir,
            root_namespace,
            last: None,
        }
    }

    /// The new policies and their problems, when anything changed since the last call.
    pub fn poll(&mut self) -> Option<Result<(PolicySet, Vec<LoadError>), std::io::Error>> {
        let stamp = match std::fs::read_dir(&self.dir) {
            Ok(entries) => {
                let mut stamp: Vec<_> = entries
                    .filter_map(Result::ok)
                    .filter_map(|e| {
                        let meta = e.metadata().ok()?;
                        Some((e.path(), meta.modified().ok()?, meta.len()))
                    })
                    .collect();
                stamp.sort();
                stamp
            }
            Err(error) => return Some(Err(error)),
        };
        if self.last.as_ref() == Some(&stamp) {
            return None;
        }
        self.last = Some(stamp);
        Some(load_dir(&self.dir, &self.root_namespace))
    }
}

/// Whether an inbound connection to `pod` may proceed; the reason when it may not. A pod
/// bound to a waypoint takes connections only from the waypoint's identity: nobody skips
/// the waypoint's L7 policy by dialing the pod directly.
pub fn check_inbound(
    policies: &PolicySet,
    pods: &WorkloadStore,
    pod: &Pod,
    client: Option<&Identity>,
    source: SocketAddr,
    port: u16,
) -> Result<(), String> {
    if let Some(waypoint) = &pod.waypoint {
        // The identity the controller published for the waypoint, never a pod's labels.
        let from_waypoint = client.is_some_and(|client| {
            pods.waypoint_identity(waypoint)
                .is_some_and(|(namespace, service_account)| {
                    client.namespace == namespace && client.service_account == service_account
                })
        });
        if !from_waypoint {
            return Err(format!(
                "{} is behind waypoint {waypoint}: only the waypoint may connect (as the identity the controller published)",
                pod.key()
            ));
        }
    }
    let workload = Workload {
        namespace: &pod.namespace,
        labels: &pod.labels,
    };
    if client.is_none() && policies.mtls_mode(workload, port) == MtlsMode::Strict {
        return Err("PeerAuthentication STRICT: plaintext refused".to_owned());
    }
    let connection = Connection {
        source: client,
        source_ip: source.ip(),
        destination_port: port,
        request: None,
    };
    match policies.authorize(workload, connection) {
        Decision::Allow => Ok(()),
        Decision::Deny { policy, reason } => {
            Err(format!("denied by AuthorizationPolicy {policy}: {reason}"))
        }
    }
}

/// Applies newly loaded policies: live connections they forbid are closed.
pub fn apply(state: &State, policies: PolicySet, errors: Vec<LoadError>) {
    for error in &errors {
        tracing::error!(%error, "policy not applied as written");
    }
    state.metrics.policy_errors.set(errors.len() as i64);
    state.set_policies(policies, errors);
    let done = recheck(state, |still_allowed| {
        state.connections.close_unless(still_allowed)
    });
    tracing::info!(
        policies = state.policies().len(),
        rechecked = done.checked,
        closed = done.closed,
        "policies applied"
    );
}

/// Closes the live connections of `pods` (keys) that the current policies and pods no longer
/// allow (a pod relabelled into a DENY's selector, or newly bound to a waypoint); how many it
/// closed. Other pods' connections are not looked at.
pub fn enforce_pods(state: &State, pods: &[String]) -> usize {
    recheck(state, |still_allowed| {
        state.connections.close_unless_of(pods, still_allowed)
    })
    .closed
}

/// Runs `pass` with the check of one connection against the current policies and pods, and
/// counts what it re-checked.
fn recheck(
    state: &State,
    pass: impl FnOnce(&mut dyn FnMut(&Authorized) -> bool) -> Rechecked,
) -> Rechecked {
    let policies = state.policies();
    let pods = state.workloads();
    let mut still_allowed = |authorized: &Authorized| {
        let Some(pod) = pods.by_key(&authorized.pod) else {
            return false;
        };
        check_inbound(
            &policies,
            &pods,
            pod,
            authorized.client.as_ref(),
            authorized.source,
            authorized.destination_port,
        )
        .is_ok()
    };
    let done = pass(&mut still_allowed);
    drop(pods);
    state
        .metrics
        .connections_rechecked
        .inc_by(done.checked as u64);
    done
}
