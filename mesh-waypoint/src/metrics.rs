//! Istio's metrics, with Istio's names and labels so its Grafana dashboards and Kiali read
//! them (`reporter="waypoint"`, as Istio's waypoints report): `istio_requests_total` and its
//! histograms for HTTP, `istio_tcp_*` for what the waypoint carries as TCP. Label values are
//! bounded: names come from the configuration, not from requests; paths never become labels.
//!
//! # Layout
//! - `request`: recording one request when its response ends (real byte counts);
//! - `access_log`: one line per request, text or JSON.

mod access_log;
mod request;

use http::HeaderValue;
use mesh_core::{
    telemetry::{Peer, ServiceLabel, TrafficLabels, UNKNOWN},
    workloads::ChangeMetrics,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

pub use request::{CountedBody, RequestRecord, SeriesCache};

use crate::{
    proxy::{Destination, Downstream},
    store::Workload,
};

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

/// `connection_security_policy` of plain text, as Istio's waypoints (Envoy) write it.
const NOT_MUTUAL_TLS: &str = "none";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub response_code: u16,
    /// gRPC's status code for gRPC, empty for other requests (as Istio's).
    pub grpc_response_status: String,
    /// Last: the derive can flatten only the last field.
    #[prometheus(flatten)]
    pub traffic: TrafficLabels,
}

pub struct Metrics {
    pub registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, Histogram>,
    request_bytes: Family<RequestLabels, Histogram>,
    response_bytes: Family<RequestLabels, Histogram>,
    pub tcp_opened: Family<TrafficLabels, Counter>,
    pub tcp_closed: Family<TrafficLabels, Counter>,
    pub tcp_received_bytes: Family<TrafficLabels, Counter>,
    pub tcp_sent_bytes: Family<TrafficLabels, Counter>,
    /// HBONE streams whose `forwarded` address was not the client's own (ignored).
    pub forwarded_distrusted: Counter,
    /// Workloads known, and what each change upserted or removed.
    pub workload_changes: ChangeMetrics,
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
            "Time from a request's arrival to the end of its response, in milliseconds",
            duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request body sizes, as received",
            request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response body sizes, as sent",
            response_bytes.clone(),
        );
        let tcp = || Family::<TrafficLabels, Counter>::default();
        let (tcp_opened, tcp_closed) = (tcp(), tcp());
        let (tcp_received_bytes, tcp_sent_bytes) = (tcp(), tcp());
        registry.register(
            "istio_tcp_connections_opened",
            "Connections the waypoint carries as TCP, opened",
            tcp_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "Connections the waypoint carries as TCP, closed",
            tcp_closed.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes the client sent (the request's direction), as they pass",
            tcp_received_bytes.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes the server answered (the response's direction), as they pass",
            tcp_sent_bytes.clone(),
        );
        let forwarded_distrusted = Counter::default();
        registry.register(
            "ambit_waypoint_forwarded_distrusted",
            "HBONE streams whose forwarded address is not a workload with the identity the \
             client proved; the connection's own address is used instead",
            forwarded_distrusted.clone(),
        );
        let workload_changes =
            ChangeMetrics::register(&mut registry, "ambit_waypoint_", "the waypoint");
        Metrics {
            registry,
            workload_changes,
            requests,
            duration,
            request_bytes,
            response_bytes,
            tcp_opened,
            tcp_closed,
            tcp_received_bytes,
            tcp_sent_bytes,
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

/// Istio's labels of traffic on `downstream` that reached `destination` (the endpoint's
/// workload, when it is one the mesh knows), through `service` (the hostname a route sent it
/// to, for an ingress).
pub fn traffic_labels(
    downstream: &Downstream,
    destination: Option<&Workload>,
    service: Option<&str>,
    request_protocol: &'static str,
    cluster: &str,
    flags: &[&'static str],
) -> TrafficLabels {
    let source = match downstream.source_workload.as_deref() {
        Some(w) => Peer::new(
            &w.names,
            &w.namespace,
            downstream.client.as_ref().map(ToString::to_string),
            cluster,
        ),
        None => Peer {
            principal: downstream
                .client
                .as_ref()
                .map_or_else(|| UNKNOWN.to_owned(), ToString::to_string),
            ..Peer::unknown()
        },
    };
    let destination = match destination {
        Some(w) => Peer::new(
            &w.names,
            &w.namespace,
            w.identity.as_ref().map(ToString::to_string),
            cluster,
        ),
        None => Peer::unknown(),
    };
    let service = match &downstream.destination {
        Destination::Service(s) => Some(ServiceLabel {
            host: s.hostname.clone(),
            name: s.name.clone(),
            namespace: s.namespace.clone(),
        }),
        Destination::Workload(_) => None,
        Destination::Gateway(_) => service.map(ServiceLabel::from_host),
    };
    // An ingress gateway reports as the request's source, as Istio's does.
    let reporter = match &downstream.destination {
        Destination::Gateway(_) => "source",
        _ => "waypoint",
    };
    let mutual_tls = downstream.client.is_some();
    let mut labels = TrafficLabels::new(
        reporter,
        &source,
        &destination,
        service.as_ref(),
        request_protocol,
        mutual_tls,
    )
    .with_flags(&flags.join(","));
    if !mutual_tls {
        labels.connection_security_policy = NOT_MUTUAL_TLS;
    }
    labels
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
