//! `cargo xtask bench`: direct vs captured paths in the test-bed topology, in one run.
//!
//! Paths: `direct` (two unenrolled pods), `captured` (both pods enrolled: client agent ->
//! plain TCP -> server agent), `captured+sockmap` (the same with the app <-> agent hop spliced).
//! Only ratios within one run mean anything on a shared machine.

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use mesh_tests::{
    AgentOptions, Pod, Testbed, Topology,
    traffic::{connection_rate, echo_server, request_response},
};
use serde_json::json;

const ECHO_PORT: u16 = 7000;
const IPERF_PORT: u16 = 5201;

#[derive(Parser)]
struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Paths to measure besides direct (comma-separated): captured, captured+sockmap, hbone,
    /// hbone+10k-pods (connection setup and memory with 10,000 more remote pods known).
    #[arg(
        long,
        default_value = "captured,captured+sockmap,hbone,hbone+10k-pods",
        value_delimiter = ','
    )]
    paths: Vec<String>,
    /// Runtime worker threads per agent. The test bed runs two nodes' agents on one machine: with
    /// 1 each node's agent has one core of a 2-core machine, as a node would have its own.
    #[arg(long, default_value_t = 1)]
    agent_workers: usize,
    /// Idle HBONE connections to hold open for the memory measurement.
    #[arg(long, default_value_t = 10_000)]
    hold: usize,
    /// Internal: run as the server that accepts and holds connections, on this port.
    #[arg(long, hide = true)]
    hold_server: Option<u16>,
}

type Results = BTreeMap<&'static str, f64>;

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(port) = args.hold_server {
        return hold_server(port);
    }
    mesh_tests::sys::require_root()?;
    let secs = Duration::from_secs(args.seconds);
    // Each path gets its own client and server pods: connection-rate runs leave thousands of
    // sockets in TIME_WAIT, which would slow the next path's port allocation.
    let tb = Testbed::new(Topology {
        nodes: 2,
        pods_per_node: 5,
        ..Topology::default()
    })?;
    // n*-p0 are enrolled, n*-p1 are not.
    for pod in [
        "n0-p0", "n1-p0", "n0-p2", "n1-p2", "n0-p3", "n1-p3", "n0-p4", "n1-p4",
    ] {
        tb.set_pod_mode(pod, Some("ambient"))?;
    }
    let _servers: Vec<_> = ["n1-p0", "n1-p1", "n1-p2", "n1-p3", "n1-p4"]
        .iter()
        .map(|p| echo_server(tb.pod(p).listen(ECHO_PORT)?))
        .collect::<Result<_>>()?;
    let mut iperf_servers = Vec::new();
    for pod in ["n1-p0", "n1-p1", "n1-p2", "n1-p3"] {
        iperf_servers.push(mesh_tests::sys::KillOnDrop(
            tb.pod(pod).spawn(
                Command::new("iperf3")
                    .args(["-s", "-p", &IPERF_PORT.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )?,
        ));
    }
    std::thread::sleep(Duration::from_millis(300));

    let mut all: Vec<(&str, Results)> = Vec::new();
    eprintln!("bench: direct (no mesh)");
    all.push((
        "direct",
        measure(
            &tb.pod("n0-p1").clone(),
            &tb.pod("n1-p1").clone(),
            secs,
            None,
        )?,
    ));
    let controller = tb.start_controller()?;
    let paths = [
        ("captured", false, None, 0),
        ("captured+sockmap", true, None, 2),
        ("hbone", false, Some(controller.root.clone()), 3),
    ];
    for (name, accelerate, ca_root, pod) in paths {
        let (client, server) = (
            tb.pod(&format!("n0-p{pod}")).clone(),
            tb.pod(&format!("n1-p{pod}")).clone(),
        );
        if !args.paths.iter().any(|p| p == name) {
            continue;
        }
        eprintln!(
            "bench: {name} ({} worker thread(s) per agent)",
            args.agent_workers
        );
        let hbone = ca_root.is_some();
        let options = AgentOptions {
            accelerate,
            ca_root,
            worker_threads: Some(args.agent_workers),
            ..AgentOptions::default()
        };
        let agents = [
            tb.start_agent("n0", &options)?,
            tb.start_agent("n1", &options)?,
        ];
        agents[0].wait_enrolled(&client.key(), true)?;
        agents[1].wait_enrolled(&server.key(), true)?;
        let mut results = measure(&client, &server, secs, Some(&agents))?;
        if hbone && args.hold > 0 {
            match hold_connections(&client, &server, &agents, args.hold) {
                Ok(per_connection) => results.extend(per_connection),
                Err(error) => {
                    eprintln!("bench: holding {} connections failed: {error:#}", args.hold)
                }
            }
        }
        drop(agents);
        all.push((name, results));
    }
    if args.paths.iter().any(|p| p == "hbone+10k-pods") {
        eprintln!("bench: hbone with 10,000 more remote pods known to the agents");
        let options = AgentOptions {
            ca_root: Some(controller.root.clone()),
            worker_threads: Some(args.agent_workers),
            ..AgentOptions::default()
        };
        all.push(("hbone+10k-pods", many_pods(&tb, &options, secs, 10_000)?));
    }
    drop(iperf_servers);
    print_table(&all);
    let authz_us = authorization_check_us()?;
    println!(
        "authorization against 10,000 policies in 1,000 namespaces: {authz_us:.2} us per check"
    );
    write_json(&all, args.seconds, authz_us)
}

/// Connection setup and agent memory with `extra` remote pods in the mesh (on a node with no
/// agent here), against the same measurements with a handful (the `hbone` path): the goal is
/// the same cost per connection.
fn many_pods(
    tb: &Testbed,
    options: &AgentOptions,
    secs: Duration,
    extra: usize,
) -> Result<Results> {
    tb.update_pods_file(|file| {
        for i in 0..extra {
            file.pods.push(mesh_node::pods::Pod {
                name: format!("remote-{i}"),
                namespace: "default".to_owned(),
                node: "elsewhere".to_owned(),
                service_account: format!("sa-{}", i % 100),
                ip: std::net::Ipv4Addr::new(10, 200, (i / 250) as u8, (i % 250) as u8 + 1),
                netns: "/nonexistent".into(),
                cgroup: None,
                labels: std::sync::Arc::new(
                    [("app".to_owned(), format!("app-{}", i % 500))].into(),
                ),
                uid: None,
                owner: None,
                names: None,
                enrolled: None,
                waypoint: None,
            });
        }
    })?;
    let (client, server) = (tb.pod("n0-p4").clone(), tb.pod("n1-p4").clone());
    let agents = [
        tb.start_agent("n0", options)?,
        tb.start_agent("n1", options)?,
    ];
    agents[0].wait_enrolled(&client.key(), true)?;
    agents[1].wait_enrolled(&server.key(), true)?;
    let mut r = Results::new();
    std::thread::sleep(Duration::from_secs(2));
    r.insert("agent_rss_idle_mb", rss_mb(&agents)?);
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
    r.insert("agent_rss_after_load_mb", rss_mb(&agents)?);
    r.insert("agent_rss_settled_mb", settled_rss_mb(&agents)?);
    Ok(r)
}

/// Mean time of one L4 authorization decision with 10,000 AuthorizationPolicies in the mesh.
fn authorization_check_us() -> Result<f64> {
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

fn measure(
    client: &Pod,
    server: &Pod,
    secs: Duration,
    agents: Option<&[mesh_tests::Agent; 2]>,
) -> Result<Results> {
    let mut r = Results::new();
    if let Some(agents) = agents {
        // Past start-up's transient allocations, as the settled RSS after the load is.
        std::thread::sleep(Duration::from_secs(2));
        r.insert("agent_rss_idle_mb", rss_mb(agents)?);
    }
    let dst = server.addr(ECHO_PORT);
    let connect = || client.connect(dst);
    let mut record = |key: &'static str, value: Result<f64>| {
        let value = value.unwrap_or_else(|error| {
            eprintln!("bench: {key} failed: {error:#}");
            f64::NAN
        });
        r.insert(key, value);
    };
    record("iperf3_1_stream_gbps", iperf3(client, server, 1, secs));
    record("iperf3_8_streams_gbps", iperf3(client, server, 8, secs));
    for (conns, key_p50, key_p99, key_rate) in [
        (
            1,
            "rr_1k_1conn_p50_us",
            "rr_1k_1conn_p99_us",
            "rr_1k_1conn_per_s",
        ),
        (
            16,
            "rr_1k_16conn_p50_us",
            "rr_1k_16conn_p99_us",
            "rr_1k_16conn_per_s",
        ),
    ] {
        match request_response(&connect, conns, 1024, secs) {
            Ok(h) => {
                record(key_p50, Ok(h.value_at_quantile(0.50) as f64 / 1000.0));
                record(key_p99, Ok(h.value_at_quantile(0.99) as f64 / 1000.0));
                record(key_rate, Ok(h.len() as f64 / secs.as_secs_f64()));
            }
            Err(error) => {
                for key in [key_p50, key_p99, key_rate] {
                    record(key, Err(anyhow::anyhow!("{error:#}")));
                }
            }
        }
    }
    record(
        "new_conn_1_client_per_s",
        connection_rate(&connect, 1, secs),
    );
    record(
        "new_conn_4_clients_per_s",
        connection_rate(&connect, 4, secs),
    );
    // 60,000 connections to one pod: whether the rate holds from the first tenth to the last
    // (the inbound delivery's source ports once ran out), and whether any failed.
    let storm = mesh_tests::storm::storm(&[client], 4, dst, 60_000);
    let deciles = storm.decile_rates();
    record(
        "storm_60k_first_tenth_per_s",
        deciles.first().copied().context("no storm"),
    );
    record(
        "storm_60k_last_tenth_per_s",
        deciles.last().copied().context("no storm"),
    );
    record("storm_60k_failed", Ok(storm.failed as f64));
    if let Some(agents) = agents {
        r.insert("agent_rss_after_load_mb", rss_mb(agents)?);
        r.insert("agent_rss_settled_mb", settled_rss_mb(agents)?);
    }
    Ok(r)
}

/// RSS once the load's connections have all closed and the allocator had a moment to give
/// freed memory back: within 20 % of the idle RSS is the goal.
fn settled_rss_mb(agents: &[mesh_tests::Agent; 2]) -> Result<f64> {
    let carried = |agent: &mesh_tests::Agent| {
        agent
            .connections()
            .map(|c| c.as_array().map_or(0, Vec::len))
            .unwrap_or(0)
    };
    mesh_tests::sys::wait_until(
        "the load's connections to close",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || Ok(agents.iter().all(|a| carried(a) == 0)),
    )?;
    std::thread::sleep(Duration::from_secs(2));
    rss_mb(agents)
}

fn iperf3(client: &Pod, server: &Pod, streams: u32, secs: Duration) -> Result<f64> {
    let child = client.spawn(
        Command::new("iperf3")
            .args([
                "-c",
                &server.ip.to_string(),
                "-p",
                &IPERF_PORT.to_string(),
                "-J",
            ])
            .args([
                "-t",
                &secs.as_secs().to_string(),
                "-P",
                &streams.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )?;
    let out = child.wait_with_output()?;
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("iperf3 printed no JSON")?;
    if let Some(error) = report["error"].as_str() {
        bail!("iperf3 -P {streams}: {error}");
    }
    let bps = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 report without sum_received")?;
    Ok(bps / 1e9)
}

/// Sum of both agents' resident memory, in MB.
fn rss_mb(agents: &[mesh_tests::Agent; 2]) -> Result<f64> {
    let mut mb = 0.0;
    for agent in agents {
        mb += mesh_tests::sys::rss_mb(agent.pid().context("agent not running")?)?;
    }
    Ok(mb / agents.len() as f64)
}

fn print_table(all: &[(&str, Results)]) {
    let direct = &all[0].1;
    let keys: Vec<&str> = all
        .iter()
        .flat_map(|(_, r)| r.keys().copied())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    print!("\n{:<28}", "metric");
    for (name, _) in all {
        print!("{name:>18}");
    }
    println!("{:>22}", "ratio to direct");
    for key in keys {
        print!("{key:<28}");
        for (_, r) in all {
            match r.get(key) {
                Some(v) if v.is_nan() => print!("{:>18}", "failed"),
                Some(v) => print!("{v:>18.2}"),
                None => print!("{:>18}", "-"),
            }
        }
        let ratios: Vec<String> = all[1..]
            .iter()
            .map(|(_, r)| match (r.get(key), direct.get(key)) {
                (Some(v), Some(d)) if v.is_finite() && d.is_finite() => format!("{:.2}x", v / d),
                _ => "-".to_owned(),
            })
            .collect();
        println!("{:>22}", ratios.join(" / "));
    }
    let order: Vec<&str> = all[1..].iter().map(|(name, _)| *name).collect();
    println!("(ratios: {}; agent RSS is per agent)", order.join(" / "));
}

fn write_json(all: &[(&str, Results)], seconds: u64, authz_us: f64) -> Result<()> {
    let exe = std::env::current_exe()?;
    let target = exe
        .parent()
        .and_then(|p| p.parent())
        .context("no target directory")?;
    let dir = target.join("bench");
    std::fs::create_dir_all(&dir)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let paths: BTreeMap<&str, &Results> = all.iter().map(|(n, r)| (*n, r)).collect();
    let report = json!({
        "unix_time": stamp,
        "seconds_per_measurement": seconds,
        "paths": paths,
        "authorization_10k_policies_us": authz_us,
    });
    let text = serde_json::to_string_pretty(&report)?;
    let file = dir.join(format!("bench-{stamp}.json"));
    std::fs::write(&file, &text)?;
    std::fs::write(dir.join("latest.json"), &text)?;
    println!("wrote {}", file.display());
    Ok(())
}

const HOLD_PORT: u16 = 7100;

/// Opens `count` idle connections through HBONE and reports the agents' memory per connection.
/// The server side is a separate process: one process cannot hold both ends within the
/// machine's open-file limit.
fn hold_connections(
    client: &Pod,
    server: &Pod,
    agents: &[mesh_tests::Agent; 2],
    count: usize,
) -> Result<Results> {
    let exe = std::env::current_exe()?;
    let _holder = mesh_tests::sys::KillOnDrop(
        server.spawn(Command::new(exe).args(["--hold-server", &HOLD_PORT.to_string()]))?,
    );
    std::thread::sleep(Duration::from_millis(300));
    let idle = rss_mb(agents)?;
    let dst = server.addr(HOLD_PORT);
    let mut held = Vec::with_capacity(count);
    let started = std::time::Instant::now();
    for _ in 0..count {
        let mut stream = client.connect(dst)?;
        // One byte back proves the tunnel reached the holder.
        std::io::Write::write_all(&mut stream, b"x")?;
        let mut one = [0u8; 1];
        std::io::Read::read_exact(&mut stream, &mut one)?;
        held.push(stream);
    }
    eprintln!(
        "bench: {count} HBONE connections open in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(1));
    let loaded = rss_mb(agents)?;
    drop(held);
    let mut r = Results::new();
    r.insert("agent_rss_holding_mb", loaded);
    r.insert(
        "agent_kb_per_idle_connection",
        (loaded - idle) * 1024.0 / count as f64,
    );
    Ok(r)
}

/// Accepts connections and holds them, answering each first byte once.
fn hold_server(port: u16) -> Result<()> {
    let listener = std::net::TcpListener::bind(("::", port))?;
    let mut held = Vec::new();
    for stream in listener.incoming() {
        let mut stream = stream?;
        let mut one = [0u8; 1];
        if std::io::Read::read_exact(&mut stream, &mut one).is_ok() {
            let _ = std::io::Write::write_all(&mut stream, &one);
            held.push(stream);
        }
    }
    Ok(())
}
