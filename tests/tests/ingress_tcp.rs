//! The ingress's TCP and TLS passthrough servers, as in Istio's ingress tasks: a Gateway
//! with a TCP server on 31400 whose VirtualService shifts connections 80/20 between two
//! versions, and a TLS server in `PASSTHROUGH` mode whose VirtualService sends a server name
//! to a service, the TLS ending at the service's own certificate, which the ingress never
//! holds.
//! Needs root; run with `cargo xtask test`.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use mesh_tests::{Pod, l7::setup, traffic::serve};

const INGRESS_POD: &str = "n0-p2";
const CLIENT_POD: &str = "n1-p2";
const NGINX: &str = "nginx.example.com";

const CONFIG: &str = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: tcp-gateway, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
  - port: {number: 8443, name: tls, protocol: TLS}
    hosts: [nginx.example.com]
    tls: {mode: PASSTHROUGH}
---
apiVersion: v1
kind: Service
metadata: {name: tcp-echo, namespace: default, labels: {ambit.io/use-waypoint: none}}
spec: {clusterIP: 10.96.0.17, selector: {app: reviews}, ports: [{name: tcp, port: 9000}]}
---
apiVersion: v1
kind: Service
metadata: {name: my-nginx, namespace: default, labels: {ambit.io/use-waypoint: none}}
spec: {clusterIP: 10.96.0.18, selector: {app: reviews, version: v1}, ports: [{name: https, port: 8443}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: tcp-echo, namespace: default}
spec:
  host: tcp-echo
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-echo, namespace: default}
spec:
  hosts: ["*"]
  gateways: [tcp-gateway]
  tcp:
  - match: [{port: 31400}]
    route:
    - {destination: {host: tcp-echo, subset: v1, port: {number: 9000}}, weight: 80}
    - {destination: {host: tcp-echo, subset: v2, port: {number: 9000}}, weight: 20}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: nginx, namespace: default}
spec:
  hosts: [nginx.example.com]
  gateways: [tcp-gateway]
  tls:
  - match: [{port: 8443, sniHosts: [nginx.example.com]}]
    route: [{destination: {host: my-nginx, port: {number: 8443}}}]
"#;

#[test]
fn the_ingress_carries_tcp_and_passes_tls_through() -> Result<()> {
    let l7 = setup()?;
    l7.tb.set_service_account(INGRESS_POD, "ingress")?;
    l7.tb.set_pod_mode(INGRESS_POD, Some("none"))?;
    // The ingress itself chooses the version, so the two versions take connections
    // from it: out of the namespace's waypoint.
    for pod in [INGRESS_POD, "n1-p0", "n1-p1"] {
        l7.tb
            .label_pod(pod, "ambit.io/use-waypoint", Some("none"))?;
    }
    l7.agents[0].wait_enrolled(&l7.tb.pod(INGRESS_POD).key(), false)?;
    let mut servers = Vec::new();
    for (pod, version) in [("n1-p0", "v1"), ("n1-p1", "v2")] {
        // Greets with its version, then echoes.
        servers.push(serve(
            l7.tb.pod(pod).listen(9000)?,
            move |mut stream, _| {
                writeln!(stream, "{version}")?;
                std::io::copy(&mut stream.try_clone()?, &mut stream).map(drop)
            },
        )?);
    }
    let (key, cert) = {
        let key = rcgen::KeyPair::generate()?;
        let cert = rcgen::CertificateParams::new(vec![NGINX.to_owned()])?.self_signed(&key)?;
        (key, cert)
    };
    servers.push(tls_server(l7.tb.pod("n1-p0"), 8443, &cert, &key)?);
    l7.write("tcp-gateway", CONFIG)?;
    let ingress = l7.tb.start_ingress(
        &l7.controller,
        INGRESS_POD,
        "default/tcp-gateway",
        "ingress",
    )?;
    let client = l7.tb.pod(CLIENT_POD);
    let ingress_ip = l7.tb.pod(INGRESS_POD).ip;

    // TCP on 31400: 80 % of connections to v1, 20 % to v2, each echoing what it is sent.
    let tcp = SocketAddr::from((ingress_ip, 31400));
    let greeting = |stream: &mut TcpStream| -> Result<String> {
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut line = String::new();
        BufReader::new(stream.try_clone()?).read_line(&mut line)?;
        Ok(line.trim().to_owned())
    };
    // Until the listener is open and both versions have left the waypoint (their nodes
    // refuse all but the waypoint until then), connections close.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 2 {
        let greeted = client
            .connect(tcp)
            .map_err(anyhow::Error::from)
            .and_then(|mut s| greeting(&mut s));
        match greeted {
            Ok(version) if !version.is_empty() => {
                seen.insert(version);
            }
            _ if Instant::now() > deadline => bail!(
                "only {seen:?} greeted through the ingress's TCP server:\n{}",
                ingress.log()
            ),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let mut stream = client.connect(tcp)?;
    greeting(&mut stream)?;
    stream.write_all(b"through the ingress\n")?;
    let mut echoed = [0; 20];
    stream.read_exact(&mut echoed)?;
    assert_eq!(&echoed, b"through the ingress\n");
    let mut v2 = 0;
    for _ in 0..200 {
        match greeting(&mut client.connect(tcp)?)?.as_str() {
            "v1" => {}
            "v2" => v2 += 1,
            other => bail!("greeted by {other:?}:\n{}", ingress.log()),
        }
    }
    // 20 % of 200 is 40 (sd 5.7): outside 15..=70 once in about 100,000 runs.
    assert!((15..=70).contains(&v2), "v2 took {v2} of 200 connections");

    // TLS passed through on 8443: the client's handshake completes against the service's
    // own certificate, for the name its ClientHello gave.
    let tls = SocketAddr::from((ingress_ip, 8443));
    assert_eq!(
        tls_exchange(client, tls, NGINX, &cert, "hello")?,
        "v1 hello"
    );
    // A name no `tls` route lists is closed before it reaches anything: no ServerHello.
    let mut stream = client.connect(tls)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(&client_hello("other.example.com")?)?;
    let mut answer = Vec::new();
    let closed = stream.read_to_end(&mut answer);
    assert!(
        closed.is_ok() && answer.is_empty(),
        "a server name without a route: {closed:?}, {} bytes",
        answer.len()
    );
    let log = ingress.log();
    assert!(log.contains("tls passthrough"), "{log}");
    assert!(log.contains("no route fits"), "{log}");
    drop(servers);
    Ok(())
}

/// A TLS server on `port` of `pod` with `cert`, answering each line with `v1 <line>`.
fn tls_server(
    pod: &Pod,
    port: u16,
    cert: &rcgen::Certificate,
    key: &rcgen::KeyPair,
) -> Result<mesh_tests::traffic::Server> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from_pem_slice(cert.pem().as_bytes())?],
        PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())?,
    )?;
    let config = Arc::new(config);
    serve(pod.listen(port)?, move |stream, _| {
        let connection =
            rustls::ServerConnection::new(config.clone()).map_err(std::io::Error::other)?;
        let mut tls = rustls::StreamOwned::new(connection, stream);
        let mut line = String::new();
        BufReader::new(&mut tls).read_line(&mut line)?;
        writeln!(tls, "v1 {}", line.trim())?;
        tls.conn.send_close_notify();
        tls.flush()
    })
}

/// A TLS handshake with `server_name`, trusting only `root`, then one line and its answer.
fn tls_exchange(
    client: &Pod,
    addr: SocketAddr,
    server_name: &str,
    root: &rcgen::Certificate,
    line: &str,
) -> Result<String> {
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(root.der().to_vec()))?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_owned())?;
    let connection = rustls::ClientConnection::new(Arc::new(config), name)?;
    let tcp = client.connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    writeln!(tls, "{line}")?;
    let mut answer = String::new();
    BufReader::new(&mut tls)
        .read_line(&mut answer)
        .with_context(|| format!("the answer through the ingress for {server_name}"))?;
    if answer.is_empty() {
        bail!("closed without an answer");
    }
    Ok(answer.trim().to_owned())
}

/// A real client's first flight for `server_name`.
fn client_hello(server_name: &str) -> Result<Vec<u8>> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())?;
    let mut client = rustls::ClientConnection::new(Arc::new(config), name)?;
    let mut hello = Vec::new();
    client.write_tls(&mut hello)?;
    Ok(hello)
}
