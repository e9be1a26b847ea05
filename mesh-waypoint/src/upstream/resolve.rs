//! Resolving a target (a service host, subset and port) to its endpoints, policy and
//! cluster, once per configuration snapshot.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use super::{
    Failure, Resolved, Upstreams,
    cluster::Policy,
    locality::{Locality, Placement, Proxy, place},
};
use crate::{
    routes::Target,
    store::{Endpoint, Snapshot, Workload, Workloads},
};

type WorkloadIndex = mesh_core::workloads::WorkloadIndex<Workload>;

impl Upstreams {
    /// The endpoints and policy of `target` for a request that came in on `port`, worked
    /// out once per configuration snapshot and generation of the workloads (selecting
    /// endpoints walks the namespace's workloads).
    pub fn resolve(
        &self,
        snapshot: &Arc<Snapshot>,
        workloads: &Workloads,
        target: &Target,
        port: u16,
    ) -> Result<Arc<Resolved>, Failure> {
        // Read before resolving: a change during the resolution makes it stale at once.
        let generation = workloads.generation();
        {
            let mut cache = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
            let current = cache
                .snapshot
                .as_ref()
                .is_some_and(|s| Arc::ptr_eq(s, snapshot))
                && cache.generation == generation;
            if !current {
                cache.snapshot = Some(snapshot.clone());
                cache.generation = generation;
                cache.targets.clear();
            }
            let mut cached = cache.targets.get(target).into_iter().flatten();
            if let Some((_, resolved)) = cached.find(|(p, _)| *p == port) {
                return Ok(resolved.clone());
            }
        }
        let resolved = Arc::new(self.resolve_in(snapshot, &workloads.read(), target, port)?);
        let mut cache = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
        if cache
            .snapshot
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, snapshot))
            && cache.generation == generation
        {
            cache
                .targets
                .entry(target.clone())
                .or_default()
                .push((port, resolved.clone()));
        }
        Ok(resolved)
    }

    fn resolve_in(
        &self,
        snapshot: &Snapshot,
        workloads: &WorkloadIndex,
        target: &Target,
        port: u16,
    ) -> Result<Resolved, Failure> {
        let service = snapshot
            .services_by_host
            .get(&target.host)
            .ok_or_else(|| Failure::NoCluster(target.host.clone()))?;
        // A gateway's route may leave the port out: a single-port service has only one.
        let port = match (target.port, service.ports.as_slice()) {
            (Some(port), _) => port,
            (None, [only]) if only.port != port => only.port,
            (None, _) => port,
        };
        let rule = snapshot.destination_rules.get(&target.host);
        let subset = match &target.subset {
            Some(name) => Some(
                snapshot
                    .subset(&target.host, name)
                    .ok_or_else(|| Failure::NoCluster(format!("{} subset {name}", target.host)))?,
            ),
            None => None,
        };
        let policy = Policy::from_rule(
            rule.and_then(|r| r.traffic_policy.as_ref()),
            subset.and_then(|s| s.traffic_policy.as_ref()),
            port,
        );
        if let Some(why) = &policy.tls_refusal {
            // Sent as Ambit sends it, the request would have less protection than its rule
            // asks for.
            return Err(Failure::NoHealthyUpstream(format!(
                "{}: its DestinationRule's {why}; refused",
                target.host
            )));
        }
        let through = service
            .waypoint
            .as_ref()
            .filter(|w| self.own_waypoint.as_ref() != Some(*w));
        let endpoints = match through {
            // Another waypoint owns this service: it gets the request, for the service address.
            Some(waypoint) => {
                let via = snapshot.waypoint_pod(workloads, waypoint).ok_or_else(|| {
                    Failure::NoHealthyUpstream(format!("waypoint {waypoint} has no pod"))
                })?;
                service
                    .addresses
                    .first()
                    .map(|vip| Endpoint {
                        addr: SocketAddr::new(*vip, port),
                        workload: None,
                        via: Some(via),
                        placement: Placement::default(),
                    })
                    .into_iter()
                    .collect()
            }
            None => service.endpoints(workloads, port, subset.map(|s| &s.labels)),
        };
        let mut endpoints = endpoints;
        if let (Some(setting), Some(own)) = (&policy.locality, self.own_workload(workloads)) {
            let proxy = Proxy {
                locality: &own.locality,
                labels: &own.labels,
            };
            let nowhere = (Locality::default(), Default::default());
            for endpoint in &mut endpoints {
                let (locality, labels) = match &endpoint.workload {
                    Some(w) => (&w.locality, &*w.labels),
                    None => (&nowhere.0, &nowhere.1),
                };
                endpoint.placement = place(setting, &proxy, locality, labels);
            }
        }
        let key = Target {
            port: Some(port),
            ..target.clone()
        };
        let cluster = self.cluster(key);
        Ok(Resolved {
            endpoints,
            policy,
            cluster,
            port,
        })
    }

    /// This proxy's own workload, if its pod is known and has a locality.
    fn own_workload<'s>(&self, workloads: &'s WorkloadIndex) -> Option<&'s Arc<Workload>> {
        let (namespace, name) = self.own_pod.as_ref()?;
        workloads
            .by_key(&format!("{namespace}/{name}"))
            .filter(|w| !w.locality.is_empty())
    }

    /// The counters of `key`'s cluster, kept across snapshots (its outlier ejections and
    /// connection counts outlive a configuration change).
    fn cluster(&self, key: Target) -> Arc<super::cluster::Cluster> {
        self.clusters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default()
            .clone()
    }

    /// One workload addressed directly (traffic to a pod bound to this waypoint): a cluster
    /// of that one endpoint, with the default policy.
    pub fn resolve_workload(
        &self,
        workload: &Arc<crate::store::Workload>,
        target: SocketAddr,
    ) -> Arc<Resolved> {
        let key = Target {
            host: target.ip().to_string(),
            subset: None,
            port: Some(target.port()),
        };
        let cluster = self.cluster(key);
        Arc::new(Resolved {
            endpoints: vec![Endpoint {
                addr: target,
                workload: Some(workload.clone()),
                via: None,
                placement: Placement::default(),
            }],
            policy: Policy::default(),
            cluster,
            port: target.port(),
        })
    }
}

/// Resolutions against the snapshot they were made from.
#[derive(Default)]
pub(super) struct ResolvedCache {
    snapshot: Option<Arc<Snapshot>>,
    /// The workloads' generation they were made at.
    generation: u64,
    /// Per target, by the port requests came in on.
    targets: HashMap<Target, Vec<(u16, Arc<Resolved>)>>,
}
