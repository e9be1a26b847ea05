//! The access log: one line per request, text or JSON, written when its response headers
//! are known.

use std::{fmt::Write as _, net::SocketAddr};

use http::{Request, Response};

use crate::{
    app::App,
    config::AccessLog,
    proxy::{Downstream, Outcome},
    store::Workload,
    upstream::Body,
};

/// What the access log says of a request, taken when it arrives (only when logging).
pub(super) struct Logged {
    method: String,
    path: String,
    authority: String,
    request_id: String,
    user_agent: String,
}

fn header<B>(request: &Request<B>, name: &str) -> String {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

impl Logged {
    /// What the log needs of `request`, when the log is on.
    pub(super) fn of<B>(request: &Request<B>, app: &App) -> Option<Self> {
        (app.config.access_log != AccessLog::Off).then(|| Logged {
            method: request.method().to_string(),
            path: request.uri().path().to_owned(),
            authority: request
                .uri()
                .authority()
                .map(|a| a.to_string())
                .unwrap_or_else(|| header(request, "host")),
            request_id: header(request, "x-request-id"),
            user_agent: header(request, "user-agent"),
        })
    }
}

fn flags_label(flags: &[&str]) -> String {
    if flags.is_empty() {
        "-".to_owned()
    } else {
        flags.join(",")
    }
}

pub(super) fn log(
    app: &App,
    downstream: &Downstream,
    outcome: &Outcome,
    logged: &Logged,
    response: &Response<Body>,
    destination: Option<&Workload>,
    elapsed_ms: f64,
) {
    let upstream = outcome
        .upstream
        .map_or_else(|| "-".to_owned(), |a: SocketAddr| a.to_string());
    let route = outcome.route.as_deref().unwrap_or("-");
    let flags = flags_label(&outcome.flags);
    let code = response.status().as_u16();
    let service = outcome.service.as_deref().unwrap_or("-");
    match app.config.access_log {
        AccessLog::Off => {}
        AccessLog::Text => {
            let mut line = String::new();
            let _ = write!(
                line,
                "{} {} {} {code} {service} {flags} {elapsed_ms:.1}ms attempts={} upstream={upstream} route={route} source={} id={} ua={:?}",
                logged.method,
                logged.authority,
                logged.path,
                outcome.attempts,
                downstream.source,
                logged.request_id,
                logged.user_agent,
            );
            tracing::info!(target: "access", "{line}");
        }
        AccessLog::Json => {
            let line = serde_json::json!({
                "method": logged.method,
                "authority": logged.authority,
                "path": logged.path,
                "response_code": code,
                "response_flags": flags,
                "duration_ms": elapsed_ms,
                "attempts": outcome.attempts,
                "upstream": upstream,
                "route": route,
                "source": downstream.source.to_string(),
                "source_principal": downstream.client.as_ref().map_or_else(|| "unknown".to_owned(), ToString::to_string),
                "destination_service": service,
                "destination_version": destination.map_or("unknown", |w| w.names.canonical_revision.as_str()),
                "request_id": logged.request_id,
                "user_agent": logged.user_agent,
            });
            tracing::info!(target: "access", "{line}");
        }
    }
}
