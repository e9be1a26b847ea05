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
//!   agent -> v1/v2.
//!
//! For each: requests per second at saturation (wrk, 16 connections, median of three runs)
//! and what the proxy made of each core it used meanwhile (the issue's "requests per second
//! per core": the whole path shares two cores with the client, the backends and the node
//! agents), the same over the cores the proxy and the agents used together ("path"),
//! p50/p99 at a fixed rate (open loop, latency counted from when each request was due) and
//! what the path adds to the direct one measured at the same time (medians of three runs),
//! the CPU per 1,000 requests per second of the proxy and of the proxy with the agents, and
//! the proxy's RSS. Each proxy runs as many threads as the other (one unless
//! `--proxy-threads` says otherwise).

mod load;
mod servers;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use clap::Parser;
use mesh_tests::{
    AgentOptions, Pod, Testbed, Topology,
    http::HttpClient,
    sys::{cpu_seconds, rss_mb},
};

use crate::{
    load::{Target, fixed_rate, median, wrk},
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
/// Fixed-rate runs per path; their median p50 and p99 are reported.
const FIXED_RATE_RUNS: usize = 3;
/// Saturation runs per path; their median rates are reported.
const SATURATION_RUNS: usize = 3;
const VIP: &str = "10.96.0.10";

struct Row {
    path: &'static str,
    saturation_rps: f64,
    /// Saturation requests per second per core the proxy used.
    rps_per_core: Option<f64>,
    /// The same per core the proxy and the node agents used together.
    path_rps_per_core: Option<f64>,
    p50_us: f64,
    p99_us: f64,
    /// Over the direct path measured at the same time.
    added_p50_us: f64,
    added_p99_us: f64,
    cpu_ms_per_1k_rps: Option<f64>,
    path_cpu_ms_per_1k_rps: Option<f64>,
    rss_mb: Option<f64>,
}

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
    tb.write_policy(
        "reviews",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: reviews, namespace: default}}\nspec: {{clusterIP: {VIP}, selector: {{app: reviews}}, ports: [{{port: {PORT}}}]}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  host: reviews\n  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]\n---\n\
             apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - {{destination: {{host: reviews, subset: v1}}, weight: 90}}\n    - {{destination: {{host: reviews, subset: v2}}, weight: 10}}\n"
        ),
    )?;
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
    let mut rows = Vec::new();

    println!(
        "L7: {} s per measurement, fixed rate {} req/s, {} thread(s) per proxy",
        args.seconds, args.rate, args.proxy_threads
    );
    let direct = Target {
        from: tb.pod("n0-p2"),
        addr: tb.pod("n1-p2").addr(PORT),
    };
    rows.push(measure("direct", &args, direct, None, None, &[])?);

    let wants = |path| args.paths.contains(&path);
    // HAProxy in its pod, started anew for each row (the capture applies to new connections).
    let measure_haproxy = |name, agents: &[u32]| -> Result<Row> {
        let haproxy = start_haproxy(&tb, haproxy_pod, args.proxy_threads)?;
        let to_haproxy = Target {
            from: client,
            addr: SocketAddr::from((haproxy_pod.ip, 8080)),
        };
        measure(
            name,
            &args,
            to_haproxy,
            Some(direct),
            Some(haproxy.id()),
            agents,
        )
    };
    if wants(Path::Haproxy) {
        rows.push(measure_haproxy("haproxy", &[])?);
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
        rows.push(measure(
            "hbone (L4)",
            &args,
            Target {
                from: client,
                addr: tb.pod("n1-p0").addr(PORT),
            },
            Some(direct),
            None,
            &agent_pids,
        )?);
    }
    // ...then HAProxy where the waypoint will be: in a pod of the mesh, so that the agents
    // carry both its sides...
    if wants(Path::HaproxyMesh) {
        rows.push(measure_haproxy("haproxy (mesh)", &agent_pids)?);
        // The row means something only if the agents carried both of HAProxy's sides: the
        // client's connections to it, and its own to the backends.
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
    }
    if !wants(Path::Waypoint) {
        print_rows(&rows);
        return Ok(());
    }
    // ...then the namespace uses the waypoint in n0-p1.
    tb.label_namespace("default", "ambit.io/use-waypoint", Some("waypoint"))?;
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
    rows.push(measure(
        "waypoint",
        &args,
        Target {
            from: client,
            addr: vip,
        },
        Some(direct),
        Some(waypoint.pid()),
        &agent_pids,
    )?);
    print_rows(&rows);
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

/// Saturation and per-core rates, then the fixed-rate runs: `path` beside `baseline`.
/// `proxy` is the L7 proxy's process, `agents` the node agents' on the path.
fn measure(
    name: &'static str,
    args: &Args,
    path: Target<'_>,
    baseline: Option<Target<'_>>,
    proxy: Option<u32>,
    agents: &[u32],
) -> Result<Row> {
    let on_path: Vec<u32> = proxy.into_iter().chain(agents.iter().copied()).collect();
    let cpu = || Cpu::read(proxy, &on_path);
    let (mut saturation, mut per_core, mut path_per_core) = (vec![], vec![], vec![]);
    for _ in 0..SATURATION_RUNS {
        let before = cpu()?;
        let started = Instant::now();
        let rps = wrk(path.from, path.addr, args.seconds)?;
        let elapsed = started.elapsed().as_secs_f64();
        let used = cpu()?.since(&before);
        saturation.push(rps);
        per_core.extend(used.proxy.map(|s| rps / (s / elapsed)));
        path_per_core.extend(used.path.map(|s| rps / (s / elapsed)));
    }
    let before = cpu()?;
    let targets: Vec<Target<'_>> = std::iter::once(path).chain(baseline).collect();
    // The median of a few runs: one stall of this shared machine moves a single run's p99
    // by milliseconds.
    let (mut p50, mut p99, mut added_p50, mut added_p99) = (vec![], vec![], vec![], vec![]);
    for _ in 0..FIXED_RATE_RUNS {
        let latencies = fixed_rate(&targets, args.rate, args.seconds)?;
        let (own, base) = (latencies[0], latencies.get(1).copied());
        p50.push(own.p50_us);
        p99.push(own.p99_us);
        added_p50.push(base.map_or(0.0, |b| own.p50_us - b.p50_us));
        added_p99.push(base.map_or(0.0, |b| own.p99_us - b.p99_us));
    }
    let used = cpu()?.since(&before);
    let per_1k_rps = |used: f64| {
        let seconds = (args.seconds * FIXED_RATE_RUNS as u64) as f64;
        used * 1e3 / seconds / (args.rate as f64 / 1e3)
    };
    let median_of = |values: &mut Vec<f64>| (!values.is_empty()).then(|| median(values));
    let row = Row {
        path: name,
        saturation_rps: median(&mut saturation),
        rps_per_core: median_of(&mut per_core),
        path_rps_per_core: median_of(&mut path_per_core),
        p50_us: median(&mut p50),
        p99_us: median(&mut p99),
        added_p50_us: median(&mut added_p50),
        added_p99_us: median(&mut added_p99),
        cpu_ms_per_1k_rps: used.proxy.map(per_1k_rps),
        path_cpu_ms_per_1k_rps: used.path.map(per_1k_rps),
        rss_mb: proxy.map(rss_mb).transpose()?,
    };
    eprintln!(
        "  {name}: {:.0} req/s, p50 {:.0} us, p99 {:.0} us (added {:.0} / {:.0} us)",
        row.saturation_rps, row.p50_us, row.p99_us, row.added_p50_us, row.added_p99_us
    );
    Ok(row)
}

/// CPU seconds of the proxy, and of the proxy and the agents together ("path"), each `None`
/// when the path has no such process.
struct Cpu {
    proxy: Option<f64>,
    path: Option<f64>,
}

impl Cpu {
    fn read(proxy: Option<u32>, on_path: &[u32]) -> Result<Cpu> {
        Ok(Cpu {
            proxy: proxy.map(cpu_seconds).transpose()?,
            path: match on_path {
                [] => None,
                pids => Some(
                    pids.iter()
                        .map(|&pid| cpu_seconds(pid))
                        .sum::<Result<f64>>()?,
                ),
            },
        })
    }

    /// What was used between `before` and this reading.
    fn since(&self, before: &Cpu) -> Cpu {
        let minus = |now: Option<f64>, then: Option<f64>| Some(now? - then?);
        Cpu {
            proxy: minus(self.proxy, before.proxy),
            path: minus(self.path, before.path),
        }
    }
}

fn print_rows(rows: &[Row]) {
    println!(
        "{:<15} {:>10} {:>10} {:>10} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "path",
        "sat. rps",
        "rps/core",
        "path rps/",
        "p50 us",
        "p99 us",
        "added p50",
        "added p99",
        "CPU ms/",
        "path CPU",
        "RSS MB"
    );
    println!(
        "{:<15} {:>10} {:>10} {:>10} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "", "", "", "core", "", "", "us", "us", "1k rps", "ms/1k rps", ""
    );
    let opt = |v: Option<f64>, places: usize| {
        v.map_or_else(|| "-".to_owned(), |v| format!("{v:.places$}"))
    };
    for row in rows {
        println!(
            "{:<15} {:>10.0} {:>10} {:>10} {:>8.0} {:>8.0} {:>9.0} {:>9.0} {:>9} {:>9} {:>7}",
            row.path,
            row.saturation_rps,
            opt(row.rps_per_core, 0),
            opt(row.path_rps_per_core, 0),
            row.p50_us,
            row.p99_us,
            row.added_p50_us,
            row.added_p99_us,
            opt(row.cpu_ms_per_1k_rps, 1),
            opt(row.path_cpu_ms_per_1k_rps, 1),
            opt(row.rss_mb, 1)
        );
    }
    let find = |path: &str| rows.iter().find(|r| r.path == path);
    let Some(waypoint) = find("waypoint") else {
        return;
    };
    let ratio = |a: Option<f64>, b: Option<f64>| a.unwrap_or(f64::NAN) / b.unwrap_or(f64::NAN);
    for (haproxy, how) in [
        (find("haproxy (mesh)"), "on the same topology, in the mesh"),
        (find("haproxy"), "plain, outside the mesh, no TLS"),
    ] {
        let Some(h) = haproxy else { continue };
        println!(
            "waypoint / {} ({how}): req/s per core {:.2}x (path {:.2}x), saturation {:.2}x, added p50 {:.0} vs {:.0} us, added p99 {:.0} vs {:.0} us, CPU per 1k req/s {:.2}x (path {:.2}x)",
            h.path,
            ratio(waypoint.rps_per_core, h.rps_per_core),
            ratio(waypoint.path_rps_per_core, h.path_rps_per_core),
            waypoint.saturation_rps / h.saturation_rps,
            waypoint.added_p50_us,
            h.added_p50_us,
            waypoint.added_p99_us,
            h.added_p99_us,
            ratio(waypoint.cpu_ms_per_1k_rps, h.cpu_ms_per_1k_rps),
            ratio(waypoint.path_cpu_ms_per_1k_rps, h.path_cpu_ms_per_1k_rps),
        );
    }
    if let Some(l4) = find("hbone (L4)") {
        println!(
            "the waypoint's own share (waypoint minus hbone): added p50 {:.0} us, p99 {:.0} us",
            waypoint.added_p50_us - l4.added_p50_us,
            waypoint.added_p99_us - l4.added_p99_us
        );
    }
}
