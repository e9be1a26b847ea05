//! Ingress mode: the waypoint binary as an ingress gateway, configured by an Istio Gateway or
//! by a Gateway API one with HTTPRoutes. An Istio Gateway with an HTTP
//! server, an HTTPS server (certificate files named in its `tls`), one whose certificate is
//! a Secret (`credentialName`), a mutual-TLS one and an HTTP one that only redirects to
//! HTTPS, and a VirtualService bound to it; requests from outside the mesh reach the right
//! service, through that service's waypoint.
//! Needs root; run with `cargo xtask test`.

use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use mesh_tests::{
    Pod,
    http::{HttpClient, HttpResponse},
    l7::setup,
};

const INGRESS_POD: &str = "n0-p2";
const HOST: &str = "bookinfo.example.com";

/// The name the mutual-TLS server wants in client certificates.
const CLIENT: &str = "client.example.com";

fn gateway(cert: &str, key: &str, ca: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: bookinfo-gateway, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8080, name: http, protocol: HTTP}}
    hosts: ["*"]
  - port: {{number: 8443, name: https, protocol: HTTPS}}
    hosts: [{HOST}]
    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}
  - port: {{number: 8444, name: https-mutual, protocol: HTTPS}}
    hosts: [{HOST}]
    tls:
      mode: MUTUAL
      serverCertificate: {cert}
      privateKey: {key}
      caCertificates: {ca}
      subjectAltNames: [{CLIENT}]
  - port: {{number: 8445, name: https-secret, protocol: HTTPS}}
    hosts: [{HOST}]
    tls: {{mode: SIMPLE, credentialName: bookinfo-credential}}
  - port: {{number: 8081, name: http-redirect, protocol: HTTP}}
    hosts: ["*"]
    tls: {{httpsRedirect: true}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bookinfo, namespace: default}}
spec:
  hosts: ["{HOST}"]
  gateways: [bookinfo-gateway]
  http:
  - match: [{{uri: {{prefix: /reviews}}}}]
    route: [{{destination: {{host: reviews, port: {{number: 9080}}}}}}]
"#
    )
}

/// A request through the ingress from `client`, retried while the listener is not open yet.
fn get(client: &Pod, addr: SocketAddr, host: &str, path: &str) -> Result<HttpResponse> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match HttpClient::connect(client, addr, host).and_then(|mut c| c.get(path, &[])) {
            Ok(response) => return Ok(response),
            Err(error) if Instant::now() > deadline => return Err(error),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A client certificate and its key, PEM.
struct ClientIdentity {
    cert: String,
    key: String,
}

/// The L7 test bed with [`INGRESS_POD`] made an ingress's pod: out of the mesh's capture,
/// with an identity of its own, and not behind the namespace's waypoint (gateways take
/// traffic from outside).
fn setup_ingress_pod() -> Result<mesh_tests::l7::L7> {
    let l7 = setup()?;
    l7.tb.set_service_account(INGRESS_POD, "ingress")?;
    l7.tb.set_pod_mode(INGRESS_POD, Some("none"))?;
    l7.tb
        .label_pod(INGRESS_POD, "ambit.io/use-waypoint", Some("none"))?;
    l7.agents[0].wait_enrolled(&l7.tb.pod(INGRESS_POD).key(), false)?;
    Ok(l7)
}

/// [`get_https`] retried for up to 10 s while the ingress has not taken the certificate yet.
fn get_https_eventually(client: &Pod, addr: SocketAddr, root: &str, path: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match get_https(client, addr, root.as_bytes(), path, None) {
            Ok(body) => return Ok(body),
            Err(error) if Instant::now() > deadline => return Err(error),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// One HTTPS GET with SNI `host`, trusting `root` only, presenting `identity` if given.
fn get_https(
    client: &Pod,
    addr: SocketAddr,
    root: &[u8],
    path: &str,
    identity: Option<&ClientIdentity>,
) -> Result<String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(root)?)?;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(identity) => builder.with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(identity.cert.as_bytes())?],
            PrivateKeyDer::from_pem_slice(identity.key.as_bytes())?,
        )?,
    };
    let connection =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from(HOST)?.to_owned())?;
    let tcp = client.connect(addr)?;
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nhost: {HOST}\r\nconnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    match tls.read_to_end(&mut response) {
        Ok(_) => {}
        // Some servers close without close_notify; what was read is what counts.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e.into()),
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    if !text.starts_with("HTTP/1.1 200") {
        bail!("HTTPS answer: {text}");
    }
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .context("no body")
}

#[test]
fn the_ingress_gateway_routes_http_and_https_into_the_mesh() -> Result<()> {
    let l7 = setup_ingress_pod()?;
    let (key, cert) = self_signed()?;
    let client_ca = ClientCa::new()?;
    let path = |name: &str| l7.tb.work_dir.join(name).display().to_string();
    let (cert_path, key_path, ca_path) = (path("gw.crt"), path("gw.key"), path("clients.crt"));
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    std::fs::write(&ca_path, &client_ca.pem)?;
    l7.write("gateway", &gateway(&cert_path, &key_path, &ca_path))?;
    let ingress = l7.tb.start_ingress(
        &l7.controller,
        INGRESS_POD,
        "default/bookinfo-gateway",
        "ingress",
    )?;

    // From a pod to the ingress's HTTP port: the route sends /reviews to the reviews
    // service, through the reviews waypoint (default route: v1 or v2).
    let client = l7.tb.pod("n1-p2");
    let ingress_ip = l7.tb.pod(INGRESS_POD).ip;
    let http = SocketAddr::from((ingress_ip, 8080));
    let response = get(client, http, HOST, "/reviews/1")?;
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(
        response.body == "v1 /reviews/1" || response.body == "v2 /reviews/1",
        "{}",
        response.body
    );
    assert_eq!(get(client, http, HOST, "/other")?.status, 404, "no route");
    assert_eq!(
        get(client, http, "unknown.example.com", "/reviews")?.status,
        404,
        "no VirtualService for that host"
    );

    // HTTPS on 8443 with the Gateway's certificate files.
    let https = SocketAddr::from((ingress_ip, 8443));
    let body = get_https(client, https, cert.pem().as_bytes(), "/reviews/tls", None)
        .with_context(|| format!("HTTPS through the ingress; its log:\n{}", ingress.log()))?;
    assert!(body.ends_with("/reviews/tls"), "{body}");

    // 8445 serves the certificate of the Secret its credentialName names, and a renewed
    // Secret replaces it.
    let by_secret = SocketAddr::from((ingress_ip, 8445));
    for round in 0..2 {
        let (key, cert) = self_signed()?;
        l7.write("credential", &tls_secret(&cert.pem(), &key.serialize_pem()))?;
        let path = format!("/reviews/secret-{round}");
        let body =
            get_https_eventually(client, by_secret, &cert.pem(), &path).with_context(|| {
                format!(
                    "HTTPS with the Secret's certificate (round {round}); the ingress's log:\n{}",
                    ingress.log()
                )
            })?;
        assert!(body.ends_with(&path), "{body}");
    }

    // Mutual TLS on 8444: only a client certificate from the Gateway's CA naming the
    // subjectAltName it lists gets through.
    let mutual = SocketAddr::from((ingress_ip, 8444));
    let root = cert.pem();
    let named = client_ca.issue(CLIENT)?;
    let body = get_https(client, mutual, root.as_bytes(), "/reviews/m", Some(&named))
        .with_context(|| {
            format!(
                "mutual TLS through the ingress; its log:\n{}",
                ingress.log()
            )
        })?;
    assert!(body.ends_with("/reviews/m"), "{body}");
    let refused = [
        ("no client certificate", None),
        (
            "another name",
            Some(client_ca.issue("intruder.example.com")?),
        ),
        ("another CA", Some(ClientCa::new()?.issue(CLIENT)?)),
    ];
    for (what, identity) in refused {
        let answer = get_https(
            client,
            mutual,
            root.as_bytes(),
            "/reviews/m",
            identity.as_ref(),
        );
        assert!(answer.is_err(), "{what}: {answer:?}");
    }

    // 8081 only redirects to HTTPS, the host's port dropped.
    let redirect = get(
        client,
        SocketAddr::from((ingress_ip, 8081)),
        HOST,
        "/reviews/1?x=1",
    )?;
    assert_eq!(redirect.status, 301, "{}", redirect.body);
    assert_eq!(
        redirect.header("location"),
        Some(format!("https://{HOST}/reviews/1?x=1").as_str())
    );

    // The waypoint saw the requests (the ingress respects the service's waypoint), and the
    // ingress reports them as their source.
    let waypoint_metrics = l7.waypoint.metrics()?;
    assert!(
        waypoint_metrics
            .contains("source_principal=\"spiffe://cluster.local/ns/default/sa/ingress\""),
        "{waypoint_metrics}"
    );
    let metrics = ingress.metrics()?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total{")
                && l.contains("reporter=\"source\"")
                && l.contains("destination_service=\"reviews.default.svc.cluster.local\"")),
        "{metrics}"
    );
    Ok(())
}

/// The same ingress configured with the Gateway API, as Istio's ingress task does it today: a
/// `Gateway` of class `ambit` with an HTTP listener for `*.example.com` and an HTTPS one whose
/// certificate is a Secret, and an HTTPRoute attached to both for one hostname.
#[test]
fn a_gateway_api_gateway_serves_its_httproutes() -> Result<()> {
    let l7 = setup_ingress_pod()?;
    l7.write(
        "gateway",
        &format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: public, namespace: default}}
spec:
  gatewayClassName: ambit
  listeners:
  - {{name: http, port: 8090, protocol: HTTP, hostname: "*.example.com"}}
  - name: https
    port: 8453
    protocol: HTTPS
    tls: {{certificateRefs: [{{name: bookinfo-credential}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: bookinfo, namespace: default}}
spec:
  parentRefs: [{{name: public}}]
  hostnames: ["{HOST}"]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /reviews}}}}]
    backendRefs: [{{name: reviews, port: 9080}}]
"#
        ),
    )?;
    // The Secret after the Gateway: only a Secret a Gateway names is sent out.
    let (key, cert) = self_signed()?;
    l7.write("credential", &tls_secret(&cert.pem(), &key.serialize_pem()))?;
    let ingress = l7
        .tb
        .start_ingress(&l7.controller, INGRESS_POD, "default/public", "ingress")?;
    let client = l7.tb.pod("n1-p2");
    let ingress_ip = l7.tb.pod(INGRESS_POD).ip;
    let http = SocketAddr::from((ingress_ip, 8090));
    let response = get(client, http, HOST, "/reviews/1")?;
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(response.body.ends_with(" /reviews/1"), "{}", response.body);
    assert_eq!(get(client, http, HOST, "/other")?.status, 404, "no rule");
    assert_eq!(
        get(client, http, "ratings.example.com", "/reviews/1")?.status,
        404,
        "a hostname the route does not list"
    );
    let https = SocketAddr::from((ingress_ip, 8453));
    let body =
        get_https_eventually(client, https, &cert.pem(), "/reviews/tls").with_context(|| {
            format!(
                "HTTPS through the Gateway API ingress; its log:\n{}",
                ingress.log()
            )
        })?;
    assert!(body.ends_with("/reviews/tls"), "{body}");
    Ok(())
}

/// A CA for client certificates, as the mutual-TLS server's `caCertificates`.
struct ClientCa {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl ClientCa {
    fn new() -> Result<Self> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ingress test client CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key)?.pem();
        Ok(ClientCa {
            pem,
            issuer: rcgen::Issuer::new(params, key),
        })
    }

    /// A client certificate for `name` (its DNS subjectAltName).
    fn issue(&self, name: &str) -> Result<ClientIdentity> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ClientIdentity {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// A key and a certificate for [`HOST`] that it signs itself.
fn self_signed() -> Result<(rcgen::KeyPair, rcgen::Certificate)> {
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec![HOST.to_owned()])?.self_signed(&key)?;
    Ok((key, cert))
}

/// A `kubernetes.io/tls` Secret (its PEM as `stringData`; the controller's unit tests read
/// base64 `data`, as `kubectl create secret tls` writes it).
fn tls_secret(cert: &str, key: &str) -> String {
    let block = |pem: &str| pem.trim_end().replace('\n', "\n    ");
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: bookinfo-credential, namespace: default}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n    {}\n  tls.key: |\n    {}\n",
        block(cert),
        block(key)
    )
}
