//! What a known remote pod costs the workload store, in bytes allocated (the allocator's own
//! rounding comes on top; `cargo xtask bench` measures the agent's RSS). The goal is at most
//! 1 KB per pod with a Deployment's label sharing, and it is asserted; pods that each have a
//! label set of their own (StatefulSet-like) are measured and bounded too.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    net::Ipv4Addr,
    sync::{
        Arc,
        atomic::{AtomicIsize, Ordering},
    },
};

use mesh_core::{
    pods::{Pod, WorkloadStore},
    telemetry::WorkloadNames,
};

/// Counts the bytes live on the heap.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const PODS: usize = 10_000;

/// A pod as the controller sends it: a Deployment's replica (`app` and `pod-template-hash`
/// labels shared by 20 replicas), a UID, and its workload's names.
fn replica(i: usize, unique_labels: bool) -> Pod {
    let app = format!("app-{}", i % 500);
    let mut labels: std::collections::BTreeMap<String, String> = [
        ("app".to_owned(), app.clone()),
        ("pod-template-hash".to_owned(), "7d4b9c8f6d".to_owned()),
    ]
    .into();
    if unique_labels {
        labels.insert(
            "statefulset.kubernetes.io/pod-name".to_owned(),
            format!("{app}-{i}"),
        );
    }
    Pod {
        name: format!("{app}-7d4b9c8f6d-{i:05}"),
        namespace: format!("ns-{}", i % 50),
        node: format!("node-{}", i % 100),
        service_account: app.clone(),
        ip: Ipv4Addr::from(0x0a80_0000 + i as u32),
        netns: Default::default(),
        cgroup: None,
        labels: Arc::new(labels),
        uid: Some(format!("6f1c2a7e-{i:04x}-4c1b-9a5e-3d2f1b0c9e8a")),
        owner: None,
        names: Some(Arc::new(WorkloadNames {
            workload: format!("{app}-v1"),
            canonical_service: app.clone(),
            canonical_revision: "v1".to_owned(),
        })),
        enrolled: Some(true),
        waypoint: None,
    }
}

/// Bytes per pod held by a store of `PODS` pods.
fn per_pod(unique_labels: bool) -> f64 {
    let mut store = WorkloadStore::default();
    let before = LIVE.load(Ordering::Relaxed);
    for i in 0..PODS {
        store.upsert(replica(i, unique_labels));
    }
    let held = LIVE.load(Ordering::Relaxed) - before;
    assert_eq!(store.len(), PODS);
    // Removing every pod gives everything back: nothing is kept for a pod that left.
    for i in 0..PODS {
        let pod = replica(i, unique_labels);
        assert!(store.remove(&pod.key()).is_some());
    }
    let left = LIVE.load(Ordering::Relaxed) - before;
    drop(store);
    assert!(
        left < 64 * 1024,
        "{left} bytes still held after every pod left"
    );
    held as f64 / PODS as f64
}

#[test]
fn a_remote_pod_costs_at_most_a_kilobyte() {
    let shared = per_pod(false);
    let unique = per_pod(true);
    println!(
        "workload store: {shared:.0} bytes per pod (Deployment replicas), {unique:.0} bytes per pod (a label set each)"
    );
    assert!(shared <= 1024.0, "{shared:.0} bytes per pod");
    assert!(unique <= 2048.0, "{unique:.0} bytes per pod");
}
