//! `cargo xtask images`: OCI images of the node agent, the controller (with `ambitctl`) and the
//! waypoint, built from scratch with buildah (no base image: nothing can be pulled here, and
//! nothing but the binary belongs in them), from static musl binaries.
//!
//! Release images are named as deploy/kustomization.yaml's `images:` says (the one place that
//! sets registry and tag) and exported as OCI archives under `target/images/`, which `kind
//! load image-archive`, `ctr import` and `podman load` take. `--test` builds the same images
//! from the dev profile, tagged `localhost/ambit-test/<name>:dev`, for the integration tests.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{Cargo, output, step};
use crate::privilege::as_root;

/// Static binaries: no libc to ship, and the images run on any node.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// What each image holds, and who runs it.
struct Component {
    image: &'static str,
    binaries: &'static [&'static str],
    /// The node agent needs root (with the DaemonSet's capabilities only); the others run as
    /// an unprivileged user, which `runAsNonRoot` needs spelled numerically.
    user: &'static str,
    description: &'static str,
}

const COMPONENTS: [Component; 3] = [
    Component {
        image: "mesh-node",
        binaries: &["mesh-node"],
        user: "0:0",
        description: "Ambit node agent: eBPF capture and the HBONE tunnel",
    },
    Component {
        image: "mesh-controller",
        binaries: &["mesh-controller", "ambitctl"],
        user: "65532:65532",
        description: "Ambit controller: configuration, validation and the mesh CA",
    },
    Component {
        image: "mesh-waypoint",
        binaries: &["mesh-waypoint"],
        user: "65532:65532",
        description: "Ambit waypoint and ingress gateway (L7)",
    },
];

/// Which images to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// What users ship: release profile, names from the kustomization, OCI archives.
    Release,
    /// For the integration tests: dev profile, `localhost/ambit-test/<name>:dev`.
    Test,
}

pub fn run(flavour: Flavour) -> Result<()> {
    let cargo = Cargo::new()?;
    let names = image_names(cargo.workspace_root(), flavour)?;
    let profile = match flavour {
        Flavour::Release => "release",
        Flavour::Test => "dev",
    };
    step(&format!(
        "building static binaries for the images ({MUSL_TARGET}, {profile} profile)"
    ));
    let mut args = vec!["build", "--target", MUSL_TARGET, "--profile", profile];
    for package in ["mesh-node", "mesh-controller", "mesh-waypoint", "ambitctl"] {
        args.extend(["-p", package]);
    }
    args.push("--bins");
    cargo.run(&args)?;
    let bin_dir = cargo
        .target_dir()
        .join(MUSL_TARGET)
        .join(if profile == "dev" { "debug" } else { profile });
    let out_dir = cargo.target_dir().join("images");
    std::fs::create_dir_all(&out_dir)?;
    let mut report = Vec::new();
    for component in &COMPONENTS {
        let name = &names[component.image];
        step(&format!("image {name}"));
        let context = out_dir.join(format!("{}-context", component.image));
        assemble(component, &bin_dir, cargo.workspace_root(), &context)?;
        crate::cmd::run(
            as_root("buildah")
                .args(["bud", "--quiet", "--layers=false", "--timestamp=0"])
                .args(["--tag", name])
                .arg(&context),
        )
        .context("buildah failed: `cargo xtask setup` installs it")?;
        let size = image_size(name)?;
        let mut line = format!("{name}: {:.1} MB", size as f64 / 1e6);
        if flavour == Flavour::Release {
            let archive = out_dir.join(format!("{}.tar", component.image));
            let _ = std::fs::remove_file(&archive);
            crate::cmd::run(
                as_root("podman")
                    .args(["save", "--quiet", "--format", "oci-archive", "--output"])
                    .arg(&archive)
                    .arg(name),
            )?;
            let archived = std::fs::metadata(&archive)?.len();
            line.push_str(&format!(
                " (OCI archive {}: {:.1} MB)",
                archive.display(),
                archived as f64 / 1e6
            ));
        }
        report.push(line);
        // The image keeps its own copy; the context is only an intermediate.
        std::fs::remove_dir_all(&context)?;
    }
    // Rebuilding under the same tag leaves the previous image untagged: drop those of ours.
    let _ = as_root("podman")
        .args([
            "image",
            "prune",
            "--force",
            "--filter",
            "label=io.ambit.image",
        ])
        .output();
    step("images");
    for line in report {
        eprintln!("  {line}");
    }
    if flavour == Flavour::Release {
        eprintln!(
            "  load them into kind with `kind load image-archive target/images/<name>.tar`, or \
             into containerd with `ctr -n k8s.io images import target/images/<name>.tar`"
        );
    }
    Ok(())
}

/// `<image> -> <name:tag>` for every component.
fn image_names(workspace: &Path, flavour: Flavour) -> Result<BTreeMap<&'static str, String>> {
    let mut names = BTreeMap::new();
    match flavour {
        Flavour::Test => {
            for component in &COMPONENTS {
                names.insert(
                    component.image,
                    format!("localhost/ambit-test/{}:dev", component.image),
                );
            }
        }
        Flavour::Release => {
            let kustomization = workspace.join("deploy/kustomization.yaml");
            let text = std::fs::read_to_string(&kustomization)
                .with_context(|| format!("reading {}", kustomization.display()))?;
            let parsed: serde_yaml::Value = serde_yaml::from_str(&text)?;
            for component in &COMPONENTS {
                let entry = parsed["images"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .find(|e| e["name"].as_str() == Some(component.image))
                    .with_context(|| {
                        format!(
                            "{} names no image {} under images:",
                            kustomization.display(),
                            component.image
                        )
                    })?;
                let name = entry["newName"].as_str().unwrap_or(component.image);
                let tag = entry["newTag"]
                    .as_str()
                    .context("an image without newTag")?;
                names.insert(component.image, format!("{name}:{tag}"));
            }
        }
    }
    Ok(names)
}

/// The build context: the binaries (static: nothing else is needed), the licenses, and a
/// Containerfile.
fn assemble(component: &Component, bin_dir: &Path, workspace: &Path, context: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(context);
    let bin = context.join("rootfs/usr/local/bin");
    std::fs::create_dir_all(&bin)?;
    for binary in component.binaries {
        let from = bin_dir.join(binary);
        let linked = output(Command::new("ldd").arg(&from)).unwrap_or_default();
        if !linked.is_empty() && !linked.contains("statically linked") {
            bail!("{} is not static: {linked}", from.display());
        }
        let to = bin.join(binary);
        std::fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
        // Debug information is most of a binary's size; the symbol table stays, so a panic's
        // backtrace still names functions.
        crate::cmd::run(Command::new("strip").arg("--strip-debug").arg(&to))?;
    }
    let licenses = context.join("rootfs/usr/share/licenses/ambit");
    std::fs::create_dir_all(&licenses)?;
    for file in licence_files(workspace, component)? {
        let name = file
            .strip_prefix(workspace)?
            .to_string_lossy()
            .replace('/', "-");
        std::fs::copy(&file, licenses.join(name))?;
    }
    let entrypoint = component.binaries[0];
    let version = env!("CARGO_PKG_VERSION");
    std::fs::write(
        context.join("Containerfile"),
        format!(
            "FROM scratch\n\
             COPY rootfs/ /\n\
             USER {user}\n\
             ENTRYPOINT [\"/usr/local/bin/{entrypoint}\"]\n\
             LABEL io.ambit.image=\"{image}\" \\\n\
             \x20     org.opencontainers.image.title=\"{image}\" \\\n\
             \x20     org.opencontainers.image.description=\"{description}\" \\\n\
             \x20     org.opencontainers.image.version=\"{version}\" \\\n\
             \x20     org.opencontainers.image.licenses=\"Apache-2.0{ebpf}\"\n",
            user = component.user,
            image = component.image,
            description = component.description,
            ebpf = if component.image == "mesh-node" {
                " AND (MIT OR GPL-2.0-only)"
            } else {
                ""
            },
        ),
    )?;
    Ok(())
}

/// The workspace's licence, and the eBPF object's own for the agent (its programs are loaded
/// into the kernel under a GPL-compatible licence).
fn licence_files(workspace: &Path, component: &Component) -> Result<Vec<PathBuf>> {
    let mut files = vec![workspace.join("LICENSE")];
    if component.image == "mesh-node" {
        files.push(workspace.join("mesh-ebpf/LICENSE-MIT"));
        files.push(workspace.join("mesh-ebpf/LICENSE-GPL-2.0"));
    }
    for file in &files {
        if !file.exists() {
            bail!("{} is missing", file.display());
        }
    }
    Ok(files)
}

fn image_size(name: &str) -> Result<u64> {
    let out = as_root("podman")
        .args(["image", "inspect", "--format", "{{.Size}}", name])
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("podman image inspect {name}"))
}
