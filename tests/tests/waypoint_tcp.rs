//! TCP through a waypoint, on the test bed: what is not HTTP is carried as TCP, to the
//! service's endpoints or as the VirtualService's `tls` (by SNI) and `tcp` routes say.
//! Needs root; run with `cargo xtask test`.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::SocketAddr,
    time::Duration,
};

use anyhow::{Context as _, Result};
use mesh_tests::{
    l7::setup,
    traffic::{echo_round_trip, echo_server, read_greeting, serve},
};

/// What is not HTTP is carried as TCP through the waypoint: here a protocol where the server
/// speaks first (the echo server greets), which the waypoint recognises by the client's
/// silence.
#[test]
fn tcp_passes_through_the_waypoint() -> Result<()> {
    let l7 = setup()?;
    let server = l7.tb.pod("n1-p2");
    let _echo = echo_server(server.listen(7000)?)?;
    let mut stream = l7.tb.pod("n0-p0").connect(server.addr(7000))?;
    read_greeting(&mut stream)?;
    echo_round_trip(&mut stream, b"not HTTP at all \x00\x01")?;
    let log = l7.waypoint.log();
    assert!(
        log.contains("TCP through the waypoint") && log.contains("\"sniffed\""),
        "{log}"
    );

    // A service port declared TCP (Istio's `appProtocol` or a `tcp-` name) is carried at
    // once: the server's greeting does not wait for the client's bytes to be sniffed.
    l7.write(
        "echo",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: echo, namespace: default}}\nspec: {{clusterIP: {ECHO_VIP}, selector: {{app: flaky}}, ports: [{{name: tcp-echo, port: 7000}}]}}\n"
        ),
    )?;
    let mut stream = l7
        .tb
        .pod("n0-p0")
        .connect(std::net::SocketAddr::new(ECHO_VIP.parse()?, 7000))?;
    read_greeting(&mut stream)?;
    echo_round_trip(&mut stream, b"declared")?;
    let log = l7.waypoint.log();
    assert!(log.contains("\"declared\""), "{log}");
    Ok(())
}

const ECHO_VIP: &str = "10.96.0.14";

const SHIFT_VIP: &str = "10.96.0.15";

/// Istio's TCP traffic shifting through the waypoint: a `tcp` route sends every connection
/// to v1, then 80 % to v1 and 20 % to v2.
#[test]
fn tcp_routes_shift_connections_between_versions() -> Result<()> {
    let l7 = setup()?;
    let mut servers = Vec::new();
    for (pod, version) in [("n1-p0", "v1"), ("n1-p1", "v2")] {
        // Greets with its version, then echoes.
        servers.push(serve(
            l7.tb.pod(pod).listen(7000)?,
            move |mut stream, _| {
                writeln!(stream, "{version}")?;
                std::io::copy(&mut stream.try_clone()?, &mut stream).map(drop)
            },
        )?);
    }
    let shift = |v1: u32, v2: u32| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: tcp-echo, namespace: default}}\nspec: {{clusterIP: {SHIFT_VIP}, selector: {{app: reviews}}, ports: [{{name: tcp, port: 7000}}]}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: tcp-echo, namespace: default}}\nspec:\n  host: tcp-echo\n  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]\n---\n\
             apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: tcp-echo, namespace: default}}\nspec:\n  hosts: [tcp-echo]\n  tcp:\n  - match: [{{port: 7000}}]\n    route:\n    - {{destination: {{host: tcp-echo, subset: v1}}, weight: {v1}}}\n    - {{destination: {{host: tcp-echo, subset: v2}}, weight: {v2}}}\n"
        )
    };
    let vip = SocketAddr::new(SHIFT_VIP.parse()?, 7000);
    let version = || -> Result<String> {
        let stream = l7.tb.pod("n0-p0").connect(vip)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut line = String::new();
        BufReader::new(stream)
            .read_line(&mut line)
            .context("reading the greeting through the waypoint")?;
        Ok(line.trim().to_owned())
    };

    l7.write("tcp-echo", &shift(100, 0))?;
    for _ in 0..10 {
        assert_eq!(version()?, "v1");
    }
    l7.write("tcp-echo", &shift(80, 20))?;
    let mut v2 = 0;
    for _ in 0..200 {
        match version()?.as_str() {
            "v1" => {}
            "v2" => v2 += 1,
            other => anyhow::bail!("greeted by {other:?}"),
        }
    }
    // 20 % of 200 is 40 (sd 5.7): outside 15..=70 once in about 100,000 runs.
    assert!((15..=70).contains(&v2), "v2 took {v2} of 200 connections");
    let log = l7.waypoint.log();
    assert!(log.contains("TCP route"), "{log}");
    Ok(())
}

const TLS_VIP: &str = "10.96.0.16";

/// Istio's TLS routing by SNI through the waypoint, without terminating the TLS: a ClientHello
/// naming v2.example.com goes to v2; another name falls to the `tcp` route (v1).
#[test]
fn tls_routes_choose_by_server_name() -> Result<()> {
    let l7 = setup()?;
    let mut servers = Vec::new();
    for (pod, version) in [("n1-p0", "v1"), ("n1-p1", "v2")] {
        // Answers the first bytes (the ClientHello) with its version.
        servers.push(serve(
            l7.tb.pod(pod).listen(8443)?,
            move |mut stream, _| {
                let mut hello = [0; 4096];
                let _ = stream.read(&mut hello)?;
                writeln!(stream, "{version}")
            },
        )?);
    }
    l7.write(
        "tls-echo",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: tls-echo, namespace: default}}\nspec: {{clusterIP: {TLS_VIP}, selector: {{app: reviews}}, ports: [{{name: tls, port: 8443}}]}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: tls-echo, namespace: default}}\nspec:\n  host: tls-echo\n  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]\n---\n\
             apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: tls-echo, namespace: default}}\nspec:\n  hosts: [tls-echo]\n  tls:\n  - match: [{{sniHosts: [v2.example.com], port: 8443}}]\n    route: [{{destination: {{host: tls-echo, subset: v2}}}}]\n  tcp:\n  - route: [{{destination: {{host: tls-echo, subset: v1}}}}]\n"
        ),
    )?;
    let vip = SocketAddr::new(TLS_VIP.parse()?, 8443);
    let answer = |server_name: &str| -> Result<String> {
        let mut stream = l7.tb.pod("n0-p0").connect(vip)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(&client_hello(server_name)?)?;
        let mut line = String::new();
        BufReader::new(stream)
            .read_line(&mut line)
            .with_context(|| format!("the answer to a ClientHello for {server_name}"))?;
        Ok(line.trim().to_owned())
    };
    for _ in 0..10 {
        assert_eq!(answer("v2.example.com")?, "v2");
        assert_eq!(answer("other.example.com")?, "v1");
    }
    Ok(())
}

/// A real client's first flight for `server_name`.
fn client_hello(server_name: &str) -> Result<Vec<u8>> {
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())?;
    let mut client = rustls::ClientConnection::new(std::sync::Arc::new(config), name)?;
    let mut hello = Vec::new();
    client.write_tls(&mut hello)?;
    Ok(hello)
}
