//! Ingress mode: the listeners of an Istio `Gateway`. Each server port of the Gateway gets a
//! listener, opened and closed as the Gateway changes: plain HTTP (or only a redirect to
//! HTTPS, with `tls.httpsRedirect`) or HTTPS (`tls.rs`), routed by the `http` routes of the
//! VirtualServices that list the Gateway, by `Host`; or TCP, TLS terminated here, or TLS
//! passed through (`l4.rs`), routed by their `tls` and `tcp` routes.

mod l4;
mod tls;

use std::{
    collections::HashMap,
    net::{Ipv6Addr, SocketAddr},
    sync::Arc,
};

use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use mesh_api::networking::{GatewaySpec, Server};
use mesh_core::transport;
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
    /// The port bound (the server's `targetPort`, else its number).
    port: u16,
    /// The server's port number, which routes match on.
    number: u16,
    /// TLS terminated here.
    tls: Option<ServerTls>,
    serve: Serve,
}

/// What a listener does with a connection (after its TLS, if it terminates TLS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Serve {
    /// HTTP/1.1 and HTTP/2, by the `http` routes.
    Http,
    /// Plain HTTP answering every request with a redirect to HTTPS.
    RedirectHttps,
    /// Carried as TCP by the `tls` and `tcp` routes; `sni`: TLS passes through, and its
    /// ClientHello's server name is read.
    Tcp { sni: bool },
}

/// How an open listener serves the connections it accepts; swapped in place when the
/// Gateway or its Secret changes, so the port never closes for a renewed certificate.
struct Serving {
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    number: u16,
    serve: Serve,
}

impl Serving {
    fn of(listen: &Listen) -> Result<Self, String> {
        Ok(Serving {
            acceptor: listen.tls.as_ref().map(ServerTls::acceptor).transpose()?,
            number: listen.number,
            serve: listen.serve,
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
    if let Some(tls) = &server.tls {
        let unimplemented = tls.unimplemented();
        if !unimplemented.is_empty() {
            return Err(format!(
                "tls.{} not implemented by Ambit's ingress: the server is not opened",
                unimplemented.join(", tls.")
            ));
        }
    }
    let in_range =
        |port: u32| u16::try_from(port).map_err(|_| format!("port {port} is out of range"));
    let number = in_range(server.port.number)?;
    let port = in_range(server.port.target_port.unwrap_or(server.port.number))?;
    let protocol = server
        .port
        .protocol
        .as_deref()
        .unwrap_or("HTTP")
        .to_ascii_uppercase();
    let passthrough = server
        .tls
        .as_ref()
        .and_then(|t| t.mode.as_deref())
        .is_some_and(|mode| mode.eq_ignore_ascii_case("PASSTHROUGH"));
    let listen = |tls, serve| Listen {
        port,
        number,
        tls,
        serve,
    };
    match protocol.as_str() {
        "HTTP" | "HTTP2" | "GRPC" => {
            let redirect = server.tls.as_ref().and_then(|t| t.https_redirect);
            match redirect.unwrap_or(false) {
                true => Ok(listen(None, Serve::RedirectHttps)),
                false => Ok(listen(None, Serve::Http)),
            }
        }
        "HTTPS" | "TLS" if passthrough => Ok(listen(None, Serve::Tcp { sni: true })),
        "HTTPS" | "TLS" => {
            let tls = server
                .tls
                .as_ref()
                .ok_or("a TLS server without tls settings")?;
            let serve = match protocol.as_str() {
                "HTTPS" => Serve::Http,
                _ => Serve::Tcp { sni: false },
            };
            Ok(listen(Some(ServerTls::of(tls, credentials)?), serve))
        }
        "TCP" | "MONGO" => Ok(listen(None, Serve::Tcp { sni: false })),
        other => Err(format!("protocol {other} is not served by the ingress")),
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
                        tracing::info!(port, tls = listen.tls.is_some(), serve = ?listen.serve, "ingress listener open");
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
    let listener = transport::Listener::new(listener, "ingress", &app.config.limits);
    let task = tokio::spawn(async move {
        loop {
            let (tcp, peer, permit) = listener.accept().await;
            let _ = tcp.set_nodelay(true);
            let local = tcp.local_addr().unwrap_or(addr);
            let (served, serving) = (app.clone(), current.borrow().clone());
            app.workers.assign(tcp, move |tcp| async move {
                let _permit = permit;
                let at = (peer, local);
                let limits = served.config.limits;
                let result = match &serving.acceptor {
                    Some(acceptor) => {
                        match transport::within(&limits, "TLS handshake", acceptor.accept(tcp))
                            .await
                        {
                            Ok(tls) => serve_as(&serving, tls, at, served).await,
                            Err(error) => Err(error),
                        }
                    }
                    None => serve_as(&serving, tcp, at, served).await,
                };
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "ingress connection ended");
                }
            });
        }
    });
    Ok((serving, task))
}

/// Serves a connection (its TLS already ended, if the listener terminates TLS) from `peer`
/// to `local`.
async fn serve_as<IO>(
    serving: &Serving,
    io: IO,
    (peer, local): (SocketAddr, SocketAddr),
    app: Arc<App>,
) -> Result<(), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match serving.serve {
        Serve::Http => {
            // hyper waits for the first bytes without limit (to tell HTTP/1 from HTTP/2).
            let io = transport::first_bytes(&app.config.limits, io).await?;
            serve_http(TokioIo::new(io), peer, local, app).await
        }
        Serve::RedirectHttps => redirect(TokioIo::new(io)).await,
        Serve::Tcp { sni } => {
            l4::carry(io, peer, local, serving.number, sni, app).await;
            Ok(())
        }
    }
}

async fn serve_http<IO>(
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
    let limits = app.config.limits;
    let service = hyper::service::service_fn(move |request| {
        proxy::handle(request, downstream.clone(), app.clone())
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A client that opens a connection and sends nothing (or headers a byte at a time) is
    // closed; HTTP/2 clients get pings and must answer them.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.handshake_timeout());
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(std::time::Duration::from_secs(10)))
        .keep_alive_timeout(std::time::Duration::from_secs(20));
    builder
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

#[cfg(test)]
mod tests {
    use super::*;

    fn served(server: &str) -> Result<Listen, String> {
        let server: Server = serde_yaml::from_str(server).expect("a server");
        let secrets = HashMap::new();
        let credentials = Credentials {
            namespace: "istio-system",
            secrets: &secrets,
        };
        wanted(&server, &credentials)
    }

    #[test]
    fn each_protocol_and_mode_is_served_its_way() {
        let tls = "tls: {mode: SIMPLE, serverCertificate: c, privateKey: k}";
        let cases = [
            ("{number: 80, protocol: HTTP}", "", Serve::Http, false),
            (
                "{number: 80, protocol: HTTP}",
                "tls: {httpsRedirect: true}",
                Serve::RedirectHttps,
                false,
            ),
            ("{number: 443, protocol: HTTPS}", tls, Serve::Http, true),
            (
                "{number: 443, protocol: HTTPS}",
                "tls: {mode: PASSTHROUGH}",
                Serve::Tcp { sni: true },
                false,
            ),
            (
                "{number: 443, protocol: TLS}",
                "tls: {mode: PASSTHROUGH}",
                Serve::Tcp { sni: true },
                false,
            ),
            (
                "{number: 443, protocol: TLS}",
                tls,
                Serve::Tcp { sni: false },
                true,
            ),
            (
                "{number: 31400, protocol: TCP}",
                "",
                Serve::Tcp { sni: false },
                false,
            ),
        ];
        for (port, tls, serve, terminated) in cases {
            let listen = served(&format!("{{port: {port}, hosts: ['*'], {tls}}}"))
                .unwrap_or_else(|e| panic!("{port} {tls}: {e}"));
            assert_eq!(
                (listen.serve, listen.tls.is_some()),
                (serve, terminated),
                "{port} {tls}"
            );
        }
        let moved = served("{port: {number: 443, targetPort: 8443, protocol: TCP}, hosts: ['*']}");
        let moved = moved.expect("a TCP server");
        assert_eq!((moved.port, moved.number), (8443, 443), "bound vs matched");
        assert!(served("{port: {number: 443, protocol: TLS}, hosts: ['*']}").is_err());
        assert!(served("{port: {number: 7, protocol: UDP}, hosts: ['*']}").is_err());
    }
}
