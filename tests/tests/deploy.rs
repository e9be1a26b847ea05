//! deploy/ validated offline: every manifest against the Kubernetes schemas
//! (kubernetes-validate --strict, from PyPI, installed by `cargo xtask setup`) and against the
//! API server's own pod-template rules a schema misses (`mesh_tests::api_rules`), every example
//! against the CRD schemas generated from our types, strictly (unknown fields fail). Broken
//! copies must fail, so the checks are known to bite.

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

/// The Gateway API CRDs as Ambit's types read them: users install the upstream ones, so they
/// are not in deploy/, but the examples and GatewayClasses are checked against them.
fn gateway_api_crds() -> PathBuf {
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("ambit-gateway-api-{}-{call}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for crd in mesh_api::gateway_api_crds() {
        let name = crd.metadata.name.clone().unwrap();
        std::fs::write(
            dir.join(format!("{name}.yaml")),
            serde_yaml::to_string(&crd).unwrap(),
        )
        .unwrap();
    }
    dir
}

/// Runs the validator; returns whether it passed and what it printed.
fn validate(manifests: &[PathBuf], custom: &[PathBuf]) -> (bool, String) {
    let gateway_api = gateway_api_crds();
    let mut command = Command::new(python());
    command
        .arg(workspace().join("tests/scripts/validate_deploy.py"))
        .arg("--crds")
        .arg(workspace().join("deploy/crds"))
        .arg("--crds")
        .arg(&gateway_api);
    for m in manifests {
        command.arg("--manifest").arg(m);
    }
    for c in custom {
        command.arg("--custom").arg(c);
    }
    let out = command.output().expect("running the validator");
    let _ = std::fs::remove_dir_all(&gateway_api);
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
    let not_kustomization = |p: &PathBuf| !p.ends_with("kustomization.yaml");
    let mut manifests: Vec<PathBuf> = yaml_files(&deploy)
        .into_iter()
        .filter(not_kustomization)
        .collect();
    manifests.extend(
        yaml_files(&deploy.join("crds"))
            .into_iter()
            .filter(not_kustomization),
    );
    let mut custom = yaml_files(&deploy.join("examples"));
    custom.push(deploy.join("gateway-api/gatewayclasses.yaml"));
    assert!(manifests.len() >= 10 && custom.len() >= 10);
    let (ok, text) = validate(&manifests, &custom);
    assert!(ok, "{text}");
    // Each layer's kustomization.yaml names files that exist, and together they name every
    // manifest.
    let mut named = Vec::new();
    for layer in ["", "crds", "gateway-api"] {
        let dir = deploy.join(layer);
        let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
        let parsed: serde_yaml::Value = serde_yaml::from_str(&kustomization).unwrap();
        for resource in parsed["resources"].as_sequence().unwrap() {
            let path = dir.join(resource.as_str().unwrap());
            assert!(path.exists(), "kustomization names {}", path.display());
            named.push(path);
        }
    }
    for manifest in manifests {
        assert!(
            named.contains(&manifest),
            "no kustomization names {}",
            manifest.display()
        );
    }
}

/// The CRDs are a layer of their own: `kubectl delete -k deploy/` must never delete users'
/// VirtualServices and policies with them.
#[test]
fn deleting_the_install_leaves_the_crds() {
    let deploy = workspace().join("deploy");
    let kustomization = std::fs::read_to_string(deploy.join("kustomization.yaml")).unwrap();
    let parsed: serde_yaml::Value = serde_yaml::from_str(&kustomization).unwrap();
    for resource in parsed["resources"].as_sequence().unwrap() {
        let text = std::fs::read_to_string(deploy.join(resource.as_str().unwrap())).unwrap();
        assert!(
            !text.contains("kind: CustomResourceDefinition"),
            "deploy/kustomization.yaml installs a CRD through {resource:?}"
        );
    }
    assert!(
        !deploy.join("crds/gateway-api").exists(),
        "the Gateway API CRDs are the upstream release users install, not Ambit's copies"
    );
}

/// The manifests' workloads, and those the controller generates for waypoints and ingresses,
/// pass the API server's rules that a schema check misses.
#[test]
fn workloads_pass_the_api_servers_pod_rules() {
    let deploy = workspace().join("deploy");
    let mut checked = 0;
    for file in yaml_files(&deploy) {
        let text = std::fs::read_to_string(&file).unwrap();
        for (what, violations) in mesh_tests::api_rules::check_manifest(&text).unwrap() {
            assert!(
                violations.is_empty(),
                "{}: {what}: {violations:#?}",
                file.display()
            );
            checked += 1;
        }
    }
    assert_eq!(
        checked, 2,
        "the node DaemonSet and the controller Deployment"
    );
    for class in ["ambit-waypoint", "ambit"] {
        let deployment = mesh_tests::containers::gateway_deployment(class);
        let violations = mesh_tests::api_rules::deployment(&deployment);
        assert!(violations.is_empty(), "{class}: {violations:#?}");
    }
}

#[test]
fn broken_workloads_fail_the_api_servers_pod_rules() {
    let node = std::fs::read_to_string(workspace().join("deploy/node.yaml")).unwrap();
    let broken = |from: &str, to: &str| {
        assert!(node.contains(from), "node.yaml no longer has {from:?}");
        let text = node.replace(from, to);
        let found = mesh_tests::api_rules::check_manifest(&text).unwrap();
        found.into_iter().flat_map(|(_, v)| v).collect::<Vec<_>>()
    };
    let cases = [
        (
            "mountPropagation: HostToContainer",
            "mountPropagation: Bidirectional",
            "spec.template.spec.containers[0].volumeMounts.mountPropagation: Forbidden: \
             Bidirectional mount propagation is available only to privileged containers",
        ),
        (
            "privileged: false",
            "privileged: true",
            "spec.template.spec.containers[0].securityContext: Invalid value: cannot set \
             `allowPrivilegeEscalation` to false and `privileged` to true",
        ),
        (
            "add: [BPF,",
            "add: [CAP_SYS_ADMIN, BPF,",
            "cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` CAP_SYS_ADMIN",
        ),
        (
            "type: DirectoryOrCreate",
            "type: DirectoryOrCreated",
            "spec.template.spec.volumes[0].hostPath.type: Unsupported value: \"DirectoryOrCreated\"",
        ),
        (
            "port: 15021}",
            "port: http-readiness}",
            "spec.template.spec.containers[0].readinessProbe.httpGet.port: Not found: \"http-readiness\"",
        ),
        (
            "port: 15021}",
            "port: 0}",
            "readinessProbe.httpGet.port: Invalid value: 0: must be between 1 and 65535",
        ),
        (
            "{name: cgroup, mountPath",
            "{name: cgroups, mountPath",
            "spec.template.spec.containers[0].volumeMounts[1].name: Not found: \"cgroups\"",
        ),
        (
            "expirationSeconds: 3600",
            "expirationSeconds: 300",
            "serviceAccountToken.expirationSeconds: Invalid value: 300: may not specify a \
             duration less than 10 minutes",
        ),
        (
            "- operator: Exists",
            "- {operator: Exists, value: x}",
            "tolerations[0].operator: Invalid value: \"x\": value must be empty when `operator` is 'Exists'",
        ),
    ];
    for (from, to, expected) in cases {
        let violations = broken(from, to);
        assert!(
            violations.iter().any(|v| v.contains(expected)),
            "{to:?}: expected {expected:?} in {violations:#?}"
        );
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

/// deploy/observability's PodMonitors select every Ambit pod (the node agents, the controller,
/// the waypoints and ingresses the controller runs) through a port the pod declares, on the
/// path its scrape annotation names; its kustomization ships every dashboard.
#[test]
fn pod_monitors_select_every_component() {
    let deploy = workspace().join("deploy");
    let text = std::fs::read_to_string(deploy.join("observability/podmonitors.yaml")).unwrap();
    let monitors: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .collect();
    let template = |file: &str, kind: &str| {
        let text = std::fs::read_to_string(deploy.join(file)).unwrap();
        mesh_tests::api_rules::workloads(&text)
            .unwrap()
            .into_iter()
            .find(|w| w.kind() == kind)
            .and_then(|w| w.pod_template().cloned())
            .unwrap()
    };
    let mut templates = vec![
        ("node agent", template("node.yaml", "DaemonSet")),
        ("controller", template("controller.yaml", "Deployment")),
    ];
    for class in ["ambit-waypoint", "ambit"] {
        let deployment = mesh_tests::containers::gateway_deployment(class);
        templates.push((class, deployment.spec.unwrap().template));
    }
    for (what, template) in templates {
        let meta = template.metadata.clone().unwrap_or_default();
        let labels = meta.labels.unwrap_or_default();
        let annotations = meta.annotations.unwrap_or_default();
        let selecting: Vec<_> = monitors
            .iter()
            .filter(|m| {
                m["spec"]["selector"]["matchLabels"]
                    .as_mapping()
                    .unwrap()
                    .iter()
                    .all(|(k, v)| labels.get(k.as_str().unwrap()).map(String::as_str) == v.as_str())
            })
            .collect();
        assert_eq!(selecting.len(), 1, "{what}: one PodMonitor selects it");
        let endpoint = &selecting[0]["spec"]["podMetricsEndpoints"][0];
        let ports: Vec<String> = template
            .spec
            .unwrap()
            .containers
            .iter()
            .flat_map(|c| c.ports.clone().unwrap_or_default())
            .filter_map(|p| p.name)
            .collect();
        let port = endpoint["port"].as_str().unwrap();
        assert!(
            ports.iter().any(|p| p == port),
            "{what}: no port {port} in {ports:?}"
        );
        assert_eq!(
            endpoint["path"].as_str(),
            annotations.get("prometheus.io/path").map(String::as_str),
            "{what}: the PodMonitor and the scrape annotation name one path"
        );
    }
    let kustomization =
        std::fs::read_to_string(deploy.join("observability/kustomization.yaml")).unwrap();
    let dashboards = yaml_files(&deploy.join("observability/grafana"));
    assert!(dashboards.is_empty(), "dashboards are JSON");
    let mut uids = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(deploy.join("observability/grafana")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            kustomization.contains(&format!("grafana/{name}")),
            "the kustomization ships {name}"
        );
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(
            uids.insert(dashboard["uid"].as_str().unwrap().to_owned()),
            "{name}: uid unique"
        );
    }
    assert_eq!(uids.len(), 6);
}
