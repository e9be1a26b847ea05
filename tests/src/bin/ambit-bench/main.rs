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

mod memory;
mod scale;

use memory::{hold_connections, hold_server, rss_mb, settled_rss_mb};
use scale::{authorization_check_us, many_pods};

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
    let mut scale_summary = None;
    if args.paths.iter().any(|p| p == "hbone+10k-pods") {
        eprintln!("bench: hbone with 10,000 more remote pods known to the agents");
        let options = AgentOptions {
            ca_root: Some(controller.root.clone()),
            worker_threads: Some(args.agent_workers),
            ..AgentOptions::default()
        };
        let (few, many) = many_pods(&tb, &options, secs, 10_000)?;
        let ratio = |key: &str| {
            many.get(key)
                .zip(few.get(key))
                .map_or(f64::NAN, |(m, f)| m / f)
        };
        let per_pod_kb = |key: &str| {
            many.get(key)
                .zip(few.get(key))
                .map_or(f64::NAN, |(m, f)| (m - f) * 1024.0 / 10_000.0)
        };
        scale_summary = Some(format!(
            "same agents, 10,000 pods added vs before: new connections/s x{:.2} (1 client), x{:.2} (4 clients); {:.2} KB per pod idle, {:.2} KB settled after the load",
            ratio("new_conn_1_client_per_s"),
            ratio("new_conn_4_clients_per_s"),
            per_pod_kb("agent_rss_idle_mb"),
            per_pod_kb("agent_rss_settled_mb"),
        ));
        all.push(("hbone:few-pods", few));
        all.push(("hbone:10k-pods", many));
    }
    drop(iperf_servers);
    print_table(&all);
    if let Some(summary) = scale_summary {
        println!("{summary}");
    }
    let authz_us = authorization_check_us()?;
    println!(
        "authorization against 10,000 policies in 1,000 namespaces: {authz_us:.2} us per check"
    );
    write_json(&all, args.seconds, authz_us)
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
