//! Ambit's waypoint: the optional L7 proxy (routing, splits, retries, fault injection, L7
//! authorization) that node agents send a service's traffic to over HBONE. The same binary
//! serves as the ingress gateway.
//!
//! # Layout
//! Not built yet: this binary only parses its flags. The L7 issue fills it (HBONE in,
//! route table, resilience, telemetry, ingress mode).
use clap::Parser;

/// Ambit waypoint proxy (not implemented yet: exits with an error saying so).
#[derive(Parser)]
#[command(name = "mesh-waypoint", version)]
struct Args {}

fn main() -> anyhow::Result<()> {
    Args::parse();
    anyhow::bail!(
        "mesh-waypoint is not implemented yet; the node agent (mesh-node) carries L4 traffic on its own"
    )
}
