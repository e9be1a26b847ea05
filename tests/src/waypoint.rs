//! Running `mesh-waypoint` inside a test-bed pod, as a waypoint Deployment's pod would run:
//! the pod carries the Gateway's name label and the waypoint's service account, and is not
//! captured itself.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::{
    containers::{self, Container, Running},
    controller::Controller,
    testbed::Testbed,
};

/// The waypoint binary: `AMBIT_MESH_WAYPOINT`, else next to the test executable's target.
pub fn mesh_waypoint_binary() -> Result<PathBuf> {
    crate::controller::workspace_binary("mesh-waypoint", "AMBIT_MESH_WAYPOINT")
}

/// A running waypoint (a process, or a container of its image). Killed when dropped.
pub struct Waypoint {
    process: Running,
    pub pod: String,
    netns: PathBuf,
    pub log: PathBuf,
}

impl Testbed {
    /// Makes `pod` the pod of waypoint `namespace/name` (label, service account, not
    /// captured) in the pods file. Call before the mesh starts, or wait for the update.
    pub fn make_waypoint_pod(&self, pod: &str, gateway: &str, service_account: &str) -> Result<()> {
        self.label_pod(pod, mesh_node::pods::GATEWAY_NAME_LABEL, Some(gateway))?;
        self.set_service_account(pod, service_account)?;
        self.set_pod_mode(pod, Some("none"))?;
        // The Gateway the controller publishes the waypoint's identity from (the
        // ServiceAccount named as it): without it nothing is that waypoint.
        let namespace = &self.pod(pod).namespace;
        self.write_policy(
            &format!("gateway-{namespace}-{gateway}"),
            &format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {gateway}, namespace: {namespace}}}\nspec:\n  gatewayClassName: ambit-waypoint\n  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]\n"
            ),
        )
    }

    /// Starts `mesh-waypoint` for `namespace/gateway` in `pod` and waits until it is ready.
    pub fn start_waypoint(
        &self,
        controller: &Controller,
        pod: &str,
        waypoint: &str,
        service_account: &str,
        extra: &[&str],
    ) -> Result<Waypoint> {
        let mut args = vec!["--waypoint", waypoint];
        args.extend(extra);
        self.start_proxy(controller, pod, service_account, &args)
    }

    /// Starts `mesh-waypoint` in ingress mode for the Istio Gateway `namespace/name`.
    pub fn start_ingress(
        &self,
        controller: &Controller,
        pod: &str,
        gateway: &str,
        service_account: &str,
    ) -> Result<Waypoint> {
        self.start_proxy(
            controller,
            pod,
            service_account,
            &["--ingress-gateway", gateway],
        )
    }

    fn start_proxy(
        &self,
        controller: &Controller,
        pod: &str,
        service_account: &str,
        mode: &[&str],
    ) -> Result<Waypoint> {
        let pod = self.pod(pod);
        let log = self.work_dir.join(format!("waypoint-{}.log", pod.name));
        let mut command = Command::new(mesh_waypoint_binary()?);
        command
            .args(mode)
            .args(["--namespace", &pod.namespace])
            .args(["--pod-name", &pod.name])
            .args(["--service-account", service_account])
            .args(["--ca-addr", crate::controller::CA_ADDR])
            .args(["--ca-root", &controller.root.display().to_string()])
            .args([
                "--token-file",
                &self.token_file(&pod.node).display().to_string(),
            ])
            .envs([containers::log_filter("mesh_waypoint")])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::OpenOptions::new().append(true).open(&log)?);
        let child = pod.spawn(&mut command)?;
        let waypoint = Waypoint {
            process: Running::Process(crate::sys::KillOnDrop(child)),
            pod: pod.name.clone(),
            netns: pod.netns_path(),
            log,
        };
        waypoint.wait_ready(Duration::from_secs(20))?;
        Ok(waypoint)
    }

    /// Starts the waypoint `namespace/gateway` from its image in `pod`, as the Deployment the
    /// controller generates for a Gateway of class `ambit-waypoint` runs it: that Deployment's
    /// pod template, with the test bed's controller address and the pod's name.
    pub fn start_waypoint_from_image(
        &self,
        controller: &Controller,
        pod: &str,
        waypoint: &str,
        service_account: &str,
    ) -> Result<Waypoint> {
        let pod = self.pod(pod);
        let deployment = containers::gateway_deployment("ambit-waypoint");
        let (spec, container) = containers::deployment_pod(&deployment)?;
        let stand_ins = self.work_dir.join(format!("stand-ins/{}", pod.name));
        let substitutions = containers::Substitutions {
            volumes: containers::mesh_volumes(
                &stand_ins,
                &self.token_file(&pod.node),
                &controller.root,
            )?,
            fields: [("metadata.name".to_owned(), pod.name.clone())].into(),
            ..Default::default()
        };
        // The generated arguments, for this waypoint and this test bed's controller.
        let args = containers::override_args(
            container.args.as_deref().unwrap_or_default(),
            &[
                ("--waypoint", waypoint.to_owned()),
                ("--namespace", pod.namespace.clone()),
                ("--service-account", service_account.to_owned()),
                ("--ca-addr", crate::controller::CA_ADDR.to_owned()),
            ],
        );
        let log = self.work_dir.join(format!("waypoint-{}.log", pod.name));
        let placement = containers::Placement {
            netns: pod.netns_path(),
            args,
            env: vec![containers::log_filter("mesh_waypoint")],
            extra_mounts: Vec::new(),
            log: log.clone(),
        };
        let started = Container::start(
            &containers::image("mesh-waypoint"),
            &spec,
            &container,
            &substitutions,
            &placement,
        )?;
        let waypoint = Waypoint {
            process: Running::Container(started),
            pod: pod.name.clone(),
            netns: pod.netns_path(),
            log,
        };
        waypoint.wait_ready(Duration::from_secs(30))?;
        Ok(waypoint)
    }
}

impl Waypoint {
    /// GET on one of the waypoint's own endpoints, from inside its pod.
    pub fn get(&self, port: u16, path: &str) -> Result<(u16, String)> {
        crate::sys::loopback_get(&self.netns, port, path)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sends SIGTERM, as Kubernetes does when the pod is deleted, and waits for the exit (the
    /// waypoint drains first).
    pub fn stop(&mut self) -> Result<Duration> {
        let started = Instant::now();
        self.process.stop()?;
        Ok(started.elapsed())
    }

    /// The container it runs in, when it was started from its image.
    pub fn container(&self) -> Option<&Container> {
        self.process.container()
    }

    pub fn metrics(&self) -> Result<String> {
        Ok(self.get(15020, "/stats/prometheus")?.1)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok((200, _)) = self.get(15021, "/healthz/ready") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("waypoint in {} not ready:\n{}", self.pod, self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the waypoint has a configuration in which `check` holds.
    pub fn wait_config(&self, check: impl Fn(&serde_json::Value) -> bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let dump: serde_json::Value =
                serde_json::from_str(&self.get(15000, "/config_dump")?.1)?;
            if check(&dump) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("waypoint configuration never fit: {dump}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the waypoint's configuration has the service `hostname`.
    pub fn wait_service(&self, hostname: &str) -> Result<()> {
        self.wait_config(|dump| {
            dump["services"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s == hostname))
        })
    }
}
