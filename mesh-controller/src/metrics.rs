//! The controller's Prometheus metrics (`/metrics` on `--metrics-addr`, 15020 as the others'):
//! how configuration reaches subscribers (version, subscribers by role and how many are behind
//! or refusing, push latency), what validation refused, certificates issued, and `istio_build`.
//! Gauges are read from the distributor and the last validation report when scraped, so they
//! never drift from what `ambitctl status` shows.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use mesh_core::config_pb::Role;

use crate::{
    admin::Report,
    distribution::{Distributor, role_name},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: String,
}

/// One subscriber: its role and the identity it authenticated as (a node, or a waypoint's
/// service account), never a name it chose.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubscriberLabels {
    role: String,
    subscriber: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectedLabels {
    kind: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    /// `issued` or `refused`.
    pub outcome: &'static str,
}

/// The roles a subscriber has, each always reported (a zero is an answer too).
const ROLES: [Role; 2] = [Role::Node, Role::Waypoint];

pub struct Metrics {
    registry: Registry,
    version: Gauge,
    subscribers: Family<RoleLabels, Gauge>,
    behind: Family<RoleLabels, Gauge>,
    refusing: Family<RoleLabels, Gauge>,
    /// The version each connected subscriber acknowledged last.
    acked: Family<SubscriberLabels, Gauge>,
    rejected: Family<RejectedLabels, Gauge>,
    /// Certificate requests answered, by outcome (the CA service counts them).
    pub certificates: Family<CertificateLabels, Counter>,
    /// One scrape at a time: the gauges are reset and refilled for each.
    rendering: std::sync::Mutex<()>,
}

impl Metrics {
    /// `pushes` is the distributor's push-latency histogram.
    pub fn new(pushes: Histogram) -> Self {
        let mut registry = Registry::default();
        let version = Gauge::default();
        let subscribers = Family::<RoleLabels, Gauge>::default();
        let behind = Family::<RoleLabels, Gauge>::default();
        let refusing = Family::<RoleLabels, Gauge>::default();
        let acked = Family::<SubscriberLabels, Gauge>::default();
        let rejected = Family::<RejectedLabels, Gauge>::default();
        let certificates = Family::<CertificateLabels, Counter>::default();
        // Istio's name for the control plane.
        mesh_core::build_info::register(&mut registry, "pilot", env!("CARGO_PKG_VERSION"));
        registry.register(
            "ambit_controller_config_version",
            "The configuration version published last (versions restart with each run)",
            version.clone(),
        );
        registry.register(
            "ambit_controller_subscribers",
            "Connected configuration subscribers, by role",
            subscribers.clone(),
        );
        registry.register(
            "ambit_controller_subscribers_behind",
            "Subscribers that have not acknowledged the latest version",
            behind.clone(),
        );
        registry.register(
            "ambit_controller_subscribers_refusing",
            "Subscribers whose last answer refused an update (they keep their previous configuration)",
            refusing.clone(),
        );
        registry.register(
            "ambit_controller_push_duration_seconds",
            "From a version's publication to a subscriber acknowledging it",
            pushes,
        );
        registry.register(
            "ambit_controller_subscriber_acked_version",
            "The configuration version each connected subscriber acknowledged last",
            acked.clone(),
        );
        registry.register(
            "ambit_controller_rejected_resources",
            "Resources validation refused (Accepted=False), by kind and reason",
            rejected.clone(),
        );
        registry.register(
            "ambit_controller_certificate_requests",
            "Certificate requests answered, by outcome",
            certificates.clone(),
        );
        Metrics {
            registry,
            version,
            subscribers,
            behind,
            refusing,
            acked,
            rejected,
            certificates,
            rendering: std::sync::Mutex::new(()),
        }
    }

    /// The text exposition, with gauges read from the current state.
    pub fn render(&self, distributor: &Distributor, report: &Report) -> String {
        let _one_at_a_time = self.rendering.lock().unwrap_or_else(|p| p.into_inner());
        let latest = distributor.version();
        self.version.set(latest as i64);
        let subscribers = distributor.subscribers();
        for role in ROLES {
            let labels = RoleLabels {
                role: role_name(role),
            };
            let of_role = subscribers.iter().filter(|s| s.role == labels.role);
            self.subscribers
                .get_or_create(&labels)
                .set(of_role.clone().count() as i64);
            self.behind
                .get_or_create(&labels)
                .set(of_role.clone().filter(|s| s.acked < latest).count() as i64);
            self.refusing
                .get_or_create(&labels)
                .set(of_role.filter(|s| s.nack.is_some()).count() as i64);
        }
        // Rebuilt at each scrape: a subscriber that left is gone from it.
        self.acked.clear();
        for subscriber in &subscribers {
            let labels = SubscriberLabels {
                role: subscriber.role.clone(),
                subscriber: subscriber.node.clone(),
            };
            let acked = i64::try_from(subscriber.acked).unwrap_or(i64::MAX);
            let gauge = self.acked.get_or_create(&labels);
            // Two streams of one subscriber (a reconnect overlapping): the newer answer.
            gauge.set(gauge.get().max(acked));
        }
        self.rejected.clear();
        for resource in &report.resources {
            let refused = resource
                .conditions
                .iter()
                .find(|c| c.type_ == mesh_api::common::ACCEPTED && c.status == "False");
            if let Some(condition) = refused {
                self.rejected
                    .get_or_create(&RejectedLabels {
                        kind: resource.kind.clone(),
                        reason: condition.reason.clone(),
                    })
                    .inc();
            }
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}
