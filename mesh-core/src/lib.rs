//! What Ambit's node agent and waypoint share: SPIFFE identities, mutual TLS configuration and
//! verification, and the HBONE (HTTP/2 CONNECT) request shape.
//!
//! # Layout
//! - `ca_client`: asking the mesh CA for a workload certificate (gRPC over TLS, bearer token);
//! - `identity`: `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`;
//! - `tls`: workload certificates, rustls configs (TLS 1.3, AES-GCM, ALPN `h2`), and the
//!   verifiers that turn a certificate chain into a peer identity;
//! - `hbone`: building and checking CONNECT requests, with the status codes ztunnel uses;
//! - `policy`: PeerAuthentication and AuthorizationPolicy at L4, from Istio's YAML;
//! - `pods`: local mode's file of namespaces and pods (what a node would learn from Kubernetes).
#![deny(unsafe_code)]

pub mod ca_client;
pub mod config_client;
pub mod hbone;
pub mod identity;
pub mod pods;
pub mod policy;
pub mod tls;

pub use identity::Identity;

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
