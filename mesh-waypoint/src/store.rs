//! What the waypoint knows of the mesh, from the configuration the controller streams:
//! services (by address and by hostname), DestinationRules by host, and the route table, in
//! an immutable [`Snapshot`] rebuilt when one of them changes (one writer swaps it); and the
//! workloads (by address, and to select a service's endpoints) in [`Workloads`], changed one
//! workload at a time, so a pod's change rebuilds nothing else.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{Arc, RwLock},
};

use crate::upstream::locality::{Locality, Placement};
use mesh_api::{
    http_route::HttpRouteSpec,
    networking::{DestinationRuleSpec, GatewaySpec, Subset},
    virtual_service::VirtualServiceSpec,
};
use mesh_core::{
    Identity,
    config_client::ConfigView,
    config_pb::{self as pb, resource::Body},
    policy::PolicySet,
    telemetry::WorkloadNames,
};

use crate::routes::{RouteTable, Scope, qualify};

mod workloads;

pub use workloads::{KIND as WORKLOAD_KIND, Workloads};

type WorkloadIndex = mesh_core::workloads::WorkloadIndex<Workload>;

#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub selector: BTreeMap<String, String>,
    /// Addresses from EndpointSlices (what a selector-less service has).
    pub endpoints: Vec<IpAddr>,
    /// `namespace/name` of its waypoint.
    pub waypoint: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub port: u16,
    pub target_port: u16,
    /// What its declared application protocol says of how to serve it.
    pub protocol: PortProtocol,
}

/// How the waypoint treats a service port: as its Service declares it (Istio's `appProtocol`
/// or port name prefix), or by looking at the first bytes when it does not say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortProtocol {
    Http,
    Tcp,
    Sniff,
}

impl PortProtocol {
    pub fn from_declared(declared: &str) -> Self {
        match declared {
            "http" | "http2" | "h2c" | "grpc" | "grpc-web" => PortProtocol::Http,
            // Bytes the waypoint cannot read as HTTP: TLS from the client, databases, and
            // protocols where the server speaks first.
            "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" | "kafka" | "zookeeper" => {
                PortProtocol::Tcp
            }
            _ => PortProtocol::Sniff,
        }
    }
}

impl Service {
    fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }

    pub fn protocol(&self, port: u16) -> PortProtocol {
        self.port(port).map_or(PortProtocol::Sniff, |p| p.protocol)
    }

    pub fn target_port(&self, port: u16) -> u16 {
        self.port(port).map_or(port, |p| p.target_port)
    }

    /// Its endpoints on `port` (a service port), narrowed to `subset_labels`: the workloads
    /// its selector picks, or its EndpointSlices' addresses.
    pub fn endpoints(
        &self,
        workloads: &WorkloadIndex,
        port: u16,
        subset_labels: Option<&BTreeMap<String, String>>,
    ) -> Vec<Endpoint> {
        let target_port = self.target_port(port);
        let fits = |w: &Workload| {
            subset_labels
                .into_iter()
                .flatten()
                .all(|(k, v)| w.labels.get(k) == Some(v))
        };
        if !self.selector.is_empty() {
            return workloads
                .in_namespace(&self.namespace)
                .filter(|w| {
                    self.selector
                        .iter()
                        .all(|(k, v)| w.labels.get(k) == Some(v))
                        && fits(w)
                })
                .map(|w| Endpoint {
                    addr: SocketAddr::new(w.address, target_port),
                    workload: Some(w.clone()),
                    via: None,
                    placement: Placement::default(),
                })
                .collect();
        }
        self.endpoints
            .iter()
            .map(|ip| Endpoint {
                addr: SocketAddr::new(*ip, target_port),
                workload: workloads.by_addr(*ip).cloned(),
                via: None,
                placement: Placement::default(),
            })
            .filter(|e| subset_labels.is_none() || e.workload.as_deref().is_some_and(fits))
            .collect()
    }
}

#[derive(Debug, PartialEq)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub address: IpAddr,
    /// Every address it has (a dual-stack pod has two); `address` is the first.
    pub addresses: Vec<IpAddr>,
    /// Shared with the workloads that have an equal set (a Deployment's replicas).
    pub labels: Arc<BTreeMap<String, String>>,
    pub identity: Option<Identity>,
    /// Captured by a node agent: reached over HBONE on its port 15008.
    pub enrolled: bool,
    pub waypoint: Option<String>,
    pub locality: Locality,
    /// How the metrics name it (its controller, canonical service and revision); shared
    /// like the labels.
    pub names: Arc<WorkloadNames>,
}

/// An endpoint a request can be sent to.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub workload: Option<Arc<Workload>>,
    /// The waypoint in front of it (its address and identity), when the request must pass
    /// one: `addr` is then the service address the waypoint is asked for.
    pub via: Option<(IpAddr, Identity)>,
    /// Its place in locality-aware load balancing.
    pub placement: Placement,
}

#[derive(Debug, Default)]
pub struct Snapshot {
    pub version: u64,
    pub services_by_addr: HashMap<IpAddr, Arc<Service>>,
    pub services_by_host: HashMap<String, Arc<Service>>,
    /// Fully qualified host -> its DestinationRule.
    pub destination_rules: HashMap<String, Arc<DestinationRuleSpec>>,
    pub routes: RouteTable,
    /// Ingress mode: the routes of the Gateway this proxy implements, by host as written.
    pub ingress_routes: RouteTable,
    /// Istio Gateways by `namespace/name`.
    pub gateways: HashMap<String, Arc<GatewaySpec>>,
    /// Certificates from the Secrets Gateways name (`credentialName`), by `namespace/name`.
    pub credentials: HashMap<String, Arc<pb::TlsCredential>>,
    /// AuthorizationPolicies (those naming this waypoint or its services are enforced here).
    pub policies: PolicySet,
    /// What in the last update could not be used.
    pub errors: Vec<String>,
    /// Each waypoint (`namespace/name`) and the identity its proxies run as, as the
    /// controller published it: what a waypoint's pod must be, whatever its labels say.
    pub waypoint_identities: HashMap<String, Identity>,
}

impl Snapshot {
    /// Builds a snapshot from a configuration view; `ingress` is the Gateway (`namespace/name`)
    /// this proxy implements in ingress mode.
    pub fn build(
        view: &ConfigView,
        domain: &str,
        trust_domain: &str,
        root_namespace: &str,
        ingress: Option<&str>,
    ) -> Snapshot {
        let mut snapshot = Snapshot {
            version: view.version,
            ..Snapshot::default()
        };
        let mut virtual_services = Vec::new();
        let mut http_routes = Vec::new();
        // A policy that is refused or does not validate is kept and enforced failing closed.
        let mut policies = PolicySet::with_root_namespace(root_namespace);
        for ((kind, namespace, name), resource) in &view.resources {
            if kind == "AuthorizationPolicy" {
                let json = match &resource.body {
                    Some(Body::IstioJson(json)) => json.as_str(),
                    _ => "",
                };
                let refused = Some(resource.refused.as_str()).filter(|r| !r.is_empty());
                if let Err(error) = policies.add_streamed(kind, namespace, name, json, refused) {
                    snapshot.errors.push(error.to_string());
                }
                continue;
            }
            match &resource.body {
                // Kept in `Workloads`, one at a time (the view holds none).
                Some(Body::Workload(_)) => {}
                Some(Body::Service(s)) => snapshot.add_service(s),
                Some(Body::Waypoint(w)) => {
                    if let Ok(identity) = Identity::new(trust_domain, namespace, &w.service_account)
                    {
                        let key = format!("{namespace}/{name}");
                        snapshot.waypoint_identities.insert(key, identity);
                    }
                }
                Some(Body::Credential(c)) => {
                    let key = format!("{namespace}/{name}");
                    snapshot.credentials.insert(key, Arc::new(c.clone()));
                }
                Some(Body::IstioJson(json)) => {
                    let parsed: Result<serde_json::Value, _> = serde_json::from_str(json);
                    let Ok(spec) = parsed else {
                        snapshot
                            .errors
                            .push(format!("{kind} {namespace}/{name}: body is not JSON"));
                        continue;
                    };
                    match kind.as_str() {
                        "VirtualService" => {
                            match serde_json::from_value::<VirtualServiceSpec>(spec) {
                                Ok(vs) => {
                                    virtual_services.push((namespace.clone(), name.clone(), vs))
                                }
                                Err(e) => snapshot
                                    .errors
                                    .push(format!("VirtualService {namespace}/{name}: {e}")),
                            }
                        }
                        "HTTPRoute" => match serde_json::from_value::<HttpRouteSpec>(spec) {
                            Ok(route) => http_routes.push((namespace.clone(), name.clone(), route)),
                            Err(e) => snapshot
                                .errors
                                .push(format!("HTTPRoute {namespace}/{name}: {e}")),
                        },
                        "DestinationRule" => {
                            match serde_json::from_value::<DestinationRuleSpec>(spec) {
                                Ok(dr) => {
                                    let host = qualify(&dr.host, namespace, domain);
                                    snapshot
                                        .destination_rules
                                        .entry(host)
                                        .or_insert_with(|| Arc::new(dr));
                                }
                                Err(e) => snapshot
                                    .errors
                                    .push(format!("DestinationRule {namespace}/{name}: {e}")),
                            }
                        }
                        "Gateway" => match serde_json::from_value::<GatewaySpec>(spec) {
                            Ok(gateway) => {
                                snapshot
                                    .gateways
                                    .insert(format!("{namespace}/{name}"), Arc::new(gateway));
                            }
                            Err(e) => snapshot
                                .errors
                                .push(format!("Gateway {namespace}/{name}: {e}")),
                        },
                        _ => {}
                    }
                }
                None => {}
            }
        }
        let specs = || {
            virtual_services
                .iter()
                .map(|(ns, name, spec)| (ns.as_str(), name.as_str(), spec))
        };
        let (mut routes, errors) = RouteTable::compile(specs(), domain, Scope::Mesh);
        snapshot.errors.extend(errors);
        let http_routes = http_routes
            .iter()
            .map(|(ns, name, spec)| (ns.as_str(), name.as_str(), spec));
        snapshot
            .errors
            .extend(routes.add_http_routes(http_routes.clone(), domain));
        snapshot.routes = routes;
        if let Some((namespace, name)) = ingress.and_then(|g| g.split_once('/')) {
            let scope = Scope::Gateway { namespace, name };
            let (mut routes, errors) = RouteTable::compile(specs(), domain, scope);
            snapshot.errors.extend(errors);
            // HTTPRoutes attach to a Gateway API ingress, which arrives as the Istio Gateway
            // it amounts to (listeners as servers).
            if let Some(gateway) = snapshot
                .gateways
                .get(&format!("{namespace}/{name}"))
                .cloned()
            {
                let errors = routes.add_gateway_http_routes(
                    http_routes,
                    domain,
                    (namespace, name),
                    &gateway.servers,
                );
                snapshot.errors.extend(errors);
            }
            snapshot.ingress_routes = routes;
        }
        snapshot.policies = policies;
        snapshot
    }

    fn add_service(&mut self, s: &pb::Service) {
        let parse = |list: &[String]| list.iter().filter_map(|a| a.parse().ok()).collect();
        let service = Arc::new(Service {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            hostname: s.hostname.clone(),
            addresses: parse(&s.addresses),
            ports: s
                .ports
                .iter()
                .filter_map(|p| {
                    Some(ServicePort {
                        port: u16::try_from(p.port).ok()?,
                        target_port: u16::try_from(p.target_port).ok()?,
                        protocol: PortProtocol::from_declared(&p.app_protocol),
                    })
                })
                .collect(),
            selector: s.selector.clone().into_iter().collect(),
            endpoints: parse(&s.endpoints),
            waypoint: (!s.waypoint.is_empty()).then(|| s.waypoint.clone()),
        });
        for a in &service.addresses {
            self.services_by_addr.insert(*a, service.clone());
        }
        self.services_by_host
            .insert(s.hostname.clone(), service.clone());
    }

    /// A pod of waypoint `namespace/name`, with its identity: one labelled as the Gateway's
    /// that runs as the identity the controller published for it (never the label alone).
    pub fn waypoint_pod(
        &self,
        workloads: &WorkloadIndex,
        waypoint: &str,
    ) -> Option<(IpAddr, Identity)> {
        let identity = self.waypoint_identities.get(waypoint)?;
        let pods: Vec<&Arc<Workload>> = workloads
            .labelled_for_waypoint(waypoint)
            .filter(|w| w.identity.as_ref() == Some(identity))
            .collect();
        let pod = pods.get(fastrand::usize(..pods.len().max(1)))?;
        Some((pod.address, pod.identity.clone()?))
    }

    /// The subset of `host`'s DestinationRule called `name`.
    pub fn subset(&self, host: &str, name: &str) -> Option<&Subset> {
        self.destination_rules
            .get(host)?
            .subsets
            .iter()
            .find(|s| s.name == name)
    }
}

/// The current snapshot, shared by the proxy; replaced whole on each update.
pub struct Store {
    current: RwLock<Arc<Snapshot>>,
    /// The workloads, changed one at a time (not part of the snapshot).
    pub workloads: Workloads,
    /// The version of the last update applied, workloads included (a snapshot's version is
    /// that of the last update that rebuilt it).
    applied: std::sync::atomic::AtomicU64,
    /// The version of each snapshot set, for whoever follows changes (ingress listeners).
    version: tokio::sync::watch::Sender<u64>,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            current: RwLock::default(),
            workloads: Workloads::default(),
            applied: Default::default(),
            version: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Store {
    /// Tells of every new snapshot.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }

    pub fn get(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records that the update `version` was applied.
    pub fn applied(&self, version: u64) {
        self.applied
            .store(version, std::sync::atomic::Ordering::Release);
    }

    /// The version of the last update applied.
    pub fn applied_version(&self) -> u64 {
        self.applied.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn set(&self, snapshot: Snapshot) {
        let version = snapshot.version;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
        self.version.send_replace(version);
    }
}
