//! VirtualService `tls` and `tcp` routes, for what the waypoint carries as TCP: the first
//! route whose match fits a connection (the SNI of its ClientHello for a `tls` route, its
//! port, the source's labels or namespace) sends it to one of its weighted destinations, as
//! in Istio's TCP traffic shifting. A host's `tls` routes come before its `tcp` routes: a
//! TLS connection no `tls` route fits may still fit a `tcp` route.

use std::collections::BTreeMap;

use mesh_controller::resources::virtual_service::{
    L4MatchAttributes, RouteDestination, TcpRoute as TcpRouteSpec, TlsMatchAttributes,
    TlsRoute as TlsRouteSpec,
};

use super::{Target, pick_weighted, target};
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
    /// The match names gateways and not `mesh`: it never fits traffic inside the mesh.
    gateways_only: bool,
    /// A `tls` route's server names (lower case; `*.example.com` for any name under it):
    /// the connection's SNI must be one. Empty for `tcp` routes.
    sni_hosts: Vec<String>,
}

/// What a TCP route can match a connection on.
pub struct Connection<'a> {
    /// The port the client connected to.
    pub port: u16,
    pub source: Option<&'a Workload>,
    /// The server name of the client's TLS ClientHello, if it sent one.
    pub sni: Option<&'a str>,
}

impl TcpRoute {
    pub(super) fn compile(
        spec: &TcpRouteSpec,
        namespace: &str,
        domain: &str,
        origin: &str,
    ) -> Result<Self, String> {
        let matches = spec
            .matches
            .iter()
            .map(L4Match::compile)
            .collect::<Result<_, _>>()?;
        Self::new(matches, &spec.route, namespace, domain, origin)
    }

    pub(super) fn compile_tls(
        spec: &TlsRouteSpec,
        namespace: &str,
        domain: &str,
        origin: &str,
    ) -> Result<Self, String> {
        let matches: Vec<L4Match> = spec
            .matches
            .iter()
            .map(L4Match::compile_tls)
            .collect::<Result<_, _>>()?;
        if matches.is_empty() {
            return Err("a tls route matches no server name".to_owned());
        }
        Self::new(matches, &spec.route, namespace, domain, origin)
    }

    fn new(
        matches: Vec<L4Match>,
        route: &[RouteDestination],
        namespace: &str,
        domain: &str,
        origin: &str,
    ) -> Result<Self, String> {
        let destinations = route
            .iter()
            .map(|d| {
                let weight = u32::try_from(d.weight.unwrap_or(100)).unwrap_or(0);
                (target(&d.destination, namespace, domain), weight)
            })
            .collect::<Vec<_>>();
        if destinations.is_empty() {
            return Err("a tcp or tls route has no destination".to_owned());
        }
        Ok(TcpRoute {
            origin: origin.to_owned(),
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
    fn compile(spec: &L4MatchAttributes) -> Result<Self, String> {
        if !spec.destination_subnets.is_empty() {
            return Err("tcp match on destinationSubnets is not supported".to_owned());
        }
        let port = spec
            .port
            .map(|p| u16::try_from(p).map_err(|_| format!("tcp match port {p} is not a port")))
            .transpose()?;
        Ok(L4Match {
            port,
            source_labels: spec.source_labels.clone(),
            source_namespace: spec.source_namespace.clone(),
            gateways_only: !spec.gateways.is_empty() && !spec.gateways.iter().any(|g| g == "mesh"),
            sni_hosts: Vec::new(),
        })
    }

    fn compile_tls(spec: &TlsMatchAttributes) -> Result<Self, String> {
        if spec.sni_hosts.is_empty() {
            return Err("a tls match has no sniHosts".to_owned());
        }
        let l4 = L4Match::compile(&L4MatchAttributes {
            destination_subnets: spec.destination_subnets.clone(),
            port: spec.port,
            source_labels: spec.source_labels.clone(),
            gateways: spec.gateways.clone(),
            source_namespace: spec.source_namespace.clone(),
        })?;
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
        if self.gateways_only || self.port.is_some_and(|p| p != connection.port) {
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
