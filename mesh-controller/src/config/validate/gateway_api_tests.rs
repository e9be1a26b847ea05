//! Gateway API ingress: `ambit` Gateways and the HTTPRoutes attached to them, on the shapes of
//! Istio's "Ingress Gateways" task with the Gateway API.

use super::tests::{findings, key, validated};
use crate::config::Kind;

const SECRET: &str = "apiVersion: v1\nkind: Secret\nmetadata: {name: bookinfo-cert, namespace: bookinfo}\ntype: kubernetes.io/tls\nstringData: {tls.crt: x, tls.key: y}\n";

fn gateway(name: &str, class: &str, listeners: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: bookinfo}}\nspec:\n  gatewayClassName: {class}\n  listeners:\n{listeners}"
    )
}

fn route(name: &str, namespace: &str, parent: &str, hostnames: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  parentRefs: [{parent}]\n  hostnames: {hostnames}\n  rules: [{{backendRefs: [{{name: reviews, namespace: bookinfo, port: 9080}}]}}]\n"
    )
}

#[test]
fn ingress_gateways_are_checked() {
    let yaml = [
        SECRET.to_owned(),
        gateway(
            "public",
            "ambit",
            "  - {name: http, port: 80, protocol: HTTP, hostname: '*.example.com'}\n  - {name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: bookinfo-cert}]}}\n",
        ),
        gateway("empty", "ambit", "    []\n"),
        gateway(
            "no-cert",
            "ambit",
            "  - {name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: nowhere}]}}\n",
        ),
        gateway(
            "elsewhere",
            "ambit",
            "  - {name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: c, namespace: other}]}}\n",
        ),
        gateway(
            "tcp",
            "ambit",
            "  - {name: db, port: 5432, protocol: TCP}\n",
        ),
        gateway(
            "same-port",
            "ambit",
            "  - {name: a, port: 80, protocol: HTTP}\n  - {name: b, port: 80, protocol: HTTP, hostname: b.example.com}\n",
        ),
        gateway(
            "selector",
            "ambit",
            "  - {name: a, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Selector}}}\n",
        ),
        gateway("bad-host", "ambit", "  - {name: a, port: 80, protocol: HTTP, hostname: '10.0.0.1'}\n"),
        gateway("twin", "ambit", "  - {name: a, port: 80, protocol: HTTP}\n"),
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: twin, namespace: bookinfo}\nspec: {servers: [{port: {number: 80, protocol: HTTP}, hosts: ['*']}]}\n".to_owned(),
        // Another controller's Gateway is not Ambit's to judge.
        gateway("theirs", "other", "  - {name: db, port: 5432, protocol: TCP}\n"),
    ]
    .join("---\n");
    let (_, v) = validated(&yaml);
    assert_eq!(findings(&v, &key(Kind::K8sGateway, "public")), []);
    assert_eq!(findings(&v, &key(Kind::K8sGateway, "theirs")), []);
    // A certificate not there yet: accepted, the listener waiting with ResolvedRefs false.
    let no_cert = key(Kind::K8sGateway, "no-cert");
    assert!(v.accepted(&no_cert));
    let found = findings(&v, &no_cert);
    assert!(
        found.iter().any(|f| f.0 == super::RESOLVED_REFS
            && f.1 == "InvalidCertificateRef"
            && f.2.contains("no Secret bookinfo/nowhere")),
        "{found:?}"
    );
    for (name, reason, says) in [
        ("empty", "InvalidListeners", "no listeners"),
        ("elsewhere", "RefNotPermitted", "ReferenceGrant"),
        ("tcp", "UnsupportedProtocol", "TCP"),
        ("same-port", "InvalidListeners", "port 80"),
        ("selector", "UnsupportedValue", "Selector"),
        ("bad-host", "InvalidListeners", "not a DNS name"),
        ("twin", "Conflict", "Istio Gateway"),
    ] {
        let gateway = key(Kind::K8sGateway, name);
        let found = findings(&v, &gateway);
        assert!(
            found.iter().any(|f| f.1 == reason && f.2.contains(says)),
            "{name}: {found:?}"
        );
        assert!(!v.accepted(&gateway), "{name}");
    }
}

#[test]
fn routes_attach_to_listeners_that_admit_them() {
    let yaml = [
        gateway(
            "public",
            "ambit",
            "  - {name: http, port: 80, protocol: HTTP, hostname: '*.example.com'}\n  - {name: open, port: 8080, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}\n",
        ),
        gateway(
            "waypoint",
            "ambit-waypoint",
            "  - {name: mesh, port: 15008, protocol: HBONE}\n",
        ),
        gateway("theirs", "other", "  - {name: http, port: 80, protocol: HTTP}\n"),
        route("ok", "bookinfo", "{name: public, sectionName: http}", "[bookinfo.example.com]"),
        route("any-listener", "bookinfo", "{name: public}", "[]"),
        route("from-other-ns", "shop", "{name: public, namespace: bookinfo, port: 8080}", "[]"),
        route("theirs", "bookinfo", "{name: theirs}", "[]"),
        route("no-section", "bookinfo", "{name: public, sectionName: https}", "[]"),
        route("not-admitted", "shop", "{name: public, namespace: bookinfo, sectionName: http}", "[]"),
        route("other-host", "bookinfo", "{name: public, sectionName: http}", "[bookinfo.example.org]"),
        route("to-waypoint", "bookinfo", "{name: waypoint}", "[]"),
    ]
    .join("---\n");
    let (_, v) = validated(&yaml);
    let in_ns = |namespace: &str, name: &str| crate::config::ObjectKey {
        kind: Kind::HttpRoute,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    };
    for name in ["ok", "any-listener", "theirs"] {
        assert_eq!(findings(&v, &key(Kind::HttpRoute, name)), [], "{name}");
    }
    assert_eq!(findings(&v, &in_ns("shop", "from-other-ns")), []);
    for (route, reason, says) in [
        (
            key(Kind::HttpRoute, "no-section"),
            "NoMatchingParent",
            "no listener \"https\"",
        ),
        (
            in_ns("shop", "not-admitted"),
            "NotAllowedByListeners",
            "namespace shop",
        ),
        (
            key(Kind::HttpRoute, "other-host"),
            "NoMatchingListenerHostname",
            "hostnames",
        ),
        (
            key(Kind::HttpRoute, "to-waypoint"),
            "UnsupportedValue",
            "is a waypoint",
        ),
    ] {
        let found = findings(&v, &route);
        assert!(
            found.iter().any(|f| f.1 == reason && f.2.contains(says)),
            "{route}: {found:?}"
        );
        assert!(!v.accepted(&route), "{route}");
    }
}
