//! Ingress mode: the listeners of an Istio `Gateway`. Each server port of the Gateway gets a
//! listener, plain HTTP or HTTPS (TLS `SIMPLE` with the `serverCertificate` and `privateKey`
//! files its `tls` names), opened and closed as the Gateway changes. Requests are routed by
//! the VirtualServices that list the Gateway, by their `Host`.

use std::{
    collections::HashMap,
    net::{Ipv6Addr, SocketAddr},
    sync::Arc,
};

use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use mesh_controller::resources::networking::{GatewaySpec, Server};
use tokio::{net::TcpListener, task::JoinHandle};

use crate::{
    app::App,
    proxy::{self, Destination, Downstream},
};

/// What a listener serves, to notice when it must be replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Listen {
    port: u16,
    /// (certificate file, key file) for HTTPS.
    tls: Option<(String, String)>,
}

/// The open listeners, kept equal to the Gateway's servers.
#[derive(Default)]
pub struct Listeners {
    open: HashMap<u16, (Listen, JoinHandle<()>)>,
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for (_, task) in self.open.values() {
            task.abort();
        }
    }
}

fn wanted(server: &Server) -> Result<Listen, String> {
    let port = server.port.target_port.unwrap_or(server.port.number);
    let port = u16::try_from(port).map_err(|_| format!("port {port} is out of range"))?;
    let protocol = server
        .port
        .protocol
        .as_deref()
        .unwrap_or("HTTP")
        .to_ascii_uppercase();
    match protocol.as_str() {
        "HTTP" | "HTTP2" | "GRPC" => Ok(Listen { port, tls: None }),
        "HTTPS" => {
            let tls = server.tls.as_ref().ok_or("HTTPS without tls settings")?;
            if tls.credential_name.is_some() {
                return Err(
                    "tls.credentialName needs Kubernetes Secrets, not read yet: give \
                     serverCertificate and privateKey files"
                        .to_owned(),
                );
            }
            match (&tls.server_certificate, &tls.private_key) {
                (Some(cert), Some(key)) => Ok(Listen {
                    port,
                    tls: Some((cert.clone(), key.clone())),
                }),
                _ => Err("HTTPS needs serverCertificate and privateKey".to_owned()),
            }
        }
        other => Err(format!("protocol {other} is not served by the ingress yet")),
    }
}

impl Listeners {
    /// Opens, replaces and closes listeners so they match `gateway` (`None`: close all).
    pub async fn reconcile(&mut self, gateway: Option<&GatewaySpec>, app: &Arc<App>) {
        let mut desired: HashMap<u16, Listen> = HashMap::new();
        for server in gateway.map(|g| g.servers.as_slice()).unwrap_or_default() {
            match wanted(server) {
                Ok(listen) => {
                    desired.insert(listen.port, listen);
                }
                Err(error) => tracing::warn!(
                    port = server.port.number,
                    "Gateway server not served: {error}"
                ),
            }
        }
        self.open.retain(|port, (listen, task)| {
            let keep = desired.get(port) == Some(listen);
            if !keep {
                task.abort();
                tracing::info!(port, "ingress listener closed");
            }
            keep
        });
        for (port, listen) in desired {
            if self.open.contains_key(&port) {
                continue;
            }
            match open(&listen, app.clone()).await {
                Ok(task) => {
                    tracing::info!(port, https = listen.tls.is_some(), "ingress listener open");
                    self.open.insert(port, (listen, task));
                }
                Err(error) => tracing::error!(port, %error, "ingress listener not opened"),
            }
        }
    }
}

async fn open(listen: &Listen, app: Arc<App>) -> Result<JoinHandle<()>, String> {
    let acceptor = match &listen.tls {
        Some((cert, key)) => Some(tls_acceptor(cert, key)?),
        None => None,
    };
    let addr = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), listen.port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("binding {addr}: {e}"))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let local = tcp.local_addr().unwrap_or(addr);
            let (served, acceptor) = (app.clone(), acceptor.clone());
            app.workers.assign(tcp, move |tcp| async move {
                let result = match acceptor {
                    Some(acceptor) => match acceptor.accept(tcp).await {
                        Ok(tls) => serve(TokioIo::new(tls), peer, local, served).await,
                        Err(error) => Err(format!("TLS handshake: {error}")),
                    },
                    None => serve(TokioIo::new(tcp), peer, local, served).await,
                };
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "ingress connection ended");
                }
            });
        }
    }))
}

async fn serve<IO>(
    io: TokioIo<IO>,
    peer: SocketAddr,
    local: SocketAddr,
    app: Arc<App>,
) -> Result<(), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let gateway = app.config.ingress_gateway.clone().unwrap_or_default();
    let downstream = Arc::new(Downstream {
        client: None,
        source: SocketAddr::new(peer.ip().to_canonical(), peer.port()),
        target: local,
        destination: Destination::Gateway(gateway),
        source_workload: None,
        series: Default::default(),
    });
    let service = hyper::service::service_fn(move |request| {
        proxy::handle(request, downstream.clone(), app.clone())
    });
    auto::Builder::new(TokioExecutor::new())
        .serve_connection(io, service)
        .await
        .map_err(|e| e.to_string())
}

fn tls_acceptor(cert: &str, key: &str) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{cert}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{cert}: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{key}: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(mesh_core::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("{cert}: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
