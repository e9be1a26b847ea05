//! Costs that must not grow with the size of the mesh: connection setup and memory with
//! 10,000 remote pods known, and one authorization decision among 10,000 policies.

use std::time::{Duration, Instant};

use anyhow::Result;
use mesh_tests::{
    Agent, AgentOptions, Pod, Testbed,
    sys::wait_until,
    traffic::{connection_rate, request_response},
};

use crate::{
    ECHO_PORT, Results,
    memory::{rss_mb, settled_rss_mb},
};

/// Connection setup and agent memory on the same two agents, first with the test bed's handful
/// of pods, then once `extra` remote pods of the mesh (on a node with no agent here) were added
/// while they run: the goal is the same cost per connection, and at most 1 KB per pod.
pub(crate) fn many_pods(
    tb: &Testbed,
    options: &AgentOptions,
    secs: Duration,
    extra: usize,
) -> Result<(Results, Results)> {
    let (client, server) = (tb.pod("n0-p4").clone(), tb.pod("n1-p4").clone());
    let agents = [
        tb.start_agent("n0", options)?,
        tb.start_agent("n1", options)?,
    ];
    agents[0].wait_enrolled(&client.key(), true)?;
    agents[1].wait_enrolled(&server.key(), true)?;
    std::thread::sleep(Duration::from_secs(2));
    let few = load(&client, &server, &agents, secs)?;

    let started = Instant::now();
    tb.add_remote_pods(extra)?;
    for agent in &agents {
        wait_until(
            "the remote pods in the agent's store",
            Duration::from_secs(60),
            Duration::from_millis(20),
            || Ok(agent.metric_sum("ambit_workloads", &[])? >= extra as f64),
        )?;
    }
    eprintln!(
        "bench: {extra} pods added to both running agents' stores in {:.2} s (pods file written, read whole, diffed)",
        started.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(2));
    let many = load(&client, &server, &agents, secs)?;
    Ok((few, many))
}

/// Idle memory, connection setup and request latency under a short load, and memory after it.
fn load(client: &Pod, server: &Pod, agents: &[Agent; 2], secs: Duration) -> Result<Results> {
    let mut r = Results::new();
    r.insert("agent_rss_idle_mb", rss_mb(agents)?);
    let dst = server.addr(ECHO_PORT);
    let connect = || client.connect(dst);
    for (clients, key) in [
        (1, "new_conn_1_client_per_s"),
        (4, "new_conn_4_clients_per_s"),
    ] {
        let rate = connection_rate(&connect, clients, secs).unwrap_or_else(|error| {
            eprintln!("bench: {key} failed: {error:#}");
            f64::NAN
        });
        r.insert(key, rate);
    }
    match request_response(&connect, 1, 1024, secs) {
        Ok(h) => {
            r.insert(
                "rr_1k_1conn_p50_us",
                h.value_at_quantile(0.50) as f64 / 1000.0,
            );
            r.insert(
                "rr_1k_1conn_p99_us",
                h.value_at_quantile(0.99) as f64 / 1000.0,
            );
        }
        Err(error) => eprintln!("bench: request/response failed: {error:#}"),
    }
    r.insert("agent_rss_after_load_mb", rss_mb(agents)?);
    r.insert("agent_rss_settled_mb", settled_rss_mb(agents)?);
    Ok(r)
}

/// Mean time of one L4 authorization decision with 10,000 AuthorizationPolicies in the mesh.
pub(crate) fn authorization_check_us() -> Result<f64> {
    use mesh_core::policy::{
        Action, AuthorizationPolicy, AuthorizationPolicySpec, Connection, From, Metadata,
        Operation, PolicySet, Rule, Source, To, Workload,
    };
    let mut set = PolicySet::with_root_namespace("istio-system");
    for i in 0..10_000 {
        let namespace = format!("ns-{}", i % 1000);
        let policy = AuthorizationPolicy {
            metadata: Metadata {
                name: format!("p-{i}"),
                namespace: namespace.clone(),
            },
            spec: AuthorizationPolicySpec {
                action: if i % 10 == 0 {
                    Action::Deny
                } else {
                    Action::Allow
                },
                rules: Some(vec![Rule {
                    from: Some(vec![From {
                        source: Source {
                            principals: vec![
                                format!("cluster.local/ns/{namespace}/sa/client-{i}"),
                                "cluster.local/ns/ops/sa/*".into(),
                            ],
                            ..Source::default()
                        },
                    }]),
                    to: Some(vec![To {
                        operation: Operation {
                            ports: vec![format!("{}", 8000 + i % 100)],
                            ..Operation::default()
                        },
                    }]),
                    when: None,
                }]),
                ..AuthorizationPolicySpec::default()
            },
        };
        assert_eq!(set.add_authorization(policy, None), None, "a valid policy");
    }
    let labels = Default::default();
    let identities: Vec<mesh_core::Identity> = (0..100)
        .map(|i| mesh_core::Identity::new("cluster.local", &format!("ns-{i}"), "client").unwrap())
        .collect();
    let namespaces: Vec<String> = (0..1000).map(|i| format!("ns-{i}")).collect();
    let checks = 100_000;
    let started = std::time::Instant::now();
    let mut allowed = 0;
    for i in 0..checks {
        let workload = Workload {
            namespace: &namespaces[i % 1000],
            labels: &labels,
        };
        let connection = Connection {
            source: Some(&identities[i % 100]),
            source_ip: [10, 0, 0, 1].into(),
            destination_port: 8000 + (i % 100) as u16,
            request: None,
        };
        if set.authorize(workload, connection) == mesh_core::policy::Decision::Allow {
            allowed += 1;
        }
    }
    let per_check = started.elapsed().as_secs_f64() * 1e6 / checks as f64;
    std::hint::black_box(allowed);
    Ok(per_check)
}
