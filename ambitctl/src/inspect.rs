//! What the mesh is doing, from the controller's admin endpoint (and a node agent's, for
//! certificates). Human tables by default, `-o json|yaml` for scripts.

use std::{io::Read as _, net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use mesh_api::common::Condition;
use mesh_core::{
    Identity,
    policy::{Connection, Decision, PolicySet, Workload},
};
use serde_json::Value;

use crate::{Cli, Output};

/// What a running mesh is doing.
#[derive(Subcommand)]
pub enum Inspect {
    /// Configuration version, subscribers (acknowledged version, last refusal), and resources
    /// that are not accepted.
    Status,
    /// Pods known to the mesh.
    Workloads,
    /// Services known to the mesh.
    Services,
    /// Istio resources and whether they are accepted.
    Policies,
    /// Workload certificates held by a node agent.
    Certs,
    /// Raw configuration.
    Config {
        #[command(subcommand)]
        what: ConfigWhat,
    },
    /// Explain whether `source` may connect to `destination:port`, and which policy decides.
    Check {
        /// `namespace/pod`.
        source: String,
        /// `namespace/pod:port`.
        destination: String,
    },
}

#[derive(Subcommand)]
pub enum ConfigWhat {
    /// Every resource the controller publishes.
    Dump,
}

/// Runs an inspection command against the admin endpoints.
pub fn run(cli: &Cli, command: &Inspect) -> Result<()> {
    let value = match command {
        Inspect::Status => get(cli.controller, "/status")?,
        Inspect::Workloads | Inspect::Services | Inspect::Config { .. } | Inspect::Check { .. } => {
            get(cli.controller, "/config_dump")?
        }
        Inspect::Policies => get(cli.controller, "/status")?,
        Inspect::Certs => get(cli.node, "/certs")?,
    };
    let (headers, rows, data) = match command {
        Inspect::Status => status(&value),
        Inspect::Workloads => listing(
            &value,
            "Workload",
            &[
                "NAMESPACE",
                "NAME",
                "NODE",
                "ADDRESSES",
                "SERVICE ACCOUNT",
                "ENROLLED",
                "WAYPOINT",
            ],
            |r| {
                let s = &r["spec"];
                vec![
                    text(&r["namespace"]),
                    text(&r["name"]),
                    text(&s["node"]),
                    text(&s["addresses"]),
                    text(&s["serviceAccount"]),
                    text(&s["enrolled"]),
                    text(&s["waypoint"]),
                ]
            },
        ),
        Inspect::Services => listing(
            &value,
            "Service",
            &[
                "NAMESPACE",
                "NAME",
                "HOSTNAME",
                "ADDRESSES",
                "PORTS",
                "WAYPOINT",
            ],
            |r| {
                let s = &r["spec"];
                let ports: Vec<String> = s["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| format!("{}/{}", p["port"], text(&p["protocol"])))
                    .collect();
                vec![
                    text(&r["namespace"]),
                    text(&r["name"]),
                    text(&s["hostname"]),
                    text(&s["addresses"]),
                    ports.join(","),
                    text(&s["waypoint"]),
                ]
            },
        ),
        Inspect::Policies => policies(&value),
        Inspect::Certs => (Vec::new(), Vec::new(), value.clone()),
        Inspect::Config { .. } => (Vec::new(), Vec::new(), value.clone()),
        Inspect::Check {
            source,
            destination,
        } => check(&value, source, destination)?,
    };
    match cli.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&data)?),
        Output::Yaml => print!("{}", serde_yaml::to_string(&data)?),
        Output::Table if headers.is_empty() => println!("{}", serde_json::to_string_pretty(&data)?),
        Output::Table => print_table(&headers, &rows),
    }
    Ok(())
}

/// `GET path` over HTTP/1.0 (the admin endpoints are plain HTTP on loopback).
pub fn get(addr: SocketAddr, path: &str) -> Result<Value> {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .with_context(|| format!("cannot reach the admin endpoint at {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("{addr}{path}: {}", head.lines().next().unwrap_or_default());
    }
    serde_json::from_str(body).with_context(|| format!("{addr}{path} did not answer JSON"))
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

type Table = (Vec<&'static str>, Vec<Vec<String>>, Value);

fn listing(
    dump: &Value,
    kind: &str,
    headers: &[&'static str],
    row: impl Fn(&Value) -> Vec<String>,
) -> Table {
    let items: Vec<Value> = dump["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["kind"] == kind)
        .cloned()
        .collect();
    let rows = items.iter().map(row).collect();
    (headers.to_vec(), rows, Value::Array(items))
}

/// The first problem a resource's conditions report (not accepted, refs unresolved, fields
/// ignored or failing closed), as the status column and its detail.
fn accepted(resource: &Value) -> (String, String) {
    let conditions: Vec<Condition> =
        serde_json::from_value(resource["conditions"].clone()).unwrap_or_default();
    match conditions.iter().find(|c| c.is_problem()) {
        Some(c) => (
            format!("{}={}", c.type_, c.status),
            format!("{}: {}", c.reason, c.message),
        ),
        None => ("Accepted".to_owned(), String::new()),
    }
}

fn status(value: &Value) -> Table {
    let mut rows = vec![vec![
        "config version".to_owned(),
        text(&value["version"]),
        String::new(),
    ]];
    for s in value["subscribers"].as_array().into_iter().flatten() {
        let nack = if s["nack"].is_null() {
            String::new()
        } else {
            format!(
                "refused v{}: {}",
                s["nack"]["version"],
                text(&s["nack"]["error"])
            )
        };
        rows.push(vec![
            format!("{} {}", text(&s["role"]), text(&s["node"])),
            format!("acked v{}", s["acked"]),
            nack,
        ]);
    }
    for r in value["resources"].as_array().into_iter().flatten() {
        let (state, why) = accepted(r);
        if !why.is_empty() {
            rows.push(vec![
                format!(
                    "{} {}/{}",
                    text(&r["kind"]),
                    text(&r["namespace"]),
                    text(&r["name"])
                ),
                state,
                why,
            ]);
        }
    }
    for e in value["errors"].as_array().into_iter().flatten() {
        rows.push(vec!["not loaded".to_owned(), String::new(), text(e)]);
    }
    (vec!["WHAT", "STATE", "DETAIL"], rows, value.clone())
}

fn policies(value: &Value) -> Table {
    let items: Vec<Value> = value["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let rows = items
        .iter()
        .map(|r| {
            let (state, why) = accepted(r);
            vec![
                text(&r["kind"]),
                text(&r["namespace"]),
                text(&r["name"]),
                state,
                why,
            ]
        })
        .collect();
    (
        vec!["KIND", "NAMESPACE", "NAME", "STATE", "REASON"],
        rows,
        Value::Array(items),
    )
}

/// Evaluates the published PeerAuthentications and AuthorizationPolicies the way the
/// destination's node agent does.
fn check(dump: &Value, source: &str, destination: &str) -> Result<Table> {
    let resources: Vec<&Value> = dump["resources"].as_array().into_iter().flatten().collect();
    let workload = |key: &str| -> Result<&Value> {
        let (ns, name) = key
            .split_once('/')
            .with_context(|| format!("{key:?} is not namespace/pod"))?;
        resources
            .iter()
            .copied()
            .find(|r| r["kind"] == "Workload" && r["namespace"] == ns && r["name"] == name)
            .with_context(|| format!("no workload {key}"))
    };
    let (dst_key, port) = destination
        .rsplit_once(':')
        .with_context(|| format!("{destination:?} is not namespace/pod:port"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("{port:?} is not a port"))?;
    let (src, dst) = (workload(source)?, workload(dst_key)?);
    let mut policies = PolicySet::with_root_namespace("istio-system");
    let mut errors = Vec::new();
    for r in resources
        .iter()
        .filter(|r| r["kind"] == "PeerAuthentication" || r["kind"] == "AuthorizationPolicy")
    {
        let refused = r["refused"].as_str();
        if let Err(error) = policies.add_streamed(
            &text(&r["kind"]),
            &text(&r["namespace"]),
            &text(&r["name"]),
            &r["spec"].to_string(),
            refused,
        ) {
            errors.push(error);
        }
    }
    let labels = |w: &Value| -> std::collections::BTreeMap<String, String> {
        w["spec"]["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), text(v)))
            .collect()
    };
    let dst_labels = labels(dst);
    let dst_ns = text(&dst["namespace"]);
    let target = Workload {
        namespace: &dst_ns,
        labels: &dst_labels,
    };
    let src_enrolled = src["spec"]["enrolled"] == true;
    let dst_enrolled = dst["spec"]["enrolled"] == true;
    let identity = Identity::new(
        "cluster.local",
        &text(&src["namespace"]),
        &text(&src["spec"]["serviceAccount"]),
    )?;
    let mtls = dst_enrolled && src_enrolled;
    let source_ip = text(&src["spec"]["addresses"][0])
        .parse()
        .unwrap_or([0, 0, 0, 0].into());
    let mode = policies.mtls_mode(target, port);
    let mut rows = vec![
        vec![
            "source".to_owned(),
            format!(
                "{source} ({})",
                if src_enrolled {
                    identity.to_string()
                } else {
                    "not enrolled: plaintext".to_owned()
                }
            ),
        ],
        vec![
            "destination".to_owned(),
            format!("{destination} (mTLS mode {mode:?})"),
        ],
    ];
    let verdict = if !dst_enrolled {
        "ALLOW: the destination is not in the mesh; no policy applies".to_owned()
    } else if !mtls && format!("{mode:?}").eq_ignore_ascii_case("strict") {
        format!(
            "DENY: {dst_key} requires mutual TLS (PeerAuthentication STRICT) and the source sends plaintext"
        )
    } else {
        let connection = Connection {
            source: mtls.then_some(&identity),
            source_ip,
            destination_port: port,
            request: None,
        };
        match policies.authorize(target, connection) {
            Decision::Allow => "ALLOW: no DENY matched, and any ALLOW policy admits it".to_owned(),
            Decision::Deny { policy, reason } => {
                format!("DENY by AuthorizationPolicy {policy}: {reason}")
            }
        }
    };
    rows.push(vec!["verdict".to_owned(), verdict.clone()]);
    for e in errors {
        rows.push(vec!["policy error".to_owned(), e.to_string()]);
    }
    let data = serde_json::json!({"source": source, "destination": destination, "mtls": mtls, "verdict": verdict});
    Ok((vec!["", ""], rows, data))
}

fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.len());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    if headers.iter().any(|h| !h.is_empty()) {
        line(headers.to_vec());
    }
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
