//! Bookinfo's services as the demo runs them: each pod answers `<app> <version> <path>`
//! on port 9080; `details` fails two calls in three with a 500 (what the retry step fixes:
//! Istio's default retries cover 503 only).

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use anyhow::Result;
use mesh_tests::{
    Testbed,
    http::{HttpRequest, HttpResponse, http_server},
    traffic::Server,
};

pub const PORT: u16 = 9080;

/// (pod, app, version, service account): where each of Bookinfo's workloads runs.
pub const WORKLOADS: [(&str, &str, &str, &str); 8] = [
    ("n0-p0", "sleep", "v1", "sleep"),
    ("n0-p1", "productpage", "v1", "bookinfo-productpage"),
    ("n0-p2", "productpage", "v2", "bookinfo-productpage"),
    ("n1-p0", "reviews", "v1", "bookinfo-reviews"),
    ("n1-p1", "reviews", "v2", "bookinfo-reviews"),
    ("n1-p2", "ratings", "v1", "bookinfo-ratings"),
    ("n1-p3", "details", "v1", "bookinfo-details"),
    ("n1-p4", "httpbin", "v1", "httpbin"),
];
/// The waypoint's pod, and a pod kept out of the mesh (an old client).
pub const WAYPOINT_POD: &str = "n0-p3";
pub const LEGACY_POD: &str = "n0-p4";

/// The running apps, and how many calls `details` has answered.
pub struct Apps {
    _servers: Vec<Server>,
    pub details_calls: Arc<AtomicUsize>,
}

pub fn start(tb: &Testbed) -> Result<Apps> {
    let details_calls = Arc::new(AtomicUsize::new(0));
    let mut servers = Vec::new();
    for (pod, app, version, _) in WORKLOADS {
        if app == "sleep" {
            continue;
        }
        let calls = details_calls.clone();
        let handler = Arc::new(move |request: &HttpRequest| {
            if app == "details" && calls.fetch_add(1, Ordering::SeqCst) % 3 != 2 {
                return HttpResponse::status(500, "details v1 failed");
            }
            HttpResponse::ok(format!("{app} {version} {}", request.path))
        });
        let (server, _) = http_server(tb.pod(pod).listen(PORT)?, handler)?;
        servers.push(server);
    }
    Ok(Apps {
        _servers: servers,
        details_calls,
    })
}
