//! VirtualService `tcp` routes, for what the waypoint carries as TCP: the first route whose
//! match fits a connection (its port, the source's labels or namespace) sends it to one of
//! its weighted destinations, as in Istio's TCP traffic shifting.

use std::collections::BTreeMap;

use mesh_controller::resources::virtual_service::{L4MatchAttributes, TcpRoute as TcpRouteSpec};

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
}

/// What a TCP route can match a connection on.
pub struct Connection<'a> {
    /// The port the client connected to.
    pub port: u16,
    pub source: Option<&'a Workload>,
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
        let destinations = spec
            .route
            .iter()
            .map(|d| {
                let weight = u32::try_from(d.weight.unwrap_or(100)).unwrap_or(0);
                (target(&d.destination, namespace, domain), weight)
            })
            .collect::<Vec<_>>();
        if destinations.is_empty() {
            return Err("a tcp route has no destination".to_owned());
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
        })
    }

    fn fits(&self, connection: &Connection<'_>) -> bool {
        if self.gateways_only || self.port.is_some_and(|p| p != connection.port) {
            return false;
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
