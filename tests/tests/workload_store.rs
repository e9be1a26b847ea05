//! The node agent's workload store at scale: with 10,000 remote pods known, one pod's change
//! travels from the controller as a delta, changes one entry of each agent's store, and
//! reaches enforcement on its node (its live connection closed under a DENY it now falls
//! under) without re-checking any other pod's connections. Needs root; run with
//! `cargo xtask test`.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use mesh_tests::{
    Agent, AgentOptions, Testbed, Topology,
    sys::wait_until,
    traffic::{closed_by_peer, echo_round_trip, echo_server, read_greeting},
};

const PORT: u16 = 8080;
const REMOTE_PODS: usize = 10_000;

fn counter(agent: &Agent, name: &str, filters: &[&str]) -> f64 {
    agent.metric_sum(name, filters).unwrap_or(0.0)
}

fn upserted(agent: &Agent) -> f64 {
    counter(
        agent,
        "ambit_workload_changes_total",
        &["change=\"upserted\""],
    )
}

fn rechecked(agent: &Agent) -> f64 {
    counter(agent, "ambit_connections_rechecked_total", &[])
}

#[test]
fn one_pods_change_among_10000_reaches_enforcement_alone() -> Result<()> {
    let tb = Testbed::new(Topology::default())?;
    tb.set_namespace_ambient("default", true)?;
    tb.add_remote_pods(REMOTE_PODS)?;
    tb.write_policy(
        "locked",
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: locked, namespace: default }
spec:
  selector: { matchLabels: { locked: "yes" } }
  action: DENY
  rules: [{}]
"#,
    )?;
    let (_controller, agents) = tb.start_mesh(AgentOptions {
        config_from_controller: true,
        ..AgentOptions::default()
    })?;
    let (client, changed, other) = (tb.pod("n0-p0"), tb.pod("n1-p0"), tb.pod("n1-p1"));
    agents[0].wait_enrolled(&client.key(), true)?;
    agents[1].wait_enrolled(&changed.key(), true)?;
    agents[1].wait_enrolled(&other.key(), true)?;
    agents[1].wait_policies(1)?;
    for agent in &agents {
        wait_until(
            "every pod in the store",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || Ok(counter(agent, "ambit_workloads", &[]) >= REMOTE_PODS as f64),
        )?;
    }
    let _servers = [
        echo_server(changed.listen(PORT)?)?,
        echo_server(other.listen(PORT)?)?,
    ];
    let mut to_changed = client.connect(changed.addr(PORT))?;
    read_greeting(&mut to_changed)?;
    let mut to_other = client.connect(other.addr(PORT))?;
    read_greeting(&mut to_other)?;
    echo_round_trip(&mut to_changed, b"before")?;
    echo_round_trip(&mut to_other, b"before")?;

    let snapshots = |agent: &Agent| agent.log().matches("snapshot=true").count();
    let before: Vec<_> = agents
        .iter()
        .map(|a| (upserted(a), rechecked(a), snapshots(a)))
        .collect();
    let started = Instant::now();
    tb.label_pod("n1-p0", "locked", Some("yes"))?;
    wait_until(
        "the change in the server's agent's store",
        Duration::from_secs(30),
        Duration::from_millis(5),
        || Ok(upserted(&agents[1]) > before[1].0),
    )?;
    let stored = started.elapsed();
    ensure!(
        closed_by_peer(&mut to_changed, Duration::from_secs(30)),
        "the relabelled pod's live connection stayed open under its DENY: {}",
        agents[1].log_tail()
    );
    let enforced = started.elapsed();
    println!(
        "one pod's change among {REMOTE_PODS} remote pods: in the store {} ms and enforced {} ms after the pods file changed",
        stored.as_millis(),
        enforced.as_millis()
    );

    // Nothing else moved: the other pod's connection is open and was not looked at.
    echo_round_trip(&mut to_other, b"after")?;
    ensure!(
        client.connect(changed.addr(PORT)).is_ok_and(|mut s| {
            read_greeting(&mut s).is_err() || echo_round_trip(&mut s, b"x").is_err()
        }),
        "a new connection to the relabelled pod was let through"
    );
    for (agent, (upserted_before, rechecked_before, snapshots_before)) in agents.iter().zip(before)
    {
        let node = &agent.node;
        // The counters move when the change lands: wait for this agent's to.
        wait_until(
            "the change in the agent's store",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || Ok(upserted(agent) > upserted_before),
        )?;
        let upserted = upserted(agent) - upserted_before;
        let rechecked = rechecked(agent) - rechecked_before;
        println!("{node}: {upserted} pod upserted, {rechecked} connections re-checked");
        ensure!(
            upserted == 1.0,
            "{node}: the change upserted {upserted} pods, not 1"
        );
        ensure!(
            snapshots(agent) == snapshots_before,
            "{node}: the change came as a snapshot, not a delta"
        );
        // n1 carries both inbound connections: only the changed pod's is re-checked. n0
        // carries none, and none of its pods changed.
        let expected = if node == "n1" { 1.0 } else { 0.0 };
        ensure!(
            rechecked == expected,
            "{node}: {rechecked} connections re-checked, expected {expected}"
        );
    }
    Ok(())
}
