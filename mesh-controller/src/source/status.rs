//! Validation results written where `kubectl` shows them: each resource's `status.conditions`
//! (a merge patch on the status subresource, only when they changed), so
//! `kubectl get vs` shows `Accepted` and `kubectl describe` the reason.

use std::collections::BTreeMap;

use kube::{
    Client,
    api::{Api, DynamicObject, Patch, PatchParams},
};

use super::{StatusSink, kube::api_resource};
use crate::{
    config::{ConfigSet, Kind, ObjectKey, load::LoadError},
    resources::common::Condition,
};

pub struct KubeStatus {
    client: Client,
    /// What was last written, to write only changes.
    written: BTreeMap<ObjectKey, Vec<Condition>>,
}

impl KubeStatus {
    pub fn new(client: Client) -> Self {
        KubeStatus {
            client,
            written: BTreeMap::new(),
        }
    }
}

/// The API resource of a kind Ambit writes status for.
fn resource_of(kind: Kind) -> Option<kube::api::ApiResource> {
    let (group, kind, plural) = match kind {
        Kind::VirtualService => ("networking.istio.io", "VirtualService", "virtualservices"),
        Kind::DestinationRule => ("networking.istio.io", "DestinationRule", "destinationrules"),
        Kind::Gateway => ("networking.istio.io", "Gateway", "gateways"),
        Kind::ServiceEntry => ("networking.istio.io", "ServiceEntry", "serviceentries"),
        Kind::PeerAuthentication => (
            "security.istio.io",
            "PeerAuthentication",
            "peerauthentications",
        ),
        Kind::AuthorizationPolicy => (
            "security.istio.io",
            "AuthorizationPolicy",
            "authorizationpolicies",
        ),
        Kind::K8sGateway => ("gateway.networking.k8s.io", "Gateway", "gateways"),
        Kind::Namespace | Kind::Pod | Kind::Service => return None,
    };
    Some(api_resource(group, "v1", kind, plural))
}

impl StatusSink for KubeStatus {
    async fn report(
        &mut self,
        _set: &ConfigSet,
        statuses: Vec<(ObjectKey, Vec<Condition>)>,
        errors: &[LoadError],
    ) {
        for error in errors {
            tracing::warn!("not applied: {error}");
        }
        let present: std::collections::BTreeSet<ObjectKey> =
            statuses.iter().map(|(k, _)| k.clone()).collect();
        self.written.retain(|k, _| present.contains(k));
        for (key, conditions) in statuses {
            if self.written.get(&key) == Some(&conditions) {
                continue;
            }
            let Some(ar) = resource_of(key.kind) else {
                continue;
            };
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &key.namespace, &ar);
            let observed = conditions.first().and_then(|c| c.observed_generation);
            let patch = serde_json::json!({
                "status": {"conditions": conditions, "observedGeneration": observed}
            });
            match api
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    for c in conditions.iter().filter(|c| c.status != "True") {
                        tracing::warn!(resource = %key, reason = %c.reason, "{}", c.message);
                    }
                    self.written.insert(key, conditions);
                }
                Err(error) => tracing::warn!(resource = %key, %error, "writing status failed"),
            }
        }
    }
}
