//! The pods of a [`PodsFile`] indexed once for the lookups made per connection: by address,
//! by `namespace/name`, by namespace (a Service's selector looks only there) and by waypoint.
//! Immutable: a change of the pods builds a new one, so an index never disagrees with the
//! pods it indexes.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
    ops::Deref,
};

use super::{GATEWAY_NAME_LABEL, Pod, PodsFile};

#[derive(Debug, Default)]
pub struct IndexedPods {
    file: PodsFile,
    by_ip: HashMap<Ipv4Addr, usize>,
    by_key: HashMap<String, usize>,
    by_namespace: HashMap<String, Vec<usize>>,
    /// Pods labelled as a waypoint's (`namespace/name`), before the identity check.
    by_waypoint: HashMap<String, Vec<usize>>,
}

impl IndexedPods {
    pub fn new(file: PodsFile) -> Self {
        let mut index = Self {
            by_ip: HashMap::with_capacity(file.pods.len()),
            by_key: HashMap::with_capacity(file.pods.len()),
            ..Self::default()
        };
        for (i, pod) in file.pods.iter().enumerate() {
            // The first pod with an address keeps it, as a scan in file order would find it.
            index.by_ip.entry(pod.ip).or_insert(i);
            index.by_key.entry(pod.key()).or_insert(i);
            index
                .by_namespace
                .entry(pod.namespace.clone())
                .or_default()
                .push(i);
            if let Some(name) = pod.labels.get(GATEWAY_NAME_LABEL) {
                index
                    .by_waypoint
                    .entry(format!("{}/{name}", pod.namespace))
                    .or_default()
                    .push(i);
            }
        }
        index.file = file;
        index
    }

    /// The pod with this address (IPv4, or IPv4-mapped IPv6).
    pub fn by_addr(&self, ip: IpAddr) -> Option<&Pod> {
        match ip.to_canonical() {
            IpAddr::V4(ip) => self.by_ip(ip),
            IpAddr::V6(_) => None,
        }
    }

    pub fn by_ip(&self, ip: Ipv4Addr) -> Option<&Pod> {
        self.by_ip.get(&ip).map(|&i| &self.file.pods[i])
    }

    /// The pod `namespace/name`.
    pub fn by_key(&self, key: &str) -> Option<&Pod> {
        self.by_key.get(key).map(|&i| &self.file.pods[i])
    }

    /// The pods of `namespace`.
    pub fn in_namespace<'a>(&'a self, namespace: &str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .map(|&i| &self.file.pods[i])
    }

    /// The pods running the waypoint `namespace/name`: labelled as its pods *and* running as
    /// its published identity (see [`PodsFile::waypoint_pods`], which this must agree with).
    pub fn waypoint_pods<'a>(&'a self, waypoint: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        let identity = self.file.waypoint_identity(waypoint);
        self.by_waypoint
            .get(waypoint)
            .into_iter()
            .flatten()
            .map(|&i| &self.file.pods[i])
            .filter(move |pod| {
                identity.is_some_and(|(namespace, service_account)| {
                    pod.namespace == namespace && pod.service_account == service_account
                })
            })
    }
}

/// Shown (config dumps) as the pods file it indexes.
impl serde::Serialize for IndexedPods {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.file.serialize(serializer)
    }
}

impl Deref for IndexedPods {
    type Target = PodsFile;

    fn deref(&self) -> &PodsFile {
        &self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_finds_what_a_scan_finds() {
        let file: PodsFile = serde_yaml::from_str(
            r#"
namespaces: [{name: a}]
waypoints: {a/wp: wp}
pods:
- {name: p0, namespace: a, node: n0, ip: 10.0.0.1, netns: /x}
- {name: p1, namespace: a, node: n0, ip: 10.0.0.2, netns: /x, serviceAccount: wp, labels: {gateway.networking.k8s.io/gateway-name: wp}}
- {name: p2, namespace: b, node: n1, ip: 10.0.0.3, netns: /x, labels: {gateway.networking.k8s.io/gateway-name: wp}}
- {name: p3, namespace: a, node: n1, ip: 10.0.0.4, netns: /x, labels: {gateway.networking.k8s.io/gateway-name: wp}}
"#,
        )
        .unwrap();
        let index = IndexedPods::new(file.clone());
        for pod in &file.pods {
            assert_eq!(index.by_addr(pod.ip.into()), file.by_addr(pod.ip.into()));
            assert_eq!(index.by_key(&pod.key()), Some(pod));
        }
        assert_eq!(index.by_addr("10.9.9.9".parse().unwrap()), None);
        let mapped: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        assert_eq!(index.by_addr(mapped).map(|p| p.name.as_str()), Some("p1"));
        let names = |pods: Vec<&Pod>| pods.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(index.waypoint_pods("a/wp").collect()),
            names(file.waypoint_pods("a/wp").collect())
        );
        assert_eq!(names(index.waypoint_pods("a/wp").collect()), ["p1"]);
        assert_eq!(names(index.in_namespace("a").collect()), ["p0", "p1", "p3"]);
    }
}
