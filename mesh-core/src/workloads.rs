//! The workloads a node agent or a waypoint knows, kept current one change at a time and
//! indexed for the lookups made per connection or request: by address, by `namespace/name`,
//! by namespace (a Service's selector looks only there), by identity, by node and by the
//! waypoint a pod runs. One writer applies changes ([`WorkloadIndex::upsert`],
//! [`WorkloadIndex::remove`], or [`WorkloadIndex::replace_all`], which diffs a whole list
//! against what is held); a change to one workload costs a few index entries, whatever the
//! number of workloads.
//!
//! Memory is what a remote workload costs: label sets and metric names are shared between the
//! workloads that have equal ones (a Deployment's replicas do), so most hold a pointer to them
//! rather than a copy, and tables give their room back when most of their entries leave.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    hash::Hash,
    net::IpAddr,
    sync::Arc,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{labels::GATEWAY_NAME, telemetry::WorkloadNames};

/// What the index needs to know of a workload. Both users' types implement it: the node
/// agent's pods and the waypoint's workloads.
pub trait StoredWorkload: PartialEq {
    fn namespace(&self) -> &str;
    fn name(&self) -> &str;
    /// The addresses it is reached at (a dual-stack pod has two).
    fn addresses(&self) -> Vec<IpAddr>;
    /// Its service account, when its identity is known.
    fn service_account(&self) -> Option<&str>;
    /// The node it runs on, when known.
    fn node(&self) -> Option<&str>;
    fn labels(&self) -> &Arc<BTreeMap<String, String>>;
    fn names(&self) -> Option<&Arc<WorkloadNames>>;
    /// Its label set and metric names, to point at equal ones already held.
    fn shared_parts(
        &mut self,
    ) -> (
        &mut Arc<BTreeMap<String, String>>,
        Option<&mut Arc<WorkloadNames>>,
    );
}

/// A workload, ordered by `namespace/name` so that the groups below iterate in a stable order
/// and one workload leaves its group in logarithmic time.
#[derive(Debug)]
struct ByKey<W>(Arc<W>);

impl<W> Clone for ByKey<W> {
    fn clone(&self) -> Self {
        ByKey(self.0.clone())
    }
}

impl<W: StoredWorkload> ByKey<W> {
    fn key(&self) -> (&str, &str) {
        (self.0.namespace(), self.0.name())
    }
}

impl<W: StoredWorkload> PartialEq for ByKey<W> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl<W: StoredWorkload> Eq for ByKey<W> {}
impl<W: StoredWorkload> PartialOrd for ByKey<W> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<W: StoredWorkload> Ord for ByKey<W> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

type Groups<W> = HashMap<Box<str>, BTreeSet<ByKey<W>>>;

/// What one change did, for those who act on changes: the workloads upserted (as they are
/// now) and removed (as they were).
#[derive(Debug)]
pub struct Changes<W> {
    pub upserted: Vec<Arc<W>>,
    pub removed: Vec<Arc<W>>,
}

impl<W> Default for Changes<W> {
    fn default() -> Self {
        Changes {
            upserted: Vec::new(),
            removed: Vec::new(),
        }
    }
}

impl<W: StoredWorkload> Changes<W> {
    pub fn is_empty(&self) -> bool {
        self.upserted.is_empty() && self.removed.is_empty()
    }

    /// How many workloads changed.
    pub fn len(&self) -> usize {
        self.upserted.len() + self.removed.len()
    }

    /// Whether a workload of `node` changed.
    pub fn on_node(&self, node: &str) -> bool {
        self.upserted
            .iter()
            .chain(&self.removed)
            .any(|w| w.node() == Some(node))
    }
}

/// What the workload index holds and what its changes cost, as metrics: `<prefix>workloads`
/// and `<prefix>workload_changes_total{change="upserted"|"removed"}`.
#[derive(Clone, Debug, Default)]
pub struct ChangeMetrics {
    held: Gauge,
    changes: Family<ChangeLabels, Counter>,
}

/// `change` of [`ChangeMetrics`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChangeLabels {
    change: &'static str,
}

impl ChangeMetrics {
    /// Registers them as `<prefix>workloads` and `<prefix>workload_changes`; `what` says whose
    /// workloads they are in the help text.
    pub fn register(registry: &mut Registry, prefix: &str, what: &str) -> Self {
        let metrics = ChangeMetrics::default();
        registry.register(
            format!("{prefix}workloads"),
            format!("Workloads {what} knows"),
            metrics.held.clone(),
        );
        registry.register(
            format!("{prefix}workload_changes"),
            format!("Workloads {what} added or replaced (upserted) or dropped (removed)"),
            metrics.changes.clone(),
        );
        metrics
    }

    /// Counts what one change did; `held` is how many workloads there are after it.
    pub fn record<W>(&self, changes: &Changes<W>, held: usize) {
        self.held.set(held as i64);
        for (change, count) in [
            ("upserted", changes.upserted.len()),
            ("removed", changes.removed.len()),
        ] {
            if count > 0 {
                self.changes
                    .get_or_create(&ChangeLabels { change })
                    .inc_by(count as u64);
            }
        }
    }
}

#[derive(Debug)]
pub struct WorkloadIndex<W> {
    by_key: HashMap<Box<str>, Arc<W>>,
    /// The workload that holds each address: the first one known with it. Another with the
    /// same address (a replaced pod's address reused before the old one is gone) waits in
    /// `address_waiting` and takes it over when the holder leaves.
    by_ip: HashMap<IpAddr, Arc<W>>,
    address_waiting: Vec<(IpAddr, Arc<W>)>,
    by_namespace: Groups<W>,
    /// By `namespace/service-account`: who has an identity.
    by_identity: Groups<W>,
    by_node: Groups<W>,
    /// Workloads labelled as a waypoint's pods (`namespace/name` of its Gateway), before any
    /// identity check (which is the user's to make).
    by_waypoint: Groups<W>,
    /// Label sets and metric names shared by the workloads that have equal ones.
    label_sets: HashSet<Arc<BTreeMap<String, String>>>,
    names: HashSet<Arc<WorkloadNames>>,
    /// Removals since shared values were last swept: a value a removed workload's copy
    /// elsewhere still held when it left is forgotten at the next sweep.
    removals: usize,
}

impl<W> Default for WorkloadIndex<W> {
    fn default() -> Self {
        WorkloadIndex {
            by_key: HashMap::new(),
            by_ip: HashMap::new(),
            address_waiting: Vec::new(),
            by_namespace: HashMap::new(),
            by_identity: HashMap::new(),
            by_node: HashMap::new(),
            by_waypoint: HashMap::new(),
            label_sets: HashSet::new(),
            names: HashSet::new(),
            removals: 0,
        }
    }
}

/// How many removals between sweeps of the shared values (each sweep costs one look at each
/// distinct value, not at each workload).
const SWEEP_EVERY: usize = 1024;

fn key_of<W: StoredWorkload>(w: &W) -> String {
    format!("{}/{}", w.namespace(), w.name())
}

impl<W: StoredWorkload> WorkloadIndex<W> {
    /// How many workloads it holds.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Adds or replaces a workload; `None` when an equal one was already there (nothing
    /// changed).
    pub fn upsert(&mut self, mut workload: W) -> Option<Arc<W>> {
        let key = key_of(&workload);
        if self
            .by_key
            .get(key.as_str())
            .is_some_and(|old| **old == workload)
        {
            return None;
        }
        self.share(&mut workload);
        let workload = Arc::new(workload);
        if let Some(old) = self.by_key.remove(key.as_str()) {
            self.unindex(&old);
        }
        self.index(&workload);
        self.by_key.insert(key.into_boxed_str(), workload.clone());
        Some(workload)
    }

    /// Removes the workload `namespace/name`; the workload as it was, if it was there.
    pub fn remove(&mut self, key: &str) -> Option<Arc<W>> {
        let old = self.by_key.remove(key)?;
        self.unindex(&old);
        shrink_if_sparse(&mut self.by_key);
        shrink_if_sparse(&mut self.by_ip);
        Some(old)
    }

    /// Makes the index hold exactly `workloads`, changing only what differs.
    pub fn replace_all(&mut self, workloads: Vec<W>) -> Changes<W> {
        let mut touched = Changes::default();
        let wanted: HashSet<String> = workloads.iter().map(key_of).collect();
        let gone: Vec<Box<str>> = self
            .by_key
            .keys()
            .filter(|key| !wanted.contains(&***key))
            .cloned()
            .collect();
        for key in gone {
            touched.removed.extend(self.remove(&key));
        }
        for workload in workloads {
            touched.upserted.extend(self.upsert(workload));
        }
        touched
    }

    /// The workload with this address (an IPv4-mapped IPv6 address is its IPv4 one).
    pub fn by_addr(&self, ip: IpAddr) -> Option<&Arc<W>> {
        self.by_ip.get(&ip.to_canonical())
    }

    /// The workload `namespace/name`.
    pub fn by_key(&self, key: &str) -> Option<&Arc<W>> {
        self.by_key.get(key)
    }

    /// Every workload, in no order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<W>> {
        self.by_key.values()
    }

    /// The workloads of `namespace`, by name.
    pub fn in_namespace<'a>(&'a self, namespace: &str) -> impl Iterator<Item = &'a Arc<W>> + 'a {
        group(&self.by_namespace, namespace)
    }

    /// The workloads running as `namespace/service-account`.
    pub fn with_identity<'a>(
        &'a self,
        namespace: &str,
        service_account: &str,
    ) -> impl Iterator<Item = &'a Arc<W>> + 'a {
        group(&self.by_identity, &format!("{namespace}/{service_account}"))
    }

    /// The workloads of `node`.
    pub fn on_node<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Arc<W>> + 'a {
        group(&self.by_node, node)
    }

    /// The workloads labelled as pods of the waypoint `namespace/name` (their Gateway's),
    /// whatever their identity: the caller checks it against the one the controller published.
    pub fn labelled_for_waypoint<'a>(
        &'a self,
        waypoint: &str,
    ) -> impl Iterator<Item = &'a Arc<W>> + 'a {
        group(&self.by_waypoint, waypoint)
    }

    /// Points the workload's label set and names at equal ones already held.
    fn share(&mut self, workload: &mut W) {
        let (labels, names) = workload.shared_parts();
        match self.label_sets.get(labels) {
            Some(shared) => *labels = shared.clone(),
            None => {
                self.label_sets.insert(labels.clone());
            }
        }
        if let Some(names) = names {
            match self.names.get(names) {
                Some(shared) => *names = shared.clone(),
                None => {
                    self.names.insert(names.clone());
                }
            }
        }
    }

    fn index(&mut self, workload: &Arc<W>) {
        for ip in workload.addresses() {
            let ip = ip.to_canonical();
            match self.by_ip.get(&ip) {
                Some(holder) if key_of(&**holder) != key_of(&**workload) => {
                    self.address_waiting.push((ip, workload.clone()))
                }
                _ => {
                    self.by_ip.insert(ip, workload.clone());
                }
            }
        }
        let entry = ByKey(workload.clone());
        for (kind, name) in self.group_names(workload) {
            let groups = self.groups_mut(kind);
            match groups.get_mut(name.as_str()) {
                Some(group) => {
                    group.insert(entry.clone());
                }
                None => {
                    groups.insert(name.into_boxed_str(), BTreeSet::from([entry.clone()]));
                }
            }
        }
    }

    fn unindex(&mut self, workload: &Arc<W>) {
        self.address_waiting
            .retain(|(_, w)| !Arc::ptr_eq(w, workload));
        for ip in workload.addresses() {
            let ip = ip.to_canonical();
            if !self
                .by_ip
                .get(&ip)
                .is_some_and(|holder| Arc::ptr_eq(holder, workload))
            {
                continue;
            }
            self.by_ip.remove(&ip);
            if let Some(i) = self.address_waiting.iter().position(|(a, _)| *a == ip) {
                let (_, next) = self.address_waiting.swap_remove(i);
                self.by_ip.insert(ip, next);
            }
        }
        let entry = ByKey(workload.clone());
        for (kind, name) in self.group_names(workload) {
            let groups = self.groups_mut(kind);
            if let Some(group) = groups.get_mut(name.as_str()) {
                group.remove(&entry);
                if group.is_empty() {
                    groups.remove(name.as_str());
                    shrink_if_sparse(groups);
                }
            }
        }
        drop(entry);
        self.forget_shared(workload);
    }

    fn groups_mut(&mut self, kind: GroupKind) -> &mut Groups<W> {
        match kind {
            GroupKind::Namespace => &mut self.by_namespace,
            GroupKind::Identity => &mut self.by_identity,
            GroupKind::Node => &mut self.by_node,
            GroupKind::Waypoint => &mut self.by_waypoint,
        }
    }

    /// The groups `workload` belongs to.
    fn group_names(&self, workload: &W) -> Vec<(GroupKind, String)> {
        let namespace = workload.namespace();
        let mut names = vec![(GroupKind::Namespace, namespace.to_owned())];
        if let Some(service_account) = workload.service_account() {
            names.push((
                GroupKind::Identity,
                format!("{namespace}/{service_account}"),
            ));
        }
        if let Some(node) = workload.node() {
            names.push((GroupKind::Node, node.to_owned()));
        }
        if let Some(gateway) = workload.labels().get(GATEWAY_NAME) {
            names.push((GroupKind::Waypoint, format!("{namespace}/{gateway}")));
        }
        names
    }

    /// Forgets the shared values only `workload` (leaving) held.
    fn forget_shared(&mut self, workload: &W) {
        // The index's set and this workload held it: nobody else does now.
        let labels = workload.labels();
        if Arc::strong_count(labels) == 2 {
            self.label_sets.remove(labels);
            shrink_set_if_sparse(&mut self.label_sets);
        }
        if let Some(names) = workload.names()
            && Arc::strong_count(names) == 2
        {
            self.names.remove(names);
            shrink_set_if_sparse(&mut self.names);
        }
        self.removals += 1;
        if self.removals >= SWEEP_EVERY {
            self.removals = 0;
            self.label_sets.retain(|set| Arc::strong_count(set) > 1);
            self.names.retain(|names| Arc::strong_count(names) > 1);
            shrink_set_if_sparse(&mut self.label_sets);
            shrink_set_if_sparse(&mut self.names);
        }
    }
}

/// The indexes that group workloads.
#[derive(Clone, Copy)]
enum GroupKind {
    Namespace,
    Identity,
    Node,
    Waypoint,
}

/// Gives a table's room back once most of its entries have left. Amortized: each shrink
/// follows at least three times as many removals as it keeps entries.
fn shrink_if_sparse<K: Eq + Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() * 4 < map.capacity() {
        map.shrink_to_fit();
    }
}

fn shrink_set_if_sparse<T: Eq + Hash>(set: &mut HashSet<T>) {
    if set.capacity() > 64 && set.len() * 4 < set.capacity() {
        set.shrink_to_fit();
    }
}

fn group<'a, W>(
    groups: &'a Groups<W>,
    name: &str,
) -> impl Iterator<Item = &'a Arc<W>> + use<'a, W> {
    groups.get(name).into_iter().flatten().map(|entry| &entry.0)
}

#[cfg(test)]
mod tests;
