//! Fields by path, walked along a kind's schema (the one its CRD is generated from, so the
//! walk knows a struct from a map): every field a kind has, for the documentation, and the
//! fields a resource sets, for the validator. Paths read `spec.http[].route[].weight`: `[]`
//! for a list's items, `{}` for a map's values.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use serde_json::Value;

/// The Istio kinds Ambit serves, by kind name, with their `spec` schemas: generated from the
/// types once per process (the validator walks them on every round).
pub fn spec_schemas() -> &'static [(String, JSONSchemaProps)] {
    static SCHEMAS: std::sync::LazyLock<Vec<(String, JSONSchemaProps)>> =
        std::sync::LazyLock::new(|| {
            mesh_api::crds()
                .into_iter()
                .filter_map(|crd| {
                    let kind = crd.spec.names.kind.clone();
                    let version = crd.spec.versions.into_iter().last()?;
                    let schema = version.schema?.open_api_v3_schema?;
                    let spec = schema.properties?.remove("spec")?;
                    Some((kind, spec))
                })
                .collect()
        });
    &SCHEMAS
}

/// Every field path under `schema` (which is at `path`), in schema order.
pub fn all_paths(schema: &JSONSchemaProps, path: &str, out: &mut Vec<String>) {
    out.push(path.to_owned());
    for (name, field) in schema.properties.iter().flatten() {
        let at = format!("{path}.{name}");
        match items(field) {
            Some(items) => {
                out.push(at.clone());
                all_paths(items, &format!("{at}[]"), out);
            }
            None => match values(field) {
                Some(values) => {
                    out.push(at.clone());
                    all_paths(values, &format!("{at}{{}}"), out);
                }
                None => all_paths(field, &at, out),
            },
        }
    }
}

/// The fields `value` sets (non-null, non-empty), each as `(path with indexes, schema path)`:
/// `spec.http[2].retries.backoff` and `spec.http[].retries.backoff`.
pub fn set_paths(
    schema: &JSONSchemaProps,
    value: &Value,
    at: (&str, &str),
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    walk_value(schema, value, at.0, at.1, &mut out);
    out
}

/// The innermost of [`set_paths`]' fields (`tls.sni`, not `tls` as well). The walk writes a
/// field before what it holds, so a field is innermost when the next one is not inside it.
pub fn leaves(set_paths: &[(String, String)]) -> impl Iterator<Item = &(String, String)> {
    set_paths.iter().enumerate().filter_map(|(i, entry)| {
        let path = entry.0.as_str();
        let holds_next = set_paths.get(i + 1).is_some_and(|(next, _)| {
            next.strip_prefix(path)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        });
        (!holds_next).then_some(entry)
    })
}

fn walk_value(
    schema: &JSONSchemaProps,
    value: &Value,
    path: &str,
    general: &str,
    out: &mut Vec<(String, String)>,
) {
    if is_empty(value) {
        return;
    }
    out.push((path.to_owned(), general.to_owned()));
    let Value::Object(map) = value else {
        return;
    };
    for (name, field_value) in map {
        let Some(field) = schema.properties.as_ref().and_then(|p| p.get(name)) else {
            // Not in the schema (cannot happen after deserialization): reported as set.
            out.push((format!("{path}.{name}"), format!("{general}.{name}")));
            continue;
        };
        let (at, general_at) = (format!("{path}.{name}"), format!("{general}.{name}"));
        match (items(field), values(field), field_value) {
            (Some(items), _, Value::Array(list)) => {
                if !list.is_empty() {
                    out.push((at.clone(), general_at.clone()));
                }
                for (i, item) in list.iter().enumerate() {
                    walk_value(
                        items,
                        item,
                        &format!("{at}[{i}]"),
                        &format!("{general_at}[]"),
                        out,
                    );
                }
            }
            (None, Some(values), Value::Object(entries)) => {
                if !entries.is_empty() {
                    out.push((at.clone(), general_at.clone()));
                }
                for (key, entry) in entries {
                    walk_value(
                        values,
                        entry,
                        &format!("{at}[{key}]"),
                        &format!("{general_at}{{}}"),
                        out,
                    );
                }
            }
            _ => walk_value(field, field_value, &at, &general_at, out),
        }
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(list) => list.is_empty(),
        Value::Object(map) => map.is_empty(),
        _ => false,
    }
}

fn items(field: &JSONSchemaProps) -> Option<&JSONSchemaProps> {
    match field.items.as_ref()? {
        JSONSchemaPropsOrArray::Schema(schema) => Some(schema),
        JSONSchemaPropsOrArray::Schemas(schemas) => schemas.first(),
    }
}

fn values(field: &JSONSchemaProps) -> Option<&JSONSchemaProps> {
    match field.additional_properties.as_ref()? {
        JSONSchemaPropsOrBool::Schema(schema) => Some(schema),
        JSONSchemaPropsOrBool::Bool(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(kind: &str) -> &'static JSONSchemaProps {
        spec_schemas()
            .iter()
            .find(|(k, _)| k == kind)
            .map(|(_, s)| s)
            .unwrap()
    }

    #[test]
    fn every_kind_has_its_fields_walked() {
        let kinds: Vec<&String> = spec_schemas().iter().map(|(k, _)| k).collect();
        assert_eq!(kinds.len(), 6, "{kinds:?}");
        let mut paths = Vec::new();
        all_paths(schema("DestinationRule"), "spec", &mut paths);
        for expected in [
            "spec.subsets[].trafficPolicy.portLevelSettings[].tls.sni",
            "spec.workloadSelector.matchLabels{}",
            "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[].to{}",
        ] {
            assert!(
                paths.iter().any(|p| p == expected),
                "{expected} not in {paths:#?}"
            );
        }
    }

    #[test]
    fn set_fields_are_found_with_their_indexes() {
        let value = serde_json::json!({
            "hosts": ["reviews"],
            "exportTo": [],
            "http": [
                {"route": [{"destination": {"host": "reviews"}}]},
                {"retries": {"attempts": 2, "backoff": "1s"},
                 "match": [{"headers": {"x-user": {"exact": "a"}}}]}
            ]
        });
        let set = set_paths(schema("VirtualService"), &value, ("spec", "spec"));
        let general: Vec<&str> = set.iter().map(|(_, g)| g.as_str()).collect();
        assert!(general.contains(&"spec.http[].retries.backoff"));
        assert!(general.contains(&"spec.http[].match[].headers{}.exact"));
        assert!(
            !general.contains(&"spec.exportTo"),
            "an empty list is not set"
        );
        assert!(set.iter().any(|(p, _)| p == "spec.http[1].retries.backoff"));
        assert!(
            set.iter()
                .any(|(p, _)| p == "spec.http[1].match[0].headers[x-user].exact")
        );
    }
}
