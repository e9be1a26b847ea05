//! The agents' memory: resident set sizes, after a load has ended, and per idle HBONE
//! connection held open.

use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result};
use mesh_tests::Pod;

use crate::Results;

/// RSS once the load's connections have all closed and the allocator had a moment to give
/// freed memory back: within 20 % of the idle RSS is the goal.
pub(crate) fn settled_rss_mb(agents: &[mesh_tests::Agent; 2]) -> Result<f64> {
    let carried = |agent: &mesh_tests::Agent| {
        agent
            .connections()
            .map(|c| c.as_array().map_or(0, Vec::len))
            .unwrap_or(0)
    };
    mesh_tests::sys::wait_until(
        "the load's connections to close",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || Ok(agents.iter().all(|a| carried(a) == 0)),
    )?;
    std::thread::sleep(Duration::from_secs(2));
    rss_mb(agents)
}

/// Sum of both agents' resident memory, in MB.
pub(crate) fn rss_mb(agents: &[mesh_tests::Agent; 2]) -> Result<f64> {
    let mut mb = 0.0;
    for agent in agents {
        mb += mesh_tests::sys::rss_mb(agent.pid().context("agent not running")?)?;
    }
    Ok(mb / agents.len() as f64)
}

const HOLD_PORT: u16 = 7100;

/// Opens `count` idle connections through HBONE and reports the agents' memory per connection.
/// The server side is a separate process: one process cannot hold both ends within the
/// machine's open-file limit.
pub(crate) fn hold_connections(
    client: &Pod,
    server: &Pod,
    agents: &[mesh_tests::Agent; 2],
    count: usize,
) -> Result<Results> {
    let exe = std::env::current_exe()?;
    let _holder = mesh_tests::sys::KillOnDrop(
        server.spawn(Command::new(exe).args(["--hold-server", &HOLD_PORT.to_string()]))?,
    );
    std::thread::sleep(Duration::from_millis(300));
    let idle = rss_mb(agents)?;
    let dst = server.addr(HOLD_PORT);
    let mut held = Vec::with_capacity(count);
    let started = std::time::Instant::now();
    for _ in 0..count {
        let mut stream = client.connect(dst)?;
        // One byte back proves the tunnel reached the holder.
        std::io::Write::write_all(&mut stream, b"x")?;
        let mut one = [0u8; 1];
        std::io::Read::read_exact(&mut stream, &mut one)?;
        held.push(stream);
    }
    eprintln!(
        "bench: {count} HBONE connections open in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(1));
    let loaded = rss_mb(agents)?;
    drop(held);
    let mut r = Results::new();
    r.insert("agent_rss_holding_mb", loaded);
    r.insert(
        "agent_kb_per_idle_connection",
        (loaded - idle) * 1024.0 / count as f64,
    );
    Ok(r)
}

/// Accepts connections and holds them, answering each first byte once.
pub(crate) fn hold_server(port: u16) -> Result<()> {
    let listener = std::net::TcpListener::bind(("::", port))?;
    let mut held = Vec::new();
    for stream in listener.incoming() {
        let mut stream = stream?;
        let mut one = [0u8; 1];
        if std::io::Read::read_exact(&mut stream, &mut one).is_ok() {
            let _ = std::io::Write::write_all(&mut stream, &one);
            held.push(stream);
        }
    }
    Ok(())
}
