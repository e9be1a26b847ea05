//! What Istio's standard metrics say about the two ends of a connection or request, derived as
//! Istio derives it, so that Kiali's graph and Istio's Grafana dashboards read Ambit's series
//! unchanged:
//!
//! - the workload is its `service.istio.io/workload-name` label, else the pod's controller: a ReplicaSet's Deployment (the ReplicaSet's name
//!   less the pod's `pod-template-hash`), a Job's CronJob (the Job's name less its 8 to 10
//!   digit schedule suffix), else the controller itself; a pod without one is its own workload;
//! - the canonical service is `service.istio.io/canonical-name`, `app.kubernetes.io/name`,
//!   `app`, else the workload's name; its revision `service.istio.io/canonical-revision`,
//!   `app.kubernetes.io/version`, `version`, else `latest`.
//!
//! Every value comes from what the controller (or the pods file) says of a workload, never
//! from a packet or a header, so a pod cannot choose another's labels, and each is bounded by
//! the number of workloads.

use std::collections::BTreeMap;

use prometheus_client::encoding::EncodeLabelSet;
use serde::{Deserialize, Serialize};

/// The label values Istio writes when it does not know.
pub const UNKNOWN: &str = "unknown";
/// Istio's default cluster name (`source_cluster`, `destination_cluster`).
pub const DEFAULT_CLUSTER: &str = "Kubernetes";

const CANONICAL_NAME: [&str; 3] = [
    "service.istio.io/canonical-name",
    "app.kubernetes.io/name",
    "app",
];
const CANONICAL_REVISION: [&str; 3] = [
    "service.istio.io/canonical-revision",
    "app.kubernetes.io/version",
    "version",
];
const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Names a pod's workload outright, whatever its owner.
const WORKLOAD_NAME: &str = "service.istio.io/workload-name";

/// A pod's controlling owner (the `ownerReference` with `controller: true`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    pub kind: String,
    pub name: String,
}

/// How the metrics name a workload.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkloadNames {
    pub workload: String,
    pub canonical_service: String,
    pub canonical_revision: String,
}

impl WorkloadNames {
    /// The names of a pod, as Istio derives them (see [`workload_name`]).
    pub fn derive(
        pod: &str,
        generated: bool,
        labels: &BTreeMap<String, String>,
        controller: Option<&Owner>,
    ) -> Self {
        let workload = workload_name(pod, generated, labels, controller);
        WorkloadNames {
            canonical_service: canonical_service(labels, &workload),
            canonical_revision: canonical_revision(labels),
            workload,
        }
    }
}

/// The name Istio gives a pod's workload. `generated` is whether the pod's name was generated
/// (`metadata.generateName`): only then is its controller's name the workload's.
pub fn workload_name(
    pod: &str,
    generated: bool,
    labels: &BTreeMap<String, String>,
    controller: Option<&Owner>,
) -> String {
    if let Some(name) = labels.get(WORKLOAD_NAME) {
        return name.clone();
    }
    let Some(owner) = controller.filter(|_| generated) else {
        return pod.to_owned();
    };
    match owner.kind.as_str() {
        "ReplicaSet" => match labels.get(POD_TEMPLATE_HASH) {
            Some(hash) if !hash.is_empty() && owner.name.ends_with(hash.as_str()) => owner
                .name
                .strip_suffix(&format!("-{hash}"))
                .unwrap_or(&owner.name)
                .to_owned(),
            _ => owner.name.clone(),
        },
        "Job" => cron_job(&owner.name).unwrap_or(&owner.name).to_owned(),
        _ => owner.name.clone(),
    }
}

/// The CronJob that made a Job named `<cronjob>-<8 to 10 digits>` (its scheduled time).
fn cron_job(job: &str) -> Option<&str> {
    let (name, suffix) = job.rsplit_once('-')?;
    let digits = (8..=10).contains(&suffix.len()) && suffix.bytes().all(|b| b.is_ascii_digit());
    (digits && !name.is_empty()).then_some(name)
}

/// Istio's canonical service of a workload with these labels.
pub fn canonical_service(labels: &BTreeMap<String, String>, workload: &str) -> String {
    first(labels, &CANONICAL_NAME)
        .unwrap_or(workload)
        .to_owned()
}

/// Istio's canonical revision of a workload with these labels.
pub fn canonical_revision(labels: &BTreeMap<String, String>) -> String {
    first(labels, &CANONICAL_REVISION)
        .unwrap_or("latest")
        .to_owned()
}

/// The first of `keys` present, as Istio reads them: a label set to "" still decides.
fn first<'a>(labels: &'a BTreeMap<String, String>, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| labels.get(*k)).map(String::as_str)
}

/// What the metrics say of one end of a connection: a workload the mesh knows, or
/// [`Peer::unknown`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub workload: String,
    pub namespace: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    /// `spiffe://...` when the mesh verified it (mutual TLS), else `unknown`.
    pub principal: String,
    pub cluster: String,
}

impl Peer {
    pub fn new(
        names: &WorkloadNames,
        namespace: &str,
        principal: Option<String>,
        cluster: &str,
    ) -> Self {
        Peer {
            workload: names.workload.clone(),
            namespace: namespace.to_owned(),
            canonical_service: names.canonical_service.clone(),
            canonical_revision: names.canonical_revision.clone(),
            principal: principal.unwrap_or_else(|| UNKNOWN.to_owned()),
            cluster: cluster.to_owned(),
        }
    }

    pub fn unknown() -> Self {
        Peer {
            workload: UNKNOWN.to_owned(),
            namespace: UNKNOWN.to_owned(),
            canonical_service: UNKNOWN.to_owned(),
            canonical_revision: UNKNOWN.to_owned(),
            principal: UNKNOWN.to_owned(),
            cluster: UNKNOWN.to_owned(),
        }
    }
}

/// The Service a connection or request was addressed to (`destination_service*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceLabel {
    /// Its hostname, `name.namespace.svc.<domain>`.
    pub host: String,
    pub name: String,
    pub namespace: String,
}

impl ServiceLabel {
    /// The service of a hostname `name.namespace.svc...`; any other host is its own name in
    /// no namespace (a ServiceEntry's host, for example).
    pub fn from_host(host: &str) -> Self {
        let mut parts = host.split('.');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(name), Some(namespace), Some("svc")) => ServiceLabel {
                host: host.to_owned(),
                name: name.to_owned(),
                namespace: namespace.to_owned(),
            },
            _ => ServiceLabel {
                host: host.to_owned(),
                name: host.to_owned(),
                namespace: UNKNOWN.to_owned(),
            },
        }
    }
}

/// Istio's labels common to `istio_requests_total` and `istio_tcp_*`, in the order Istio
/// documents them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_service: String,
    pub destination_service_namespace: String,
    pub destination_service_name: String,
    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_cluster: String,
    pub request_protocol: &'static str,
    pub response_flags: String,
    pub connection_security_policy: &'static str,
}

/// `connection_security_policy` when the mesh authenticated both ends.
pub const MUTUAL_TLS: &str = "mutual_tls";
/// `connection_security_policy` for plain text (Istio's ztunnel writes `unknown`).
pub const NO_MUTUAL_TLS: &str = UNKNOWN;

impl TrafficLabels {
    pub fn new(
        reporter: &'static str,
        source: &Peer,
        destination: &Peer,
        service: Option<&ServiceLabel>,
        request_protocol: &'static str,
        mutual_tls: bool,
    ) -> Self {
        let unknown = || UNKNOWN.to_owned();
        TrafficLabels {
            reporter,
            source_workload: source.workload.clone(),
            source_canonical_service: source.canonical_service.clone(),
            source_canonical_revision: source.canonical_revision.clone(),
            source_workload_namespace: source.namespace.clone(),
            source_principal: source.principal.clone(),
            // Istio's ztunnel and waypoints report the canonical service and revision here.
            source_app: source.canonical_service.clone(),
            source_version: source.canonical_revision.clone(),
            source_cluster: source.cluster.clone(),
            destination_service: service.map_or_else(unknown, |s| s.host.clone()),
            destination_service_namespace: service.map_or_else(unknown, |s| s.namespace.clone()),
            destination_service_name: service.map_or_else(unknown, |s| s.name.clone()),
            destination_workload: destination.workload.clone(),
            destination_canonical_service: destination.canonical_service.clone(),
            destination_canonical_revision: destination.canonical_revision.clone(),
            destination_workload_namespace: destination.namespace.clone(),
            destination_principal: destination.principal.clone(),
            destination_app: destination.canonical_service.clone(),
            destination_version: destination.canonical_revision.clone(),
            destination_cluster: destination.cluster.clone(),
            request_protocol,
            response_flags: "-".to_owned(),
            connection_security_policy: if mutual_tls {
                MUTUAL_TLS
            } else {
                NO_MUTUAL_TLS
            },
        }
    }

    pub fn with_flags(mut self, flags: &str) -> Self {
        self.response_flags = if flags.is_empty() {
            "-".to_owned()
        } else {
            flags.to_owned()
        };
        self
    }
}

#[cfg(test)]
mod tests;
