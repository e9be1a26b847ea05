use super::*;
use mesh_core::config_pb::{Resource, ResourceKey};

fn workload(name: &str, ip: &str, version: &str) -> Resource {
    Resource {
        key: Some(ResourceKey {
            kind: KIND.into(),
            namespace: "a".into(),
            name: name.into(),
        }),
        body: Some(Body::Workload(pb::Workload {
            name: name.into(),
            namespace: "a".into(),
            service_account: "reviews".into(),
            addresses: vec![ip.into(), "fd00::9".into()],
            labels: [
                ("app".to_owned(), "reviews".to_owned()),
                ("version".to_owned(), version.to_owned()),
            ]
            .into(),
            enrolled: true,
            workload_name: format!("reviews-{version}"),
            canonical_name: "reviews".into(),
            canonical_revision: version.into(),
            ..pb::Workload::default()
        })),
        ..Resource::default()
    }
}

#[test]
fn a_delta_changes_one_workload_and_makes_resolutions_stale() {
    let workloads = Workloads::default();
    let snapshot = Update {
        version: 1,
        upserts: vec![
            workload("r1", "10.0.0.1", "v1"),
            workload("r2", "10.0.0.2", "v1"),
        ],
        ..Update::default()
    };
    let touched = workloads.apply(&snapshot, "cluster.local");
    assert_eq!(touched.upserted.len(), 2);
    let first = workloads.generation();
    {
        let index = workloads.read();
        let (r1, r2) = (index.by_key("a/r1").unwrap(), index.by_key("a/r2").unwrap());
        assert!(
            Arc::ptr_eq(&r1.labels, &r2.labels),
            "equal label sets are shared"
        );
        assert!(Arc::ptr_eq(&r1.names, &r2.names));
        assert_eq!(index.with_identity("a", "reviews").count(), 2);
    }
    // Reached at either address.
    assert_eq!(
        workloads.get("fd00::9".parse().unwrap()).unwrap().name,
        "r1"
    );

    let relabel = Update {
        base_version: 1,
        version: 2,
        upserts: vec![workload("r2", "10.0.0.2", "v2")],
        ..Update::default()
    };
    let touched = workloads.apply(&relabel, "cluster.local");
    assert_eq!(touched.upserted.len(), 1);
    assert!(workloads.generation() > first);
    let r2 = workloads.get("10.0.0.2".parse().unwrap()).unwrap();
    assert_eq!(r2.labels["version"], "v2");

    // The same again changes nothing, and leaves resolutions current.
    let generation = workloads.generation();
    assert!(workloads.apply(&relabel, "cluster.local").is_empty());
    assert_eq!(workloads.generation(), generation);

    let remove = Update {
        base_version: 2,
        version: 3,
        removes: vec![ResourceKey {
            kind: KIND.into(),
            namespace: "a".into(),
            name: "r1".into(),
        }],
        ..Update::default()
    };
    assert_eq!(workloads.apply(&remove, "cluster.local").removed.len(), 1);
    assert_eq!(workloads.len(), 1);
    assert!(workloads.get("10.0.0.1".parse().unwrap()).is_none());
}
