//! The objects that run a Gateway's proxy: a ServiceAccount (its identity), a Deployment of
//! `mesh-waypoint` (waypoint or ingress mode), and a Service, all owned by the Gateway; and
//! the root certificate's ConfigMap its pods mount.

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
use kube::{Resource as _, ResourceExt as _, api::ObjectMeta};
use mesh_core::labels;

use super::{GATEWAY_NAME_LABEL, MANAGED_BY, ROOT_CONFIG_MAP, WaypointSettings};
use mesh_api::{
    gateway_api::{Gateway, GatewayRole},
    networking,
};

/// What runs for one Gateway.
#[derive(Clone, Debug)]
pub struct Proxy {
    /// The Gateway's name, which its Deployment, Service and ServiceAccount share.
    pub name: String,
    pub namespace: String,
    pub role: GatewayRole,
    /// Its Gateway's class, for policies that target the class.
    pub class: Option<String>,
    pub ports: Vec<ServingPort>,
    /// Labels its pods carry beyond Ambit's own (an Istio Gateway's selector, so that the
    /// Gateway selects the pods that serve it).
    pub pod_labels: BTreeMap<String, String>,
    pub owner: OwnerReference,
}

/// A port the proxy serves: the Service's port and the one the pod listens on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServingPort {
    pub name: String,
    pub port: u16,
    pub target_port: u16,
}

impl Proxy {
    /// A Gateway API Gateway's proxy: HBONE for a waypoint, the listeners for an ingress.
    pub fn of_gateway(gateway: &Gateway, role: GatewayRole) -> Self {
        let (name, namespace) = (gateway.name_any(), gateway.namespace().unwrap_or_default());
        let ports = match role {
            GatewayRole::Ingress => gateway
                .spec
                .listeners
                .iter()
                .map(|l| ServingPort {
                    name: l.name.clone(),
                    port: l.port,
                    target_port: l.port,
                })
                .collect(),
            GatewayRole::Waypoint => vec![ServingPort {
                name: "mesh".to_owned(),
                port: mesh_core::hbone::PORT,
                target_port: mesh_core::hbone::PORT,
            }],
        };
        Proxy {
            owner: gateway
                .controller_owner_ref(&())
                .expect("a Gateway read from the API has a uid"),
            class: Some(gateway.spec.gateway_class_name.clone()),
            name,
            namespace,
            role,
            ports,
            pod_labels: BTreeMap::new(),
        }
    }

    /// An Istio Gateway's ingress: its servers' ports (each served on its `targetPort`,
    /// else its number), and pods labelled with its selector.
    pub fn of_istio_gateway(gateway: &networking::Gateway) -> Self {
        let (name, namespace) = (gateway.name_any(), gateway.namespace().unwrap_or_default());
        let mut ports: Vec<ServingPort> = Vec::new();
        for server in &gateway.spec.servers {
            let (Ok(port), Ok(target_port)) = (
                u16::try_from(server.port.number),
                u16::try_from(server.port.target_port.unwrap_or(server.port.number)),
            ) else {
                continue;
            };
            if ports.iter().any(|p| p.port == port) {
                continue;
            }
            let name = server
                .port
                .name
                .clone()
                .unwrap_or_else(|| format!("port-{port}"));
            ports.push(ServingPort {
                name,
                port,
                target_port,
            });
        }
        Proxy {
            owner: gateway
                .controller_owner_ref(&())
                .expect("a Gateway read from the API has a uid"),
            class: None,
            name,
            namespace,
            role: GatewayRole::Ingress,
            ports,
            pod_labels: gateway.spec.selector.clone(),
        }
    }

    fn labels(&self) -> BTreeMap<String, String> {
        // Neither captured nor behind the namespace's waypoint: it is the proxy.
        let mut labels: BTreeMap<String, String> = [
            (GATEWAY_NAME_LABEL.to_owned(), self.name.clone()),
            (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
            (labels::DATAPLANE_MODE[0].to_owned(), "none".to_owned()),
            (
                labels::USE_WAYPOINT[0].to_owned(),
                labels::NO_WAYPOINT.to_owned(),
            ),
        ]
        .into();
        for (key, value) in &self.pod_labels {
            labels.entry(key.clone()).or_insert_with(|| value.clone());
        }
        labels
    }

    fn meta(&self) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.name.clone()),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels()),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    pub fn service_account(&self) -> ServiceAccount {
        ServiceAccount {
            metadata: self.meta(),
            ..ServiceAccount::default()
        }
    }

    /// The Deployment that runs the proxy (public so that tests check it against the API
    /// server's rules and run its pod template in a container runtime).
    pub fn deployment(&self, settings: &WaypointSettings) -> Deployment {
        let ingress = self.role == GatewayRole::Ingress;
        // The flag naming what it serves.
        let mode = match self.role {
            GatewayRole::Ingress => "ingress-gateway",
            GatewayRole::Waypoint => "waypoint",
        };
        let mut args = vec![
            format!("--{mode}={}/{}", self.namespace, self.name),
            format!("--namespace={}", self.namespace),
            format!("--service-account={}", self.name),
            format!("--ca-addr={}", settings.ca_addr),
            "--ca-root=/var/run/ambit/root/root-cert.pem".to_owned(),
            "--token-file=/var/run/secrets/ambit/token".to_owned(),
        ];
        args.extend(self.class.as_ref().map(|c| format!("--gateway-class={c}")));
        Deployment {
            metadata: self.meta(),
            spec: Some(DeploymentSpec {
                replicas: Some(1),
                selector: LabelSelector {
                    match_labels: Some([(GATEWAY_NAME_LABEL.to_owned(), self.name.clone())].into()),
                    ..LabelSelector::default()
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(self.labels()),
                        // Prometheus' pod discovery, as on the node agents.
                        annotations: Some(
                            [
                                ("prometheus.io/scrape", "true"),
                                ("prometheus.io/port", "15020"),
                                ("prometheus.io/path", "/stats/prometheus"),
                            ]
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                            .into(),
                        ),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        service_account_name: Some(super::proxy_service_account(&self.name)),
                        node_selector: Some(
                            [("kubernetes.io/os".to_owned(), "linux".to_owned())].into(),
                        ),
                        containers: vec![self.container(settings, args)],
                        volumes: Some(volumes()),
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

    fn container(&self, settings: &WaypointSettings, args: Vec<String>) -> Container {
        Container {
            name: "waypoint".to_owned(),
            image: Some(settings.image.clone()),
            args: Some(args),
            // Its own pod, whose locality load balancing is relative to; and where its spans go.
            env: Some(
                std::iter::once(EnvVar {
                    name: "POD_NAME".to_owned(),
                    value_from: Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.name".to_owned(),
                            ..ObjectFieldSelector::default()
                        }),
                        ..EnvVarSource::default()
                    }),
                    ..EnvVar::default()
                })
                .chain(settings.tracing.iter().map(|(name, value)| EnvVar {
                    name: name.clone(),
                    value: Some(value.clone()),
                    ..EnvVar::default()
                }))
                .collect(),
            ),
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
                self.ports
                    .iter()
                    .map(|p| ContainerPort {
                        name: Some(p.name.clone()),
                        container_port: i32::from(p.target_port),
                        ..ContainerPort::default()
                    })
                    // Named as on the node agents, for the PodMonitor in deploy/observability.
                    .chain([ContainerPort {
                        name: Some("http-metrics".to_owned()),
                        container_port: 15020,
                        ..ContainerPort::default()
                    }])
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
                seccomp_profile: Some(k8s_openapi::api::core::v1::SeccompProfile {
                    type_: "RuntimeDefault".to_owned(),
                    ..Default::default()
                }),
                ..SecurityContext::default()
            }),
            ..Container::default()
        }
    }

    /// The waypoint's Service on HBONE, inside the cluster; an ingress's on its ports, as a
    /// LoadBalancer for clients outside.
    pub fn service(&self) -> Service {
        let ingress = self.role == GatewayRole::Ingress;
        let ports = self
            .ports
            .iter()
            .map(|p| ServicePort {
                name: Some(p.name.clone()),
                port: i32::from(p.port),
                target_port: Some(IntOrString::Int(i32::from(p.target_port))),
                app_protocol: (!ingress).then(|| "hbone".to_owned()),
                ..ServicePort::default()
            })
            .collect();
        Service {
            metadata: self.meta(),
            spec: Some(ServiceSpec {
                selector: Some([(GATEWAY_NAME_LABEL.to_owned(), self.name.clone())].into()),
                ports: Some(ports),
                type_: ingress.then(|| "LoadBalancer".to_owned()),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }
}

fn volumes() -> Vec<Volume> {
    vec![
        // Its own token, for the mesh's audience: the controller gives it its own identity
        // only.
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
    ]
}

/// The root certificate, shared by the namespace's proxies (not owned by any one).
pub fn root_config_map(namespace: &str, root_pem: &str) -> ConfigMap {
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
