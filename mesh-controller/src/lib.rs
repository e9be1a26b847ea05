//! Ambit's controller as a library: the certificate authority, the validation of the resources
//! users apply (their types are `mesh_api`'s), the configuration sources and the stream.
//!
//! # Layout
//! - `admin`: the loopback admin endpoint `ambitctl` reads (`/status`, `/config_dump`);
//! - `mesh_page`: the mesh page on the admin port: the live service graph, the resources in
//!   force, weighted routing;
//! - `ca`: the mesh's root, and signing workload certificates for SPIFFE identities;
//! - `ca_service`: Istio's `IstioCertificateService` over gRPC, authenticating node agents by
//!   bootstrap token and letting each sign only for pods on its node;
//! - `serve`: the gRPC server on mutual-TLS-free TLS (nodes have no certificate yet);
//! - `compatibility`: what Ambit does with every field of Istio's kinds (docs/compatibility.md);
//! - `compile`: a validated configuration as the resources subscribers receive;
//! - `config`: a configuration set from any source, loading YAML, validation;
//! - `distribution`: versioned deltas for subscribers and the `ConfigService` stream;
//! - `source`: configuration sources (a directory, the Kubernetes API) and the debounced
//!   publish loop;
//! - `readiness`: `/healthz/ready`, ready once a whole configuration is published;
//! - `metrics`: Prometheus metrics of configuration pushes, validation and certificates;
//! - `kubernetes`: Kubernetes mode's CA Secret, node authentication by TokenReview, and the
//!   waypoint reconciler;
//! - `waypoint`: the Deployment, Service and ServiceAccount run for each waypoint Gateway.
pub mod admin;
pub mod ca;
pub mod ca_service;
pub mod compatibility;
pub mod compile;
pub mod config;
pub mod distribution;
pub mod kubernetes;
pub mod mesh_page;
pub mod metrics;
pub mod readiness;
pub mod serve;
pub mod source;
pub mod waypoint;
