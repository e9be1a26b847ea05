//! Restarting and upgrading node agents under load loses nothing. A new agent takes the
//! running one's listening sockets over its hand-over socket (as a DaemonSet rollout with
//! surge starts it beside the old one), and the old one drains what it carries. Under a steady
//! load of new connections (HBONE, captured plain outbound, captured plain inbound) and 20 long
//! transfers with checksums, three restarts and one upgrade to a second build fail no
//! connection and reset none. A crash (SIGKILL) fails closed: new connections are refused,
//! never carried around the mesh, until the next agent is ready; their number and the window
//! are reported. Needs root; run with `cargo xtask test`.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use mesh_tests::{
    Agent, AgentOptions, Pod, Testbed, Topology,
    sys::wait_until,
    traffic::{
        checksum_server, echo_round_trip, echo_server, read_greeting, upload_until_and_verify,
    },
};

const ECHO_PORT: u16 = 8080;
const SINK_PORT: u16 = 9090;
/// Pause between one client's connections.
const CHURN_PAUSE: Duration = Duration::from_millis(4);
/// Clients making new connections, per flow (HBONE, plain outbound, plain inbound).
const CHURN_CLIENTS: [usize; 3] = [6, 4, 4];
/// Long transfers send 64 KiB every this: ~650 KB/s each.
const TRANSFER_PAUSE: Duration = Duration::from_millis(100);
/// New connections that must succeed between two restarts (a second or two of load).
const BETWEEN_RESTARTS: usize = 1500;

/// One kind of traffic: who connects where, through which path of the agents.
struct Flow<'a> {
    name: &'static str,
    client: &'a Pod,
    server: &'a Pod,
}

impl Flow<'_> {
    fn echo(&self) -> SocketAddr {
        self.server.addr(ECHO_PORT)
    }

    fn sink(&self) -> SocketAddr {
        self.server.addr(SINK_PORT)
    }
}

/// What happened to the new connections of the load.
#[derive(Default)]
struct Tally {
    carried: AtomicUsize,
    failures: Mutex<Vec<Failure>>,
}

/// A new connection of the load that failed.
struct Failure {
    opened: Instant,
    at: Instant,
    /// Refused at connect: no listener behind the redirect (the kernel held the pod closed).
    refused: bool,
    what: String,
}

impl Tally {
    fn record(&self, flow: &str, opened: Instant, result: Result<()>) {
        let Err(error) = result else {
            self.carried.fetch_add(1, Ordering::SeqCst);
            return;
        };
        let refused = error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused);
        self.failures.lock().unwrap().push(Failure {
            opened,
            at: Instant::now(),
            refused,
            what: format!("{flow}: {error:#}"),
        });
    }

    fn carried(&self) -> usize {
        self.carried.load(Ordering::SeqCst)
    }

    fn failed(&self) -> usize {
        self.failures.lock().unwrap().len()
    }

    /// The first failures, for a report.
    fn errors(&self) -> Vec<String> {
        let failures = self.failures.lock().unwrap();
        failures.iter().take(10).map(|f| f.what.clone()).collect()
    }

    /// Waits until `count` more connections were carried.
    fn wait_carried(&self, count: usize) -> Result<()> {
        let target = self.carried() + count;
        wait_until(
            &format!("{count} more connections carried"),
            Duration::from_secs(60),
            Duration::from_millis(20),
            || Ok(self.carried() >= target),
        )
        .with_context(|| {
            format!(
                "{} carried, {} failed: {:#?}",
                self.carried(),
                self.failed(),
                self.errors()
            )
        })
    }
}

/// What an agent logged that explains a failure (its warnings and steps, not its debug).
fn said(agent: &Agent) -> String {
    let lines: Vec<String> = agent
        .log()
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" INFO ") || l.contains("going away"))
        .filter(|l| !l.contains("mesh_ebpf"))
        .map(str::to_owned)
        .collect();
    format!("--- {}\n{}", agent.log.display(), lines.join("\n"))
}

/// Connects, reads the greeting, echoes 64 bytes, closes; again until `stop`.
fn churn(flow: &Flow, stop: &AtomicBool, tally: &Tally) {
    while !stop.load(Ordering::SeqCst) {
        let opened = Instant::now();
        let round = flow
            .client
            .connect(flow.echo())
            .map_err(anyhow::Error::from)
            .and_then(|mut stream| {
                read_greeting(&mut stream)?;
                echo_round_trip(&mut stream, &[0x5a; 64])
            });
        tally.record(flow.name, opened, round);
        std::thread::sleep(CHURN_PAUSE);
    }
}

/// The second build an upgrade goes to: `cargo xtask test` builds it (the same sources built
/// apart, so another binary) and names it here.
fn upgrade_binary() -> Result<PathBuf> {
    let path = std::env::var_os("AMBIT_MESH_NODE_UPGRADE").context(
        "AMBIT_MESH_NODE_UPGRADE is not set: run this test with `cargo xtask test`, which \
         builds the second mesh-node an upgrade goes to",
    )?;
    let path = PathBuf::from(path);
    ensure!(path.is_file(), "{} does not exist", path.display());
    Ok(path)
}

#[test]
fn restarts_and_an_upgrade_under_load_lose_no_connection() -> Result<()> {
    let upgrade = upgrade_binary()?;
    let tb = Testbed::new(Topology::default())?;
    tb.set_namespace_ambient("default", true)?;
    // Outside the mesh: the plain destination of n0-p1, and a plain client of it.
    tb.set_pod_mode("n1-p1", Some("none"))?;
    // The HBONE server takes mutual TLS only: a connection that went around an agent, or that
    // an agent carried in plaintext, is refused and counted as failed.
    tb.label_pod("n1-p0", "app", Some("hbone-server"))?;
    tb.write_policy(
        "strict",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: strict, namespace: default}\nspec:\n  selector: {matchLabels: {app: hbone-server}}\n  mtls: {mode: STRICT}\n",
    )?;
    let (_controller, agents) = tb.start_mesh(AgentOptions {
        drain_timeout_secs: Some(120),
        ..AgentOptions::default()
    })?;
    let mut agents = Vec::from(agents);
    agents[1].wait_policies(1)?;
    agents[0].wait_enrolled(&tb.pod("n0-p0").key(), true)?;
    agents[0].wait_enrolled(&tb.pod("n0-p1").key(), true)?;
    agents[1].wait_enrolled(&tb.pod("n1-p0").key(), true)?;
    let flows = [
        Flow {
            name: "HBONE",
            client: tb.pod("n0-p0"),
            server: tb.pod("n1-p0"),
        },
        Flow {
            name: "plain outbound",
            client: tb.pod("n0-p1"),
            server: tb.pod("n1-p1"),
        },
        Flow {
            name: "plain inbound",
            client: tb.pod("n1-p1"),
            server: tb.pod("n0-p1"),
        },
    ];
    let mut servers = Vec::new();
    for pod in ["n1-p0", "n1-p1", "n0-p1"] {
        servers.push(echo_server(tb.pod(pod).listen(ECHO_PORT)?)?);
        servers.push(checksum_server(tb.pod(pod).listen(SINK_PORT)?)?);
    }

    let stop = AtomicBool::new(false);
    let tally = Tally::default();
    let mut draining: Vec<Agent> = Vec::new();
    let mut takeovers = Vec::new();
    let started = Instant::now();
    let (transfers, carried, elapsed) = std::thread::scope(|scope| -> Result<_> {
        let churners: Vec<_> = (0..3)
            .flat_map(|i| std::iter::repeat_n(i, CHURN_CLIENTS[i]))
            .map(|i| {
                let (flow, stop, tally) = (&flows[i], &stop, &tally);
                scope.spawn(move || churn(flow, stop, tally))
            })
            .collect();
        let long: Vec<_> = (0..20)
            .map(|i| {
                let (flow, stop) = (&flows[i % 3], &stop);
                scope.spawn(move || -> Result<u64> {
                    let stream = flow.client.connect(flow.sink())?;
                    upload_until_and_verify(stream, stop, TRANSFER_PAUSE)
                        .with_context(|| format!("a long {} transfer", flow.name))
                })
            })
            .collect();
        let restarted = (|| -> Result<()> {
            tally.wait_carried(BETWEEN_RESTARTS)?;
            // Three restarts (the server's node, the client's, the server's again), then the
            // client's node upgraded to the second build.
            for (node, binary) in [
                (1, None),
                (0, None),
                (1, None),
                (0, Some(upgrade.as_path())),
            ] {
                let asked = Instant::now();
                let successor = agents[node].start_successor(binary)?;
                takeovers.push(asked.elapsed());
                // The rollout stops the old agent once the new one is ready; it has stopped
                // accepting already and goes on draining.
                agents[node].terminate()?;
                draining.push(std::mem::replace(&mut agents[node], successor));
                tally.wait_carried(BETWEEN_RESTARTS)?;
            }
            Ok(())
        })();
        let elapsed = started.elapsed();
        let carried = tally.carried();
        stop.store(true, Ordering::SeqCst);
        for churner in churners {
            churner.join().expect("a load thread");
        }
        let transfers: Vec<Result<u64>> = long
            .into_iter()
            .map(|t| t.join().expect("a transfer thread"))
            .collect();
        restarted.with_context(|| {
            agents
                .iter()
                .chain(&draining)
                .map(|a| format!("--- {} ({})\n{}", a.node, a.log.display(), a.log_tail()))
                .collect::<Vec<_>>()
                .join("\n")
        })?;
        Ok((transfers, carried, elapsed))
    })?;

    let rate = carried as f64 / elapsed.as_secs_f64();
    let sent: u64 = transfers.iter().filter_map(|t| t.as_ref().ok()).sum();
    eprintln!(
        "{carried} connections in {elapsed:.1?} ({rate:.0}/s), {} failed; 20 transfers, {} MB; \
         takeovers (start to ready) {takeovers:?}",
        tally.failed(),
        sent / 1_000_000
    );
    ensure!(
        tally.failed() == 0,
        "{} connections failed across the restarts: {:#?}\nwhat the agents said:\n{}",
        tally.failed(),
        tally.errors(),
        agents
            .iter()
            .chain(&draining)
            .map(said)
            .collect::<Vec<_>>()
            .join("\n")
    );
    for transfer in &transfers {
        if let Err(error) = transfer {
            anyhow::bail!("a long transfer broke: {error:#}");
        }
    }
    ensure!(
        rate >= 300.0,
        "too little load: {rate:.0} new connections/s"
    );

    // Every predecessor handed over, drained what it carried to the end, and exited.
    for old in &mut draining {
        old.wait_exit(Duration::from_secs(30))?;
        let log = old.log();
        ensure!(
            log.contains("pods handed over to the successor") && log.contains("drained"),
            "the agent on {} did not hand over and drain:\n{}",
            old.node,
            old.log_tail()
        );
        ensure!(
            !log.contains("drain deadline reached"),
            "{}",
            old.log_tail()
        );
    }
    let upgraded = agents[0].log();
    ensure!(
        upgraded.contains("taking over from the running agent")
            && upgraded.contains("took the pods' listeners over"),
        "{}",
        agents[0].log_tail()
    );

    crash_fails_closed(&tb, &flows[0], &mut agents)
}

/// A SIGKILL leaves the pods captured with no agent: their new connections are refused (the
/// app's connect finds no listener behind the redirect) until the next agent is ready, and
/// none reaches the server in plaintext. Those the killed agent carried break with it.
fn crash_fails_closed(tb: &Testbed, flow: &Flow, agents: &mut [Agent]) -> Result<()> {
    let stop = AtomicBool::new(false);
    let tally = Tally::default();
    let (mut killed, mut restart) = (Instant::now(), Duration::ZERO);
    std::thread::scope(|scope| -> Result<()> {
        let churners: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| churn(flow, &stop, &tally)))
            .collect();
        let crashed = (|| -> Result<()> {
            tally.wait_carried(200)?;
            agents[0].kill()?;
            // Reaped: a connection opened before this could still reach the dying agent's
            // listener (and break with it); one opened after finds no listener at all.
            killed = Instant::now();
            agents[0].start()?;
            restart = killed.elapsed();
            tally.wait_carried(200)
        })();
        stop.store(true, Ordering::SeqCst);
        for churner in churners {
            churner.join().expect("a load thread");
        }
        crashed
    })?;
    let failures = tally.failures.lock().unwrap();
    let refused: Vec<&Failure> = failures.iter().filter(|f| f.refused).collect();
    let cut = failures
        .iter()
        .filter(|f| !f.refused && f.opened < killed)
        .count();
    let other: Vec<&str> = failures
        .iter()
        .filter(|f| !f.refused && f.opened >= killed)
        .map(|f| f.what.as_str())
        .collect();
    let window = match (refused.first(), refused.last()) {
        (Some(first), Some(last)) => last.at - first.at,
        _ => Duration::ZERO,
    };
    eprintln!(
        "SIGKILL: {} new connections refused over {window:.1?} (next agent ready after \
         {restart:.1?}), {cut} carried by the killed agent cut, {} failed otherwise, {} carried",
        refused.len(),
        other.len(),
        tally.carried()
    );
    if !other.is_empty() {
        let _ = std::fs::copy(&agents[0].log, "/tmp/restart-agent.log");
    }
    ensure!(
        other.is_empty(),
        "a connection opened after the crash failed other than refused: {other:#?}\nthe \
         restarted agent said:\n{}",
        said(&agents[0])
    );
    // Nothing reached the server's agent in plaintext: every inbound connection it carried
    // was mutual TLS.
    let plaintext = agents[1].metric_sum(
        "istio_tcp_connections_opened_total",
        &[
            r#"reporter="destination""#,
            r#"connection_security_policy="unknown""#,
        ],
    )?;
    ensure!(
        plaintext == 0.0,
        "{plaintext} plaintext connections reached {}",
        tb.pod("n1-p0").key()
    );
    Ok(())
}
