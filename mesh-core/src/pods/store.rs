//! The workloads a node agent knows, kept current one change at a time and indexed for the
//! lookups made per connection: by address, by `namespace/name`, by namespace (a Service's
//! selector looks only there), by identity, by node and by waypoint. One writer applies
//! changes ([`WorkloadStore::upsert`], [`WorkloadStore::remove`], or
//! [`WorkloadStore::replace_all`], which diffs a whole list against what is held); readers
//! look up under a short read lock. A change to one pod costs a few index entries, whatever
//! the number of pods.
//!
//! Memory is what a remote pod costs: label sets and metric names are shared between the
//! pods that have equal ones (a Deployment's replicas do), so most pods hold a pointer to
//! them rather than a copy.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use super::{GATEWAY_NAME_LABEL, Namespace, Pod, PodsFile, Scheduled};
use crate::telemetry::WorkloadNames;

/// A pod, ordered by `namespace/name` so that the groups below iterate in a stable order and
/// one pod leaves its group in logarithmic time.
#[derive(Clone, Debug)]
struct ByKey(Arc<Pod>);

impl ByKey {
    fn key(&self) -> (&str, &str) {
        (&self.0.namespace, &self.0.name)
    }
}

impl PartialEq for ByKey {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for ByKey {}
impl PartialOrd for ByKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ByKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

type Group = BTreeSet<ByKey>;

/// What one change did, for those who act on changes: the pods upserted (as they are now)
/// and removed (as they were), and whether the tables beside the pods changed.
#[derive(Debug, Default)]
pub struct Touched {
    pub upserted: Vec<Arc<Pod>>,
    pub removed: Vec<Arc<Pod>>,
    /// Namespaces (local mode: their labels decide enrollment) changed.
    pub namespaces: bool,
    /// A waypoint's published identity changed.
    pub waypoints: bool,
    /// Pods scheduled without an address changed.
    pub scheduled: bool,
}

impl Touched {
    pub fn is_empty(&self) -> bool {
        self.upserted.is_empty()
            && self.removed.is_empty()
            && !self.namespaces
            && !self.waypoints
            && !self.scheduled
    }

    /// Whether the change concerns the pods of `node` (or everyone's: namespaces, waypoints).
    pub fn concerns_node(&self, node: &str) -> bool {
        self.namespaces
            || self.waypoints
            || self.scheduled
            || self
                .upserted
                .iter()
                .chain(&self.removed)
                .any(|pod| pod.node == node)
    }

    /// Adds what `other` did.
    pub fn merge(&mut self, other: Touched) {
        self.upserted.extend(other.upserted);
        self.removed.extend(other.removed);
        self.namespaces |= other.namespaces;
        self.waypoints |= other.waypoints;
        self.scheduled |= other.scheduled;
    }
}

#[derive(Debug, Default)]
pub struct WorkloadStore {
    by_key: HashMap<Box<str>, Arc<Pod>>,
    /// The pod that holds each address: the first one known with it. Another pod with the
    /// same address (a replaced pod's address reused before the old one is gone) waits in
    /// `address_waiting` and takes it over when the holder leaves.
    by_ip: HashMap<Ipv4Addr, Arc<Pod>>,
    address_waiting: Vec<Arc<Pod>>,
    by_namespace: HashMap<Box<str>, Group>,
    /// By `namespace/service-account`: who has an identity.
    by_identity: HashMap<Box<str>, Group>,
    by_node: HashMap<Box<str>, Group>,
    /// Pods labelled as a waypoint's (`namespace/name`), before the identity check.
    by_waypoint: HashMap<Box<str>, Group>,
    /// Label sets and metric names shared by the pods that have equal ones.
    label_sets: HashSet<Arc<BTreeMap<String, String>>>,
    names: HashSet<Arc<WorkloadNames>>,
    /// Local mode: namespaces and their labels (enrollment follows them).
    namespaces: Vec<Namespace>,
    /// See [`PodsFile::waypoints`].
    waypoints: BTreeMap<String, String>,
    /// See [`PodsFile::scheduled`].
    scheduled: BTreeMap<String, Scheduled>,
    /// Removals since shared values were last swept: a value a removed pod's copy elsewhere
    /// still held when the pod left is forgotten at the next sweep.
    removals: usize,
}

/// How many removals between sweeps of the shared values (each sweep costs one look at each
/// distinct value, not at each pod).
const SWEEP_EVERY: usize = 1024;

impl WorkloadStore {
    /// How many pods (with an address) it holds.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Adds or replaces a pod; `None` when an equal pod was already there (nothing changed).
    pub fn upsert(&mut self, mut pod: Pod) -> Option<Arc<Pod>> {
        let key = pod.key();
        if self
            .by_key
            .get(key.as_str())
            .is_some_and(|old| **old == pod)
        {
            return None;
        }
        self.share(&mut pod);
        let pod = Arc::new(pod);
        if let Some(old) = self.by_key.remove(key.as_str()) {
            self.unindex(&old);
        }
        self.index(&pod);
        self.by_key.insert(key.into_boxed_str(), pod.clone());
        Some(pod)
    }

    /// Removes the pod `namespace/name`; the pod as it was, if it was there.
    pub fn remove(&mut self, key: &str) -> Option<Arc<Pod>> {
        let old = self.by_key.remove(key)?;
        self.unindex(&old);
        shrink_if_sparse(&mut self.by_key);
        shrink_if_sparse(&mut self.by_ip);
        Some(old)
    }

    /// Makes the store hold exactly `file`'s pods and tables, changing only what differs.
    pub fn replace_all(&mut self, file: PodsFile) -> Touched {
        let mut touched = Touched::default();
        let wanted: HashSet<String> = file.pods.iter().map(Pod::key).collect();
        let gone: Vec<Box<str>> = self
            .by_key
            .keys()
            .filter(|key| !wanted.contains(&***key))
            .cloned()
            .collect();
        for key in gone {
            touched.removed.extend(self.remove(&key));
        }
        for pod in file.pods {
            touched.upserted.extend(self.upsert(pod));
        }
        touched.namespaces = self.namespaces != file.namespaces;
        self.namespaces = file.namespaces;
        touched.merge(self.set_tables(file.waypoints, file.scheduled));
        touched
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

    /// The pod with this address (IPv4, or IPv4-mapped IPv6).
    pub fn by_addr(&self, ip: IpAddr) -> Option<&Pod> {
        match ip.to_canonical() {
            IpAddr::V4(ip) => self.by_ip(ip),
            IpAddr::V6(_) => None,
        }
    }

    pub fn by_ip(&self, ip: Ipv4Addr) -> Option<&Pod> {
        self.by_ip.get(&ip).map(|pod| &**pod)
    }

    /// The pod `namespace/name`.
    pub fn by_key(&self, key: &str) -> Option<&Pod> {
        self.by_key.get(key).map(|pod| &**pod)
    }

    /// The pods of `namespace`, by name.
    pub fn in_namespace<'a>(&'a self, namespace: &str) -> impl Iterator<Item = &'a Pod> + 'a {
        group(&self.by_namespace, namespace)
    }

    /// The pods running as `namespace/service-account`.
    pub fn with_identity<'a>(
        &'a self,
        namespace: &str,
        service_account: &str,
    ) -> impl Iterator<Item = &'a Pod> + 'a {
        group(&self.by_identity, &format!("{namespace}/{service_account}"))
    }

    /// The pods of `node`.
    pub fn on_node<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Pod> + 'a {
        group(&self.by_node, node)
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
    pub fn waypoint_pods<'a>(&'a self, waypoint: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        let identity = self.waypoint_identity(waypoint);
        group(&self.by_waypoint, waypoint).filter(move |pod| {
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
            pods: self.on_node(node).cloned().collect(),
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
        let mut pods: Vec<Pod> = self.by_key.values().map(|pod| (**pod).clone()).collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        PodsFile {
            namespaces: self.namespaces.clone(),
            pods,
            scheduled: self.scheduled.clone(),
            waypoints: self.waypoints.clone(),
        }
    }

    /// Points the pod's label set and names at equal ones already held, and forgets shared
    /// values nobody else holds any more (checked only for the values this pod replaces).
    fn share(&mut self, pod: &mut Pod) {
        match self.label_sets.get(&pod.labels) {
            Some(shared) => pod.labels = shared.clone(),
            None => {
                self.label_sets.insert(pod.labels.clone());
            }
        }
        if let Some(names) = &pod.names {
            match self.names.get(names) {
                Some(shared) => pod.names = Some(shared.clone()),
                None => {
                    self.names.insert(names.clone());
                }
            }
        }
    }

    fn index(&mut self, pod: &Arc<Pod>) {
        match self.by_ip.get(&pod.ip) {
            Some(holder) if holder.key() != pod.key() => self.address_waiting.push(pod.clone()),
            _ => {
                self.by_ip.insert(pod.ip, pod.clone());
            }
        }
        let entry = ByKey(pod.clone());
        join(&mut self.by_namespace, &pod.namespace, entry.clone());
        let identity = format!("{}/{}", pod.namespace, pod.service_account);
        join(&mut self.by_identity, &identity, entry.clone());
        join(&mut self.by_node, &pod.node, entry.clone());
        if let Some(name) = pod.labels.get(GATEWAY_NAME_LABEL) {
            join(
                &mut self.by_waypoint,
                &format!("{}/{name}", pod.namespace),
                entry,
            );
        }
    }

    fn unindex(&mut self, pod: &Arc<Pod>) {
        if self
            .by_ip
            .get(&pod.ip)
            .is_some_and(|holder| Arc::ptr_eq(holder, pod))
        {
            self.by_ip.remove(&pod.ip);
            if let Some(i) = self.address_waiting.iter().position(|w| w.ip == pod.ip) {
                let next = self.address_waiting.swap_remove(i);
                self.by_ip.insert(next.ip, next);
            }
        } else {
            self.address_waiting.retain(|w| !Arc::ptr_eq(w, pod));
        }
        let entry = ByKey(pod.clone());
        leave(&mut self.by_namespace, &pod.namespace, &entry);
        let identity = format!("{}/{}", pod.namespace, pod.service_account);
        leave(&mut self.by_identity, &identity, &entry);
        leave(&mut self.by_node, &pod.node, &entry);
        if let Some(name) = pod.labels.get(GATEWAY_NAME_LABEL) {
            leave(
                &mut self.by_waypoint,
                &format!("{}/{name}", pod.namespace),
                &entry,
            );
        }
        drop(entry);
        // The store's set and this pod held it: nobody else does now.
        if Arc::strong_count(&pod.labels) == 2 {
            self.label_sets.remove(&pod.labels);
            if self.label_sets.capacity() > 64
                && self.label_sets.len() * 4 < self.label_sets.capacity()
            {
                self.label_sets.shrink_to_fit();
            }
        }
        if let Some(names) = &pod.names
            && Arc::strong_count(names) == 2
        {
            self.names.remove(names);
            if self.names.capacity() > 64 && self.names.len() * 4 < self.names.capacity() {
                self.names.shrink_to_fit();
            }
        }
        self.removals += 1;
        if self.removals >= SWEEP_EVERY {
            self.removals = 0;
            self.label_sets.retain(|set| Arc::strong_count(set) > 1);
            self.names.retain(|names| Arc::strong_count(names) > 1);
        }
    }
}

/// Gives a table's room back once most of its entries have left. Amortized: each shrink
/// follows at least three times as many removals as it keeps entries.
fn shrink_if_sparse<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() * 4 < map.capacity() {
        map.shrink_to_fit();
    }
}

fn group<'a>(
    groups: &'a HashMap<Box<str>, Group>,
    name: &str,
) -> impl Iterator<Item = &'a Pod> + use<'a> {
    groups
        .get(name)
        .into_iter()
        .flatten()
        .map(|entry| &*entry.0)
}

fn join(groups: &mut HashMap<Box<str>, Group>, name: &str, entry: ByKey) {
    match groups.get_mut(name) {
        Some(group) => {
            group.insert(entry);
        }
        None => {
            groups.insert(name.into(), BTreeSet::from([entry]));
        }
    }
}

fn leave(groups: &mut HashMap<Box<str>, Group>, name: &str, entry: &ByKey) {
    if let Some(group) = groups.get_mut(name) {
        group.remove(entry);
        if group.is_empty() {
            groups.remove(name);
            shrink_if_sparse(groups);
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
