//! The same YAML through the local directory source and through the Kubernetes source (a fake
//! API server: kube-fake-client; it lists but cannot watch, so the reflectors' initial list is
//! what is compared) gives a node the same configuration.

use std::time::Duration;

mod common;

use mesh_controller::{
    compile::compile,
    config::validate::validate,
    distribution::wanted,
    source::{ConfigSource, dir::DirSource, kube::KubeSource},
};
use mesh_core::config_pb::{Resource, Role};

const YAML: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {ambit.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: cart-1, namespace: shop, uid: 5d0c7c1e-0000-4000-8000-000000000001, labels: {app: cart, version: v1}}
spec:
  nodeName: n0
  serviceAccountName: cart
  containers: [{name: app, image: cart}]
status: {podIP: 10.0.0.5, podIPs: [{ip: 10.0.0.5}]}
---
apiVersion: v1
kind: Pod
metadata: {name: legacy, namespace: shop, uid: 5d0c7c1e-0000-4000-8000-000000000002, labels: {app: legacy, ambit.io/dataplane-mode: none}}
spec:
  nodeName: n1
  containers: [{name: app, image: legacy}]
status: {podIP: 10.0.1.7, podIPs: [{ip: 10.0.1.7}]}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  selector: {app: cart}
  ports: [{port: 80, targetPort: 8080, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: cart-x1, namespace: shop, labels: {kubernetes.io/service-name: cart}}
addressType: IPv4
endpoints: [{addresses: [10.0.0.5], conditions: {ready: true}}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: cart, namespace: shop, labels: {ambit.io/use-waypoint: cart-waypoint}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: cart-deny, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  action: DENY
  rules: [{to: [{operation: {ports: ["9000"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: broken, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {ports: ["nine"]}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: cart, namespace: shop}
spec:
  hosts: [cart]
  http: [{route: [{destination: {host: cart}}]}]
"#;

fn node_view(source: &mut impl ConfigSource) -> Vec<Resource> {
    let (set, errors) = source.snapshot();
    assert!(errors.is_empty(), "{errors:?}");
    let validation = validate(&set, "cluster.local");
    compile(&set, &validation, "cluster.local")
        .into_iter()
        .filter(|r| wanted(Role::Node, &r.key.as_ref().unwrap().kind))
        .collect()
}

#[tokio::test]
async fn directory_and_kubernetes_sources_give_the_same_node_view() {
    let dir = std::env::temp_dir().join(format!("ambit-sources-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.yaml"), YAML).unwrap();
    let from_dir = node_view(&mut DirSource::new(dir.clone(), None));
    std::fs::remove_dir_all(&dir).unwrap();

    let objects = common::objects(YAML);
    let client = common::fake_client(&objects).await;
    let mut source = KubeSource::start_with(client, common::namespaces_shim(&objects));
    tokio::time::timeout(Duration::from_secs(10), source.ready())
        .await
        .expect("every kind listed within 10 s");
    let from_kube = node_view(&mut source);

    let kinds: Vec<String> = from_dir
        .iter()
        .map(|r| {
            let k = r.key.as_ref().unwrap();
            format!("{} {}/{}", k.kind, k.namespace, k.name)
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "Workload shop/cart-1",
            "Workload shop/legacy",
            "Service shop/cart",
            "PeerAuthentication shop/default",
            "AuthorizationPolicy shop/broken",
            "AuthorizationPolicy shop/cart-deny",
        ],
        "the broken policy goes out too (nodes fail closed on it); a node gets no VirtualService"
    );
    let cart = format!("{:?}", from_dir[0]);
    assert!(
        cart.contains("waypoint: \"shop/cart-waypoint\""),
        "bound by its service account: {cart}"
    );
    let service = format!("{:?}", from_dir[2]);
    assert!(service.contains("endpoints: [\"10.0.0.5\"]"), "{service}");
    assert_eq!(from_dir, from_kube);
}
