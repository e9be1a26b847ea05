//! Reading policy from a directory of Istio YAML (local mode's config source). Every document
//! stands alone: one that does not parse or validate is reported with its file, position and
//! name, and the others apply. A broken AuthorizationPolicy is still enforced, failing closed
//! (see `evaluate`), so a typo never opens access.

use std::path::Path;

use serde_yaml::Value;

use super::{
    Action, AuthorizationPolicy, AuthorizationPolicySpec, Metadata, PeerAuthentication, PolicySet,
    evaluate::{Enforced, cidr_contains},
};

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{file}: document {index} ({kind} {name}): {message}")]
pub struct LoadError {
    pub file: String,
    /// 1-based position of the document in its file.
    pub index: usize,
    pub kind: String,
    /// `namespace/name`, or `?` when unreadable.
    pub name: String,
    pub message: String,
}

/// Every `*.yaml` / `*.yml` file of `dir`, in name order.
pub fn load_dir(
    dir: &Path,
    root_namespace: &str,
) -> Result<(PolicySet, Vec<LoadError>), std::io::Error> {
    let files = crate::yaml_files(dir)?;
    let mut set = PolicySet {
        root_namespace: root_namespace.to_owned(),
        ..PolicySet::default()
    };
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

/// One policy as the controller streams it (kind, namespace, name and spec) as a YAML
/// document for [`parse_documents`], `---` included.
pub fn streamed_document(
    kind: &str,
    namespace: &str,
    name: &str,
    spec: &impl serde::Serialize,
) -> Result<String, serde_yaml::Error> {
    let mut metadata = serde_yaml::Mapping::new();
    metadata.insert("name".into(), name.into());
    metadata.insert("namespace".into(), namespace.into());
    let mut document = serde_yaml::Mapping::new();
    document.insert("apiVersion".into(), "security.istio.io/v1".into());
    document.insert("kind".into(), kind.into());
    document.insert("metadata".into(), metadata.into());
    document.insert("spec".into(), serde_yaml::to_value(spec)?);
    Ok(format!("---\n{}", serde_yaml::to_string(&document)?))
}

/// Adds the policies in `text` to `set`; returns the problems found.
pub fn parse_documents(file: &str, text: &str, set: &mut PolicySet) -> Vec<LoadError> {
    let mut errors = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let error = |kind: &str, name: &str, message: String| LoadError {
            file: file.to_owned(),
            index,
            kind: kind.to_owned(),
            name: name.to_owned(),
            message,
        };
        let value = match <Value as serde::Deserialize>::deserialize(document) {
            Ok(Value::Null) => continue,
            Ok(value) => value,
            Err(e) => {
                errors.push(error("?", "?", format!("not YAML: {e}")));
                // The rest of a stream after a syntax error cannot be trusted to be split right.
                break;
            }
        };
        let kind = value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        let api = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let metadata: Option<Metadata> = value
            .get("metadata")
            .and_then(|m| serde_yaml::from_value(m.clone()).ok());
        let name = metadata
            .as_ref()
            .map(|m| format!("{}/{}", m.namespace, m.name))
            .unwrap_or_else(|| "?".into());
        if !api.starts_with("security.istio.io/") {
            continue; // Routing and other kinds are for the waypoint and the controller.
        }
        let Some(metadata) = metadata else {
            errors.push(error(&kind, &name, "metadata.name is missing".into()));
            continue;
        };
        let spec = value
            .get("spec")
            .cloned()
            .unwrap_or(Value::Mapping(Default::default()));
        match kind.as_str() {
            "PeerAuthentication" => match serde_yaml::from_value(spec) {
                Ok(spec) => set
                    .peer_authentications
                    .push(PeerAuthentication { metadata, spec }),
                Err(e) => errors.push(error(&kind, &name, e.to_string())),
            },
            "AuthorizationPolicy" => {
                let parsed = serde_yaml::from_value::<AuthorizationPolicySpec>(spec.clone())
                    .map_err(|e| e.to_string())
                    .and_then(|spec| validate(&spec).map(|()| spec));
                match parsed {
                    Ok(spec) => set.add_authorization(AuthorizationPolicy { metadata, spec }),
                    Err(message) => {
                        errors.push(error(
                            &kind,
                            &name,
                            format!("{message}; enforced as failing closed"),
                        ));
                        let policy = salvage(metadata, &spec);
                        let namespace = policy.metadata.namespace.clone();
                        set.authorizations
                            .entry(namespace)
                            .or_default()
                            .push(Enforced::new(policy, true));
                    }
                }
            }
            _ => errors.push(error(&kind, &name, format!("unknown kind in {api}"))),
        }
    }
    errors
}

fn validate(spec: &AuthorizationPolicySpec) -> Result<(), String> {
    for rule in spec.rules.iter().flatten() {
        for source in rule.from.iter().flatten().map(|f| &f.source) {
            for block in source
                .ip_blocks
                .iter()
                .chain(&source.not_ip_blocks)
                .chain(&source.remote_ip_blocks)
            {
                if cidr_contains(block, [0, 0, 0, 0].into()).is_none() {
                    return Err(format!("ipBlocks: {block:?} is not an address or CIDR"));
                }
            }
        }
        for op in rule.to.iter().flatten().map(|t| &t.operation) {
            for port in op.ports.iter().chain(&op.not_ports) {
                if !port.parse::<u16>().is_ok_and(|p| p > 0) {
                    return Err(format!("ports: {port:?} is not a port number"));
                }
            }
        }
    }
    Ok(())
}

/// What can be kept of a policy that did not validate: where it applies and its action
/// (DENY when even that is unreadable).
fn salvage(metadata: Metadata, spec: &Value) -> AuthorizationPolicy {
    let selector = spec
        .get("selector")
        .and_then(|s| serde_yaml::from_value(s.clone()).ok());
    let action = spec
        .get("action")
        .map(|a| serde_yaml::from_value(a.clone()).unwrap_or(Action::Deny))
        .unwrap_or(Action::Allow);
    AuthorizationPolicy {
        metadata,
        spec: AuthorizationPolicySpec {
            selector,
            action,
            ..Default::default()
        },
    }
}
