//! Forwarding: pick a weighted destination, rewrite the request for it, mirror it, and send
//! it with the route's retries and timeouts. The request body streams through (see
//! `upstream::replay`): a retry sends it again only while it was small enough to keep.

use std::{borrow::Cow, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version, header,
    uri::PathAndQuery,
};
use http_body_util::BodyExt as _;

use super::{Destination, Downstream, Outcome, local, matched_prefix, roll};
use crate::{
    app::App,
    routes::{Forward, RetryPolicy, Route, Target},
    store::Snapshot,
    upstream::{Body, Failure, RequestBody, Resolved, cluster::HashKey, replay::Source},
};

/// Headers that describe one hop, not the request (RFC 9110 7.6.1), as names parsed once.
/// `expect: 100-continue` is answered on the client's hop (hyper's server sends the 100 when
/// the body is first read) and not asked of the endpoint, as Envoy does by default.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::EXPECT,
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
    header::TRAILER,
];

pub enum Plan<'r> {
    /// A VirtualService route.
    Route(&'r Route, &'r Forward),
    /// No VirtualService: the service itself (its hostname), or the one workload.
    Default(Option<String>),
}

/// The request as it will be sent upstream, before per-destination edits.
struct Prepared {
    method: http::Method,
    version: Version,
    /// Origin form (`/path?query`), as an HTTP/1.1 upstream gets it.
    target: Uri,
    authority: String,
    headers: HeaderMap,
    body: Source,
}

impl Prepared {
    fn path_and_query(&self) -> &str {
        self.target
            .path_and_query()
            .map_or("/", PathAndQuery::as_str)
    }
}

/// `uri` in origin form: as it is when it already is (HTTP/1.1), else its path and query
/// (HTTP/2's absolute form), without copying either.
fn origin_form(uri: &Uri) -> Uri {
    if uri.scheme().is_none() && uri.authority().is_none() {
        return uri.clone();
    }
    uri.path_and_query()
        .cloned()
        .map_or_else(|| Uri::from_static("/"), Uri::from)
}

pub async fn forward(
    request: Request<super::RequestBody>,
    plan: Plan<'_>,
    downstream: &Downstream,
    app: &Arc<App>,
    snapshot: &Arc<Snapshot>,
    outcome: &mut Outcome,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let body = match Source::new(body).await {
        Ok(body) => body,
        Err(error) => {
            tracing::debug!(%error, "request body not read");
            return local(StatusCode::BAD_REQUEST, "request body broken\n");
        }
    };
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    let mut prepared = Prepared {
        method: parts.method,
        version: parts.version,
        target: origin_form(&parts.uri),
        authority: super::authority_of_parts(&parts.uri, &headers).to_owned(),
        headers,
        body,
    };
    let (target, forward, weighted_headers) = match plan {
        Plan::Default(host) => {
            let target = host.map(|host| {
                Cow::Owned(Target {
                    host,
                    subset: None,
                    port: None,
                })
            });
            (target, None, None)
        }
        Plan::Route(route, forward) => {
            let chosen = choose(forward);
            rewrite(&mut prepared, route, forward);
            route.headers.apply(&mut prepared.headers);
            chosen.headers.apply(&mut prepared.headers);
            (
                Some(Cow::Borrowed(&chosen.target)),
                Some(forward),
                Some(&chosen.response_headers),
            )
        }
    };
    outcome.service = target.as_ref().map(|t| t.host.clone());
    let resolved = match &target {
        Some(target) => app.upstreams.resolve(
            snapshot,
            &app.store.workloads,
            target,
            downstream.target.port(),
        ),
        None => match &downstream.destination {
            Destination::Workload(workload) => {
                Ok(app.upstreams.resolve_workload(workload, downstream.target))
            }
            Destination::Service(_) | Destination::Gateway(_) => {
                unreachable!("services and gateway routes always have a target")
            }
        },
    };
    let resolved = match resolved {
        Ok(resolved) => resolved,
        Err(failure) => {
            let status = forward.map_or(StatusCode::SERVICE_UNAVAILABLE, |f| f.no_cluster);
            return answer(status, failure, outcome);
        }
    };
    if let Some(forward) = forward {
        for mirror in &forward.mirrors {
            if roll(mirror.percent) {
                send_mirror(app, snapshot, &mirror.target, downstream, &prepared);
            }
        }
    }
    let retries = forward.map_or_else(RetryPolicy::istio_default, |f| f.retries.clone());
    let attempts = tries(&resolved, &retries, &prepared, downstream, app, outcome);
    let mut response = match forward.and_then(|f| f.timeout) {
        Some(timeout) => match tokio::time::timeout(timeout, attempts).await {
            Ok(response) => response,
            Err(_) => {
                outcome.flags.push("UT");
                local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout\n")
            }
        },
        None => attempts.await,
    };
    if let Some(ops) = weighted_headers {
        ops.apply(response.headers_mut());
    }
    response
}

/// Sends with retries; the response of the last try, or an error answer.
async fn tries(
    resolved: &Resolved,
    policy: &RetryPolicy,
    prepared: &Prepared,
    downstream: &Downstream,
    app: &Arc<App>,
    outcome: &mut Outcome,
) -> Response<Body> {
    let key = hash_key(resolved, prepared, downstream);
    let limits = &resolved.policy.limits;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        outcome.attempts = attempt;
        let Some(endpoint) =
            resolved
                .cluster
                .pick(&resolved.endpoints, &resolved.policy, key.as_deref())
        else {
            return failed(
                Failure::NoHealthyUpstream(format!("{} endpoints", resolved.endpoints.len())),
                outcome,
            );
        };
        let Some(body) = prepared.body.for_try() else {
            // A try given up on kept sending while this one waited, past the keep limit.
            outcome.flags.push("URX");
            return local(
                StatusCode::BAD_GATEWAY,
                "request body cannot be sent again\n",
            );
        };
        outcome.upstream = Some(endpoint.addr);
        outcome.upstream_workload = endpoint.workload.clone();
        let request = build(prepared, body);
        let sent = app.upstreams.send(resolved, endpoint, request);
        let result = match policy.per_try_timeout {
            Some(limit) => tokio::time::timeout(limit, sent).await.map_err(|_| limit),
            None => Ok(sent.await),
        };
        let more = attempt <= policy.attempts;
        let retry_slot = || {
            let retries = resolved
                .cluster
                .active_retries
                .load(std::sync::atomic::Ordering::Acquire);
            limits.max_retries.is_none_or(|max| retries < max) && prepared.body.replayable()
        };
        let total = resolved.endpoints.len();
        match result {
            Ok(Ok(response)) => {
                let status = response.status();
                resolved.cluster.record(
                    endpoint.addr,
                    &resolved.policy,
                    status.is_server_error(),
                    matches!(status.as_u16(), 502..=504),
                    total,
                );
                if more && policy.on.status(status) && retry_slot() {
                    tracing::debug!(%status, attempt, upstream = %endpoint.addr, "retrying");
                    drop(response);
                    backoff(attempt).await;
                    continue;
                }
                if attempt > 1 && policy.on.status(status) {
                    outcome.flags.push("URX");
                }
                return response;
            }
            Ok(Err(failure)) => {
                let retriable = match &failure {
                    Failure::Connect { .. } => policy.on.connect_failure,
                    Failure::Reset { .. } => policy.on.reset || policy.on.refused_stream,
                    _ => false,
                };
                if matches!(failure, Failure::Connect { .. } | Failure::Reset { .. }) {
                    resolved
                        .cluster
                        .record(endpoint.addr, &resolved.policy, true, true, total);
                }
                tracing::debug!(%failure, attempt, "upstream try failed");
                if more && retriable && retry_slot() {
                    backoff(attempt).await;
                    continue;
                }
                if attempt > 1 {
                    outcome.flags.push("URX");
                }
                return failed(failure, outcome);
            }
            Err(limit) => {
                tracing::debug!(?limit, attempt, upstream = %endpoint.addr, "try timed out");
                resolved
                    .cluster
                    .record(endpoint.addr, &resolved.policy, true, true, total);
                if more && retry_slot() {
                    continue;
                }
                outcome.flags.push("UT");
                return local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout\n");
            }
        }
    }
}

/// Envoy's retry back-off: 25 ms base, doubling, with jitter.
async fn backoff(attempt: u32) {
    let base = 25u64 << (attempt - 1).min(4);
    tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=base))).await;
}

fn failed(failure: Failure, outcome: &mut Outcome) -> Response<Body> {
    answer(StatusCode::SERVICE_UNAVAILABLE, failure, outcome)
}

fn answer(status: StatusCode, failure: Failure, outcome: &mut Outcome) -> Response<Body> {
    outcome.flags.push(failure.flag());
    tracing::debug!(%failure, "answered locally");
    local(status, format!("{failure}\n"))
}

/// The weighted destination this request goes to.
fn choose(forward: &Forward) -> &crate::routes::Weighted {
    crate::routes::pick_weighted(&forward.destinations, |d| d.weight)
}

fn rewrite(prepared: &mut Prepared, route: &Route, forward: &Forward) {
    let Some(rewrite) = &forward.rewrite else {
        return;
    };
    let (path, query) = match prepared.path_and_query().split_once('?') {
        Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
        None => (prepared.path_and_query().to_owned(), None),
    };
    let mut new_path = path.clone();
    if let Some(uri) = &rewrite.uri {
        new_path = match matched_prefix(route, &path) {
            Some(prefix) => super::replace_prefix(&path, prefix, uri),
            None => uri.clone(),
        };
    }
    if let Some((regex, replacement)) = &rewrite.uri_regex {
        new_path = regex
            .replace_all(&new_path, replacement.as_str())
            .into_owned();
    }
    let rewritten = match query {
        Some(query) => format!("{new_path}?{query}"),
        None => new_path,
    };
    prepared.target = rewritten.parse().unwrap_or_else(|_| Uri::from_static("/"));
    if let Some(authority) = &rewrite.authority {
        prepared.authority = authority.clone();
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Names the client listed in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|v| HeaderName::from_bytes(v.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        // gRPC needs `te: trailers` end to end.
        if name == header::TE
            && headers
                .get(header::TE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"))
        {
            continue;
        }
        headers.remove(name);
    }
}

/// The request for one try, with that try's view of the body.
fn build(prepared: &Prepared, body: RequestBody) -> Request<RequestBody> {
    let h2 = prepared.version == Version::HTTP_2;
    let mut request = Request::new(body);
    *request.method_mut() = prepared.method.clone();
    *request.uri_mut() = if h2 {
        format!("http://{}{}", prepared.authority, prepared.path_and_query())
            .parse()
            .unwrap_or_else(|_| Uri::from_static("/"))
    } else {
        prepared.target.clone()
    };
    *request.version_mut() = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    *request.headers_mut() = prepared.headers.clone();
    // HTTP/1.1 names the authority in `host`; it is rewritten only when it differs.
    let host = request
        .headers()
        .get(header::HOST)
        .map(HeaderValue::as_bytes);
    if !h2
        && host != Some(prepared.authority.as_bytes())
        && let Ok(host) = prepared.authority.parse()
    {
        request.headers_mut().insert(header::HOST, host);
    }
    request
}

/// The consistent-hash key of a request, when its cluster balances by one.
fn hash_key(resolved: &Resolved, prepared: &Prepared, downstream: &Downstream) -> Option<String> {
    let crate::upstream::cluster::Balance::Hash(key) = &resolved.policy.balance else {
        return None;
    };
    match key {
        HashKey::Header(name) => prepared
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        HashKey::Cookie(name) => prepared
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name).then(|| v.to_owned())
            }),
        HashKey::Query(name) => prepared
            .path_and_query()
            .split_once('?')
            .and_then(|(_, query)| {
                query.split('&').find_map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (k == name).then(|| v.to_owned())
                })
            }),
        HashKey::SourceIp => Some(downstream.source.ip().to_string()),
    }
}

/// Sends a copy to `target` and forgets it: its response (or failure) is dropped, and it
/// never delays the original. The copy's authority gets Envoy's `-shadow` suffix.
/// How much of a mirror's answer is read (and dropped) so its connection can be reused, and
/// for how long; past either the connection is closed instead.
const MIRROR_RESPONSE_DRAIN: usize = 1 << 20;
const MIRROR_RESPONSE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn send_mirror(
    app: &Arc<App>,
    snapshot: &Arc<Snapshot>,
    target: &Target,
    downstream: &Downstream,
    prepared: &Prepared,
) {
    let resolved = match app.upstreams.resolve(
        snapshot,
        &app.store.workloads,
        target,
        downstream.target.port(),
    ) {
        Ok(resolved) => resolved,
        Err(failure) => {
            tracing::debug!(%failure, "mirror target unknown");
            return;
        }
    };
    let Some(endpoint) = resolved
        .cluster
        .pick(&resolved.endpoints, &resolved.policy, None)
        .cloned()
    else {
        return;
    };
    let Some(body) = prepared.body.for_mirror() else {
        tracing::debug!("request body already streaming: not mirrored");
        return;
    };
    let copy = Prepared {
        method: prepared.method.clone(),
        version: prepared.version,
        target: prepared.target.clone(),
        authority: shadow(&prepared.authority),
        headers: prepared.headers.clone(),
        body: Source::Whole(Bytes::new()),
    };
    let request = build(&copy, body);
    let app = app.clone();
    tokio::spawn(async move {
        match app.upstreams.send(&resolved, &endpoint, request).await {
            Ok(response) => {
                // Read to the end (the connection can then be reused) without keeping any of
                // it, and not past a bound: a mirror target that answers without end is cut.
                let drain = async {
                    let mut body = response.into_body();
                    let mut read = 0usize;
                    while let Some(Ok(frame)) = body.frame().await {
                        read += frame.data_ref().map_or(0, Bytes::len);
                        if read > MIRROR_RESPONSE_DRAIN {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(MIRROR_RESPONSE_WAIT, drain).await;
            }
            Err(failure) => tracing::debug!(%failure, "mirrored request failed"),
        }
    });
}

fn shadow(authority: &str) -> String {
    match authority.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => format!("{host}-shadow:{port}"),
        _ => format!("{authority}-shadow"),
    }
}
