//! Gateway lifecycle: for a Gateway API Gateway of a waypoint class (`ambit-waypoint`, or
//! Istio's `istio-waypoint`) the controller runs the waypoint: a ServiceAccount (its
//! identity), a Deployment of `mesh-waypoint`, and a Service on the HBONE port, all owned by
//! the Gateway. A Gateway of an ingress class (`ambit`, Istio's `istio`), and an Istio
//! `Gateway` whose selector is `istio: ingressgateway` (the ingress of Istio's tutorials), get
//! the same binary in ingress mode, with a LoadBalancer Service on their ports. A finalizer
//! makes the controller remove them before the Gateway goes; owner references let Kubernetes
//! collect them too.
//!
//! # Layout
//! - here: reconciling a Gateway with what runs for it;
//! - `workload`: the objects that run a proxy.

pub mod workload;

use std::{collections::BTreeMap, fmt::Debug};

use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Service, ServiceAccount},
    },
};
use kube::{
    Client, Resource, ResourceExt as _,
    api::{Api, DeleteParams, Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};

pub use self::workload::Proxy;
use mesh_api::{
    gateway_api::{Gateway, GatewayClass, GatewayRole},
    networking,
};

pub const FINALIZER: &str = "ambit.io/waypoint";
const MANAGER: &str = "ambit-controller";
/// The label, and its value, on every object the reconcilers make.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "ambit");
/// Labels the proxy's objects carry (and its pods are selected by).
pub use mesh_core::labels::GATEWAY_NAME as GATEWAY_NAME_LABEL;

/// The service account a Gateway's proxies run as: the ServiceAccount the controller makes for
/// it, named as the Gateway. It is also what the stream publishes as a waypoint's identity and
/// as the reader of the Gateway's Secrets, so it is decided here only.
pub fn proxy_service_account(gateway_name: &str) -> String {
    gateway_name.to_owned()
}
/// Where the proxy's pods find the mesh root: a ConfigMap in their own namespace (a pod
/// cannot mount one from another), published there by the reconciler.
pub const ROOT_CONFIG_MAP: &str = "ambit-ca-root";
/// The selector of the ingress gateway Istio's tutorials bind their Gateways to.
pub const ISTIO_INGRESS_SELECTOR: (&str, &str) = ("istio", "ingressgateway");

/// What every proxy Deployment runs with.
#[derive(Clone, Debug)]
pub struct WaypointSettings {
    /// The `mesh-waypoint` image.
    pub image: String,
    /// The controller's certificate and configuration services, `host:port`.
    pub ca_addr: String,
    /// The mesh root certificate (PEM).
    pub root_pem: String,
    /// Where the proxies send spans, as environment of their container
    /// (`AMBIT_OTLP_ENDPOINT`, `AMBIT_ZIPKIN_ENDPOINT`, `AMBIT_TRACE_SAMPLING`).
    pub tracing: Vec<(String, String)>,
}

/// What reconciling did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not a Gateway Ambit runs a proxy for.
    Ignored,
    /// The proxy's objects exist as they should.
    Applied,
    /// The Gateway is going: its objects were removed and the finalizer released.
    Removed,
}

/// Brings the proxy of a Gateway API `gateway` in line with it. Per service account: label
/// the ServiceAccount `ambit.io/use-waypoint: <gateway>` instead of the namespace.
pub async fn reconcile(
    client: &Client,
    gateway: &Gateway,
    settings: &WaypointSettings,
) -> Result<Outcome, kube::Error> {
    let class_name = &gateway.spec.gateway_class_name;
    // Only a class Ambit serves is worth reading: whether the cluster gives it to another
    // controller. Other controllers' Gateways cost no request.
    let role = match GatewayRole::of(class_name, None) {
        Some(_) => {
            let class = Api::<GatewayClass>::all(client.clone())
                .get_opt(class_name)
                .await?;
            gateway.spec.role(class.as_ref())
        }
        None => None,
    };
    let proxy = role.map(|role| Proxy::of_gateway(gateway, role));
    reconcile_proxy(client, gateway, proxy, settings).await
}

/// Brings the ingress of an Istio `gateway` in line with it: one runs for a Gateway whose
/// selector is `istio: ingressgateway`; others select workloads of their own.
pub async fn reconcile_istio_gateway(
    client: &Client,
    gateway: &networking::Gateway,
    settings: &WaypointSettings,
) -> Result<Outcome, kube::Error> {
    let (key, value) = ISTIO_INGRESS_SELECTOR;
    let ours = gateway.spec.selector == BTreeMap::from([(key.to_owned(), value.to_owned())]);
    let proxy = ours.then(|| Proxy::of_istio_gateway(gateway));
    reconcile_proxy(client, gateway, proxy, settings).await
}

async fn reconcile_proxy<K>(
    client: &Client,
    owner: &K,
    proxy: Option<Proxy>,
    settings: &WaypointSettings,
) -> Result<Outcome, kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let namespace = owner.namespace().unwrap_or_default();
    let name = owner.name_any();
    let owners: Api<K> = Api::namespaced(client.clone(), &namespace);
    let has_finalizer = owner.finalizers().iter().any(|f| f == FINALIZER);
    let Some(proxy) = proxy else {
        // Not ours (any more): what we ran for it goes, and so does our finalizer.
        if has_finalizer {
            remove(client, &namespace, &name).await?;
            release(&owners, owner).await?;
        }
        return Ok(Outcome::Ignored);
    };
    if owner.meta().deletion_timestamp.is_some() {
        remove(client, &namespace, &name).await?;
        release(&owners, owner).await?;
        tracing::info!(gateway = %format!("{namespace}/{name}"), "proxy removed");
        return Ok(Outcome::Removed);
    }
    if !has_finalizer {
        let mut finalizers = owner.finalizers().to_vec();
        finalizers.push(FINALIZER.to_owned());
        let patch = serde_json::json!({"metadata": {"finalizers": finalizers}});
        owners
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let apply = PatchParams::apply(MANAGER).force();
    Api::<ConfigMap>::namespaced(client.clone(), &namespace)
        .patch(
            ROOT_CONFIG_MAP,
            &apply,
            &Patch::Apply(&workload::root_config_map(&namespace, &settings.root_pem)),
        )
        .await?;
    Api::<ServiceAccount>::namespaced(client.clone(), &namespace)
        .patch(&name, &apply, &Patch::Apply(&proxy.service_account()))
        .await?;
    Api::<Deployment>::namespaced(client.clone(), &namespace)
        .patch(&name, &apply, &Patch::Apply(&proxy.deployment(settings)))
        .await?;
    Api::<Service>::namespaced(client.clone(), &namespace)
        .patch(&name, &apply, &Patch::Apply(&proxy.service()))
        .await?;
    Ok(Outcome::Applied)
}

/// Takes Ambit's finalizer off a Gateway.
async fn release<K>(owners: &Api<K>, owner: &K) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned,
{
    let finalizers: Vec<String> = owner
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    let patch = serde_json::json!({"metadata": {"finalizers": finalizers}});
    owners
        .patch(
            &owner.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

async fn remove(client: &Client, namespace: &str, name: &str) -> Result<(), kube::Error> {
    let gone = |result: Result<_, kube::Error>| match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    };
    let dp = DeleteParams::default();
    gone(
        Api::<Deployment>::namespaced(client.clone(), namespace)
            .delete(name, &dp)
            .await
            .map(|_| ()),
    )?;
    gone(
        Api::<Service>::namespaced(client.clone(), namespace)
            .delete(name, &dp)
            .await
            .map(|_| ()),
    )?;
    gone(
        Api::<ServiceAccount>::namespaced(client.clone(), namespace)
            .delete(name, &dp)
            .await
            .map(|_| ()),
    )
}
