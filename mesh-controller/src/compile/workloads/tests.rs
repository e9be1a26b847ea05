use mesh_core::config_pb::resource::Body;

use crate::{
    compile::compile,
    config::{ConfigSet, load::parse_documents, validate::validate},
};

/// Workloads and services compiled from `yaml`: `(name, enrolled, waypoint)`.
fn bindings(yaml: &str) -> Vec<(String, bool, String)> {
    let mut set = ConfigSet::default();
    let errors = parse_documents("t.yaml", yaml, &mut set);
    assert!(errors.is_empty(), "{errors:?}");
    compile(&set, &validate(&set, "cluster.local"), "cluster.local")
        .into_iter()
        .filter_map(|r| match r.body? {
            Body::Workload(w) => Some((w.name, w.enrolled, w.waypoint)),
            Body::Service(s) => Some((format!("svc/{}", s.name), false, s.waypoint)),
            _ => None,
        })
        .collect()
}

/// Every workload compiled from `yaml`.
fn workloads(yaml: &str) -> Vec<mesh_core::config_pb::Workload> {
    let mut set = ConfigSet::default();
    let errors = parse_documents("t.yaml", yaml, &mut set);
    assert!(errors.is_empty(), "{errors:?}");
    compile(&set, &validate(&set, "cluster.local"), "cluster.local")
        .into_iter()
        .filter_map(|r| match r.body? {
            Body::Workload(w) => Some(w),
            _ => None,
        })
        .collect()
}

/// Namespaces `shop` (ambient, waypoint `wp`) and `legacy` (not), pods and a Service, with
/// the labels spelt by `prefix` (`ambit.io` or `istio.io`).
fn cluster(prefix: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{{prefix}/dataplane-mode: ambient, {prefix}/use-waypoint: wp}}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: legacy}}
---
apiVersion: v1
kind: Pod
metadata: {{name: cart, namespace: shop}}
spec: {{nodeName: n0, containers: []}}
status: {{podIP: 10.0.0.2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: batch, namespace: shop, labels: {{{prefix}/dataplane-mode: none, {prefix}/use-waypoint: none}}}}
spec: {{nodeName: n0, containers: []}}
status: {{podIP: 10.0.0.3}}
---
apiVersion: v1
kind: Pod
metadata: {{name: old, namespace: legacy, labels: {{{prefix}/dataplane-mode: ambient, {prefix}/use-waypoint: shared, {prefix}/use-waypoint-namespace: infra}}}}
spec: {{nodeName: n0, containers: []}}
status: {{podIP: 10.0.0.4}}
---
apiVersion: v1
kind: Service
metadata: {{name: cart, namespace: shop}}
spec: {{clusterIP: 10.96.0.2, selector: {{app: cart}}, ports: [{{port: 80}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: reports, namespace: shop, labels: {{{prefix}/use-waypoint: none}}}}
spec: {{clusterIP: 10.96.0.3, ports: [{{port: 80}}]}}
"#
    )
}

#[test]
fn istio_labels_join_and_bind_exactly_as_ambits_do() {
    let ambit = bindings(&cluster("ambit.io"));
    let istio = bindings(&cluster("istio.io"));
    assert_eq!(ambit, istio);
    let expected = [
        ("cart", true, "shop/wp"),
        ("batch", false, ""),
        ("old", true, "infra/shared"),
        ("svc/cart", false, "shop/wp"),
        ("svc/reports", false, ""),
    ];
    for (name, enrolled, waypoint) in expected {
        let found = istio.iter().find(|(n, _, _)| n == name);
        assert_eq!(
            found,
            Some(&(name.to_owned(), enrolled, waypoint.to_owned())),
            "{name}: {istio:?}"
        );
    }
}

#[test]
fn host_network_pods_and_pods_with_istio_sidecars_are_never_captured() {
    let yaml = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: node-exporter, namespace: shop}
spec: {nodeName: n0, hostNetwork: true, containers: []}
status: {podIP: 192.0.2.1}
---
apiVersion: v1
kind: Pod
metadata: {name: sidecarred, namespace: shop, annotations: {sidecar.istio.io/status: '{}'}}
spec: {nodeName: n0, containers: []}
status: {podIP: 10.0.0.9}
"#;
    for (name, enrolled, _) in bindings(yaml) {
        assert!(!enrolled, "{name} is captured");
    }
}

/// `istio.io/waypoint-for` on the Gateway (or its class) decides what binds: Istio's class
/// takes services only by default, Ambit's class takes both; a waypoint in another namespace
/// must admit the client's namespace on its HBONE listener.
#[test]
fn waypoint_for_and_attachment_follow_istio() {
    let gateway = |name: &str, class: &str, waypoint_for: Option<&str>, from: &str| {
        let labels = waypoint_for
            .map(|w| format!("labels: {{istio.io/waypoint-for: {w}}}, "))
            .unwrap_or_default();
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: infra, {labels}}}\nspec:\n  gatewayClassName: {class}\n  listeners: [{{name: mesh, port: 15008, protocol: HBONE, allowedRoutes: {{namespaces: {{from: {from}}}}}}}]\n"
        )
    };
    let cluster = |waypoint: &str| {
        format!(
            r#"
apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{istio.io/dataplane-mode: ambient, istio.io/use-waypoint: {waypoint}, istio.io/use-waypoint-namespace: infra}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: cart, namespace: shop}}
spec: {{nodeName: n0, containers: []}}
status: {{podIP: 10.0.0.2}}
---
apiVersion: v1
kind: Service
metadata: {{name: cart, namespace: shop}}
spec: {{clusterIP: 10.96.0.2, ports: [{{port: 80}}]}}
{}{}{}{}{}{}{}"#,
            gateway("istio-default", "istio-waypoint", None, "All"),
            gateway("istio-all", "istio-waypoint", Some("all"), "All"),
            gateway("istio-workload", "istio-waypoint", Some("workload"), "All"),
            gateway("ambit-default", "ambit-waypoint", None, "All"),
            gateway("same-only", "istio-waypoint", Some("all"), "Same"),
            gateway(
                "selecting",
                "istio-waypoint",
                Some("all"),
                "Selector, selector: {matchExpressions: [{key: istio.io/dataplane-mode, operator: In, values: [ambient]}]}",
            ),
            gateway(
                "selecting-others",
                "istio-waypoint",
                Some("all"),
                "Selector, selector: {matchLabels: {istio.io/dataplane-mode: ambient}, matchExpressions: [{key: team, operator: Exists}]}",
            ),
        )
    };
    let bound = |waypoint: &str| -> (String, String) {
        let found = bindings(&cluster(waypoint));
        let of = |name: &str| {
            found
                .iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, _, w)| w.clone())
                .unwrap()
        };
        (of("cart"), of("svc/cart"))
    };
    let none = String::new();
    let to = |name: &str| format!("infra/{name}");
    assert_eq!(bound("istio-default"), (none.clone(), to("istio-default")));
    assert_eq!(bound("istio-all"), (to("istio-all"), to("istio-all")));
    assert_eq!(
        bound("istio-workload"),
        (to("istio-workload"), none.clone())
    );
    assert_eq!(
        bound("ambit-default"),
        (to("ambit-default"), to("ambit-default"))
    );
    assert_eq!(bound("same-only"), (none.clone(), none.clone()));
    // A selector admits the namespaces it selects, by labels and expressions both.
    assert_eq!(bound("selecting"), (to("selecting"), to("selecting")));
    assert_eq!(bound("selecting-others"), (none.clone(), none));
}

/// A waypoint pod is offered (keeps its gateway label) only while it serves: not while it is
/// unready (starting) or terminating (draining), as an EndpointSlice leaves such pods out.
#[test]
fn waypoint_pods_are_offered_only_while_they_serve() {
    let pod = |name: &str, extra_meta: &str, conditions: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, \
             labels: {{gateway.networking.k8s.io/gateway-name: wp}}{extra_meta}}}\n\
             spec: {{nodeName: n0, serviceAccountName: wp, containers: []}}\n\
             status: {{podIP: 10.0.1.{}{conditions}}}\n",
            name.len()
        )
    };
    let yaml = [
        pod("ready", "", ", conditions: [{type: Ready, status: 'True'}]"),
        pod(
            "start",
            "",
            ", conditions: [{type: Ready, status: 'False'}]",
        ),
        pod("goner", ", deletionTimestamp: '2026-12-06T00:00:00Z'", ""),
        pod("plain", "", ""),
    ]
    .concat();
    let mut offered: Vec<(String, bool)> = workloads(&yaml)
        .into_iter()
        .map(|w| {
            let offered = w
                .labels
                .contains_key("gateway.networking.k8s.io/gateway-name");
            (w.name, offered)
        })
        .collect();
    offered.sort();
    assert_eq!(
        offered,
        [
            ("goner".to_owned(), false),
            ("plain".to_owned(), true),
            ("ready".to_owned(), true),
            ("start".to_owned(), false),
        ]
    );
}

/// A pod scheduled but not yet given an address goes to the node agents with no address, so
/// its node's agent knows whether it is of the mesh before it starts; one not scheduled, or
/// finished, does not.
#[test]
fn scheduled_pods_go_out_before_they_have_an_address() {
    let yaml = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Pod
metadata: {name: starting, namespace: shop, uid: 11111111-1111-4111-8111-111111111111}
spec: {nodeName: n0, containers: []}
status: {phase: Pending}
---
apiVersion: v1
kind: Pod
metadata: {name: outside, namespace: legacy}
spec: {nodeName: n0, containers: []}
---
apiVersion: v1
kind: Pod
metadata: {name: unscheduled, namespace: shop}
spec: {containers: []}
---
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: shop}
spec: {nodeName: n0, containers: []}
status: {phase: Succeeded}
"#;
    let mut sent: Vec<(String, bool, usize, String)> = workloads(yaml)
        .into_iter()
        .map(|w| (w.name, w.enrolled, w.addresses.len(), w.uid))
        .collect();
    sent.sort();
    assert_eq!(
        sent,
        [
            ("outside".to_owned(), false, 0, String::new()),
            (
                "starting".to_owned(),
                true,
                0,
                "11111111-1111-4111-8111-111111111111".to_owned()
            ),
        ]
    );
}
