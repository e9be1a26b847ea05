//! Service accounts and trust domains as sources, port-level mTLS, and policies whose
//! targets no waypoint takes.

use super::*;

#[test]
fn service_accounts_and_trust_domains_name_sources() {
    let policies = set(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: reviewers, namespace: bookinfo }
spec:
  action: ALLOW
  rules:
    - from: [{ source: { serviceAccounts: ["bookinfo-productpage", "ops/prober"], trustDomains: ["*.local"] } }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: not-legacy, namespace: bookinfo }
spec:
  action: DENY
  rules:
    - from: [{ source: { notServiceAccounts: ["bookinfo-productpage", "ops/prober"], notTrustDomains: ["cluster.local"] } }]
"#);
    let none = labels(&[]);
    let w = Workload {
        namespace: "bookinfo",
        labels: &none,
    };
    let allowed = [
        "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage",
        "spiffe://cluster.local/ns/ops/sa/prober",
    ];
    for source in allowed {
        let source = id(source);
        assert_eq!(
            policies.authorize(w, conn(Some(&source), "10.0.0.1", 9080)),
            Decision::Allow,
            "{source}"
        );
    }
    let refused = [
        // Another namespace's account of the same name.
        "spiffe://cluster.local/ns/other/sa/bookinfo-productpage",
        // A bare name is the policy's namespace, not the source's.
        "spiffe://cluster.local/ns/bookinfo/sa/prober",
        // A trust domain the ALLOW does not name.
        "spiffe://cluster.example/ns/ops/sa/prober",
    ];
    for source in refused {
        let source = id(source);
        assert!(
            matches!(
                policies.authorize(w, conn(Some(&source), "10.0.0.1", 9080)),
                Decision::Deny { .. }
            ),
            "{source}"
        );
    }
    assert!(matches!(
        policies.authorize(w, conn(None, "10.0.0.1", 9080)),
        Decision::Deny { .. }
    ));
}

#[test]
fn port_level_mtls_overrides_the_workloads_mode_on_its_port() {
    let policies = set(r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: default, namespace: shop }
spec: { mtls: { mode: PERMISSIVE } }
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: db, namespace: shop }
spec:
  selector: { matchLabels: { app: db } }
  mtls: { mode: PERMISSIVE }
  portLevelMtls: { "5432": { mode: STRICT }, "9100": { mode: UNSET } }
"#);
    let db = labels(&[("app", "db")]);
    let w = Workload {
        namespace: "shop",
        labels: &db,
    };
    assert_eq!(policies.mtls_mode(w, 5432), MtlsMode::Strict);
    assert_eq!(policies.mtls_mode(w, 9100), MtlsMode::Permissive);
    assert_eq!(policies.mtls_mode(w, 8080), MtlsMode::Permissive);
    let other = labels(&[("app", "web")]);
    let web = Workload {
        namespace: "shop",
        labels: &other,
    };
    assert_eq!(policies.mtls_mode(web, 5432), MtlsMode::Permissive);
}

/// A policy whose target a waypoint cannot take (a ServiceEntry, another namespace) is not
/// dropped: the nodes enforce it for the whole namespace, failing closed.
#[test]
fn a_policy_with_a_target_no_waypoint_takes_fails_closed_at_the_nodes() {
    let policies = set(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: egress-only-admins, namespace: shop }
spec:
  targetRefs: [{ kind: ServiceEntry, group: networking.istio.io, name: external-api }]
  action: DENY
  rules: [{ to: [{ operation: { methods: ["POST"] } }] }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: at-the-waypoint, namespace: legacy }
spec:
  targetRefs: [{ kind: Service, group: "", name: ratings }]
  action: DENY
  rules: [{ to: [{ operation: { methods: ["POST"] } }] }]
"#);
    let none = labels(&[]);
    let client = id("spiffe://cluster.local/ns/web/sa/web");
    let shop = Workload {
        namespace: "shop",
        labels: &none,
    };
    assert!(matches!(
        policies.authorize(shop, conn(Some(&client), "10.0.0.1", 80)),
        Decision::Deny { .. }
    ));
    // A Service target is the waypoint's: the node leaves it to it.
    let legacy = Workload {
        namespace: "legacy",
        labels: &none,
    };
    assert_eq!(
        policies.authorize(legacy, conn(Some(&client), "10.0.0.1", 80)),
        Decision::Allow
    );
}
