//! HBONE between two nodes: certificates from the controller's CA, mutual TLS on the wire, and
//! each side seeing the other's SPIFFE identity. Needs root; run with `cargo xtask test`.

use std::net::SocketAddr;

use anyhow::Result;
use mesh_tests::{
    AgentOptions, Testbed, Topology, capture,
    traffic::{echo_round_trip, echo_server, read_greeting},
};

const PORT: u16 = 8080;
const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/default";

fn carried(
    agent: &mesh_tests::Agent,
    direction: &str,
    destination: SocketAddr,
) -> Vec<serde_json::Value> {
    let all = agent.connections().expect("reading /connections");
    all.as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["direction"] == direction && c["destination"] == destination.to_string())
        .cloned()
        .collect()
}

#[test]
fn enrolled_pods_talk_over_mutual_tls_and_see_each_others_identity() -> Result<()> {
    let tb = Testbed::new(Topology::default())?;
    tb.set_namespace_ambient("default", true)?;
    let (_controller, [a0, a1]) = tb.start_mesh(AgentOptions::default())?;
    let (client, server) = (tb.pod("n0-p0"), tb.pod("n1-p0"));
    a0.wait_enrolled(&client.key(), true)?;
    a1.wait_enrolled(&server.key(), true)?;
    let _echo = echo_server(server.listen(PORT)?)?;

    // Watch the wire between the nodes: the fabric side of node n1's link.
    let wire = capture::Capture::start(&tb.fabric_netns_path(), "n1")?;
    let marker = b"AMBIT-PLAINTEXT-MARKER-7f3a".repeat(64);
    let mut stream = client.connect(server.addr(PORT))?;
    let seen = read_greeting(&mut stream)?;
    assert_eq!(
        seen.ip(),
        std::net::IpAddr::from([127, 0, 0, 6]),
        "delivered by the server's agent"
    );
    echo_round_trip(&mut stream, &marker)?;
    echo_round_trip(&mut stream, &vec![0x42; 4 << 20])?;
    let frames = wire.finish();
    assert!(
        capture::has_tcp_port(&frames, 15008),
        "no HBONE traffic on the wire ({} frames)",
        frames.len()
    );
    assert!(
        !capture::contains(&frames, b"AMBIT-PLAINTEXT-MARKER"),
        "plaintext crossed the wire between nodes"
    );

    let outbound = carried(&a0, "outbound", server.addr(PORT));
    assert_eq!(outbound.len(), 1, "{outbound:?}");
    assert_eq!(
        outbound[0]["peer_identity"], CLIENT_ID,
        "the client checked the server's identity"
    );
    let inbound = carried(&a1, "inbound", server.addr(PORT));
    assert_eq!(inbound.len(), 1, "{inbound:?}");
    assert_eq!(
        inbound[0]["peer_identity"], CLIENT_ID,
        "the server saw the client's identity"
    );
    drop(stream);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let metrics = a1.metrics()?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total")
                && l.contains("connection_security_policy=\"mutual_tls\"")
                && l.contains(&format!("source_principal=\"{CLIENT_ID}\""))),
        "{metrics}"
    );
    let certs = a0.get(15000, "/certs")?.1;
    assert!(certs.contains(CLIENT_ID), "{certs}");
    Ok(())
}

#[test]
fn the_capture_sees_plaintext_when_there_is_some() -> Result<()> {
    // The negative check above is only worth something if the capture would have seen it.
    let tb = Testbed::new(Topology::default())?;
    let (client, server) = (tb.pod("n0-p1"), tb.pod("n1-p1"));
    let _echo = echo_server(server.listen(PORT)?)?;
    let wire = capture::Capture::start(&tb.fabric_netns_path(), "n1")?;
    let mut stream = client.connect(server.addr(PORT))?;
    read_greeting(&mut stream)?;
    echo_round_trip(&mut stream, b"AMBIT-PLAINTEXT-MARKER-7f3a")?;
    let frames = wire.finish();
    assert!(capture::contains(&frames, b"AMBIT-PLAINTEXT-MARKER"));
    Ok(())
}

#[test]
fn certificate_renewal_during_a_long_transfer_loses_no_bytes() -> Result<()> {
    let tb = Testbed::new(Topology::default())?;
    tb.set_namespace_ambient("default", true)?;
    // Four-second certificates: renewed every two seconds, several times during the transfer.
    let (_controller, [a0, a1]) = tb.start_mesh(AgentOptions {
        cert_lifetime: Some(4),
        ..AgentOptions::default()
    })?;
    let (client, server) = (tb.pod("n0-p0"), tb.pod("n1-p0"));
    a0.wait_enrolled(&client.key(), true)?;
    a1.wait_enrolled(&server.key(), true)?;
    let _sink = mesh_tests::traffic::checksum_server(server.listen(PORT)?)?;
    let issued = |agent: &mesh_tests::Agent| {
        agent
            .log_tail()
            .matches("workload certificate issued")
            .count()
    };
    let first_expiry = a0.get(15000, "/certs")?.1;
    // 24 MiB in 96 pieces with 60 ms pauses: about six seconds.
    mesh_tests::traffic::upload_paced_and_verify(
        client.connect(server.addr(PORT))?,
        24 << 20,
        std::time::Duration::from_millis(60),
    )?;
    assert_ne!(
        a0.get(15000, "/certs")?.1,
        first_expiry,
        "the client's certificate was not renewed"
    );
    assert!(
        issued(&a1) >= 3,
        "the server's certificate was renewed {} times",
        issued(&a1)
    );
    // New connections after the first certificates expired still work.
    let _echo = echo_server(server.listen(PORT + 1)?)?;
    let mut stream = client.connect(server.addr(PORT + 1))?;
    read_greeting(&mut stream)?;
    echo_round_trip(&mut stream, b"after renewal")?;
    Ok(())
}

#[test]
fn a_pod_enrolled_at_run_time_talks_hbone_at_once() -> Result<()> {
    // Agents start with nothing enrolled; the first connection right after the namespace joins
    // must wait for the new certificates rather than fail.
    let tb = Testbed::new(Topology::default())?;
    let (_controller, [a0, a1]) = tb.start_mesh(AgentOptions::default())?;
    let (client, server) = (tb.pod("n0-p0"), tb.pod("n1-p0"));
    let _echo = echo_server(server.listen(PORT)?)?;
    tb.set_namespace_ambient("default", true)?;
    a0.wait_enrolled(&client.key(), true)?;
    a1.wait_enrolled(&server.key(), true)?;
    let mut stream = client.connect(server.addr(PORT))?;
    read_greeting(&mut stream)?;
    echo_round_trip(&mut stream, b"first connection after joining")?;
    assert_eq!(
        carried(&a0, "outbound", server.addr(PORT))[0]["peer_identity"],
        CLIENT_ID
    );
    Ok(())
}
