//! Serving gRPC over TLS with the controller's own workload certificate. Node agents verify it
//! chains to the mesh root and names the controller's identity; they authenticate with a token,
//! since they have no certificate before the CA gives them one.

use std::{net::SocketAddr, sync::Arc};

use mesh_core::{tls::WorkloadCertificate, transport};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// A TLS connection tonic can serve, its first bytes already read within the deadline, and
/// holding its place under the listener's cap.
pub struct TlsConnection {
    tls: transport::Prefixed<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    _permit: transport::ConnectionPermit,
}

impl Connected for TlsConnection {
    type ConnectInfo = Option<SocketAddr>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tls.get_ref().get_ref().0.peer_addr().ok()
    }
}

impl tokio::io::AsyncRead for TlsConnection {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

/// TLS server config for the controller: its certificate, no client certificate required.
pub fn server_config(cert: &WorkloadCertificate) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(mesh_core::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Accepts TCP connections (with back-off and a cap), completes TLS handshakes off the accept
/// loop within the handshake deadline, and yields the connections to tonic. A failed or
/// stalled handshake costs only its own task.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    limits: transport::Limits,
) -> ReceiverStream<Result<TlsConnection, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = transport::Listener::new(listener, "CA", &limits);
    tokio::spawn(async move {
        loop {
            let (stream, peer, permit) = listener.accept().await;
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                // TLS, then the client's first bytes (the HTTP/2 preface): a client that
                // stalls in either is closed at its deadline.
                let opened = match transport::within(&limits, "TLS", acceptor.accept(stream)).await
                {
                    Ok(tls) => transport::first_bytes(&limits, tls).await,
                    Err(error) => Err(error),
                };
                match opened {
                    Ok(tls) => {
                        let connection = TlsConnection {
                            tls,
                            _permit: permit,
                        };
                        let _ = tx.send(Ok(connection)).await;
                    }
                    Err(error) => {
                        tracing::info!(%peer, %error, "TLS handshake with a CA client failed")
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
