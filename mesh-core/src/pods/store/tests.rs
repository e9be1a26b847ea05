use super::*;

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
    assert_eq!(touched.pods.upserted.len(), 4);
    for pod in &file.pods {
        assert_eq!(
            store.by_addr(pod.ip.into()).map(|p| &**p),
            file.by_addr(pod.ip.into())
        );
        assert_eq!(store.by_key(&pod.key()).map(|p| &**p), Some(pod));
    }
    assert_eq!(store.by_addr("10.9.9.9".parse().unwrap()), None);
    let mapped: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
    assert_eq!(store.by_addr(mapped).map(|p| p.name.as_str()), Some("p1"));
    assert_eq!(
        names(store.waypoint_pods("a/wp").map(|p| &**p)),
        names(file.waypoint_pods("a/wp"))
    );
    assert_eq!(names(store.waypoint_pods("a/wp").map(|p| &**p)), ["p1"]);
    assert_eq!(
        names(store.in_namespace("a").map(|p| &**p)),
        ["p0", "p1", "p3"]
    );
    assert_eq!(names(store.with_identity("a", "wp").map(|p| &**p)), ["p1"]);
    assert_eq!(
        names(store.on_node("n1").map(|p| &**p)),
        ["p3", "p2"],
        "in key order"
    );
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
    assert_eq!(names(touched.pods.upserted.iter().map(|p| &**p)), ["p0"]);
    assert_eq!(names(touched.pods.removed.iter().map(|p| &**p)), ["p3"]);
    assert!(!touched.namespaces && !touched.waypoints && !touched.scheduled);
    assert!(touched.concerns_node("n0") && touched.concerns_node("n1"));
    assert!(store.replace_all(next).is_empty(), "nothing changed");
    assert_eq!(names(store.in_namespace("a").map(|p| &**p)), ["p0", "p1"]);
    assert_eq!(store.by_key("a/p0").unwrap().labels["app"], "x");
}
