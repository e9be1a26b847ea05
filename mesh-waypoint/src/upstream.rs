//! Sending a request to a target: resolving it to a cluster of endpoints, applying the
//! cluster's connection-pool limits, picking an endpoint, and reusing HTTP connections to it.
//! HTTP/1.1 connections serve one request at a time and go back to the pool once their
//! response body has been read to the end; HTTP/2 (gRPC) connections are shared.
//!
//! # Layout
//! - `connect`: byte streams to endpoints, HBONE or plain;
//! - `h1`: HTTP/1.1 spoken on a pooled connection by the request's own task;
//! - `cluster`: load balancing, limits and outlier detection per cluster;
//! - `body`: requests counted while in flight, and response bodies that give their
//!   connection back when read to the end;
//! - `replay`: request bodies streamed upstream, kept while small enough to send again;
//! - `resolve`: targets to endpoints and policy, once per configuration snapshot.

mod body;
pub mod cluster;
pub mod connect;
mod h1;
/// The HTTP/1.1 response decoder, for the fuzzers only.
#[cfg(fuzzing)]
pub use h1::{Error as ResponseError, decode_response};
pub mod locality;
pub mod replay;
mod resolve;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::transport::SweepClock;

pub use self::{
    body::local_body,
    replay::{BoxError, RequestBody},
};
use self::{
    body::{InFlight, PendingSlot, Tracked},
    cluster::{Cluster, Policy},
    connect::{ConnectError, Connector},
};
use crate::{counted::Counted, routes::Target, store::Endpoint};

/// Response bodies the proxy hands downstream.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// How long a request waits for a pooled connection when the pool is at its limit.
const PENDING_WAIT: Duration = Duration::from_secs(10);

/// Why a request got no response from the cluster (Envoy's response flags).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("no healthy upstream for {0}")]
    NoHealthyUpstream(String),
    /// The route names a service (or subset) the waypoint does not know.
    #[error("no cluster for {0}")]
    NoCluster(String),
    #[error("upstream overflow: {0}")]
    Overflow(&'static str),
    #[error("connect to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        source: Box<ConnectError>,
    },
    #[error("upstream {addr} reset the request: {source}")]
    Reset { addr: SocketAddr, source: BoxError },
}

impl Failure {
    /// Envoy's response flag for this failure.
    pub fn flag(&self) -> &'static str {
        match self {
            Failure::NoHealthyUpstream(_) => "UH",
            Failure::NoCluster(_) => "NC",
            Failure::Overflow(_) => "UO",
            Failure::Connect { .. } => "UF",
            Failure::Reset { .. } => "UR",
        }
    }
}

/// `map_err` for an endpoint that failed the request once it was under way.
fn reset<E: Into<BoxError>>(addr: SocketAddr) -> impl FnOnce(E) -> Failure {
    move |source| Failure::Reset {
        addr,
        source: source.into(),
    }
}

/// A resolved target: the endpoints, their policy and the cluster's counters.
pub struct Resolved {
    pub endpoints: Vec<Endpoint>,
    pub policy: Policy,
    pub cluster: Arc<Cluster>,
    pub port: u16,
}

/// An endpoint's address, as seen by one worker (`workers::current()`).
type WorkerEndpoint = (Option<usize>, SocketAddr);

pub struct Upstreams {
    connector: Connector,
    /// This proxy's own waypoint (`namespace/name`): services bound to another waypoint are
    /// reached through that one.
    own_waypoint: Option<String>,
    /// This proxy's pod (namespace, name): locality-aware load balancing is relative to it.
    own_pod: Option<(String, String)>,
    clusters: Mutex<HashMap<Target, Arc<Cluster>>>,
    /// Targets resolved against one snapshot: endpoints and policy change only with it.
    resolved: Mutex<resolve::ResolvedCache>,
    /// Idle HTTP/1.1 connections by endpoint, each with when it was given back.
    idle: Mutex<IdlePool>,
    /// One HTTP/2 connection per endpoint and worker, each driven on its worker, with when
    /// it was last used.
    shared_h2: Mutex<SharedH2>,
    /// Wakes requests waiting for a pooled connection.
    returned: tokio::sync::Notify,
}

#[derive(Default)]
struct IdlePool {
    by_addr: HashMap<SocketAddr, Vec<(h1::Connection, Instant)>>,
    swept: SweepClock,
}

#[derive(Default)]
struct SharedH2 {
    by_endpoint: HashMap<WorkerEndpoint, (http2::SendRequest<RequestBody>, Instant)>,
    swept: SweepClock,
}

/// The idle pools are swept of connections unused past the idle timeout every
/// [`SweepClock::EVERY`], or more often when the timeout is shorter.
fn sweep_every(idle: Duration) -> Duration {
    SweepClock::EVERY.min(idle)
}

impl Upstreams {
    pub fn new(
        connector: Connector,
        own_waypoint: Option<String>,
        own_pod: Option<(String, String)>,
    ) -> Arc<Self> {
        Arc::new(Upstreams {
            connector,
            own_waypoint,
            own_pod,
            clusters: Mutex::default(),
            resolved: Mutex::default(),
            idle: Mutex::default(),
            shared_h2: Mutex::default(),
            returned: tokio::sync::Notify::new(),
        })
    }

    /// A byte stream to an endpoint (TCP carried through the waypoint).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        identity: Option<&mesh_core::Identity>,
        via: Option<&(std::net::IpAddr, mesh_core::Identity)>,
    ) -> Result<connect::Conn, ConnectError> {
        self.connector.connect(addr, identity, via).await
    }

    /// Sends `request` to `endpoint` of `resolved`'s cluster, within its limits.
    pub async fn send(
        self: &Arc<Self>,
        resolved: &Resolved,
        endpoint: &Endpoint,
        request: Request<RequestBody>,
    ) -> Result<Response<Body>, Failure> {
        let cluster = &resolved.cluster;
        let limits = &resolved.policy.limits;
        let active = cluster.active_requests.fetch_add(1, Ordering::AcqRel) + 1;
        let mut guard = InFlight {
            cluster: cluster.clone(),
            endpoint: cluster.stats(endpoint.addr),
            returns: None,
        };
        guard.endpoint.active.fetch_add(1, Ordering::AcqRel);
        if limits.max_requests.is_some_and(|max| active > max) {
            return Err(Failure::Overflow("max requests"));
        }
        let h2 = request.version() == Version::HTTP_2;
        let identity = endpoint
            .workload
            .as_ref()
            .filter(|w| w.enrolled)
            .and_then(|w| w.identity.as_ref());
        let addr = endpoint.addr;
        let via = endpoint.via.as_ref();
        if h2 {
            let mut sender = self.h2_sender(addr, identity, via).await?;
            let response = sender.send_request(request).await.map_err(reset(addr))?;
            let (parts, body) = response.into_parts();
            return Ok(Response::from_parts(parts, Tracked::body(body, guard)));
        }
        let mut connection = self.h1_connection(resolved, addr, identity, via).await?;
        let head = connection.send(request).await.map_err(reset(addr))?;
        connection.served += 1;
        let reusable = limits
            .max_requests_per_connection
            .is_none_or(|max| connection.served < max);
        if reusable {
            guard.returns = Some((self.clone(), addr));
        }
        let (parts, body) = head.body(connection);
        Ok(Response::from_parts(parts, Tracked::body(body, guard)))
    }

    async fn h2_sender(
        &self,
        addr: SocketAddr,
        identity: Option<&mesh_core::Identity>,
        via: Option<&(std::net::IpAddr, mesh_core::Identity)>,
    ) -> Result<http2::SendRequest<RequestBody>, Failure> {
        let existing = {
            let mut shared = self.shared_h2.lock().unwrap_or_else(|p| p.into_inner());
            let SharedH2 { by_endpoint, swept } = &mut *shared;
            let idle = self.connector.idle;
            if swept.due(sweep_every(idle)) {
                // Dropping the pool's sender closes an idle connection; one with requests in
                // flight ends when they do.
                by_endpoint
                    .retain(|_, (sender, used)| !sender.is_closed() && used.elapsed() < idle);
            }
            by_endpoint
                .get_mut(&(crate::workers::current(), addr))
                .filter(|(sender, _)| !sender.is_closed())
                .map(|(sender, used)| {
                    *used = Instant::now();
                    sender.clone()
                })
        };
        if let Some(sender) = existing {
            return Ok(sender);
        }
        let sender = Box::pin(self.open_h2(addr, identity, via)).await?;
        self.shared_h2
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_endpoint
            .insert(
                (crate::workers::current(), addr),
                (sender.clone(), Instant::now()),
            );
        Ok(sender)
    }

    /// An idle HTTP/1.1 connection to `addr`, a new one, or (at the connection limit) the
    /// next one returned, waiting as a pending request.
    async fn h1_connection(
        &self,
        resolved: &Resolved,
        addr: SocketAddr,
        identity: Option<&mesh_core::Identity>,
        via: Option<&(std::net::IpAddr, mesh_core::Identity)>,
    ) -> Result<h1::Connection, Failure> {
        let cluster = &resolved.cluster;
        let limits = &resolved.policy.limits;
        let mut pending: Option<PendingSlot> = None;
        let deadline = tokio::time::Instant::now() + PENDING_WAIT;
        loop {
            let returned = self.returned.notified();
            if let Some(idle) = self.take_idle(addr, false) {
                return Ok(idle);
            }
            let connections = cluster.connections.load(Ordering::Acquire);
            if limits.max_connections.is_none_or(|max| connections < max) {
                let slot = Some(cluster.connections.clone());
                // Boxed: the TLS and HTTP/2 handshakes of a new connection would otherwise make
                // every request's future as large as theirs, copied on each request.
                let (io, slot) = Box::pin(self.dial(addr, identity, via, slot)).await?;
                return Ok(h1::Connection::new(io, slot));
            }
            // Another worker's idle connection only now that no new one may be opened: its
            // HBONE connection's task runs on that worker, so each frame would cross threads.
            if let Some(idle) = self.take_idle(addr, true) {
                return Ok(idle);
            }
            if pending.is_none() {
                let waiting = cluster.pending.fetch_add(1, Ordering::AcqRel) + 1;
                pending = Some(PendingSlot(cluster.clone()));
                // Envoy's default of 1024 pending requests when the rule sets none.
                if waiting > limits.max_pending.unwrap_or(1024) {
                    return Err(Failure::Overflow("pending requests"));
                }
            }
            if tokio::time::timeout_at(deadline, returned).await.is_err() {
                return Err(Failure::Overflow("no connection freed in time"));
            }
        }
    }

    /// A pooled connection to `addr` that is still open, opened on this worker unless
    /// `any_worker`; closed ones found on the way are dropped.
    fn take_idle(&self, addr: SocketAddr, any_worker: bool) -> Option<h1::Connection> {
        let worker = crate::workers::current();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.by_addr.get_mut(&addr)?;
        while let Some(at) = list
            .iter()
            .rposition(|(c, _)| any_worker || c.worker == worker)
        {
            let (mut connection, _) = list.swap_remove(at);
            if connection.is_open() {
                return Some(connection);
            }
        }
        None
    }

    fn give_back(&self, addr: SocketAddr, connection: h1::Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let IdlePool { by_addr, swept } = &mut *idle;
        if swept.due(sweep_every(self.connector.idle)) {
            // Endpoints that went away, and connections nobody needed for the idle timeout,
            // leave nothing behind.
            let timeout = self.connector.idle;
            by_addr.retain(|_, list| {
                list.retain(|(_, returned)| returned.elapsed() < timeout);
                !list.is_empty()
            });
        }
        by_addr
            .entry(addr)
            .or_default()
            .push((connection, Instant::now()));
        drop(idle);
        self.returned.notify_one();
    }

    /// A byte stream to `addr`, counted against `slot` (its cluster's connections) until the
    /// returned guard is dropped, whatever happens to the connection.
    async fn dial(
        &self,
        addr: SocketAddr,
        identity: Option<&mesh_core::Identity>,
        via: Option<&(std::net::IpAddr, mesh_core::Identity)>,
        slot: Option<Arc<AtomicUsize>>,
    ) -> Result<(connect::Conn, Counted), Failure> {
        let slot = Counted::take(slot);
        let conn = self
            .connector
            .connect(addr, identity, via)
            .await
            .map_err(|source| Failure::Connect {
                addr,
                source: Box::new(source),
            })?;
        tracing::debug!(%addr, via = ?via.map(|v| v.0), "new upstream HTTP connection");
        Ok((conn, slot))
    }

    async fn open_h2(
        &self,
        addr: SocketAddr,
        identity: Option<&mesh_core::Identity>,
        via: Option<&(std::net::IpAddr, mesh_core::Identity)>,
    ) -> Result<http2::SendRequest<RequestBody>, Failure> {
        let (io, _slot) = self.dial(addr, identity, via, None).await?;
        let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .map_err(reset(addr))?;
        tokio::spawn(connection);
        Ok(sender)
    }
}

#[cfg(test)]
mod tests;
