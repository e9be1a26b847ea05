//! HTTPRoutes compiled, on Istio's ambient tasks and the Gateway API's matching rules.

use http::HeaderMap;

use super::*;

const REVIEWS: &str = "reviews.default.svc.cluster.local";

fn table(routes: &[(&str, &str, serde_json::Value)]) -> RouteTable {
    let specs: Vec<(&str, &str, HttpRouteSpec)> = routes
        .iter()
        .map(|(ns, name, spec)| (*ns, *name, serde_json::from_value(spec.clone()).unwrap()))
        .collect();
    let mut table = RouteTable::default();
    let errors =
        table.add_http_routes(specs.iter().map(|(ns, n, s)| (*ns, *n, s)), "cluster.local");
    assert!(errors.is_empty(), "{errors:?}");
    table
}

fn parent() -> serde_json::Value {
    serde_json::json!([{"group": "", "kind": "Service", "name": "reviews", "port": 9080}])
}

fn request<'a>(method: &'a str, path: &'a str, headers: &'a HeaderMap) -> RequestView<'a> {
    RequestView {
        method,
        path,
        query: None,
        authority: "reviews:9080",
        scheme: "http",
        headers,
        port: 9080,
        source_labels: None,
        source_namespace: Some("default"),
    }
}

/// The host the request goes to (all rules here have one backend), or `None` for no route.
fn backend(table: &RouteTable, method: &str, path: &str, headers: &HeaderMap) -> Option<String> {
    match table.find(REVIEWS, &request(method, path, headers)) {
        Lookup::Route(route) => match &route.action {
            Action::Forward(forward) => Some(forward.destinations[0].target.host.clone()),
            Action::Respond { status, .. } => Some(status.to_string()),
            Action::Redirect { .. } => Some("redirect".to_owned()),
        },
        Lookup::NoRoute => None,
        Lookup::Default => Some("default".to_owned()),
    }
}

fn to(name: &str) -> serde_json::Value {
    serde_json::json!([{"name": name, "port": 9080}])
}

#[test]
fn the_most_specific_match_wins_whatever_the_order() {
    let routes = table(&[
        (
            "default",
            "a-catch-all",
            serde_json::json!({
                "parentRefs": parent(),
                "rules": [{"backendRefs": to("reviews-v1")}],
            }),
        ),
        (
            "default",
            "b-specific",
            serde_json::json!({
                "parentRefs": parent(),
                "rules": [
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}], "backendRefs": to("api")},
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/api/v2/"}}], "backendRefs": to("api-v2")},
                    {"matches": [{"path": {"type": "Exact", "value": "/api/v2/health"}}], "backendRefs": to("health")},
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "method": "POST"}], "backendRefs": to("writes")},
                    {"matches": [{"headers": [{"name": "end-user", "value": "jason"}]}], "backendRefs": to("reviews-v2")},
                ],
            }),
        ),
    ]);
    let none = HeaderMap::new();
    let host = |name: &str| format!("{name}.default.svc.cluster.local");
    assert_eq!(
        backend(&routes, "GET", "/api/v2/health", &none),
        Some(host("health"))
    );
    assert_eq!(
        backend(&routes, "GET", "/api/v2/x", &none),
        Some(host("api-v2"))
    );
    assert_eq!(
        backend(&routes, "GET", "/api/v2", &none),
        Some(host("api-v2")),
        "trailing slash ignored"
    );
    assert_eq!(backend(&routes, "GET", "/api/v1", &none), Some(host("api")));
    assert_eq!(
        backend(&routes, "POST", "/api/v1", &none),
        Some(host("writes")),
        "a method beats none"
    );
    assert_eq!(
        backend(&routes, "GET", "/apis", &none),
        Some(host("reviews-v1")),
        "whole segments only"
    );
    let mut jason = HeaderMap::new();
    jason.insert("end-user", "jason".parse().unwrap());
    assert_eq!(
        backend(&routes, "GET", "/", &jason),
        Some(host("reviews-v2")),
        "a header beats none"
    );
    assert_eq!(
        backend(&routes, "GET", "/", &none),
        Some(host("reviews-v1"))
    );
    // Another port of the Service is not this route's.
    let mut other_port = request("GET", "/", &none);
    other_port.port = 9081;
    assert!(matches!(routes.find(REVIEWS, &other_port), Lookup::NoRoute));
}

#[test]
fn weights_filters_and_timeouts_become_the_route() {
    let routes = table(&[(
        "default",
        "reviews",
        serde_json::json!({
            "parentRefs": parent(),
            "rules": [
                {"matches": [{"path": {"value": "/old"}}],
                 "filters": [{"type": "RequestRedirect", "requestRedirect": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}}]},
                {"matches": [{"path": {"value": "/empty"}}], "backendRefs": [{"name": "reviews-v1", "port": 9080, "weight": 0}]},
                {"filters": [
                    {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-route", "value": "gamma"}], "remove": ["x-drop"]}},
                    {"type": "URLRewrite", "urlRewrite": {"hostname": "reviews.internal", "path": {"type": "ReplaceFullPath", "replaceFullPath": "/v2$1"}}},
                    {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "shadow", "port": 9080}, "fraction": {"numerator": 1, "denominator": 4}}},
                 ],
                 "backendRefs": [{"name": "reviews-v1", "port": 9080, "weight": 90}, {"name": "reviews-v2", "port": 9080}],
                 "timeouts": {"request": "10s", "backendRequest": "0s"}},
            ],
        }),
    )]);
    let none = HeaderMap::new();
    let Lookup::Route(redirect) = routes.find(REVIEWS, &request("GET", "/old/x", &none)) else {
        panic!("no redirect route");
    };
    assert!(matches!(
        &redirect.action,
        Action::Redirect { uri: Some(uri), replace_prefix: true, status, .. } if uri == "/new" && status.as_u16() == 302
    ));
    assert_eq!(
        backend(&routes, "GET", "/empty", &none).as_deref(),
        Some("500 Internal Server Error")
    );
    let Lookup::Route(route) = routes.find(REVIEWS, &request("GET", "/x", &none)) else {
        panic!("no route");
    };
    let Action::Forward(forward) = &route.action else {
        panic!("not forwarded");
    };
    let weights: Vec<u32> = forward.destinations.iter().map(|d| d.weight).collect();
    assert_eq!(weights, [90, 1], "a backend weighs 1 unless it says");
    assert_eq!(route.headers.set[0].0, "x-route");
    assert_eq!(route.headers.remove[0], "x-drop");
    let rewrite = forward.rewrite.as_ref().expect("a rewrite");
    assert_eq!(rewrite.authority.as_deref(), Some("reviews.internal"));
    let (regex, replacement) = rewrite.uri_regex.as_ref().expect("a full-path rewrite");
    assert_eq!(
        regex.replace_all("/any/path", replacement.as_str()),
        "/v2$1",
        "taken literally"
    );
    assert_eq!(forward.mirrors[0].percent, 25.0);
    assert_eq!(forward.timeout, Some(std::time::Duration::from_secs(10)));
    assert_eq!(forward.retries.per_try_timeout, None, "0s is no timeout");
    assert_eq!(forward.retries.attempts, 0, "no retries unless asked");
}

#[test]
fn a_consumer_route_applies_to_its_own_namespace_only() {
    let routes = table(&[(
        "frontend",
        "reviews-for-frontend",
        serde_json::json!({
            "parentRefs": [{"kind": "Service", "name": "reviews", "namespace": "default"}],
            "rules": [{"backendRefs": [{"name": "reviews-v2", "namespace": "default", "port": 9080}]}],
        }),
    )]);
    let none = HeaderMap::new();
    let mut from_frontend = request("GET", "/", &none);
    from_frontend.source_namespace = Some("frontend");
    assert!(matches!(
        routes.find(REVIEWS, &from_frontend),
        Lookup::Route(_)
    ));
    // Other clients go to the Service itself.
    assert!(matches!(
        routes.find(REVIEWS, &request("GET", "/", &none)),
        Lookup::Default
    ));
}

/// At an ingress, a route attaches to its Gateway's listeners under the hostnames it shares
/// with each, answering on the listener's port; routes for other Gateways or for Services are
/// not the ingress's.
#[test]
fn gateway_routes_attach_by_listener_and_hostname() {
    let servers: Vec<Server> = serde_json::from_value(serde_json::json!([
        {"port": {"number": 80, "protocol": "HTTP", "name": "http"}, "hosts": ["*.example.com"], "name": "http"},
        {"port": {"number": 8080, "protocol": "HTTP", "name": "plain"}, "hosts": ["*"], "name": "plain"},
    ]))
    .unwrap();
    let gateway = |section: Option<&str>| match section {
        Some(section) => serde_json::json!([{"name": "public", "sectionName": section}]),
        None => serde_json::json!([{"name": "public"}]),
    };
    let specs: Vec<(&str, &str, HttpRouteSpec)> = [
        (
            "bookinfo",
            serde_json::json!({"parentRefs": gateway(Some("http")), "hostnames": ["bookinfo.example.com", "bookinfo.example.org"], "rules": [{"backendRefs": to("productpage")}]}),
        ),
        (
            "wild",
            serde_json::json!({"parentRefs": gateway(None), "rules": [{"backendRefs": to("catch-all")}]}),
        ),
        (
            "elsewhere",
            serde_json::json!({"parentRefs": [{"name": "private"}], "hostnames": ["bookinfo.example.com"], "rules": [{"backendRefs": to("private")}]}),
        ),
        (
            "mesh",
            serde_json::json!({"parentRefs": parent(), "rules": [{"backendRefs": to("reviews-v1")}]}),
        ),
    ]
    .into_iter()
    .map(|(name, spec)| ("default", name, serde_json::from_value(spec).unwrap()))
    .collect();
    let mut table = RouteTable::default();
    let errors = table.add_gateway_http_routes(
        specs.iter().map(|(ns, n, s)| (*ns, *n, s)),
        "cluster.local",
        ("default", "public"),
        &servers,
    );
    assert!(errors.is_empty(), "{errors:?}");
    let headers = HeaderMap::new();
    let via = |host: &str, port: u16| {
        let host = table.gateway_host(host, port)?;
        let request = RequestView {
            port,
            ..request("GET", "/", &headers)
        };
        match table.find(&host, &request) {
            Lookup::Route(route) => match &route.action {
                Action::Forward(forward) => Some(forward.destinations[0].target.host.clone()),
                _ => None,
            },
            _ => None,
        }
    };
    let at = |service: &str| Some(format!("{service}.default.svc.cluster.local"));
    // The exact hostname, on the listener it names only; `.org` is not the listener's.
    assert_eq!(via("bookinfo.example.com", 80), at("productpage"));
    assert_eq!(via("Bookinfo.Example.com", 80), at("productpage"));
    assert_eq!(via("bookinfo.example.org", 80), None);
    // Without hostnames, the route takes each listener's: `*.example.com` on 80, `*` on 8080.
    assert_eq!(via("ratings.example.com", 80), at("catch-all"));
    assert_eq!(via("anything.test", 8080), at("catch-all"));
    assert_eq!(via("bookinfo.example.com", 8080), at("catch-all"));
    assert_eq!(table.routes(REVIEWS).map(<[Route]>::len), None);
}
