//! `cargo xtask`: the commands a user and CI run.
//!
//! # Layout
//! - `setup`: installs what a fresh machine lacks (Debian packages, rust-src, bpf-linker);
//! - `cmd`: running cargo and other programs with visible progress;
//! - here: `test`, `demo`, `bench`, each running `setup` first.
mod cmd;
mod setup;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::cmd::{Cargo, step};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what this machine lacks: Debian packages, nightly rust-src, bpf-linker.
    Setup,
    /// Lint and run every test (unit, integration, eBPF on the real kernel). Needs root.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Run the mesh on this machine: nodes and pods in network namespaces. Needs root.
    Demo,
    /// Regenerate deploy/crds/ from the resource types (a test fails when they drift).
    Codegen,
    /// Measure direct vs captured paths in the test-bed topology. Needs root.
    Bench {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// More arguments for the bench program (`--paths hbone`, `--hold 1000`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup => setup::run(),
        Command::Test { args } => test(&args),
        Command::Demo => release_run("ambit-demo", &[]),
        Command::Codegen => codegen(),
        Command::Bench { seconds, args } => {
            let seconds = seconds.to_string();
            let mut all = vec!["--seconds", seconds.as_str()];
            all.extend(args.iter().map(String::as_str));
            release_run("ambit-bench", &all)?;
            step("control plane: 10,000 pods, 1,000 services, 100 subscribers");
            Cargo::new()?.exec_binary("release", "ambit-config-bench", &[])?;
            step("L7: the waypoint beside HAProxy");
            Cargo::new()?.exec_binary("release", "ambit-l7-bench", &["--seconds", &seconds])
        }
    }
}

/// Builds the agent and the test-bed programs in release mode and runs one of the programs.
fn release_run(program: &str, args: &[&str]) -> Result<()> {
    setup::run()?;
    let cargo = Cargo::new()?;
    step("building (release)");
    cargo.run(&[
        "build",
        "--release",
        "-p",
        "mesh-node",
        "-p",
        "mesh-controller",
        "-p",
        "mesh-waypoint",
        "-p",
        "mesh-tests",
        "--bins",
    ])?;
    cargo.exec_binary("release", program, args)
}

fn codegen() -> Result<()> {
    let cargo = Cargo::new()?;
    step("generating deploy/crds/ from mesh-controller/src/resources");
    let dir = cargo.workspace_root().join("deploy/crds");
    let dir = dir.to_string_lossy();
    cargo.run(&[
        "run",
        "--quiet",
        "-p",
        "mesh-controller",
        "--bin",
        "ambit-crds",
        "--",
        &dir,
    ])
}

fn test(extra: &[String]) -> Result<()> {
    setup::run()?;
    let cargo = Cargo::new()?;
    step("checking formatting (cargo fmt --check)");
    cargo.run(&["fmt", "--all", "--", "--check"])?;
    step("linting (cargo clippy --all-targets -D warnings)");
    cargo.run(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    step("building the agent, controller and waypoint the integration tests start");
    cargo.run(&[
        "build",
        "-p",
        "mesh-node",
        "-p",
        "mesh-controller",
        "-p",
        "mesh-waypoint",
        "--bins",
    ])?;
    step("running every test (eBPF and network-namespace tests need root)");
    let mut args = vec!["test", "--no-fail-fast"];
    args.extend(extra.iter().map(String::as_str));
    cargo.run(&args)
}
