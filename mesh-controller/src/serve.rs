//! Serving gRPC over TLS with the controller's own workload certificate. Node agents verify it
//! chains to the mesh root and names the controller's identity; they authenticate with a token,
//! since they have no certificate before the CA gives them one.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use mesh_core::{Identity, transport};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use crate::ca::{CertificateAuthority, CurrentCa};
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

/// The controller's serving certificate, replaced in place (see [`renew_serving`]): new
/// handshakes get the current one, connections already open keep theirs.
#[derive(Debug)]
pub struct ServingCert {
    current: std::sync::RwLock<Arc<CertifiedKey>>,
}

impl ServingCert {
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, rustls::Error> {
        Ok(Self {
            current: std::sync::RwLock::new(Arc::new(certified(chain, key)?)),
        })
    }

    fn replace(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), rustls::Error> {
        let next = Arc::new(certified(chain, key)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, rustls::Error> {
    let signing = mesh_core::tls::provider()
        .key_provider
        .load_private_key(key)?;
    Ok(CertifiedKey::new(chain, signing))
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// The serving certificate from the CA: the controller's identity and `dns_names`, the leaf
/// only (clients hold the root), for `lifetime`.
pub fn issue_serving(
    ca: &CertificateAuthority,
    identity: &Identity,
    dns_names: &[String],
    lifetime: Duration,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), crate::ca::Error> {
    let (mut chain, key) = ca.issue_serving(identity, dns_names, lifetime)?;
    chain.truncate(1);
    Ok((chain, PrivateKeyDer::Pkcs8(key.serialize_der().into())))
}

/// Renews the serving certificate at half its life, and at once when the CA changes (a root
/// rotation: the new root signs it, and clients already trust it from the bundle), forever; a
/// failure is retried sooner, and the current certificate stays until a new one exists.
pub async fn renew_serving(
    serving: Arc<ServingCert>,
    mut ca: CurrentCa,
    identity: Identity,
    dns_names: Vec<String>,
    lifetime: Duration,
) {
    let mut wait = lifetime / 2;
    let mut followed = true;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            changed = ca.changed(), if followed => {
                if changed.is_err() {
                    // Nothing can replace this CA: only the clock renews.
                    followed = false;
                    continue;
                }
                tracing::info!("CA changed: re-issuing the serving certificate");
            }
        }
        let current = ca.borrow_and_update().clone();
        let renewed = issue_serving(&current, &identity, &dns_names, lifetime)
            .map_err(|e| e.to_string())
            .and_then(|(chain, key)| serving.replace(chain, key).map_err(|e| e.to_string()));
        match renewed {
            Ok(()) => {
                tracing::info!(valid_for = ?lifetime, "serving certificate renewed");
                wait = lifetime / 2;
            }
            Err(error) => {
                wait = (lifetime / 10).min(Duration::from_secs(60));
                tracing::warn!(%error, retry_in = ?wait, "serving certificate not renewed; the current one stays");
            }
        }
    }
}

/// TLS server config for the controller: the serving certificate, no client certificate
/// required (callers authenticate with a bearer token).
pub fn server_config(serving: Arc<ServingCert>) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(mesh_core::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(serving);
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
