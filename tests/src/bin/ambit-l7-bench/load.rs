//! Load for the L7 benchmark: wrk at saturation, and an open-loop client at a fixed rate
//! that measures a path and the direct baseline in the same run, request for request.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use hdrhistogram::Histogram;
use mesh_tests::{Pod, http::HttpClient};

/// Requests per second wrk reaches with 16 connections on one thread.
pub fn wrk(client: &Pod, addr: SocketAddr, seconds: u64) -> Result<f64> {
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

/// Where one stream of fixed-rate requests goes: from a pod to an address.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub from: &'a Pod,
    pub addr: SocketAddr,
}

/// p50 and p99 of one target in one run, in microseconds.
#[derive(Clone, Copy, Debug)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
}

const CONNECTIONS: u64 = 8;

/// Open-loop load at `rate` requests per second on each target, over 8 connections per
/// target, each on a thread of its own, for `seconds`. The targets are measured at the same
/// time, so a stall of this shared machine lands on all of them alike and their difference
/// is the path's own. Each latency is counted from when its request was due, so a stall is
/// not hidden.
pub fn fixed_rate(targets: &[Target<'_>], rate: u64, seconds: u64) -> Result<Vec<Latency>> {
    let interval = Duration::from_secs_f64(CONNECTIONS as f64 / rate as f64);
    let per_connection = rate * seconds / CONNECTIONS;
    let histograms: Vec<_> = targets
        .iter()
        .map(|_| Histogram::<u64>::new(3).map(Mutex::new))
        .collect::<Result<_, _>>()?;
    let histograms = Arc::new(histograms);
    let start = Instant::now() + Duration::from_millis(200);
    std::thread::scope(|scope| -> Result<()> {
        let mut workers = Vec::new();
        for (k, target) in targets.iter().enumerate() {
            for i in 0..CONNECTIONS {
                let histograms = histograms.clone();
                // Requests of all threads spread evenly over each interval.
                let slot = (k as u64 * CONNECTIONS + i) as f64
                    / (targets.len() as u64 * CONNECTIONS) as f64;
                let first = start + interval.mul_f64(slot);
                workers.push(scope.spawn(move || -> Result<()> {
                    let mut client = HttpClient::connect(target.from, target.addr, "reviews")?;
                    let mut local = Histogram::<u64>::new(3)?;
                    for n in 0..per_connection {
                        let due = first + interval * n as u32;
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        let response = client.get("/", &[])?;
                        if response.status != 200 {
                            bail!("status {} at fixed rate", response.status);
                        }
                        local.record(due.elapsed().as_micros() as u64)?;
                    }
                    histograms[k]
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .add(&local)?;
                    Ok(())
                }));
            }
        }
        for worker in workers {
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(histograms
        .iter()
        .map(|h| {
            let h = h.lock().unwrap_or_else(|p| p.into_inner());
            Latency {
                p50_us: h.value_at_quantile(0.5) as f64,
                p99_us: h.value_at_quantile(0.99) as f64,
            }
        })
        .collect())
}

/// The median of `values` (which it sorts).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
