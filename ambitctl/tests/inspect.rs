//! `ambitctl` against a running controller in local mode: tables, JSON, `check` explaining
//! which policy allows or denies a connection, and `version`.

use std::{
    path::Path,
    process::{Child, Command},
    time::{Duration, Instant},
};

const CONFIG: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {ambit.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec: {nodeName: n0, serviceAccountName: client, containers: [{name: c, image: c}]}
status: {podIP: 10.0.0.2, podIPs: [{ip: 10.0.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: shop, labels: {app: server}}
spec: {nodeName: n1, serviceAccountName: server, containers: [{name: c, image: c}]}
status: {podIP: 10.0.1.2, podIPs: [{ip: 10.0.1.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: old, namespace: legacy, labels: {app: old}}
spec: {nodeName: n0, containers: [{name: c, image: c}]}
status: {podIP: 10.0.0.3, podIPs: [{ip: 10.0.0.3}]}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: shop}
spec: {clusterIP: 10.96.0.9, selector: {app: server}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: server-metrics, namespace: shop}
spec:
  selector: {matchLabels: {app: server}}
  portLevelMtls: {9100: {mode: PERMISSIVE}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: server-tls, namespace: shop}
spec: {host: server, trafficPolicy: {tls: {mode: SIMPLE}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin-port, namespace: shop}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules: [{to: [{operation: {ports: ["9000"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: broken, namespace: shop}
spec:
  selector: {matchLabels: {app: client}}
  action: DENY
  rules: [{from: [{source: {ipBlocks: ["10.0.0.0/99"]}}]}]
"#;

struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The controller binary: `AMBIT_MESH_CONTROLLER` (as `cargo xtask test` sets it), else the
/// one built beside this test.
fn mesh_controller() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("AMBIT_MESH_CONTROLLER") {
        return path.into();
    }
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .skip(1)
        .take(3)
        .map(|dir| dir.join("mesh-controller"))
        .find(|candidate| candidate.is_file())
        .expect("mesh-controller is not built: run `cargo xtask test` (or `cargo build -p mesh-controller`)")
}

fn ambitctl(admin: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ambitctl"))
        .arg("--controller")
        .arg(admin)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn start(dir: &Path) -> (Controller, String) {
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::write(dir.join("config/shop.yaml"), CONFIG).unwrap();
    std::fs::write(dir.join("pods.yaml"), "").unwrap();
    std::fs::write(dir.join("tokens"), "n0: secret\n").unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let child = Command::new(mesh_controller())
        .args(["--ca-dir", &dir.join("ca").display().to_string()])
        .args(["--pods-file", &dir.join("pods.yaml").display().to_string()])
        .args(["--tokens-file", &dir.join("tokens").display().to_string()])
        .args(["--ca-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin-addr", &admin])
        .args(["--readiness-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--config-dir", &dir.join("config").display().to_string()])
        .env("AMBIT_LOG", "warn")
        .spawn()
        .unwrap();
    let controller = Controller(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, text) = ambitctl(&admin, &["-o", "json", "status"]);
        if ok && !text.contains("\"version\": 0") {
            break;
        }
        assert!(Instant::now() < deadline, "controller not serving: {text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    (controller, admin)
}

#[test]
fn ambitctl_lists_and_explains() {
    let dir = std::env::temp_dir().join(format!("ambitctl-test-{}", std::process::id()));
    let (_controller, admin) = start(&dir);

    let (ok, workloads) = ambitctl(&admin, &["workloads"]);
    assert!(ok, "{workloads}");
    assert!(workloads.starts_with("NAMESPACE"), "{workloads}");
    for expected in ["client", "server", "old", "10.0.1.2"] {
        assert!(
            workloads.contains(expected),
            "{expected} missing:\n{workloads}"
        );
    }
    let (ok, services) = ambitctl(&admin, &["-o", "json", "services"]);
    assert!(ok);
    let services: serde_json::Value = serde_json::from_str(&services).unwrap();
    assert_eq!(
        services[0]["spec"]["hostname"],
        "server.shop.svc.cluster.local"
    );

    let (_, policies) = ambitctl(&admin, &["policies"]);
    let broken = policies.lines().find(|l| l.contains("broken")).unwrap();
    assert!(
        broken.contains("Accepted=False") && broken.contains("InvalidIpBlock"),
        "{policies}"
    );
    let (_, status) = ambitctl(&admin, &["status"]);
    assert!(
        status.contains("AuthorizationPolicy shop/broken"),
        "{status}"
    );
    // Accepted, but with fields that fail closed: listed too.
    assert!(
        status.lines().any(
            |l| l.contains("DestinationRule shop/server-tls") && l.contains("FailsClosed=True")
        ),
        "{status}"
    );

    let (_, allowed) = ambitctl(&admin, &["check", "shop/client", "shop/server:8080"]);
    let verdict = allowed
        .lines()
        .find(|l| l.starts_with("verdict"))
        .unwrap_or_default();
    assert!(verdict.contains("ALLOW: no DENY matched"), "{allowed}");
    let (_, denied) = ambitctl(&admin, &["check", "shop/client", "shop/server:9000"]);
    assert!(
        denied.contains("DENY by AuthorizationPolicy shop/no-admin-port: matched a DENY rule"),
        "{denied}"
    );
    // The invalid DENY policy is reported, and enforced failing closed on what it selects.
    let (_, closed) = ambitctl(&admin, &["check", "shop/server", "shop/client:8080"]);
    assert!(
        closed.contains(
            "DENY by AuthorizationPolicy shop/broken: a refused DENY policy applies to everything"
        ),
        "{closed}"
    );
    let (_, plaintext) = ambitctl(&admin, &["check", "legacy/old", "shop/server:8080"]);
    assert!(plaintext.contains("requires mutual TLS"), "{plaintext}");
    // Except on the port its PeerAuthentication opens to plaintext.
    let (_, metrics) = ambitctl(&admin, &["check", "legacy/old", "shop/server:9100"]);
    assert!(metrics.contains("mTLS mode Permissive"), "{metrics}");
    assert!(!metrics.contains("requires mutual TLS"), "{metrics}");
    let (ok, missing) = ambitctl(&admin, &["check", "shop/nobody", "shop/server:8080"]);
    assert!(
        !ok && missing.contains("no workload shop/nobody"),
        "{missing}"
    );
    let (ok, version) = ambitctl(&admin, &["version"]);
    assert!(ok, "{version}");
    let expected = format!(
        "client version: ambitctl {v}\ncontrol plane version: mesh-controller {v}\n",
        v = env!("CARGO_PKG_VERSION")
    );
    assert!(version.starts_with(&expected), "{version}");
    let _ = std::fs::remove_dir_all(&dir);
}
