//! A pod of the mesh the agent cannot enroll is held failing closed, never left uncaptured:
//! here the pod's app took 127.0.0.1:15001 before it joined, so the agent's outbound listener
//! cannot be opened. Its connects are redirected all the same (to its own listener: nothing
//! leaves the pod), connections to it are dropped, the agent reports it, and once the port is
//! free the next attempt enrolls it. Before, the pod was simply not captured and its traffic
//! went out in plaintext. Needs root; run with `cargo xtask test`.

use std::{
    net::{TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use mesh_tests::{
    Agent, AgentOptions, Testbed, Topology,
    traffic::{echo_round_trip, echo_server, read_greeting},
};

const PORT: u16 = 8080;

fn wait_metric(agent: &Agent, name: &str, value: f64) -> Result<()> {
    mesh_tests::sys::wait_until(
        &format!("{name} = {value}"),
        Duration::from_secs(30),
        Duration::from_millis(100),
        || Ok(agent.metric_sum(name, &[])? == value),
    )
    .with_context(|| agent.log_tail())
}

#[test]
fn a_pod_that_cannot_be_enrolled_is_held_failing_closed() -> Result<()> {
    let tb = Testbed::new(Topology::default())?;
    let (pod, server, outsider) = (tb.pod("n0-p0"), tb.pod("n1-p0"), tb.pod("n1-p1"));
    let squatter = pod.enter(|| TcpListener::bind("127.0.0.1:15001"))??;
    squatter.set_nonblocking(true)?;
    let app = echo_server(pod.listen(PORT)?)?;
    let remote = server.listen(PORT)?;
    remote.set_nonblocking(true)?;
    tb.set_pod_mode(&pod.name, Some("ambient"))?;
    let agent = tb.start_agent("n0", &AgentOptions::default())?;
    wait_metric(&agent, "ambit_refused_pods", 1.0)?;

    // Out: the connect is redirected into the pod's own squatting listener, so nothing
    // reaches the server.
    let _client = pod.connect(server.addr(PORT))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let redirected = loop {
        match squatter.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => bail!("the connect was not redirected: {e}"),
        }
    };
    drop(redirected);
    ensure!(
        remote.accept().is_err(),
        "a connection from the refused pod reached the server"
    );
    // IPv6 too: redirected to a listener that is not there, so refused.
    ensure!(
        pod.connect(server.addr6(PORT)).is_err(),
        "an IPv6 connection left the refused pod"
    );
    // In: connections to the pod's app are dropped.
    let dropped =
        outsider.enter(|| TcpStream::connect_timeout(&pod.addr(PORT), Duration::from_secs(2)))?;
    ensure!(
        dropped.is_err(),
        "a connection reached the refused pod's app"
    );

    // The port is free again: the next attempt enrolls the pod, and its traffic flows.
    drop(squatter);
    wait_metric(&agent, "ambit_enrolled_pods", 1.0)?;
    wait_metric(&agent, "ambit_refused_pods", 0.0)?;
    let remote = server.listen(PORT + 1)?;
    let _echo = echo_server(remote)?;
    let mut out = pod.connect(server.addr(PORT + 1))?;
    let seen = read_greeting(&mut out).context("out of the enrolled pod")?;
    ensure!(seen.ip() == pod.ip, "the server saw {seen}");
    echo_round_trip(&mut out, b"enrolled")?;
    let mut into = outsider.connect(pod.addr(PORT))?;
    read_greeting(&mut into).context("into the enrolled pod")?;
    echo_round_trip(&mut into, b"served")?;
    drop(app);
    Ok(())
}
