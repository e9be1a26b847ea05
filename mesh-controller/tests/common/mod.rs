//! What the fake-API-server tests share: a kube-fake-client with Ambit's kinds registered,
//! and the watch shim for what the fake cannot list (cluster-scoped Namespaces).

use futures_util::StreamExt as _;
use kube::{api::DynamicObject, runtime::watcher::Event};
use mesh_controller::{
    resources::{gateway_api, http_route, networking, security},
    source::kube::EventStream,
};

/// Multi-document YAML as JSON objects.
pub fn objects(yaml: &str) -> Vec<serde_json::Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .collect()
}

/// A fake API server holding `objects` (Namespaces excepted: see [`namespaces_shim`]), with
/// every kind Ambit watches registered and a status subresource for the Istio kinds.
pub async fn fake_client(objects: &[serde_json::Value]) -> kube::Client {
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
