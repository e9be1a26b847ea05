//! The agent's HTTP endpoints, on their own tasks so a slow scrape never delays the data path:
//! metrics (`/metrics`, `/stats/prometheus`), readiness (`/healthz/ready`), and on loopback
//! the admin view (`/config_dump`, `/connections`).

use std::{net::SocketAddr, sync::Arc};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes};

use crate::app::State;

#[derive(Clone, Copy, Debug)]
pub enum Endpoint {
    Metrics,
    Readiness,
    Admin,
}

/// Binds now (so a port conflict fails start-up with a clear error) and serves in the background.
pub async fn serve(addr: SocketAddr, endpoint: Endpoint, state: Arc<State>) -> std::io::Result<()> {
    mesh_core::endpoint::serve(addr, move |req| route(endpoint, &state, req)).await
}

fn route<B>(endpoint: Endpoint, state: &State, req: &Request<B>) -> Response<Full<Bytes>> {
    match (endpoint, req.uri().path()) {
        (Endpoint::Metrics, "/metrics" | "/stats/prometheus") => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.encode(),
        ),
        (Endpoint::Readiness, "/healthz/ready") => {
            if state.is_ready() {
                reply(StatusCode::OK, "text/plain", "ready\n".to_owned())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready\n".to_owned(),
                )
            }
        }
        (Endpoint::Admin, "/config_dump") => json(&state.config_dump()),
        (Endpoint::Admin, "/connections") => json(&state.connections.snapshot()),
        (Endpoint::Admin, "/certs") => json(&state.certificate_view()),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    }
}

fn json(value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_string_pretty(value) {
        Ok(body) => reply(StatusCode::OK, "application/json", body),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            e.to_string(),
        ),
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
