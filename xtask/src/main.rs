//! `cargo xtask`: the commands a user and CI run.
//!
//! # Layout
//! - `setup`: installs what a fresh machine lacks (Debian packages, rust-src, bpf-linker);
//! - `images`: OCI images of the agent, the controller and the waypoint;
//! - `privilege`: what runs as root (through sudo for a user who is not);
//! - `cmd`: running cargo and other programs with visible progress;
//! - `fuzz`: the fuzz targets in `fuzz/`, built with nightly and run with cargo-fuzz;
//! - here: `test`, `demo`, `bench`, `images`, `fuzz`, each running `setup` first.
mod cmd;
mod fuzz;
mod images;
mod privilege;
mod setup;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use crate::{
    cmd::{Cargo, step},
    setup::Purpose,
};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what this machine lacks for the tests: Debian packages, nightly rust-src,
    /// bpf-linker, the musl target, kubernetes-validate. (`bench` adds its own packages.)
    Setup,
    /// Build the OCI images (agent, controller with ambitctl, waypoint) from static binaries,
    /// named as deploy/kustomization.yaml says, exported to target/images/*.tar.
    Images {
        /// The integration tests' images instead: dev profile, `localhost/ambit-test/*:dev`.
        #[arg(long)]
        test: bool,
    },
    /// Lint and run every test (unit, integration, eBPF on the real kernel, the images in
    /// podman). Runs the tests as root (through sudo for a user who is not).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Run the mesh on this machine: Bookinfo in network-namespace nodes and pods, a
    /// waypoint, and Istio's YAML from deploy/examples applied step by step. Needs root.
    Demo {
        /// Leave the mesh (and the mesh page) running until Ctrl-C.
        #[arg(long)]
        keep: bool,
        /// Check every measurement and skip the pauses (the test suite runs it so).
        #[arg(long)]
        check: bool,
    },
    /// Regenerate deploy/crds/ and docs/compatibility.md from the resource types (a test fails
    /// when they drift).
    Codegen,
    /// Fuzz the parsers a hostile pod or peer can feed (HBONE CONNECT, the waypoint's
    /// HTTP/1.1 response decoder, ClientHello/SNI, path normalization, Istio YAML, the pods
    /// file), each for the given time, from the corpus in fuzz/corpus.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Keep new inputs in fuzz/corpus (to commit after a long run).
        #[arg(long)]
        keep: bool,
    },
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
        Command::Setup => setup::run(Purpose::Test),
        Command::Images { test } => {
            setup::run(Purpose::Images)?;
            privilege::ensure("building images")?;
            images::run(match test {
                true => images::Flavour::Test,
                false => images::Flavour::Release,
            })
        }
        Command::Test { args } => test(&args),
        Command::Demo { keep, check } => {
            let flags = [(keep, "--keep"), (check, "--check")];
            let args: Vec<&str> = flags
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, f)| *f)
                .collect();
            release_run(Purpose::Demo, "ambit-demo", &args)
        }
        Command::Codegen => codegen(),
        Command::Fuzz { seconds, keep } => {
            setup::run(Purpose::Test)?;
            fuzz::run(seconds, keep)
        }
        Command::Bench { seconds, args } => {
            let seconds = seconds.to_string();
            let mut all = vec!["--seconds", seconds.as_str()];
            all.extend(args.iter().map(String::as_str));
            release_run(Purpose::Bench, "ambit-bench", &all)?;
            step("control plane: 10,000 pods, 1,000 services, 100 subscribers");
            Cargo::new()?.exec_binary("release", "ambit-config-bench", &[])?;
            step("L7: the waypoint beside HAProxy");
            Cargo::new()?.exec_binary("release", "ambit-l7-bench", &["--seconds", &seconds])
        }
    }
}

/// Builds the agent and the test-bed programs in release mode and runs one of the programs
/// (as root).
fn release_run(purpose: Purpose, program: &str, args: &[&str]) -> Result<()> {
    setup::run(purpose)?;
    privilege::ensure(program)?;
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
    step("generating deploy/crds/ and docs/compatibility.md from mesh-controller's types");
    let root = cargo.workspace_root();
    let dir = root.join("deploy/crds");
    let compatibility = root.join("docs/compatibility.md");
    cargo.run(&[
        "run",
        "--quiet",
        "-p",
        "mesh-controller",
        "--bin",
        "ambit-codegen",
        "--",
        &dir.to_string_lossy(),
        &compatibility.to_string_lossy(),
    ])
}

/// A mesh-node built apart from the test's own (another optimization level: other code, other
/// binary), copied to where `AMBIT_MESH_NODE_UPGRADE` points. The override changes the
/// package's hash, so both builds stay cached side by side and neither rebuilds the other.
fn upgrade_build(cargo: &Cargo) -> Result<()> {
    cargo.run(&[
        "build",
        "-p",
        "mesh-node",
        "--bin",
        "mesh-node",
        "--config",
        "profile.dev.package.mesh-node.opt-level=1",
    ])?;
    let built = cargo.target_dir().join("debug/mesh-node");
    let upgrade = cargo.upgrade_node();
    if let Some(dir) = upgrade.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::copy(&built, &upgrade)
        .with_context(|| format!("copying {} to {}", built.display(), upgrade.display()))?;
    Ok(())
}

fn test(extra: &[String]) -> Result<()> {
    setup::run(Purpose::Test)?;
    privilege::ensure("running the tests")?;
    let cargo = Cargo::new()?;
    step("checking formatting (cargo fmt --check)");
    cargo.run(&["fmt", "--all", "--", "--check"])?;
    step("linting (cargo clippy --all-targets -D warnings)");
    cargo.run(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    step("building a second mesh-node (opt-level 1), the build the upgrade test goes to");
    upgrade_build(&cargo)?;
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
    images::run(images::Flavour::Test)?;
    step("running every test (eBPF, network-namespace and container tests run as root)");
    let mut args = vec!["test", "--no-fail-fast"];
    args.extend(extra.iter().map(String::as_str));
    let mut command = cargo.command(&args);
    if let Some(runner) = privilege::runner() {
        command.env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER", runner);
    }
    let tests = cmd::run(&mut command);
    // A short run of every fuzz target (a filtered `cargo test` skips it).
    if extra.is_empty() {
        step("fuzz smoke: every target for 20 s");
        fuzz::run(20, false)?;
    }
    tests
}
