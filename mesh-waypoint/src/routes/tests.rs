use std::collections::BTreeMap;

use http::HeaderMap;
use mesh_api::virtual_service::VirtualServiceSpec;

use super::*;

pub(super) const DOMAIN: &str = "cluster.local";
pub(super) const REVIEWS: &str = "reviews.bookinfo.svc.cluster.local";

pub(super) fn table(spec: serde_json::Value) -> RouteTable {
    let spec: VirtualServiceSpec = serde_json::from_value(spec).unwrap();
    let (table, errors) =
        RouteTable::compile([("bookinfo", "reviews", &spec)], DOMAIN, Scope::Mesh);
    assert!(errors.is_empty(), "{errors:?}");
    table
}

pub(super) struct Req {
    method: &'static str,
    path: &'static str,
    query: Option<&'static str>,
    headers: HeaderMap,
    labels: BTreeMap<String, String>,
}

pub(super) fn get(path: &'static str) -> Req {
    Req {
        method: "GET",
        path,
        query: None,
        headers: HeaderMap::new(),
        labels: BTreeMap::new(),
    }
}

impl Req {
    pub(super) fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.append(name, value.parse().unwrap());
        self
    }

    pub(super) fn view(&self) -> RequestView<'_> {
        RequestView {
            method: self.method,
            path: self.path,
            query: self.query,
            authority: "reviews:9080",
            scheme: "http",
            headers: &self.headers,
            port: 9080,
            source_labels: Some(&self.labels),
            source_namespace: Some("bookinfo"),
        }
    }
}

/// The subset a request is routed to (all routes here have one destination).
pub(super) fn subset(table: &RouteTable, request: &Req) -> Option<String> {
    match table.find(REVIEWS, &request.view()) {
        Lookup::Route(route) => match &route.action {
            Action::Forward(forward) => forward.destinations[0].target.subset.clone(),
            _ => Some("local answer".to_owned()),
        },
        Lookup::Default => Some("default".to_owned()),
        Lookup::NoRoute => None,
    }
}

#[test]
fn header_routes_then_the_default_route() {
    let table = table(serde_json::json!({
        "hosts": ["reviews"],
        "http": [
            {"match": [{"headers": {"end-user": {"exact": "jason"}}}],
             "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
            {"match": [{"headers": {"user-agent": {"regex": ".*Chrome.*"}}}],
             "route": [{"destination": {"host": "reviews", "subset": "v3"}}]},
            {"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}
        ]
    }));
    assert_eq!(
        subset(&table, &get("/").header("end-user", "jason")).as_deref(),
        Some("v2")
    );
    assert_eq!(
        subset(&table, &get("/").header("end-user", "jasonx")).as_deref(),
        Some("v1")
    );
    let chrome = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36";
    assert_eq!(
        subset(&table, &get("/").header("user-agent", chrome)).as_deref(),
        Some("v3")
    );
    assert_eq!(
        subset(&table, &get("/").header("user-agent", "curl/8")).as_deref(),
        Some("v1")
    );
    // Any value of a repeated header may match.
    let repeated = get("/")
        .header("end-user", "bob")
        .header("end-user", "jason");
    assert_eq!(subset(&table, &repeated).as_deref(), Some("v2"));
    // A host without a VirtualService takes the default route.
    assert!(matches!(
        table.find("ratings.bookinfo.svc.cluster.local", &get("/").view()),
        Lookup::Default
    ));
}

#[test]
fn uri_matches_prefix_exact_regex_and_no_route() {
    let table = table(serde_json::json!({
        "hosts": ["reviews.bookinfo.svc.cluster.local"],
        "http": [
            {"match": [{"uri": {"exact": "/health"}}], "directResponse": {"status": 204}},
            {"match": [{"uri": {"regex": "/api/v[0-9]+/items"}}],
             "route": [{"destination": {"host": "reviews", "subset": "api"}}]},
            {"match": [{"uri": {"prefix": "/static"}, "method": {"exact": "GET"}},
                       {"uri": {"prefix": "/assets"}}],
             "route": [{"destination": {"host": "reviews", "subset": "files"}}]},
            {"match": [{"queryParams": {"debug": {"exact": "1"}}}],
             "route": [{"destination": {"host": "reviews", "subset": "debug"}}]}
        ]
    }));
    assert_eq!(
        subset(&table, &get("/health")).as_deref(),
        Some("local answer")
    );
    assert_eq!(
        subset(&table, &get("/api/v2/items")).as_deref(),
        Some("api")
    );
    assert_eq!(
        subset(&table, &get("/api/v2/items/7")),
        None,
        "a regex matches the whole path"
    );
    assert_eq!(
        subset(&table, &get("/static/a.css")).as_deref(),
        Some("files")
    );
    let post = Req {
        method: "POST",
        ..get("/static/a.css")
    };
    assert_eq!(subset(&table, &post), None, "method must match too");
    assert_eq!(subset(&table, &get("/assets/x")).as_deref(), Some("files"));
    let debug = Req {
        query: Some("a=2&debug=1"),
        ..get("/other")
    };
    assert_eq!(subset(&table, &debug).as_deref(), Some("debug"));
    assert_eq!(
        subset(&table, &get("/other")),
        None,
        "no route: answered 404"
    );
}

#[test]
fn splits_retries_faults_and_mirrors_compile() {
    let table = table(serde_json::json!({
        "hosts": ["reviews"],
        "http": [{
            "route": [
                {"destination": {"host": "reviews", "subset": "v1"}, "weight": 90},
                {"destination": {"host": "reviews", "subset": "v2"}, "weight": 10}
            ],
            "retries": {"attempts": 3, "perTryTimeout": "250ms", "retryOn": "5xx,reset"},
            "timeout": "2s",
            "fault": {"delay": {"fixedDelay": "7s", "percentage": {"value": 50}},
                      "abort": {"grpcStatus": "UNAVAILABLE"}},
            "mirror": {"host": "reviews", "subset": "v3"},
            "mirrorPercentage": {"value": 25.5}
        }]
    }));
    let Lookup::Route(route) = table.find(REVIEWS, &get("/").view()) else {
        panic!("no route")
    };
    let Action::Forward(forward) = &route.action else {
        panic!("not forwarded")
    };
    let weights: Vec<u32> = forward.destinations.iter().map(|d| d.weight).collect();
    assert_eq!(weights, [90, 10]);
    assert_eq!(forward.retries.attempts, 3);
    assert_eq!(
        forward.retries.per_try_timeout,
        Some(Duration::from_millis(250))
    );
    assert!(forward.retries.on.server_error && forward.retries.on.reset);
    assert!(forward.retries.on.status(StatusCode::BAD_GATEWAY));
    assert!(!forward.retries.on.status(StatusCode::NOT_FOUND));
    assert_eq!(forward.timeout, Some(Duration::from_secs(2)));
    assert_eq!(forward.mirrors[0].percent, 25.5);
    let fault = route.fault.as_ref().unwrap();
    assert_eq!(fault.delay, Some((Duration::from_secs(7), 50.0)));
    assert_eq!(fault.abort, Some((Abort::Grpc(14), 100.0)));
}

#[test]
fn hosts_are_qualified_in_their_namespace() {
    assert_eq!(qualify("reviews", "bookinfo", DOMAIN), REVIEWS);
    assert_eq!(qualify("reviews.bookinfo", "other", DOMAIN), REVIEWS);
    assert_eq!(qualify(REVIEWS, "other", DOMAIN), REVIEWS);
}

#[test]
fn a_gateway_table_holds_the_virtual_services_that_name_it() {
    let spec = |gateways: serde_json::Value, host: &str| -> VirtualServiceSpec {
        serde_json::from_value(serde_json::json!({
            "hosts": [host], "gateways": gateways,
            "http": [{"route": [{"destination": {"host": "productpage", "port": {"number": 9080}}}]}]
        }))
        .unwrap()
    };
    let named = spec(
        serde_json::json!(["bookinfo-gateway"]),
        "Bookinfo.Example.com",
    );
    let qualified = spec(
        serde_json::json!(["bookinfo/bookinfo-gateway"]),
        "*.shop.example.com",
    );
    let mesh = spec(serde_json::json!([]), "reviews");
    let elsewhere = spec(serde_json::json!(["other/gw"]), "*");
    let scope = Scope::Gateway {
        namespace: "bookinfo",
        name: "bookinfo-gateway",
    };
    let (table, errors) = RouteTable::compile(
        [
            ("bookinfo", "a", &named),
            ("frontend", "b", &qualified),
            ("bookinfo", "c", &mesh),
            ("bookinfo", "d", &elsewhere),
        ],
        DOMAIN,
        scope,
    );
    assert!(errors.is_empty());
    assert_eq!(
        table.gateway_host("bookinfo.example.com", 80).as_deref(),
        Some("bookinfo.example.com")
    );
    assert_eq!(
        table.gateway_host("a.b.shop.example.com", 80).as_deref(),
        Some("*.shop.example.com")
    );
    assert_eq!(
        table.gateway_host("reviews", 80),
        None,
        "mesh-only routes are not the gateway's"
    );
    assert_eq!(table.gateway_host("anything.else", 80), None);
    let routes = table.routes("bookinfo.example.com").unwrap();
    let Action::Forward(forward) = &routes[0].action else {
        panic!("not forwarded")
    };
    assert_eq!(
        forward.destinations[0].target.host,
        "productpage.bookinfo.svc.cluster.local"
    );
    assert_eq!(forward.destinations[0].target.port, Some(9080));
}

/// A connection from an unknown source to port `port` of 10.96.0.1, naming `sni`.
/// A match's own `gateways` say where the route applies: `mesh` only in the mesh, a Gateway
/// only at that ingress, beside a VirtualService bound to both.
#[test]
fn a_matchs_gateways_keep_its_route_where_they_say() {
    let spec: VirtualServiceSpec = serde_json::from_value(serde_json::json!({
        "hosts": ["reviews.example.com"],
        "gateways": ["mesh", "bookinfo-gateway"],
        "http": [
            {"match": [{"uri": {"prefix": "/internal"}, "gateways": ["mesh"]}],
             "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
            {"match": [{"uri": {"prefix": "/public"}, "gateways": ["bookinfo-gateway"]}],
             "route": [{"destination": {"host": "reviews", "subset": "v3"}}]},
            {"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}
        ]
    }))
    .unwrap();
    let subsets = |table: &RouteTable, host: &str| -> Vec<Option<String>> {
        table
            .routes(host)
            .unwrap()
            .iter()
            .map(|route| match &route.action {
                Action::Forward(forward) => forward.destinations[0].target.subset.clone(),
                _ => None,
            })
            .collect()
    };
    let (mesh, errors) = RouteTable::compile([("bookinfo", "r", &spec)], DOMAIN, Scope::Mesh);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        subsets(&mesh, "reviews.example.com"),
        [Some("v2".to_owned()), Some("v1".to_owned())]
    );
    let gateway = Scope::Gateway {
        namespace: "bookinfo",
        name: "bookinfo-gateway",
    };
    let (ingress, errors) = RouteTable::compile([("bookinfo", "r", &spec)], DOMAIN, gateway);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        subsets(&ingress, "reviews.example.com"),
        [Some("v3".to_owned()), Some("v1".to_owned())]
    );
}
