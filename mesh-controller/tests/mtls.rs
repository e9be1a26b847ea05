//! Certificates from the CA, used for real TLS 1.3 handshakes (in memory): who is accepted,
//! who is refused, and what identity each side sees.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use mesh_controller::ca::{CertificateAuthority, DEFAULT_LIFETIME, Error};
use mesh_core::{
    Identity,
    tls::{self, WorkloadCertificate, certificate_request, identity_of, workload_certificate},
};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn id(uri: &str) -> Identity {
    uri.parse().unwrap()
}

fn issue(ca: &CertificateAuthority, identity: &Identity) -> WorkloadCertificate {
    let (key, csr) = certificate_request(identity).unwrap();
    let chain = ca.sign(&csr, identity, DEFAULT_LIFETIME).unwrap();
    workload_certificate(identity, key, chain).unwrap()
}

/// Handshakes `client` against `server`; returns the identity each saw of the other.
async fn handshake(
    client: &WorkloadCertificate,
    server: &WorkloadCertificate,
) -> Result<(Identity, Identity), String> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls::client_config(client).unwrap()));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(server).unwrap()));
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server_side = tokio::spawn(async move {
        let mut stream = acceptor.accept(b).await.map_err(|e| e.to_string())?;
        let peer = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned()
            .ok_or("no client cert")?;
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut byte = [0u8; 1];
        stream
            .read_exact(&mut byte)
            .await
            .map_err(|e| e.to_string())?;
        identity_of(&peer).map_err(|e| e.to_string())
    });
    let name = ServerName::IpAddress(std::net::Ipv4Addr::new(10, 0, 0, 2).into());
    let client_result = async {
        let mut stream = connector
            .connect(name, a)
            .await
            .map_err(|e| e.to_string())?;
        let peer = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned()
            .ok_or("no server cert")?;
        stream.write_all(b"x").await.map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        identity_of(&peer).map_err(|e| e.to_string())
    }
    .await;
    let server_result = server_side.await.unwrap();
    match (client_result, server_result) {
        (Ok(c), Ok(s)) => Ok((c, s)),
        (c, s) => Err(format!("client: {c:?}; server: {s:?}")),
    }
}

#[tokio::test]
async fn workloads_of_one_mesh_see_each_others_identity() {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let (a, b) = (
        id("spiffe://cluster.local/ns/shop/sa/web"),
        id("spiffe://cluster.local/ns/shop/sa/db"),
    );
    let (client, server) = (issue(&ca, &a), issue(&ca, &b));
    let (seen_by_client, seen_by_server) = handshake(&client, &server).await.unwrap();
    assert_eq!(seen_by_client, b);
    assert_eq!(seen_by_server, a);
    let life = client.not_after.duration_since(client.not_before).unwrap();
    assert_eq!(client.renew_at(), client.not_before + life / 2);
    assert!(life >= DEFAULT_LIFETIME);
}

#[tokio::test]
async fn a_certificate_from_another_root_is_refused() {
    let ours = CertificateAuthority::generate("cluster.local").unwrap();
    let theirs = CertificateAuthority::generate("cluster.local").unwrap();
    let server = issue(&ours, &id("spiffe://cluster.local/ns/shop/sa/db"));
    let intruder = issue(&theirs, &id("spiffe://cluster.local/ns/shop/sa/web"));
    let err = handshake(&intruder, &server).await.unwrap_err();
    assert!(
        err.contains("BadSignature") || err.contains("UnknownIssuer"),
        "{err}"
    );
}

#[tokio::test]
async fn a_client_of_another_trust_domain_is_refused_even_with_our_root() {
    let dir = std::env::temp_dir().join(format!("ambit-ca-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ours = CertificateAuthority::load_or_create(&dir, "cluster.local").unwrap();
    // The same root key speaking for another trust domain (a federated or misconfigured CA).
    let other = CertificateAuthority::load_or_create(&dir, "evil.example").unwrap();
    assert_eq!(ours.root(), other.root(), "reloaded the same root");
    let server = issue(&ours, &id("spiffe://cluster.local/ns/shop/sa/db"));
    let foreign = issue(&other, &id("spiffe://evil.example/ns/shop/sa/web"));
    assert!(handshake(&foreign, &server).await.is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let server = issue(&ca, &id("spiffe://cluster.local/ns/shop/sa/db"));
    let identity = id("spiffe://cluster.local/ns/shop/sa/web");
    let (key, csr) = certificate_request(&identity).unwrap();
    let now = SystemTime::now();
    let chain = ca
        .sign_valid_between(
            &csr,
            &identity,
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .unwrap();
    let expired = workload_certificate(&identity, key, chain).unwrap();
    assert!(expired.is_expired(now));
    let err = handshake(&expired, &server).await.unwrap_err();
    assert!(!err.is_empty());
}

#[test]
fn the_ca_signs_only_what_the_caller_is() {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let asked = id("spiffe://cluster.local/ns/shop/sa/admin");
    let (_, csr) = certificate_request(&asked).unwrap();
    let caller = id("spiffe://cluster.local/ns/shop/sa/web");
    assert!(matches!(
        ca.sign(&csr, &caller, DEFAULT_LIFETIME),
        Err(Error::IdentityMismatch { .. })
    ));
    let foreign = id("spiffe://other.domain/ns/shop/sa/web");
    let (_, csr) = certificate_request(&foreign).unwrap();
    assert!(matches!(
        ca.sign(&csr, &foreign, DEFAULT_LIFETIME),
        Err(Error::ForeignTrustDomain { .. })
    ));
    assert!(matches!(
        ca.sign(b"not a csr", &caller, DEFAULT_LIFETIME),
        Err(Error::BadRequest(_))
    ));
}

#[test]
fn the_root_survives_a_restart() {
    let dir = std::env::temp_dir().join(format!("ambit-ca-root-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let first = CertificateAuthority::load_or_create(&dir, "cluster.local").unwrap();
    let second = CertificateAuthority::load_or_create(&dir, "cluster.local").unwrap();
    assert_eq!(first.root(), second.root());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("root-key.pem"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o077, 0, "root key readable by others");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The rotation's three steps as bundles: the old root signing with both trusted, the new one
/// signing with both trusted, the new one alone. Certificates of any two adjacent steps accept
/// each other; the first and last do not (which is why the middle step exists).
#[tokio::test]
async fn a_root_rotation_keeps_adjacent_steps_talking() {
    let (old, new) = (
        CertificateAuthority::generate("cluster.local").unwrap(),
        CertificateAuthority::generate("cluster.local").unwrap(),
    );
    let bundle = |first: &CertificateAuthority, rest: &[&CertificateAuthority]| {
        let mut pem = first.bundle_pem().to_owned();
        for ca in rest {
            pem.push_str(ca.bundle_pem());
        }
        CertificateAuthority::from_pem(pem, &first.key_pem(), "cluster.local", "test").unwrap()
    };
    let steps = [
        bundle(&old, &[]),
        bundle(&old, &[&new]),
        bundle(&new, &[&old]),
        bundle(&new, &[]),
    ];
    let (a, b) = (
        id("spiffe://cluster.local/ns/a/sa/a"),
        id("spiffe://cluster.local/ns/b/sa/b"),
    );
    let certs: Vec<_> = steps
        .iter()
        .map(|ca| (issue(ca, &a), issue(ca, &b)))
        .collect();
    assert_eq!(
        certs[1].0.roots.len(),
        2,
        "both roots arrive with the certificate"
    );
    assert_eq!(
        certs[1].0.chain.len(),
        1,
        "roots are not presented as intermediates"
    );
    for step in 1..steps.len() {
        let (earlier, later) = (&certs[step - 1], &certs[step]);
        handshake(&earlier.0, &later.1).await.unwrap();
        handshake(&later.0, &earlier.1).await.unwrap();
    }
    assert!(handshake(&certs[0].0, &certs[3].1).await.is_err());
}

#[test]
fn a_bundle_whose_first_root_is_not_the_key_s_is_refused() {
    let (old, new) = (
        CertificateAuthority::generate("cluster.local").unwrap(),
        CertificateAuthority::generate("cluster.local").unwrap(),
    );
    // The new key with the old root first: it would sign what no peer can verify.
    let pem = format!("{}{}", old.bundle_pem(), new.bundle_pem());
    let refused = CertificateAuthority::from_pem(pem, &new.key_pem(), "cluster.local", "dir");
    assert!(matches!(refused, Err(Error::KeyMismatch { .. })));
}

#[test]
fn a_bundle_entry_that_is_not_a_root_is_refused() {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let leaf = issue(&ca, &id("spiffe://cluster.local/ns/a/sa/a"));
    let leaf_pem = pem::encode(&pem::Pem::new("CERTIFICATE", leaf.chain[0].to_vec()));
    let bundle = format!("{}{leaf_pem}", ca.bundle_pem());
    let refused = CertificateAuthority::from_pem(bundle, &ca.key_pem(), "cluster.local", "dir");
    assert!(matches!(refused, Err(Error::NotARoot { .. })));
}
