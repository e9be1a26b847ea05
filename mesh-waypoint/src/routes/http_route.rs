//! Gateway API `HTTPRoute`s attached to Services (the mesh profile) or to an ingress Gateway,
//! compiled into the same routes as VirtualServices. Where they differ from a VirtualService:
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
use mesh_api::{
    common::StringMatch,
    gateway_api::intersect_hostnames,
    http_route::{
        BackendObjectReference, HeaderModifier, HttpRouteFilter, HttpRouteMatch, HttpRouteRule,
        HttpRouteSpec, ParentReference,
    },
    networking::Server,
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

/// Where an HTTPRoute's rules go for one of its parents: a host of the table, the port they
/// answer on (`None`: any) and, for a consumer route, the clients they are for.
pub(super) struct Attachment {
    pub host: String,
    pub port: Option<u16>,
    pub clients: Option<String>,
}

/// Attachments inside the mesh: a Service parent's host. A route in another namespace than
/// its Service is a consumer route, for its own namespace's clients.
pub(super) fn to_services(
    domain: &str,
) -> impl Fn(&ParentReference, &str, &HttpRouteSpec) -> Vec<Attachment> + '_ {
    move |parent, namespace, _| {
        if !parent.is_service() {
            return Vec::new();
        }
        let parent_namespace = parent.namespace.as_deref().unwrap_or(namespace);
        vec![Attachment {
            host: qualify(&parent.name, parent_namespace, domain),
            port: parent.port,
            clients: (parent_namespace != namespace).then(|| namespace.to_owned()),
        }]
    }
}

/// Attachments at an ingress Gateway (`namespace/name`, its listeners as `servers`): each
/// HTTP or HTTPS listener the parent names (all, without `sectionName` or `port`), under the
/// hostnames the route and the listener share, answering on the listener's port.
pub(super) fn to_gateway<'a>(
    gateway: (&'a str, &'a str),
    servers: &'a [Server],
) -> impl Fn(&ParentReference, &str, &HttpRouteSpec) -> Vec<Attachment> + 'a {
    move |parent, namespace, spec| {
        let names_gateway = parent.is_gateway()
            && (
                parent.namespace.as_deref().unwrap_or(namespace),
                parent.name.as_str(),
            ) == gateway;
        if !names_gateway {
            return Vec::new();
        }
        let listeners = servers.iter().filter(|server| {
            let protocol = server.port.protocol.as_deref().unwrap_or("HTTP");
            matches!(protocol, "HTTP" | "HTTPS")
                && parent
                    .section_name
                    .as_ref()
                    .is_none_or(|section| server.port.name.as_ref() == Some(section))
                && parent
                    .port
                    .is_none_or(|port| u32::from(port) == server.port.number)
        });
        let mut attachments = Vec::new();
        for server in listeners {
            let Ok(port) = u16::try_from(server.port.number) else {
                continue;
            };
            let listener = server
                .hosts
                .first()
                .map(String::as_str)
                .filter(|h| *h != "*");
            let hosts: Vec<String> = match spec.hostnames.as_slice() {
                [] => vec![listener.unwrap_or("*").to_ascii_lowercase()],
                names => names
                    .iter()
                    .filter_map(|name| intersect_hostnames(listener, name))
                    .collect(),
            };
            attachments.extend(hosts.into_iter().map(|host| Attachment {
                host,
                port: Some(port),
                clients: None,
            }));
        }
        attachments
    }
}

/// Compiles the HTTPRoutes `(namespace, name, spec)` into routes per host, where `attach`
/// puts them, ordered by precedence; an HTTPRoute that does not compile is left out,
/// reported in the errors.
pub(super) fn compile<'a>(
    routes: impl IntoIterator<Item = (&'a str, &'a str, &'a HttpRouteSpec)>,
    domain: &str,
    attach: impl Fn(&ParentReference, &str, &HttpRouteSpec) -> Vec<Attachment>,
) -> (HashMap<String, Vec<Route>>, Vec<String>) {
    let mut ranked: HashMap<String, Vec<(Rank, Route)>> = HashMap::new();
    let mut errors = Vec::new();
    let mut routes: Vec<_> = routes.into_iter().collect();
    // Ties go to the route first by `namespace/name` (no creation time in local mode).
    routes.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    for (order, (namespace, name, spec)) in routes.into_iter().enumerate() {
        let attachments: Vec<Attachment> = spec
            .parent_refs
            .iter()
            .flat_map(|parent| attach(parent, namespace, spec))
            .collect();
        if attachments.is_empty() {
            continue;
        }
        let origin = &Origin {
            namespace,
            name,
            domain,
        };
        let compiled: Result<Vec<_>, String> = spec
            .rules
            .iter()
            .map(|rule| compile_rule(rule, origin))
            .collect();
        let rules = match compiled {
            Ok(rules) => rules,
            Err(error) => {
                errors.push(format!("HTTPRoute {namespace}/{name}: {error}"));
                continue;
            }
        };
        for attachment in &attachments {
            for (r, routes) in rules.iter().enumerate() {
                for (m, (rank, route)) in routes.iter().enumerate() {
                    let rank = Rank {
                        order: (order, r, m),
                        ..*rank
                    };
                    let mut route = route.clone();
                    for matcher in &mut route.matches {
                        matcher.port = attachment.port;
                    }
                    route.clients = attachment.clients.clone();
                    let host = ranked.entry(attachment.host.clone()).or_default();
                    host.push((rank, route));
                }
            }
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

/// One route per match of `rule`, each ranked on its own; where it attaches sets its port and
/// clients.
fn compile_rule(rule: &HttpRouteRule, at: &Origin<'_>) -> Result<Vec<(Rank, Route)>, String> {
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
    matches
        .iter()
        .map(|m| {
            let (rank, compiled) = compile_match(m)?;
            let route = Route {
                origin: origin.clone(),
                matches: vec![compiled],
                action: action.clone(),
                fault: None,
                headers: headers.clone(),
                response_headers: response_headers.clone(),
                cors: None,
                clients: None,
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
        no_cluster: StatusCode::INTERNAL_SERVER_ERROR,
    })))
}

/// A regex for the whole path, replaced by `ReplaceFullPath`.
fn full_path() -> regex::Regex {
    regex::Regex::new("^.*$").expect("a valid regex")
}

/// The new path and whether it replaces only the matched prefix.
fn path_modifier(path: Option<&mesh_api::http_route::PathModifier>) -> (Option<String>, bool) {
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
