use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn owner(kind: &str, name: &str) -> Owner {
    Owner {
        kind: kind.to_owned(),
        name: name.to_owned(),
    }
}

#[test]
fn a_deployments_pods_are_its_workload() {
    let hashed = labels(&[("pod-template-hash", "5d8f7c9b4")]);
    let rs = owner("ReplicaSet", "reviews-v2-5d8f7c9b4");
    assert_eq!(
        workload_name("reviews-v2-5d8f7c9b4-x7k2p", true, &hashed, Some(&rs)),
        "reviews-v2"
    );
    // A ReplicaSet of its own (no hash label, or one its name does not end with).
    assert_eq!(
        workload_name("batch-x7k2p", true, &labels(&[]), Some(&rs)),
        "reviews-v2-5d8f7c9b4"
    );
    let other = labels(&[("pod-template-hash", "aaaa")]);
    assert_eq!(
        workload_name("p", true, &other, Some(&rs)),
        "reviews-v2-5d8f7c9b4"
    );
}

#[test]
fn a_cron_jobs_pods_are_its_workload() {
    let job = owner("Job", "nightly-report-29012345");
    assert_eq!(
        workload_name(
            "nightly-report-29012345-abcde",
            true,
            &labels(&[]),
            Some(&job)
        ),
        "nightly-report"
    );
    for name in [
        "migrate",
        "migrate-1234567",
        "migrate-12345678901",
        "migrate-12a45678",
    ] {
        let job = owner("Job", name);
        assert_eq!(workload_name("p", true, &labels(&[]), Some(&job)), name);
    }
}

#[test]
fn other_controllers_and_named_pods() {
    let sts = owner("StatefulSet", "db");
    assert_eq!(workload_name("db-0", true, &labels(&[]), Some(&sts)), "db");
    // A pod whose name was not generated is its own workload, whatever owns it.
    assert_eq!(
        workload_name("db-0", false, &labels(&[]), Some(&sts)),
        "db-0"
    );
    assert_eq!(workload_name("debug", false, &labels(&[]), None), "debug");
    let named = labels(&[("service.istio.io/workload-name", "billing")]);
    assert_eq!(workload_name("db-0", true, &named, Some(&sts)), "billing");
}

#[test]
fn canonical_labels_follow_istios_precedence() {
    let all = labels(&[
        ("service.istio.io/canonical-name", "c"),
        ("app.kubernetes.io/name", "k"),
        ("app", "a"),
        ("service.istio.io/canonical-revision", "cr"),
        ("app.kubernetes.io/version", "kr"),
        ("version", "v"),
    ]);
    assert_eq!(canonical_service(&all, "w"), "c");
    assert_eq!(canonical_revision(&all), "cr");
    let k8s = labels(&[
        ("app.kubernetes.io/name", "k"),
        ("app", "a"),
        ("version", "v"),
    ]);
    assert_eq!(canonical_service(&k8s, "w"), "k");
    assert_eq!(canonical_revision(&k8s), "v");
    // A label present but empty still decides, as in Istio.
    assert_eq!(canonical_service(&labels(&[("app", "")]), "w"), "");
    assert_eq!(canonical_service(&labels(&[]), "w"), "w");
    assert_eq!(canonical_revision(&labels(&[])), "latest");
}

#[test]
fn service_labels_from_hosts() {
    let s = ServiceLabel::from_host("reviews.shop.svc.cluster.local");
    assert_eq!((s.name.as_str(), s.namespace.as_str()), ("reviews", "shop"));
    let e = ServiceLabel::from_host("api.example.com");
    assert_eq!(
        (e.name.as_str(), e.namespace.as_str()),
        ("api.example.com", UNKNOWN)
    );
}
