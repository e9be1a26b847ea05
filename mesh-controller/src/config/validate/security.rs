//! PeerAuthentication, AuthorizationPolicy and waypoint Gateway checks.

use super::{Validation, conflicts, networking::by_age};
use mesh_core::policy;

use crate::config::ConfigSet;
use mesh_api::gateway_api::GatewayRole;

pub(super) fn peer_authentications(set: &ConfigSet, v: &mut Validation) {
    let ordered = by_age(set.peer_authentications());
    for (key, pa) in &ordered {
        for port in pa.spec.port_level_mtls.keys() {
            if !port.parse::<u16>().is_ok_and(|p| p > 0) {
                v.invalid(
                    key,
                    "InvalidPort",
                    format!("spec.portLevelMtls: {port:?} is not a port number"),
                );
            }
        }
        let selects = pa
            .spec
            .selector
            .as_ref()
            .is_some_and(|s| !s.match_labels.is_empty());
        if !pa.spec.port_level_mtls.is_empty() && !selects {
            v.invalid(
                key,
                "InvalidPeerAuthentication",
                "spec.portLevelMtls needs a workload selector (as in Istio)".to_owned(),
            );
        }
    }
    // One namespace-wide (or, in the root namespace, mesh-wide) policy per namespace.
    let claims = ordered
        .iter()
        .filter(|(_, pa)| {
            pa.spec
                .selector
                .as_ref()
                .is_none_or(|s| s.match_labels.is_empty())
        })
        .map(|(key, _)| (format!("namespace {}", key.namespace), *key));
    conflicts(v, claims.collect::<Vec<_>>(), "the PeerAuthentication of");
}

/// AuthorizationPolicies are judged by the validator every enforcement point runs
/// (`mesh_api::policy::validate`), on the spec as it is streamed, so the controller's verdict
/// and the nodes' and waypoints' can never disagree.
pub(super) fn authorization_policies(set: &ConfigSet, v: &mut Validation) {
    for (key, ap) in set.authorization_policies() {
        if let Some(why) = set.unreadable.get(key) {
            v.invalid(key, policy::Reason::Unreadable.as_str(), why.clone());
            continue;
        }
        for rejection in ap.spec.rejections() {
            v.invalid(key, rejection.reason.as_str(), rejection.message);
        }
    }
}

/// Waypoint Gateways need an HBONE listener on 15008; other classes belong to other
/// controllers and are not ours to judge.
pub(super) fn waypoints(set: &ConfigSet, v: &mut Validation) {
    for (key, gw) in set.k8s_gateways() {
        if set.gateway_role(gw) != Some(GatewayRole::Waypoint) {
            continue;
        }
        if gw.spec.hbone_listener().is_none() {
            v.invalid(
                key,
                "InvalidListeners",
                format!(
                    "a waypoint needs a listener with protocol HBONE on port {}",
                    mesh_core::hbone::PORT
                ),
            );
        }
    }
}
