//! The configuration users give the mesh, whatever its source: the resources, each with what
//! validation found about it. A source (a directory of YAML in local mode, the Kubernetes API
//! otherwise) fills a [`ConfigSet`]; [`validate`] decides which resources apply and writes the
//! reasons for the others.
//!
//! # Layout
//! - `load`: reading multi-document YAML (a directory in local mode), one error per bad
//!   document and the rest kept;
//! - `validate`: the checks, producing each resource's `Accepted` and `ResolvedRefs`
//!   conditions;
//! - `duration`: Istio's duration strings (`1.5s`, `250ms`, `1m30s`).

pub mod load;
pub mod validate;

use std::collections::BTreeMap;

use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Secret, Service, ServiceAccount},
    discovery::v1::EndpointSlice,
};

use mesh_api::{gateway_api, http_route, networking, security};

/// The kinds a configuration holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    /// Its topology labels give its pods' locality.
    Node,
    Pod,
    Service,
    /// A Service's endpoints (what a selector-less Service sends to, too).
    EndpointSlice,
    /// Its `ambit.io/use-waypoint` label binds the pods running as it to a waypoint.
    ServiceAccount,
    VirtualService,
    DestinationRule,
    Gateway,
    ServiceEntry,
    PeerAuthentication,
    AuthorizationPolicy,
    /// A Gateway API `GatewayClass`: which controller serves Gateways of that class.
    GatewayClass,
    /// A Gateway API `Gateway` (of class `ambit-waypoint` when it asks for a waypoint).
    K8sGateway,
    /// A Gateway API `HTTPRoute` (on a Service: routes at its waypoint).
    HttpRoute,
    /// A certificate an Istio Gateway's `credentialName` names.
    Secret,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::Gateway | Kind::K8sGateway => "Gateway",
            Kind::GatewayClass => "GatewayClass",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::Secret => "Secret",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::HttpRoute => "HTTPRoute",
        }
    }
}

/// A resource's identity: kind, namespace (empty for cluster-scoped) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind.name(), self.name)
        } else {
            write!(f, "{} {}/{}", self.kind.name(), self.namespace, self.name)
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    Namespace(Box<Namespace>),
    Node(Box<Node>),
    Pod(Box<Pod>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    ServiceAccount(Box<ServiceAccount>),
    VirtualService(Box<networking::VirtualService>),
    DestinationRule(Box<networking::DestinationRule>),
    Gateway(Box<networking::Gateway>),
    ServiceEntry(Box<networking::ServiceEntry>),
    PeerAuthentication(Box<security::PeerAuthentication>),
    AuthorizationPolicy(Box<security::AuthorizationPolicy>),
    GatewayClass(Box<gateway_api::GatewayClass>),
    K8sGateway(Box<gateway_api::Gateway>),
    HttpRoute(Box<http_route::HTTPRoute>),
    Secret(Box<Secret>),
}

/// Every resource of a configuration, in key order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigSet {
    pub resources: BTreeMap<ObjectKey, Resource>,
    /// AuthorizationPolicies whose spec could not be read, with why: each is in `resources`
    /// as what could be salvaged (where it applies, its action), refused and enforced failing
    /// closed, rather than dropped (a dropped DENY would open access).
    pub unreadable: BTreeMap<ObjectKey, String>,
}

macro_rules! typed {
    ($method:ident, $variant:ident, $type:ty) => {
        pub fn $method(&self) -> impl Iterator<Item = (&ObjectKey, &$type)> {
            self.resources.iter().filter_map(|(key, r)| match r {
                Resource::$variant(r) => Some((key, &**r)),
                _ => None,
            })
        }
    };
}

impl ConfigSet {
    typed!(namespaces, Namespace, Namespace);
    typed!(nodes, Node, Node);
    typed!(pods, Pod, Pod);
    typed!(services, Service, Service);
    typed!(endpoint_slices, EndpointSlice, EndpointSlice);
    typed!(service_accounts, ServiceAccount, ServiceAccount);
    typed!(virtual_services, VirtualService, networking::VirtualService);
    typed!(
        destination_rules,
        DestinationRule,
        networking::DestinationRule
    );
    typed!(gateways, Gateway, networking::Gateway);
    typed!(service_entries, ServiceEntry, networking::ServiceEntry);
    typed!(
        peer_authentications,
        PeerAuthentication,
        security::PeerAuthentication
    );
    typed!(
        authorization_policies,
        AuthorizationPolicy,
        security::AuthorizationPolicy
    );
    typed!(gateway_classes, GatewayClass, gateway_api::GatewayClass);
    typed!(k8s_gateways, K8sGateway, gateway_api::Gateway);
    typed!(http_routes, HttpRoute, http_route::HTTPRoute);
    typed!(secrets, Secret, Secret);

    /// The Gateway API `Gateway` `namespace/name`.
    pub fn k8s_gateway(&self, namespace: &str, name: &str) -> Option<&gateway_api::Gateway> {
        let key = ObjectKey {
            kind: Kind::K8sGateway,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        match self.resources.get(&key) {
            Some(Resource::K8sGateway(gateway)) => Some(gateway),
            _ => None,
        }
    }

    /// The cluster's GatewayClass `name` (cluster-scoped), if it has one.
    pub fn gateway_class(&self, name: &str) -> Option<&gateway_api::GatewayClass> {
        let key = ObjectKey {
            kind: Kind::GatewayClass,
            namespace: String::new(),
            name: name.to_owned(),
        };
        match self.resources.get(&key) {
            Some(Resource::GatewayClass(class)) => Some(class),
            _ => None,
        }
    }

    /// What Ambit serves a Gateway API `Gateway` as, if anything: its class must be one Ambit
    /// serves, and not claimed by another controller (see [`gateway_api::GatewayRole::of`]).
    pub fn gateway_role(&self, gateway: &gateway_api::Gateway) -> Option<gateway_api::GatewayRole> {
        let class_name = &gateway.spec.gateway_class_name;
        gateway_api::GatewayRole::of(class_name, self.gateway_class(class_name))
    }

    /// The labels of namespace `name` (none when it is not known).
    pub fn namespace_labels(&self, name: &str) -> BTreeMap<String, String> {
        let key = ObjectKey {
            kind: Kind::Namespace,
            namespace: String::new(),
            name: name.to_owned(),
        };
        match self.resources.get(&key) {
            Some(Resource::Namespace(ns)) => ns.metadata.labels.clone().unwrap_or_default(),
            _ => BTreeMap::new(),
        }
    }

    /// Adds or replaces a resource.
    pub fn insert(&mut self, resource: Resource) -> ObjectKey {
        let key = resource.key();
        self.resources.insert(key.clone(), resource);
        key
    }
}

impl Resource {
    pub fn meta(&self) -> &kube::api::ObjectMeta {
        use kube::Resource as _;
        match self {
            Resource::Namespace(r) => r.meta(),
            Resource::Node(r) => r.meta(),
            Resource::Pod(r) => r.meta(),
            Resource::Service(r) => r.meta(),
            Resource::EndpointSlice(r) => r.meta(),
            Resource::ServiceAccount(r) => r.meta(),
            Resource::VirtualService(r) => r.meta(),
            Resource::DestinationRule(r) => r.meta(),
            Resource::Gateway(r) => r.meta(),
            Resource::ServiceEntry(r) => r.meta(),
            Resource::PeerAuthentication(r) => r.meta(),
            Resource::AuthorizationPolicy(r) => r.meta(),
            Resource::GatewayClass(r) => r.meta(),
            Resource::K8sGateway(r) => r.meta(),
            Resource::HttpRoute(r) => r.meta(),
            Resource::Secret(r) => r.meta(),
        }
    }

    /// The `spec` of an Istio kind as its CRD's schema reads it (the kinds whose every
    /// field the compatibility table lists); `None` for other kinds.
    pub fn istio_spec(&self) -> Option<serde_json::Value> {
        let spec = match self {
            Resource::VirtualService(r) => serde_json::to_value(&r.spec),
            Resource::DestinationRule(r) => serde_json::to_value(&r.spec),
            Resource::Gateway(r) => serde_json::to_value(&r.spec),
            Resource::ServiceEntry(r) => serde_json::to_value(&r.spec),
            Resource::PeerAuthentication(r) => serde_json::to_value(&r.spec),
            Resource::AuthorizationPolicy(r) => serde_json::to_value(&r.spec),
            _ => return None,
        };
        // Serializing a typed spec cannot fail: every map key is a string.
        spec.ok()
    }

    pub fn kind(&self) -> Kind {
        match self {
            Resource::Namespace(_) => Kind::Namespace,
            Resource::Node(_) => Kind::Node,
            Resource::Pod(_) => Kind::Pod,
            Resource::Service(_) => Kind::Service,
            Resource::EndpointSlice(_) => Kind::EndpointSlice,
            Resource::ServiceAccount(_) => Kind::ServiceAccount,
            Resource::VirtualService(_) => Kind::VirtualService,
            Resource::DestinationRule(_) => Kind::DestinationRule,
            Resource::Gateway(_) => Kind::Gateway,
            Resource::ServiceEntry(_) => Kind::ServiceEntry,
            Resource::PeerAuthentication(_) => Kind::PeerAuthentication,
            Resource::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Resource::GatewayClass(_) => Kind::GatewayClass,
            Resource::K8sGateway(_) => Kind::K8sGateway,
            Resource::HttpRoute(_) => Kind::HttpRoute,
            Resource::Secret(_) => Kind::Secret,
        }
    }

    pub fn key(&self) -> ObjectKey {
        let meta = self.meta();
        ObjectKey {
            kind: self.kind(),
            // Cluster-scoped kinds have none.
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}
