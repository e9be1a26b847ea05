//! Ambit's controller: watches Kubernetes (or a directory of the same YAML), validates
//! Istio-style policy, issues SPIFFE certificates and streams configuration to node agents
//! and waypoints.
//!
//! # Layout
//! Not built yet: this binary only parses its flags. The control-plane and L4-tunnel issues
//! fill it (CRD types, validation, config sources, ConfigService, the CA, `ambitctl`). Until
//! then node agents read pods from a local file (`mesh-node --pods-file`).
use clap::Parser;

/// Ambit controller (not implemented yet: exits with an error saying so).
#[derive(Parser)]
#[command(name = "mesh-controller", version)]
struct Args {}

fn main() -> anyhow::Result<()> {
    Args::parse();
    anyhow::bail!(
        "mesh-controller is not implemented yet; run node agents with --pods-file (local mode)"
    )
}
