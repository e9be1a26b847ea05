//! Local mode: a directory of YAML (Namespaces, Pods, Services and the mesh resources),
//! reloaded when a file changes. Pods can also come from the test bed's pods file.

use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};

use k8s_openapi::api::core::v1::{Namespace, Pod, PodIP, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::ObjectMeta;

use super::ConfigSource;
use crate::config::{ConfigSet, Resource, load};

/// How often the directory is checked for changes.
const POLL: Duration = Duration::from_millis(200);

pub struct DirSource {
    pub dir: PathBuf,
    /// The local mode pods file (`mesh_core::pods`), whose pods and namespaces join the set.
    pub pods_file: Option<PathBuf>,
    seen: Vec<(PathBuf, Option<SystemTime>, u64)>,
}

impl DirSource {
    pub fn new(dir: PathBuf, pods_file: Option<PathBuf>) -> Self {
        DirSource {
            dir,
            pods_file,
            seen: Vec::new(),
        }
    }

    /// Every file that counts, with its modification time and size.
    fn signature(&self) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.extend(self.pods_file.clone());
        files.sort();
        files
            .into_iter()
            .map(|p| {
                let meta = std::fs::metadata(&p).ok();
                let modified = meta.as_ref().and_then(|m| m.modified().ok());
                let len = meta.map(|m| m.len()).unwrap_or(0);
                (p, modified, len)
            })
            .collect()
    }
}

impl ConfigSource for DirSource {
    fn snapshot(&mut self) -> (ConfigSet, Vec<load::LoadError>) {
        self.seen = self.signature();
        let (mut set, mut errors) = load::load_dir(&self.dir).unwrap_or_else(|error| {
            let error = load::LoadError {
                file: self.dir.display().to_string(),
                index: 0,
                kind: "?".into(),
                name: "?".into(),
                message: error.to_string(),
            };
            (ConfigSet::default(), vec![error])
        });
        if let Some(path) = &self.pods_file {
            match mesh_core::pods::PodsFile::read(path) {
                Ok(file) => add_pods_file(&mut set, &file),
                Err(error) => errors.push(load::LoadError {
                    file: path.display().to_string(),
                    index: 0,
                    kind: "PodsFile".into(),
                    name: "?".into(),
                    message: error.to_string(),
                }),
            }
        }
        (set, errors)
    }

    async fn changed(&mut self) {
        loop {
            tokio::time::sleep(POLL).await;
            if self.signature() != self.seen {
                return;
            }
        }
    }
}

/// The pods file's namespaces and pods as the Kubernetes objects they stand for.
pub fn add_pods_file(set: &mut ConfigSet, file: &mesh_core::pods::PodsFile) {
    for ns in &file.namespaces {
        set.insert(Resource::Namespace(Box::new(Namespace {
            metadata: ObjectMeta {
                name: Some(ns.name.clone()),
                labels: Some(ns.labels.clone()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        })));
    }
    for pod in &file.pods {
        set.insert(Resource::Pod(Box::new(Pod {
            metadata: ObjectMeta {
                name: Some(pod.name.clone()),
                namespace: Some(pod.namespace.clone()),
                labels: Some((*pod.labels).clone()),
                uid: pod.uid.clone(),
                // A pod with a controller has a generated name in Kubernetes.
                generate_name: pod.owner.as_ref().map(|o| format!("{}-", o.name)),
                owner_references: pod.owner.as_ref().map(|o| {
                    vec![OwnerReference {
                        kind: o.kind.clone(),
                        name: o.name.clone(),
                        controller: Some(true),
                        api_version: if o.kind == "Job" {
                            "batch/v1"
                        } else {
                            "apps/v1"
                        }
                        .to_owned(),
                        uid: String::new(),
                        block_owner_deletion: None,
                    }]
                }),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some(pod.node.clone()),
                service_account_name: Some(pod.service_account.clone()),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                pod_ip: Some(pod.ip.to_string()),
                pod_ips: Some(vec![PodIP {
                    ip: pod.ip.to_string(),
                }]),
                ..PodStatus::default()
            }),
        })));
    }
}
