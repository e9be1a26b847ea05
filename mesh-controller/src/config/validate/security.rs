//! PeerAuthentication, AuthorizationPolicy and waypoint Gateway checks.

use super::{Validation, conflicts, networking::by_age};
use crate::{
    config::ConfigSet,
    resources::{gateway_api::GatewayRole, security::Action},
};

/// `when` keys Istio defines (exact, or a prefix followed by `[name]`).
const WHEN_KEYS: &[&str] = &[
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "destination.ip",
    "destination.port",
    "connection.sni",
];
const WHEN_PREFIXES: &[&str] = &["request.headers[", "request.auth.claims["];

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

pub(super) fn authorization_policies(set: &ConfigSet, v: &mut Validation) {
    for (key, ap) in set.authorization_policies() {
        let spec = &ap.spec;
        let custom = spec.action == Some(Action::Custom);
        if custom != spec.provider.is_some() {
            v.invalid(
                key,
                "InvalidAction",
                "spec.provider is required with action CUSTOM, and only with it".to_owned(),
            );
        }
        let targets = usize::from(spec.selector.is_some())
            + usize::from(spec.target_ref.is_some())
            + usize::from(!spec.target_refs.is_empty());
        if targets > 1 {
            v.invalid(
                key,
                "InvalidTarget",
                "selector, targetRef and targetRefs exclude each other".to_owned(),
            );
        }
        for (i, rule) in spec.rules.iter().enumerate() {
            let at = format!("spec.rules[{i}]");
            for (j, from) in rule.from.iter().enumerate() {
                let s = &from.source;
                let blocks = [
                    ("ipBlocks", &s.ip_blocks),
                    ("notIpBlocks", &s.not_ip_blocks),
                    ("remoteIpBlocks", &s.remote_ip_blocks),
                    ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
                ];
                for (field, values) in blocks {
                    for block in values {
                        if !is_cidr(block) {
                            v.invalid(key, "InvalidIpBlock", format!("{at}.from[{j}].source.{field}: {block:?} is not an IP address or CIDR"));
                        }
                    }
                }
                let accounts = !s.service_accounts.is_empty() || !s.not_service_accounts.is_empty();
                let identities = !s.principals.is_empty()
                    || !s.not_principals.is_empty()
                    || !s.namespaces.is_empty()
                    || !s.not_namespaces.is_empty();
                if accounts && identities {
                    v.invalid(
                        key,
                        "InvalidSource",
                        format!("{at}.from[{j}].source: serviceAccounts cannot be set with principals or namespaces"),
                    );
                }
                for (field, values) in [
                    ("serviceAccounts", &s.service_accounts),
                    ("notServiceAccounts", &s.not_service_accounts),
                ] {
                    for account in values {
                        let name = account.rsplit('/').next().unwrap_or_default();
                        if account.contains('*')
                            || name.is_empty()
                            || account.matches('/').count() > 1
                        {
                            v.invalid(
                                key,
                                "InvalidSource",
                                format!("{at}.from[{j}].source.{field}: {account:?} is not <namespace>/<name> or <name> (no wildcards)"),
                            );
                        }
                    }
                }
                for (field, values) in
                    [("principals", &s.principals), ("namespaces", &s.namespaces)]
                {
                    if values.iter().any(String::is_empty) {
                        v.invalid(
                            key,
                            "InvalidSource",
                            format!("{at}.from[{j}].source.{field} has an empty value"),
                        );
                    }
                }
            }
            for (j, to) in rule.to.iter().enumerate() {
                let op = &to.operation;
                for (field, ports) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
                    for port in ports {
                        if !port.parse::<u16>().is_ok_and(|p| p > 0) {
                            v.invalid(
                                key,
                                "InvalidPort",
                                format!(
                                    "{at}.to[{j}].operation.{field}: {port:?} is not a port number"
                                ),
                            );
                        }
                    }
                }
                for (field, paths) in [("paths", &op.paths), ("notPaths", &op.not_paths)] {
                    for path in paths {
                        if !(path.starts_with('/') || path.starts_with('*') || path.ends_with('*'))
                        {
                            v.invalid(key, "InvalidPath", format!("{at}.to[{j}].operation.{field}: {path:?} must start with / (or be a * prefix or suffix match)"));
                        }
                    }
                }
            }
            for (j, when) in rule.when.iter().enumerate() {
                let known = WHEN_KEYS.contains(&when.key.as_str())
                    || WHEN_PREFIXES
                        .iter()
                        .any(|p| when.key.starts_with(p) && when.key.ends_with(']'));
                if !known {
                    v.invalid(
                        key,
                        "InvalidCondition",
                        format!(
                            "{at}.when[{j}].key {:?} is not an attribute Istio defines",
                            when.key
                        ),
                    );
                }
                if when.values.is_empty() && when.not_values.is_empty() {
                    v.invalid(
                        key,
                        "InvalidCondition",
                        format!("{at}.when[{j}] needs values or notValues"),
                    );
                }
            }
        }
    }
}

fn is_cidr(text: &str) -> bool {
    match text.split_once('/') {
        None => text.parse::<std::net::IpAddr>().is_ok(),
        Some((ip, len)) => match (ip.parse::<std::net::IpAddr>(), len.parse::<u8>()) {
            (Ok(std::net::IpAddr::V4(_)), Ok(len)) => len <= 32,
            (Ok(std::net::IpAddr::V6(_)), Ok(len)) => len <= 128,
            _ => false,
        },
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
