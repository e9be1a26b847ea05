//! After a crash, a restart or a node reboot, capture is rebuilt and attached once. A restart
//! finds the pinned maps and replaces each pinned link in place; a reboot (simulated: the
//! agent killed and every program and pin gone, as after a boot) rebuilds everything from the
//! configuration. Either way bpftool shows each program attached exactly once, and the pods'
//! connections are carried over mutual TLS again. Needs root; run with `cargo xtask test`.

use std::collections::BTreeMap;

use anyhow::{Result, ensure};
use mesh_tests::{
    Agent, AgentOptions, Testbed, Topology, bpf,
    traffic::{echo_round_trip, echo_server, read_greeting},
};

const ECHO_PORT: u16 = 8080;

/// Each link pinned by `agent` and the program it attaches, checked attached exactly once to
/// the root cgroup (connect4, connect6, sock_ops) or to its pod's namespace (sk_lookup).
fn attached_once(agent: &Agent) -> Result<BTreeMap<String, u32>> {
    let linked = bpf::linked_program_ids(&agent.bpf_dir)?;
    let attached = bpf::root_cgroup_programs()?;
    for (link, id) in &linked {
        if link.starts_with("sk_lookup-") {
            continue;
        }
        let times = attached.iter().filter(|(a, _)| a == id).count();
        ensure!(
            times == 1,
            "program {id} of link {link} attached {times} times: {attached:?}"
        );
    }
    let names: Vec<&str> = linked.iter().map(|(l, _)| l.as_str()).collect();
    for program in ["connect4", "connect6", "sock_ops"] {
        let links = names.iter().filter(|n| **n == program).count();
        ensure!(links == 1, "{links} links for {program}: {names:?}");
    }
    Ok(linked.into_iter().collect())
}

fn carried_over_mtls(tb: &Testbed, server_agent: &Agent, round: &str) -> Result<()> {
    let before = server_agent.metric_sum(
        "istio_tcp_connections_opened_total",
        &[
            r#"reporter="destination""#,
            r#"connection_security_policy="mutual_tls""#,
        ],
    )?;
    let mut stream = tb.pod("n0-p0").connect(tb.pod("n1-p0").addr(ECHO_PORT))?;
    read_greeting(&mut stream)?;
    echo_round_trip(&mut stream, round.as_bytes())?;
    drop(stream);
    let after = server_agent.metric_sum(
        "istio_tcp_connections_opened_total",
        &[
            r#"reporter="destination""#,
            r#"connection_security_policy="mutual_tls""#,
        ],
    )?;
    ensure!(after > before, "{round}: not carried over mutual TLS");
    Ok(())
}

#[test]
fn restart_and_reboot_rebuild_capture_attached_once() -> Result<()> {
    let tb = Testbed::new(Topology::default())?;
    tb.set_namespace_ambient("default", true)?;
    let (_controller, mut agents) = tb.start_mesh(AgentOptions::default())?;
    let (client, server) = (tb.pod("n0-p0"), tb.pod("n1-p0"));
    agents[0].wait_enrolled(&client.key(), true)?;
    agents[1].wait_enrolled(&server.key(), true)?;
    let _echo = echo_server(server.listen(ECHO_PORT)?)?;
    carried_over_mtls(&tb, &agents[1], "before")?;
    let first = attached_once(&agents[0])?;

    // A crash, then the agent back: from the pins, links replaced in place.
    agents[0].kill()?;
    agents[0].start()?;
    agents[0].wait_enrolled(&client.key(), true)?;
    let restarted = attached_once(&agents[0])?;
    ensure!(
        restarted.keys().eq(first.keys()),
        "links after the restart: {restarted:?}, before: {first:?}"
    );
    carried_over_mtls(&tb, &agents[1], "after a crash and restart")?;

    // A reboot: the agent gone and nothing pinned any more (the pods' traffic is not captured
    // until an agent starts; a real boot starts the pods again too).
    agents[0].kill()?;
    mesh_node::dataplane::remove_pins(&agents[0].bpf_dir)?;
    ensure!(!agents[0].bpf_dir.exists());
    agents[0].start()?;
    agents[0].wait_enrolled(&client.key(), true)?;
    let rebooted = attached_once(&agents[0])?;
    ensure!(
        rebooted.keys().eq(first.keys()),
        "links after the reboot: {rebooted:?}, before: {first:?}"
    );
    ensure!(
        agents[0].log().contains("held until decided"),
        "starting pods are not held after the reboot"
    );
    carried_over_mtls(&tb, &agents[1], "after a reboot")?;
    Ok(())
}
