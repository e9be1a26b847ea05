//! The L7 test bed: two nodes with agents taking their configuration from the controller,
//! a waypoint for the `default` namespace, and scripted HTTP backends behind it. Shared by the
//! waypoint and ingress tests and the L7 benchmark.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::{
    Agent, AgentOptions, Testbed, Topology,
    controller::Controller,
    http::{HttpClient, HttpRequest, HttpResponse, Received, http_server, named_server},
    traffic::Server,
    waypoint::Waypoint,
};
use anyhow::{Result, ensure};

pub const PORT: u16 = 9080;
pub const REVIEWS: &str = "10.96.0.10";
pub const MIRROR: &str = "10.96.0.11";
pub const FLAKY: &str = "10.96.0.12";

pub const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec: {clusterIP: 10.96.0.10, selector: {app: reviews}, ports: [{port: 9080, targetPort: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: mirror, namespace: default}
spec: {clusterIP: 10.96.0.11, selector: {app: mirror}, ports: [{port: 9080, targetPort: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: flaky, namespace: default}
spec: {clusterIP: 10.96.0.12, selector: {app: flaky}, ports: [{port: 9080, targetPort: 9080}]}
"#;

pub const SUBSETS: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

/// n0-p0 the client, n0-p1 the waypoint `default/waypoint`, n0-p2 the mirror target,
/// n1-p0 reviews v1, n1-p1 reviews v2, n1-p2 a scripted flaky backend. The namespace is in
/// the mesh and uses the waypoint.
pub struct L7 {
    pub tb: Testbed,
    pub controller: Controller,
    pub agents: [Agent; 2],
    pub waypoint: Waypoint,
    _servers: Vec<Server>,
    /// What reviews v1, reviews v2, the mirror and the flaky backend were sent.
    pub received: Vec<Received>,
    pub flaky_calls: Arc<AtomicUsize>,
    /// While set, reviews v1 answers 500.
    pub v1_failing: Arc<AtomicBool>,
}

fn flaky_handler(calls: Arc<AtomicUsize>) -> crate::http::Handler {
    Arc::new(move |request: &HttpRequest| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        match request.path.as_str() {
            // Fails twice, then answers.
            "/flaky" if n < 2 => HttpResponse::status(503, "not yet"),
            "/flaky" => HttpResponse::ok("flaky ok"),
            "/slow" => {
                std::thread::sleep(Duration::from_secs(2));
                HttpResponse::ok("slow")
            }
            "/pause" => {
                std::thread::sleep(Duration::from_millis(800));
                HttpResponse::ok("paused")
            }
            // Slow on the first call only.
            "/slow-once" if n == 0 => {
                std::thread::sleep(Duration::from_millis(1500));
                HttpResponse::ok("slow once")
            }
            _ => HttpResponse::ok(format!("flaky {}", request.path)),
        }
    })
}

/// Builds the L7 test bed. Needs root.
pub fn setup() -> Result<L7> {
    setup_with(&[])
}

/// As [`setup`], with more flags for the waypoint.
pub fn setup_with(waypoint_args: &[&str]) -> Result<L7> {
    setup_launching("ambit.io", |tb, controller| {
        tb.start_waypoint(
            controller,
            "n0-p1",
            "default/waypoint",
            "waypoint",
            waypoint_args,
        )
    })
}

/// As [`setup`], with the waypoint run from its image as the Deployment the controller
/// generates runs it.
pub fn setup_with_waypoint_image() -> Result<L7> {
    setup_launching("ambit.io", |tb, controller| {
        tb.start_waypoint_from_image(controller, "n0-p1", "default/waypoint", "waypoint")
    })
}

/// As [`setup`], with the namespace joined and bound to the waypoint by Istio's labels
/// (`istio.io/dataplane-mode`, `istio.io/use-waypoint`) instead of Ambit's.
pub fn setup_with_istio_labels() -> Result<L7> {
    setup_launching("istio.io", |tb, controller| {
        tb.start_waypoint(controller, "n0-p1", "default/waypoint", "waypoint", &[])
    })
}

/// `prefix` spells the labels that join the namespace and bind its waypoint.
fn setup_launching(
    prefix: &str,
    launch: impl FnOnce(&Testbed, &Controller) -> Result<Waypoint>,
) -> Result<L7> {
    let tb = Testbed::new(Topology {
        nodes: 2,
        pods_per_node: 3,
        namespaces: vec!["default".to_owned()],
    })?;
    tb.label_namespace(
        "default",
        &format!("{prefix}/dataplane-mode"),
        Some("ambient"),
    )?;
    tb.label_namespace(
        "default",
        &format!("{prefix}/use-waypoint"),
        Some("waypoint"),
    )?;
    tb.set_service_account("n0-p0", "client")?;
    tb.make_waypoint_pod("n0-p1", "waypoint", "waypoint")?;
    for (pod, app, version) in [
        ("n0-p2", "mirror", "v1"),
        ("n1-p0", "reviews", "v1"),
        ("n1-p1", "reviews", "v2"),
        ("n1-p2", "flaky", "v1"),
    ] {
        tb.label_pod(pod, "app", Some(app))?;
        tb.label_pod(pod, "version", Some(version))?;
    }
    tb.write_policy("services", SERVICES)?;
    tb.write_policy("rules", SUBSETS)?;
    let (controller, agents) = tb.start_mesh(AgentOptions {
        config_from_controller: true,
        ..AgentOptions::default()
    })?;
    let waypoint = launch(&tb, &controller)?;
    waypoint.wait_service("reviews.default.svc.cluster.local")?;
    let mut servers = Vec::new();
    let mut received = Vec::new();
    let v1_failing = Arc::new(AtomicBool::new(false));
    let failing = v1_failing.clone();
    let (server, got) = http_server(
        tb.pod("n1-p0").listen(PORT)?,
        Arc::new(move |request: &HttpRequest| {
            if failing.load(Ordering::SeqCst) {
                HttpResponse::status(500, format!("v1 failing {}", request.path))
            } else {
                HttpResponse::ok(format!("v1 {}", request.path))
            }
        }),
    )?;
    servers.push(server);
    received.push(got);
    for (pod, name) in [("n1-p1", "v2"), ("n0-p2", "mirror")] {
        let (server, got) = named_server(tb.pod(pod), PORT, name)?;
        servers.push(server);
        received.push(got);
    }
    let flaky_calls = Arc::new(AtomicUsize::new(0));
    let (server, got) = http_server(
        tb.pod("n1-p2").listen(PORT)?,
        flaky_handler(flaky_calls.clone()),
    )?;
    servers.push(server);
    received.push(got);
    Ok(L7 {
        tb,
        controller,
        agents,
        waypoint,
        _servers: servers,
        received,
        flaky_calls,
        v1_failing,
    })
}

impl L7 {
    /// Names the pods as Kubernetes would: the client is `productpage-v1` and the reviews pods
    /// `reviews-v1` and `reviews-v2` (Deployments' ReplicaSets own them), flaky a StatefulSet
    /// whose canonical name (`flaky-db`) differs from its `app`. flaky is reached directly,
    /// without the waypoint: pod to pod over HBONE.
    pub fn name_workloads(&self) -> Result<()> {
        let tb = &self.tb;
        tb.label_pod("n0-p0", "app", Some("productpage"))?;
        tb.label_pod("n0-p0", "version", Some("v1"))?;
        for (pod, hash, owner) in [
            ("n0-p0", "5c4d8b9f7", "productpage-v1"),
            ("n1-p0", "6b8d4c7f9", "reviews-v1"),
            ("n1-p1", "7f9c6d5b8", "reviews-v2"),
        ] {
            tb.label_pod(pod, "pod-template-hash", Some(hash))?;
            tb.set_owner(pod, "ReplicaSet", &format!("{owner}-{hash}"))?;
        }
        tb.set_owner("n1-p2", "StatefulSet", "flaky")?;
        tb.label_pod("n1-p2", "service.istio.io/canonical-name", Some("flaky-db"))?;
        tb.label_pod("n1-p2", "ambit.io/use-waypoint", Some("none"))
    }

    pub fn client(&self, vip: &str, authority: &str) -> Result<HttpClient> {
        HttpClient::connect(
            self.tb.pod("n0-p0"),
            format!("{vip}:{PORT}").parse()?,
            authority,
        )
    }

    /// Writes the VirtualService (replacing the last one) and waits until the waypoint has
    /// a configuration newer than before.
    pub fn route(&self, yaml: &str) -> Result<()> {
        self.write("routes", yaml)
    }

    /// Replaces the DestinationRules the same way.
    pub fn rules(&self, yaml: &str) -> Result<()> {
        self.write("rules", yaml)
    }

    pub fn write(&self, file: &str, yaml: &str) -> Result<()> {
        let before = self.version()?;
        self.tb.write_policy(file, yaml)?;
        self.waypoint
            .wait_config(|dump| dump["version"].as_u64().is_some_and(|v| v > before))
    }

    pub fn version(&self) -> Result<u64> {
        let dump: serde_json::Value =
            serde_json::from_str(&self.waypoint.get(15000, "/config_dump")?.1)?;
        Ok(dump["version"].as_u64().unwrap_or(0))
    }

    /// How many of `n` GETs of `path` each backend answered (by the body's first word).
    pub fn tally(&self, n: usize, path: &str, headers: &[(&str, &str)]) -> Result<(usize, usize)> {
        let mut client = self.client(REVIEWS, "reviews")?;
        let (mut v1, mut v2) = (0, 0);
        for _ in 0..n {
            let response = client.get(path, headers)?;
            ensure!(
                response.status == 200,
                "status {}: {}",
                response.status,
                response.body
            );
            match response.body.split_whitespace().next() {
                Some("v1") => v1 += 1,
                Some("v2") => v2 += 1,
                other => anyhow::bail!("unexpected backend {other:?}"),
            }
        }
        Ok((v1, v2))
    }
}

/// A VirtualService for `reviews` with these `http` routes (YAML, indented).
pub fn vs(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  hosts: [reviews]\n  http:\n{http}"
    )
}
