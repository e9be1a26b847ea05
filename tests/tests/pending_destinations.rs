//! Original destinations waiting for the agent's accept are kept per pod and keyed by the
//! client's family, address and port. Two defects this guards against: a v4 and a v6 socket
//! on one port shared an entry, so one connection was sent to the other's destination; and a
//! node-wide LRU let one pod's backlog of pending connects evict other pods' entries. The
//! agent is paused (SIGSTOP) while the apps connect, so every entry is pending at once: the
//! kernel completes the handshakes into the agent's backlog without it. Needs root; run with
//! `cargo xtask test`.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, Result};
use mesh_common::PENDING_PER_POD;
use mesh_tests::{
    Agent, AgentOptions, Pod, Testbed, Topology,
    traffic::{echo_round_trip, echo_server, read_greeting},
};
use socket2::{Domain, Socket, Type};

const PORT: u16 = 8080;

/// Holds the agent stopped; resumes it when dropped, so a failing test never leaves it so.
struct Paused(u32);

impl Paused {
    fn agent(agent: &Agent) -> Result<Self> {
        let pid = agent.pid().context("the agent is not running")?;
        signal(pid, libc::SIGSTOP)?;
        Ok(Self(pid))
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = signal(self.0, libc::SIGCONT);
    }
}

fn signal(pid: u32, signal: i32) -> Result<()> {
    // SAFETY: sends a signal to a process this test started; no memory is involved.
    if unsafe { libc::kill(pid as i32, signal) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// A connection from `pod` whose source port is `port`, as an app that binds before it
/// connects; `v6only` keeps an IPv6 socket off the IPv4 port space.
fn connect_from_port(pod: &Pod, local: SocketAddr, to: SocketAddr) -> Result<TcpStream> {
    // A socket belongs to the namespace it is created in.
    let socket = pod.enter(|| -> std::io::Result<Socket> {
        let socket = Socket::new(Domain::for_address(local), Type::STREAM, None)?;
        if local.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_reuse_address(true)?;
        socket.bind(&local.into())?;
        socket.connect_timeout(&to.into(), Duration::from_secs(5))?;
        Ok(socket)
    })??;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    Ok(stream)
}

#[test]
fn a_v4_and_a_v6_socket_on_one_port_keep_their_own_destinations() -> Result<()> {
    let tb = Testbed::new(Topology::default())?;
    let (client, server) = (tb.pod("n0-p0"), tb.pod("n1-p0"));
    tb.set_pod_mode(&client.name, Some("ambient"))?;
    let agent = tb.start_agent("n0", &AgentOptions::default())?;
    agent.wait_enrolled(&client.key(), true)?;
    let _echo = echo_server(server.listen(PORT)?)?;

    let port = 41000;
    let (mut v4, mut v6) = {
        let _paused = Paused::agent(&agent)?;
        let v4 = connect_from_port(
            client,
            SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
            server.addr(PORT),
        )?;
        let v6 = connect_from_port(
            client,
            SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port),
            server.addr6(PORT),
        )?;
        (v4, v6)
    };
    // Each reaches its own destination, from the pod's address of its own family. With one
    // entry per (pod, port), the IPv4 connection was carried to the IPv6 destination and the
    // IPv6 one was refused.
    let seen = read_greeting(&mut v4).context("the IPv4 connection")?;
    assert_eq!(
        seen.ip(),
        client.ip,
        "the IPv4 connection arrived as {seen}"
    );
    let seen = read_greeting(&mut v6).context("the IPv6 connection")?;
    assert_eq!(
        seen.ip(),
        client.ip6,
        "the IPv6 connection arrived as {seen}"
    );
    echo_round_trip(&mut v4, b"four")?;
    echo_round_trip(&mut v6, b"six")?;
    Ok(())
}

#[test]
fn one_pods_pending_connects_cannot_evict_another_pods() -> Result<()> {
    let tb = Testbed::new(Topology::default())?;
    let (victim, attacker, server) = (tb.pod("n0-p0"), tb.pod("n0-p1"), tb.pod("n1-p0"));
    for pod in [victim, attacker] {
        tb.set_pod_mode(&pod.name, Some("ambient"))?;
    }
    let agent = tb.start_agent("n0", &AgentOptions::default())?;
    for pod in [victim, attacker] {
        agent.wait_enrolled(&pod.key(), true)?;
    }
    let _echo = echo_server(server.listen(PORT)?)?;

    // Each pod has a map of its own, of the advertised size.
    let maps = mesh_tests::bpf::pod_maps(&agent.bpf_dir.join("orig_dsts_by_pod"))?;
    let inner = |pod: &Pod| -> Result<u32> {
        let cookie = pod.netns_cookie()?;
        maps.iter()
            .find(|(c, _)| *c == cookie)
            .map(|(_, id)| *id)
            .with_context(|| format!("no map for {} in {maps:?}", pod.name))
    };
    let (victim_map, attacker_map) = (inner(victim)?, inner(attacker)?);
    assert_ne!(victim_map, attacker_map);
    let info = mesh_tests::bpf::map_info(attacker_map)?;
    assert_eq!(info["type"], "lru_hash", "{info}");
    assert_eq!(info["max_entries"], u64::from(PENDING_PER_POD), "{info}");

    // The attacker's connects go to a port nothing listens on: once accepted, each is refused
    // upstream and closed, so only the pending entries matter.
    let flood = PENDING_PER_POD as usize + 1000;
    let (victims, attackers) = {
        let _paused = Paused::agent(&agent)?;
        let mut victims = Vec::new();
        for _ in 0..10 {
            victims.push(victim.connect(server.addr(PORT))?);
        }
        let mut attackers = Vec::with_capacity(flood);
        for _ in 0..flood {
            attackers.push(attacker.connect(server.addr(PORT + 1))?);
        }
        for _ in 0..10 {
            victims.push(victim.connect(server.addr(PORT))?);
        }
        (victims, attackers)
    };
    for (i, mut stream) in victims.into_iter().enumerate() {
        let seen = read_greeting(&mut stream).with_context(|| format!("victim connection {i}"))?;
        assert_eq!(seen.ip(), victim.ip);
        echo_round_trip(&mut stream, b"still mine")?;
    }
    drop(attackers);
    Ok(())
}
