//! The two ends of an HBONE connection up to HTTP/2: mutual TLS and the peer's SPIFFE
//! identity, shared by the node agent and the waypoint.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use h2::client::SendRequest;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::{client, server};

use crate::{Identity, tls::identity_of};

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS with {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("peer at {addr} presented {got:?}, not the expected {want}")]
    WrongPeer {
        addr: SocketAddr,
        got: Option<String>,
        want: Identity,
    },
    #[error("HTTP/2 with {addr}: {source}")]
    Http { addr: SocketAddr, source: h2::Error },
}

/// Server side: the TLS handshake with `config`, and the client's identity (its certificate
/// was verified against the mesh roots by `config`).
pub async fn accept(
    config: Arc<rustls::ServerConfig>,
    tcp: TcpStream,
) -> Result<(server::TlsStream<TcpStream>, Identity), String> {
    let tls = tokio_rustls::TlsAcceptor::from(config)
        .accept(tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let client = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(identity_of)
        .ok_or("no client certificate")?
        .map_err(|e| e.to_string())?;
    Ok((tls, client))
}

/// Client side: TLS to `addr` over `tcp`, the server must present `expected`, then HTTP/2
/// with keep-alive pings, driven by a task of its own. Returns the request sender and a flag
/// set once the connection has ended.
pub async fn connect(
    config: Arc<rustls::ClientConfig>,
    tcp: TcpStream,
    addr: SocketAddr,
    expected: &Identity,
) -> Result<(SendRequest<Bytes>, Arc<AtomicBool>), HandshakeError> {
    let tls: client::TlsStream<TcpStream> = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .map_err(|source| HandshakeError::Tls { addr, source })?;
    let got = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(identity_of);
    match got {
        Some(Ok(identity)) if &identity == expected => {}
        other => {
            let got = other.map(|r| r.map(|i| i.to_string()).unwrap_or_else(|e| e.to_string()));
            return Err(HandshakeError::WrongPeer {
                addr,
                got,
                want: expected.clone(),
            });
        }
    }
    let (sender, mut connection) = super::settings::client()
        .handshake(tls)
        .await
        .map_err(|source| HandshakeError::Http { addr, source })?;
    let closed = Arc::new(AtomicBool::new(false));
    let keep_alive = super::settings::keep_alive(connection.ping_pong());
    let ended = closed.clone();
    tokio::spawn(async move {
        tokio::select! {
            result = connection => if let Err(error) = result {
                tracing::debug!(%error, %addr, "HBONE connection closed");
            },
            reason = keep_alive => tracing::info!(%reason, %addr, "HBONE connection closed"),
        }
        ended.store(true, Ordering::Release);
    });
    Ok((sender, closed))
}
