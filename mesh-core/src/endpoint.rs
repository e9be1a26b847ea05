//! The plain-HTTP endpoints a binary serves beside its data path (metrics, readiness, the
//! admin view): bound at once, so that a port conflict fails start-up with a clear error,
//! then served on tasks of their own, so that a slow scrape never delays anything else.

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};

/// A whole answer, built at once.
pub type Reply = Response<Full<Bytes>>;

/// Binds `addr` and answers each HTTP/1.1 request with `route`.
pub async fn serve<F>(addr: SocketAddr, route: F) -> std::io::Result<()>
where
    F: Fn(&Request<Incoming>) -> Reply + Clone + Send + Sync + 'static,
{
    serve_async(addr, move |request: Request<Incoming>| {
        let reply = route(&request);
        async move { reply }
    })
    .await
}

/// As [`serve`], for answers that must read the request's body or wait.
pub async fn serve_async<F, A>(addr: SocketAddr, route: F) -> std::io::Result<()>
where
    F: Fn(Request<Incoming>) -> A + Clone + Send + Sync + 'static,
    A: Future<Output = Reply> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(addr).await?;
    spawn_on(listener, route);
    Ok(())
}

/// Answers each HTTP/1.1 request on `listener` (bound already, or handed over by the process
/// that served it before) with `route`, on a task of its own; aborting the task stops
/// accepting (the listening socket closes unless another process holds it too).
pub fn spawn_on<F, A>(listener: tokio::net::TcpListener, route: F) -> tokio::task::JoinHandle<()>
where
    F: Fn(Request<Incoming>) -> A + Clone + Send + Sync + 'static,
    A: Future<Output = Reply> + Send + 'static,
{
    // Scrapers and probes are few: a small cap, and a short wait for their headers.
    let limits = crate::transport::Limits {
        max_connections: 256,
        ..Default::default()
    };
    let listener = crate::transport::Listener::new(listener, "endpoint", &limits);
    tokio::spawn(async move {
        loop {
            let (stream, _, permit) = listener.accept().await;
            let route = route.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let service = service_fn(move |request: Request<Incoming>| {
                    let reply = route(request);
                    async move { Ok::<_, Infallible>(reply.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.handshake_timeout())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
