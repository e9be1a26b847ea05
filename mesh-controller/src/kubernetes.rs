//! Kubernetes mode: what the controller needs from the API server besides the watched
//! configuration (`source::kube`) and status (`source::status`).
//!
//! - the CA root, kept in a Secret so that every replica and every restart signs with the same
//!   root, and its certificate published in a ConfigMap the node DaemonSet mounts;
//! - node agents authenticated by their projected service-account token (a TokenReview for
//!   the `ambit` audience), whose pod binding names the node they run on; a node may only get
//!   identities of pods scheduled on it;
//! - the waypoint reconciler, run by `kube::runtime::Controller` on Gateways and the
//!   Deployments they own.

mod reviews;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures_util::{StreamExt as _, future::BoxFuture};
use k8s_openapi::{
    ByteString,
    api::{
        apps::v1::Deployment,
        authentication::v1::{TokenReview, TokenReviewSpec},
        authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
        core::v1::{ConfigMap, Secret},
    },
};
use kube::{
    Client,
    api::{Api, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{Controller, controller::Action, reflector::Store, watcher},
};
use mesh_core::Identity;

use crate::{
    ca::CertificateAuthority,
    ca_service::{Caller, NodeAuthorizer},
    waypoint,
};
use mesh_api::{gateway_api::Gateway, networking};

/// The Secret holding the CA root's certificate and key.
pub const CA_SECRET: &str = "ambit-ca";
/// The ConfigMap holding the root certificate for node agents.
pub const ROOT_CONFIG_MAP: &str = "ambit-ca-root";
pub const ROOT_CERT_KEY: &str = "root-cert.pem";
const ROOT_KEY_KEY: &str = "root-key.pem";
/// What a service-account token bound to a pod says about the pod's node (Kubernetes 1.30+).
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
const MANAGER: &str = "ambit-controller";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("Secret {namespace}/{CA_SECRET} lacks {key}: delete it to have a new root made")]
    IncompleteSecret {
        namespace: String,
        key: &'static str,
    },
    #[error(transparent)]
    Ca(#[from] crate::ca::Error),
}

/// The CA root from the Secret in `namespace`, made and stored there if there is none. When
/// two replicas race to create it, the loser reads the winner's.
pub async fn certificate_authority(
    client: &Client,
    namespace: &str,
    trust_domain: &str,
) -> Result<CertificateAuthority, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    loop {
        if let Some(secret) = secrets.get_opt(CA_SECRET).await? {
            let data = secret.data.unwrap_or_default();
            let text = |key: &'static str| {
                data.get(key)
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                    .ok_or_else(|| Error::IncompleteSecret {
                        namespace: namespace.to_owned(),
                        key,
                    })
            };
            let origin = format!("secret {namespace}/{CA_SECRET}");
            return Ok(CertificateAuthority::from_pem(
                text(ROOT_CERT_KEY)?,
                &text(ROOT_KEY_KEY)?,
                trust_domain,
                origin,
            )?);
        }
        let ca = CertificateAuthority::generate(trust_domain)?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(CA_SECRET.to_owned()),
                namespace: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([
                (ROOT_CERT_KEY.to_owned(), ByteString(ca.bundle_pem().into())),
                (
                    ROOT_KEY_KEY.to_owned(),
                    ByteString(ca.key_pem().into_bytes()),
                ),
            ])),
            type_: Some("Opaque".to_owned()),
            ..Secret::default()
        };
        match secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(%namespace, "created the mesh root in Secret {CA_SECRET}");
                return Ok(ca);
            }
            // Another replica made one first: use that.
            Err(kube::Error::Api(status)) if status.is_already_exists() => continue,
            Err(error) => return Err(error.into()),
        }
    }
}

/// Publishes the root certificate (not the key) where node agents mount it from.
pub async fn publish_root(client: &Client, namespace: &str, root_pem: &str) -> Result<(), Error> {
    let config_map = ConfigMap {
        metadata: ObjectMeta {
            name: Some(ROOT_CONFIG_MAP.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_owned(),
                "ambit".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            ROOT_CERT_KEY.to_owned(),
            root_pem.to_owned(),
        )])),
        ..ConfigMap::default()
    };
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    api.patch(
        ROOT_CONFIG_MAP,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&config_map),
    )
    .await?;
    Ok(())
}

/// Kubernetes: a token is accepted when the API server says it was issued for the `audience`.
/// The node agent's service account, bound to a pod, is that pod's node (certificates for the
/// pods there); any other service account (a waypoint's) is a workload that may have only
/// its own identity.
pub struct KubeAuthorizer {
    pub client: Client,
    /// `system:serviceaccount:<namespace>:<name>` of the node DaemonSet.
    pub node_account: String,
    /// The audience the node's projected token is made for.
    pub audience: String,
    /// The Pods the configuration source watches: who runs where.
    pub pods: Store<DynamicObject>,
    /// Recent TokenReview answers, and the cap on new reviews.
    pub reviews: reviews::Reviews<Caller>,
    /// Recent SubjectAccessReview answers (may a service account read its namespace's
    /// Secrets?), and the cap on new ones.
    pub access_reviews: reviews::Reviews<()>,
}

impl KubeAuthorizer {
    async fn review(&self, token: &str) -> Option<Caller> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = match api.create(&PostParams::default(), &review).await {
            Ok(answer) => answer,
            Err(error) => {
                tracing::warn!(%error, "TokenReview failed; refusing the node");
                return None;
            }
        };
        let status = answer.status?;
        if status.authenticated != Some(true) {
            tracing::warn!(error = ?status.error, "token not authenticated by the API server");
            return None;
        }
        if status
            .audiences
            .as_ref()
            .is_some_and(|a| !a.contains(&self.audience))
        {
            tracing::warn!(audiences = ?status.audiences, "token is not for the mesh's audience");
            return None;
        }
        let user = status.user?;
        let username = user.username.clone().unwrap_or_default();
        if username != self.node_account {
            let account = username.strip_prefix("system:serviceaccount:")?;
            let (namespace, service_account) = account.split_once(':')?;
            return Some(Caller::Workload {
                namespace: namespace.to_owned(),
                service_account: service_account.to_owned(),
            });
        }
        let node = user
            .extra
            .as_ref()
            .and_then(|extra| extra.get(NODE_NAME_EXTRA))
            .and_then(|values| values.first().cloned());
        if node.is_none() {
            tracing::warn!(
                "the node agent's token names no node: it must be a projected token bound to \
                 its pod (Kubernetes 1.30 or later)"
            );
        }
        node.map(Caller::Node)
    }
}

impl KubeAuthorizer {
    /// Whether the API server lets `namespace/service_account` get every Secret of its
    /// namespace (a Role granting it, as to a gateway the user deploys and binds themselves).
    /// A grant limited to some names is not enough: refused then, as when in doubt.
    async fn access_review(&self, namespace: &str, service_account: &str) -> Option<()> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(format!(
                    "system:serviceaccount:{namespace}:{service_account}"
                )),
                groups: Some(vec![
                    "system:serviceaccounts".to_owned(),
                    format!("system:serviceaccounts:{namespace}"),
                    "system:authenticated".to_owned(),
                ]),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(namespace.to_owned()),
                    verb: Some("get".to_owned()),
                    resource: Some("secrets".to_owned()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        match api.create(&PostParams::default(), &review).await {
            Ok(answer) => answer.status.filter(|s| s.allowed).map(|_| ()),
            Err(error) => {
                tracing::warn!(%error, "SubjectAccessReview failed; the gateway gets only its own Secrets");
                None
            }
        }
    }
}

impl NodeAuthorizer for KubeAuthorizer {
    fn caller_of<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Option<Caller>> {
        Box::pin(self.reviews.answer(token, || self.review(token)))
    }

    fn reads_secrets<'a>(
        &'a self,
        namespace: &'a str,
        service_account: &'a str,
    ) -> BoxFuture<'a, bool> {
        let question = format!("{namespace}/{service_account}");
        Box::pin(async move {
            self.access_reviews
                .answer(&question, || self.access_review(namespace, service_account))
                .await
                .is_some()
        })
    }

    fn may_issue(&self, node: &str, identity: &Identity) -> bool {
        self.pods.state().iter().any(|pod| {
            let spec = &pod.data["spec"];
            let account = spec["serviceAccountName"].as_str().unwrap_or("default");
            spec["nodeName"].as_str() == Some(node)
                && pod.metadata.namespace.as_deref() == Some(identity.namespace.as_str())
                && account == identity.service_account
        })
    }
}

/// The mesh-waypoint image beside the controller's own: the controller's container image with
/// `mesh-controller` replaced by `mesh-waypoint` (same registry, same tag), so that the images
/// deploy/kustomization.yaml names stay together. Falls back to the release's default name.
pub async fn waypoint_image_beside_own(
    client: &Client,
    namespace: &str,
    pod_name: Option<&str>,
) -> String {
    let fallback = format!(
        "ghcr.io/ambit-mesh/mesh-waypoint:{}",
        env!("CARGO_PKG_VERSION")
    );
    let Some(pod_name) = pod_name else {
        tracing::warn!("POD_NAME is not set: waypoints run {fallback}");
        return fallback;
    };
    let own = match Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), namespace)
        .get(pod_name)
        .await
    {
        Ok(pod) => pod
            .spec
            .and_then(|spec| spec.containers.into_iter().find_map(|c| c.image)),
        Err(error) => {
            tracing::warn!(%error, "reading the controller's own pod failed: waypoints run {fallback}");
            None
        }
    };
    own.and_then(|image| sibling_image(&image, "mesh-controller", "mesh-waypoint"))
        .unwrap_or(fallback)
}

/// `registry/path/<from>:tag` -> `registry/path/<to>:tag`; `None` when the image is not named
/// `<from>` or is pinned by digest (another image's digest cannot be derived).
pub fn sibling_image(image: &str, from: &str, to: &str) -> Option<String> {
    if image.contains('@') {
        return None;
    }
    let (path, name) = image.rsplit_once('/').unwrap_or(("", image));
    let (repository, tag) = match name.split_once(':') {
        Some((repository, tag)) => (repository, Some(tag)),
        None => (name, None),
    };
    if repository != from {
        return None;
    }
    let mut sibling = match path {
        "" => to.to_owned(),
        path => format!("{path}/{to}"),
    };
    if let Some(tag) = tag {
        sibling.push(':');
        sibling.push_str(tag);
    }
    Some(sibling)
}

/// Only the Deployments Ambit runs for Gateways: those are the ones a reconcile follows, and
/// the cluster's others need not be listed and decoded (twice: once per reconciler).
fn ambit_managed() -> watcher::Config {
    let (label, value) = waypoint::MANAGED_BY;
    watcher::Config::default().labels(&format!("{label}={value}"))
}

/// What the waypoint reconciler needs.
struct WaypointContext {
    client: Client,
    settings: waypoint::WaypointSettings,
}

/// Runs the proxy reconcilers until the process ends: every Gateway API Gateway and every
/// Istio Gateway (and every change to a Deployment one owns) is reconciled, and again every
/// five minutes. A kind the cluster does not serve yet is retried with backoff, so that
/// installing the Gateway API later needs no restart.
pub async fn run_waypoints(client: Client, settings: waypoint::WaypointSettings) {
    let context = Arc::new(WaypointContext { client, settings });
    let gateways = Controller::new(
        Api::<Gateway>::all(context.client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<Deployment>::all(context.client.clone()),
        ambit_managed(),
    )
    .run(reconcile_waypoint, waypoint_error, context.clone())
    .for_each(|result| async move {
        if let Err(error) = result {
            tracing::debug!(%error, "waypoint reconcile");
        }
    });
    let istio_gateways = Controller::new(
        Api::<networking::Gateway>::all(context.client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<Deployment>::all(context.client.clone()),
        ambit_managed(),
    )
    .run(reconcile_ingress, ingress_error, context)
    .for_each(|result| async move {
        if let Err(error) = result {
            tracing::debug!(%error, "ingress reconcile");
        }
    });
    futures_util::future::join(gateways, istio_gateways).await;
}

#[tracing::instrument(skip_all, fields(gateway = %kube::ResourceExt::name_any(&*gateway)))]
async fn reconcile_waypoint(
    gateway: Arc<Gateway>,
    context: Arc<WaypointContext>,
) -> Result<Action, kube::Error> {
    waypoint::reconcile(&context.client, &gateway, &context.settings).await?;
    Ok(Action::requeue(Duration::from_secs(300)))
}

fn waypoint_error(gateway: Arc<Gateway>, error: &kube::Error, _: Arc<WaypointContext>) -> Action {
    tracing::warn!(gateway = %kube::ResourceExt::name_any(&*gateway), %error,
        "waypoint not reconciled; retrying in 10 s");
    Action::requeue(Duration::from_secs(10))
}

#[tracing::instrument(skip_all, fields(gateway = %kube::ResourceExt::name_any(&*gateway)))]
async fn reconcile_ingress(
    gateway: Arc<networking::Gateway>,
    context: Arc<WaypointContext>,
) -> Result<Action, kube::Error> {
    waypoint::reconcile_istio_gateway(&context.client, &gateway, &context.settings).await?;
    Ok(Action::requeue(Duration::from_secs(300)))
}

fn ingress_error(
    gateway: Arc<networking::Gateway>,
    error: &kube::Error,
    _: Arc<WaypointContext>,
) -> Action {
    tracing::warn!(gateway = %kube::ResourceExt::name_any(&*gateway), %error,
        "ingress not reconciled; retrying in 10 s");
    Action::requeue(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::sibling_image;

    #[test]
    fn the_waypoint_image_sits_beside_the_controllers() {
        let sibling = |image| sibling_image(image, "mesh-controller", "mesh-waypoint");
        assert_eq!(
            sibling("ghcr.io/ambit-mesh/mesh-controller:0.1.0").as_deref(),
            Some("ghcr.io/ambit-mesh/mesh-waypoint:0.1.0")
        );
        assert_eq!(
            sibling("localhost:5000/team/mesh-controller:dev").as_deref(),
            Some("localhost:5000/team/mesh-waypoint:dev")
        );
        assert_eq!(sibling("mesh-controller").as_deref(), Some("mesh-waypoint"));
        assert_eq!(
            sibling("ghcr.io/ambit-mesh/mesh-controller@sha256:00"),
            None
        );
        assert_eq!(sibling("ghcr.io/other/controller:1"), None);
    }
}
