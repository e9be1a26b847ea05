//! The stream's workloads and waypoints applied to the workload store: a snapshot replaces
//! what the store holds (changing only what differs), a delta changes only the pods it names.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use mesh_core::{
    config_pb::{Resource, Update, Workload, resource::Body},
    telemetry::WorkloadNames,
};

use crate::{
    app::State,
    pods::{Pod, PodsFile, Scheduled, Touched, WorkloadStore},
};

/// The kinds the workload store keeps; the stream's view holds no copy of them.
pub(super) const STORE_KINDS: &[&str] = &["Workload", "Waypoint"];

/// Applies the workloads and waypoints of `update` to the store: a snapshot replaces what
/// the store holds (changing only what differs), a delta changes what it names. The store's
/// readers see the change at once; what it did is counted and returned.
pub(super) fn apply(state: &State, update: &Update) -> Touched {
    let started = std::time::Instant::now();
    let mut store = state.workloads_mut();
    let touched = apply_to(&mut store, update, &state.config.node_name);
    let held = store.len();
    drop(store);
    state.metrics.workload_changes.record(&touched.pods, held);
    if !touched.is_empty() {
        tracing::debug!(
            upserted = touched.pods.upserted.len(),
            removed = touched.pods.removed.len(),
            held,
            took_us = started.elapsed().as_micros() as u64,
            "workload store updated"
        );
    }
    if touched.pods.len() >= crate::app::LARGE_CHANGE {
        crate::app::give_memory_back();
    }
    touched
}

/// What [`apply`] does to the store itself. Of the pods scheduled without an address, only
/// `node`'s are kept: no other node's are ever asked about here.
fn apply_to(store: &mut WorkloadStore, update: &Update, node: &str) -> Touched {
    let in_store = |r: &&Resource| {
        r.key
            .as_ref()
            .is_some_and(|k| STORE_KINDS.contains(&k.kind.as_str()))
    };
    if update.base_version == 0 {
        let mut file = PodsFile::default();
        for resource in update.upserts.iter().filter(in_store) {
            add_to_file(&mut file, resource, node);
        }
        store.replace_all(file)
    } else {
        let mut touched = Touched::default();
        for resource in update.upserts.iter().filter(in_store) {
            let (Some(key), Some(body)) = (&resource.key, &resource.body) else {
                continue;
            };
            let pod_key = format!("{}/{}", key.namespace, key.name);
            match body {
                Body::Waypoint(w) => {
                    let old = store
                        .waypoints_mut()
                        .insert(pod_key, w.service_account.clone());
                    touched.waypoints |= old.as_ref() != Some(&w.service_account);
                }
                Body::Workload(w) => {
                    touched.scheduled |= forget_scheduled(store.scheduled_mut(), &pod_key);
                    match pod_of(w) {
                        Some(pod) => touched.pods.upserted.extend(store.upsert(pod)),
                        None => {
                            touched.pods.removed.extend(store.remove(&pod_key));
                            if let Some((uid, scheduled)) = scheduled_of(w, node) {
                                store.scheduled_mut().insert(uid, scheduled);
                                touched.scheduled = true;
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        for key in update
            .removes
            .iter()
            .filter(|k| STORE_KINDS.contains(&k.kind.as_str()))
        {
            let pod_key = format!("{}/{}", key.namespace, key.name);
            if key.kind == "Waypoint" {
                touched.waypoints |= store.waypoints_mut().remove(&pod_key).is_some();
            } else {
                touched.scheduled |= forget_scheduled(store.scheduled_mut(), &pod_key);
                touched.pods.removed.extend(store.remove(&pod_key));
            }
        }
        touched
    }
}

/// Adds one resource of a snapshot to `file`.
fn add_to_file(file: &mut PodsFile, resource: &Resource, node: &str) {
    match (&resource.key, &resource.body) {
        (Some(key), Some(Body::Waypoint(w))) => {
            file.waypoints.insert(
                format!("{}/{}", key.namespace, key.name),
                w.service_account.clone(),
            );
        }
        (Some(_), Some(Body::Workload(w))) => match pod_of(w) {
            Some(pod) => file.pods.push(pod),
            None => file.scheduled.extend(scheduled_of(w, node)),
        },
        _ => {}
    }
}

/// A pod of `node` the controller sent before it has an address, by UID.
fn scheduled_of(w: &Workload, node: &str) -> Option<(String, Scheduled)> {
    (w.addresses.is_empty() && !w.uid.is_empty() && w.node == node).then(|| {
        (
            w.uid.clone(),
            Scheduled {
                key: format!("{}/{}", w.namespace, w.name),
                node: w.node.clone(),
                enrolled: w.enrolled,
            },
        )
    })
}

/// Forgets the scheduled pod `namespace/name` (it got an address, or left); whether it was
/// there. Pods wait without an address only while they start, so the table stays short.
fn forget_scheduled(scheduled: &mut BTreeMap<String, Scheduled>, key: &str) -> bool {
    let before = scheduled.len();
    scheduled.retain(|_, s| s.key != key);
    scheduled.len() != before
}

fn pod_of(workload: &Workload) -> Option<Pod> {
    let ip =
        workload
            .addresses
            .iter()
            .find_map(|a| match a.parse::<IpAddr>().ok()?.to_canonical() {
                IpAddr::V4(ip) => Some(ip),
                IpAddr::V6(_) => None,
            })?;
    Some(Pod {
        name: workload.name.clone(),
        namespace: workload.namespace.clone(),
        node: workload.node.clone(),
        service_account: workload.service_account.clone(),
        ip,
        netns: Default::default(),
        cgroup: None,
        labels: Arc::new(
            workload
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        uid: (!workload.uid.is_empty()).then(|| workload.uid.clone()),
        owner: None,
        // A controller older than these fields sends none: the labels then decide.
        names: (!workload.workload_name.is_empty()).then(|| {
            Arc::new(WorkloadNames {
                workload: workload.workload_name.clone(),
                canonical_service: workload.canonical_name.clone(),
                canonical_revision: workload.canonical_revision.clone(),
            })
        }),
        enrolled: Some(workload.enrolled),
        waypoint: (!workload.waypoint.is_empty()).then(|| workload.waypoint.clone()),
    })
}

#[cfg(test)]
mod tests;
