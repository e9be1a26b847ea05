//! The agent's Prometheus metrics, with Istio's names and labels so existing dashboards read
//! them. Label values are bounded: workload and namespace names come from the controller (or
//! the pods file), never from packets; see `mesh_core::telemetry`.

use mesh_core::{telemetry::TrafficLabels, workloads::ChangeMetrics};
use prometheus_client::{
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// Which proxy of the connection reports it (Istio's `reporter`, as ztunnel sets it).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reporter {
    /// The agent on the client's node (outbound capture).
    Source,
    /// The agent on the server's node (inbound capture).
    Destination,
}

impl Reporter {
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
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

/// Istio's labels of a connection (`request_protocol="tcp"`).
pub type TcpLabels = TrafficLabels;

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
    /// From a pod's cgroup appearing to the agent's decision (captured, or let go): the time
    /// the kernel refused its connects.
    pub pod_start_hold: Histogram,
    /// Starting pods the agent never learned of in time, let go uncaptured after the hold
    /// limit (`--undecided-hold-secs`).
    pub pods_let_go_undecided: Counter,
    /// Pods starting now, their connects refused until decided.
    pub undecided_pods: Gauge,
    /// The workload store: pods held (on every node) and pods each change upserted or
    /// removed.
    pub workload_changes: ChangeMetrics,
    /// Live inbound connections authorized again after a change of their pod or of policy.
    pub connections_rechecked: Counter,
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
        // 1 ms to 8 s: a decision normally takes milliseconds, a controller far away seconds.
        let pod_start_hold = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let pods_let_go_undecided = Counter::default();
        let undecided_pods = Gauge::default();
        let workload_changes =
            ChangeMetrics::register(&mut registry, "ambit_", "the node agent (on every node)");
        let connections_rechecked = Counter::default();
        registry.register(
            "ambit_connections_rechecked",
            "Live inbound connections authorized again after a change of their pod or of policy",
            connections_rechecked.clone(),
        );
        registry.register(
            "ambit_pod_start_hold_seconds",
            "From a pod's cgroup appearing to the agent's decision about it (its connects are refused meanwhile)",
            pod_start_hold.clone(),
        );
        registry.register(
            "ambit_pods_let_go_undecided",
            "Starting pods let go uncaptured because the agent did not learn of them in time",
            pods_let_go_undecided.clone(),
        );
        registry.register(
            "ambit_undecided_pods",
            "Pods starting now whose connects are refused until the agent decides about them",
            undecided_pods.clone(),
        );
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
            pod_start_hold,
            pods_let_go_undecided,
            undecided_pods,
            workload_changes,
            connections_rechecked,
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
