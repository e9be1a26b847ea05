//! Span export: one SERVER span per sampled request, batched (up to [`BATCH`] spans or every
//! [`FLUSH_EVERY`]) and sent off the data path to each configured collector, over OTLP/HTTP
//! (JSON encoding, `POST <endpoint>` as in `http://collector:4318/v1/traces`) or Zipkin's v2
//! JSON (`zipkin`). When a collector is slow or away, spans are dropped and counted, never
//! queued without bound.

mod zipkin;

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use crate::proxy::trace::Span;

const BATCH: usize = 512;
const FLUSH_EVERY: Duration = Duration::from_secs(1);
const QUEUE: usize = 4096;

/// A finished request, as a span.
#[derive(Clone, Debug)]
pub struct Finished {
    pub span: Span,
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    /// (key, value) string attributes.
    pub attributes: Vec<(&'static str, String)>,
    pub error: bool,
}

/// How a collector takes spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Otlp,
    Zipkin,
}

impl Format {
    fn encode(self, service_name: &str, spans: &[Finished]) -> String {
        match self {
            Format::Otlp => encode(service_name, spans),
            Format::Zipkin => zipkin::encode(service_name, spans),
        }
    }
}

pub struct Exporter {
    queue: mpsc::Sender<Finished>,
    /// Spans dropped because the queue was full.
    pub dropped: AtomicU64,
}

impl Exporter {
    /// Starts the sending task for `collectors` (each `http://host:port/path`).
    pub fn start(collectors: &[(Format, &str)], service_name: String) -> Result<Self, String> {
        let mut sinks = Vec::new();
        for (format, endpoint) in collectors {
            let uri: http::Uri = endpoint
                .parse()
                .map_err(|e| format!("{format:?} endpoint {endpoint}: {e}"))?;
            if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                return Err(format!(
                    "{format:?} endpoint {endpoint}: only http://host:port/path is supported"
                ));
            }
            sinks.push((*format, uri));
        }
        let (queue, spans) = mpsc::channel(QUEUE);
        tokio::spawn(send_batches(sinks, service_name, spans));
        Ok(Exporter {
            queue,
            dropped: AtomicU64::new(0),
        })
    }

    pub fn record(&self, finished: Finished) {
        if self.queue.try_send(finished).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn send_batches(
    sinks: Vec<(Format, http::Uri)>,
    service_name: String,
    mut spans: mpsc::Receiver<Finished>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let first = match spans.recv().await {
            Some(span) => span,
            None => return,
        };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, spans.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        for (format, uri) in &sinks {
            let body = format.encode(&service_name, &batch);
            if let Err(error) = post(uri, body).await {
                tracing::warn!(%error, ?format, spans = batch.len(), "spans not exported");
            }
        }
        batch.clear();
    }
}

async fn post(uri: &http::Uri, body: String) -> Result<(), String> {
    let authority = uri.authority().ok_or("no authority")?.as_str().to_owned();
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&authority),
    )
    .await
    .map_err(|_| format!("connecting to {authority} timed out"))?
    .map_err(|e| format!("connecting to {authority}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = http::Request::post(uri.path())
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("collector answered {}", response.status()));
    }
    Ok(())
}

fn nanos(time: SystemTime) -> String {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
        .to_string()
}

/// The OTLP/JSON `ExportTraceServiceRequest` for `spans`.
pub fn encode(service_name: &str, spans: &[Finished]) -> String {
    let spans: Vec<serde_json::Value> = spans
        .iter()
        .map(|f| {
            let attributes: Vec<serde_json::Value> = f
                .attributes
                .iter()
                .map(|(k, v)| serde_json::json!({"key": k, "value": {"stringValue": v}}))
                .collect();
            let mut span = serde_json::json!({
                "traceId": f.span.trace_hex(),
                "spanId": f.span.span_hex(),
                "name": f.name,
                // SPAN_KIND_SERVER
                "kind": 2,
                "startTimeUnixNano": nanos(f.start),
                "endTimeUnixNano": nanos(f.end),
                "attributes": attributes,
                // STATUS_CODE_ERROR or UNSET
                "status": {"code": if f.error { 2 } else { 0 }},
            });
            if let Some(parent) = f.span.parent_hex() {
                span["parentSpanId"] = parent.into();
            }
            span
        })
        .collect();
    serde_json::json!({
        "resourceSpans": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": service_name}}
            ]},
            "scopeSpans": [{"scope": {"name": "ambit-waypoint"}, "spans": spans}]
        }]
    })
    .to_string()
}

/// A finished 3 ms request that failed (503), in a trace a caller started: what the encoders'
/// tests encode.
#[cfg(test)]
pub(crate) fn sample_failed_request() -> Finished {
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    Finished {
        span: Span {
            trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
            span_id: 0x00f067aa0ba902b7,
            parent_id: Some(0xa2fb4a1d1a96d312),
            sampled: true,
        },
        name: "reviews.default.svc.cluster.local:9080/*".to_owned(),
        start,
        end: start + Duration::from_millis(3),
        attributes: vec![("http.status_code", "503".to_owned())],
        error: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_encode_as_otlp_json() {
        let text = encode("waypoint.default", &[sample_failed_request()]);
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let span = &json["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span["parentSpanId"], "a2fb4a1d1a96d312");
        assert_eq!(span["endTimeUnixNano"], "1700000000003000000");
        assert_eq!(span["status"]["code"], 2);
        assert_eq!(span["attributes"][0]["value"]["stringValue"], "503");
    }
}
