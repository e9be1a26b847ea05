//! Reading resources from multi-document YAML, as `kubectl apply -f` takes it: local mode's
//! config directory. Every document stands alone: one that does not parse (malformed YAML, an
//! unknown kind or field, a wrong type) is reported with its file, position, kind, name and
//! the field at fault, and the other documents still load.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::{ConfigSet, Resource};
use mesh_api::{networking, security};

/// Where resources without `metadata.namespace` go, as with `kubectl apply`.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A document that could not be read (the same shape the node agent reports).
pub use mesh_core::policy::LoadError;

/// Every `*.yaml` / `*.yml` file of `dir`, in name order.
pub fn load_dir(dir: &Path) -> std::io::Result<(ConfigSet, Vec<LoadError>)> {
    let files = mesh_core::yaml_files(dir)?;
    let mut set = ConfigSet::default();
    let mut errors = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path)?;
        errors.extend(parse_documents(
            &path.display().to_string(),
            &text,
            &mut set,
        ));
    }
    Ok((set, errors))
}

/// Adds the resources in `text` to `set`; returns the documents that could not be read.
pub fn parse_documents(file: &str, text: &str, set: &mut ConfigSet) -> Vec<LoadError> {
    let mut errors = Vec::new();
    for (index, document) in mesh_core::yaml::documents(text) {
        let value = match document {
            Ok(value) => value,
            Err(error) => {
                errors.push(LoadError {
                    file: file.to_owned(),
                    index,
                    kind: "?".to_owned(),
                    name: "?".to_owned(),
                    message: format!("not YAML: {error}"),
                });
                continue;
            }
        };
        let (kind, name) = describe(&value);
        let salvaged = (kind == "AuthorizationPolicy").then(|| salvage_policy(&value));
        match parse_resource(value) {
            Ok(resource) => {
                set.insert(resource);
            }
            Err(message) => {
                if let Some(Some(policy)) = salvaged {
                    let key = set.insert(Resource::AuthorizationPolicy(Box::new(policy)));
                    set.unreadable.insert(key, message.clone());
                }
                errors.push(LoadError {
                    file: file.to_owned(),
                    index,
                    kind,
                    name,
                    message,
                })
            }
        }
    }
    errors
}

/// The kind and `namespace/name` of a document, as far as they can be read.
fn describe(value: &Value) -> (String, String) {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let kind = text(value.get("kind")).unwrap_or_else(|| "?".to_owned());
    let metadata = value.get("metadata");
    let name = text(metadata.and_then(|m| m.get("name"))).unwrap_or_else(|| "?".to_owned());
    let namespace = text(metadata.and_then(|m| m.get("namespace")));
    let name = match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name,
    };
    (kind, name)
}

/// What can be kept of an AuthorizationPolicy document whose spec does not parse: its name,
/// where it applies and its action (DENY when the action itself is unreadable). `None` when
/// not even its name and namespace can be read.
fn salvage_policy(value: &Value) -> Option<security::AuthorizationPolicy> {
    let metadata = value.get("metadata")?;
    let text = |field: &str| metadata.get(field).and_then(Value::as_str);
    let name = text("name").filter(|n| !n.is_empty())?;
    let namespace = text("namespace").unwrap_or(DEFAULT_NAMESPACE);
    let spec = value.get("spec");
    let part = |field: &str| spec.and_then(|s| s.get(field)).cloned();
    fn read<T: DeserializeOwned>(part: Option<Value>) -> Option<T> {
        part.and_then(|v| serde_yaml::from_value(v).ok())
    }
    let action =
        part("action").map(|a| serde_yaml::from_value(a).unwrap_or(security::Action::Deny));
    let mut policy = security::AuthorizationPolicy::new(
        name,
        security::AuthorizationPolicySpec {
            selector: read(part("selector")),
            target_ref: read(part("targetRef")),
            target_refs: read(part("targetRefs")).unwrap_or_default(),
            action,
            ..Default::default()
        },
    );
    policy.metadata.namespace = Some(namespace.to_owned());
    Some(policy)
}

/// One document as a typed resource.
pub fn parse_resource(mut value: Value) -> Result<Resource, String> {
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .ok_or("missing apiVersion")?
        .to_owned();
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .ok_or("missing kind")?
        .to_owned();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
    let served = |versions: &[&str]| {
        if versions.contains(&version) {
            Ok(())
        } else {
            Err(format!(
                "{kind} is served as {group}/{}, not {api_version}",
                versions.join(", ")
            ))
        }
    };
    let cluster_scoped = (group.is_empty() && matches!(kind.as_str(), "Namespace" | "Node"))
        || (group == "gateway.networking.k8s.io" && kind == "GatewayClass");
    if !cluster_scoped {
        default_namespace(&mut value);
    }
    if let Some(why) = crate::compatibility::not_served(group, &kind) {
        return Err(format!("{kind} ({group}) is not served by Ambit: {why}"));
    }
    match (group, kind.as_str()) {
        ("", "Namespace") => served(&["v1"]).and_then(|()| typed(value).map(Resource::Namespace)),
        ("", "Node") => served(&["v1"]).and_then(|()| typed(value).map(Resource::Node)),
        ("", "Service") => served(&["v1"]).and_then(|()| typed(value).map(Resource::Service)),
        ("", "Pod") => served(&["v1"]).and_then(|()| typed(value).map(Resource::Pod)),
        ("", "Secret") => served(&["v1"]).and_then(|()| typed(value).map(Resource::Secret)),
        ("", "ServiceAccount") => {
            served(&["v1"]).and_then(|()| typed(value).map(Resource::ServiceAccount))
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            served(&["v1"]).and_then(|()| typed(value).map(Resource::EndpointSlice))
        }
        ("networking.istio.io", kind) => {
            served(&["v1alpha3", "v1beta1", "v1"])?;
            // One schema in every version: read it as the stored one.
            set_api_version(&mut value, "networking.istio.io/v1");
            match kind {
                "VirtualService" => typed(value).map(|mut vs: Box<networking::VirtualService>| {
                    vs.spec.adopt_deprecated_spellings();
                    Resource::VirtualService(vs)
                }),
                "DestinationRule" => typed(value).map(Resource::DestinationRule),
                "Gateway" => typed(value).map(Resource::Gateway),
                "ServiceEntry" => typed(value).map(Resource::ServiceEntry),
                other => Err(format!("unsupported kind {other} in networking.istio.io")),
            }
        }
        ("security.istio.io", kind) => {
            served(&["v1beta1", "v1"])?;
            set_api_version(&mut value, "security.istio.io/v1");
            match kind {
                "PeerAuthentication" => typed(value).map(Resource::PeerAuthentication),
                "AuthorizationPolicy" => typed(value).map(Resource::AuthorizationPolicy),
                other => Err(format!("unsupported kind {other} in security.istio.io")),
            }
        }
        ("gateway.networking.k8s.io", "GatewayClass") => {
            served(&["v1beta1", "v1"])?;
            set_api_version(&mut value, "gateway.networking.k8s.io/v1");
            typed(value).map(Resource::GatewayClass)
        }
        ("gateway.networking.k8s.io", "Gateway") => {
            served(&["v1beta1", "v1"])?;
            set_api_version(&mut value, "gateway.networking.k8s.io/v1");
            typed(value).map(Resource::K8sGateway)
        }
        ("gateway.networking.k8s.io", "HTTPRoute") => {
            served(&["v1beta1", "v1"])?;
            set_api_version(&mut value, "gateway.networking.k8s.io/v1");
            typed(value).map(Resource::HttpRoute)
        }
        _ => Err(format!("unsupported resource {api_version} {kind}")),
    }
}

fn default_namespace(value: &mut Value) {
    if let Some(metadata) = value.get_mut("metadata").and_then(Value::as_mapping_mut)
        && !metadata.contains_key("namespace")
    {
        metadata.insert("namespace".into(), DEFAULT_NAMESPACE.into());
    }
}

fn set_api_version(value: &mut Value, api_version: &str) {
    if let Some(map) = value.as_mapping_mut() {
        map.insert("apiVersion".into(), api_version.into());
    }
}

/// Deserializes, naming the field at fault (`spec.http[0].route[1].weight: invalid type`).
fn typed<T: DeserializeOwned>(value: Value) -> Result<Box<T>, String> {
    let has_name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    if !has_name {
        return Err("metadata.name is required".to_owned());
    }
    serde_path_to_error::deserialize(value)
        .map(Box::new)
        .map_err(|error| {
            let path = error.path().to_string();
            let inner = error.into_inner();
            if path == "." {
                inner.to_string()
            } else {
                format!("{path}: {inner}")
            }
        })
}

#[cfg(test)]
mod tests;
