//! Gateway API `HTTPRoute`s attached to Services (the mesh profile), compiled into the same
//! routes as VirtualServices. Where they differ from a VirtualService:
//! - rules are not first-match-wins: every match of every route on a Service is ordered by
//!   the Gateway API's precedence (an exact path, then the longest prefix, then a method,
//!   then more header matches, then more query matches; ties by route name, then rule
//!   order), so the most specific match wins;
//! - `PathPrefix` matches whole path segments (`/foo` fits `/foo/bar`, not `/foobar`);
//! - backends weigh 1 by default, and a rule whose backends all weigh 0, or that has none
//!   and does not redirect, answers 500; no retries unless the rule asks;
//! - a route in another namespace than its Service applies only to clients of its own
//!   namespace (a consumer route).

use std::collections::HashMap;

use http::{HeaderName, StatusCode};
use mesh_controller::resources::{
    common::StringMatch,
    http_route::{
        BackendObjectReference, HeaderModifier, HttpRouteFilter, HttpRouteMatch, HttpRouteRule,
        HttpRouteSpec, ParentReference,
    },
};

use super::{
    Action, Forward, HeaderOps, Match, Mirror, RetryOn, RetryPolicy, Rewrite, Route, StrMatch,
    Target, Weighted,
    headers::{header, header_name},
    parse_duration, qualify,
};

/// Where a route is compiled from.
pub(super) struct Origin<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub domain: &'a str,
}

/// Compiles the HTTPRoutes `(namespace, name, spec)` into routes per Service host, ordered
/// by precedence; an HTTPRoute that does not compile is left out, reported in the errors.
pub(super) fn compile<'a>(
    routes: impl IntoIterator<Item = (&'a str, &'a str, &'a HttpRouteSpec)>,
    domain: &str,
) -> (HashMap<String, Vec<Route>>, Vec<String>) {
    let mut ranked: HashMap<String, Vec<(Rank, Route)>> = HashMap::new();
    let mut errors = Vec::new();
    let mut routes: Vec<_> = routes.into_iter().collect();
    // Ties go to the route first by `namespace/name` (no creation time in local mode).
    routes.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    for (order, (namespace, name, spec)) in routes.into_iter().enumerate() {
        let origin = &Origin {
            namespace,
            name,
            domain,
        };
        let compiled: Result<Vec<_>, String> = spec
            .parent_refs
            .iter()
            .filter(|p| p.is_service())
            .flat_map(|parent| {
                spec.rules.iter().enumerate().map(move |(r, rule)| {
                    compile_rule(rule, parent, origin).map(|routes| (parent, r, routes))
                })
            })
            .collect();
        match compiled {
            Ok(compiled) => {
                for (parent, r, routes) in compiled {
                    let parent_namespace = parent.namespace.as_deref().unwrap_or(namespace);
                    let host = qualify(&parent.name, parent_namespace, domain);
                    for (m, (rank, route)) in routes.into_iter().enumerate() {
                        let rank = Rank {
                            order: (order, r, m),
                            ..rank
                        };
                        ranked.entry(host.clone()).or_default().push((rank, route));
                    }
                }
            }
            Err(error) => errors.push(format!("HTTPRoute {namespace}/{name}: {error}")),
        }
    }
    let hosts = ranked
        .into_iter()
        .map(|(host, mut routes)| {
            routes.sort_by_key(|(rank, _)| *rank);
            (host, routes.into_iter().map(|(_, route)| route).collect())
        })
        .collect();
    (hosts, errors)
}

/// A match's precedence, most specific first when sorted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    /// 0: an exact path; 1: a regular expression; 2: a prefix.
    path_kind: u8,
    /// The path's length, negated so that longer sorts first.
    path_len: isize,
    /// 0 with a method.
    no_method: u8,
    headers: isize,
    query: isize,
    /// Route, rule and match order.
    order: (usize, usize, usize),
}

/// One route per match of `rule` (each ranked on its own), for requests to `parent`.
fn compile_rule(
    rule: &HttpRouteRule,
    parent: &ParentReference,
    at: &Origin<'_>,
) -> Result<Vec<(Rank, Route)>, String> {
    let origin = match &rule.name {
        Some(rule) => format!("{}/{}#{rule}", at.namespace, at.name),
        None => format!("{}/{}", at.namespace, at.name),
    };
    let every = [HttpRouteMatch::default()];
    let matches = match rule.matches.as_slice() {
        [] => &every[..],
        matches => matches,
    };
    let action = action(rule, at)?;
    let (mut headers, mut response_headers) = (HeaderOps::default(), HeaderOps::default());
    for filter in &rule.filters {
        edit_headers(filter, &mut headers, &mut response_headers)?;
    }
    // A consumer route (not in its Service's namespace) is for its own namespace's clients.
    let consumer = parent
        .namespace
        .as_deref()
        .filter(|ns| *ns != at.namespace)
        .map(|_| at.namespace.to_owned());
    matches
        .iter()
        .map(|m| {
            let (rank, mut compiled) = compile_match(m)?;
            compiled.port = parent.port;
            let route = Route {
                origin: origin.clone(),
                matches: vec![compiled],
                action: action.clone(),
                fault: None,
                headers: headers.clone(),
                response_headers: response_headers.clone(),
                cors: None,
                clients: consumer.clone(),
            };
            Ok((rank, route))
        })
        .collect()
}

fn compile_match(m: &HttpRouteMatch) -> Result<(Rank, Match), String> {
    // The same full-match regex as a VirtualService's.
    let regex = |pattern: &str| {
        StrMatch::compile(&StringMatch {
            regex: Some(pattern.to_owned()),
            ..StringMatch::default()
        })
    };
    let value_match = |kind: Option<&str>, value: &str| match kind.unwrap_or("Exact") {
        "Exact" => Ok(StrMatch::Exact(value.to_owned())),
        "RegularExpression" => regex(value),
        other => Err(format!("match type {other} is not supported")),
    };
    let path = m.path.as_ref();
    let value = path.and_then(|p| p.value.as_deref()).unwrap_or("/");
    let (path_kind, uri) = match path
        .and_then(|p| p.type_.as_deref())
        .unwrap_or("PathPrefix")
    {
        "Exact" => (0, Some(StrMatch::Exact(value.to_owned()))),
        "RegularExpression" => (1, Some(regex(value)?)),
        // `/` fits every path; a trailing slash does not count.
        "PathPrefix" => match value.trim_end_matches('/') {
            "" => (2, None),
            prefix => (2, Some(StrMatch::PathPrefix(prefix.to_owned()))),
        },
        other => return Err(format!("path match type {other} is not supported")),
    };
    let headers = m
        .headers
        .iter()
        .map(|h| {
            let name = HeaderName::try_from(h.name.as_str())
                .map_err(|e| format!("header name {:?}: {e}", h.name))?;
            Ok::<_, String>((name, value_match(h.type_.as_deref(), &h.value)?))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let query = m
        .query_params
        .iter()
        .map(|q| Ok::<_, String>((q.name.clone(), value_match(q.type_.as_deref(), &q.value)?)))
        .collect::<Result<Vec<_>, _>>()?;
    let rank = Rank {
        path_kind,
        path_len: -(value.len() as isize),
        no_method: u8::from(m.method.is_none()),
        headers: -(headers.len() as isize),
        query: -(query.len() as isize),
        order: (0, 0, 0),
    };
    let compiled = Match {
        uri,
        method: m
            .method
            .as_ref()
            .map(|method| StrMatch::Exact(method.clone())),
        headers,
        query,
        ..Match::default()
    };
    Ok((rank, compiled))
}

fn action(rule: &HttpRouteRule, at: &Origin<'_>) -> Result<Action, String> {
    if let Some(redirect) = rule
        .filters
        .iter()
        .find_map(|f| f.request_redirect.as_ref())
    {
        let (uri, replace_prefix) = path_modifier(redirect.path.as_ref());
        return Ok(Action::Redirect {
            uri,
            replace_prefix,
            authority: redirect.hostname.clone(),
            port: redirect.port,
            scheme: redirect.scheme.clone(),
            status: StatusCode::from_u16(redirect.status_code.unwrap_or(302))
                .map_err(|e| format!("redirect status: {e}"))?,
        });
    }
    let destinations = rule
        .backend_refs
        .iter()
        .filter(|b| b.weight.unwrap_or(1) > 0)
        .map(|backend| {
            let (mut headers, mut response_headers) = (HeaderOps::default(), HeaderOps::default());
            for filter in &backend.filters {
                edit_headers(filter, &mut headers, &mut response_headers)?;
            }
            Ok::<_, String>(Weighted {
                target: target(&backend.object(), at),
                weight: backend.weight.unwrap_or(1),
                headers,
                response_headers,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if destinations.is_empty() {
        // No backend to send to (or all weigh 0): the Gateway API's answer.
        return Ok(Action::Respond {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: "no backend for this route\n".to_owned(),
        });
    }
    let rewrite = rule.filters.iter().find_map(|f| f.url_rewrite.as_ref());
    let rewrite = rewrite.map(|r| {
        let (uri, replace_prefix) = path_modifier(r.path.as_ref());
        let whole_path = |uri: String| (full_path(), uri.replace('$', "$$"));
        Rewrite {
            uri: uri.clone().filter(|_| replace_prefix),
            uri_regex: uri.filter(|_| !replace_prefix).map(whole_path),
            authority: r.hostname.clone(),
        }
    });
    let mirrors = rule
        .filters
        .iter()
        .filter_map(|f| f.request_mirror.as_ref())
        .map(|m| Mirror {
            target: target(&m.backend_ref, at),
            percent: match (&m.percent, &m.fraction) {
                (Some(percent), _) => f64::from(*percent),
                (None, Some(f)) => {
                    100.0 * f64::from(f.numerator) / f64::from(f.denominator.unwrap_or(100).max(1))
                }
                (None, None) => 100.0,
            },
        })
        .collect();
    let timeouts = rule.timeouts.as_ref();
    // `0s` turns a timeout off.
    let timeout = |text: Option<&String>, what| {
        parse_duration(text, what).map(|t| t.filter(|t| !t.is_zero()))
    };
    let retries = match &rule.retry {
        // The Gateway API retries only when asked to.
        None => RetryPolicy {
            attempts: 0,
            per_try_timeout: None,
            on: RetryOn::default(),
        },
        Some(retry) => RetryPolicy {
            attempts: retry.attempts.unwrap_or(1),
            per_try_timeout: None,
            on: RetryOn {
                statuses: retry.codes.clone(),
                connect_failure: true,
                ..RetryOn::default()
            },
        },
    };
    let per_try_timeout = timeout(
        timeouts.and_then(|t| t.backend_request.as_ref()),
        "backendRequest",
    )?;
    Ok(Action::Forward(Box::new(Forward {
        destinations,
        rewrite,
        timeout: timeout(timeouts.and_then(|t| t.request.as_ref()), "request")?,
        retries: RetryPolicy {
            per_try_timeout,
            ..retries
        },
        mirrors,
    })))
}

/// A regex for the whole path, replaced by `ReplaceFullPath`.
fn full_path() -> regex::Regex {
    regex::Regex::new("^.*$").expect("a valid regex")
}

/// The new path and whether it replaces only the matched prefix.
fn path_modifier(
    path: Option<&mesh_controller::resources::http_route::PathModifier>,
) -> (Option<String>, bool) {
    match path {
        Some(p) if p.type_ == "ReplacePrefixMatch" => (p.replace_prefix_match.clone(), true),
        Some(p) => (p.replace_full_path.clone(), false),
        None => (None, false),
    }
}

fn target(backend: &BackendObjectReference, at: &Origin<'_>) -> Target {
    let namespace = backend.namespace.as_deref().unwrap_or(at.namespace);
    Target {
        host: qualify(&backend.name, namespace, at.domain),
        subset: None,
        port: backend.port,
    }
}

/// Adds a header modifier filter's edits to the request's or the response's.
fn edit_headers(
    filter: &HttpRouteFilter,
    request: &mut HeaderOps,
    response: &mut HeaderOps,
) -> Result<(), String> {
    if let Some(modifier) = &filter.request_header_modifier {
        extend(request, modifier)?;
    }
    if let Some(modifier) = &filter.response_header_modifier {
        extend(response, modifier)?;
    }
    Ok(())
}

fn extend(ops: &mut HeaderOps, modifier: &HeaderModifier) -> Result<(), String> {
    for h in &modifier.set {
        ops.set.push(header(&h.name, &h.value)?);
    }
    for h in &modifier.add {
        ops.add.push(header(&h.name, &h.value)?);
    }
    for name in &modifier.remove {
        ops.remove.push(header_name(name)?);
    }
    Ok(())
}
