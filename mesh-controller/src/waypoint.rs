//! Waypoint lifecycle: for a Gateway of class `ambit-waypoint` the controller runs the
//! waypoint: a ServiceAccount (its identity), a Deployment of `mesh-waypoint`, and a Service on
//! the HBONE port, all owned by the Gateway. A finalizer makes the controller remove them
//! before the Gateway goes; owner references let Kubernetes collect them too.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        core::v1::{
            Capabilities, Container, ContainerPort, HTTPGetAction, PodSpec, PodTemplateSpec, Probe,
            SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec,
        },
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, OwnerReference},
        util::intstr::IntOrString,
    },
};
use kube::{
    Client, Resource as _, ResourceExt as _,
    api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams},
};

use crate::resources::gateway_api::{Gateway, WAYPOINT_CLASS};

pub const FINALIZER: &str = "ambit.io/waypoint";
const MANAGER: &str = "ambit-controller";
/// Labels the waypoint's objects carry (and its pods are selected by).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// Annotation that scopes a waypoint to one service account instead of the whole namespace.
pub const FOR_SERVICE_ACCOUNT: &str = "ambit.io/for-service-account";

/// What reconciling did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not a waypoint Gateway.
    Ignored,
    /// The waypoint's objects exist as they should.
    Applied,
    /// The Gateway is going: its objects were removed and the finalizer released.
    Removed,
}

/// Brings the waypoint of `gateway` in line with it.
pub async fn reconcile(
    client: &Client,
    gateway: &Gateway,
    image: &str,
) -> Result<Outcome, kube::Error> {
    if gateway.spec.gateway_class_name != WAYPOINT_CLASS {
        return Ok(Outcome::Ignored);
    }
    let namespace = gateway.namespace().unwrap_or_default();
    let name = gateway.name_any();
    let gateways: Api<Gateway> = Api::namespaced(client.clone(), &namespace);
    if gateway.meta().deletion_timestamp.is_some() {
        remove(client, &namespace, &name).await?;
        let finalizers: Vec<String> = gateway
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect();
        let patch = serde_json::json!({"metadata": {"finalizers": finalizers}});
        gateways
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        tracing::info!(gateway = %format!("{namespace}/{name}"), "waypoint removed");
        return Ok(Outcome::Removed);
    }
    if !gateway.finalizers().iter().any(|f| f == FINALIZER) {
        let mut finalizers = gateway.finalizers().to_vec();
        finalizers.push(FINALIZER.to_owned());
        let patch = serde_json::json!({"metadata": {"finalizers": finalizers}});
        gateways
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let owner = gateway
        .controller_owner_ref(&())
        .expect("a Gateway read from the API has a uid");
    let apply = PatchParams::apply(MANAGER).force();
    let scope = gateway.annotations().get(FOR_SERVICE_ACCOUNT).cloned();
    Api::<ServiceAccount>::namespaced(client.clone(), &namespace)
        .patch(
            &name,
            &apply,
            &Patch::Apply(&service_account(&name, &namespace, &owner)),
        )
        .await?;
    Api::<Deployment>::namespaced(client.clone(), &namespace)
        .patch(
            &name,
            &apply,
            &Patch::Apply(&deployment(
                &name,
                &namespace,
                &owner,
                image,
                scope.as_deref(),
            )),
        )
        .await?;
    Api::<Service>::namespaced(client.clone(), &namespace)
        .patch(
            &name,
            &apply,
            &Patch::Apply(&service(&name, &namespace, &owner)),
        )
        .await?;
    Ok(Outcome::Applied)
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

fn labels(name: &str) -> BTreeMap<String, String> {
    [
        (GATEWAY_NAME_LABEL.to_owned(), name.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "ambit".to_owned(),
        ),
        // The waypoint itself is never captured.
        ("ambit.io/dataplane-mode".to_owned(), "none".to_owned()),
    ]
    .into()
}

fn meta(name: &str, namespace: &str, owner: &OwnerReference) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(labels(name)),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    }
}

fn service_account(name: &str, namespace: &str, owner: &OwnerReference) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(name, namespace, owner),
        ..ServiceAccount::default()
    }
}

fn deployment(
    name: &str,
    namespace: &str,
    owner: &OwnerReference,
    image: &str,
    service_account_scope: Option<&str>,
) -> Deployment {
    let mut args = vec![format!("--name={name}"), format!("--namespace={namespace}")];
    args.extend(service_account_scope.map(|sa| format!("--for-service-account={sa}")));
    Deployment {
        metadata: meta(name, namespace, owner),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some([(GATEWAY_NAME_LABEL.to_owned(), name.to_owned())].into()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(name)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(name.to_owned()),
                    containers: vec![Container {
                        name: "waypoint".to_owned(),
                        image: Some(image.to_owned()),
                        args: Some(args),
                        ports: Some(vec![ContainerPort {
                            name: Some("mesh".to_owned()),
                            container_port: i32::from(mesh_core::hbone::PORT),
                            ..ContainerPort::default()
                        }]),
                        readiness_probe: Some(Probe {
                            http_get: Some(HTTPGetAction {
                                path: Some("/healthz/ready".to_owned()),
                                port: IntOrString::Int(15021),
                                ..HTTPGetAction::default()
                            }),
                            ..Probe::default()
                        }),
                        security_context: Some(SecurityContext {
                            allow_privilege_escalation: Some(false),
                            read_only_root_filesystem: Some(true),
                            run_as_non_root: Some(true),
                            capabilities: Some(Capabilities {
                                drop: Some(vec!["ALL".to_owned()]),
                                ..Capabilities::default()
                            }),
                            ..SecurityContext::default()
                        }),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

fn service(name: &str, namespace: &str, owner: &OwnerReference) -> Service {
    Service {
        metadata: meta(name, namespace, owner),
        spec: Some(ServiceSpec {
            selector: Some([(GATEWAY_NAME_LABEL.to_owned(), name.to_owned())].into()),
            ports: Some(vec![ServicePort {
                name: Some("mesh".to_owned()),
                port: i32::from(mesh_core::hbone::PORT),
                app_protocol: Some("hbone".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}
