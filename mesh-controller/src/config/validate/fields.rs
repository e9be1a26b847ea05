//! The fields each Istio resource sets that Ambit ignores or does not enforce, from the
//! compatibility table: an `IgnoredFields` condition for traffic fields Ambit accepts without
//! effect, a `FailsClosed` condition for security fields whose enforcement refuses what they
//! would allow. Neither stops the rest of the resource from applying.

use crate::{
    compatibility::{Support, fields, support},
    config::{ConfigSet, ObjectKey, Resource},
};

use super::{FAILS_CLOSED, IGNORED_FIELDS, Validation};

pub(super) fn ignored_and_closed(set: &ConfigSet, v: &mut Validation) {
    let schemas = fields::spec_schemas();
    for (key, resource) in &set.resources {
        let (Some(spec), Some((kind, schema))) = (
            resource.istio_spec(),
            schemas.iter().find(|(kind, _)| kind == key.kind.name()),
        ) else {
            continue;
        };
        let set_paths = fields::set_paths(schema, &spec, ("spec", "spec"));
        report(v, key, kind, &set_paths);
        if let Resource::DestinationRule(_) = resource {
            tls_origination(v, key, &spec);
        }
    }
}

/// One finding per field set (its innermost fields only: `tls.sni`, not `tls` as well).
fn report(v: &mut Validation, key: &ObjectKey, kind: &str, set_paths: &[(String, String)]) {
    for (i, (path, general)) in set_paths.iter().enumerate() {
        let has_children = set_paths[i + 1..].iter().any(|(p, _)| {
            p.strip_prefix(path.as_str())
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        });
        if has_children {
            continue;
        }
        match support(kind, general) {
            Support::Implemented(_) => {}
            Support::Ignored(why) => v.report(
                key,
                IGNORED_FIELDS,
                "NotImplemented",
                format!("{path}: {why}"),
            ),
            Support::FailsClosed(why) => {
                v.report(key, FAILS_CLOSED, "NotEnforced", format!("{path}: {why}"))
            }
        }
    }
}

/// `tls.mode` SIMPLE or MUTUAL asks the proxy to originate TLS, which Ambit does not: its
/// requests are refused rather than sent in plaintext. ISTIO_MUTUAL and DISABLE are the mesh's
/// own mutual TLS.
fn tls_origination(v: &mut Validation, key: &ObjectKey, spec: &serde_json::Value) {
    let mut policies = vec![("spec.trafficPolicy".to_owned(), &spec["trafficPolicy"])];
    for (i, subset) in spec["subsets"].as_array().into_iter().flatten().enumerate() {
        policies.push((
            format!("spec.subsets[{i}].trafficPolicy"),
            &subset["trafficPolicy"],
        ));
    }
    let mut modes = Vec::new();
    for (at, policy) in policies {
        modes.push((format!("{at}.tls.mode"), &policy["tls"]["mode"]));
        for (j, port) in policy["portLevelSettings"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            modes.push((
                format!("{at}.portLevelSettings[{j}].tls.mode"),
                &port["tls"]["mode"],
            ));
        }
    }
    for (at, mode) in modes {
        if let Some(mode @ ("SIMPLE" | "MUTUAL")) = mode.as_str() {
            v.report(
                key,
                FAILS_CLOSED,
                "NotEnforced",
                format!(
                    "{at} {mode}: Ambit does not originate TLS: requests to the host are refused \
                     (503) rather than sent in plaintext"
                ),
            );
        }
    }
}
