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

use super::{Action, AuthorizationPolicy, MtlsMode, PeerAuthentication};
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

/// What a waypoint enforces for: the namespace of the destination, and what `targetRefs` may
/// name: its Gateway, the Gateway's class, the destination Service.
#[derive(Clone, Copy, Debug)]
pub struct Targets<'a> {
    pub namespace: &'a str,
    pub gateway: &'a str,
    pub class: Option<&'a str>,
    pub service: Option<&'a str>,
}

impl Targets<'_> {
    /// Whether a `targetRef` of `kind` and `name` names one of these.
    fn named(&self, kind: &str, name: &str) -> bool {
        match kind {
            "Gateway" => name == self.gateway,
            "GatewayClass" => self.class == Some(name),
            "Service" => self.service == Some(name),
            _ => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny { policy: String, reason: String },
}

/// An AuthorizationPolicy as enforced. `refusal` says why it is refused, by the controller or
/// by [`validate`](super::validate): a refused policy matches everything if DENY, nothing if
/// ALLOW. Where it applies is read once, when it is loaded.
#[derive(Clone, Debug)]
pub(super) struct Enforced {
    pub policy: AuthorizationPolicy,
    pub refusal: Option<String>,
    /// `(kind, name)` of each of its `targetRef` and `targetRefs` that names something.
    refs: Vec<(String, String)>,
    /// Whether waypoints, not the nodes, enforce it (see [`targets_a_waypoint`]).
    at_waypoint: bool,
}

impl Enforced {
    /// `refused`: the controller's verdict, when it refused the policy. The policy is
    /// validated here too, so that no way of adding one skips validation.
    pub(super) fn new(policy: AuthorizationPolicy, refused: Option<String>) -> Self {
        let refusal = refused.or_else(|| {
            let problems = super::validate(&policy.spec);
            (!problems.is_empty()).then(|| {
                problems
                    .iter()
                    .map(|p| format!("{}: {}", p.reason.as_str(), p.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
        });
        let refs = target_refs(&policy)
            .filter_map(|r| Some((r.kind.to_owned(), r.name?.to_owned())))
            .collect();
        // A (refused) policy that also has a selector is enforced by it at the nodes too.
        let at_waypoint = targets_a_waypoint(&policy) && policy.spec.selector.is_none();
        Enforced {
            policy,
            refusal,
            refs,
            at_waypoint,
        }
    }

    fn broken(&self) -> bool {
        self.refusal.is_some()
    }
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

    /// Adds an AuthorizationPolicy; `refused` is the controller's verdict when it refused it.
    /// Returns why the policy is enforced failing closed, if it is.
    pub fn add_authorization(
        &mut self,
        policy: super::AuthorizationPolicy,
        refused: Option<String>,
    ) -> Option<String> {
        let namespace = policy.metadata.namespace.clone();
        let enforced = Enforced::new(policy, refused);
        let refusal = enforced.refusal.clone();
        self.authorizations
            .entry(namespace)
            .or_default()
            .push(enforced);
        refusal
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
            let broken = match &e.refusal {
                Some(why) => format!(" (refused, enforced failing closed: {why})"),
                None => String::new(),
            };
            format!(
                "AuthorizationPolicy {}/{} action={:?}{broken}",
                p.metadata.namespace, p.metadata.name, p.spec.action
            )
        });
        peer.chain(authz).collect()
    }

    /// The mTLS mode for inbound connections to `workload` on `port` (never `Unset`): the
    /// port-level mode of the first PeerAuthentication selecting the workload that sets one
    /// for `port`, else the workload's, the namespace's, then the mesh's mode.
    pub fn mtls_mode(&self, workload: Workload<'_>, port: u16) -> MtlsMode {
        let mode_of =
            |pa: &PeerAuthentication| pa.spec.mtls.as_ref().map(|m| m.mode).unwrap_or_default();
        let first_set = |namespace: &str, selected: bool| {
            self.peer_authentications_of(namespace, selected.then_some(workload))
                .map(mode_of)
                .find(|m| *m != MtlsMode::Unset)
        };
        let port_level = self
            .peer_authentications_of(workload.namespace, Some(workload))
            .find_map(|pa| {
                pa.spec
                    .port_level_mtls
                    .iter()
                    .find(|(key, _)| key.parse::<u16>().ok() == Some(port))
                    .map(|(_, m)| m.mode)
            })
            .filter(|mode| *mode != MtlsMode::Unset);
        let workload_level = || first_set(workload.namespace, true);
        let namespace_level = || first_set(workload.namespace, false);
        let mesh_level = || first_set(&self.root_namespace, false);
        port_level
            .or_else(workload_level)
            .or_else(namespace_level)
            .or_else(mesh_level)
            .unwrap_or(MtlsMode::Permissive)
    }

    /// The PeerAuthentications of `namespace`: those selecting `workload` if given, else
    /// the namespace-wide ones (without a selector).
    fn peer_authentications_of<'s>(
        &'s self,
        namespace: &'s str,
        workload: Option<Workload<'s>>,
    ) -> impl Iterator<Item = &'s PeerAuthentication> + 's {
        self.peer_authentications
            .iter()
            .filter(move |pa| pa.metadata.namespace == namespace)
            .filter(move |pa| match (&pa.spec.selector, workload) {
                (Some(selector), Some(workload)) => selector.matches(workload.labels),
                (None, None) => true,
                _ => false,
            })
    }

    /// Whether `connection` to `workload` is authorized (at its node).
    pub fn authorize(&self, workload: Workload<'_>, connection: Connection<'_>) -> Decision {
        let applicable: Vec<&Enforced> = self
            .scoped(workload.namespace)
            .filter(|e| !e.at_waypoint)
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
            .filter(|e| e.refs.iter().any(|(kind, name)| targets.named(kind, name)))
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
    let mut refs = target_refs(policy).peekable();
    refs.peek().is_some()
        && refs.all(|r| {
            WAYPOINT_TARGETS.contains(&r.kind)
                && r.namespace
                    .is_none_or(|ns| ns.is_empty() || ns == policy.metadata.namespace)
        })
}

/// One of a policy's `targetRef` and `targetRefs`, as written (a missing field reads as
/// empty or `None`, and so matches nothing).
struct TargetRef<'a> {
    kind: &'a str,
    name: Option<&'a str>,
    namespace: Option<&'a str>,
}

fn target_refs(policy: &AuthorizationPolicy) -> impl Iterator<Item = TargetRef<'_>> {
    let one = policy.spec.target_ref.iter();
    let many = policy
        .spec
        .target_refs
        .iter()
        .flat_map(|v| v.as_sequence().into_iter().flatten());
    one.chain(many).map(|r| TargetRef {
        kind: r.get("kind").and_then(|k| k.as_str()).unwrap_or_default(),
        name: r.get("name").and_then(|n| n.as_str()),
        namespace: r.get("namespace").and_then(|n| n.as_str()),
    })
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
            Action::Deny if enforced.broken() => {
                return Decision::Deny {
                    policy: name(),
                    reason: "a refused DENY policy applies to everything".into(),
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
        !e.broken()
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

mod matching;

use matching::matches_any;

#[cfg(test)]
mod tests;
