//! HBONE client: captured connections to enrolled pods are carried as CONNECT streams over
//! mutual TLS to the destination pod's port 15008. Connections are pooled per (source pod,
//! destination address) and multiplexed, up to [`STREAMS_PER_CONNECTION`] tunnels each (more
//! open another connection); the server must present the destination workload's identity
//! before any request is sent.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use h2::client::SendRequest;
use mesh_core::{
    Identity,
    hbone::{self, went_away},
    transport::SweepClock,
};

use super::{PodContext, connect_from_pod, tunnel::H2Stream};
use crate::{app::State, identity::Issued};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no certificate yet for {0}")]
    NoCertificate(Identity),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Handshake(#[from] mesh_core::hbone::handshake::HandshakeError),
    #[error("HTTP/2 with {addr}: {source}")]
    Http { addr: SocketAddr, source: h2::Error },
    #[error("CONNECT {target} answered {status}")]
    Status {
        target: SocketAddr,
        status: http::StatusCode,
    },
    #[error("{what} {addr}: no answer within {limit:?} (is its port 15008 reachable?)")]
    Timeout {
        what: &'static str,
        addr: SocketAddr,
        limit: std::time::Duration,
    },
}

type Key = (String, IpAddr);

/// Tunnels per HTTP/2 connection before another is opened (ztunnel's number; servers allow
/// 200, so a full connection never queues).
pub const STREAMS_PER_CONNECTION: usize = 100;

struct Pooled {
    sender: SendRequest<Bytes>,
    /// Tunnels open on this connection.
    active: Arc<AtomicUsize>,
    /// Set once the connection ended.
    closed: Arc<AtomicBool>,
    /// When a tunnel was last opened on it: an unused connection is dropped after the idle
    /// timeout (dropping the last sender closes it once its tunnels are done).
    last_used: Instant,
    /// The certificate it was opened with. Once the pod's certificate is renewed, new tunnels
    /// go over a connection made with the new one: an identity is never carried past the
    /// certificate that proved it, and a root rotation reaches the wire.
    certificate: Arc<Issued>,
}

/// Open HTTP/2 connections, keyed by source pod and destination address. A pod has one
/// identity, so this is ztunnel's key (source identity and address, destination) too.
#[derive(Clone, Default)]
pub struct HbonePool {
    connections: Arc<Mutex<Connections>>,
}

#[derive(Default)]
struct Connections {
    by_key: HashMap<Key, Vec<Pooled>>,
    /// When closed and idle connections (and keys left empty) were last removed.
    swept: SweepClock,
}

impl Connections {
    fn sweep(&mut self, idle: Duration) {
        if !self.swept.due(SweepClock::EVERY) {
            return;
        }
        let now = Instant::now();
        self.by_key.retain(|_, pooled| {
            pooled.retain(|p| {
                let unused = p.active.load(Ordering::Relaxed) == 0 && now - p.last_used > idle;
                !p.closed.load(Ordering::Relaxed) && !unused
            });
            !pooled.is_empty()
        });
    }
}

impl HbonePool {
    /// Opens a CONNECT stream to `target` for `pod`'s app through `via` (the target's own
    /// address, or its waypoint's); returns the tunnel as a byte stream.
    ///
    /// A server that is draining (a node agent that handed its pods over, a waypoint being
    /// replaced) answers GOAWAY, and refuses streams it will not serve: such a stream never
    /// reached an app, so it is opened again on a new connection, which reaches
    /// whoever listens now (a new connection can land on the draining server too, in the
    /// moment before it stops accepting: a few attempts).
    pub async fn connect(
        &self,
        state: &State,
        pod: &PodContext,
        via: IpAddr,
        target: SocketAddr,
        expected: &Identity,
        client: SocketAddr,
    ) -> Result<H2Stream, Error> {
        let mut attempts = 1;
        loop {
            // After a connection went away, the next attempt is on a new one: the other
            // pooled connections to the same server were likely sent GOAWAY too.
            let pooled = attempts == 1;
            match self
                .try_connect(state, pod, via, target, expected, client, pooled)
                .await
            {
                Err(Error::Http { addr, source })
                    if went_away(&source) && attempts < hbone::ATTEMPTS_WHILE_GOING_AWAY =>
                {
                    tracing::debug!(%addr, error = %source, "HBONE connection going away; opening another");
                    attempts += 1;
                }
                result => return result,
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn try_connect(
        &self,
        state: &State,
        pod: &PodContext,
        via: IpAddr,
        target: SocketAddr,
        expected: &Identity,
        client: SocketAddr,
        pooled: bool,
    ) -> Result<H2Stream, Error> {
        let (sender, active, closed) = self.sender(state, pod, via, expected, pooled).await?;
        // The slot is taken: give it back if the tunnel is not established.
        let mut release = Release(Some(active));
        let spec = pod.pod();
        let workload = spec.names().workload;
        let baggage = hbone::Baggage {
            namespace: &spec.namespace,
            pod: &spec.name,
            workload: &workload,
        };
        let request = hbone::connect_request(target, client, Some(baggage));
        let http = |source: h2::Error| {
            // A connection that is going away takes no new tunnels.
            if went_away(&source) {
                closed.store(true, Ordering::Relaxed);
            }
            Error::Http {
                addr: target,
                source,
            }
        };
        let mut sender = sender.ready().await.map_err(http)?;
        let (response, send) = sender.send_request(request, false).map_err(http)?;
        // The server answers once the app accepted (or refused): bounded like a handshake.
        let limit = state.config.limits.handshake_timeout();
        let response = tokio::time::timeout(limit, response)
            .await
            .map_err(|_| Error::Timeout {
                what: "CONNECT",
                addr: target,
                limit,
            })?
            .map_err(http)?;
        if response.status() != http::StatusCode::OK {
            return Err(Error::Status {
                target,
                status: response.status(),
            });
        }
        let active = release.0.take().expect("taken once");
        Ok(H2Stream::new(send, response.into_body(), Some(active)))
    }

    /// A connection with room for a stream: a pooled one (when `reuse`), else a new one.
    async fn sender(
        &self,
        state: &State,
        pod: &PodContext,
        ip: IpAddr,
        expected: &Identity,
        reuse: bool,
    ) -> Result<(SendRequest<Bytes>, Arc<AtomicUsize>, Arc<AtomicBool>), Error> {
        let key = (pod.key.clone(), ip);
        let current = state
            .certificates
            .as_ref()
            .and_then(|c| c.get(&pod.identity));
        {
            let mut connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
            connections.sweep(state.config.limits.idle_timeout());
            let pooled = connections.by_key.entry(key.clone()).or_default();
            let is_current = |p: &Pooled| {
                current
                    .as_ref()
                    .is_some_and(|c| Arc::ptr_eq(c, &p.certificate))
            };
            // A connection made with a replaced certificate takes no new tunnels; dropping its
            // sender closes it once the tunnels it carries are done.
            pooled.retain(|p| {
                !p.closed.load(Ordering::Relaxed)
                    && (is_current(p) || p.active.load(Ordering::Relaxed) > 0)
            });
            let free = pooled.iter_mut().find(|p| {
                is_current(p) && p.active.load(Ordering::Relaxed) < STREAMS_PER_CONNECTION
            });
            if let Some(p) = free.filter(|_| reuse) {
                p.active.fetch_add(1, Ordering::Relaxed);
                p.last_used = Instant::now();
                return Ok((p.sender.clone(), p.active.clone(), p.closed.clone()));
            }
        }
        let addr = SocketAddr::new(ip, hbone::PORT);
        let limit = state.config.limits.handshake_timeout();
        let (sender, closed, certificate) =
            tokio::time::timeout(limit, open(state, pod, addr, expected))
                .await
                .map_err(|_| Error::Timeout {
                    what: "connecting to",
                    addr,
                    limit,
                })??;
        let active = Arc::new(AtomicUsize::new(1));
        let pooled = Pooled {
            sender: sender.clone(),
            active: active.clone(),
            closed: closed.clone(),
            last_used: Instant::now(),
            certificate,
        };
        let mut connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        connections.by_key.entry(key).or_default().push(pooled);
        Ok((sender, active, closed))
    }
}

/// Gives a stream slot back unless taken over by an [`H2Stream`].
struct Release(Option<Arc<AtomicUsize>>);

impl Drop for Release {
    fn drop(&mut self) {
        if let Some(active) = &self.0 {
            active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

async fn open(
    state: &State,
    pod: &PodContext,
    addr: SocketAddr,
    expected: &Identity,
) -> Result<(SendRequest<Bytes>, Arc<AtomicBool>, Arc<Issued>), Error> {
    let certs = state
        .certificates
        .as_ref()
        .ok_or_else(|| Error::NoCertificate(pod.identity.clone()))?;
    let issued = certs
        .wait_for(&pod.identity, super::CERTIFICATE_WAIT)
        .await
        .ok_or_else(|| Error::NoCertificate(pod.identity.clone()))?;
    let tcp = connect_from_pod(pod, addr, None)
        .await
        .map_err(|source| Error::Connect { addr, source })?;
    let (sender, closed) =
        mesh_core::hbone::handshake::connect(issued.client.clone(), tcp, addr, expected).await?;
    Ok((sender, closed, issued))
}
