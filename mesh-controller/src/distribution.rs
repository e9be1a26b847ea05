//! The configuration each subscriber gets, as versioned deltas. The controller publishes the
//! complete desired set of resources after every (debounced) change; the distributor numbers
//! it, remembers which keys changed at which version, and answers "what changed since version
//! v" for each subscriber: a delta when it still remembers v, else a full snapshot.
//!
//! Subscribers take one update at a time: the next goes out when the previous is acknowledged,
//! and carries everything that changed since the last acknowledged version. A slow subscriber
//! therefore gets fewer, larger updates instead of a growing queue, and a refused (NACKed)
//! update is never built upon: the next one starts again from what the subscriber has.

pub mod service;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
};

use mesh_core::config_pb::{Resource, ResourceKey, Role, Update, resource::Body};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio::sync::watch;

/// A resource's identity in the stream: (kind, namespace, name).
pub type Key = (String, String, String);

pub fn key_of(resource: &Resource) -> Key {
    let k = resource.key.clone().unwrap_or_default();
    (k.kind, k.namespace, k.name)
}

/// Who a stream's updates are for: its role, and whose Secrets (Gateway certificates) it
/// may read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Audience {
    pub role: Role,
    pub secrets: SecretAccess,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretAccess {
    None,
    /// A gateway's own token: the Secrets its Gateways name, which list the gateway's service
    /// account among their readers (see `compile::credentials`); all of its namespace's when
    /// the API server lets the account read them (`reads_namespace`, a SubjectAccessReview).
    Gateway {
        namespace: String,
        service_account: String,
        reads_namespace: bool,
    },
    /// Local mode, where every proxy subscribes with its node's token on one machine.
    All,
}

impl Audience {
    /// Whether the subscriber gets `resource` (at `key`); with `None` (a removal), whether it
    /// may hold it: a removal of something it never had is harmless, a missed one is not.
    fn wants(&self, key: &Key, resource: Option<&Resource>) -> bool {
        let (kind, namespace, _) = key;
        match kind.as_str() {
            // Node agents never: they hold no Gateway, and a key is not theirs to carry.
            "Secret" => {
                self.role == Role::Waypoint
                    && match &self.secrets {
                        SecretAccess::None => false,
                        SecretAccess::All => true,
                        SecretAccess::Gateway {
                            namespace: own,
                            service_account,
                            reads_namespace,
                        } => {
                            own == namespace
                                && (*reads_namespace
                                    || resource.is_none_or(|r| match &r.body {
                                        Some(Body::Credential(c)) => {
                                            c.readers.contains(service_account)
                                        }
                                        _ => false,
                                    }))
                        }
                    }
            }
            kind => wanted(self.role, kind),
        }
    }
}

/// A role as status and metrics name it: `node`, `waypoint`.
pub fn role_name(role: Role) -> String {
    role.as_str_name().to_ascii_lowercase()
}

/// Which kinds a role receives (Secrets: see [`Audience`]).
pub fn wanted(role: Role, kind: &str) -> bool {
    match role {
        Role::Node => matches!(
            kind,
            "Workload" | "Service" | "Waypoint" | "PeerAuthentication" | "AuthorizationPolicy"
        ),
        Role::Waypoint => matches!(
            kind,
            "Workload"
                | "Service"
                | "Waypoint"
                | "ServiceEntry"
                | "VirtualService"
                | "HTTPRoute"
                | "DestinationRule"
                | "Gateway"
                | "AuthorizationPolicy"
        ),
        Role::Unspecified => false,
    }
}

/// A number no earlier run of the controller is likely to have used: random bits from the
/// standard library's per-process hasher keys, mixed with the start time.
fn new_epoch() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    hasher.write_u128(now.as_nanos());
    hasher.write_u32(std::process::id());
    // Never 0: that is what a subscriber with nothing sends.
    hasher.finish().max(1)
}

/// How many versions of changes are remembered for resuming subscribers.
const HISTORY: usize = 4096;

struct State {
    version: u64,
    resources: BTreeMap<Key, Arc<Resource>>,
    /// Keys changed (added, modified or removed) at each remembered version, and when it was
    /// published.
    changes: BTreeMap<u64, (Vec<Key>, std::time::Instant)>,
    subscribers: BTreeMap<u64, SubscriberStatus>,
    next_subscriber: u64,
}

/// What the controller knows of one connected subscriber (for `ambitctl status`).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct SubscriberStatus {
    pub node: String,
    pub role: String,
    /// The address it connected from: where its metrics are (`:15020`), for the mesh page.
    pub address: Option<std::net::IpAddr>,
    /// Its program and version, as it says (`mesh-node 0.1.0`).
    pub build: String,
    /// The last version it acknowledged.
    pub acked: u64,
    /// Its last refusal, if the latest update it answered was refused.
    pub nack: Option<Nack>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Nack {
    pub version: u64,
    pub error: String,
}

pub struct Distributor {
    /// This run's epoch: versions restart with every run, so a subscriber's version counts
    /// only with the epoch it came from (see `Update.epoch`).
    epoch: u64,
    state: Mutex<State>,
    version: watch::Sender<u64>,
    /// Whether a whole configuration was ever published (an empty one counts): what the
    /// controller's readiness waits for.
    published: watch::Sender<bool>,
    /// From a version's publication to each subscriber's acknowledgement of it, in seconds.
    pub pushes: Histogram,
}

impl Default for Distributor {
    fn default() -> Self {
        Distributor {
            epoch: new_epoch(),
            state: Mutex::new(State {
                version: 0,
                resources: BTreeMap::new(),
                changes: BTreeMap::new(),
                subscribers: BTreeMap::new(),
                next_subscriber: 0,
            }),
            version: watch::channel(0).0,
            published: watch::channel(false).0,
            // 1 ms to about 16 s.
            pushes: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
        }
    }
}

impl Distributor {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the desired configuration; returns the new version, or `None` when nothing
    /// changed (subscribers are not woken).
    pub fn publish(&self, desired: Vec<Resource>) -> Option<u64> {
        let version = self.replace(desired);
        // After the state: whoever sees it published reads this configuration.
        self.published
            .send_if_modified(|published| !std::mem::replace(published, true));
        version
    }

    fn replace(&self, desired: Vec<Resource>) -> Option<u64> {
        let desired: BTreeMap<Key, Resource> =
            desired.into_iter().map(|r| (key_of(&r), r)).collect();
        let mut state = self.state();
        // In place: only what changed is touched (a change to one pod of 10,000 is cheap).
        let gone: Vec<Key> = state
            .resources
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .collect();
        let mut changed = gone.clone();
        for key in &gone {
            state.resources.remove(key);
        }
        for (key, resource) in desired {
            if state
                .resources
                .get(&key)
                .is_none_or(|old| **old != resource)
            {
                changed.push(key.clone());
                state.resources.insert(key, Arc::new(resource));
            }
        }
        if changed.is_empty() {
            return None;
        }
        state.version += 1;
        let version = state.version;
        state
            .changes
            .insert(version, (changed, std::time::Instant::now()));
        while state.changes.len() > HISTORY {
            state.changes.pop_first();
        }
        drop(state);
        self.version.send_replace(version);
        Some(version)
    }

    /// Every published resource, in key order.
    pub fn resources(&self) -> Vec<Arc<Resource>> {
        self.state().resources.values().cloned().collect()
    }

    pub fn version(&self) -> u64 {
        self.state().version
    }

    /// Whether a whole configuration has been published since start.
    pub fn published(&self) -> bool {
        *self.published.borrow()
    }

    /// Returns once a whole configuration has been published.
    pub async fn wait_published(&self) {
        let _ = self.published.subscribe().wait_for(|p| *p).await;
    }

    pub fn watch(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The update that brings a subscriber at version `have` of `epoch` (0: nothing) to the
    /// current version; `None` when it is current. A version of another epoch (another run of
    /// the controller numbered it) gets a full snapshot.
    pub fn update_for(&self, audience: &Audience, epoch: u64, have: u64) -> Option<Update> {
        let state = self.state();
        let have = if epoch == self.epoch { have } else { 0 };
        if state.version == 0 || have == state.version {
            return None;
        }
        // A delta from `have` needs every change after it still remembered.
        let oldest_base = state.changes.keys().next().map_or(0, |first| first - 1);
        let full = have == 0 || have < oldest_base || have > state.version;
        if full {
            let upserts = state
                .resources
                .iter()
                .filter(|(k, r)| audience.wants(k, Some(r)))
                .map(|(_, r)| (**r).clone())
                .collect();
            return Some(Update {
                version: state.version,
                base_version: 0,
                upserts,
                removes: Vec::new(),
                epoch: self.epoch,
            });
        }
        let keys: BTreeSet<&Key> = state
            .changes
            .range(have + 1..)
            .flat_map(|(_, (keys, _))| keys)
            .collect();
        let mut update = Update {
            version: state.version,
            base_version: have,
            upserts: Vec::new(),
            removes: Vec::new(),
            epoch: self.epoch,
        };
        // What the subscriber no longer gets is removed: gone, or no longer for it (a Secret
        // its Gateway stopped naming). Changes that concern other roles only leave an empty
        // delta, which moves the subscriber forward so its acknowledged version stays
        // meaningful.
        for key in keys {
            match state.resources.get(key) {
                Some(resource) if audience.wants(key, Some(resource)) => {
                    update.upserts.push((**resource).clone());
                }
                _ if audience.wants(key, None) => update.removes.push(ResourceKey {
                    kind: key.0.clone(),
                    namespace: key.1.clone(),
                    name: key.2.clone(),
                }),
                _ => {}
            }
        }
        Some(update)
    }

    fn register(
        &self,
        node: &str,
        role: Role,
        build: &str,
        address: Option<std::net::IpAddr>,
    ) -> u64 {
        let mut state = self.state();
        state.next_subscriber += 1;
        let id = state.next_subscriber;
        state.subscribers.insert(
            id,
            SubscriberStatus {
                node: node.to_owned(),
                role: role_name(role),
                build: build.to_owned(),
                address,
                ..SubscriberStatus::default()
            },
        );
        id
    }

    /// A subscriber acknowledged `version`, sent to it at `sent`: how long after the
    /// version's publication, or after the send for a subscriber that (re)connected later
    /// (its wait began then, not hours ago).
    fn acknowledged(&self, version: u64, sent: std::time::Instant) {
        let published = self.state().changes.get(&version).map(|(_, at)| *at);
        if let Some(at) = published {
            self.pushes.observe(at.max(sent).elapsed().as_secs_f64());
        }
    }

    fn set_status(&self, id: u64, update: impl FnOnce(&mut SubscriberStatus)) {
        if let Some(status) = self.state().subscribers.get_mut(&id) {
            update(status);
        }
    }

    fn unregister(&self, id: u64) {
        self.state().subscribers.remove(&id);
    }

    /// Connected subscribers and what they have acknowledged or refused.
    pub fn subscribers(&self) -> Vec<SubscriberStatus> {
        self.state().subscribers.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_go_only_to_the_gateways_that_name_them() {
        let key = |kind: &str, ns: &str| (kind.to_owned(), ns.to_owned(), "x".to_owned());
        let secret_key = key("Secret", "istio-system");
        let secret = Resource {
            body: Some(Body::Credential(mesh_core::config_pb::TlsCredential {
                readers: vec!["ingress".to_owned()],
                ..Default::default()
            })),
            ..Default::default()
        };
        let audience = |role, secrets| Audience { role, secrets };
        let as_gateway = |namespace: &str, service_account: &str| {
            audience(
                Role::Waypoint,
                SecretAccess::Gateway {
                    namespace: namespace.to_owned(),
                    service_account: service_account.to_owned(),
                    reads_namespace: false,
                },
            )
        };
        let namespace_reader = audience(
            Role::Waypoint,
            SecretAccess::Gateway {
                namespace: "istio-system".to_owned(),
                service_account: "custom-gateway".to_owned(),
                reads_namespace: true,
            },
        );
        assert!(
            namespace_reader.wants(&secret_key, Some(&secret)),
            "allowed by the API server to read its namespace's Secrets"
        );
        assert!(
            !namespace_reader.wants(&key("Secret", "shop"), Some(&secret)),
            "but not another namespace's"
        );
        let ingress = as_gateway("istio-system", "ingress");
        assert!(ingress.wants(&secret_key, Some(&secret)));
        assert!(
            !as_gateway("istio-system", "another-pod").wants(&secret_key, Some(&secret)),
            "another identity of the same namespace"
        );
        assert!(
            !as_gateway("shop", "ingress").wants(&key("Secret", "istio-system"), Some(&secret)),
            "another namespace's"
        );
        assert!(ingress.wants(&key("Gateway", "shop"), None));
        assert!(!audience(Role::Waypoint, SecretAccess::None).wants(&secret_key, Some(&secret)));
        assert!(audience(Role::Waypoint, SecretAccess::All).wants(&secret_key, Some(&secret)));
        assert!(
            !audience(Role::Node, SecretAccess::All).wants(&secret_key, Some(&secret)),
            "never a node agent"
        );
    }
}
