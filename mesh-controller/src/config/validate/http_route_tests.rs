//! HTTPRoute validation, on the shapes of Istio's ambient tasks.

use super::{
    ACCEPTED, RESOLVED_REFS,
    tests::{findings, key, validated},
};
use crate::config::Kind;

const VERSIONS: &str = r#"apiVersion: v1
kind: Service
metadata: {name: reviews-v1, namespace: bookinfo}
spec: {ports: [{port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v2, namespace: bookinfo}
spec: {ports: [{port: 9080}]}
"#;

fn route(name: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: bookinfo}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: reviews, port: 9080}}]\n  rules:\n{rules}"
    )
}

#[test]
fn the_ambient_tasks_routes_are_accepted() {
    let yaml = [
        VERSIONS.to_owned(),
        route(
            "split",
            "  - backendRefs:\n    - {name: reviews-v1, port: 9080, weight: 90}\n    - {name: reviews-v2, port: 9080, weight: 10}\n",
        ),
        route(
            "jason",
            "  - matches: [{headers: [{type: Exact, name: end-user, value: jason}], path: {type: PathPrefix, value: /reviews}}]\n    filters:\n    - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}\n    - {type: RequestMirror, requestMirror: {backendRef: {name: reviews-v2, port: 9080}, percent: 10}}\n    backendRefs: [{name: reviews-v2, port: 9080}]\n    timeouts: {request: 10s, backendRequest: 2s}\n    retry: {attempts: 3, codes: [503]}\n",
        ),
    ]
    .join("---\n");
    let (_, v) = validated(&yaml);
    for name in ["split", "jason"] {
        let route = key(Kind::HttpRoute, name);
        assert_eq!(findings(&v, &route), [], "{name}");
        let conditions = v.conditions(&route, None);
        let types: Vec<&str> = conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [ACCEPTED, RESOLVED_REFS]);
    }
}

#[test]
fn what_the_waypoint_cannot_do_is_refused_with_its_reason() {
    let on_gateway = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: on-gateway, namespace: bookinfo}\nspec:\n  parentRefs: [{name: ingress}]\n  rules: [{backendRefs: [{name: reviews, port: 9080}]}]\n".to_owned();
    let no_parent = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: no-parent, namespace: bookinfo}\nspec:\n  parentRefs: [{kind: Service, name: ratings}]\n".to_owned();
    let yaml = [
        VERSIONS.to_owned(),
        on_gateway,
        no_parent,
        route("regex", "  - matches: [{path: {type: RegularExpression, value: \"/(unclosed\"}}]\n"),
        route("relative", "  - matches: [{path: {type: Exact, value: reviews}}]\n"),
        route("method", "  - matches: [{method: FETCH}]\n"),
        route("extension", "  - filters: [{type: ExtensionRef, extensionRef: {group: x, kind: y, name: z}}]\n"),
        route("empty-filter", "  - filters: [{type: RequestHeaderModifier}]\n"),
        route(
            "prefix-rewrite",
            "  - matches: [{path: {type: Exact, value: /a}}]\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]\n",
        ),
        route("no-port", "  - backendRefs: [{name: reviews-v1}]\n"),
        route("missing", "  - backendRefs: [{name: reviews-v3, port: 9080}]\n"),
        route("slow", "  - timeouts: {request: 1s, backendRequest: 2s}\n    backendRefs: [{name: reviews-v1, port: 9080}]\n"),
    ]
    .join("---\n");
    let (_, v) = validated(&yaml);
    for (name, reason, says) in [
        (
            "on-gateway",
            "NoMatchingParent",
            "no Gateway bookinfo/ingress",
        ),
        (
            "no-parent",
            "NoMatchingParent",
            "no Service bookinfo/ratings",
        ),
        ("regex", "InvalidRegex", "matches[0].path"),
        ("relative", "InvalidMatch", "does not start with /"),
        ("method", "InvalidMatch", "FETCH"),
        ("extension", "UnsupportedValue", "ExtensionRef"),
        ("empty-filter", "InvalidFilters", "without its settings"),
        ("prefix-rewrite", "InvalidFilters", "ReplacePrefixMatch"),
        ("no-port", "InvalidBackend", "needs its port"),
        ("slow", "InvalidTimeouts", "backendRequest"),
    ] {
        let route = key(Kind::HttpRoute, name);
        let found = findings(&v, &route);
        assert!(
            found.iter().any(|f| f.1 == reason && f.2.contains(says)),
            "{name}: {found:?}"
        );
        assert!(!v.accepted(&route), "{name}");
    }
    // A backend that does not exist yet: accepted, with ResolvedRefs false.
    let missing = key(Kind::HttpRoute, "missing");
    assert!(v.accepted(&missing));
    let found = findings(&v, &missing);
    assert!(
        found
            .iter()
            .any(|f| f.0 == RESOLVED_REFS && f.1 == "BackendNotFound"),
        "{found:?}"
    );
}
