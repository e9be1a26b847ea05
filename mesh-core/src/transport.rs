//! One transport setup for every listener of the node agent, the waypoint and the controller:
//! accept with back-off, a cap on connections held at once, and deadlines on what a client
//! can stall (handshakes, an HTTP/2 connection with no stream, HTTP/1 headers).
//!
//! Without them one silent client held a task and a socket forever per connection, and an
//! accept loop spun at full CPU while the process was out of file descriptors.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use serde::Serialize;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};

const HANDSHAKE_TIMEOUT_SECS: f64 = 10.0;
/// ztunnel closes idle pooled connections after five minutes.
const IDLE_TIMEOUT_SECS: f64 = 300.0;
const MAX_CONNECTIONS: usize = 16_384;

/// The limits, as flags of each binary (`#[command(flatten)]`) and in its config dump.
#[derive(Clone, Copy, Debug, Serialize, clap::Args)]
pub struct Limits {
    /// Seconds a client has to complete its TLS and HTTP/2 handshakes (or, on plain HTTP/1,
    /// to send a request's headers); then the connection is closed.
    #[arg(long, env = "AMBIT_HANDSHAKE_TIMEOUT_SECS", default_value_t = HANDSHAKE_TIMEOUT_SECS)]
    pub handshake_timeout_secs: f64,
    /// Seconds an HTTP/2 (HBONE) connection may stay open with no stream; then it is closed.
    #[arg(long, env = "AMBIT_IDLE_TIMEOUT_SECS", default_value_t = IDLE_TIMEOUT_SECS)]
    pub idle_timeout_secs: f64,
    /// Connections one listener holds at once. At the cap it stops accepting (new clients wait
    /// in the kernel's backlog) until one closes.
    #[arg(long, env = "AMBIT_MAX_CONNECTIONS", default_value_t = MAX_CONNECTIONS)]
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout_secs: HANDSHAKE_TIMEOUT_SECS,
            idle_timeout_secs: IDLE_TIMEOUT_SECS,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

impl Limits {
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.handshake_timeout_secs.max(0.001))
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.idle_timeout_secs.max(0.001))
    }
}

/// Held for as long as an accepted connection lives; dropping it frees a place under the cap.
#[derive(Debug)]
pub struct ConnectionPermit(#[allow(dead_code)] OwnedSemaphorePermit);

impl ConnectionPermit {
    /// `carry` holding this place until it completes: for a connection whose bytes are moved
    /// by a task other than the one that accepted it.
    pub async fn hold<F: Future>(self, carry: F) -> F::Output {
        let _place = self;
        carry.await
    }
}

/// A listener with a cap and back-off.
pub struct Listener {
    inner: TcpListener,
    /// For logs: which listener ("HBONE", "ingress", ...).
    what: &'static str,
    places: Arc<Semaphore>,
}

/// When a connection pool was last swept of closed and idle connections. A sweep walks the whole
/// pool, so callers run one at most every [`SweepClock::EVERY`].
#[derive(Debug, Default)]
pub struct SweepClock(Option<std::time::Instant>);

impl SweepClock {
    /// How often a pool is swept by default.
    pub const EVERY: Duration = Duration::from_secs(10);

    /// Whether `every` has passed since the last sweep; if so, the sweep counts as done now.
    pub fn due(&mut self, every: Duration) -> bool {
        let now = std::time::Instant::now();
        if self.0.is_some_and(|at| now - at < every) {
            return false;
        }
        self.0 = Some(now);
        true
    }
}

/// After an accept error (EMFILE, ENFILE, ENOBUFS: all pass with time), the first pause, and
/// the longest.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

impl Listener {
    pub fn new(inner: TcpListener, what: &'static str, limits: &Limits) -> Self {
        Self {
            inner,
            what,
            places: Arc::new(Semaphore::new(limits.max_connections.max(1))),
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// The next connection, once there is room for it. Errors are logged and retried after a
    /// growing pause, so a lasting one cannot spin the loop.
    pub async fn accept(&self) -> (TcpStream, SocketAddr, ConnectionPermit) {
        let permit = self
            .places
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.inner.accept().await {
                Ok((stream, peer)) => return (stream, peer, ConnectionPermit(permit)),
                Err(error) => {
                    tracing::warn!(%error, listener = self.what, pause = ?backoff, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

/// `handshake`, or an error naming `what` once `limits.handshake_timeout()` has passed.
pub async fn within<T, E: std::fmt::Display>(
    limits: &Limits,
    what: &str,
    handshake: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(limits.handshake_timeout(), handshake).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(error)) => Err(format!("{what}: {error}")),
        Err(_) => Err(format!(
            "{what}: not completed within {:?}; closed",
            limits.handshake_timeout()
        )),
    }
}

/// `io` once its client has sent something, within the handshake deadline: what was read is
/// replayed first. For servers that would otherwise wait without limit for a client's first
/// bytes (hyper's version sniffing, an HTTP/2 preface after TLS).
pub async fn first_bytes<IO>(limits: &Limits, io: IO) -> Result<Prefixed<IO>, String>
where
    IO: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt as _;
    let mut io = io;
    let mut first = vec![0u8; 64];
    let n = within(limits, "the client's first bytes", io.read(&mut first)).await?;
    if n == 0 {
        return Err("the client closed before sending anything".into());
    }
    first.truncate(n);
    Ok(Prefixed { io, first })
}

/// A connection whose first bytes were already read (see [`first_bytes`]).
#[derive(Debug)]
pub struct Prefixed<IO> {
    io: IO,
    first: Vec<u8>,
}

impl<IO> Prefixed<IO> {
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.first.is_empty() {
            let n = self.first.len().min(buf.remaining());
            buf.put_slice(&self.first[..n]);
            self.first.drain(..n);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Resolves once an HTTP/2 connection has had no stream open for the idle timeout: the
/// caller then closes it. `open` counts the connection's streams in flight (each stream's
/// task holds a [`StreamGuard`]).
pub async fn idle(limits: &Limits, open: &Arc<StreamCount>) {
    loop {
        let quiet_since = open.wait_idle().await;
        let deadline = quiet_since + limits.idle_timeout();
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                if open.is_idle_since(quiet_since) {
                    return;
                }
            }
            _ = open.busy() => {}
        }
    }
}

/// Streams in flight on one connection, and when it last became idle.
#[derive(Debug, Default)]
pub struct StreamCount {
    state: std::sync::Mutex<(usize, Option<tokio::time::Instant>)>,
    changed: tokio::sync::Notify,
}

/// One stream in flight; dropped when the stream ends.
pub struct StreamGuard(Arc<StreamCount>);

impl StreamCount {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: std::sync::Mutex::new((0, Some(tokio::time::Instant::now()))),
            changed: tokio::sync::Notify::new(),
        })
    }

    /// How many are in flight now.
    pub fn in_flight(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    pub fn open(self: &Arc<Self>) -> StreamGuard {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0 += 1;
        state.1 = None;
        drop(state);
        self.changed.notify_waiters();
        StreamGuard(self.clone())
    }

    /// When the connection became idle (waiting until it is).
    async fn wait_idle(&self) -> tokio::time::Instant {
        loop {
            let notified = self.changed.notified();
            if let Some(since) = self.state.lock().unwrap_or_else(|p| p.into_inner()).1 {
                return since;
            }
            notified.await;
        }
    }

    /// Resolves when a stream opens.
    async fn busy(&self) {
        loop {
            let notified = self.changed.notified();
            if self.state.lock().unwrap_or_else(|p| p.into_inner()).0 > 0 {
                return;
            }
            notified.await;
        }
    }

    fn is_idle_since(&self, since: tokio::time::Instant) -> bool {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 == Some(since)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0 -= 1;
        if state.0 == 0 {
            state.1 = Some(tokio::time::Instant::now());
        }
        drop(state);
        self.0.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_fires_only_after_the_last_stream_has_been_gone_long_enough() {
        let limits = Limits {
            idle_timeout_secs: 0.3,
            ..Limits::default()
        };
        let count = StreamCount::new();
        let guard = count.open();
        let idle = tokio::spawn({
            let count = count.clone();
            async move { idle(&limits, &count).await }
        });
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(!idle.is_finished(), "a stream is open");
        let closed = tokio::time::Instant::now();
        drop(guard);
        idle.await.unwrap();
        let waited = closed.elapsed();
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
    }

    #[tokio::test]
    async fn the_cap_holds_further_clients_in_the_backlog() {
        let limits = Limits {
            max_connections: 1,
            ..Limits::default()
        };
        let listener = Listener::new(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            "test",
            &limits,
        );
        let addr = listener.local_addr().unwrap();
        let _first = TcpStream::connect(addr).await.unwrap();
        let (_, _, permit) = listener.accept().await;
        let _second = TcpStream::connect(addr).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(waiting.is_err(), "accepted past the cap");
        drop(permit);
        let next = tokio::time::timeout(Duration::from_secs(5), listener.accept()).await;
        assert!(next.is_ok(), "a freed place is used");
    }
}
