//! A cluster without the Gateway API: the controller lists what the cluster serves and
//! publishes without waiting for the missing kinds; once the Gateway API's CRDs are installed,
//! it lists them and publishes what they hold (against the fake API server, whose discovery
//! answers 404 for the group until the test installs it).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

mod common;

use mesh_controller::{
    distribution::Distributor,
    source::{
        ConfigSource as _, LogStatus,
        kube::{KindState, KubeSource},
        publish_once,
    },
};

const YAML: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: bookinfo}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews}}]}]
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: bookinfo}
spec: {clusterIP: 10.96.0.20, selector: {app: ratings}, ports: [{name: http, port: 9080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ratings, namespace: bookinfo}
spec:
  parentRefs: [{group: "", kind: Service, name: ratings, port: 9080}]
  rules: [{backendRefs: [{name: ratings, port: 9080}]}]
"#;

fn published_kinds(distributor: &Distributor) -> Vec<String> {
    distributor
        .resources()
        .iter()
        .filter_map(|r| r.key.as_ref().map(|k| format!("{}/{}", k.kind, k.name)))
        .collect()
}

fn is_gateway_api(kind: &str) -> bool {
    kind.starts_with("gateway.networking.k8s.io/")
}

/// Waits until every Gateway API kind is in `state`.
async fn wait_gateway_api(
    source: &mut KubeSource,
    state: KindState,
) -> Result<(), tokio::time::error::Elapsed> {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !source
            .states()
            .iter()
            .filter(|(kind, _)| is_gateway_api(kind))
            .all(|(_, s)| *s == state)
        {
            source.changed().await;
        }
    })
    .await
}

#[tokio::test]
async fn publishes_without_the_gateway_api_then_watches_it_once_installed() {
    let objects = common::objects(YAML);
    let gateway_api = Arc::new(AtomicBool::new(false));
    let client = common::fake_client_with(&objects, gateway_api.clone()).await;
    let mut source = KubeSource::start_probing(
        client,
        common::namespaces_shim(&objects),
        Duration::from_millis(100),
    );
    tokio::time::timeout(Duration::from_secs(10), source.ready())
        .await
        .expect("ready without the Gateway API");
    let states = source.states();
    for (kind, state) in &states {
        let expected = match is_gateway_api(kind) {
            true => KindState::NotServed,
            false => KindState::Listed,
        };
        assert_eq!(*state, expected, "{kind}: {states:?}");
    }
    let distributor = Distributor::default();
    let mut status = LogStatus::default();
    publish_once(&mut source, &mut status, &distributor, "cluster.local").await;
    assert!(distributor.published());
    let first = published_kinds(&distributor);
    assert!(
        first.contains(&"VirtualService/reviews".to_owned()),
        "{first:?}"
    );
    assert!(
        !first.iter().any(|k| k.starts_with("HTTPRoute")),
        "{first:?}"
    );

    // The Gateway API's CRDs are installed: the kinds are listed and the route published.
    gateway_api.store(true, Ordering::SeqCst);
    wait_gateway_api(&mut source, KindState::Listed)
        .await
        .expect("the Gateway API kinds listed once installed");
    publish_once(&mut source, &mut status, &distributor, "cluster.local").await;
    let second = published_kinds(&distributor);
    assert!(
        second.contains(&"HTTPRoute/ratings".to_owned()),
        "{second:?}"
    );

    // And uninstalled again: its objects go with it.
    gateway_api.store(false, Ordering::SeqCst);
    wait_gateway_api(&mut source, KindState::NotServed)
        .await
        .expect("the Gateway API kinds dropped once uninstalled");
    publish_once(&mut source, &mut status, &distributor, "cluster.local").await;
    let third = published_kinds(&distributor);
    assert!(
        !third.iter().any(|k| k.starts_with("HTTPRoute")),
        "{third:?}"
    );
}
