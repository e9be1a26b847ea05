//! Gateway API `Gateway`s of class `ambit` (ingresses): HTTP and HTTPS listeners with unique
//! names and ports, HTTPS terminated with a certificate from a Secret in the Gateway's own
//! namespace (one not there yet turns `ResolvedRefs` false, and that listener waits for it),
//! routes allowed from the same namespace or all. What the ingress cannot serve
//! (TLS passthrough, TCP, TLSRoutes, namespace selectors, cross-namespace certificates without
//! ReferenceGrant) is refused with the reason, never half served.

use std::collections::BTreeSet;

use super::{RESOLVED_REFS, Validation};
use crate::config::{ConfigSet, Kind, ObjectKey};
use mesh_api::gateway_api::{GatewayRole, Listener};

pub(super) fn ingress_gateways(set: &ConfigSet, v: &mut Validation) {
    for (key, gateway) in set.k8s_gateways() {
        if set.gateway_role(gateway) != Some(GatewayRole::Ingress) {
            continue;
        }
        let istio = ObjectKey {
            kind: Kind::Gateway,
            ..key.clone()
        };
        if set.resources.contains_key(&istio) {
            v.invalid(
                key,
                "Conflict",
                format!("an Istio Gateway {key} has the same name; the ingress serves one of them, so rename one"),
            );
        }
        if gateway.spec.listeners.is_empty() {
            v.invalid(key, "InvalidListeners", "no listeners".to_owned());
        }
        let (mut names, mut ports) = (BTreeSet::new(), BTreeSet::new());
        for (i, listener) in gateway.spec.listeners.iter().enumerate() {
            let at = format!("spec.listeners[{i}]");
            if !names.insert(listener.name.as_str()) {
                v.invalid(
                    key,
                    "InvalidListeners",
                    format!("{at}: name {:?} is used twice", listener.name),
                );
            }
            // One listener per port: the ingress has one socket per port, and which hostnames
            // a port serves is the listener's business.
            if !ports.insert(listener.port) {
                v.invalid(
                    key,
                    "InvalidListeners",
                    format!("{at}: port {} is used by another listener", listener.port),
                );
            }
            ingress_listener(set, v, key, &at, listener);
        }
    }
}

fn ingress_listener(
    set: &ConfigSet,
    v: &mut Validation,
    key: &ObjectKey,
    at: &str,
    listener: &Listener,
) {
    if listener.port == 0 {
        v.invalid(key, "InvalidListeners", format!("{at}.port: 0"));
    }
    if let Some(hostname) = &listener.hostname
        && !valid_hostname(hostname)
    {
        v.invalid(
            key,
            "InvalidListeners",
            format!("{at}.hostname: {hostname:?} is not a DNS name or *.suffix"),
        );
    }
    match (listener.protocol.as_str(), &listener.tls) {
        ("HTTP", None) => {}
        ("HTTP", Some(_)) => v.invalid(
            key,
            "InvalidListeners",
            format!("{at}.tls: an HTTP listener has no TLS; use protocol HTTPS"),
        ),
        ("HTTPS", None) => v.invalid(
            key,
            "InvalidListeners",
            format!("{at}: an HTTPS listener needs tls.certificateRefs"),
        ),
        ("HTTPS", Some(tls)) => {
            let mode = tls.mode.as_deref().unwrap_or("Terminate");
            if mode != "Terminate" {
                v.invalid(
                    key,
                    "UnsupportedValue",
                    format!("{at}.tls.mode: {mode} (an HTTPS listener terminates TLS)"),
                );
            }
            if tls.certificate_refs.is_empty() {
                v.invalid(
                    key,
                    "InvalidCertificateRef",
                    format!("{at}.tls.certificateRefs is empty"),
                );
            }
            for (c, reference) in tls.certificate_refs.iter().enumerate() {
                let at = format!("{at}.tls.certificateRefs[{c}]");
                let kind = reference.kind.as_deref().unwrap_or("Secret");
                let group = reference.group.as_deref().unwrap_or("");
                let namespace = reference.namespace.as_deref().unwrap_or(&key.namespace);
                if kind != "Secret" || !group.is_empty() {
                    v.invalid(
                        key,
                        "InvalidCertificateRef",
                        format!("{at}: {group}/{kind} is not a Secret"),
                    );
                } else if namespace != key.namespace {
                    v.invalid(
                        key,
                        "RefNotPermitted",
                        format!("{at}: a Secret in another namespace ({namespace}) needs a ReferenceGrant, which Ambit does not support"),
                    );
                } else if !set.resources.contains_key(&ObjectKey {
                    kind: Kind::Secret,
                    namespace: namespace.to_owned(),
                    name: reference.name.clone(),
                }) {
                    // The Secret may come later: the other listeners serve meanwhile.
                    v.report(
                        key,
                        RESOLVED_REFS,
                        "InvalidCertificateRef",
                        format!("{at}: no Secret {namespace}/{} (the listener stays closed until it exists)", reference.name),
                    );
                }
            }
        }
        (other, _) => v.invalid(
            key,
            "UnsupportedProtocol",
            format!("{at}.protocol: {other} (the ingress serves HTTP and HTTPS listeners with HTTPRoutes)"),
        ),
    }
    if let Some(allowed) = &listener.allowed_routes {
        let from = allowed.namespaces.as_ref().and_then(|n| n.from.as_deref());
        if !matches!(from, None | Some("Same") | Some("All")) {
            v.invalid(
                key,
                "UnsupportedValue",
                format!(
                    "{at}.allowedRoutes.namespaces.from: {} (Same or All)",
                    from.unwrap_or_default()
                ),
            );
        }
        for kind in &allowed.kinds {
            let group = kind.group.as_deref().unwrap_or("gateway.networking.k8s.io");
            if kind.kind != "HTTPRoute" || group != "gateway.networking.k8s.io" {
                v.invalid(
                    key,
                    "InvalidRouteKinds",
                    format!(
                        "{at}.allowedRoutes.kinds: {group}/{} (only HTTPRoute)",
                        kind.kind
                    ),
                );
            }
        }
    }
}

/// A DNS name, or one with a leading `*.` label; no IP addresses, no `*` alone.
fn valid_hostname(hostname: &str) -> bool {
    let name = hostname.strip_prefix("*.").unwrap_or(hostname);
    !name.is_empty()
        && name.parse::<std::net::IpAddr>().is_err()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}
