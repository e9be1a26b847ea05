//! Trace context through the waypoint: W3C `traceparent` and Zipkin B3 (`x-b3-*`) headers
//! are carried on with the waypoint's own span as the parent, so a tracer sees the hop; a
//! request without either gets a new W3C trace. `x-request-id` is kept or made.

use http::{HeaderMap, HeaderValue};

/// `bytes` (8 or 16) random bytes in hex.
fn random_hex(bytes: usize) -> String {
    match bytes {
        8 => format!("{:016x}", fastrand::u64(..)),
        _ => format!("{:032x}", fastrand::u128(..)),
    }
}

/// The span the waypoint opens for a request, and the ids it continues.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    pub parent_id: Option<String>,
    /// Recorded and exported (the caller's decision, or `sampling` for a new trace).
    pub sampled: bool,
}

/// Rewrites the trace headers of a request going upstream; returns the waypoint's span.
/// A trace that starts here is sampled with `sampling` percent.
pub fn propagate(headers: &mut HeaderMap, sampling: f64) -> Span {
    let span_id = random_hex(8);
    let incoming = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent);
    let span = match incoming {
        Some((trace_id, parent, flags)) => {
            set(
                headers,
                "traceparent",
                format!("00-{trace_id}-{span_id}-{flags}"),
            );
            let sampled = u8::from_str_radix(&flags, 16).is_ok_and(|f| f & 1 == 1);
            Span {
                trace_id,
                span_id: span_id.clone(),
                parent_id: Some(parent),
                sampled,
            }
        }
        None => {
            let trace_id = random_hex(16);
            // B3's decision when there is one, else ours.
            let sampled = match headers.get("x-b3-sampled").map(|v| v.as_bytes()) {
                Some(b"1") => true,
                Some(_) => false,
                None => crate::proxy::roll(sampling),
            };
            let flags = if sampled { "01" } else { "00" };
            set(
                headers,
                "traceparent",
                format!("00-{trace_id}-{span_id}-{flags}"),
            );
            Span {
                trace_id,
                span_id: span_id.clone(),
                parent_id: None,
                sampled,
            }
        }
    };
    if let Some(b3_span) = headers
        .get("x-b3-spanid")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    {
        set(headers, "x-b3-parentspanid", b3_span);
        set(headers, "x-b3-spanid", span_id);
    }
    if !headers.contains_key("x-request-id") {
        let id = random_hex(16);
        let uuid = format!(
            "{}-{}-{}-{}-{}",
            &id[0..8],
            &id[8..12],
            &id[12..16],
            &id[16..20],
            &id[20..32]
        );
        set(headers, "x-request-id", uuid);
    }
    span
}

fn set(headers: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(name, value);
    }
}

/// (trace id, parent span id, flags) of a version-00 `traceparent`.
fn parse_traceparent(value: &str) -> Option<(String, String, String)> {
    let mut parts = value.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (version == "00"
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace != "0".repeat(32))
    .then(|| (trace.to_owned(), parent.to_owned(), flags.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w3c_and_b3_continue_with_the_waypoints_span() {
        let mut headers = HeaderMap::new();
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        headers.insert(
            "traceparent",
            HeaderValue::from_str(&format!("00-{trace}-00f067aa0ba902b7-01")).unwrap(),
        );
        headers.insert("x-b3-traceid", HeaderValue::from_static("463ac35c9f6413ad"));
        headers.insert("x-b3-spanid", HeaderValue::from_static("a2fb4a1d1a96d312"));
        let span = propagate(&mut headers, 0.0);
        assert!(span.sampled, "the caller sampled it");
        assert_eq!(span.trace_id, trace);
        assert_eq!(span.parent_id.as_deref(), Some("00f067aa0ba902b7"));
        let sent = headers["traceparent"].to_str().unwrap();
        assert_eq!(sent, format!("00-{trace}-{}-01", span.span_id));
        assert_eq!(headers["x-b3-parentspanid"], "a2fb4a1d1a96d312");
        assert_eq!(headers["x-b3-spanid"], span.span_id.as_str());
        assert_eq!(headers["x-b3-traceid"], "463ac35c9f6413ad");
        assert!(headers.contains_key("x-request-id"));
    }

    #[test]
    fn a_request_without_context_starts_a_trace() {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_static("garbage"));
        let span = propagate(&mut headers, 0.0);
        assert!(span.parent_id.is_none() && !span.sampled);
        assert_eq!(span.trace_id.len(), 32);
        assert!(headers["traceparent"].to_str().unwrap().ends_with("-00"));
    }
}
