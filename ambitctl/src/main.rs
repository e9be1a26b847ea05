//! `ambitctl`: the operator's command line for an Ambit mesh.
//!
//! # Layout
//! - `inspect`: what a running mesh is doing (the controller's and a node agent's admin
//!   endpoints): status, workloads, services, policies, certificates, `check`;
//! - `analyze`: Istio YAML checked offline with the controller's own validator;
//! - `precheck`: whether this node can run the agent;
//! - `version`: this client's, the controller's and every agent's and waypoint's version;
//! - `dashboard`: the controller's mesh page in a browser (a port-forward in Kubernetes).
#![forbid(unsafe_code)]

mod analyze;
mod dashboard;
mod inspect;
mod precheck;
mod version;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "ambitctl",
    version,
    about = "Inspect, analyze and precheck an Ambit mesh"
)]
pub struct Cli {
    /// The controller's admin endpoint (`kubectl port-forward -n ambit-system
    /// deploy/ambit-controller 15014` in Kubernetes).
    #[arg(
        long,
        global = true,
        env = "AMBIT_CONTROLLER_ADMIN",
        default_value = "127.0.0.1:15014"
    )]
    pub controller: SocketAddr,
    /// A node agent's admin endpoint (for `certs`).
    #[arg(
        long,
        global = true,
        env = "AMBIT_NODE_ADMIN",
        default_value = "127.0.0.1:15000"
    )]
    pub node: SocketAddr,
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Subcommand)]
pub enum Command {
    #[command(flatten)]
    Inspect(inspect::Inspect),
    /// Check Istio (and Kubernetes) YAML offline with the controller's own validator: every
    /// problem with its file, document and field; exits 79 when one is at or above the
    /// failure threshold, 65 when a file cannot be read, as `istioctl analyze` does.
    Analyze {
        /// Files and directories (`*.yaml`, `*.yml`, recursively).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The lowest level that fails the run.
        #[arg(long, value_enum, default_value_t = analyze::Level::Error)]
        failure_threshold: analyze::Level,
        /// The cluster's DNS domain (service hostnames).
        #[arg(long, default_value = "cluster.local")]
        cluster_domain: String,
    },
    /// Whether this host can run the node agent: kernel, BTF, cgroup v2, bpffs, eBPF program
    /// types, capabilities. Run it on a node, as root.
    Precheck,
    /// This client's version, the controller's, and every agent's and waypoint's.
    Version,
    /// Open the controller's mesh page: the live service graph, the resources in force,
    /// weighted routing.
    Dashboard(dashboard::Dashboard),
}

/// Writes `text` to stdout; a reader that went away (`| head`) ends the output quietly.
pub fn print(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match &cli.command {
        Command::Analyze {
            paths,
            failure_threshold,
            cluster_domain,
        } => analyze::run(paths, *failure_threshold, cluster_domain, cli.output),
        Command::Precheck => precheck::run(cli.output),
        Command::Version => version::run(&cli),
        Command::Dashboard(options) => dashboard::run(cli.controller, options),
        Command::Inspect(command) => inspect::run(&cli, command).map(|()| ExitCode::SUCCESS),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ambitctl: {error:#}");
            ExitCode::FAILURE
        }
    }
}
