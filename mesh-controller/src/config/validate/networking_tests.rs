//! Gateway and DestinationRule validation: the TLS modes and protocols the ingress serves,
//! and locality load-balancing settings.

use super::tests::{findings, key, validated};
use crate::config::Kind;

#[test]
fn gateway_tls_modes_the_ingress_cannot_serve_are_refused() {
    let gateway = |name: &str, tls: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: bookinfo}}\nspec:\n  servers:\n  - port: {{number: 443, name: https, protocol: HTTPS}}\n    hosts: [\"*\"]\n    tls: {tls}\n"
        )
    };
    let yaml = [
        gateway("simple", "{mode: SIMPLE, serverCertificate: c, privateKey: k}"),
        gateway(
            "mutual",
            "{mode: MUTUAL, serverCertificate: c, privateKey: k, caCertificates: ca, minProtocolVersion: TLSV1_3}",
        ),
        gateway("mutual-no-ca", "{mode: MUTUAL, serverCertificate: c, privateKey: k}"),
        gateway("passthrough", "{mode: PASSTHROUGH}"),
        gateway("auto", "{mode: AUTO_PASSTHROUGH}"),
        gateway("typo", "{mode: SIMPLEST, serverCertificate: c, privateKey: k}"),
        gateway(
            "ancient",
            "{serverCertificate: c, privateKey: k, minProtocolVersion: SSLV3}",
        ),
    ]
    .join("---\n");
    let (_, v) = validated(&yaml);
    assert!(v.accepted(&key(Kind::Gateway, "simple")));
    assert!(v.accepted(&key(Kind::Gateway, "mutual")));
    assert!(v.accepted(&key(Kind::Gateway, "passthrough")));
    // Accepted, its server failing closed: not opened, as its FailsClosed condition says.
    assert!(v.accepted(&key(Kind::Gateway, "auto")));
    for (name, reason, says) in [
        ("mutual-no-ca", "InvalidGateway", "caCertificates"),
        ("auto", "NotEnforced", "AUTO_PASSTHROUGH"),
        ("typo", "InvalidGateway", "SIMPLEST"),
        ("ancient", "InvalidGateway", "SSLV3"),
    ] {
        let found = findings(&v, &key(Kind::Gateway, name));
        assert!(
            found.iter().any(|f| f.1 == reason && f.2.contains(says)),
            "{name}: {found:?}"
        );
    }
}

#[test]
fn tcp_and_passthrough_servers_are_checked() {
    let gateway = |name: &str, server: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: bookinfo}}\nspec:\n  servers:\n  - {server}\n"
        )
    };
    let yaml = [
        gateway(
            "tcp",
            "{port: {number: 31400, name: tcp, protocol: TCP}, hosts: [\"*\"]}",
        ),
        gateway(
            "sni",
            "{port: {number: 443, name: tls, protocol: TLS}, hosts: [nginx.example.com], tls: {mode: PASSTHROUGH}}",
        ),
        gateway(
            "http-passthrough",
            "{port: {number: 80, name: http, protocol: HTTP}, hosts: [\"*\"], tls: {mode: PASSTHROUGH}}",
        ),
        gateway(
            "tls-without-tls",
            "{port: {number: 443, name: tls, protocol: TLS}, hosts: [\"*\"]}",
        ),
    ]
    .join("---\n");
    let (_, v) = validated(&yaml);
    assert!(v.accepted(&key(Kind::Gateway, "tcp")));
    assert!(v.accepted(&key(Kind::Gateway, "sni")));
    for (name, says) in [
        (
            "http-passthrough",
            "PASSTHROUGH needs an HTTPS or TLS server",
        ),
        ("tls-without-tls", "TLS server needs tls"),
    ] {
        let found = findings(&v, &key(Kind::Gateway, name));
        assert!(
            found
                .iter()
                .any(|f| f.1 == "InvalidGateway" && f.2.contains(says)),
            "{name}: {found:?}"
        );
    }
}

#[test]
fn locality_settings_are_checked() {
    let rule = |name: &str, setting: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: bookinfo}}\nspec:\n  host: {name}\n  trafficPolicy:\n    outlierDetection: {{consecutive5xxErrors: 1}}\n    loadBalancer: {{localityLbSetting: {setting}}}\n"
        )
    };
    let yaml = [
        rule("failover", "{enabled: true, failover: [{from: us-east, to: us-west}]}"),
        rule("distribute", "{distribute: [{from: us-east/zone1/*, to: {us-east/zone1/*: 80, us-east/zone2/*: 20}}]}"),
        rule("priority", "{failoverPriority: [topology.istio.io/network, topology.kubernetes.io/region]}"),
        rule("both", "{distribute: [{from: a/*, to: {a/*: 100}}], failover: [{from: a, to: b}]}"),
        rule("shares", "{distribute: [{from: a/*, to: {a/*: 70, b/*: 20}}]}"),
        rule("zone", "{failover: [{from: us-east/zone1, to: us-west}]}"),
        rule("star", "{distribute: [{from: '*/zone1', to: {a/*: 100}}]}"),
    ]
    .join("---\n");
    let (_, v) = validated(&yaml);
    for name in ["failover", "distribute", "priority"] {
        let rule = key(Kind::DestinationRule, name);
        assert!(v.accepted(&rule), "{name}: {:?}", findings(&v, &rule));
    }
    for (name, says) in [
        ("both", "exclude each other"),
        ("shares", "sum to 90"),
        ("zone", "regions, not zones"),
        ("star", "is not region/zone/subzone"),
    ] {
        let found = findings(&v, &key(Kind::DestinationRule, name));
        assert!(
            found
                .iter()
                .any(|f| f.1 == "InvalidLocalityLbSetting" && f.2.contains(says)),
            "{name}: {found:?}"
        );
    }
}
