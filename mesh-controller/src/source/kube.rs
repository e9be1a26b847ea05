//! Kubernetes mode: a reflector (list, then watch, with backoff) per kind, on untyped objects
//! so that each is read on its own: an object our types reject is reported, the others apply.
//!
//! Kinds from custom resources (Istio's, the Gateway API's) are watched only while the cluster
//! serves them, as discovery says: a cluster without the Gateway API still gets its
//! configuration, and when the CRDs appear later (or go) the kind is picked up (or dropped)
//! within [`PROBE_INTERVAL`]. A kind the cluster serves is always listed before anything is
//! published: a policy missing from a partial list would be lifted on every node. For the same
//! reason a kind's store lives as long as the controller: when its watch starts over, the
//! objects already known stay until the new list replaces them whole.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt as _;
use kube::{
    Client,
    api::{Api, ApiResource, DynamicObject, GroupVersionKind},
    runtime::{
        WatchStreamExt as _,
        reflector::{self, store::Writer},
        watcher,
    },
};
use tokio::sync::{Notify, watch};

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

/// How often discovery is asked again about a kind the cluster does not serve.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(10);

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

/// Where a kind stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KindState {
    /// Not known yet: discovery has not answered, or the first list is under way.
    Pending,
    /// The cluster does not serve it: there are none.
    NotServed,
    /// Listed, and watched since.
    Listed,
}

/// One watched kind: its store and state.
struct Watched {
    ar: ApiResource,
    store: reflector::Store<DynamicObject>,
    state: watch::Receiver<KindState>,
}

pub struct KubeSource {
    kinds: Vec<Watched>,
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
    /// Starts watching every kind in [`WATCHED`] that the cluster serves.
    pub fn start(client: Client) -> Self {
        Self::start_with(client, |_| None)
    }

    /// As [`start`](Self::start), but `shim` may supply a kind's watch events itself (tests:
    /// a fake API server that cannot serve a kind, or watches at all).
    pub fn start_with(
        client: Client,
        shim: impl Fn(&ApiResource) -> Option<EventStream> + Send + Sync + 'static,
    ) -> Self {
        Self::start_probing(client, shim, PROBE_INTERVAL)
    }

    /// As [`start_with`](Self::start_with), asking discovery about kinds the cluster does
    /// not serve every `probe_interval`.
    pub fn start_probing(
        client: Client,
        shim: impl Fn(&ApiResource) -> Option<EventStream> + Send + Sync + 'static,
        probe_interval: Duration,
    ) -> Self {
        let shim = Arc::new(shim);
        let notify = Arc::new(Notify::new());
        let mut kinds = Vec::new();
        let mut tasks = Vec::new();
        for (group, version, kind, plural) in WATCHED {
            let ar = api_resource(group, version, kind, plural);
            let writer = Writer::<DynamicObject>::new(ar.clone());
            let (state_tx, state) = watch::channel(KindState::Pending);
            kinds.push(Watched {
                ar: ar.clone(),
                store: writer.as_reader(),
                state,
            });
            let follower = Follower {
                client: client.clone(),
                ar,
                writer,
                probe_interval,
                state: state_tx,
                notify: notify.clone(),
            };
            let shim = shim.clone();
            tasks.push(tokio::spawn(async move {
                follower.run(move |ar| shim(ar)).await
            }));
        }
        KubeSource {
            kinds,
            notify,
            tasks,
        }
    }

    /// The store of one core kind (`Pod`, ...), read by other parts of the controller.
    pub fn store(&self, kind: &str) -> Option<reflector::Store<DynamicObject>> {
        self.kinds
            .iter()
            .find(|w| w.ar.kind == kind && w.ar.group.is_empty())
            .map(|w| w.store.clone())
    }

    /// Waits until every kind is either listed or known not to be served.
    pub async fn ready(&self) {
        for watched in &self.kinds {
            let mut state = watched.state.clone();
            let _ = state.wait_for(|s| *s != KindState::Pending).await;
        }
    }

    /// `(kind, state)` of every watched kind, for the readiness endpoint and the log.
    pub fn states(&self) -> Vec<(String, KindState)> {
        self.kinds
            .iter()
            .map(|w| {
                (
                    format!("{}/{}", w.ar.api_version, w.ar.kind),
                    *w.state.borrow(),
                )
            })
            .collect()
    }
}

/// Follows one kind for as long as the controller runs.
struct Follower {
    client: Client,
    ar: ApiResource,
    /// The kind's one store, across watches: a new list is buffered and swapped in whole.
    writer: Writer<DynamicObject>,
    probe_interval: Duration,
    state: watch::Sender<KindState>,
    notify: Arc<Notify>,
}

impl Follower {
    async fn run(mut self, shim: impl Fn(&ApiResource) -> Option<EventStream>) {
        let what = format!("{}/{}", self.ar.api_version, self.ar.kind);
        loop {
            let events = match shim(&self.ar) {
                Some(events) => events,
                None => match served(&self.client, &self.ar).await {
                    Ok(true) => {
                        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &self.ar);
                        watcher(api, watch_config(&self.ar.kind)).boxed()
                    }
                    Ok(false) => {
                        self.set(KindState::NotServed, &what);
                        tokio::time::sleep(self.probe_interval).await;
                        continue;
                    }
                    Err(error) => {
                        tracing::warn!(%error, kind = %what, "discovery failed; retrying");
                        tokio::time::sleep(self.probe_interval).await;
                        continue;
                    }
                },
            };
            self.set(KindState::Pending, &what);
            let mut events = std::pin::pin!(events.default_backoff());
            while let Some(event) = events.next().await {
                if let Ok(event) = &event {
                    self.writer.apply_watcher_event(event);
                }
                match event {
                    Ok(watcher::Event::InitDone) => {
                        self.set(KindState::Listed, &what);
                        self.notify.notify_one();
                    }
                    // A list under way is not published until it is whole.
                    Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                    Ok(_) => self.notify.notify_one(),
                    // Its CRD was deleted: ask discovery again.
                    Err(error) if gone(&error) => break,
                    Err(error) => tracing::warn!(%error, kind = %what, "watch failed; retrying"),
                }
            }
        }
    }

    fn set(&mut self, state: KindState, what: &str) {
        let changed = self.state.send_if_modified(|current| {
            let changed = *current != state;
            *current = state;
            changed
        });
        if !changed {
            return;
        }
        match state {
            KindState::NotServed => {
                // None exist: what was listed before the CRD went is dropped (an empty list).
                self.writer.apply_watcher_event(&watcher::Event::Init);
                self.writer.apply_watcher_event(&watcher::Event::InitDone);
                tracing::info!(kind = %what, "not served by this cluster; asking again every {:?}", self.probe_interval);
                self.notify.notify_one();
            }
            KindState::Listed => tracing::info!(kind = %what, "listed; watching"),
            KindState::Pending => {}
        }
    }
}

/// Whether the cluster serves `ar` (core kinds always are).
async fn served(client: &Client, ar: &ApiResource) -> Result<bool, kube::Error> {
    if ar.group.is_empty() {
        return Ok(true);
    }
    match client.list_api_group_resources(&ar.api_version).await {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == ar.plural)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(error) => Err(error),
    }
}

/// A watch error that means the kind is no longer served.
fn gone(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.code == 404,
        _ => false,
    }
}

impl ConfigSource for KubeSource {
    fn snapshot(&mut self) -> (ConfigSet, Vec<load::LoadError>) {
        let mut set = ConfigSet::default();
        let mut errors = Vec::new();
        for watched in &self.kinds {
            let ar = &watched.ar;
            for object in watched.store.state() {
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
