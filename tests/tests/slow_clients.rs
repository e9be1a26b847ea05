//! Silent clients against every listener a hostile pod can reach: the node agents' HBONE port
//! (15008), the waypoint's, the controller's certificate and configuration port (15012) and a
//! public ingress. Each silent connection is closed once the handshake deadline passes, and
//! meanwhile everyone else is served. (Before, each such connection held a task and a socket
//! for as long as the client liked.) Needs root; run with `cargo xtask test`.

use std::{
    io::Read as _,
    net::{SocketAddr, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use mesh_tests::{
    http::HttpClient,
    l7::{self, REVIEWS},
    sys,
};

/// The deadline the processes of this test run with (the default is 10 s).
const HANDSHAKE_SECS: &str = "2";
const SILENT_PER_LISTENER: usize = 20;

const INGRESS_POD: &str = "n0-p2";
const INGRESS: &str = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
"#;

fn silent(from: &Path, to: SocketAddr) -> Result<Vec<TcpStream>> {
    (0..SILENT_PER_LISTENER)
        .map(|_| {
            let stream = sys::in_netns(from, || {
                TcpStream::connect_timeout(&to, Duration::from_secs(5))
            })??;
            stream.set_read_timeout(Some(Duration::from_secs(30)))?;
            Ok(stream)
        })
        .collect()
}

/// Waits until the server has closed every stream (EOF or reset), returning how long it took.
fn closed(streams: Vec<TcpStream>, what: &str) -> Result<Duration> {
    let started = Instant::now();
    for mut stream in streams {
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Ok(_) => anyhow::bail!("{what}: the server sent data to a silent client"),
            Err(e) => anyhow::bail!("{what}: a silent connection was not closed: {e}"),
        }
    }
    Ok(started.elapsed())
}

#[test]
fn silent_connections_are_closed_while_others_are_served() -> Result<()> {
    // SAFETY: set before this test (the only one in its binary) starts any thread; every
    // process it starts inherits it.
    unsafe { std::env::set_var("AMBIT_HANDSHAKE_TIMEOUT_SECS", HANDSHAKE_SECS) };
    let l7 = l7::setup()?;
    l7.tb.set_service_account(INGRESS_POD, "ingress")?;
    // The ingress pod is out of the mesh: its agent must not hold its ports.
    l7.tb.set_pod_mode(INGRESS_POD, Some("none"))?;
    l7.agents[0].wait_enrolled(&l7.tb.pod(INGRESS_POD).key(), false)?;
    l7.write("public", INGRESS)?;
    let ingress = l7
        .tb
        .start_ingress(&l7.controller, INGRESS_POD, "default/public", "ingress")?;

    let node = Path::new("/run/netns").join(&l7.tb.node("n0").netns);
    let controller: SocketAddr = mesh_tests::controller::CA_ADDR.parse()?;
    let targets = [
        ("node agent HBONE", l7.tb.pod("n1-p0").addr(15008)),
        ("waypoint HBONE", l7.tb.pod("n0-p1").addr(15008)),
        ("controller", controller),
        ("ingress", l7.tb.pod(INGRESS_POD).addr(8080)),
    ];
    let started = Instant::now();
    let held: Vec<(&str, Vec<TcpStream>)> = targets
        .iter()
        .map(|(what, addr)| Ok((*what, silent(&node, *addr).context(*what)?)))
        .collect::<Result<_>>()?;

    // While they wait: a request through both agents and the waypoint, a configuration change
    // reaching the waypoint over the controller's port, and the ingress answering.
    let mut client = l7.client(REVIEWS, "reviews")?;
    assert_eq!(client.get("/", &[])?.status, 200);
    l7.write(
        "mirror-rule",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: mirror, namespace: default}\nspec: {host: mirror}\n",
    )?;
    let ingress_addr = l7.tb.pod(INGRESS_POD).addr(8080);
    let mut public = HttpClient::connect(l7.tb.pod("n1-p2"), ingress_addr, "shop.example.com")?;
    let status = public.get("/", &[])?.status;
    ensure!(
        status == 404,
        "the ingress answered {status}\n{}",
        ingress.log()
    );

    for (what, streams) in held {
        let waited = closed(streams, what)?;
        println!(
            "{what}: silent connections closed after {:.1} s",
            (started.elapsed()).as_secs_f64()
        );
        // Generous: the deadline is 2 s; this only tells "closed by the deadline" from
        // "closed by something else much later".
        ensure!(
            started.elapsed() < Duration::from_secs(20),
            "{what}: silent connections lasted {:?} (the last {waited:?})",
            started.elapsed()
        );
    }
    Ok(())
}
