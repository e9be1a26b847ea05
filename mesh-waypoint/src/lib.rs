//! Ambit's waypoint: the optional L7 proxy node agents send a service's (or a workload's)
//! traffic to over HBONE. It terminates HBONE, serves the HTTP/1.1 or HTTP/2 inside, routes
//! by the VirtualServices and DestinationRules the controller streams to it, and forwards
//! over HBONE to the chosen endpoint.
//!
//! # Layout
//! - `app`: wiring: certificate, configuration stream, listeners, HTTP endpoints;
//! - `config`: flags and environment;
//! - `counted`: a unit of a shared count (connections per cluster, per worker);
//! - `identity`: the waypoint's own certificate from the controller's CA;
//! - `store`: services, workloads, DestinationRules and routes from the configuration stream;
//! - `routes`: the route table compiled from VirtualServices, and request matching;
//! - `inbound`: HBONE in, and the HTTP server inside each tunnel;
//! - `ingress`: ingress mode's listeners for an Istio Gateway's servers;
//! - `proxy`: one request through the waypoint, phase by phase;
//! - `passthrough`: what is not HTTP, carried as TCP; `sni`: a ClientHello's server name;
//! - `upstream`: endpoints, load balancing, connection pools, circuit breaking, ejection;
//! - `h2io`: an HBONE stream as a byte stream for hyper;
//! - `workers`: the data path's threads, one runtime each;
//! - `metrics`: Istio's L7 metrics and the access log; `spans`: OTLP span export.
pub mod app;
pub mod config;
pub mod counted;
pub mod h2io;
pub mod identity;
pub mod inbound;
pub mod ingress;
pub mod metrics;
pub mod passthrough;
pub mod proxy;
pub mod routes;
pub mod sni;
pub mod spans;
pub mod store;
pub mod upstream;
pub mod workers;
