//! Istio's standard metrics, label by label, as Kiali and Istio's dashboards read them: a
//! request through the waypoint (`istio_requests_total` and its histograms, reporter
//! `waypoint`), a TCP connection between two pods over HBONE (`istio_tcp_*` from both node
//! agents), and TCP carried by the waypoint. Workload names come from the pods' controllers,
//! canonical names from Istio's labels, byte counts from what passed. Needs root; run with
//! `cargo xtask test`.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::Shutdown,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use mesh_tests::{
    exposition::{self, Sample},
    l7::{self, PORT, REVIEWS, vs},
    sys::wait_until,
};

const CLIENT: &str = "spiffe://cluster.local/ns/default/sa/client";
const SERVER: &str = "spiffe://cluster.local/ns/default/sa/default";

/// Every label Istio documents for its TCP metrics, as `expected` says they must be.
const TCP_LABELS: [&str; 23] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_service",
    "destination_service_namespace",
    "destination_service_name",
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
];

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The labels every series of this test shares: from productpage-v1 (the client) to a
/// workload with these names, over mutual TLS, without response flags.
fn from_productpage_to(workload: &str, app: &str, version: &str) -> BTreeMap<String, String> {
    labels(&[
        ("source_workload", "productpage-v1"),
        ("source_canonical_service", "productpage"),
        ("source_canonical_revision", "v1"),
        ("source_workload_namespace", "default"),
        ("source_principal", CLIENT),
        ("source_app", "productpage"),
        ("source_version", "v1"),
        ("source_cluster", "Kubernetes"),
        ("destination_workload", workload),
        ("destination_canonical_service", app),
        ("destination_canonical_revision", version),
        ("destination_workload_namespace", "default"),
        ("destination_principal", SERVER),
        ("destination_app", app),
        ("destination_version", version),
        ("destination_cluster", "Kubernetes"),
        ("response_flags", "-"),
        ("connection_security_policy", "mutual_tls"),
    ])
}

/// The one sample of `name` with exactly the labels `expected`.
fn exactly<'a>(
    samples: &'a [Sample],
    name: &str,
    expected: &BTreeMap<String, String>,
) -> Option<&'a Sample> {
    samples
        .iter()
        .find(|s| s.name == name && s.labels == *expected)
}

fn describe(samples: &[Sample], name: &str) -> String {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| format!("{:?} {}", s.labels, s.value))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn istio_labels_for_requests_and_connections() -> Result<()> {
    let l7 = l7::setup()?;
    let tb = &l7.tb;
    l7.name_workloads()?;
    l7.route(&vs(
        "  - route:\n    - {destination: {host: reviews, subset: v2}}\n",
    ))?;

    // HTTP through the waypoint, with bodies of known sizes both ways.
    let request_body = vec![b'q'; 1000];
    let mut expected_request = from_productpage_to("reviews-v2", "reviews", "v2");
    expected_request.extend(labels(&[
        ("reporter", "waypoint"),
        ("destination_service", "reviews.default.svc.cluster.local"),
        ("destination_service_namespace", "default"),
        ("destination_service_name", "reviews"),
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("grpc_response_status", ""),
    ]));
    // The owners reach the waypoint with the pods file's next version: until then the
    // series carry the pod names.
    let mut samples = Vec::new();
    wait_until(
        "the waypoint's request series with every label as Istio's",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let mut client = l7.client(REVIEWS, "reviews")?;
            let response = client.request("POST", "/metrics-test", &[], &request_body)?;
            ensure!(response.status == 200, "{}", response.body);
            samples = exposition::parse(&l7.waypoint.metrics()?);
            Ok(exactly(&samples, "istio_requests_total", &expected_request).is_some())
        },
    )
    .with_context(|| describe(&samples, "istio_requests_total"))?;
    // From here on, every request lands in the one series: the counts are exact.
    let before = |name: &str| exactly(&samples, name, &expected_request).map_or(0.0, |s| s.value);
    let (requests0, req_bytes0, resp_bytes0) = (
        before("istio_requests_total"),
        before("istio_request_bytes_sum"),
        before("istio_response_bytes_sum"),
    );
    let mut body_bytes = 0u64;
    for i in 0..5 {
        let mut client = l7.client(REVIEWS, "reviews")?;
        let response = client.request("POST", &format!("/exact/{i}"), &[], &request_body)?;
        ensure!(response.status == 200, "{}", response.body);
        body_bytes += response.body.len() as u64;
    }
    wait_until(
        "five more requests counted with their real sizes",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            samples = exposition::parse(&l7.waypoint.metrics()?);
            let now =
                |name: &str| exactly(&samples, name, &expected_request).map_or(0.0, |s| s.value);
            Ok(now("istio_requests_total") - requests0 == 5.0
                && now("istio_request_bytes_sum") - req_bytes0 == 5000.0
                && now("istio_response_bytes_sum") - resp_bytes0 == body_bytes as f64)
        },
    )?;
    let mut duration = expected_request.clone();
    duration.insert("le".to_owned(), "+Inf".to_owned());
    ensure!(
        exactly(
            &samples,
            "istio_request_duration_milliseconds_bucket",
            &duration
        )
        .is_some(),
        "no duration histogram with the request's labels"
    );

    // TCP between two pods over HBONE, counted by both agents.
    let flaky = tb.pod("n1-p2").addr(PORT);
    let request = b"GET /tcp HTTP/1.1\r\nhost: flaky\r\ncontent-length: 0\r\n\r\n";
    let mut stream = tb.pod("n0-p0").connect(flaky)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.write_all(request)?;
    stream.shutdown(Shutdown::Write)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    ensure!(response.starts_with(b"HTTP/1.1 "), "{response:?}");
    drop(stream);
    let tcp = |reporter: &str, service: Option<&str>| {
        let (host, name, namespace) = match service {
            Some(name) => (format!("{name}.default.svc.cluster.local"), name, "default"),
            None => ("unknown".to_owned(), "unknown", "unknown"),
        };
        let mut expected = from_productpage_to("flaky", "flaky-db", "v1");
        expected.extend(labels(&[
            ("reporter", reporter),
            ("destination_service", &host),
            ("destination_service_namespace", namespace),
            ("destination_service_name", name),
            ("request_protocol", "tcp"),
        ]));
        expected
    };
    // The client addressed the pod, not a service; the server's agent names the service
    // that sends that port to the pod, as ztunnel does.
    for (agent, expected) in [
        (&l7.agents[0], tcp("source", None)),
        (&l7.agents[1], tcp("destination", Some("flaky"))),
    ] {
        assert_eq!(
            expected.keys().collect::<Vec<_>>().len(),
            TCP_LABELS.len(),
            "every TCP label checked"
        );
        let mut samples = Vec::new();
        wait_until(
            "the connection's series with every label as Istio's and its exact bytes",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || {
                samples = exposition::parse(&agent.metrics()?);
                let value = |name: &str| exactly(&samples, name, &expected).map(|s| s.value);
                Ok(value("istio_tcp_connections_opened_total") == Some(1.0)
                    && value("istio_tcp_connections_closed_total") == Some(1.0)
                    && value("istio_tcp_received_bytes_total") == Some(request.len() as f64)
                    && value("istio_tcp_sent_bytes_total") == Some(response.len() as f64))
            },
        )
        .with_context(|| describe(&samples, "istio_tcp_received_bytes_total"))?;
    }

    // TCP the waypoint carries (not HTTP: sniffed as such) is in its istio_tcp_* too.
    let mut stream = tb
        .pod("n0-p0")
        .connect(format!("{REVIEWS}:{PORT}").parse()?)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let garbage = [0u8, 1, 2, 3, 4, 5, 6, 7];
    stream.write_all(&garbage)?;
    stream.shutdown(Shutdown::Write)?;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let mut samples = Vec::new();
    wait_until(
        "the waypoint's TCP series",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            samples = exposition::parse(&l7.waypoint.metrics()?);
            let carried = exposition::select(
                &samples,
                "istio_tcp_received_bytes_total",
                &[
                    ("reporter", "waypoint"),
                    ("request_protocol", "tcp"),
                    ("source_workload", "productpage-v1"),
                    ("destination_service", "reviews.default.svc.cluster.local"),
                    ("connection_security_policy", "mutual_tls"),
                ],
            );
            Ok(carried.len() == 1
                && carried[0].value == garbage.len() as f64
                && carried[0].labels.len() == TCP_LABELS.len())
        },
    )
    .with_context(|| describe(&samples, "istio_tcp_received_bytes_total"))?;
    Ok(())
}
