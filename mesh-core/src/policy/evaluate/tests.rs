use std::collections::BTreeMap;

use super::*;
use crate::policy::{MtlsMode, PolicySet, ROOT_NAMESPACE, cidr_contains, parse_documents};

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
        request: None,
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
        policies.mtls_mode(
            Workload {
                namespace: "shop",
                labels: &none
            },
            80
        ),
        MtlsMode::Strict
    );
    assert_eq!(
        policies.mtls_mode(
            Workload {
                namespace: "legacy",
                labels: &none
            },
            80
        ),
        MtlsMode::Permissive
    );
    assert_eq!(
        policies.mtls_mode(
            Workload {
                namespace: "legacy",
                labels: &db
            },
            80
        ),
        MtlsMode::Strict
    );
    assert_eq!(
        PolicySet::default().mtls_mode(
            Workload {
                namespace: "x",
                labels: &none
            },
            80
        ),
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

const WAYPOINT_POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: no-admin, namespace: shop }
spec:
  targetRefs: [{ kind: Gateway, group: gateway.networking.k8s.io, name: waypoint }]
  action: DENY
  rules:
  - to: [{ operation: { paths: ["/admin*"] } }]
  - when: [{ key: "request.headers[x-role]", values: ["intruder"] }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: reads, namespace: shop }
spec:
  targetRefs: [{ kind: Service, name: cart }]
  action: ALLOW
  rules:
  - from: [{ source: { namespaces: ["shop"] } }]
    to: [{ operation: { methods: ["GET"], hosts: ["cart*"] } }]
    when: [{ key: "request.headers[x-tier]", values: ["gold", "silver"] }]
"#;

fn request<'a>(method: &'a str, path: &'a str, headers: &'a http::HeaderMap) -> Request<'a> {
    Request {
        method,
        path,
        host: "cart.shop.svc.cluster.local",
        headers,
    }
}

fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (k, v) in pairs {
        map.append(*k, v.parse().unwrap());
    }
    map
}

#[test]
fn a_waypoint_enforces_l7_rules_of_the_policies_that_target_it() {
    let policies = set(WAYPOINT_POLICIES);
    let client = id("spiffe://cluster.local/ns/shop/sa/web");
    let targets = Targets {
        namespace: "shop",
        gateway: "waypoint",
        class: None,
        service: Some("cart"),
    };
    let decide = |method: &str, path: &str, h: &http::HeaderMap| {
        let request = request(method, path, h);
        let c = Connection {
            request: Some(&request),
            ..conn(Some(&client), "10.0.0.1", 80)
        };
        policies.authorize_request(&targets, c)
    };
    let gold = headers(&[("x-tier", "gold")]);
    assert_eq!(decide("GET", "/items", &gold), Decision::Allow);
    assert!(
        matches!(decide("POST", "/items", &gold), Decision::Deny { .. }),
        "method"
    );
    assert!(
        matches!(decide("GET", "/admin/users", &gold), Decision::Deny { .. }),
        "path"
    );
    assert!(
        matches!(
            decide("GET", "/items", &headers(&[])),
            Decision::Deny { .. }
        ),
        "no tier"
    );
    // Every value of a repeated header is checked: one bad value denies, and an ALLOW needs
    // all of them to fit.
    let mixed = headers(&[
        ("x-role", "user"),
        ("x-role", "intruder"),
        ("x-tier", "gold"),
    ]);
    assert!(matches!(
        decide("GET", "/items", &mixed),
        Decision::Deny { .. }
    ));
    let tiers = headers(&[("x-tier", "gold"), ("x-tier", "bronze")]);
    assert!(matches!(
        decide("GET", "/items", &tiers),
        Decision::Deny { .. }
    ));

    // At a node the same policies do not apply: they are the waypoint's.
    let workload = Workload {
        namespace: "shop",
        labels: &labels(&[("app", "cart")]),
    };
    assert_eq!(
        policies.authorize(workload, conn(Some(&client), "10.0.0.1", 80)),
        Decision::Allow
    );
    // Another waypoint's destination is not governed by them either.
    let elsewhere = Targets {
        namespace: "shop",
        gateway: "other",
        class: None,
        service: Some("orders"),
    };
    let none = headers(&[]);
    let r = request("DELETE", "/admin", &none);
    let c = Connection {
        request: Some(&r),
        ..conn(Some(&client), "10.0.0.1", 80)
    };
    assert_eq!(policies.authorize_request(&elsewhere, c), Decision::Allow);
}

mod fail_open;
mod sources_and_targets;
