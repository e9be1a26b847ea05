//! The route table: VirtualServices compiled, per destination host, into an ordered list of
//! routes; the first whose matches fit a request decides what happens to it. A host no
//! VirtualService names gets the default route: straight to the service itself.
//!
//! # Layout
//! - `cors`: a route's CORS policy (preflights answered here, responses marked);
//! - `fault`: fault injection (delay, abort);
//! - `headers`: header edits (set, add, remove);
//! - `matching`: string, header, query and source matches;
//! - `retry`: retry policies and the failures they retry;
//! - `tcp`: `tls` and `tcp` routes, for connections carried as TCP;
//! - `tests`: compiled behaviour on Istio's tutorial examples.

mod cors;
mod fault;
mod headers;
mod matching;
mod retry;
mod tcp;
#[cfg(test)]
mod tests;

use std::{collections::HashMap, time::Duration};

use http::StatusCode;
use mesh_controller::{
    config::duration,
    resources::{
        common::{Destination, Percent},
        virtual_service::{GRPC_STATUSES, HttpRoute, VirtualServiceSpec},
    },
};

pub use self::{
    cors::{Cors, Verdict},
    headers::HeaderOps,
    matching::{Match, RequestView, StrMatch},
    retry::{RetryOn, RetryPolicy},
    tcp::{Connection as TcpConnection, TcpRoute},
};

/// Hostnames are fully qualified in the table: `reviews` in namespace `bookinfo` is
/// `reviews.bookinfo.svc.<domain>`.
pub fn qualify(host: &str, namespace: &str, domain: &str) -> String {
    match host.split('.').count() {
        1 => format!("{host}.{namespace}.svc.{domain}"),
        2 => format!("{host}.svc.{domain}"),
        _ => host.to_owned(),
    }
}

#[derive(Debug, Default)]
pub struct RouteTable {
    /// Host -> its routes, in the VirtualService's order. Mesh hosts are fully qualified;
    /// a gateway's are as written (lower case), wildcards included.
    hosts: HashMap<String, Vec<Route>>,
    /// Host -> its `tls` then its `tcp` routes (inside the mesh only), each in the
    /// VirtualService's order.
    tcp: HashMap<String, Vec<TcpRoute>>,
}

/// Which VirtualServices a table is for.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    /// Traffic inside the mesh (`gateways` empty or naming `mesh`).
    Mesh,
    /// An ingress Gateway, `namespace` and `name`.
    Gateway { namespace: &'a str, name: &'a str },
}

impl Scope<'_> {
    fn includes(&self, vs_namespace: &str, gateways: &[String]) -> bool {
        match self {
            Scope::Mesh => gateways.is_empty() || gateways.iter().any(|g| g == "mesh"),
            Scope::Gateway { namespace, name } => {
                gateways.iter().any(|g| match g.split_once('/') {
                    Some((ns, n)) => ns == *namespace && n == *name,
                    None => g == name && vs_namespace == *namespace,
                })
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Route {
    /// `namespace/name` of the VirtualService, and the route's own name: metrics and logs.
    pub origin: String,
    /// Any one of these fits (none: every request fits).
    pub matches: Vec<Match>,
    pub action: Action,
    pub fault: Option<Fault>,
    pub headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub cors: Option<Cors>,
}

#[derive(Clone, Debug)]
pub enum Action {
    Forward(Box<Forward>),
    Redirect {
        uri: Option<String>,
        authority: Option<String>,
        port: Option<u16>,
        scheme: Option<String>,
        status: StatusCode,
    },
    Respond {
        status: StatusCode,
        body: String,
    },
}

#[derive(Clone, Debug)]
pub struct Forward {
    pub destinations: Vec<Weighted>,
    pub rewrite: Option<Rewrite>,
    /// The whole request, retries included.
    pub timeout: Option<Duration>,
    pub retries: RetryPolicy,
    pub mirrors: Vec<Mirror>,
}

#[derive(Clone, Debug)]
pub struct Weighted {
    pub target: Target,
    /// Out of the route's total (validated to be 100 when there are several).
    pub weight: u32,
    pub headers: HeaderOps,
    pub response_headers: HeaderOps,
}

/// Where a request goes: a service host, optionally one of its DestinationRule subsets, on a
/// port (`None`: the port the request came in on).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<u16>,
}

#[derive(Clone, Debug)]
pub struct Rewrite {
    /// Replaces the part of the path the route's prefix (or exact) match matched; the whole
    /// path when the match was not a prefix.
    pub uri: Option<String>,
    pub uri_regex: Option<(regex::Regex, String)>,
    pub authority: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Mirror {
    pub target: Target,
    /// Share of requests mirrored, 0.0 to 100.0.
    pub percent: f64,
}

#[derive(Clone, Debug, Default)]
pub struct Fault {
    pub delay: Option<(Duration, f64)>,
    pub abort: Option<(Abort, f64)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abort {
    Http(StatusCode),
    /// A gRPC status code, answered as HTTP 200 with `grpc-status`.
    Grpc(u32),
}

fn percent(p: Option<&Percent>) -> f64 {
    p.map_or(100.0, |p| p.value.clamp(0.0, 100.0))
}

fn parse_duration(text: Option<&String>, what: &str) -> Result<Option<Duration>, String> {
    text.map(|t| duration::parse(t).map_err(|e| format!("{what}: {e}")))
        .transpose()
}

impl RouteTable {
    /// Compiles `(namespace, name, spec)` VirtualServices (already validated by the
    /// controller; anything still wrong leaves that VirtualService out, reported in the
    /// returned errors). The first VirtualService for a host wins, as the controller decided.
    pub fn compile<'a>(
        virtual_services: impl IntoIterator<Item = (&'a str, &'a str, &'a VirtualServiceSpec)>,
        domain: &str,
        scope: Scope<'_>,
    ) -> (Self, Vec<String>) {
        let mut table = RouteTable::default();
        let mut errors = Vec::new();
        for (namespace, name, spec) in virtual_services {
            if !scope.includes(namespace, &spec.gateways) {
                continue;
            }
            let origin = format!("{namespace}/{name}");
            let routes: Result<Vec<Route>, String> = spec
                .http
                .iter()
                .map(|http| compile_route(http, namespace, domain, &origin))
                .collect();
            let tcp: Result<Vec<TcpRoute>, String> = match scope {
                Scope::Mesh => {
                    let tls = spec
                        .tls
                        .iter()
                        .map(|tls| TcpRoute::compile_tls(tls, namespace, domain, &origin));
                    let tcp = spec
                        .tcp
                        .iter()
                        .map(|tcp| TcpRoute::compile(tcp, namespace, domain, &origin));
                    tls.chain(tcp).collect()
                }
                Scope::Gateway { .. } => Ok(Vec::new()),
            };
            match routes.and_then(|routes| Ok((routes, tcp?))) {
                Ok((routes, tcp)) => {
                    for host in &spec.hosts {
                        let host = match scope {
                            Scope::Mesh => qualify(host, namespace, domain),
                            Scope::Gateway { .. } => host.to_ascii_lowercase(),
                        };
                        // A VirtualService with only `tcp` or `tls` routes leaves the host's
                        // HTTP on the default route.
                        if !routes.is_empty() || (spec.tcp.is_empty() && spec.tls.is_empty()) {
                            table
                                .hosts
                                .entry(host.clone())
                                .or_insert_with(|| routes.clone());
                        }
                        if !tcp.is_empty() {
                            table.tcp.entry(host).or_insert_with(|| tcp.clone());
                        }
                    }
                }
                Err(error) => errors.push(format!("VirtualService {origin}: {error}")),
            }
        }
        (table, errors)
    }

    /// The routes for `host`, `None` when no VirtualService names it.
    pub fn routes(&self, host: &str) -> Option<&[Route]> {
        self.hosts.get(host).map(Vec::as_slice)
    }

    /// The first `tcp` route for `host` that fits `connection`; `None` sends it to the
    /// service itself.
    pub fn tcp_route(&self, host: &str, connection: &TcpConnection<'_>) -> Option<&TcpRoute> {
        self.tcp.get(host)?.iter().find(|r| r.fits(connection))
    }

    /// Whether `host` has `tls` routes, so that its TLS connections' server name counts.
    pub fn reads_sni(&self, host: &str) -> bool {
        self.tcp
            .get(host)
            .is_some_and(|routes| routes.iter().any(TcpRoute::reads_sni))
    }

    /// A gateway's host as a request names it (`Host` without its port): the exact host,
    /// else the longest matching `*.suffix`, else `*`.
    pub fn gateway_host(&self, host: &str) -> Option<String> {
        let host = host.to_ascii_lowercase();
        if self.hosts.contains_key(&host) {
            return Some(host);
        }
        let mut labels = host.as_str();
        while let Some((_, rest)) = labels.split_once('.') {
            let wildcard = format!("*.{rest}");
            if self.hosts.contains_key(&wildcard) {
                return Some(wildcard);
            }
            labels = rest;
        }
        self.hosts.contains_key("*").then(|| "*".to_owned())
    }

    /// The first route for `host` that fits `request`. `None` when the host has routes but
    /// none fits (answered 404, as Envoy does), or has no routes (`Some` of none: use the
    /// default route).
    pub fn find<'t>(&'t self, host: &str, request: &RequestView<'_>) -> Lookup<'t> {
        match self.hosts.get(host) {
            None => Lookup::Default,
            Some(routes) => routes
                .iter()
                .find(|route| {
                    route.matches.is_empty() || route.matches.iter().any(|m| m.fits(request))
                })
                .map_or(Lookup::NoRoute, Lookup::Route),
        }
    }
}

/// What the table says about a request.
#[derive(Debug)]
pub enum Lookup<'t> {
    Route(&'t Route),
    /// No VirtualService for the host: to the service itself.
    Default,
    /// The host's VirtualService has no route for this request.
    NoRoute,
}

/// One of `items` chosen at random in proportion to `weight`; the first when all weigh
/// nothing. `items` must not be empty.
pub fn pick_weighted<T>(items: &[T], weight: impl Fn(&T) -> u32) -> &T {
    let total: u32 = items.iter().map(&weight).sum();
    if total == 0 {
        return &items[0];
    }
    let mut roll = fastrand::u32(0..total);
    for item in items {
        if roll < weight(item) {
            return item;
        }
        roll -= weight(item);
    }
    &items[items.len() - 1]
}

fn target(destination: &Destination, namespace: &str, domain: &str) -> Target {
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

fn compile_route(
    http: &HttpRoute,
    namespace: &str,
    domain: &str,
    origin: &str,
) -> Result<Route, String> {
    let origin = match &http.name {
        Some(name) => format!("{origin}#{name}"),
        None => origin.to_owned(),
    };
    let matches = http
        .matches
        .iter()
        .map(Match::compile)
        .collect::<Result<Vec<_>, _>>()?;
    let action = if let Some(redirect) = &http.redirect {
        Action::Redirect {
            uri: redirect.uri.clone(),
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
        }))
    };
    let fault = http.fault.as_ref().map(fault::compile).transpose()?;
    let headers = http.headers.as_ref();
    Ok(Route {
        origin,
        matches,
        action,
        fault,
        headers: HeaderOps::compile(headers.and_then(|h| h.request.as_ref()))?,
        response_headers: HeaderOps::compile(headers.and_then(|h| h.response.as_ref()))?,
        cors: http.cors_policy.as_ref().map(Cors::compile).transpose()?,
    })
}

/// A gRPC status by name (as Istio accepts them, any case) or number.
fn grpc_code(name: &str) -> Result<u32, String> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    GRPC_STATUSES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(name))
        .map(|i| i as u32)
        .ok_or_else(|| format!("unknown gRPC status {name}"))
}
