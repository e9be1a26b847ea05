//! IPv6 and dual-stack capture: `connect6` for native IPv6 and for IPv4-mapped addresses (a
//! dual-stack socket reaching an IPv4 peer never passes `connect4`), and `sk_lookup`'s IPv6
//! branch for inbound. Needs root; run with `cargo xtask test`.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use anyhow::Result;
use mesh_tests::{
    AgentOptions, Testbed, Topology,
    traffic::{echo_round_trip, echo_server, read_greeting},
};

const PORT: u16 = 8080;

fn carried(agent: &mesh_tests::Agent, direction: &str, destination: SocketAddr) -> usize {
    agent
        .connections()
        .expect("reading /connections")
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|c| {
                    c["direction"] == direction && c["destination"] == destination.to_string()
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn native_ipv6_and_v4_mapped_connects_are_captured() -> Result<()> {
    let tb = Testbed::new(Topology::default())?;
    let (client, server) = (tb.pod("n0-p0"), tb.pod("n1-p0"));
    tb.set_pod_mode(&client.name, Some("ambient"))?;
    let agent = tb.start_agent("n0", &AgentOptions::default())?;
    agent.wait_enrolled(&client.key(), true)?;
    let _echo = echo_server(server.listen(PORT)?)?;

    // Native IPv6: redirected to [::1]:15001, forwarded from the pod's IPv6 address.
    let mut native = client.connect(server.addr6(PORT))?;
    let seen = read_greeting(&mut native)?;
    assert_eq!(seen.ip(), IpAddr::from(client.ip6), "server saw {seen}");
    echo_round_trip(&mut native, &vec![6u8; 256 * 1024])?;
    assert_eq!(carried(&agent, "outbound", server.addr6(PORT)), 1);

    // An IPv6 socket reaching an IPv4 peer through ::ffff:a.b.c.d.
    let mapped = SocketAddr::new(IpAddr::V6(server.ip.to_ipv6_mapped()), PORT);
    let mut dual = client.connect(mapped)?;
    let seen = read_greeting(&mut dual)?;
    assert_eq!(seen.ip(), IpAddr::from(client.ip), "server saw {seen}");
    echo_round_trip(&mut dual, b"v4-mapped")?;
    assert_eq!(
        carried(&agent, "outbound", server.addr(PORT)),
        1,
        "v4-mapped connect escaped capture"
    );
    Ok(())
}

#[test]
fn inbound_ipv6_to_an_enrolled_pod_is_captured() -> Result<()> {
    let tb = Testbed::new(Topology::default())?;
    let (client, server) = (tb.pod("n0-p1"), tb.pod("n1-p0"));
    tb.set_pod_mode(&server.name, Some("ambient"))?;
    let agent = tb.start_agent("n1", &AgentOptions::default())?;
    agent.wait_enrolled(&server.key(), true)?;
    let _echo = echo_server(server.listen(PORT)?)?;

    let mut stream = client.connect(server.addr6(PORT))?;
    let seen = read_greeting(&mut stream)?;
    assert_eq!(
        seen.ip(),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        "the app should be reached through the agent"
    );
    echo_round_trip(&mut stream, &vec![4u8; 64 * 1024])?;
    assert_eq!(carried(&agent, "inbound", server.addr6(PORT)), 1);
    Ok(())
}
