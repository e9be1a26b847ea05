use super::*;
use crate::pods::Pod;

const GATEWAY_NAME_LABEL: &str = GATEWAY_NAME;

fn pod(name: &str, ip: [u8; 4], labels: &[(&str, &str)]) -> Pod {
    Pod {
        name: name.to_owned(),
        namespace: "a".to_owned(),
        node: "n0".to_owned(),
        service_account: "default".to_owned(),
        ip: ip.into(),
        netns: Default::default(),
        cgroup: None,
        labels: Arc::new(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        uid: None,
        owner: None,
        names: None,
        enrolled: Some(true),
        waypoint: None,
    }
}

fn names<'a>(pods: impl Iterator<Item = &'a Arc<Pod>>) -> Vec<String> {
    pods.map(|p| p.name.clone()).collect()
}

#[test]
fn equal_label_sets_are_shared_and_forgotten_with_their_last_pod() {
    let mut store = WorkloadIndex::<Pod>::default();
    let labels = [("app", "web")];
    store.upsert(pod("w0", [10, 0, 0, 1], &labels));
    store.upsert(pod("w1", [10, 0, 0, 2], &labels));
    let (w0, w1) = (store.by_key("a/w0").unwrap(), store.by_key("a/w1").unwrap());
    assert!(Arc::ptr_eq(&w0.labels, &w1.labels));
    assert_eq!(store.label_sets.len(), 1);
    store.remove("a/w0");
    assert_eq!(store.label_sets.len(), 1, "w1 still has it");
    store.remove("a/w1");
    assert!(store.label_sets.is_empty());
    assert!(store.is_empty() && store.by_namespace.is_empty() && store.by_ip.is_empty());
}

#[test]
fn an_address_held_twice_passes_to_the_other_pod_when_its_holder_leaves() {
    let mut store = WorkloadIndex::<Pod>::default();
    store.upsert(pod("old", [10, 0, 0, 1], &[]));
    store.upsert(pod("new", [10, 0, 0, 1], &[]));
    let ip = "10.0.0.1".parse().unwrap();
    assert_eq!(store.by_addr(ip).unwrap().name, "old", "the first keeps it");
    store.remove("a/old");
    assert_eq!(store.by_addr(ip).unwrap().name, "new");
    store.remove("a/new");
    assert_eq!(store.by_addr(ip), None);
    assert!(store.address_waiting.is_empty());
}

#[test]
fn a_relabelled_pod_moves_between_waypoint_groups() {
    let mut store = WorkloadIndex::<Pod>::default();
    store.upsert(pod("w", [10, 0, 0, 1], &[(GATEWAY_NAME_LABEL, "wp")]));
    assert_eq!(names(store.labelled_for_waypoint("a/wp")), ["w"]);
    store.upsert(pod("w", [10, 0, 0, 1], &[]));
    assert_eq!(store.labelled_for_waypoint("a/wp").count(), 0);
    assert!(store.by_waypoint.is_empty());
}
