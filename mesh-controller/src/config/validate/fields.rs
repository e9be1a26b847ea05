//! The fields each Istio resource sets that Ambit ignores or does not enforce, from the
//! compatibility table: an `IgnoredFields` condition for traffic fields Ambit accepts without
//! effect, a `FailsClosed` condition for security fields whose enforcement refuses what they
//! would allow. Neither stops the rest of the resource from applying.

use crate::{
    compatibility::{Support, fields, support},
    config::{ConfigSet, ObjectKey, Resource},
};
use mesh_api::networking::DestinationRuleSpec;

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
        if let Resource::DestinationRule(rule) = resource {
            tls_origination(v, key, &rule.spec);
        }
    }
}

/// One finding per field set (its innermost fields only: `tls.sni`, not `tls` as well).
fn report(v: &mut Validation, key: &ObjectKey, kind: &str, set_paths: &[(String, String)]) {
    for (path, general) in fields::leaves(set_paths) {
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
/// requests are refused rather than sent in plaintext. (The table covers `tls`'s other
/// fields; the mode is a matter of its value.)
fn tls_origination(v: &mut Validation, key: &ObjectKey, rule: &DestinationRuleSpec) {
    let subsets = rule.subsets.iter().enumerate().map(|(i, s)| {
        (
            format!("spec.subsets[{i}].trafficPolicy"),
            &s.traffic_policy,
        )
    });
    let levels = std::iter::once(("spec.trafficPolicy".to_owned(), &rule.traffic_policy))
        .chain(subsets)
        .filter_map(|(at, policy)| Some((at, policy.as_ref()?)));
    for (at, policy) in levels {
        let ports = policy
            .port_level_settings
            .iter()
            .enumerate()
            .map(|(j, p)| (format!("{at}.portLevelSettings[{j}].tls.mode"), &p.tls));
        let modes = std::iter::once((format!("{at}.tls.mode"), &policy.tls)).chain(ports);
        for (at, tls) in modes {
            if let Some(tls) = tls.as_ref().filter(|t| t.originates()) {
                v.report(
                    key,
                    FAILS_CLOSED,
                    "NotEnforced",
                    format!(
                        "{at} {}: Ambit does not originate TLS: requests to the host are \
                         refused (503) rather than sent in plaintext",
                        tls.mode
                    ),
                );
            }
        }
    }
}
