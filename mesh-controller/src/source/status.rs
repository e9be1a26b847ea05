//! Validation results written where `kubectl` shows them: each resource's `status.conditions`
//! (a merge patch on the status subresource, only when they changed), so
//! `kubectl get vs` shows `Accepted` and `kubectl describe` the reason; and, when they change,
//! a Kubernetes event on the resource (Warning with the reason when refused, Normal once it is
//! accepted again), which `kubectl describe` and `kubectl get events` list.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    api::{Api, DynamicObject, Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder, Reporter},
};

use super::{StatusSink, kube::api_resource};
use crate::config::{ConfigSet, Kind, ObjectKey, Resource, load::LoadError};
use mesh_api::{
    common::Condition,
    gateway_api::CONTROLLER_NAME,
    http_route::{HTTPRoute, HttpRouteStatus, RouteParentStatus},
};

/// A Gateway API route reports per parent: the same conditions under each of its parents.
/// Other controllers' entries (another mesh's, an ingress's on the same route) are kept as
/// the route was last seen; only Ambit's are replaced. The write is conditional on that
/// version, so an entry another controller adds meanwhile is not lost: the write fails with
/// a conflict, and the next report, set off by that controller's change, merges it.
/// Only parents that are Ambit's get an entry: Services, and Gateways of Ambit's classes (or
/// missing ones, to say so); a Gateway of another class is another controller's to report.
fn route_status(set: &ConfigSet, route: &HTTPRoute, conditions: &[Condition]) -> serde_json::Value {
    let others = route
        .status
        .iter()
        .flat_map(|status| &status.parents)
        .filter(|parent| parent.controller_name != CONTROLLER_NAME)
        .cloned();
    let namespace = route.metadata.namespace.as_deref().unwrap_or_default();
    let ours = route.spec.parent_refs.iter().filter(|parent| {
        let gateway_namespace = parent.namespace.as_deref().unwrap_or(namespace);
        parent.is_service()
            || set
                .k8s_gateway(gateway_namespace, &parent.name)
                .is_none_or(|gateway| set.gateway_role(gateway).is_some())
    });
    let ours = ours.map(|parent| RouteParentStatus {
        parent_ref: parent.clone(),
        controller_name: CONTROLLER_NAME.to_owned(),
        conditions: conditions.to_vec(),
    });
    let status = HttpRouteStatus {
        parents: others.chain(ours).collect(),
    };
    serde_json::to_value(status).unwrap_or_default()
}

/// The controller's name in the events it reports.
pub const REPORTER: &str = "ambit-controller";
/// Kubernetes refuses longer event notes.
const MAX_NOTE: usize = 1024;

pub struct KubeStatus {
    client: Client,
    /// What was last written, to write only changes.
    written: BTreeMap<ObjectKey, Vec<Condition>>,
    events: Recorder,
}

impl KubeStatus {
    /// `instance` tells replicas apart in events (the pod's name).
    pub fn new(client: Client, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: REPORTER.to_owned(),
            instance,
        };
        KubeStatus {
            events: Recorder::new(client.clone(), reporter),
            client,
            written: BTreeMap::new(),
        }
    }

    /// An event for each condition that is not met, and one saying the resource is accepted
    /// when it had been refused before.
    async fn record(
        &self,
        reference: &ObjectReference,
        conditions: &[Condition],
        was_refused: bool,
    ) {
        let bad: Vec<&Condition> = conditions.iter().filter(|c| c.is_problem()).collect();
        let mut events: Vec<Event> = bad
            .iter()
            .map(|c| Event {
                type_: EventType::Warning,
                reason: c.reason.clone(),
                note: Some(truncate(&format!("{}: {}", c.type_, c.message))),
                action: "Validate".to_owned(),
                secondary: None,
            })
            .collect();
        if was_refused && !refused(conditions) {
            events.push(Event {
                type_: EventType::Normal,
                reason: "Accepted".to_owned(),
                note: Some("the resource is valid and applied".to_owned()),
                action: "Validate".to_owned(),
                secondary: None,
            });
        }
        for event in events {
            if let Err(error) = self.events.publish(&event, reference).await {
                tracing::warn!(%error, name = ?reference.name, "recording an event failed");
            }
        }
    }
}

fn refused(conditions: &[Condition]) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == "Accepted" && c.status != "True")
}

fn truncate(note: &str) -> String {
    let mut end = note.len().min(MAX_NOTE);
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    note[..end].to_owned()
}

fn reference(set: &ConfigSet, key: &ObjectKey, ar: &kube::api::ApiResource) -> ObjectReference {
    let meta = set.resources.get(key).map(|r| r.meta());
    ObjectReference {
        api_version: Some(ar.api_version.clone()),
        kind: Some(ar.kind.clone()),
        namespace: Some(key.namespace.clone()),
        name: Some(key.name.clone()),
        uid: meta.and_then(|m| m.uid.clone()),
        resource_version: meta.and_then(|m| m.resource_version.clone()),
        ..ObjectReference::default()
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
        Kind::GatewayClass => (
            "gateway.networking.k8s.io",
            "GatewayClass",
            "gatewayclasses",
        ),
        Kind::K8sGateway => ("gateway.networking.k8s.io", "Gateway", "gateways"),
        Kind::HttpRoute => ("gateway.networking.k8s.io", "HTTPRoute", "httproutes"),
        Kind::Namespace
        | Kind::Node
        | Kind::Pod
        | Kind::Service
        | Kind::EndpointSlice
        | Kind::ServiceAccount
        | Kind::Secret => return None,
    };
    Some(api_resource(group, "v1", kind, plural))
}

impl StatusSink for KubeStatus {
    async fn report(
        &mut self,
        set: &Arc<ConfigSet>,
        statuses: Vec<(ObjectKey, Vec<Condition>)>,
        // Load errors (objects that are not even parsed have no status to write) and
        // refusals are logged by `LogStatus`, which runs beside this sink.
        _errors: &[LoadError],
    ) {
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
            let api: Api<DynamicObject> = match key.namespace.as_str() {
                "" => Api::all_with(self.client.clone(), &ar),
                namespace => Api::namespaced_with(self.client.clone(), namespace, &ar),
            };
            let observed = conditions.first().and_then(|c| c.observed_generation);
            let patch = match set.resources.get(&key) {
                Some(Resource::HttpRoute(route)) => serde_json::json!({
                    "metadata": {"resourceVersion": route.metadata.resource_version},
                    "status": route_status(set, route, &conditions),
                }),
                _ => serde_json::json!({
                    "status": {"conditions": conditions, "observedGeneration": observed}
                }),
            };
            match api
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    let was_refused = self.written.get(&key).is_some_and(|old| refused(old));
                    self.record(&reference(set, &key, &ar), &conditions, was_refused)
                        .await;
                    self.written.insert(key, conditions);
                }
                Err(error) => tracing::warn!(resource = %key, %error, "writing status failed"),
            }
        }
    }
}
