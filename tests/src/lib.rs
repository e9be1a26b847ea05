//! Ambit's test bed: nodes and pods made of network namespaces on one machine, node agents
//! running in them, and the traffic helpers the integration tests and benchmarks share.
//!
//! Needs root (network namespaces, cgroups, bpffs). Every name carries the creating process's
//! id, so two runs cannot collide, and a later run sweeps what a killed run left behind.
//!
//! # Layout
//! - `testbed`: building and tearing down the topology; `Pod` and `Node` handles;
//! - `agent`: starting, stopping and querying `mesh-node` inside a node;
//! - `controller`: the controller's CA in the fabric namespace;
//! - `waypoint`: `mesh-waypoint` in a pod; `http`: a scripted HTTP/1.1 server and client;
//! - `browser`: headless Chromium driven over the DevTools protocol;
//! - `l7`: the L7 test bed (agents, a waypoint, scripted backends);
//! - `prometheus`: Debian's Prometheus scraping the test bed with deploy/'s scrape job;
//! - `capture`: reading frames off an interface, to check what crosses the wire;
//! - `traffic`: echo and checksum servers, request/response and connection-rate clients;
//! - `storm`: many short connections to one pod, each timed;
//! - `hbone_client`: HBONE spoken by hand, with a certificate of one's own;
//! - `sys`: running commands and entering namespaces;
//! - `containers`: Ambit's images run by podman with the manifests' own privileges;
//! - `api_rules`: the API server's pod-template rules a schema check misses, for deploy/.
pub mod agent;
pub mod api_rules;
pub mod bpf;
pub mod browser;
pub mod capture;
pub mod containers;
pub mod controller;
pub mod hbone_client;
pub mod http;
pub mod l7;
pub mod prometheus;
pub mod storm;
pub mod sys;
pub mod testbed;
pub mod traffic;
pub mod waypoint;

pub use agent::{Agent, AgentOptions};
pub use mesh_core::exposition;
pub use testbed::{Node, Pod, Testbed, Topology};
