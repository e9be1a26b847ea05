//! `ambitctl analyze`: YAML checked offline, as the controller would check it once applied,
//! with the controller's own loader and validator. One line per problem, as `istioctl
//! analyze` prints them: `Error [InvalidWeights] (VirtualService bookinfo/reviews
//! reviews.yaml document 2) spec.http[0].route weights sum to 110, not 100`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Result;
use clap::ValueEnum;
use mesh_controller::config::{
    ConfigSet, ObjectKey,
    load::parse_resource,
    validate::{ACCEPTED, FAILS_CLOSED, IGNORED_FIELDS, RESOLVED_REFS, validate},
};
use serde::Serialize;

use crate::Output;

/// `istioctl analyze`'s exit code when a message is at or above the failure threshold.
const EXIT_ISSUES: u8 = 79;
/// Its exit code when a file cannot be read or parsed.
const EXIT_UNREADABLE: u8 = 65;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
pub enum Level {
    Info,
    Warning,
    Error,
}

#[derive(Clone, Debug, Serialize)]
struct Message {
    level: Level,
    /// The reason, CamelCase (`InvalidWeights`, `UnknownField`, `IgnoredFields`).
    code: String,
    /// `Kind namespace/name`, when the document got that far.
    resource: String,
    /// `file document N`.
    origin: String,
    message: String,
}

pub fn run(paths: &[PathBuf], threshold: Level, domain: &str, output: Output) -> Result<ExitCode> {
    let mut messages = Vec::new();
    let mut unreadable = false;
    let mut set = ConfigSet::default();
    let mut origins: BTreeMap<ObjectKey, String> = BTreeMap::new();
    for file in yaml_files(paths, &mut messages, &mut unreadable) {
        let name = file.display().to_string();
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(error) => {
                unreadable = true;
                messages.push(problem(
                    Level::Error,
                    "Unreadable",
                    "",
                    &name,
                    error.to_string(),
                ));
                continue;
            }
        };
        for (i, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let origin = format!("{name} document {}", i + 1);
            let value = match <serde_yaml::Value as serde::Deserialize>::deserialize(document) {
                Ok(serde_yaml::Value::Null) => continue,
                Ok(value) => value,
                Err(error) => {
                    unreadable = true;
                    messages.push(problem(
                        Level::Error,
                        "NotYaml",
                        "",
                        &origin,
                        error.to_string(),
                    ));
                    // A YAML stream cannot be read past a syntax error.
                    break;
                }
            };
            let described = describe(&value);
            let api_version = value
                .get("apiVersion")
                .and_then(|v| v.as_str())
                .unwrap_or_default();
            let group = api_version.split_once('/').map_or("", |(g, _)| g);
            let kind = value
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or_default();
            if let Some(why) = mesh_controller::compatibility::not_served(group, kind) {
                messages.push(problem(
                    Level::Warning,
                    "NotServed",
                    &described,
                    &origin,
                    format!("{kind} is not served by Ambit: {why}"),
                ));
                continue;
            }
            match parse_resource(value) {
                Ok(resource) => {
                    let key = set.insert(resource);
                    if let Some(first) = origins.insert(key.clone(), origin.clone()) {
                        messages.push(problem(
                            Level::Info,
                            "Replaced",
                            &key.to_string(),
                            &origin,
                            format!("also defined in {first}; this one replaces it, as a later `kubectl apply` would"),
                        ));
                    }
                }
                Err(error) => messages.push(problem(
                    Level::Error,
                    "InvalidResource",
                    &described,
                    &origin,
                    error,
                )),
            }
        }
    }
    let validation = validate(&set, domain);
    for (key, findings) in &validation.findings {
        let origin = origins.get(key).map(String::as_str).unwrap_or_default();
        for finding in findings {
            let level = match finding.condition {
                ACCEPTED => Level::Error,
                // Hosts, subsets and Secrets may be defined elsewhere in the cluster.
                RESOLVED_REFS | FAILS_CLOSED => Level::Warning,
                IGNORED_FIELDS => Level::Info,
                _ => Level::Warning,
            };
            let code = match finding.condition {
                IGNORED_FIELDS | FAILS_CLOSED => finding.condition,
                _ => finding.reason,
            };
            messages.push(problem(
                level,
                code,
                &key.to_string(),
                origin,
                finding.message.clone(),
            ));
        }
    }
    messages.sort_by(|a, b| b.level.cmp(&a.level).then(a.origin.cmp(&b.origin)));
    let text = match output {
        Output::Json => serde_json::to_string_pretty(&messages)? + "\n",
        Output::Yaml => serde_yaml::to_string(&messages)?,
        Output::Table => messages
            .iter()
            .map(|m| {
                let at = [m.resource.as_str(), m.origin.as_str()]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ");
                format!("{:?} [{}] ({at}) {}\n", m.level, m.code, m.message)
            })
            .collect(),
    };
    crate::print(&text);
    if output == Output::Table && messages.iter().all(|m| m.level < Level::Warning) {
        eprintln!(
            "✔ No validation issues found when analyzing {} resource(s).",
            set.resources.len()
        );
    }
    if unreadable {
        return Ok(ExitCode::from(EXIT_UNREADABLE));
    }
    if messages.iter().any(|m| m.level >= threshold) {
        return Ok(ExitCode::from(EXIT_ISSUES));
    }
    Ok(ExitCode::SUCCESS)
}

fn problem(level: Level, code: &str, resource: &str, origin: &str, message: String) -> Message {
    Message {
        level,
        code: code.to_owned(),
        resource: resource.to_owned(),
        origin: origin.to_owned(),
        message,
    }
}

/// `Kind namespace/name` of a document, as far as it can be read.
fn describe(value: &serde_yaml::Value) -> String {
    fn text(v: Option<&serde_yaml::Value>) -> &str {
        v.and_then(|v| v.as_str()).unwrap_or("?")
    }
    let metadata = value.get("metadata");
    let namespace = metadata
        .and_then(|m| m.get("namespace"))
        .and_then(|n| n.as_str());
    let name = text(metadata.and_then(|m| m.get("name")));
    match namespace {
        Some(ns) => format!("{} {ns}/{name}", text(value.get("kind"))),
        None => format!("{} {name}", text(value.get("kind"))),
    }
}

/// The YAML files among `paths` (directories walked, in name order).
fn yaml_files(
    paths: &[PathBuf],
    messages: &mut Vec<Message>,
    unreadable: &mut bool,
) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for path in paths {
        collect(path, &mut files, messages, unreadable);
    }
    files
}

fn collect(
    path: &Path,
    files: &mut Vec<PathBuf>,
    messages: &mut Vec<Message>,
    unreadable: &mut bool,
) {
    if path.is_file() {
        files.push(path.to_owned());
        return;
    }
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(error) => {
            *unreadable = true;
            messages.push(problem(
                Level::Error,
                "Unreadable",
                "",
                &path.display().to_string(),
                error.to_string(),
            ));
            return;
        }
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for entry in entries {
        let yaml = entry.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if entry.is_dir() || yaml {
            collect(&entry, files, messages, unreadable);
        }
    }
}
