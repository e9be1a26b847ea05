//! The route table: VirtualServices compiled, per destination host, into an ordered list of
//! routes; the first whose matches fit a request decides what happens to it. A host no
//! VirtualService names gets the default route: straight to the service itself.
//!
//! # Layout
//! - `cors`: a route's CORS policy (preflights answered here, responses marked);
//! - `fault`: fault injection (delay, abort);
//! - `headers`: header edits (set, add, remove);
//! - `http_route`: Gateway API HTTPRoutes on Services, compiled into the same routes;
//! - `matching`: string, header, query and source matches;
//! - `retry`: retry policies and the failures they retry;
//! - `tcp`: `tls` and `tcp` routes, for connections carried as TCP;
//! - `virtual_service`: a VirtualService's `http` routes compiled;
//! - `tests`: compiled behaviour on Istio's tutorial examples (`tcp_tests` for TCP and TLS).

mod cors;
#[cfg(test)]
mod delegate_tests;
mod fault;
mod headers;
mod http_route;
#[cfg(test)]
mod http_route_tests;
mod matching;
mod retry;
mod tcp;
#[cfg(test)]
mod tcp_tests;
#[cfg(test)]
mod tests;
mod virtual_service;

use std::{collections::HashMap, time::Duration};

use http::StatusCode;
use mesh_api::{
    duration,
    {http_route::HttpRouteSpec, networking::Server, virtual_service::VirtualServiceSpec},
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
    /// A gateway's `tls` and `tcp` routes, VirtualService after VirtualService: its TCP and
    /// TLS servers have no host to look a route up by, so the first that fits wins.
    gateway_tcp: Vec<TcpRoute>,
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
    pub(crate) fn includes(&self, vs_namespace: &str, gateways: &[String]) -> bool {
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
    /// A consumer HTTPRoute's namespace (one that is not its Service's): only clients of that
    /// namespace see the route.
    pub clients: Option<String>,
}

#[derive(Clone, Debug)]
pub enum Action {
    Forward(Box<Forward>),
    Redirect {
        uri: Option<String>,
        /// `uri` replaces only the prefix the route matched (the Gateway API's
        /// `ReplacePrefixMatch`), not the whole path.
        replace_prefix: bool,
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
    /// The answer when a destination names a service (or subset) that does not exist:
    /// Envoy's 503 for a VirtualService, the Gateway API's 500 for an HTTPRoute.
    pub no_cluster: StatusCode,
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
        let virtual_services: Vec<_> = virtual_services.into_iter().collect();
        // Delegates (VirtualServices without hosts) by `namespace/name`.
        let delegates: HashMap<(&str, &str), &VirtualServiceSpec> = virtual_services
            .iter()
            .filter(|(_, _, spec)| spec.hosts.is_empty())
            .map(|(namespace, name, spec)| ((*namespace, *name), *spec))
            .collect();
        for (namespace, name, spec) in virtual_services.iter().copied() {
            if spec.hosts.is_empty() || !scope.includes(namespace, &spec.gateways) {
                continue;
            }
            let origin = format!("{namespace}/{name}");
            let routes: Result<Vec<Route>, String> = spec
                .http
                .iter()
                .flat_map(|http| match &http.delegate {
                    None => vec![virtual_service::compile_route(
                        http, namespace, domain, &origin, scope,
                    )],
                    Some(to) => virtual_service::compile_delegated(
                        http, to, namespace, &delegates, domain, scope,
                    ),
                })
                .filter_map(Result::transpose)
                .collect();
            let at = tcp::At {
                namespace,
                domain,
                origin: &origin,
                scope,
            };
            let tls = spec.tls.iter().map(|tls| TcpRoute::compile_tls(tls, &at));
            let tcp = spec.tcp.iter().map(|tcp| TcpRoute::compile(tcp, &at));
            let tcp: Result<Vec<TcpRoute>, String> = tls.chain(tcp).collect();
            match routes.and_then(|routes| Ok((routes, tcp?))) {
                Ok((routes, tcp)) => {
                    if let Scope::Gateway { .. } = scope {
                        table.gateway_tcp.extend(tcp.iter().cloned());
                    }
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
                        if !tcp.is_empty() && matches!(scope, Scope::Mesh) {
                            table.tcp.entry(host).or_insert_with(|| tcp.clone());
                        }
                    }
                }
                Err(error) => errors.push(format!("VirtualService {origin}: {error}")),
            }
        }
        (table, errors)
    }

    /// Adds the routes of Gateway API HTTPRoutes (`namespace`, `name`, spec): a Service with
    /// HTTPRoutes is routed by them rather than by a VirtualService. Returns what did not
    /// compile.
    pub fn add_http_routes<'a>(
        &mut self,
        routes: impl IntoIterator<Item = (&'a str, &'a str, &'a HttpRouteSpec)>,
        domain: &str,
    ) -> Vec<String> {
        let (hosts, errors) = http_route::compile(routes, domain, http_route::to_services(domain));
        self.hosts.extend(hosts);
        errors
    }

    /// Adds, for an ingress, the routes of the HTTPRoutes attached to its Gateway API
    /// `Gateway` (`namespace/name`, its listeners as `servers`), by the hostnames each shares
    /// with a listener. A hostname with HTTPRoutes is routed by them, not a VirtualService.
    pub fn add_gateway_http_routes<'a>(
        &mut self,
        routes: impl IntoIterator<Item = (&'a str, &'a str, &'a HttpRouteSpec)>,
        domain: &str,
        gateway: (&str, &str),
        servers: &[Server],
    ) -> Vec<String> {
        let attach = http_route::to_gateway(gateway, servers);
        let (hosts, errors) = http_route::compile(routes, domain, attach);
        self.hosts.extend(hosts);
        errors
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

    /// Ingress: the first of the Gateway's `tls` and `tcp` routes that fits `connection`.
    pub fn gateway_tcp_route(&self, connection: &TcpConnection<'_>) -> Option<&TcpRoute> {
        self.gateway_tcp.iter().find(|r| r.fits(connection))
    }

    /// Whether `host` has `tls` routes, so that its TLS connections' server name counts.
    pub fn reads_sni(&self, host: &str) -> bool {
        self.tcp
            .get(host)
            .is_some_and(|routes| routes.iter().any(TcpRoute::reads_sni))
    }

    /// A gateway's host as a request to listener `port` names it (`Host` without its
    /// port): the exact host, else the longest matching `*.suffix`, else `*`; of those, the
    /// first with routes on that port (a Gateway API route attaches to some listeners only).
    pub fn gateway_host(&self, host: &str, port: u16) -> Option<String> {
        let host = host.to_ascii_lowercase();
        let on_port = |key: &str| {
            self.hosts.get(key).is_some_and(|routes| {
                routes.iter().any(|route| {
                    route.matches.is_empty()
                        || route
                            .matches
                            .iter()
                            .any(|m| m.port.is_none_or(|p| p == port))
                })
            })
        };
        if on_port(&host) {
            return Some(host);
        }
        let mut labels = host.as_str();
        while let Some((_, rest)) = labels.split_once('.') {
            let wildcard = format!("*.{rest}");
            if on_port(&wildcard) {
                return Some(wildcard);
            }
            labels = rest;
        }
        on_port("*").then(|| "*".to_owned())
    }

    /// The first route for `host` that fits `request`: none fits although the host has
    /// routes for this client (answered 404, as Envoy does), or the host has no routes for
    /// it (the default route).
    pub fn find<'t>(&'t self, host: &str, request: &RequestView<'_>) -> Lookup<'t> {
        let Some(routes) = self.hosts.get(host) else {
            return Lookup::Default;
        };
        let mut seen = false;
        for route in routes {
            if route
                .clients
                .as_deref()
                .is_some_and(|ns| request.source_namespace != Some(ns))
            {
                continue;
            }
            seen = true;
            if route.matches.is_empty() || route.matches.iter().any(|m| m.fits(request)) {
                return Lookup::Route(route);
            }
        }
        match seen {
            true => Lookup::NoRoute,
            false => Lookup::Default,
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
