//! No uncaptured window at pod start. A pod of the mesh whose cgroup has just appeared (as the
//! kubelet makes it) has its connects refused by the kernel until the node agent has decided
//! about it; the agent learns of the cgroup and of its first process from inotify, finds the
//! pod's network namespace and enrolls it. A process that connects in a loop from its first
//! instant never reaches its server uncaptured. The time from the cgroup appearing to the
//! decision is reported (p50/p99 over 20 pod starts). Needs root; run with
//! `cargo xtask test`.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use mesh_tests::{
    AgentOptions, Testbed, Topology,
    sys::{start_inside, wait_until},
    traffic::echo_server,
};

const ECHO_PORT: u16 = 8080;
const STARTS: usize = 20;

/// Starts pod `uid` as the kubelet would: its cgroup made, then its first process placed in
/// it (before exec) in `starting`'s network namespace, connecting to `dst` in a loop until
/// `carried` connections were carried; returns what the loop printed.
fn start_pod(
    tb: &Testbed,
    starting: &mesh_tests::Pod,
    uid: &str,
    dst: std::net::SocketAddr,
    carried: usize,
) -> Result<String> {
    let cgroup = tb.pods_cgroup("n0").join(format!("pod{uid}"));
    std::fs::create_dir(&cgroup)?;
    let mut command = Command::new("bash");
    command
        .args(["-c", &connect_loop(dst, carried)])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(cgroup.join("cgroup.procs"))?;
    start_inside(
        &mut command,
        std::fs::File::open(starting.netns_path())?,
        Some(procs),
    );
    let out = command.spawn()?.wait_with_output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A bash loop that connects to `dst` from its first instant, reads the echo server's
/// greeting and closes, until `carried` connections were carried (or 10 s passed); one line per
/// attempt: `ok`, `refused` (the kernel held it) or `broken`.
fn connect_loop(dst: std::net::SocketAddr, carried: usize) -> String {
    format!(
        "n=0; while [ $n -lt {carried} ] && [ $SECONDS -lt 10 ]; do \
           if exec 3<>/dev/tcp/{ip}/{port}; then \
             if read -r -t 5 greeting <&3; then echo ok; n=$((n+1)); else echo broken; fi; exec 3>&-; \
           else echo refused; fi; \
         done 2>/dev/null",
        ip = dst.ip(),
        port = dst.port()
    )
}

#[test]
fn a_pod_connecting_from_its_first_instant_never_leaves_uncaptured() -> Result<()> {
    let tb = Testbed::new(Topology::default())?;
    tb.set_namespace_ambient("default", true)?;
    // The pod that starts again and again; its network namespace stands in for each new
    // sandbox (the kubelet would make a new one).
    let starting = tb.pod("n0-p1");
    tb.set_pod_mode(&starting.name, Some("none"))?;
    let server = tb.pod("n1-p0");
    let (_controller, agents) = tb.start_mesh(AgentOptions {
        config_from_controller: true,
        ..AgentOptions::default()
    })?;
    agents[1].wait_enrolled(&server.key(), true)?;
    let _echo = echo_server(server.listen(ECHO_PORT)?)?;
    let dst = server.addr(ECHO_PORT);
    let plaintext = || {
        agents[1].metric_sum(
            "istio_tcp_connections_opened_total",
            &[
                r#"reporter="destination""#,
                r#"connection_security_policy="unknown""#,
            ],
        )
    };

    let mut waits = Vec::new();
    let (mut ok, mut refused, mut broken) = (0, 0, 0);
    for start in 0..STARTS {
        // The API server knows the pod (it is of the mesh) before the kubelet starts it.
        let uid = format!("5a7e{start:04x}-0000-4000-8000-{:012x}", std::process::id());
        tb.update_pods_file(|file| {
            if let Some(pod) = file.pods.iter_mut().find(|p| p.name == starting.name) {
                pod.uid = Some(uid.clone());
                std::sync::Arc::make_mut(&mut pod.labels).insert(
                    mesh_node::pods::DATAPLANE_MODE_LABEL.to_owned(),
                    mesh_node::pods::DATAPLANE_MODE_AMBIENT.to_owned(),
                );
            }
        })?;
        // The agent knows the pod (its namespace is not found yet: it has not started).
        let known = |log: &str| log.matches("network namespace not found").count();
        let before = known(&agents[0].log());
        wait_until(
            "the agent to know the pod before it starts",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || Ok(known(&agents[0].log()) > before),
        )?;
        // The kubelet makes the pod's cgroup, and its first process starts in it at once,
        // connecting in a loop.
        let made = Instant::now();
        let lines = start_pod(&tb, starting, &uid, dst, 10)?;
        let took = made.elapsed();
        ok += lines.lines().filter(|l| *l == "ok").count();
        refused += lines.lines().filter(|l| *l == "refused").count();
        broken += lines.lines().filter(|l| *l == "broken").count();
        let escaped = plaintext()?.abs();
        ensure!(
            escaped == 0.0,
            "start {start}: {escaped} connections left the starting pod uncaptured: {lines}"
        );
        ensure!(
            lines.lines().last() == Some("ok"),
            "start {start}: the pod was never captured in {took:?}: {lines}\n{}",
            agents[0].log_tail()
        );
        let decided = format!("uid={uid} verdict=captured");
        wait_until(
            "the agent to log its decision",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || Ok(agents[0].log().contains(&decided)),
        )
        .with_context(|| {
            let log = agents[0].log();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("pod") && !l.contains("DEBUG mesh_node::proxy"))
                .collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        })?;
        let log = agents[0].log();
        let line = log
            .lines()
            .find(|l| l.contains(&decided))
            .context("the decision's line")?;
        let waited: u64 = line
            .split("waited_ms=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|ms| ms.parse().ok())
            .context("waited_ms in the decision")?;
        waits.push(waited);
    }
    waits.sort_unstable();
    let percentile = |p: f64| waits[((waits.len() as f64 * p).ceil() as usize).saturating_sub(1)];
    // (abs: a sum of no sample is -0.)
    let escaped = plaintext()?.abs();
    eprintln!(
        "{STARTS} pod starts: time from cgroup to decision p50 {} ms, p99 {} ms (max {} ms); \
         {ok} connections carried, {refused} refused while the pod was undecided, {broken} \
         broken; {escaped} reached the server uncaptured",
        percentile(0.5),
        percentile(0.99),
        waits.last().copied().unwrap_or(0)
    );
    ensure!(
        escaped == 0.0,
        "{escaped} connections left a starting pod uncaptured"
    );
    ensure!(
        broken == 0,
        "{broken} connections broke after they were made"
    );
    outside_the_mesh_is_let_go(&tb, &agents[0], dst)
}

/// A pod outside the mesh that starts is let go as soon as the agent knows it.
fn outside_the_mesh_is_let_go(
    tb: &Testbed,
    agent: &mesh_tests::Agent,
    dst: std::net::SocketAddr,
) -> Result<()> {
    let starting = tb.pod("n0-p1");
    let mut waits = Vec::new();
    for start in 0..5 {
        let uid = format!("0b7e{start:04x}-0000-4000-8000-{:012x}", std::process::id());
        tb.update_pods_file(|file| {
            if let Some(pod) = file.pods.iter_mut().find(|p| p.name == starting.name) {
                pod.uid = Some(uid.clone());
                std::sync::Arc::make_mut(&mut pod.labels).insert(
                    mesh_node::pods::DATAPLANE_MODE_LABEL.to_owned(),
                    "none".to_owned(),
                );
            }
        })?;
        wait_until(
            "the agent to know the pod",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                let dump = agent.config_dump()?;
                Ok(dump["pods"]["pods"]
                    .as_array()
                    .is_some_and(|pods| pods.iter().any(|p| p["uid"] == uid.as_str())))
            },
        )?;
        let lines = start_pod(tb, starting, &uid, dst, 3)?;
        ensure!(lines.lines().last() == Some("ok"), "start {start}: {lines}");
        let decided = format!("uid={uid} verdict=not in the mesh waited_ms=");
        wait_until(
            "the agent to let the pod go",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || Ok(agent.log().contains(&decided)),
        )?;
        let log = agent.log();
        let waited: u64 = log
            .split(&decided)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|ms| ms.parse().ok())
            .context("waited_ms")?;
        waits.push(waited);
    }
    waits.sort_unstable();
    eprintln!(
        "5 starts of a pod outside the mesh: let go after {} ms (median), {} ms at most",
        waits[2], waits[4]
    );
    Ok(())
}
