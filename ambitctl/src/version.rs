//! `ambitctl version`: this client's version, the controller's, and the agents' and
//! waypoints' that subscribe to it (as `istioctl version` lists a mesh's).

use std::{collections::BTreeMap, process::ExitCode};

use anyhow::Result;
use serde_json::{Value, json};

use crate::{Cli, Output, inspect};

pub fn run(cli: &Cli) -> Result<ExitCode> {
    let client = format!("ambitctl {}", env!("CARGO_PKG_VERSION"));
    let status = inspect::get(cli.controller, "/status");
    let (controller, data_plane) = match &status {
        Ok(status) => {
            let controller = status["build"].as_str().unwrap_or("unknown").to_owned();
            // Subscribers by build: `mesh-node 0.1.0` -> how many.
            let mut builds: BTreeMap<String, usize> = BTreeMap::new();
            for subscriber in status["subscribers"].as_array().into_iter().flatten() {
                let build = match subscriber["build"].as_str() {
                    Some(b) if !b.is_empty() => b.to_owned(),
                    _ => "unknown".to_owned(),
                };
                *builds.entry(build).or_default() += 1;
            }
            (Some(controller), builds)
        }
        Err(_) => (None, BTreeMap::new()),
    };
    match cli.output {
        Output::Table => {
            println!("client version: {client}");
            match (&controller, &status) {
                (Some(controller), _) => println!("control plane version: {controller}"),
                (None, Err(error)) => println!("control plane version: unreachable ({error})"),
                (None, Ok(_)) => {}
            }
            if controller.is_some() {
                let listed: Vec<String> = data_plane
                    .iter()
                    .map(|(build, n)| format!("{build} ({n} subscriber{})", plural(*n)))
                    .collect();
                match listed.is_empty() {
                    true => println!("data plane version: none connected"),
                    false => println!("data plane version: {}", listed.join(", ")),
                }
            }
        }
        output => {
            let value: Value = json!({
                "clientVersion": client,
                "controlPlaneVersion": controller,
                "dataPlaneVersion": data_plane,
            });
            match output {
                Output::Yaml => print!("{}", serde_yaml::to_string(&value)?),
                _ => println!("{}", serde_json::to_string_pretty(&value)?),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
