//! A VirtualService's `http` routes compiled: matches, the action (forward to weighted
//! destinations, redirect or direct response), rewrites, retries, mirrors, faults, header
//! edits and CORS.

use http::StatusCode;
use std::collections::HashMap;

use mesh_api::{
    delegate,
    {
        common::{Destination, Percent},
        virtual_service::{Delegate, GRPC_STATUSES, HttpRoute, VirtualServiceSpec},
    },
};

use super::{
    Action, Cors, Forward, HeaderOps, Match, Mirror, RetryOn, RetryPolicy, Rewrite, Route, Scope,
    Target, Weighted, fault, parse_duration, qualify,
};

pub(super) fn percent(p: Option<&Percent>) -> f64 {
    p.map_or(100.0, |p| p.value.clamp(0.0, 100.0))
}

pub(super) fn target(destination: &Destination, namespace: &str, domain: &str) -> Target {
    Target {
        host: qualify(&destination.host, namespace, domain),
        subset: destination.subset.clone(),
        port: destination
            .port
            .as_ref()
            .and_then(|p| p.number)
            .and_then(|n| u16::try_from(n).ok()),
    }
}

/// A root route's delegate's routes, each narrowed by the root route (`delegate::merge`);
/// their hosts are the delegate's namespace's. A delegate that is missing yields nothing:
/// the root route has no effect until it appears.
pub(super) fn compile_delegated(
    root: &HttpRoute,
    to: &Delegate,
    namespace: &str,
    delegates: &HashMap<(&str, &str), &VirtualServiceSpec>,
    domain: &str,
    scope: Scope<'_>,
) -> Vec<Result<Option<Route>, String>> {
    let delegate_namespace = to.namespace.as_deref().unwrap_or(namespace);
    let Some(spec) = delegates.get(&(delegate_namespace, to.name.as_str())) else {
        return Vec::new();
    };
    let origin = format!("{delegate_namespace}/{}", to.name);
    spec.http
        .iter()
        .filter_map(|leaf| delegate::merge(root, leaf))
        .map(|merged| compile_route(&merged, delegate_namespace, domain, &origin, scope))
        .collect()
}

/// The route as it applies in `scope` (the mesh, or an ingress Gateway): `None` when every
/// one of its matches names other `gateways` (a route for the mesh only is not served at an
/// ingress, nor an ingress's in the mesh).
pub(super) fn compile_route(
    http: &HttpRoute,
    namespace: &str,
    domain: &str,
    origin: &str,
    scope: Scope<'_>,
) -> Result<Option<Route>, String> {
    let origin = match &http.name {
        Some(name) => format!("{origin}#{name}"),
        None => origin.to_owned(),
    };
    let in_scope: Vec<_> = http
        .matches
        .iter()
        .filter(|m| m.gateways.is_empty() || scope.includes(namespace, &m.gateways))
        .collect();
    if in_scope.is_empty() && !http.matches.is_empty() {
        return Ok(None);
    }
    let matches = in_scope
        .into_iter()
        .map(Match::compile)
        .collect::<Result<Vec<_>, _>>()?;
    let action = if let Some(redirect) = &http.redirect {
        Action::Redirect {
            uri: redirect.uri.clone(),
            replace_prefix: false,
            authority: redirect.authority.clone(),
            port: redirect.port.and_then(|p| u16::try_from(p).ok()),
            scheme: redirect.scheme.clone(),
            status: redirect
                .redirect_code
                .and_then(|c| StatusCode::from_u16(c as u16).ok())
                .unwrap_or(StatusCode::MOVED_PERMANENTLY),
        }
    } else if let Some(direct) = &http.direct_response {
        Action::Respond {
            status: StatusCode::from_u16(direct.status as u16)
                .map_err(|e| format!("directResponse status: {e}"))?,
            body: direct
                .body
                .as_ref()
                .and_then(|b| b.string.clone())
                .unwrap_or_default(),
        }
    } else {
        let destinations = http
            .route
            .iter()
            .map(|d| {
                Ok::<_, String>(Weighted {
                    target: target(&d.destination, namespace, domain),
                    // One destination without a weight takes everything.
                    weight: d.weight.map_or(100, |w| w.max(0) as u32),
                    headers: HeaderOps::compile(
                        d.headers.as_ref().and_then(|h| h.request.as_ref()),
                    )?,
                    response_headers: HeaderOps::compile(
                        d.headers.as_ref().and_then(|h| h.response.as_ref()),
                    )?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if destinations.is_empty() {
            return Err("a route with no destination, redirect or direct response".to_owned());
        }
        let rewrite = http
            .rewrite
            .as_ref()
            .map(|r| {
                Ok::<_, String>(Rewrite {
                    uri: r.uri.clone(),
                    uri_regex: r
                        .uri_regex_rewrite
                        .as_ref()
                        .map(|rr| {
                            regex::Regex::new(&rr.pattern)
                                .map(|re| (re, rr.rewrite.clone()))
                                .map_err(|e| format!("uriRegexRewrite: {e}"))
                        })
                        .transpose()?,
                    authority: r.authority.clone(),
                })
            })
            .transpose()?;
        let retries = match &http.retries {
            None => RetryPolicy::istio_default(),
            Some(r) => RetryPolicy {
                attempts: r.attempts.max(0) as u32,
                per_try_timeout: parse_duration(r.per_try_timeout.as_ref(), "perTryTimeout")?,
                on: RetryOn::parse(
                    r.retry_on
                        .as_deref()
                        .unwrap_or("connect-failure,refused-stream,503"),
                ),
            },
        };
        let mut mirrors: Vec<Mirror> = http
            .mirrors
            .iter()
            .map(|m| Mirror {
                target: target(&m.destination, namespace, domain),
                percent: percent(m.percentage.as_ref()),
            })
            .collect();
        if let Some(mirror) = &http.mirror {
            mirrors.push(Mirror {
                target: target(mirror, namespace, domain),
                percent: percent(http.mirror_percentage.as_ref()),
            });
        }
        Action::Forward(Box::new(Forward {
            destinations,
            rewrite,
            timeout: parse_duration(http.timeout.as_ref(), "timeout")?,
            retries,
            mirrors,
            no_cluster: StatusCode::SERVICE_UNAVAILABLE,
        }))
    };
    let fault = http.fault.as_ref().map(fault::compile).transpose()?;
    let headers = http.headers.as_ref();
    Ok(Some(Route {
        origin,
        matches,
        action,
        fault,
        headers: HeaderOps::compile(headers.and_then(|h| h.request.as_ref()))?,
        response_headers: HeaderOps::compile(headers.and_then(|h| h.response.as_ref()))?,
        cors: http.cors_policy.as_ref().map(Cors::compile).transpose()?,
        clients: None,
    }))
}

/// A gRPC status by name (as Istio accepts them, any case) or number.
pub(super) fn grpc_code(name: &str) -> Result<u32, String> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    GRPC_STATUSES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(name))
        .map(|i| i as u32)
        .ok_or_else(|| format!("unknown gRPC status {name}"))
}
