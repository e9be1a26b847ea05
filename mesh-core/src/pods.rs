//! Local mode's source of pods: a YAML file of namespaces and pods, as a Kubernetes node would
//! learn them from the API server. A pod is a network namespace, a cgroup and an identity.
//!
//! Joining follows Istio's ambient rules ([`crate::labels`]): a namespace labelled
//! `ambit.io/dataplane-mode=ambient` (or Istio's `istio.io/dataplane-mode=ambient`) joins all
//! its pods; a pod's own label overrides its namespace's (`none` opts it out).

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

mod store;

pub use store::{Touched, WorkloadStore};

use crate::telemetry::{Owner, WorkloadNames};
use serde::{Deserialize, Serialize};

/// The label a waypoint's pods carry: the name of their Gateway.
pub use crate::labels::GATEWAY_NAME as GATEWAY_NAME_LABEL;
/// The label that puts a namespace or a pod into the mesh (Ambit's spelling).
pub const DATAPLANE_MODE_LABEL: &str = crate::labels::DATAPLANE_MODE[0];
pub use crate::labels::AMBIENT as DATAPLANE_MODE_AMBIENT;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read pods file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pods file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("pods file {path}: pod {pod} is listed twice")]
    Duplicate { path: PathBuf, pod: String },
    /// An empty file is what a writer leaves between truncating and writing, never a wish to
    /// release every pod (that is `pods: []`).
    #[error("pods file {path} is empty (write `pods: []` to release every pod)")]
    Empty { path: PathBuf },
}

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodsFile {
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    #[serde(default)]
    pub pods: Vec<Pod>,
    /// Pods scheduled but without an address yet (from the controller only), by UID: whether
    /// each is of the mesh is known before the kubelet starts it.
    #[serde(skip)]
    pub scheduled: BTreeMap<String, Scheduled>,
    /// Each waypoint (`namespace/name` of its Gateway) and the service account its proxies
    /// run as, as the controller published them. A waypoint is known by this identity only:
    /// a pod that merely carries a waypoint's label is not one of its pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub waypoints: BTreeMap<String, String>,
}

/// A pod the controller knows is scheduled, before it has an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scheduled {
    /// `namespace/name`.
    pub key: String,
    pub node: String,
    /// Whether it is in the mesh, as the controller decided.
    pub enrolled: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Namespace {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    /// The node the pod runs on; each agent enrolls only its own.
    pub node: String,
    #[serde(default = "default_service_account")]
    pub service_account: String,
    pub ip: Ipv4Addr,
    /// Path of the pod's network namespace (`/run/netns/NAME` or `/proc/PID/ns/net`).
    pub netns: PathBuf,
    /// The pod's cgroup v2 directory, for the record (capture is keyed by network namespace).
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// Shared by the pods with an equal set (a Deployment's replicas), in a [`WorkloadStore`].
    #[serde(default)]
    pub labels: Arc<BTreeMap<String, String>>,
    /// The pod's Kubernetes UID: the kubelet names the pod's cgroup after it
    /// (`pod<uid>`), which is how a node agent finds its network namespace in `/proc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The pod's controller (its `ownerReference` with `controller: true`), which names its
    /// workload in metrics: a pod with one has a generated name, as in Kubernetes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// Its workload's names as the controller derived them; `None` in the pods file, where
    /// [`Pod::names`] derives them from `owner` and `labels`.
    #[serde(skip)]
    pub names: Option<Arc<WorkloadNames>>,
    /// Whether the pod is in the mesh, when the controller decided it (it knows the
    /// namespace's labels); `None` in the pods file, where the labels decide.
    #[serde(skip)]
    pub enrolled: Option<bool>,
    /// The waypoint (`namespace/name` of its Gateway) traffic to this pod must pass, as the
    /// controller bound it (`ambit.io/use-waypoint`).
    #[serde(skip)]
    pub waypoint: Option<String>,
}

fn default_service_account() -> String {
    "default".to_owned()
}

impl Pod {
    /// How the metrics name this pod's workload.
    pub fn names(&self) -> WorkloadNames {
        self.names.as_deref().cloned().unwrap_or_else(|| {
            WorkloadNames::derive(
                &self.name,
                self.owner.is_some(),
                &self.labels,
                self.owner.as_ref(),
            )
        })
    }

    /// `namespace/name`, unique in a cluster.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl PodsFile {
    pub fn parse(path: &Path, text: &str) -> Result<Self, Error> {
        if text.trim().is_empty() {
            return Err(Error::Empty {
                path: path.to_owned(),
            });
        }
        let file: PodsFile = serde_yaml::from_str(text).map_err(|source| Error::Parse {
            path: path.to_owned(),
            source,
        })?;
        let mut seen = std::collections::BTreeSet::new();
        for pod in &file.pods {
            if !seen.insert(pod.key()) {
                return Err(Error::Duplicate {
                    path: path.to_owned(),
                    pod: pod.key(),
                });
            }
        }
        Ok(file)
    }

    pub fn read(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Whether the mesh captures this pod's traffic.
    pub fn is_enrolled(&self, pod: &Pod) -> bool {
        is_enrolled(&self.namespaces, pod)
    }

    /// The pods this node must capture.
    pub fn enrolled_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods
            .iter()
            .filter(move |pod| pod.node == node && self.is_enrolled(pod))
    }

    /// The identity (namespace, service account) of the waypoint `namespace/name`, as the
    /// controller published it; `None` when it did not (then nothing is that waypoint).
    pub fn waypoint_identity<'a>(&'a self, waypoint: &'a str) -> Option<(&'a str, &'a str)> {
        waypoint_identity(&self.waypoints, waypoint)
    }

    /// The pods running the waypoint `namespace/name`: labelled as its pods *and* running as
    /// its published identity. The label only picks among pods of that identity.
    pub fn waypoint_pods<'a>(&'a self, waypoint: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        let identity = self.waypoint_identity(waypoint);
        let name = waypoint.split_once('/').map_or(waypoint, |(_, name)| name);
        self.pods.iter().filter(move |pod| {
            identity.is_some_and(|(namespace, service_account)| {
                pod.namespace == namespace && pod.service_account == service_account
            }) && pod.labels.get(GATEWAY_NAME_LABEL).map(String::as_str) == Some(name)
        })
    }

    /// The pod with this address, on any node: names the peer of a connection in metrics.
    pub fn by_ip(&self, ip: Ipv4Addr) -> Option<&Pod> {
        self.pods.iter().find(|pod| pod.ip == ip)
    }

    /// The pod with this address (IPv4, or IPv4-mapped IPv6).
    pub fn by_addr(&self, ip: std::net::IpAddr) -> Option<&Pod> {
        match ip.to_canonical() {
            std::net::IpAddr::V4(ip) => self.by_ip(ip),
            std::net::IpAddr::V6(_) => None,
        }
    }
}

/// Whether the mesh captures `pod`'s traffic: as the controller decided, else as its own
/// labels and its namespace's say.
fn is_enrolled(namespaces: &[Namespace], pod: &Pod) -> bool {
    if let Some(enrolled) = pod.enrolled {
        return enrolled;
    }
    let namespace = namespaces.iter().find(|ns| ns.name == pod.namespace);
    let no_labels = BTreeMap::new();
    let namespace_labels = namespace.map_or(&no_labels, |ns| &ns.labels);
    crate::labels::enrolled(&pod.labels, namespace_labels)
}

/// The published identity of the waypoint `namespace/name`, from `waypoints`.
fn waypoint_identity<'a>(
    waypoints: &'a BTreeMap<String, String>,
    waypoint: &'a str,
) -> Option<(&'a str, &'a str)> {
    let (namespace, _) = waypoint.split_once('/')?;
    let service_account = waypoints.get(waypoint)?;
    Some((namespace, service_account.as_str()))
}

impl Pod {
    /// The pod's SPIFFE identity in `trust_domain`.
    pub fn identity(&self, trust_domain: &str) -> Result<crate::Identity, crate::identity::Error> {
        crate::Identity::new(trust_domain, &self.namespace, &self.service_account)
    }
}

/// Notices changes to the pods file by its modification time and length, which survives the
/// atomic rename editors and `kubectl`-like tools use.
#[derive(Debug)]
pub struct FileWatch {
    path: PathBuf,
    /// The stamp of the contents last returned.
    last: Option<(SystemTime, u64)>,
    /// A new stamp seen once: it is read only when the next call sees it unchanged, so that
    /// a file being written in place is not read half-way (a truncated list would release
    /// the pods it no longer names).
    settling: Option<(SystemTime, u64)>,
}

impl FileWatch {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            last: None,
            settling: None,
        }
    }

    /// `Some` with the new contents when the file changed since the last call, and has not
    /// changed again since the one before. The first call reads at once.
    pub fn poll(&mut self) -> Option<Result<PodsFile, Error>> {
        let stamp = std::fs::metadata(&self.path).ok().map(|meta| {
            (
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.len(),
            )
        });
        if stamp.is_some() && stamp == self.last {
            return None;
        }
        let first = self.last.is_none() && self.settling.is_none();
        if !first && stamp != self.settling {
            self.settling = stamp;
            return None;
        }
        self.settling = None;
        self.last = stamp;
        Some(PodsFile::read(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
namespaces:
  - name: mesh
    labels: { ambit.io/dataplane-mode: ambient }
  - name: plain
pods:
  - { name: a, namespace: mesh, node: n0, ip: 10.0.0.2, netns: /run/netns/a }
  - { name: b, namespace: mesh, node: n0, ip: 10.0.0.3, netns: /run/netns/b,
      labels: { ambit.io/dataplane-mode: none } }
  - { name: c, namespace: plain, node: n0, ip: 10.0.0.4, netns: /run/netns/c,
      labels: { ambit.io/dataplane-mode: ambient } }
  - { name: d, namespace: plain, node: n0, ip: 10.0.0.5, netns: /run/netns/d }
  - { name: e, namespace: mesh, node: n1, ip: 10.0.1.2, netns: /run/netns/e }
"#;

    #[test]
    fn namespace_label_joins_and_pod_label_overrides() {
        let file = PodsFile::parse(Path::new("pods.yaml"), FILE).unwrap();
        let enrolled: Vec<_> = file.enrolled_on("n0").map(|p| p.name.as_str()).collect();
        assert_eq!(enrolled, ["a", "c"]);
        assert_eq!(file.enrolled_on("n1").count(), 1);
        assert_eq!(file.by_ip("10.0.1.2".parse().unwrap()).unwrap().name, "e");
        assert_eq!(file.pods[0].service_account, "default");
    }

    #[test]
    fn malformed_files_are_reported() {
        let unknown =
            "pods:\n  - { name: a, namespace: x, node: n, ip: 1.2.3.4, netns: /x, color: red }";
        let err = PodsFile::parse(Path::new("p.yaml"), unknown)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `color`"), "{err}");
        let bad_ip = "pods:\n  - { name: a, namespace: x, node: n, ip: 1.2.3, netns: /x }";
        assert!(PodsFile::parse(Path::new("p.yaml"), bad_ip).is_err());
        let dup = "pods:\n  - { name: a, namespace: x, node: n, ip: 1.2.3.4, netns: /x }\n  - { name: a, namespace: x, node: n, ip: 1.2.3.5, netns: /y }";
        let err = PodsFile::parse(Path::new("p.yaml"), dup)
            .unwrap_err()
            .to_string();
        assert!(err.contains("x/a is listed twice"), "{err}");
        // Empty is a writer half-way, never "release every pod"; that is said explicitly.
        let err = PodsFile::parse(Path::new("p.yaml"), " \n").unwrap_err();
        assert!(matches!(err, Error::Empty { .. }), "{err}");
        assert_eq!(
            PodsFile::parse(Path::new("p.yaml"), "pods: []").unwrap(),
            PodsFile::default()
        );
    }

    #[test]
    fn a_change_is_read_once_it_has_settled() {
        let dir = std::env::temp_dir().join(format!("ambit-pods-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pods.yaml");
        std::fs::write(&path, FILE).unwrap();
        let mut watch = FileWatch::new(path.clone());
        assert!(
            watch.poll().unwrap().is_ok(),
            "the first look reads at once"
        );
        assert!(watch.poll().is_none());
        // Truncated mid-write: seen once, not read.
        std::fs::write(&path, "").unwrap();
        assert!(watch.poll().is_none());
        std::fs::write(&path, "pods: []\n").unwrap();
        assert!(watch.poll().is_none(), "changed again: still settling");
        let settled = watch.poll().unwrap().unwrap();
        assert!(settled.pods.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
