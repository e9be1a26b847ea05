//! `tcp` and `tls` routes compiled and chosen, for connections carried as TCP: by port,
//! source, destination subnet and server name, in the mesh and at an ingress.

use mesh_api::virtual_service::VirtualServiceSpec;

use super::{
    tests::{DOMAIN, REVIEWS, get, table},
    *,
};

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
