//! Opening a byte stream to an endpoint: over HBONE (mutual TLS to the endpoint's port 15008,
//! one CONNECT stream per connection, HTTP/2 connections pooled per endpoint address) when the
//! endpoint is in the mesh, else plain TCP. The server must prove the endpoint's identity.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::{Buf as _, Bytes};
use h2::client::SendRequest;
use mesh_core::{
    Identity, hbone,
    transport::{Limits, SweepClock},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use crate::{
    h2io::H2Io,
    identity::{Certificates, Issued},
};

/// CONNECT streams on one HTTP/2 connection before another is opened.
const STREAMS_PER_CONNECTION: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {addr}: {source}")]
    Tcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no certificate for the waypoint yet")]
    NoCertificate,
    #[error(transparent)]
    Handshake(#[from] mesh_core::hbone::handshake::HandshakeError),
    #[error("HTTP/2 with {addr}: {source}")]
    Http2 { addr: SocketAddr, source: h2::Error },
    #[error("CONNECT {target} answered {status}")]
    Refused {
        target: SocketAddr,
        status: http::StatusCode,
    },
    #[error("connecting to {0} timed out")]
    Timeout(SocketAddr),
}

/// A stream to an endpoint, whichever way it goes.
pub enum Conn {
    Plain(TcpStream),
    Hbone(H2Io),
}

impl Conn {
    /// Writes from `bytes` and advances it; over HBONE the bytes go out as they are, with
    /// no copy.
    pub fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        bytes: &mut Bytes,
    ) -> Poll<std::io::Result<usize>> {
        let n = match self {
            Conn::Plain(s) => std::task::ready!(Pin::new(s).poll_write(cx, bytes))?,
            Conn::Hbone(s) => return s.poll_send(cx, bytes),
        };
        bytes.advance(n);
        Poll::Ready(Ok(n))
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Hbone(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Hbone(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Hbone(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Hbone(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

struct Pooled {
    sender: SendRequest<Bytes>,
    streams: Arc<()>,
    /// Set when the connection ended.
    closed: Arc<AtomicBool>,
    /// The waypoint's end of it.
    local: SocketAddr,
    /// The worker whose runtime drives it.
    worker: Option<usize>,
    /// When a stream was last opened on it: unused past the idle timeout, it is dropped
    /// (closing it once its streams are done).
    last_used: Instant,
    /// The certificate it was opened with: once the waypoint's is renewed, new streams go
    /// over a connection made with the new one (as the node agent's pool does).
    certificate: Arc<Issued>,
}

impl Pooled {
    /// Streams open on it (the pool holds one reference of its own).
    fn streams(&self) -> usize {
        Arc::strong_count(&self.streams) - 1
    }
}

/// HBONE connections to endpoints, by endpoint address.
pub struct Connector {
    certificates: Arc<Certificates>,
    pool: Mutex<Pool>,
    /// How long an unused connection is kept (`--idle-timeout-secs`).
    pub(crate) idle: Duration,
    /// How long a connection (TCP, then TLS, HTTP/2 and CONNECT for HBONE) may take to open
    /// (`--handshake-timeout-secs`).
    connect_timeout: Duration,
}

#[derive(Default)]
struct Pool {
    by_ip: HashMap<IpAddr, Vec<Pooled>>,
    swept: SweepClock,
}

impl Pool {
    /// Drops closed connections and unused ones past `idle`, and addresses left with none:
    /// endpoints that went away leave nothing behind.
    fn sweep(&mut self, idle: Duration) {
        if !self.swept.due(SweepClock::EVERY) {
            return;
        }
        let now = Instant::now();
        self.by_ip.retain(|_, conns| {
            conns.retain(|c| {
                !c.closed.load(Ordering::Acquire) && (c.streams() > 0 || now - c.last_used < idle)
            });
            !conns.is_empty()
        });
    }
}

impl Connector {
    pub fn new(certificates: Arc<Certificates>, limits: &Limits) -> Self {
        Connector {
            certificates,
            pool: Mutex::default(),
            idle: limits.idle_timeout(),
            connect_timeout: limits.handshake_timeout(),
        }
    }

    /// A stream to `addr`: over HBONE when `identity` (the endpoint's, it must prove it) is
    /// given, through `via` (another address and identity, a waypoint's) when set.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        identity: Option<&Identity>,
        via: Option<&(IpAddr, Identity)>,
    ) -> Result<Conn, ConnectError> {
        if let Some((ip, identity)) = via {
            return tokio::time::timeout(self.connect_timeout, self.tunnel(addr, *ip, identity))
                .await
                .map_err(|_| ConnectError::Timeout(addr))?
                .map(Conn::Hbone);
        }
        match identity {
            None => {
                let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
                    .await
                    .map_err(|_| ConnectError::Timeout(addr))?
                    .map_err(|source| ConnectError::Tcp { addr, source })?;
                let _ = tcp.set_nodelay(true);
                Ok(Conn::Plain(tcp))
            }
            Some(identity) => {
                tokio::time::timeout(self.connect_timeout, self.tunnel(addr, addr.ip(), identity))
                    .await
                    .map_err(|_| ConnectError::Timeout(addr))?
                    .map(Conn::Hbone)
            }
        }
    }

    /// A CONNECT stream to `target` over a pooled connection to `to` (the target itself, or
    /// the waypoint in front of it). A stream refused because the connection is going away
    /// (its node agent handed over, or the waypoint drains) never reached an app: it is
    /// opened again on a new connection, a few times at most.
    async fn tunnel(
        &self,
        target: SocketAddr,
        to: IpAddr,
        identity: &Identity,
    ) -> Result<H2Io, ConnectError> {
        let mut attempts = 1;
        loop {
            // After a connection went away, the next attempt is on a new one: the other
            // pooled connections to the same server were likely sent GOAWAY too.
            match self.try_tunnel(target, to, identity, attempts == 1).await {
                Err(ConnectError::Http2 { source, .. })
                    if hbone::went_away(&source) && attempts < hbone::ATTEMPTS_WHILE_GOING_AWAY =>
                {
                    tracing::debug!(%to, error = %source, "HBONE connection going away; opening another");
                    attempts += 1;
                }
                result => return result,
            }
        }
    }

    async fn try_tunnel(
        &self,
        target: SocketAddr,
        to: IpAddr,
        identity: &Identity,
        pooled: bool,
    ) -> Result<H2Io, ConnectError> {
        let cert = self
            .certificates
            .current()
            .ok_or(ConnectError::NoCertificate)?;
        let reused = if pooled { self.pooled(to, &cert) } else { None };
        let Lease {
            mut sender,
            streams,
            local,
            closed,
        } = match reused {
            Some(pooled) => pooled,
            None => self.dial(to, identity, cert).await?,
        };
        let http2 = |source: h2::Error| {
            // A connection that is going away takes no new streams.
            if hbone::went_away(&source) {
                closed.store(true, Ordering::Release);
            }
            ConnectError::Http2 {
                addr: target,
                source,
            }
        };
        // The connection is the waypoint's own: `forwarded` names the waypoint.
        let request = hbone::connect_request(target, local, None);
        sender = sender.ready().await.map_err(http2)?;
        let (response, send) = sender.send_request(request, false).map_err(http2)?;
        let response = response.await.map_err(http2)?;
        if response.status() != http::StatusCode::OK {
            return Err(ConnectError::Refused {
                target,
                status: response.status(),
            });
        }
        // The stream counts against its connection while it lives.
        let io = H2Io::new(send, response.into_body()).holding(streams);
        Ok(io)
    }

    /// A pooled connection to `ip`, made with `cert`, with room for another stream.
    fn pooled(&self, ip: IpAddr, cert: &Arc<Issued>) -> Option<Lease> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.sweep(self.idle);
        let conns = pool.by_ip.get_mut(&ip)?;
        // Closed ones go, and so do those made with a replaced certificate once unused.
        conns.retain(|c| {
            !c.closed.load(Ordering::Acquire)
                && (Arc::ptr_eq(&c.certificate, cert) || c.streams() > 0)
        });
        // Only this worker's: a stream on another worker's connection would wake that
        // worker for each frame.
        let worker = crate::workers::current();
        let pooled = conns.iter_mut().find(|c| {
            c.worker == worker
                && Arc::ptr_eq(&c.certificate, cert)
                && c.streams() < STREAMS_PER_CONNECTION
        })?;
        pooled.last_used = Instant::now();
        Some(Lease {
            sender: pooled.sender.clone(),
            streams: pooled.streams.clone(),
            local: pooled.local,
            closed: pooled.closed.clone(),
        })
    }

    async fn dial(
        &self,
        to: IpAddr,
        identity: &Identity,
        cert: Arc<Issued>,
    ) -> Result<Lease, ConnectError> {
        let addr = SocketAddr::new(to, hbone::PORT);
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| ConnectError::Tcp { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let local = tcp
            .local_addr()
            .map_err(|source| ConnectError::Tcp { addr, source })?;
        let (sender, closed) =
            mesh_core::hbone::handshake::connect(cert.client.clone(), tcp, addr, identity).await?;
        let streams = Arc::new(());
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_ip
            .entry(to)
            .or_default()
            .push(Pooled {
                sender: sender.clone(),
                streams: streams.clone(),
                closed: closed.clone(),
                local,
                worker: crate::workers::current(),
                last_used: Instant::now(),
                certificate: cert,
            });
        Ok(Lease {
            sender,
            streams,
            local,
            closed,
        })
    }
}

/// A connection lent for one stream.
struct Lease {
    sender: SendRequest<Bytes>,
    /// Counts the connection's streams while the stream lives.
    streams: Arc<()>,
    /// The connection's local address (`forwarded` names it).
    local: SocketAddr,
    /// Set once the connection ends or goes away: it takes no new streams.
    closed: Arc<AtomicBool>,
}
