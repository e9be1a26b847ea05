//! Sockmap acceleration of the app <-> agent hop, on and off: large transfers both ways must
//! arrive intact, and the sockhash must hold the hop's sockets only when it is on.
//! Needs root; run with `cargo xtask test`.

use anyhow::{Context as _, Result};
use mesh_tests::{
    AgentOptions, Testbed, Topology,
    traffic::{
        checksum_server, download_and_verify, read_greeting, source_server, upload_and_verify,
    },
};

const UPLOAD_PORT: u16 = 9000;
const DOWNLOAD_PORT: u16 = 9001;
const PROBE_PORT: u16 = 9002;
const TRANSFER: u64 = 64 << 20;

fn transfers_intact(accelerate: bool) -> Result<()> {
    let tb = Testbed::new(Topology::default())?;
    tb.set_namespace_ambient("default", true)?;
    let (client, server) = (tb.pod("n0-p0"), tb.pod("n1-p0"));
    let options = AgentOptions {
        accelerate,
        ..AgentOptions::default()
    };
    let a0 = tb.start_agent("n0", &options)?;
    let a1 = tb.start_agent("n1", &options)?;
    a0.wait_enrolled(&client.key(), true)?;
    a1.wait_enrolled(&server.key(), true)?;
    let _upload = checksum_server(server.listen(UPLOAD_PORT)?)?;
    let _download = source_server(server.listen(DOWNLOAD_PORT)?)?;
    let _probe = mesh_tests::traffic::echo_server(server.listen(PROBE_PORT)?)?;

    // While one connection is open, its loopback hop is in the sockhash iff accelerated.
    let mut probe = client
        .connect(server.addr(PROBE_PORT))
        .context("connecting the probe")?;
    read_greeting(&mut probe).context("probe greeting")?;
    let spliced = mesh_tests::bpf::dump(&a0.bpf_dir.join("accel_socks"))?.len();
    if accelerate {
        assert_eq!(
            spliced, 2,
            "both ends of the app <-> agent hop should be in the sockhash"
        );
    } else {
        assert_eq!(spliced, 0, "acceleration is off but sockets were spliced");
    }
    mesh_tests::traffic::echo_round_trip(&mut probe, &vec![9u8; 4 << 20]).context("probe echo")?;

    upload_and_verify(client.connect(server.addr(UPLOAD_PORT))?, TRANSFER).context("upload")?;
    download_and_verify(client.connect(server.addr(DOWNLOAD_PORT))?, TRANSFER)
        .context("download")?;
    Ok(())
}

#[test]
fn large_transfers_are_intact_without_acceleration() -> Result<()> {
    transfers_intact(false)
}

#[test]
fn large_transfers_are_intact_with_sockmap_acceleration() -> Result<()> {
    transfers_intact(true)
}
