//! deploy/ validated offline: every manifest against the Kubernetes schemas
//! (kubernetes-validate --strict, from PyPI, installed by `cargo xtask setup`), every example
//! against the CRD schemas generated from our types, strictly (unknown fields fail). Broken
//! copies must fail, so the check is known to bite.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python() -> PathBuf {
    let venv = std::env::var_os("AMBIT_PYTHON_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/tools/venv"));
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: the deploy/ test needs kubernetes-validate from PyPI; run `cargo xtask setup` (or `cargo xtask test`)",
        python.display()
    );
    python
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Runs the validator; returns whether it passed and what it printed.
fn validate(manifests: &[PathBuf], custom: &[PathBuf]) -> (bool, String) {
    let mut command = Command::new(python());
    command
        .arg(workspace().join("tests/scripts/validate_deploy.py"))
        .arg("--crds")
        .arg(workspace().join("deploy/crds"));
    for m in manifests {
        command.arg("--manifest").arg(m);
    }
    for c in custom {
        command.arg("--custom").arg(c);
    }
    let out = command.output().expect("running the validator");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_manifest_and_example_validates() {
    let deploy = workspace().join("deploy");
    let mut manifests: Vec<PathBuf> = yaml_files(&deploy)
        .into_iter()
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    manifests.extend(yaml_files(&deploy.join("crds")));
    manifests.extend(yaml_files(&deploy.join("crds/gateway-api")));
    let examples = yaml_files(&deploy.join("examples"));
    assert!(manifests.len() >= 11 && examples.len() >= 9);
    let (ok, text) = validate(&manifests, &examples);
    assert!(ok, "{text}");
    // kustomization.yaml names files that exist.
    let kustomization = std::fs::read_to_string(deploy.join("kustomization.yaml")).unwrap();
    let parsed: serde_yaml::Value = serde_yaml::from_str(&kustomization).unwrap();
    for resource in parsed["resources"].as_sequence().unwrap() {
        let path = deploy.join(resource.as_str().unwrap());
        assert!(path.exists(), "kustomization names {}", path.display());
    }
}

#[test]
fn broken_manifests_and_examples_fail_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("ambit-deploy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let node = std::fs::read_to_string(workspace().join("deploy/node.yaml")).unwrap();
    let broken_node = dir.join("node.yaml");
    std::fs::write(
        &broken_node,
        node.replace("readinessProbe:", "readinesProbe:"),
    )
    .unwrap();
    let canary =
        std::fs::read_to_string(workspace().join("deploy/examples/canary-90-10.yaml")).unwrap();
    let broken_canary = dir.join("canary.yaml");
    std::fs::write(
        &broken_canary,
        canary
            .replace("weight: 90", "weight: ninety")
            .replace("  http:", "  htpp: []\n  http:"),
    )
    .unwrap();
    let (ok, text) = validate(&[broken_node], &[broken_canary]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!ok, "broken files passed:\n{text}");
    for expected in [
        "'readinesProbe' was unexpected",
        "'htpp' was unexpected",
        "weight: 'ninety' is not of type 'integer'",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}
