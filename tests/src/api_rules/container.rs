//! A container's part of the API server's rules: ports, volume mounts and their propagation,
//! the security context, probes, environment and resources.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Container, Probe, SecurityContext};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    Violations,
    names::{is_env_name, is_local_path, port_name, quantity},
};

pub(super) fn container(
    container: &Container,
    at: &str,
    volumes: &BTreeSet<String>,
    out: &mut Violations,
) {
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
            if name != "ALL" && !crate::sys::CAPABILITIES.contains(&name) {
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
pub(super) fn profile_type(type_: &str, has_localhost: bool, at: &str, out: &mut Violations) {
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

pub(super) fn id_in_range(value: Option<i64>, at: &str, out: &mut Violations) {
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
