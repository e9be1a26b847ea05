//! Identity failures at the agents: clients with a certificate from another root, of another
//! trust domain, or expired are refused by the server's agent; a server presenting another
//! identity than the destination's is refused by the client's agent. Each leaves a log line
//! and a metric. Needs root; run with `cargo xtask test`.

use std::{
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Result;
use mesh_controller::ca::CertificateAuthority;
use mesh_core::{
    Identity,
    tls::{self, WorkloadCertificate, certificate_request, workload_certificate},
};
use mesh_tests::{
    AgentOptions, Pod, Testbed, Topology,
    traffic::{echo_server, read_greeting},
};
use rustls::pki_types::ServerName;

fn issue(
    ca: &CertificateAuthority,
    identity: &Identity,
    valid: Option<(SystemTime, SystemTime)>,
) -> WorkloadCertificate {
    let (key, csr) = certificate_request(identity).unwrap();
    let chain = match valid {
        Some((from, to)) => ca.sign_valid_between(&csr, identity, from, to).unwrap(),
        None => ca.sign(&csr, identity, Duration::from_secs(3600)).unwrap(),
    };
    workload_certificate(identity, key, chain).unwrap()
}

/// A TLS handshake from inside `from` to `to`'s HBONE port with `cert`, trusting `roots`.
fn handshake(from: &Pod, to: SocketAddr, cert: &WorkloadCertificate) -> Result<(), String> {
    let tcp = from
        .enter(|| TcpStream::connect_timeout(&to, Duration::from_secs(3)))
        .unwrap()
        .map_err(|e| e.to_string())?;
    let config = Arc::new(tls::client_config(cert).map_err(|e| e.to_string())?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        tcp.set_nonblocking(true).unwrap();
        let tcp = tokio::net::TcpStream::from_std(tcp).unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::IpAddress(to.ip().into()), tcp)
            .await
            .map_err(|e| e.to_string())?;
        // TLS 1.3 clients learn of a rejected certificate on their first read.
        use tokio::io::AsyncReadExt as _;
        let mut byte = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(2), tls.read(&mut byte)).await {
            Ok(Ok(0)) => Err("closed".to_owned()),
            Ok(Err(e)) => Err(e.to_string()),
            _ => Ok(()),
        }
    })
}

#[test]
fn the_server_agent_refuses_foreign_roots_domains_and_expired_certificates() -> Result<()> {
    let tb = Testbed::new(Topology::default())?;
    let controller = tb.start_controller()?;
    tb.set_pod_mode("n1-p0", Some("ambient"))?;
    let options = AgentOptions {
        ca_root: Some(controller.root.clone()),
        ..AgentOptions::default()
    };
    let agent = tb.start_agent("n1", &options)?;
    agent.wait_enrolled(&tb.pod("n1-p0").key(), true)?;
    let (from, hbone) = (
        tb.pod("n0-p0"),
        SocketAddr::new(tb.pod("n1-p0").ip.into(), 15008),
    );

    let ca_dir = controller.root.parent().unwrap();
    let mesh_ca = CertificateAuthority::load_or_create(ca_dir, "cluster.local")?;
    let client: Identity = "spiffe://cluster.local/ns/default/sa/default".parse()?;
    // The control: a good certificate gets through, so the refusals below mean something.
    handshake(from, hbone, &issue(&mesh_ca, &client, None)).map_err(anyhow::Error::msg)?;

    let refused = || {
        agent
            .metric_sum(
                "istio_tcp_connections_failed_total",
                &["response_flags=\"UAEX\""],
            )
            .unwrap()
    };
    let mut count = refused();
    let other_root = CertificateAuthority::generate("cluster.local")?;
    let now = SystemTime::now();
    let cases = [
        ("another root", issue(&other_root, &client, None)),
        (
            "another trust domain",
            issue(
                &CertificateAuthority::load_or_create(ca_dir, "evil.example")?,
                &"spiffe://evil.example/ns/default/sa/default".parse()?,
                None,
            ),
        ),
        (
            "expired",
            issue(
                &mesh_ca,
                &client,
                Some((
                    now - Duration::from_secs(7200),
                    now - Duration::from_secs(3600),
                )),
            ),
        ),
    ];
    for (what, cert) in cases {
        assert!(handshake(from, hbone, &cert).is_err(), "{what}: accepted");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while refused() <= count && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(25));
        }
        assert!(refused() > count, "{what}: not counted");
        count = refused();
    }
    let log = agent.log();
    assert!(log.contains("HBONE connection refused"), "{log}");
    Ok(())
}

#[test]
fn the_client_agent_refuses_a_server_with_another_identity() -> Result<()> {
    let tb = Testbed::new(Topology::default())?;
    let controller = tb.start_controller()?;
    tb.set_pod_mode("n0-p0", Some("ambient"))?;
    tb.set_pod_mode("n1-p0", Some("ambient"))?;
    let options = AgentOptions {
        ca_root: Some(controller.root.clone()),
        ..AgentOptions::default()
    };
    // Only the client's node runs an agent: the test plays a rogue server on n1-p0's 15008
    // with a genuine certificate of the mesh, for the wrong identity.
    let agent = tb.start_agent("n0", &options)?;
    agent.wait_enrolled(&tb.pod("n0-p0").key(), true)?;
    let server = tb.pod("n1-p0");
    let mesh_ca =
        CertificateAuthority::load_or_create(controller.root.parent().unwrap(), "cluster.local")?;
    let rogue = issue(
        &mesh_ca,
        &"spiffe://cluster.local/ns/default/sa/rogue".parse()?,
        None,
    );
    let listener = server.listen(15008)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(&rogue)?));
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        drop(tls);
                    }
                });
            }
        });
    });
    let _echo = echo_server(server.listen(8080)?)?;
    let mut stream = tb.pod("n0-p0").connect(server.addr(8080))?;
    assert!(
        read_greeting(&mut stream).is_err(),
        "the app reached a server that is not who it should be"
    );
    let log = agent.log();
    assert!(
        log.contains("sa/rogue") && log.contains("not the expected"),
        "{log}"
    );
    assert!(
        agent.metric_sum(
            "istio_tcp_connections_failed_total",
            &["response_flags=\"UF\""]
        )? >= 1.0
    );
    Ok(())
}
