//! Kiali's "weighted routing" from the mesh page: a service's traffic shared between the
//! subsets of its DestinationRule by weight. The page writes the VirtualService Kiali's
//! wizard writes (named after the service, labelled `kiali_wizard: weighted_routing`)
//! through the configuration source, a file of the config directory in local mode or the
//! API server in Kubernetes, after the controller's own validation; a service routed by a
//! VirtualService someone else wrote is left alone, as Kiali leaves it.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    config::{
        ConfigSet, Kind, ObjectKey, Resource, load,
        validate::{self, fqdn},
    },
    source::kube::api_resource,
};

/// The label Kiali's wizards put on what they write.
const WIZARD_LABEL: (&str, &str) = ("kiali_wizard", "weighted_routing");

/// A service whose traffic can be shared between versions.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ServiceRouting {
    pub namespace: String,
    pub name: String,
    pub host: String,
    /// Its DestinationRule's subsets.
    pub subsets: Vec<String>,
    /// The weights in force, when one VirtualService shares all of its traffic by weight.
    pub weights: BTreeMap<String, u32>,
    /// The VirtualService that routes it, if one does.
    pub route: Option<String>,
    /// Whether the page may write its routing, and if not, why.
    pub editable: bool,
    pub reason: Option<String>,
}

/// What the page asks for.
#[derive(Clone, Debug, Deserialize)]
pub struct WeightChange {
    pub namespace: String,
    pub service: String,
    pub weights: BTreeMap<String, u32>,
}

/// Where routing is written: the same place the controller reads it from.
pub enum Store {
    /// Local mode: the controller's config directory.
    Dir(PathBuf),
    /// Kubernetes: VirtualServices written by server-side apply.
    Kubernetes(kube::Client),
    /// Local mode without a config directory: nothing to route.
    Unavailable,
}

/// Every service with subsets, and how it is routed now.
pub fn services(set: &ConfigSet, domain: &str) -> Vec<ServiceRouting> {
    let mut services = Vec::new();
    for (key, resource) in &set.resources {
        if key.kind != Kind::DestinationRule {
            continue;
        }
        let Some(spec) = resource.istio_spec() else {
            continue;
        };
        let Some(host) = spec["host"].as_str() else {
            continue;
        };
        let host = fqdn(host, &key.namespace, domain);
        let subsets: Vec<String> = spec["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["name"].as_str().map(str::to_owned))
            .collect();
        if subsets.len() < 2 {
            continue;
        }
        let mut service = ServiceRouting {
            namespace: key.namespace.clone(),
            name: host.split('.').next().unwrap_or_default().to_owned(),
            host: host.clone(),
            subsets,
            weights: BTreeMap::new(),
            route: None,
            editable: true,
            reason: None,
        };
        if let Some((vs_key, vs)) = routing_of(set, &host, domain) {
            service.route = Some(format!("{}/{}", vs_key.namespace, vs_key.name));
            let spec = vs.istio_spec().unwrap_or_default();
            service.weights = weights_of(&spec, &host, &key.namespace, domain).unwrap_or_default();
            let owned = vs
                .meta()
                .labels
                .as_ref()
                .and_then(|l| l.get(WIZARD_LABEL.0))
                .is_some_and(|v| v == WIZARD_LABEL.1);
            if !owned {
                service.editable = false;
                service.reason = Some(format!(
                    "VirtualService {}/{} routes it and was not written by Kiali's wizard or this page (label {}: {})",
                    vs_key.namespace, vs_key.name, WIZARD_LABEL.0, WIZARD_LABEL.1
                ));
            } else if service.weights.is_empty() {
                service.editable = false;
                service.reason = Some(format!(
                    "VirtualService {}/{} routes it by more than weight",
                    vs_key.namespace, vs_key.name
                ));
            }
        }
        services.push(service);
    }
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    services
}

/// The mesh VirtualService for `host`, if one routes it.
fn routing_of<'a>(
    set: &'a ConfigSet,
    host: &str,
    domain: &str,
) -> Option<(&'a ObjectKey, &'a Resource)> {
    set.resources.iter().find(|(key, resource)| {
        key.kind == Kind::VirtualService
            && resource.istio_spec().is_some_and(|spec| {
                let mesh = spec["gateways"]
                    .as_array()
                    .is_none_or(|g| g.is_empty() || g.iter().any(|g| g == "mesh"));
                mesh && spec["hosts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .any(|h| fqdn(h, &key.namespace, domain) == host)
            })
    })
}

/// The weights of a VirtualService whose one rule shares `host`'s traffic between subsets.
fn weights_of(
    spec: &Value,
    host: &str,
    namespace: &str,
    domain: &str,
) -> Option<BTreeMap<String, u32>> {
    let rules = spec["http"].as_array()?;
    let [rule] = rules.as_slice() else {
        return None;
    };
    if rule.get("match").is_some_and(|m| !m.is_null()) {
        return None;
    }
    let mut weights = BTreeMap::new();
    let routes = rule["route"].as_array()?;
    for route in routes {
        let destination = &route["destination"];
        if fqdn(destination["host"].as_str()?, namespace, domain) != host {
            return None;
        }
        let subset = destination["subset"].as_str()?.to_owned();
        let weight = match route["weight"].as_u64() {
            Some(w) => u32::try_from(w).ok()?,
            // One destination without a weight takes everything.
            None if routes.len() == 1 => 100,
            None => 0,
        };
        weights.insert(subset, weight);
    }
    Some(weights)
}

/// The VirtualService Kiali's wizard writes for these weights.
pub fn virtual_service(service: &ServiceRouting, weights: &BTreeMap<String, u32>) -> Value {
    let routes: Vec<Value> = weights
        .iter()
        .map(|(subset, weight)| {
            json!({"destination": {"host": service.host, "subset": subset}, "weight": weight})
        })
        .collect();
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {
            "name": service.name,
            "namespace": service.namespace,
            "labels": {WIZARD_LABEL.0: WIZARD_LABEL.1},
        },
        "spec": {"hosts": [service.host], "http": [{"route": routes}]},
    })
}

/// An object as the controller reads it from YAML.
pub fn resource_of(object: &Value) -> Result<Resource, String> {
    load::parse_resource(serde_yaml::to_value(object).map_err(|e| e.to_string())?)
}

/// Checks a change against the service as it is: known subsets, weights summing to 100.
pub fn check(service: &ServiceRouting, change: &WeightChange) -> Result<(), String> {
    if !service.editable {
        return Err(service.reason.clone().unwrap_or_default());
    }
    for subset in change.weights.keys() {
        if !service.subsets.contains(subset) {
            return Err(format!(
                "{} has no subset {subset} (its DestinationRule has {})",
                service.host,
                service.subsets.join(", ")
            ));
        }
    }
    let total: u32 = change.weights.values().sum();
    if total != 100 {
        return Err(format!("the weights add up to {total}, not 100"));
    }
    Ok(())
}

impl Store {
    /// Writes `object`, a VirtualService, after the controller's validation accepts it in
    /// `set` (the configuration it joins).
    pub async fn write(
        &self,
        mut set: ConfigSet,
        object: Value,
        domain: &str,
    ) -> Result<(), String> {
        let resource = resource_of(&object)?;
        let key = set.insert(resource);
        let validation = validate::validate(&set, domain);
        if let Some(refusal) = validation.refusal(&key) {
            return Err(refusal);
        }
        match self {
            Store::Dir(dir) => write_file(dir, &key, &object),
            Store::Kubernetes(client) => apply(client, &key, &object).await,
            Store::Unavailable => {
                Err("the controller reads no configuration directory (--config-dir)".to_owned())
            }
        }
    }
}

/// The page's own file for a resource; a resource it wrote before is found there.
fn write_file(dir: &Path, key: &ObjectKey, object: &Value) -> Result<(), String> {
    let name = format!("mesh-page.{}.{}.yaml", key.namespace, key.name);
    // A wizard-labelled VirtualService in someone's file of several documents stays theirs.
    for path in mesh_core::yaml_files(dir).map_err(|e| e.to_string())? {
        if path
            .file_name()
            .is_some_and(|f| f.to_string_lossy() == name)
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
        let mut set = ConfigSet::default();
        load::parse_documents("", &text, &mut set);
        if set.resources.contains_key(key) {
            if set.resources.len() == 1 {
                return replace(&path, object);
            }
            return Err(format!(
                "{}/{} is written in {} beside other resources: edit it there",
                key.namespace,
                key.name,
                path.display()
            ));
        }
    }
    replace(&dir.join(name), object)
}

/// Replaces a file whole (written aside, then renamed: the source never reads half of it).
fn replace(path: &Path, object: &Value) -> Result<(), String> {
    let text = serde_yaml::to_string(object).map_err(|e| e.to_string())?;
    let aside = path.with_extension("yaml.writing");
    std::fs::write(&aside, text).map_err(|e| format!("{}: {e}", aside.display()))?;
    std::fs::rename(&aside, path).map_err(|e| format!("{}: {e}", path.display()))
}

async fn apply(client: &kube::Client, key: &ObjectKey, object: &Value) -> Result<(), String> {
    let resource = api_resource(
        "networking.istio.io",
        "v1",
        "VirtualService",
        "virtualservices",
    );
    let api: kube::Api<kube::api::DynamicObject> =
        kube::Api::namespaced_with(client.clone(), &key.namespace, &resource);
    let params = kube::api::PatchParams::apply("ambit-mesh-page").force();
    api.patch(&key.name, &params, &kube::api::Patch::Apply(object))
        .await
        .map(|_| ())
        .map_err(|e| format!("writing {}/{}: {e}", key.namespace, key.name))
}

#[cfg(test)]
mod tests;
