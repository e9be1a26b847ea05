//! `ambitctl dashboard`: the controller's mesh page in a browser. In Kubernetes the admin
//! endpoint listens on the controller pod's loopback only, so a `kubectl port-forward` to
//! it runs for as long as the command does; in local mode the page is already at hand.

use std::{
    net::{SocketAddr, TcpStream},
    process::{Child, Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// The admin port in the controller's pod.
const ADMIN_PORT: u16 = 15014;

#[derive(clap::Args)]
pub struct Dashboard {
    /// Reach the controller in a cluster through `kubectl port-forward` (otherwise the page
    /// is read at --controller, as in local mode).
    #[arg(long)]
    kubernetes: bool,
    /// The controller's namespace.
    #[arg(long, default_value = "ambit-system")]
    namespace: String,
    /// Print the address without opening a browser.
    #[arg(long)]
    no_browser: bool,
}

/// Kills the port-forward when the command ends, however it ends.
struct Forward(Child);

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn answers(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

pub fn run(controller: SocketAddr, options: &Dashboard) -> Result<ExitCode> {
    let mut forward = None;
    if options.kubernetes {
        let mut child = Command::new("kubectl")
            .args([
                "-n",
                &options.namespace,
                "port-forward",
                "deploy/ambit-controller",
            ])
            .arg(format!("{}:{ADMIN_PORT}", controller.port()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("running kubectl (is it installed and on PATH?)")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !answers(controller) {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "kubectl port-forward ended ({status}): is the controller running in {}?",
                    options.namespace
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("kubectl port-forward did not open {controller} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        forward = Some(Forward(child));
    } else if !answers(controller) {
        bail!(
            "nothing answers at {controller}: in Kubernetes add --kubernetes (a port-forward to the controller), \
             in local mode start the controller or set --controller"
        );
    }
    let url = format!("http://{controller}/mesh");
    crate::print(&format!("The mesh page: {url}\n"));
    if !options.no_browser {
        // A desktop's browser, if there is one; the address is printed either way.
        let _ = Command::new("xdg-open")
            .arg(&url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }
    if let Some(mut forward) = forward {
        crate::print("Forwarding until Ctrl-C.\n");
        let status = forward.0.wait()?;
        bail!("kubectl port-forward ended: {status}");
    }
    Ok(ExitCode::SUCCESS)
}
