//! The plain-HTTP endpoints a binary serves beside its data path (metrics, readiness, the
//! admin view): bound at once, so that a port conflict fails start-up with a clear error,
//! then served on tasks of their own, so that a slow scrape never delays anything else.

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;

/// A whole answer, built at once.
pub type Reply = Response<Full<Bytes>>;

/// Binds `addr` and answers each HTTP/1.1 request with `route`.
pub async fn serve<F>(addr: SocketAddr, route: F) -> std::io::Result<()>
where
    F: Fn(&Request<Incoming>) -> Reply + Clone + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let route = route.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let reply = route(&request);
                    async move { Ok::<_, Infallible>(reply) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(())
}
