//! Where configuration comes from, behind one trait: a directory of YAML (local mode) or the
//! Kubernetes API. [`run`] turns every (debounced) change into a validated, compiled set for
//! the distributor, and reports each resource's conditions through a [`StatusSink`].
//!
//! # Layout
//! - `dir`: local mode, a directory of the same YAML users `kubectl apply`;
//! - `kube`: reflectors on the API server, objects read one by one so one bad object never
//!   hides the rest;
//! - `status`: validation results written to each resource's status conditions.

pub mod dir;
pub mod kube;
pub mod status;

use std::{sync::Arc, time::Duration};

use crate::{
    compile,
    config::{ConfigSet, ObjectKey, load::LoadError, validate},
    distribution::Distributor,
};
use mesh_api::common::Condition;

/// Quiet time that ends a burst of changes, and the longest a burst may delay an update.
const DEBOUNCE: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(1);

pub trait ConfigSource: Send {
    /// The configuration as it is now, and the objects that could not be read.
    fn snapshot(&mut self) -> (ConfigSet, Vec<LoadError>);
    /// Resolves once something may have changed since the last call.
    fn changed(&mut self) -> impl Future<Output = ()> + Send;
}

/// Where validation results go: resource status in Kubernetes, the log in local mode.
pub trait StatusSink: Send {
    fn report(
        &mut self,
        set: &Arc<ConfigSet>,
        statuses: Vec<(ObjectKey, Vec<Condition>)>,
        errors: &[LoadError],
    ) -> impl Future<Output = ()> + Send;
}

/// Both sinks, one after the other (Kubernetes mode: status and events in the API, the log
/// and the admin endpoint's report here).
impl<A: StatusSink, B: StatusSink> StatusSink for (A, B) {
    async fn report(
        &mut self,
        set: &Arc<ConfigSet>,
        statuses: Vec<(ObjectKey, Vec<Condition>)>,
        errors: &[LoadError],
    ) {
        self.0.report(set, statuses.clone(), errors).await;
        self.1.report(set, statuses, errors).await;
    }
}

/// Logs what is not accepted, once per change of findings, and keeps the last report for the
/// admin endpoint.
#[derive(Default)]
pub struct LogStatus {
    last: Vec<String>,
    pub report: crate::admin::SharedReport,
}

impl StatusSink for LogStatus {
    async fn report(
        &mut self,
        set: &Arc<ConfigSet>,
        statuses: Vec<(ObjectKey, Vec<Condition>)>,
        errors: &[LoadError],
    ) {
        let mut lines: Vec<String> = errors.iter().map(|e| format!("not loaded: {e}")).collect();
        let resources = statuses
            .iter()
            .map(|(key, conditions)| crate::admin::ResourceReport {
                kind: key.kind.name().to_owned(),
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                conditions: conditions.clone(),
            })
            .collect();
        *self.report.lock().unwrap_or_else(|p| p.into_inner()) = crate::admin::Report {
            resources,
            errors: errors.iter().map(ToString::to_string).collect(),
            set: set.clone(),
        };
        for (key, conditions) in statuses {
            for c in conditions.iter().filter(|c| c.is_problem()) {
                lines.push(format!("{key}: {} {}: {}", c.type_, c.reason, c.message));
            }
        }
        if lines != self.last {
            for line in &lines {
                tracing::warn!("{line}");
            }
            self.last = lines;
        }
    }
}

/// Builds, validates, compiles and publishes the configuration, then again after every
/// burst of changes; never returns.
pub async fn run(
    mut source: impl ConfigSource,
    mut status: impl StatusSink,
    distributor: &Distributor,
    domain: &str,
) {
    loop {
        publish_once(&mut source, &mut status, distributor, domain).await;
        source.changed().await;
        let first = tokio::time::Instant::now();
        while first.elapsed() < MAX_DELAY {
            let window = DEBOUNCE.min(MAX_DELAY.saturating_sub(first.elapsed()));
            if tokio::time::timeout(window, source.changed())
                .await
                .is_err()
            {
                break;
            }
        }
    }
}

/// One round: snapshot, validate, publish, report. Returns the published version, if any.
pub async fn publish_once(
    source: &mut impl ConfigSource,
    status: &mut impl StatusSink,
    distributor: &Distributor,
    domain: &str,
) -> Option<u64> {
    let (set, errors) = source.snapshot();
    // Shared with the report (the mesh page reads it), never copied.
    let set = Arc::new(set);
    let validation = validate::validate(&set, domain);
    let version = distributor.publish(compile::compile(&set, &validation, domain));
    let statuses = set
        .resources
        .keys()
        .filter(|k| has_status(&set, k))
        .map(|k| (k.clone(), validation.conditions(k, generation(&set, k))))
        .collect();
    status.report(&set, statuses, &errors).await;
    version
}

/// Kinds whose status Ambit owns (the Istio and Gateway API kinds, not Kubernetes' own), and
/// of GatewayClasses only those that name Ambit's controller.
fn has_status(set: &ConfigSet, key: &ObjectKey) -> bool {
    use crate::config::Kind;
    use mesh_api::gateway_api::CONTROLLER_NAME;
    if key.kind == Kind::GatewayClass {
        return set
            .gateway_class(&key.name)
            .is_some_and(|class| class.spec.controller_name == CONTROLLER_NAME);
    }
    !matches!(
        key.kind,
        Kind::Namespace
            | Kind::Node
            | Kind::Pod
            | Kind::Service
            | Kind::EndpointSlice
            | Kind::ServiceAccount
            | Kind::Secret
    )
}

fn generation(set: &ConfigSet, key: &ObjectKey) -> Option<i64> {
    set.resources.get(key)?.meta().generation
}
