//! Running `mesh-controller` (local mode: the CA) in the test bed's fabric namespace, where
//! every node reaches it at 198.18.0.254:15012.

use std::{
    net::{SocketAddr, TcpStream},
    os::unix::fs::chown,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    Agent, AgentOptions,
    containers::{self, Container, Running},
    sys,
    testbed::Testbed,
};

/// Where the controller listens, on the fabric bridge.
pub const CA_ADDR: &str = "198.18.0.254:15012";

/// A running controller (a process, or a container of its image). Killed when dropped.
pub struct Controller {
    process: Running,
    /// The root certificate node agents trust.
    pub root: PathBuf,
    pub log: PathBuf,
}

/// What local mode reads: the nodes' tokens, the pods file, the CA directory.
struct LocalMode {
    tokens_file: PathBuf,
    ca_dir: PathBuf,
    log: PathBuf,
}

/// A workspace binary: `$AMBIT_<NAME>` if set, else next to the running executable.
pub fn workspace_binary(name: &str, env: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Ok(path.into());
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "{name} not found near {}: build it first (`cargo xtask test` does) or set {env}",
        exe.display()
    )
}

impl Testbed {
    /// The bootstrap token of a node's agent.
    pub fn token_file(&self, node: &str) -> PathBuf {
        self.work_dir.join("tokens").join(node)
    }

    /// Starts the CA and an HBONE agent on both nodes (`options` with the CA's root filled in).
    pub fn start_mesh(&self, options: AgentOptions) -> Result<(Controller, [Agent; 2])> {
        let controller = self.start_controller()?;
        if options.config_from_controller {
            self.start_pause_processes()?;
        }
        let options = AgentOptions {
            ca_root: Some(controller.root.clone()),
            ..options
        };
        let agents = [
            self.start_agent("n0", &options)?,
            self.start_agent("n1", &options)?,
        ];
        Ok((controller, agents))
    }

    /// Writes a token per node (what local mode authenticates agents by).
    fn local_mode(&self) -> Result<LocalMode> {
        let tokens_dir = self.work_dir.join("tokens");
        let tokens_file = self.work_dir.join("tokens.yaml");
        // A controller started again (a restart) keeps the nodes' tokens: agents still hold
        // them.
        if !tokens_file.exists() {
            std::fs::create_dir_all(&tokens_dir)?;
            let mut map = String::new();
            for node in &self.nodes {
                let token = format!("{:x}{:x}", std::process::id(), rand_u64());
                std::fs::write(tokens_dir.join(&node.name), &token)?;
                map.push_str(&format!("{}: {token}\n", node.name));
            }
            std::fs::write(&tokens_file, map)?;
        }
        Ok(LocalMode {
            tokens_file,
            ca_dir: self.work_dir.join("ca"),
            log: self.work_dir.join("controller.log"),
        })
    }

    /// Local mode's arguments.
    fn controller_args(&self, local: &LocalMode) -> Vec<String> {
        let mut args = Vec::new();
        for (flag, value) in [
            ("--ca-dir", local.ca_dir.display().to_string()),
            ("--pods-file", self.pods_file_path().display().to_string()),
            ("--tokens-file", local.tokens_file.display().to_string()),
            ("--ca-addr", CA_ADDR.to_owned()),
            // The same Istio YAML the agents read; agents with `--config-source controller`
            // get it through the configuration stream instead.
            ("--config-dir", self.config_dir().display().to_string()),
        ] {
            args.extend([flag.to_owned(), value]);
        }
        args
    }

    /// Starts the controller's CA and waits until it accepts connections.
    pub fn start_controller(&self) -> Result<Controller> {
        let local = self.local_mode()?;
        let cgroup = self.cgroup_dir.join("controller");
        std::fs::create_dir_all(&cgroup)?;
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(cgroup.join("cgroup.procs"))?;
        let netns = std::fs::File::open(self.fabric_netns_path())?;
        let mut command = Command::new(workspace_binary(
            "mesh-controller",
            "AMBIT_MESH_CONTROLLER",
        )?);
        command
            .args(self.controller_args(&local))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&local.log)?)
            .stderr(std::fs::OpenOptions::new().append(true).open(&local.log)?);
        sys::start_inside(&mut command, netns, Some(procs));
        let child = command.spawn().context("starting mesh-controller")?;
        self.wait_controller(Controller {
            process: Running::Process(crate::sys::KillOnDrop(child)),
            root: local.ca_dir.join("root-cert.pem"),
            log: local.log,
        })
    }

    /// Starts the controller from its image with deploy/controller.yaml's pod template (its
    /// user, read-only root, no capabilities), in local mode: this machine has no API server,
    /// so the local mode's files are mounted in (the CA directory writable by its user).
    pub fn start_controller_from_image(&self) -> Result<Controller> {
        let local = self.local_mode()?;
        let manifest =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/controller.yaml");
        let (spec, container) = containers::manifest_pod(&manifest, "Deployment")?;
        let uid = container
            .security_context
            .as_ref()
            .and_then(|sc| sc.run_as_user)
            .or(spec.security_context.as_ref().and_then(|sc| sc.run_as_user))
            .context("controller.yaml sets no runAsUser")? as u32;
        std::fs::create_dir_all(&local.ca_dir)?;
        chown(&local.ca_dir, Some(uid), Some(uid))?;
        let work = self.work_dir.display().to_string();
        let ca = local.ca_dir.display().to_string();
        let placement = containers::Placement {
            netns: self.fabric_netns_path(),
            args: self.controller_args(&local),
            env: vec![("AMBIT_LOG".to_owned(), "info".to_owned())],
            extra_mounts: vec![format!("{work}:{work}:ro"), format!("{ca}:{ca}:rw")],
            log: local.log.clone(),
        };
        let started = Container::start(
            &containers::image("mesh-controller"),
            &spec,
            &container,
            &containers::Substitutions {
                fields: [
                    ("metadata.namespace".to_owned(), "ambit-system".to_owned()),
                    ("metadata.name".to_owned(), "ambit-controller-0".to_owned()),
                ]
                .into(),
                ..Default::default()
            },
            &placement,
        )?;
        self.wait_controller(Controller {
            process: Running::Container(started),
            root: local.ca_dir.join("root-cert.pem"),
            log: local.log,
        })
    }

    fn wait_controller(&self, mut controller: Controller) -> Result<Controller> {
        let addr: SocketAddr = CA_ADDR.parse()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = sys::in_netns(&self.fabric_netns_path(), || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            })?;
            if up.is_ok() && controller.root.exists() {
                return Ok(controller);
            }
            if let Some(how) = controller.process.exited()? {
                bail!(
                    "mesh-controller exited ({how}): {}",
                    std::fs::read_to_string(&controller.log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "mesh-controller not listening on {CA_ADDR}: {}",
                    std::fs::read_to_string(&controller.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64,
    );
    hasher.finish()
}

impl Controller {
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The container it runs in, when it was started from its image.
    pub fn container(&self) -> Option<&Container> {
        self.process.container()
    }
}
