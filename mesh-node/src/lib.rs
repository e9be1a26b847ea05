//! Ambit's node agent: captures enrolled pods' traffic with eBPF (no iptables, no sidecar)
//! and carries it.
//!
//! # Layout
//! - `app`: wiring, shared state, the enrollment loop;
//! - `config`: flags and environment;
//! - `dataplane`: loading, pinning and attaching `mesh-ebpf`, and its maps;
//! - `enrollment`: pods in and out of capture at run time;
//! - `drain`: stopping without loss (signals, waiting for carried connections);
//! - `handover`: a new agent taking the running one's listeners (restart, upgrade);
//! - `identity`: workload certificates from the controller's CA, renewed in the background;
//! - `policy`: PeerAuthentication and AuthorizationPolicy on inbound connections;
//! - `control`: policies and workloads from the controller's configuration stream;
//! - `sandbox`: where this node's pods live (their network namespaces);
//! - `precheck`: whether this host can run the agent (`ambitctl precheck`);
//! - `services`: service addresses, their endpoints and waypoints;
//! - `netns`, `cgroup`: kernel handles the agent works through;
//! - `proxy`: in-pod listeners and forwarding;
//! - `metrics`, `admin`: Prometheus metrics and the HTTP endpoints.
pub mod admin;
pub mod app;
pub mod cgroup;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod drain;
pub mod enrollment;
pub mod handover;
pub mod identity;
pub mod metrics;
pub mod netns;
pub mod policy;
pub mod precheck;
pub mod proxy;
pub mod sandbox;
pub mod services;

/// Local mode's pods file (shared with the controller).
pub use mesh_core::pods;
