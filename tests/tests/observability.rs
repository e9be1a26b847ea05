//! The mesh as its users watch it: Debian's Prometheus scrapes every node agent, the waypoint
//! and the controller with the scrape job deploy/ ships, while the L7 test bed carries a
//! 90/10 canary, failing requests, TCP over HBONE and TCP through the waypoint. Then:
//!
//! - the PromQL Kiali (commit d733a096) runs to draw a namespace's graph (requests, TCP,
//!   mutual TLS, response time) returns every edge of that traffic, with every label Kiali
//!   needs non-empty, in the app, versioned-app and workload graphs, and mutual TLS marked;
//! - every query of every panel of deploy/'s Grafana dashboards returns data.
//!
//! Needs root and Debian's `prometheus`; run with `cargo xtask test`.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read as _, Write as _},
    net::{IpAddr, Shutdown},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use mesh_tests::{
    containers::manifests,
    l7::{self, L7, PORT, REVIEWS, vs},
    prometheus::{DiscoveredPod, Prometheus, deploy_file},
    sys::wait_until,
};
use serde_json::Value;

/// Kiali's `graph/telemetry/istio` grouping of request series (requests appender).
const REQUEST_GROUPING: &str = "source_cluster,source_workload_namespace,source_workload,source_canonical_service,source_canonical_revision,destination_cluster,destination_service_namespace,destination_service,destination_service_name,destination_workload_namespace,destination_workload,destination_canonical_service,destination_canonical_revision,request_protocol,response_code,grpc_response_status,response_flags";
/// Its grouping of TCP series.
const TCP_GROUPING: &str = "app,source_cluster,source_workload_namespace,source_workload,source_canonical_service,source_canonical_revision,destination_cluster,destination_service_namespace,destination_service,destination_service_name,destination_workload_namespace,destination_workload,destination_canonical_service,destination_canonical_revision,response_flags";
/// Its security-policy appender's grouping.
const SECURITY_GROUPING: &str = "source_cluster,source_workload_namespace,source_workload,source_canonical_service,source_canonical_revision,source_principal,destination_cluster,destination_service_namespace,destination_service_name,destination_workload_namespace,destination_workload,destination_canonical_service,destination_canonical_revision,destination_principal,connection_security_policy";
/// Its response-time appender's grouping.
const RESPONSE_TIME_GROUPING: &str = "le,source_cluster,source_workload_namespace,source_workload,source_canonical_service,source_canonical_revision,destination_cluster,destination_service_namespace,destination_service,destination_service_name,destination_workload_namespace,destination_workload,destination_canonical_service,destination_canonical_revision,request_protocol";
/// Labels Kiali drops a series without (`populateTrafficMap`): Prometheus omits empty ones.
const KIALI_REQUIRED: [&str; 12] = [
    "source_workload_namespace",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "destination_service_namespace",
    "destination_service",
    "destination_service_name",
    "destination_workload_namespace",
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "response_flags",
];

/// Kiali's graph queries for namespace `ns` over `window`, as it sends them (with the
/// defaults: ambient traffic `total`, TCP rate `sent`, idle edges hidden).
fn kiali_requests(ns: &str, window: &str) -> Vec<String> {
    let selectors = [
        format!(
            "reporter=~\"waypoint|source\",source_workload_namespace!=\"{ns}\",destination_workload_namespace=\"unknown\",destination_workload=\"unknown\",destination_service=~\"^.+\\\\.{ns}\\\\..+$\""
        ),
        format!(
            "reporter=\"source\",source_workload_namespace!=\"{ns}\",destination_workload_namespace=\"{ns}\""
        ),
        format!("reporter=~\"waypoint|destination\",destination_workload_namespace=\"{ns}\""),
        format!("reporter=~\"waypoint|source\",source_workload_namespace=\"{ns}\""),
    ];
    selectors
        .iter()
        .map(|s| format!("round(sum(rate(istio_requests_total{{{s}}} [{window}])) by ({REQUEST_GROUPING}) > 0,0.001)"))
        .collect()
}

fn kiali_tcp(ns: &str, window: &str) -> Vec<String> {
    let selectors = [
        format!(
            "reporter=~\"waypoint|source\",source_workload_namespace!=\"{ns}\",destination_workload_namespace=\"unknown\",destination_workload=\"unknown\",destination_service=~\"^.+\\\\.{ns}\\\\..+$\""
        ),
        format!("reporter=~\"waypoint|destination\",destination_workload_namespace=\"{ns}\""),
        format!("reporter=~\"waypoint|source\",source_workload_namespace=\"{ns}\""),
    ];
    selectors
        .iter()
        .map(|s| format!("round(sum(rate(istio_tcp_received_bytes_total{{{s}}} [{window}])) by ({TCP_GROUPING}) > 0,0.001)"))
        .collect()
}

fn kiali_security(ns: &str, window: &str) -> String {
    let term = |metric: &str, selector: &str| {
        format!("(sum(rate({metric}{{{selector}}}[{window}])) by ({SECURITY_GROUPING}) > 0)")
    };
    let inside = format!("source_workload_namespace=\"{ns}\"");
    format!(
        "round({} OR {} OR {},0.001)",
        term(
            "istio_requests_total",
            &format!("reporter=~\"waypoint|destination\",{inside}")
        ),
        term(
            "istio_tcp_sent_bytes_total",
            &format!("reporter=~\"waypoint|destination\",{inside}")
        ),
        term(
            "istio_tcp_sent_bytes_total",
            &format!("app=\"ztunnel\",reporter=\"source\",{inside}")
        ),
    )
}

fn kiali_response_time(ns: &str, window: &str) -> String {
    format!(
        "round(histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket{{reporter=~\"waypoint|source\",source_workload_namespace=\"{ns}\"}}[{window}])) by ({RESPONSE_TIME_GROUPING})) > 0,0.001)"
    )
}

/// What Kiali calls OK: known (`graph/util.go`); a version must not be `latest` either.
fn ok(value: &str) -> bool {
    !value.is_empty() && value != "unknown"
}

fn label<'a>(series: &'a Value, name: &str) -> &'a str {
    series["metric"][name].as_str().unwrap_or("")
}

/// An edge of each of Kiali's graph types, when the series' labels make one.
fn edges(series: &Value) -> [Option<(String, String)>; 3] {
    let l = |name| label(series, name);
    let app =
        (ok(l("source_canonical_service")) && ok(l("destination_canonical_service"))).then(|| {
            (
                l("source_canonical_service").to_owned(),
                l("destination_canonical_service").to_owned(),
            )
        });
    let version_ok = |v: &str| ok(v) && v != "latest";
    let versioned = (app.is_some()
        && version_ok(l("source_canonical_revision"))
        && version_ok(l("destination_canonical_revision")))
    .then(|| {
        (
            format!(
                "{} {}",
                l("source_canonical_service"),
                l("source_canonical_revision")
            ),
            format!(
                "{} {}",
                l("destination_canonical_service"),
                l("destination_canonical_revision")
            ),
        )
    });
    let workload = (ok(l("source_workload")) && ok(l("destination_workload"))).then(|| {
        (
            l("source_workload").to_owned(),
            l("destination_workload").to_owned(),
        )
    });
    [app, versioned, workload]
}

/// Traffic of every kind the graph and dashboards show, until stopped.
fn traffic(l7: &L7, stop: &AtomicBool) -> Result<()> {
    let flaky = l7.tb.pod("n1-p2");
    let client = l7.tb.pod("n0-p0");
    while !stop.load(Ordering::SeqCst) {
        for i in 0..10 {
            let mut http = l7.client(REVIEWS, "reviews")?;
            // One in ten is aborted by the route's fault (a 503 Kiali shows as an error).
            let headers: &[(&str, &str)] = if i == 0 {
                &[("end-user", "tester")]
            } else {
                &[]
            };
            http.request("POST", "/reviews/1", headers, &[b'r'; 300])?;
        }
        // TCP to flaky over HBONE, pod to pod.
        let mut tcp = client.connect(flaky.addr(PORT))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        tcp.write_all(b"GET /tcp HTTP/1.1\r\nhost: flaky\r\ncontent-length: 0\r\n\r\n")?;
        tcp.shutdown(Shutdown::Write)?;
        tcp.read_to_end(&mut Vec::new())?;
        // TCP the waypoint carries (not HTTP).
        let mut carried = client.connect(format!("{REVIEWS}:{PORT}").parse()?)?;
        carried.set_read_timeout(Some(Duration::from_secs(10)))?;
        carried.write_all(&[0, 1, 2, 3, 4, 5, 6, 7])?;
        carried.shutdown(Shutdown::Write)?;
        let _ = carried.read_to_end(&mut Vec::new());
        // A connection to a port nothing listens on: a failure the agents count.
        let _ = client.connect(flaky.addr(PORT + 1));
    }
    Ok(())
}

#[test]
fn kiali_and_grafana_read_the_mesh_from_prometheus() -> Result<()> {
    let l7 = l7::setup()?;
    l7.name_workloads()?;
    let canary = |name: &str| {
        vs(&format!(
            "  - match: [{{headers: {{end-user: {{exact: tester}}}}}}]\n    fault: {{abort: {{httpStatus: 503, percentage: {{value: 100}}}}}}\n    route: [{{destination: {{host: reviews, subset: v1}}}}]\n  - name: {name}\n    route:\n    - {{destination: {{host: reviews, subset: v1}}, weight: 90}}\n    - {{destination: {{host: reviews, subset: v2}}, weight: 10}}\n"
        ))
    };
    l7.route(&canary("canary"))?;
    // A resource the controller refuses, as the control-plane dashboard shows.
    l7.tb.write_policy(
        "refused",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: broken, namespace: default}\nspec:\n  hosts: [mirror]\n  http:\n  - route:\n    - {destination: {host: mirror}, weight: 40}\n",
    )?;

    // Every component, as pod discovery would list it with the templates that run it.
    let template = |file: &str, kind: &str| -> Result<_> {
        let text = std::fs::read_to_string(deploy_file(file))?;
        mesh_tests::api_rules::workloads(&text)?
            .into_iter()
            .find(|w| w.kind() == kind)
            .and_then(|w| w.pod_template().cloned())
            .with_context(|| format!("no {kind} in {file}"))
    };
    let node = template("node.yaml", "DaemonSet")?;
    let mut pods: Vec<DiscoveredPod> = l7
        .tb
        .nodes
        .iter()
        .map(|n| DiscoveredPod {
            namespace: "ambit-system".to_owned(),
            name: format!("ambit-node-{}", n.name),
            ip: IpAddr::V4(n.ip),
            template: node.clone(),
        })
        .collect();
    pods.push(DiscoveredPod {
        namespace: "ambit-system".to_owned(),
        name: "ambit-controller-0".to_owned(),
        ip: mesh_tests::controller::CA_ADDR
            .parse::<std::net::SocketAddr>()?
            .ip(),
        template: template("controller.yaml", "Deployment")?,
    });
    let waypoint = manifests::gateway_deployment(mesh_api::gateway_api::WAYPOINT_CLASS);
    pods.push(DiscoveredPod {
        namespace: "default".to_owned(),
        name: "waypoint-0".to_owned(),
        ip: IpAddr::V4(l7.tb.pod("n0-p1").ip),
        template: waypoint
            .spec
            .map(|s| s.template)
            .context("the waypoint Deployment has no pod template")?,
    });
    let prometheus = Prometheus::start(&l7.tb, &pods)?;
    // The shipped job labels each target with its pod and namespace.
    let scraped: BTreeSet<String> = prometheus
        .targets()?
        .iter()
        .map(|t| {
            format!(
                "{}/{}",
                t["labels"]["namespace"].as_str().unwrap_or("?"),
                t["labels"]["pod"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert_eq!(scraped.len(), 4, "{scraped:?}");

    // A change while Prometheus watches: the controller's push latency has a rate.
    l7.route(&canary("canary-90-10"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let result = std::thread::scope(|scope| {
        let traffic = scope.spawn(|| traffic(&l7, &stop));
        let checked = check(&prometheus);
        stop.store(true, Ordering::SeqCst);
        let traffic = traffic.join().expect("the traffic thread panicked");
        checked.and(traffic)
    });
    result.with_context(|| {
        prometheus
            .log()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    })
}

fn check(prometheus: &Prometheus) -> Result<()> {
    let window = "60s";
    // Kiali's requests and TCP queries: the expected edges appear, every series complete.
    let expected_requests = [
        [("productpage", "reviews"); 1].to_vec(),
        vec![
            ("productpage v1", "reviews v1"),
            ("productpage v1", "reviews v2"),
        ],
        vec![
            ("productpage-v1", "reviews-v1"),
            ("productpage-v1", "reviews-v2"),
        ],
    ];
    let expected_tcp = [
        vec![("productpage", "flaky-db"), ("productpage", "reviews")],
        vec![("productpage v1", "flaky-db v1")],
        vec![("productpage-v1", "flaky")],
    ];
    let mut report = String::new();
    for (queries, expected, what) in [
        (
            kiali_requests("default", window),
            &expected_requests,
            "requests",
        ),
        (kiali_tcp("default", window), &expected_tcp, "TCP"),
    ] {
        wait_until(
            &format!("Kiali's {what} graph of every edge"),
            Duration::from_secs(90),
            Duration::from_secs(1),
            || {
                let mut found: [BTreeSet<(String, String)>; 3] = Default::default();
                report.clear();
                for query in &queries {
                    for series in prometheus.query(query)? {
                        for required in KIALI_REQUIRED {
                            ensure!(
                                !label(&series, required).is_empty(),
                                "Kiali would drop this series: no {required}: {series}"
                            );
                        }
                        for (graph, edge) in edges(&series).into_iter().enumerate() {
                            found[graph].extend(edge);
                        }
                        report.push_str(&format!("{}\n", series["metric"]));
                    }
                }
                Ok(expected.iter().zip(&found).all(|(want, got)| {
                    want.iter()
                        .all(|(s, d)| got.contains(&(s.to_string(), d.to_string())))
                }))
            },
        )
        .with_context(|| report.clone())?;
    }
    // Mutual TLS on each edge, as Kiali's security appender computes it.
    wait_until(
        "Kiali marking the edges mutual TLS",
        Duration::from_secs(60),
        Duration::from_secs(1),
        || {
            let mut share: BTreeMap<(String, String), (f64, f64)> = BTreeMap::new();
            for series in prometheus.query(&kiali_security("default", window))? {
                let rate: f64 = series["value"][1].as_str().unwrap_or("0").parse()?;
                let edge = (
                    label(&series, "source_workload").to_owned(),
                    label(&series, "destination_workload").to_owned(),
                );
                // As Kiali: a series without both principals (a request aborted by a fault
                // reached no workload) marks no edge.
                if !ok(label(&series, "source_principal"))
                    || !ok(label(&series, "destination_principal"))
                {
                    continue;
                }
                let entry = share.entry(edge).or_default();
                if label(&series, "connection_security_policy") == "mutual_tls" {
                    entry.0 += rate;
                }
                entry.1 += rate;
            }
            let mtls = |s: &str, d: &str| {
                share
                    .get(&(s.to_owned(), d.to_owned()))
                    .is_some_and(|(m, all)| *m > 0.0 && m == all)
            };
            Ok(mtls("productpage-v1", "reviews-v1")
                && mtls("productpage-v1", "reviews-v2")
                && mtls("productpage-v1", "flaky"))
        },
    )?;
    // Response time: a P99 on each request edge.
    let times = prometheus.query(&kiali_response_time("default", window))?;
    for destination in ["reviews-v1", "reviews-v2"] {
        ensure!(
            times
                .iter()
                .any(|s| label(s, "destination_workload") == destination),
            "no P99 for the edge to {destination}: {times:?}"
        );
    }
    dashboards(prometheus)
}

/// Every panel query of every dashboard, with its variables set as a user would pick them.
fn dashboards(prometheus: &Prometheus) -> Result<()> {
    let dir = deploy_file("observability/grafana");
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    ensure!(files.len() == 6, "six dashboards: {files:?}");
    let variables = [
        ("$__rate_interval", "1m"),
        ("${datasource}", "prometheus"),
        ("$service", "reviews.default.svc.cluster.local"),
        ("$namespace", "default"),
        ("$workload", "(productpage-v1|reviews-v2)"),
    ];
    for file in files {
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for panel in dashboard["panels"].as_array().context("no panels")? {
            for target in panel["targets"]
                .as_array()
                .context("a panel without targets")?
            {
                let mut expr = target["expr"]
                    .as_str()
                    .context("a target without expr")?
                    .to_owned();
                for (name, value) in variables {
                    expr = expr.replace(name, value);
                }
                ensure!(!expr.contains('$'), "{name}: a variable left in {expr}");
                let mut last = Vec::new();
                wait_until(
                    &format!("{name} / {}: data", panel["title"]),
                    Duration::from_secs(30),
                    Duration::from_secs(1),
                    || {
                        last = prometheus.query(&expr)?;
                        Ok(last.iter().any(|s| {
                            s["value"][1]
                                .as_str()
                                .and_then(|v| v.parse::<f64>().ok())
                                .is_some_and(f64::is_finite)
                        }))
                    },
                )
                .with_context(|| format!("{expr}\n{last:?}"))?;
            }
        }
    }
    Ok(())
}
