//! Waypoint lifecycle against a fake API server (kube-fake-client): a Gateway of class
//! `ambit-waypoint` gets a ServiceAccount, Deployment and Service it owns, and a finalizer;
//! a Gateway being deleted has them removed and the finalizer released; an `ambit` Gateway
//! gets an ingress; Istio's classes are served alike unless their GatewayClass names another
//! controller (Istio's, where Istio is installed); other classes are left alone.

mod common;

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Service, ServiceAccount},
};
use kube::{Api, ResourceExt as _};
use mesh_api::gateway_api::{Gateway, GatewayClass};
use mesh_controller::waypoint::{FINALIZER, Outcome, WaypointSettings, reconcile};

fn gateway(name: &str, class: &str, extra_metadata: serde_json::Value) -> serde_json::Value {
    let mut metadata =
        serde_json::json!({"name": name, "namespace": "bookinfo", "uid": format!("uid-{name}")});
    if let (Some(m), Some(extra)) = (metadata.as_object_mut(), extra_metadata.as_object()) {
        m.extend(extra.clone());
    }
    serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": metadata,
        "spec": {"gatewayClassName": class, "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}
    })
}

fn settings() -> WaypointSettings {
    WaypointSettings {
        image: "mesh-waypoint:test".to_owned(),
        ca_addr: "ambit-controller.ambit-system.svc:15012".to_owned(),
        root_pem: "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n".to_owned(),
        tracing: vec![(
            "AMBIT_ZIPKIN_ENDPOINT".to_owned(),
            "http://zipkin.istio-system:9411/api/v2/spans".to_owned(),
        )],
    }
}

async fn client(objects: Vec<serde_json::Value>) -> kube::Client {
    kube_fake_client::ClientBuilder::new()
        .with_resource::<GatewayClass>()
        .with_resource::<Gateway>()
        .with_runtime_objects(objects)
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_waypoint_gateway_gets_its_deployment_service_and_account() {
    let istiod_class = serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GatewayClass",
        "metadata": {"name": "istio"},
        "spec": {"controllerName": "istio.io/gateway-controller"}
    });
    let fake = client(vec![
        gateway("waypoint", "ambit-waypoint", serde_json::json!({})),
        gateway("other", "istio", serde_json::json!({})),
        gateway("istio-style", "istio-waypoint", serde_json::json!({})),
        gateway("unknown", "some-other-class", serde_json::json!({})),
    ])
    .await;
    // The fake takes every custom resource for a namespaced one: GatewayClasses (cluster-
    // scoped) are answered here, as istiod would have made them.
    let client = common::intercepting(fake, move |method, path| {
        let name = path.strip_prefix("/apis/gateway.networking.k8s.io/v1/gatewayclasses/")?;
        match (method.as_str(), name) {
            ("GET", "istio") => Some((200, istiod_class.clone())),
            ("GET", other) => common::not_found(&format!("gatewayclasses {other}")),
            _ => None,
        }
    });
    let gateways: Api<Gateway> = Api::namespaced(client.clone(), "bookinfo");
    let gw = gateways.get("waypoint").await.unwrap();
    assert_eq!(
        reconcile(&client, &gw, &settings()).await.unwrap(),
        Outcome::Applied
    );

    let deployment = Api::<Deployment>::namespaced(client.clone(), "bookinfo")
        .get("waypoint")
        .await
        .expect("the waypoint Deployment");
    let owner = &deployment.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Gateway", "waypoint")
    );
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("waypoint"));
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("mesh-waypoint:test")
    );
    // It runs as the waypoint of its Gateway, with its own token and the mesh root.
    let env = pod.containers[0].env.clone().unwrap_or_default();
    assert!(
        env.iter().any(|e| e.name == "AMBIT_ZIPKIN_ENDPOINT"
            && e.value.as_deref() == Some("http://zipkin.istio-system:9411/api/v2/spans")),
        "the proxies send spans where the controller was told: {env:?}"
    );
    let args = pod.containers[0].args.clone().unwrap_or_default();
    assert!(
        args.contains(&"--waypoint=bookinfo/waypoint".to_owned()),
        "{args:?}"
    );
    assert!(
        args.contains(&"--service-account=waypoint".to_owned()),
        "{args:?}"
    );
    let root = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), "bookinfo")
        .get("ambit-ca-root")
        .await
        .expect("the root published in the waypoint's namespace");
    assert!(root.data.unwrap()["root-cert.pem"].contains("BEGIN CERTIFICATE"));
    let service = Api::<Service>::namespaced(client.clone(), "bookinfo")
        .get("waypoint")
        .await
        .expect("the waypoint Service");
    assert_eq!(service.spec.unwrap().ports.unwrap()[0].port, 15008);
    Api::<ServiceAccount>::namespaced(client.clone(), "bookinfo")
        .get("waypoint")
        .await
        .expect("the waypoint ServiceAccount");
    let gw = gateways.get("waypoint").await.unwrap();
    assert!(gw.finalizers().iter().any(|f| f == FINALIZER));

    // Reconciling again changes nothing and does not fail.
    assert_eq!(
        reconcile(&client, &gw, &settings()).await.unwrap(),
        Outcome::Applied
    );

    // Istio's waypoint class with no GatewayClass claiming it: Ambit's to serve.
    let istio_style = gateways.get("istio-style").await.unwrap();
    assert_eq!(
        reconcile(&client, &istio_style, &settings()).await.unwrap(),
        Outcome::Applied
    );
    // Class `istio` whose GatewayClass names istiod, and a class Ambit does not serve.
    for name in ["other", "unknown"] {
        let other = gateways.get(name).await.unwrap();
        assert_eq!(
            reconcile(&client, &other, &settings()).await.unwrap(),
            Outcome::Ignored
        );
        assert!(
            Api::<Deployment>::namespaced(client.clone(), "bookinfo")
                .get_opt(name)
                .await
                .unwrap()
                .is_none()
        );
    }
}

#[tokio::test]
async fn a_deleted_waypoint_gateway_has_its_objects_removed_then_goes() {
    // The fake cannot set deletionTimestamp on delete: seed a Gateway already being deleted,
    // with the objects an earlier reconcile made.
    let deleting = gateway(
        "waypoint",
        "ambit-waypoint",
        serde_json::json!({"deletionTimestamp": "2026-11-22T00:00:00Z", "finalizers": [FINALIZER]}),
    );
    let owned = |kind: &str, api: &str| serde_json::json!({"apiVersion": api, "kind": kind, "metadata": {"name": "waypoint", "namespace": "bookinfo"}});
    let mut deployment = owned("Deployment", "apps/v1");
    deployment["spec"] = serde_json::json!({"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "w", "image": "w"}]}}});
    let client = client(vec![
        deleting,
        deployment,
        owned("Service", "v1"),
        owned("ServiceAccount", "v1"),
    ])
    .await;
    let gateways: Api<Gateway> = Api::namespaced(client.clone(), "bookinfo");
    let gw = gateways.get("waypoint").await.unwrap();
    assert_eq!(
        reconcile(&client, &gw, &settings()).await.unwrap(),
        Outcome::Removed
    );
    for present in [
        Api::<Deployment>::namespaced(client.clone(), "bookinfo")
            .get_opt("waypoint")
            .await
            .unwrap()
            .is_some(),
        Api::<Service>::namespaced(client.clone(), "bookinfo")
            .get_opt("waypoint")
            .await
            .unwrap()
            .is_some(),
        Api::<ServiceAccount>::namespaced(client.clone(), "bookinfo")
            .get_opt("waypoint")
            .await
            .unwrap()
            .is_some(),
    ] {
        assert!(!present, "an owned object survived");
    }
    assert!(
        gateways.get_opt("waypoint").await.unwrap().is_none(),
        "with the finalizer released the Gateway is gone"
    );
}

/// A Gateway of class `ambit` is an ingress: the same binary in ingress mode, its listeners'
/// ports open in the pod (unprivileged, though below 1024) and on a LoadBalancer Service.
#[tokio::test]
async fn an_ingress_gateway_gets_a_load_balancer_on_its_listeners() {
    let mut ingress = gateway("public", "ambit", serde_json::json!({}));
    ingress["spec"]["listeners"] = serde_json::json!([
        {"name": "http", "port": 80, "protocol": "HTTP"},
        {"name": "https", "port": 443, "protocol": "HTTPS", "tls": {"certificateRefs": [{"name": "cert"}]}},
    ]);
    let client = client(vec![ingress]).await;
    let gw = Api::<Gateway>::namespaced(client.clone(), "bookinfo")
        .get("public")
        .await
        .unwrap();
    assert_eq!(
        reconcile(&client, &gw, &settings()).await.unwrap(),
        Outcome::Applied
    );
    let deployment = Api::<Deployment>::namespaced(client.clone(), "bookinfo")
        .get("public")
        .await
        .expect("the ingress Deployment");
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let args = pod.containers[0].args.clone().unwrap_or_default();
    assert!(
        args.contains(&"--ingress-gateway=bookinfo/public".to_owned()),
        "{args:?}"
    );
    let ports: Vec<i32> = pod.containers[0]
        .ports
        .iter()
        .flatten()
        .map(|p| p.container_port)
        .collect();
    // Its listeners, and the metrics port the PodMonitor names.
    assert_eq!(ports, [80, 443, 15020]);
    let sysctls = pod
        .security_context
        .and_then(|c| c.sysctls)
        .unwrap_or_default();
    assert!(
        sysctls
            .iter()
            .any(|s| s.name == "net.ipv4.ip_unprivileged_port_start" && s.value == "0"),
        "{sysctls:?}"
    );
    let service = Api::<Service>::namespaced(client.clone(), "bookinfo")
        .get("public")
        .await
        .expect("the ingress Service")
        .spec
        .unwrap();
    assert_eq!(service.type_.as_deref(), Some("LoadBalancer"));
    let ports: Vec<i32> = service.ports.iter().flatten().map(|p| p.port).collect();
    // Its listeners only: the metrics port is not for the load balancer.
    assert_eq!(ports, [80, 443]);
}

/// The ingress of Istio's tutorials: an Istio Gateway selecting `istio: ingressgateway` gets
/// an ingress workload the controller runs (its pods carry the selector, its LoadBalancer
/// Service the servers' ports); a Gateway selecting other workloads is left to them.
#[tokio::test]
async fn an_istio_ingressgateway_gateway_gets_an_ingress() {
    use mesh_api::networking;
    use mesh_controller::waypoint::reconcile_istio_gateway;
    let istio_gateway = |name: &str, selector: serde_json::Value| {
        serde_json::json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "Gateway",
            "metadata": {"name": name, "namespace": "bookinfo", "uid": format!("uid-{name}")},
            "spec": {"selector": selector, "servers": [
                {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]},
                {"port": {"number": 443, "name": "https", "protocol": "HTTPS", "targetPort": 8443},
                 "hosts": ["*"], "tls": {"mode": "SIMPLE", "credentialName": "bookinfo-cert"}},
            ]}
        })
    };
    let client = kube_fake_client::ClientBuilder::new()
        .with_resource::<networking::Gateway>()
        .with_runtime_objects(vec![
            istio_gateway(
                "bookinfo-gateway",
                serde_json::json!({"istio": "ingressgateway"}),
            ),
            istio_gateway("elsewhere", serde_json::json!({"app": "my-own-gateway"})),
        ])
        .build()
        .await
        .unwrap();
    let gateways: Api<networking::Gateway> = Api::namespaced(client.clone(), "bookinfo");
    let gw = gateways.get("bookinfo-gateway").await.unwrap();
    assert_eq!(
        reconcile_istio_gateway(&client, &gw, &settings())
            .await
            .unwrap(),
        Outcome::Applied
    );
    let deployment = Api::<Deployment>::namespaced(client.clone(), "bookinfo")
        .get("bookinfo-gateway")
        .await
        .unwrap();
    let template = deployment.spec.unwrap().template;
    let labels = template.metadata.unwrap().labels.unwrap();
    assert_eq!(
        labels.get("istio").map(String::as_str),
        Some("ingressgateway")
    );
    let pod = template.spec.unwrap();
    let args = pod.containers[0].args.clone().unwrap();
    assert!(
        args.contains(&"--ingress-gateway=bookinfo/bookinfo-gateway".to_owned()),
        "{args:?}"
    );
    let listening: Vec<i32> = pod.containers[0]
        .ports
        .iter()
        .flatten()
        .map(|p| p.container_port)
        .collect();
    assert_eq!(listening, [80, 8443, 15020]);
    let service = Api::<Service>::namespaced(client.clone(), "bookinfo")
        .get("bookinfo-gateway")
        .await
        .unwrap()
        .spec
        .unwrap();
    assert_eq!(service.type_.as_deref(), Some("LoadBalancer"));
    let ports: Vec<i32> = service.ports.iter().flatten().map(|p| p.port).collect();
    // Its listeners only: the metrics port is not for the load balancer.
    assert_eq!(ports, [80, 443]);

    let elsewhere = gateways.get("elsewhere").await.unwrap();
    assert_eq!(
        reconcile_istio_gateway(&client, &elsewhere, &settings())
            .await
            .unwrap(),
        Outcome::Ignored
    );
    assert!(
        Api::<Deployment>::namespaced(client.clone(), "bookinfo")
            .get_opt("elsewhere")
            .await
            .unwrap()
            .is_none()
    );
}
