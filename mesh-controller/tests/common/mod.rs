//! What the fake-API-server tests share: a kube-fake-client with Ambit's kinds registered,
//! and the watch shim for what the fake cannot list (cluster-scoped Namespaces).

// Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

use futures_util::StreamExt as _;
use kube::{api::DynamicObject, runtime::watcher::Event};
use mesh_api::{gateway_api, http_route, networking, security};
use mesh_controller::source::kube::EventStream;

/// Multi-document YAML as JSON objects.
pub fn objects(yaml: &str) -> Vec<serde_json::Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .collect()
}

/// A fake API server holding `objects` (Namespaces excepted: see [`namespaces_shim`]), with
/// every kind Ambit watches registered and served (discovery included), and a status
/// subresource for the Istio kinds.
pub async fn fake_client(objects: &[serde_json::Value]) -> kube::Client {
    let served = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    fake_client_with(objects, served).await
}

/// As [`fake_client`], serving the Gateway API group only while `gateway_api` is set (its
/// CRDs installed); discovery and lists of it answer 404 otherwise.
pub async fn fake_client_with(
    objects: &[serde_json::Value],
    gateway_api: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> kube::Client {
    let fake = fake_backend(objects).await;
    intercepting(fake, move |method, path| {
        let gateway_api_served = gateway_api.load(std::sync::atomic::Ordering::SeqCst);
        if path.starts_with("/apis/gateway.networking.k8s.io/") && !gateway_api_served {
            return not_found(path);
        }
        let resources: &[&str] = match path {
            "/apis/networking.istio.io/v1" => &[
                "virtualservices",
                "destinationrules",
                "gateways",
                "serviceentries",
            ],
            "/apis/security.istio.io/v1" => &["peerauthentications", "authorizationpolicies"],
            "/apis/gateway.networking.k8s.io/v1" => &["gatewayclasses", "gateways", "httproutes"],
            "/apis/discovery.k8s.io/v1" => &["endpointslices"],
            _ => return None,
        };
        (method == http::Method::GET).then(|| {
            let (_, group_version) = path.split_at("/apis/".len());
            let resources: Vec<serde_json::Value> = resources
                .iter()
                .map(|name| {
                    serde_json::json!({"name": name, "singularName": "", "namespaced": true,
                        "kind": "", "verbs": ["get", "list", "watch"]})
                })
                .collect();
            (
                200,
                serde_json::json!({"kind": "APIResourceList", "apiVersion": "v1",
                    "groupVersion": group_version, "resources": resources}),
            )
        })
    })
}

async fn fake_backend(objects: &[serde_json::Value]) -> kube::Client {
    let seeded: Vec<serde_json::Value> = objects
        .iter()
        .filter(|o| o["kind"] != "Namespace" && o["kind"] != "Node")
        .cloned()
        .collect();
    kube_fake_client::ClientBuilder::new()
        .with_resource::<networking::VirtualService>()
        .with_status_subresource::<networking::VirtualService>()
        .with_resource::<networking::DestinationRule>()
        .with_status_subresource::<networking::DestinationRule>()
        .with_resource::<networking::Gateway>()
        .with_resource::<networking::ServiceEntry>()
        .with_resource::<security::PeerAuthentication>()
        .with_resource::<security::AuthorizationPolicy>()
        .with_resource::<gateway_api::GatewayClass>()
        .with_resource::<gateway_api::Gateway>()
        .with_resource::<http_route::HTTPRoute>()
        .with_status_subresource::<http_route::HTTPRoute>()
        .with_runtime_objects(seeded)
        .build()
        .await
        .unwrap()
}

/// The fake cannot list cluster-scoped kinds: this plays the watch of Namespaces and Nodes
/// (the initial list of those among `objects`, then nothing).
pub fn namespaces_shim(
    objects: &[serde_json::Value],
) -> impl Fn(&kube::api::ApiResource) -> Option<EventStream> + use<> {
    let cluster_scoped: Vec<DynamicObject> = objects
        .iter()
        .filter(|o| o["kind"] == "Namespace" || o["kind"] == "Node")
        .map(|o| serde_json::from_value(o.clone()).unwrap())
        .collect();
    move |ar| {
        (ar.kind == "Namespace" || ar.kind == "Node").then(|| {
            let of_kind = cluster_scoped
                .iter()
                .filter(|o| o.types.as_ref().is_some_and(|t| t.kind == ar.kind));
            let mut events = vec![Ok(Event::Init)];
            events.extend(of_kind.cloned().map(|n| Ok(Event::InitApply(n))));
            events.push(Ok(Event::InitDone));
            futures_util::stream::iter(events)
                .chain(futures_util::stream::pending())
                .boxed()
        })
    }
}

/// What a scripted API server answers: status code and JSON body, or `None` to pass the
/// request on.
pub type Answer = Option<(u16, serde_json::Value)>;

/// A client whose requests `answer` may answer itself (what kube-fake-client cannot serve:
/// cluster-scoped custom resources, discovery); the rest go to `inner`.
pub fn intercepting(
    inner: kube::Client,
    answer: impl Fn(&http::Method, &str) -> Answer + Clone + Send + Sync + 'static,
) -> kube::Client {
    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full};
    let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
        let (inner, answer) = (inner.clone(), answer.clone());
        async move {
            let path = request.uri().path().to_owned();
            if let Some((code, body)) = answer(request.method(), &path) {
                let mut response =
                    http::Response::new(Full::new(Bytes::from(serde_json::to_vec(&body)?)));
                *response.status_mut() = http::StatusCode::from_u16(code)?;
                return Ok::<_, Box<dyn std::error::Error + Send + Sync>>(response);
            }
            let response = inner.send(request).await?;
            let (parts, body) = response.into_parts();
            let bytes = body.collect().await?.to_bytes();
            Ok(http::Response::from_parts(parts, Full::new(bytes)))
        }
    });
    kube::Client::new(service, "default")
}

/// A Kubernetes `Status` answer for a missing object.
pub fn not_found(what: &str) -> Answer {
    Some((
        404,
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": format!("{what} not found"), "reason": "NotFound", "code": 404}),
    ))
}
