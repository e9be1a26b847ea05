//! The agent's Prometheus metrics, with Istio's names and labels so existing dashboards read
//! them. Label values are bounded: workload and namespace names come from the pods file,
//! never from packets.

use std::fmt::Write as _;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Which proxy of the connection reports it (Istio's `reporter`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Reporter {
    /// The agent on the client's node (outbound capture).
    source,
    /// The agent on the server's node (inbound capture).
    destination,
}

/// `connection_security_policy`: plain forwarding is `none` until HBONE carries it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum SecurityPolicy {
    none,
    mutual_tls,
}

/// Envoy-style response flags for connections that did not get through.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ResponseFlags {
    /// `-`: no flag.
    None,
    /// Upstream connection failure.
    UF,
    /// No route: the captured connection's original destination was not found.
    NR,
    /// Refused for lack of authentication or authorization (TLS or policy).
    UAEX,
}

impl ResponseFlags {
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFlags::None => "-",
            ResponseFlags::UF => "UF",
            ResponseFlags::NR => "NR",
            ResponseFlags::UAEX => "UAEX",
        }
    }
}

impl EncodeLabelValue for ResponseFlags {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub connection_security_policy: SecurityPolicy,
    pub response_flags: ResponseFlags,
}

/// Every metric the agent exports, registered once at start.
pub struct Metrics {
    pub registry: Registry,
    pub connections_opened: Family<TcpLabels, Counter>,
    pub connections_closed: Family<TcpLabels, Counter>,
    pub connections_failed: Family<TcpLabels, Counter>,
    pub sent_bytes: Family<TcpLabels, Counter>,
    pub received_bytes: Family<TcpLabels, Counter>,
    /// Pods currently captured by this agent.
    pub enrolled_pods: Gauge,
    /// Pods of the mesh this agent could not enroll, held failing closed (no traffic in or
    /// out) until it can.
    pub refused_pods: Gauge,
    /// Policy documents that did not load as written (enforced failing closed).
    pub policy_errors: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        mesh_core::build_info::register(&mut registry, "ztunnel", env!("CARGO_PKG_VERSION"));
        let connections_opened = Family::<TcpLabels, Counter>::default();
        let connections_closed = Family::<TcpLabels, Counter>::default();
        let connections_failed = Family::<TcpLabels, Counter>::default();
        let sent_bytes = Family::<TcpLabels, Counter>::default();
        let received_bytes = Family::<TcpLabels, Counter>::default();
        let enrolled_pods = Gauge::default();
        let refused_pods = Gauge::default();
        let policy_errors = Gauge::default();
        registry.register(
            "istio_tcp_connections_opened",
            "Connections opened through the node agent",
            connections_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "Connections closed through the node agent",
            connections_closed.clone(),
        );
        registry.register(
            "istio_tcp_connections_failed",
            "Captured connections that could not be carried (see response_flags)",
            connections_failed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent towards the destination, counted when the connection closes",
            sent_bytes.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the destination, counted when the connection closes",
            received_bytes.clone(),
        );
        registry.register(
            "ambit_enrolled_pods",
            "Pods whose traffic this agent captures",
            enrolled_pods.clone(),
        );
        registry.register(
            "ambit_refused_pods",
            "Pods of the mesh that could not be enrolled, held failing closed until they can",
            refused_pods.clone(),
        );
        registry.register(
            "ambit_policy_errors",
            "Policy documents that did not load as written (enforced failing closed)",
            policy_errors.clone(),
        );
        Self {
            registry,
            policy_errors,
            connections_opened,
            connections_closed,
            connections_failed,
            sent_bytes,
            received_bytes,
            enrolled_pods,
            refused_pods,
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
