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
};

use crate::pods::PodsFile;

#[derive(Debug)]
pub struct Service {
    /// `namespace/name`, for logs.
    pub key: String,
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
    }

    pub fn by_addr(&self, ip: IpAddr) -> Option<&Arc<Service>> {
        self.by_addr.get(&ip.to_canonical())
    }

    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }
}

impl Service {
    /// One endpoint for a connection to `port` of this service, picked at random among the
    /// pods its selector names (or its EndpointSlices' addresses).
    pub fn pick_endpoint(&self, pods: &PodsFile, port: u16) -> Option<SocketAddr> {
        let target_port = self
            .ports
            .iter()
            .find(|(p, _)| *p == port)
            .map_or(port, |(_, target)| *target);
        let candidates: Vec<IpAddr> = if self.selector.is_empty() {
            self.endpoints.clone()
        } else {
            pods.pods
                .iter()
                .filter(|pod| {
                    pod.namespace == self.namespace
                        && self
                            .selector
                            .iter()
                            .all(|(k, v)| pod.labels.get(k) == Some(v))
                })
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
