//! Kubernetes mode: a reflector (list, then watch, with backoff) per kind, on untyped objects
//! so that each is read on its own: an object our types reject is reported, the others apply.

use std::sync::Arc;

use futures_util::StreamExt as _;
use kube::{
    Client,
    api::{Api, ApiResource, DynamicObject, GroupVersionKind},
    runtime::{WatchStreamExt as _, reflector, watcher},
};
use tokio::sync::Notify;

use super::ConfigSource;
use crate::config::{ConfigSet, load};

/// (group, version, kind, plural) of everything the controller watches.
pub const WATCHED: &[(&str, &str, &str, &str)] = &[
    ("", "v1", "Namespace", "namespaces"),
    // Their topology labels are their pods' locality.
    ("", "v1", "Node", "nodes"),
    ("", "v1", "Pod", "pods"),
    ("", "v1", "Service", "services"),
    ("", "v1", "ServiceAccount", "serviceaccounts"),
    // Only those an Istio Gateway's `credentialName` names leave the controller.
    ("", "v1", "Secret", "secrets"),
    ("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
    (
        "networking.istio.io",
        "v1",
        "VirtualService",
        "virtualservices",
    ),
    (
        "networking.istio.io",
        "v1",
        "DestinationRule",
        "destinationrules",
    ),
    ("networking.istio.io", "v1", "Gateway", "gateways"),
    (
        "networking.istio.io",
        "v1",
        "ServiceEntry",
        "serviceentries",
    ),
    (
        "security.istio.io",
        "v1",
        "PeerAuthentication",
        "peerauthentications",
    ),
    (
        "security.istio.io",
        "v1",
        "AuthorizationPolicy",
        "authorizationpolicies",
    ),
    // Which classes are Ambit's (cluster-scoped).
    (
        "gateway.networking.k8s.io",
        "v1",
        "GatewayClass",
        "gatewayclasses",
    ),
    ("gateway.networking.k8s.io", "v1", "Gateway", "gateways"),
    ("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"),
];

/// Watch events of one kind, as `kube::runtime::watcher` yields them.
pub type EventStream =
    futures_util::stream::BoxStream<'static, watcher::Result<watcher::Event<DynamicObject>>>;

pub fn api_resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// Secrets that never hold a Gateway's certificate are not watched: Helm keeps whole
/// releases in Secrets, and the controller would hold and parse every one of them.
const SKIPPED_SECRETS: &str = "type!=helm.sh/release.v1,type!=kubernetes.io/service-account-token,type!=kubernetes.io/dockerconfigjson,type!=kubernetes.io/dockercfg,type!=bootstrap.kubernetes.io/token";

fn watch_config(kind: &str) -> watcher::Config {
    match kind {
        "Secret" => watcher::Config::default().fields(SKIPPED_SECRETS),
        _ => watcher::Config::default(),
    }
}

pub struct KubeSource {
    stores: Vec<(ApiResource, reflector::Store<DynamicObject>)>,
    notify: Arc<Notify>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl KubeSource {
    /// Starts watching every kind in [`WATCHED`].
    pub fn start(client: Client) -> Self {
        Self::start_with(client, |_| None)
    }

    /// As [`start`](Self::start), but `shim` may supply a kind's watch events itself (tests:
    /// a fake API server that cannot serve a kind, or watches at all).
    pub fn start_with(client: Client, shim: impl Fn(&ApiResource) -> Option<EventStream>) -> Self {
        let notify = Arc::new(Notify::new());
        let mut stores = Vec::new();
        let mut tasks = Vec::new();
        for (group, version, kind, plural) in WATCHED {
            let ar = api_resource(group, version, kind, plural);
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
            let writer = reflector::store::Writer::<DynamicObject>::new(ar.clone());
            stores.push((ar.clone(), writer.as_reader()));
            let events = shim(&ar).unwrap_or_else(|| watcher(api, watch_config(kind)).boxed());
            let events = reflector(writer, events).default_backoff();
            let notify = notify.clone();
            let what = format!("{}/{}", ar.api_version, ar.kind);
            tasks.push(tokio::spawn(async move {
                let mut events = std::pin::pin!(events);
                while let Some(event) = events.next().await {
                    match event {
                        Ok(_) => notify.notify_one(),
                        Err(error) => {
                            tracing::warn!(%error, kind = %what, "watch failed; retrying")
                        }
                    }
                }
            }));
        }
        KubeSource {
            stores,
            notify,
            tasks,
        }
    }

    /// The store of one kind (`Pod`, ...), read by other parts of the controller.
    pub fn store(&self, kind: &str) -> Option<reflector::Store<DynamicObject>> {
        self.stores
            .iter()
            .find(|(ar, _)| ar.kind == kind && ar.group.is_empty())
            .map(|(_, store)| store.clone())
    }

    /// Waits until every kind has been listed once.
    pub async fn ready(&self) {
        for (_, store) in &self.stores {
            let _ = store.wait_until_ready().await;
        }
    }
}

impl ConfigSource for KubeSource {
    fn snapshot(&mut self) -> (ConfigSet, Vec<load::LoadError>) {
        let mut set = ConfigSet::default();
        let mut errors = Vec::new();
        for (ar, store) in &self.stores {
            for object in store.state() {
                let mut value = match serde_yaml::to_value(&*object) {
                    Ok(value) => value,
                    Err(error) => {
                        tracing::warn!(%error, "an object that does not serialize");
                        continue;
                    }
                };
                // List items carry no type; the store knows it.
                if let Some(map) = value.as_mapping_mut() {
                    map.insert("apiVersion".into(), ar.api_version.clone().into());
                    map.insert("kind".into(), ar.kind.clone().into());
                }
                match load::parse_resource(value) {
                    Ok(resource) => {
                        set.insert(resource);
                    }
                    Err(message) => errors.push(load::LoadError {
                        file: "kubernetes".into(),
                        index: 0,
                        kind: ar.kind.clone(),
                        name: format!(
                            "{}/{}",
                            object.metadata.namespace.clone().unwrap_or_default(),
                            object.metadata.name.clone().unwrap_or_default()
                        ),
                        message,
                    }),
                }
            }
        }
        (set, errors)
    }

    async fn changed(&mut self) {
        self.notify.notified().await;
    }
}
