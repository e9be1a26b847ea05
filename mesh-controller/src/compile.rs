//! From a validated configuration to what subscribers receive: workloads (pods with their
//! enrollment and waypoint), services, and the accepted Istio resources. Rejected resources
//! are left out, except AuthorizationPolicies, which nodes enforce failing closed.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::ResourceExt as _;
use mesh_core::config_pb::{self as pb, resource::Body};

use crate::config::{ConfigSet, Kind, Resource, validate::Validation};

/// The label that enrolls a namespace or pod (`ambient`; `none` opts a pod out).
pub const DATAPLANE_MODE: &str = "ambit.io/dataplane-mode";
/// The label naming the waypoint (a Gateway in the same namespace) traffic must pass.
pub const USE_WAYPOINT: &str = "ambit.io/use-waypoint";

/// Every resource the subscribers may need, in key order.
pub fn compile(set: &ConfigSet, validation: &Validation, domain: &str) -> Vec<pb::Resource> {
    let namespaces: BTreeMap<String, &Namespace> = set
        .namespaces()
        .map(|(key, ns)| (key.name.clone(), ns))
        .collect();
    let mut out = Vec::new();
    for (key, resource) in &set.resources {
        // A rejected AuthorizationPolicy still goes out: node agents enforce a policy they
        // find invalid failing closed (a broken DENY denies everything it selects, a broken
        // ALLOW admits nothing), so a typo never opens access. Other rejected kinds stay out.
        if !validation.accepted(key) && key.kind != Kind::AuthorizationPolicy {
            continue;
        }
        let body = match resource {
            Resource::Pod(pod) => match workload(pod, namespaces.get(&key.namespace).copied()) {
                Some(w) => Body::Workload(w),
                None => continue,
            },
            Resource::Service(service) => Body::Service(service_of(
                service,
                namespaces.get(&key.namespace).copied(),
                domain,
            )),
            Resource::Namespace(_) | Resource::K8sGateway(_) | Resource::Gateway(_) => continue,
            Resource::VirtualService(r) => Body::IstioJson(json(&r.spec)),
            Resource::DestinationRule(r) => Body::IstioJson(json(&r.spec)),
            Resource::ServiceEntry(r) => Body::IstioJson(json(&r.spec)),
            Resource::PeerAuthentication(r) => Body::IstioJson(json(&r.spec)),
            Resource::AuthorizationPolicy(r) => Body::IstioJson(json(&r.spec)),
        };
        let kind = match key.kind {
            Kind::Pod => "Workload",
            other => other.name(),
        };
        out.push(pb::Resource {
            key: Some(pb::ResourceKey {
                kind: kind.to_owned(),
                namespace: key.namespace.clone(),
                name: key.name.clone(),
            }),
            body: Some(body),
        });
    }
    out
}

fn json<T: serde::Serialize>(spec: &T) -> String {
    serde_json::to_string(spec).expect("resource specs serialize")
}

fn label<'a>(labels: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    labels.get(name).map(String::as_str)
}

/// A running pod as a workload; `None` for pods without an address yet.
fn workload(pod: &Pod, namespace: Option<&Namespace>) -> Option<pb::Workload> {
    let status = pod.status.as_ref()?;
    let mut addresses: Vec<String> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|ip| ip.ip.clone())
        .collect();
    if addresses.is_empty() {
        addresses.extend(status.pod_ip.clone());
    }
    if addresses.is_empty() {
        return None;
    }
    let spec = pod.spec.as_ref();
    let ns_labels = namespace.map(|ns| ns.labels().clone()).unwrap_or_default();
    let labels = pod.labels().clone();
    // The pod's own label wins (`none` opts out of an enrolled namespace).
    let enrolled =
        label(&labels, DATAPLANE_MODE).or(label(&ns_labels, DATAPLANE_MODE)) == Some("ambient");
    let waypoint = label(&labels, USE_WAYPOINT)
        .or(label(&ns_labels, USE_WAYPOINT))
        .map(|w| format!("{}/{w}", pod.namespace().unwrap_or_default()))
        .unwrap_or_default();
    Some(pb::Workload {
        name: pod.name_any(),
        namespace: pod.namespace().unwrap_or_default(),
        node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        addresses,
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".to_owned()),
        labels: labels.into_iter().collect(),
        enrolled,
        waypoint,
        uid: pod.uid().unwrap_or_default(),
    })
}

fn service_of(service: &Service, namespace: Option<&Namespace>, domain: &str) -> pb::Service {
    let spec = service.spec.clone().unwrap_or_default();
    let ns = service.namespace().unwrap_or_default();
    let ns_labels = namespace.map(|ns| ns.labels().clone()).unwrap_or_default();
    let waypoint = label(service.labels(), USE_WAYPOINT)
        .or(label(&ns_labels, USE_WAYPOINT))
        .map(|w| format!("{ns}/{w}"))
        .unwrap_or_default();
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
            })
            .collect(),
        selector: spec.selector.unwrap_or_default().into_iter().collect(),
        waypoint,
    }
}
