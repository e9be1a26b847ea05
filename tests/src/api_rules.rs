//! The Kubernetes API server's own rules for pod templates, the ones a schema check cannot see
//! (`pkg/apis/core/validation` and `pkg/apis/apps/validation` in Kubernetes), re-stated so
//! that deploy/ and the Deployments the controller generates are checked offline. Errors read
//! as the API server words them: `<field path>: <type>: <detail>`.
//!
//! A few house rules the API server leaves to the kubelet or the container runtime are checked
//! too and say so: a probe's named port must be one of the container's ports (else the probe
//! fails at run time), and capability names must be known to the runtime without the `CAP_`
//! prefix (containerd prefixes every name itself).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment},
    core::v1::{Container, PodSpec, PodTemplateSpec, Probe, SecurityContext, Volume},
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Every rule broken by one workload, as the API server would list them.
pub type Violations = Vec<String>;

pub fn daemon_set(ds: &DaemonSet) -> Violations {
    let mut out = Vec::new();
    let Some(spec) = &ds.spec else {
        out.push("spec: Required value".to_owned());
        return out;
    };
    selector_matches(
        &spec.selector.match_labels,
        spec.selector
            .match_expressions
            .as_deref()
            .unwrap_or_default()
            .is_empty(),
        &spec.template,
        "daemonset",
        &mut out,
    );
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
    selector_matches(
        &spec.selector.match_labels,
        spec.selector
            .match_expressions
            .as_deref()
            .unwrap_or_default()
            .is_empty(),
        &spec.template,
        "deployment",
        &mut out,
    );
    template(&spec.template, &mut out);
    out
}

fn selector_matches(
    match_labels: &Option<BTreeMap<String, String>>,
    no_expressions: bool,
    template: &PodTemplateSpec,
    what: &str,
    out: &mut Violations,
) {
    let selector = match_labels.clone().unwrap_or_default();
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
        self::container(container, &at, &volumes, out);
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

fn container(container: &Container, at: &str, volumes: &BTreeSet<String>, out: &mut Violations) {
    if container.image.as_deref().unwrap_or_default().is_empty() {
        out.push(format!("{at}.image: Required value"));
    }
    let mut port_names = BTreeSet::new();
    for (j, port) in container.ports.iter().flatten().enumerate() {
        if !(1..=65535).contains(&port.container_port) {
            out.push(format!(
                "{at}.ports[{j}].containerPort: Invalid value: {}: must be between 1 and 65535, \
                 inclusive",
                port.container_port
            ));
        }
        if let Some(name) = &port.name {
            if let Err(why) = port_name(name) {
                out.push(format!(
                    "{at}.ports[{j}].name: Invalid value: {name:?}: {why}"
                ));
            }
            if !port_names.insert(name.clone()) {
                out.push(format!("{at}.ports[{j}].name: Duplicate value: {name:?}"));
            }
        }
    }
    let mut mount_paths = BTreeSet::new();
    for (j, mount) in container.volume_mounts.iter().flatten().enumerate() {
        let idx = format!("{at}.volumeMounts[{j}]");
        if !volumes.contains(&mount.name) {
            out.push(format!("{idx}.name: Not found: {:?}", mount.name));
        }
        if mount.mount_path.is_empty() {
            out.push(format!("{idx}.mountPath: Required value"));
        } else if !mount_paths.insert(mount.mount_path.clone()) {
            out.push(format!(
                "{idx}.mountPath: Invalid value: {:?}: must be unique",
                mount.mount_path
            ));
        }
        if let Some(sub_path) = &mount.sub_path
            && !is_local_path(sub_path)
        {
            out.push(format!(
                "{at}.volumeMounts.subPath: Invalid value: {sub_path:?}: must be a relative path \
                 without '..'"
            ));
        }
        // The API server reports these on the list's path, without the index.
        if let Some(propagation) = &mount.mount_propagation {
            let field = format!("{at}.volumeMounts.mountPropagation");
            match propagation.as_str() {
                "HostToContainer" | "None" => {}
                "Bidirectional" if privileged(container.security_context.as_ref()) => {}
                "Bidirectional" => out.push(format!(
                    "{field}: Forbidden: Bidirectional mount propagation is available only to \
                     privileged containers"
                )),
                other => out.push(format!(
                    "{field}: Unsupported value: {other:?}: supported values: \
                     \"Bidirectional\", \"HostToContainer\", \"None\""
                )),
            }
        }
    }
    if let Some(sc) = &container.security_context {
        security_context(sc, &format!("{at}.securityContext"), out);
    }
    for (probe, name, liveness) in [
        (&container.readiness_probe, "readinessProbe", false),
        (&container.liveness_probe, "livenessProbe", true),
        (&container.startup_probe, "startupProbe", true),
    ] {
        if let Some(probe) = probe {
            self::probe(probe, &format!("{at}.{name}"), liveness, &port_names, out);
        }
    }
    for (j, env) in container.env.iter().flatten().enumerate() {
        let idx = format!("{at}.env[{j}]");
        if !is_env_name(&env.name) {
            out.push(format!(
                "{idx}.name: Invalid value: {:?}: a valid environment variable name must \
                 consist of alphabetic characters, digits, '_', '-', or '.', and must not start \
                 with a digit",
                env.name
            ));
        }
        if let Some(from) = &env.value_from {
            if env.value.as_deref().is_some_and(|v| !v.is_empty()) {
                out.push(format!(
                    "{idx}.valueFrom: Invalid value: \"\": may not be specified when `value` is \
                     not empty"
                ));
            }
            let sources = [
                from.field_ref.is_some(),
                from.resource_field_ref.is_some(),
                from.config_map_key_ref.is_some(),
                from.secret_key_ref.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() != 1 {
                out.push(format!(
                    "{idx}.valueFrom: Invalid value: must specify exactly one of: `fieldRef`, \
                     `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`"
                ));
            }
            if let Some(field) = &from.field_ref {
                const PATHS: [&str; 9] = [
                    "metadata.name",
                    "metadata.namespace",
                    "metadata.uid",
                    "spec.nodeName",
                    "spec.serviceAccountName",
                    "status.hostIP",
                    "status.hostIPs",
                    "status.podIP",
                    "status.podIPs",
                ];
                let path = field.field_path.as_str();
                let subscript = path.starts_with("metadata.labels['")
                    || path.starts_with("metadata.annotations['");
                if !PATHS.contains(&path) && !subscript {
                    out.push(format!(
                        "{idx}.valueFrom.fieldRef.fieldPath: Unsupported value: {path:?}"
                    ));
                }
            }
        }
    }
    if let Some(resources) = &container.resources {
        let limits = resources.limits.clone().unwrap_or_default();
        for (name, request) in resources.requests.iter().flatten() {
            if let (Some(limit), Some(req), Some(lim)) = (
                limits.get(name),
                quantity(&request.0),
                limits.get(name).and_then(|l| quantity(&l.0)),
            ) && req > lim
            {
                out.push(format!(
                    "{at}.resources.requests: Invalid value: {:?}: must be less than or equal \
                     to {name} limit of {}",
                    request.0, limit.0
                ));
            }
        }
    }
}

fn privileged(sc: Option<&SecurityContext>) -> bool {
    sc.and_then(|sc| sc.privileged) == Some(true)
}

/// Capabilities a container runtime knows (man 7 capabilities), without the `CAP_` prefix.
const CAPABILITIES: [&str; 41] = [
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYSLOG",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "WAKE_ALARM",
];

fn security_context(sc: &SecurityContext, at: &str, out: &mut Violations) {
    id_in_range(sc.run_as_user, &format!("{at}.runAsUser"), out);
    id_in_range(sc.run_as_group, &format!("{at}.runAsGroup"), out);
    let added: Vec<&str> = sc
        .capabilities
        .as_ref()
        .and_then(|c| c.add.as_ref())
        .map(|add| add.iter().map(String::as_str).collect())
        .unwrap_or_default();
    if sc.allow_privilege_escalation == Some(false) {
        if sc.privileged == Some(true) {
            out.push(format!(
                "{at}: Invalid value: cannot set `allowPrivilegeEscalation` to false and \
                 `privileged` to true"
            ));
        }
        if added.contains(&"CAP_SYS_ADMIN") {
            out.push(format!(
                "{at}: Invalid value: cannot set `allowPrivilegeEscalation` to false and \
                 `capabilities.Add` CAP_SYS_ADMIN"
            ));
        }
    }
    let dropped = sc
        .capabilities
        .as_ref()
        .and_then(|c| c.drop.clone())
        .unwrap_or_default();
    for (field, names) in [
        ("add", added.clone()),
        ("drop", dropped.iter().map(String::as_str).collect()),
    ] {
        for name in names {
            if name != "ALL" && !CAPABILITIES.contains(&name) {
                out.push(format!(
                    "{at}.capabilities.{field}: Invalid value: {name:?}: not a capability the \
                     container runtime knows (it adds the CAP_ prefix itself) (runtime rule)"
                ));
            }
        }
    }
    if let Some(profile) = &sc.seccomp_profile {
        profile_type(
            &profile.type_,
            profile.localhost_profile.is_some(),
            &format!("{at}.seccompProfile"),
            out,
        );
    }
    if let Some(profile) = &sc.app_armor_profile {
        profile_type(
            &profile.type_,
            profile.localhost_profile.is_some(),
            &format!("{at}.appArmorProfile"),
            out,
        );
    }
    if let Some(mount) = &sc.proc_mount
        && !["Default", "Unmasked"].contains(&mount.as_str())
    {
        out.push(format!(
            "{at}.procMount: Unsupported value: {mount:?}: supported values: \"Default\", \
             \"Unmasked\""
        ));
    }
}

/// seccomp and AppArmor profiles share their rules.
fn profile_type(type_: &str, has_localhost: bool, at: &str, out: &mut Violations) {
    match type_ {
        "RuntimeDefault" | "Unconfined" if has_localhost => out.push(format!(
            "{at}.localhostProfile: Invalid value: can only be set when the type is Localhost"
        )),
        "RuntimeDefault" | "Unconfined" => {}
        "Localhost" if !has_localhost => out.push(format!(
            "{at}.localhostProfile: Required value: must be set when the type is Localhost"
        )),
        "Localhost" => {}
        other => out.push(format!(
            "{at}.type: Unsupported value: {other:?}: supported values: \"Localhost\", \
             \"RuntimeDefault\", \"Unconfined\""
        )),
    }
}

fn id_in_range(value: Option<i64>, at: &str, out: &mut Violations) {
    if let Some(n) = value
        && !(0..=2_147_483_647).contains(&n)
    {
        out.push(format!(
            "{at}: Invalid value: {n}: must be between 0 and 2147483647, inclusive"
        ));
    }
}

fn probe(probe: &Probe, at: &str, liveness: bool, ports: &BTreeSet<String>, out: &mut Violations) {
    let handlers = [
        probe.exec.is_some(),
        probe.http_get.is_some(),
        probe.tcp_socket.is_some(),
        probe.grpc.is_some(),
    ];
    match handlers.iter().filter(|h| **h).count() {
        0 => out.push(format!("{at}: Required value: must specify a handler type")),
        1 => {}
        _ => out.push(format!(
            "{at}: Forbidden: may not specify more than 1 handler type"
        )),
    }
    if liveness && probe.success_threshold.unwrap_or(1) != 1 {
        out.push(format!(
            "{at}.successThreshold: Invalid value: {}: must be 1",
            probe.success_threshold.unwrap_or(1)
        ));
    }
    for (field, value) in [
        ("initialDelaySeconds", probe.initial_delay_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
        ("periodSeconds", probe.period_seconds),
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ] {
        if value.is_some_and(|v| v < 0) {
            out.push(format!(
                "{at}.{field}: Invalid value: {}: must be greater than or equal to 0",
                value.unwrap_or_default()
            ));
        }
    }
    let port = probe
        .http_get
        .as_ref()
        .map(|h| ("httpGet", &h.port))
        .or(probe.tcp_socket.as_ref().map(|t| ("tcpSocket", &t.port)));
    match port {
        Some((handler, IntOrString::Int(n))) if !(1..=65535).contains(n) => out.push(format!(
            "{at}.{handler}.port: Invalid value: {n}: must be between 1 and 65535, inclusive"
        )),
        Some((handler, IntOrString::String(name))) => {
            if let Err(why) = port_name(name) {
                out.push(format!(
                    "{at}.{handler}.port: Invalid value: {name:?}: {why}"
                ));
            } else if !ports.contains(name) {
                out.push(format!(
                    "{at}.{handler}.port: Not found: {name:?}: no container port has this name \
                     (kubelet rule: the probe would fail)"
                ));
            }
        }
        _ => {}
    }
    if let Some(grpc) = &probe.grpc
        && !(1..=65535).contains(&grpc.port)
    {
        out.push(format!(
            "{at}.grpc.port: Invalid value: {}: must be between 1 and 65535, inclusive",
            grpc.port
        ));
    }
}

/// IANA_SVC_NAME: what a named port must be.
fn port_name(name: &str) -> Result<(), &'static str> {
    if name.len() > 15 {
        return Err("must be no more than 15 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    }
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err("must contain at least one letter (a-z)");
    }
    if name.contains("--") {
        return Err("must not contain consecutive hyphens");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("must not begin or end with a hyphen");
    }
    Ok(())
}

fn is_dns1123_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let valid = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || matches!(b, b'-' | b'.' | b'_'))
        && name.bytes().all(valid)
        && name != "."
        && name != ".."
        && !name.starts_with("..")
}

/// A relative path with no `..` element (subPath, projected and configMap item paths).
fn is_local_path(path: &str) -> bool {
    !path.starts_with('/') && !path.split('/').any(|part| part == "..")
}

/// A quantity's value for comparison (`100m`, `64Mi`, `1G`, `2`); `None` if unparsable.
fn quantity(text: &str) -> Option<f64> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        _ => return None,
    };
    Some(number * scale)
}

/// The workloads in multi-document YAML with what the API server would say of each: `Kind
/// name` and its violations (DaemonSets and Deployments; other kinds are not checked here).
pub fn check_manifest(yaml: &str) -> anyhow::Result<Vec<(String, Violations)>> {
    let mut found = Vec::new();
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let value: serde_yaml::Value = serde::Deserialize::deserialize(document)?;
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default();
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_owned();
        match kind {
            "DaemonSet" => {
                let ds: DaemonSet = serde_yaml::from_value(value)?;
                found.push((format!("DaemonSet {name}"), daemon_set(&ds)));
            }
            "Deployment" => {
                let d: Deployment = serde_yaml::from_value(value)?;
                found.push((format!("Deployment {name}"), deployment(&d)));
            }
            _ => {}
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

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
