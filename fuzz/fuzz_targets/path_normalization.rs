//! Path normalization before routing and authorization. Properties: never a panic;
//! idempotent; and what comes out (which is both what the policy judges and what goes
//! upstream) has no spelling left that a backend could read as another path: no dot
//! segments, no empty segments but a trailing one, no backslash, no encoded separator or dot.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_waypoint::proxy::normalize::normalize;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let Some(normal) = normalize(path) else {
        return;
    };
    assert!(normal.starts_with('/'), "{normal:?}");
    assert_eq!(
        normalize(&normal).as_deref(),
        Some(&*normal),
        "not idempotent: {path:?}"
    );
    assert!(!normal.contains('\\'), "{normal:?}");
    let upper = normal.to_ascii_uppercase();
    for encoded in ["%2F", "%5C", "%2E"] {
        assert!(!upper.contains(encoded), "{encoded} left in {normal:?}");
    }
    let segments: Vec<&str> = normal[1..].split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        assert!(
            *segment != "." && *segment != "..",
            "dot segment in {normal:?}"
        );
        assert!(
            !segment.is_empty() || i == segments.len() - 1,
            "empty segment in {normal:?}"
        );
    }
});
