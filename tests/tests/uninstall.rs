//! `mesh-node --uninstall` releases every pod with no connection reset: the running agent
//! stops capturing (new connections go straight), carries on those it carries, detaches its
//! programs and removes its pins; bpftool then shows none of its programs attached. With no
//! agent running it removes the pins itself, releasing pods a stopped agent left failing
//! closed. Needs root; run with `cargo xtask test`.

use std::{
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::Duration,
};

use anyhow::{Result, ensure};
use mesh_tests::{
    AgentOptions, Testbed, Topology, bpf,
    sys::wait_until,
    traffic::{echo_round_trip, echo_server, read_greeting},
};

const ECHO_PORT: u16 = 8080;

#[test]
fn uninstall_releases_every_pod_without_a_reset() -> Result<()> {
    let tb = Testbed::new(Topology::default())?;
    tb.set_namespace_ambient("default", true)?;
    let (client, server) = (tb.pod("n0-p0"), tb.pod("n1-p0"));
    let (_controller, mut agents) = tb.start_mesh(AgentOptions {
        drain_timeout_secs: Some(60),
        ..AgentOptions::default()
    })?;
    agents[0].wait_enrolled(&client.key(), true)?;
    agents[1].wait_enrolled(&server.key(), true)?;
    let _echo = echo_server(server.listen(ECHO_PORT)?)?;
    let dst = server.addr(ECHO_PORT);
    let mut held = client.connect(dst)?;
    read_greeting(&mut held)?;
    echo_round_trip(&mut held, b"before the uninstall")?;
    let linked = bpf::linked_program_ids(&agents[0].bpf_dir)?;
    ensure!(!linked.is_empty(), "no link pinned before the uninstall");
    let plaintext = || {
        agents[1].metric_sum(
            "istio_tcp_connections_opened_total",
            &[
                r#"reporter="destination""#,
                r#"connection_security_policy="unknown""#,
            ],
        )
    };
    ensure!(plaintext()? == 0.0, "plaintext before the uninstall");

    let stop = AtomicBool::new(false);
    let (carried, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let printed = std::thread::scope(|scope| -> Result<String> {
        let load = scope.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let round = client
                    .connect(dst)
                    .map_err(anyhow::Error::from)
                    .and_then(|mut s| {
                        read_greeting(&mut s)?;
                        echo_round_trip(&mut s, b"new")
                    });
                match round {
                    Ok(()) => carried.fetch_add(1, Ordering::SeqCst),
                    Err(_) => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        });
        let uninstalled = (|| -> Result<String> {
            wait_until(
                "load before the uninstall",
                Duration::from_secs(20),
                Duration::from_millis(20),
                || Ok(carried.load(Ordering::SeqCst) >= 100),
            )?;
            let printed = agents[0].uninstall()?;
            let after = carried.load(Ordering::SeqCst);
            wait_until(
                "load after the uninstall",
                Duration::from_secs(20),
                Duration::from_millis(20),
                || Ok(carried.load(Ordering::SeqCst) >= after + 100),
            )?;
            Ok(printed)
        })();
        stop.store(true, Ordering::SeqCst);
        load.join().expect("the load thread");
        uninstalled
    })?;
    eprintln!("{printed}");
    ensure!(
        failed.load(Ordering::SeqCst) == 0,
        "{} of {} new connections failed across the uninstall",
        failed.load(Ordering::SeqCst),
        carried.load(Ordering::SeqCst)
    );
    // The connection the agent carried goes on.
    echo_round_trip(&mut held, &vec![3u8; 1 << 20])?;
    // New connections are no longer captured: they reach the server's agent in plaintext.
    ensure!(plaintext()? > 0.0, "new connections are still captured");
    let log = agents[0].log();
    ensure!(
        log.contains("every pod released"),
        "{}",
        agents[0].log_tail()
    );
    // Nothing of the agent is pinned or attached any more.
    ensure!(
        !agents[0].bpf_dir.exists(),
        "{} still exists",
        agents[0].bpf_dir.display()
    );
    let attached = bpf::root_cgroup_programs()?;
    for (link, id) in &linked {
        ensure!(
            !attached.iter().any(|(a, _)| a == id),
            "program {id} of link {link} is still attached: {attached:?}"
        );
    }
    // The released agent exits once told to (its last connection ends).
    drop(held);
    agents[0].stop()?;
    let mut after = client.connect(dst)?;
    read_greeting(&mut after)?;
    echo_round_trip(&mut after, b"no agent on n0, not captured")?;
    Ok(())
}

#[test]
fn uninstall_without_an_agent_releases_pods_held_failing_closed() -> Result<()> {
    let tb = Testbed::new(Topology::default())?;
    let (client, server) = (tb.pod("n0-p0"), tb.pod("n1-p0"));
    tb.set_pod_mode(&client.name, Some("ambient"))?;
    let mut agent = tb.start_agent("n0", &AgentOptions::default())?;
    agent.wait_enrolled(&client.key(), true)?;
    let _echo = echo_server(server.listen(ECHO_PORT)?)?;
    let dst = server.addr(ECHO_PORT);
    agent.stop()?;
    ensure!(
        client.connect(dst).is_err(),
        "an enrolled pod reached {dst} with its agent stopped"
    );
    agent.uninstall()?;
    let mut stream = client.connect(dst)?;
    read_greeting(&mut stream)?;
    echo_round_trip(&mut stream, b"released")?;
    ensure!(!agent.bpf_dir.exists(), "pins left behind");
    Ok(())
}
