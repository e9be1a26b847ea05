//! The workloads the waypoint knows, changed one at a time from the configuration stream: the
//! same index the node agent keeps (`mesh_core::workloads`), behind a lock readers hold for a
//! lookup, with a generation that tells resolutions made before a change that they are stale.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{
        Arc, RwLock, RwLockReadGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use mesh_core::{
    Identity,
    config_pb::{self as pb, Update, resource::Body},
    telemetry::WorkloadNames,
    workloads::{Changes, StoredWorkload},
};

use super::{Workload, WorkloadIndex};
use crate::upstream::locality::Locality;

/// The kind the workload index keeps; the stream's view holds no copy of it.
pub const KIND: &str = "Workload";

impl StoredWorkload for Workload {
    fn namespace(&self) -> &str {
        &self.namespace
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn addresses(&self) -> Vec<IpAddr> {
        self.addresses.clone()
    }

    fn service_account(&self) -> Option<&str> {
        self.identity.as_ref().map(|i| i.service_account.as_str())
    }

    fn node(&self) -> Option<&str> {
        None
    }

    fn labels(&self) -> &Arc<BTreeMap<String, String>> {
        &self.labels
    }

    fn names(&self) -> Option<&Arc<WorkloadNames>> {
        Some(&self.names)
    }

    fn shared_parts(
        &mut self,
    ) -> (
        &mut Arc<BTreeMap<String, String>>,
        Option<&mut Arc<WorkloadNames>>,
    ) {
        (&mut self.labels, Some(&mut self.names))
    }
}

#[derive(Default)]
pub struct Workloads {
    index: RwLock<WorkloadIndex>,
    /// Bumped by every change: what was resolved against an older generation is stale.
    generation: AtomicU64,
}

impl Workloads {
    /// The index, to look up in; never held across an `await`.
    pub fn read(&self) -> RwLockReadGuard<'_, WorkloadIndex> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The workload at `ip`.
    pub fn get(&self, ip: IpAddr) -> Option<Arc<Workload>> {
        self.read().by_addr(ip).cloned()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Applies the workloads of `update`: a snapshot replaces what is held (changing only what
    /// differs), a delta changes what it names.
    pub fn apply(&self, update: &Update, trust_domain: &str) -> Changes<Workload> {
        let of_kind = |key: &pb::ResourceKey| key.kind == KIND;
        let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
        let touched = if update.base_version == 0 {
            let workloads = update
                .upserts
                .iter()
                .filter(|r| r.key.as_ref().is_some_and(of_kind))
                .filter_map(|r| match &r.body {
                    Some(Body::Workload(w)) => workload_of(w, trust_domain),
                    _ => None,
                })
                .collect();
            index.replace_all(workloads)
        } else {
            let mut touched = Changes::default();
            for resource in &update.upserts {
                let (Some(key), Some(Body::Workload(w))) = (&resource.key, &resource.body) else {
                    continue;
                };
                match workload_of(w, trust_domain) {
                    Some(workload) => touched.upserted.extend(index.upsert(workload)),
                    // No address (yet): nothing to reach.
                    None => touched
                        .removed
                        .extend(index.remove(&format!("{}/{}", key.namespace, key.name))),
                }
            }
            for key in update.removes.iter().filter(|k| of_kind(k)) {
                touched
                    .removed
                    .extend(index.remove(&format!("{}/{}", key.namespace, key.name)));
            }
            touched
        };
        if !touched.is_empty() {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        touched
    }
}

/// A workload as the waypoint uses it; `None` without an address.
fn workload_of(w: &pb::Workload, trust_domain: &str) -> Option<Workload> {
    let addresses: Vec<IpAddr> = w
        .addresses
        .iter()
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|a| a.to_canonical())
        .collect();
    let address = *addresses.first()?;
    let labels: BTreeMap<String, String> = w
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let names = if w.workload_name.is_empty() {
        // From a controller older than these fields: the labels decide.
        WorkloadNames::derive(&w.name, false, &labels, None)
    } else {
        WorkloadNames {
            workload: w.workload_name.clone(),
            canonical_service: w.canonical_name.clone(),
            canonical_revision: w.canonical_revision.clone(),
        }
    };
    Some(Workload {
        names: Arc::new(names),
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        address,
        addresses,
        labels: Arc::new(labels),
        identity: Identity::new(trust_domain, &w.namespace, &w.service_account).ok(),
        enrolled: w.enrolled,
        waypoint: (!w.waypoint.is_empty()).then(|| w.waypoint.clone()),
        locality: Locality::parse(&w.locality),
    })
}

#[cfg(test)]
mod tests;
