//! Running `mesh-node` inside a test bed node, and reading its endpoints from there.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

mod endpoints;

pub use endpoints::sum_samples;

use crate::{
    containers::{self, Container, Running},
    sys,
    testbed::Testbed,
};

#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    /// `--accelerate`: sockmap on the app <-> agent hop.
    pub accelerate: bool,
    /// Root of a running controller's CA: the agent gets certificates and speaks HBONE.
    pub ca_root: Option<PathBuf>,
    /// Workload certificate lifetime to ask for, in seconds (renewed at half of it).
    pub cert_lifetime: Option<u64>,
    /// `--worker-threads`; the agent's default when `None`.
    pub worker_threads: Option<usize>,
    /// `--config-source controller`: pods and policies from the controller's configuration
    /// stream, with no pods file: the agent finds pods' network namespaces in `/proc` by the
    /// `pod<uid>` cgroups, as in Kubernetes (the test bed starts a pause process per pod).
    pub config_from_controller: bool,
    /// `--drain-timeout-secs`: how long a stopped agent carries its connections on. The test
    /// bed's default is 2 s, so that stopping an agent that holds a test's connection is quick.
    pub drain_timeout_secs: Option<u64>,
}

/// A running node agent (a process, or a container of its image). Killed when dropped.
pub struct Agent {
    process: Option<Running>,
    pub node: String,
    node_netns: PathBuf,
    pub bpf_dir: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    /// Set when the agent runs from its image: the DaemonSet's pod template and what stands
    /// in for the cluster.
    image: Option<ImageLaunch>,
}

struct ImageLaunch {
    spec: k8s_openapi::api::core::v1::PodSpec,
    container: k8s_openapi::api::core::v1::Container,
    substitutions: containers::Substitutions,
}

/// The agent binary: `AMBIT_MESH_NODE`, else next to the test executable's target directory.
pub fn mesh_node_binary() -> Result<PathBuf> {
    crate::controller::workspace_binary("mesh-node", "AMBIT_MESH_NODE")
}

impl Testbed {
    /// Starts the agent of node `node` and waits until it is ready.
    pub fn start_agent(&self, node: &str, options: &AgentOptions) -> Result<Agent> {
        let node = self.node(node);
        let mut args = vec![
            "--node-name".to_owned(),
            node.name.clone(),
            "--bpf-dir".to_owned(),
            node.bpf_dir.display().to_string(),
            "--agent-cgroup".to_owned(),
            node.agent_cgroup.display().to_string(),
            "--poll-ms".to_owned(),
            "50".to_owned(),
            "--handover-socket".to_owned(),
            self.handover_dir(&node.name)
                .join("handover.sock")
                .display()
                .to_string(),
            // Where the test bed puts the node's pod cgroups (the kubelet's cgroupfs layout).
            "--pod-cgroups".to_owned(),
            self.pods_cgroup(&node.name).display().to_string(),
        ];
        if options.config_from_controller {
            args.extend(["--config-source".to_owned(), "controller".to_owned()]);
        } else {
            args.extend([
                "--pods-file".to_owned(),
                self.pods_file_path().display().to_string(),
                "--config-dir".to_owned(),
                self.config_dir().display().to_string(),
            ]);
        }
        if let Some(root) = &options.ca_root {
            args.extend([
                "--ca-addr".to_owned(),
                crate::controller::CA_ADDR.to_owned(),
                "--ca-root".to_owned(),
                root.display().to_string(),
                "--token-file".to_owned(),
                self.token_file(&node.name).display().to_string(),
            ]);
        }
        if let Some(lifetime) = options.cert_lifetime {
            args.extend(["--cert-lifetime".to_owned(), lifetime.to_string()]);
        }
        if let Some(workers) = options.worker_threads {
            args.extend(["--worker-threads".to_owned(), workers.to_string()]);
        }
        if options.accelerate {
            args.extend(["--accelerate".to_owned(), "true".to_owned()]);
        }
        let drain = options.drain_timeout_secs.unwrap_or(2);
        args.extend(["--drain-timeout-secs".to_owned(), drain.to_string()]);
        self.launch_agent(node, args, None)
    }

    /// Starts node `node`'s agent from its image, as deploy/node.yaml's DaemonSet runs it:
    /// that pod template's security context, capabilities, host PID namespace and volume
    /// mounts, with a private cgroup namespace and the host's cgroup v2 hierarchy mounted at
    /// /sys/fs/cgroup (where real nodes have it). Only the arguments (this test bed's
    /// controller address and pin directory) and the environment differ, and the sources of
    /// the token and root certificate volumes are files of the test bed. It takes pods and
    /// policies from `controller`'s stream and finds pods in /proc by their cgroups, as in
    /// Kubernetes: call [`Testbed::start_pause_processes`] first.
    pub fn start_agent_from_image(
        &self,
        node: &str,
        controller: &crate::controller::Controller,
    ) -> Result<Agent> {
        let node = self.node(node);
        let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/node.yaml");
        let (spec, container) = containers::manifest_pod(&manifest, "DaemonSet")?;
        let stand_ins = self.work_dir.join(format!("stand-ins/{}", node.name));
        let substitutions = containers::Substitutions {
            volumes: containers::mesh_volumes(
                &stand_ins,
                &self.token_file(&node.name),
                &controller.root,
            )?,
            host_paths: [
                (
                    "/sys/fs/cgroup".to_owned(),
                    PathBuf::from(crate::testbed::CGROUP_V2),
                ),
                // Each test bed node's agents meet at a socket of their own, never the host's.
                (
                    "/var/run/ambit/node".to_owned(),
                    self.handover_dir(&node.name),
                ),
            ]
            .into(),
            fields: [("spec.nodeName".to_owned(), node.name.clone())].into(),
        };
        // The DaemonSet's arguments, pointed at this test bed.
        let args = containers::override_args(
            container.args.as_deref().unwrap_or_default(),
            &[
                ("--bpf-dir", node.bpf_dir.display().to_string()),
                ("--ca-addr", crate::controller::CA_ADDR.to_owned()),
            ],
        );
        let launch = ImageLaunch {
            spec,
            container,
            substitutions,
        };
        self.launch_agent(node, args, Some(launch))
    }

    /// The node's `kubepods` cgroup, under which its pods' cgroups are.
    pub fn pods_cgroup(&self, node: &str) -> PathBuf {
        self.cgroup_dir.join(node).join("kubepods")
    }

    /// Where node `node`'s agents meet to hand over (its own, as each real node has one).
    pub fn handover_dir(&self, node: &str) -> PathBuf {
        self.work_dir.join(format!("handover-{node}"))
    }

    /// Starts node `node`'s agent with `args`, as a process or from its image.
    fn launch_agent(
        &self,
        node: &crate::testbed::Node,
        args: Vec<String>,
        image: Option<ImageLaunch>,
    ) -> Result<Agent> {
        let mut agent = Agent {
            process: None,
            node: node.name.clone(),
            node_netns: PathBuf::from("/run/netns").join(&node.netns),
            bpf_dir: node.bpf_dir.clone(),
            log: self.work_dir.join(format!("agent-{}.log", node.name)),
            args,
            image,
        };
        agent.start()?;
        Ok(agent)
    }
}

impl Agent {
    /// (Re)starts the process with the same arguments and waits for readiness.
    pub fn start(&mut self) -> Result<()> {
        if let Some(launch) = &self.image {
            // The host's bpffs, as systemd mounts it on a real node; the container sees it
            // through its hostPath volume.
            mesh_node::dataplane::ensure_bpffs()?;
            let placement = containers::Placement {
                netns: self.node_netns.clone(),
                args: self.args.clone(),
                env: vec![containers::log_filter("mesh_node")],
                extra_mounts: Vec::new(),
                log: self.log.clone(),
            };
            let started = Container::start(
                &containers::image("mesh-node"),
                &launch.spec,
                &launch.container,
                &launch.substitutions,
                &placement,
            )?;
            self.process = Some(Running::Container(started));
            return self.wait_ready(Duration::from_secs(30));
        }
        self.spawn(None)?;
        self.wait_ready(Duration::from_secs(20))
    }

    /// Starts the process (the test's own build, or `binary`) inside the node.
    fn spawn(&mut self, binary: Option<&std::path::Path>) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let netns = std::fs::File::open(&self.node_netns)?;
        let binary = match binary {
            Some(binary) => binary.to_owned(),
            None => mesh_node_binary()?,
        };
        let mut command = Command::new(binary);
        command
            .args(&self.args)
            .envs([containers::log_filter("mesh_node")])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        sys::start_inside(&mut command, netns, None);
        self.process = Some(Running::Process(crate::sys::KillOnDrop(
            command.spawn().context("starting mesh-node")?,
        )));
        Ok(())
    }

    /// Starts a second agent on the same node, as a DaemonSet rollout does (surge), and waits
    /// until it is ready: it has taken this one's listeners over, and this one drains. With
    /// `binary`, that build rather than the test's own (an upgrade). Its log is its own.
    pub fn start_successor(&self, binary: Option<&std::path::Path>) -> Result<Agent> {
        anyhow::ensure!(self.image.is_none(), "successors are started as processes");
        let dir = self.log.parent().context("the agent's log has a folder")?;
        let generation = (2..)
            .map(|n| dir.join(format!("agent-{}.{n}.log", self.node)))
            .find(|path| !path.exists())
            .expect("an unused log name");
        let mut successor = Agent {
            process: None,
            node: self.node.clone(),
            node_netns: self.node_netns.clone(),
            bpf_dir: self.bpf_dir.clone(),
            log: generation,
            args: self.args.clone(),
            image: None,
        };
        successor.spawn(binary)?;
        // Ready only once this agent said it handed over: until the successor takes the
        // node's endpoints, the readiness probe on their shared address reaches this one.
        let handed_over = || self.log().contains("pods handed over to the successor");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !handed_over() {
            if let Some(process) = successor.process.as_mut()
                && let Some(status) = process.exited()?
            {
                bail!(
                    "the successor on {} exited with {status}; log: {}",
                    self.node,
                    successor.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent on {} did not hand over within 30 s; its log: {}\nthe successor's: {}",
                    self.node,
                    self.log_tail(),
                    successor.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        successor.wait_ready(Duration::from_secs(20))?;
        Ok(successor)
    }

    /// Runs `mesh-node --uninstall` for this agent's node (as an operator would on the node)
    /// and returns what it printed; fails if it fails.
    pub fn uninstall(&self) -> Result<String> {
        let socket = self
            .args
            .iter()
            .position(|a| a == "--handover-socket")
            .and_then(|i| self.args.get(i + 1))
            .context("the agent has a hand-over socket")?;
        let out = Command::new(mesh_node_binary()?)
            .args(["--uninstall", "--handover-socket", socket, "--bpf-dir"])
            .arg(&self.bpf_dir)
            .env("AMBIT_LOG", "info")
            .output()
            .context("running mesh-node --uninstall")?;
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        anyhow::ensure!(
            out.status.success(),
            "mesh-node --uninstall failed: {printed}"
        );
        Ok(printed)
    }

    /// Kills the agent with SIGKILL (a crash) and waits for it to be gone.
    pub fn kill(&mut self) -> Result<()> {
        let pid = self.pid().context("the agent is not running")?;
        // SAFETY: kill on a pid this test bed started and still holds.
        if unsafe { libc::kill(pid as i32, libc::SIGKILL) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        self.wait_exit(Duration::from_secs(10))?;
        Ok(())
    }

    /// Sends SIGTERM, as a DaemonSet rollout would, without waiting: the agent drains.
    pub fn terminate(&self) -> Result<()> {
        let pid = self.pid().context("the agent is not running")?;
        // SAFETY: kill on a pid this test bed started and still holds.
        if unsafe { libc::kill(pid as i32, libc::SIGTERM) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    /// Waits until the agent's process has exited; how long that took.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            if let Some(process) = self.process.as_mut()
                && process.exited()?.is_some()
            {
                self.process = None;
                return Ok(started.elapsed());
            }
            if self.process.is_none() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                bail!("the agent on {} did not exit within {timeout:?}", self.node);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the agent with SIGTERM, as a DaemonSet rollout would, and waits for it.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut process) = self.process.take() {
            process.stop()?;
        }
        Ok(())
    }

    /// The agent's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Running::pid)
    }

    /// The container it runs in, when it was started from its image.
    pub fn container(&self) -> Option<&Container> {
        self.process.as_ref().and_then(Running::container)
    }

    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start()
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(process) = self.process.as_mut()
                && let Some(status) = process.exited()?
            {
                bail!(
                    "mesh-node on {} exited with {status}; log: {}",
                    self.node,
                    self.log_tail()
                );
            }
            if self
                .get(15021, "/healthz/ready")
                .is_ok_and(|(status, _)| status == 200)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "mesh-node on {} not ready after {timeout:?}; log: {}",
                    self.node,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
