//! `cargo xtask bench` (L7): HTTP through an Ambit waypoint beside HAProxy doing the same
//! 90/10 split, on the same test bed, in one run. Three paths from a client pod to nginx
//! backends on the other node:
//!
//! - `direct`: a client pod -> a backend pod, both in a namespace that never joins the mesh
//!   (the baseline for "added" latency: it is measured again beside each path, in the
//!   same run, so that the machine's stalls fall on both);
//! - `haproxy`: client -> HAProxy in a pod -> v1/v2 90/10 (no mesh: HAProxy cannot speak
//!   HBONE, so this path has no mutual TLS);
//! - `hbone (L4)`: client -> agent -> HBONE -> agent -> v1, no waypoint: what the mesh adds
//!   before any L7 proxy (so `waypoint` minus this is the waypoint's own share);
//! - `waypoint`: client -> agent -> HBONE -> waypoint (90/10 VirtualService) -> HBONE ->
//!   agent -> v1/v2: two mutual-TLS hops more than HAProxy's path.
//!
//! For each: requests per second at saturation (wrk, 16 connections) and what the proxy
//! made of each core it used meanwhile (the "requests per second per core": the
//! whole path shares two cores with the client, the backends and, on the waypoint path,
//! two node agents), p50/p99 at a fixed rate (open loop, latency counted from when each
//! request was due) and what the path adds to the direct one measured at the same time
//! (medians of three runs), the proxy's CPU per 1,000 requests per second and its RSS.

mod load;

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use clap::Parser;
use mesh_tests::{AgentOptions, Pod, Testbed, Topology, http::HttpClient, sys::rss_mb};

use crate::load::{Target, cpu_seconds, fixed_rate, median, wrk};

#[derive(Parser)]
struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Requests per second of the fixed-rate run.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
}

const PORT: u16 = 9080;
/// Fixed-rate runs per path; their median p50 and p99 are reported.
const FIXED_RATE_RUNS: usize = 3;
const VIP: &str = "10.96.0.10";

struct Row {
    path: &'static str,
    saturation_rps: f64,
    /// Saturation requests per second per core the proxy used.
    rps_per_core: Option<f64>,
    p50_us: f64,
    p99_us: f64,
    /// Over the direct path measured at the same time.
    added_p50_us: f64,
    added_p99_us: f64,
    cpu_ms_per_1k_rps: Option<f64>,
    rss_mb: Option<f64>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // Pods 0 and 1 of each node in `default` (the mesh), pod 2 in `baseline` (never in it).
    let tb = Testbed::new(Topology {
        nodes: 2,
        pods_per_node: 3,
        namespaces: vec![
            "default".to_owned(),
            "default".to_owned(),
            "baseline".to_owned(),
        ],
    })?;
    tb.set_service_account("n0-p0", "client")?;
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
    let client = tb.pod("n0-p0");
    let mut rows = Vec::new();

    println!(
        "L7: {} s per measurement, fixed rate {} req/s",
        args.seconds, args.rate
    );
    let direct = Target {
        from: tb.pod("n0-p2"),
        addr: tb.pod("n1-p2").addr(PORT),
    };
    rows.push(measure("direct", &args, direct, None, None)?);

    let haproxy = start_haproxy(&tb, tb.pod("n0-p1"))?;
    let proxy = SocketAddr::from((tb.pod("n0-p1").ip, 8080));
    rows.push(measure(
        "haproxy",
        &args,
        Target {
            from: client,
            addr: proxy,
        },
        Some(direct),
        Some(haproxy.id()),
    )?);
    drop(haproxy);

    // Into the mesh: first L4 only (HBONE between the two agents, no waypoint), which is
    // the part of the waypoint path's latency that is not the waypoint's...
    tb.make_waypoint_pod("n0-p1", "waypoint", "waypoint")?;
    tb.set_namespace_ambient("default", true)?;
    agents[0].wait_enrolled(&client.key(), true)?;
    agents[1].wait_enrolled(&tb.pod("n1-p0").key(), true)?;
    rows.push(measure(
        "hbone (L4)",
        &args,
        Target {
            from: client,
            addr: tb.pod("n1-p0").addr(PORT),
        },
        Some(direct),
        None,
    )?);
    // ...then the namespace uses the waypoint in n0-p1.
    tb.label_namespace("default", "ambit.io/use-waypoint", Some("waypoint"))?;
    let waypoint = tb.start_waypoint(
        &controller,
        "n0-p1",
        "default/waypoint",
        "waypoint",
        &["--access-log", "off"],
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
    )?);
    print_rows(&rows);
    Ok(())
}

/// nginx answering `200 <name>` on 9080 in `pod`; stopped when dropped.
fn nginx(tb: &Testbed, pod: &Pod, name: &str) -> Result<Proc> {
    let dir = tb.work_dir.join(format!("nginx-{}", pod.name));
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes 1;\npid {pid};\nerror_log stderr;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n  fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  scgi_temp_path {d};\n  keepalive_requests 1000000;\n\
             server {{ listen {PORT}; location / {{ return 200 \"{name}\\n\"; }} }}\n}}\n",
            pid = dir.join("nginx.pid").display(),
            d = dir.display()
        ),
    )?;
    let child = pod.spawn(
        Command::new("nginx")
            .args([
                "-c",
                &conf.display().to_string(),
                "-p",
                &dir.display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    wait_http(pod, pod.addr(PORT))?;
    Ok(Proc(child))
}

fn start_haproxy(tb: &Testbed, pod: &Pod) -> Result<Proc> {
    let conf = tb.work_dir.join("haproxy.cfg");
    let (v1, v2) = (tb.pod("n1-p0").addr(PORT), tb.pod("n1-p1").addr(PORT));
    std::fs::write(
        &conf,
        format!(
            "global\n  nbthread 1\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  option http-keep-alive\n\
             frontend web\n  bind :8080\n  default_backend reviews\n\
             backend reviews\n  balance roundrobin\n  http-reuse always\n  server v1 {v1} weight 90\n  server v2 {v2} weight 10\n"
        ),
    )?;
    let child = pod.spawn(
        Command::new("haproxy")
            .args(["-db", "-f", &conf.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    wait_http(tb.pod("n0-p0"), SocketAddr::from((pod.ip, 8080)))?;
    Ok(Proc(child))
}

/// A process killed when dropped.
struct Proc(Child);

impl Proc {
    fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_http(from: &Pod, addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = HttpClient::connect(from, addr, "reviews")
            .and_then(|mut c| c.get("/", &[]))
            .is_ok_and(|r| r.status == 200);
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no HTTP answer from {addr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
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

/// Saturation and per-core rate, then the fixed-rate runs: `path` beside `baseline`.
fn measure(
    name: &'static str,
    args: &Args,
    path: Target<'_>,
    baseline: Option<Target<'_>>,
    proxy: Option<u32>,
) -> Result<Row> {
    let cpu_before = proxy.map(cpu_seconds).transpose()?;
    let wrk_started = Instant::now();
    let saturation_rps = wrk(path.from, path.addr, args.seconds)?;
    let rps_per_core = match (proxy, cpu_before) {
        (Some(pid), Some(before)) => {
            let cores = (cpu_seconds(pid)? - before) / wrk_started.elapsed().as_secs_f64();
            Some(saturation_rps / cores)
        }
        _ => None,
    };
    let cpu_before = proxy.map(cpu_seconds).transpose()?;
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
    let cpu_ms_per_1k_rps = match (proxy, cpu_before) {
        (Some(pid), Some(before)) => {
            let used = cpu_seconds(pid)? - before;
            let seconds = (args.seconds * FIXED_RATE_RUNS as u64) as f64;
            Some(used * 1e3 / seconds / (args.rate as f64 / 1e3))
        }
        _ => None,
    };
    let row = Row {
        path: name,
        saturation_rps,
        rps_per_core,
        p50_us: median(&mut p50),
        p99_us: median(&mut p99),
        added_p50_us: median(&mut added_p50),
        added_p99_us: median(&mut added_p99),
        cpu_ms_per_1k_rps,
        rss_mb: proxy.map(rss_mb).transpose()?,
    };
    eprintln!(
        "  {name}: {saturation_rps:.0} req/s, p50 {:.0} us, p99 {:.0} us (added {:.0} / {:.0} us)",
        row.p50_us, row.p99_us, row.added_p50_us, row.added_p99_us
    );
    Ok(row)
}

fn print_rows(rows: &[Row]) {
    println!(
        "{:<10} {:>12} {:>14} {:>10} {:>10} {:>13} {:>13} {:>16} {:>8}",
        "path",
        "sat. req/s",
        "req/s per core",
        "p50 us",
        "p99 us",
        "added p50 us",
        "added p99 us",
        "CPU ms/1k rps",
        "RSS MB"
    );
    for row in rows {
        let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
        println!(
            "{:<10} {:>12.0} {:>14} {:>10.0} {:>10.0} {:>13.0} {:>13.0} {:>16} {:>8}",
            row.path,
            row.saturation_rps,
            row.rps_per_core
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.0}")),
            row.p50_us,
            row.p99_us,
            row.added_p50_us,
            row.added_p99_us,
            opt(row.cpu_ms_per_1k_rps),
            opt(row.rss_mb)
        );
    }
    if let (Some(h), Some(w)) = (
        rows.iter().find(|r| r.path == "haproxy"),
        rows.iter().find(|r| r.path == "waypoint"),
    ) {
        println!(
            "waypoint / haproxy: req/s per core {:.2}x, saturation {:.2}x, added p50 {:.0} vs {:.0} us, added p99 {:.0} vs {:.0} us, CPU per 1k req/s {:.2}x (HAProxy has no mutual TLS on its path)",
            w.rps_per_core.unwrap_or(f64::NAN) / h.rps_per_core.unwrap_or(f64::NAN),
            w.saturation_rps / h.saturation_rps,
            w.added_p50_us,
            h.added_p50_us,
            w.added_p99_us,
            h.added_p99_us,
            w.cpu_ms_per_1k_rps.unwrap_or(f64::NAN) / h.cpu_ms_per_1k_rps.unwrap_or(f64::NAN)
        );
        if let Some(l4) = rows.iter().find(|r| r.path.starts_with("hbone")) {
            println!(
                "the waypoint's own share (waypoint minus hbone): added p50 {:.0} us, p99 {:.0} us",
                w.added_p50_us - l4.added_p50_us,
                w.added_p99_us - l4.added_p99_us
            );
        }
    }
}
