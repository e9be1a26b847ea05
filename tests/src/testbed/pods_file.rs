//! Editing the test bed's pods file as an orchestrator would: service accounts, labels on
//! pods and namespaces, written atomically.

use std::path::PathBuf;

use anyhow::Result;
use mesh_node::pods::{self, PodsFile};

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
