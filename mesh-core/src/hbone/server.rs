//! The server end of an HBONE connection, shared by the node agent and the waypoint: mutual
//! TLS and the HTTP/2 handshake within the handshake deadline, then the CONNECT streams, with
//! keep-alive pings and the idle timeout.

use std::{net::IpAddr, sync::Arc};

use bytes::Bytes;
use h2::{RecvStream, server::SendResponse};
use http::Request;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::{
    Identity,
    drain::Watch,
    transport::{self, Limits, StreamCount, StreamGuard},
};

/// An HBONE connection past its handshakes.
pub struct Accepted {
    pub connection: h2::server::Connection<TlsStream<TcpStream>, Bytes>,
    /// The identity the client's certificate proved.
    pub client: Identity,
    /// The address the connection arrived on (a CONNECT must name it, at a node agent).
    pub local: IpAddr,
}

/// Mutual TLS with `config`, then HTTP/2 with HBONE's settings, each within the deadline.
pub async fn accept(
    config: Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    limits: &Limits,
) -> Result<Accepted, String> {
    let (tls, client) = transport::within(limits, "TLS", async {
        super::handshake::accept(config, tcp).await
    })
    .await?;
    let local = tls
        .get_ref()
        .0
        .local_addr()
        .map_err(|e| e.to_string())?
        .ip();
    let connection = transport::within(
        limits,
        "HTTP/2 handshake",
        super::settings::server().handshake::<_, Bytes>(tls),
    )
    .await?;
    Ok(Accepted {
        connection,
        client,
        local,
    })
}

/// Hands every CONNECT stream of `connection` to `stream` (with the guard that keeps the
/// connection from counting as idle while the stream lives) until the connection ends, a ping
/// goes unanswered, or it has had no stream for the idle timeout (then it is closed
/// gracefully: streams still open finish). Once `drain` signals, the client is sent GOAWAY:
/// it opens its next streams on a new connection (to whoever listens now), and those open
/// here finish.
pub async fn serve_streams<T>(
    connection: &mut h2::server::Connection<T, Bytes>,
    limits: &Limits,
    drain: &Watch,
    mut stream: impl FnMut(Request<RecvStream>, SendResponse<Bytes>, StreamGuard),
) -> Result<(), String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let keep_alive = super::settings::keep_alive(connection.ping_pong());
    tokio::pin!(keep_alive);
    let streams = StreamCount::new();
    let idle = transport::idle(limits, &streams);
    tokio::pin!(idle);
    let draining = drain.signalled();
    tokio::pin!(draining);
    let mut goaway_sent = false;
    loop {
        let (request, respond) = tokio::select! {
            () = &mut draining, if !goaway_sent => {
                tracing::debug!("draining: GOAWAY sent on an HBONE connection");
                connection.graceful_shutdown();
                goaway_sent = true;
                continue;
            }
            next = connection.accept() => match next {
                Some(next) => next.map_err(|e| format!("HTTP/2: {e}"))?,
                None => return Ok(()),
            },
            reason = &mut keep_alive => return Err(reason),
            () = &mut idle => {
                tracing::debug!("idle HBONE connection closed");
                connection.graceful_shutdown();
                return std::future::poll_fn(|cx| connection.poll_closed(cx))
                    .await
                    .map_err(|e| format!("HTTP/2: {e}"));
            }
        };
        stream(request, respond, streams.open());
    }
}
