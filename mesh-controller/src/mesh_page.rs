//! The mesh page, served on the admin port (`/mesh`): the live service graph (services,
//! workloads and versions; request rate, error rate, P99 and mutual TLS on each edge; what
//! policy denied), the resources in force with their status, and Kiali's weighted routing.
//! It reads the node agents' and waypoints' metrics itself, so it needs no Prometheus.
//!
//! The page can change the configuration, so its writes are refused unless they come from
//! the page itself on a loopback address: a `Host` of the loopback (no DNS rebinding) and a
//! header a cross-site form cannot send without the browser asking first (no CSRF).
//!
//! # Layout
//! - `scrape`: reading every subscriber's metrics;
//! - `graph`: the edges and their rates from two reads;
//! - `routing`: weighted routing, read and written through the configuration source.

pub mod graph;
pub mod routing;
pub mod scrape;

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Bytes, body::Incoming};
use mesh_core::config_pb::resource::Body;
use serde_json::{Value, json};

use crate::{admin::SharedReport, config::ConfigSet, distribution::Distributor};

const PAGE: &str = include_str!("mesh_page/page.html");
/// The header the page's own requests carry (see the module's documentation).
const PAGE_HEADER: &str = "x-ambit-page";
/// How long a write waits for the controller to publish and accept it.
const ACCEPT_WAIT: Duration = Duration::from_secs(15);

pub struct MeshPage {
    distributor: Arc<Distributor>,
    report: SharedReport,
    reads: Arc<scrape::Reads>,
    store: routing::Store,
    domain: String,
}

impl MeshPage {
    /// Starts reading the subscribers' metrics.
    pub fn start(
        distributor: Arc<Distributor>,
        report: SharedReport,
        store: routing::Store,
        domain: &str,
    ) -> Arc<Self> {
        let reads = Arc::new(scrape::Reads::default());
        tokio::spawn(scrape::follow(distributor.clone(), reads.clone()));
        Arc::new(MeshPage {
            distributor,
            report,
            reads,
            store,
            domain: domain.to_owned(),
        })
    }

    /// Answers a request under `/mesh`.
    pub async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_owned();
        match (request.method().clone(), path.as_str()) {
            (Method::GET, "/mesh" | "/mesh/") => {
                reply(StatusCode::OK, "text/html; charset=utf-8", PAGE.into())
            }
            (Method::GET, "/mesh/graph") => json_reply(
                StatusCode::OK,
                &json!(graph::graph(&self.reads, &self.waypoints())),
            ),
            (Method::GET, "/mesh/resources") => {
                let report = self
                    .report
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                json_reply(
                    StatusCode::OK,
                    &json!({"version": self.distributor.version(), "resources": report.resources, "errors": report.errors}),
                )
            }
            (Method::GET, "/mesh/services") => json_reply(
                StatusCode::OK,
                &json!(routing::services(&self.configuration(), &self.domain)),
            ),
            (Method::POST, "/mesh/routing") => match self.change_weights(request).await {
                Ok(message) => json_reply(StatusCode::OK, &json!({"ok": true, "message": message})),
                Err((status, error)) => json_reply(status, &json!({"ok": false, "error": error})),
            },
            _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        }
    }

    /// The configuration the controller validated last.
    fn configuration(&self) -> Arc<ConfigSet> {
        self.report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set
            .clone()
    }

    /// The waypoints' workloads, left out of the graph.
    fn waypoints(&self) -> BTreeSet<(String, String)> {
        self.distributor
            .resources()
            .iter()
            .filter_map(|r| match &r.body {
                Some(Body::Workload(w))
                    if w.labels.contains_key(mesh_core::labels::GATEWAY_NAME) =>
                {
                    Some((w.namespace.clone(), w.workload_name.clone()))
                }
                _ => None,
            })
            .collect()
    }

    async fn change_weights(
        &self,
        request: Request<Incoming>,
    ) -> Result<String, (StatusCode, String)> {
        let refuse = |status, message: &str| Err((status, message.to_owned()));
        if !from_the_page(&request) {
            tracing::warn!(host = ?request.headers().get(hyper::header::HOST), "mesh page: a write not from the page itself refused");
            return refuse(
                StatusCode::FORBIDDEN,
                "writes are accepted only from the mesh page on a loopback address",
            );
        }
        let body = Limited::new(request.into_body(), 64 << 10)
            .collect()
            .await
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("reading the request: {e}")))?
            .to_bytes();
        let change: routing::WeightChange = serde_json::from_slice(&body)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("not a weight change: {e}")))?;
        let set = self.configuration();
        let services = routing::services(&set, &self.domain);
        let Some(service) = services
            .iter()
            .find(|s| s.namespace == change.namespace && s.name == change.service)
        else {
            return refuse(
                StatusCode::NOT_FOUND,
                &format!(
                    "no service {}/{} with subsets",
                    change.namespace, change.service
                ),
            );
        };
        routing::check(service, &change).map_err(|e| (StatusCode::CONFLICT, e))?;
        let object = routing::virtual_service(service, &change.weights);
        let before = self.distributor.version();
        self.store
            .write(ConfigSet::clone(&set), object, &self.domain)
            .await
            .map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, e))?;
        let shares = change
            .weights
            .iter()
            .map(|(subset, weight)| format!("{subset} {weight}%"))
            .collect::<Vec<_>>()
            .join(", ");
        tracing::info!(service = %service.host, %shares, "mesh page: weights changed");
        self.accepted(before, &service.namespace, &service.name)
            .await?;
        Ok(format!("{}: {shares}", service.host))
    }

    /// Waits until the controller published a version after `before` in which the page's
    /// VirtualService is accepted; its refusal otherwise.
    async fn accepted(
        &self,
        before: u64,
        namespace: &str,
        name: &str,
    ) -> Result<(), (StatusCode, String)> {
        let deadline = tokio::time::Instant::now() + ACCEPT_WAIT;
        loop {
            if self.distributor.version() > before {
                let report = self
                    .report
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let condition = report
                    .resources
                    .iter()
                    .find(|r| {
                        r.kind == "VirtualService" && r.namespace == namespace && r.name == name
                    })
                    .and_then(|r| r.conditions.iter().find(|c| c.type_ == "Accepted").cloned());
                match condition {
                    Some(c) if c.status == "True" => return Ok(()),
                    Some(c) => {
                        let why = if c.message.is_empty() {
                            c.reason
                        } else {
                            c.message
                        };
                        return Err((StatusCode::UNPROCESSABLE_ENTITY, why));
                    }
                    None => {}
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err((
                    StatusCode::GATEWAY_TIMEOUT,
                    "written, but the controller has not published it yet".to_owned(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Whether a write comes from the page itself, served on a loopback address.
fn from_the_page(request: &Request<Incoming>) -> bool {
    let header = |name| request.headers().get(name).and_then(|v| v.to_str().ok());
    let host = header(hyper::header::HOST.as_str()).unwrap_or_default();
    let host = host
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(host, _)| host);
    let loopback = matches!(host, "localhost" | "127.0.0.1" | "[::1]");
    loopback
        && header(PAGE_HEADER) == Some("1")
        && header(hyper::header::CONTENT_TYPE.as_str())
            .is_some_and(|c| c.starts_with("application/json"))
}

fn reply(status: StatusCode, content_type: &str, body: Bytes) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        // The page's data is live: never cached.
        .header("cache-control", "no-store")
        .body(Full::new(body))
        .expect("static response")
}

fn json_reply(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    reply(status, "application/json", body.into())
}
