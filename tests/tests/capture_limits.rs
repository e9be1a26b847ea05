//! The capture listeners (15001 outbound, 15006 inbound) are capped like every other listener:
//! a pod holding `--max-connections` captured connections gets its next one served only when
//! one of them closes (it waits in the kernel's backlog meanwhile), and other pods are served
//! all along. Before, each pod's capture listeners accepted without limit, so one pod could take
//! every file descriptor the agent has. Needs root; run with `cargo xtask test`.

use std::{
    io::{ErrorKind, Read as _},
    time::Duration,
};

use anyhow::{Result, ensure};
use mesh_tests::{
    AgentOptions, Testbed, Topology,
    traffic::{echo_server, read_greeting},
};

const CAP: usize = 4;
const PORT: u16 = 8080;

#[test]
fn a_pod_at_the_cap_waits_while_other_pods_are_served() -> Result<()> {
    // SAFETY: set before this test (the only one in its binary) starts any thread; the agent it
    // starts inherits it.
    unsafe { std::env::set_var("AMBIT_MAX_CONNECTIONS", CAP.to_string()) };
    let tb = Testbed::new(Topology::default())?;
    let (hog, other, server) = (tb.pod("n0-p0"), tb.pod("n0-p1"), tb.pod("n1-p0"));
    for pod in [hog, other] {
        tb.set_pod_mode(&pod.name, Some("ambient"))?;
    }
    let agent = tb.start_agent("n0", &AgentOptions::default())?;
    for pod in [hog, other] {
        agent.wait_enrolled(&pod.key(), true)?;
    }
    let _echo = echo_server(server.listen(PORT)?)?;

    let mut held = Vec::new();
    for _ in 0..CAP {
        let mut stream = hog.connect(server.addr(PORT))?;
        read_greeting(&mut stream)?;
        held.push(stream);
    }
    // Over the cap: the kernel completes the handshake, the agent does not accept it yet.
    let mut waiting = hog.connect(server.addr(PORT))?;
    waiting.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut byte = [0u8; 1];
    match waiting.read(&mut byte) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => anyhow::bail!(
            "a connection over the cap was served: {other:?}\n{}",
            agent.log_tail()
        ),
    }
    // Another pod's listener has its own cap.
    let mut beside = other.connect(server.addr(PORT))?;
    read_greeting(&mut beside)?;

    // One closes: the waiting connection is served, bytes intact.
    drop(held.pop());
    waiting.set_read_timeout(Some(Duration::from_secs(20)))?;
    let seen = read_greeting(&mut waiting)?;
    ensure!(
        seen.ip() == hog.ip,
        "the waiting connection arrived as {seen}"
    );
    Ok(())
}
