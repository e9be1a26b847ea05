//! `cargo xtask setup`: makes a fresh machine of this kind able to build, test and run Ambit.
//! Every step checks first, so a second run takes seconds.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::{
    cmd::{self, output, step},
    images::MUSL_TARGET,
    privilege::as_root,
};

/// What a command needs beyond building and running the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// `demo`: the mesh itself.
    Demo,
    /// `images`: buildah and the musl target.
    Images,
    /// `test`: images, podman to run them, kubernetes-validate.
    Test,
    /// `bench`: the baselines and load generators.
    Bench,
}

/// Debian packages every command calls.
const PACKAGES: &[(&str, &str)] = &[
    ("bpftool", "inspecting programs and maps"),
    ("iproute2", "network namespaces, veth, bridges"),
    ("procps", "sysctl inside namespaces"),
    ("protobuf-compiler", "gRPC code generation (protoc)"),
];
/// Building images: static binaries (musl-gcc for the C parts of ring and mimalloc) and
/// buildah; podman exports them.
const IMAGE_PACKAGES: &[(&str, &str)] = &[
    ("musl-tools", "static binaries for the images"),
    ("buildah", "building the images"),
    ("podman", "exporting and running the images"),
    ("runc", "the container runtime podman runs the images with"),
];
/// The tests that read the mesh as its users' tools do.
const OBSERVABILITY_PACKAGES: &[(&str, &str)] = &[
    (
        "prometheus",
        "scraping the test bed with the shipped scrape configuration, running Kiali's and the dashboards' queries",
    ),
    ("chromium", "the mesh page in a real browser (headless)"),
];
/// Only `cargo xtask bench` uses these.
const BENCH_PACKAGES: &[(&str, &str)] = &[
    ("iperf3", "throughput benchmarks"),
    ("haproxy", "the L7 benchmark's baseline proxy"),
    ("wrk", "HTTP load at saturation in the L7 benchmark"),
    ("nginx-light", "fast HTTP backends in the L7 benchmark"),
];
/// Offline Kubernetes schemas for validating deploy/ (the version pins the schemas).
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// Verified with the image's nightly (LLVM 22); see shared/EBPF-TOOLCHAIN.md.
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run(purpose: Purpose) -> Result<()> {
    step("setup: checking what this machine needs");
    let mut packages: Vec<(&str, &str)> = PACKAGES.to_vec();
    if matches!(purpose, Purpose::Images | Purpose::Test) {
        packages.extend(IMAGE_PACKAGES);
    }
    if purpose == Purpose::Test {
        packages.extend(OBSERVABILITY_PACKAGES);
    }
    if purpose == Purpose::Bench {
        packages.extend(BENCH_PACKAGES);
    }
    debian_packages(&packages)?;
    nightly_rust_src()?;
    bpf_linker()?;
    if matches!(purpose, Purpose::Images | Purpose::Test) {
        musl_target()?;
    }
    if purpose == Purpose::Test {
        python_tools()?;
    }
    eprintln!("setup: everything in place");
    Ok(())
}

fn debian_packages(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(name, _)| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", name]))
                .is_none_or(|status| !status.contains("install ok installed"))
        })
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        eprintln!(
            "setup: Debian packages present ({})",
            packages
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(());
    }
    for (name, why) in packages.iter().filter(|(n, _)| missing.contains(n)) {
        eprintln!("setup: need {name} ({why})");
    }
    crate::privilege::ensure(&format!("installing {}", missing.join(", ")))?;
    step("setup: apt-get update");
    cmd::run(as_root("apt-get").args(["update", "-q"]))?;
    step(&format!("setup: apt-get install {}", missing.join(" ")));
    cmd::run(
        as_root("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn nightly_rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .context("rustup cannot list nightly's components: is the nightly toolchain installed?")?;
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        eprintln!("setup: nightly rust-src present");
        return Ok(());
    }
    step("setup: rustup component add rust-src --toolchain nightly");
    cmd::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

/// bpf-linker must link against the nightly toolchain's own libLLVM: the prefix folder is
/// named after that library's file, so a different nightly gets a fresh build.
fn bpf_linker() -> Result<()> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("rustc +nightly does not run: is the nightly toolchain installed?")?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let llvm_so = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let version = output(Command::new("rustc").args(["+nightly", "-vV"])).unwrap_or_default();
    let llvm_major = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("cannot read nightly's LLVM version")?
        .to_owned();
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set")?;
    let prefix = home.join(".cargo/bpf-linker-llvm").join(&llvm_so);

    if let Some(linker) = output(Command::new("sh").args(["-c", "command -v bpf-linker"])) {
        let linked = output(Command::new("ldd").arg(linker.trim())).unwrap_or_default();
        if linked.contains(&prefix.display().to_string()) {
            eprintln!("setup: bpf-linker present, linked against nightly's {llvm_so}");
            return Ok(());
        }
    }
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so", llvm_so.as_str()] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&llvm_so), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    step(&format!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {llvm_major} (about 2 minutes)"
    ));
    cmd::run(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--no-default-features",
            ])
            .args(["--features", &format!("llvm-{llvm_major}")])
            .env("LLVM_PREFIX", &prefix),
    )
}

/// The Rust standard library for static musl binaries (what the images hold).
fn musl_target() -> Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))
        .context("rustup cannot list the installed targets")?;
    if installed.lines().any(|line| line.trim() == MUSL_TARGET) {
        eprintln!("setup: Rust target {MUSL_TARGET} present");
        return Ok(());
    }
    step(&format!("setup: rustup target add {MUSL_TARGET}"));
    cmd::run(Command::new("rustup").args(["target", "add", MUSL_TARGET]))
}

/// The Python virtualenv holding kubernetes-validate (PyPI), which the deploy/ test runs:
/// `<target>/tools/venv`.
pub fn python_venv() -> Result<PathBuf> {
    Ok(crate::cmd::Cargo::new()?.target_dir().join("tools/venv"))
}

fn python_tools() -> Result<()> {
    let venv = python_venv()?;
    let validate = venv.join("bin/kubernetes-validate");
    if validate.exists() {
        eprintln!("setup: {KUBERNETES_VALIDATE} present in {}", venv.display());
        return Ok(());
    }
    step(&format!(
        "setup: creating {} for {KUBERNETES_VALIDATE}",
        venv.display()
    ));
    cmd::run(Command::new("python3").arg("-m").arg("venv").arg(&venv))
        .context("creating a Python virtualenv failed; on Debian install python3-venv")?;
    cmd::run(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        KUBERNETES_VALIDATE,
    ]))
}
