//! Ingress mode: the listeners of an Istio `Gateway`. Each server port of the Gateway gets a
//! listener, plain HTTP (or only a redirect to HTTPS, with `tls.httpsRedirect`) or HTTPS
//! (`tls.rs`), opened and closed as the Gateway changes. Requests are routed by the
//! VirtualServices that list the Gateway, by their `Host`.

mod tls;

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
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

pub use self::tls::Credentials;
use self::tls::ServerTls;
use crate::{
    app::App,
    proxy::{self, Destination, Downstream},
};

/// What a listener serves, to notice when it must change.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Listen {
    port: u16,
    tls: Option<ServerTls>,
    /// Plain HTTP answering every request with a redirect to HTTPS.
    redirect_https: bool,
}

/// How an open listener serves the connections it accepts; swapped in place when the
/// Gateway or its Secret changes, so the port never closes for a renewed certificate.
struct Serving {
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    redirect_https: bool,
}

impl Serving {
    fn of(listen: &Listen) -> Result<Self, String> {
        Ok(Serving {
            acceptor: listen.tls.as_ref().map(ServerTls::acceptor).transpose()?,
            redirect_https: listen.redirect_https,
        })
    }
}

struct Open {
    listen: Listen,
    serving: watch::Sender<Arc<Serving>>,
    task: JoinHandle<()>,
}

/// The open listeners, kept equal to the Gateway's servers.
#[derive(Default)]
pub struct Listeners {
    open: HashMap<u16, Open>,
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for open in self.open.values() {
            open.task.abort();
        }
    }
}

fn wanted(server: &Server, credentials: &Credentials<'_>) -> Result<Listen, String> {
    let port = server.port.target_port.unwrap_or(server.port.number);
    let port = u16::try_from(port).map_err(|_| format!("port {port} is out of range"))?;
    let protocol = server
        .port
        .protocol
        .as_deref()
        .unwrap_or("HTTP")
        .to_ascii_uppercase();
    match protocol.as_str() {
        "HTTP" | "HTTP2" | "GRPC" => Ok(Listen {
            port,
            tls: None,
            redirect_https: server
                .tls
                .as_ref()
                .and_then(|t| t.https_redirect)
                .unwrap_or(false),
        }),
        "HTTPS" => {
            let tls = server.tls.as_ref().ok_or("HTTPS without tls settings")?;
            Ok(Listen {
                port,
                tls: Some(ServerTls::of(tls, credentials)?),
                redirect_https: false,
            })
        }
        other => Err(format!("protocol {other} is not served by the ingress yet")),
    }
}

impl Listeners {
    /// Opens, replaces and closes listeners so they match `gateway` (`None`: close all),
    /// with certificates from `credentials` where the Gateway names a Secret.
    pub async fn reconcile(
        &mut self,
        gateway: Option<&GatewaySpec>,
        credentials: &Credentials<'_>,
        app: &Arc<App>,
    ) {
        let mut desired: HashMap<u16, Listen> = HashMap::new();
        for server in gateway.map(|g| g.servers.as_slice()).unwrap_or_default() {
            match wanted(server, credentials) {
                Ok(listen) => {
                    desired.insert(listen.port, listen);
                }
                Err(error) => tracing::warn!(
                    port = server.port.number,
                    "Gateway server not served: {error}"
                ),
            }
        }
        self.open.retain(|port, open| {
            let keep = desired.contains_key(port);
            if !keep {
                open.task.abort();
                tracing::info!(port, "ingress listener closed");
            }
            keep
        });
        for (port, listen) in desired {
            match self.open.get_mut(&port) {
                Some(open) if open.listen == listen => {}
                // Changed settings or a renewed Secret: the listener stays, new connections
                // get the new settings. Settings that do not load leave the old ones serving.
                Some(open) => match Serving::of(&listen) {
                    Ok(serving) => {
                        open.serving.send_replace(Arc::new(serving));
                        open.listen = listen;
                        tracing::info!(port, "ingress listener updated");
                    }
                    Err(error) => {
                        tracing::error!(port, %error, "ingress listener keeps its previous settings")
                    }
                },
                None => match open(&listen, app.clone()).await {
                    Ok((serving, task)) => {
                        tracing::info!(port, https = listen.tls.is_some(), "ingress listener open");
                        let open = Open {
                            listen,
                            serving,
                            task,
                        };
                        self.open.insert(port, open);
                    }
                    Err(error) => tracing::error!(port, %error, "ingress listener not opened"),
                },
            }
        }
    }
}

async fn open(
    listen: &Listen,
    app: Arc<App>,
) -> Result<(watch::Sender<Arc<Serving>>, JoinHandle<()>), String> {
    let (serving, current) = watch::channel(Arc::new(Serving::of(listen)?));
    let addr = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), listen.port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("binding {addr}: {e}"))?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let local = tcp.local_addr().unwrap_or(addr);
            let (served, serving) = (app.clone(), current.borrow().clone());
            app.workers.assign(tcp, move |tcp| async move {
                let result = match &serving.acceptor {
                    Some(acceptor) => match acceptor.accept(tcp).await {
                        Ok(tls) => serve(TokioIo::new(tls), peer, local, served).await,
                        Err(error) => Err(format!("TLS handshake: {error}")),
                    },
                    None if serving.redirect_https => redirect(TokioIo::new(tcp)).await,
                    None => serve(TokioIo::new(tcp), peer, local, served).await,
                };
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "ingress connection ended");
                }
            });
        }
    });
    Ok((serving, task))
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

/// Answers every request on the connection with `301` to the same host and path over
/// HTTPS (the host's port dropped: HTTPS is not served on the HTTP port).
async fn redirect<IO>(io: TokioIo<IO>) -> Result<(), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(|request: hyper::Request<hyper::body::Incoming>| {
        let host = proxy::bare_host(proxy::authority_of(&request));
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let response = hyper::Response::builder()
            .status(hyper::StatusCode::MOVED_PERMANENTLY)
            .header(hyper::header::LOCATION, format!("https://{host}{path}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new());
        std::future::ready(response)
    });
    auto::Builder::new(TokioExecutor::new())
        .serve_connection(io, service)
        .await
        .map_err(|e| e.to_string())
}
