//! The certificate service end to end on loopback: gRPC over TLS, bearer tokens, and the rule
//! that a node only gets identities of pods it runs.

use std::{sync::Arc, time::Duration};

use mesh_controller::{
    ca::CertificateAuthority,
    ca_service::{CaService, LocalAuthorizer},
    serve,
};
use mesh_core::{
    Identity,
    ca_client::{CaClient, Token, TrustRoots},
    pb::istio_certificate_service_server::IstioCertificateServiceServer,
};

struct Fixture {
    addr: std::net::SocketAddr,
    root: rustls::pki_types::CertificateDer<'static>,
    dir: std::path::PathBuf,
}

async fn start() -> Fixture {
    let dir = std::env::temp_dir().join(format!(
        "ambit-ca-service-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tokens"), "n0: token-of-n0\nn1: \"token-of-n1\"\n").unwrap();
    std::fs::write(
        dir.join("pods.yaml"),
        "pods:\n  - { name: web, namespace: shop, node: n0, serviceAccount: web, ip: 10.0.0.2, netns: /x }\n  - { name: db, namespace: shop, node: n1, serviceAccount: db, ip: 10.0.1.2, netns: /y }\n",
    )
    .unwrap();
    let ca = mesh_controller::ca::fixed(CertificateAuthority::generate("cluster.local").unwrap());
    let identity = Identity::controller("cluster.local").unwrap();
    let (chain, key) =
        serve::issue_serving(&ca.borrow(), &identity, &[], Duration::from_secs(3600)).unwrap();
    let serving = Arc::new(serve::ServingCert::new(chain, key).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = CaService {
        ca: ca.clone(),
        authorizer: Arc::new(LocalAuthorizer {
            tokens_file: dir.join("tokens"),
            pods_file: dir.join("pods.yaml"),
        }),
        max_lifetime: Duration::from_secs(24 * 3600),
        answered: Default::default(),
    };
    let config = Arc::new(serve::server_config(serving).unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IstioCertificateServiceServer::new(service))
            .serve_with_incoming(serve::tls_incoming(listener, config, Default::default())),
    );
    Fixture {
        addr,
        root: ca.borrow().root().clone(),
        dir,
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

fn client(f: &Fixture, token: &str) -> CaClient {
    CaClient::new(
        &f.addr.to_string(),
        TrustRoots::fixed(vec![f.root.clone()]),
        Identity::controller("cluster.local").unwrap(),
        Token::Fixed(token.to_owned()),
    )
    .unwrap()
}

#[tokio::test]
async fn a_node_gets_certificates_for_its_own_pods_only() {
    let f = start().await;
    let web: Identity = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
    let cert = client(&f, "token-of-n0")
        .issue(&web, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(cert.identity, web);
    let life = cert.not_after.duration_since(cert.not_before).unwrap();
    assert!(
        life <= Duration::from_secs(660) && life >= Duration::from_secs(600),
        "{life:?}"
    );

    let db: Identity = "spiffe://cluster.local/ns/shop/sa/db".parse().unwrap();
    let refused = client(&f, "token-of-n0")
        .issue(&db, Duration::from_secs(600))
        .await
        .err()
        .unwrap();
    assert!(
        refused.to_string().contains("runs no pod with identity"),
        "{refused}"
    );
    // The quoted token form works too, and n1 may have db.
    client(&f, "token-of-n1")
        .issue(&db, Duration::from_secs(600))
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&f.dir);
}

#[tokio::test]
async fn unknown_tokens_and_impostor_controllers_are_refused() {
    let f = start().await;
    let web: Identity = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
    let err = client(&f, "guess")
        .issue(&web, Duration::from_secs(600))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("unknown token"), "{err}");
    // A client expecting another controller identity never sends its token.
    let wrong = Identity::new("cluster.local", "ambit-system", "someone-else").unwrap();
    let impostor = CaClient::new(
        &f.addr.to_string(),
        TrustRoots::fixed(vec![f.root.clone()]),
        wrong,
        Token::Fixed("token-of-n0".into()),
    )
    .unwrap();
    assert!(
        impostor
            .issue(&web, Duration::from_secs(600))
            .await
            .is_err()
    );
    let _ = std::fs::remove_dir_all(&f.dir);
}
