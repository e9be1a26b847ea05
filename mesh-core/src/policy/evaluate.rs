//! Deciding a connection (at the destination's node) or a request (at a waypoint) with
//! Istio's semantics.
//!
//! - PeerAuthentication: the most specific setting wins (workload selector, then namespace,
//!   then the root namespace); `UNSET` inherits; the default is PERMISSIVE.
//! - AuthorizationPolicy: at a node, policies of the workload's namespace and the root
//!   namespace whose selector matches apply (policies whose `targetRefs` name a Gateway, a
//!   GatewayClass or a Service are a waypoint's); at a waypoint, those whose `targetRef(s)`
//!   name its Gateway, its class or the destination Service. Any matching DENY denies. With no
//!   ALLOW policy, allow; otherwise at least one ALLOW must match. A policy whose target Ambit
//!   cannot attach to (another kind, another namespace) applies at the nodes to every workload
//!   of its namespace, failing closed, rather than nowhere.
//! - Fail closed: what cannot be checked where the decision is made (L7 attributes at a
//!   node; JWT principals and unknown `when` keys anywhere) never matches in an ALLOW policy
//!   and always matches in a DENY policy. So does a policy that failed validation, and a
//!   CUSTOM one. A header sent several times matches a DENY if any value does, and an ALLOW
//!   only if every value does.

use std::{collections::BTreeMap, net::IpAddr};

use super::{Action, AuthorizationPolicy, MtlsMode, PeerAuthentication, Rule, Source};
use crate::Identity;

/// The destination workload.
#[derive(Clone, Copy, Debug)]
pub struct Workload<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// What is known about a connection (and, at a waypoint, its request).
#[derive(Clone, Copy, Debug)]
pub struct Connection<'a> {
    /// The client's verified identity; `None` for plaintext.
    pub source: Option<&'a Identity>,
    pub source_ip: IpAddr,
    pub destination_port: u16,
    /// The HTTP request, where one is seen (a waypoint); `None` at L4.
    pub request: Option<&'a Request<'a>>,
}

/// An HTTP request's attributes, as a waypoint sees them.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    /// Normalized (see the waypoint's path normalization), without the query.
    pub path: &'a str,
    /// Host without the port.
    pub host: &'a str,
    pub headers: &'a http::HeaderMap,
}

/// What a waypoint enforces for: the namespace of the destination, and the kinds and names
/// `targetRefs` may name (its Gateway, the destination Service).
#[derive(Clone, Debug)]
pub struct Targets<'a> {
    pub namespace: &'a str,
    pub refs: &'a [(&'a str, &'a str)],
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

    /// The mTLS mode for inbound connections to `workload` on `port`: the port-level mode of
    /// the first PeerAuthentication selecting the workload, if it sets one, else
    /// [`mtls_mode`](Self::mtls_mode).
    pub fn mtls_mode_on(&self, workload: Workload<'_>, port: u16) -> MtlsMode {
        let port = port.to_string();
        let port_level = self
            .peer_authentications
            .iter()
            .filter(|pa| pa.metadata.namespace == workload.namespace)
            .filter(|pa| {
                pa.spec
                    .selector
                    .as_ref()
                    .is_some_and(|s| s.matches(workload.labels))
            })
            .find_map(|pa| pa.spec.port_level_mtls.get(&port).map(|m| m.mode))
            .filter(|mode| *mode != MtlsMode::Unset);
        port_level.unwrap_or_else(|| self.mtls_mode(workload))
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

    /// Whether `connection` to `workload` is authorized (at its node).
    pub fn authorize(&self, workload: Workload<'_>, connection: Connection<'_>) -> Decision {
        let applicable: Vec<&Enforced> = self
            .scoped(workload.namespace)
            .filter(|e| !targets_a_waypoint(&e.policy))
            .filter(|e| {
                e.policy
                    .spec
                    .selector
                    .as_ref()
                    .is_none_or(|s| s.matches(workload.labels))
            })
            .collect();
        decide(&applicable, connection)
    }

    /// Whether a request through a waypoint is authorized: by the policies that name one of
    /// `targets`.
    pub fn authorize_request(&self, targets: &Targets<'_>, connection: Connection<'_>) -> Decision {
        let applicable: Vec<&Enforced> = self
            .scoped(targets.namespace)
            .filter(|e| {
                target_refs(&e.policy)
                    .any(|(kind, name)| targets.refs.iter().any(|(k, n)| *k == kind && *n == name))
            })
            .collect();
        decide(&applicable, connection)
    }

    /// Policies of `namespace` and of the root namespace.
    fn scoped<'s>(&'s self, namespace: &'s str) -> impl Iterator<Item = &'s Enforced> + 's {
        let of = |ns: &str| self.authorizations.get(ns).into_iter().flatten();
        let root = (namespace != self.root_namespace).then(|| of(&self.root_namespace));
        of(namespace).chain(root.into_iter().flatten())
    }
}

/// Kinds a waypoint enforces policies for: its Gateway, its class, the destination Service.
const WAYPOINT_TARGETS: [&str; 3] = ["Gateway", "GatewayClass", "Service"];

/// Whether a waypoint enforces the policy (its targets are all kinds waypoints take, in the
/// policy's namespace). A policy with other targets is enforced at the nodes instead, for
/// the whole namespace and failing closed.
fn targets_a_waypoint(policy: &AuthorizationPolicy) -> bool {
    let mut refs = target_refs_full(policy).peekable();
    refs.peek().is_some()
        && refs.all(|r| {
            WAYPOINT_TARGETS.contains(&r.kind)
                && r.namespace
                    .is_none_or(|ns| ns.is_empty() || ns == policy.metadata.namespace)
        })
}

/// A `targetRef` as the node reads it.
struct TargetRef<'a> {
    kind: &'a str,
    namespace: Option<&'a str>,
}

fn target_refs_full(policy: &AuthorizationPolicy) -> impl Iterator<Item = TargetRef<'_>> {
    let one = policy.spec.target_ref.iter();
    let many = policy
        .spec
        .target_refs
        .iter()
        .flat_map(|v| v.as_sequence().into_iter().flatten());
    one.chain(many).map(|r| TargetRef {
        kind: r.get("kind").and_then(|k| k.as_str()).unwrap_or_default(),
        namespace: r.get("namespace").and_then(|n| n.as_str()),
    })
}

/// (kind, name) of each of a policy's `targetRef` and `targetRefs`.
fn target_refs(policy: &AuthorizationPolicy) -> impl Iterator<Item = (&str, &str)> {
    let one = policy.spec.target_ref.iter();
    let many = policy
        .spec
        .target_refs
        .iter()
        .flat_map(|v| v.as_sequence().into_iter().flatten());
    one.chain(many)
        .filter_map(|r| Some((r.get("kind")?.as_str()?, r.get("name")?.as_str()?)))
}

fn decide(applicable: &[&Enforced], connection: Connection<'_>) -> Decision {
    for enforced in applicable {
        let policy = &enforced.policy;
        let at = policy.metadata.namespace.as_str();
        let name = || format!("{}/{}", policy.metadata.namespace, policy.metadata.name);
        match policy.spec.action {
            Action::Custom => {
                return Decision::Deny {
                    policy: name(),
                    reason: "CUSTOM policies are not enforced by Ambit".into(),
                };
            }
            Action::Deny if enforced.broken => {
                return Decision::Deny {
                    policy: name(),
                    reason: "invalid DENY policy applies to everything".into(),
                };
            }
            Action::Deny if matches_any(&policy.spec.rules, connection, true, at) => {
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
    if allows.iter().any(|e| {
        !e.broken
            && matches_any(
                &e.policy.spec.rules,
                connection,
                false,
                &e.policy.metadata.namespace,
            )
    }) {
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

/// `deny`: whether unverifiable (L7) rules count as matching; `at`: the policy's namespace
/// (where a bare `serviceAccounts` entry is).
fn matches_any(rules: &Option<Vec<Rule>>, c: Connection<'_>, deny: bool, at: &str) -> bool {
    rules
        .as_ref()
        .is_some_and(|rules| rules.iter().any(|rule| rule_matches(rule, c, deny, at)))
}

fn rule_matches(rule: &Rule, c: Connection<'_>, deny: bool, at: &str) -> bool {
    let Some(request) = c.request else {
        if has_l7(rule) {
            return deny;
        }
        return l4_matches(rule, c, at);
    };
    // JWT principals are not checked by Ambit yet.
    let jwt = rule.from.iter().flatten().any(|f| {
        !f.source.request_principals.is_empty() || !f.source.not_request_principals.is_empty()
    });
    if jwt {
        return deny;
    }
    let to_ok = rule.to.as_ref().is_none_or(|to| {
        to.is_empty()
            || to
                .iter()
                .any(|t| operation_matches(&t.operation, c, request))
    });
    let when_ok = rule
        .when
        .iter()
        .flatten()
        .all(|condition| condition_matches(condition, c, request, deny));
    l4_matches(rule, c, at) && to_ok && when_ok
}

fn l4_matches(rule: &Rule, c: Connection<'_>, at: &str) -> bool {
    let from_ok = rule.from.as_ref().is_none_or(|from| {
        from.is_empty() || from.iter().any(|f| source_matches(&f.source, c, at))
    });
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

fn operation_matches(op: &super::Operation, c: Connection<'_>, request: &Request<'_>) -> bool {
    let port = c.destination_port.to_string();
    let host = request.host.to_ascii_lowercase();
    let any = |patterns: &[String], value: &str| patterns.iter().any(|p| glob(p, value));
    let any_host = |patterns: &[String]| {
        patterns
            .iter()
            .any(|p| glob(&p.to_ascii_lowercase(), &host))
    };
    (op.ports.is_empty() || op.ports.contains(&port))
        && !op.not_ports.contains(&port)
        && (op.methods.is_empty() || any(&op.methods, request.method))
        && !any(&op.not_methods, request.method)
        && (op.paths.is_empty() || any(&op.paths, request.path))
        && !any(&op.not_paths, request.path)
        && (op.hosts.is_empty() || any_host(&op.hosts))
        && !any_host(&op.not_hosts)
}

/// A `when` condition. Keys Ambit does not know match in a DENY and not in an ALLOW.
fn condition_matches(
    condition: &serde_yaml::Value,
    c: Connection<'_>,
    request: &Request<'_>,
    deny: bool,
) -> bool {
    let strings = |key: &str| -> Vec<String> {
        condition
            .get(key)
            .and_then(|v| v.as_sequence())
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let Some(key) = condition.get("key").and_then(|k| k.as_str()) else {
        return deny;
    };
    let (values, not_values) = (strings("values"), strings("notValues"));
    let principal = c
        .source
        .map(|id| id.to_string().trim_start_matches("spiffe://").to_owned());
    let actual: Vec<String> = if let Some(name) = key
        .strip_prefix("request.headers[")
        .and_then(|k| k.strip_suffix(']'))
    {
        request
            .headers
            .get_all(name.to_ascii_lowercase().as_str())
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    } else {
        match key {
            "source.ip" | "remote.ip" => vec![c.source_ip.to_string()],
            "source.namespace" => c
                .source
                .map(|id| id.namespace.clone())
                .into_iter()
                .collect(),
            "source.principal" => principal.into_iter().collect(),
            "destination.port" => vec![c.destination_port.to_string()],
            _ => return deny,
        }
    };
    let is_ip = matches!(key, "source.ip" | "remote.ip");
    let fits = |value: &str, patterns: &[String]| {
        patterns.iter().any(|p| {
            if is_ip {
                value
                    .parse::<IpAddr>()
                    .ok()
                    .and_then(|ip| cidr_contains(p, ip))
                    .unwrap_or(false)
            } else {
                glob(p, value)
            }
        })
    };
    let value_ok =
        |value: &String| (values.is_empty() || fits(value, &values)) && !fits(value, &not_values);
    if actual.is_empty() {
        // An absent attribute matches only a condition that merely excludes values.
        return values.is_empty();
    }
    // Each value counts: a DENY fires on any, an ALLOW needs all.
    if deny {
        actual.iter().any(value_ok)
    } else {
        actual.iter().all(value_ok)
    }
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

fn source_matches(s: &Source, c: Connection<'_>, at: &str) -> bool {
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
        && service_accounts_match(s, c.source, at)
        && (s.trust_domains.is_empty()
            || any(
                &s.trust_domains,
                c.source.map(|id| id.trust_domain.as_str()),
            ))
        && !any(
            &s.not_trust_domains,
            c.source.map(|id| id.trust_domain.as_str()),
        )
}

/// `serviceAccounts` are `<namespace>/<name>`, or `<name>` in the policy's namespace `at`,
/// matched exactly (Istio allows no wildcard there).
fn service_accounts_match(s: &Source, source: Option<&Identity>, at: &str) -> bool {
    let is = |entry: &String| {
        let (namespace, name) = entry.split_once('/').unwrap_or((at, entry.as_str()));
        source.is_some_and(|id| id.namespace == namespace && id.service_account == name)
    };
    (s.service_accounts.is_empty() || s.service_accounts.iter().any(is))
        && !s.not_service_accounts.iter().any(is)
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
pub fn cidr_contains(block: &str, ip: IpAddr) -> Option<bool> {
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
