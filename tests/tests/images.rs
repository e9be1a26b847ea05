//! Ambit's images, run by podman (with runc) with the privileges deploy/ gives them: the node
//! agent with exactly the DaemonSet's security context, capabilities, host PID namespace and
//! volume mounts, inside a private cgroup namespace with the host's cgroup v2 hierarchy at
//! /sys/fs/cgroup; the controller with its Deployment's; the waypoint with the Deployment the
//! controller generates. Needs root, podman and the test images (`cargo xtask test` builds
//! them first).

use std::{collections::BTreeSet, os::unix::fs::MetadataExt as _};

use anyhow::{Context as _, Result};
use mesh_tests::{
    AgentOptions, Testbed, Topology,
    http::HttpClient,
    l7::{self, PORT, REVIEWS},
    traffic::{echo_round_trip, echo_server, read_greeting},
};

#[test]
fn the_agent_image_with_the_daemonsets_privileges_carries_hbone() -> Result<()> {
    let tb = Testbed::new(Topology::default())?;
    tb.set_namespace_ambient("default", true)?;
    let controller = tb.start_controller_from_image()?;
    let container = controller
        .container()
        .context("controller from its image")?;
    container.check_privileges()?;
    // Its Deployment's readiness probe: ready once a whole configuration is published.
    container.wait_until(std::time::Duration::from_secs(20), || {
        mesh_tests::sys::loopback_get(&tb.fabric_netns_path(), 15021, "/healthz/ready")
            .is_ok_and(|(status, body)| status == 200 && body == "ready\n")
    })?;
    tb.start_pause_processes()?;
    let containerised = tb.start_agent_from_image("n0", &controller)?;
    let plain = tb.start_agent(
        "n1",
        &AgentOptions {
            config_from_controller: true,
            ca_root: Some(controller.root.clone()),
            ..AgentOptions::default()
        },
    )?;
    let container = containerised.container().context("agent from its image")?;
    // The process holds exactly what the manifest grants, no more.
    container.check_privileges()?;
    let expected: BTreeSet<String> = ["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"]
        .map(str::to_owned)
        .into();
    assert_eq!(
        container.expected.capabilities, expected,
        "node.yaml's capabilities"
    );

    // It found its own cgroup through the host's hierarchy, from a private cgroup namespace
    // (check_privileges made sure it has one): the cgroup runc made for the container, whose
    // id its programs skip.
    let log = containerised.log();
    let agent_cgroup = log
        .split("agent_cgroup=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .with_context(|| format!("the agent logs its cgroup: {log}"))?;
    let on_host = agent_cgroup.replacen("/sys/fs/cgroup", mesh_tests::testbed::CGROUP_V2, 1);
    let procs = std::fs::read_to_string(format!("{on_host}/cgroup.procs"))?;
    assert!(
        procs.lines().any(|p| p.trim() == container.pid.to_string()),
        "{on_host} does not hold the agent ({}): {procs}",
        container.pid
    );
    let id = log
        .split("agent_cgroup_id=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .context("the agent logs its cgroup id")?;
    assert_eq!(id, std::fs::metadata(&on_host)?.ino().to_string());

    // Its pods are enrolled from the controller's stream and /proc, and HBONE flows both
    // ways between the containerised agent and the other node's.
    for pod in ["n0-p0", "n0-p1"] {
        containerised.wait_enrolled(&tb.pod(pod).key(), true)?;
    }
    for pod in ["n1-p0", "n1-p1"] {
        plain.wait_enrolled(&tb.pod(pod).key(), true)?;
    }
    let _far = echo_server(tb.pod("n1-p0").listen(7000)?)?;
    let _near = echo_server(tb.pod("n0-p1").listen(7000)?)?;
    for (client, server, inbound) in [
        ("n0-p0", "n1-p0", &plain),
        ("n1-p1", "n0-p1", &containerised),
    ] {
        let mut stream = tb.pod(client).connect(tb.pod(server).addr(7000))?;
        // Delivered by the server's agent, inside the server pod (Istio's 127.0.0.6).
        assert_eq!(
            read_greeting(&mut stream)?.ip(),
            std::net::IpAddr::from([127, 0, 0, 6])
        );
        for size in [1, 1500, 64 * 1024] {
            echo_round_trip(&mut stream, &vec![0x5a; size])?;
        }
        drop(stream);
        let mtls = inbound.metric_sum(
            "istio_tcp_connections_opened_total",
            &[
                "reporter=\"destination\"",
                "connection_security_policy=\"mutual_tls\"",
            ],
        )?;
        assert!(
            mtls >= 1.0,
            "{client} -> {server} was not carried over HBONE"
        );
    }
    // Its own sockets (HBONE out of its pods' namespaces, the connection to the controller)
    // were never captured: a loop would have broken the round trips above, and the
    // connections it carried name their peers, not itself.
    let carried = containerised.connections()?;
    assert!(
        !carried.to_string().contains(":15001"),
        "the agent captured its own connection: {carried}"
    );

    // The teardown docs/install.md gives: `mesh-node --uninstall` exec'd in the agent's
    // container releases its pods, detaches its programs and removes its pins.
    let out = mesh_tests::containers::podman()
        .args([
            "exec",
            &container.name,
            "/usr/local/bin/mesh-node",
            "--uninstall",
        ])
        .output()?;
    assert!(
        out.status.success(),
        "mesh-node --uninstall in the container: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        containerised.log().contains("every pod released"),
        "{}",
        containerised.log()
    );
    assert!(!containerised.bpf_dir.exists(), "pins left behind");
    let mut released = tb.pod("n0-p0").connect(tb.pod("n1-p0").addr(7000))?;
    read_greeting(&mut released)?;
    echo_round_trip(&mut released, b"released")?;
    Ok(())
}

#[test]
fn the_waypoint_image_routes_requests() -> Result<()> {
    let l7 = l7::setup_with_waypoint_image()?;
    let waypoint = l7.waypoint.container().context("waypoint from its image")?;
    waypoint.check_privileges()?;
    assert!(waypoint.expected.capabilities.is_empty(), "drop ALL");
    l7.route(&l7::vs(
        "  - match: [{headers: {end-user: {exact: jason}}}]\n    route: [{destination: {host: reviews, subset: v2}}]\n  - route: [{destination: {host: reviews, subset: v1}}]\n",
    ))?;
    let mut client = HttpClient::connect(
        l7.tb.pod("n0-p0"),
        format!("{REVIEWS}:{PORT}").parse()?,
        "reviews",
    )?;
    assert_eq!(client.get("/a", &[("end-user", "jason")])?.body, "v2 /a");
    assert_eq!(client.get("/b", &[])?.body, "v1 /b");
    let metrics = l7.waypoint.metrics()?;
    assert!(
        metrics.contains("istio_requests_total"),
        "the waypoint in its image reports requests: {metrics}"
    );
    Ok(())
}
