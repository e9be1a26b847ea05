//! Reading policy: from a directory of Istio YAML (local mode), or as the controller streams
//! it (the JSON of a spec, with the controller's verdict). Every document stands alone: one
//! that does not parse or validate is reported with where it came from, and the others
//! apply. A broken AuthorizationPolicy is still enforced, failing closed (see `evaluate`), so
//! a typo never opens access; so is one the controller refused, whatever this side thinks.

use std::path::Path;

use serde_yaml::Value;

use super::{
    Action, AuthorizationPolicy, AuthorizationPolicySpec, Metadata, MtlsMode, MtlsSetting,
    PeerAuthentication, PeerAuthenticationSpec, PolicySet,
};

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{file}: {}({kind} {name}): {message}", where_in_file(*.index))]
pub struct LoadError {
    /// The file, or `controller` for the stream.
    pub file: String,
    /// 1-based position of the document in its file (0 in the stream).
    pub index: usize,
    pub kind: String,
    /// `namespace/name`, or `?` when unreadable.
    pub name: String,
    pub message: String,
}

fn where_in_file(index: usize) -> String {
    match index {
        0 => String::new(),
        n => format!("document {n} "),
    }
}

/// Every `*.yaml` / `*.yml` file of `dir`, in name order.
pub fn load_dir(
    dir: &Path,
    root_namespace: &str,
) -> Result<(PolicySet, Vec<LoadError>), std::io::Error> {
    let files = crate::yaml_files(dir)?;
    let mut set = PolicySet::with_root_namespace(root_namespace);
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

/// Adds the policies in `text` to `set`; returns the problems found.
pub fn parse_documents(file: &str, text: &str, set: &mut PolicySet) -> Vec<LoadError> {
    let mut errors = Vec::new();
    for (index, document) in crate::yaml::documents(text) {
        let error = |kind: &str, name: &str, message: String| LoadError {
            file: file.to_owned(),
            index,
            kind: kind.to_owned(),
            name: name.to_owned(),
            message,
        };
        let value = match document {
            Ok(value) => value,
            Err(e) => {
                errors.push(error("?", "?", format!("not YAML: {e}")));
                continue;
            }
        };
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or("?");
        let api = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !api.starts_with("security.istio.io/") {
            continue; // Routing and other kinds are for the waypoint and the controller.
        }
        let metadata: Option<Metadata> = value
            .get("metadata")
            .and_then(|m| serde_yaml::from_value(m.clone()).ok());
        let Some(metadata) = metadata else {
            errors.push(error(kind, "?", "metadata.name is missing".into()));
            continue;
        };
        let name = format!("{}/{}", metadata.namespace, metadata.name);
        let spec = value
            .get("spec")
            .cloned()
            .unwrap_or(Value::Mapping(Default::default()));
        if let Err(message) = set.add(kind, metadata, spec, None) {
            errors.push(error(kind, &name, message));
        }
    }
    errors
}

impl PolicySet {
    /// Adds a policy as the controller streams it: the JSON of its spec, and `refused`, the
    /// controller's reason when it refused the policy.
    pub fn add_streamed(
        &mut self,
        kind: &str,
        namespace: &str,
        name: &str,
        json: &str,
        refused: Option<&str>,
    ) -> Result<(), LoadError> {
        let error = |message: String| LoadError {
            file: "controller".into(),
            index: 0,
            kind: kind.to_owned(),
            name: format!("{namespace}/{name}"),
            message,
        };
        let metadata = Metadata {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        };
        // An unreadable body still counts as a policy of this namespace (see `salvage`).
        let (spec, refused) = match serde_json::from_str::<Value>(json) {
            Ok(spec) => (spec, refused.map(str::to_owned)),
            Err(e) => (
                Value::Null,
                Some(format!("Unreadable: the body is not JSON: {e}")),
            ),
        };
        self.add(kind, metadata, spec, refused).map_err(error)
    }

    /// Adds one PeerAuthentication or AuthorizationPolicy, failing closed when `refused`
    /// says why it must be; `Err` says what is wrong with it and how it is enforced instead.
    fn add(
        &mut self,
        kind: &str,
        metadata: Metadata,
        spec: Value,
        refused: Option<String>,
    ) -> Result<(), String> {
        match kind {
            "PeerAuthentication" => {
                let parsed = match refused {
                    Some(why) => Err(why),
                    None => serde_yaml::from_value(spec.clone()).map_err(|e| e.to_string()),
                };
                let (spec, problem) = match parsed {
                    Ok(spec) => (spec, None),
                    Err(e) => (strict_salvage(&spec), Some(e)),
                };
                self.peer_authentications
                    .push(PeerAuthentication { metadata, spec });
                match problem {
                    None => Ok(()),
                    Some(e) => Err(format!("{e}; enforced as STRICT")),
                }
            }
            "AuthorizationPolicy" => {
                let (policy, problem) =
                    match serde_yaml::from_value::<AuthorizationPolicySpec>(spec.clone()) {
                        Ok(spec) => (AuthorizationPolicy { metadata, spec }, None),
                        Err(e) => (salvage(metadata, &spec), Some(format!("Unreadable: {e}"))),
                    };
                match self.add_authorization(policy, problem.or(refused)) {
                    None => Ok(()),
                    Some(why) => Err(format!("{why}; enforced as failing closed")),
                }
            }
            _ => Err(format!("unknown kind {kind}")),
        }
    }
}

/// What can be kept of an AuthorizationPolicy that does not parse: where it applies and its
/// action (DENY when even that is unreadable).
fn salvage(metadata: Metadata, spec: &Value) -> AuthorizationPolicy {
    let part = |field: &str| spec.get(field).cloned();
    let action = spec
        .get("action")
        .map(|a| serde_yaml::from_value(a.clone()).unwrap_or(Action::Deny))
        .unwrap_or(Action::Allow);
    AuthorizationPolicy {
        metadata,
        spec: AuthorizationPolicySpec {
            selector: part("selector").and_then(|s| serde_yaml::from_value(s).ok()),
            target_ref: part("targetRef"),
            target_refs: part("targetRefs"),
            action,
            ..Default::default()
        },
    }
}

/// A PeerAuthentication that does not parse: STRICT where it applies (its selector, when
/// readable; else its whole namespace), so plaintext a user meant to refuse is refused.
fn strict_salvage(spec: &Value) -> PeerAuthenticationSpec {
    PeerAuthenticationSpec {
        selector: spec
            .get("selector")
            .and_then(|s| serde_yaml::from_value(s.clone()).ok()),
        mtls: Some(MtlsSetting {
            mode: MtlsMode::Strict,
        }),
        ..Default::default()
    }
}
