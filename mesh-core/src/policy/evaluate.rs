//! Deciding a connection at the destination's node: Istio's semantics at L4.
//!
//! - PeerAuthentication: the most specific setting wins (workload selector, then namespace,
//!   then the root namespace); `UNSET` inherits; the default is PERMISSIVE.
//! - AuthorizationPolicy: policies of the workload's namespace and the root namespace whose
//!   selector matches apply. Any matching DENY denies. With no ALLOW policy, allow; otherwise
//!   at least one ALLOW must match.
//! - Fail closed: a rule naming L7 attributes (HTTP methods, paths, hosts, JWT principals,
//!   `when` conditions) cannot be checked here, so it never matches in an ALLOW policy and
//!   always matches in a DENY policy. So does a policy that failed validation, and a CUSTOM one.

use std::{collections::BTreeMap, net::IpAddr};

use super::{Action, AuthorizationPolicy, MtlsMode, PeerAuthentication, Rule, Source};
use crate::Identity;

/// The destination workload.
#[derive(Clone, Copy, Debug)]
pub struct Workload<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// What is known about a connection at L4.
#[derive(Clone, Copy, Debug)]
pub struct Connection<'a> {
    /// The client's verified identity; `None` for plaintext.
    pub source: Option<&'a Identity>,
    pub source_ip: IpAddr,
    pub destination_port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny { policy: String, reason: String },
}

/// An AuthorizationPolicy as enforced: `broken` when it failed validation (it then matches
/// everything if DENY, nothing if ALLOW).
#[derive(Clone, Debug)]
pub(super) struct Enforced {
    pub policy: AuthorizationPolicy,
    pub broken: bool,
}

#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    pub(super) peer_authentications: Vec<PeerAuthentication>,
    /// By namespace: a connection is checked against its own namespace's and the root
    /// namespace's policies only, however many other namespaces have.
    pub(super) authorizations: BTreeMap<String, Vec<Enforced>>,
    pub(super) root_namespace: String,
}

impl PolicySet {
    pub fn len(&self) -> usize {
        self.peer_authentications.len() + self.authorizations.values().map(Vec::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds an AuthorizationPolicy (tests and benchmarks build sets without YAML).
    pub fn add_authorization(&mut self, policy: super::AuthorizationPolicy) {
        let namespace = policy.metadata.namespace.clone();
        self.authorizations
            .entry(namespace)
            .or_default()
            .push(Enforced {
                policy,
                broken: false,
            });
    }

    pub fn with_root_namespace(root_namespace: &str) -> Self {
        Self {
            root_namespace: root_namespace.to_owned(),
            ..Self::default()
        }
    }

    /// One line per policy, for the admin config dump.
    pub fn summary(&self) -> Vec<String> {
        let peer = self.peer_authentications.iter().map(|pa| {
            let mode = pa.spec.mtls.as_ref().map(|m| m.mode).unwrap_or_default();
            format!(
                "PeerAuthentication {}/{} mtls={mode:?}",
                pa.metadata.namespace, pa.metadata.name
            )
        });
        let authz = self.authorizations.values().flatten().map(|e| {
            let p = &e.policy;
            let broken = if e.broken {
                " (invalid: enforced failing closed)"
            } else {
                ""
            };
            format!(
                "AuthorizationPolicy {}/{} action={:?}{broken}",
                p.metadata.namespace, p.metadata.name, p.spec.action
            )
        });
        peer.chain(authz).collect()
    }

    /// The mTLS mode for inbound connections to `workload` (never `Unset`).
    pub fn mtls_mode(&self, workload: Workload<'_>) -> MtlsMode {
        let mode_of =
            |pa: &PeerAuthentication| pa.spec.mtls.as_ref().map(|m| m.mode).unwrap_or_default();
        let first_set = |namespace: &str, selected: bool| {
            self.peer_authentications
                .iter()
                .filter(|pa| pa.metadata.namespace == namespace)
                .filter(|pa| match (&pa.spec.selector, selected) {
                    (Some(selector), true) => selector.matches(workload.labels),
                    (None, false) => true,
                    _ => false,
                })
                .map(mode_of)
                .find(|m| *m != MtlsMode::Unset)
        };
        let workload_level = first_set(workload.namespace, true);
        let namespace_level = || first_set(workload.namespace, false);
        let mesh_level = || first_set(&self.root_namespace, false);
        workload_level
            .or_else(namespace_level)
            .or_else(mesh_level)
            .unwrap_or(MtlsMode::Permissive)
    }

    /// Whether `connection` to `workload` is authorized.
    pub fn authorize(&self, workload: Workload<'_>, connection: Connection<'_>) -> Decision {
        let scoped = |namespace: &str| self.authorizations.get(namespace).into_iter().flatten();
        let root =
            (workload.namespace != self.root_namespace).then(|| scoped(&self.root_namespace));
        let applicable: Vec<&Enforced> = scoped(workload.namespace)
            .chain(root.into_iter().flatten())
            .filter(|e| {
                e.policy
                    .spec
                    .selector
                    .as_ref()
                    .is_none_or(|s| s.matches(workload.labels))
            })
            .collect();
        for enforced in &applicable {
            let policy = &enforced.policy;
            let name = || format!("{}/{}", policy.metadata.namespace, policy.metadata.name);
            match policy.spec.action {
                Action::Custom => {
                    return Decision::Deny {
                        policy: name(),
                        reason: "CUSTOM policies cannot be enforced at L4".into(),
                    };
                }
                Action::Deny if enforced.broken => {
                    return Decision::Deny {
                        policy: name(),
                        reason: "invalid DENY policy applies to everything".into(),
                    };
                }
                Action::Deny if matches_any(&policy.spec.rules, connection, true) => {
                    return Decision::Deny {
                        policy: name(),
                        reason: "matched a DENY rule".into(),
                    };
                }
                _ => {}
            }
        }
        let allows: Vec<&&Enforced> = applicable
            .iter()
            .filter(|e| e.policy.spec.action == Action::Allow)
            .collect();
        if allows.is_empty() {
            return Decision::Allow;
        }
        if allows
            .iter()
            .any(|e| !e.broken && matches_any(&e.policy.spec.rules, connection, false))
        {
            return Decision::Allow;
        }
        let names: Vec<String> = allows
            .iter()
            .map(|e| format!("{}/{}", e.policy.metadata.namespace, e.policy.metadata.name))
            .collect();
        Decision::Deny {
            policy: names.join(","),
            reason: "no ALLOW rule matched".into(),
        }
    }
}

/// `deny`: whether unverifiable (L7) rules count as matching.
fn matches_any(rules: &Option<Vec<Rule>>, c: Connection<'_>, deny: bool) -> bool {
    rules
        .as_ref()
        .is_some_and(|rules| rules.iter().any(|rule| rule_matches(rule, c, deny)))
}

fn rule_matches(rule: &Rule, c: Connection<'_>, deny: bool) -> bool {
    if has_l7(rule) {
        return deny;
    }
    let from_ok = rule
        .from
        .as_ref()
        .is_none_or(|from| from.is_empty() || from.iter().any(|f| source_matches(&f.source, c)));
    let to_ok = rule.to.as_ref().is_none_or(|to| {
        to.is_empty()
            || to.iter().any(|t| {
                let port = c.destination_port.to_string();
                let op = &t.operation;
                (op.ports.is_empty() || op.ports.contains(&port)) && !op.not_ports.contains(&port)
            })
    });
    from_ok && to_ok
}

fn has_l7(rule: &Rule) -> bool {
    rule.when.as_ref().is_some_and(|w| !w.is_empty())
        || rule.from.iter().flatten().any(|f| {
            !f.source.request_principals.is_empty() || !f.source.not_request_principals.is_empty()
        })
        || rule.to.iter().flatten().any(|t| {
            let o = &t.operation;
            [
                &o.hosts,
                &o.not_hosts,
                &o.methods,
                &o.not_methods,
                &o.paths,
                &o.not_paths,
            ]
            .iter()
            .any(|v| !v.is_empty())
        })
}

fn source_matches(s: &Source, c: Connection<'_>) -> bool {
    // Istio writes principals without the scheme: `cluster.local/ns/a/sa/b`.
    let principal = c
        .source
        .map(|id| id.to_string().trim_start_matches("spiffe://").to_owned());
    let namespace = c.source.map(|id| id.namespace.as_str());
    let any = |patterns: &[String], value: Option<&str>| {
        value.is_some_and(|v| patterns.iter().any(|p| glob(p, v)))
    };
    let ip_in = |blocks: &[String]| {
        blocks
            .iter()
            .any(|b| cidr_contains(b, c.source_ip).unwrap_or(false))
    };
    (s.principals.is_empty() || any(&s.principals, principal.as_deref()))
        && !any(&s.not_principals, principal.as_deref())
        && (s.namespaces.is_empty() || any(&s.namespaces, namespace))
        && !any(&s.not_namespaces, namespace)
        && (s.ip_blocks.is_empty() || ip_in(&s.ip_blocks))
        && !ip_in(&s.not_ip_blocks)
        && (s.remote_ip_blocks.is_empty() || ip_in(&s.remote_ip_blocks))
        && !ip_in(&s.not_remote_ip_blocks)
}

/// Istio's string match: exact, `*`, `prefix*` or `*suffix`.
fn glob(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    pattern == value
}

/// Whether `ip` is in `block` (`a.b.c.d`, `a.b.c.d/n`, or the IPv6 forms); `None` if the block
/// is malformed.
pub(super) fn cidr_contains(block: &str, ip: IpAddr) -> Option<bool> {
    let (addr, len) = match block.split_once('/') {
        Some((addr, len)) => (addr.parse::<IpAddr>().ok()?, Some(len.parse::<u32>().ok()?)),
        None => (block.parse::<IpAddr>().ok()?, None),
    };
    match (addr, ip.to_canonical()) {
        (IpAddr::V4(net), IpAddr::V4(ip)) => {
            let len = len.unwrap_or(32);
            if len > 32 {
                return None;
            }
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            Some(u32::from(net) & mask == u32::from(ip) & mask)
        }
        (IpAddr::V6(net), IpAddr::V6(ip)) => {
            let len = len.unwrap_or(128);
            if len > 128 {
                return None;
            }
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            Some(u128::from(net) & mask == u128::from(ip) & mask)
        }
        _ => Some(false),
    }
}

#[cfg(test)]
mod tests;
