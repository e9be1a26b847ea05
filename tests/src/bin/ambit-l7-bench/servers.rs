//! The programs the L7 benchmark runs in pods: nginx as the backends, HAProxy as the proxy
//! the waypoint is measured against; each waited for until it answers HTTP.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use mesh_tests::{Pod, Testbed, http::HttpClient, sys::KillOnDrop};

use crate::PORT;

/// nginx answering `200 <name>` on 9080 in `pod`; stopped when dropped.
pub fn nginx(tb: &Testbed, pod: &Pod, name: &str) -> Result<KillOnDrop> {
    let dir = tb.work_dir.join(format!("nginx-{}", pod.name));
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes 1;\npid {pid};\nerror_log stderr;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n  fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  scgi_temp_path {d};\n  keepalive_requests 1000000;\n\
             server {{ listen {PORT}; location / {{ return 200 \"{name}\\n\"; }} }}\n}}\n",
            pid = dir.join("nginx.pid").display(),
            d = dir.display()
        ),
    )?;
    let child = pod.spawn(
        Command::new("nginx")
            .args([
                "-c",
                &conf.display().to_string(),
                "-p",
                &dir.display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    wait_http(pod, pod.addr(PORT))?;
    Ok(KillOnDrop(child))
}

/// HAProxy in `pod` on 8080, doing the waypoint's 90/10 split of v1 and v2 with `threads`
/// threads; stopped when dropped.
pub fn start_haproxy(tb: &Testbed, pod: &Pod, threads: usize) -> Result<KillOnDrop> {
    let conf = tb.work_dir.join("haproxy.cfg");
    let (v1, v2) = (tb.pod("n1-p0").addr(PORT), tb.pod("n1-p1").addr(PORT));
    std::fs::write(
        &conf,
        format!(
            "global\n  nbthread {threads}\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  option http-keep-alive\n\
             frontend web\n  bind :8080\n  default_backend reviews\n\
             backend reviews\n  balance roundrobin\n  http-reuse always\n  server v1 {v1} weight 90\n  server v2 {v2} weight 10\n"
        ),
    )?;
    let child = pod.spawn(
        Command::new("haproxy")
            .args(["-db", "-f", &conf.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    wait_http(tb.pod("n0-p0"), SocketAddr::from((pod.ip, 8080)))?;
    Ok(KillOnDrop(child))
}

fn wait_http(from: &Pod, addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = HttpClient::connect(from, addr, "reviews")
            .and_then(|mut c| c.get("/", &[]))
            .is_ok_and(|r| r.status == 200);
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no HTTP answer from {addr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
