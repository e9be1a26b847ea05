//! Whether a rule matches a connection (and its request): sources, operations and `when`
//! conditions, with Istio's string and address matching. Unverifiable attributes count as
//! matching in a DENY and not in an ALLOW.

use std::net::IpAddr;

use super::{Connection, Request};
use crate::{
    Identity,
    policy::{Condition, Operation, Rule, Source, cidr_contains},
};

/// `deny`: whether unverifiable (L7) rules count as matching; `at`: the policy's namespace
/// (where a bare `serviceAccounts` entry is).
pub(super) fn matches_any(
    rules: &Option<Vec<Rule>>,
    c: Connection<'_>,
    deny: bool,
    at: &str,
) -> bool {
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

fn operation_matches(op: &Operation, c: Connection<'_>, request: &Request<'_>) -> bool {
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

/// A `when` condition. Keys Ambit does not know, and a condition with neither values nor
/// notValues (which the validator refuses), match in a DENY and not in an ALLOW.
fn condition_matches(
    condition: &Condition,
    c: Connection<'_>,
    request: &Request<'_>,
    deny: bool,
) -> bool {
    let (values, not_values) = (&condition.values, &condition.not_values);
    if values.is_empty() && not_values.is_empty() {
        return deny;
    }
    let key = condition.key.as_str();
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
        |value: &String| (values.is_empty() || fits(value, values)) && !fits(value, not_values);
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
