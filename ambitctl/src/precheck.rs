//! `ambitctl precheck`: the node agent's own host checks, printed one per line.

use std::process::ExitCode;

use anyhow::Result;
use mesh_node::precheck::{self, Outcome};

use crate::Output;

pub fn run(output: Output) -> Result<ExitCode> {
    let checks = precheck::run();
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&checks)?),
        Output::Yaml => print!("{}", serde_yaml::to_string(&checks)?),
        Output::Table => {
            for check in &checks {
                let mark = match check.outcome {
                    Outcome::Pass => "✔",
                    Outcome::Warn => "!",
                    Outcome::Fail => "✘",
                };
                println!("{mark} {:<20} {}", check.name, check.detail);
            }
        }
    }
    let failed = checks.iter().filter(|c| c.outcome == Outcome::Fail).count();
    if failed > 0 {
        eprintln!("{failed} check(s) failed: this host cannot run the Ambit node agent as it is");
        return Ok(ExitCode::FAILURE);
    }
    if output == Output::Table {
        eprintln!("✔ this host can run the Ambit node agent");
    }
    Ok(ExitCode::SUCCESS)
}
