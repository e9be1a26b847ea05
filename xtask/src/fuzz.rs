//! `cargo xtask fuzz`: builds the fuzz targets in `fuzz/` with nightly and cargo-fuzz
//! (libFuzzer), and runs each for a while from its committed corpus. A crash fails the run and
//! leaves the input under `target/fuzz/artifacts/<target>/` with the command to replay it.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{self, Cargo, output, step};

/// The targets, as `fuzz/Cargo.toml` declares them.
pub const TARGETS: [&str; 6] = [
    "hbone_connect",
    "h1_response",
    "client_hello",
    "path_normalization",
    "istio_yaml",
    "pods_file",
];

/// Runs every target for `seconds`. With `keep`, new inputs that add coverage go into the
/// committed corpus (`fuzz/corpus/<target>`), which is then minimized (`cargo fuzz cmin`), to
/// be committed after a long run; otherwise into a scratch directory, so a run leaves the
/// checkout as it was.
pub fn run(seconds: u64, keep: bool) -> Result<()> {
    cargo_fuzz()?;
    let cargo = Cargo::new()?;
    let fuzz_dir = cargo.workspace_root().join("fuzz");
    let target_dir = cargo.target_dir().join("fuzz");
    step("building the fuzz targets (nightly, cargo-fuzz)");
    cmd::run(fuzz_command(&fuzz_dir, &target_dir).args(["build", "--sanitizer", "none"]))?;
    let mut summary = Vec::new();
    for target in TARGETS {
        step(&format!("fuzzing {target} for {seconds} s"));
        let committed = fuzz_dir.join("corpus").join(target);
        let scratch = target_dir.join("corpus").join(target);
        let artifacts = target_dir.join("artifacts").join(target);
        for dir in [&committed, &scratch, &artifacts] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // libFuzzer writes new inputs to the first corpus directory and reads all of them.
        let (first, second) = match keep {
            true => (&committed, &scratch),
            false => (&scratch, &committed),
        };
        let log = target_dir.join(format!("{target}.log"));
        let status = fuzz_command(&fuzz_dir, &target_dir)
            .args(["run", "--sanitizer", "none", target])
            .arg(first)
            .arg(second)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"])
            .stdin(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .status()
            .context("starting cargo fuzz")?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let runs = final_stat(&text, "stat::number_of_executed_units:").unwrap_or(0);
        if !status.success() {
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "fuzz target {target} failed after {runs} runs (log {}):\n{}\n\
                 replay: cargo +nightly fuzz run --fuzz-dir {} {target} <input from {}>",
                log.display(),
                tail.join("\n"),
                fuzz_dir.display(),
                artifacts.display()
            );
        }
        if keep {
            minimize(&target_dir, target, &committed)?;
        }
        summary.push(format!("{target}: {runs} runs in {seconds} s, no failure"));
    }
    for line in summary {
        eprintln!("fuzz: {line}");
    }
    Ok(())
}

/// `cargo +nightly fuzz` for `fuzz_dir`, building into `target_dir`. The variables the outer
/// (stable) cargo set for xtask would point the nightly build at the stable compiler.
fn fuzz_command(fuzz_dir: &Path, target_dir: &Path) -> Command {
    let mut command = Command::new("cargo");
    command
        .arg("+nightly")
        .arg("fuzz")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(fuzz_dir);
    command
}

/// Cuts `corpus` down to inputs that each reach something the others do not (libFuzzer's
/// merge, with the binary just built: `cargo fuzz cmin` would build it again with other flags),
/// so that what a long run adds stays small enough to commit.
fn minimize(target_dir: &Path, target: &str, corpus: &Path) -> Result<()> {
    let binary = target_dir
        .join("x86_64-unknown-linux-gnu/release")
        .join(target);
    let merged = target_dir.join("merged").join(target);
    let _ = std::fs::remove_dir_all(&merged);
    std::fs::create_dir_all(&merged)?;
    step(&format!("minimizing the corpus of {target}"));
    cmd::run(
        Command::new(&binary)
            .arg("-merge=1")
            .arg(&merged)
            .arg(corpus)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    )?;
    std::fs::remove_dir_all(corpus)?;
    std::fs::create_dir_all(corpus)?;
    for entry in std::fs::read_dir(&merged)? {
        let entry = entry?;
        std::fs::copy(entry.path(), corpus.join(entry.file_name()))?;
    }
    Ok(())
}

/// Installs cargo-fuzz when missing.
fn cargo_fuzz() -> Result<()> {
    if output(Command::new("cargo").args(["fuzz", "--version"])).is_some() {
        return Ok(());
    }
    step("installing cargo-fuzz (crates.io, about 2 minutes)");
    cmd::run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}

/// A `-print_final_stats` value from libFuzzer's output.
fn final_stat(log: &str, name: &str) -> Option<u64> {
    log.lines()
        .rev()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_target_of_the_fuzz_crate_is_run() {
        let manifest = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/Cargo.toml"),
        )
        .unwrap();
        let declared: Vec<&str> = manifest
            .lines()
            .filter_map(|line| line.strip_prefix("name = \""))
            .filter_map(|rest| rest.strip_suffix('"'))
            .filter(|name| *name != "ambit-fuzz")
            .collect();
        assert_eq!(declared, super::TARGETS);
    }

    #[test]
    fn final_stats_are_read() {
        let log = "#1000 DONE\nstat::number_of_executed_units: 123456\nstat::peak_rss_mb: 80\n";
        assert_eq!(
            super::final_stat(log, "stat::number_of_executed_units:"),
            Some(123456)
        );
    }
}
