//! The controller's serving certificate: renewed in place at half its life while agents stay
//! connected, verifiable by host name as standard clients (ztunnel's CA client, curl) verify
//! it, and with an empty subject as Istio's certificates have. Needs root; run with
//! `cargo xtask test`.

use std::{
    collections::BTreeSet,
    net::TcpStream,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use mesh_tests::{AgentOptions, Testbed, Topology, controller::CA_ADDR};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};

/// Four seconds: renewed every two.
const LIFETIME_SECS: &str = "4";

/// The leaf the controller serves now, to a client that verifies it against the mesh root
/// by the Service's host name (as any standard TLS client would).
fn served_leaf(root: &CertificateDer<'static>, from: &std::path::Path) -> Result<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone())?;
    let mut config = rustls::ClientConfig::builder_with_provider(mesh_core::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from("ambit-controller.ambit-system.svc")?;
    let mut tls = rustls::ClientConnection::new(Arc::new(config), name)?;
    let mut tcp = mesh_tests::sys::in_netns(from, || {
        TcpStream::connect_timeout(
            &CA_ADDR.parse().expect("an address"),
            Duration::from_secs(5),
        )
    })??;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp)
            .context("the handshake, verifying the controller by host name")?;
    }
    let leaf = tls
        .peer_certificates()
        .and_then(|chain| chain.first())
        .context("no certificate")?;
    Ok(leaf.to_vec())
}

#[test]
fn the_serving_certificate_is_renewed_in_place_and_verifiable_by_name() -> Result<()> {
    // SAFETY: set before this test (the only one in its binary) starts any thread; the
    // controller it starts inherits it.
    unsafe { std::env::set_var("AMBIT_SERVING_CERT_LIFETIME", LIFETIME_SECS) };
    let tb = Testbed::new(Topology::default())?;
    let (controller, agents) = tb.start_mesh(AgentOptions {
        config_from_controller: true,
        ..AgentOptions::default()
    })?;
    let root = CertificateDer::from_pem_file(&controller.root)?;
    let node = std::path::Path::new("/run/netns").join(&tb.node("n0").netns);

    let first = served_leaf(&root, &node)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&first)?;
    assert_eq!(
        parsed.subject().iter().count(),
        0,
        "subject {}",
        parsed.subject()
    );
    let san = parsed
        .subject_alternative_name()?
        .context("no subjectAltName")?;
    assert!(
        san.critical,
        "with an empty subject the SANs must be critical"
    );
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.contains("spiffe://cluster.local/ns/ambit-system/sa/ambit-controller")),
        "{names:?}"
    );

    // Renewed at half-life, more than once: by the end the first certificate has expired.
    let started = Instant::now();
    let mut seen = BTreeSet::from([first]);
    while seen.len() < 4 {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("only {} serving certificates in 30 s", seen.len());
        }
        seen.insert(served_leaf(&root, &node)?);
        std::thread::sleep(Duration::from_millis(200));
    }

    // The agents' streams lived through it: a policy written now reaches both.
    tb.write_policy(
        "after-renewal",
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: deny-legacy, namespace: default }
spec:
  action: DENY
  rules: [{ from: [{ source: { namespaces: ["legacy"] } }] }]
"#,
    )?;
    for agent in &agents {
        agent.wait_policies(1)?;
    }
    Ok(())
}
