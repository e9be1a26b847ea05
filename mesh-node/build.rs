//! Builds the kernel programs (mesh-ebpf) for the BPF target with the nightly toolchain and
//! bpf-linker, so the agent embeds the object it was built with.
//!
//! This is what `aya_build::build_ebpf` does, but quiet: aya-build prints every line of the
//! inner cargo's output (its `Compiling` progress included) as a cargo warning, so a clean build
//! greeted users with dozens of `warning:` lines that were not warnings. Here the output is kept
//! and shown only when the build fails; the compiler's own warnings are still passed on.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

const PACKAGE: &str = "mesh-ebpf";
const HINT: &str = "a missing bpf-linker or nightly rust-src is fixed by `cargo xtask setup`";

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.join("..");
    // The programs, the types they share with the agent, and the pinned versions they are
    // built with (aya-ebpf is pinned in the workspace's manifest and lock file).
    for path in ["mesh-ebpf", "mesh-common", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", workspace.join(path).display());
    }
    println!("cargo:rerun-if-env-changed=RUSTUP_TOOLCHAIN");
    let out_dir = PathBuf::from(env::var("OUT_DIR").context("OUT_DIR")?);
    let target = match env::var("CARGO_CFG_TARGET_ENDIAN").as_deref() {
        Ok("big") => "bpfeb-unknown-none",
        _ => "bpfel-unknown-none",
    };
    // The architecture the programs read kernel structures for: the agent's own.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH")?;
    let arch = match arch.as_str() {
        "riscv64gc" => "riscv64",
        other => other,
    };
    // Apart from this crate's own target directory: cargo would otherwise wait on its own lock.
    let target_dir = out_dir.join("ebpf-target");

    let mut cargo = Command::new("rustup");
    cargo
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--package",
            PACKAGE,
            "--bins",
        ])
        .args(["--release", "--target", target, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&workspace)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!("--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf"),
        )
        // The outer build's compiler is the stable one; the nightly's must be used.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    let output = cargo
        .output()
        .with_context(|| format!("running {cargo:?} ({HINT})"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        eprintln!("{stderr}");
        bail!("building {PACKAGE} failed (the compiler output is above; {HINT})");
    }
    for warning in compiler_warnings(&stderr) {
        println!("cargo:warning={warning}");
    }
    let object = target_dir.join(target).join("release").join(PACKAGE);
    copy(&object, &out_dir.join(PACKAGE))
}

/// The first line of each warning the compiler gave, with its location: cargo's progress lines
/// (`Compiling`, `Finished`) are not passed on.
fn compiler_warnings(stderr: &str) -> Vec<String> {
    let mut warnings = Vec::new();
    let mut lines = stderr.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(message) = line.trim_start().strip_prefix("warning: ") else {
            continue;
        };
        // The summary cargo adds ("`mesh-ebpf` (bin) generated 2 warnings") is not one.
        if message.contains(" generated ") && message.contains("warning") {
            continue;
        }
        let at = lines
            .peek()
            .and_then(|next| next.trim_start().strip_prefix("--> "))
            .map(|location| format!(" ({location})"))
            .unwrap_or_default();
        warnings.push(format!("{PACKAGE}: {message}{at}"));
    }
    warnings
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}
