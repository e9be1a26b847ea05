//! VirtualService delegation compiled: a root route's delegate's routes take its place,
//! narrowed by its match, as in Istio's delegate example.

use mesh_api::virtual_service::VirtualServiceSpec;

use super::{
    RouteTable, Scope,
    tests::{DOMAIN, get, subset},
};

fn spec(value: serde_json::Value) -> VirtualServiceSpec {
    serde_json::from_value(value).unwrap()
}

#[test]
fn a_delegates_routes_apply_under_the_roots_match() {
    let root = spec(serde_json::json!({
        "hosts": ["reviews"],
        "http": [
            {"match": [{"uri": {"prefix": "/api"}}], "delegate": {"name": "reviews-api"}, "timeout": "3s"},
            {"match": [{"uri": {"prefix": "/gone"}}], "delegate": {"name": "missing"}},
            {"route": [{"destination": {"host": "reviews", "subset": "v1"}}]},
        ],
    }));
    let delegate = spec(serde_json::json!({
        "http": [
            {"match": [{"headers": {"end-user": {"exact": "jason"}}}], "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
            {"match": [{"uri": {"prefix": "/other"}}], "route": [{"destination": {"host": "reviews", "subset": "never"}}]},
            {"route": [{"destination": {"host": "reviews", "subset": "v3"}}]},
        ],
    }));
    let (table, errors) = RouteTable::compile(
        [
            ("bookinfo", "reviews", &root),
            ("bookinfo", "reviews-api", &delegate),
        ],
        DOMAIN,
        Scope::Mesh,
    );
    assert!(errors.is_empty(), "{errors:?}");
    let request = get("/api/x").header("end-user", "jason");
    assert_eq!(subset(&table, &request).as_deref(), Some("v2"));
    assert_eq!(subset(&table, &get("/api/x")).as_deref(), Some("v3"));
    // The delegate's /other route lies outside /api: dropped, not routed.
    assert_eq!(subset(&table, &get("/other")).as_deref(), Some("v1"));
    // A missing delegate leaves its root route without effect.
    assert_eq!(subset(&table, &get("/gone")).as_deref(), Some("v1"));
    // The delegate has no hosts: nothing is routed by it alone.
    assert_eq!(table.hosts.len(), 1);
    let routes = table.routes(super::tests::REVIEWS).unwrap();
    let super::Action::Forward(forward) = &routes[0].action else {
        panic!("{:?}", routes[0].action);
    };
    assert_eq!(
        forward.timeout,
        Some(std::time::Duration::from_secs(3)),
        "the root's timeout"
    );
}
