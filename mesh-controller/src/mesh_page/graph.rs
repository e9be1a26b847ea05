//! The service graph, as Kiali draws it: who calls which service, and which versions answer,
//! with request rate, error rate, P99 and mutual TLS on each edge, from two reads of each
//! subscriber's metrics (see `scrape`). Requests are counted where the waypoint (or, without
//! one, the server's agent) reports them, connections where the server's agent does, so that
//! nothing is counted twice; the waypoints themselves are left out of the picture.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Duration,
};

use mesh_core::{exposition::Sample, telemetry::UNKNOWN};
use serde::Serialize;

use super::scrape::{Reads, Target};

/// Rates are taken over (at most) this long.
pub const WINDOW: Duration = Duration::from_secs(10);

/// One end of an edge: a workload, named as the metrics name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct End {
    pub namespace: String,
    pub workload: String,
    pub app: String,
    pub version: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Edge {
    pub source: Option<End>,
    /// The Service addressed (its hostname), if one was.
    pub service: Option<String>,
    pub destination: Option<End>,
    /// `http`, `grpc` or `tcp`.
    pub protocol: String,
    pub requests_per_second: f64,
    /// 5xx answers per second.
    pub errors_per_second: f64,
    /// Requests answered 403, and connections refused by policy, per second.
    pub denied_per_second: f64,
    pub p99_ms: Option<f64>,
    pub connections_per_second: f64,
    pub bytes_per_second: f64,
    /// Whether all of it was mutual TLS.
    pub mutual_tls: bool,
    #[serde(skip)]
    mutual_tls_rate: f64,
    #[serde(skip)]
    all_rate: f64,
    #[serde(skip)]
    buckets: BTreeMap<u64, f64>,
}

#[derive(Debug, Serialize)]
pub struct TargetStatus {
    pub address: String,
    pub role: String,
    pub node: String,
    pub up: bool,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Graph {
    pub window_seconds: f64,
    pub edges: Vec<Edge>,
    pub targets: Vec<TargetStatus>,
}

type EdgeKey = (Option<End>, Option<String>, Option<End>, String);

/// The graph over the last [`WINDOW`]; `waypoints` are the (namespace, workload) of the
/// waypoints, which are left out.
pub fn graph(reads: &Reads, waypoints: &BTreeSet<(String, String)>) -> Graph {
    reads.with(|targets| {
        let mut edges: HashMap<EdgeKey, Edge> = HashMap::new();
        let mut window = 0f64;
        let mut statuses = Vec::new();
        for (address, target) in targets {
            statuses.push(TargetStatus {
                address: address.to_string(),
                role: target.role.clone(),
                node: target.node.clone(),
                up: target.error.is_none() && !target.reads.is_empty(),
                error: target.error.clone(),
            });
            if let Some(seconds) = add_target(target, waypoints, &mut edges) {
                window = window.max(seconds);
            }
        }
        statuses.sort_by(|a, b| a.address.cmp(&b.address));
        let mut edges: Vec<Edge> = edges
            .into_values()
            .map(|mut edge| {
                edge.mutual_tls = edge.all_rate > 0.0 && edge.mutual_tls_rate >= edge.all_rate;
                edge.p99_ms = quantile(0.99, &edge.buckets);
                edge
            })
            .filter(|e| {
                e.requests_per_second > 0.0
                    || e.connections_per_second > 0.0
                    || e.denied_per_second > 0.0
            })
            .collect();
        edges.sort_by(|a, b| {
            (&a.source, &a.service, &a.destination, &a.protocol).cmp(&(
                &b.source,
                &b.service,
                &b.destination,
                &b.protocol,
            ))
        });
        Graph {
            window_seconds: window,
            edges,
            targets: statuses,
        }
    })
}

/// Adds what one target reported over the window; the window's length, if it had two reads.
fn add_target(
    target: &Target,
    waypoints: &BTreeSet<(String, String)>,
    edges: &mut HashMap<EdgeKey, Edge>,
) -> Option<f64> {
    let newest = target.reads.back()?;
    let oldest = target
        .reads
        .iter()
        .find(|r| newest.at.duration_since(r.at) <= WINDOW)
        .filter(|r| r.at < newest.at)?;
    let seconds = newest.at.duration_since(oldest.at).as_secs_f64();
    let before: HashMap<(&str, &BTreeMap<String, String>), f64> = oldest
        .samples
        .iter()
        .map(|s| ((s.name.as_str(), &s.labels), s.value))
        .collect();
    for sample in newest.samples.iter() {
        let Some(kind) = Kind::of(sample) else {
            continue;
        };
        let previous = before
            .get(&(sample.name.as_str(), &sample.labels))
            .copied()
            .unwrap_or(0.0);
        // A counter that went back was restarted: all it holds is new.
        let delta = if sample.value >= previous {
            sample.value - previous
        } else {
            sample.value
        };
        let rate = delta / seconds;
        let labels = &sample.labels;
        let source = end(labels, "source");
        let destination = end(labels, "destination");
        let is_waypoint = |end: &Option<End>| {
            end.as_ref()
                .is_some_and(|e| waypoints.contains(&(e.namespace.clone(), e.workload.clone())))
        };
        if is_waypoint(&source) || is_waypoint(&destination) {
            continue;
        }
        let service = labels
            .get("destination_service")
            .filter(|s| s.as_str() != UNKNOWN)
            .cloned();
        let protocol = labels
            .get("request_protocol")
            .cloned()
            .unwrap_or_else(|| "tcp".to_owned());
        let edge = edges
            .entry((
                source.clone(),
                service.clone(),
                destination.clone(),
                protocol.clone(),
            ))
            .or_insert_with(|| Edge {
                source,
                service,
                destination,
                protocol,
                ..Edge::default()
            });
        let mutual_tls =
            labels.get("connection_security_policy").map(String::as_str) == Some("mutual_tls");
        match kind {
            Kind::Requests => {
                edge.requests_per_second += rate;
                let code = labels.get("response_code").map_or("", String::as_str);
                if code.starts_with('5') {
                    edge.errors_per_second += rate;
                }
                if code == "403" {
                    edge.denied_per_second += rate;
                }
                edge.all_rate += rate;
                if mutual_tls {
                    edge.mutual_tls_rate += rate;
                }
            }
            Kind::DurationBucket(le) => *edge.buckets.entry(le).or_default() += delta,
            Kind::Connections => {
                edge.connections_per_second += rate;
                edge.all_rate += rate;
                if mutual_tls {
                    edge.mutual_tls_rate += rate;
                }
            }
            Kind::Bytes => edge.bytes_per_second += rate,
            Kind::Refused => edge.denied_per_second += rate,
        }
    }
    Some(seconds)
}

/// The series the graph reads, and which of their reports it counts.
enum Kind {
    Requests,
    /// A duration bucket; its bound in microseconds (`u64::MAX` for `+Inf`).
    DurationBucket(u64),
    Connections,
    Bytes,
    Refused,
}

impl Kind {
    fn of(sample: &Sample) -> Option<Kind> {
        let reporter = sample.labels.get("reporter").map(String::as_str)?;
        let l7 = matches!(reporter, "waypoint" | "destination");
        // TCP is counted by the server's agent, or by the client's when the server is not in
        // the mesh (nobody else sees it); a waypoint counts what it carries as TCP.
        let unknown = |label: &str| sample.labels.get(label).map(String::as_str) == Some(UNKNOWN);
        let l4 = match reporter {
            "destination" | "waypoint" => true,
            "source" => unknown("destination_workload") && unknown("destination_service"),
            _ => false,
        };
        match sample.name.as_str() {
            "istio_requests_total" if l7 => Some(Kind::Requests),
            "istio_request_duration_milliseconds_bucket" if l7 => {
                let le = sample.labels.get("le")?;
                let bound = match le.as_str() {
                    "+Inf" => u64::MAX,
                    finite => (finite.parse::<f64>().ok()? * 1000.0) as u64,
                };
                Some(Kind::DurationBucket(bound))
            }
            "istio_tcp_connections_opened_total" if l4 => Some(Kind::Connections),
            "istio_tcp_received_bytes_total" | "istio_tcp_sent_bytes_total" if l4 => {
                Some(Kind::Bytes)
            }
            "istio_tcp_connections_failed_total"
                if reporter == "destination"
                    && sample.labels.get("response_flags").map(String::as_str) == Some("UAEX") =>
            {
                Some(Kind::Refused)
            }
            _ => None,
        }
    }
}

fn end(labels: &BTreeMap<String, String>, side: &str) -> Option<End> {
    let get = |name: &str| {
        labels
            .get(&format!("{side}_{name}"))
            .cloned()
            .unwrap_or_else(|| UNKNOWN.to_owned())
    };
    let workload = get("workload");
    (workload != UNKNOWN).then(|| End {
        namespace: get("workload_namespace"),
        app: get("canonical_service"),
        version: get("canonical_revision"),
        workload,
    })
}

/// The `q` quantile of cumulative buckets (bound in microseconds -> count), interpolated
/// within the bucket as Prometheus' `histogram_quantile` does.
fn quantile(q: f64, buckets: &BTreeMap<u64, f64>) -> Option<f64> {
    let total = *buckets.get(&u64::MAX)?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0u64, 0f64);
    for (&bound, &count) in buckets {
        if count >= rank {
            if bound == u64::MAX {
                return Some(lower.0 as f64 / 1000.0);
            }
            let within = (rank - lower.1) / (count - lower.1).max(f64::MIN_POSITIVE);
            let ms = (lower.0 as f64 + (bound - lower.0) as f64 * within) / 1000.0;
            return Some(ms);
        }
        lower = (bound, count);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        // 100 requests: 90 under 5 ms, 10 between 5 and 10 ms.
        let buckets: BTreeMap<u64, f64> = [
            (1_000, 0.0),
            (5_000, 90.0),
            (10_000, 100.0),
            (u64::MAX, 100.0),
        ]
        .into();
        let p99 = quantile(0.99, &buckets).unwrap();
        assert!((p99 - 9.5).abs() < 1e-9, "{p99}");
        let p50 = quantile(0.5, &buckets).unwrap();
        assert!(p50 > 1.0 && p50 < 5.0, "{p50}");
        assert_eq!(quantile(0.99, &BTreeMap::new()), None);
    }
}
