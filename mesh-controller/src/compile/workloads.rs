//! Pods as workloads and Services as services, as subscribers receive them: whether a pod is
//! in the mesh, which waypoint a workload or a Service is bound to, endpoints and localities.
//! The labels are Ambit's or Istio's ([`mesh_core::labels`]), with Istio's rules; a
//! ServiceAccount's `use-waypoint` (Ambit's own) binds the pods running as it, between the
//! pod's label and its namespace's.

use std::collections::BTreeMap;

use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::ResourceExt as _;
use mesh_core::{
    config_pb as pb,
    labels::{self, TrafficType, WaypointLabel},
    telemetry::{Owner, WorkloadNames},
};

use crate::config::ConfigSet;
use mesh_api::gateway_api::{GatewayRole, Listener, WAYPOINT_CLASS};

/// The label an EndpointSlice names its Service with.
const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// A pod's own locality (`region.zone.subzone`: labels cannot hold `/`), over its node's.
pub const LOCALITY_LABEL: &str = "istio-locality";
/// A node's topology labels, as Istio reads them.
const TOPOLOGY: [&str; 3] = [
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
];

/// What a waypoint Gateway says about who may use it.
struct Waypoint<'a> {
    traffic: TrafficType,
    /// Its HBONE listener, whose `allowedRoutes.namespaces` admits other namespaces.
    hbone: Option<&'a Listener>,
}

/// What workloads and services are computed from besides themselves.
pub(super) struct Context<'a> {
    namespaces: BTreeMap<String, &'a Namespace>,
    /// (namespace, service account) -> its `use-waypoint` label.
    account_waypoints: BTreeMap<(String, String), WaypointLabel>,
    /// (namespace, service) -> ready endpoint addresses.
    endpoints: BTreeMap<(String, String), Vec<String>>,
    /// Node -> its locality, `region/zone/subzone`.
    localities: BTreeMap<String, String>,
    /// The waypoint Gateways, by (namespace, name).
    waypoints: BTreeMap<(String, String), Waypoint<'a>>,
    /// (waypoint, namespace) pairs refused so far: logged once per compile, not per object.
    refused: std::cell::RefCell<std::collections::BTreeSet<(String, String)>>,
}

impl<'a> Context<'a> {
    pub(super) fn new(set: &'a ConfigSet) -> Self {
        let namespaces = set
            .namespaces()
            .map(|(key, ns)| (key.name.clone(), ns))
            .collect();
        let account_waypoints = set
            .service_accounts()
            .map(|(key, sa)| {
                let label = labels::use_waypoint(sa.labels(), &key.namespace);
                ((key.namespace.clone(), key.name.clone()), label)
            })
            .filter(|(_, label)| *label != WaypointLabel::Unset)
            .collect();
        let mut endpoints: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for (key, slice) in set.endpoint_slices() {
            let Some(service) = slice.labels().get(SERVICE_NAME) else {
                continue;
            };
            endpoints
                .entry((key.namespace.clone(), service.clone()))
                .or_default()
                .extend(ready_addresses(slice));
        }
        for addresses in endpoints.values_mut() {
            addresses.sort();
            addresses.dedup();
        }
        let localities = set
            .nodes()
            .map(|(key, node)| {
                let labels = node.labels();
                let parts = TOPOLOGY.map(|l| labels.get(l).map_or("", String::as_str));
                (key.name.clone(), parts.join("/"))
            })
            .collect();
        let waypoints = set
            .k8s_gateways()
            .filter(|(_, gw)| set.gateway_role(gw) == Some(GatewayRole::Waypoint))
            .map(|(key, gw)| {
                let class = set
                    .gateway_class(&gw.spec.gateway_class_name)
                    .map(|class| class.labels());
                // Istio's default is `service`; Ambit's own class binds workloads too, so
                // that a pod behind it cannot be reached around it.
                let default = match gw.spec.gateway_class_name.as_str() {
                    WAYPOINT_CLASS => "all",
                    _ => "service",
                };
                let traffic = labels::first(gw.labels(), &labels::WAYPOINT_FOR)
                    .or(class.and_then(|c| labels::first(c, &labels::WAYPOINT_FOR)))
                    .unwrap_or(default);
                let waypoint = Waypoint {
                    traffic: TrafficType::parse(traffic),
                    hbone: gw.spec.hbone_listener(),
                };
                ((key.namespace.clone(), key.name.clone()), waypoint)
            })
            .collect();
        Context {
            namespaces,
            account_waypoints,
            endpoints,
            localities,
            waypoints,
            refused: Default::default(),
        }
    }

    fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        self.namespaces
            .get(namespace)
            .map(|ns| ns.labels().clone())
            .unwrap_or_default()
    }

    /// The waypoint `label` binds an object of `namespace` to (`namespace/name`), if the
    /// waypoint takes that traffic and admits that namespace. A waypoint Ambit has no Gateway
    /// for (local mode's waypoint pods) takes everything from its own namespace and others.
    fn bind(&self, label: WaypointLabel, namespace: &str, service: bool) -> Option<String> {
        let WaypointLabel::Waypoint {
            namespace: wp_namespace,
            name,
        } = label
        else {
            return None;
        };
        if let Some(waypoint) = self.waypoints.get(&(wp_namespace.clone(), name.clone())) {
            let takes = match service {
                true => waypoint.traffic.takes_services(),
                false => waypoint.traffic.takes_workloads(),
            };
            if !takes {
                return None;
            }
            // Its own namespace always; others as its listener admits routes.
            let admitted = wp_namespace == namespace
                || waypoint.hbone.is_some_and(|l| {
                    l.admits_namespace(namespace, &self.namespace_labels(namespace), &wp_namespace)
                });
            let first = || {
                let pair = (format!("{wp_namespace}/{name}"), namespace.to_owned());
                self.refused.borrow_mut().insert(pair)
            };
            if !admitted && first() {
                tracing::warn!(
                    waypoint = %format!("{wp_namespace}/{name}"), %namespace,
                    "the waypoint's HBONE listener does not admit this namespace \
                     (allowedRoutes.namespaces); not bound"
                );
            }
            if !admitted {
                return None;
            }
        }
        Some(format!("{wp_namespace}/{name}"))
    }
}

/// Addresses of a slice's endpoints that are ready (an endpoint without conditions is).
fn ready_addresses(slice: &EndpointSlice) -> impl Iterator<Item = String> + '_ {
    slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .flat_map(|e| e.addresses.iter().cloned())
}

/// A pod as a workload. One scheduled but without an address yet goes out too, with none:
/// its node's agent then knows, before the kubelet starts it, whether it is of the mesh (the
/// kernel refuses a starting pod's connects until its agent has decided). `None` for a pod
/// not scheduled yet, or finished without an address.
pub(super) fn workload(pod: &Pod, context: &Context) -> Option<pb::Workload> {
    let status = pod.status.as_ref();
    let mut addresses: Vec<String> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .map(|ip| ip.ip.clone())
        .collect();
    if addresses.is_empty() {
        addresses.extend(status.and_then(|s| s.pod_ip.clone()));
    }
    let spec = pod.spec.as_ref();
    let scheduled = spec
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let finished = status
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|phase| phase == "Succeeded" || phase == "Failed");
    if addresses.is_empty() && (!scheduled || finished) {
        return None;
    }
    let namespace = pod.namespace().unwrap_or_default();
    let service_account = spec
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".to_owned());
    let ns_labels = context.namespace_labels(&namespace);
    let mut labels = pod.labels().clone();
    // Node agents choose a waypoint's pods by this label: a pod not serving yet (starting) or
    // any more (terminating: it drains) is not offered, as an EndpointSlice leaves it out.
    if !serving(pod) {
        labels.remove(labels::GATEWAY_NAME);
    }
    // A pod on the host's network is the node itself, and a pod with an Istio sidecar is
    // captured by its sidecar: neither is ever captured here.
    let host_network = spec.and_then(|s| s.host_network) == Some(true);
    let sidecar = pod.annotations().contains_key(labels::ISTIO_SIDECAR_STATUS);
    let enrolled = labels::enrolled(&labels, &ns_labels) && !host_network && !sidecar;
    // The most specific label wins: the pod's, its service account's, its namespace's.
    let account = (namespace.clone(), service_account.clone());
    let label = match labels::use_waypoint(&labels, &namespace) {
        WaypointLabel::Unset => match context.account_waypoints.get(&account) {
            Some(label) => label.clone(),
            None => labels::use_waypoint(&ns_labels, &namespace),
        },
        own => own,
    };
    let waypoint = context.bind(label, &namespace, false).unwrap_or_default();
    let node = spec.and_then(|s| s.node_name.clone()).unwrap_or_default();
    let locality = match labels.get(LOCALITY_LABEL) {
        Some(own) => own.replace('.', "/"),
        None => context.localities.get(&node).cloned().unwrap_or_default(),
    };
    let names = workload_names(pod, &labels);
    Some(pb::Workload {
        workload_name: names.workload,
        canonical_name: names.canonical_service,
        canonical_revision: names.canonical_revision,
        name: pod.name_any(),
        namespace,
        node,
        locality,
        addresses,
        service_account,
        labels: labels.into_iter().collect(),
        enrolled,
        waypoint,
        uid: pod.uid().unwrap_or_default(),
    })
}

/// Whether the pod takes new connections: not being deleted, and not reported unready (a pod
/// without conditions, as local mode's, is ready).
fn serving(pod: &Pod) -> bool {
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_none_or(|c| c.status != "False");
    pod.metadata.deletion_timestamp.is_none() && ready
}

/// How Istio's metrics name a pod's workload: after its controller, when its name was
/// generated (see `mesh_core::telemetry`).
fn workload_names(pod: &Pod, labels: &BTreeMap<String, String>) -> WorkloadNames {
    let controller = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| Owner {
            kind: o.kind.clone(),
            name: o.name.clone(),
        });
    let generated = pod
        .metadata
        .generate_name
        .as_deref()
        .is_some_and(|g| !g.is_empty());
    WorkloadNames::derive(&pod.name_any(), generated, labels, controller.as_ref())
}

pub(super) fn service_of(service: &Service, context: &Context, domain: &str) -> pb::Service {
    let spec = service.spec.clone().unwrap_or_default();
    let ns = service.namespace().unwrap_or_default();
    let endpoints = context
        .endpoints
        .get(&(ns.clone(), service.name_any()))
        .cloned()
        .unwrap_or_default();
    let label = match labels::use_waypoint(service.labels(), &ns) {
        WaypointLabel::Unset => labels::use_waypoint(&context.namespace_labels(&ns), &ns),
        own => own,
    };
    let waypoint = context.bind(label, &ns, true).unwrap_or_default();
    let mut addresses = spec.cluster_ips.clone().unwrap_or_default();
    if addresses.is_empty() {
        addresses.extend(spec.cluster_ip.clone());
    }
    addresses.retain(|a| a != "None");
    pb::Service {
        name: service.name_any(),
        namespace: ns.clone(),
        hostname: format!("{}.{ns}.svc.{domain}", service.name_any()),
        addresses,
        ports: spec
            .ports
            .iter()
            .flatten()
            .map(|p| pb::ServicePort {
                port: p.port as u32,
                target_port: match &p.target_port {
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
                        *n as u32
                    }
                    _ => p.port as u32,
                },
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
                app_protocol: app_protocol(p),
            })
            .collect(),
        selector: spec.selector.unwrap_or_default().into_iter().collect(),
        waypoint,
        endpoints,
    }
}

/// A port's application protocol as Istio selects it: `appProtocol` (its last path segment:
/// `kubernetes.io/h2c` is `h2c`), else the name's prefix before `-`.
pub(super) fn app_protocol(port: &k8s_openapi::api::core::v1::ServicePort) -> String {
    let declared = match &port.app_protocol {
        Some(protocol) => protocol.rsplit('/').next().unwrap_or_default(),
        None => port
            .name
            .as_deref()
            .map(|name| name.split('-').next().unwrap_or(name))
            .unwrap_or_default(),
    };
    declared.to_ascii_lowercase()
}

#[cfg(test)]
mod tests;
