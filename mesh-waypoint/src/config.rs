//! The waypoint's configuration: command-line flags, each also settable from the environment.

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;
use serde::Serialize;

/// Ambit waypoint: the L7 proxy node agents send a service's traffic to over HBONE.
#[derive(Clone, Debug, Parser, Serialize)]
#[command(name = "mesh-waypoint", version)]
pub struct Config {
    /// This waypoint, as `namespace/name` of its Gateway: it serves only services and
    /// workloads bound to it (`ambit.io/use-waypoint`).
    #[arg(
        long,
        env = "AMBIT_WAYPOINT",
        required_unless_present = "ingress_gateway"
    )]
    pub waypoint: Option<String>,

    /// Ingress mode: the Istio `Gateway` (`namespace/name`) this proxy implements. It listens
    /// on the Gateway's server ports (HTTP, and HTTPS with the certificate files its `tls`
    /// names) and routes by the VirtualServices that list the Gateway in `gateways`.
    #[arg(long, env = "AMBIT_INGRESS_GATEWAY")]
    pub ingress_gateway: Option<String>,

    /// The class of this proxy's Gateway: AuthorizationPolicies in the root namespace that
    /// target the GatewayClass apply here too.
    #[arg(long, env = "AMBIT_GATEWAY_CLASS")]
    pub gateway_class: Option<String>,

    /// The namespace the waypoint runs in (its identity's).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,

    /// The waypoint's own pod, whose locality locality-aware load balancing is relative to.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// The service account the waypoint runs as (its identity's).
    #[arg(long, env = "AMBIT_SERVICE_ACCOUNT")]
    pub service_account: String,

    /// The mesh's trust domain.
    #[arg(long, env = "AMBIT_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,

    /// The cluster's name in metrics (`source_cluster`, `destination_cluster`), Istio's
    /// `CLUSTER_ID`.
    #[arg(long, env = "AMBIT_CLUSTER_ID", default_value = mesh_core::telemetry::DEFAULT_CLUSTER)]
    pub cluster_id: String,

    /// The namespace whose policies apply mesh-wide (Istio's root namespace).
    #[arg(long, env = "AMBIT_ROOT_NAMESPACE", default_value = "istio-system")]
    pub root_namespace: String,

    /// The cluster's DNS domain (service hostnames).
    #[arg(long, env = "AMBIT_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,

    /// The controller's certificate and configuration services, `host:port`.
    #[arg(long, env = "AMBIT_CA_ADDR")]
    pub ca_addr: String,

    /// PEM file with the mesh's root certificate(s).
    #[arg(long, env = "AMBIT_CA_ROOT")]
    pub ca_root: PathBuf,

    /// The token that authenticates the waypoint to the controller (re-read per request).
    #[arg(long, env = "AMBIT_TOKEN_FILE")]
    pub token_file: PathBuf,

    /// Lifetime asked for the waypoint's certificate, in seconds (renewed at half of it).
    #[arg(long, env = "AMBIT_CERT_LIFETIME", default_value_t = 24 * 3600)]
    pub cert_lifetime: u64,

    /// HBONE listener.
    #[arg(long, env = "AMBIT_HBONE_ADDR", default_value = "0.0.0.0:15008")]
    pub hbone_addr: SocketAddr,

    /// On SIGTERM, how long the waypoint goes on accepting, reported not ready, before it stops:
    /// the time the controller needs to tell every node agent that its endpoint is gone (in
    /// Kubernetes the endpoint is removed when the signal is sent).
    #[arg(long, env = "AMBIT_DRAIN_DELAY_SECS", default_value_t = 5)]
    pub drain_delay_secs: u64,

    /// Once it stops accepting, how long the requests in flight may go on: every HBONE
    /// connection is sent GOAWAY (its next streams go to another replica) and every HTTP
    /// connection inside one is closed after its current request. Keep the delay and this
    /// under the pod's termination grace period (30 s by default). A second SIGTERM ends it.
    #[arg(long, env = "AMBIT_DRAIN_TIMEOUT_SECS", default_value_t = 20)]
    pub drain_timeout_secs: u64,

    /// Prometheus metrics (`/metrics`, `/stats/prometheus`).
    #[arg(long, env = "AMBIT_METRICS_ADDR", default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,

    /// Readiness (`/healthz/ready`): a certificate and a first configuration.
    #[arg(long, env = "AMBIT_READINESS_ADDR", default_value = "0.0.0.0:15021")]
    pub readiness_addr: SocketAddr,

    /// Admin endpoint (`/config_dump`). Keep it on loopback.
    #[arg(long, env = "AMBIT_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,

    /// One access-log line per request: `text`, `json` or `off`.
    #[arg(long, env = "AMBIT_ACCESS_LOG", value_enum, default_value_t = AccessLog::Text)]
    pub access_log: AccessLog,

    /// Where spans go: an OTLP/HTTP traces endpoint (`http://collector:4318/v1/traces`).
    /// Without it no span is exported (trace headers are still propagated).
    #[arg(long, env = "AMBIT_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Where spans go as Zipkin v2 JSON (`http://zipkin.istio-system:9411/api/v2/spans`, the
    /// Zipkin or Jaeger addon), beside or instead of OTLP.
    #[arg(long, env = "AMBIT_ZIPKIN_ENDPOINT")]
    pub zipkin_endpoint: Option<String>,

    /// Percent of requests that start a trace here to sample (Istio's default is 1).
    #[arg(long, env = "AMBIT_TRACE_SAMPLING", default_value_t = 1.0)]
    pub trace_sampling: f64,

    /// Threads that serve connections (each with a runtime of its own).
    #[arg(long, env = "AMBIT_WORKER_THREADS", default_value_t = 2)]
    pub worker_threads: usize,

    /// Deadlines and caps of every listener (HBONE, ingress).
    #[command(flatten)]
    pub limits: mesh_core::transport::Limits,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLog {
    Text,
    Json,
    Off,
}
