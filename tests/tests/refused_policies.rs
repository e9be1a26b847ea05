//! AuthorizationPolicies the controller refuses, through real agents and a real waypoint: each
//! is enforced failing closed. These three were once read more leniently at the waypoint than
//! by the controller and let everything through. Needs root; run with `cargo xtask test`.

use anyhow::Result;
use mesh_tests::l7::{self, REVIEWS};

fn policy(name: &str, action: &str, rule: &str) -> String {
    format!(
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: default}}
spec:
  targetRefs: [{{kind: Service, group: "", name: reviews}}]
  action: {action}
  rules: [{rule}]
"#
    )
}

#[test]
fn refused_policies_fail_closed_at_the_waypoint() -> Result<()> {
    let l7 = l7::setup()?;
    let mut client = l7.client(REVIEWS, "reviews")?;
    assert_eq!(
        client.get("/admin", &[])?.status,
        200,
        "open before any policy"
    );
    let cases = [
        (
            "malformed notRemoteIpBlocks in an ALLOW",
            policy(
                "office-only",
                "ALLOW",
                r#"{from: [{source: {notRemoteIpBlocks: ["10.0.0.0/33"]}}]}"#,
            ),
            "/items",
        ),
        (
            "a when without values in an ALLOW",
            policy(
                "admins",
                "ALLOW",
                r#"{when: [{key: "request.headers[x-admin]"}]}"#,
            ),
            "/items",
        ),
        (
            "a relative path in a DENY",
            policy(
                "no-admin",
                "DENY",
                r#"{to: [{operation: {paths: ["admin"]}}]}"#,
            ),
            "/admin",
        ),
    ];
    for (what, yaml, path) in cases {
        l7.write("authz", &yaml)?;
        let response = client.get(path, &[("x-admin", "yes")])?;
        assert_eq!(response.status, 403, "{what}: {}", response.body);
        let dump: serde_json::Value =
            serde_json::from_str(&l7.waypoint.get(15000, "/config_dump")?.1)?;
        let reported = dump["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e.as_str().is_some_and(|e| e.contains("failing closed")));
        assert!(
            reported,
            "{what}: not reported by the waypoint: {}",
            dump["errors"]
        );
    }
    Ok(())
}
