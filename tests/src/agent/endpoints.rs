//! Reading a running agent from inside its node: its log, metrics and admin endpoints, and
//! waiting on what they report.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::Agent;

impl Agent {
    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// HTTP GET on one of the agent's ports, from inside its node.
    pub fn get(&self, port: u16, path: &str) -> Result<(u16, String)> {
        crate::sys::loopback_get(&self.node_netns, port, path)
    }

    pub fn metrics(&self) -> Result<String> {
        Ok(self.get(15020, "/metrics")?.1)
    }

    /// Sum of a metric's samples whose label set contains every `label="value"` in `filters`.
    pub fn metric_sum(&self, name: &str, filters: &[&str]) -> Result<f64> {
        Ok(sum_samples(&self.metrics()?, name, filters))
    }

    pub fn connections(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.get(15000, "/connections")?.1)?)
    }

    pub fn config_dump(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.get(15000, "/config_dump")?.1)?)
    }

    /// Only these top-level fields of the configuration dump (`?mask=`): cheap to poll, as
    /// the workloads of a large cluster are not serialized.
    pub fn config_fields(&self, fields: &str) -> Result<serde_json::Value> {
        let path = format!("/config_dump?mask={fields}");
        Ok(serde_json::from_str(&self.get(15000, &path)?.1)?)
    }

    /// Waits until the agent has loaded `count` policy documents.
    pub fn wait_policies(&self, count: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.config_fields("policies")?["policies"].as_u64() == Some(count as u64) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "agent on {} did not load {count} policies; log: {}",
                    self.node,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until the agent reports the pod enrolled (`true`) or released (`false`).
    pub fn wait_enrolled(&self, pod_key: &str, enrolled: bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let dump = self.config_fields("enrolled")?;
            let present = dump["enrolled"]
                .as_array()
                .is_some_and(|pods| pods.iter().any(|p| p["pod"] == pod_key));
            if present == enrolled {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "agent on {} did not {} {pod_key}; log: {}",
                    self.node,
                    if enrolled { "enroll" } else { "release" },
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// Sums samples of `name` (exact metric name, e.g. `istio_tcp_connections_opened_total`).
pub fn sum_samples(text: &str, name: &str, filters: &[&str]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && filters.iter().all(|f| labels.contains(f)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}
