//! Trace context through the waypoint: W3C `traceparent` and Zipkin B3 (`x-b3-*`) headers
//! are carried on with the waypoint's own span as the parent, so a tracer sees the hop; a
//! request without either gets a new W3C trace. `x-request-id` is kept or made.

use http::{HeaderMap, HeaderName, HeaderValue};

// Names parsed once: these are looked up on every request.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The span the waypoint opens for a request, and the ids it continues.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_id: Option<u64>,
    /// Recorded and exported (the caller's decision, or `sampling` for a new trace).
    pub sampled: bool,
}

impl Span {
    pub fn trace_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    pub fn span_hex(&self) -> String {
        format!("{:016x}", self.span_id)
    }

    pub fn parent_hex(&self) -> Option<String> {
        self.parent_id.map(|p| format!("{p:016x}"))
    }
}

/// Writes `value` as lower-case hex into all of `out` (two digits per byte, big-endian).
fn hex_into(out: &mut [u8], value: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut value = value;
    for digit in out.iter_mut().rev() {
        *digit = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// A header value made of ASCII this module wrote itself.
fn ascii(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(bytes).expect("hex digits and dashes are a valid header value")
}

/// Rewrites the trace headers of a request going upstream; returns the waypoint's span.
/// A trace that starts here is sampled with `sampling` percent.
pub fn propagate(headers: &mut HeaderMap, sampling: f64) -> Span {
    let span_id = fastrand::u64(1..);
    let incoming = headers
        .get(TRACEPARENT)
        .and_then(|v| parse_traceparent(v.as_bytes()));
    let (trace_id, parent_id, flags) = match incoming {
        Some((trace_id, parent, flags)) => (trace_id, Some(parent), flags),
        None => {
            // B3's decision when there is one, else ours.
            let sampled = match headers.get(B3_SAMPLED).map(|v| v.as_bytes()) {
                Some(b"1") => true,
                Some(_) => false,
                None => crate::proxy::roll(sampling),
            };
            (fastrand::u128(1..), None, u8::from(sampled))
        }
    };
    // `00-<trace>-<span>-<flags>`
    let mut traceparent = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex_into(&mut traceparent[3..35], trace_id);
    hex_into(&mut traceparent[36..52], span_id.into());
    hex_into(&mut traceparent[53..55], flags.into());
    headers.insert(TRACEPARENT, ascii(&traceparent));
    if let Some(b3_span) = headers.get(B3_SPAN_ID).cloned() {
        let mut span = [0u8; 16];
        hex_into(&mut span, span_id.into());
        headers.insert(B3_PARENT_SPAN_ID, b3_span);
        headers.insert(B3_SPAN_ID, ascii(&span));
    }
    if !headers.contains_key(REQUEST_ID) {
        // A version-4 UUID's layout: 8-4-4-4-12 hex digits.
        let id = fastrand::u128(..);
        let mut uuid = *b"00000000-0000-0000-0000-000000000000";
        hex_into(&mut uuid[0..8], id >> 96);
        hex_into(&mut uuid[9..13], (id >> 80) & 0xffff);
        hex_into(&mut uuid[14..18], (id >> 64) & 0xffff);
        hex_into(&mut uuid[19..23], (id >> 48) & 0xffff);
        hex_into(&mut uuid[24..36], id & 0xffff_ffff_ffff);
        headers.insert(REQUEST_ID, ascii(&uuid));
    }
    Span {
        trace_id,
        span_id,
        parent_id,
        sampled: flags & 1 == 1,
    }
}

/// (trace id, parent span id, flags) of a version-00 `traceparent`.
fn parse_traceparent(value: &[u8]) -> Option<(u128, u64, u8)> {
    let value = value.trim_ascii();
    if value.len() < 55 || &value[..3] != b"00-" || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let hex = |digits: &[u8]| -> Option<u128> {
        let text = std::str::from_utf8(digits).ok()?;
        // from_str_radix takes a sign too: only digits count.
        if !digits.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        u128::from_str_radix(text, 16).ok()
    };
    let trace = hex(&value[3..35])?;
    let parent = u64::try_from(hex(&value[36..52])?).ok()?;
    let flags = u8::try_from(hex(&value[53..55])?).ok()?;
    (value.len() == 55 && trace != 0).then_some((trace, parent, flags))
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
        assert_eq!(span.trace_hex(), trace);
        assert_eq!(span.parent_hex().as_deref(), Some("00f067aa0ba902b7"));
        let sent = headers["traceparent"].to_str().unwrap();
        assert_eq!(sent, format!("00-{trace}-{}-01", span.span_hex()));
        assert_eq!(headers["x-b3-parentspanid"], "a2fb4a1d1a96d312");
        assert_eq!(headers["x-b3-spanid"], span.span_hex().as_str());
        assert_eq!(headers["x-b3-traceid"], "463ac35c9f6413ad");
        assert!(headers.contains_key("x-request-id"));
    }

    #[test]
    fn a_request_without_context_starts_a_trace() {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_static("garbage"));
        let span = propagate(&mut headers, 0.0);
        assert!(span.parent_id.is_none() && !span.sampled);
        let sent = headers["traceparent"].to_str().unwrap();
        assert!(sent.starts_with("00-") && sent.ends_with("-00") && sent.len() == 55);
        assert_eq!(&sent[3..35], span.trace_hex());
        let id = headers["x-request-id"].to_str().unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
    }

    #[test]
    fn malformed_trace_context_is_not_continued() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-+0f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad}");
        }
    }
}
