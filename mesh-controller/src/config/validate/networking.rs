//! DestinationRule, Gateway and ServiceEntry checks (VirtualService: `routes`).

use std::collections::BTreeSet;

use super::{KnownHosts, Validation, check_duration, check_percent, conflicts};
use crate::config::{ConfigSet, ObjectKey};
use mesh_api::networking::{
    LoadBalancerSettings, LocalityLbSetting, ServerTlsSettings, TrafficPolicy,
};

/// Oldest first: creation time (empty in local mode), then namespace/name.
pub(super) fn by_age<'a, K: kube::Resource + 'a>(
    items: impl Iterator<Item = (&'a ObjectKey, &'a K)>,
) -> Vec<(&'a ObjectKey, &'a K)> {
    let mut items: Vec<_> = items.collect();
    items.sort_by_key(|(key, r)| {
        let created = r
            .meta()
            .creation_timestamp
            .as_ref()
            .and_then(|t| serde_json::to_string(t).ok())
            .unwrap_or_default();
        (created, (*key).clone())
    });
    items
}

pub(super) fn destination_rules(set: &ConfigSet, hosts: &KnownHosts, v: &mut Validation) {
    let ordered = by_age(set.destination_rules());
    for (key, dr) in &ordered {
        if dr.spec.host.is_empty() {
            v.invalid(key, "MissingHost", "spec.host is empty".to_owned());
        }
        let mut names = BTreeSet::new();
        for (i, subset) in dr.spec.subsets.iter().enumerate() {
            if subset.name.is_empty() {
                v.invalid(
                    key,
                    "InvalidSubset",
                    format!("spec.subsets[{i}] has no name"),
                );
            } else if !names.insert(&subset.name) {
                v.invalid(
                    key,
                    "InvalidSubset",
                    format!(
                        "spec.subsets[{i}]: subset {:?} is defined twice",
                        subset.name
                    ),
                );
            }
            if let Some(policy) = &subset.traffic_policy {
                traffic_policy(v, key, &format!("spec.subsets[{i}].trafficPolicy"), policy);
            }
        }
        if let Some(policy) = &dr.spec.traffic_policy {
            traffic_policy(v, key, "spec.trafficPolicy", policy);
        }
    }
    let claims = ordered
        .iter()
        .filter(|(_, dr)| dr.spec.workload_selector.is_none())
        .map(|(key, dr)| (hosts.fqdn(&dr.spec.host, &key.namespace), *key));
    conflicts(v, claims.collect::<Vec<_>>(), "host");
}

fn traffic_policy(v: &mut Validation, key: &ObjectKey, at: &str, policy: &TrafficPolicy) {
    if let Some(lb) = &policy.load_balancer {
        load_balancer(v, key, &format!("{at}.loadBalancer"), lb);
    }
    if let Some(pool) = &policy.connection_pool {
        let limits = [
            (
                "tcp.maxConnections",
                pool.tcp.as_ref().and_then(|t| t.max_connections),
            ),
            (
                "http.http1MaxPendingRequests",
                pool.http
                    .as_ref()
                    .and_then(|h| h.http1_max_pending_requests),
            ),
            (
                "http.http2MaxRequests",
                pool.http.as_ref().and_then(|h| h.http2_max_requests),
            ),
            (
                "http.maxRequestsPerConnection",
                pool.http
                    .as_ref()
                    .and_then(|h| h.max_requests_per_connection),
            ),
            (
                "http.maxRetries",
                pool.http.as_ref().and_then(|h| h.max_retries),
            ),
        ];
        for (field, value) in limits {
            if let Some(value) = value
                && value < 0
            {
                v.invalid(
                    key,
                    "InvalidConnectionPool",
                    format!("{at}.connectionPool.{field} is negative ({value})"),
                );
            }
        }
        if let Some(tcp) = &pool.tcp {
            check_duration(
                v,
                key,
                &format!("{at}.connectionPool.tcp.connectTimeout"),
                tcp.connect_timeout.as_ref(),
            );
            check_duration(
                v,
                key,
                &format!("{at}.connectionPool.tcp.idleTimeout"),
                tcp.idle_timeout.as_ref(),
            );
        }
        if let Some(http) = &pool.http {
            check_duration(
                v,
                key,
                &format!("{at}.connectionPool.http.idleTimeout"),
                http.idle_timeout.as_ref(),
            );
        }
    }
    if let Some(outlier) = &policy.outlier_detection {
        check_duration(
            v,
            key,
            &format!("{at}.outlierDetection.interval"),
            outlier.interval.as_ref(),
        );
        check_duration(
            v,
            key,
            &format!("{at}.outlierDetection.baseEjectionTime"),
            outlier.base_ejection_time.as_ref(),
        );
        for (field, value) in [
            ("maxEjectionPercent", outlier.max_ejection_percent),
            ("minHealthPercent", outlier.min_health_percent),
        ] {
            if let Some(value) = value {
                check_percent(
                    v,
                    key,
                    &format!("{at}.outlierDetection.{field}"),
                    f64::from(value),
                );
            }
        }
    }
}

fn load_balancer(v: &mut Validation, key: &ObjectKey, at: &str, lb: &LoadBalancerSettings) {
    if let Some(locality) = &lb.locality_lb_setting {
        locality_lb(v, key, &format!("{at}.localityLbSetting"), locality);
    }
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        v.invalid(
            key,
            "InvalidLoadBalancer",
            format!("{at}: simple and consistentHash exclude each other"),
        );
    }
    if let Some(hash) = &lb.consistent_hash {
        let keys = [
            hash.http_header_name.is_some(),
            hash.http_cookie.is_some(),
            hash.use_source_ip == Some(true),
            hash.http_query_parameter_name.is_some(),
        ];
        if keys.iter().filter(|k| **k).count() != 1 {
            v.invalid(
                key,
                "InvalidLoadBalancer",
                format!("{at}.consistentHash: set exactly one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName"),
            );
        }
    }
}

const PROTOCOLS: &[&str] = &["HTTP", "HTTPS", "GRPC", "HTTP2", "MONGO", "TCP", "TLS"];

pub(super) fn gateways(set: &ConfigSet, v: &mut Validation) {
    for (key, gw) in set.gateways() {
        if gw.spec.servers.is_empty() {
            v.invalid(key, "InvalidGateway", "spec.servers is empty".to_owned());
        }
        for (i, server) in gw.spec.servers.iter().enumerate() {
            let at = format!("spec.servers[{i}]");
            port(
                v,
                key,
                &format!("{at}.port"),
                server.port.number,
                server.port.protocol.as_deref(),
            );
            if server.hosts.is_empty() {
                v.invalid(key, "InvalidGateway", format!("{at}.hosts is empty"));
            }
            let protocol = server.port.protocol.as_deref().unwrap_or("HTTP");
            let tls_protocol = ["HTTPS", "TLS"]
                .iter()
                .any(|p| p.eq_ignore_ascii_case(protocol));
            if tls_protocol && server.tls.is_none() {
                v.invalid(
                    key,
                    "InvalidGateway",
                    format!("{at}: an {protocol} server needs tls"),
                );
            }
            // A server that asks for TLS settings the ingress lacks is not opened (its
            // FailsClosed condition says why): what else it would need does not matter.
            if let Some(tls) = server.tls.as_ref().filter(|t| t.unimplemented().is_empty()) {
                server_tls(v, key, &format!("{at}.tls"), tls, tls_protocol);
            }
        }
    }
}

/// A server's TLS mode and protocol version: modes the ingress cannot serve are refused here
/// rather than served with less than their author asked for (a client certificate not
/// asked for, say).
fn server_tls(
    v: &mut Validation,
    key: &ObjectKey,
    at: &str,
    tls: &ServerTlsSettings,
    tls_protocol: bool,
) {
    let mode = tls.mode.as_deref().unwrap_or("SIMPLE").to_ascii_uppercase();
    match mode.as_str() {
        // The ingress reads the ClientHello's server name and carries the TLS as it is.
        "PASSTHROUGH" if tls_protocol => {}
        "PASSTHROUGH" => v.invalid(
            key,
            "InvalidGateway",
            format!("{at}.mode PASSTHROUGH needs an HTTPS or TLS server"),
        ),
        "SIMPLE" => {}
        "MUTUAL" | "OPTIONAL_MUTUAL" => {
            if tls.ca_certificates.is_none() && tls.credential_name.is_none() {
                v.invalid(
                    key,
                    "InvalidGateway",
                    format!("{at}: mode {mode} needs caCertificates to check clients against"),
                );
            }
        }
        // The server is not opened; the Gateway's other servers are.
        "AUTO_PASSTHROUGH" | "ISTIO_MUTUAL" => v.report(
            key,
            super::FAILS_CLOSED,
            "NotEnforced",
            format!("{at}.mode {mode} is not served by Ambit's ingress: the server is not opened"),
        ),
        other => v.invalid(
            key,
            "InvalidGateway",
            format!(
                "{at}.mode {other:?} is not one of SIMPLE, MUTUAL, OPTIONAL_MUTUAL, PASSTHROUGH, AUTO_PASSTHROUGH, ISTIO_MUTUAL"
            ),
        ),
    }
    if let Some(version) = tls.min_protocol_version.as_deref()
        && !["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"].contains(&version)
    {
        v.invalid(
            key,
            "InvalidGateway",
            format!("{at}.minProtocolVersion {version:?} is not a TLS version"),
        );
    }
}

fn port(v: &mut Validation, key: &ObjectKey, at: &str, number: u32, protocol: Option<&str>) {
    if !(1..=65535).contains(&number) {
        v.invalid(
            key,
            "InvalidPort",
            format!("{at}.number {number} is not a port (1-65535)"),
        );
    }
    if let Some(protocol) = protocol
        && !PROTOCOLS.iter().any(|p| p.eq_ignore_ascii_case(protocol))
    {
        v.invalid(
            key,
            "InvalidPort",
            format!(
                "{at}.protocol {protocol:?} is not one of {}",
                PROTOCOLS.join(", ")
            ),
        );
    }
}

pub(super) fn service_entries(set: &ConfigSet, v: &mut Validation) {
    for (key, entry) in set.service_entries() {
        let spec = &entry.spec;
        if spec.hosts.is_empty() {
            v.invalid(key, "MissingHosts", "spec.hosts is empty".to_owned());
        }
        for (i, p) in spec.ports.iter().enumerate() {
            port(
                v,
                key,
                &format!("spec.ports[{i}]"),
                p.number,
                p.protocol.as_deref(),
            );
        }
        if let Some(location) = &spec.location
            && !["MESH_EXTERNAL", "MESH_INTERNAL"].contains(&location.as_str())
        {
            v.invalid(
                key,
                "InvalidServiceEntry",
                format!("spec.location {location:?} is not MESH_EXTERNAL or MESH_INTERNAL"),
            );
        }
        match spec.resolution.as_deref() {
            None | Some("NONE" | "DNS" | "DNS_ROUND_ROBIN") => {}
            Some("STATIC") => {
                if spec.endpoints.is_empty() && spec.workload_selector.is_none() {
                    v.invalid(
                        key,
                        "InvalidServiceEntry",
                        "resolution STATIC needs endpoints or a workloadSelector".to_owned(),
                    );
                }
                for (i, e) in spec.endpoints.iter().enumerate() {
                    let ok = e
                        .address
                        .as_deref()
                        .is_some_and(|a| a.parse::<std::net::IpAddr>().is_ok());
                    if !ok {
                        v.invalid(key, "InvalidServiceEntry", format!("spec.endpoints[{i}].address must be an IP address with resolution STATIC"));
                    }
                }
            }
            Some(other) => v.invalid(
                key,
                "InvalidServiceEntry",
                format!("spec.resolution {other:?} is not NONE, STATIC, DNS or DNS_ROUND_ROBIN"),
            ),
        }
    }
}

/// Istio's rules: `distribute` and `failover` exclude each other; a `distribute` entry's
/// shares sum to 100; `failover` goes from a region to another.
fn locality_lb(v: &mut Validation, key: &ObjectKey, at: &str, setting: &LocalityLbSetting) {
    let mut invalid = |message: String| v.invalid(key, "InvalidLocalityLbSetting", message);
    if !setting.distribute.is_empty() && !setting.failover.is_empty() {
        invalid(format!("{at}: distribute and failover exclude each other"));
    }
    for (i, distribute) in setting.distribute.iter().enumerate() {
        let sum: u32 = distribute.to.values().sum();
        if sum != 100 {
            invalid(format!(
                "{at}.distribute[{i}].to: shares sum to {sum}, not 100"
            ));
        }
        let localities = std::iter::once(&distribute.from).chain(distribute.to.keys());
        if let Some(bad) = localities.into_iter().find(|l| !is_locality(l)) {
            invalid(format!(
                "{at}.distribute[{i}]: {bad:?} is not region/zone/subzone (a * may end it)"
            ));
        }
    }
    for (i, failover) in setting.failover.iter().enumerate() {
        if failover.from == failover.to {
            invalid(format!(
                "{at}.failover[{i}]: from and to are the same region"
            ));
        }
        if [&failover.from, &failover.to]
            .iter()
            .any(|r| r.is_empty() || r.contains('/'))
        {
            invalid(format!(
                "{at}.failover[{i}]: from and to are regions, not zones"
            ));
        }
    }
}

/// `region`, `region/zone` or `region/zone/subzone`, where the last part given may be `*`
/// (and only the last).
fn is_locality(text: &str) -> bool {
    let parts: Vec<&str> = text.split('/').collect();
    parts.len() <= 3
        && parts.iter().all(|p| !p.is_empty())
        && parts[..parts.len() - 1].iter().all(|p| !p.contains('*'))
        && parts.last().is_some_and(|p| *p == "*" || !p.contains('*'))
}
