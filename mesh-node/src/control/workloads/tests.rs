use super::*;
use mesh_core::config_pb::{ResourceKey, WaypointIdentity};

fn workload(name: &str, node: &str, ip: Option<&str>, app: &str) -> Resource {
    Resource {
        key: Some(ResourceKey {
            kind: "Workload".into(),
            namespace: "a".into(),
            name: name.into(),
        }),
        body: Some(Body::Workload(Workload {
            name: name.into(),
            namespace: "a".into(),
            node: node.into(),
            service_account: "default".into(),
            addresses: ip.into_iter().map(str::to_owned).collect(),
            labels: [("app".to_owned(), app.to_owned())].into(),
            uid: format!("uid-{name}"),
            enrolled: true,
            ..Workload::default()
        })),
        ..Resource::default()
    }
}

fn waypoint(name: &str, service_account: &str) -> Resource {
    Resource {
        key: Some(ResourceKey {
            kind: "Waypoint".into(),
            namespace: "a".into(),
            name: name.into(),
        }),
        body: Some(Body::Waypoint(WaypointIdentity {
            service_account: service_account.into(),
        })),
        ..Resource::default()
    }
}

fn key(kind: &str, name: &str) -> ResourceKey {
    ResourceKey {
        kind: kind.into(),
        namespace: "a".into(),
        name: name.into(),
    }
}

fn delta(upserts: Vec<Resource>, removes: Vec<ResourceKey>) -> Update {
    Update {
        base_version: 1,
        version: 2,
        upserts,
        removes,
        ..Update::default()
    }
}

#[test]
fn a_snapshot_then_deltas_change_only_the_pods_they_name() {
    let mut store = WorkloadStore::default();
    let snapshot = Update {
        version: 1,
        upserts: vec![
            workload("p0", "n0", Some("10.0.0.1"), "web"),
            workload("p1", "n1", Some("10.0.0.2"), "web"),
            workload("starting", "n0", None, "web"),
            workload("elsewhere", "n1", None, "web"),
            waypoint("wp", "wp-sa"),
        ],
        ..Update::default()
    };
    let touched = apply_to(&mut store, &snapshot, "n0");
    assert_eq!(touched.pods.upserted.len(), 2);
    assert!(touched.waypoints && touched.scheduled);
    assert_eq!(store.waypoint_identity("a/wp"), Some(("a", "wp-sa")));
    assert_eq!(
        store.node_file("n0").scheduled["uid-starting"].key,
        "a/starting"
    );
    assert!(
        store.node_file("n1").scheduled.is_empty(),
        "only this node's scheduled pods are kept"
    );

    // One pod relabelled: only it is touched, and only its node is concerned.
    let touched = apply_to(
        &mut store,
        &delta(vec![workload("p1", "n1", Some("10.0.0.2"), "api")], vec![]),
        "n0",
    );
    assert_eq!(touched.pods.upserted.len(), 1);
    assert!(touched.pods.removed.is_empty() && !touched.waypoints && !touched.scheduled);
    assert!(touched.concerns_node("n1") && !touched.concerns_node("n0"));
    assert_eq!(store.by_key("a/p1").unwrap().labels["app"], "api");

    // The same pod again: nothing changes.
    let again = delta(vec![workload("p1", "n1", Some("10.0.0.2"), "api")], vec![]);
    assert!(apply_to(&mut store, &again, "n0").is_empty());

    // The starting pod gets its address: it leaves the scheduled table for the pods.
    let touched = apply_to(
        &mut store,
        &delta(
            vec![workload("starting", "n0", Some("10.0.0.3"), "web")],
            vec![],
        ),
        "n0",
    );
    assert!(touched.scheduled && touched.pods.upserted.len() == 1);
    assert!(store.node_file("n0").scheduled.is_empty());

    // Removes: a pod and the waypoint.
    let touched = apply_to(
        &mut store,
        &delta(vec![], vec![key("Workload", "p0"), key("Waypoint", "wp")]),
        "n0",
    );
    assert_eq!(touched.pods.removed.len(), 1);
    assert!(touched.waypoints);
    assert_eq!(store.len(), 2);
    assert_eq!(store.waypoint_identity("a/wp"), None);

    // A new snapshot without a pod removes it, and keeps the rest as they are.
    let snapshot = Update {
        version: 9,
        upserts: vec![workload("p1", "n1", Some("10.0.0.2"), "api")],
        ..Update::default()
    };
    let touched = apply_to(&mut store, &snapshot, "n0");
    assert!(touched.pods.upserted.is_empty());
    assert_eq!(touched.pods.removed.len(), 1);
    assert_eq!(store.len(), 1);
}
