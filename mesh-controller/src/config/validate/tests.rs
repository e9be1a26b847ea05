use super::*;
use crate::config::load::parse_documents;

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: bookinfo}
spec: {ports: [{port: 9080}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

pub(super) fn validated(yaml: &str) -> (ConfigSet, Validation) {
    let mut set = ConfigSet::default();
    let errors = parse_documents("test.yaml", &format!("{SERVICES}---\n{yaml}"), &mut set);
    assert_eq!(errors, [], "test YAML must parse");
    let validation = validate(&set, "cluster.local");
    (set, validation)
}

pub(super) fn key(kind: Kind, name: &str) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: "bookinfo".to_owned(),
        name: name.to_owned(),
    }
}

/// The `(condition, reason, message)` findings of one resource.
pub(super) fn findings(
    v: &Validation,
    key: &ObjectKey,
) -> Vec<(&'static str, &'static str, String)> {
    v.findings
        .get(key)
        .map(|f| {
            f.iter()
                .map(|f| (f.condition, f.reason, f.message.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn vs(name: &str, http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: bookinfo}}\nspec:\n  hosts: [reviews]\n  http:\n{http}"
    )
}

#[test]
fn a_canary_split_over_defined_subsets_is_accepted() {
    let (_, v) = validated(&vs(
        "canary",
        "  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 90\n    - destination: {host: reviews, subset: v2}\n      weight: 10\n",
    ));
    let key = key(Kind::VirtualService, "canary");
    assert_eq!(findings(&v, &key), []);
    assert!(v.accepted(&key));
    let conditions = v.conditions(&key, Some(3));
    let summary: Vec<(&str, &str, &str)> = conditions
        .iter()
        .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("Accepted", "True", "Accepted"),
            ("ResolvedRefs", "True", "ResolvedRefs")
        ]
    );
    assert_eq!(conditions[0].observed_generation, Some(3));
}

#[test]
fn weights_must_sum_to_100() {
    let (_, v) = validated(&vs(
        "split",
        "  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 90\n    - destination: {host: reviews, subset: v2}\n      weight: 20\n",
    ));
    let key = key(Kind::VirtualService, "split");
    assert!(!v.accepted(&key));
    let c = &v.conditions(&key, None)[0];
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "InvalidWeights")
    );
    assert_eq!(
        c.message,
        "spec.http[0]: route weights 90 + 20 sum to 110, not 100"
    );
}

#[test]
fn regexes_must_compile() {
    let (_, v) = validated(&vs(
        "regex",
        "  - match:\n    - uri: {regex: \"/api/(v1\"}\n      headers:\n        user-agent: {regex: \".*Chrome.*\"}\n    route:\n    - destination: {host: reviews}\n",
    ));
    let found = findings(&v, &key(Kind::VirtualService, "regex"));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].1, "InvalidRegex");
    assert!(
        found[0]
            .2
            .starts_with("spec.http[0].match[0].uri.regex: \"/api/(v1\" does not compile"),
        "{}",
        found[0].2
    );
}

#[test]
fn unknown_subsets_and_hosts_are_unresolved_references_not_rejections() {
    let (_, v) = validated(&vs(
        "refs",
        "  - route:\n    - destination: {host: reviews, subset: v3}\n      weight: 50\n    - destination: {host: ratings}\n      weight: 50\n",
    ));
    let key = key(Kind::VirtualService, "refs");
    assert!(v.accepted(&key), "references may resolve later");
    assert_eq!(
        findings(&v, &key),
        [
            (
                RESOLVED_REFS,
                "UnknownSubset",
                "spec.http[0].route[0]: no DestinationRule for reviews.bookinfo.svc.cluster.local defines subset \"v3\"".to_owned()
            ),
            (
                RESOLVED_REFS,
                "UnknownHost",
                "spec.http[0].route[1]: host ratings.bookinfo.svc.cluster.local is neither a Service nor a ServiceEntry host".to_owned()
            ),
        ]
    );
    assert_eq!(v.conditions(&key, None)[1].status, "False");
}

#[test]
fn a_second_virtual_service_for_a_host_conflicts_and_the_first_keeps_it() {
    let route = "  - route:\n    - destination: {host: reviews}\n";
    let (_, v) = validated(&format!(
        "{}\n---\n{}",
        vs("a-first", route),
        vs("b-second", route)
    ));
    assert!(v.accepted(&key(Kind::VirtualService, "a-first")));
    let second = key(Kind::VirtualService, "b-second");
    assert!(!v.accepted(&second));
    assert_eq!(
        findings(&v, &second)[0].2,
        "host reviews.bookinfo.svc.cluster.local is already configured by VirtualService bookinfo/a-first, which takes precedence"
    );
}

#[test]
fn values_out_of_range_are_named() {
    let http = r#"  - route:
    - destination: {host: reviews}
    timeout: 10 seconds
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: "5xx,sometimes"}
    fault:
      abort: {httpStatus: 700, percentage: {value: 150}}
    redirect: {uri: /elsewhere, redirectCode: 200}
"#;
    let (_, v) = validated(&vs("bad-values", http));
    let reasons: Vec<&str> = findings(&v, &key(Kind::VirtualService, "bad-values"))
        .iter()
        .map(|f| f.1)
        .collect();
    assert_eq!(
        reasons,
        [
            "InvalidRoute",
            "InvalidDuration",
            "InvalidRetries",
            "InvalidFault",
            "InvalidPercentage",
            "InvalidRedirect"
        ]
    );
}

#[test]
fn cors_policies_are_checked() {
    let http = r#"  - route:
    - destination: {host: reviews}
    corsPolicy:
      allowOrigins: [{exact: "https://example.com"}, {regex: "https://(.*"}]
      allowMethods: [GET, "NOT A METHOD"]
      allowHeaders: [x-token, "bad header"]
      maxAge: a day
      unmatchedPreflights: DROP
"#;
    let (_, v) = validated(&vs("bad-cors", http));
    let found = findings(&v, &key(Kind::VirtualService, "bad-cors"));
    let fields: Vec<&str> = found
        .iter()
        .map(|f| f.2.split(':').next().unwrap_or_default())
        .collect();
    assert_eq!(
        fields,
        [
            "spec.http[0].corsPolicy.allowOrigins[1].regex",
            "spec.http[0].corsPolicy.allowMethods",
            "spec.http[0].corsPolicy.allowHeaders",
            "spec.http[0].corsPolicy.maxAge",
            "spec.http[0].corsPolicy.unmatchedPreflights",
        ],
        "{found:?}"
    );
    let good = r#"  - route:
    - destination: {host: reviews}
    corsPolicy:
      allowOrigins: [{exact: "https://example.com"}, {prefix: "https://app."}]
      allowMethods: [GET, POST]
      allowHeaders: [x-token]
      exposeHeaders: [x-trace]
      maxAge: 24h
      allowCredentials: true
"#;
    let (_, v) = validated(&vs("good-cors", good));
    assert!(v.accepted(&key(Kind::VirtualService, "good-cors")));
}

#[test]
fn tcp_routes_are_checked() {
    let tcp = |name: &str, matches: &str, weights: (u32, u32)| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: bookinfo}}\nspec:\n  hosts: [reviews]\n  tcp:\n  - match: [{matches}]\n    route:\n    - {{destination: {{host: reviews, subset: v1}}, weight: {}}}\n    - {{destination: {{host: reviews, subset: v2}}, weight: {}}}\n",
            weights.0, weights.1
        )
    };
    let (_, v) = validated(&tcp("shift", "{port: 9080}", (80, 20)));
    assert!(v.accepted(&key(Kind::VirtualService, "shift")));
    let (_, v) = validated(&tcp(
        "subnet",
        "{destinationSubnets: [10.0.0.0/8, fd00::1]}",
        (80, 20),
    ));
    assert!(v.accepted(&key(Kind::VirtualService, "subnet")));
    let (_, v) = validated(&tcp("bad", "{destinationSubnets: [10.0.0.0/33]}", (80, 30)));
    let found = findings(&v, &key(Kind::VirtualService, "bad"));
    let reasons: Vec<&str> = found.iter().map(|f| f.1).collect();
    assert_eq!(reasons, ["InvalidWeights", "InvalidMatch"], "{found:?}");
}

#[test]
fn tls_routes_are_checked() {
    let tls = |name: &str, matches: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: bookinfo}}\nspec:\n  hosts: [reviews]\n  tls:\n  - match: [{matches}]\n    route:\n    - {{destination: {{host: reviews, subset: v1}}, weight: 90}}\n    - {{destination: {{host: reviews, subset: v3}}, weight: 10}}\n"
        )
    };
    let (_, v) = validated(&tls("by-name", "{sniHosts: [v1.example.com], port: 443}"));
    let found = findings(&v, &key(Kind::VirtualService, "by-name"));
    assert!(
        v.accepted(&key(Kind::VirtualService, "by-name")),
        "{found:?}"
    );
    assert_eq!(found[0].1, "UnknownSubset", "{found:?}");
    let (_, v) = validated(&tls(
        "no-name",
        "{sniHosts: [], destinationSubnets: [not-a-subnet]}",
    ));
    let found = findings(&v, &key(Kind::VirtualService, "no-name"));
    let reasons: Vec<&str> = found.iter().map(|f| f.1).collect();
    assert_eq!(
        reasons,
        ["InvalidRoute", "InvalidMatch", "UnknownSubset"],
        "{found:?}"
    );
}

#[test]
fn security_policies_are_checked() {
    let yaml = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: bookinfo}
spec:
  action: CUSTOM
  rules:
  - from:
    - source: {ipBlocks: ["10.0.0.0/33", "not-an-ip"]}
    to:
    - operation: {ports: ["http"], paths: ["admin"]}
    when:
    - {key: request.colour, values: [red]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: good, namespace: bookinfo}
spec:
  action: DENY
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/bookinfo/sa/productpage"], ipBlocks: ["10.0.0.0/8"]}
    to:
    - operation: {ports: ["9080"], methods: [POST], paths: ["/admin*"]}
    when:
    - {key: "request.headers[x-user]", values: [mallory]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a-default, namespace: bookinfo}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: b-default, namespace: bookinfo}
spec:
  mtls: {mode: PERMISSIVE}
  portLevelMtls:
    "http": {mode: DISABLE}
"#;
    let (_, v) = validated(yaml);
    assert!(v.accepted(&key(Kind::AuthorizationPolicy, "good")));
    assert!(v.accepted(&key(Kind::PeerAuthentication, "a-default")));
    let bad: Vec<&str> = findings(&v, &key(Kind::AuthorizationPolicy, "bad"))
        .iter()
        .map(|f| f.1)
        .collect();
    assert_eq!(
        bad,
        [
            "InvalidAction",
            "InvalidIpBlock",
            "InvalidIpBlock",
            "InvalidPort",
            "InvalidPath",
            "InvalidCondition"
        ]
    );
    let pa: Vec<&str> = findings(&v, &key(Kind::PeerAuthentication, "b-default"))
        .iter()
        .map(|f| f.1)
        .collect();
    assert_eq!(pa, ["InvalidPort", "InvalidPeerAuthentication", "Conflict"]);
}

#[test]
fn a_waypoint_needs_an_hbone_listener() {
    let yaml = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: bookinfo}
spec:
  gatewayClassName: ambit-waypoint
  listeners:
  - {name: mesh, port: 15008, protocol: HBONE}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: broken-waypoint, namespace: bookinfo}
spec:
  gatewayClassName: ambit-waypoint
  listeners:
  - {name: http, port: 80, protocol: HTTP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: someone-elses, namespace: bookinfo}
spec:
  gatewayClassName: other
  listeners:
  - {name: http, port: 80, protocol: HTTP}
"#;
    let (_, v) = validated(yaml);
    assert!(v.accepted(&key(Kind::K8sGateway, "waypoint")));
    assert!(v.accepted(&key(Kind::K8sGateway, "someone-elses")));
    assert!(!v.accepted(&key(Kind::K8sGateway, "broken-waypoint")));
}

#[test]
fn delegates_are_checked() {
    let yaml = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: root, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /api}}]
    delegate: {name: api}
  - match: [{uri: {prefix: /later}}]
    delegate: {name: not-yet}
  - route: [{destination: {host: reviews}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: bookinfo}
spec:
  http: [{route: [{destination: {host: reviews}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bad-root, namespace: bookinfo}
spec:
  hosts: [ratings]
  http:
  - delegate: {name: root}
    route: [{destination: {host: ratings}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: nested, namespace: bookinfo}
spec:
  http: [{delegate: {name: api}}]
"#;
    let (_, v) = validated(yaml);
    assert!(v.accepted(&key(Kind::VirtualService, "root")));
    assert!(
        findings(&v, &key(Kind::VirtualService, "root"))
            .iter()
            .any(|f| f.1 == "DelegateNotFound" && f.2.contains("bookinfo/not-yet")),
    );
    assert_eq!(findings(&v, &key(Kind::VirtualService, "api")), []);
    let bad = findings(&v, &key(Kind::VirtualService, "bad-root"));
    assert!(
        bad.iter()
            .any(|f| f.1 == "InvalidRoute" && f.2.contains("exclude")),
        "{bad:?}"
    );
    assert!(
        bad.iter()
            .any(|f| f.1 == "InvalidDelegate" && f.2.contains("has hosts")),
        "{bad:?}"
    );
    let nested = findings(&v, &key(Kind::VirtualService, "nested"));
    assert!(
        nested
            .iter()
            .any(|f| f.1 == "InvalidDelegate" && f.2.contains("one level")),
        "{nested:?}"
    );
}
