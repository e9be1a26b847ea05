//! The Kubernetes API server's own rules for pod templates, the ones a schema check cannot see
//! (`pkg/apis/core/validation` and `pkg/apis/apps/validation` in Kubernetes), re-stated so
//! that deploy/ and the Deployments the controller generates are checked offline. Errors read
//! as the API server words them: `<field path>: <type>: <detail>`.
//!
//! A few house rules the API server leaves to the kubelet or the container runtime are checked
//! too and say so: a probe's named port must be one of the container's ports (else the probe
//! fails at run time), and capability names must be known to the runtime without the `CAP_`
//! prefix (containerd prefixes every name itself).

mod container;
mod names;

use std::collections::BTreeSet;

use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment},
    core::v1::{PodSpec, PodTemplateSpec, Volume},
};
use k8s_openapi::apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString};

use self::{
    container::{id_in_range, profile_type},
    names::{is_dns1123_label, is_local_path},
};

/// Every rule broken by one workload, as the API server would list them.
pub type Violations = Vec<String>;

pub fn daemon_set(ds: &DaemonSet) -> Violations {
    let mut out = Vec::new();
    let Some(spec) = &ds.spec else {
        out.push("spec: Required value".to_owned());
        return out;
    };
    selector_matches(&spec.selector, &spec.template, "daemonset", &mut out);
    if let Some(rolling) = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
    {
        let non_zero = |v: &Option<IntOrString>| match v {
            Some(IntOrString::Int(n)) => *n != 0,
            Some(IntOrString::String(s)) => s.trim_end_matches('%') != "0",
            None => false,
        };
        // Defaults: maxUnavailable 1, maxSurge 0.
        let unavailable = rolling
            .max_unavailable
            .clone()
            .or(Some(IntOrString::Int(1)));
        match (non_zero(&unavailable), non_zero(&rolling.max_surge)) {
            (true, true) => out.push(
                "spec.updateStrategy.rollingUpdate.maxSurge: Invalid value: may not be set when \
                 maxUnavailable is non-zero"
                    .to_owned(),
            ),
            (false, false) => out.push(
                "spec.updateStrategy.rollingUpdate.maxUnavailable: Required value: cannot be 0 \
                 when maxSurge is 0"
                    .to_owned(),
            ),
            _ => {}
        }
    }
    template(&spec.template, &mut out);
    out
}

pub fn deployment(deployment: &Deployment) -> Violations {
    let mut out = Vec::new();
    let Some(spec) = &deployment.spec else {
        out.push("spec: Required value".to_owned());
        return out;
    };
    selector_matches(&spec.selector, &spec.template, "deployment", &mut out);
    template(&spec.template, &mut out);
    out
}

fn selector_matches(
    selector: &LabelSelector,
    template: &PodTemplateSpec,
    what: &str,
    out: &mut Violations,
) {
    let no_expressions = selector
        .match_expressions
        .as_deref()
        .unwrap_or_default()
        .is_empty();
    let selector = selector.match_labels.clone().unwrap_or_default();
    if selector.is_empty() && no_expressions {
        out.push(format!(
            "spec.selector: Invalid value: empty selector is invalid for {what}"
        ));
    }
    let labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    if selector.iter().any(|(k, v)| labels.get(k) != Some(v)) {
        out.push(
            "spec.template.metadata.labels: Invalid value: `selector` does not match template \
             `labels`"
                .to_owned(),
        );
    }
}

/// The pod template of a DaemonSet or Deployment (`spec.template.spec`).
pub fn template(template: &PodTemplateSpec, out: &mut Violations) {
    let Some(spec) = &template.spec else {
        out.push("spec.template.spec: Required value".to_owned());
        return;
    };
    pod_spec(spec, "spec.template.spec", out);
}

pub fn pod_spec(spec: &PodSpec, path: &str, out: &mut Violations) {
    if let Some(policy) = &spec.restart_policy
        && policy != "Always"
    {
        out.push(format!(
            "{path}.restartPolicy: Unsupported value: {policy:?}: supported values: \"Always\""
        ));
    }
    let volumes = volumes(&spec.volumes.clone().unwrap_or_default(), path, out);
    for (i, toleration) in spec.tolerations.iter().flatten().enumerate() {
        let at = format!("{path}.tolerations[{i}]");
        let operator = toleration.operator.as_deref().unwrap_or("Equal");
        if toleration.key.as_deref().unwrap_or_default().is_empty() && operator != "Exists" {
            out.push(format!(
                "{at}.operator: Invalid value: {operator:?}: operator must be Exists when `key` \
                 is empty, which means \"match all values and all keys\""
            ));
        }
        if operator == "Exists" && !toleration.value.as_deref().unwrap_or_default().is_empty() {
            out.push(format!(
                "{at}.operator: Invalid value: {:?}: value must be empty when `operator` is \
                 'Exists'",
                toleration.value.as_deref().unwrap_or_default()
            ));
        }
    }
    if let Some(pod_sc) = &spec.security_context {
        for (field, value) in [
            ("runAsUser", pod_sc.run_as_user),
            ("runAsGroup", pod_sc.run_as_group),
            ("fsGroup", pod_sc.fs_group),
        ] {
            id_in_range(value, &format!("{path}.securityContext.{field}"), out);
        }
        if let Some(profile) = &pod_sc.seccomp_profile {
            profile_type(
                &profile.type_,
                profile.localhost_profile.is_some(),
                &format!("{path}.securityContext.seccompProfile"),
                out,
            );
        }
    }
    let mut names = BTreeSet::new();
    for (i, container) in spec.containers.iter().enumerate() {
        let at = format!("{path}.containers[{i}]");
        if !names.insert(container.name.clone()) {
            out.push(format!("{at}.name: Duplicate value: {:?}", container.name));
        }
        container::container(container, &at, &volumes, out);
    }
}

/// Checks the volumes; returns the names of the valid ones (what mounts may refer to).
fn volumes(volumes: &[Volume], path: &str, out: &mut Violations) -> BTreeSet<String> {
    let mut valid = BTreeSet::new();
    for (i, volume) in volumes.iter().enumerate() {
        let at = format!("{path}.volumes[{i}]");
        let before = out.len();
        if !is_dns1123_label(&volume.name) {
            out.push(format!(
                "{at}.name: Invalid value: {:?}: a lowercase RFC 1123 label must consist of \
                 lower case alphanumeric characters or '-'",
                volume.name
            ));
        }
        if valid.contains(&volume.name) {
            out.push(format!("{at}.name: Duplicate value: {:?}", volume.name));
        }
        let sources = [
            volume.host_path.is_some(),
            volume.empty_dir.is_some(),
            volume.config_map.is_some(),
            volume.secret.is_some(),
            volume.projected.is_some(),
            volume.downward_api.is_some(),
            volume.persistent_volume_claim.is_some(),
            volume.csi.is_some(),
            volume.ephemeral.is_some(),
        ];
        match sources.iter().filter(|s| **s).count() {
            0 => out.push(format!("{at}: Required value: must specify a volume type")),
            1 => {}
            _ => out.push(format!(
                "{at}: Forbidden: may not specify more than 1 volume type"
            )),
        }
        if let Some(host) = &volume.host_path {
            if host.path.is_empty() {
                out.push(format!("{at}.hostPath.path: Required value"));
            }
            if host.path.split('/').any(|part| part == "..") {
                out.push(format!(
                    "{at}.hostPath.path: Invalid value: {:?}: must not contain '..'",
                    host.path
                ));
            }
            const TYPES: [&str; 8] = [
                "",
                "BlockDevice",
                "CharDevice",
                "Directory",
                "DirectoryOrCreate",
                "File",
                "FileOrCreate",
                "Socket",
            ];
            let type_ = host.type_.as_deref().unwrap_or_default();
            if !TYPES.contains(&type_) {
                out.push(format!(
                    "{at}.hostPath.type: Unsupported value: {type_:?}: supported values: {}",
                    TYPES.map(|t| format!("{t:?}")).join(", ")
                ));
            }
        }
        if let Some(config_map) = &volume.config_map
            && config_map.name.is_empty()
        {
            out.push(format!("{at}.configMap.name: Required value"));
        }
        if let Some(projected) = &volume.projected {
            for (j, source) in projected.sources.iter().flatten().enumerate() {
                let Some(token) = &source.service_account_token else {
                    continue;
                };
                let seconds = token.expiration_seconds.unwrap_or(3600);
                let at = format!("{at}.projected.sources[{j}].serviceAccountToken");
                if seconds < 600 {
                    out.push(format!(
                        "{at}.expirationSeconds: Invalid value: {seconds}: may not specify a \
                         duration less than 10 minutes"
                    ));
                }
                if seconds > 1 << 32 {
                    out.push(format!(
                        "{at}.expirationSeconds: Invalid value: {seconds}: may not specify a \
                         duration larger than 2^32 seconds"
                    ));
                }
                if token.path.is_empty() {
                    out.push(format!(
                        "{path}.volumes[{i}].projected.path: Required value"
                    ));
                } else if !is_local_path(&token.path) {
                    out.push(format!(
                        "{at}.path: Invalid value: {:?}: must be a relative path without '..'",
                        token.path
                    ));
                }
            }
        }
        if out.len() == before {
            valid.insert(volume.name.clone());
        }
    }
    valid
}

/// A workload a manifest declares: what has a pod template.
pub enum Workload {
    DaemonSet(DaemonSet),
    Deployment(Deployment),
}

impl Workload {
    pub fn kind(&self) -> &'static str {
        match self {
            Workload::DaemonSet(_) => "DaemonSet",
            Workload::Deployment(_) => "Deployment",
        }
    }

    /// `Kind name`.
    pub fn describe(&self) -> String {
        let meta = match self {
            Workload::DaemonSet(ds) => &ds.metadata,
            Workload::Deployment(d) => &d.metadata,
        };
        format!(
            "{} {}",
            self.kind(),
            meta.name.as_deref().unwrap_or_default()
        )
    }

    pub fn pod_template(&self) -> Option<&PodTemplateSpec> {
        match self {
            Workload::DaemonSet(ds) => ds.spec.as_ref().map(|s| &s.template),
            Workload::Deployment(d) => d.spec.as_ref().map(|s| &s.template),
        }
    }

    /// Every rule the API server would find broken.
    pub fn violations(&self) -> Violations {
        match self {
            Workload::DaemonSet(ds) => daemon_set(ds),
            Workload::Deployment(d) => deployment(d),
        }
    }
}

/// The DaemonSets and Deployments in multi-document YAML (other kinds are skipped).
pub fn workloads(yaml: &str) -> anyhow::Result<Vec<Workload>> {
    let mut found = Vec::new();
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let value: serde_yaml::Value = serde::Deserialize::deserialize(document)?;
        match value.get("kind").and_then(|k| k.as_str()) {
            Some("DaemonSet") => found.push(Workload::DaemonSet(serde_yaml::from_value(value)?)),
            Some("Deployment") => found.push(Workload::Deployment(serde_yaml::from_value(value)?)),
            _ => {}
        }
    }
    Ok(found)
}

/// The workloads in multi-document YAML with what the API server would say of each: `Kind
/// name` and its violations (DaemonSets and Deployments; other kinds are not checked here).
pub fn check_manifest(yaml: &str) -> anyhow::Result<Vec<(String, Violations)>> {
    Ok(workloads(yaml)?
        .iter()
        .map(|w| (w.describe(), w.violations()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::names::{port_name, quantity};

    #[test]
    fn port_names_follow_iana_svc_name() {
        assert!(port_name("http-metrics").is_ok());
        assert!(port_name("grpc-ca").is_ok());
        assert!(port_name("a-very-long-port-name").is_err());
        assert!(port_name("Http").is_err());
        assert!(port_name("8080").is_err());
        assert!(port_name("a--b").is_err());
        assert!(port_name("-a").is_err());
    }

    #[test]
    fn quantities_compare_across_units() {
        assert!(quantity("200m").unwrap() < quantity("1").unwrap());
        assert!(quantity("64Mi").unwrap() > quantity("64M").unwrap());
        assert_eq!(quantity("1Gi"), Some(1024.0 * 1024.0 * 1024.0));
        assert_eq!(quantity("12x"), None);
    }
}
