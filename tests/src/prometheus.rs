//! Debian's Prometheus scraping the test bed with the scrape job deploy/ ships
//! (`deploy/observability/prometheus-scrape.yaml`), in the fabric namespace from which every
//! node, pod and the controller are reachable.
//!
//! The test bed has no API server, so pod discovery is stood in for by a file of targets
//! carrying the `__meta_kubernetes_*` labels Prometheus' pod discovery would give each pod:
//! its address, namespace, name, and the labels and annotations of the pod templates deploy/
//! ships and the controller generates. The shipped job's relabelling, which decides what is
//! scraped, where and with which labels, runs unchanged.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::{Value, json};

use crate::{Testbed, sys::wait_until};

/// Where Prometheus serves its API, on the fabric namespace's loopback.
const PORT: u16 = 19090;

/// A pod as Prometheus' pod discovery sees it.
pub struct DiscoveredPod {
    pub namespace: String,
    pub name: String,
    pub ip: IpAddr,
    /// The labels and annotations of its pod template.
    pub template: PodTemplateSpec,
}

pub struct Prometheus {
    process: Child,
    netns: PathBuf,
    pub dir: PathBuf,
}

/// The scrape job deploy/ ships, as YAML.
pub fn shipped_job() -> Result<serde_yaml::Value> {
    let path = deploy_file("observability/prometheus-scrape.yaml");
    let text = std::fs::read_to_string(&path)?;
    let config: serde_yaml::Value = serde_yaml::from_str(&text)?;
    config["scrape_configs"]
        .as_sequence()
        .and_then(|jobs| jobs.first())
        .cloned()
        .with_context(|| format!("no scrape job in {}", path.display()))
}

/// Kubernetes' pod discovery's name for a label or annotation key: what is not a letter,
/// a digit or `_` becomes `_`.
fn meta_name(key: &str) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn target(pod: &DiscoveredPod) -> Value {
    let meta = pod.template.metadata.clone().unwrap_or_default();
    let mut labels: BTreeMap<String, String> = [
        ("__meta_kubernetes_namespace", pod.namespace.clone()),
        ("__meta_kubernetes_pod_name", pod.name.clone()),
        ("__meta_kubernetes_pod_ip", pod.ip.to_string()),
    ]
    .map(|(k, v)| (k.to_owned(), v))
    .into();
    for (key, value) in meta.labels.unwrap_or_default() {
        labels.insert(
            format!("__meta_kubernetes_pod_label_{}", meta_name(&key)),
            value,
        );
    }
    for (key, value) in meta.annotations.unwrap_or_default() {
        labels.insert(
            format!("__meta_kubernetes_pod_annotation_{}", meta_name(&key)),
            value,
        );
    }
    // Pod discovery's address is a declared port; the job replaces it.
    json!({"targets": [SocketAddr::new(pod.ip, 1).to_string()], "labels": labels})
}

impl Prometheus {
    /// Starts Prometheus in the fabric namespace, scraping `pods` every second with the
    /// shipped job, and waits until every one is up.
    pub fn start(tb: &Testbed, pods: &[DiscoveredPod]) -> Result<Self> {
        let binary = which("prometheus")?;
        let dir = tb.work_dir.join("prometheus");
        std::fs::create_dir_all(&dir)?;
        let targets = dir.join("targets.json");
        let list: Vec<Value> = pods.iter().map(target).collect();
        std::fs::write(&targets, serde_json::to_string_pretty(&list)?)?;
        let mut job = shipped_job()?;
        let map = job
            .as_mapping_mut()
            .context("the scrape job is not a map")?;
        ensure!(
            map.remove("kubernetes_sd_configs").is_some(),
            "the shipped job no longer discovers pods"
        );
        map.insert(
            "file_sd_configs".into(),
            serde_yaml::to_value(json!([{"files": [targets], "refresh_interval": "1s"}]))?,
        );
        let config = json!({
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "scrape_configs": [serde_json::to_value(&job)?],
        });
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, serde_yaml::to_string(&config)?)?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let netns = tb.fabric_netns_path();
        let mut command = Command::new(binary);
        command
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{PORT}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let process = crate::sys::in_netns(&netns, || command.spawn())??;
        let prometheus = Prometheus {
            process,
            netns,
            dir,
        };
        let expected = pods.len();
        let mut last = Value::Null;
        wait_until(
            "Prometheus scraping every target",
            Duration::from_secs(60),
            Duration::from_millis(250),
            || {
                let Ok(answer) = prometheus.api("/api/v1/targets?state=active") else {
                    return Ok(false);
                };
                last = answer["data"]["activeTargets"].clone();
                let up = last
                    .as_array()
                    .map_or(0, |t| t.iter().filter(|t| t["health"] == "up").count());
                Ok(up == expected)
            },
        )
        .with_context(|| format!("targets: {last:#}\n{}", prometheus.log()))?;
        Ok(prometheus)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// The targets Prometheus scrapes, as its API lists them.
    pub fn targets(&self) -> Result<Vec<Value>> {
        Ok(
            self.api("/api/v1/targets?state=active")?["data"]["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        )
    }

    /// Runs an instant query; its result vector.
    pub fn query(&self, promql: &str) -> Result<Vec<Value>> {
        let answer = self.api(&format!("/api/v1/query?query={}", encode(promql)))?;
        ensure!(answer["status"] == "success", "{promql}: {answer}");
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// A GET on Prometheus' API, as JSON.
    fn api(&self, path: &str) -> Result<Value> {
        let (status, body) = crate::sys::loopback_get(&self.netns, PORT, path)?;
        ensure!(status == 200, "{path}: {status}\n{body}");
        Ok(serde_json::from_str(&body)?)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A program on `PATH`.
pub fn which(name: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .with_context(|| format!("{name} is not installed: `cargo xtask setup` installs it"))
}

/// A file of deploy/.
pub fn deploy_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(relative)
}
