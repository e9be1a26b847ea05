//! A node agent told to stop (SIGTERM, as a DaemonSet rollout does) drains: it refuses new
//! connections at once (its pods stay captured and fail closed, never going around the
//! mesh), carries on those it carries over HBONE until they end, then exits; a connection
//! still open at `--drain-timeout-secs` is closed then. Needs root; run with
//! `cargo xtask test`.

use std::{
    io::Read as _,
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use mesh_tests::{
    AgentOptions, Testbed, Topology,
    sys::wait_until,
    traffic::{echo_round_trip, echo_server, read_greeting},
};

const ECHO_PORT: u16 = 8080;

#[test]
fn sigterm_drains_carried_connections_and_refuses_new_ones() -> Result<()> {
    let tb = Testbed::new(Topology::default())?;
    let (client, server) = (tb.pod("n0-p0"), tb.pod("n1-p0"));
    tb.set_namespace_ambient("default", true)?;
    let controller = tb.start_controller()?;
    let options = |drain| AgentOptions {
        ca_root: Some(controller.root.clone()),
        drain_timeout_secs: Some(drain),
        ..AgentOptions::default()
    };
    let mut agent = tb.start_agent("n0", &options(60))?;
    let server_agent = tb.start_agent("n1", &options(60))?;
    agent.wait_enrolled(&client.key(), true)?;
    server_agent.wait_enrolled(&server.key(), true)?;
    let _echo = echo_server(server.listen(ECHO_PORT)?)?;
    let dst = server.addr(ECHO_PORT);

    let mut held = client.connect(dst)?;
    read_greeting(&mut held)?;
    echo_round_trip(&mut held, b"before the signal")?;
    agent.terminate()?;
    // New connections are refused as soon as the pod's listeners close...
    wait_until(
        "the agent to refuse new connections",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || Ok(client.connect(dst).is_err()),
    )?;
    // ...while the one it carries goes on, a megabyte each way over HBONE.
    echo_round_trip(&mut held, &vec![7u8; 1 << 20])?;
    let log = std::fs::read_to_string(&agent.log)?;
    ensure!(
        log.contains("draining"),
        "the agent does not say it drains:\n{log}"
    );
    // It exits once that connection ends, long before its deadline.
    drop(held);
    let took = agent.wait_exit(Duration::from_secs(20))?;
    ensure!(
        took < Duration::from_secs(15),
        "took {took:?} to exit after its last connection"
    );
    let log = std::fs::read_to_string(&agent.log)?;
    ensure!(log.contains("drained"), "{log}");
    // Stopped, the pod still fails closed.
    ensure!(
        client.connect(dst).is_err(),
        "reached {dst} with the agent gone"
    );

    // A connection still open at the deadline is closed then, and the agent exits.
    let mut agent = tb.start_agent("n0", &options(2))?;
    agent.wait_enrolled(&client.key(), true)?;
    let mut idle = client.connect(dst)?;
    read_greeting(&mut idle)?;
    let signalled = Instant::now();
    agent.terminate()?;
    agent.wait_exit(Duration::from_secs(20))?;
    let took = signalled.elapsed();
    ensure!(
        took >= Duration::from_millis(1_900),
        "exited after {took:?}, before its 2 s deadline"
    );
    idle.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut rest = Vec::new();
    let ended = idle.read_to_end(&mut rest);
    let still_open = ended.is_err_and(|e| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    });
    ensure!(
        !still_open,
        "the connection still open at the deadline was not closed"
    );
    Ok(())
}
