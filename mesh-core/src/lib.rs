//! What Ambit's node agent and waypoint share: SPIFFE identities, mutual TLS configuration and
//! verification, and the HBONE (HTTP/2 CONNECT) request shape.
//!
//! # Layout
//! - `identity`: `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`;
//! - `tls`: workload certificates, rustls configs (TLS 1.3, AES-GCM, ALPN `h2`), and the
//!   verifiers that turn a certificate chain into a peer identity;
//! - `hbone`: building and checking CONNECT requests, with the status codes ztunnel uses.
#![forbid(unsafe_code)]

pub mod hbone;
pub mod identity;
pub mod tls;

pub use identity::Identity;
