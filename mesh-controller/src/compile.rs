//! From a validated configuration to what subscribers receive: workloads (pods with their
//! enrollment and waypoint), services, the accepted Istio resources, and the Secrets ingress
//! Gateways take certificates from (`credentials`). Rejected resources are left out, except
//! AuthorizationPolicies, which nodes enforce failing closed.

mod credentials;
mod workloads;

use mesh_core::config_pb::{self as pb, resource::Body};

pub use self::workloads::LOCALITY_LABEL;
use self::workloads::{Context, service_of, workload};

use crate::config::{ConfigSet, Kind, Resource, validate::Validation};
use mesh_api::{
    gateway_api::GatewayRole,
    http_route::{HttpRouteSpec, ParentReference},
};

/// Every resource the subscribers may need, in key order.
pub fn compile(set: &ConfigSet, validation: &Validation, domain: &str) -> Vec<pb::Resource> {
    let context = Context::new(set);
    let credentials = credentials::referenced(set, validation);
    let mut out = Vec::new();
    for (key, resource) in &set.resources {
        // A rejected AuthorizationPolicy still goes out, with the reason: nodes and waypoints
        // enforce it failing closed (a refused DENY denies everything it selects, a refused
        // ALLOW admits nothing), so a typo never opens access. Other rejected kinds stay out.
        if !validation.accepted(key) && key.kind != Kind::AuthorizationPolicy {
            continue;
        }
        let body = match resource {
            Resource::Pod(pod) => match workload(pod, &context) {
                Some(w) => Body::Workload(w),
                None => continue,
            },
            Resource::Service(service) => Body::Service(service_of(service, &context, domain)),
            Resource::Namespace(_)
            | Resource::GatewayClass(_)
            | Resource::Node(_)
            | Resource::EndpointSlice(_)
            | Resource::ServiceAccount(_) => continue,
            // Ingress gateways (the waypoint binary in ingress mode) listen by it.
            Resource::Gateway(r) => Body::IstioJson(json(&r.spec)),
            // A Gateway API ingress goes out as the Istio Gateway it amounts to (under the
            // same name; validation refuses an Istio Gateway and a Gateway API one sharing
            // it). A waypoint's Gateway is the controller's alone.
            Resource::K8sGateway(r) if set.gateway_role(r) == Some(GatewayRole::Ingress) => {
                Body::IstioJson(json(&r.spec.ingress_servers()))
            }
            // A waypoint's Gateway goes out as the identity its proxies run as.
            Resource::K8sGateway(r) if set.gateway_role(r) == Some(GatewayRole::Waypoint) => {
                Body::Waypoint(pb::WaypointIdentity {
                    service_account: crate::waypoint::proxy_service_account(&key.name),
                })
            }
            Resource::K8sGateway(_) => continue,
            Resource::VirtualService(r) => Body::IstioJson(json(&r.spec)),
            Resource::HttpRoute(r) => {
                Body::IstioJson(json(&listeners_admitting(set, &key.namespace, &r.spec)))
            }
            // A rule scoped to some workloads' own proxies has no place at a waypoint, which
            // serves every client (its status says so).
            Resource::DestinationRule(r) if r.spec.workload_selector.is_some() => continue,
            Resource::DestinationRule(r) => Body::IstioJson(json(&r.spec)),
            Resource::ServiceEntry(r) => Body::IstioJson(json(&r.spec)),
            Resource::PeerAuthentication(r) => Body::IstioJson(json(&r.spec)),
            Resource::AuthorizationPolicy(r) => Body::IstioJson(json(&r.spec)),
            Resource::Secret(secret) => {
                match credentials.get(&(key.namespace.clone(), key.name.clone())) {
                    Some(readers) => Body::Credential(pb::TlsCredential {
                        readers: readers.iter().cloned().collect(),
                        ..credentials::of(secret)
                    }),
                    None => continue,
                }
            }
        };
        let kind = match (key.kind, &body) {
            (_, Body::Waypoint(_)) => "Waypoint",
            (Kind::Pod, _) => "Workload",
            (other, _) => other.name(),
        };
        out.push(pb::Resource {
            key: Some(pb::ResourceKey {
                kind: kind.to_owned(),
                namespace: key.namespace.clone(),
                name: key.name.clone(),
            }),
            body: Some(body),
            refused: validation.refusal(key).unwrap_or_default(),
        });
    }
    out
}

/// An HTTPRoute as the ingress should attach it: a parent naming an `ambit` Gateway without
/// `sectionName` becomes one parent per listener that admits the route's namespace, so that
/// the ingress (which sees the Gateway's listeners, not their `allowedRoutes`) attaches the
/// route only where the Gateway allows it.
fn listeners_admitting(set: &ConfigSet, namespace: &str, spec: &HttpRouteSpec) -> HttpRouteSpec {
    let labels = set.namespace_labels(namespace);
    let parent_refs = spec
        .parent_refs
        .iter()
        .flat_map(|parent| {
            let gateway_namespace = parent.namespace.as_deref().unwrap_or(namespace);
            let gateway = set
                .k8s_gateway(gateway_namespace, &parent.name)
                .filter(|g| set.gateway_role(g) == Some(GatewayRole::Ingress));
            match gateway {
                Some(gateway) if parent.is_gateway() && parent.section_name.is_none() => gateway
                    .spec
                    .listeners
                    .iter()
                    .filter(|l| l.picked_by(parent))
                    .filter(|l| l.admits_namespace(namespace, &labels, gateway_namespace))
                    .map(|l| ParentReference {
                        section_name: Some(l.name.clone()),
                        ..parent.clone()
                    })
                    .collect(),
                _ => vec![parent.clone()],
            }
        })
        .collect();
    HttpRouteSpec {
        parent_refs,
        ..spec.clone()
    }
}

fn json<T: serde::Serialize>(spec: &T) -> String {
    serde_json::to_string(spec).expect("resource specs serialize")
}

#[cfg(test)]
mod tests {
    use super::{workloads::app_protocol, *};
    use crate::config::{load::parse_documents, validate::validate};

    const YAML: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {ambit.io/dataplane-mode: ambient, ambit.io/use-waypoint: ns-wp}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: payments, namespace: shop, labels: {ambit.io/use-waypoint: sa-wp}}
---
apiVersion: v1
kind: Pod
metadata: {name: pay, namespace: shop, uid: 0b5c3b1e-6a2f-4d8e-9c1a-2f3e4d5c6b7a, labels: {istio-locality: eu-west.eu-west-1b}}
spec: {serviceAccountName: payments, nodeName: n0, containers: []}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Node
metadata: {name: n0, labels: {topology.kubernetes.io/region: eu-west, topology.kubernetes.io/zone: eu-west-1a}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop}
spec: {nodeName: n0, containers: []}
status: {podIP: 10.0.0.3}
---
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: shop}
spec: {ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: legacy-1, namespace: shop, labels: {kubernetes.io/service-name: legacy}}
addressType: IPv4
endpoints:
- {addresses: [192.0.2.10]}
- {addresses: [192.0.2.11], conditions: {ready: false}}
"#;

    #[test]
    fn a_ports_protocol_is_its_app_protocol_else_its_name_prefix() {
        use k8s_openapi::api::core::v1::ServicePort;
        let port = |name: Option<&str>, app: Option<&str>| ServicePort {
            name: name.map(str::to_owned),
            app_protocol: app.map(str::to_owned),
            port: 80,
            ..ServicePort::default()
        };
        assert_eq!(app_protocol(&port(Some("http-web"), None)), "http");
        assert_eq!(app_protocol(&port(Some("MySQL"), None)), "mysql");
        assert_eq!(
            app_protocol(&port(Some("http-web"), Some("kubernetes.io/h2c"))),
            "h2c"
        );
        assert_eq!(app_protocol(&port(None, Some("GRPC"))), "grpc");
        assert_eq!(app_protocol(&port(None, None)), "");
    }

    #[test]
    fn service_accounts_bind_waypoints_and_slices_give_endpoints() {
        let mut set = ConfigSet::default();
        assert!(parse_documents("t.yaml", YAML, &mut set).is_empty());
        let out = compile(&set, &validate(&set, "cluster.local"), "cluster.local");
        let body = |name: &str| {
            out.iter()
                .find(|r| r.key.as_ref().is_some_and(|k| k.name == name))
                .and_then(|r| r.body.clone())
                .unwrap()
        };
        let Body::Workload(pay) = body("pay") else {
            panic!("pay is not a workload")
        };
        assert_eq!(
            pay.waypoint, "shop/sa-wp",
            "the service account's label wins"
        );
        assert_eq!(pay.uid, "0b5c3b1e-6a2f-4d8e-9c1a-2f3e4d5c6b7a");
        let Body::Workload(web) = body("web") else {
            panic!("web is not a workload")
        };
        assert_eq!(web.waypoint, "shop/ns-wp");
        assert!(web.enrolled);
        assert_eq!(web.locality, "eu-west/eu-west-1a/", "its node's");
        assert_eq!(pay.locality, "eu-west/eu-west-1b", "its own label's");
        let Body::Service(legacy) = body("legacy") else {
            panic!("legacy is not a service")
        };
        assert_eq!(legacy.endpoints, ["192.0.2.10"], "only ready endpoints");
    }

    /// A route from another namespace attaches, at the ingress, only to the listeners whose
    /// `allowedRoutes` admit it.
    #[test]
    fn a_gateway_parent_becomes_the_listeners_that_admit_the_route() {
        let yaml = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: public, namespace: edge}
spec:
  gatewayClassName: ambit
  listeners:
  - {name: own, port: 80, protocol: HTTP}
  - {name: shared, port: 8080, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: shop}
spec:
  parentRefs: [{name: public, namespace: edge}]
  rules: [{backendRefs: [{name: legacy, port: 80}]}]
"#;
        let mut set = ConfigSet::default();
        assert!(parse_documents("t.yaml", yaml, &mut set).is_empty());
        let out = compile(&set, &validate(&set, "cluster.local"), "cluster.local");
        let route = out
            .iter()
            .find(|r| r.key.as_ref().is_some_and(|k| k.kind == "HTTPRoute"))
            .and_then(|r| r.body.clone());
        let Some(Body::IstioJson(json)) = route else {
            panic!("the route is not sent: {route:?}")
        };
        let spec: HttpRouteSpec = serde_json::from_str(&json).unwrap();
        let sections: Vec<_> = spec
            .parent_refs
            .iter()
            .map(|p| p.section_name.as_deref())
            .collect();
        assert_eq!(sections, [Some("shared")]);
    }
}
