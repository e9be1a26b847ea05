//! Editing the test bed's pods file as an orchestrator would: service accounts, labels on
//! pods and namespaces, written atomically.

use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::Result;
use mesh_node::pods::{self, Pod, PodsFile};

use super::Testbed;

impl Testbed {
    /// Sets a pod's service account (its identity).
    pub fn set_service_account(&self, pod: &str, service_account: &str) -> Result<()> {
        self.update_pods_file(|file| {
            for spec in file.pods.iter_mut().filter(|p| p.name == pod) {
                spec.service_account = service_account.to_owned();
            }
        })
    }

    /// Gives a pod a controller, as a ReplicaSet or a StatefulSet owns a pod in Kubernetes
    /// (it names the pod's workload in metrics).
    pub fn set_owner(&self, pod: &str, kind: &str, name: &str) -> Result<()> {
        self.update_pods_file(|file| {
            for spec in file.pods.iter_mut().filter(|p| p.name == pod) {
                spec.owner = Some(mesh_core::telemetry::Owner {
                    kind: kind.to_owned(),
                    name: name.to_owned(),
                });
            }
        })
    }

    pub fn pods_file_path(&self) -> PathBuf {
        self.work_dir.join("pods.yaml")
    }

    /// Labels a Kubernetes namespace `ambit.io/dataplane-mode=ambient` (or removes the label).
    pub fn set_namespace_ambient(&self, namespace: &str, ambient: bool) -> Result<()> {
        let mode = ambient.then_some(pods::DATAPLANE_MODE_AMBIENT);
        self.label_namespace(namespace, pods::DATAPLANE_MODE_LABEL, mode)
    }

    /// Sets a pod's own `ambit.io/dataplane-mode` label (`None` removes it).
    pub fn set_pod_mode(&self, pod: &str, mode: Option<&str>) -> Result<()> {
        self.label_pod(pod, pods::DATAPLANE_MODE_LABEL, mode)
    }

    /// Sets (or with `None` removes) a label on a pod.
    pub fn label_pod(&self, pod: &str, key: &str, value: Option<&str>) -> Result<()> {
        self.update_pods_file(|file| {
            for spec in file.pods.iter_mut().filter(|p| p.name == pod) {
                match value {
                    Some(value) => std::sync::Arc::make_mut(&mut spec.labels)
                        .insert(key.to_owned(), value.to_owned()),
                    None => std::sync::Arc::make_mut(&mut spec.labels).remove(key),
                };
            }
        })
    }

    /// Sets (or with `None` removes) a label on a namespace.
    pub fn label_namespace(&self, namespace: &str, key: &str, value: Option<&str>) -> Result<()> {
        self.update_pods_file(|file| {
            if !file.namespaces.iter().any(|ns| ns.name == namespace) {
                file.namespaces.push(pods::Namespace {
                    name: namespace.to_owned(),
                    labels: Default::default(),
                });
            }
            for ns in file.namespaces.iter_mut().filter(|ns| ns.name == namespace) {
                match value {
                    Some(value) => ns.labels.insert(key.to_owned(), value.to_owned()),
                    None => ns.labels.remove(key),
                };
            }
        })
    }

    /// Adds `count` pods of the mesh on a node with no agent here (10.200.0.0/16, in namespace
    /// `default`, 100 service accounts and 500 `app` labels among them, as Deployments' replicas
    /// share theirs): what the agents learn of a large cluster.
    pub fn add_remote_pods(&self, count: usize) -> Result<()> {
        self.update_pods_file(|file| {
            for i in 0..count {
                file.pods.push(remote_pod(
                    &format!("remote-{i}"),
                    "default",
                    &format!("sa-{}", i % 100),
                    Ipv4Addr::new(10, 200, (i / 250) as u8, (i % 250) as u8 + 1),
                    &format!("app-{}", i % 500),
                ));
            }
        })
    }

    /// Rewrites the pods file atomically, as an orchestrator would.
    pub fn update_pods_file(&self, change: impl FnOnce(&mut PodsFile)) -> Result<()> {
        let mut file = self.pods_file.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut file);
        let text = serde_yaml::to_string(&*file)?;
        let tmp = self.work_dir.join("pods.yaml.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.pods_file_path())?;
        Ok(())
    }
}

/// A pod on node `elsewhere` (no agent, no network namespace here) labelled `app`.
pub fn remote_pod(
    name: &str,
    namespace: &str,
    service_account: &str,
    ip: Ipv4Addr,
    app: &str,
) -> Pod {
    Pod {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        node: "elsewhere".to_owned(),
        service_account: service_account.to_owned(),
        ip,
        netns: "/nonexistent".into(),
        cgroup: None,
        labels: std::sync::Arc::new([("app".to_owned(), app.to_owned())].into()),
        uid: None,
        owner: None,
        names: None,
        enrolled: None,
        waypoint: None,
    }
}
