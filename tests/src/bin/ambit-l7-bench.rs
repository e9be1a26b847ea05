//! `cargo xtask bench` (L7): HTTP through an Ambit waypoint beside HAProxy doing the same
//! 90/10 split, on the same test bed, in one run. Three paths from a client pod to nginx
//! backends on the other node:
//!
//! - `direct`: client -> v1 (no mesh, no proxy: the baseline for "added" latency);
//! - `haproxy`: client -> HAProxy in a pod -> v1/v2 90/10 (no mesh: HAProxy cannot speak
//!   HBONE, so this path has no mutual TLS);
//! - `waypoint`: client -> agent -> HBONE -> waypoint (90/10 VirtualService) -> HBONE ->
//!   agent -> v1/v2: two mutual-TLS hops more than HAProxy's path.
//!
//! For each: requests per second at saturation (wrk, 16 connections) and what the proxy
//! made of each core it used meanwhile (the "requests per second per core": the
//! whole path shares two cores with the client, the backends and, on the waypoint path,
//! two node agents), p50/p99 at a fixed rate (open loop, latency counted from when each
//! request was due), the proxy's CPU per 1,000 requests per second and its RSS.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use mesh_tests::{AgentOptions, Pod, Testbed, Topology, http::HttpClient, sys::rss_mb};

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
    cpu_ms_per_1k_rps: Option<f64>,
    rss_mb: Option<f64>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let tb = Testbed::new(Topology {
        nodes: 2,
        pods_per_node: 2,
        namespaces: vec!["default".to_owned()],
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
    let v1 = tb.pod("n1-p0").addr(PORT);
    rows.push(measure("direct", &args, client, v1, None)?);

    let haproxy = start_haproxy(&tb, tb.pod("n0-p1"))?;
    let proxy = SocketAddr::from((tb.pod("n0-p1").ip, 8080));
    rows.push(measure(
        "haproxy",
        &args,
        client,
        proxy,
        Some(haproxy.id()),
    )?);
    drop(haproxy);

    // Into the mesh: the namespace joins and uses the waypoint in n0-p1.
    tb.make_waypoint_pod("n0-p1", "waypoint", "waypoint")?;
    tb.label_namespace("default", "ambit.io/use-waypoint", Some("waypoint"))?;
    tb.set_namespace_ambient("default", true)?;
    agents[0].wait_enrolled(&client.key(), true)?;
    agents[1].wait_enrolled(&tb.pod("n1-p0").key(), true)?;
    let waypoint = tb.start_waypoint(
        &controller,
        "n0-p1",
        "default/waypoint",
        "waypoint",
        &["--access-log", "off"],
    )?;
    waypoint.wait_config(|dump| {
        dump["services"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s == "reviews.default.svc.cluster.local"))
    })?;
    let vip: SocketAddr = format!("{VIP}:{PORT}").parse()?;
    check_split(client, vip)?;
    rows.push(measure(
        "waypoint",
        &args,
        client,
        vip,
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

fn measure(
    path: &'static str,
    args: &Args,
    client: &Pod,
    addr: SocketAddr,
    proxy: Option<u32>,
) -> Result<Row> {
    let cpu_before = proxy.map(cpu_seconds).transpose()?;
    let wrk_started = Instant::now();
    let saturation_rps = wrk(client, addr, args.seconds)?;
    let rps_per_core = match (proxy, cpu_before) {
        (Some(pid), Some(before)) => {
            let cores = (cpu_seconds(pid)? - before) / wrk_started.elapsed().as_secs_f64();
            Some(saturation_rps / cores)
        }
        _ => None,
    };
    let cpu_before = proxy.map(cpu_seconds).transpose()?;
    // The median of a few runs: one stall of this shared machine moves a single run's p99
    // by milliseconds.
    let mut runs = (0..FIXED_RATE_RUNS)
        .map(|_| fixed_rate(client, addr, args.rate, args.seconds))
        .collect::<Result<Vec<_>>>()?;
    let median = |runs: &mut Vec<(f64, f64)>, by: fn(&(f64, f64)) -> f64| {
        runs.sort_by(|a, b| by(a).total_cmp(&by(b)));
        by(&runs[runs.len() / 2])
    };
    let (p50_us, p99_us) = (median(&mut runs, |r| r.0), median(&mut runs, |r| r.1));
    let cpu_ms_per_1k_rps = match (proxy, cpu_before) {
        (Some(pid), Some(before)) => {
            let used = cpu_seconds(pid)? - before;
            let seconds = (args.seconds * FIXED_RATE_RUNS as u64) as f64;
            Some(used * 1e3 / seconds / (args.rate as f64 / 1e3))
        }
        _ => None,
    };
    let rss_mb = proxy.map(rss_mb).transpose()?;
    eprintln!("  {path}: {saturation_rps:.0} req/s, p50 {p50_us:.0} us, p99 {p99_us:.0} us");
    Ok(Row {
        path,
        saturation_rps,
        rps_per_core,
        p50_us,
        p99_us,
        cpu_ms_per_1k_rps,
        rss_mb,
    })
}

/// Requests per second wrk reaches with 16 connections on one thread.
fn wrk(client: &Pod, addr: SocketAddr, seconds: u64) -> Result<f64> {
    let out = client
        .spawn(
            Command::new("wrk")
                .args([
                    "-t1",
                    "-c16",
                    &format!("-d{seconds}s"),
                    "-H",
                    "Host: reviews",
                ])
                .arg(format!("http://{addr}/"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )?
        .wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("wrk printed no rate: {text}"))?;
    if text.contains("Non-2xx") {
        bail!("wrk saw errors through {addr}: {text}");
    }
    Ok(rps)
}

/// Open-loop load at `rate` over 8 connections; (p50, p99) in microseconds, each latency
/// counted from when its request was due, so a stall is not hidden.
fn fixed_rate(client: &Pod, addr: SocketAddr, rate: u64, seconds: u64) -> Result<(f64, f64)> {
    const CONNECTIONS: u64 = 8;
    let interval = Duration::from_secs_f64(CONNECTIONS as f64 / rate as f64);
    let per_connection = rate * seconds / CONNECTIONS;
    let histogram = Arc::new(std::sync::Mutex::new(hdrhistogram::Histogram::<u64>::new(
        3,
    )?));
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..CONNECTIONS)
            .map(|i| {
                let histogram = histogram.clone();
                scope.spawn(move || -> Result<()> {
                    let mut http = HttpClient::connect(client, addr, "reviews")?;
                    let start = Instant::now() + interval.mul_f64(i as f64 / CONNECTIONS as f64);
                    let mut local = hdrhistogram::Histogram::<u64>::new(3)?;
                    for n in 0..per_connection {
                        let due = start + interval * n as u32;
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        let response = http.get("/", &[])?;
                        if response.status != 200 {
                            bail!("status {} at fixed rate", response.status);
                        }
                        local.record(due.elapsed().as_micros() as u64)?;
                    }
                    histogram
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .add(&local)?;
                    Ok(())
                })
            })
            .collect();
        for worker in workers {
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        }
        Ok(())
    })?;
    let h = histogram.lock().unwrap_or_else(|p| p.into_inner());
    Ok((
        h.value_at_quantile(0.5) as f64,
        h.value_at_quantile(0.99) as f64,
    ))
}

/// User plus system CPU seconds of a process.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

fn print_rows(rows: &[Row]) {
    let direct = rows.iter().find(|r| r.path == "direct");
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
        let added = |f: fn(&Row) -> f64| direct.map_or(f64::NAN, |d| f(row) - f(d));
        let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
        println!(
            "{:<10} {:>12.0} {:>14} {:>10.0} {:>10.0} {:>13.0} {:>13.0} {:>16} {:>8}",
            row.path,
            row.saturation_rps,
            row.rps_per_core
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.0}")),
            row.p50_us,
            row.p99_us,
            added(|r| r.p50_us),
            added(|r| r.p99_us),
            opt(row.cpu_ms_per_1k_rps),
            opt(row.rss_mb)
        );
    }
    if let (Some(h), Some(w)) = (
        rows.iter().find(|r| r.path == "haproxy"),
        rows.iter().find(|r| r.path == "waypoint"),
    ) {
        println!(
            "waypoint / haproxy: req/s per core {:.2}x, saturation {:.2}x, added p99 {:.2}x, CPU per 1k req/s {:.2}x (HAProxy has no mutual TLS on its path)",
            w.rps_per_core.unwrap_or(f64::NAN) / h.rps_per_core.unwrap_or(f64::NAN),
            w.saturation_rps / h.saturation_rps,
            (w.p99_us - direct.map_or(0.0, |d| d.p99_us))
                / (h.p99_us - direct.map_or(0.0, |d| d.p99_us)),
            w.cpu_ms_per_1k_rps.unwrap_or(f64::NAN) / h.cpu_ms_per_1k_rps.unwrap_or(f64::NAN)
        );
    }
}
