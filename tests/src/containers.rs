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

pub mod manifests;
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

/// `AMBIT_LOG` for a component under test: the caller's, else `info` with debug for its own
/// crate (`mesh_node`, `mesh_waypoint`).
pub fn log_filter(own_crate: &str) -> (String, String) {
    let filter = std::env::var("AMBIT_LOG").unwrap_or_else(|_| format!("info,{own_crate}=debug"));
    ("AMBIT_LOG".to_owned(), filter)
}

/// A manifest's arguments with the `--flag=value` of each of `values` replaced (the test
/// bed's addresses and names for a cluster's).
pub fn override_args(args: &[String], values: &[(&str, String)]) -> Vec<String> {
    args.iter()
        .map(|arg| {
            let flag = arg.split_once('=').map(|(flag, _)| flag);
            match values.iter().find(|(f, _)| Some(*f) == flag) {
                Some((flag, value)) => format!("{flag}={value}"),
                None => arg.clone(),
            }
        })
        .collect()
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
    Process(crate::sys::KillOnDrop),
    Container(Container),
}

impl Running {
    pub fn pid(&self) -> u32 {
        match self {
            Running::Process(child) => child.id(),
            Running::Container(container) => container.pid,
        }
    }

    /// The container, when it runs from its image.
    pub fn container(&self) -> Option<&Container> {
        match self {
            Running::Container(container) => Some(container),
            Running::Process(_) => None,
        }
    }

    /// `Some(how)` once it has ended.
    pub fn exited(&mut self) -> Result<Option<String>> {
        Ok(match self {
            Running::Process(child) => child.0.try_wait()?.map(|status| status.to_string()),
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
                while child.0.try_wait()?.is_none() {
                    if Instant::now() > deadline {
                        child.0.kill()?;
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

impl Container {
    /// Starts `image` as `container` of `pod`, placed as `placement` says.
    pub fn start(
        image: &str,
        pod: &PodSpec,
        container: &ContainerSpec,
        substitutions: &Substitutions,
        placement: &Placement,
    ) -> Result<Self> {
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(sweep_leftovers);
        let image_uid = image_user(image)?;
        let (flags, mut expected) = podman_flags(pod, container, substitutions)?;
        expected.uid = expected.uid.or(Some(image_uid));
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

    /// Whether the container still runs: its main process does (the test polls this; asking
    /// podman would start a process per poll).
    pub fn running(&self) -> bool {
        crate::sys::pid_alive(self.pid)
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
    crate::sys::CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1 << bit) != 0)
        .map(|(_, name)| (*name).to_owned())
        .collect()
}

/// podman, rootful, with runc (crun refuses this machine's hybrid cgroup layout) and limits
/// this sandbox's root may set (it lacks CAP_SYS_RESOURCE): a containers.conf of our own.
pub fn podman() -> Command {
    static CONF: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let conf = CONF.get_or_init(|| {
        let conf = std::env::temp_dir().join("ambit-containers.conf");
        // Written whole under another name, then renamed: a concurrent reader never sees
        // half a file.
        let partial = conf.with_extension(format!("{}.partial", std::process::id()));
        let _ = std::fs::write(
            &partial,
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=4096:4096\"]\n\
             [engine]\nruntime = \"runc\"\n",
        )
        .and_then(|()| std::fs::rename(&partial, &conf));
        conf
    });
    let mut command = Command::new("podman");
    command.env("CONTAINERS_CONF", conf);
    command
}

/// The numeric user an image's `USER` names (root when it names none); an error naming how to
/// build the image when it is missing.
fn image_user(image: &str) -> Result<u32> {
    let out = podman()
        .args(["image", "inspect", "--format", "{{.Config.User}}", image])
        .output()
        .context("podman is missing: `cargo xtask setup` installs it")?;
    if !out.status.success() {
        bail!(
            "image {image} is missing: `cargo xtask test` builds the test images first \
             (or run `cargo xtask images --test`)"
        );
    }
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
