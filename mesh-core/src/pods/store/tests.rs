use super::*;

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

fn file() -> PodsFile {
    serde_yaml::from_str(
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
    .unwrap()
}

fn names<'a>(pods: impl Iterator<Item = &'a Pod>) -> Vec<String> {
    pods.map(|p| p.name.clone()).collect()
}

#[test]
fn the_indexes_find_what_a_scan_finds() {
    let file = file();
    let mut store = WorkloadStore::default();
    let touched = store.replace_all(file.clone());
    assert_eq!(touched.upserted.len(), 4);
    for pod in &file.pods {
        assert_eq!(store.by_addr(pod.ip.into()), file.by_addr(pod.ip.into()));
        assert_eq!(store.by_key(&pod.key()), Some(pod));
    }
    assert_eq!(store.by_addr("10.9.9.9".parse().unwrap()), None);
    let mapped: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
    assert_eq!(store.by_addr(mapped).map(|p| p.name.as_str()), Some("p1"));
    assert_eq!(
        names(store.waypoint_pods("a/wp")),
        names(file.waypoint_pods("a/wp"))
    );
    assert_eq!(names(store.waypoint_pods("a/wp")), ["p1"]);
    assert_eq!(names(store.in_namespace("a")), ["p0", "p1", "p3"]);
    assert_eq!(names(store.with_identity("a", "wp")), ["p1"]);
    assert_eq!(names(store.on_node("n1")), ["p3", "p2"], "in key order");
    assert_eq!(store.node_file("n1").pods.len(), 2);
    let mut sorted = file.pods.clone();
    sorted.sort_by_key(Pod::key);
    assert_eq!(store.to_file().pods, sorted);
}

#[test]
fn replacing_the_whole_list_touches_only_what_differs() {
    let mut store = WorkloadStore::default();
    store.replace_all(file());
    let mut next = file();
    next.pods.retain(|p| p.name != "p3");
    Arc::make_mut(&mut next.pods[0].labels).insert("app".into(), "x".into());
    let touched = store.replace_all(next.clone());
    assert_eq!(names(touched.upserted.iter().map(|p| &**p)), ["p0"]);
    assert_eq!(names(touched.removed.iter().map(|p| &**p)), ["p3"]);
    assert!(!touched.namespaces && !touched.waypoints && !touched.scheduled);
    assert!(touched.concerns_node("n0") && touched.concerns_node("n1"));
    assert!(store.replace_all(next).is_empty(), "nothing changed");
    assert_eq!(names(store.in_namespace("a")), ["p0", "p1"]);
    assert_eq!(store.by_key("a/p0").unwrap().labels["app"], "x");
}

#[test]
fn equal_label_sets_are_shared_and_forgotten_with_their_last_pod() {
    let mut store = WorkloadStore::default();
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
    let mut store = WorkloadStore::default();
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
    let mut store = WorkloadStore::default();
    store.set_tables([("a/wp".into(), "default".into())].into(), BTreeMap::new());
    store.upsert(pod("w", [10, 0, 0, 1], &[(GATEWAY_NAME_LABEL, "wp")]));
    assert_eq!(names(store.waypoint_pods("a/wp")), ["w"]);
    store.upsert(pod("w", [10, 0, 0, 1], &[]));
    assert_eq!(store.waypoint_pods("a/wp").count(), 0);
    assert!(store.by_waypoint.is_empty());
}
