//! Waypoint lifecycle: for a Gateway of class `ambit-waypoint` the controller runs the
//! waypoint: a ServiceAccount (its identity), a Deployment of `mesh-waypoint`, and a Service on
//! the HBONE port, all owned by the Gateway. A Gateway of class `ambit` gets the same binary in
//! ingress mode, with a LoadBalancer Service on its listeners' ports. A finalizer makes the
//! controller remove them before the Gateway goes; owner references let Kubernetes collect them
//! too.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        core::v1::{
            Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar,
            EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec,
            PodTemplateSpec, Probe, ProjectedVolumeSource, SecurityContext, Service,
            ServiceAccount, ServiceAccountTokenProjection, ServicePort, ServiceSpec, Sysctl,
            Volume, VolumeMount, VolumeProjection,
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

use crate::resources::gateway_api::{Gateway, GatewayClass, GatewayRole};

pub const FINALIZER: &str = "ambit.io/waypoint";
const MANAGER: &str = "ambit-controller";
/// Labels the waypoint's objects carry (and its pods are selected by).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// Where the waypoint's pods find the mesh root: a ConfigMap in their own namespace (a pod
/// cannot mount one from another), published there by the reconciler.
pub const ROOT_CONFIG_MAP: &str = "ambit-ca-root";

/// What every waypoint Deployment runs with.
#[derive(Clone, Debug)]
pub struct WaypointSettings {
    /// The `mesh-waypoint` image.
    pub image: String,
    /// The controller's certificate and configuration services, `host:port`.
    pub ca_addr: String,
    /// The mesh root certificate (PEM).
    pub root_pem: String,
}

/// What reconciling did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not a waypoint or ingress Gateway.
    Ignored,
    /// The waypoint's objects exist as they should.
    Applied,
    /// The Gateway is going: its objects were removed and the finalizer released.
    Removed,
}

/// Brings the waypoint of `gateway` in line with it. Per service account: label the
/// ServiceAccount `ambit.io/use-waypoint: <gateway>` instead of the namespace.
pub async fn reconcile(
    client: &Client,
    gateway: &Gateway,
    settings: &WaypointSettings,
) -> Result<Outcome, kube::Error> {
    let class = Api::<GatewayClass>::all(client.clone())
        .get_opt(&gateway.spec.gateway_class_name)
        .await?;
    let Some(role) = gateway.spec.role(class.as_ref()) else {
        return Ok(Outcome::Ignored);
    };
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
    Api::<ConfigMap>::namespaced(client.clone(), &namespace)
        .patch(
            ROOT_CONFIG_MAP,
            &apply,
            &Patch::Apply(&root_config_map(&namespace, &settings.root_pem)),
        )
        .await?;
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
            &Patch::Apply(&deployment(gateway, role, &owner, settings)),
        )
        .await?;
    Api::<Service>::namespaced(client.clone(), &namespace)
        .patch(
            &name,
            &apply,
            &Patch::Apply(&service(gateway, role, &owner)),
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
    // Neither captured nor behind the namespace's waypoint: it is the proxy.
    [
        (GATEWAY_NAME_LABEL.to_owned(), name.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "ambit".to_owned(),
        ),
        ("ambit.io/dataplane-mode".to_owned(), "none".to_owned()),
        ("ambit.io/use-waypoint".to_owned(), "none".to_owned()),
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

/// The root certificate, shared by the namespace's waypoints (not owned by any one).
fn root_config_map(namespace: &str, root_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(ROOT_CONFIG_MAP.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        data: Some([("root-cert.pem".to_owned(), root_pem.to_owned())].into()),
        ..ConfigMap::default()
    }
}

/// The ports a Gateway's proxy serves: HBONE for a waypoint, the listeners for an ingress.
fn serving_ports(gateway: &Gateway, role: GatewayRole) -> Vec<(String, u16)> {
    match role == GatewayRole::Ingress {
        true => gateway
            .spec
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.port))
            .collect(),
        false => vec![("mesh".to_owned(), mesh_core::hbone::PORT)],
    }
}

/// The Deployment that runs a Gateway's proxy (public so that tests check it against the
/// API server's rules and run its pod template in a container runtime).
pub fn deployment(
    gateway: &Gateway,
    role: GatewayRole,
    owner: &OwnerReference,
    settings: &WaypointSettings,
) -> Deployment {
    let (name, namespace) = (
        &gateway.name_any(),
        &gateway.namespace().unwrap_or_default(),
    );
    let ingress = role == GatewayRole::Ingress;
    let mode = match ingress {
        true => format!("--ingress-gateway={namespace}/{name}"),
        false => format!("--waypoint={namespace}/{name}"),
    };
    let args = vec![
        mode,
        format!("--namespace={namespace}"),
        format!("--service-account={name}"),
        format!("--ca-addr={}", settings.ca_addr),
        "--ca-root=/var/run/ambit/root/root-cert.pem".to_owned(),
        "--token-file=/var/run/secrets/ambit/token".to_owned(),
    ];
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
                    node_selector: Some(
                        [("kubernetes.io/os".to_owned(), "linux".to_owned())].into(),
                    ),
                    containers: vec![Container {
                        name: "waypoint".to_owned(),
                        image: Some(settings.image.clone()),
                        args: Some(args),
                        // Its own pod, whose locality load balancing is relative to.
                        env: Some(vec![EnvVar {
                            name: "POD_NAME".to_owned(),
                            value_from: Some(EnvVarSource {
                                field_ref: Some(ObjectFieldSelector {
                                    field_path: "metadata.name".to_owned(),
                                    ..ObjectFieldSelector::default()
                                }),
                                ..EnvVarSource::default()
                            }),
                            ..EnvVar::default()
                        }]),
                        volume_mounts: Some(vec![
                            VolumeMount {
                                name: "token".to_owned(),
                                mount_path: "/var/run/secrets/ambit".to_owned(),
                                read_only: Some(true),
                                ..VolumeMount::default()
                            },
                            VolumeMount {
                                name: "root".to_owned(),
                                mount_path: "/var/run/ambit/root".to_owned(),
                                read_only: Some(true),
                                ..VolumeMount::default()
                            },
                        ]),
                        ports: Some(
                            serving_ports(gateway, role)
                                .into_iter()
                                .map(|(name, port)| ContainerPort {
                                    name: Some(name),
                                    container_port: i32::from(port),
                                    ..ContainerPort::default()
                                })
                                .collect(),
                        ),
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
                    volumes: Some(vec![
                        // Its own token, for the mesh's audience: the controller gives it its
                        // own identity only.
                        Volume {
                            name: "token".to_owned(),
                            projected: Some(ProjectedVolumeSource {
                                sources: Some(vec![VolumeProjection {
                                    service_account_token: Some(ServiceAccountTokenProjection {
                                        audience: Some("ambit".to_owned()),
                                        expiration_seconds: Some(3600),
                                        path: "token".to_owned(),
                                    }),
                                    ..VolumeProjection::default()
                                }]),
                                ..ProjectedVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        Volume {
                            name: "root".to_owned(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: ROOT_CONFIG_MAP.to_owned(),
                                ..ConfigMapVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                    ]),
                    // An ingress listens on 80 and 443 without privileges, as Istio's does.
                    security_context: ingress.then(|| PodSecurityContext {
                        sysctls: Some(vec![Sysctl {
                            name: "net.ipv4.ip_unprivileged_port_start".to_owned(),
                            value: "0".to_owned(),
                        }]),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// The waypoint's Service on HBONE, inside the cluster; an ingress's on its listeners'
/// ports, as a LoadBalancer for clients outside.
fn service(gateway: &Gateway, role: GatewayRole, owner: &OwnerReference) -> Service {
    let (name, namespace) = (
        &gateway.name_any(),
        &gateway.namespace().unwrap_or_default(),
    );
    let ingress = role == GatewayRole::Ingress;
    let ports = serving_ports(gateway, role)
        .into_iter()
        .map(|(port_name, port)| ServicePort {
            name: Some(port_name),
            port: i32::from(port),
            app_protocol: (!ingress).then(|| "hbone".to_owned()),
            ..ServicePort::default()
        })
        .collect();
    Service {
        metadata: meta(name, namespace, owner),
        spec: Some(ServiceSpec {
            selector: Some([(GATEWAY_NAME_LABEL.to_owned(), name.to_owned())].into()),
            ports: Some(ports),
            type_: ingress.then(|| "LoadBalancer".to_owned()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}
