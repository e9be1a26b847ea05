//! The node agent's workload store: every pod it knows, on every node, in a
//! [`WorkloadIndex`], with the tables enrollment reads beside them (local mode's namespaces,
//! the waypoints' published identities, pods scheduled without an address yet).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    ops::{Deref, DerefMut},
    sync::Arc,
};

use super::{Namespace, Pod, PodsFile, Scheduled};
use crate::{
    telemetry::WorkloadNames,
    workloads::{Changes, StoredWorkload, WorkloadIndex},
};

/// What one change of the store did: the pods it changed, and whether the tables kept beside
/// them changed.
#[derive(Debug, Default)]
pub struct Touched {
    pub pods: Changes<Pod>,
    /// Namespaces (local mode: their labels decide enrollment) changed.
    pub namespaces: bool,
    /// A waypoint's published identity changed.
    pub waypoints: bool,
    /// This node's pods scheduled without an address changed.
    pub scheduled: bool,
}

impl Touched {
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty() && !self.namespaces && !self.waypoints && !self.scheduled
    }

    /// Whether the change concerns the pods of `node` (or everyone's: namespaces, waypoints,
    /// scheduled pods).
    pub fn concerns_node(&self, node: &str) -> bool {
        self.namespaces || self.waypoints || self.scheduled || self.pods.on_node(node)
    }
}

impl StoredWorkload for Pod {
    fn namespace(&self) -> &str {
        &self.namespace
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn addresses(&self) -> Vec<IpAddr> {
        vec![IpAddr::V4(self.ip)]
    }

    fn service_account(&self) -> Option<&str> {
        Some(&self.service_account)
    }

    fn node(&self) -> Option<&str> {
        Some(&self.node)
    }

    fn labels(&self) -> &Arc<BTreeMap<String, String>> {
        &self.labels
    }

    fn names(&self) -> Option<&Arc<WorkloadNames>> {
        self.names.as_ref()
    }

    fn shared_parts(
        &mut self,
    ) -> (
        &mut Arc<BTreeMap<String, String>>,
        Option<&mut Arc<WorkloadNames>>,
    ) {
        (&mut self.labels, self.names.as_mut())
    }
}

#[derive(Debug, Default)]
pub struct WorkloadStore {
    pods: WorkloadIndex<Pod>,
    /// Local mode: namespaces and their labels (enrollment follows them).
    namespaces: Vec<Namespace>,
    /// See [`PodsFile::waypoints`].
    waypoints: BTreeMap<String, String>,
    /// See [`PodsFile::scheduled`].
    scheduled: BTreeMap<String, Scheduled>,
}

/// Lookups and single changes are the index's.
impl Deref for WorkloadStore {
    type Target = WorkloadIndex<Pod>;

    fn deref(&self) -> &WorkloadIndex<Pod> {
        &self.pods
    }
}

impl DerefMut for WorkloadStore {
    fn deref_mut(&mut self) -> &mut WorkloadIndex<Pod> {
        &mut self.pods
    }
}

impl WorkloadStore {
    /// Makes the store hold exactly `file`'s pods and tables, changing only what differs.
    pub fn replace_all(&mut self, file: PodsFile) -> Touched {
        let pods = self.pods.replace_all(file.pods);
        let namespaces = self.namespaces != file.namespaces;
        self.namespaces = file.namespaces;
        Touched {
            pods,
            namespaces,
            ..self.set_tables(file.waypoints, file.scheduled)
        }
    }

    /// Replaces the waypoints' identities and the scheduled pods (small tables, sent whole).
    pub fn set_tables(
        &mut self,
        waypoints: BTreeMap<String, String>,
        scheduled: BTreeMap<String, Scheduled>,
    ) -> Touched {
        let touched = Touched {
            waypoints: self.waypoints != waypoints,
            scheduled: self.scheduled != scheduled,
            ..Touched::default()
        };
        self.waypoints = waypoints;
        self.scheduled = scheduled;
        touched
    }

    pub fn waypoints_mut(&mut self) -> &mut BTreeMap<String, String> {
        &mut self.waypoints
    }

    pub fn scheduled_mut(&mut self) -> &mut BTreeMap<String, Scheduled> {
        &mut self.scheduled
    }

    /// Whether the mesh captures this pod's traffic.
    pub fn is_enrolled(&self, pod: &Pod) -> bool {
        super::is_enrolled(&self.namespaces, pod)
    }

    /// The identity (namespace, service account) of the waypoint `namespace/name`, as the
    /// controller published it; `None` when it did not (then nothing is that waypoint).
    pub fn waypoint_identity<'a>(&'a self, waypoint: &'a str) -> Option<(&'a str, &'a str)> {
        super::waypoint_identity(&self.waypoints, waypoint)
    }

    /// The pods running the waypoint `namespace/name`: labelled as its pods *and* running as
    /// its published identity (see [`PodsFile::waypoint_pods`], which this must agree with).
    pub fn waypoint_pods<'a>(
        &'a self,
        waypoint: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Pod>> + 'a {
        let identity = self.waypoint_identity(waypoint);
        self.pods
            .labelled_for_waypoint(waypoint)
            .filter(move |pod| {
                identity.is_some_and(|(namespace, service_account)| {
                    pod.namespace == namespace && pod.service_account == service_account
                })
            })
    }

    /// What the enrollment of `node` works from: that node's pods (with or without the mesh:
    /// a starting pod outside it is let go at once), its scheduled pods and the tables.
    pub fn node_file(&self, node: &str) -> PodsFile {
        PodsFile {
            namespaces: self.namespaces.clone(),
            pods: self.pods.on_node(node).map(|pod| (**pod).clone()).collect(),
            scheduled: self
                .scheduled
                .iter()
                .filter(|(_, s)| s.node == node)
                .map(|(uid, s)| (uid.clone(), s.clone()))
                .collect(),
            waypoints: self.waypoints.clone(),
        }
    }

    /// Everything, as the pods file it amounts to (config dumps).
    pub fn to_file(&self) -> PodsFile {
        let mut pods: Vec<Pod> = self.pods.iter().map(|pod| (**pod).clone()).collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        PodsFile {
            namespaces: self.namespaces.clone(),
            pods,
            scheduled: self.scheduled.clone(),
            waypoints: self.waypoints.clone(),
        }
    }
}

/// Shown (config dumps) as the pods file it amounts to.
impl serde::Serialize for WorkloadStore {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_file().serialize(serializer)
    }
}

#[cfg(test)]
mod tests;
