//! Spans from the waypoint reach an OTLP collector on the test bed: client pod -> agent ->
//! HBONE -> waypoint -> HBONE -> agent -> server, with the waypoint exporting its span for
//! each request. Needs root; run with `cargo xtask test`.

use std::time::{Duration, Instant};

use anyhow::Result;
use mesh_tests::{
    http::HttpRequest,
    l7::{REVIEWS, setup_with},
};

/// Sampled requests become spans at an OTLP/HTTP collector, in the trace the caller started.
#[test]
fn spans_reach_an_otlp_collector() -> Result<()> {
    let l7 = setup_with(&[
        "--otlp-endpoint",
        "http://127.0.0.1:4318/v1/traces",
        "--trace-sampling",
        "0",
    ])?;
    // The collector listens in the waypoint's pod.
    let listener = l7
        .tb
        .pod("n0-p1")
        .enter(|| std::net::TcpListener::bind("127.0.0.1:4318"))??;
    let (_collector, exported) = mesh_tests::http::http_server(
        listener,
        std::sync::Arc::new(|_: &HttpRequest| mesh_tests::http::HttpResponse::ok("")),
    )?;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let sampled = format!("00-{trace}-00f067aa0ba902b7-01");
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let mut client = l7.client(REVIEWS, "reviews")?;
    client.get("/traced", &[("traceparent", &sampled)])?;
    client.get("/untraced", &[("traceparent", unsampled)])?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let body = loop {
        let posts = exported.lock().unwrap().clone();
        if let Some(post) = posts.iter().find(|p| p.path == "/v1/traces") {
            break String::from_utf8_lossy(&post.body).into_owned();
        }
        anyhow::ensure!(Instant::now() < deadline, "no spans exported in 5 s");
        std::thread::sleep(Duration::from_millis(100));
    };
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
    Ok(())
}
