//! Running `mesh-controller` (local mode: the CA) in the test bed's fabric namespace, where
//! every node reaches it at 198.18.0.254:15012.

use std::{
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{Agent, AgentOptions, sys, testbed::Testbed};

/// Where the controller listens, on the fabric bridge.
pub const CA_ADDR: &str = "198.18.0.254:15012";

/// A running controller. Killed when dropped.
pub struct Controller {
    child: Child,
    /// The root certificate node agents trust.
    pub root: PathBuf,
    pub log: PathBuf,
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

    /// Starts the controller's CA and waits until it accepts connections.
    pub fn start_controller(&self) -> Result<Controller> {
        let tokens_dir = self.work_dir.join("tokens");
        std::fs::create_dir_all(&tokens_dir)?;
        let mut map = String::new();
        for node in &self.nodes {
            let token = format!("{:x}{:x}", std::process::id(), rand_u64());
            std::fs::write(tokens_dir.join(&node.name), &token)?;
            map.push_str(&format!("{}: {token}\n", node.name));
        }
        let tokens_file = self.work_dir.join("tokens.yaml");
        std::fs::write(&tokens_file, map)?;
        let ca_dir = self.work_dir.join("ca");
        let log = self.work_dir.join("controller.log");
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
            .args(["--ca-dir", &ca_dir.display().to_string()])
            .args(["--pods-file", &self.pods_file_path().display().to_string()])
            .args(["--tokens-file", &tokens_file.display().to_string()])
            .args(["--ca-addr", CA_ADDR])
            // The same Istio YAML the agents read; agents with `--config-source controller`
            // get it through the configuration stream instead.
            .args(["--config-dir", &self.config_dir().display().to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::OpenOptions::new().append(true).open(&log)?);
        sys::start_inside(&mut command, netns, Some(procs));
        let child = command.spawn().context("starting mesh-controller")?;
        let controller = Controller {
            child,
            root: ca_dir.join("root-cert.pem"),
            log,
        };
        let addr: SocketAddr = CA_ADDR.parse()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = sys::in_netns(&self.fabric_netns_path(), || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            })?;
            if up.is_ok() && controller.root.exists() {
                return Ok(controller);
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
        self.child.id()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
