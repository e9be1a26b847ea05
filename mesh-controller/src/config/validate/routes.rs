//! VirtualService checks: route actions, weights, matches and regexes, durations, retries,
//! faults, rewrites and redirects; references to hosts, subsets and delegates; one
//! VirtualService per host inside the mesh.

use std::collections::BTreeSet;

use super::{
    KnownHosts, RESOLVED_REFS, Validation, check_duration, check_percent, conflicts,
    networking::by_age,
};
use crate::config::{ConfigSet, ObjectKey};
use mesh_api::{
    common::{Destination, StringMatch},
    networking::HttpRoute,
    virtual_service::{CorsPolicy, Delegate, VirtualServiceSpec},
};

const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

pub(super) fn virtual_services(set: &ConfigSet, hosts: &KnownHosts, v: &mut Validation) {
    let subsets = defined_subsets(set, hosts);
    let ordered = by_age(set.virtual_services());
    for (key, vs) in &ordered {
        let spec = &vs.spec;
        if spec.hosts.is_empty() {
            delegate_spec(v, key, spec);
        }
        for (i, route) in spec.http.iter().enumerate() {
            http_route(v, key, &format!("spec.http[{i}]"), route);
            if let Some(delegate) = &route.delegate {
                delegate_ref(set, v, key, &format!("spec.http[{i}].delegate"), delegate);
            }
            let mut destinations: Vec<(&Destination, String)> = route
                .route
                .iter()
                .enumerate()
                .map(|(j, d)| (&d.destination, format!("spec.http[{i}].route[{j}]")))
                .collect();
            if let Some(mirror) = &route.mirror {
                destinations.push((mirror, format!("spec.http[{i}].mirror")));
            }
            for (j, mirror) in route.mirrors.iter().enumerate() {
                destinations.push((&mirror.destination, format!("spec.http[{i}].mirrors[{j}]")));
            }
            for (destination, at) in destinations {
                references(v, key, hosts, &subsets, destination, &at);
            }
        }
        for (i, route) in spec.tls.iter().enumerate() {
            let at = format!("spec.tls[{i}]");
            let weights: Vec<Option<i32>> = route.route.iter().map(|d| d.weight).collect();
            check_weights(v, key, &at, &weights);
            if route.matches.is_empty() {
                v.invalid(key, "InvalidRoute", format!("{at}.match is empty"));
            }
            if route.route.is_empty() {
                v.invalid(key, "InvalidRoute", format!("{at}.route is empty"));
            }
            for (j, m) in route.matches.iter().enumerate() {
                if m.sni_hosts.is_empty() {
                    v.invalid(
                        key,
                        "InvalidRoute",
                        format!("{at}.match[{j}].sniHosts is empty"),
                    );
                }
                subnets(v, key, &format!("{at}.match[{j}]"), &m.destination_subnets);
            }
            for (j, d) in route.route.iter().enumerate() {
                references(
                    v,
                    key,
                    hosts,
                    &subsets,
                    &d.destination,
                    &format!("{at}.route[{j}]"),
                );
            }
        }
        for (i, route) in spec.tcp.iter().enumerate() {
            let weights: Vec<Option<i32>> = route.route.iter().map(|d| d.weight).collect();
            check_weights(v, key, &format!("spec.tcp[{i}]"), &weights);
            for (j, m) in route.matches.iter().enumerate() {
                let at = format!("spec.tcp[{i}].match[{j}]");
                subnets(v, key, &at, &m.destination_subnets);
            }
            for (j, d) in route.route.iter().enumerate() {
                let at = format!("spec.tcp[{i}].route[{j}]");
                references(v, key, hosts, &subsets, &d.destination, &at);
            }
        }
    }
    // Inside the mesh a host has one VirtualService (Istio merges only at gateways).
    let claims = ordered.iter().flat_map(|(key, vs)| {
        let mesh = vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh");
        vs.spec
            .hosts
            .iter()
            .filter(move |_| mesh)
            .map(|h| (hosts.fqdn(h, &key.namespace), *key))
    });
    conflicts(v, claims.collect::<Vec<_>>(), "host");
}

/// A VirtualService without hosts is a delegate: its `http` routes apply under a root
/// route's `delegate`, one level deep, as in Istio.
fn delegate_spec(v: &mut Validation, key: &ObjectKey, spec: &VirtualServiceSpec) {
    if spec.http.is_empty() {
        v.invalid(key, "MissingHosts", "spec.hosts is empty".to_owned());
    }
    if !spec.tcp.is_empty() || !spec.tls.is_empty() {
        v.invalid(
            key,
            "InvalidDelegate",
            "a VirtualService without hosts is a delegate, which has only http routes".to_owned(),
        );
    }
    if spec.http.iter().any(|r| r.delegate.is_some()) {
        v.invalid(
            key,
            "InvalidDelegate",
            "a delegate cannot delegate again (one level only)".to_owned(),
        );
    }
}

/// A root route's delegate: a VirtualService without hosts. One that does not exist yet
/// leaves the route without effect (`ResolvedRefs` false) until it does.
fn delegate_ref(set: &ConfigSet, v: &mut Validation, key: &ObjectKey, at: &str, to: &Delegate) {
    let namespace = to.namespace.as_deref().unwrap_or(&key.namespace);
    let found = set
        .virtual_services()
        .find(|(k, _)| k.namespace == namespace && k.name == to.name);
    match found {
        None => v.report(
            key,
            RESOLVED_REFS,
            "DelegateNotFound",
            format!("{at}: no VirtualService {namespace}/{}", to.name),
        ),
        Some((_, delegate)) if !delegate.spec.hosts.is_empty() => v.invalid(
            key,
            "InvalidDelegate",
            format!(
                "{at}: {namespace}/{} has hosts; a delegate has none",
                to.name
            ),
        ),
        Some(_) => {}
    }
}

fn http_route(v: &mut Validation, key: &ObjectKey, at: &str, route: &HttpRoute) {
    let actions = [
        !route.route.is_empty(),
        route.redirect.is_some(),
        route.direct_response.is_some(),
        route.delegate.is_some(),
    ];
    match actions.iter().filter(|a| **a).count() {
        0 => v.invalid(
            key,
            "InvalidRoute",
            format!("{at}: a route needs one of route, redirect, directResponse or delegate"),
        ),
        1 => {}
        _ => v.invalid(
            key,
            "InvalidRoute",
            format!("{at}: route, redirect, directResponse and delegate exclude each other"),
        ),
    }
    let weights: Vec<Option<i32>> = route.route.iter().map(|d| d.weight).collect();
    check_weights(v, key, at, &weights);
    for (m, matcher) in route.matches.iter().enumerate() {
        let at = format!("{at}.match[{m}]");
        let singles = [
            ("uri", &matcher.uri),
            ("scheme", &matcher.scheme),
            ("method", &matcher.method),
            ("authority", &matcher.authority),
        ];
        for (field, value) in singles {
            if let Some(value) = value {
                string_match(v, key, &format!("{at}.{field}"), value);
            }
        }
        let maps = [
            ("headers", &matcher.headers),
            ("queryParams", &matcher.query_params),
            ("withoutHeaders", &matcher.without_headers),
        ];
        for (field, map) in maps {
            for (name, value) in map {
                string_match(v, key, &format!("{at}.{field}.{name}"), value);
            }
        }
    }
    check_duration(v, key, &format!("{at}.timeout"), route.timeout.as_ref());
    if let Some(retries) = &route.retries {
        if retries.attempts < 0 {
            v.invalid(
                key,
                "InvalidRetries",
                format!("{at}.retries.attempts is negative"),
            );
        }
        check_duration(
            v,
            key,
            &format!("{at}.retries.perTryTimeout"),
            retries.per_try_timeout.as_ref(),
        );
        for condition in retries.retry_on.iter().flat_map(|r| r.split(',')) {
            let condition = condition.trim();
            let status = condition
                .parse::<u16>()
                .is_ok_and(|s| (100..600).contains(&s));
            if !status && !RETRY_ON.contains(&condition) {
                v.invalid(
                    key,
                    "InvalidRetries",
                    format!("{at}.retries.retryOn: unknown condition {condition:?} (known: {}, or an HTTP status)", RETRY_ON.join(", ")),
                );
            }
        }
    }
    if let Some(fault) = &route.fault {
        if let Some(delay) = &fault.delay {
            if delay.fixed_delay.is_none() {
                v.invalid(
                    key,
                    "InvalidFault",
                    format!("{at}.fault.delay needs fixedDelay"),
                );
            }
            check_duration(
                v,
                key,
                &format!("{at}.fault.delay.fixedDelay"),
                delay.fixed_delay.as_ref(),
            );
            if let Some(p) = &delay.percentage {
                check_percent(v, key, &format!("{at}.fault.delay.percentage"), p.value);
            }
        }
        if let Some(abort) = &fault.abort {
            match (&abort.http_status, &abort.grpc_status) {
                (Some(status), None) if (200..=599).contains(status) => {}
                (Some(status), None) => v.invalid(
                    key,
                    "InvalidFault",
                    format!("{at}.fault.abort.httpStatus {status} is not an HTTP status (200-599)"),
                ),
                (None, Some(status))
                    if mesh_api::virtual_service::GRPC_STATUSES.contains(&status.as_str()) => {}
                (None, Some(status)) => v.invalid(
                    key,
                    "InvalidFault",
                    format!("{at}.fault.abort.grpcStatus {status:?} is not a gRPC status name"),
                ),
                _ => v.invalid(
                    key,
                    "InvalidFault",
                    format!("{at}.fault.abort needs one of httpStatus or grpcStatus"),
                ),
            }
            if let Some(p) = &abort.percentage {
                check_percent(v, key, &format!("{at}.fault.abort.percentage"), p.value);
            }
        }
    }
    if let Some(p) = &route.mirror_percentage {
        check_percent(v, key, &format!("{at}.mirrorPercentage"), p.value);
    }
    if let Some(rewrite) = &route.rewrite {
        if rewrite.uri.is_some() && rewrite.uri_regex_rewrite.is_some() {
            v.invalid(
                key,
                "InvalidRewrite",
                format!("{at}.rewrite: uri and uriRegexRewrite exclude each other"),
            );
        }
        if let Some(regex) = &rewrite.uri_regex_rewrite {
            check_regex(
                v,
                key,
                &format!("{at}.rewrite.uriRegexRewrite.match"),
                &regex.pattern,
            );
        }
    }
    if let Some(cors) = &route.cors_policy {
        cors_policy(v, key, &format!("{at}.corsPolicy"), cors);
    }
    if let Some(code) = route.redirect.as_ref().and_then(|r| r.redirect_code)
        && ![301, 302, 303, 307, 308].contains(&code)
    {
        v.invalid(
            key,
            "InvalidRedirect",
            format!("{at}.redirect.redirectCode {code} is not 301, 302, 303, 307 or 308"),
        );
    }
}

fn cors_policy(v: &mut Validation, key: &ObjectKey, at: &str, cors: &CorsPolicy) {
    for (i, origin) in cors.allow_origins.iter().enumerate() {
        string_match(v, key, &format!("{at}.allowOrigins[{i}]"), origin);
    }
    for method in &cors.allow_methods {
        if http::Method::from_bytes(method.as_bytes()).is_err() {
            v.invalid(
                key,
                "InvalidCorsPolicy",
                format!("{at}.allowMethods: {method:?} is not an HTTP method"),
            );
        }
    }
    let names = [
        ("allowHeaders", &cors.allow_headers),
        ("exposeHeaders", &cors.expose_headers),
    ];
    for (field, names) in names {
        for name in names {
            if name != "*" && http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                v.invalid(
                    key,
                    "InvalidCorsPolicy",
                    format!("{at}.{field}: {name:?} is not a header name"),
                );
            }
        }
    }
    check_duration(v, key, &format!("{at}.maxAge"), cors.max_age.as_ref());
    if let Some(unmatched) = &cors.unmatched_preflights
        && !["FORWARD", "IGNORE", "UNSPECIFIED"].contains(&unmatched.as_str())
    {
        v.invalid(
            key,
            "InvalidCorsPolicy",
            format!("{at}.unmatchedPreflights: {unmatched:?} is not FORWARD or IGNORE"),
        );
    }
}

/// One destination takes everything (weight absent or 100); several share 100.
fn check_weights(v: &mut Validation, key: &ObjectKey, at: &str, weights: &[Option<i32>]) {
    if let Some(w) = weights.iter().flatten().find(|w| **w < 0) {
        v.invalid(
            key,
            "InvalidWeights",
            format!("{at}: weight {w} is negative"),
        );
        return;
    }
    let sum: i64 = weights.iter().flatten().map(|w| i64::from(*w)).sum();
    let ok = match weights {
        [] => true,
        [only] => only.is_none_or(|w| w == 100 || w == 0),
        _ => sum == 100,
    };
    if !ok {
        let listed: Vec<String> = weights
            .iter()
            .map(|w| w.map_or_else(|| "unset".to_owned(), |w| w.to_string()))
            .collect();
        v.invalid(
            key,
            "InvalidWeights",
            format!(
                "{at}: route weights {} sum to {sum}, not 100",
                listed.join(" + ")
            ),
        );
    }
}

fn string_match(v: &mut Validation, key: &ObjectKey, at: &str, m: &StringMatch) {
    let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()];
    if set.iter().filter(|s| **s).count() != 1 {
        v.invalid(
            key,
            "InvalidMatch",
            format!("{at}: set exactly one of exact, prefix or regex"),
        );
    }
    if let Some(regex) = &m.regex {
        check_regex(v, key, &format!("{at}.regex"), regex);
    }
}

pub(super) fn check_regex(v: &mut Validation, key: &ObjectKey, at: &str, pattern: &str) {
    if let Err(error) = regex::Regex::new(pattern) {
        // The regex crate's message spans lines with a caret under the fault; keep its gist.
        let gist = error
            .to_string()
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_owned();
        v.invalid(
            key,
            "InvalidRegex",
            format!("{at}: {pattern:?} does not compile: {gist}"),
        );
    }
}

/// (host FQDN, subset) pairs the DestinationRules define.
fn defined_subsets(set: &ConfigSet, hosts: &KnownHosts) -> BTreeSet<(String, String)> {
    set.destination_rules()
        .flat_map(|(key, dr)| {
            let host = hosts.fqdn(&dr.spec.host, &key.namespace);
            dr.spec
                .subsets
                .iter()
                .map(move |s| (host.clone(), s.name.clone()))
        })
        .collect()
}

fn references(
    v: &mut Validation,
    key: &ObjectKey,
    hosts: &KnownHosts,
    subsets: &BTreeSet<(String, String)>,
    destination: &Destination,
    at: &str,
) {
    let host = hosts.fqdn(&destination.host, &key.namespace);
    if !hosts.is_known(&host) {
        v.report(
            key,
            RESOLVED_REFS,
            "UnknownHost",
            format!("{at}: host {host} is neither a Service nor a ServiceEntry host"),
        );
    }
    if let Some(subset) = &destination.subset
        && !subsets.contains(&(host.clone(), subset.clone()))
    {
        v.report(
            key,
            RESOLVED_REFS,
            "UnknownSubset",
            format!("{at}: no DestinationRule for {host} defines subset {subset:?}"),
        );
    }
}

/// `destinationSubnets`: addresses or CIDR blocks.
fn subnets(v: &mut Validation, key: &ObjectKey, at: &str, subnets: &[String]) {
    let probe = std::net::IpAddr::from([0, 0, 0, 0]);
    for subnet in subnets {
        if mesh_core::policy::cidr_contains(subnet, probe).is_none() {
            v.invalid(
                key,
                "InvalidMatch",
                format!("{at}.destinationSubnets: {subnet:?} is not an address or CIDR block"),
            );
        }
    }
}
