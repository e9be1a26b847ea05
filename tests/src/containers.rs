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
//!
//! # Layout
//! - here: running a container, and checking its process against the manifest;
//! - `translate`: a pod template as podman flags;
//! - `manifests`: the pod templates (deploy/'s, and the controller's generated Deployments).

mod manifests;
mod translate;

use std::{
    collections::BTreeSet,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{Container as ContainerSpec, PodSpec};

pub use self::{
    manifests::{deployment_pod, gateway_deployment, manifest_pod, mesh_volumes},
    translate::{Expected, Placement, Substitutions, podman_flags},
};

/// Container names start with this and the test process's id: a later run removes what a
/// killed one left.
const NAME_PREFIX: &str = "ambit-t";

/// The test image of a component (`mesh-node`, `mesh-controller`, `mesh-waypoint`).
pub fn image(component: &str) -> String {
    format!("localhost/ambit-test/{component}:dev")
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
