//! What the proxies and the endpoints share: configuration, metrics, live connections, the
//! pods and policies in force, and whether the agent is ready.

use std::sync::{
    Arc, RwLock, RwLockReadGuard, RwLockWriteGuard,
    atomic::{AtomicBool, Ordering},
};

use serde::Serialize;

use crate::{
    config::Config,
    enrollment::EnrolledView,
    identity::{CertificateStore, CertificateView},
    metrics::Metrics,
    pods::{PodsFile, WorkloadStore},
    proxy::{Connections, HbonePool},
    services::Services,
};
use mesh_core::{
    Identity,
    policy::{LoadError, PolicySet},
};

/// What the proxies and the endpoints share.
pub struct State {
    pub config: Arc<Config>,
    pub metrics: Metrics,
    pub connections: Connections,
    /// Every pod the agent knows, on every node, indexed for the lookups made per
    /// connection; changed one pod at a time. Readers hold the lock for a lookup, never
    /// across an `await`.
    pub(super) workloads: RwLock<WorkloadStore>,
    pub(super) enrolled: RwLock<Vec<EnrolledView>>,
    /// Programs attached and the first reconcile done.
    pub(super) ready: AtomicBool,
    /// Certificates for the enrolled pods' identities (HBONE mode only).
    pub certificates: Option<Arc<CertificateStore>>,
    /// Pooled HBONE connections (HBONE mode only).
    pub hbone: Option<HbonePool>,
    /// The identities enrolled pods have: readiness waits for their certificates.
    pub(super) identities: RwLock<Vec<Identity>>,
    pub(super) policies: RwLock<Arc<PolicySet>>,
    pub(super) policy_errors: RwLock<Vec<String>>,
    /// Services by address (from the controller's stream; none in local mode).
    pub(super) services: RwLock<Arc<Services>>,
    /// Signals once the agent stops accepting: HBONE connections then send GOAWAY.
    pub drain: mesh_core::drain::Watch,
}

#[derive(Serialize)]
pub struct ConfigDump {
    pub config: Arc<Config>,
    pub enrolled: Vec<EnrolledView>,
    pub certificates: Vec<CertificateView>,
    pub policies: usize,
    pub policy_list: Vec<String>,
    pub policy_errors: Vec<String>,
    pub pods: PodsFile,
}

impl State {
    /// The workload store, to look up in.
    pub fn workloads(&self) -> RwLockReadGuard<'_, WorkloadStore> {
        self.workloads.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The workload store, to change (one writer: the stream, or local mode's pods file).
    pub fn workloads_mut(&self) -> RwLockWriteGuard<'_, WorkloadStore> {
        self.workloads.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn services(&self) -> Arc<Services> {
        self.services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_services(&self, services: Services) {
        *self.services.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(services);
    }

    pub fn set_enrolled(&self, view: Vec<EnrolledView>) {
        *self.enrolled.write().unwrap_or_else(|p| p.into_inner()) = view;
    }

    /// Ready once the programs are attached, the pods file applied, and (with HBONE) every
    /// enrolled pod's certificate loaded.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && self.certificates.as_ref().is_none_or(|certs| {
                certs.has_all(&self.identities.read().unwrap_or_else(|p| p.into_inner()))
            })
    }

    /// Records the enrolled pods' identities and keeps certificates for exactly those.
    pub fn set_identities(&self, identities: Vec<Identity>) {
        if let Some(certs) = &self.certificates {
            certs.retain(&identities);
        }
        *self.identities.write().unwrap_or_else(|p| p.into_inner()) = identities;
    }

    pub fn policies(&self) -> Arc<PolicySet> {
        self.policies
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_policies(&self, policies: PolicySet, errors: Vec<LoadError>) {
        *self.policies.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policies);
        *self
            .policy_errors
            .write()
            .unwrap_or_else(|p| p.into_inner()) = errors.iter().map(ToString::to_string).collect();
    }

    pub fn certificate_view(&self) -> Vec<CertificateView> {
        self.certificates
            .as_ref()
            .map(|c| c.view())
            .unwrap_or_default()
    }

    /// What the admin endpoint shows; every pod of the cluster only `with_pods`.
    pub fn config_dump(&self, with_pods: bool) -> ConfigDump {
        ConfigDump {
            config: self.config.clone(),
            enrolled: self
                .enrolled
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            certificates: self.certificate_view(),
            policies: self.policies().len(),
            policy_list: self.policies().summary(),
            policy_errors: self
                .policy_errors
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            pods: if with_pods {
                self.workloads().to_file()
            } else {
                PodsFile::default()
            },
        }
    }
}
