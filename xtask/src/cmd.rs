//! Running programs with their output shown, and failing with what to do next.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Prints a progress line that stands out from the tools' own output.
pub fn step(what: &str) {
    eprintln!("\x1b[1m==> {what}\x1b[0m");
}

/// Runs a command with inherited output; fails if it fails.
pub fn run(command: &mut Command) -> Result<()> {
    let status = command
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

/// Runs a command and returns its stdout, or `None` if it cannot run or fails.
pub fn output(command: &mut Command) -> Option<String> {
    let out = command.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub struct Cargo {
    program: String,
    workspace: PathBuf,
}

impl Cargo {
    pub fn new() -> Result<Self> {
        let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has no parent directory")?
            .to_owned();
        Ok(Self {
            program: std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
            workspace,
        })
    }

    pub fn workspace_root(&self) -> &std::path::Path {
        &self.workspace
    }

    pub fn target_dir(&self) -> PathBuf {
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.workspace.join("target"))
    }

    /// The second mesh-node build the upgrade test goes to.
    pub fn upgrade_node(&self) -> PathBuf {
        self.target_dir().join("upgrade/mesh-node")
    }

    pub fn run(&self, args: &[&str]) -> Result<()> {
        run(&mut self.command(args))
    }

    /// `cargo <args>` in the workspace, with the paths the integration tests take the
    /// binaries under test from.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.program);
        command
            .args(args)
            .current_dir(&self.workspace)
            .env("AMBIT_MESH_NODE", self.target_dir().join("debug/mesh-node"))
            .env("AMBIT_MESH_NODE_UPGRADE", self.upgrade_node())
            .env(
                "AMBIT_MESH_WAYPOINT",
                self.target_dir().join("debug/mesh-waypoint"),
            )
            .env(
                "AMBIT_MESH_CONTROLLER",
                self.target_dir().join("debug/mesh-controller"),
            )
            .env("AMBIT_PYTHON_VENV", self.target_dir().join("tools/venv"));
        command
    }

    /// Runs a built binary of the workspace as root (through sudo when the user is not),
    /// passing the agent built in the same profile.
    pub fn exec_binary(&self, profile: &str, name: &str, args: &[&str]) -> Result<()> {
        let dir = self.target_dir().join(profile);
        run(crate::privilege::as_root(&dir.join(name).to_string_lossy())
            .args(args)
            .current_dir(&self.workspace)
            .env("AMBIT_MESH_NODE", dir.join("mesh-node"))
            .env("AMBIT_MESH_WAYPOINT", dir.join("mesh-waypoint"))
            .env("AMBIT_MESH_CONTROLLER", dir.join("mesh-controller")))
    }
}
