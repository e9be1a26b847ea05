//! Ambit's images run by a real container runtime (podman with runc), with the privileges the
//! manifests give them. A pod template's security context, host namespaces, volumes and mounts
//! become podman flags one for one ([`podman_flags`]); a field the translation does not know
//! is an error, never dropped, so a test cannot pass with privileges the manifest lacks. Only
//! what a cluster itself provides is substituted: the sources of projected tokens and
//! ConfigMaps, field references, and hostPaths that sit elsewhere on this machine (its cgroup
//! v2 hierarchy is at /sys/fs/cgroup/unified, a real node's at /sys/fs/cgroup).
//!
//! The images are those `cargo xtask images --test` builds from the test binaries (`cargo xtask
//! test` builds them before the tests run), tagged [`image`].

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment},
    core::v1::{Container as ContainerSpec, PodSpec},
};

/// Container names start with this and the test process's id: a later run removes what a
/// killed one left.
const NAME_PREFIX: &str = "ambit-t";

/// The test image of a component (`mesh-node`, `mesh-controller`, `mesh-waypoint`).
pub fn image(component: &str) -> String {
    format!("localhost/ambit-test/{component}:dev")
}

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

/// A directory holding copies of `files` (`name`, source): what a projected token or a
/// ConfigMap volume would show the container.
pub fn stand_in(dir: &Path, files: &[(&str, &Path)]) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    for (name, source) in files {
        std::fs::copy(source, dir.join(name))
            .with_context(|| format!("copying {}", source.display()))?;
    }
    Ok(dir.to_owned())
}

/// The pod template and the one container of a DaemonSet or Deployment in a deploy/ file.
pub fn manifest_pod(file: &Path, kind: &str) -> Result<(PodSpec, ContainerSpec)> {
    let text = std::fs::read_to_string(file)?;
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value: serde_yaml::Value = serde::Deserialize::deserialize(document)?;
        if value.get("kind").and_then(|k| k.as_str()) != Some(kind) {
            continue;
        }
        let template = match kind {
            "DaemonSet" => serde_yaml::from_value::<DaemonSet>(value)?
                .spec
                .map(|s| s.template),
            "Deployment" => serde_yaml::from_value::<Deployment>(value)?
                .spec
                .map(|s| s.template),
            _ => bail!("{kind} has no pod template"),
        };
        return one_container(template.and_then(|t| t.spec));
    }
    bail!("no {kind} in {}", file.display())
}

/// The pod spec of the Deployment the controller generates for a Gateway of `class`.
pub fn gateway_deployment(class: &str) -> Deployment {
    use kube::Resource as _;
    let mut gateway = mesh_controller::resources::gateway_api::Gateway::new(
        "gateway",
        mesh_controller::resources::gateway_api::GatewaySpec {
            gateway_class_name: class.to_owned(),
            listeners: vec![mesh_controller::resources::gateway_api::Listener {
                name: "http".to_owned(),
                port: 80,
                protocol: "HTTP".to_owned(),
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    gateway.meta_mut().namespace = Some("default".to_owned());
    gateway.meta_mut().uid = Some("5d0c7c1e-0000-4000-8000-000000000001".to_owned());
    let settings = mesh_controller::waypoint::WaypointSettings {
        image: image("mesh-waypoint"),
        ca_addr: crate::controller::CA_ADDR.to_owned(),
        root_pem: String::new(),
    };
    let role = gateway
        .spec
        .role(None)
        .unwrap_or_else(|| panic!("{class} is not a class Ambit serves"));
    mesh_controller::waypoint::Proxy::of_gateway(&gateway, role).deployment(&settings)
}

pub fn deployment_pod(deployment: &Deployment) -> Result<(PodSpec, ContainerSpec)> {
    one_container(deployment.spec.clone().and_then(|s| s.template.spec))
}

fn one_container(spec: Option<PodSpec>) -> Result<(PodSpec, ContainerSpec)> {
    let spec = spec.context("a pod template without a spec")?;
    match spec.containers.as_slice() {
        [container] => Ok((spec.clone(), container.clone())),
        other => bail!("{} containers; the tests run pods of one", other.len()),
    }
}

/// A container running in the background. Removed when dropped.
pub struct Container {
    pub name: String,
    pub expected: Expected,
    pub log: PathBuf,
    /// Its main process, as this (host) PID namespace numbers it.
    pub pid: u32,
}

/// A component under test: a process the test bed started, or a container running its image.
pub enum Running {
    Process(std::process::Child),
    Container(Container),
}

impl Running {
    pub fn pid(&self) -> u32 {
        match self {
            Running::Process(child) => child.id(),
            Running::Container(container) => container.pid,
        }
    }

    /// `Some(how)` once it has ended.
    pub fn exited(&mut self) -> Result<Option<String>> {
        Ok(match self {
            Running::Process(child) => child.try_wait()?.map(|status| status.to_string()),
            Running::Container(container) => {
                (!container.running()).then(|| "the container exited".to_owned())
            }
        })
    }

    /// SIGTERM, as a rollout would send, then up to 10 s to end before SIGKILL.
    pub fn stop(&mut self) -> Result<()> {
        match self {
            Running::Process(child) => {
                // SAFETY: kill on a pid we own.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(10);
                while child.try_wait()?.is_none() {
                    if Instant::now() > deadline {
                        child.kill()?;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            Running::Container(container) => {
                podman()
                    .args(["stop", "--time=10", &container.name])
                    .output()?;
            }
        }
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Running::Process(child) = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Container {
    /// Starts `image` as `container` of `pod`, placed as `placement` says.
    pub fn start(
        image: &str,
        pod: &PodSpec,
        container: &ContainerSpec,
        substitutions: &Substitutions,
        placement: &Placement,
    ) -> Result<Self> {
        sweep_leftovers();
        require_image(image)?;
        let (flags, mut expected) = podman_flags(pod, container, substitutions)?;
        if expected.uid.is_none() {
            expected.uid = Some(image_user(image)?);
        }
        if expected.non_root && expected.uid == Some(0) {
            bail!("runAsNonRoot, but {image} runs as root: the kubelet would refuse to start it");
        }
        static SEQUENCE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "{NAME_PREFIX}{}-{}-{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            container.name
        );
        let mut command = podman();
        command
            .args(["run", "--detach", "--pull=never", "--name", &name])
            .arg(format!("--network=ns:{}", placement.netns.display()))
            .arg("--log-driver=k8s-file")
            .arg(format!("--log-opt=path={}", placement.log.display()))
            .args(&flags);
        for mount in &placement.extra_mounts {
            command.arg(format!("--volume={mount}"));
        }
        for (key, value) in &placement.env {
            command.arg(format!("--env={key}={value}"));
        }
        command.arg(image).args(&placement.args);
        let out = command.output().context("running podman")?;
        let mut started = Container {
            name,
            expected,
            log: placement.log.clone(),
            pid: 0,
        };
        if !out.status.success() {
            bail!(
                "podman run {image} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let out = podman()
            .args(["inspect", "--format", "{{.State.Pid}}", &started.name])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        started.pid = text
            .trim()
            .parse()
            .with_context(|| format!("podman inspect {}: {text:?}", started.name))?;
        Ok(started)
    }

    /// Whether the container still runs.
    pub fn running(&self) -> bool {
        podman()
            .args(["inspect", "--format", "{{.State.Running}}", &self.name])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "true")
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Checks the running process against what the manifest asked for.
    pub fn check_privileges(&self) -> Result<()> {
        let pid = self.pid;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .with_context(|| format!("no {name} in /proc/{pid}/status"))
        };
        let effective = capability_names(u64::from_str_radix(&field("CapEff:")?, 16)?);
        if effective != self.expected.capabilities {
            bail!(
                "{}: effective capabilities {effective:?}, the manifest gives {:?}",
                self.name,
                self.expected.capabilities
            );
        }
        let no_new_privs = field("NoNewPrivs:")? == "1";
        if no_new_privs != self.expected.no_new_privileges {
            bail!("{}: NoNewPrivs is {no_new_privs}", self.name);
        }
        let seccomp = field("Seccomp:")? == "2";
        if seccomp != self.expected.seccomp {
            bail!("{}: seccomp filter in force: {seccomp}", self.name);
        }
        let uid: u32 = field("Uid:")?
            .split_whitespace()
            .nth(1)
            .context("Uid line")?
            .parse()?;
        if Some(uid) != self.expected.uid {
            bail!(
                "{}: runs as uid {uid}, the manifest and image say {:?}",
                self.name,
                self.expected.uid
            );
        }
        let same_pid_ns = std::fs::read_link(format!("/proc/{pid}/ns/pid"))?
            == std::fs::read_link("/proc/self/ns/pid")?;
        if same_pid_ns != self.expected.host_pid {
            bail!("{}: in the host's PID namespace: {same_pid_ns}", self.name);
        }
        let same_cgroup_ns = std::fs::read_link(format!("/proc/{pid}/ns/cgroup"))?
            == std::fs::read_link("/proc/self/ns/cgroup")?;
        if same_cgroup_ns {
            bail!("{}: shares the host's cgroup namespace", self.name);
        }
        Ok(())
    }

    /// Waits until `ready` holds, failing early if the container exits.
    pub fn wait_until(&self, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready() {
                return Ok(());
            }
            if !self.running() {
                bail!("container {} exited; log:\n{}", self.name, self.logs());
            }
            if Instant::now() > deadline {
                bail!(
                    "container {} not ready after {timeout:?}; log:\n{}",
                    self.name,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- log of container {} ----\n{}", self.name, self.logs());
        }
        let _ = podman()
            .args(["rm", "--force", "--time=2", &self.name])
            .output();
    }
}

/// Capability bits (man 7 capabilities) as names without `CAP_`.
fn capability_names(mask: u64) -> BTreeSet<String> {
    const NAMES: [&str; 41] = [
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ];
    NAMES
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1 << bit) != 0)
        .map(|(_, name)| (*name).to_owned())
        .collect()
}

/// podman, rootful, with runc (crun refuses this machine's hybrid cgroup layout) and limits
/// this sandbox's root may set (it lacks CAP_SYS_RESOURCE): a containers.conf of our own.
pub fn podman() -> Command {
    let conf = std::env::temp_dir().join("ambit-containers.conf");
    if !conf.exists() {
        let _ = std::fs::write(
            &conf,
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=4096:4096\"]\n\
             [engine]\nruntime = \"runc\"\n",
        );
    }
    let mut command = Command::new("podman");
    command.env("CONTAINERS_CONF", conf);
    command
}

fn require_image(image: &str) -> Result<()> {
    let exists = podman()
        .args(["image", "exists", image])
        .status()
        .context("podman is missing: `cargo xtask setup` installs it")?;
    if !exists.success() {
        bail!(
            "image {image} is missing: `cargo xtask test` builds the test images first \
             (or run `cargo xtask images --test`)"
        );
    }
    Ok(())
}

/// The numeric user an image's `USER` names (root when it names none).
fn image_user(image: &str) -> Result<u32> {
    let out = podman()
        .args(["image", "inspect", "--format", "{{.Config.User}}", image])
        .output()?;
    let user = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match user.split(':').next().unwrap_or_default() {
        "" | "root" => Ok(0),
        uid => uid
            .parse()
            .with_context(|| format!("{image}'s USER {user:?} is not numeric")),
    }
}

/// Removes containers of earlier test runs whose process is gone.
fn sweep_leftovers() {
    let Ok(out) = podman()
        .args(["ps", "--all", "--format", "{{.Names}}"])
        .output()
    else {
        return;
    };
    for name in String::from_utf8_lossy(&out.stdout).lines() {
        let dead = name
            .strip_prefix(NAME_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !crate::sys::pid_alive(pid));
        if dead {
            let _ = podman().args(["rm", "--force", "--time=0", name]).output();
        }
    }
}
