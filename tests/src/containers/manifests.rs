//! The pod templates the tests run: deploy/'s manifests, and the Deployments the controller
//! generates for Gateways; and the files that stand in for a cluster's volumes.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Container as ContainerSpec, PodSpec},
};

use super::image;

/// A directory holding copies of `files` (`name`, source): what a projected token or a
/// ConfigMap volume would show the container.
fn stand_in(dir: &Path, files: &[(&str, &Path)]) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    for (name, source) in files {
        std::fs::copy(source, dir.join(name))
            .with_context(|| format!("copying {}", source.display()))?;
    }
    Ok(dir.to_owned())
}

/// The two volumes every Ambit pod mounts from its cluster, by their names in the manifests:
/// `token`, the projected service-account token the controller checks, and `root`, the
/// mesh's root certificate (the ConfigMap `ambit-ca-root`). Their stand-ins go under `dir`.
pub fn mesh_volumes(dir: &Path, token: &Path, root: &Path) -> Result<BTreeMap<String, PathBuf>> {
    Ok([
        (
            "token".to_owned(),
            stand_in(&dir.join("token"), &[("token", token)])?,
        ),
        (
            "root".to_owned(),
            stand_in(&dir.join("root"), &[("root-cert.pem", root)])?,
        ),
    ]
    .into())
}

/// The pod template and the one container of a DaemonSet or Deployment in a deploy/ file.
pub fn manifest_pod(file: &Path, kind: &str) -> Result<(PodSpec, ContainerSpec)> {
    let text = std::fs::read_to_string(file)?;
    let workload = crate::api_rules::workloads(&text)?
        .into_iter()
        .find(|w| w.kind() == kind)
        .with_context(|| format!("no {kind} in {}", file.display()))?;
    one_container(workload.pod_template().and_then(|t| t.spec.clone()))
}

/// The pod spec of the Deployment the controller generates for a Gateway of `class`.
pub fn gateway_deployment(class: &str) -> Deployment {
    use kube::Resource as _;
    let mut gateway = mesh_api::gateway_api::Gateway::new(
        "gateway",
        mesh_api::gateway_api::GatewaySpec {
            gateway_class_name: class.to_owned(),
            listeners: vec![mesh_api::gateway_api::Listener {
                name: "http".to_owned(),
                port: 80,
                protocol: "HTTP".to_owned(),
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    gateway.meta_mut().namespace = Some("default".to_owned());
    gateway.meta_mut().uid = Some("5d0c7c1e-0000-4000-8000-000000000001".to_owned());
    let settings = mesh_controller::waypoint::WaypointSettings {
        image: image("mesh-waypoint"),
        ca_addr: crate::controller::CA_ADDR.to_owned(),
        root_pem: String::new(),
        tracing: Vec::new(),
    };
    let role = gateway
        .spec
        .role(None)
        .unwrap_or_else(|| panic!("{class} is not a class Ambit serves"));
    mesh_controller::waypoint::Proxy::of_gateway(&gateway, role).deployment(&settings)
}

pub fn deployment_pod(deployment: &Deployment) -> Result<(PodSpec, ContainerSpec)> {
    one_container(deployment.spec.clone().and_then(|s| s.template.spec))
}

fn one_container(spec: Option<PodSpec>) -> Result<(PodSpec, ContainerSpec)> {
    let spec = spec.context("a pod template without a spec")?;
    match spec.containers.as_slice() {
        [container] => Ok((spec.clone(), container.clone())),
        other => bail!("{} containers; the tests run pods of one", other.len()),
    }
}
