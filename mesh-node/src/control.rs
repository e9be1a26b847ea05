//! Configuration from the controller's stream (`--config-source controller`) instead of local
//! files: the node subscribes as a NODE, turns the PeerAuthentications and
//! AuthorizationPolicies it receives into its policy set, and applies them as the directory
//! watch would (live connections a new policy forbids are closed); the workloads become the
//! pods the enrollment loop captures (its own) and names peers by (everyone's). It reconnects
//! with backoff and resumes from the version it has; until the first update it keeps what it
//! had (nothing at start: PERMISSIVE, allow all, and pods left by a previous agent stay
//! captured).

use std::{sync::Arc, time::Duration};

use mesh_core::{
    ca_client::CaClient,
    config_client::{ConfigView, follow},
    config_pb::{Role, Update, resource::Body},
    policy::{LoadError, PolicySet},
};
use tokio::sync::watch;

use crate::{app::State, policy, services::Services};

/// Tells the enrollment loop that this node's pods (or the tables they are read with)
/// changed in the workload store; `None` until the first update.
pub type StreamedPods = watch::Receiver<Option<u64>>;

mod workloads;

use workloads::STORE_KINDS;

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Follows the stream forever.
pub async fn follow_config(state: Arc<State>, ca: CaClient, pods: watch::Sender<Option<u64>>) {
    let mut view = ConfigView::keeping_out(STORE_KINDS);
    let mut backoff = BACKOFF_MIN;
    loop {
        let (mut client, token) = ca.config_service();
        let result = match token.current() {
            Err(status) => Err(status),
            Ok(token) => {
                follow(
                    &mut client,
                    Role::Node,
                    Some(&token),
                    &mut view,
                    // Nothing here refuses an update (see `policy_set`).
                    |_| Ok(()),
                    |view, update| {
                        backoff = BACKOFF_MIN;
                        let first = pods.borrow().is_none();
                        tracing::info!(
                            epoch = view.epoch,
                            version = update.version,
                            snapshot = update.base_version == 0,
                            upserts = update.upserts.len(),
                            removes = update.removes.len(),
                            "configuration from the controller"
                        );
                        if first || touches(update, "Service") {
                            state.set_services(Services::from_view(view));
                        }
                        // Policies are built, and live connections re-checked against them,
                        // only when policies changed: a pod's change re-checks only that
                        // pod's connections (in the enrollment loop).
                        if first
                            || touches(update, "PeerAuthentication")
                            || touches(update, "AuthorizationPolicy")
                        {
                            let (policies, errors) = policy_set(view, &state.config.root_namespace);
                            policy::apply(&state, policies, errors);
                        }
                        // Pods last: the enrollment loop may capture (or take over) a pod as
                        // soon as it sees it, and it must find that pod's policies in place.
                        let touched = workloads::apply(&state, update);
                        if first || touched.concerns_node(&state.config.node_name) {
                            pods.send_modify(|n| *n = Some(n.map_or(1, |n| n + 1)));
                        }
                    },
                )
                .await
            }
        };
        match result {
            Ok(()) => tracing::warn!("the controller ended the configuration stream; reconnecting"),
            Err(status) => tracing::warn!(%status, "configuration stream failed; reconnecting"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The policies of `view`. A policy that the controller refused, that does not validate
/// here, or whose body is unreadable is kept and enforced failing closed; its problem is
/// reported. (Nothing here refuses the update: keeping the previous policies instead would
/// keep enforcing what the user has since changed.)
fn policy_set(view: &ConfigView, root_namespace: &str) -> (PolicySet, Vec<LoadError>) {
    let mut set = PolicySet::with_root_namespace(root_namespace);
    let mut errors = Vec::new();
    for ((kind, namespace, name), resource) in &view.resources {
        if kind != "PeerAuthentication" && kind != "AuthorizationPolicy" {
            continue;
        }
        let json = match &resource.body {
            Some(Body::IstioJson(json)) => json.as_str(),
            _ => "",
        };
        let refused = Some(resource.refused.as_str()).filter(|r| !r.is_empty());
        if let Err(error) = set.add_streamed(kind, namespace, name, json, refused) {
            errors.push(error);
        }
    }
    (set, errors)
}

/// Whether `update` changes resources of `kind`.
fn touches(update: &Update, kind: &str) -> bool {
    update.base_version == 0
        || update
            .upserts
            .iter()
            .filter_map(|r| r.key.as_ref())
            .chain(&update.removes)
            .any(|key| key.kind == kind)
}
