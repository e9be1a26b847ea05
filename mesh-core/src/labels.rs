//! The labels that put workloads into the mesh and bind them to waypoints, Ambit's and
//! Istio's alike, so that YAML written for Istio ambient works unchanged. Where an object
//! carries both spellings, Ambit's wins. The rules are Istio's:
//!
//! - `dataplane-mode` (`ambient` or `none`) on a pod or its namespace: the pod's own label
//!   wins; a namespace set to `none` is as one without the label.
//! - `use-waypoint` (a Gateway's name, or `none`) on a pod, a Service or a namespace, with
//!   `use-waypoint-namespace` beside it on the same object for a waypoint elsewhere: the
//!   object's own label wins over its namespace's, and `none` opts out with no fallback.
//! - `waypoint-for` on a waypoint's Gateway (or its class): which traffic it takes,
//!   `service`, `workload`, `all` or `none`.

use std::collections::BTreeMap;

/// Puts a namespace or a pod into the mesh (`ambient`), or keeps a pod out (`none`).
pub const DATAPLANE_MODE: [&str; 2] = ["ambit.io/dataplane-mode", "istio.io/dataplane-mode"];
pub const AMBIENT: &str = "ambient";
/// Names the waypoint traffic to a namespace's, a Service's or a pod's workloads passes.
pub const USE_WAYPOINT: [&str; 2] = ["ambit.io/use-waypoint", "istio.io/use-waypoint"];
/// The namespace of the waypoint `use-waypoint` names, when not the object's own.
pub const USE_WAYPOINT_NAMESPACE: [&str; 2] = [
    "ambit.io/use-waypoint-namespace",
    "istio.io/use-waypoint-namespace",
];
/// `use-waypoint: none` opts an object out of its namespace's waypoint.
pub const NO_WAYPOINT: &str = "none";
/// On a waypoint's Gateway or GatewayClass: which traffic the waypoint takes.
pub const WAYPOINT_FOR: [&str; 2] = ["ambit.io/waypoint-for", "istio.io/waypoint-for"];
/// On a waypoint's pods (and the objects run for its Gateway): the name of their Gateway.
pub const GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";
/// Set on a pod that has an Istio sidecar: Ambit never captures such a pod (the sidecar
/// already does; both would loop), as Istio's own ambient mode skips it.
pub const ISTIO_SIDECAR_STATUS: &str = "sidecar.istio.io/status";

/// The first of `names` set on `labels` (Ambit's spelling before Istio's).
pub fn first<'a>(labels: &'a BTreeMap<String, String>, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|name| labels.get(*name))
        .map(String::as_str)
}

/// Whether a pod with these labels, in a namespace with `namespace` labels, is in the mesh.
pub fn enrolled(pod: &BTreeMap<String, String>, namespace: &BTreeMap<String, String>) -> bool {
    first(pod, &DATAPLANE_MODE).or_else(|| first(namespace, &DATAPLANE_MODE)) == Some(AMBIENT)
}

/// What an object's labels say about its waypoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaypointLabel {
    /// No label: the namespace's decides.
    Unset,
    /// `use-waypoint: none`: no waypoint, whatever the namespace says.
    OptedOut,
    /// The waypoint `namespace/name`.
    Waypoint { namespace: String, name: String },
}

/// The waypoint an object's own labels name; `own_namespace` is the object's namespace, where
/// the waypoint is unless `use-waypoint-namespace` says otherwise.
pub fn use_waypoint(labels: &BTreeMap<String, String>, own_namespace: &str) -> WaypointLabel {
    match first(labels, &USE_WAYPOINT) {
        None => WaypointLabel::Unset,
        Some(NO_WAYPOINT) => WaypointLabel::OptedOut,
        Some(name) => WaypointLabel::Waypoint {
            namespace: first(labels, &USE_WAYPOINT_NAMESPACE)
                .unwrap_or(own_namespace)
                .to_owned(),
            name: name.to_owned(),
        },
    }
}

/// Which traffic a waypoint takes (`waypoint-for`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficType {
    /// Traffic addressed to the Services bound to it.
    Service,
    /// Traffic addressed to the workloads (pod addresses) bound to it.
    Workload,
    All,
    /// Nothing binds to it (also any value Istio does not define).
    None,
}

impl TrafficType {
    pub fn parse(value: &str) -> Self {
        match value {
            "service" => TrafficType::Service,
            "workload" => TrafficType::Workload,
            "all" => TrafficType::All,
            _ => TrafficType::None,
        }
    }

    pub fn takes_services(self) -> bool {
        matches!(self, TrafficType::Service | TrafficType::All)
    }

    pub fn takes_workloads(self) -> bool {
        matches!(self, TrafficType::Workload | TrafficType::All)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn istio_and_ambit_labels_enroll_alike_and_the_pod_wins() {
        for label in DATAPLANE_MODE {
            let ambient = labels(&[(label, "ambient")]);
            let none = labels(&[(label, "none")]);
            let unset = labels(&[]);
            assert!(enrolled(&unset, &ambient), "{label}");
            assert!(!enrolled(&none, &ambient), "{label}");
            assert!(enrolled(&ambient, &unset), "{label}");
            assert!(enrolled(&ambient, &none), "{label}");
            assert!(!enrolled(&unset, &none), "{label}");
        }
        // Both spellings on one pod: Ambit's wins.
        let both = labels(&[
            ("ambit.io/dataplane-mode", "none"),
            ("istio.io/dataplane-mode", "ambient"),
        ]);
        assert!(!enrolled(&both, &labels(&[])));
    }

    #[test]
    fn use_waypoint_reads_either_spelling_and_its_namespace() {
        assert_eq!(use_waypoint(&labels(&[]), "shop"), WaypointLabel::Unset);
        assert_eq!(
            use_waypoint(&labels(&[("istio.io/use-waypoint", "none")]), "shop"),
            WaypointLabel::OptedOut
        );
        assert_eq!(
            use_waypoint(&labels(&[("istio.io/use-waypoint", "wp")]), "shop"),
            WaypointLabel::Waypoint {
                namespace: "shop".to_owned(),
                name: "wp".to_owned()
            }
        );
        assert_eq!(
            use_waypoint(
                &labels(&[
                    ("istio.io/use-waypoint", "wp"),
                    ("istio.io/use-waypoint-namespace", "infra")
                ]),
                "shop"
            ),
            WaypointLabel::Waypoint {
                namespace: "infra".to_owned(),
                name: "wp".to_owned()
            }
        );
    }

    #[test]
    fn waypoint_for_values_are_istios() {
        assert!(TrafficType::parse("service").takes_services());
        assert!(!TrafficType::parse("service").takes_workloads());
        assert!(TrafficType::parse("workload").takes_workloads());
        assert!(TrafficType::parse("all").takes_services());
        assert!(TrafficType::parse("all").takes_workloads());
        assert!(!TrafficType::parse("none").takes_services());
        assert!(!TrafficType::parse("everything").takes_workloads());
    }
}
