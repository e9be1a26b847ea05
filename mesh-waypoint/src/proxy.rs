//! One request through the waypoint, in named phases: normalize its path, authorize it (L7
//! AuthorizationPolicy), match a route, inject faults, then answer locally (redirect, direct
//! response) or forward (see `forward`), and record it (metrics, access log). Every answer made here carries Envoy's response flag in
//! `x-ambit-response-flags` when something went wrong, and in the metrics.
//!
//! # Layout
//! - `forward`: weighted choice, rewrites, retries, timeouts and mirroring;
//! - `trace`: W3C `traceparent` and B3 propagation, request ids.

mod forward;
pub mod normalize;
pub mod trace;

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use http::{Request, Response, StatusCode, header::HeaderValue};
use hyper::body::Incoming;
use mesh_core::Identity;

use crate::{
    app::App,
    metrics::{CountedBody, RequestRecord},
    routes::{Abort, Action, Fault, Lookup, RequestView, Route, Verdict},
    store::{Service, Workload},
    upstream::{Body, local_body},
};

/// A request's body as the phases read it: the client's, counted for the metrics.
pub type RequestBody = CountedBody<Incoming>;

/// The header Ambit answers its response flags in (also in metrics as `response_flags`).
pub const FLAGS_HEADER: &str = "x-ambit-response-flags";

/// What a request is for: a service (by its address) or one workload, through the waypoint;
/// or whatever the routes of the ingress Gateway (`namespace/name`) say.
#[derive(Clone, Debug)]
pub enum Destination {
    Service(Arc<Service>),
    Workload(Arc<Workload>),
    Gateway(String),
}

/// The connection a request came on.
pub struct Downstream {
    /// The source workload's verified identity (`None` in ingress mode).
    pub client: Option<Identity>,
    /// The original client address.
    pub source: SocketAddr,
    /// The original destination (service address or workload address, and port).
    pub target: SocketAddr,
    pub destination: Destination,
    pub source_workload: Option<Arc<Workload>>,
    /// The metric series this connection's requests were counted in lately.
    pub series: crate::metrics::SeriesCache,
}

/// What the phases learn about a request, for the record.
#[derive(Default)]
pub struct Outcome {
    pub flags: Vec<&'static str>,
    pub route: Option<String>,
    pub upstream: Option<SocketAddr>,
    pub upstream_workload: Option<Arc<Workload>>,
    /// The service the request was sent to (its hostname).
    pub service: Option<String>,
    /// The waypoint's span for the request.
    pub span: Option<trace::Span>,
    pub attempts: u32,
}

pub async fn handle(
    request: Request<Incoming>,
    downstream: Arc<Downstream>,
    app: Arc<App>,
) -> Result<Response<Body>, Infallible> {
    let wall = app.spans.is_some().then(std::time::SystemTime::now);
    let (record, request) = RequestRecord::start(request, &app);
    // What a span needs of the request, kept only when spans are exported.
    let traced = app.spans.is_some().then(|| {
        let name = format!("{} {}", request.method(), authority_of(&request));
        (
            name,
            request.method().to_string(),
            request.uri().path().to_owned(),
        )
    });
    let mut outcome = Outcome::default();
    let mut response = respond(request, &downstream, &app, &mut outcome).await;
    if !outcome.flags.is_empty()
        && let Ok(value) = HeaderValue::from_str(&outcome.flags.join(","))
    {
        response.headers_mut().insert(FLAGS_HEADER, value);
    }
    let response = record.finish(&app, &downstream, &outcome, response);
    if let (Some(exporter), Some(span), Some((name, method, path)), Some(wall)) =
        (&app.spans, outcome.span.take(), traced, wall)
        && span.sampled
    {
        let mut attributes = vec![
            ("http.request.method", method),
            ("url.path", path),
            (
                "http.response.status_code",
                response.status().as_u16().to_string(),
            ),
            ("response_flags", outcome.flags.join(",")),
        ];
        if let Some(upstream) = outcome.upstream {
            attributes.push(("upstream.address", upstream.to_string()));
        }
        exporter.record(crate::spans::Finished {
            span,
            name,
            start: wall,
            end: std::time::SystemTime::now(),
            attributes,
            error: response.status().is_server_error(),
        });
    }
    Ok(response)
}

async fn respond(
    mut request: Request<RequestBody>,
    downstream: &Downstream,
    app: &Arc<App>,
    outcome: &mut Outcome,
) -> Response<Body> {
    let snapshot = app.store.get();
    // The request as it came (a cheap clone), which the path and query below borrow from.
    let uri = request.uri().clone();
    let Some(path) = normalize::normalize(uri.path()) else {
        return local(StatusCode::BAD_REQUEST, "malformed path\n");
    };
    if path != uri.path() {
        set_path(&mut request, &path);
    }
    outcome.span = Some(trace::propagate(
        request.headers_mut(),
        app.config.trace_sampling,
    ));
    let authority = authority_of(&request);
    if let Some(denied) = authorize(&request, &path, authority, downstream, app, &snapshot) {
        return denied;
    }
    let view = RequestView {
        method: request.method().as_str(),
        path: &path,
        query: uri.query(),
        authority,
        scheme: "http",
        headers: request.headers(),
        port: downstream.target.port(),
        source_labels: downstream.source_workload.as_ref().map(|w| &*w.labels),
        source_namespace: downstream
            .source_workload
            .as_ref()
            .map(|w| w.namespace.as_str()),
    };
    let lookup = match &downstream.destination {
        Destination::Service(service) => snapshot.routes.find(&service.hostname, &view),
        Destination::Workload(_) => Lookup::Default,
        Destination::Gateway(_) => {
            let port = downstream.target.port();
            match snapshot
                .ingress_routes
                .gateway_host(bare_host(authority), port)
            {
                Some(key) => snapshot.ingress_routes.find(&key, &view),
                None => Lookup::NoRoute,
            }
        }
    };
    let route = match lookup {
        Lookup::NoRoute => {
            outcome.flags.push("NR");
            return local(StatusCode::NOT_FOUND, "no route matched the request\n");
        }
        Lookup::Default => None,
        Lookup::Route(route) => Some(route),
    };
    // An allowed CORS origin, whose responses get the policy's headers.
    let mut cors_origin = None;
    let mark_cors = |response: &mut Response<Body>, origin: &Option<HeaderValue>| {
        if let (Some(cors), Some(origin)) = (route.and_then(|r| r.cors.as_ref()), origin) {
            cors.response_headers(origin.clone(), response.headers_mut());
        }
    };
    if let Some(route) = route {
        outcome.route = Some(route.origin.clone());
        if let Some(cors) = &route.cors {
            match cors.judge(request.method(), request.headers()) {
                Verdict::Pass => {}
                Verdict::Preflight(headers) => {
                    let mut answer = local(StatusCode::OK, "");
                    answer.headers_mut().extend(headers);
                    return answer;
                }
                Verdict::Allowed(origin) => cors_origin = Some(origin),
            }
        }
        if let Some(mut answer) = inject_fault(route.fault.as_ref(), outcome).await {
            mark_cors(&mut answer, &cors_origin);
            return answer;
        }
    }
    let uri_query = uri.query().map(str::to_owned);
    let mut response = match route.map(|r| &r.action) {
        Some(Action::Redirect {
            uri,
            replace_prefix,
            authority: to_authority,
            port,
            scheme,
            status,
        }) => {
            let mut new_path = match (uri, route.and_then(|r| matched_prefix(r, &path))) {
                (Some(uri), Some(prefix)) if *replace_prefix => {
                    self::replace_prefix(&path, prefix, uri)
                }
                (Some(uri), _) => uri.clone(),
                (None, _) => path.to_string(),
            };
            // The query goes along unless the new path brings its own, as in Envoy.
            if let Some(query) = uri_query.as_deref()
                && !new_path.contains('?')
            {
                new_path = format!("{new_path}?{query}");
            }
            let location = redirect_location(
                scheme.as_deref().unwrap_or("http"),
                to_authority.as_deref().unwrap_or(authority),
                *port,
                &new_path,
            );
            let mut response = local(*status, "");
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(http::header::LOCATION, value);
            }
            response
        }
        Some(Action::Respond { status, body }) => local(*status, body.clone()),
        Some(Action::Forward(forward)) => {
            forward::forward(
                request,
                forward::Plan::Route(route.expect("a route"), forward),
                downstream,
                app,
                &snapshot,
                outcome,
            )
            .await
        }
        None => {
            let host = match &downstream.destination {
                Destination::Service(service) => Some(service.hostname.clone()),
                Destination::Workload(_) | Destination::Gateway(_) => None,
            };
            forward::forward(
                request,
                forward::Plan::Default(host),
                downstream,
                app,
                &snapshot,
                outcome,
            )
            .await
        }
    };
    if let Some(route) = route {
        route.response_headers.apply(response.headers_mut());
    }
    mark_cors(&mut response, &cors_origin);
    response
}

/// Replaces the request's path (keeping its query): what goes upstream is what was judged.
fn set_path<B>(request: &mut Request<B>, path: &str) {
    let uri = request.uri();
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = path_and_query.parse().ok();
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
}

/// The L7 AuthorizationPolicies that name this waypoint (its Gateway) or the destination
/// Service: a denied request gets its 403 answer here and never reaches the destination.
fn authorize<B>(
    request: &Request<B>,
    path: &str,
    authority: &str,
    downstream: &Downstream,
    app: &App,
    snapshot: &crate::store::Snapshot,
) -> Option<Response<Body>> {
    let own = match &downstream.destination {
        Destination::Gateway(gateway) => gateway.as_str(),
        _ => app.config.waypoint.as_deref().unwrap_or_default(),
    };
    let (own_namespace, gateway) = own.split_once('/').unwrap_or(("", own));
    let (namespace, service) = match &downstream.destination {
        Destination::Service(s) => (s.namespace.as_str(), Some(s.name.as_str())),
        Destination::Workload(w) => (w.namespace.as_str(), None),
        Destination::Gateway(_) => (own_namespace, None),
    };
    let host = bare_host(authority);
    let attributes = mesh_core::policy::Request {
        method: request.method().as_str(),
        path,
        host,
        headers: request.headers(),
    };
    let connection = mesh_core::policy::Connection {
        source: downstream.client.as_ref(),
        source_ip: downstream.source.ip(),
        destination_port: downstream.target.port(),
        request: Some(&attributes),
    };
    let targets = mesh_core::policy::Targets {
        namespace,
        gateway,
        class: app.config.gateway_class.as_deref(),
        service,
    };
    match snapshot.policies.authorize_request(&targets, connection) {
        mesh_core::policy::Decision::Allow => None,
        mesh_core::policy::Decision::Deny { policy, reason } => {
            tracing::info!(client = ?downstream.client.as_ref().map(ToString::to_string),
                method = %request.method(), %path, %policy, %reason, "request denied");
            Some(local(StatusCode::FORBIDDEN, "RBAC: access denied\n"))
        }
    }
}

/// An authority without its port.
pub fn bare_host(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => authority,
    }
}

/// The request's authority: `:authority` (HTTP/2) or `Host`.
pub fn authority_of<B>(request: &Request<B>) -> &str {
    authority_of_parts(request.uri(), request.headers())
}

/// The request's authority: the URI's (HTTP/2, absolute form), else its `host` header.
pub fn authority_of_parts<'r>(uri: &'r http::Uri, headers: &'r http::HeaderMap) -> &'r str {
    uri.authority()
        .map(|a| a.as_str())
        .or_else(|| {
            headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or_default()
}

fn redirect_location(scheme: &str, authority: &str, port: Option<u16>, path: &str) -> String {
    let host = match port {
        Some(port) => format!(
            "{}:{port}",
            authority.split(':').next().unwrap_or(authority)
        ),
        None => authority.to_owned(),
    };
    format!("{scheme}://{host}{path}")
}

/// Rolls a percentage: `true` for `percent` of calls.
pub fn roll(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && fastrand::f64() * 100.0 < percent)
}

/// The route's fault: a delay (then the request goes on), or an abort answered here.
async fn inject_fault(fault: Option<&Fault>, outcome: &mut Outcome) -> Option<Response<Body>> {
    let fault = fault?;
    if let Some((delay, percent)) = fault.delay
        && roll(percent)
    {
        outcome.flags.push("DI");
        tokio::time::sleep(delay).await;
    }
    let (abort, percent) = fault.abort?;
    if !roll(percent) {
        return None;
    }
    outcome.flags.push("FI");
    Some(match abort {
        Abort::Http(status) => local(status, "fault filter abort"),
        Abort::Grpc(code) => {
            let mut response = local(StatusCode::OK, "");
            let headers = response.headers_mut();
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            headers.insert("grpc-status", HeaderValue::from(code));
            headers.insert(
                "grpc-message",
                HeaderValue::from_static("fault filter abort"),
            );
            response
        }
    })
}

/// A response made by the waypoint itself.
pub fn local(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut response = Response::new(local_body(body));
    *response.status_mut() = status;
    response
}

/// `path` with its matched `prefix` replaced by `with`: `/v1` + `/x` stays one slash, and
/// `/` replacing `/v1` in `/v1/x` is `/x`.
pub fn replace_prefix(path: &str, prefix: &str, with: &str) -> String {
    let mut joined = format!("{with}{}", &path[prefix.len()..]);
    if joined.starts_with("//") {
        joined.remove(0);
    }
    joined
}

/// Whether this route's matches used a prefix (for `rewrite.uri`): the first prefix among
/// the matches that fits the path.
pub fn matched_prefix<'r>(route: &'r Route, path: &str) -> Option<&'r str> {
    route
        .matches
        .iter()
        .filter_map(|m| m.uri_prefix())
        .find(|prefix| path.starts_with(prefix))
}
