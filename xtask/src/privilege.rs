//! Running what needs root with root, and nothing else: builds stay the user's (a `target/`
//! owned by root would break the next build), while installing packages, building and running
//! images, and running the tests and the demo (network namespaces, cgroups, eBPF) go through
//! `sudo -E` when the user is not root. `sudo cargo ...` is not needed, and would not find a
//! rustup toolchain installed in the user's home.

use std::process::Command;

use anyhow::{Result, bail};

use crate::cmd::output;

pub fn is_root() -> bool {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| output(Command::new("id").arg("-u")).is_some_and(|uid| uid.trim() == "0"))
}

/// `program` as root: itself when we are root, else through `sudo -E` (the environment, such
/// as the paths of the binaries under test, goes along).
pub fn as_root(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut command = Command::new("sudo");
        command.args(["-E", "--", program]);
        command
    }
}

/// The cargo runner that runs test binaries as root (empty when we are root).
pub fn runner() -> Option<&'static str> {
    (!is_root()).then_some("sudo -E")
}

/// Asks for the sudo password once, up front, rather than in the middle of a long build.
pub fn ensure(why: &str) -> Result<()> {
    if is_root() {
        return Ok(());
    }
    eprintln!("{why} needs root: asking sudo once");
    let status = Command::new("sudo").arg("-v").status();
    match status {
        Ok(status) if status.success() => Ok(()),
        _ => bail!("{why} needs root: run as root, or as a user who may use sudo"),
    }
}
