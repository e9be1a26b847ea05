//! What a hostile workload can touch, tried against real agents and a real waypoint. Each test
//! is one attack; each failed before its fix. Needs root; run with `cargo xtask test`.
//!
//! - A forged `forwarded` header: a workload holding a certificate of its own speaks HBONE to
//!   the waypoint directly and claims another pod's address. The waypoint must judge it by
//!   what it proved (its identity) and where it really connects from, never by the header.

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_controller::ca::CertificateAuthority;
use mesh_core::{Identity, tls};
use mesh_tests::{
    l7::{self, L7, PORT, REVIEWS},
    sys,
};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A certificate for `identity`, signed by the mesh CA, as a workload that obtained one for
/// itself would hold.
fn own_certificate(l7: &L7, identity: &str) -> Result<tls::WorkloadCertificate> {
    let dir = l7.controller.root.parent().context("CA directory")?;
    let ca = CertificateAuthority::load_or_create(dir, "cluster.local")?;
    let identity: Identity = identity.parse()?;
    let (key, csr) = tls::certificate_request(&identity)?;
    let chain = ca.sign(&csr, &identity, Duration::from_secs(600))?;
    Ok(tls::workload_certificate(&identity, key, chain)?)
}

/// The status of `GET /` to reviews through a CONNECT sent straight to the waypoint from
/// node n0's network, with `forwarded` as given.
fn direct_request(l7: &L7, cert: &tls::WorkloadCertificate, forwarded: &str) -> Result<u16> {
    let waypoint = l7.tb.pod("n0-p1").addr(mesh_core::hbone::PORT);
    let node = Path::new("/run/netns").join(&l7.tb.node("n0").netns);
    let tcp = sys::in_netns(&node, || {
        std::net::TcpStream::connect_timeout(&waypoint, Duration::from_secs(5))
    })??;
    tcp.set_nonblocking(true)?;
    let config = Arc::new(tls::client_config(cert)?);
    let forwarded = forwarded.to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let tcp = tokio::net::TcpStream::from_std(tcp)?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::IpAddress(waypoint.ip().into()), tcp)
            .await?;
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
        tokio::spawn(connection);
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri(format!("{REVIEWS}:{PORT}"))
            .header("forwarded", forwarded)
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        anyhow::ensure!(response.status() == StatusCode::OK, "{}", response.status());
        let mut tunnel = TokioIo::new(hyper::upgrade::on(response).await?);
        tunnel
            .write_all(b"GET / HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n")
            .await?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n") {
            tunnel.read_exact(&mut byte).await?;
            head.push(byte[0]);
        }
        let line = String::from_utf8_lossy(&head);
        let status = line.split_whitespace().nth(1).context("status line")?;
        Ok(status.parse()?)
    })
}

#[test]
fn a_forged_forwarded_header_changes_no_policy() -> Result<()> {
    let l7 = l7::setup()?;
    let trusted = l7.tb.pod("n0-p0").ip;
    l7.write(
        "authz",
        &format!(
            r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: only-the-client-pod, namespace: default}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
  action: ALLOW
  rules: [{{from: [{{source: {{ipBlocks: ["{trusted}/32"]}}}}]}}]
"#
        ),
    )?;
    // The pod the policy names is served, through its agent (which forwards its address).
    let mut client = l7.client(REVIEWS, "reviews")?;
    assert_eq!(client.get("/", &[])?.status, 200);

    // Another identity, claiming the trusted pod's address, is judged by where it is.
    let hostile = own_certificate(&l7, "spiffe://cluster.local/ns/default/sa/hostile")?;
    let status = direct_request(&l7, &hostile, &format!("for=\"{trusted}:40000\""))?;
    assert_eq!(
        status, 403,
        "a forged forwarded address passed an ipBlocks ALLOW"
    );
    let (_, metrics) = l7.waypoint.get(15020, "/metrics")?;
    assert!(
        metrics.contains("ambit_waypoint_forwarded_distrusted_total 1"),
        "{metrics}"
    );
    Ok(())
}
