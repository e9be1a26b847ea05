//! Istio's L7 metrics, with Istio's names and labels so its Grafana dashboards and Kiali read
//! them (`reporter="waypoint"`, as Istio's waypoints report), and one access-log line per
//! request (text or JSON). Label values are bounded: names come from the configuration, not
//! from requests; paths never become labels.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use http::{HeaderValue, Request, Response};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use crate::{
    app::App,
    config::AccessLog,
    proxy::{Destination, Downstream, Outcome},
    store::Workload,
    upstream::Body,
};

const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// A `grpc-status` as a metric label: one of gRPC's 17 codes, or "unknown" for anything else
/// an upstream (or a client, through it) wrote, so that no header value becomes a series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum GrpcStatus {
    Code(u8),
    Unknown,
}

impl GrpcStatus {
    fn of(value: &HeaderValue) -> Self {
        match value.to_str().ok().and_then(|v| v.parse::<u8>().ok()) {
            Some(code) if code <= 16 => GrpcStatus::Code(code),
            _ => GrpcStatus::Unknown,
        }
    }

    fn label(self) -> String {
        match self {
            GrpcStatus::Code(code) => code.to_string(),
            GrpcStatus::Unknown => "unknown".to_owned(),
        }
    }
}

/// Istio's duration buckets, in milliseconds.
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// Istio's size buckets, in bytes.
const SIZE_BUCKETS: [f64; 8] = [
    1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0, 1000000.0, 10000000.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_version: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_version: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub request_protocol: &'static str,
    pub response_code: u16,
    pub grpc_response_status: String,
    pub response_flags: String,
    pub connection_security_policy: &'static str,
}

pub struct Metrics {
    pub registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, Histogram>,
    request_bytes: Family<RequestLabels, Histogram>,
    response_bytes: Family<RequestLabels, Histogram>,
    /// HBONE streams whose `forwarded` address was not the client's own (ignored).
    pub forwarded_distrusted: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        mesh_core::build_info::register(&mut registry, "proxy", env!("CARGO_PKG_VERSION"));
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<RequestLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(DURATION_BUCKETS)) as fn() -> Histogram,
        );
        let sizes = || {
            Family::<RequestLabels, Histogram>::new_with_constructor(
                (|| Histogram::new(SIZE_BUCKETS)) as fn() -> Histogram,
            )
        };
        let (request_bytes, response_bytes) = (sizes(), sizes());
        registry.register(
            "istio_requests",
            "Requests through the waypoint",
            requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Time from request to response headers, in milliseconds",
            duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request body sizes",
            request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response body sizes (as announced by Content-Length)",
            response_bytes.clone(),
        );
        let forwarded_distrusted = Counter::default();
        registry.register(
            "ambit_waypoint_forwarded_distrusted",
            "HBONE streams whose forwarded address is not a workload with the identity the \
             client proved; the connection's own address is used instead",
            forwarded_distrusted.clone(),
        );
        Metrics {
            registry,
            requests,
            duration,
            request_bytes,
            response_bytes,
            forwarded_distrusted,
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// One label set's four series, cloned out of their families (each is a shared handle).
#[derive(Clone)]
struct Series {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// What decides a request's labels beyond its connection. Requests on one connection mostly
/// share it, so a connection keeps the series of its last few keys and finds them by this
/// without building, hashing and comparing seventeen labels per request.
struct SeriesKey {
    /// Held (not just its address) so a freed workload's address cannot be mistaken for it.
    destination: Option<Arc<Workload>>,
    service: Option<String>,
    response_code: u16,
    /// The gRPC status code (0-16), as far as the upstream's `grpc-status` is one.
    grpc_status: Option<GrpcStatus>,
    flags: Vec<&'static str>,
    grpc: bool,
}

impl SeriesKey {
    fn matches(&self, other: &SeriesKey) -> bool {
        let same_destination = match (&self.destination, &other.destination) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        same_destination
            && self.response_code == other.response_code
            && self.grpc == other.grpc
            && self.flags == other.flags
            && self.grpc_status == other.grpc_status
            && self.service == other.service
    }
}

/// The series a connection used last, newest first.
#[derive(Default)]
pub struct SeriesCache(Mutex<Vec<(SeriesKey, Series)>>);

/// Label sets a connection remembers (a few destinations and answers).
const CACHED_SERIES: usize = 8;

impl SeriesCache {
    fn get_or_insert(&self, key: SeriesKey, make: impl FnOnce(&SeriesKey) -> Series) -> Series {
        let mut cached = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = cached.iter().position(|(k, _)| k.matches(&key)) {
            if at != 0 {
                cached[..=at].rotate_right(1);
            }
            return cached[0].1.clone();
        }
        let series = make(&key);
        cached.truncate(CACHED_SERIES - 1);
        cached.insert(0, (key, series.clone()));
        series
    }
}

/// What the access log says of a request, taken when it arrives (only when logging).
struct Logged {
    method: String,
    path: String,
    authority: String,
    request_id: String,
    user_agent: String,
}

/// What is known of a request when it arrives, completed when it is answered.
pub struct RequestRecord {
    grpc: bool,
    request_bytes: u64,
    logged: Option<Logged>,
}

fn header<B>(request: &Request<B>, name: &str) -> String {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

impl RequestRecord {
    pub fn start<B>(request: &Request<B>, app: &App) -> Self {
        let logged = (app.config.access_log != AccessLog::Off).then(|| Logged {
            method: request.method().to_string(),
            path: request.uri().path().to_owned(),
            authority: request
                .uri()
                .authority()
                .map(|a| a.to_string())
                .unwrap_or_else(|| header(request, "host")),
            request_id: header(request, "x-request-id"),
            user_agent: header(request, "user-agent"),
        });
        RequestRecord {
            grpc: request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc")),
            request_bytes: request
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(0),
            logged,
        }
    }

    pub fn finish(
        &mut self,
        app: &App,
        downstream: &Downstream,
        outcome: &Outcome,
        response: &Response<Body>,
        started: Instant,
    ) {
        let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
        let destination =
            outcome
                .upstream_workload
                .clone()
                .or_else(|| match &downstream.destination {
                    Destination::Workload(w) => Some(w.clone()),
                    Destination::Service(_) | Destination::Gateway(_) => None,
                });
        let key = SeriesKey {
            destination,
            service: match &downstream.destination {
                Destination::Gateway(_) => outcome.service.clone(),
                Destination::Service(_) | Destination::Workload(_) => None,
            },
            response_code: response.status().as_u16(),
            grpc_status: response.headers().get(GRPC_STATUS).map(GrpcStatus::of),
            flags: outcome.flags.clone(),
            grpc: self.grpc,
        };
        let series = downstream.series.get_or_insert(key, |key| {
            let labels = labels(downstream, key);
            let metrics = &app.metrics;
            Series {
                requests: metrics.requests.get_or_create(&labels).clone(),
                duration: metrics.duration.get_or_create(&labels).clone(),
                request_bytes: metrics.request_bytes.get_or_create(&labels).clone(),
                response_bytes: metrics.response_bytes.get_or_create(&labels).clone(),
            }
        });
        let response_bytes = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .unwrap_or(0);
        series.requests.inc();
        series.duration.observe(elapsed_ms);
        series.request_bytes.observe(self.request_bytes as f64);
        series.response_bytes.observe(response_bytes as f64);
        if let Some(logged) = &self.logged {
            let destination = outcome.upstream_workload.as_deref();
            log(
                app,
                downstream,
                outcome,
                logged,
                response,
                destination,
                elapsed_ms,
            );
        }
    }
}

/// Istio's labels of a request on `downstream` with what `key` says of its answer.
fn labels(downstream: &Downstream, key: &SeriesKey) -> RequestLabels {
    let unknown = || "unknown".to_owned();
    let source = downstream.source_workload.as_deref();
    let destination = key.destination.as_deref();
    let (service, service_name, service_namespace) = match &downstream.destination {
        Destination::Service(s) => (s.hostname.clone(), s.name.clone(), s.namespace.clone()),
        Destination::Workload(w) => (w.address.to_string(), unknown(), w.namespace.clone()),
        // `name.namespace.svc.<domain>` of the service a route sent it to.
        Destination::Gateway(_) => match &key.service {
            Some(host) => {
                let mut labels = host.split('.');
                let name = labels.next().unwrap_or("unknown").to_owned();
                let namespace = labels.next().unwrap_or("unknown").to_owned();
                (host.clone(), name, namespace)
            }
            None => (unknown(), unknown(), unknown()),
        },
    };
    RequestLabels {
        // An ingress gateway reports as the request's source, as Istio's does.
        reporter: match &downstream.destination {
            Destination::Gateway(_) => "source",
            _ => "waypoint",
        },
        source_workload: source.map_or_else(unknown, |w| w.workload_name().to_owned()),
        source_workload_namespace: source.map_or_else(unknown, |w| w.namespace.clone()),
        source_principal: downstream
            .client
            .as_ref()
            .map_or_else(unknown, ToString::to_string),
        source_version: source.map_or_else(unknown, |w| w.version().to_owned()),
        destination_workload: destination.map_or_else(unknown, |w| w.workload_name().to_owned()),
        destination_workload_namespace: destination.map_or_else(unknown, |w| w.namespace.clone()),
        destination_principal: destination
            .and_then(|w| w.identity.as_ref())
            .map_or_else(unknown, ToString::to_string),
        destination_version: destination.map_or_else(unknown, |w| w.version().to_owned()),
        destination_service: service,
        destination_service_name: service_name,
        destination_service_namespace: service_namespace,
        request_protocol: if key.grpc { "grpc" } else { "http" },
        response_code: key.response_code,
        grpc_response_status: key.grpc_status.map_or_else(String::new, |s| s.label()),
        response_flags: flags_label(&key.flags),
        connection_security_policy: if downstream.client.is_some() {
            "mutual_tls"
        } else {
            "none"
        },
    }
}

fn flags_label(flags: &[&str]) -> String {
    if flags.is_empty() {
        "-".to_owned()
    } else {
        flags.join(",")
    }
}

fn log(
    app: &App,
    downstream: &Downstream,
    outcome: &Outcome,
    logged: &Logged,
    response: &Response<Body>,
    destination: Option<&Workload>,
    elapsed_ms: f64,
) {
    let upstream = outcome
        .upstream
        .map_or_else(|| "-".to_owned(), |a: SocketAddr| a.to_string());
    let route = outcome.route.as_deref().unwrap_or("-");
    let flags = flags_label(&outcome.flags);
    let code = response.status().as_u16();
    let service = outcome.service.as_deref().unwrap_or("-");
    match app.config.access_log {
        AccessLog::Off => {}
        AccessLog::Text => {
            let mut line = String::new();
            let _ = write!(
                line,
                "{} {} {} {code} {service} {flags} {elapsed_ms:.1}ms attempts={} upstream={upstream} route={route} source={} id={} ua={:?}",
                logged.method,
                logged.authority,
                logged.path,
                outcome.attempts,
                downstream.source,
                logged.request_id,
                logged.user_agent,
            );
            tracing::info!(target: "access", "{line}");
        }
        AccessLog::Json => {
            let line = serde_json::json!({
                "method": logged.method,
                "authority": logged.authority,
                "path": logged.path,
                "response_code": code,
                "response_flags": flags,
                "duration_ms": elapsed_ms,
                "attempts": outcome.attempts,
                "upstream": upstream,
                "route": route,
                "source": downstream.source.to_string(),
                "source_principal": downstream.client.as_ref().map_or_else(|| "unknown".to_owned(), ToString::to_string),
                "destination_service": service,
                "destination_version": destination.map_or("unknown", |w| w.version()),
                "request_id": logged.request_id,
                "user_agent": logged.user_agent,
            });
            tracing::info!(target: "access", "{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_status_labels_are_bounded() {
        let label = |v: &'static str| GrpcStatus::of(&HeaderValue::from_static(v)).label();
        assert_eq!(label("0"), "0");
        assert_eq!(label("16"), "16");
        for hostile in [
            "17",
            "-1",
            "999999999999",
            "ok",
            "0 ",
            "attacker-chosen-label",
        ] {
            assert_eq!(label(hostile), "unknown", "{hostile}");
        }
    }
}
