//! The controller's admin endpoint (loopback by default), what `ambitctl` reads:
//! `/status` (version, subscribers and what they acknowledged or refused, each resource's
//! conditions, objects that could not be read) and `/config_dump` (every published resource);
//! and the mesh page under `/mesh` (see `mesh_page`).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use http_body_util::Full;
use hyper::{Response, StatusCode, body::Bytes};
use mesh_core::config_pb::{self as pb, resource::Body};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{config::ConfigSet, distribution::Distributor, mesh_page::MeshPage};
use mesh_api::common::Condition;

/// The last validation round, as reported.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub resources: Vec<ResourceReport>,
    pub errors: Vec<String>,
    /// The configuration this round validated: what the mesh page reads routing from,
    /// without reading the directory or listing the API server again.
    #[serde(skip)]
    pub set: Arc<ConfigSet>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ResourceReport {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub conditions: Vec<Condition>,
}

pub type SharedReport = Arc<Mutex<Report>>;

/// Binds now (a port conflict fails start-up) and serves in the background; `/mesh` is the
/// mesh page's.
pub async fn serve(
    addr: SocketAddr,
    distributor: Arc<Distributor>,
    report: SharedReport,
    page: Arc<MeshPage>,
) -> std::io::Result<()> {
    mesh_core::endpoint::serve_async(addr, move |request| {
        let (distributor, report, page) = (distributor.clone(), report.clone(), page.clone());
        async move {
            let path = request.uri().path();
            if path == "/mesh" || path.starts_with("/mesh/") {
                page.answer(request).await
            } else {
                route(path, &distributor, &report)
            }
        }
    })
    .await
}

fn route(path: &str, distributor: &Distributor, report: &SharedReport) -> Response<Full<Bytes>> {
    let value = match path {
        "/status" => {
            let report = report.lock().unwrap_or_else(|p| p.into_inner()).clone();
            json!({
                "build": format!("mesh-controller {}", env!("CARGO_PKG_VERSION")),
                "version": distributor.version(),
                "subscribers": distributor.subscribers(),
                "resources": report.resources,
                "errors": report.errors,
            })
        }
        "/config_dump" => json!({
            "version": distributor.version(),
            "resources": distributor.resources().iter().map(|r| to_json(r)).collect::<Vec<_>>(),
        }),
        _ => {
            return Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(Full::new(Bytes::from_static(b"not found\n")))
                .expect("static response");
        }
    };
    let body = serde_json::to_string_pretty(&value).unwrap_or_default();
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response")
}

/// A published resource as JSON: its key and its body.
pub fn to_json(resource: &pb::Resource) -> Value {
    let key = resource.key.clone().unwrap_or_default();
    let body = match &resource.body {
        Some(Body::Workload(w)) => json!({
            "node": w.node, "addresses": w.addresses, "serviceAccount": w.service_account,
            "labels": w.labels, "enrolled": w.enrolled, "waypoint": w.waypoint,
        }),
        Some(Body::Service(s)) => json!({
            "hostname": s.hostname, "addresses": s.addresses, "selector": s.selector,
            "waypoint": s.waypoint,
            "ports": s.ports.iter().map(|p| json!({"port": p.port, "targetPort": p.target_port, "protocol": p.protocol})).collect::<Vec<_>>(),
        }),
        Some(Body::IstioJson(text)) => serde_json::from_str(text).unwrap_or(Value::Null),
        Some(Body::Waypoint(w)) => json!({"serviceAccount": w.service_account}),
        // What it holds, never the key itself.
        Some(Body::Credential(c)) => json!({
            "certificateChain": !c.certificate_chain.is_empty(),
            "privateKey": !c.private_key.is_empty(),
            "caCertificates": !c.ca_certificates.is_empty(),
        }),
        None => Value::Null,
    };
    let mut entry =
        json!({"kind": key.kind, "namespace": key.namespace, "name": key.name, "spec": body});
    if !resource.refused.is_empty() {
        entry["refused"] = Value::String(resource.refused.clone());
    }
    entry
}
