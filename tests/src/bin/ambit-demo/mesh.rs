//! The demo's mesh: the test bed, the controller in local mode reading deploy/examples'
//! YAML from its directory, a node agent per node, Bookinfo's waypoint, and the apps; and
//! applying YAML the way `kubectl apply` would, waiting until every proxy acknowledged it.

use std::{
    cell::Cell,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use mesh_tests::{
    Agent, AgentOptions, Testbed, Topology,
    controller::Controller,
    exposition,
    http::{HttpClient, HttpResponse},
    sys::wait_until,
    waypoint::Waypoint,
};
use serde_json::Value;

use crate::{
    Args,
    apps::{self, Apps, LEGACY_POD, PORT, WAYPOINT_POD, WORKLOADS},
    forward,
};

const NAMESPACE: &str = "bookinfo";
const ADMIN_PORT: u16 = 15014;
/// The `pod-template-hash` a Deployment's ReplicaSet gives its pods (each Deployment here
/// has its own ReplicaSet, so one value serves them all).
const TEMPLATE_HASH: &str = "7d4f8b9c5";

/// The address the demo gives a Service (what the API server would assign).
pub fn vip(service: &str) -> Option<&'static str> {
    Some(match service {
        "productpage" => "10.96.1.10",
        "reviews" => "10.96.1.11",
        "ratings" => "10.96.1.12",
        "details" => "10.96.1.13",
        "httpbin" => "10.96.1.14",
        _ => return None,
    })
}

pub struct Demo {
    // Dropped in this order: traffic sources first, the test bed last.
    apps: Apps,
    waypoint: Waypoint,
    agents: [Agent; 2],
    _controller: Controller,
    pub tb: Testbed,
    pub page_addr: SocketAddr,
    step: Cell<u32>,
}

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples")
}

pub fn start(_args: &Args) -> Result<Demo> {
    let step = Cell::new(0);
    let section = |title: &str| {
        step.set(step.get() + 1);
        println!("\n[{}] {title}", step.get());
    };
    section("building 2 nodes x 5 pods from network namespaces");
    let tb = Testbed::new(Topology {
        nodes: 2,
        pods_per_node: 5,
        namespaces: vec![NAMESPACE.to_owned()],
    })?;
    for (pod, app, version, account) in WORKLOADS {
        tb.label_pod(pod, "app", Some(app))?;
        tb.label_pod(pod, "version", Some(version))?;
        tb.set_service_account(pod, account)?;
        // Named as Kubernetes names a Deployment's pods: the metrics name the Deployment.
        let deployment = if app == "sleep" {
            app.to_owned()
        } else {
            format!("{app}-{version}")
        };
        tb.label_pod(pod, "pod-template-hash", Some(TEMPLATE_HASH))?;
        tb.set_owner(pod, "ReplicaSet", &format!("{deployment}-{TEMPLATE_HASH}"))?;
        println!(
            "    {:<24} {pod} on {}  ip {}",
            format!("{NAMESPACE}/{deployment}"),
            tb.pod(pod).node,
            tb.pod(pod).ip
        );
    }
    // The waypoint's pod, as the controller's Deployment for the Gateway would run it.
    tb.label_pod(
        WAYPOINT_POD,
        mesh_core::labels::GATEWAY_NAME,
        Some("waypoint"),
    )?;
    tb.set_service_account(WAYPOINT_POD, "waypoint")?;
    tb.set_pod_mode(WAYPOINT_POD, Some("none"))?;
    tb.set_pod_mode(LEGACY_POD, Some("none"))?;
    tb.label_pod(LEGACY_POD, "app", Some("legacy"))?;
    println!(
        "    {:<24} {WAYPOINT_POD}; {LEGACY_POD} is a client outside the mesh",
        "bookinfo/waypoint"
    );

    section("kubectl apply: Bookinfo's Services, its waypoint, its routing (deploy/examples)");
    tb.write_policy(
        "bookinfo",
        &with_cluster_ips(&std::fs::read_to_string(examples().join("bookinfo.yaml"))?)?,
    )?;
    for file in ["waypoint.yaml", "bookinfo-routing.yaml"] {
        tb.write_policy(
            file.trim_end_matches(".yaml"),
            &std::fs::read_to_string(examples().join(file))?,
        )?;
    }
    println!(
        "    bookinfo.yaml (Services, given cluster IPs as the API server would), waypoint.yaml, bookinfo-routing.yaml"
    );
    println!(
        "    namespace bookinfo labelled istio.io/dataplane-mode=ambient, istio.io/use-waypoint=waypoint"
    );
    tb.label_namespace(NAMESPACE, "istio.io/dataplane-mode", Some("ambient"))?;
    tb.label_namespace(NAMESPACE, "istio.io/use-waypoint", Some("waypoint"))?;

    section("starting the controller (local mode), a node agent per node, the waypoint");
    let (controller, agents) = tb.start_mesh(AgentOptions {
        config_from_controller: true,
        ..AgentOptions::default()
    })?;
    for (pod, ..) in WORKLOADS {
        let agent = if pod.starts_with("n0") {
            &agents[0]
        } else {
            &agents[1]
        };
        agent.wait_enrolled(&tb.pod(pod).key(), true)?;
    }
    println!(
        "    8 pods captured with eBPF (no sidecar, no iptables, no restart); the legacy pod left out"
    );
    let waypoint = tb.start_waypoint(
        &controller,
        WAYPOINT_POD,
        "bookinfo/waypoint",
        "waypoint",
        &[],
    )?;
    waypoint.wait_service("reviews.bookinfo.svc.cluster.local")?;
    let apps = apps::start(&tb)?;
    println!("    waypoint bookinfo/waypoint ready; Bookinfo's apps answering on :{PORT}");
    let page_addr = forward::start(
        tb.fabric_netns_path(),
        ADMIN_PORT,
        SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT)),
    )?;
    Ok(Demo {
        apps,
        waypoint,
        agents,
        _controller: controller,
        tb,
        page_addr,
        step,
    })
}

/// bookinfo.yaml as the API server would hold it: its Services with cluster IPs. Its
/// Namespace is the test bed's (labelled in the pods file, where the nodes read it).
fn with_cluster_ips(text: &str) -> Result<String> {
    let mut out = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let mut value: serde_yaml::Value = serde::Deserialize::deserialize(document)?;
        match value["kind"].as_str() {
            Some("Namespace") => continue,
            Some("Service") => {
                let name = value["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if let Some(ip) = vip(&name) {
                    value["spec"]["clusterIP"] = ip.into();
                }
            }
            _ => {}
        }
        out.push(serde_yaml::to_string(&value)?);
    }
    Ok(out.join("---\n"))
}

impl Demo {
    pub fn section(&self, title: &str) {
        self.step.set(self.step.get() + 1);
        println!("\n[{}] {title}", self.step.get());
    }

    pub fn say(&self, line: &str) {
        println!("    {line}");
    }

    /// A moment to read the step (none when checking).
    pub fn pause(&self, args: &Args) {
        if !args.check {
            std::thread::sleep(Duration::from_millis(1500));
        }
    }

    fn status(&self) -> Result<Value> {
        let (_, body) =
            mesh_tests::sys::loopback_get(&self.tb.fabric_netns_path(), ADMIN_PORT, "/status")?;
        Ok(serde_json::from_str(&body)?)
    }

    /// Writes `yaml` as file `name` of the config directory and waits until the controller
    /// published it and both agents and the waypoint acknowledged it; says whether the
    /// controller accepted each resource.
    fn apply(&self, name: &str, yaml: &str) -> Result<()> {
        let before = self.status()?["version"].as_u64().unwrap_or(0);
        self.tb.write_policy(name, yaml)?;
        let mut last = Value::Null;
        wait_until(
            "every proxy to have the change",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                last = self.status()?;
                let version = last["version"].as_u64().unwrap_or(0);
                let subscribers = last["subscribers"].as_array().cloned().unwrap_or_default();
                Ok(version > before
                    && subscribers.len() == 3
                    && subscribers
                        .iter()
                        .all(|s| s["acked"].as_u64() >= Some(version)))
            },
        )
        .with_context(|| format!("{last:#}"))?;
        let mut verdicts = Vec::new();
        for document in serde_yaml::Deserializer::from_str(yaml) {
            let value: serde_yaml::Value = serde::Deserialize::deserialize(document)?;
            let (kind, name) = (
                value["kind"].as_str().unwrap_or("?"),
                value["metadata"]["name"].as_str().unwrap_or("?"),
            );
            let accepted = last["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["kind"] == kind && r["name"] == name)
                .and_then(|r| {
                    r["conditions"]
                        .as_array()?
                        .iter()
                        .find(|c| c["type"] == "Accepted")
                        .map(|c| c["status"] == "True")
                });
            verdicts.push(format!(
                "{kind} {name} {}",
                match accepted {
                    Some(true) => "accepted",
                    Some(false) => "REFUSED",
                    None => "in force",
                }
            ));
        }
        self.say(&format!(
            "applied: {}; every proxy has it",
            verdicts.join(", ")
        ));
        Ok(())
    }

    pub fn apply_example(&self, file: &str) -> Result<()> {
        let yaml = std::fs::read_to_string(examples().join(file))?;
        self.apply(file.trim_end_matches(".yaml"), &yaml)
    }

    /// The canary replaces bookinfo-routing.yaml's VirtualService for reviews, as its
    /// comment says: that file keeps only its DestinationRule.
    pub fn apply_canary(&self) -> Result<()> {
        let routing = std::fs::read_to_string(examples().join("bookinfo-routing.yaml"))?;
        let rules = routing
            .split("\n---\n")
            .filter(|d| d.contains("kind: DestinationRule"))
            .collect::<Vec<_>>()
            .join("\n---\n");
        self.tb.write_policy("bookinfo-routing", &rules)?;
        self.apply_example("canary-90-10.yaml")
    }

    fn client(&self, service: &str) -> Result<HttpClient> {
        let addr: SocketAddr =
            format!("{}:{PORT}", vip(service).context("no such service")?).parse()?;
        HttpClient::connect(self.tb.pod("n0-p0"), addr, service)
    }

    pub fn request(
        &self,
        service: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<HttpResponse> {
        self.client(service)?.request(method, path, headers, b"")
    }

    pub fn get(&self, service: &str, path: &str, headers: &[(&str, &str)]) -> Result<HttpResponse> {
        self.request(service, "GET", path, headers)
    }

    /// How many of `n` requests each version answered (by the body's second word).
    pub fn tally(
        &self,
        service: &str,
        n: usize,
        headers: &[(&str, &str)],
    ) -> Result<(usize, usize)> {
        let mut client = self.client(service)?;
        let (mut v1, mut v2) = (0, 0);
        for i in 0..n {
            let response = client.get(&format!("/{service}/{i}"), headers)?;
            match response.body.split_whitespace().nth(1) {
                Some("v1") => v1 += 1,
                Some("v2") => v2 += 1,
                _ => bail!("{service} answered {}: {}", response.status, response.body),
            }
        }
        Ok((v1, v2))
    }

    pub fn statuses(&self, service: &str, n: usize) -> Result<Vec<u16>> {
        (0..n)
            .map(|i| Ok(self.get(service, &format!("/{service}/{i}"), &[])?.status))
            .collect()
    }

    pub fn details_calls(&self) -> usize {
        self.apps.details_calls.load(Ordering::SeqCst)
    }

    /// The identity the waypoint verified for `workload`'s requests.
    pub fn waypoint_principal_of(&self, workload: &str) -> Result<String> {
        let samples = exposition::parse(&self.waypoint.metrics()?);
        exposition::select(
            &samples,
            "istio_requests_total",
            &[("source_workload", workload)],
        )
        .first()
        .and_then(|s| s.labels.get("source_principal").cloned())
        .with_context(|| format!("no request from {workload} in the waypoint's metrics"))
    }

    /// The waypoint's last denial, as it logged it.
    pub fn denial(&self) -> Result<String> {
        let log = self.waypoint.log();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("request denied"))
            .context("the waypoint logged no denial")?;
        // From the message on: the timestamp and level are the log's.
        Ok(line
            .find("request denied")
            .map_or(line, |at| &line[at..])
            .to_owned())
    }

    /// The mesh page's graph, through the forwarded admin port, after a moment of traffic.
    pub fn page_edges(&self) -> Result<Vec<String>> {
        let mut edges = Vec::new();
        wait_until(
            "the mesh page's graph",
            Duration::from_secs(30),
            Duration::from_millis(500),
            || {
                self.tally("reviews", 20, &[])?;
                self.request("ratings", "POST", "/ratings/0", &[])?;
                let (_, body) = mesh_tests::sys::http_get(self.page_addr, "/mesh/graph")?;
                let graph: Value = serde_json::from_str(&body)?;
                edges = graph["edges"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(describe)
                    .collect();
                Ok(edges.iter().any(|e| e.contains("-> reviews"))
                    && edges.iter().any(|e| e.contains("denied")))
            },
        )?;
        Ok(edges)
    }

    /// `bpftool map dump` of node n0's enrollment map: the pods the kernel captures.
    pub fn enrollment_map(&self) -> Result<Vec<String>> {
        let path = self.agents[0].bpf_dir.join("enrolled_pods");
        let mut lines = vec![format!("$ bpftool map dump pinned {}", path.display())];
        let out = mesh_tests::sys::run(
            "bpftool",
            &["map", "dump", "pinned", &path.display().to_string()],
        )?;
        lines.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned),
        );
        Ok(lines)
    }

    /// Keeps a little traffic flowing until Ctrl-C.
    pub fn keep_until_interrupted(&self) -> Result<()> {
        let interrupted = Arc::new(AtomicBool::new(false));
        let flag = interrupted.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                let _ = runtime.block_on(tokio::signal::ctrl_c());
            }
            flag.store(true, Ordering::SeqCst);
        });
        while !interrupted.load(Ordering::SeqCst) {
            let _ = self.tally("reviews", 10, &[]);
            let _ = self.get("productpage", "/", &[]);
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }
}

fn describe(edge: &Value) -> String {
    let end = |e: &Value| {
        if e.is_null() {
            "(no workload)".to_owned()
        } else {
            format!(
                "{} {}",
                e["app"].as_str().unwrap_or("?"),
                e["version"].as_str().unwrap_or("?")
            )
        }
    };
    let service = edge["service"]
        .as_str()
        .map(|s| s.split('.').take(2).collect::<Vec<_>>().join("."));
    let path = match service {
        Some(service) => format!(
            "{} -> {service} -> {}",
            end(&edge["source"]),
            end(&edge["destination"])
        ),
        None => format!("{} -> {}", end(&edge["source"]), end(&edge["destination"])),
    };
    let mut parts = vec![format!(
        "{:.1} req/s",
        edge["requests_per_second"].as_f64().unwrap_or(0.0)
    )];
    if let Some(p99) = edge["p99_ms"].as_f64() {
        parts.push(format!("p99 {p99:.1} ms"));
    }
    if edge["mutual_tls"] == true {
        parts.push("mTLS".to_owned());
    }
    let denied = edge["denied_per_second"].as_f64().unwrap_or(0.0);
    if denied > 0.0 {
        parts.push(format!("denied {denied:.1}/s"));
    }
    format!("{path}: {}", parts.join(", "))
}
