//! The controller away for more than 30 s, across the moment the agents' certificates are
//! due for renewal, under a steady load of new HBONE connections and one long-lived one:
//! agents keep their last configuration and their still-valid certificates, no connection
//! fails, and once the controller is back they resume its stream and renew (retried with
//! backoff meanwhile). Needs root; run with `cargo xtask test`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, ensure};
use mesh_tests::{
    AgentOptions, Testbed, Topology,
    sys::wait_until,
    traffic::{echo_round_trip, echo_server, read_greeting},
};
use serde_json::Value;

const ECHO_PORT: u16 = 8080;
/// Certificates live 80 s: renewed at 40 s, well after the outage begins and well before
/// they expire even if the retry after it waits out the longest backoff (30 s).
const CERT_LIFETIME: u64 = 80;
const OUTAGE_AT_LEAST: Duration = Duration::from_secs(30);

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The client pod's certificate as its agent shows it: (renew at, not after).
fn certificate(agent: &mesh_tests::Agent, identity: &str) -> Result<Option<(u64, u64)>> {
    let (_, body) = agent.get(15000, "/certs")?;
    let certs: Value = serde_json::from_str(&body)?;
    Ok(certs
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["identity"] == identity)
        .map(|c| {
            (
                c["renew_at_unix"].as_u64().unwrap_or(0),
                c["not_after_unix"].as_u64().unwrap_or(0),
            )
        }))
}

#[test]
fn a_controller_outage_across_renewal_fails_no_connection() -> Result<()> {
    let tb = Testbed::new(Topology::default())?;
    tb.set_namespace_ambient("default", true)?;
    let (client, server) = (tb.pod("n0-p0"), tb.pod("n1-p0"));
    let (controller, agents) = tb.start_mesh(AgentOptions {
        config_from_controller: true,
        cert_lifetime: Some(CERT_LIFETIME),
        ..AgentOptions::default()
    })?;
    agents[0].wait_enrolled(&client.key(), true)?;
    agents[1].wait_enrolled(&server.key(), true)?;
    let _echo = echo_server(server.listen(ECHO_PORT)?)?;
    let dst = server.addr(ECHO_PORT);
    let identity = "spiffe://cluster.local/ns/default/sa/default";
    let mut issued = None;
    wait_until(
        "the client's certificate",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            issued = certificate(&agents[0], identity)?;
            Ok(issued.is_some())
        },
    )?;
    let (renew_at, not_after) = issued.context("no certificate")?;

    let stop = AtomicBool::new(false);
    let (carried, failed) = (AtomicUsize::new(0), Arc::new(AtomicUsize::new(0)));
    std::thread::scope(|scope| -> Result<()> {
        // A long-lived connection, echoing every 200 ms.
        let long = scope.spawn(|| -> Result<usize> {
            let mut held = client.connect(dst)?;
            read_greeting(&mut held)?;
            let mut rounds = 0;
            while !stop.load(Ordering::SeqCst) {
                echo_round_trip(&mut held, b"still here")?;
                rounds += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            Ok(rounds)
        });
        // New connections, one after another.
        let load = scope.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let round = client
                    .connect(dst)
                    .map_err(anyhow::Error::from)
                    .and_then(|mut s| {
                        read_greeting(&mut s)?;
                        echo_round_trip(&mut s, &[5u8; 1024])
                    });
                match round {
                    Ok(()) => carried.fetch_add(1, Ordering::SeqCst),
                    Err(_) => failed.fetch_add(1, Ordering::SeqCst),
                };
                std::thread::sleep(Duration::from_millis(20));
            }
        });

        // The controller goes away until past the renewal time, 30 s at least.
        drop(controller);
        let down_since = std::time::Instant::now();
        let before = carried.load(Ordering::SeqCst);
        let back_at = (renew_at + 5).saturating_sub(now_unix());
        std::thread::sleep(OUTAGE_AT_LEAST.max(Duration::from_secs(back_at)));
        let outage = down_since.elapsed();
        let during = carried.load(Ordering::SeqCst) - before;
        let controller = tb.start_controller()?;
        // Renewed once the controller is back, before the old certificate expires.
        wait_until(
            "the certificate renewed",
            Duration::from_secs(40),
            Duration::from_millis(200),
            || Ok(certificate(&agents[0], identity)?.is_some_and(|(_, after)| after > not_after)),
        )?;
        ensure!(
            now_unix() < not_after,
            "renewed only after the old certificate expired"
        );
        stop.store(true, Ordering::SeqCst);
        let rounds = long.join().expect("the long connection's thread")?;
        load.join().expect("the load's thread");
        let log = std::fs::read_to_string(&agents[0].log)?;
        ensure!(
            log.contains("certificate request failed"),
            "the renewal was not tried during the outage:\n{log}"
        );
        ensure!(
            failed.load(Ordering::SeqCst) == 0,
            "{} of {} connections failed",
            failed.load(Ordering::SeqCst),
            carried.load(Ordering::SeqCst) + failed.load(Ordering::SeqCst)
        );
        ensure!(
            during > 100 && rounds > 100,
            "too little load: {during} connections, {rounds} echoes"
        );
        eprintln!(
            "outage {:.1} s: {} connections carried ({during} while the controller was away), 0 failed; the long one echoed {rounds} times",
            outage.as_secs_f64(),
            carried.load(Ordering::SeqCst)
        );
        drop(controller);
        Ok(())
    })
}
