//! Configuration from the controller's stream (`--config-source controller`) instead of local
//! files: the node subscribes as a NODE, turns the PeerAuthentications and
//! AuthorizationPolicies it receives into its policy set, and applies them as the directory
//! watch would (live connections a new policy forbids are closed); the workloads become the
//! pods the enrollment loop captures (its own) and names peers by (everyone's). It reconnects
//! with backoff and resumes from the version it has; until the first update it keeps what it
//! had (nothing at start: PERMISSIVE, allow all, and pods left by a previous agent stay
//! captured).

use std::{net::IpAddr, sync::Arc, time::Duration};

use mesh_core::{
    ca_client::CaClient,
    config_client::{ConfigView, follow},
    config_pb::{Role, Update, Workload, resource::Body},
    policy::{LoadError, PolicySet},
    telemetry::WorkloadNames,
};
use tokio::sync::watch;

use crate::{
    app::State,
    pods::{Pod, PodsFile, Scheduled},
    policy,
    services::Services,
};

/// The workloads of the last applied update, as pods (network namespaces not filled in);
/// `None` until the first update.
pub type StreamedPods = watch::Receiver<Option<Arc<PodsFile>>>;

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Follows the stream forever.
pub async fn follow_config(
    state: Arc<State>,
    ca: CaClient,
    pods: watch::Sender<Option<Arc<PodsFile>>>,
) {
    let mut view = ConfigView::default();
    let mut backoff = BACKOFF_MIN;
    loop {
        let accepted = std::sync::Mutex::new(None);
        let (mut client, token) = ca.config_service();
        let result = match token.current() {
            Err(status) => Err(status),
            Ok(token) => {
                follow(
                    &mut client,
                    Role::Node,
                    Some(&token),
                    &mut view,
                    // The policies of an accepted candidate are built once, then applied.
                    |candidate| {
                        let built = policy_set(candidate, &state.config.root_namespace);
                        *accepted.lock().unwrap_or_else(|p| p.into_inner()) = Some(built);
                        Ok(())
                    },
                    |view, update| {
                        backoff = BACKOFF_MIN;
                        let first = pods.borrow().is_none();
                        if first || touches(update, "Service") {
                            state.set_services(Services::from_view(view));
                        }
                        let built = accepted.lock().unwrap_or_else(|p| p.into_inner()).take();
                        if let Some((policies, errors)) = built {
                            tracing::info!(
                                epoch = view.epoch,
                                version = update.version,
                                snapshot = update.base_version == 0,
                                "configuration from the controller"
                            );
                            policy::apply(&state, policies, errors);
                        }
                        // Pods last: the enrollment loop may capture (or take over) a pod as
                        // soon as it sees it, and it must find that pod's policies in place.
                        if first || touches(update, "Workload") || touches(update, "Waypoint") {
                            pods.send_replace(Some(Arc::new(pods_of(view))));
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

/// Every workload of `view` with an IPv4 address, as a pod whose enrollment the controller
/// decided.
pub fn pods_of(view: &ConfigView) -> PodsFile {
    let pods = view
        .resources
        .values()
        .filter_map(|resource| match &resource.body {
            Some(Body::Workload(workload)) => pod_of(workload),
            _ => None,
        })
        .collect();
    let waypoints = view
        .resources
        .iter()
        .filter_map(|((_, namespace, name), resource)| match &resource.body {
            Some(Body::Waypoint(w)) => {
                Some((format!("{namespace}/{name}"), w.service_account.clone()))
            }
            _ => None,
        })
        .collect();
    let scheduled = view
        .resources
        .values()
        .filter_map(|resource| match &resource.body {
            Some(Body::Workload(w)) if w.addresses.is_empty() && !w.uid.is_empty() => Some((
                w.uid.clone(),
                Scheduled {
                    node: w.node.clone(),
                    enrolled: w.enrolled,
                },
            )),
            _ => None,
        })
        .collect();
    PodsFile {
        namespaces: Vec::new(),
        pods,
        waypoints,
        scheduled,
    }
}

fn pod_of(workload: &Workload) -> Option<Pod> {
    let ip =
        workload
            .addresses
            .iter()
            .find_map(|a| match a.parse::<IpAddr>().ok()?.to_canonical() {
                IpAddr::V4(ip) => Some(ip),
                IpAddr::V6(_) => None,
            })?;
    Some(Pod {
        name: workload.name.clone(),
        namespace: workload.namespace.clone(),
        node: workload.node.clone(),
        service_account: workload.service_account.clone(),
        ip,
        netns: Default::default(),
        cgroup: None,
        labels: workload.labels.clone().into_iter().collect(),
        uid: (!workload.uid.is_empty()).then(|| workload.uid.clone()),
        owner: None,
        // A controller older than these fields sends none: the labels then decide.
        names: (!workload.workload_name.is_empty()).then(|| WorkloadNames {
            workload: workload.workload_name.clone(),
            canonical_service: workload.canonical_name.clone(),
            canonical_revision: workload.canonical_revision.clone(),
        }),
        enrolled: Some(workload.enrolled),
        waypoint: (!workload.waypoint.is_empty()).then(|| workload.waypoint.clone()),
    })
}
