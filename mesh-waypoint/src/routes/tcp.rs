//! VirtualService `tls` and `tcp` routes, for what the waypoint carries as TCP: the first
//! route whose match fits a connection (the SNI of its ClientHello for a `tls` route, its
//! port, the source's labels or namespace) sends it to one of its weighted destinations, as
//! in Istio's TCP traffic shifting. A host's `tls` routes come before its `tcp` routes: a
//! TLS connection no `tls` route fits may still fit a `tcp` route.

use std::collections::BTreeMap;

use mesh_api::virtual_service::{
    L4MatchAttributes, RouteDestination, TcpRoute as TcpRouteSpec, TlsMatchAttributes,
    TlsRoute as TlsRouteSpec,
};

use super::{Scope, Target, pick_weighted, virtual_service::target};
use crate::store::Workload;

#[derive(Clone, Debug)]
pub struct TcpRoute {
    /// `namespace/name` of the VirtualService: logs.
    pub origin: String,
    /// Any one of these fits (none: every connection fits).
    matches: Vec<L4Match>,
    /// Targets and their weights (out of the route's total).
    destinations: Vec<(Target, u32)>,
}

#[derive(Clone, Debug)]
struct L4Match {
    port: Option<u16>,
    source_labels: BTreeMap<String, String>,
    source_namespace: Option<String>,
    /// The match names gateways, and not the one (or `mesh`) the table is for: it never fits.
    elsewhere: bool,
    /// A `tls` route's server names (lower case; `*.example.com` for any name under it):
    /// the connection's SNI must be one. Empty for `tcp` routes.
    sni_hosts: Vec<String>,
    /// Addresses or CIDR blocks the connection's destination must be in (none: any).
    destination_subnets: Vec<String>,
}

/// What a TCP route can match a connection on.
pub struct Connection<'a> {
    /// The port the client connected to.
    pub port: u16,
    /// The address the client connected to.
    pub destination: std::net::IpAddr,
    pub source: Option<&'a Workload>,
    /// The server name of the client's TLS ClientHello, if it sent one.
    pub sni: Option<&'a str>,
}

/// Where a route is compiled: its VirtualService and the table's scope.
pub(super) struct At<'a> {
    pub namespace: &'a str,
    pub domain: &'a str,
    pub origin: &'a str,
    pub scope: Scope<'a>,
}

impl TcpRoute {
    pub(super) fn compile(spec: &TcpRouteSpec, at: &At<'_>) -> Result<Self, String> {
        let matches = spec
            .matches
            .iter()
            .map(|m| L4Match::compile(m, at))
            .collect::<Result<_, _>>()?;
        Self::new(matches, &spec.route, at)
    }

    pub(super) fn compile_tls(spec: &TlsRouteSpec, at: &At<'_>) -> Result<Self, String> {
        let matches: Vec<L4Match> = spec
            .matches
            .iter()
            .map(|m| L4Match::compile_tls(m, at))
            .collect::<Result<_, _>>()?;
        if matches.is_empty() {
            return Err("a tls route matches no server name".to_owned());
        }
        Self::new(matches, &spec.route, at)
    }

    fn new(matches: Vec<L4Match>, route: &[RouteDestination], at: &At<'_>) -> Result<Self, String> {
        let destinations = route
            .iter()
            .map(|d| {
                let weight = u32::try_from(d.weight.unwrap_or(100)).unwrap_or(0);
                (target(&d.destination, at.namespace, at.domain), weight)
            })
            .collect::<Vec<_>>();
        if destinations.is_empty() {
            return Err("a tcp or tls route has no destination".to_owned());
        }
        Ok(TcpRoute {
            origin: at.origin.to_owned(),
            matches,
            destinations,
        })
    }

    pub(super) fn fits(&self, connection: &Connection<'_>) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.fits(connection))
    }

    /// Whether the route looks at the ClientHello's server name.
    pub(super) fn reads_sni(&self) -> bool {
        self.matches.iter().any(|m| !m.sni_hosts.is_empty())
    }

    /// The destination this connection goes to, by weight.
    pub fn choose(&self) -> &Target {
        let (target, _) = pick_weighted(&self.destinations, |(_, weight)| *weight);
        target
    }
}

impl L4Match {
    fn compile(spec: &L4MatchAttributes, at: &At<'_>) -> Result<Self, String> {
        let probe = std::net::IpAddr::from([0, 0, 0, 0]);
        if let Some(bad) = spec
            .destination_subnets
            .iter()
            .find(|s| mesh_core::policy::cidr_contains(s, probe).is_none())
        {
            return Err(format!(
                "destinationSubnets: {bad:?} is not an address or CIDR block"
            ));
        }
        let port = spec
            .port
            .map(|p| u16::try_from(p).map_err(|_| format!("tcp match port {p} is not a port")))
            .transpose()?;
        Ok(L4Match {
            port,
            source_labels: spec.source_labels.clone(),
            source_namespace: spec.source_namespace.clone(),
            // A match's own `gateways` override the VirtualService's.
            elsewhere: !spec.gateways.is_empty()
                && !at.scope.includes(at.namespace, &spec.gateways),
            sni_hosts: Vec::new(),
            destination_subnets: spec.destination_subnets.clone(),
        })
    }

    fn compile_tls(spec: &TlsMatchAttributes, at: &At<'_>) -> Result<Self, String> {
        if spec.sni_hosts.is_empty() {
            return Err("a tls match has no sniHosts".to_owned());
        }
        let l4 = L4Match::compile(
            &L4MatchAttributes {
                destination_subnets: spec.destination_subnets.clone(),
                port: spec.port,
                source_labels: spec.source_labels.clone(),
                gateways: spec.gateways.clone(),
                source_namespace: spec.source_namespace.clone(),
                source_subnet: None,
            },
            at,
        )?;
        Ok(L4Match {
            sni_hosts: spec
                .sni_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            ..l4
        })
    }

    fn fits(&self, connection: &Connection<'_>) -> bool {
        if self.elsewhere || self.port.is_some_and(|p| p != connection.port) {
            return false;
        }
        let in_subnets = self.destination_subnets.is_empty()
            || self
                .destination_subnets
                .iter()
                .any(|s| mesh_core::policy::cidr_contains(s, connection.destination) == Some(true));
        if !in_subnets {
            return false;
        }
        if !self.sni_hosts.is_empty() {
            let Some(sni) = connection.sni.map(str::to_ascii_lowercase) else {
                return false;
            };
            let named = self
                .sni_hosts
                .iter()
                .any(|host| match host.strip_prefix('*') {
                    // `*.example.com`: any name under it, not the domain itself.
                    Some(suffix) => sni.len() > suffix.len() && sni.ends_with(suffix),
                    None => *host == sni,
                });
            if !named {
                return false;
            }
        }
        // A source the waypoint does not know matches no source condition.
        let labels_fit = self.source_labels.is_empty()
            || connection.source.is_some_and(|w| {
                self.source_labels
                    .iter()
                    .all(|(k, v)| w.labels.get(k) == Some(v))
            });
        let namespace_fits = self
            .source_namespace
            .as_ref()
            .is_none_or(|ns| connection.source.is_some_and(|w| &w.namespace == ns));
        labels_fit && namespace_fits
    }
}
