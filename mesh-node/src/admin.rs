//! The agent's HTTP endpoints, on their own tasks so a slow scrape never delays the data path:
//! metrics (`/metrics`, `/stats/prometheus`), readiness (`/healthz/ready`), and on loopback
//! the admin view (`/config_dump`, `/connections`).

use std::{net::SocketAddr, os::fd::OwnedFd, sync::Arc};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes};

use crate::app::State;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    Metrics,
    Readiness,
    Admin,
}

/// Serves `endpoint` on `listener` (bound by this agent, or handed over by its predecessor)
/// in the background; returns a duplicate of the socket and the serving task, for a
/// successor to take.
pub fn serve(
    listener: std::net::TcpListener,
    endpoint: Endpoint,
    state: Arc<State>,
) -> std::io::Result<(OwnedFd, tokio::task::AbortHandle)> {
    let duplicate = OwnedFd::from(listener.try_clone()?);
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let task = mesh_core::endpoint::spawn_on(listener, move |req| {
        let reply = route(endpoint, &state, &req);
        async move { reply }
    });
    Ok((duplicate, task.abort_handle()))
}

/// Binds `addr` now, so a port conflict fails start-up with a clear error.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
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
        (Endpoint::Admin, "/config_dump") => config_dump(state, req.uri().query()),
        (Endpoint::Admin, "/connections") => json(&state.connections.snapshot()),
        (Endpoint::Admin, "/certs") => json(&state.certificate_view()),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    }
}

/// The whole configuration, or with `?mask=a,b` only those top-level fields (as Envoy's
/// `/config_dump?mask=`). Every pod of the cluster is in `pods`: it is not even gathered when
/// the mask leaves it out, which keeps frequent polls cheap on a large cluster.
fn config_dump(state: &State, query: Option<&str>) -> Response<Full<Bytes>> {
    let mask: Option<Vec<&str>> = query
        .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("mask=")))
        .map(|fields| fields.split(',').collect());
    let with_pods = mask.as_ref().is_none_or(|fields| fields.contains(&"pods"));
    let dump = state.config_dump(with_pods);
    let Some(fields) = mask else {
        return json(&dump);
    };
    match serde_json::to_value(&dump) {
        Ok(mut value) => {
            if let Some(object) = value.as_object_mut() {
                object.retain(|field, _| fields.contains(&field.as_str()));
            }
            json(&value)
        }
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            e.to_string(),
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
