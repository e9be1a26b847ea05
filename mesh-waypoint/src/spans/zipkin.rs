//! Zipkin's v2 JSON (`POST /api/v2/spans`, as in `http://zipkin:9411/api/v2/spans`): what the
//! Zipkin and Jaeger addons of Istio's tutorials read.

use std::time::SystemTime;

use super::Finished;

fn micros(time: SystemTime) -> u128 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
}

/// The JSON array of v2 spans for `spans`.
pub fn encode(service_name: &str, spans: &[Finished]) -> String {
    let spans: Vec<serde_json::Value> = spans
        .iter()
        .map(|f| {
            let mut tags: serde_json::Map<String, serde_json::Value> = f
                .attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone().into()))
                .collect();
            if f.error {
                // Zipkin marks a failed span by the presence of an `error` tag.
                tags.insert("error".to_owned(), "true".into());
            }
            let mut span = serde_json::json!({
                "traceId": f.span.trace_hex(),
                "id": f.span.span_hex(),
                "name": f.name,
                "kind": "SERVER",
                "timestamp": micros(f.start) as u64,
                // At least a microsecond: Zipkin reads 0 as "unknown".
                "duration": (micros(f.end).saturating_sub(micros(f.start))).max(1) as u64,
                "localEndpoint": {"serviceName": service_name},
                "tags": tags,
            });
            if let Some(parent) = f.span.parent_hex() {
                span["parentId"] = parent.into();
            }
            span
        })
        .collect();
    serde_json::Value::Array(spans).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_encode_as_zipkin_v2_json() {
        let text = encode("waypoint.default", &[super::super::sample_failed_request()]);
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let span = &json[0];
        assert_eq!(span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span["id"], "00f067aa0ba902b7");
        assert_eq!(span["parentId"], "a2fb4a1d1a96d312");
        assert_eq!(span["kind"], "SERVER");
        assert_eq!(span["timestamp"], 1_700_000_000_000_000u64);
        assert_eq!(span["duration"], 3000);
        assert_eq!(span["localEndpoint"]["serviceName"], "waypoint.default");
        assert_eq!(span["tags"]["http.status_code"], "503");
        assert_eq!(span["tags"]["error"], "true");
    }
}
