//! gateway.networking.k8s.io `Gateway`: with class `ambit-waypoint` (or Istio's
//! `istio-waypoint`) it asks for a waypoint (the controller runs its Deployment, Service and
//! ServiceAccount); with class `ambit` (or Istio's `istio`) it is an ingress, whose HTTP and
//! HTTPS listeners serve the HTTPRoutes attached to it. `GatewayClass` says which controller
//! owns a class. Only the fields Ambit uses; others are kept, not refused.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::Condition;

/// The class that makes a Gateway an Ambit waypoint.
pub const WAYPOINT_CLASS: &str = "ambit-waypoint";
/// The class that makes a Gateway an Ambit ingress.
pub const INGRESS_CLASS: &str = "ambit";
/// The `controllerName` of Ambit's GatewayClasses, and of the route statuses it writes.
pub const CONTROLLER_NAME: &str = "ambit.io/gateway-controller";

/// What a Gateway Ambit serves is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatewayRole {
    /// L7 for the services and workloads bound to it, reached over HBONE.
    Waypoint,
    /// An ingress gateway: its listeners face clients outside the mesh.
    Ingress,
}

/// The classes Ambit serves: its own, and Istio's, so that Istio's YAML applies unchanged.
const CLASSES: [(&str, GatewayRole); 4] = [
    (WAYPOINT_CLASS, GatewayRole::Waypoint),
    ("istio-waypoint", GatewayRole::Waypoint),
    (INGRESS_CLASS, GatewayRole::Ingress),
    ("istio", GatewayRole::Ingress),
];

impl GatewayRole {
    /// The role of a Gateway of class `class_name`, if Ambit serves that class: one of
    /// [`CLASSES`], unless the cluster's GatewayClass of that name (`class`) names another
    /// controller, as istiod's do where Istio is installed; then the Gateway is Istio's.
    pub fn of(class_name: &str, class: Option<&GatewayClass>) -> Option<Self> {
        let role = CLASSES
            .iter()
            .find(|(name, _)| *name == class_name)
            .map(|(_, role)| *role)?;
        match class {
            Some(class) if class.spec.controller_name != CONTROLLER_NAME => None,
            _ => Some(role),
        }
    }
}

/// A class of Gateways and the controller that serves them (cluster-scoped).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "GatewayClass",
    plural = "gatewayclasses",
    derive = "PartialEq",
    derive = "Default",
    status = "GatewayClassStatus",
    shortname = "gc",
    printcolumn = r#"{"name":"Controller","type":"string","jsonPath":".spec.controllerName"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GatewayClassSpec {
    pub controller_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters_ref: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct GatewayClassStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "Gateway",
    plural = "gateways",
    namespaced,
    derive = "PartialEq",
    derive = "Default",
    status = "GatewayStatus",
    shortname = "gtw",
    printcolumn = r#"{"name":"Class","type":"string","jsonPath":".spec.gatewayClassName"}"#,
    printcolumn = r#"{"name":"Programmed","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    pub gateway_class_name: String,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infrastructure: Option<Infrastructure>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    pub port: u16,
    /// `HBONE` for a waypoint's listener; `HTTP` or `HTTPS` for an ingress's.
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<GatewayTlsConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_routes: Option<AllowedRoutes>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayTlsConfig {
    /// `Terminate` (the default) or `Passthrough`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificate_refs: Vec<SecretObjectReference>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretObjectReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `Secret` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Which routes may attach to a listener.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllowedRoutes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<RouteNamespaces>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<RouteGroupKind>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteNamespaces {
    /// `Same` (the default), `All` or `Selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteGroupKind {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub kind: String,
}

impl GatewaySpec {
    /// The listener a waypoint takes mesh traffic on: protocol HBONE on port 15008.
    pub fn hbone_listener(&self) -> Option<&Listener> {
        self.listeners
            .iter()
            .find(|l| l.protocol == "HBONE" && l.port == mesh_common::ports::HBONE)
    }
}

impl Listener {
    /// Whether `parent` picks this listener: by `sectionName` and `port` where it gives them.
    pub fn picked_by(&self, parent: &super::http_route::ParentReference) -> bool {
        parent.section_name.as_ref().is_none_or(|s| *s == self.name)
            && parent.port.is_none_or(|p| p == self.port)
    }

    /// Whether a route in `namespace` (whose labels are `namespace_labels`) may attach, for
    /// a Gateway in `gateway_namespace`: `allowedRoutes.namespaces.from` `Same` (the
    /// default), `All`, or `Selector` with its label selector.
    pub fn admits_namespace(
        &self,
        namespace: &str,
        namespace_labels: &BTreeMap<String, String>,
        gateway_namespace: &str,
    ) -> bool {
        let from = self
            .allowed_routes
            .as_ref()
            .and_then(|a| a.namespaces.as_ref());
        match from.and_then(|n| n.from.as_deref()).unwrap_or("Same") {
            "All" => true,
            "Selector" => from
                .and_then(|n| n.selector.as_ref())
                .is_some_and(|s| super::common::label_selector_selects(s, namespace_labels)),
            _ => namespace == gateway_namespace,
        }
    }
}

/// The hostname a route's `hostname` and a listener's have in common, as the Gateway API
/// intersects them: the more specific of the two when one contains the other (`*` and
/// `*.suffix` wildcards), `None` when they share nothing.
pub fn intersect_hostnames(listener: Option<&str>, route: &str) -> Option<String> {
    let route = route.to_ascii_lowercase();
    let Some(listener) = listener.map(str::to_ascii_lowercase) else {
        return Some(route);
    };
    let covers = |wildcard: &str, name: &str| {
        wildcard
            .strip_prefix('*')
            .is_some_and(|suffix| name.ends_with(suffix) && name.len() > suffix.len())
    };
    if listener == route || covers(&listener, &route) {
        Some(route)
    } else if covers(&route, &listener) {
        Some(listener)
    } else {
        None
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct Infrastructure {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct GatewayStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<GatewayAddress>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct GatewayAddress {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    pub value: String,
}

impl GatewaySpec {
    /// What Ambit serves this Gateway as, given the cluster's GatewayClass of its class.
    pub fn role(&self, class: Option<&GatewayClass>) -> Option<GatewayRole> {
        GatewayRole::of(&self.gateway_class_name, class)
    }

    /// An ingress Gateway's listeners as the servers of an Istio Gateway, which is how the
    /// ingress serves them: HTTP as HTTP, HTTPS terminated with the listener's first
    /// certificate (a Secret in the Gateway's namespace). Each server is named after its
    /// listener, for routes that attach by `sectionName`.
    pub fn ingress_servers(&self) -> super::networking::GatewaySpec {
        use super::networking::{Server, ServerTlsSettings, ServicePort};
        let servers = self
            .listeners
            .iter()
            .map(|listener| {
                let tls = listener.tls.as_ref().map(|tls| ServerTlsSettings {
                    mode: Some("SIMPLE".to_owned()),
                    credential_name: tls.certificate_refs.first().map(|c| c.name.clone()),
                    ..ServerTlsSettings::default()
                });
                Server {
                    port: ServicePort {
                        number: u32::from(listener.port),
                        protocol: Some(listener.protocol.clone()),
                        name: Some(listener.name.clone()),
                        target_port: None,
                    },
                    bind: None,
                    hosts: vec![listener.hostname.clone().unwrap_or_else(|| "*".to_owned())],
                    tls,
                    name: Some(listener.name.clone()),
                    default_endpoint: None,
                }
            })
            .collect();
        super::networking::GatewaySpec {
            selector: BTreeMap::new(),
            servers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::intersect_hostnames;

    #[test]
    fn hostnames_intersect_as_the_gateway_api_says() {
        let cases = [
            (None, "bookinfo.example.com", Some("bookinfo.example.com")),
            (Some("*"), "a.example.com", Some("a.example.com")),
            (
                Some("*.example.com"),
                "a.example.com",
                Some("a.example.com"),
            ),
            (
                Some("a.example.com"),
                "*.example.com",
                Some("a.example.com"),
            ),
            (
                Some("*.example.com"),
                "*.a.example.com",
                Some("*.a.example.com"),
            ),
            (Some("*.example.com"), "example.com", None),
            (Some("a.example.com"), "b.example.com", None),
            (
                Some("A.Example.com"),
                "a.example.COM",
                Some("a.example.com"),
            ),
        ];
        for (listener, route, want) in cases {
            assert_eq!(
                intersect_hostnames(listener, route).as_deref(),
                want,
                "{listener:?} and {route}"
            );
        }
    }
}
