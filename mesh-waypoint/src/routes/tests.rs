use std::collections::BTreeMap;

use http::HeaderMap;
use mesh_api::virtual_service::VirtualServiceSpec;

use super::*;

pub(super) const DOMAIN: &str = "cluster.local";
pub(super) const REVIEWS: &str = "reviews.bookinfo.svc.cluster.local";

fn table(spec: serde_json::Value) -> RouteTable {
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

    fn view(&self) -> RequestView<'_> {
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
fn connection(port: u16, sni: Option<&str>) -> TcpConnection<'_> {
    TcpConnection {
        port,
        destination: [10, 96, 0, 1].into(),
        source: None,
        sni,
    }
}

/// Istio's TCP traffic shifting: a port's connections split 80/20 between subsets; other
/// ports and sources that do not match stay on the service; HTTP is not routed by them.
#[test]
fn tcp_routes_split_connections_by_port_and_source() {
    let table = table(serde_json::json!({
        "hosts": ["reviews"],
        "tcp": [
            {"match": [{"port": 9000, "sourceLabels": {"app": "canary-client"}}],
             "route": [{"destination": {"host": "reviews", "subset": "v3"}}]},
            {"match": [{"destinationSubnets": ["10.96.9.0/24"]}],
             "route": [{"destination": {"host": "reviews", "subset": "v4"}}]},
            {"match": [{"port": 9000}],
             "route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 80},
                       {"destination": {"host": "reviews", "subset": "v2"}, "weight": 20}]},
        ],
    }));
    let on = |port, labels: &[(&str, &str)]| {
        let source = crate::store::Workload {
            name: "client".to_owned(),
            namespace: "bookinfo".to_owned(),
            address: [10, 0, 0, 9].into(),
            addresses: vec![[10, 0, 0, 9].into()],
            labels: std::sync::Arc::new(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            identity: None,
            enrolled: true,
            waypoint: None,
            locality: Default::default(),
            names: std::sync::Arc::new(mesh_core::telemetry::WorkloadNames::derive(
                "client",
                false,
                &Default::default(),
                None,
            )),
        };
        let connection = TcpConnection {
            port,
            destination: [10, 96, 0, 1].into(),
            source: Some(&source),
            sni: None,
        };
        table
            .tcp_route(REVIEWS, &connection)
            .map(|route| route.choose().subset.clone().unwrap_or_default())
    };
    let mut v1 = 0;
    for _ in 0..2000 {
        match on(9000, &[]).as_deref() {
            Some("v1") => v1 += 1,
            Some("v2") => {}
            other => panic!("port 9000 went to {other:?}"),
        }
    }
    assert!((1500..=1700).contains(&v1), "80 % of 2,000 is 1,600: {v1}");
    assert_eq!(on(9000, &[("app", "canary-client")]).as_deref(), Some("v3"));
    assert_eq!(on(9001, &[]), None, "another port stays on the service");
    let to_subnet = TcpConnection {
        destination: [10, 96, 9, 7].into(),
        ..connection(9001, None)
    };
    let route = table
        .tcp_route(REVIEWS, &to_subnet)
        .expect("the subnet's route");
    assert_eq!(
        route.choose().subset.as_deref(),
        Some("v4"),
        "by destination"
    );
    assert!(
        matches!(table.find(REVIEWS, &get("/").view()), Lookup::Default),
        "HTTP to the host is not routed by tcp routes"
    );
}

/// Istio's TLS routing by SNI: names pick a subset, a wildcard takes the names under it, a
/// connection without a fitting name falls to the `tcp` routes, and a host without `tls`
/// routes does not wait for a ClientHello.
#[test]
fn tls_routes_choose_by_server_name_before_tcp_routes() {
    let routes = table(serde_json::json!({
        "hosts": ["reviews"],
        "tls": [
            {"match": [{"sniHosts": ["v2.reviews.example.com"], "port": 443}],
             "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
            {"match": [{"sniHosts": ["*.canary.example.com"]}],
             "route": [{"destination": {"host": "reviews", "subset": "v3"}}]},
        ],
        "tcp": [{"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}],
    }));
    let on = |port, sni: Option<&str>| {
        routes
            .tcp_route(REVIEWS, &connection(port, sni))
            .and_then(|route| route.choose().subset.clone())
    };
    assert!(routes.reads_sni(REVIEWS));
    assert_eq!(
        on(443, Some("V2.Reviews.example.com")).as_deref(),
        Some("v2")
    );
    assert_eq!(
        on(8443, Some("v2.reviews.example.com")).as_deref(),
        Some("v1"),
        "port"
    );
    assert_eq!(
        on(443, Some("a.b.canary.example.com")).as_deref(),
        Some("v3")
    );
    assert_eq!(
        on(443, Some("canary.example.com")).as_deref(),
        Some("v1"),
        "not under"
    );
    assert_eq!(on(443, None).as_deref(), Some("v1"), "no ClientHello");
    let tcp_only = table(serde_json::json!({
        "hosts": ["reviews"],
        "tcp": [{"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}],
    }));
    assert!(!tcp_only.reads_sni(REVIEWS));
}

/// Istio's ingress tasks: TCP shifting on the gateway's port 31400 and SNI passthrough on
/// 443, in VirtualServices bound to the Gateway; a match naming another gateway, and a
/// VirtualService only for the mesh, never fit there.
#[test]
fn a_gateways_tls_and_tcp_routes_are_found_without_a_host() {
    let spec =
        |value: serde_json::Value| -> VirtualServiceSpec { serde_json::from_value(value).unwrap() };
    let echo = spec(serde_json::json!({
        "hosts": ["*"],
        "gateways": ["tcp-gateway"],
        "tcp": [
            {"match": [{"port": 31400, "gateways": ["other-gateway"]}],
             "route": [{"destination": {"host": "tcp-echo", "subset": "other"}}]},
            {"match": [{"port": 31400}],
             "route": [{"destination": {"host": "tcp-echo", "subset": "v1"}}]},
        ],
    }));
    let nginx = spec(serde_json::json!({
        "hosts": ["nginx.example.com"],
        "gateways": ["bookinfo/tcp-gateway"],
        "tls": [{"match": [{"port": 443, "sniHosts": ["nginx.example.com"]}],
                 "route": [{"destination": {"host": "my-nginx", "port": {"number": 443}}}]}],
    }));
    let mesh_only = spec(serde_json::json!({
        "hosts": ["tcp-echo"],
        "tcp": [{"route": [{"destination": {"host": "tcp-echo", "subset": "mesh"}}]}],
    }));
    let scope = Scope::Gateway {
        namespace: "bookinfo",
        name: "tcp-gateway",
    };
    let virtual_services = [
        ("bookinfo", "mesh-only", &mesh_only),
        ("bookinfo", "echo", &echo),
        ("bookinfo", "nginx", &nginx),
    ];
    let (routes, errors) = RouteTable::compile(virtual_services, DOMAIN, scope);
    assert!(errors.is_empty(), "{errors:?}");
    let on = |port, sni: Option<&str>| {
        routes
            .gateway_tcp_route(&connection(port, sni))
            .map(|route| route.choose().clone())
    };
    let v1 = on(31400, None).expect("the tcp route on 31400");
    assert_eq!(
        (v1.host.as_str(), v1.subset.as_deref()),
        ("tcp-echo.bookinfo.svc.cluster.local", Some("v1"))
    );
    let nginx = on(443, Some("nginx.example.com")).expect("the tls route");
    assert_eq!(
        (nginx.host.as_str(), nginx.port),
        ("my-nginx.bookinfo.svc.cluster.local", Some(443))
    );
    assert!(on(443, Some("other.example.com")).is_none(), "another name");
    assert!(on(443, None).is_none(), "no ClientHello");
    assert!(on(9000, None).is_none(), "no route on that port");
}

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
