//! What Ambit's node agent and waypoint share: SPIFFE identities, mutual TLS configuration and
//! verification, and the HBONE (HTTP/2 CONNECT) request shape.
//!
//! # Layout
//! - `build_info`: `istio_build`, the metric that names a component and its version;
//! - `ca_client`: asking the mesh CA for a workload certificate (gRPC over TLS, bearer token);
//! - `identity`: `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`;
//! - `tls`: workload certificates, rustls configs (TLS 1.3, AES-GCM, ALPN `h2`), and the
//!   verifiers that turn a certificate chain into a peer identity;
//! - `hbone`: building and checking CONNECT requests, with the status codes ztunnel uses;
//! - `policy`: PeerAuthentication and AuthorizationPolicy at L4, from Istio's YAML;
//! - `labels`: the labels that enroll workloads and bind waypoints, Ambit's and Istio's;
//! - `pods`: local mode's file of namespaces and pods (what a node would learn from Kubernetes);
//! - `config_client`: following the controller's configuration stream (ACK/NACK, resume);
//! - `process`: the runtime and shutdown signal of the agent's and the waypoint's `main`;
//! - `exposition`: Prometheus' text format read into samples;
//! - `drain`: the graceful-shutdown signal (GOAWAY, then wait for what is carried);
//! - `endpoint`: serving the plain-HTTP endpoints (metrics, readiness, admin);
//! - `transport`: accept with back-off and a cap, handshake and idle deadlines;
//! - `telemetry`: what Istio's standard metric labels say of a workload, derived as Istio does;
//! - `yaml`: multi-document YAML where one broken document costs only itself.
#![deny(unsafe_code)]

pub mod build_info;
pub mod ca_client;
pub mod config_client;
pub mod drain;
pub mod endpoint;
pub mod exposition;
pub mod hbone;
pub mod identity;
pub mod labels;
pub mod pods;
pub mod policy;
pub mod process;
pub mod telemetry;
pub mod tls;
pub mod transport;
pub mod workloads;
pub mod yaml;

pub use identity::Identity;

/// The `*.yaml` / `*.yml` files of a config directory, in name order (the order they apply).
pub fn yaml_files(dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// gRPC types of Istio's certificate service (`istio.v1.auth`).
pub mod pb {
    #![allow(clippy::all, missing_docs, unreachable_pub)]
    tonic::include_proto!("istio.v1.auth");
}

/// gRPC types of Ambit's configuration stream (`ambit.config.v1`).
pub mod config_pb {
    #![allow(clippy::all, missing_docs, unreachable_pub)]
    tonic::include_proto!("ambit.config.v1");
}

pub use mesh_api::string_keyed;
