//! Istio's L7 metrics, with Istio's names and labels so its Grafana dashboards and Kiali read
//! them (`reporter="waypoint"`, as Istio's waypoints report), and one access-log line per
//! request (text or JSON). Label values are bounded: names come from the configuration, not
//! from requests; paths never become labels.

use std::{fmt::Write as _, net::SocketAddr, time::Instant};

use http::{Request, Response};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use crate::{
    app::App,
    proxy::{Destination, Downstream, Outcome},
    upstream::Body,
};

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
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
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
        Metrics {
            registry,
            requests,
            duration,
            request_bytes,
            response_bytes,
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

/// What is known of a request when it arrives, completed when it is answered.
pub struct RequestRecord {
    method: String,
    path: String,
    authority: String,
    grpc: bool,
    request_bytes: u64,
    request_id: String,
    user_agent: String,
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
    pub fn start<B>(request: &Request<B>, _downstream: &Downstream) -> Self {
        RequestRecord {
            method: request.method().to_string(),
            path: request.uri().path().to_owned(),
            authority: request
                .uri()
                .authority()
                .map(|a| a.to_string())
                .unwrap_or_else(|| header(request, "host")),
            grpc: request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc")),
            request_bytes: request
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(0),
            request_id: header(request, "x-request-id"),
            user_agent: header(request, "user-agent"),
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
        let unknown = || "unknown".to_owned();
        let source = downstream.source_workload.as_deref();
        let destination = outcome
            .upstream_workload
            .as_deref()
            .or(match &downstream.destination {
                Destination::Workload(w) => Some(w),
                Destination::Service(_) | Destination::Gateway(_) => None,
            });
        let (service, service_name, service_namespace) = match &downstream.destination {
            Destination::Service(s) => (s.hostname.clone(), s.name.clone(), s.namespace.clone()),
            Destination::Workload(w) => (w.address.to_string(), unknown(), w.namespace.clone()),
            // `name.namespace.svc.<domain>` of the service a route sent it to.
            Destination::Gateway(_) => match &outcome.service {
                Some(host) => {
                    let mut labels = host.split('.');
                    let name = labels.next().unwrap_or("unknown").to_owned();
                    let namespace = labels.next().unwrap_or("unknown").to_owned();
                    (host.clone(), name, namespace)
                }
                None => (unknown(), unknown(), unknown()),
            },
        };
        let flags = if outcome.flags.is_empty() {
            "-".to_owned()
        } else {
            outcome.flags.join(",")
        };
        let response_bytes = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .unwrap_or(0);
        // An ingress gateway reports as the request's source, as Istio's does.
        let reporter = match &downstream.destination {
            Destination::Gateway(_) => "source",
            _ => "waypoint",
        };
        let labels = RequestLabels {
            reporter,
            source_workload: source.map_or_else(unknown, |w| w.workload_name().to_owned()),
            source_workload_namespace: source.map_or_else(unknown, |w| w.namespace.clone()),
            source_principal: downstream
                .client
                .as_ref()
                .map_or_else(unknown, ToString::to_string),
            source_version: source.map_or_else(unknown, |w| w.version().to_owned()),
            destination_workload: destination
                .map_or_else(unknown, |w| w.workload_name().to_owned()),
            destination_workload_namespace: destination
                .map_or_else(unknown, |w| w.namespace.clone()),
            destination_principal: destination
                .and_then(|w| w.identity.as_ref())
                .map_or_else(unknown, ToString::to_string),
            destination_version: destination.map_or_else(unknown, |w| w.version().to_owned()),
            destination_service: service,
            destination_service_name: service_name,
            destination_service_namespace: service_namespace,
            request_protocol: if self.grpc { "grpc" } else { "http" },
            response_code: response.status().as_u16(),
            grpc_response_status: response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .map_or_else(String::new, str::to_owned),
            response_flags: flags.clone(),
            connection_security_policy: if downstream.client.is_some() {
                "mutual_tls"
            } else {
                "none"
            },
        };
        let metrics = &app.metrics;
        metrics.requests.get_or_create(&labels).inc();
        metrics.duration.get_or_create(&labels).observe(elapsed_ms);
        metrics
            .request_bytes
            .get_or_create(&labels)
            .observe(self.request_bytes as f64);
        metrics
            .response_bytes
            .get_or_create(&labels)
            .observe(response_bytes as f64);
        self.log(app, downstream, outcome, &labels, elapsed_ms, &flags);
    }

    fn log(
        &self,
        app: &App,
        downstream: &Downstream,
        outcome: &Outcome,
        labels: &RequestLabels,
        elapsed_ms: f64,
        flags: &str,
    ) {
        let upstream = outcome
            .upstream
            .map_or_else(|| "-".to_owned(), |a: SocketAddr| a.to_string());
        let route = outcome.route.as_deref().unwrap_or("-");
        match app.config.access_log {
            crate::config::AccessLog::Off => {}
            crate::config::AccessLog::Text => {
                let mut line = String::new();
                let _ = write!(
                    line,
                    "{} {} {} {} {} {flags} {elapsed_ms:.1}ms attempts={} upstream={upstream} route={route} source={} id={} ua={:?}",
                    self.method,
                    self.authority,
                    self.path,
                    labels.response_code,
                    labels.destination_service,
                    outcome.attempts,
                    downstream.source,
                    self.request_id,
                    self.user_agent,
                );
                tracing::info!(target: "access", "{line}");
            }
            crate::config::AccessLog::Json => {
                let line = serde_json::json!({
                    "method": self.method,
                    "authority": self.authority,
                    "path": self.path,
                    "response_code": labels.response_code,
                    "response_flags": flags,
                    "duration_ms": elapsed_ms,
                    "attempts": outcome.attempts,
                    "upstream": upstream,
                    "route": route,
                    "source": downstream.source.to_string(),
                    "source_principal": labels.source_principal,
                    "destination_service": labels.destination_service,
                    "destination_version": labels.destination_version,
                    "request_id": self.request_id,
                    "user_agent": self.user_agent,
                });
                tracing::info!(target: "access", "{line}");
            }
        }
    }
}
