//! Policies that were once read more leniently at the enforcement point than by the
//! controller, each of which opened access; and a YAML error that dropped later documents.
//! All of them are now refused by the one validator and enforced failing closed.

use super::*;

fn loaded(yaml: &str) -> (PolicySet, Vec<crate::policy::LoadError>) {
    let mut set = PolicySet::with_root_namespace(ROOT_NAMESPACE);
    let errors = parse_documents("policies.yaml", yaml, &mut set);
    (set, errors)
}

/// The decision for a connection from `source` (at `ip`) to an unlabelled workload of `shop`,
/// at its node.
fn at_node(set: &PolicySet, source: &str, ip: &str) -> Decision {
    let none = labels(&[]);
    let shop = Workload {
        namespace: "shop",
        labels: &none,
    };
    set.authorize(shop, conn(Some(&id(source)), ip, 80))
}

fn at_waypoint(
    set: &PolicySet,
    client: &Identity,
    method: &str,
    path: &str,
    headers: &http::HeaderMap,
) -> Decision {
    let targets = Targets {
        namespace: "shop",
        gateway: "waypoint",
        class: None,
        service: Some("cart"),
    };
    let request = request(method, path, headers);
    let c = Connection {
        request: Some(&request),
        ..conn(Some(client), "10.0.0.1", 80)
    };
    set.authorize_request(&targets, c)
}

#[test]
fn allow_with_a_malformed_not_remote_ip_block_admits_nobody() {
    // Before: `!ip_in(["10.0.0.0/33"])` was true for every source, so the rule admitted all.
    let (set, errors) = loaded(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: office-only, namespace: shop }
spec:
  action: ALLOW
  rules: [{ from: [{ source: { notRemoteIpBlocks: ["10.0.0.0/33"] } }] }]
"#,
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].message.contains("InvalidIpBlock"),
        "{}",
        errors[0]
    );
    assert!(matches!(
        at_node(&set, "spiffe://cluster.local/ns/shop/sa/web", "192.168.1.1"),
        Decision::Deny { .. }
    ));
}

#[test]
fn allow_when_without_values_admits_nobody() {
    // Before: a condition with neither values nor notValues matched every request.
    let (set, errors) = loaded(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: admins, namespace: shop }
spec:
  targetRefs: [{ kind: Service, group: "", name: cart }]
  action: ALLOW
  rules: [{ when: [{ key: "request.headers[x-admin]" }] }]
"#,
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].message.contains("InvalidCondition"));
    let web = id("spiffe://cluster.local/ns/shop/sa/web");
    let decision = at_waypoint(&set, &web, "GET", "/", &headers(&[("x-admin", "no")]));
    assert!(matches!(decision, Decision::Deny { .. }), "{decision:?}");
}

#[test]
fn deny_with_a_relative_path_denies_everything() {
    // Before: `paths: ["admin"]` never equals a normalized path, so the DENY never fired.
    let (set, errors) = loaded(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: no-admin, namespace: shop }
spec:
  targetRefs: [{ kind: Service, group: "", name: cart }]
  action: DENY
  rules: [{ to: [{ operation: { paths: ["admin"] } }] }]
"#,
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].message.contains("InvalidPath"));
    let web = id("spiffe://cluster.local/ns/shop/sa/web");
    let none = headers(&[]);
    for path in ["/admin", "/items"] {
        let decision = at_waypoint(&set, &web, "GET", path, &none);
        assert!(matches!(decision, Decision::Deny { .. }), "{path}");
    }
}

#[test]
fn a_yaml_error_does_not_drop_the_documents_after_it() {
    let (set, errors) = loaded(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: broken, namespace: other }
spec: { action: ALLOW, rules: [ {
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: deny-legacy, namespace: shop }
spec:
  action: DENY
  rules: [{ from: [{ source: { namespaces: ["legacy"] } }] }]
"#,
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].index, 1);
    assert!(matches!(
        at_node(&set, "spiffe://cluster.local/ns/legacy/sa/old", "10.0.0.9"),
        Decision::Deny { .. }
    ));
}

#[test]
fn the_controllers_refusal_wins_over_a_lenient_reading() {
    // A spec this side would accept, refused by the controller (a newer validator, say).
    let mut set = PolicySet::with_root_namespace(ROOT_NAMESPACE);
    let spec = r#"{"action":"ALLOW","rules":[{"from":[{"source":{"namespaces":["shop"]}}]}]}"#;
    let error = set
        .add_streamed(
            "AuthorizationPolicy",
            "shop",
            "p",
            spec,
            Some("InvalidSource: …"),
        )
        .unwrap_err();
    assert!(error.message.contains("failing closed"), "{error}");
    assert!(matches!(
        at_node(&set, "spiffe://cluster.local/ns/shop/sa/web", "10.0.0.1"),
        Decision::Deny { .. }
    ));
    // An unreadable body is a policy of its namespace too, failing closed.
    let mut set = PolicySet::with_root_namespace(ROOT_NAMESPACE);
    assert!(
        set.add_streamed("AuthorizationPolicy", "shop", "q", "not json", None)
            .is_err()
    );
    assert!(matches!(
        at_node(&set, "spiffe://cluster.local/ns/shop/sa/web", "10.0.0.1"),
        Decision::Deny { .. }
    ));
}
