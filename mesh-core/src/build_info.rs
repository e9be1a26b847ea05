//! `istio_build`, as Istio's components report it: Kiali and the tutorials' dashboards look
//! for it to tell which components run and at which version.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    component: &'static str,
    tag: &'static str,
}

/// Registers `istio_build{component, tag} 1`. Istio's names for the roles: `pilot` (the
/// control plane), `ztunnel` (the node proxy), `proxy` (Envoy, as waypoints are).
pub fn register(registry: &mut Registry, component: &'static str, tag: &'static str) {
    let build = Family::<BuildLabels, Gauge>::default();
    build.get_or_create(&BuildLabels { component, tag }).set(1);
    registry.register("istio_build", "The build of this component", build);
}
