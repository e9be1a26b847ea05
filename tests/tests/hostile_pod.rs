//! What a hostile workload can touch, tried against real agents and a real waypoint. Each test
//! is one attack; each failed before its fix. Needs root; run with `cargo xtask test`.
//!
//! - A forged `forwarded` header: a workload holding a certificate of its own speaks HBONE to
//!   the waypoint directly and claims another pod's address. The waypoint must judge it by
//!   what it proved (its identity) and where it really connects from, never by the header.
//! - A pod labelled as the waypoint's (`gateway.networking.k8s.io/gateway-name`): clients
//!   must never pick it as the waypoint, and pods behind the waypoint must not take its
//!   connections as the waypoint's. Only the identity the controller published counts.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use mesh_core::tls;
use mesh_tests::{
    hbone_client,
    l7::{self, L7, PORT, REVIEWS},
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A certificate for `identity`, signed by the mesh CA, as a workload that obtained one for
/// itself would hold.
fn own_certificate(l7: &L7, identity: &str) -> Result<tls::WorkloadCertificate> {
    hbone_client::own_certificate(&l7.controller, identity)
}

/// The status of `GET /` to reviews through a CONNECT sent straight to the waypoint from
/// node n0's network, with `forwarded` as given.
fn direct_request(l7: &L7, cert: &tls::WorkloadCertificate, forwarded: &str) -> Result<u16> {
    let waypoint = l7.tb.pod("n0-p1").addr(mesh_core::hbone::PORT);
    let target = format!("{REVIEWS}:{PORT}");
    match hbone_get(l7, cert, waypoint, &target, forwarded)? {
        Ok(status) => Ok(status),
        Err(connect) => anyhow::bail!("CONNECT answered {connect}"),
    }
}

/// `GET /` through a CONNECT to `target` sent to `hbone` from node n0's network: the inner
/// status, or the CONNECT's own when it was refused.
fn hbone_get(
    l7: &L7,
    cert: &tls::WorkloadCertificate,
    hbone: std::net::SocketAddr,
    target: &str,
    forwarded: &str,
) -> Result<Result<u16, StatusCode>> {
    let target = target.to_owned();
    let node = Path::new("/run/netns").join(&l7.tb.node("n0").netns);
    let tcp = hbone_client::dial(&node, hbone)?;
    let forwarded = forwarded.to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut sender = hbone_client::handshake(tcp, cert).await?;
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri(target)
            .header("forwarded", forwarded)
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        if response.status() != StatusCode::OK {
            return Ok(Err(response.status()));
        }
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
        Ok(Ok(status.parse()?))
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

#[test]
fn a_pod_labelled_as_the_waypoint_is_neither_chosen_nor_trusted() -> Result<()> {
    let l7 = l7::setup()?;
    // n0-p2 (service account "default") claims to be a pod of the namespace's waypoint.
    let hostile = l7.tb.pod("n0-p2");
    l7.tb
        .label_pod("n0-p2", mesh_core::labels::GATEWAY_NAME, Some("waypoint"))?;
    for agent in &l7.agents {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let dump = agent.config_dump()?;
            let labelled = dump["pods"]["pods"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| {
                    p["name"] == hostile.name
                        && p["labels"][mesh_core::labels::GATEWAY_NAME] == "waypoint"
                });
            if labelled {
                break;
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "agent {} never saw the label",
                agent.node
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // Clients go on choosing the real waypoint only: every answer is from reviews (the
    // hostile pod's own server would answer "mirror"). A client's agent picks a waypoint pod
    // per connection, hence a connection per request.
    for _ in 0..12 {
        let (v1, v2) = l7.tally(1, "/", &[])?;
        assert_eq!(v1 + v2, 1);
    }

    // Speaking HBONE to a pod behind the waypoint with its own identity, it is refused as
    // anyone but the waypoint is.
    let own = own_certificate(&l7, "spiffe://cluster.local/ns/default/sa/default")?;
    let reviews = l7.tb.pod("n1-p0");
    let answer = hbone_get(
        &l7,
        &own,
        reviews.addr(mesh_core::hbone::PORT),
        &reviews.addr(PORT).to_string(),
        "",
    )?;
    assert_eq!(
        answer,
        Err(StatusCode::UNAUTHORIZED),
        "a pod behind the waypoint took the labelled pod for the waypoint"
    );
    Ok(())
}
