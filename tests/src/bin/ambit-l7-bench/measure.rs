//! What the L7 benchmark measures of a path: its rate at saturation and what that cost each
//! core, and its latency at a fixed rate in rounds that may alternate with other paths.

use std::time::Instant;

use anyhow::Result;
use mesh_tests::sys::cpu_seconds;

use crate::load::{Target, fixed_rate, median, wrk};

/// Saturation runs per path; their median rates are reported.
const SATURATION_RUNS: usize = 3;

/// A path under measurement: where its load goes, and the processes its CPU is read from.
pub struct Subject<'a> {
    pub name: &'static str,
    pub target: Target<'a>,
    /// The L7 proxy, if the path has one.
    pub proxy: Option<u32>,
    /// The node agents on the path (none outside the mesh).
    pub agents: &'a [u32],
}

impl Subject<'_> {
    fn cpu(&self) -> Result<Cpu> {
        Cpu::read(self.proxy, self.agents)
    }
}

/// Medians of the saturation runs.
pub struct Saturation {
    pub rps: f64,
    /// Requests per second per core the proxy used (the "per core": the whole path
    /// shares two cores with the client, the backends and the agents).
    pub rps_per_core: Option<f64>,
    /// The same per core the proxy and the agents used together.
    pub path_rps_per_core: Option<f64>,
}

pub fn saturate(subject: &Subject<'_>, seconds: u64) -> Result<Saturation> {
    let (mut rates, mut per_core, mut path_per_core) = (vec![], vec![], vec![]);
    for _ in 0..SATURATION_RUNS {
        let before = subject.cpu()?;
        let started = Instant::now();
        let rps = wrk(subject.target.from, subject.target.addr, seconds)?;
        let elapsed = started.elapsed().as_secs_f64();
        let used = subject.cpu()?.since(&before);
        rates.push(rps);
        per_core.extend(used.proxy.map(|s| rps / (s / elapsed)));
        path_per_core.extend(used.path.map(|s| rps / (s / elapsed)));
    }
    Ok(Saturation {
        rps: median(&mut rates),
        rps_per_core: median_of(&mut per_core),
        path_rps_per_core: median_of(&mut path_per_core),
    })
}

/// One path's fixed-rate runs: latencies per run, and the CPU all of them used.
#[derive(Default)]
pub struct FixedRate {
    pub p50_us: Vec<f64>,
    pub p99_us: Vec<f64>,
    /// Over the baseline measured at the same time, per run.
    pub added_p50_us: Vec<f64>,
    pub added_p99_us: Vec<f64>,
    cpu: Option<Cpu>,
    seconds: f64,
    rate: u64,
}

impl FixedRate {
    /// The proxy's and the path's CPU milliseconds per 1,000 requests per second.
    pub fn cpu_ms_per_1k_rps(&self) -> (Option<f64>, Option<f64>) {
        let per_1k =
            |used: Option<f64>| Some(used? * 1e3 / self.seconds / (self.rate as f64 / 1e3));
        let cpu = self.cpu.as_ref();
        (
            per_1k(cpu.and_then(|c| c.proxy)),
            per_1k(cpu.and_then(|c| c.path)),
        )
    }

    fn add_cpu(&mut self, used: Cpu) {
        self.cpu = Some(match self.cpu.take() {
            None => used,
            Some(sum) => Cpu {
                proxy: sum.proxy.zip(used.proxy).map(|(a, b)| a + b),
                path: sum.path.zip(used.path).map(|(a, b)| a + b),
            },
        });
    }
}

/// `rounds` fixed-rate runs of each subject at `rate`, each beside `baseline` (measured at
/// the same time, so that a stall of this shared machine falls on both). Within a round the
/// subjects take turns, so that when two paths are compared, a noisy minute of the host
/// falls on both rather than on whichever ran then.
pub fn fixed_rate_rounds(
    subjects: &[&Subject<'_>],
    baseline: Option<Target<'_>>,
    rate: u64,
    seconds: u64,
    rounds: usize,
) -> Result<Vec<FixedRate>> {
    let mut results: Vec<FixedRate> = subjects
        .iter()
        .map(|_| FixedRate {
            rate,
            ..FixedRate::default()
        })
        .collect();
    for _ in 0..rounds {
        for (subject, result) in subjects.iter().zip(&mut results) {
            let targets: Vec<Target<'_>> =
                std::iter::once(subject.target).chain(baseline).collect();
            let before = subject.cpu()?;
            let latencies = fixed_rate(&targets, rate, seconds)?;
            result.add_cpu(subject.cpu()?.since(&before));
            result.seconds += seconds as f64;
            let (own, base) = (latencies[0], latencies.get(1).copied());
            result.p50_us.push(own.p50_us);
            result.p99_us.push(own.p99_us);
            result
                .added_p50_us
                .push(base.map_or(0.0, |b| own.p50_us - b.p50_us));
            result
                .added_p99_us
                .push(base.map_or(0.0, |b| own.p99_us - b.p99_us));
        }
    }
    Ok(results)
}

pub fn median_of(values: &mut [f64]) -> Option<f64> {
    (!values.is_empty()).then(|| median(values))
}

/// CPU seconds of the proxy, and of the proxy and the agents together ("path"), each `None`
/// when the path has no such process.
struct Cpu {
    proxy: Option<f64>,
    path: Option<f64>,
}

impl Cpu {
    fn read(proxy: Option<u32>, agents: &[u32]) -> Result<Cpu> {
        let proxy_seconds = proxy.map(cpu_seconds).transpose()?;
        let on_path: Vec<u32> = proxy.into_iter().chain(agents.iter().copied()).collect();
        let path = match on_path[..] {
            [] => None,
            _ => Some(
                on_path
                    .iter()
                    .map(|&pid| cpu_seconds(pid))
                    .sum::<Result<f64>>()?,
            ),
        };
        Ok(Cpu {
            proxy: proxy_seconds,
            path,
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
