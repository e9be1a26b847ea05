use std::collections::BTreeMap;

use super::*;
use crate::policy::{MtlsMode, PolicySet, ROOT_NAMESPACE, parse_documents};

fn set(yaml: &str) -> PolicySet {
    let mut set = PolicySet {
        root_namespace: ROOT_NAMESPACE.into(),
        ..PolicySet::default()
    };
    let errors = parse_documents("test.yaml", yaml, &mut set);
    assert!(errors.is_empty(), "{errors:?}");
    set
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn conn<'a>(source: Option<&'a Identity>, ip: &str, port: u16) -> Connection<'a> {
    Connection {
        source,
        source_ip: ip.parse().unwrap(),
        destination_port: port,
    }
}

fn id(uri: &str) -> Identity {
    uri.parse().unwrap()
}

#[test]
fn peer_authentication_most_specific_wins() {
    let policies = set(r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: default, namespace: istio-system }
spec: { mtls: { mode: STRICT } }
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: { name: relaxed, namespace: legacy }
spec: { mtls: { mode: PERMISSIVE } }
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: db, namespace: legacy }
spec: { selector: { matchLabels: { app: db } }, mtls: { mode: STRICT } }
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: unset, namespace: shop }
spec: { mtls: { mode: UNSET } }
"#);
    let none = labels(&[]);
    let db = labels(&[("app", "db")]);
    assert_eq!(
        policies.mtls_mode(Workload {
            namespace: "shop",
            labels: &none
        }),
        MtlsMode::Strict
    );
    assert_eq!(
        policies.mtls_mode(Workload {
            namespace: "legacy",
            labels: &none
        }),
        MtlsMode::Permissive
    );
    assert_eq!(
        policies.mtls_mode(Workload {
            namespace: "legacy",
            labels: &db
        }),
        MtlsMode::Strict
    );
    assert_eq!(
        PolicySet::default().mtls_mode(Workload {
            namespace: "x",
            labels: &none
        }),
        MtlsMode::Permissive
    );
}

#[test]
fn deny_first_then_allow_list() {
    let policies = set(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: no-admin-port, namespace: shop }
spec:
  action: DENY
  rules: [{ to: [{ operation: { ports: ["9000"] } }] }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: web-only, namespace: shop }
spec:
  selector: { matchLabels: { app: db } }
  action: ALLOW
  rules:
    - from: [{ source: { principals: ["cluster.local/ns/shop/sa/web"] } }]
    - from: [{ source: { namespaces: ["ops*"], ipBlocks: ["10.1.0.0/16"] } }]
"#);
    let db = labels(&[("app", "db")]);
    let other = labels(&[("app", "cache")]);
    let w = Workload {
        namespace: "shop",
        labels: &db,
    };
    let web = id("spiffe://cluster.local/ns/shop/sa/web");
    let ops = id("spiffe://cluster.local/ns/ops-1/sa/tool");
    assert_eq!(
        policies.authorize(w, conn(Some(&web), "10.0.0.1", 5432)),
        Decision::Allow
    );
    assert!(matches!(
        policies.authorize(w, conn(Some(&web), "10.0.0.1", 9000)),
        Decision::Deny { .. }
    ));
    assert_eq!(
        policies.authorize(w, conn(Some(&ops), "10.1.2.3", 5432)),
        Decision::Allow
    );
    assert!(matches!(
        policies.authorize(w, conn(Some(&ops), "10.2.2.3", 5432)),
        Decision::Deny { .. }
    ));
    assert!(
        matches!(
            policies.authorize(w, conn(None, "10.1.2.3", 5432)),
            Decision::Deny { .. }
        ),
        "plaintext has no namespace"
    );
    // No ALLOW policy selects the cache: allowed, except the denied port.
    let cache = Workload {
        namespace: "shop",
        labels: &other,
    };
    assert_eq!(
        policies.authorize(cache, conn(None, "10.9.9.9", 6379)),
        Decision::Allow
    );
    assert!(matches!(
        policies.authorize(cache, conn(None, "10.9.9.9", 9000)),
        Decision::Deny { .. }
    ));
}

#[test]
fn l7_attributes_fail_closed_at_the_node() {
    let policies = set(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: get-only, namespace: shop }
spec:
  action: ALLOW
  rules: [{ to: [{ operation: { methods: ["GET"] } }] }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: no-admin-path, namespace: ops }
spec:
  action: DENY
  rules: [{ to: [{ operation: { paths: ["/admin"] } }] }]
"#);
    let none = labels(&[]);
    let web = id("spiffe://cluster.local/ns/shop/sa/web");
    assert!(matches!(
        policies.authorize(
            Workload {
                namespace: "shop",
                labels: &none
            },
            conn(Some(&web), "10.0.0.1", 80)
        ),
        Decision::Deny { .. }
    ));
    assert!(matches!(
        policies.authorize(
            Workload {
                namespace: "ops",
                labels: &none
            },
            conn(Some(&web), "10.0.0.1", 80)
        ),
        Decision::Deny { .. }
    ));
}

#[test]
fn allow_without_rules_denies_and_empty_rule_allows() {
    let deny_all = set(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: { name: deny-all, namespace: shop }\nspec: {}\n",
    );
    let allow_all = set(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: { name: allow-all, namespace: shop }\nspec: { rules: [{}] }\n",
    );
    let none = labels(&[]);
    let w = Workload {
        namespace: "shop",
        labels: &none,
    };
    assert!(matches!(
        deny_all.authorize(w, conn(None, "10.0.0.1", 80)),
        Decision::Deny { .. }
    ));
    assert_eq!(
        allow_all.authorize(w, conn(None, "10.0.0.1", 80)),
        Decision::Allow
    );
}

#[test]
fn broken_documents_are_reported_and_fail_closed() {
    let mut policies = PolicySet {
        root_namespace: ROOT_NAMESPACE.into(),
        ..PolicySet::default()
    };
    let errors = parse_documents(
        "bad.yaml",
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: typo, namespace: shop }
spec:
  action: DENY
  rules: [{ from: [{ source: { ipBlocks: ["10.0.0.300/8"] } }] }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: unknown-field, namespace: other }
spec: { action: ALLOW, rules: [{ frm: [] }] }
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: wrong-type, namespace: shop }
spec: { mtls: { mode: 3 } }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: ignored-here }
spec: { hosts: [x] }
"#,
        &mut policies,
    );
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors[0]
            .to_string()
            .contains("bad.yaml: document 1 (AuthorizationPolicy shop/typo)"),
        "{}",
        errors[0]
    );
    assert!(errors[1].message.contains("frm"), "{}", errors[1]);
    let none = labels(&[]);
    let web = id("spiffe://cluster.local/ns/shop/sa/web");
    // The DENY with a bad CIDR denies everything in its namespace; the broken ALLOW allows nothing.
    assert!(matches!(
        policies.authorize(
            Workload {
                namespace: "shop",
                labels: &none
            },
            conn(Some(&web), "192.168.0.1", 80)
        ),
        Decision::Deny { .. }
    ));
    assert!(matches!(
        policies.authorize(
            Workload {
                namespace: "other",
                labels: &none
            },
            conn(Some(&web), "192.168.0.1", 80)
        ),
        Decision::Deny { .. }
    ));
    assert_eq!(
        policies.authorize(
            Workload {
                namespace: "third",
                labels: &none
            },
            conn(None, "1.2.3.4", 80)
        ),
        Decision::Allow
    );
}

#[test]
fn cidrs() {
    assert_eq!(
        cidr_contains("10.0.0.0/8", "10.200.1.1".parse().unwrap()),
        Some(true)
    );
    assert_eq!(
        cidr_contains("10.0.0.1", "10.0.0.2".parse().unwrap()),
        Some(false)
    );
    assert_eq!(
        cidr_contains("fd00::/16", "fd00:1::2".parse().unwrap()),
        Some(true)
    );
    assert_eq!(
        cidr_contains("0.0.0.0/0", "::ffff:1.2.3.4".parse().unwrap()),
        Some(true)
    );
    assert_eq!(
        cidr_contains("10.0.0.0/33", "10.0.0.1".parse().unwrap()),
        None
    );
    assert_eq!(cidr_contains("nonsense", "10.0.0.1".parse().unwrap()), None);
}
