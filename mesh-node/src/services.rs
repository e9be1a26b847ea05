//! Services as the node agent needs them (from the controller's stream): a captured
//! connection to a service address goes to the service's waypoint if it has one, else to one
//! of its endpoints, picked here (the agent is the load balancer, as ztunnel is; no
//! kube-proxy rule is needed in the pod's path).

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use mesh_core::{
    config_client::ConfigView,
    config_pb::{self as pb, resource::Body},
    telemetry::ServiceLabel,
};

use crate::pods::{Pod, WorkloadStore};

#[derive(Debug)]
pub struct Service {
    /// `namespace/name`, for logs.
    pub key: String,
    /// What the metrics call it (`destination_service*`).
    pub label: ServiceLabel,
    pub namespace: String,
    /// Service port -> target port.
    pub ports: Vec<(u16, u16)>,
    pub selector: BTreeMap<String, String>,
    /// From EndpointSlices: what a selector-less service has.
    pub endpoints: Vec<IpAddr>,
    /// `namespace/name` of its waypoint.
    pub waypoint: Option<String>,
}

/// Services by address.
#[derive(Debug, Default)]
pub struct Services {
    by_addr: HashMap<IpAddr, Arc<Service>>,
    /// Services with a selector, by namespace, and those without by endpoint address: what
    /// an inbound connection looks its service up in, without a pass over every service.
    selecting: HashMap<String, Vec<Arc<Service>>>,
    by_endpoint: HashMap<IpAddr, Vec<Arc<Service>>>,
}

impl Services {
    pub fn from_view(view: &ConfigView) -> Self {
        let mut services = Services::default();
        for resource in view.resources.values() {
            if let Some(Body::Service(s)) = &resource.body {
                services.add(s);
            }
        }
        services
    }

    fn add(&mut self, s: &pb::Service) {
        let service = Arc::new(Service {
            key: format!("{}/{}", s.namespace, s.name),
            label: ServiceLabel {
                host: s.hostname.clone(),
                name: s.name.clone(),
                namespace: s.namespace.clone(),
            },
            namespace: s.namespace.clone(),
            ports: s
                .ports
                .iter()
                .filter_map(|p| {
                    Some((
                        u16::try_from(p.port).ok()?,
                        u16::try_from(p.target_port).ok()?,
                    ))
                })
                .collect(),
            selector: s.selector.clone().into_iter().collect(),
            endpoints: s.endpoints.iter().filter_map(|a| a.parse().ok()).collect(),
            waypoint: (!s.waypoint.is_empty()).then(|| s.waypoint.clone()),
        });
        for addr in s.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
            self.by_addr.insert(addr, service.clone());
        }
        if service.selector.is_empty() {
            for endpoint in &service.endpoints {
                let at = self.by_endpoint.entry(*endpoint).or_default();
                at.push(service.clone());
            }
        } else {
            let namespace = self.selecting.entry(service.namespace.clone()).or_default();
            namespace.push(service);
        }
    }

    pub fn by_addr(&self, ip: IpAddr) -> Option<&Arc<Service>> {
        self.by_addr.get(&ip.to_canonical())
    }

    /// The service a connection to `pod`'s `port` was most likely for (the connection itself
    /// names an address, not a service): one that selects the pod and sends that port to it,
    /// as ztunnel guesses it for inbound metrics.
    pub fn serving(&self, pod: &Pod, port: u16) -> Option<&Arc<Service>> {
        let selecting = self.selecting.get(&pod.namespace).into_iter().flatten();
        let selected = selecting.filter(|service| service.selects(pod));
        let by_endpoint = self
            .by_endpoint
            .get(&IpAddr::V4(pod.ip))
            .into_iter()
            .flatten();
        selected
            .chain(by_endpoint)
            .find(|service| service.targets(port))
    }

    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }
}

impl Service {
    fn selects(&self, pod: &Pod) -> bool {
        self.selector
            .iter()
            .all(|(k, v)| pod.labels.get(k) == Some(v))
    }

    /// Whether a connection to a pod's `port` can have come through this service.
    fn targets(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.iter().any(|(_, target)| *target == port)
    }

    /// One endpoint for a connection to `port` of this service, picked at random among the
    /// pods its selector names (or its EndpointSlices' addresses).
    pub fn pick_endpoint(&self, pods: &WorkloadStore, port: u16) -> Option<SocketAddr> {
        let target_port = self
            .ports
            .iter()
            .find(|(p, _)| *p == port)
            .map_or(port, |(_, target)| *target);
        let candidates: Vec<IpAddr> = if self.selector.is_empty() {
            self.endpoints.clone()
        } else {
            pods.in_namespace(&self.namespace)
                .filter(|pod| self.selects(pod))
                .map(|pod| IpAddr::V4(pod.ip))
                .collect()
        };
        if candidates.is_empty() {
            return None;
        }
        Some(SocketAddr::new(
            candidates[fastrand::usize(..candidates.len())],
            target_port,
        ))
    }
}
