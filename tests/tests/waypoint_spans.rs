//! Spans from the waypoint reach an OTLP collector and a Zipkin one (v2 JSON, as the Zipkin
//! and Jaeger addons take it) on the test bed: client pod -> agent -> HBONE -> waypoint ->
//! HBONE -> agent -> server, with the waypoint exporting its span for each request. Both
//! collectors are this test's own, on the waypoint pod's loopback. Needs root; run with
//! `cargo xtask test`.

use std::time::{Duration, Instant};

use anyhow::Result;
use mesh_tests::{
    http::{HttpRequest, Received},
    l7::{REVIEWS, setup_with},
};

/// What a collector was sent at `path`, once it arrives.
fn first_post(exported: &Received, path: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let posts = exported.lock().unwrap().clone();
        if let Some(post) = posts.iter().find(|p| p.path == path) {
            return Ok(String::from_utf8_lossy(&post.body).into_owned());
        }
        anyhow::ensure!(Instant::now() < deadline, "no spans sent to {path} in 5 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sampled requests become spans at both collectors, in the trace the caller started.
#[test]
fn spans_reach_otlp_and_zipkin_collectors() -> Result<()> {
    let l7 = setup_with(&[
        "--otlp-endpoint",
        "http://127.0.0.1:4318/v1/traces",
        "--zipkin-endpoint",
        "http://127.0.0.1:9411/api/v2/spans",
        "--trace-sampling",
        "0",
    ])?;
    // The collectors listen in the waypoint's pod.
    let collector = |port: u16| -> Result<_> {
        let listener = l7
            .tb
            .pod("n0-p1")
            .enter(|| std::net::TcpListener::bind(("127.0.0.1", port)))??;
        mesh_tests::http::http_server(
            listener,
            std::sync::Arc::new(|_: &HttpRequest| mesh_tests::http::HttpResponse::ok("")),
        )
    };
    let (_otlp, exported) = collector(4318)?;
    let (_zipkin, zipkin_posts) = collector(9411)?;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let sampled = format!("00-{trace}-00f067aa0ba902b7-01");
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let mut client = l7.client(REVIEWS, "reviews")?;
    client.get("/traced", &[("traceparent", &sampled)])?;
    client.get("/untraced", &[("traceparent", unsampled)])?;
    let body = first_post(&exported, "/v1/traces")?;
    let export: serde_json::Value = serde_json::from_str(&body)?;
    let spans = &export["resourceSpans"][0]["scopeSpans"][0]["spans"];
    assert_eq!(
        spans.as_array().map(Vec::len),
        Some(1),
        "only the sampled request: {body}"
    );
    assert_eq!(spans[0]["traceId"], trace);
    assert_eq!(spans[0]["parentSpanId"], "00f067aa0ba902b7");
    assert!(body.contains("/traced"), "{body}");
    // The backend got the same trace, with the waypoint's span as parent.
    let seen = l7.received[0]
        .lock()
        .unwrap()
        .iter()
        .chain(l7.received[1].lock().unwrap().iter())
        .find(|r| r.path == "/traced")
        .cloned()
        .expect("the traced request reached a backend");
    let forwarded = seen.header("traceparent").unwrap_or_default().to_owned();
    assert!(
        forwarded.starts_with(&format!("00-{trace}-"))
            && forwarded.contains(spans[0]["spanId"].as_str().unwrap_or("?")),
        "{forwarded}"
    );

    // Zipkin: the same span, in the same tree, in v2 JSON.
    let zipkin = first_post(&zipkin_posts, "/api/v2/spans")?;
    let zipkin: serde_json::Value = serde_json::from_str(&zipkin)?;
    assert_eq!(zipkin.as_array().map(Vec::len), Some(1), "{zipkin}");
    let span = &zipkin[0];
    assert_eq!(span["traceId"], trace);
    assert_eq!(span["parentId"], "00f067aa0ba902b7");
    assert_eq!(span["id"], spans[0]["spanId"]);
    assert_eq!(span["kind"], "SERVER");
    assert!(span["duration"].as_u64().is_some_and(|d| d > 0), "{span}");
    assert_eq!(span["localEndpoint"]["serviceName"], "waypoint.default");
    Ok(())
}
