//! L7 through a waypoint, on the test bed: client pod -> its node's agent -> HBONE -> the
//! waypoint (routing, splits, faults, retries, timeouts, mirroring, policy) -> HBONE -> the
//! server pod's agent -> the server. Real HTTP/1.1 on real sockets; the controller streams the
//! VirtualServices each step writes. Needs root; run with `cargo xtask test`.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::Result;
use mesh_tests::{
    http::{HttpClient, HttpRequest},
    l7::{FLAKY, PORT, REVIEWS, SUBSETS, setup, vs},
};

#[test]
fn routing_splits_and_rewrites_through_the_waypoint() -> Result<()> {
    let l7 = setup()?;

    // No VirtualService: the default route reaches both versions.
    let (v1, v2) = l7.tally(40, "/", &[])?;
    assert!(
        v1 > 0 && v2 > 0,
        "default route reached v1 {v1} / v2 {v2} times"
    );

    // 90/10 over 2,000 requests: v2's share within 4.5 standard deviations (sd 13.4).
    l7.route(&vs(
        "  - route:\n    - {destination: {host: reviews, subset: v1}, weight: 90}\n    - {destination: {host: reviews, subset: v2}, weight: 10}\n",
    ))?;
    let (v1, v2) = l7.tally(2000, "/", &[])?;
    assert_eq!(v1 + v2, 2000);
    assert!(
        (140..=260).contains(&v2),
        "90/10 split gave v2 {v2} of 2000"
    );

    // Header A/B: Chrome to v2, everyone else to v1.
    l7.route(&vs(
        "  - match: [{headers: {user-agent: {regex: '.*Chrome.*'}}}]\n    route: [{destination: {host: reviews, subset: v2}}]\n  - route: [{destination: {host: reviews, subset: v1}}]\n",
    ))?;
    let chrome = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36";
    assert_eq!(l7.tally(20, "/", &[("user-agent", chrome)])?, (0, 20));
    assert_eq!(l7.tally(20, "/", &[("user-agent", "curl/8.5")])?, (20, 0));

    // Prefix + rewrite, regex URI, and the default route of a VirtualService.
    l7.route(&vs(
        "  - match: [{uri: {prefix: /old/}}]\n    rewrite: {uri: /new/}\n    route: [{destination: {host: reviews, subset: v2}}]\n  - match: [{uri: {regex: '/api/v[0-9]+/items'}}]\n    route: [{destination: {host: reviews, subset: v2}}]\n  - route: [{destination: {host: reviews, subset: v1}}]\n",
    ))?;
    let mut client = l7.client(REVIEWS, "reviews")?;
    assert_eq!(client.get("/old/page?x=1", &[])?.body, "v2 /new/page?x=1");
    assert_eq!(client.get("/api/v3/items", &[])?.body, "v2 /api/v3/items");
    assert_eq!(
        client.get("/api/v3/items/9", &[])?.body,
        "v1 /api/v3/items/9"
    );
    assert_eq!(client.get("/anything", &[])?.body, "v1 /anything");

    // Delegation: /team/ is delegated to a VirtualService without hosts, whose routes apply
    // within it (jason to v2, the rest to v1); everything else goes to v2.
    l7.route(&format!(
        "{}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: team, namespace: default}}\nspec:\n  http:\n  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]\n    route: [{{destination: {{host: reviews, subset: v2}}}}]\n  - route: [{{destination: {{host: reviews, subset: v1}}}}]\n",
        vs("  - match: [{uri: {prefix: /team/}}]\n    delegate: {name: team}\n  - route: [{destination: {host: reviews, subset: v2}}]\n")
    ))?;
    let mut client = l7.client(REVIEWS, "reviews")?;
    assert_eq!(client.get("/team/a", &[])?.body, "v1 /team/a");
    let jason = [("end-user", "jason")];
    assert_eq!(client.get("/team/a", &jason)?.body, "v2 /team/a");
    assert_eq!(client.get("/elsewhere", &[])?.body, "v2 /elsewhere");

    // CORS: a preflight from an allowed origin is answered by the waypoint (the backend never
    // sees it); responses to requests from allowed origins are marked, others are not.
    l7.route(&vs(
        "  - corsPolicy: {allowOrigins: [{exact: 'https://shop.example'}], allowMethods: [GET, PUT], maxAge: 1h}\n    route: [{destination: {host: reviews, subset: v1}}]\n",
    ))?;
    let mut browser = l7.client(REVIEWS, "reviews")?;
    let seen_before = l7.received[0].lock().unwrap().len();
    let preflight = browser.request(
        "OPTIONS",
        "/cart",
        &[
            ("origin", "https://shop.example"),
            ("access-control-request-method", "PUT"),
        ],
        b"",
    )?;
    assert_eq!(preflight.status, 200);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    assert_eq!(
        preflight.header("access-control-allow-methods"),
        Some("GET,PUT")
    );
    assert_eq!(preflight.header("access-control-max-age"), Some("3600"));
    let allowed = browser.get("/cart", &[("origin", "https://shop.example")])?;
    assert_eq!(allowed.body, "v1 /cart");
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    let other = browser.get("/cart", &[("origin", "https://evil.example")])?;
    assert_eq!(other.body, "v1 /cart");
    assert_eq!(other.header("access-control-allow-origin"), None);
    assert_eq!(
        l7.received[0].lock().unwrap().len(),
        seen_before + 2,
        "the backend saw both GETs and not the preflight"
    );
    drop(browser);

    // Trace context reached the backend, with the waypoint's span.
    let seen = l7.received[0].lock().unwrap().last().cloned().unwrap();
    let traceparent = seen.header("traceparent").unwrap_or_default().to_owned();
    assert_eq!(traceparent.len(), 55, "traceparent {traceparent:?}");
    assert!(seen.header("x-request-id").is_some());

    // An upload larger than any buffer streams through whole.
    let upload: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let response = client.request("POST", "/upload", &[], &upload)?;
    assert_eq!(response.status, 200, "{}", response.body);
    let seen = l7.received[0].lock().unwrap().last().cloned().unwrap();
    assert!(seen.body == upload, "the 4 MiB body arrived intact");

    // Metrics with Istio's names and labels.
    let metrics = l7.waypoint.metrics()?;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("destination_version=\"v2\"")
                && l.contains("response_code=\"200\"")
        })
        .unwrap_or_else(|| panic!("no istio_requests_total for v2:\n{metrics}"));
    assert!(line.contains("reporter=\"waypoint\""), "{line}");
    assert!(
        line.contains("source_principal=\"spiffe://cluster.local/ns/default/sa/client\""),
        "{line}"
    );
    assert!(metrics.contains("istio_request_duration_milliseconds_bucket"));
    Ok(())
}

#[test]
fn faults_retries_timeouts_and_mirrors() -> Result<()> {
    let l7 = setup()?;

    // A 7 s delay, scaled down to 300 ms, on every request.
    l7.route(&vs(
        "  - fault: {delay: {fixedDelay: 300ms, percentage: {value: 100}}}\n    route: [{destination: {host: reviews, subset: v1}}]\n",
    ))?;
    let mut client = l7.client(REVIEWS, "reviews")?;
    let started = Instant::now();
    let response = client.get("/", &[])?;
    assert_eq!(response.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(response.header("x-ambit-response-flags"), Some("DI"));

    // Abort with 503 on half the requests.
    l7.route(&vs(
        "  - fault: {abort: {httpStatus: 503, percentage: {value: 50}}}\n    route: [{destination: {host: reviews, subset: v1}}]\n",
    ))?;
    let mut client = l7.client(REVIEWS, "reviews")?;
    let mut aborted = 0;
    for _ in 0..400 {
        let response = client.get("/", &[])?;
        if response.status == 503 {
            assert_eq!(response.body, "fault filter abort");
            aborted += 1;
        }
    }
    // sd 10: within 5 of them.
    assert!(
        (150..=250).contains(&aborted),
        "{aborted} of 400 aborted at 50 %"
    );

    // Retries: a backend that fails twice then answers is retried; three tries in all.
    let flaky = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: flaky, namespace: default}\nspec:\n  hosts: [flaky]\n  http:\n  - timeout: 1s\n    retries: {attempts: 3, perTryTimeout: 700ms, retryOn: 5xx}\n    route: [{destination: {host: flaky}}]\n";
    l7.route(flaky)?;
    let mut client = l7.client(FLAKY, "flaky")?;
    l7.flaky_calls.store(0, Ordering::SeqCst);
    let response = client.get("/flaky", &[])?;
    assert_eq!((response.status, response.body.as_str()), (200, "flaky ok"));
    assert_eq!(l7.flaky_calls.load(Ordering::SeqCst), 3, "two retries");
    // A request body is sent again on each try while it is small enough to keep...
    l7.flaky_calls.store(0, Ordering::SeqCst);
    let response = client.request("POST", "/flaky", &[], &[b'k'; 1024])?;
    assert_eq!((response.status, response.body.as_str()), (200, "flaky ok"));
    assert_eq!(
        l7.flaky_calls.load(Ordering::SeqCst),
        3,
        "a small body is retried"
    );
    // ...and a larger one streams through once: its request is not retried.
    l7.flaky_calls.store(0, Ordering::SeqCst);
    let response = client.request("POST", "/flaky", &[], &vec![b's'; 256 << 10])?;
    assert_eq!(response.status, 503, "{}", response.body);
    assert_eq!(
        l7.flaky_calls.load(Ordering::SeqCst),
        1,
        "a streamed body is sent once"
    );

    // perTryTimeout: the first try is cut at 700 ms and the retry answers.
    l7.flaky_calls.store(0, Ordering::SeqCst);
    let started = Instant::now();
    let response = client.get("/slow-once", &[])?;
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );

    // The overall timeout: 1 s, whatever the retries.
    let started = Instant::now();
    let response = client.get("/slow", &[])?;
    assert_eq!(response.status, 504);
    assert_eq!(response.header("x-ambit-response-flags"), Some("UT"));
    assert!(
        started.elapsed() < Duration::from_millis(1800),
        "{:?}",
        started.elapsed()
    );

    // Mirroring half the requests: the mirror gets its share, the client only primary answers.
    l7.route(&vs(
        "  - route: [{destination: {host: reviews, subset: v1}}]\n    mirror: {host: mirror}\n    mirrorPercentage: {value: 50}\n",
    ))?;
    let before = l7.received[2].lock().unwrap().len();
    let (v1, v2) = l7.tally(200, "/mirrored", &[])?;
    assert_eq!(
        (v1, v2),
        (200, 0),
        "the client sees only the primary's answers"
    );
    std::thread::sleep(Duration::from_millis(300));
    let mirrored: Vec<HttpRequest> = l7.received[2].lock().unwrap()[before..].to_vec();
    // sd 7: within 5 of them.
    assert!(
        (65..=135).contains(&mirrored.len()),
        "{} of 200 mirrored at 50 %",
        mirrored.len()
    );
    assert!(
        mirrored[0]
            .header("host")
            .is_some_and(|h| h.contains("-shadow")),
        "{:?}",
        mirrored[0].header("host")
    );
    Ok(())
}

#[test]
fn a_pod_behind_the_waypoint_cannot_be_reached_around_it() -> Result<()> {
    let l7 = setup()?;
    let v1 = l7.tb.pod("n1-p0").addr(PORT);
    // Through the mesh (the client is enrolled): its agent sends it through the waypoint.
    let mut client = HttpClient::connect(l7.tb.pod("n0-p0"), v1, "reviews")?;
    assert_eq!(client.get("/direct", &[])?.body, "v1 /direct");
    // The mirror pod, taken out of the mesh, dials the pod itself: refused by its agent.
    l7.tb.set_pod_mode("n0-p2", Some("none"))?;
    l7.agents[0].wait_enrolled(&l7.tb.pod("n0-p2").key(), false)?;
    let outside = HttpClient::connect(l7.tb.pod("n0-p2"), v1, "reviews")
        .and_then(|mut c| c.get("/around", &[]));
    assert!(
        outside.is_err(),
        "reached the pod around its waypoint: {outside:?}"
    );
    let seen = l7.received[0].lock().unwrap();
    assert!(!seen.iter().any(|r| r.path == "/around"));
    let log = l7.agents[1].log();
    assert!(log.contains("only the waypoint may connect"), "{log}");
    Ok(())
}

#[test]
fn circuit_breaking_outlier_detection_and_consistent_hashing() -> Result<()> {
    let l7 = setup()?;

    // One connection and one pending request to the flaky backend: of three concurrent slow
    // requests, one is served, one waits, and the third overflows with 503 and UO.
    l7.rules(&format!(
        "{SUBSETS}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: flaky, namespace: default}}\nspec:\n  host: flaky\n  trafficPolicy:\n    connectionPool:\n      tcp: {{maxConnections: 1}}\n      http: {{http1MaxPendingRequests: 1}}\n"
    ))?;
    let answers: Vec<_> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..3)
            .map(|i| {
                let l7 = &l7;
                scope.spawn(move || {
                    std::thread::sleep(Duration::from_millis(100 * i));
                    let started = Instant::now();
                    let mut client = l7.client(FLAKY, "flaky")?;
                    let response = client.get("/pause", &[])?;
                    Ok::<_, anyhow::Error>((response, started.elapsed()))
                })
            })
            .collect();
        calls
            .into_iter()
            .map(|c| c.join().expect("no panic"))
            .collect()
    });
    let answers: Vec<_> = answers.into_iter().collect::<Result<_>>()?;
    let overflowed: Vec<_> = answers.iter().filter(|(r, _)| r.status == 503).collect();
    assert_eq!(overflowed.len(), 1, "{answers:?}");
    assert_eq!(overflowed[0].0.header("x-ambit-response-flags"), Some("UO"));
    assert!(
        overflowed[0].1 < Duration::from_millis(500),
        "overflow is immediate"
    );
    assert_eq!(answers.iter().filter(|(r, _)| r.status == 200).count(), 2);

    // Outlier detection: two consecutive 500s eject v1 for a second; then it returns.
    l7.rules(&format!(
        "{SUBSETS}  trafficPolicy:\n    loadBalancer: {{simple: ROUND_ROBIN}}\n    outlierDetection: {{consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 1s, maxEjectionPercent: 100}}\n"
    ))?;
    l7.v1_failing.store(true, Ordering::SeqCst);
    let mut client = l7.client(REVIEWS, "reviews")?;
    let mut failures = 0;
    for _ in 0..6 {
        if client.get("/", &[])?.status == 500 {
            failures += 1;
        }
    }
    assert!(
        failures <= 2,
        "v1 answered 500 {failures} times before ejection"
    );
    for _ in 0..20 {
        let response = client.get("/", &[])?;
        assert_eq!(
            (response.status, &response.body[..2]),
            (200, "v2"),
            "v1 is ejected"
        );
    }
    l7.v1_failing.store(false, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1200));
    let (v1, v2) = l7.tally(20, "/", &[])?;
    assert!(
        v1 > 0 && v2 > 0,
        "v1 returned after its ejection: v1 {v1}, v2 {v2}"
    );

    // Consistent hash on a header: each user stays on one endpoint.
    l7.rules(&format!(
        "{SUBSETS}  trafficPolicy:\n    loadBalancer: {{consistentHash: {{httpHeaderName: x-user}}}}\n"
    ))?;
    let mut backends = std::collections::BTreeSet::new();
    // Twelve users: all on one of two endpoints by chance once in 2,048 runs.
    for user in [
        "jason", "ana", "bob", "chen", "dev", "eve", "fay", "gus", "hal", "ivy", "jo", "kim",
    ] {
        let (v1, v2) = l7.tally(10, "/", &[("x-user", user)])?;
        assert!(
            v1 == 0 || v2 == 0,
            "{user} moved between endpoints: v1 {v1}, v2 {v2}"
        );
        backends.insert(v1 > 0);
    }
    assert_eq!(backends.len(), 2, "twelve users all hashed to one endpoint");
    Ok(())
}

#[test]
fn l7_deny_holds_against_every_spelling_of_a_path() -> Result<()> {
    let l7 = setup()?;
    l7.write(
        "authz",
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: default}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin", "/admin/*"]}}]
  - when: [{key: "request.headers[x-role]", values: ["intruder"]}]
"#,
    )?;
    let mut client = l7.client(REVIEWS, "reviews")?;
    for spelling in [
        "/admin",
        "//admin",
        "/a/../admin",
        "/./admin/",
        "/%61dmin",
        "/%2Fadmin",
        "/%2fadmin",
        "/x%2F..%2Fadmin",
        "/x/%2e%2e/admin/users",
    ] {
        let response = client.get(spelling, &[])?;
        assert_eq!(
            response.status, 403,
            "{spelling} got through: {}",
            response.body
        );
    }
    // A backslash is not a valid path character: refused one way or another.
    let backslash = l7.client(REVIEWS, "reviews")?.get("/\\admin", &[]);
    assert!(
        backslash.is_err()
            || backslash
                .as_ref()
                .is_ok_and(|r| r.status == 400 || r.status == 403),
        "{backslash:?}"
    );
    let public = client.get("/public", &[])?;
    assert_eq!(public.status, 200);
    // Every value of a repeated header is checked.
    let mixed = client.get("/public", &[("x-role", "user"), ("x-role", "intruder")])?;
    assert_eq!(mixed.status, 403);
    assert_eq!(client.get("/public", &[("x-role", "user")])?.status, 200);
    for received in &l7.received[..2] {
        let seen = received.lock().unwrap();
        assert!(
            !seen.iter().any(|r| r.path.contains("admin")),
            "a backend was sent {:?}",
            seen.iter().map(|r| &r.path).collect::<Vec<_>>()
        );
    }
    // The denials are counted and logged.
    let metrics = l7.waypoint.metrics()?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"403\"")),
        "{metrics}"
    );
    let log = l7.waypoint.log();
    assert!(
        log.contains("request denied") && log.contains("default/no-admin"),
        "{log}"
    );
    Ok(())
}
