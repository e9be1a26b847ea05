//! A pod template's privileges as podman flags, one for one: host namespaces, the security
//! context, volumes and mounts, environment and limits. A field the translation does not know
//! is an error, never dropped.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{Container as ContainerSpec, PodSpec};

/// Capabilities a Kubernetes container gets from containerd when its manifest drops none
/// (the runtime's default set; podman's differs, so it is always spelled out).
const RUNTIME_DEFAULT_CAPABILITIES: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// What a cluster would provide that this machine provides differently.
#[derive(Clone, Debug, Default)]
pub struct Substitutions {
    /// Volume name -> a host directory standing in for its source (a projected token's
    /// directory, a ConfigMap's files). Required for every volume that is not a hostPath or
    /// emptyDir.
    pub volumes: BTreeMap<String, PathBuf>,
    /// A hostPath as a real node has it -> where this machine has it.
    pub host_paths: BTreeMap<String, PathBuf>,
    /// A field reference (`spec.nodeName`) -> its value.
    pub fields: BTreeMap<String, String>,
}

/// How the test places the container, beside what the manifest says.
#[derive(Clone, Debug)]
pub struct Placement {
    /// The network namespace it joins (a test-bed node's or pod's).
    pub netns: PathBuf,
    /// Arguments in place of the manifest's (addresses and paths of the test bed).
    pub args: Vec<String>,
    /// Extra environment (`AMBIT_LOG`), after the manifest's.
    pub env: Vec<(String, String)>,
    /// Extra mounts, `host:container[:options]`, for inputs a cluster would give otherwise
    /// (local mode's files for a controller without an API server).
    pub extra_mounts: Vec<String>,
    /// Where the container's output goes.
    pub log: PathBuf,
}

/// The manifest's expectations the test checks on the running process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// Effective capabilities, names without `CAP_`.
    pub capabilities: BTreeSet<String>,
    pub no_new_privileges: bool,
    /// A seccomp filter is in force (RuntimeDefault).
    pub seccomp: bool,
    pub host_pid: bool,
    /// The user it runs as: the manifest's `runAsUser`, else the image's `USER`.
    pub uid: Option<u32>,
    /// `runAsNonRoot`: the kubelet refuses to start it as root.
    pub non_root: bool,
}

/// The podman flags that give `container` of `pod` exactly what the manifest asks for, and what
/// the running process must then show.
pub fn podman_flags(
    pod: &PodSpec,
    container: &ContainerSpec,
    substitutions: &Substitutions,
) -> Result<(Vec<String>, Expected)> {
    let mut flags = Vec::new();
    for (set, what) in [
        (pod.host_network == Some(true), "hostNetwork"),
        (pod.host_ipc == Some(true), "hostIPC"),
        (
            pod.share_process_namespace == Some(true),
            "shareProcessNamespace",
        ),
        (pod.host_users == Some(false), "hostUsers"),
        (pod.init_containers.is_some(), "initContainers"),
    ] {
        if set {
            bail!("the translation does not know {what}");
        }
    }
    let host_pid = pod.host_pid == Some(true);
    if host_pid {
        flags.push("--pid=host".to_owned());
    }
    // Kubernetes gives every container a private cgroup namespace on cgroup v2.
    flags.push("--cgroupns=private".to_owned());
    let pod_sc = pod.security_context.clone().unwrap_or_default();
    for (set, what) in [
        (pod_sc.se_linux_options.is_some(), "pod seLinuxOptions"),
        (pod_sc.supplemental_groups.is_some(), "supplementalGroups"),
        (pod_sc.windows_options.is_some(), "windowsOptions"),
    ] {
        if set {
            bail!("the translation does not know {what}");
        }
    }
    for sysctl in pod_sc.sysctls.iter().flatten() {
        flags.push(format!("--sysctl={}={}", sysctl.name, sysctl.value));
    }
    let sc = container.security_context.clone().unwrap_or_default();
    for (set, what) in [
        (sc.se_linux_options.is_some(), "seLinuxOptions"),
        (sc.proc_mount.is_some(), "procMount"),
        (sc.windows_options.is_some(), "windowsOptions"),
    ] {
        if set {
            bail!("the translation does not know {what}");
        }
    }
    let privileged = sc.privileged == Some(true);
    let mut capabilities: BTreeSet<String> = BTreeSet::new();
    if privileged {
        flags.push("--privileged".to_owned());
    } else {
        let caps = sc.capabilities.clone().unwrap_or_default();
        let dropped = caps.drop.unwrap_or_default();
        if !dropped.iter().any(|d| d == "ALL") {
            capabilities.extend(
                RUNTIME_DEFAULT_CAPABILITIES
                    .iter()
                    .filter(|c| !dropped.iter().any(|d| d == *c))
                    .map(|c| (*c).to_owned()),
            );
        }
        capabilities.extend(caps.add.unwrap_or_default());
        flags.push("--cap-drop=all".to_owned());
        for cap in &capabilities {
            flags.push(format!("--cap-add={cap}"));
        }
    }
    let no_new_privileges = sc.allow_privilege_escalation == Some(false);
    if no_new_privileges {
        flags.push("--security-opt=no-new-privileges".to_owned());
    }
    if sc.read_only_root_filesystem == Some(true) {
        // Kubernetes adds no tmpfs on a read-only root; podman does unless told not to.
        flags.push("--read-only".to_owned());
        flags.push("--read-only-tmpfs=false".to_owned());
    }
    // The kubelet's default is Unconfined unless the manifest (or --seccomp-default) says
    // RuntimeDefault; podman's default profile stands in for containerd's.
    let seccomp = sc
        .seccomp_profile
        .as_ref()
        .or(pod_sc.seccomp_profile.as_ref())
        .map(|p| p.type_.as_str());
    let seccomp = match seccomp {
        Some("RuntimeDefault") => true,
        None | Some("Unconfined") => {
            flags.push("--security-opt=seccomp=unconfined".to_owned());
            false
        }
        Some(other) => bail!("the translation does not know seccomp profile {other}"),
    };
    match sc.app_armor_profile.as_ref().map(|p| p.type_.as_str()) {
        None | Some("RuntimeDefault") => {}
        Some("Unconfined") => flags.push("--security-opt=apparmor=unconfined".to_owned()),
        Some(other) => bail!("the translation does not know AppArmor profile {other}"),
    }
    let uid = sc.run_as_user.or(pod_sc.run_as_user);
    let gid = sc.run_as_group.or(pod_sc.run_as_group);
    match (uid, gid) {
        (Some(uid), Some(gid)) => flags.push(format!("--user={uid}:{gid}")),
        (Some(uid), None) => flags.push(format!("--user={uid}")),
        (None, Some(_)) => bail!("runAsGroup without runAsUser"),
        (None, None) => {}
    }
    let non_root = sc.run_as_non_root.or(pod_sc.run_as_non_root) == Some(true);
    if let Some(fs_group) = pod_sc.fs_group {
        flags.push(format!("--group-add={fs_group}"));
    }
    mounts(pod, container, substitutions, &mut flags)?;
    for env in container.env.iter().flatten() {
        let value = match (&env.value, &env.value_from) {
            (Some(value), None) => value.clone(),
            (None, Some(from)) => {
                let path = from
                    .field_ref
                    .as_ref()
                    .map(|f| f.field_path.clone())
                    .context("only fieldRef env sources are translated")?;
                substitutions
                    .fields
                    .get(&path)
                    .cloned()
                    .with_context(|| format!("no value given for fieldRef {path}"))?
            }
            _ => String::new(),
        };
        flags.push(format!("--env={}={value}", env.name));
    }
    if let Some(memory) = container
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
    {
        flags.push(format!("--memory={}", memory.0.trim_end_matches('i')));
    }
    if container.command.is_some() {
        bail!("the translation does not know command (the images' entrypoint is the binary)");
    }
    let expected = Expected {
        capabilities,
        no_new_privileges,
        seccomp,
        host_pid,
        uid: uid.map(|u| u as u32),
        non_root,
    };
    Ok((flags, expected))
}

fn mounts(
    pod: &PodSpec,
    container: &ContainerSpec,
    substitutions: &Substitutions,
    flags: &mut Vec<String>,
) -> Result<()> {
    let volumes = pod.volumes.clone().unwrap_or_default();
    for mount in container.volume_mounts.iter().flatten() {
        let volume = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .with_context(|| format!("volumeMount {} names no volume", mount.name))?;
        if mount.sub_path.is_some() || mount.sub_path_expr.is_some() {
            bail!("the translation does not know subPath");
        }
        let mut options = Vec::new();
        if mount.read_only == Some(true) {
            options.push("ro");
        }
        options.push(match mount.mount_propagation.as_deref() {
            None | Some("None") => "rprivate",
            Some("HostToContainer") => "rslave",
            Some("Bidirectional") => "rshared",
            Some(other) => bail!("mount propagation {other}"),
        });
        let source = if let Some(host) = &volume.host_path {
            let path = substitutions
                .host_paths
                .get(&host.path)
                .cloned()
                .unwrap_or_else(|| PathBuf::from(&host.path));
            match host.type_.as_deref().unwrap_or_default() {
                "DirectoryOrCreate" => std::fs::create_dir_all(&path)?,
                "Directory" if !path.is_dir() => {
                    bail!(
                        "hostPath {} (type Directory) does not exist",
                        path.display()
                    )
                }
                "Directory" | "" => {}
                other => bail!("the translation does not know hostPath type {other}"),
            }
            path
        } else if volume.empty_dir.is_some() {
            flags.push(format!("--tmpfs={}", mount.mount_path));
            continue;
        } else {
            substitutions
                .volumes
                .get(&volume.name)
                .cloned()
                .with_context(|| {
                    format!("volume {} needs a stand-in for its source", volume.name)
                })?
        };
        flags.push(format!(
            "--volume={}:{}:{}",
            source.display(),
            mount.mount_path,
            options.join(",")
        ));
    }
    Ok(())
}
