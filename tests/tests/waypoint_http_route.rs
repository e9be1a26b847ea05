//! Gateway API HTTPRoutes at the waypoint, as Istio's ambient tasks apply them: a route on
//! the `reviews` Service splits 90/10 between the `reviews-v1` and `reviews-v2` Services,
//! a header sends one user to v2, a prefix redirects, the most specific match wins whatever
//! the order it is written in, and a backend that does not exist answers 500. An HTTPRoute
//! the waypoint cannot serve is refused and named in the controller's log while the others
//! keep working.
//! Needs root; run with `cargo xtask test`.

use anyhow::Result;
use mesh_tests::l7::{REVIEWS, setup};

const VERSIONS: &str = r#"apiVersion: v1
kind: Service
metadata: {name: reviews-v1, namespace: default}
spec: {clusterIP: 10.96.0.21, selector: {app: reviews, version: v1}, ports: [{port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v2, namespace: default}
spec: {clusterIP: 10.96.0.22, selector: {app: reviews, version: v2}, ports: [{port: 9080}]}
"#;

const ROUTES: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: default}
spec:
  parentRefs:
  - {group: "", kind: Service, name: reviews, port: 9080}
  rules:
  - backendRefs:
    - {name: reviews-v1, port: 9080, weight: 90}
    - {name: reviews-v2, port: 9080, weight: 10}
  - matches: [{headers: [{type: Exact, name: end-user, value: jason}]}]
    backendRefs: [{name: reviews-v2, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 301}
  - matches: [{path: {type: Exact, value: /v2-only}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-routed-by, value: httproute}]}
    - type: URLRewrite
      urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /rewritten}}
    backendRefs: [{name: reviews-v2, port: 9080}]
  - matches: [{path: {type: Exact, value: /gone}}]
    backendRefs: [{name: reviews-v9, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: broken, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: mirror, port: 9080}]
  rules:
  - filters: [{type: ExtensionRef, extensionRef: {group: example.com, kind: Plugin, name: x}}]
    backendRefs: [{name: reviews-v2, port: 9080}]
"#;

#[test]
fn httproutes_split_match_and_redirect_at_the_waypoint() -> Result<()> {
    let l7 = setup()?;
    l7.write("versions", VERSIONS)?;
    l7.write("httproutes", ROUTES)?;

    // 90/10 over 2,000 requests: v2's share within 4.5 standard deviations (sd 13.4).
    let (v1, v2) = l7.tally(2000, "/", &[])?;
    assert_eq!(v1 + v2, 2000);
    assert!(
        (140..=260).contains(&v2),
        "90/10 split gave v2 {v2} of 2000"
    );

    // A header match outranks the rule without one, though written after it.
    assert_eq!(l7.tally(20, "/", &[("end-user", "jason")])?, (0, 20));

    let mut client = l7.client(REVIEWS, "reviews")?;
    // PathPrefix /old: whole segments, the prefix replaced in the redirect.
    let redirect = client.get("/old/page?x=1", &[])?;
    assert_eq!(redirect.status, 301, "{}", redirect.body);
    assert_eq!(
        redirect.headers.get("location").map(String::as_str),
        Some("http://reviews/new/page?x=1")
    );
    let not_under = client.get("/oldest", &[])?;
    assert_eq!(not_under.status, 200, "/oldest is not under /old");
    // An exact path outranks the catch-all rule; its path is rewritten whole.
    assert_eq!(client.get("/v2-only", &[])?.body, "v2 /rewritten");
    let received = l7.received[1].lock().expect("v2's requests");
    let last = received.last().expect("v2 got the rewritten request");
    assert!(
        last.headers
            .iter()
            .any(|(name, value)| name == "x-routed-by" && value == "httproute"),
        "{:?}",
        last.headers
    );
    drop(received);
    // A backend Service that does not exist: the Gateway API's 500, not a 404 or 503.
    let gone = client.get("/gone", &[])?;
    assert_eq!(gone.status, 500, "{}", gone.body);
    assert!(gone.body.contains("reviews-v9"), "{}", gone.body);

    // The broken route is refused and named; the mirror Service keeps its default route.
    let log = std::fs::read_to_string(&l7.controller.log)?;
    assert!(
        log.contains("HTTPRoute default/broken") && log.contains("ExtensionRef"),
        "{log}"
    );
    let mut mirror = l7.client(mesh_tests::l7::MIRROR, "mirror")?;
    assert_eq!(mirror.get("/x", &[])?.body, "mirror /x");
    Ok(())
}
