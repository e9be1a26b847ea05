//! Every reason the one validator refuses an AuthorizationPolicy for, end to end through the
//! controller: the resource's status says why, the policy is still streamed with that
//! verdict, and both enforcement points — a node (`authorize`) and a waypoint
//! (`authorize_request`), fed the way they are fed from the stream — enforce it failing
//! closed: the connection or request a valid version of the policy lets through is denied.

use mesh_controller::{
    compile::compile,
    config::{ConfigSet, load, validate},
};
use mesh_core::{
    Identity,
    config_pb::resource::Body,
    policy::{Connection, Decision, PolicySet, Reason, Request, Targets, Workload},
};

/// A policy that admits the client below except for the flaw `reason` names, both as a node
/// sees it (selector) and as a waypoint does (targetRefs to its Service).
fn refused_for(reason: Reason) -> [String; 2] {
    let (header, rule) = match reason {
        Reason::Unreadable => ("", r#"{ from: [{ source: { principalz: ["x"] } }] }"#),
        Reason::InvalidAction => ("provider: { name: ext-authz }", "{}"),
        Reason::InvalidTarget => ("", "{}"),
        Reason::InvalidIpBlock => (
            "",
            r#"{ from: [{ source: { notRemoteIpBlocks: ["10.0.0.0/33"] } }] }"#,
        ),
        Reason::InvalidSource => (
            "",
            r#"{ from: [{ source: { serviceAccounts: ["a/b/c"] } }] }"#,
        ),
        Reason::InvalidPort => ("", r#"{ to: [{ operation: { notPorts: ["99999"] } }] }"#),
        Reason::InvalidPath => ("", r#"{ to: [{ operation: { notPaths: ["admin"] } }] }"#),
        Reason::InvalidCondition => ("", r#"{ when: [{ key: "request.headers[x-user]" }] }"#),
    };
    // InvalidTarget: two ways of saying where the policy applies.
    let (node_extra, waypoint_extra) = match reason {
        Reason::InvalidTarget => (
            "\n  targetRefs: [{ kind: Service, group: \"\", name: cart }]",
            "\n  targetRef: { kind: Service, group: \"\", name: cart }",
        ),
        _ => ("", ""),
    };
    let node = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{ name: at-node, namespace: shop }}\nspec:\n  selector: {{ matchLabels: {{ app: cart }} }}{node_extra}\n  action: ALLOW\n  {header}\n  rules: [{rule}]\n"
    );
    let waypoint = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{ name: at-waypoint, namespace: shop }}\nspec:\n  targetRefs: [{{ kind: Service, group: \"\", name: cart }}]{waypoint_extra}\n  action: ALLOW\n  {header}\n  rules: [{rule}]\n"
    );
    [node, waypoint]
}

/// What the controller streams for `yaml`, fed into a policy set as nodes and waypoints do.
fn through_the_controller(yaml: &str, reason: Reason) -> PolicySet {
    let mut set = ConfigSet::default();
    let _unreadable_is_reported = load::parse_documents("policy.yaml", yaml, &mut set);
    let validation = validate::validate(&set, "cluster.local");
    for key in set.resources.keys() {
        let findings = validation.findings.get(key).cloned().unwrap_or_default();
        assert!(
            findings.iter().any(|f| f.reason == reason.as_str()),
            "{reason:?}: the controller must refuse {key} for it: {findings:?}"
        );
    }
    let mut policies = PolicySet::with_root_namespace("istio-system");
    for resource in compile(&set, &validation, "cluster.local") {
        let key = resource.key.unwrap();
        let Some(Body::IstioJson(json)) = resource.body else {
            panic!("{key:?} has no Istio body");
        };
        assert!(
            resource.refused.starts_with(reason.as_str()),
            "{reason:?}: streamed verdict {:?}",
            resource.refused
        );
        let refused = Some(resource.refused.as_str());
        let outcome = policies.add_streamed(&key.kind, &key.namespace, &key.name, &json, refused);
        assert!(
            outcome.is_err(),
            "{reason:?}: the subscriber must report it"
        );
    }
    policies
}

#[test]
fn every_refusal_is_enforced_failing_closed_at_nodes_and_waypoints() {
    let client: Identity = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
    let labels = [("app".to_owned(), "cart".to_owned())].into();
    let cart = Workload {
        namespace: "shop",
        labels: &labels,
    };
    let headers = http::HeaderMap::new();
    let request = Request {
        method: "GET",
        path: "/items",
        host: "cart.shop.svc.cluster.local",
        headers: &headers,
    };
    let targets = Targets {
        namespace: "shop",
        gateway: "waypoint",
        class: None,
        service: Some("cart"),
    };
    let l4 = Connection {
        source: Some(&client),
        source_ip: "10.0.0.7".parse().unwrap(),
        destination_port: 8080,
        request: None,
    };
    let l7 = Connection {
        request: Some(&request),
        ..l4
    };
    for reason in Reason::ALL {
        let [node, waypoint] = refused_for(reason);
        let at_node = through_the_controller(&node, reason);
        assert!(
            matches!(at_node.authorize(cart, l4), Decision::Deny { .. }),
            "{reason:?} at the node"
        );
        let at_waypoint = through_the_controller(&waypoint, reason);
        assert!(
            matches!(
                at_waypoint.authorize_request(&targets, l7),
                Decision::Deny { .. }
            ),
            "{reason:?} at the waypoint"
        );
    }
}

#[test]
fn the_same_policies_fixed_are_accepted_and_admit_the_client() {
    // The control for the test above: an ALLOW that admits the client is accepted.
    let yaml = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: at-node, namespace: shop }
spec:
  selector: { matchLabels: { app: cart } }
  action: ALLOW
  rules: [{ from: [{ source: { notRemoteIpBlocks: ["10.9.0.0/16"] } }] }]
"#;
    let mut set = ConfigSet::default();
    assert_eq!(load::parse_documents("ok.yaml", yaml, &mut set), []);
    let validation = validate::validate(&set, "cluster.local");
    let mut policies = PolicySet::with_root_namespace("istio-system");
    for resource in compile(&set, &validation, "cluster.local") {
        let key = resource.key.unwrap();
        assert_eq!(resource.refused, "");
        let Some(Body::IstioJson(json)) = resource.body else {
            panic!()
        };
        policies
            .add_streamed(&key.kind, &key.namespace, &key.name, &json, None)
            .unwrap();
    }
    let client: Identity = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
    let labels = [("app".to_owned(), "cart".to_owned())].into();
    let cart = Workload {
        namespace: "shop",
        labels: &labels,
    };
    let l4 = Connection {
        source: Some(&client),
        source_ip: "10.0.0.7".parse().unwrap(),
        destination_port: 8080,
        request: None,
    };
    assert_eq!(policies.authorize(cart, l4), Decision::Allow);
}
