//! eBPF capture on a real kernel: two nodes, pods in network namespaces, real agents.
//! Needs root; run with `cargo xtask test`.

use std::{net::SocketAddr, time::Duration};

use anyhow::Result;
use mesh_tests::{
    AgentOptions, Testbed, Topology,
    traffic::{echo_round_trip, echo_server, read_greeting},
};

const ECHO_PORT: u16 = 8080;

fn delivery_source() -> std::net::IpAddr {
    [127, 0, 0, 6].into()
}

fn opened(agent: &mesh_tests::Agent, reporter: &str) -> f64 {
    agent
        .metric_sum(
            "istio_tcp_connections_opened_total",
            &[&format!("reporter=\"{reporter}\"")],
        )
        .expect("reading metrics")
}

fn outbound_to(agent: &mesh_tests::Agent, destination: SocketAddr) -> Vec<serde_json::Value> {
    let connections = agent.connections().expect("reading /connections");
    connections
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|c| {
                    c["direction"] == "outbound" && c["destination"] == destination.to_string()
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn enrolled_pod_to_remote_pod_is_captured_with_its_original_destination() -> Result<()> {
    let tb = Testbed::new(Topology::default())?;
    let (client, server) = (tb.pod("n0-p0"), tb.pod("n1-p0"));
    tb.set_pod_mode(&client.name, Some("ambient"))?;
    let agent = tb.start_agent("n0", &AgentOptions::default())?;
    agent.wait_enrolled(&client.key(), true)?;
    let _echo = echo_server(server.listen(ECHO_PORT)?)?;

    let before = opened(&agent, "source");
    let mut stream = client.connect(server.addr(ECHO_PORT))?;
    // The agent's upstream socket lives in the client pod: the server sees the pod's address.
    let seen = read_greeting(&mut stream)?;
    assert_eq!(
        seen.ip(),
        std::net::IpAddr::from(client.ip),
        "server saw {seen}"
    );
    echo_round_trip(&mut stream, &vec![7u8; 1 << 20])?;

    let live = outbound_to(&agent, server.addr(ECHO_PORT));
    assert_eq!(
        live.len(),
        1,
        "agent should carry exactly this connection: {live:?}"
    );
    assert_eq!(live[0]["pod"], client.key());
    drop(stream);
    wait_for(
        || opened(&agent, "source") > before,
        "opened counter to move",
    )?;
    wait_for(
        || {
            agent
                .metric_sum("istio_tcp_sent_bytes_total", &["reporter=\"source\""])
                .unwrap_or(0.0)
                >= (1 << 20) as f64
        },
        "sent bytes to be counted",
    )?;
    let metrics = agent.metrics()?;
    assert!(
        metrics.contains("destination_workload=\"n1-p0\"")
            && metrics.contains("source_workload=\"n0-p0\""),
        "workload labels missing:\n{metrics}"
    );
    Ok(())
}

#[test]
fn unenrolled_pod_is_not_captured() -> Result<()> {
    let tb = Testbed::new(Topology::default())?;
    let (enrolled, plain, server) = (tb.pod("n0-p0"), tb.pod("n0-p1"), tb.pod("n1-p0"));
    tb.set_pod_mode(&enrolled.name, Some("ambient"))?;
    let agent = tb.start_agent("n0", &AgentOptions::default())?;
    agent.wait_enrolled(&enrolled.key(), true)?;
    let _echo = echo_server(server.listen(ECHO_PORT)?)?;

    let mut stream = plain.connect(server.addr(ECHO_PORT))?;
    let seen = read_greeting(&mut stream)?;
    echo_round_trip(&mut stream, b"not captured")?;
    assert!(
        outbound_to(&agent, server.addr(ECHO_PORT)).is_empty(),
        "unenrolled traffic went through the agent"
    );
    assert_eq!(opened(&agent, "source"), 0.0);
    // The kernel picked the client's port: nothing rewrote the connection.
    assert_eq!(seen, stream.local_addr()?);
    Ok(())
}

#[test]
fn enroll_and_unenroll_at_run_time_keep_open_connections() -> Result<()> {
    let tb = Testbed::new(Topology::default())?;
    let (client, server) = (tb.pod("n0-p0"), tb.pod("n1-p0"));
    let agent = tb.start_agent("n0", &AgentOptions::default())?;
    let _echo = echo_server(server.listen(ECHO_PORT)?)?;
    let dst = server.addr(ECHO_PORT);

    // Opened before enrollment: direct, and must survive enrollment untouched.
    let mut direct = client.connect(dst)?;
    read_greeting(&mut direct)?;

    tb.set_namespace_ambient(&client.namespace, true)?;
    agent.wait_enrolled(&client.key(), true)?;
    let mut captured = client.connect(dst)?;
    read_greeting(&mut captured)?;
    assert_eq!(
        outbound_to(&agent, dst).len(),
        1,
        "new connection after enrollment not captured"
    );
    echo_round_trip(&mut direct, b"still here after enrollment")?;

    tb.set_namespace_ambient(&client.namespace, false)?;
    agent.wait_enrolled(&client.key(), false)?;
    let mut after = client.connect(dst)?;
    let seen = read_greeting(&mut after)?;
    assert_eq!(
        seen,
        after.local_addr()?,
        "connection after unenrollment was captured"
    );
    assert_eq!(
        outbound_to(&agent, dst).len(),
        1,
        "only the captured connection stays on the agent"
    );
    echo_round_trip(&mut direct, b"direct survives unenrollment")?;
    echo_round_trip(&mut captured, b"captured survives unenrollment")?;
    echo_round_trip(&mut after, b"after")?;
    Ok(())
}

#[test]
fn inbound_plaintext_to_an_enrolled_pod_is_captured_by_sk_lookup() -> Result<()> {
    let tb = Testbed::new(Topology::default())?;
    let (client, server) = (tb.pod("n0-p1"), tb.pod("n1-p0"));
    tb.set_pod_mode(&server.name, Some("ambient"))?;
    let agent = tb.start_agent("n1", &AgentOptions::default())?;
    agent.wait_enrolled(&server.key(), true)?;
    let _echo = echo_server(server.listen(ECHO_PORT)?)?;

    let mut stream = client.connect(server.addr(ECHO_PORT))?;
    let seen = read_greeting(&mut stream)?;
    assert_eq!(
        seen.ip(),
        delivery_source(),
        "the app should be reached through the agent"
    );
    echo_round_trip(&mut stream, &vec![3u8; 256 * 1024])?;
    let connections = agent.connections()?;
    let inbound: Vec<_> = connections
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["direction"] == "inbound")
        .collect();
    assert_eq!(inbound.len(), 1, "{connections}");
    assert_eq!(
        inbound[0]["destination"],
        server.addr(ECHO_PORT).to_string()
    );
    assert_eq!(inbound[0]["source"], stream.local_addr()?.to_string());
    Ok(())
}

#[test]
fn enrolled_to_enrolled_passes_both_agents() -> Result<()> {
    let tb = Testbed::new(Topology::default())?;
    tb.set_namespace_ambient("default", true)?;
    let (client, server) = (tb.pod("n0-p0"), tb.pod("n1-p0"));
    let a0 = tb.start_agent("n0", &AgentOptions::default())?;
    let a1 = tb.start_agent("n1", &AgentOptions::default())?;
    a0.wait_enrolled(&client.key(), true)?;
    a1.wait_enrolled(&server.key(), true)?;
    let _echo = echo_server(server.listen(ECHO_PORT)?)?;
    let mut stream = client.connect(server.addr(ECHO_PORT))?;
    assert_eq!(read_greeting(&mut stream)?.ip(), delivery_source());
    echo_round_trip(&mut stream, &vec![1u8; 1 << 20])?;
    assert_eq!(outbound_to(&a0, server.addr(ECHO_PORT)).len(), 1);
    Ok(())
}

#[test]
fn agent_restart_reattaches_without_duplicates_and_fails_closed_while_down() -> Result<()> {
    let tb = Testbed::new(Topology::default())?;
    let (client, server) = (tb.pod("n0-p0"), tb.pod("n1-p0"));
    tb.set_pod_mode(&client.name, Some("ambient"))?;
    let mut agent = tb.start_agent("n0", &AgentOptions::default())?;
    agent.wait_enrolled(&client.key(), true)?;
    let _echo = echo_server(server.listen(ECHO_PORT)?)?;
    let dst = server.addr(ECHO_PORT);
    let mut first = client.connect(dst)?;
    read_greeting(&mut first)?;

    let loaded_before = mesh_tests::bpf::loaded_programs("ambit_")?.len();
    let attached_before = mesh_tests::bpf::root_cgroup_programs()?;
    let linked_before = mesh_tests::bpf::linked_program_ids(&agent.bpf_dir)?;

    agent.stop()?;
    // Still enrolled in the pinned map, no listener: refused, never sent around the mesh.
    let while_down = client.connect(dst);
    assert!(
        while_down.is_err(),
        "an enrolled pod reached {dst} with its agent down"
    );

    agent.start()?;
    agent.wait_enrolled(&client.key(), true)?;
    let mut second = client.connect(dst)?;
    read_greeting(&mut second)?;
    echo_round_trip(&mut second, b"after restart")?;
    assert_eq!(outbound_to(&agent, dst).len(), 1);

    let attached_after = mesh_tests::bpf::root_cgroup_programs()?;
    let linked_after = mesh_tests::bpf::linked_program_ids(&agent.bpf_dir)?;
    for name in ["ambit_connect4", "ambit_connect6", "ambit_sock_ops"] {
        let count = |set: &[(u32, String)]| set.iter().filter(|(_, n)| n == name).count();
        assert_eq!(
            count(&attached_after),
            count(&attached_before),
            "{name} attached a second time: {attached_after:?}"
        );
    }
    for (link, old_id) in &linked_before {
        let new_id = linked_after
            .iter()
            .find(|(l, _)| l == link)
            .map(|(_, id)| *id);
        assert!(
            new_id.is_some_and(|id| id != *old_id),
            "link {link} was not replaced"
        );
        assert!(
            !attached_after.iter().any(|(id, _)| id == old_id),
            "the old program {old_id} of {link} is still attached"
        );
    }
    // The old agent's programs are freed once nothing holds them (the kernel does it
    // asynchronously, so give it a moment).
    wait_for(
        || mesh_tests::bpf::loaded_programs("ambit_").is_ok_and(|p| p.len() == loaded_before),
        "bpftool prog show to list as many ambit programs as before the restart",
    )?;
    drop(first);
    Ok(())
}

#[test]
fn a_process_started_in_a_pod_runs_in_its_namespace_and_cgroup() -> Result<()> {
    let tb = Testbed::new(Topology {
        nodes: 1,
        pods_per_node: 1,
        ..Topology::default()
    })?;
    let pod = tb.pod("n0-p0");
    let out = pod
        .spawn(
            std::process::Command::new("sh")
                .args([
                    "-c",
                    "grep '^0::' /proc/self/cgroup; stat -L -c %i /proc/self/ns/net",
                ])
                .stdout(std::process::Stdio::piped()),
        )?
        .wait_with_output()?;
    let out = String::from_utf8(out.stdout)?;
    let mut lines = out.lines();
    let cgroup = lines.next().unwrap_or_default();
    assert!(
        cgroup.ends_with(&format!("/n0/kubepods/pod{}", pod.uid)),
        "process in cgroup {cgroup}"
    );
    let netns_inode: u64 = lines.next().unwrap_or_default().trim().parse()?;
    assert_eq!(
        netns_inode,
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(pod.netns_path())?)
    );
    Ok(())
}

#[test]
fn bpftool_shows_the_enrolled_namespace() -> Result<()> {
    let tb = Testbed::new(Topology::default())?;
    let pod = tb.pod("n0-p0");
    tb.set_pod_mode(&pod.name, Some("ambient"))?;
    let agent = tb.start_agent("n0", &AgentOptions::default())?;
    agent.wait_enrolled(&pod.key(), true)?;
    let entries = mesh_tests::bpf::enrolled_entries(&agent.bpf_dir.join("enrolled_pods"))?;
    let cookie = pod.netns_cookie()?;
    let ip = u32::from_ne_bytes(pod.ip.octets());
    assert!(
        entries
            .iter()
            .any(|(key, pod_ip)| *key == cookie && *pod_ip == ip),
        "cookie {cookie} not in {entries:?}"
    );
    assert_eq!(entries.len(), 1, "only n0-p0 is enrolled: {entries:?}");
    Ok(())
}

#[test]
fn testbed_cleans_up_after_a_panic() -> Result<()> {
    let names = std::panic::catch_unwind(|| {
        let tb = Testbed::new(Topology {
            nodes: 1,
            pods_per_node: 1,
            ..Topology::default()
        })
        .unwrap();
        let names = (
            tb.pod("n0-p0").netns.clone(),
            tb.cgroup_dir.clone(),
            tb.work_dir.clone(),
        );
        std::panic::panic_any(names);
    })
    .expect_err("the closure panics");
    let (netns, cgroup, work) = names
        .downcast_ref::<(String, std::path::PathBuf, std::path::PathBuf)>()
        .unwrap()
        .clone();
    let list = String::from_utf8(mesh_tests::sys::run("ip", &["netns", "list"])?.stdout)?;
    assert!(!list.contains(&netns), "{netns} left behind");
    assert!(!cgroup.exists(), "{} left behind", cgroup.display());
    assert!(!work.exists(), "{} left behind", work.display());
    Ok(())
}

fn wait_for(mut condition: impl FnMut() -> bool, what: &str) -> Result<()> {
    for _ in 0..200 {
        if condition() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    anyhow::bail!("timed out waiting for {what}")
}
