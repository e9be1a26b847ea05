//! Speaking HBONE by hand, as a workload that holds a mesh certificate of its own would: for
//! tests that send what no agent would (malformed CONNECTs, forged headers, direct dials).

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_controller::ca::CertificateAuthority;
use mesh_core::{Identity, tls};
use rustls::pki_types::ServerName;

use crate::controller::Controller;

/// A certificate for `identity` signed by the test bed's CA.
pub fn own_certificate(
    controller: &Controller,
    identity: &str,
) -> Result<tls::WorkloadCertificate> {
    let dir = controller.root.parent().context("CA directory")?;
    let ca = CertificateAuthority::load_or_create(dir, "cluster.local")?;
    let identity: Identity = identity.parse()?;
    let (key, csr) = tls::certificate_request(&identity)?;
    let chain = ca.sign(&csr, &identity, Duration::from_secs(600))?;
    Ok(tls::workload_certificate(&identity, key, chain)?)
}

/// A TCP connection to `to` opened inside the network namespace `from` (a pod's or a node's).
pub fn dial(from: &Path, to: SocketAddr) -> Result<std::net::TcpStream> {
    let tcp = crate::sys::in_netns(from, || {
        std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))
    })??;
    tcp.set_nonblocking(true)?;
    Ok(tcp)
}

/// Mutual TLS with `cert` and HTTP/2 over `tcp` (from [`dial`]), on the current runtime; the
/// connection is driven by a task of its own.
pub async fn handshake(
    tcp: std::net::TcpStream,
    cert: &tls::WorkloadCertificate,
) -> Result<SendRequest<Empty<Bytes>>> {
    let peer = tcp.peer_addr()?;
    let tcp = tokio::net::TcpStream::from_std(tcp)?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls::client_config(cert)?))
        .connect(ServerName::IpAddress(peer.ip().into()), tcp)
        .await?;
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
    tokio::spawn(connection);
    Ok(sender)
}
