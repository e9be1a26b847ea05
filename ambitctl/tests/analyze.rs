//! `ambitctl analyze`: deploy/examples are clean; broken copies report each problem with its
//! file, document and field, and exit as `istioctl analyze` does (79 for problems, 65 for a
//! file that is not YAML).

use std::{path::Path, process::Command};

fn analyze(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ambitctl"))
        .arg("analyze")
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn examples() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples")
        .display()
        .to_string()
}

#[test]
fn the_examples_are_clean() {
    let (code, text) = analyze(&[&examples()]);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("Error ["), "{text}");
    let (code, json) = analyze(&["-o", "json", &examples()]);
    assert_eq!(code, Some(0), "{json}");
    let _: serde_json::Value = serde_json::from_str(&json).unwrap();
}

#[test]
fn broken_copies_report_every_problem_with_file_document_and_field() {
    let dir = std::env::temp_dir().join(format!("ambitctl-analyze-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let canary = std::fs::read_to_string(Path::new(&examples()).join("canary-90-10.yaml")).unwrap();
    std::fs::write(
        dir.join("canary.yaml"),
        canary.replace("weight: 90", "weight: 95"),
    )
    .unwrap();
    std::fs::write(
        dir.join("typo.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: bookinfo}\n---\n\
         apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\n\
         metadata: {name: ratings, namespace: bookinfo}\n\
         spec:\n  host: ratings\n  trafficPolicy:\n    loadBalancer: {simpel: ROUND_ROBIN}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("policy.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {name: deny-bad, namespace: bookinfo}\n\
         spec:\n  action: DENY\n  rules: [{from: [{source: {ipBlocks: [\"10.0.0.300/8\"]}}]}]\n",
    )
    .unwrap();
    let (code, text) = analyze(&[&dir.display().to_string()]);
    assert_eq!(code, Some(79), "{text}");
    for expected in [
        "Error [InvalidWeights] (VirtualService bookinfo/reviews",
        "canary.yaml document 1) spec.http[0]",
        "Error [InvalidResource] (DestinationRule bookinfo/ratings",
        "typo.yaml document 2) spec.trafficPolicy.loadBalancer.simpel: unknown field `simpel`",
        "Error [InvalidIpBlock] (AuthorizationPolicy bookinfo/deny-bad",
        "policy.yaml document 1) spec.rules[0].from[0].source.ipBlocks",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // JSON lists the same problems, and fails the same way.
    let (code, json) = analyze(&["-o", "json", &dir.display().to_string()]);
    assert_eq!(code, Some(79));
    let problems: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert!(problems.iter().filter(|p| p["level"] == "Error").count() >= 3);

    std::fs::write(dir.join("zz-not-yaml.yaml"), "kind: [unclosed\n").unwrap();
    let (code, text) = analyze(&[&dir.display().to_string()]);
    assert_eq!(code, Some(65), "{text}");
    assert!(text.contains("Error [NotYaml]"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Istio kinds Ambit does not serve are named, as warnings: they fail nothing.
#[test]
fn kinds_ambit_does_not_serve_are_warned_about() {
    let dir = std::env::temp_dir().join(format!("ambitctl-not-served-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("sidecar.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: bookinfo}\nspec: {egress: [{hosts: [\"./*\"]}]}\n",
    )
    .unwrap();
    let (code, text) = analyze(&[&dir.display().to_string()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("Warning [NotServed] (Sidecar bookinfo/default"),
        "{text}"
    );
}
