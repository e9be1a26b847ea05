//! Gateway API `HTTPRoute` checks: parents (Services: the mesh profile; `ambit` Gateways: an
//! ingress, with a listener that admits the route and shares a hostname), matches and regexes,
//! filters (those the waypoint applies; others are refused, never ignored), backends and their
//! weights, timeouts and retries. A backend Service nothing defines turns `ResolvedRefs`
//! false: requests for it fail with 500 until it appears, as the Gateway API says.

use super::{KnownHosts, RESOLVED_REFS, Validation, check_duration};
use crate::config::{ConfigSet, ObjectKey};
use mesh_api::{
    duration,
    {
        gateway_api::{GatewayRole, intersect_hostnames},
        http_route::{
            GATEWAY_GROUP, HttpRouteFilter, HttpRouteMatch, HttpRouteRule, ParentReference,
        },
    },
};

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// The largest weight the Gateway API allows.
const MAX_WEIGHT: u32 = 1_000_000;

pub(super) fn http_routes(set: &ConfigSet, hosts: &KnownHosts, v: &mut Validation) {
    for (key, route) in set.http_routes() {
        let spec = &route.spec;
        if spec.parent_refs.is_empty() {
            v.invalid(
                key,
                "NoParentRefs",
                "spec.parentRefs is empty: the route attaches to nothing".to_owned(),
            );
        }
        for (i, parent) in spec.parent_refs.iter().enumerate() {
            let at = format!("spec.parentRefs[{i}]");
            match parent.is_service() {
                true => parent_ref(v, key, hosts, &at, parent),
                false => gateway_parent(set, v, key, &at, parent, &spec.hostnames),
            }
        }
        for (i, rule) in spec.rules.iter().enumerate() {
            http_rule(v, key, hosts, &format!("spec.rules[{i}]"), rule);
        }
    }
}

fn parent_ref(
    v: &mut Validation,
    key: &ObjectKey,
    hosts: &KnownHosts,
    at: &str,
    parent: &ParentReference,
) {
    if parent.section_name.is_some() {
        v.invalid(
            key,
            "UnsupportedValue",
            format!("{at}.sectionName: a Service parent is chosen by port, not section"),
        );
    }
    let namespace = parent.namespace.as_deref().unwrap_or(&key.namespace);
    let host = hosts.fqdn(&parent.name, namespace);
    if !hosts.is_known(&host) {
        v.invalid(
            key,
            "NoMatchingParent",
            format!("{at}: no Service {namespace}/{}", parent.name),
        );
    }
}

/// A Gateway parent: an `ambit` ingress Gateway with a listener the route may attach to (by
/// `sectionName`, `port`, namespace and hostname). Gateways of other classes belong to other
/// controllers, which judge the route there.
fn gateway_parent(
    set: &ConfigSet,
    v: &mut Validation,
    key: &ObjectKey,
    at: &str,
    parent: &ParentReference,
    hostnames: &[String],
) {
    if !parent.is_gateway() {
        let group = parent.group.as_deref().unwrap_or(GATEWAY_GROUP);
        let kind = parent.kind.as_deref().unwrap_or("Gateway");
        v.invalid(
            key,
            "UnsupportedValue",
            format!(
                "{at}: a {group}/{kind} parent; Ambit attaches HTTPRoutes to Services and Gateways"
            ),
        );
        return;
    }
    let namespace = parent.namespace.as_deref().unwrap_or(&key.namespace);
    let Some(gateway) = set.k8s_gateway(namespace, &parent.name) else {
        v.invalid(
            key,
            "NoMatchingParent",
            format!("{at}: no Gateway {namespace}/{}", parent.name),
        );
        return;
    };
    match set.gateway_role(gateway) {
        Some(GatewayRole::Ingress) => {}
        Some(GatewayRole::Waypoint) => {
            v.invalid(
                key,
                "UnsupportedValue",
                format!(
                    "{at}: {namespace}/{} is a waypoint; attach the route to the Service it serves",
                    parent.name
                ),
            );
            return;
        }
        None => return,
    }
    let listeners: Vec<_> = gateway
        .spec
        .listeners
        .iter()
        .filter(|l| l.picked_by(parent))
        .collect();
    if listeners.is_empty() {
        v.invalid(
            key,
            "NoMatchingParent",
            format!(
                "{at}: Gateway {namespace}/{} has no listener {}",
                parent.name,
                listener_wanted(parent)
            ),
        );
        return;
    }
    let allowed: Vec<_> = listeners
        .into_iter()
        .filter(|l| {
            l.admits_namespace(
                &key.namespace,
                &set.namespace_labels(&key.namespace),
                namespace,
            )
        })
        .collect();
    if allowed.is_empty() {
        v.invalid(
            key,
            "NotAllowedByListeners",
            format!("{at}: the listeners of Gateway {namespace}/{} do not admit routes from namespace {}", parent.name, key.namespace),
        );
        return;
    }
    let shared = hostnames.is_empty()
        || allowed.iter().any(|l| {
            hostnames
                .iter()
                .any(|h| intersect_hostnames(l.hostname.as_deref(), h).is_some())
        });
    if !shared {
        v.invalid(
            key,
            "NoMatchingListenerHostname",
            format!("{at}: none of the route's hostnames is served by the listeners of Gateway {namespace}/{}", parent.name),
        );
    }
}

fn listener_wanted(parent: &ParentReference) -> String {
    match (&parent.section_name, parent.port) {
        (Some(name), Some(port)) => format!("{name:?} on port {port}"),
        (Some(name), None) => format!("{name:?}"),
        (None, Some(port)) => format!("on port {port}"),
        (None, None) => "at all".to_owned(),
    }
}

fn http_rule(
    v: &mut Validation,
    key: &ObjectKey,
    hosts: &KnownHosts,
    at: &str,
    rule: &HttpRouteRule,
) {
    for (m, matcher) in rule.matches.iter().enumerate() {
        http_match(v, key, &format!("{at}.matches[{m}]"), matcher);
    }
    let types: Vec<&str> = rule.filters.iter().map(|f| f.type_.as_str()).collect();
    if types.contains(&"RequestRedirect") && types.contains(&"URLRewrite") {
        v.invalid(
            key,
            "InvalidFilters",
            format!("{at}.filters: RequestRedirect and URLRewrite exclude each other"),
        );
    }
    let prefix_only = !rule.matches.is_empty()
        && rule.matches.iter().all(|m| {
            m.path
                .as_ref()
                .is_none_or(|p| p.type_.as_deref().unwrap_or("PathPrefix") == "PathPrefix")
        });
    for (f, filter) in rule.filters.iter().enumerate() {
        let at = format!("{at}.filters[{f}]");
        http_filter(v, key, &at, filter, true);
        if let Some(mirror) = &filter.request_mirror {
            let at = format!("{at}.requestMirror.backendRef");
            backend_object(v, key, hosts, &at, &mirror.backend_ref);
        }
        let modifiers = [
            filter
                .request_redirect
                .as_ref()
                .and_then(|r| r.path.as_ref()),
            filter.url_rewrite.as_ref().and_then(|r| r.path.as_ref()),
        ];
        for path in modifiers.into_iter().flatten() {
            match path.type_.as_str() {
                "ReplaceFullPath" if path.replace_full_path.is_some() => {}
                "ReplacePrefixMatch" if path.replace_prefix_match.is_some() => {
                    if !prefix_only {
                        v.invalid(
                            key,
                            "InvalidFilters",
                            format!("{at}: ReplacePrefixMatch needs every match of the rule to be a PathPrefix"),
                        );
                    }
                }
                other => v.invalid(
                    key,
                    "InvalidFilters",
                    format!("{at}.path: type {other:?} needs its value (ReplaceFullPath with replaceFullPath, ReplacePrefixMatch with replacePrefixMatch)"),
                ),
            }
        }
    }
    let mut total: u64 = 0;
    for (b, backend) in rule.backend_refs.iter().enumerate() {
        let at = format!("{at}.backendRefs[{b}]");
        let object = backend.object();
        backend_object(v, key, hosts, &at, &object);
        let weight = backend.weight.unwrap_or(1);
        if weight > MAX_WEIGHT {
            v.invalid(
                key,
                "InvalidWeights",
                format!("{at}.weight {weight} is above {MAX_WEIGHT}"),
            );
        }
        total += u64::from(weight);
        for (f, filter) in backend.filters.iter().enumerate() {
            http_filter(v, key, &format!("{at}.filters[{f}]"), filter, false);
        }
    }
    if !rule.backend_refs.is_empty() && total == 0 {
        // Allowed, and answered 500 as the Gateway API says; worth a word in the status.
        v.report(
            key,
            RESOLVED_REFS,
            "InvalidWeights",
            format!("{at}: every backend weighs 0, so requests get 500"),
        );
    }
    if let Some(timeouts) = &rule.timeouts {
        check_duration(
            v,
            key,
            &format!("{at}.timeouts.request"),
            timeouts.request.as_ref(),
        );
        check_duration(
            v,
            key,
            &format!("{at}.timeouts.backendRequest"),
            timeouts.backend_request.as_ref(),
        );
        let parse = |t: &Option<String>| t.as_deref().and_then(|t| duration::parse(t).ok());
        if let (Some(request), Some(backend)) =
            (parse(&timeouts.request), parse(&timeouts.backend_request))
            && !request.is_zero()
            && backend > request
        {
            v.invalid(
                key,
                "InvalidTimeouts",
                format!("{at}.timeouts: backendRequest is longer than request"),
            );
        }
    }
    if let Some(retry) = &rule.retry {
        if let Some(code) = retry.codes.iter().find(|c| !(400..600).contains(*c)) {
            v.invalid(
                key,
                "InvalidRetry",
                format!("{at}.retry.codes: {code} is not a 4xx or 5xx status"),
            );
        }
        check_duration(
            v,
            key,
            &format!("{at}.retry.backoff"),
            retry.backoff.as_ref(),
        );
    }
}

fn http_match(v: &mut Validation, key: &ObjectKey, at: &str, matcher: &HttpRouteMatch) {
    if let Some(path) = &matcher.path {
        let value = path.value.as_deref().unwrap_or("/");
        match path.type_.as_deref().unwrap_or("PathPrefix") {
            "Exact" | "PathPrefix" if value.starts_with('/') => {}
            "Exact" | "PathPrefix" => v.invalid(
                key,
                "InvalidMatch",
                format!("{at}.path.value {value:?} does not start with /"),
            ),
            "RegularExpression" => super::routes::check_regex(v, key, &format!("{at}.path"), value),
            other => v.invalid(
                key,
                "InvalidMatch",
                format!("{at}.path.type {other:?} is not Exact, PathPrefix or RegularExpression"),
            ),
        }
    }
    let values = matcher
        .headers
        .iter()
        .map(|h| ("headers", h))
        .chain(matcher.query_params.iter().map(|q| ("queryParams", q)));
    for (field, value) in values {
        let at = format!("{at}.{field}[{}]", value.name);
        match value.type_.as_deref().unwrap_or("Exact") {
            "Exact" => {}
            "RegularExpression" => super::routes::check_regex(v, key, &at, &value.value),
            other => v.invalid(
                key,
                "InvalidMatch",
                format!("{at}.type {other:?} is not Exact or RegularExpression"),
            ),
        }
        if value.name.is_empty() || value.name.contains(|c: char| c.is_whitespace() || c == ':') {
            v.invalid(
                key,
                "InvalidMatch",
                format!("{at}: {:?} is not a name", value.name),
            );
        }
    }
    if let Some(method) = &matcher.method
        && !METHODS.contains(&method.as_str())
    {
        v.invalid(
            key,
            "InvalidMatch",
            format!(
                "{at}.method {method:?} is not one of {}",
                METHODS.join(", ")
            ),
        );
    }
}

/// A filter's type and settings; `on_rule`: a rule's filter (a backend's may only edit
/// headers).
fn http_filter(
    v: &mut Validation,
    key: &ObjectKey,
    at: &str,
    filter: &HttpRouteFilter,
    on_rule: bool,
) {
    let present = match filter.type_.as_str() {
        "RequestHeaderModifier" => filter.request_header_modifier.is_some(),
        "ResponseHeaderModifier" => filter.response_header_modifier.is_some(),
        "RequestRedirect" | "URLRewrite" | "RequestMirror" if !on_rule => {
            v.invalid(
                key,
                "UnsupportedValue",
                format!(
                    "{at}: a backend's filters may only modify headers, not {}",
                    filter.type_
                ),
            );
            return;
        }
        "RequestRedirect" => filter.request_redirect.is_some(),
        "URLRewrite" => filter.url_rewrite.is_some(),
        "RequestMirror" => filter.request_mirror.is_some(),
        other => {
            v.invalid(
                key,
                "UnsupportedValue",
                format!("{at}: filter type {other:?} is not supported by Ambit (RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite, RequestMirror are)"),
            );
            return;
        }
    };
    if !present {
        v.invalid(
            key,
            "InvalidFilters",
            format!("{at}: type {} without its settings", filter.type_),
        );
    }
    if let Some(redirect) = &filter.request_redirect
        && let Some(code) = redirect.status_code
        && ![301, 302, 303, 307, 308].contains(&code)
    {
        v.invalid(
            key,
            "InvalidFilters",
            format!("{at}.requestRedirect.statusCode {code} is not a redirect"),
        );
    }
    if let Some(mirror) = &filter.request_mirror {
        if mirror.percent.is_some_and(|p| p > 100)
            || mirror.fraction.as_ref().is_some_and(|f| {
                f.numerator > f.denominator.unwrap_or(100) || f.denominator == Some(0)
            })
        {
            v.invalid(
                key,
                "InvalidFilters",
                format!("{at}.requestMirror: the share mirrored is above 100 %"),
            );
        }
        if mirror.percent.is_some() && mirror.fraction.is_some() {
            v.invalid(
                key,
                "InvalidFilters",
                format!("{at}.requestMirror: percent and fraction exclude each other"),
            );
        }
    }
}

fn backend_object(
    v: &mut Validation,
    key: &ObjectKey,
    hosts: &KnownHosts,
    at: &str,
    backend: &mesh_api::http_route::BackendObjectReference,
) {
    if !backend.is_service() {
        v.invalid(
            key,
            "UnsupportedValue",
            format!(
                "{at}: kind {} is not a backend Ambit routes to (Services are)",
                backend.kind.as_deref().unwrap_or("Service")
            ),
        );
        return;
    }
    if backend.port.is_none() {
        v.invalid(
            key,
            "InvalidBackend",
            format!("{at}: a Service backend needs its port"),
        );
    }
    let namespace = backend.namespace.as_deref().unwrap_or(&key.namespace);
    let host = hosts.fqdn(&backend.name, namespace);
    if !hosts.is_known(&host) {
        v.report(
            key,
            RESOLVED_REFS,
            "BackendNotFound",
            format!("{at}: no Service {namespace}/{}", backend.name),
        );
    }
}
