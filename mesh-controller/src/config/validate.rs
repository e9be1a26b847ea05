//! Validation with reasons users can act on. Every resource gets an `Accepted` condition: `True`,
//! or `False` with what is wrong (weights that do not sum to 100, a regex that does not compile,
//! a bad duration, a rule that conflicts with an older one...). Routes also get `ResolvedRefs`:
//! `False` names hosts and subsets nothing defines (they may appear later; until then traffic
//! to them fails with 503, as in Istio). A resource that is not accepted is left out of what
//! is distributed; the rest applies.

mod fields;
mod gateway_api;
mod http_route;
mod networking;
mod routes;
mod security;

use std::collections::BTreeMap;

use super::{ConfigSet, Kind, ObjectKey};
use mesh_api::common::Condition;

pub use mesh_api::common::{ACCEPTED, FAILS_CLOSED, IGNORED_FIELDS, RESOLVED_REFS};

/// One problem found in a resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The condition it turns `False` ([`ACCEPTED`], [`RESOLVED_REFS`]), or turns `True`
    /// ([`IGNORED_FIELDS`], [`FAILS_CLOSED`]).
    pub condition: &'static str,
    /// A CamelCase reason, e.g. `InvalidWeights`, `Conflict`, `UnknownSubset`.
    pub reason: &'static str,
    pub message: String,
}

/// What validation found, per resource (resources without findings are absent).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Validation {
    pub findings: BTreeMap<ObjectKey, Vec<Finding>>,
}

impl Validation {
    /// Whether the resource applies.
    pub fn accepted(&self, key: &ObjectKey) -> bool {
        self.findings
            .get(key)
            .is_none_or(|f| f.iter().all(|f| f.condition != ACCEPTED))
    }

    /// Why the resource is refused (its `Accepted=False` findings), if it is.
    pub fn refusal(&self, key: &ObjectKey) -> Option<String> {
        let refused: Vec<String> = self
            .findings
            .get(key)?
            .iter()
            .filter(|f| f.condition == ACCEPTED)
            .map(|f| format!("{}: {}", f.reason, f.message))
            .collect();
        (!refused.is_empty()).then(|| refused.join("; "))
    }

    /// The status conditions for `key`: `Accepted`, and `ResolvedRefs` for routes and
    /// Gateway API Gateways (their certificates).
    pub fn conditions(&self, key: &ObjectKey, generation: Option<i64>) -> Vec<Condition> {
        let findings = self.findings.get(key).map(Vec::as_slice).unwrap_or(&[]);
        let mut types = vec![ACCEPTED];
        if matches!(
            key.kind,
            Kind::VirtualService | Kind::HttpRoute | Kind::K8sGateway
        ) {
            types.push(RESOLVED_REFS);
        }
        // Present only when they hold: a resource that sets no such field has neither.
        for type_ in [IGNORED_FIELDS, FAILS_CLOSED] {
            if findings.iter().any(|f| f.condition == type_) {
                types.push(type_);
            }
        }
        types
            .into_iter()
            .map(|type_| {
                let relevant: Vec<&Finding> =
                    findings.iter().filter(|f| f.condition == type_).collect();
                let met = match type_ {
                    IGNORED_FIELDS | FAILS_CLOSED => "True",
                    _ => "False",
                };
                let (status, reason, message) = match relevant.first() {
                    None => ("True", type_.to_owned(), String::new()),
                    Some(first) => (
                        met,
                        first.reason.to_owned(),
                        relevant
                            .iter()
                            .map(|f| f.message.as_str())
                            .collect::<Vec<_>>()
                            .join("; "),
                    ),
                };
                Condition {
                    type_: type_.to_owned(),
                    status: status.to_owned(),
                    reason,
                    message,
                    last_transition_time: None,
                    observed_generation: generation,
                }
            })
            .collect()
    }

    fn report(
        &mut self,
        key: &ObjectKey,
        condition: &'static str,
        reason: &'static str,
        message: String,
    ) {
        self.findings.entry(key.clone()).or_default().push(Finding {
            condition,
            reason,
            message,
        });
    }

    fn invalid(&mut self, key: &ObjectKey, reason: &'static str, message: String) {
        self.report(key, ACCEPTED, reason, message);
    }
}

/// Validates every resource of `set`; `domain` is the cluster's DNS domain (`cluster.local`).
pub fn validate(set: &ConfigSet, domain: &str) -> Validation {
    let mut v = Validation::default();
    let hosts = KnownHosts::of(set, domain);
    routes::virtual_services(set, &hosts, &mut v);
    http_route::http_routes(set, &hosts, &mut v);
    networking::destination_rules(set, &hosts, &mut v);
    networking::gateways(set, &mut v);
    networking::service_entries(set, &mut v);
    security::peer_authentications(set, &mut v);
    security::authorization_policies(set, &mut v);
    security::waypoints(set, &mut v);
    gateway_api::ingress_gateways(set, &mut v);
    fields::ignored_and_closed(set, &mut v);
    v
}

/// The service hosts the configuration defines: Services (by FQDN) and ServiceEntry hosts.
pub struct KnownHosts {
    domain: String,
    exact: std::collections::BTreeSet<String>,
    /// ServiceEntry wildcards, without the leading `*`.
    suffixes: Vec<String>,
}

impl KnownHosts {
    fn of(set: &ConfigSet, domain: &str) -> Self {
        let mut exact = std::collections::BTreeSet::new();
        let mut suffixes = Vec::new();
        for (key, _) in set.services() {
            exact.insert(format!("{}.{}.svc.{domain}", key.name, key.namespace));
        }
        for (_, entry) in set.service_entries() {
            for host in &entry.spec.hosts {
                match host.strip_prefix('*') {
                    Some(suffix) => suffixes.push(suffix.to_owned()),
                    None => {
                        exact.insert(host.clone());
                    }
                }
            }
        }
        KnownHosts {
            domain: domain.to_owned(),
            exact,
            suffixes,
        }
    }

    /// `host` as written in a resource of `namespace`: a short name is a Service of that
    /// namespace; a name with a dot is taken as is.
    pub fn fqdn(&self, host: &str, namespace: &str) -> String {
        fqdn(host, namespace, &self.domain)
    }

    pub fn is_known(&self, fqdn: &str) -> bool {
        self.exact.contains(fqdn) || self.suffixes.iter().any(|s| fqdn.ends_with(s.as_str()))
    }
}

/// `host` as written in a resource of `namespace`, in a cluster of DNS `domain`: a short name
/// is a Service of that namespace; a name with a dot (or a wildcard) is taken as is.
pub fn fqdn(host: &str, namespace: &str, domain: &str) -> String {
    if host.contains('.') || host.starts_with('*') {
        host.to_owned()
    } else {
        format!("{host}.{namespace}.svc.{domain}")
    }
}

/// Percentages are 0 to 100.
fn check_percent(v: &mut Validation, key: &ObjectKey, what: &str, value: f64) {
    if !(0.0..=100.0).contains(&value) {
        v.invalid(
            key,
            "InvalidPercentage",
            format!("{what} is {value}; a percentage is 0 to 100"),
        );
    }
}

fn check_duration(v: &mut Validation, key: &ObjectKey, what: &str, value: Option<&String>) {
    if let Some(text) = value
        && let Err(error) = mesh_api::duration::parse(text)
    {
        v.invalid(key, "InvalidDuration", format!("{what}: {error}"));
    }
}

/// Resources claiming the same thing (a host, a namespace's default): the oldest keeps it, the
/// others are not accepted. `claims` is in age order (oldest first).
fn conflicts<'a>(
    v: &mut Validation,
    claims: impl IntoIterator<Item = (String, &'a ObjectKey)>,
    what: &str,
) {
    let mut owners: BTreeMap<String, &ObjectKey> = BTreeMap::new();
    for (claim, key) in claims {
        match owners.get(&claim) {
            Some(owner) if *owner != key => v.invalid(
                key,
                "Conflict",
                format!("{what} {claim} is already configured by {owner}, which takes precedence"),
            ),
            Some(_) => {}
            None => {
                owners.insert(claim, key);
            }
        }
    }
}

#[cfg(test)]
mod gateway_api_tests;
#[cfg(test)]
mod http_route_tests;
#[cfg(test)]
mod networking_tests;
#[cfg(test)]
mod tests;
