//! The one validator of AuthorizationPolicies. The controller runs it to set a policy's
//! `Accepted` condition; node agents and waypoints run it again on what they receive, so a
//! policy the controller refused, or one that reached an enforcement point some other way,
//! is enforced failing closed everywhere (see `evaluate`), never read more leniently.

use super::{Action, AuthorizationPolicySpec, cidr_contains};

/// Why a policy is refused: the `reason` of its `Accepted=False` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The spec is not an AuthorizationPolicy (unknown field, wrong type).
    Unreadable,
    /// CUSTOM without a provider, or a provider without CUSTOM.
    InvalidAction,
    /// More than one of `selector`, `targetRef` and `targetRefs`.
    InvalidTarget,
    /// An `ipBlocks`-like entry that is not an address or CIDR.
    InvalidIpBlock,
    /// A malformed or contradictory source (service accounts, empty principals).
    InvalidSource,
    /// A port that is not 1-65535.
    InvalidPort,
    /// A path that is neither absolute nor a `*` prefix or suffix match.
    InvalidPath,
    /// A `when` with a key Istio does not define, or with neither values nor notValues.
    InvalidCondition,
}

impl Reason {
    /// Every reason, for tests that must cover each one.
    pub const ALL: [Reason; 8] = [
        Reason::Unreadable,
        Reason::InvalidAction,
        Reason::InvalidTarget,
        Reason::InvalidIpBlock,
        Reason::InvalidSource,
        Reason::InvalidPort,
        Reason::InvalidPath,
        Reason::InvalidCondition,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unreadable => "Unreadable",
            Reason::InvalidAction => "InvalidAction",
            Reason::InvalidTarget => "InvalidTarget",
            Reason::InvalidIpBlock => "InvalidIpBlock",
            Reason::InvalidSource => "InvalidSource",
            Reason::InvalidPort => "InvalidPort",
            Reason::InvalidPath => "InvalidPath",
            Reason::InvalidCondition => "InvalidCondition",
        }
    }
}

/// One problem of a policy, with the field it is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub message: String,
}

/// `when` keys Istio defines (exact, or a prefix followed by `[name]`).
const WHEN_KEYS: &[&str] = &[
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "destination.ip",
    "destination.port",
    "connection.sni",
];
const WHEN_PREFIXES: &[&str] = &["request.headers[", "request.auth.claims["];

/// Every problem of `spec`; empty when it is valid.
pub fn validate(spec: &AuthorizationPolicySpec) -> Vec<Rejection> {
    let mut found = Vec::new();
    let mut reject = |reason, message: String| found.push(Rejection { reason, message });
    if (spec.action == Action::Custom) != spec.provider.is_some() {
        reject(
            Reason::InvalidAction,
            "spec.provider is required with action CUSTOM, and only with it".into(),
        );
    }
    let refs = spec
        .target_refs
        .as_ref()
        .and_then(|r| r.as_sequence())
        .is_some_and(|r| !r.is_empty());
    let targets = usize::from(spec.selector.is_some())
        + usize::from(spec.target_ref.is_some())
        + usize::from(refs);
    if targets > 1 {
        reject(
            Reason::InvalidTarget,
            "selector, targetRef and targetRefs exclude each other".into(),
        );
    }
    for (i, rule) in spec.rules.iter().flatten().enumerate() {
        let at = format!("spec.rules[{i}]");
        for (j, from) in rule.from.iter().flatten().enumerate() {
            let s = &from.source;
            let at = format!("{at}.from[{j}].source");
            let blocks = [
                ("ipBlocks", &s.ip_blocks),
                ("notIpBlocks", &s.not_ip_blocks),
                ("remoteIpBlocks", &s.remote_ip_blocks),
                ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
            ];
            for (field, values) in blocks {
                for block in values {
                    if cidr_contains(block, [0, 0, 0, 0].into()).is_none() {
                        reject(
                            Reason::InvalidIpBlock,
                            format!("{at}.{field}: {block:?} is not an IP address or CIDR"),
                        );
                    }
                }
            }
            let accounts = !s.service_accounts.is_empty() || !s.not_service_accounts.is_empty();
            let identities = !s.principals.is_empty()
                || !s.not_principals.is_empty()
                || !s.namespaces.is_empty()
                || !s.not_namespaces.is_empty();
            if accounts && identities {
                reject(
                    Reason::InvalidSource,
                    format!("{at}: serviceAccounts cannot be set with principals or namespaces"),
                );
            }
            let accounts = [
                ("serviceAccounts", &s.service_accounts),
                ("notServiceAccounts", &s.not_service_accounts),
            ];
            for (field, values) in accounts {
                for account in values {
                    let name = account.rsplit('/').next().unwrap_or_default();
                    if account.contains('*') || name.is_empty() || account.matches('/').count() > 1
                    {
                        reject(
                            Reason::InvalidSource,
                            format!(
                                "{at}.{field}: {account:?} is not <namespace>/<name> or <name> (no wildcards)"
                            ),
                        );
                    }
                }
            }
            for (field, values) in [("principals", &s.principals), ("namespaces", &s.namespaces)] {
                if values.iter().any(String::is_empty) {
                    reject(
                        Reason::InvalidSource,
                        format!("{at}.{field} has an empty value"),
                    );
                }
            }
        }
        for (j, to) in rule.to.iter().flatten().enumerate() {
            let op = &to.operation;
            let at = format!("{at}.to[{j}].operation");
            for (field, ports) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
                for port in ports {
                    if !port.parse::<u16>().is_ok_and(|p| p > 0) {
                        reject(
                            Reason::InvalidPort,
                            format!("{at}.{field}: {port:?} is not a port number"),
                        );
                    }
                }
            }
            for (field, paths) in [("paths", &op.paths), ("notPaths", &op.not_paths)] {
                for path in paths {
                    if !(path.starts_with('/') || path.starts_with('*') || path.ends_with('*')) {
                        reject(
                            Reason::InvalidPath,
                            format!(
                                "{at}.{field}: {path:?} must start with / (or be a * prefix or suffix match)"
                            ),
                        );
                    }
                }
            }
        }
        for (j, when) in rule.when.iter().flatten().enumerate() {
            let known = WHEN_KEYS.contains(&when.key.as_str())
                || WHEN_PREFIXES
                    .iter()
                    .any(|p| when.key.starts_with(p) && when.key.ends_with(']'));
            if !known {
                reject(
                    Reason::InvalidCondition,
                    format!(
                        "{at}.when[{j}].key {:?} is not an attribute Istio defines",
                        when.key
                    ),
                );
            }
            if when.values.is_empty() && when.not_values.is_empty() {
                reject(
                    Reason::InvalidCondition,
                    format!("{at}.when[{j}] needs values or notValues"),
                );
            }
        }
    }
    found
}
