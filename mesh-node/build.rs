//! Builds the kernel programs (mesh-ebpf) for the BPF target with the nightly toolchain and
//! bpf-linker, so the agent embeds the object it was built with.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root_dir = std::path::Path::new(&manifest_dir).join("../mesh-ebpf");
    let root_dir = root_dir.to_str().context("mesh-ebpf path is not UTF-8")?;
    let package = aya_build::Package {
        name: "mesh-ebpf",
        root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
        .context("building mesh-ebpf failed (the compiler output is above; a missing bpf-linker or nightly rust-src is fixed by `cargo xtask setup`)")
}
