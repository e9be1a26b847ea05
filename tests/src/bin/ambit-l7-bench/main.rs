//! `cargo xtask bench` (L7): HTTP through an Ambit waypoint beside HAProxy doing the same
//! 90/10 split, on the same test bed, in one run. Paths from a client pod to nginx backends
//! on the other node:
//!
//! - `direct`: a client pod -> a backend pod, both in a namespace that never joins the mesh
//!   (the baseline for "added" latency: it is measured again beside each path, in the
//!   same run, so that the machine's stalls fall on both);
//! - `haproxy`: client -> HAProxy in a pod -> v1/v2 90/10, before the namespace joins the
//!   mesh: plain TCP, no mutual TLS anywhere;
//! - `hbone (L4)`: client -> agent -> HBONE -> agent -> v1, no waypoint: what the mesh adds
//!   before any L7 proxy (so `waypoint` minus this is the waypoint's own share);
//! - `haproxy (mesh)`: the same HAProxy pod once its namespace is in the mesh, which is
//!   HAProxy on the waypoint's topology: client -> agent -> HBONE -> agent -> HAProxy ->
//!   agent -> HBONE -> agent -> v1/v2, every hop mutual TLS as on the waypoint path;
//! - `waypoint`: client -> agent -> HBONE -> waypoint (90/10 VirtualService) -> HBONE ->
//!   agent -> v1/v2. The waypoint serves the `reviews` Service only (the Service's label
//!   binds it), so HAProxy's path stays as it was while both run.
//!
//! For each: requests per second at saturation (wrk, 16 connections, median of three runs)
//! and what the proxy made of each core it used meanwhile (the issue's "requests per second
//! per core": the whole path shares two cores with the client, the backends and the node
//! agents), the same over the cores the proxy and the agents used together ("path"),
//! p50/p99 at a fixed rate (open loop, latency counted from when each request was due) and
//! what the path adds to the direct one measured at the same time (medians of three runs;
//! for HAProxy in the mesh and the waypoint, of `--rounds` runs each, taking turns),
//! the CPU per 1,000 requests per second of the proxy and of the proxy with the agents, and
//! the proxy's RSS. Each proxy runs as many threads as the other (one unless
//! `--proxy-threads` says otherwise).

mod load;
mod measure;
mod report;
mod servers;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use clap::Parser;
use mesh_tests::{AgentOptions, Pod, Testbed, Topology, http::HttpClient, sys::rss_mb};

use crate::{
    load::Target,
    measure::{Subject, fixed_rate_rounds, saturate},
    report::{Row, print_rows},
    servers::{nginx, start_haproxy},
};

#[derive(Parser)]
struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Requests per second of the fixed-rate run.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Threads each proxy runs (HAProxy's `nbthread`, the waypoint's `--worker-threads`):
    /// the same for both, so that "per core" compares the proxies and not their threading
    /// on a host whose two cores the client and the backends share.
    #[arg(long, default_value_t = 1)]
    proxy_threads: usize,
    /// Fixed-rate runs of HAProxy in the mesh and of the waypoint, taking turns.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Paths to measure besides `direct` (the baseline, always measured).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Path::Haproxy, Path::Hbone, Path::HaproxyMesh, Path::Waypoint])]
    paths: Vec<Path>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Path {
    Haproxy,
    Hbone,
    HaproxyMesh,
    Waypoint,
}

const PORT: u16 = 9080;
/// Fixed-rate runs of a path measured on its own; their median p50 and p99 are reported.
const FIXED_RATE_RUNS: usize = 3;
const VIP: &str = "10.96.0.10";
const HAPROXY_PORT: u16 = 8080;

fn main() -> Result<()> {
    let args = Args::parse();
    // Pods 0, 1 and 3 of each node in `default` (the mesh, once it joins), pod 2 in
    // `baseline` (never in it). HAProxy runs in n0-p3, the waypoint in n0-p1.
    let tb = Testbed::new(Topology {
        nodes: 2,
        pods_per_node: 4,
        namespaces: vec![
            "default".to_owned(),
            "default".to_owned(),
            "baseline".to_owned(),
            "default".to_owned(),
        ],
    })?;
    tb.set_service_account("n0-p0", "client")?;
    tb.set_service_account("n0-p3", "haproxy")?;
    for (pod, version) in [("n1-p0", "v1"), ("n1-p1", "v2")] {
        tb.label_pod(pod, "app", Some("reviews"))?;
        tb.label_pod(pod, "version", Some(version))?;
    }
    tb.write_policy("reviews", &reviews_policy(None))?;
    let _backends = [
        nginx(&tb, tb.pod("n1-p0"), "v1")?,
        nginx(&tb, tb.pod("n1-p1"), "v2")?,
        nginx(&tb, tb.pod("n1-p2"), "direct")?,
    ];
    let (controller, agents) = tb.start_mesh(AgentOptions {
        config_from_controller: true,
        worker_threads: Some(1),
        ..AgentOptions::default()
    })?;
    let agent_pids: Vec<u32> = agents.iter().filter_map(|a| a.pid()).collect();
    let client = tb.pod("n0-p0");
    let haproxy_pod = tb.pod("n0-p3");
    let to_haproxy = Target {
        from: client,
        addr: SocketAddr::from((haproxy_pod.ip, HAPROXY_PORT)),
    };
    let mut rows = Vec::new();

    println!(
        "L7: {} s per measurement, fixed rate {} req/s, {} thread(s) per proxy",
        args.seconds, args.rate, args.proxy_threads
    );
    let direct = Target {
        from: tb.pod("n0-p2"),
        addr: tb.pod("n1-p2").addr(PORT),
    };
    let alone = |subject: &Subject<'_>, baseline: Option<Target<'_>>| -> Result<Row> {
        let saturation = saturate(subject, args.seconds)?;
        let fixed = fixed_rate_rounds(
            &[subject],
            baseline,
            args.rate,
            args.seconds,
            FIXED_RATE_RUNS,
        )?;
        let rss = subject.proxy.map(rss_mb).transpose()?;
        Ok(Row::new(
            subject.name,
            saturation,
            fixed.into_iter().next().unwrap_or_default(),
            rss,
        ))
    };
    rows.push(alone(
        &Subject {
            name: "direct",
            target: direct,
            proxy: None,
            agents: &[],
        },
        None,
    )?);

    let wants = |path| args.paths.contains(&path);
    if wants(Path::Haproxy) {
        // Started anew for each row: the capture applies to new connections.
        let haproxy = start_haproxy(&tb, haproxy_pod, args.proxy_threads)?;
        rows.push(alone(
            &Subject {
                name: "haproxy",
                target: to_haproxy,
                proxy: Some(haproxy.id()),
                agents: &[],
            },
            Some(direct),
        )?);
    }

    // Into the mesh: first L4 only (HBONE between the two agents, no waypoint), which is
    // the part of the waypoint path's latency that is not the waypoint's...
    tb.make_waypoint_pod("n0-p1", "waypoint", "waypoint")?;
    tb.set_namespace_ambient("default", true)?;
    for pod in [client, haproxy_pod] {
        agents[0].wait_enrolled(&pod.key(), true)?;
    }
    for pod in ["n1-p0", "n1-p1"] {
        agents[1].wait_enrolled(&tb.pod(pod).key(), true)?;
    }
    if wants(Path::Hbone) {
        rows.push(alone(
            &Subject {
                name: "hbone (L4)",
                target: Target {
                    from: client,
                    addr: tb.pod("n1-p0").addr(PORT),
                },
                proxy: None,
                agents: &agent_pids,
            },
            Some(direct),
        )?);
    }
    // ...then HAProxy where the waypoint will be: in a pod of the mesh, so that the agents
    // carry both its sides. It keeps running beside the waypoint, which serves only the
    // `reviews` Service, so that the two take turns at the fixed rate.
    let haproxy_mesh = match wants(Path::HaproxyMesh) {
        true => Some(start_haproxy(&tb, haproxy_pod, args.proxy_threads)?),
        false => None,
    };
    let haproxy_mesh = haproxy_mesh.as_ref().map(|haproxy| Subject {
        name: "haproxy (mesh)",
        target: to_haproxy,
        proxy: Some(haproxy.id()),
        agents: &agent_pids,
    });
    let haproxy_mesh_saturation = match &haproxy_mesh {
        Some(subject) => {
            let saturation = saturate(subject, args.seconds)?;
            check_haproxy_in_mesh(&agents)?;
            Some(saturation)
        }
        None => None,
    };
    if !wants(Path::Waypoint) {
        if let (Some(subject), Some(saturation)) = (&haproxy_mesh, haproxy_mesh_saturation) {
            let fixed = fixed_rate_rounds(
                &[subject],
                Some(direct),
                args.rate,
                args.seconds,
                FIXED_RATE_RUNS,
            )?;
            let rss = subject.proxy.map(rss_mb).transpose()?;
            rows.push(Row::new(
                subject.name,
                saturation,
                fixed.into_iter().next().unwrap_or_default(),
                rss,
            ));
        }
        print_rows(&rows);
        return Ok(());
    }
    // ...then the `reviews` Service uses the waypoint in n0-p1.
    tb.write_policy("reviews", &reviews_policy(Some("waypoint")))?;
    let waypoint = tb.start_waypoint(
        &controller,
        "n0-p1",
        "default/waypoint",
        "waypoint",
        &[
            "--access-log",
            "off",
            "--worker-threads",
            &args.proxy_threads.to_string(),
        ],
    )?;
    waypoint.wait_service("reviews.default.svc.cluster.local")?;
    let vip: SocketAddr = format!("{VIP}:{PORT}").parse()?;
    // The agents learn of the binding from the controller: until then the split is theirs.
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(error) = check_split(client, vip) {
        if Instant::now() > deadline {
            return Err(error);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let through_waypoint = Subject {
        name: "waypoint",
        target: Target {
            from: client,
            addr: vip,
        },
        proxy: Some(waypoint.pid()),
        agents: &agent_pids,
    };
    let waypoint_saturation = saturate(&through_waypoint, args.seconds)?;
    // The two L7 proxies take turns at the fixed rate, so that the host's noisy spells fall
    // on both: their p99s are compared to a few hundred microseconds.
    let subjects: Vec<&Subject<'_>> = haproxy_mesh.iter().chain([&through_waypoint]).collect();
    let mut fixed = fixed_rate_rounds(
        &subjects,
        Some(direct),
        args.rate,
        args.seconds,
        args.rounds,
    )?;
    let waypoint_fixed = fixed.pop().unwrap_or_default();
    if let (Some(subject), Some(saturation), Some(result)) =
        (&haproxy_mesh, haproxy_mesh_saturation, fixed.pop())
    {
        rows.push(Row::new(
            subject.name,
            saturation,
            result,
            subject.proxy.map(rss_mb).transpose()?,
        ));
    }
    rows.push(Row::new(
        "waypoint",
        waypoint_saturation,
        waypoint_fixed,
        Some(rss_mb(waypoint.pid())?),
    ));
    print_rows(&rows);
    Ok(())
}

/// The bench's Service, DestinationRule (v1, v2) and 90/10 VirtualService, the Service
/// bound to `waypoint` if given.
fn reviews_policy(waypoint: Option<&str>) -> String {
    let labels = waypoint.map_or(String::new(), |w| {
        format!(", labels: {{ambit.io/use-waypoint: {w}}}")
    });
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: reviews, namespace: default{labels}}}\nspec: {{clusterIP: {VIP}, selector: {{app: reviews}}, ports: [{{port: {PORT}}}]}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  host: reviews\n  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - {{destination: {{host: reviews, subset: v1}}, weight: 90}}\n    - {{destination: {{host: reviews, subset: v2}}, weight: 10}}\n"
    )
}

/// HAProxy's row means something only if the agents carried both its sides: the client's
/// connections to it, and its own to the backends.
fn check_haproxy_in_mesh(agents: &[mesh_tests::Agent]) -> Result<()> {
    let haproxy_id = "\"spiffe://cluster.local/ns/default/sa/haproxy\"";
    for (agent, side) in [(&agents[0], "destination"), (&agents[1], "source")] {
        let principal = format!("{side}_principal={haproxy_id}");
        let carried = agent.metric_sum(
            "istio_tcp_connections_opened_total",
            &[&principal, "connection_security_policy=\"mutual_tls\""],
        )?;
        if carried == 0.0 {
            bail!(
                "{} carried no mutual-TLS connection with HAProxy as {side}",
                agent.node
            );
        }
    }
    Ok(())
}

/// The 90/10 split holds before anything is measured.
fn check_split(client: &Pod, addr: SocketAddr) -> Result<()> {
    let mut http = HttpClient::connect(client, addr, "reviews")?;
    let mut v2 = 0;
    for _ in 0..500 {
        if http.get("/", &[])?.body.starts_with("v2") {
            v2 += 1;
        }
    }
    if !(20..=80).contains(&v2) {
        bail!("the waypoint's split sent {v2} of 500 requests to v2, not about 50");
    }
    Ok(())
}
